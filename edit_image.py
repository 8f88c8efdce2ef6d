"""Edit one photo with pix2pix-zero from the command line, with ComfyUI's engine in-process (no server, no browser).

    python edit_image.py                      # the bundled cat photo (assets/cat.jpg) into a dog
    python edit_image.py photo.png --source cat --target dog --output dog.png

It runs example_workflows/pix2pix_zero_1_edit_a_photo.json (BLIP caption, regularized inversion, edit direction,
cross-attention-guided edit) exactly as ComfyUI would, with the given photo, words and checkpoint, shows each node
and a progress bar, and writes the edited image: to --output, else to ComfyUI's output folder as
pix2pix-zero/<source>_to_<target>_00001.png (the next free number). ComfyUI is found from --comfyui, else
$COMFYUI_PATH, else the ComfyUI this pack is installed in (custom_nodes/<pack>/). Run it with ComfyUI's own Python.
Models come from ComfyUI's models folders (and its extra_model_paths.yaml); missing ones are downloaded on first use
(the checkpoint from the URL the workflow names, BLIP from Hugging Face). Every argument and model is checked before
ComfyUI starts, so a mistake costs a second, not ComfyUI's start-up.
"""
import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time

PACK_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WORKFLOW = os.path.join(PACK_DIR, "example_workflows", "pix2pix_zero_1_edit_a_photo.json")
DEFAULT_IMAGE = os.path.join(PACK_DIR, "assets", "cat.jpg")  # the authors' cat_1.png (MIT), see assets/
DEFAULT_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"  # what the example workflow loads
OUTPUT_SUBFOLDER = "pix2pix-zero"  # in ComfyUI's output folder, as the example workflows' SaveImage prefixes
# Same values as nodes/caption.py and core/caption.py, which import torch: this file must not before ComfyUI starts.
DEFAULT_BLIP = "blip-image-captioning-base"
BLIP_REPO_ID = "Salesforce/blip-image-captioning-base"
# For tests (and mirrors): where the default checkpoint is downloaded from instead of the workflow's URL.
CHECKPOINT_URL_ENV = "P2PZ_CHECKPOINT_URL"
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
# What a workflow may make this command download, as ComfyUI's frontend allows for a workflow's properties.models
# (its missing-models dialog): these URL prefixes only, and only these file types (a .ckpt/.pt can hold code, an
# .exe is a program). Names must stay inside their model folder (check_model_name).
ALLOWED_DOWNLOAD_SOURCES = ("https://huggingface.co/", "https://civitai.com/", "http://localhost:")
ALLOWED_DOWNLOAD_SUFFIXES = (".safetensors", ".sft")
# The nodes' own limits (InvertLatent steps, BuildDirection count, ImageScale size), checked before ComfyUI starts.
MAX_STEPS, MAX_SENTENCES, MAX_SIZE = 500, 10000, 16384
# The smallest image the pack inverts and edits: 8 * core.inversion.MIN_LATENT (not imported: it imports torch).
MIN_SIZE = 16

sys.path.insert(0, PACK_DIR)
from scripts import comfy_host, model_fetch  # noqa: E402  (standard library only at import)


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""


# ----------------------------------------------------------------------------------------------------------------
# Checks before ComfyUI starts (no ComfyUI, no torch imported)
# ----------------------------------------------------------------------------------------------------------------

