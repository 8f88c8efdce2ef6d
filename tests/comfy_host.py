"""In-process ComfyUI host for the pack's tests (a helper module, not a test file).

Importable only when the environment variable COMFYUI_PATH points at a ComfyUI checkout (tested against 0.3.64).
Nothing here downloads anything: every model is built from seeded random weights at test time.

Public API
----------
boot_comfy() -> module                  ComfyUI only, CPU mode, idempotent; returns ComfyUI's ``nodes`` module.
load_pack() -> dict                     loads THIS pack through ComfyUI's own ``nodes.load_custom_node`` and
                                        returns its NODE_CLASS_MAPPINGS; raises PackLoadError with the traceback.
boot() -> dict                          boot_comfy() + load_pack().
call_node(node, **inputs) -> object     runs one classic node's FUNCTION under torch.inference_mode(), as the
                                        executor does; ``node`` is a class or a registered class name.
tiny_sd15(seed=0) -> (MODEL, CLIP, VAE) tiny SD 1.5-shaped ComfyUI objects, float32, deterministic from ``seed``.
tiny_sd15_checkpoint(cache_dir, seed=0, verify=True) -> str
                                        path of ``<cache_dir>/checkpoints/<name>.safetensors``, an fp16 checkpoint
                                        that CheckpointLoaderSimple detects as SD 1.5 (built once, then reused).
use_models_dir(path) -> None            adds ``<path>/checkpoints`` to ComfyUI's "checkpoints" folder list.
run_prompt(prompt, extra_data=None, executor=None) -> dict
                                        validates and executes an API-format prompt through execution.py.
node_output(result, node_id, slot=0, index=0)
                                        one value from run_prompt's ``node_outputs``.
io_dirs() -> dict                       the temporary input/output/temp directories ComfyUI writes to.
"""

import asyncio
import copy
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import uuid
import atexit

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")
if not COMFYUI_PATH:
    raise ImportError("COMFYUI_PATH is not set: host tests need a ComfyUI checkout")
COMFYUI_PATH = os.path.abspath(os.path.expanduser(COMFYUI_PATH))

