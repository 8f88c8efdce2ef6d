"""Write example_workflows/*.json (UI format) from the node definitions of a real ComfyUI with this pack loaded.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_example_workflows.py

A maintainer's tool: widget values are laid out from each node's own INPUT_TYPES (order, the extra values of seed
and upload widgets), so the files always match the nodes. tests/test_host_server.py checks and runs every file;
tests/test_host_browser.py opens each one in the real frontend.

What the frontend needs from a template (ComfyUI serves every ``example_workflows/*.json`` of a pack at
``/api/workflow_templates/<pack>/<name>.json`` and lists the names at ``/workflow_templates``):
- the frontend's workflow zod schema: a UUID ``id`` (a name raises "Invalid uuid at id" when the file is opened), and
  schema ``version`` 0.4. The id is uuid5 of the file name, so rebuilding writes the same file;
- ``extra.ds`` (scale, offset): the view the workflow opens with; computed so every node, notes included, fits a
  1280 x 720 window below the frontend's top bar;
- the template browser shows the file name as the card's title and fetches ``<name>.jpg`` next to the .json as its
  thumbnail (drawn here from the workflow's own graph with Pillow). Cards are listed in the server's order (a
  directory listing) or, in newer frontends, sorted by name: the numbered file names give the reading order.
"""
import json
import math
import os
import sys
import uuid

PACK_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(PACK_DIR, "example_workflows")
sys.path.insert(0, PACK_DIR)

# File names: the template browser shows them as the cards' titles, in this order (see the module docstring).
REAL_PHOTO = "pix2pix_zero_1_edit_a_photo.json"
SYNTHETIC = "pix2pix_zero_2_generate_then_edit.json"
BUILD_DIRECTION = "pix2pix_zero_3_build_and_save_direction.json"
REUSE_DIRECTION = "pix2pix_zero_4_edit_with_saved_direction.json"
STUDENT = "pix2pix_zero_5_fast_student.json"

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

    def note(self, text, pos, size=(420, 160), title=None):
        node = {"id": len(self.nodes) + 1, "type": "MarkdownNote", "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                "widgets_values": [text]}
        if title:
            node["title"] = title
        self.nodes.append(node)

    def write(self, file_name, headline):
        """Write ``file_name`` and its thumbnail ``<name>.jpg``; ``headline`` is the thumbnail's caption."""
        # Sockets that stayed unconnected are listed with link null, as the frontend saves them.
        workflow = {"id": workflow_id(file_name), "revision": 0, "last_node_id": len(self.nodes),
                    "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links, "groups": [],
                    "config": {}, "extra": {"ds": framed_view(self.nodes)}, "version": 0.4}
        path = os.path.join(OUT_DIR, file_name)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(workflow, f, indent=2)
            f.write("\n")
        print("wrote", path)
        from scripts.workflow_thumbnail import draw_thumbnail

        image_path = path.removesuffix(".json") + ".jpg"
        draw_thumbnail(workflow, headline, image_path)
        print("wrote", image_path, os.path.getsize(image_path), "bytes")


# The UUID namespace of this pack's example workflows: ids are uuid5(namespace, file name), stable across rebuilds.
WORKFLOW_ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/comfyui-pix2pix-zero/example_workflows")

# Where a workflow must fit when it opens, in canvas pixels, for a 1280 x 720 window: frontend 1.27 puts its canvas
# below the 40 px top bar and right of the 40 px side bar (1240 x 680); 1.35 gives the canvas the whole window but
# draws the workflow tabs and the Run button (down to about 85 px) and a 56 px side bar over it. This box is clear
# in both, with a margin.
VIEW = {"width": 1240, "height": 680, "left": 60, "top": 90, "right": 20, "bottom": 20}
TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos


def workflow_id(file_name):
    return str(uuid.uuid5(WORKFLOW_ID_NAMESPACE, file_name))


def node_bounds(nodes):
    """(x0, y0, x1, y1) in graph units around every node, title bars included."""
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] - TITLE_HEIGHT for n in nodes)
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes)
    return x0, y0, x1, y1