def check_arguments(args):
    """Every check that needs no model: numbers, the output name and format, the photo, the workflow."""
    if args.steps < 1 or args.steps > MAX_STEPS:
        raise CommandError(f"--steps {args.steps}: give 1 to {MAX_STEPS} DDIM steps (50 is the authors' choice)")
    if args.sentences < 1 or args.sentences > MAX_SENTENCES:
        raise CommandError(f"--sentences {args.sentences}: give 1 to {MAX_SENTENCES} sentences per word (about "
                           f"1000 give a clean direction)")
    if args.size < MIN_SIZE or args.size % 8 or args.size > MAX_SIZE:
        lower, upper = max(MIN_SIZE, args.size - args.size % 8), max(MIN_SIZE, args.size - args.size % 8 + 8)
        hint = f" (e.g. {lower} or {upper})" if args.size >= MIN_SIZE and args.size % 8 else ""
        raise CommandError(f"--size {args.size}: give a multiple of 8 from {MIN_SIZE} to {MAX_SIZE}{hint}: the VAE "
                           f"works in 8-pixel blocks and would silently crop any other size; 512 suits SD 1.x")
    if args.seed < 0 or args.seed > 0xFFFFFFFFFFFFFFFF:
        raise CommandError(f"--seed {args.seed}: give a number from 0 to 2**64 - 1")
    for option in ("source", "target"):
        if not getattr(args, option).strip():
            raise CommandError(f"--{option} is empty: name what the photo shows (--source) and what it should show "
                               f"(--target), e.g. --source cat --target dog")
    if " ".join(args.source.lower().split()) == " ".join(args.target.lower().split()):
        # CLIP lowercases its text: the two words would give the same sentences' embeddings, a zero direction
        raise CommandError(f"--source {args.source!r} and --target {args.target!r} are the same word: the edit "
                           f"direction would be all zeros and the run would only reproduce the photo; give "
                           f"--target what the photo should show instead, e.g. --source cat --target dog")
    check_model_name(args.checkpoint, "--checkpoint")
    if args.blip is not None:
        check_model_name(args.blip, "--blip")
    if args.output is not None:
        ext = os.path.splitext(args.output)[1].lower()
        if ext not in FORMATS:
            raise CommandError(f"--output {args.output}: the name must end in one of {', '.join(FORMATS)} (the "
                               f"image is written in that format)")
        if os.path.isdir(args.output):
            raise CommandError(f"--output {args.output} is a folder: give a file name such as dog.png")
        if os.path.exists(args.output) and not args.overwrite:
            raise CommandError(f"{os.path.abspath(args.output)} exists: choose another --output, or pass --overwrite "
                               f"to replace it")
        check_format_supported(FORMATS[ext], args.output)
    image = os.path.abspath(args.image)
    if not os.path.isfile(image):
        raise CommandError(f"image not found: {image}")
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(image) as im:
            im.load()
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise CommandError(f"cannot read {image} as an image ({type(e).__name__}: {e}): give a PNG, JPEG or WebP "
                           f"photo") from None
    return read_workflow(args.workflow)


def read_workflow(path):
    """A UI-format workflow file (as ComfyUI's Workflow > Save writes it), or a CommandError saying why not."""
    try:
        with open(path, encoding="utf-8") as f:
            workflow = json.load(f)
    except (OSError, ValueError) as e:
        raise CommandError(f"cannot read the workflow {path}: {e}") from None
    if not isinstance(workflow, dict) or not isinstance(workflow.get("nodes"), list):
        raise CommandError(f"{path} is not a UI-format ComfyUI workflow (no 'nodes' list): save it from ComfyUI "
                           f"with Workflow > Save")
    return workflow


def check_model_name(name, what):
    """A model name as ComfyUI lists it: a file (or BLIP folder) inside its model folder, perhaps in a sub-folder
    ("sd15/model.safetensors"). Refused: an absolute path, a drive, a backslash, a '..' or empty part, which could
    name (or download to) a place outside the folder."""
    parts = name.split("/")
    why = None
    if not name.strip():
        why = "it is empty"
    elif name.startswith("/") or os.path.isabs(name) or re.match(r"^[A-Za-z]:", name):
        why = "it is an absolute path"
    elif "\\" in name:
        why = "it contains a backslash (a path separator on Windows)"
    elif any(part in ("", ".", "..") for part in parts):
        why = "it has a '..', '.' or empty path part"
    if why:
        raise CommandError(f"{what} {name!r} is refused: {why}. Give the name as it appears in its model folder "
                           f"(e.g. {DEFAULT_CHECKPOINT}), and put the file in that folder")
    return name


