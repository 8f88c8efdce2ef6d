"""The pack's one way to boot and run ComfyUI: in-process (edit_image.py, bench/, scripts/, the tests) or as a server.

Only ComfyUI's public surfaces are used, so one code path works on 0.3.64 (the declared minimum) through 0.8.0:
- booting as main.py does: ``comfy.cli_args.args`` set before ``comfy.model_management`` is imported,
  ``utils.extra_config`` before ``nodes``, ``nodes.init_extra_nodes`` and ``nodes.load_custom_node`` for the pack;
- running a graph as main.py's prompt worker does: ``execution.validate_prompt`` then
  ``execution.PromptExecutor(...).execute``; the executor's constructor changed in 0.3.68 (``cache_args``), so it is
  built from its signature, its caches are never read;
- results come from the "executed" messages the executor sends to its server (what the web frontend and /history
  see: the UI outputs of output nodes) and, for any other node output a caller wants, from a capture node that
  ``run_prompt`` adds to the graph: a plain output node registered through ``NODE_CLASS_MAPPINGS`` like any pack's.

Functions:
  find_comfyui(explicit=None)                 the ComfyUI folder: explicit, $COMFYUI_PATH, or the one the pack is in
  model_folders(comfyui, base_directory, ...) ComfyUI's model and output folders, read in a second, without booting
  boot(comfyui=None, device="cpu", ...)       import ComfyUI in-process (idempotent); returns its ``nodes`` module
  load_pack()                                 load this pack through ComfyUI's own loader; its NODE_CLASS_MAPPINGS
  call_node(node, **inputs)                   run one node's FUNCTION under inference_mode, as the executor does
  run_prompt(prompt, ...)                     validate and execute an API-format prompt; outputs and captured values
  node_output(result, node_id, slot, index)   one captured output value
  io_dirs()                                   the input/output/temp folders ComfyUI was given
  comfy_server(base_dir)                      a real ComfyUI server in a subprocess (context manager)
"""

import asyncio
import contextlib
import copy
import inspect
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK_NAME = "comfyui-pix2pix-zero"

# Top-level module names that must come from the ComfyUI checkout (the pack has its own ``nodes`` package, so a
# stray ``import nodes`` with only the pack on sys.path would shadow ComfyUI's nodes.py).
_COMFY_TOP_LEVEL = ("comfy", "nodes", "execution", "folder_paths", "server", "latent_preview", "node_helpers",
                    "comfy_execution", "comfy_api", "comfy_extras", "utils", "app")

CAPTURE_NODE = "P2PZHost_Capture"

_state = {}


class HostError(RuntimeError):
    """ComfyUI could not be found, booted, or could not load the pack; the message says what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Finding and booting ComfyUI
# ----------------------------------------------------------------------------------------------------------------

def is_comfyui(path) -> bool:
    return bool(path) and os.path.isfile(os.path.join(path, "main.py")) and os.path.isdir(os.path.join(path, "comfy"))


def find_comfyui(explicit=None) -> str:
    """``explicit``, else $COMFYUI_PATH, else the ComfyUI this pack is installed in (``custom_nodes/<pack>``)."""
    for path in (explicit, os.environ.get("COMFYUI_PATH"), os.path.dirname(os.path.dirname(PACK_DIR))):
        if path and is_comfyui(os.path.expanduser(path)):
            return os.path.abspath(os.path.expanduser(path))
    if explicit:
        raise HostError(f"{explicit!r} is not a ComfyUI folder (no main.py and comfy/ in it)")
    raise HostError("ComfyUI not found: pass its folder (--comfyui), set COMFYUI_PATH, or install this pack in "
                    "ComfyUI/custom_nodes/")


# Run by model_folders() in a child python: only ComfyUI's folder layout code (comfy.cli_args, folder_paths,
# utils.extra_config: no torch, about 0.5 s), with the same settings boot() would give it.
_FOLDER_PROBE = r"""
import json, os, sys
comfyui, base_directory, names, extra = json.loads(sys.argv[1])
sys.path.insert(0, comfyui)
import comfy.options
from comfy.cli_args import args
if base_directory:
    args.base_directory = base_directory