PACK_NAME = "comfyui-pix2pix-zero"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Top-level module names that must come from the ComfyUI checkout (the pack has its own ``nodes`` package, so a
# stray ``import nodes`` with only the repo root on sys.path would shadow ComfyUI's nodes.py).
_COMFY_TOP_LEVEL = ("comfy", "nodes", "execution", "folder_paths", "server", "latent_preview", "node_helpers",
                    "comfy_execution", "comfy_api", "comfy_extras", "utils", "app")

_state = {}


class PackLoadError(RuntimeError):
    """ComfyUI could not import the pack."""


# ----------------------------------------------------------------------------------------------------------------
# Booting ComfyUI
# ----------------------------------------------------------------------------------------------------------------

def _module_file_under(module, root):
    f = getattr(module, "__file__", None)
    if f is None:
        paths = list(getattr(module, "__path__", []) or [])
        f = paths[0] if paths else None
    if f is None:
        return True  # namespace package or builtin: cannot tell, do not complain
    return os.path.realpath(f).startswith(os.path.realpath(root) + os.sep)


def boot_comfy(extra_nodes=True):
    """Import ComfyUI in-process in CPU mode. Idempotent. Returns ComfyUI's ``nodes`` module.

    - puts COMFYUI_PATH first on sys.path;
    - sets ``comfy.cli_args.args.cpu = True`` before ``comfy.model_management`` is imported (ComfyUI only parses
      the command line when ``comfy.options.enable_args_parsing()`` was called, which main.py does and we do not,
      so ``args`` holds the defaults and we set what we need on it);
    - points ComfyUI's input/output/temp directories at a temporary directory (never the checkout);
    - with ``extra_nodes`` registers the built-in comfy_extras nodes (SamplerCustom, FlipSigmas, ...) through
      ``nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False)`` (a coroutine).
    """
    if _state.get("nodes") is not None:
        if extra_nodes and not _state.get("extra_nodes"):
            _load_extra_nodes(_state["nodes"])
        return _state["nodes"]

    if not os.path.isfile(os.path.join(COMFYUI_PATH, "nodes.py")) or not os.path.isdir(os.path.join(COMFYUI_PATH, "comfy")):
        raise RuntimeError(f"COMFYUI_PATH={COMFYUI_PATH!r} does not look like a ComfyUI checkout (no nodes.py / comfy/)")

    for name in _COMFY_TOP_LEVEL:
        mod = sys.modules.get(name)
        if mod is not None and not _module_file_under(mod, COMFYUI_PATH):
            raise RuntimeError(
                f"module {name!r} was already imported from {getattr(mod, '__file__', None)!r}, not from ComfyUI; "
                "something imported a module of that name before boot_comfy() (the pack's own modules are imported "
                "package-relative, or through load_pack(), never as top-level 'nodes')")

    while COMFYUI_PATH in sys.path:
        sys.path.remove(COMFYUI_PATH)
    sys.path.insert(0, COMFYUI_PATH)

    import comfy.options  # noqa: F401  (args_parsing stays False: cli_args parses [] and gives defaults)
    from comfy.cli_args import args

    if "comfy.model_management" in sys.modules and not args.cpu:
        raise RuntimeError("comfy.model_management was imported before comfy_host.boot_comfy() could set args.cpu")
    args.cpu = True

    import torch  # noqa: F401  (after cli_args, as main.py does)
    import comfy.model_management as mm
    if not mm.is_device_cpu(mm.get_torch_device()):
        raise RuntimeError(f"ComfyUI did not come up on the CPU: {mm.get_torch_device()}")
    import folder_paths
    # nodes.py puts <ComfyUI>/comfy first on sys.path, after which "utils" would resolve to comfy/utils.py; main.py
    # imports the top-level utils package first, and server.py (imported by some comfy_extras) needs it.
    import utils.extra_config  # noqa: F401
    import nodes
    import execution  # noqa: F401

    root = tempfile.mkdtemp(prefix="p2pz-comfy-")
    atexit.register(shutil.rmtree, root, True)
    dirs = {k: os.path.join(root, k) for k in ("input", "output", "temp")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    folder_paths.set_input_directory(dirs["input"])
    folder_paths.set_output_directory(dirs["output"])
    folder_paths.set_temp_directory(dirs["temp"])
    _state["root"] = root
    _state["dirs"] = dirs

    _state["nodes"] = nodes
    if extra_nodes:
        _load_extra_nodes(nodes)
    return nodes


def _load_extra_nodes(nodes):
    # Missing optional dependencies (torchaudio) make a few comfy_extras files fail: ComfyUI only logs that.
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    _state["extra_nodes"] = True


def io_dirs():
    """{"input", "output", "temp"}: the temporary directories boot_comfy() gave ComfyUI."""
    boot_comfy()
    return dict(_state["dirs"])


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
    """Load this repository as a custom node pack the way ComfyUI does; return its NODE_CLASS_MAPPINGS.

    A temporary ``custom_nodes`` directory gets a symlink ``comfyui-pix2pix-zero`` -> repo root, and ComfyUI's own
    ``nodes.load_custom_node(module_path, ignore, module_parent)`` (a coroutine in 0.3.64) imports it. That function
    never raises: it logs the traceback and returns False, so the log is captured and raised as PackLoadError.
    Core node names are passed as ``ignore`` (as init_external_custom_nodes does): a pack cannot override them.
    """
    if _state.get("pack_mappings") is not None:
        return _state["pack_mappings"]
    nodes = boot_comfy()
    import folder_paths

    if not os.path.isfile(os.path.join(REPO_ROOT, "__init__.py")):
        raise PackLoadError(f"the pack has no __init__.py at {REPO_ROOT} (not written yet?)")

    cn_root = tempfile.mkdtemp(prefix="p2pz-custom-nodes-")
    atexit.register(shutil.rmtree, cn_root, True)
    custom_nodes = os.path.join(cn_root, "custom_nodes")
    os.makedirs(custom_nodes)
    link = os.path.join(custom_nodes, PACK_NAME)
    os.symlink(REPO_ROOT, link, target_is_directory=True)
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
        raise PackLoadError(f"ComfyUI could not load the pack from {REPO_ROOT} (via {link}):\n{log}")

    sys_module_name = link.replace(".", "_x_")  # what load_custom_node uses as the sys.modules key
    module = sys.modules.get(sys_module_name)
    mappings = getattr(module, "NODE_CLASS_MAPPINGS", None) if module is not None else None
    if mappings is None:  # V3 pack (comfy_entrypoint): report what it registered
        mappings = {k: v for k, v in nodes.NODE_CLASS_MAPPINGS.items() if before.get(k) is not v}
    _state["pack_module"] = module
    _state["pack_mappings"] = mappings
    return mappings


def pack_module():
    """The pack's top-level module object as ComfyUI imported it (after load_pack())."""
    load_pack()
    return _state["pack_module"]


def boot():
    """boot_comfy() then load_pack(); returns the pack's NODE_CLASS_MAPPINGS."""
    boot_comfy()
    return load_pack()


def call_node(node, **inputs):
    """Run a classic node's FUNCTION once with keyword inputs, under torch.inference_mode() like execution.py.

    ``node`` is a node class or a name registered in ComfyUI's NODE_CLASS_MAPPINGS. Returns what the function
    returns (normally a tuple of outputs; output nodes may return {"ui": ..., "result": ...}). Input lists,
    OUTPUT_IS_LIST and hidden inputs are not emulated: use run_prompt for that.
    """
    nodes = boot_comfy()
    import torch
    cls = nodes.NODE_CLASS_MAPPINGS[node] if isinstance(node, str) else node
    obj = cls()
    with torch.inference_mode():
        return getattr(obj, cls.FUNCTION)(**inputs)


# ----------------------------------------------------------------------------------------------------------------
# Deterministic weights
# ----------------------------------------------------------------------------------------------------------------

def _torch_reset_owner(module):
    """The torch.nn class whose reset_parameters applies to ``module`` (comfy.ops overrides it with a no-op)."""
    for cls in type(module).__mro__:
        if cls.__module__.startswith("torch.nn.modules") and "reset_parameters" in cls.__dict__:
            return cls
    return None


def init_module_weights(module, seed):
    """Initialise every torch.nn layer inside ``module`` with torch's default init, deterministically from ``seed``.

    comfy.ops layers (disable_weight_init / manual_cast) skip initialisation and hold torch.empty memory, and their
    own reset_parameters does nothing, so the torch.nn base class's reset_parameters is called explicitly. Parameters
    owned directly by non-torch.nn modules (TAESD's vae_scale/vae_shift, CLIP's logit_scale) keep their constructor
    values. The global RNG state is left untouched. Returns the module.
    """
    import torch
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for m in module.modules():
            owner = _torch_reset_owner(m)
            if owner is not None:
                owner.reset_parameters(m)
    for name, p in module.named_parameters():
        if not torch.isfinite(p).all():
            raise RuntimeError(f"parameter {name} is not finite after init")
    return module


# ----------------------------------------------------------------------------------------------------------------
# Tiny SD 1.5 objects (direct construction)
# ----------------------------------------------------------------------------------------------------------------

# SD 1.5's structure (4 levels, 2 res blocks, attention on the first three levels, 16 attn2 layers: input 1,2,4,5,
# 7,8; middle 0; output 3..11) at model_channels 32 and context_dim 32.
TINY_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 32, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 2, 2], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 32, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# Overrides of ComfyUI's CLIP-L config (comfy/sd1_clip_config.json): hidden 32 = TINY_UNET_CONFIG["context_dim"].
TINY_CLIP_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
                    "projection_dim": 32}