def check_download(url, name, what):
    """Refuse, before any network access, a download the frontend would not offer: a URL outside
    ALLOWED_DOWNLOAD_SOURCES, a file type outside ALLOWED_DOWNLOAD_SUFFIXES, or a name that is not a plain file name
    (a download never creates folders)."""
    check_model_name(name, what)
    why = None
    if not isinstance(url, str) or not url.startswith(ALLOWED_DOWNLOAD_SOURCES):
        why = (f"downloads are only made from {', '.join(ALLOWED_DOWNLOAD_SOURCES[:2])} (and "
               f"{ALLOWED_DOWNLOAD_SOURCES[2]}), as in ComfyUI's own missing-models dialog")
    elif not name.lower().endswith(ALLOWED_DOWNLOAD_SUFFIXES):
        why = (f"only {' and '.join(ALLOWED_DOWNLOAD_SUFFIXES)} files are downloaded (they hold tensors only; other "
               f"model files can run code when loaded)")
    elif "/" in name:
        why = "a download must name a plain file in the model folder, not a sub-folder"
    if why:
        raise CommandError(f"the workflow asks to download {what} {name!r} from {url}: refused, {why}. If you trust "
                           f"the file, download it yourself and put it in the {what} folder")


def check_format_supported(pil_format, path):
    from PIL import features
    if pil_format == "WEBP" and not features.check("webp"):
        raise CommandError(f"--output {path}: this Pillow cannot write WebP; choose .png or .jpg")


def workflow_checkpoint_url(workflow, name):
    """The download URL the workflow gives for checkpoint ``name`` (a node's properties.models, as the frontend
    reads it), or None."""
    for node in workflow["nodes"]:
        for model in (node.get("properties") or {}).get("models") or []:
            if model.get("directory") == "checkpoints" and model.get("name") == name and model.get("url"):
                return model["url"]
    return None


def workflow_blip_name(workflow):
    """The BLIP folder the workflow's caption node names (its first widget: the image input is a link), or None
    when the workflow captions nothing."""
    for node in workflow["nodes"]:
        if node.get("type") == "P2PZ_BLIPCaption" and node.get("widgets_values"):
            return node["widgets_values"][0]
    return None


def _listing(folders, is_model, limit=20):
    names = set()
    for folder in folders:
        if not os.path.isdir(folder):
            continue
        for root, dirs, files in os.walk(folder, followlinks=True):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for entry in dirs + files:
                full = os.path.join(root, entry)
                if is_model(full):
                    names.add(os.path.relpath(full, folder))
    names = sorted(names)
    shown = ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")
    return shown or "none"


class Missing:
    """A model the run needs that is not installed: what it is, where it goes, where it comes from."""

    def __init__(self, kind, name, dest, searched, url, installed, how):
        self.kind, self.name, self.dest, self.searched = kind, name, dest, searched
        self.url, self.installed, self.how = url, installed, how

    def describe(self):
        where = f"put it at {self.dest}"
        if len(self.searched) > 1:
            where += f" (looked in: {', '.join(self.searched)})"
        source = f"; download: {self.url}" if self.url else "; the workflow gives no download URL for it"
        return (f"{self.kind} {self.name!r}: {where}{source}{self.how}; installed {self.kind}s: {self.installed}")


def find_missing_models(args, workflow, layout):
    missing = []
    checkpoint_dirs = layout["folders"]["checkpoints"]
    extensions = tuple(layout["extensions"]["checkpoints"])
    if not any(os.path.isfile(os.path.join(d, args.checkpoint)) for d in checkpoint_dirs):
        url = workflow_checkpoint_url(workflow, args.checkpoint)
        if url:
            check_download(url, args.checkpoint, "checkpoint")
        if url and os.environ.get(CHECKPOINT_URL_ENV):  # the user's own mirror (and the tests' server)
            url = os.environ[CHECKPOINT_URL_ENV]
        installed = _listing(checkpoint_dirs, lambda p: os.path.isfile(p) and p.lower().endswith(extensions))
        missing.append(Missing("checkpoint", args.checkpoint, os.path.join(checkpoint_dirs[0], args.checkpoint),
                               checkpoint_dirs, url, installed, ""))
    blip = args.blip or workflow_blip_name(workflow)
    if blip:
        check_model_name(blip, "BLIP model folder")
        default_dir = os.path.join(layout["models_dir"], "blip")  # the pack registers it after the yaml's paths
        blip_dirs = list(dict.fromkeys(layout["folders"].get("blip", []) + [default_dir]))
        if not any(os.path.isfile(os.path.join(d, blip, "config.json")) for d in blip_dirs):
            url = how = None
            if blip == DEFAULT_BLIP:
                endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
                url = f"{endpoint}/{BLIP_REPO_ID}"
                how = (f" (the folder holds config.json, model.safetensors, tokenizer.json, tokenizer_config.json, "
                       f"vocab.txt, special_tokens_map.json, preprocessor_config.json: on a machine that is online, "
                       f"hf download {BLIP_REPO_ID} --local-dir \"{os.path.join(default_dir, blip)}\")")
            installed = _listing(blip_dirs, lambda p: os.path.isfile(os.path.join(p, "config.json")))
            missing.append(Missing("BLIP model folder", blip, os.path.join(default_dir, blip), blip_dirs, url,
                                   installed, how or ""))
    return missing


