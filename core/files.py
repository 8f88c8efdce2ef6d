"""Writing users' files safely: complete or not at all, never over a file that is already there, with the
permissions any other program would give it; and the one check of every name a user gives to a file or folder."""
from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable

# A letter or digit (any script), then letters, digits, '_', '-' or '.'. Not starting with a dot (a hidden file
# that the loaders never list, or '.'/'..'), no path separators (the name must stay in its folder), no spaces (names
# end up in shell commands and checkpoint file names).
_NAME_RE = re.compile(r"[^\W_][\w.-]*", re.UNICODE)
NAME_RULE = ("use a letter or digit first, then only letters, digits, '_', '-' or '.' (no spaces, no '/' or '\\', "
             "no leading or trailing dot), e.g. cat_to_dog")
MAX_NAME_LENGTH = 200  # well under the 255 bytes of most file systems, leaving room for suffixes like -step000100


def check_name(name, what: str = "name") -> str:
    """The one validator for every file or folder name a user types (a direction, a dataset, a student run):
    returns the name stripped of surrounding spaces, or raises ValueError saying which characters are allowed."""
    if not isinstance(name, str):
        raise ValueError(f"invalid {what} {name!r}: it must be text; {NAME_RULE}")
    stripped = name.strip()
    if not stripped:
        raise ValueError(f"the {what} is empty: {NAME_RULE}")
    if (not _NAME_RE.fullmatch(stripped) or stripped.endswith(".")
            or any(sep in stripped for sep in ("/", "\\", os.sep, os.altsep or "/"))):
        # a trailing dot is dropped by Windows, so "a." and "a" would be one file there
        raise ValueError(f"invalid {what} {stripped!r}: {NAME_RULE}")
    if len(stripped.encode("utf-8")) > MAX_NAME_LENGTH:
        raise ValueError(f"the {what} is too long ({len(stripped)} characters): keep it under {MAX_NAME_LENGTH} bytes")
    return stripped


def _umask() -> int:
    """The process umask, read without changing it where Linux exposes it (os.umask can only be read by setting it,
    which races with other threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[str], None], overwrite: bool = False) -> str:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it into place in one step.

    A crash or an error leaves no partial file. Without ``overwrite`` an existing file is never replaced: the final
    step is a hard link, which fails if the name was taken meanwhile (a plain check-then-rename would race with
    another writer). The file gets the permissions a plain ``open(path, "w")`` would give (0666 less the umask, 0644
    usually), as ComfyUI's own files have: some writers (safetensors' save_file) create files as 0600, which would
    hide a saved direction or student from the other users of a shared ComfyUI. Returns the absolute path.
    """
    path = os.path.abspath(os.fspath(path))
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} already exists; this pack never overwrites a file: choose another name")
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise FileExistsError(f"{path} appeared while writing; this pack never overwrites a file") from None
            except OSError:  # a file system without hard links: the check above is the best we can do
                if os.path.exists(path):
                    raise FileExistsError(f"{path} appeared while writing; this pack never overwrites a file") from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