# A 4-level KL autoencoder (downscale 8, 4 latent channels) with 32 base channels.
TINY_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                     "ch_mult": [1, 2, 2, 2], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}


def tiny_sd15(seed=0):
    """Build ``(model_patcher, clip, vae)``: tiny, float32, SD 1.5-shaped, weights deterministic from ``seed``.

    - MODEL: ``comfy.supported_models.SD15(TINY_UNET_CONFIG)`` -> set_inference_dtype(float32) -> get_model({}) (an
      eps-prediction BaseModel) wrapped in a ModelPatcher (CPU load/offload devices).
    - CLIP: ``comfy.sd.CLIP(ClipTarget(SD1Tokenizer, SD1ClipModel))`` with ``clip_l_model_config`` = TINY_CLIP_CONFIG
      (2 layers, hidden 32), dtype float32 (ComfyUI's CPU default for text encoders would be fp16). The real CLIP-L
      tokenizer (bundled with ComfyUI) is used, so any prompt text works.
    - VAE: ``comfy.sd.VAE`` around an AutoencoderKL with TINY_VAE_DDCONFIG, dtype float32.
    About 3.2M + 1.6M + 0.4M parameters; stock nodes (CLIPTextEncode, KSampler, VAEEncode, VAEDecode) accept them.
    Weights: seed for the UNet, seed + 1 for the text encoder, seed + 2 for the VAE.
    """
    boot_comfy()
    import torch
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.supported_models_base
    from comfy.ldm.models.autoencoder import AutoencoderKL

    model_config = comfy.supported_models.SD15(TINY_UNET_CONFIG)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    init_module_weights(model.diffusion_model, seed)
    model.eval()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())

    target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
    clip = comfy.sd.CLIP(target, model_options={"clip_l_model_config": dict(TINY_CLIP_CONFIG),
                                                "dtype": torch.float32})
    init_module_weights(clip.cond_stage_model, seed + 1)

    vae_sd = _seeded_state_dict(lambda: AutoencoderKL(ddconfig=dict(TINY_VAE_DDCONFIG), embed_dim=4), seed + 2)
    vae = comfy.sd.VAE(sd=vae_sd, config={"params": {"ddconfig": dict(TINY_VAE_DDCONFIG), "embed_dim": 4}},
                       dtype=torch.float32)
    return patcher, clip, vae


