"""Fetching a missing model file for the command line (edit_image.py), before ComfyUI starts.

Standard library only at import (importing torch alone takes seconds on a small machine), so that a command can
find out in well under 5 s that it is offline and say what to put where:
  offline_reason()              why downloads are off by the user's choice (HF_HUB_OFFLINE), or None
  unreachable_reason(url, t)    None when a TCP connection to the URL's host opens within t seconds, else why not
  download(url, dest, out)      the file at url into dest (never over an existing file), with a progress bar
"""
import os
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

PROBE_TIMEOUT_S = 3.0  # name lookup + TCP connect; leaves room under the 5 s an offline run may take in all
CHUNK = 1 << 20


def offline_reason():
    """The reason downloads are off by the user's own setting, or None. huggingface_hub reads HF_HUB_OFFLINE; the
    command applies it to the checkpoint download as well: "offline" means no network use at all."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{var} is set"
    return None


def unreachable_reason(url, timeout=PROBE_TIMEOUT_S):
    """None when a TCP connection to the URL's host and port opens within ``timeout`` seconds, else a short reason.

    The lookup runs in a daemon thread because getaddrinfo has no timeout of its own (a machine with no network
    can wait for its resolver far longer than the command may take); huggingface_hub's own retries would take ~25 s.
    """
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return f"{url!r} is not a URL"
    result = {}

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result["ok"] = True
        except OSError as e:
            result["error"] = f"{type(e).__name__}: {e}"

    thread = threading.Thread(target=connect, daemon=True)
    thread.start()
    thread.join(timeout)
    if result.get("ok"):
        return None
    return f"no network: cannot reach {host}:{port} ({result.get('error', f'no answer within {timeout:.0f} s')})"


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