def fetch_missing_models(missing):
    """Download what can be downloaded, or stop at once (offline, no network, no URL) naming every missing file,
    folder and URL."""
    if not missing:
        return
    reason = model_fetch.offline_reason()
    if reason is None and all(m.url for m in missing):
        hosts = {}
        for m in missing:
            hosts.setdefault(m.url.split("/")[2], m.url)
        reason = next((r for r in map(model_fetch.unreachable_reason, hosts.values()) if r), None)
    if reason is not None or not all(m.url for m in missing):
        why = f"they cannot be downloaded now ({reason})" if reason else "not every one can be downloaded"
        lines = "\n".join(f"  - {m.describe()}" for m in missing)
        raise CommandError(f"{len(missing)} model(s) missing, and {why}:\n{lines}")
    for m in missing:
        print(f"downloading {m.kind} {m.name} from {m.url} to {m.dest} (first use only)", flush=True)
        try:
            if m.kind == "checkpoint":
                model_fetch.download(m.url, m.dest)
            else:
                from core.caption import download_blip
                download_blip(m.dest, BLIP_REPO_ID)
        except Exception as e:  # the network, a full disk, a refused URL: say what to fetch by hand
            raise CommandError(f"downloading failed ({type(e).__name__}: {e}); fetch it by hand:\n"
                               f"  - {m.describe()}") from None


# ----------------------------------------------------------------------------------------------------------------
# The run (ComfyUI in-process)
# ----------------------------------------------------------------------------------------------------------------

def boot(comfyui, cpu, input_dir, base_directory=None):
    """ComfyUI as main.py starts it (its defaults, its extra_model_paths.yaml; the CPU when asked or when there is
    no GPU), with this pack loaded; returns ComfyUI's ``nodes`` module."""
    import torch

    accelerators = [torch.cuda.is_available(), getattr(torch, "xpu", None) is not None and torch.xpu.is_available(),
                    torch.backends.mps.is_available()]
    if not cpu and not any(accelerators):
        print("no GPU found: running on the CPU (slow: minutes per step at 512 px)", flush=True)
    try:
        nodes = comfy_host.boot(comfyui, device="cpu" if cpu or not any(accelerators) else "auto",
                                base_directory=base_directory, input_dir=input_dir, extra_model_paths=True)
        comfy_host.load_pack()
    except comfy_host.HostError as e:
        raise CommandError(str(e)) from None
    return nodes


def check_blip(nodes, prompt):
    """The pack's full check of the BLIP folder (every file it needs) before any other work."""
    for node in prompt.values():
        if node["class_type"] == "P2PZ_BLIPCaption":
            caption_nodes = sys.modules[nodes.NODE_CLASS_MAPPINGS["P2PZ_BLIPCaption"].__module__]
            try:
                caption_nodes.resolve_blip_folder(node["inputs"]["blip_model"])
            except Exception as e:  # the pack's own errors say which folder and which files
                raise CommandError(str(e)) from None


def print_node(prompt, started):
    """An ``on_message`` for comfy_host.run_prompt: print which node runs, as ComfyUI's console does."""
    def on_message(event, data):
        # only the workflow's own nodes: run_prompt's capture nodes are not part of it
        if event == "executing" and data.get("node") in prompt:
            kind = prompt[data["node"]]["class_type"]
            print(f"[{time.monotonic() - started:7.1f} s] node {data['node']}: {kind}", flush=True)
    return on_message


