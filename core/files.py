"""Writing users' files safely: complete or not at all, and never over a file that is already there."""
from __future__ import annotations

import os
import uuid
from collections.abc import Callable


def atomic_write(path, write: Callable[[str], None], overwrite: bool = False) -> str:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then move it into place in one step.

    A crash or an error leaves no partial file. Without ``overwrite`` an existing file is never replaced: the final
    step is a hard link, which fails if the name was taken meanwhile (a plain check-then-rename would race with
    another writer). The temporary file is created by ``write`` itself, so it gets the usual permissions (umask).
    Returns the absolute path.
    """
    path = os.path.abspath(os.fspath(path))
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} already exists; this pack never overwrites a file: choose another name")
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
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
