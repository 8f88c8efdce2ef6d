"""Fetching a missing model file for the command line (edit_image.py), before ComfyUI starts.

Standard library only at import (importing torch alone takes seconds on a small machine), so that a command can
find out in well under 5 s that it is offline and say what to put where:
  offline_reason()              why downloads are off by the user's choice (HF_HUB_OFFLINE), or None
  unreachable_reason(url, t)    None when a TCP connection to the URL's host opens within t seconds, else why not
  download(url, dest, out)      the file at url into dest (never over an existing file), with a progress bar
"""
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from core.net import offline_reason, unreachable_reason  # noqa: F401  (re-exported for the command)

CHUNK = 1 << 20


def _size(n):
    return f"{n / (1 << 20):,.1f} MiB"


def download(url, dest, out=None, timeout=30.0):
    """Download ``url`` into ``dest`` with a progress bar on ``out`` (stdout). The bytes go to a temporary file
    next to ``dest`` that is moved into place only once complete (core.files.atomic_write, the pack's one writer),
    so an interrupted download leaves nothing a loader would pick up; an existing ``dest`` is never replaced."""
    from core.files import atomic_write  # imports torch (core/__init__): only once a download really happens

    out = out or sys.stdout
    name = os.path.basename(dest)
    request = urllib.request.Request(url, headers={"User-Agent": "comfyui-pix2pix-zero"})

    def write(tmp):
        with urllib.request.urlopen(request, timeout=timeout) as response, open(tmp, "wb") as f:
            total = int(response.headers.get("Content-Length") or 0)
            done, started, shown = 0, time.monotonic(), 0.0
            while True:
                chunk = response.read(CHUNK)
                if not chunk:
                    break
                f.write(chunk)
                done += len(chunk)
                now = time.monotonic()
                if now - shown > 0.2 or (total and done >= total):
                    shown = now
                    rate = done / max(now - started, 1e-6)
                    if total:
                        width = 30
                        filled = int(width * done / total)
                        bar = f"[{'#' * filled}{'.' * (width - filled)}] {100 * done / total:5.1f}%"
                        print(f"\r    {name}: {bar} {_size(done)} of {_size(total)}, {_size(rate)}/s", end="",
                              file=out, flush=True)
                    else:
                        print(f"\r    {name}: {_size(done)}, {_size(rate)}/s", end="", file=out, flush=True)
            print(file=out, flush=True)
            if total and done != total:
                raise OSError(f"the download stopped after {done} of {total} bytes")

    return atomic_write(dest, write)