def _seeded_state_dict(factory, seed):
    import torch
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = factory()
    init_module_weights(module, seed)
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------------------------------------------
# Tiny SD 1.5 checkpoint file
# ----------------------------------------------------------------------------------------------------------------

# What model detection needs to call it SD 1.5: model_channels 320, context_dim 768 (attn2 to_k), conv proj_in,
# 4 input channels, no label_emb. The rest is free, so: two levels, one res block each, attention on level 0 and
# the middle (44M parameters).
CKPT_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [1, 1],
    "transformer_depth": [1, 0], "channel_mult": [1, 1], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
_CKPT_FORMAT_VERSION = 1


def _ckpt_file_name(seed):
    spec = json.dumps({"unet": CKPT_UNET_CONFIG, "clip": "clip_l-12", "vae": "taesd", "dtype": "fp16",
                       "seed": seed, "v": _CKPT_FORMAT_VERSION}, sort_keys=True)
    return "p2pz-tiny-sd15-{}.safetensors".format(hashlib.sha256(spec.encode()).hexdigest()[:12])


def _build_checkpoint_state_dict(seed):
    import torch
    import comfy.sd1_clip
    import comfy.supported_models
    import comfy.taesd.taesd

    model_config = comfy.supported_models.SD15(CKPT_UNET_CONFIG)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({})
    init_module_weights(model.diffusion_model, seed)

    # the full 12-layer CLIP-L text encoder, as CheckpointLoaderSimple builds it (its keys start with "clip_l.")
    clip_sd = _seeded_state_dict(lambda: comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32), seed + 1)
    # TAESD stored under first_stage_model. (comfy.sd.VAE recognises "taesd_decoder.1.weight")
    vae_sd = _seeded_state_dict(lambda: comfy.taesd.taesd.TAESD(), seed + 2)

    sd = model.state_dict_for_saving(clip_state_dict=clip_sd, vae_state_dict=vae_sd)
    out = {}
    for k, v in sd.items():
        v = v.detach()
        if v.is_floating_point():
            v = v.to(torch.float16)
        out[k] = v.contiguous()
    return out


