"""A real ComfyUI server in a subprocess, for end-to-end tests (a helper module, not a test file).

``comfy_server(base_dir)`` starts ``main.py --cpu --listen 127.0.0.1 --port <free port> --base-directory <base_dir>``
from $COMFYUI_PATH with this pack symlinked into ``<base_dir>/custom_nodes``, waits until it answers, and always
stops it (SIGINT, then SIGKILL after a grace period). Models go in ``<base_dir>/models/<folder>``, input images in
``<base_dir>/input``. The server's log is kept in ``<base_dir>/server.log`` and quoted in every error.
"""
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

PACK_NAME = "comfyui-pix2pix-zero"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(AssertionError):
    pass


class Server:
    def __init__(self, url, process, log_path):
        self.url, self.process, self.log_path = url, process, log_path

    def log_tail(self, chars=4000) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-chars:]
        except OSError:
            return "(no log)"

    def get(self, path, timeout=30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            body = r.read()
            return json.loads(body) if r.headers.get_content_type() == "application/json" else body

    def post_prompt(self, prompt) -> str:
        data = json.dumps({"prompt": prompt, "client_id": str(uuid.uuid4())}).encode()
        request = urllib.request.Request(self.url + "/prompt", data=data, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return json.loads(r.read())["prompt_id"]
        except urllib.error.HTTPError as e:
            raise ServerError(f"the server refused the prompt: {e.read().decode(errors='replace')}") from None

    def wait_history(self, prompt_id, timeout=600) -> dict:
        """The /history entry of a prompt once it has finished; ServerError if it failed or ran out of time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"the server exited ({self.process.returncode}):\n{self.log_tail()}")
            history = self.get(f"/history/{prompt_id}")
            entry = history.get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None:
                status = entry["status"]
                if status.get("status_str") != "success":
                    messages = [m for m in status.get("messages", []) if m[0] == "execution_error"]
                    raise ServerError(f"prompt {prompt_id} failed: {json.dumps(messages)[:3000]}")
                return entry
            time.sleep(0.5)
        self.interrupt()
        raise ServerError(f"prompt {prompt_id} did not finish in {timeout} s:\n{self.log_tail()}")

    def interrupt(self):
        with contextlib.suppress(Exception):
            urllib.request.urlopen(urllib.request.Request(self.url + "/interrupt", data=b"", method="POST"), timeout=5)

    def view(self, image) -> bytes:
        query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
        return self.get(f"/view?{query}")


@contextlib.contextmanager
def comfy_server(base_dir, start_timeout=240, stop_timeout=20):
    comfyui = os.path.abspath(os.environ["COMFYUI_PATH"])
    base_dir = os.path.abspath(base_dir)
    custom_nodes = os.path.join(base_dir, "custom_nodes")
    os.makedirs(custom_nodes, exist_ok=True)
    for name in ("models", "input", "output", "temp", "user"):
        os.makedirs(os.path.join(base_dir, name), exist_ok=True)
    link = os.path.join(custom_nodes, PACK_NAME)
    if not os.path.islink(link):
        os.symlink(REPO_ROOT, link, target_is_directory=True)
    port = free_port()
    log_path = os.path.join(base_dir, "server.log")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--base-directory",
           base_dir, "--disable-auto-launch"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    server = Server(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise ServerError(f"ComfyUI exited during start-up ({process.returncode}):\n{server.log_tail()}")
            try:
                server.get("/system_stats", timeout=5)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline:
                    raise ServerError(f"ComfyUI did not answer within {start_timeout} s:\n{server.log_tail()}")
                time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGINT)
            try:
                process.wait(stop_timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