def progress_hook(value, total, preview, prompt_id=None, node_id=None):
    width = 30
    done = int(width * value / max(total, 1))
    end = "\n" if value >= total else ""
    print(f"\r    [{'#' * done}{'.' * (width - done)}] {value}/{total}", end=end, flush=True)


def output_stem(source, target):
    """cat, dog -> cat_to_dog (file-name safe)."""
    def slug(word):
        return re.sub(r"[^\w-]+", "_", word.strip()).strip("_") or "x"
    return f"{slug(source)}_to_{slug(target)}"


def edit_settings(args, photo=True):
    """The widgets this command (and collect_pairs.py) sets in the edit workflow, as (node type, widget, value):
    checkpoint, edit words, seed, sentences, steps and size. ``photo``: the photo workflow (Invert Latent after an
    Image Scale); else the generate-then-edit workflow (Noise Latent)."""
    settings = [("CheckpointLoaderSimple", "ckpt_name", args.checkpoint),
                ("P2PZ_BuildDirection", "source", args.source),
                ("P2PZ_BuildDirection", "target", args.target),
                ("P2PZ_BuildDirection", "seed", args.seed),
                ("P2PZ_BuildDirection", "count", args.sentences),
                ("P2PZ_GuidedEdit", "steps", args.steps)]
    if photo:
        settings += [("P2PZ_InvertLatent", "steps", args.steps),
                     ("P2PZ_InvertLatent", "seed", args.seed),
                     ("ImageScale", "width", args.size),
                     ("ImageScale", "height", args.size)]
        if args.blip:
            settings.append(("P2PZ_BLIPCaption", "blip_model", args.blip))
    else:
        settings += [("P2PZ_NoiseLatent", "steps", args.steps),
                     ("P2PZ_NoiseLatent", "width", args.size),
                     ("P2PZ_NoiseLatent", "height", args.size)]
    return settings


def run(args, comfyui, workflow):
    image = os.path.abspath(args.image)
    input_dir = tempfile.mkdtemp(prefix="p2pz-input-")
    try:
        shutil.copy(image, os.path.join(input_dir, os.path.basename(image)))
        nodes = boot(comfyui, args.cpu, input_dir, args.base_directory)
        import comfy.model_management
        import comfy.utils

        # the pack's own core as ComfyUI loaded it: one copy of it in this process once ComfyUI runs
        size_warning = comfy_host.pack_import("core.cost").size_warning

        device = comfy.model_management.get_torch_device()
        warning = size_warning(args.size, args.size, on_cpu=device.type == "cpu",
                               available_bytes=comfy.model_management.get_free_memory(device))
        if warning:
            print(f"warning: {warning}", flush=True)

        from scripts.workflow_api import node_definitions_from_classes, set_widget, ui_to_api

        defs = node_definitions_from_classes(nodes.NODE_CLASS_MAPPINGS)
        settings = [("LoadImage", "image", os.path.basename(image))] + edit_settings(args)
        for node_type, name, value in settings:
            workflow = set_widget(workflow, node_type, name, value, defs)
        prompt = ui_to_api(workflow, defs)
        check_blip(nodes, prompt)
        saves = [i for i, n in prompt.items() if n["class_type"] == "SaveImage"]
        if len(saves) != 1:
            raise CommandError(f"the workflow must have exactly one SaveImage node (the edited image), not "
                               f"{len(saves)}")
        decoded_by = prompt[saves[0]]["inputs"]["images"][0]
        # The command writes the edit itself (its name, its format); a preview goes to ComfyUI's temp folder.
        prompt[saves[0]] = {"class_type": "PreviewImage", "inputs": {"images": prompt[saves[0]]["inputs"]["images"]}}
        captions = [i for i, n in prompt.items() if n["class_type"] == "P2PZ_BLIPCaption"]

        comfy.utils.set_progress_bar_global_hook(progress_hook)
        try:
            result = comfy_host.run_prompt(prompt, capture=[decoded_by] + captions,
                                           on_message=print_node(prompt, time.monotonic()))
        except comfy_host.PromptError as e:
            if e.node_errors:
                details = "; ".join(f"node {k} ({v['class_type']}): " +
                                    ", ".join(x["details"] or x["message"] for x in v["errors"])
                                    for k, v in e.node_errors.items())
                raise CommandError(f"ComfyUI rejected the workflow: {details}") from None
            raise CommandError(str(e).split("\n", 1)[0]) from None
        for node_id in captions:
            print(f"caption: {comfy_host.node_output(result, node_id)}")
        images = comfy_host.node_output(result, decoded_by)
        if args.output is not None:
            written = save_image(images[0], os.path.abspath(args.output), overwrite=args.overwrite)
        else:
            folder = os.path.join(comfy_host.io_dirs()["output"], OUTPUT_SUBFOLDER)
            written = save_numbered(images[0], folder, output_stem(args.source, args.target))
        print(f"wrote {written}")
    finally:
        shutil.rmtree(input_dir, ignore_errors=True)