def framed_view(nodes):
    """``extra.ds`` that shows every node inside VIEW: LiteGraph draws graph point p at (p + offset) * scale."""
    x0, y0, x1, y1 = node_bounds(nodes)
    width = VIEW["width"] - VIEW["left"] - VIEW["right"]
    height = VIEW["height"] - VIEW["top"] - VIEW["bottom"]
    scale = min(1.0, width / (x1 - x0), height / (y1 - y0))
    scale = math.floor(scale * 100) / 100  # a round number, rounded down so the fit still holds
    # Centre the graph in the free area.
    cx = VIEW["left"] + width / 2
    cy = VIEW["top"] + height / 2
    offset = [round(cx / scale - (x0 + x1) / 2, 1), round(cy / scale - (y0 + y1) / 2, 1)]
    return {"scale": scale, "offset": offset}


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
    show = g.node("PreviewAny", (1040, y + 420), size=(300, 120), title="Caption")
    g.link(blip, 0, show, "source")
    caption = g.node("P2PZ_EncodeCaptions", (1040, y + 160), size=(330, 60))
    g.link(ckpt, 1, caption, "clip")
    g.link(blip, 0, caption, "captions")
    latent = g.node("VAEEncode", (680, y + 420), size=(220, 50))
    g.link(scaled, 0, latent, "pixels")
    g.link(ckpt, 2, latent, "vae")
    invert = g.node("P2PZ_InvertLatent", (1380, y + 160), {"steps": 50}, size=(340, 280))
    g.link(ckpt, 0, invert, "model")
    g.link(caption, 0, invert, "conditioning")
    g.link(latent, 0, invert, "latent")
    return caption, invert


def edit_and_save(g, ckpt, caption, start, direction, x=1740, y=0, lambda_xa=0.1, negative=None, prefix="edited"):
    edit = g.node("P2PZ_GuidedEdit", (x, y + 160), {"steps": 50, "cfg": 5.0, "lambda_xa": lambda_xa},
                  size=(390, 300))
    g.link(ckpt, 0, edit, "model")
    g.link(caption, 0, edit, "positive")
    g.link(start, 0, edit, "inverted_latent")
    g.link(direction, 0, edit, "direction")
    if negative is not None:
        g.link(negative, 0, edit, "negative")
    decoded = g.node("VAEDecode", (x + 420, y + 160), size=(220, 50))
    g.link(edit, 0, decoded, "samples")
    g.link(ckpt, 2, decoded, "vae")
    save = g.node("SaveImage", (x + 680, y + 160), {"filename_prefix": f"pix2pix-zero/{prefix}"},
                         size=(360, 400))
    g.link(decoded, 0, save, "images")
    recon = g.node("VAEDecode", (x + 420, y + 480), size=(240, 50), title="VAE Decode (reconstruction)")
    g.link(edit, 1, recon, "samples")
    g.link(ckpt, 2, recon, "vae")
    preview = g.node("PreviewImage", (x + 680, y + 600), size=(360, 360), title="Reconstruction")
    g.link(recon, 0, preview, "images")
    return edit


def real_photo(defs, classes):
    g = Graph(defs, classes)
    g.note("## pix2pix-zero: edit a photo (cat -> dog)\n\n1. Put the checkpoint (SD 1.5) in `models/checkpoints`.\n"
           "2. Load your photo (it is resized to 512 x 512).\n3. Set **source** and **target** in Build Edit "
           "Direction.\n\nBLIP writes the caption (downloaded into `models/blip/` on first use); the photo is "
           "inverted, and the guided sampler edits it while holding its cross-attention maps to the "
           "reconstruction's, so the structure stays.", (0, -240), size=(520, 220), title="Start here: edit a photo")
    ckpt = checkpoint(g)
    caption, invert = caption_and_invert(g, ckpt)
    direction = g.node("P2PZ_BuildDirection", (1380, 480), {"source": "cat", "target": "dog", "count": 1000},
                       size=(320, 360))
    g.link(ckpt, 1, direction, "clip")
    edit_and_save(g, ckpt, caption, invert, direction, prefix="cat_to_dog")
    g.write(REAL_PHOTO, "Edit a photo: cat -> dog")


def synthetic(defs, classes):
    g = Graph(defs, classes)
    g.note("## pix2pix-zero: generate, then edit (synthetic image)\n\nNoise Latent draws x_T; the guided sampler's "
           "**reconstruction** is the image generated from the prompt and its **edited** output the same image "
           "with cat -> dog. As the authors: lambda_xa 0.15, cfg 5, empty negative prompt.", (0, -240),
           size=(520, 180), title="Generate, then edit")
    ckpt = checkpoint(g)
    prompt = g.node("CLIPTextEncode", (360, 0), {"text": "a photo of a cat sitting on a wooden bench in a park"},
                    size=(400, 160))
    g.link(ckpt, 1, prompt, "clip")
    negative = g.node("CLIPTextEncode", (360, 200), {"text": ""}, size=(400, 120), title="Negative (empty)")
    g.link(ckpt, 1, negative, "clip")
    noise = g.node("P2PZ_NoiseLatent", (360, 360), {"width": 512, "height": 512, "steps": 50}, size=(320, 200))
    g.link(ckpt, 0, noise, "model")
    direction = g.node("P2PZ_BuildDirection", (800, 360), {"source": "cat", "target": "dog", "count": 1000},
                       size=(320, 360))
    g.link(ckpt, 1, direction, "clip")
    edit_and_save(g, ckpt, prompt, noise, direction, x=1160, y=-160, lambda_xa=0.15, negative=negative,
                  prefix="synthetic_cat_to_dog")
    g.write(SYNTHETIC, "Generate, then edit: cat -> dog")


