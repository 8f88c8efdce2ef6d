"""Is the network there? Standard library only, so that a command can tell in well under 5 s, before importing torch
or starting ComfyUI, that it is offline (huggingface_hub's own retries take about 25 s)."""
import os
import socket
import threading
import urllib.parse

PROBE_TIMEOUT_S = 3.0  # name lookup + TCP connect; leaves room under the 5 s an offline run may take in all


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