def save_image(image, path, overwrite=False):
    """One IMAGE ([H, W, 3] in 0..1) in the format its extension names, written atomically (never over an
    existing file unless ``overwrite``)."""
    import numpy as np
    from PIL import Image

    from core.files import atomic_write

    array = (image.clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    pil_format = FORMATS[os.path.splitext(path)[1].lower()]
    options = {"quality": 95} if pil_format in ("JPEG", "WEBP") else {}
    return atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format=pil_format, **options),
                        overwrite=overwrite)


def save_numbered(image, folder, stem):
    """<folder>/<stem>_00001.png, or the next free number: an earlier result is never replaced, even by another
    run finishing at the same moment (atomic_write refuses a name that was taken meanwhile)."""
    pattern = re.compile(re.escape(stem) + r"_(\d{5,})\.png$")
    taken = [int(m.group(1)) for f in (os.listdir(folder) if os.path.isdir(folder) else [])
             if (m := pattern.match(f))]
    number = max(taken, default=0) + 1
    while True:
        try:
            return save_image(image, os.path.join(folder, f"{stem}_{number:05d}.png"))
        except FileExistsError:
            number += 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", default=DEFAULT_IMAGE,
                        help="the photo to edit (PNG/JPEG/WebP; default: the bundled cat photo, assets/cat.jpg)")
    parser.add_argument("--source", default="cat", help='what the photo shows (default "cat")')
    parser.add_argument("--target", default="dog", help='what it should show (default "dog")')
    parser.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT,
                        help=f"checkpoint file name in ComfyUI's models/checkpoints (default {DEFAULT_CHECKPOINT}, "
                             f"downloaded on first use)")
    parser.add_argument("--output", help="where to write the edited image; .png, .jpg/.jpeg or .webp, written in that "
                                         f"format (default: ComfyUI's output folder, {OUTPUT_SUBFOLDER}/"
                                         "<source>_to_<target>_NNNNN.png, the next free number)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the inversion and the edit (50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (0)")
    parser.add_argument("--sentences", type=int, default=1000,
                        help="sentences per word for the edit direction (1000; fewer is faster but less clean)")
    parser.add_argument("--size", type=int, default=512,
                        help="the photo is resized and centre-cropped to size x size first: a multiple of 8, at "
                             f"least {MIN_SIZE} (512 for SD 1.x)")
    parser.add_argument("--blip", help="BLIP folder name in models/blip (default: the workflow's, "
                                       f"{DEFAULT_BLIP}, downloaded on first use)")
    parser.add_argument("--workflow", default=DEFAULT_WORKFLOW, help="a UI-format workflow to run instead")
    parser.add_argument("--comfyui", help="the ComfyUI folder (default: $COMFYUI_PATH or the one this pack is in)")
    parser.add_argument("--base-directory", help="as ComfyUI's --base-directory: models/ and output/ under it")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    args = parser.parse_args(argv)
    try:
        workflow = check_arguments(args)
        try:
            comfyui = comfy_host.find_comfyui(args.comfyui)
            layout = comfy_host.model_folders(comfyui, args.base_directory, ("checkpoints", "blip"))
        except comfy_host.HostError as e:
            raise CommandError(str(e)) from None
        fetch_missing_models(find_missing_models(args, workflow, layout))
        run(args, comfyui, workflow)
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
