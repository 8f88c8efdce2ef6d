"""Edit one photo with pix2pix-zero from the command line, with ComfyUI's engine in-process (no server, no browser).

    python edit_image.py photo.png --source cat --target dog \\
        --checkpoint v1-5-pruned-emaonly-fp16.safetensors --output dog.png

It runs example_workflows/pix2pix_zero_real_photo.json (BLIP caption, regularized inversion, edit direction,
cross-attention-guided edit) exactly as ComfyUI would, with the given photo, words and checkpoint, shows each node
and a progress bar, and writes the edited image. ComfyUI is found from --comfyui, else $COMFYUI_PATH, else the
ComfyUI this pack is installed in (custom_nodes/<pack>/). Run it with ComfyUI's own Python. Models come from
ComfyUI's models folders (and its extra_model_paths.yaml).
"""
import argparse
import os
import shutil
import sys
import tempfile
import time

PACK_DIR = os.path.dirname(os.path.abspath(__file__))
DEFAULT_WORKFLOW = os.path.join(PACK_DIR, "example_workflows", "pix2pix_zero_real_photo.json")
sys.path.insert(0, PACK_DIR)
from scripts import comfy_host  # noqa: E402
from scripts.workflow_api import node_definitions_from_classes, set_widget, ui_to_api  # noqa: E402


class CommandError(Exception):
    """A problem the user can fix; printed without a traceback."""


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


def check_checkpoint(workflow, name):
    import folder_paths

    if folder_paths.get_full_path("checkpoints", name) is not None:
        return
    urls = [m.get("url") for n in workflow["nodes"] for m in (n.get("properties") or {}).get("models", [])
            if m.get("directory") == "checkpoints"]
    where = ", ".join(folder_paths.get_folder_paths("checkpoints"))
    hint = f" (the example's checkpoint downloads from {urls[0]})" if urls else ""
    raise CommandError(f"checkpoint {name!r} not found: put the file in one of: {where}{hint}")


def check_blip(nodes, prompt):
    """Find (or, online, download) the workflow's BLIP model before any other work."""
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
        if event == "executing" and data.get("node") is not None:
            kind = prompt.get(data["node"], {}).get("class_type", "?")
            print(f"[{time.monotonic() - started:7.1f} s] node {data['node']}: {kind}", flush=True)
    return on_message


def progress_hook(value, total, preview, prompt_id=None, node_id=None):
    width = 30
    done = int(width * value / max(total, 1))
    end = "\n" if value >= total else ""
    print(f"\r    [{'#' * done}{'.' * (width - done)}] {value}/{total}", end=end, flush=True)


def run(args):
    try:
        comfyui = comfy_host.find_comfyui(args.comfyui)
    except comfy_host.HostError as e:
        raise CommandError(str(e)) from None
    image = os.path.abspath(args.image)
    if not os.path.isfile(image):
        raise CommandError(f"image not found: {image}")
    output = os.path.abspath(args.output)
    if os.path.exists(output) and not args.overwrite:
        raise CommandError(f"{output} exists: choose another --output, or pass --overwrite")
    import json
    with open(args.workflow, encoding="utf-8") as f:
        workflow = json.load(f)

    input_dir = tempfile.mkdtemp(prefix="p2pz-input-")
    try:
        shutil.copy(image, os.path.join(input_dir, os.path.basename(image)))
        nodes = boot(comfyui, args.cpu, input_dir, args.base_directory)
        import comfy.utils

        check_checkpoint(workflow, args.checkpoint)
        defs = node_definitions_from_classes(nodes.NODE_CLASS_MAPPINGS)
        settings = [("LoadImage", "image", os.path.basename(image)),
                    ("CheckpointLoaderSimple", "ckpt_name", args.checkpoint),
                    ("P2PZ_BuildDirection", "source", args.source),
                    ("P2PZ_BuildDirection", "target", args.target),
                    ("P2PZ_BuildDirection", "seed", args.seed),
                    ("P2PZ_BuildDirection", "count", args.sentences),
                    ("P2PZ_InvertLatent", "steps", args.steps),
                    ("P2PZ_InvertLatent", "seed", args.seed),
                    ("P2PZ_GuidedEdit", "steps", args.steps),
                    ("ImageScale", "width", args.size),
                    ("ImageScale", "height", args.size)]
        if args.blip:
            settings.append(("P2PZ_BLIPCaption", "blip_model", args.blip))
        for node_type, name, value in settings:
            workflow = set_widget(workflow, node_type, name, value, defs)
        prompt = ui_to_api(workflow, defs)
        check_blip(nodes, prompt)
        saves = [i for i, n in prompt.items() if n["class_type"] == "SaveImage"]
        if len(saves) != 1:
            raise CommandError(f"the workflow must have exactly one SaveImage node (the edited image), not {len(saves)}")
        decoded_by = prompt[saves[0]]["inputs"]["images"][0]
        # The edit is written to --output; keep ComfyUI's output folder out of it (a preview goes to its temp folder).
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
        save_png(images[0], output)
        print(f"wrote {output}")
    finally:
        shutil.rmtree(input_dir, ignore_errors=True)


def save_png(image, path):
    """One IMAGE ([H, W, 3] in 0..1) as a PNG, written atomically."""
    import numpy as np
    from PIL import Image

    array = (image.clamp(0, 1).cpu().numpy() * 255.0).round().astype(np.uint8)
    from core.files import atomic_write

    # --overwrite was checked up front; the final move is still atomic.
    atomic_write(path, lambda tmp: Image.fromarray(array).save(tmp, format="PNG"), overwrite=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="the photo to edit (PNG/JPEG)")
    parser.add_argument("--source", required=True, help='what the photo shows, e.g. "cat"')
    parser.add_argument("--target", required=True, help='what it should show, e.g. "dog"')
    parser.add_argument("--checkpoint", required=True, help="checkpoint file name in ComfyUI's models/checkpoints")
    parser.add_argument("--output", default="edited.png", help="where to write the edited image (default edited.png)")
    parser.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    parser.add_argument("--steps", type=int, default=50, help="DDIM steps of the inversion and the edit (50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw (0)")
    parser.add_argument("--sentences", type=int, default=1000,
                        help="sentences per word for the edit direction (1000; fewer is faster but less clean)")
    parser.add_argument("--size", type=int, default=512,
                        help="the photo is resized and centre-cropped to size x size first (512 for SD 1.x)")
    parser.add_argument("--blip", help="BLIP folder name in models/blip (default: the workflow's)")
    parser.add_argument("--workflow", default=DEFAULT_WORKFLOW, help="a UI-format workflow to run instead")
    parser.add_argument("--comfyui", help="the ComfyUI folder (default: $COMFYUI_PATH or the one this pack is in)")
    parser.add_argument("--base-directory", help="as ComfyUI's --base-directory: look for models/ under it")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even if a GPU is present")
    args = parser.parse_args(argv)
    try:
        run(args)
    except CommandError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