def direction_build_and_save(defs, classes):
    g = Graph(defs, classes)
    g.note("## Build an edit direction once and save it\n\n1000 generated sentences per word, encoded with the "
           "checkpoint's text encoder. Saved as `models/pix2pix_zero_directions/cat_to_dog.safetensors` (an "
           "existing file is never replaced: `_2`, `_3` ... are added). Reuse it with Load Edit Direction "
           f"({REUSE_DIRECTION}).", (0, -220), size=(520, 180), title="Build a direction once")
    ckpt = checkpoint(g)
    direction = g.node("P2PZ_BuildDirection", (360, 0), {"source": "cat", "target": "dog", "count": 1000},
                       size=(320, 360))
    g.link(ckpt, 1, direction, "clip")
    save = g.node("P2PZ_SaveDirection", (720, 0), {"name": "cat_to_dog"}, size=(320, 100))
    g.link(direction, 0, save, "direction")
    g.write(BUILD_DIRECTION, "Build and save a direction")


def direction_reuse(defs, classes):
    g = Graph(defs, classes)
    g.note("## Edit a photo with a saved direction\n\nLoad Edit Direction lists "
           f"`models/pix2pix_zero_directions/*.safetensors` (save one with {BUILD_DIRECTION}). The "
           "direction must come from the same text encoder as the checkpoint.", (0, -220), size=(520, 160),
           title="Edit with a saved direction")
    ckpt = checkpoint(g)
    caption, invert = caption_and_invert(g, ckpt)
    direction = g.node("P2PZ_LoadDirection", (1380, 480), {"direction_name": "cat_to_dog.safetensors"},
                       size=(320, 80))
    edit_and_save(g, ckpt, caption, invert, direction, prefix="saved_direction_edit")
    g.write(REUSE_DIRECTION, "Edit a photo with a saved direction")


def student_apply(defs, classes):
    """A trained student applied to a photo: LoadImage -> Load Student -> Apply Student -> SaveImage."""
    g = Graph(defs, classes)
    image = g.node("LoadImage", (40, 200), {"image": "example.png"}, size=(320, 330))
    student = g.node("P2PZ_LoadStudent", (40, 60), {"student_name": "cat_to_dog-step005000.safetensors"},
                     size=(320, 82))
    apply = g.node("P2PZ_ApplyStudent", (420, 60), size=(270, 50))
    g.link(student, 0, apply, "student")
    g.link(image, 0, apply, "image")
    save = g.node("SaveImage", (740, 60), {"filename_prefix": "pix2pix-zero/student"}, size=(420, 470))
    g.link(apply, 0, save, "images")
    g.note("### pix2pix-zero fast student\n\nA student applies ONE edit (e.g. cat -> dog) in a single forward pass: "
           "milliseconds on a GPU, about 0.1 s at 512 px on a CPU, instead of a diffusion edit per image.\n\n"
           "1. **Collect**: add *Save Pairs for a Student* after the pix2pix-zero editor (original + edited image); "
           "pairs go to `output/pix2pix_zero_pairs/<dataset>/`. A few hundred to thousands of pairs per edit.\n"
           "2. **Train**: `python custom_nodes/comfyui-pix2pix-zero/train_student.py "
           "output/pix2pix_zero_pairs/cat_to_dog --output models/pix2pix_zero_students` (or the *Train Student* "
           "node).\n3. **Load + apply**: pick the last checkpoint (`<name>-stepNNNNNN.safetensors`) below and "
           "queue.\n\nAny image size works (padded to a multiple of 16 and cropped back).", (-400, 60),
           size=(400, 420), title="How to get a student")
    g.write(STUDENT, "Fast student: one edit in one pass")


def main():
    from scripts import comfy_host

    nodes = comfy_host.boot(device="cpu")
    comfy_host.load_pack()
    from scripts.workflow_api import node_definitions_from_classes

    classes = nodes.NODE_CLASS_MAPPINGS
    defs = node_definitions_from_classes(classes)
    # Model combos list what is installed here; the examples name the files users download.
    for build in (real_photo, synthetic, direction_build_and_save, direction_reuse, student_apply):
        build(defs, classes)


if __name__ == "__main__":
    main()
