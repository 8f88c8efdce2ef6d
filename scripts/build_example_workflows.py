"""Write example_workflows/*.json (UI format) from the node definitions of a real ComfyUI with this pack loaded.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_example_workflows.py

A maintainer's tool: widget values are laid out from each node's own INPUT_TYPES (order, the extra values of seed
and upload widgets), so the files always match the nodes. tests/test_host_server.py checks and runs every file.
"""
import json
import os
import sys

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(PACK_DIR, "example_workflows")
sys.path.insert(0, PACK_DIR)

SD15 = {
    "name": "v1-5-pruned-emaonly-fp16.safetensors",
    "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
           "v1-5-pruned-emaonly-fp16.safetensors?download=true",
    "directory": "checkpoints",
}


class Graph:
    """A UI-format workflow under construction."""

    def __init__(self, definitions, classes):
        self.defs, self.classes = definitions, classes
        self.nodes, self.links = [], []

    def node(self, kind, pos, widgets=None, title=None, size=(320, 120), properties=None):
        from scripts.workflow_api import is_widget

        spec = self.defs[kind]["input"]
        ordered = list((spec.get("required") or {}).items()) + list((spec.get("optional") or {}).items())
        widgets = dict(widgets or {})
        values, inputs = [], []
        for name, s in ordered:
            options = s[1] if len(s) > 1 and isinstance(s[1], dict) else {}
            if is_widget(s):
                if name in widgets:
                    value = widgets.pop(name)
                elif "default" in options:
                    value = options["default"]
                elif isinstance(s[0], list):
                    value = s[0][0] if s[0] else ""
                else:
                    raise ValueError(f"{kind}.{name} needs a value")
                values.append(value)
                if options.get("control_after_generate"):
                    values.append("fixed")
                if options.get("image_upload"):
                    values.append("image")
            else:
                inputs.append({"name": name, "type": s[0], "link": None})
        if widgets:
            raise ValueError(f"{kind} has no widgets {sorted(widgets)}")
        cls = self.classes[kind]
        names = getattr(cls, "RETURN_NAMES", None) or cls.RETURN_TYPES
        outputs = [{"name": n, "type": t, "links": []} for n, t in zip(names, cls.RETURN_TYPES)]
        node = {"id": len(self.nodes) + 1, "type": kind, "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": inputs, "outputs": outputs,
                "properties": dict({"Node name for S&R": kind}, **(properties or {})), "widgets_values": values}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def link(self, source, slot, target, input_name):
        link_id = len(self.links) + 1
        out = source["outputs"][slot]
        socket = next((i for i in target["inputs"] if i["name"] == input_name), None)
        if socket is None:  # a widget input turned into a socket
            socket = {"name": input_name, "type": out["type"], "widget": {"name": input_name}, "link": None}
            target["inputs"].append(socket)
        socket["link"] = link_id
        out["links"].append(link_id)
        self.links.append([link_id, source["id"], slot, target["id"], target["inputs"].index(socket), out["type"]])

    def note(self, text, pos, size=(420, 160)):
        node = {"id": len(self.nodes) + 1, "type": "MarkdownNote", "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                "widgets_values": [text]}
        self.nodes.append(node)

    def write(self, file_name):
        # Sockets that stayed unconnected are listed with link null, as the frontend saves them.
        workflow = {"id": file_name.removesuffix(".json"), "revision": 0, "last_node_id": len(self.nodes),
                    "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links, "groups": [],
                    "config": {}, "extra": {"ds": {"scale": 0.75, "offset": [0, 0]}}, "version": 0.4}
        path = os.path.join(OUT_DIR, file_name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(workflow, f, indent=2)
            f.write("\n")
        print("wrote", path)


def checkpoint(g, pos=(0, 0)):
    return g.node("CheckpointLoaderSimple", pos, {"ckpt_name": SD15["name"]}, size=(320, 100),
                  properties={"models": [SD15]})


def caption_and_invert(g, ckpt, y=0):
    """LoadImage -> 512x512 -> BLIP caption -> caption conditioning; VAEEncode -> InvertLatent."""
    image = g.node("LoadImage", (0, y + 160), {"image": "example.png"}, size=(320, 320))
    scaled = g.node("ImageScale", (360, y + 160), {"upscale_method": "lanczos", "width": 512, "height": 512,
                                                     "crop": "center"}, size=(280, 130))
    g.link(image, 0, scaled, "image")
    blip = g.node("P2PZ_BLIPCaption", (680, y + 160), {"blip_model": "blip-image-captioning-base"}, size=(320, 220))
    g.link(scaled, 0, blip, "image")
    show = g.node("PreviewAny", (1040, y + 420), size=(300, 100), title="Caption")
    g.link(blip, 0, show, "source")
    caption = g.node("P2PZ_EncodeCaptions", (1040, y + 160), size=(300, 60))
    g.link(ckpt, 1, caption, "clip")
    g.link(blip, 0, caption, "captions")
    latent = g.node("VAEEncode", (680, y + 420), size=(220, 50))
    g.link(scaled, 0, latent, "pixels")
    g.link(ckpt, 2, latent, "vae")
    invert = g.node("P2PZ_InvertLatent", (1380, y + 160), {"steps": 50}, size=(320, 280))
    g.link(ckpt, 0, invert, "model")
    g.link(caption, 0, invert, "conditioning")
    g.link(latent, 0, invert, "latent")
    return caption, invert


def edit_and_save(g, ckpt, caption, start, direction, x=1740, y=0, lambda_xa=0.1, negative=None, prefix="edited"):
    edit = g.node("P2PZ_GuidedEdit", (x, y + 160), {"steps": 50, "cfg": 5.0, "lambda_xa": lambda_xa},
                  size=(340, 300))
    g.link(ckpt, 0, edit, "model")
    g.link(caption, 0, edit, "positive")
    g.link(start, 0, edit, "inverted_latent")
    g.link(direction, 0, edit, "direction")
    if negative is not None:
        g.link(negative, 0, edit, "negative")
    decoded = g.node("VAEDecode", (x + 380, y + 160), size=(220, 50))
    g.link(edit, 0, decoded, "samples")
    g.link(ckpt, 2, decoded, "vae")
    save = g.node("SaveImage", (x + 640, y + 160), {"filename_prefix": f"pix2pix-zero/{prefix}"},
                         size=(360, 400))
    g.link(decoded, 0, save, "images")
    recon = g.node("VAEDecode", (x + 380, y + 480), size=(220, 50), title="VAE Decode (reconstruction)")
    g.link(edit, 1, recon, "samples")
    g.link(ckpt, 2, recon, "vae")
    preview = g.node("PreviewImage", (x + 640, y + 600), size=(360, 360), title="Reconstruction")
    g.link(recon, 0, preview, "images")
    return edit


def real_photo(defs, classes):
    g = Graph(defs, classes)
    g.note("## pix2pix-zero: edit a photo (cat -> dog)\n\n1. Put the checkpoint (SD 1.5) in `models/checkpoints`.\n"
           "2. Load your photo (it is resized to 512 x 512).\n3. Set **source** and **target** in Build Edit "
           "Direction.\n\nBLIP writes the caption (downloaded into `models/blip/` on first use); the photo is "
           "inverted, and the guided sampler edits it while holding its cross-attention maps to the "
           "reconstruction's, so the structure stays.", (0, -240), size=(520, 220))
    ckpt = checkpoint(g)
    caption, invert = caption_and_invert(g, ckpt)
    direction = g.node("P2PZ_BuildDirection", (1380, 480), {"source": "cat", "target": "dog", "count": 1000},
                       size=(320, 300))
    g.link(ckpt, 1, direction, "clip")
    edit_and_save(g, ckpt, caption, invert, direction, prefix="cat_to_dog")
    g.write("pix2pix_zero_real_photo.json")


def synthetic(defs, classes):
    g = Graph(defs, classes)
    g.note("## pix2pix-zero: generate, then edit (synthetic image)\n\nNoise Latent draws x_T; the guided sampler's "
           "**reconstruction** is the image generated from the prompt and its **edited** output the same image "
           "with cat -> dog. As the authors: lambda_xa 0.15, cfg 5, empty negative prompt.", (0, -240),
           size=(520, 180))
    ckpt = checkpoint(g)
    prompt = g.node("CLIPTextEncode", (360, 0), {"text": "a photo of a cat sitting on a wooden bench in a park"},
                    size=(400, 160))
    g.link(ckpt, 1, prompt, "clip")
    negative = g.node("CLIPTextEncode", (360, 200), {"text": ""}, size=(400, 120), title="Negative (empty)")
    g.link(ckpt, 1, negative, "clip")
    noise = g.node("P2PZ_NoiseLatent", (360, 360), {"width": 512, "height": 512, "steps": 50}, size=(320, 200))
    g.link(ckpt, 0, noise, "model")
    direction = g.node("P2PZ_BuildDirection", (800, 360), {"source": "cat", "target": "dog", "count": 1000},
                       size=(320, 300))
    g.link(ckpt, 1, direction, "clip")
    edit_and_save(g, ckpt, prompt, noise, direction, x=1160, y=-160, lambda_xa=0.15, negative=negative,
                  prefix="synthetic_cat_to_dog")
    g.write("pix2pix_zero_synthetic.json")


def direction_build_and_save(defs, classes):
    g = Graph(defs, classes)
    g.note("## Build an edit direction once and save it\n\n1000 generated sentences per word, encoded with the "
           "checkpoint's text encoder. Saved as `models/pix2pix_zero_directions/cat_to_dog.safetensors` (an "
           "existing file is never replaced: `_2`, `_3` ... are added). Reuse it with Load Edit Direction "
           "(pix2pix_zero_reuse_direction.json).", (0, -220), size=(520, 180))
    ckpt = checkpoint(g)
    direction = g.node("P2PZ_BuildDirection", (360, 0), {"source": "cat", "target": "dog", "count": 1000},
                       size=(320, 300))
    g.link(ckpt, 1, direction, "clip")
    save = g.node("P2PZ_SaveDirection", (720, 0), {"name": "cat_to_dog"}, size=(320, 100))
    g.link(direction, 0, save, "direction")
    g.write("pix2pix_zero_build_direction.json")


def direction_reuse(defs, classes):
    g = Graph(defs, classes)
    g.note("## Edit a photo with a saved direction\n\nLoad Edit Direction lists "
           "`models/pix2pix_zero_directions/*.safetensors` (save one with pix2pix_zero_build_direction.json). The "
           "direction must come from the same text encoder as the checkpoint.", (0, -220), size=(520, 160))
    ckpt = checkpoint(g)
    caption, invert = caption_and_invert(g, ckpt)
    direction = g.node("P2PZ_LoadDirection", (1380, 480), {"direction_name": "cat_to_dog.safetensors"},
                       size=(320, 80))
    edit_and_save(g, ckpt, caption, invert, direction, prefix="saved_direction_edit")
    g.write("pix2pix_zero_reuse_direction.json")


def main():
    from scripts import comfy_host

    nodes = comfy_host.boot(device="cpu")
    comfy_host.load_pack()
    from scripts.workflow_api import node_definitions_from_classes

    classes = nodes.NODE_CLASS_MAPPINGS
    defs = node_definitions_from_classes(classes)
    # Model combos list what is installed here; the examples name the files users download.
    for build in (real_photo, synthetic, direction_build_and_save, direction_reuse):
        build(defs, classes)


if __name__ == "__main__":
    main()