import utils.extra_config
import folder_paths
if extra and os.path.isfile(os.path.join(comfyui, "extra_model_paths.yaml")):
    utils.extra_config.load_extra_path_config(os.path.join(comfyui, "extra_model_paths.yaml"))
print(json.dumps({"models_dir": folder_paths.models_dir, "output": folder_paths.get_output_directory(),
                  "folders": {n: list(folder_paths.folder_names_and_paths.get(n, ([], set()))[0]) for n in names},
                  "extensions": {n: sorted(folder_paths.folder_names_and_paths.get(n, ([], set()))[1])
                                 for n in names}}))
"""


def model_folders(comfyui, base_directory=None, names=("checkpoints",), extra_model_paths=True, python=None) -> dict:
    """Where this ComfyUI looks for models and writes outputs, as boot() would set it up, without booting it (so a
    command can check its inputs and models in a second instead of after ComfyUI's start-up): ComfyUI's own
    folder_paths and extra_model_paths.yaml reader run in a child python, so nothing is imported here.

    Returns {"models_dir", "output", "folders": {name: [paths]}, "extensions": {name: [".safetensors", ...]}}; a name
    ComfyUI does not know itself (a pack's folder such as "blip") has the paths extra_model_paths.yaml gives it.
    """
    comfyui = find_comfyui(comfyui)
    request = json.dumps([comfyui, os.path.abspath(base_directory) if base_directory else None, list(names),
                          bool(extra_model_paths)])
    done = subprocess.run([python or sys.executable, "-c", _FOLDER_PROBE, request], cwd=comfyui,
                          capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        raise HostError(f"could not read ComfyUI's model folders from {comfyui}:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _module_file_under(module, root):
    f = getattr(module, "__file__", None)
    if f is None:
        paths = list(getattr(module, "__path__", []) or [])
        f = paths[0] if paths else None
    if f is None:
        return True  # namespace package or builtin: cannot tell, do not complain
    return os.path.realpath(f).startswith(os.path.realpath(root) + os.sep)


def boot(comfyui=None, device="cpu", attention=None, base_directory=None, io_root=None, input_dir=None,
         extra_model_paths=False, extra_nodes=True):
    """Import ComfyUI in-process, as main.py does; idempotent (later calls return the booted ``nodes`` module).

    - ``device``: "cpu" forces the CPU (ComfyUI's --cpu); "auto" takes ComfyUI's choice (the GPU if there is one);
      "cuda" insists on a CUDA device.
    - ``attention``: "pytorch" is ComfyUI's --use-pytorch-cross-attention; None keeps ComfyUI's default.
    - ``base_directory``: as --base-directory (models/, output/, ... under it).
    - ``io_root``: a folder for ComfyUI's input/output/temp folders; None makes a temporary one removed at exit
      unless ``base_directory`` or ``extra_model_paths`` says the user's own folders are meant (then ComfyUI's
      defaults stay). ``input_dir`` overrides the input folder alone.
    - ``extra_model_paths``: read ComfyUI's own extra_model_paths.yaml, as main.py does.
    - ``extra_nodes``: register ComfyUI's built-in extra nodes (SamplerCustom, FlipSigmas, ...).
    Command-line parsing stays off (``comfy.options.enable_args_parsing`` is never called), so ``args`` holds
    ComfyUI's defaults and only what is named here is changed.
    """
    if _state.get("nodes") is not None:
        return _state["nodes"]
    comfyui = find_comfyui(comfyui)
    for name in _COMFY_TOP_LEVEL:
        mod = sys.modules.get(name)
        if mod is not None and not _module_file_under(mod, comfyui):
            raise HostError(f"module {name!r} was already imported from {getattr(mod, '__file__', None)!r}, not "
                            f"from ComfyUI at {comfyui}: boot ComfyUI before importing anything of that name")
    while comfyui in sys.path:
        sys.path.remove(comfyui)
    sys.path.insert(0, comfyui)

    import comfy.options  # noqa: F401  (args parsing stays off: ComfyUI's defaults)
    from comfy.cli_args import args

    if "comfy.model_management" in sys.modules:
        raise HostError("comfy.model_management was imported before boot(): its device choice is already made")
    if base_directory:
        args.base_directory = os.path.abspath(base_directory)
    args.cpu = device == "cpu"
    if attention == "pytorch":
        args.use_pytorch_cross_attention = True

    import torch  # noqa: F401  (after cli_args, as main.py does)
    import comfy.model_management as mm

    torch_device = mm.get_torch_device()
    if device == "cpu" and not mm.is_device_cpu(torch_device):
        raise HostError(f"ComfyUI did not come up on the CPU: {torch_device}")
    if device == "cuda" and getattr(torch_device, "type", None) != "cuda":
        raise HostError(f"ComfyUI did not come up on CUDA: {torch_device}")
    # nodes.py puts <ComfyUI>/comfy first on sys.path, after which "utils" would resolve to comfy/utils.py; main.py
    # imports the top-level utils package first, and server.py (imported by some comfy_extras) needs it.
    import utils.extra_config
    import folder_paths

    if extra_model_paths:
        yaml_path = os.path.join(comfyui, "extra_model_paths.yaml")
        if os.path.isfile(yaml_path):
            utils.extra_config.load_extra_path_config(yaml_path)
    import nodes
    import execution  # noqa: F401

    if io_root is None and not (base_directory or extra_model_paths):
        io_root = tempfile.mkdtemp(prefix="p2pz-comfy-")
        import atexit
        atexit.register(shutil.rmtree, io_root, True)
    if io_root is not None:
        for kind, setter in (("input", folder_paths.set_input_directory),
                             ("output", folder_paths.set_output_directory),
                             ("temp", folder_paths.set_temp_directory)):
            os.makedirs(os.path.join(io_root, kind), exist_ok=True)
            setter(os.path.join(io_root, kind))
    if input_dir is not None:
        folder_paths.set_input_directory(input_dir)

    _state.update(nodes=nodes, comfyui=comfyui)
    if extra_nodes:
        # Missing optional dependencies (torchaudio) make a few comfy_extras files fail: ComfyUI only logs that.
        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    nodes.NODE_CLASS_MAPPINGS.setdefault(CAPTURE_NODE, _CaptureNode)
    return nodes


def booted():
    """ComfyUI's ``nodes`` module if boot() ran, else None."""
    return _state.get("nodes")


def _nodes():
    nodes = _state.get("nodes")
    if nodes is None:
        raise HostError("ComfyUI is not booted: call comfy_host.boot() first")
    return nodes


def comfyui_version() -> str:
    """The booted ComfyUI's version string (comfyui_version.py; "unknown" for very old checkouts)."""
    path = os.path.join(_state.get("comfyui") or find_comfyui(), "comfyui_version.py")
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return "unknown"


def io_dirs() -> dict:
    """{"input", "output", "temp"}: the folders ComfyUI reads and writes."""
    _nodes()
    import folder_paths
    return {"input": folder_paths.get_input_directory(), "output": folder_paths.get_output_directory(),
            "temp": folder_paths.get_temp_directory()}


class _CaptureLogs(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.lines = []

    def emit(self, record):
        try:
            self.lines.append(record.getMessage())
        except Exception:  # pragma: no cover
            self.lines.append(str(record.msg))


def load_pack():
    """Load this pack the way ComfyUI does and return its NODE_CLASS_MAPPINGS (idempotent).

    A temporary ``custom_nodes`` folder gets a link ``comfyui-pix2pix-zero`` -> the pack (so the module name is the
    installed one wherever the pack lives), and ComfyUI's own ``nodes.load_custom_node`` imports it, with the core
    node names as ``ignore`` as init_external_custom_nodes passes them. That function never raises: it logs and
    returns False, so the log is captured into the HostError.
    """
    if _state.get("pack_mappings") is not None:
        return _state["pack_mappings"]
    nodes = _nodes()
    import folder_paths

    cn_root = tempfile.mkdtemp(prefix="p2pz-custom-nodes-")
    import atexit
    atexit.register(shutil.rmtree, cn_root, True)
    custom_nodes = os.path.join(cn_root, "custom_nodes")
    os.makedirs(custom_nodes)
    link = os.path.join(custom_nodes, PACK_NAME)
    os.symlink(PACK_DIR, link, target_is_directory=True)
    folder_paths.add_model_folder_path("custom_nodes", custom_nodes)

    before = dict(nodes.NODE_CLASS_MAPPINGS)
    handler = _CaptureLogs()
    root_logger = logging.getLogger()
    old_level = root_logger.level
    root_logger.addHandler(handler)
    if old_level > logging.WARNING:  # load_custom_node reports failures with logging.warning only
        root_logger.setLevel(logging.WARNING)
    try:
        ok = asyncio.run(nodes.load_custom_node(link, ignore=set(before), module_parent="custom_nodes"))
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
    if not ok:
        log = "\n".join(handler.lines) or "(nothing logged)"
        raise HostError(f"ComfyUI could not load the pack from {PACK_DIR} (via {link}):\n{log}")
    module = _module_of_file(os.path.join(PACK_DIR, "__init__.py"))  # whatever name ComfyUI's loader gave it
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None) if module is not None else None
    if mappings is None:
        mappings = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if before.get(k) is not v}
    _state.update(pack_module=module, pack_mappings=mappings)
    return mappings


def _module_of_file(path):
    """The imported module whose file is ``path`` (links resolved), or None: found by what it is, not by the
    private naming scheme of ComfyUI's custom-node loader, which may change."""
    target = os.path.realpath(path)
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and os.path.realpath(file) == target:
            return module
    return None


def pack_module():
    """The pack's top-level module as ComfyUI imported it (after load_pack())."""
    load_pack()
    return _state["pack_module"]


def pack_import(name):
    """A module of this pack as ComfyUI imported it, e.g. pack_import("core.direction") (after load_pack()).

    A process that runs the pack's nodes holds the pack under ComfyUI's name; importing ``core`` as a top-level
    package there would load a second copy of it (other classes, other module state). Code that works beside the
    loaded pack (host tests, in-process commands) takes its modules from here."""
    import importlib

    return importlib.import_module(f"{pack_module().__name__}.{name}")


def call_node(node, **inputs):
    """Run a classic node's FUNCTION once with keyword inputs, under torch.inference_mode() as the executor does.

    ``node`` is a node class or a registered name. Returns what the function returns. Input lists, OUTPUT_IS_LIST
    and hidden inputs are not emulated: use run_prompt for those.
    """
    nodes = _nodes()
    import torch
    cls = nodes.NODE_CLASS_MAPPINGS[node] if isinstance(node, str) else node
    with torch.inference_mode():
        return getattr(cls(), cls.FUNCTION)(**inputs)


# ----------------------------------------------------------------------------------------------------------------
# Running API-format prompts
# ----------------------------------------------------------------------------------------------------------------

_captured = {}


class _AnyType(str):
    """A socket type equal to every type, for ComfyUI's validation on every version: 0.3.64 compares type names
    with ``!=`` (and honours a ``__ne__`` override, as its validate_node_input says), where later versions also
    accept "*"."""

    def __ne__(self, other):
        return False

    __hash__ = str.__hash__


class _CaptureNode:
    """An output node that keeps what it receives, so a caller can read any node's output after a run without
    touching the executor's caches. ``run_prompt`` wires one to each output slot it is asked to capture."""

    INPUT_IS_LIST = True  # the whole list an upstream list output carries, as one value
    OUTPUT_NODE = True
    RETURN_TYPES = ()
    FUNCTION = "capture"
    CATEGORY = "_p2pz_host"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"value": (_AnyType("*"), {}), "key": ("STRING", {"default": ""})}}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # never served from a reused executor's cache: the value must be stored again

    def capture(self, value, key):
        _captured[key[0]] = value
        return {}