def tiny_sd15_checkpoint(cache_dir, seed=0, verify=True):
    """Path of a small fp16 SD 1.5 checkpoint in ``<cache_dir>/checkpoints/`` (built on first use, then reused).

    UNet: CKPT_UNET_CONFIG (model_channels 320, context_dim 768, channel_mult [1, 1], one res block), the full
    12-layer CLIP-L text encoder, and a TAESD under ``first_stage_model.``; random weights from ``seed``; about
    330 MiB. The file name carries a hash of the build spec, so a changed spec never reuses a stale file; the file
    is written to a temporary name and renamed, so concurrent builders do not see half a file.

    With ``verify`` (once per process and file) the file is loaded through ``nodes.CheckpointLoaderSimple`` (which
    registers ``<cache_dir>/checkpoints`` through use_models_dir), and this checks that the model is SD15 and that
    every text-encoder weight ComfyUI built was present in the file (ComfyUI leaves missing layers uninitialised
    with only a log line).
    """
    boot_comfy()
    import comfy.utils

    ckpt_dir = os.path.join(os.path.abspath(cache_dir), "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    path = os.path.join(ckpt_dir, _ckpt_file_name(seed))
    if not os.path.isfile(path):
        sd = _build_checkpoint_state_dict(seed)
        tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            comfy.utils.save_torch_file(sd, tmp, metadata={"p2pz": "tiny random SD 1.5 test checkpoint"})
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        del sd
    verified = _state.setdefault("verified_ckpts", set())
    if verify and path not in verified:
        _verify_checkpoint(path, cache_dir)
        verified.add(path)
    return path


def _verify_checkpoint(path, cache_dir):
    import torch
    import comfy.supported_models
    import comfy.utils
    nodes = boot_comfy()

    use_models_dir(cache_dir)
    name = os.path.basename(path)
    model, clip, vae = call_node(nodes.CheckpointLoaderSimple, ckpt_name=name)
    if type(model.model.model_config) is not comfy.supported_models.SD15:
        raise AssertionError(f"{name} was detected as {type(model.model.model_config).__name__}, not SD15")
    if clip is None or vae is None or vae.first_stage_model is None:
        raise AssertionError(f"{name} did not give a CLIP and a VAE")

    file_sd = comfy.utils.load_torch_file(path)
    te = clip.cond_stage_model.state_dict()
    layers = {k.split(".")[5] for k in te if k.startswith("clip_l.transformer.text_model.encoder.layers.")}
    if len(layers) != 12:
        raise AssertionError(f"text encoder has {len(layers)} layers, expected 12")
    missing, differs = [], []
    for k, v in te.items():
        if k in ("clip_l.logit_scale", "clip_l.transformer.text_projection.weight"):
            continue  # not stored in SD 1.5 checkpoints (identity projection / constant)
        fk = "cond_stage_model." + k[len("clip_l."):]
        if fk not in file_sd:
            missing.append(k)
        elif not torch.equal(file_sd[fk].to(v.dtype), v):
            differs.append(k)
    if missing or differs:
        raise AssertionError(f"text encoder of {name}: uninitialised {missing[:5]}..., not loaded {differs[:5]}...")


def use_models_dir(path):
    """Register ``<path>/checkpoints`` for "checkpoints" (appended; existing entries, e.g. from
    extra_model_paths.yaml, are kept) so CheckpointLoaderSimple finds files there by name."""
    boot_comfy()
    import folder_paths
    ckpt_dir = os.path.join(os.path.abspath(path), "checkpoints")
    os.makedirs(ckpt_dir, exist_ok=True)
    folder_paths.add_model_folder_path("checkpoints", ckpt_dir)


# ----------------------------------------------------------------------------------------------------------------
# Running API-format prompts
# ----------------------------------------------------------------------------------------------------------------

class ServerStub:
    """What execution.PromptExecutor touches on PromptServer: client_id, last_node_id, last_prompt_id,
    sockets_metadata (preview feature flags), send_sync and queue_updated. Every send_sync is recorded."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.last_prompt_id = None
        self.sockets_metadata = {}
        self.events = []

    def send_sync(self, event, data, sid=None):
        self.events.append((event, data))

    def queue_updated(self):
        pass


def _format_validation_error(error, node_errors):
    lines = [f"{error.get('message')}: {error.get('details')}"]
    for node_id, info in (node_errors or {}).items():
        for e in info.get("errors", []):
            lines.append(f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "ComfyUI rejected the prompt:\n" + "\n".join(lines)


def _format_execution_error(messages):
    for event, data in messages:
        if event == "execution_error":
            tb = "".join(data.get("traceback") or [])
            return (f"ComfyUI failed in node {data.get('node_id')} ({data.get('node_type')}): "
                    f"{data.get('exception_type')}: {data.get('exception_message')}\n{tb}")
        if event == "execution_interrupted":
            return f"ComfyUI execution was interrupted in node {data.get('node_id')} ({data.get('node_type')})"
    return "ComfyUI execution failed: " + repr(messages)


def run_prompt(prompt, extra_data=None, executor=None):
    """Validate and execute an API-format prompt ``{node_id: {"class_type": ..., "inputs": {...}}}`` in-process,
    with ComfyUI's own ``execution.validate_prompt`` and ``execution.PromptExecutor(server).execute``.

    Both are driven as main.py/server.py do: ``validate_prompt(prompt_id, prompt, None)`` is a coroutine in 0.3.64
    (run with asyncio.run) returning (ok, error, output_node_ids, node_errors); ``PromptExecutor.execute`` is
    synchronous (it calls asyncio.run(execute_async) itself, so do not call run_prompt from a running event loop)
    and only the validated output nodes are executed. A fresh executor (empty caches) is used unless one is given.

    Raises AssertionError with ComfyUI's error text if validation or execution fails. Returns a dict:
      "prompt_id":    the id used;
      "outputs":      {node_id: ui dict} of nodes that returned a "ui" (what /history/<id> calls outputs), e.g.
                      SaveImage -> {"images": [{"filename", "subfolder", "type"}]};
      "meta":         {node_id: meta} from the same history result;
      "node_outputs": {node_id: [slot0_values, slot1_values, ...]} for every node of the prompt still in the output
                      cache: each slot holds a list (one item per list-input call; normally one item), e.g.
                      node_outputs["8"][0][0] is a VAEDecode's IMAGE tensor (see node_output());
      "messages":     the executor's status messages [(event, data)];
      "events":       every (event, data) sent to the server stub;
      "executor":     the PromptExecutor (pass it back as ``executor=`` to reuse its caches).
    """
    boot_comfy()
    import execution

    prompt = copy.deepcopy(prompt)
    prompt_id = str(uuid.uuid4())
    ok, error, outputs_to_execute, node_errors = asyncio.run(execution.validate_prompt(prompt_id, prompt, None))
    if not ok:
        raise AssertionError(_format_validation_error(error, node_errors))

    if executor is None:
        executor = execution.PromptExecutor(ServerStub())
    server = executor.server
    server.last_prompt_id = prompt_id
    executor.execute(prompt, prompt_id, dict(extra_data or {}), outputs_to_execute)
    if not executor.success:
        raise AssertionError(_format_execution_error(executor.status_messages))
    if not any(event == "execution_success" for event, _ in executor.status_messages):
        raise AssertionError(_format_execution_error(executor.status_messages))

    node_outputs = {}
    for node_id in prompt:
        value = executor.caches.outputs.get(node_id)
        if value is not None:
            node_outputs[node_id] = value
    history = getattr(executor, "history_result", {}) or {}
    return {
        "prompt_id": prompt_id,
        "outputs": history.get("outputs", {}),
        "meta": history.get("meta", {}),
        "node_outputs": node_outputs,
        "messages": list(executor.status_messages),
        "events": list(getattr(server, "events", [])),
        "executor": executor,
    }


def node_output(result, node_id, slot=0, index=0):
    """``result["node_outputs"][node_id][slot][index]``: one output value of one node from run_prompt()."""
    node_id = str(node_id)
    if node_id not in result["node_outputs"]:
        raise KeyError(f"node {node_id} has no cached outputs (not executed, or an output node with no outputs)")
    return result["node_outputs"][node_id][slot][index]