class _Server:
    """What PromptExecutor needs of its server (client_id, last_node_id, last_prompt_id, sockets_metadata,
    send_sync, queue_updated). Every message is kept; ``on_message`` sees each as it is sent."""

    def __init__(self, on_message=None):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.events = []
        self.on_message = on_message

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))
        if self.on_message is not None:
            self.on_message(event, data)

    def queue_updated(self):
        pass


def new_executor(on_message=None):
    """A PromptExecutor with ComfyUI's default (classic) cache, built for whichever constructor this ComfyUI has:
    0.3.68 added ``cache_args`` and polls ``cache_args["ram"]`` after every node (main.py passes lru and ram)."""
    import execution
    params = inspect.signature(execution.PromptExecutor).parameters
    kwargs = {}
    if "cache_args" in params:
        kwargs["cache_args"] = {"lru": 0, "ram": 0}
    elif "cache_size" in params:
        kwargs["cache_size"] = None
    return execution.PromptExecutor(_Server(on_message), **kwargs)


class PromptError(AssertionError):
    """ComfyUI refused or failed a prompt; the message is ComfyUI's own text."""

    def __init__(self, message, node_errors=None, exception_type=None, node_id=None):
        super().__init__(message)
        self.node_errors = node_errors or {}
        self.exception_type = exception_type
        self.node_id = node_id


def validate(prompt, prompt_id="p2pz"):
    """``execution.validate_prompt`` as server.py calls it: (ok, error, output node ids, node_errors)."""
    import execution
    result = execution.validate_prompt(prompt_id, prompt, None)  # None: every output node, as POST /prompt
    if inspect.iscoroutine(result):
        result = asyncio.run(result)
    return result


def format_validation_error(error, node_errors, prompt=None):
    lines = [f"{error.get('message')}: {error.get('details')}".rstrip(": ")]
    for node_id, info in (node_errors or {}).items():
        for e in info.get("errors", []):
            lines.append(f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "ComfyUI rejected the prompt:\n" + "\n".join(lines)


def _producing_nodes(prompt, outputs):
    """The nodes the executor will run for ``outputs``: the output nodes and everything upstream of them."""
    seen, todo = set(), list(outputs)
    while todo:
        node_id = todo.pop()
        if node_id in seen or node_id not in prompt:
            continue
        seen.add(node_id)
        for value in prompt[node_id]["inputs"].values():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                todo.append(value[0])
    return seen


def run_prompt(prompt, extra_data=None, executor=None, capture="all", on_message=None, prompt_id=None):
    """Validate and execute an API-format prompt ``{node_id: {"class_type", "inputs"}}`` in-process, as main.py's
    prompt worker does (do not call it from a running event loop: ComfyUI runs its own).

    ``capture``: which node outputs to keep: "all" (every output slot of every node the prompt runs), an iterable of
    node ids, or None. A fresh executor (empty caches) is used unless one from ``new_executor`` is given.
    Raises PromptError with ComfyUI's message if validation or execution fails. Returns a dict:
      "prompt_id", "outputs": {node_id: ui dict} (what /history/<id> shows, from the "executed" messages),
      "node_outputs": {node_id: [slot0_values, ...]} captured values (each slot a list, one item per call),
      "messages": the executor's status messages, "events": every message sent, "executor".
    """
    nodes = _nodes()
    prompt = copy.deepcopy(prompt)
    prompt_id = prompt_id or str(uuid.uuid4())

    keys = {}

    def add_captures(wanted):
        added = []
        for node_id in sorted(wanted):
            cls = nodes.NODE_CLASS_MAPPINGS.get(prompt[node_id]["class_type"])
            for slot in range(len(getattr(cls, "RETURN_TYPES", ()) or ())):
                key = f"{prompt_id}:{node_id}:{slot}"
                capture_id = f"p2pz-capture-{node_id}-{slot}"
                prompt[capture_id] = {"class_type": CAPTURE_NODE, "inputs": {"value": [node_id, slot], "key": key}}
                keys[(node_id, slot)] = key
                added.append(capture_id)
        return added

    # Named nodes are captured before validation, so a prompt whose only outputs are its captures (no Save or
    # Preview node: collect_pairs.py's) is valid; "all" needs the validated outputs to know what runs.
    if capture is not None and capture != "all":
        add_captures({str(c) for c in capture})
    ok, error, outputs_to_execute, node_errors = validate(prompt, prompt_id)
    if not ok:
        raise PromptError(format_validation_error(error, node_errors), node_errors=node_errors)
    if capture == "all":
        outputs_to_execute = list(outputs_to_execute) + add_captures(_producing_nodes(prompt, outputs_to_execute))

    if executor is None:
        executor = new_executor(on_message)
    server = executor.server
    server.last_prompt_id = prompt_id
    start = len(server.events)
    extra = dict(extra_data or {})
    extra.setdefault("client_id", "p2pz-host")  # the executor sends "executed" (UI outputs) only to a client
    try:
        executor.execute(prompt, prompt_id, extra, outputs_to_execute)
        events = server.events[start:]
        if not executor.success or not any(event == "execution_success" for event, _ in events):
            raise _execution_error(events)
        ui_outputs = {}
        for event, data in events:
            if event == "executed" and data.get("output") is not None and not str(data["node"]).startswith("p2pz-capture-"):
                ui_outputs[data["node"]] = data["output"]
        node_outputs = {}
        for (node_id, slot), key in keys.items():
            if key in _captured:
                node_outputs.setdefault(node_id, {})[slot] = _captured[key]
        node_outputs = {n: [slots.get(i) for i in range(max(slots) + 1)] for n, slots in node_outputs.items()}
    finally:
        for key in keys.values():
            _captured.pop(key, None)
    return {"prompt_id": prompt_id, "outputs": ui_outputs, "node_outputs": node_outputs,
            "messages": list(executor.status_messages), "events": list(events), "executor": executor}


def _execution_error(events):
    for event, data in events:
        if event == "execution_error":
            tb = "".join(data.get("traceback") or [])
            return PromptError(f"ComfyUI failed in node {data.get('node_id')} ({data.get('node_type')}): "
                               f"{data.get('exception_type')}: {data.get('exception_message')}\n{tb}",
                               exception_type=data.get("exception_type"), node_id=data.get("node_id"))
        if event == "execution_interrupted":
            return PromptError(f"ComfyUI execution was interrupted in node {data.get('node_id')} "
                               f"({data.get('node_type')})", node_id=data.get("node_id"))
    return PromptError("ComfyUI execution failed: " + repr(events)[-3000:])


def node_output(result, node_id, slot=0, index=0):
    """``result["node_outputs"][node_id][slot][index]``: one captured output value of one node."""
    node_id = str(node_id)
    if node_id not in result["node_outputs"]:
        raise KeyError(f"node {node_id} has no captured outputs (not executed, or not asked for in capture=)")
    return result["node_outputs"][node_id][slot][index]


# ----------------------------------------------------------------------------------------------------------------
# A real server in a subprocess
# ----------------------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerError(AssertionError):
    pass


class Server:
    """A running ComfyUI server: its URL, process and log; the HTTP calls the frontend makes."""

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

    def post_prompt(self, prompt, client_id=None) -> str:
        data = json.dumps({"prompt": prompt, "client_id": client_id or str(uuid.uuid4())}).encode()
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
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
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
def comfy_server(base_dir, comfyui=None, python=None, start_timeout=240, stop_timeout=20, extra_args=()):
    """Start ``main.py --cpu --listen 127.0.0.1 --port <free> --base-directory <base_dir>`` with this pack linked
    into ``<base_dir>/custom_nodes``, wait until it answers, yield a Server, and always stop it (SIGINT, then
    SIGKILL). Models go in ``<base_dir>/models/<folder>``; the log is ``<base_dir>/server.log``."""
    comfyui = find_comfyui(comfyui)
    base_dir = os.path.abspath(base_dir)
    custom_nodes = os.path.join(base_dir, "custom_nodes")
    os.makedirs(custom_nodes, exist_ok=True)
    for name in ("models", "input", "output", "temp", "user"):
        os.makedirs(os.path.join(base_dir, name), exist_ok=True)
    link = os.path.join(custom_nodes, PACK_NAME)
    if not os.path.islink(link):
        os.symlink(PACK_DIR, link, target_is_directory=True)
    port = free_port()
    log_path = os.path.join(base_dir, "server.log")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
    cmd = [python or sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port),
           "--base-directory", base_dir, "--disable-auto-launch", *extra_args]
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
