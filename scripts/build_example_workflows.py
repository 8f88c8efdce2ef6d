"""Write example_workflows/*.json (UI format) from the node definitions of a real ComfyUI with this pack loaded.

    COMFYUI_PATH=/path/to/ComfyUI python scripts/build_example_workflows.py

A maintainer's tool: widget values are laid out from each node's own INPUT_TYPES (order, the extra values of seed
and upload widgets), so the files always match the nodes. The server test (test_host_server.py) checks and runs
every file; the browser test (test_host_browser.py) opens each one in the real frontend.

What the frontend needs from a template (ComfyUI serves every ``example_workflows/*.json`` of a pack at
``/api/workflow_templates/<pack>/<name>.json`` and lists the names at ``/workflow_templates``):
- the frontend's workflow zod schema: a UUID ``id`` (a name raises "Invalid uuid at id" when the file is opened), and
  schema ``version`` 0.4. The id is uuid5 of the file name, so rebuilding writes the same file;
- ``extra.ds`` (scale, offset): the view the workflow opens with; computed (framed_view) so every node, notes
  included, fits a 1280 x 720 window clear of the frontend's bars and of the minimap it shows by default in the
  bottom-right corner, at a scale where LiteGraph still draws text (at least MIN_SCALE; the layouts are compact
  enough for that: rows that read left to right, the bottom-right corner left empty);
- the template browser shows the file name as the card's title and fetches ``<name>.jpg`` next to the .json as its
  thumbnail (drawn here from the workflow's own graph with Pillow); its description is the file name with spaces.
  Nothing else is read from a pack (no index.json, title, description or order: example_workflows/README.md). Cards
  come in the server's glob order (the file system's, unsorted); the numbers in the names give the reading order
  under the browser's "A -> Z" sort;
- ``extra.workflowRendererVersion`` is left unset ("LG"): frontend 1.32+ in Nodes 2.0 then scales the layout by 1.2
  (Comfy.VueNodes.AutoScaleLayout) and restores ``extra.ds``; framed_view frames both renderers' boxes (node_rects,
  nodes2_rects: NODES_2_SCALE, NODES_2_HEIGHT, CLASSIC_MIN_WIDTH). The pack's nodes carry
  short titles (SHORT_TITLES) so that the classic renderer does not widen them to their long display names.
"""
import json
import math
import os
import re
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
SD35_PHOTO = "pix2pix_zero_6_sd35_edit_a_photo.json"
FLUX_PHOTO = "pix2pix_zero_7_flux_edit_a_photo.json"

# The photo the photo examples open on: the pack copies assets/cat.jpg into ComfyUI's input folder under this name when
# it loads (nodes/bundled.py), never over a user's file.
PHOTO = "pix2pix_zero_cat.jpg"
# The direction example 4 opens with: shipped in directions/ (scripts/build_bundled_direction.py), listed by Load
# Edit Direction after the user's own files.
BUNDLED_DIRECTION = "pix2pix_zero_cat_to_dog.safetensors"

SD15 = {
    "name": "v1-5-pruned-emaonly-fp16.safetensors",
    "url": "https://huggingface.co/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/"
           "v1-5-pruned-emaonly-fp16.safetensors?download=true",
    "directory": "checkpoints",
}

# The MMDiT examples' files. Names, URLs and folders as ComfyUI's own templates (the comfyui-workflow-templates
# package: flux_kontext_dev_basic, flux_depth_lora_example, flux_dev_full_text_to_image) give them, except SD 3.5
# Medium and CLIP-G, which no template names: the Medium checkpoint is Stability AI's own file (a gated repository:
# accept its licence on Hugging Face first; it holds no text encoders), CLIP-G is Comfy-Org's SD 3.5 repackaging.
SD35_MEDIUM = {
    "name": "sd3.5_medium.safetensors",
    "url": "https://huggingface.co/stabilityai/stable-diffusion-3.5-medium/resolve/main/sd3.5_medium.safetensors",
    "directory": "checkpoints",
}
CLIP_L = {
    "name": "clip_l.safetensors",
    "url": "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
    "directory": "text_encoders",
}
CLIP_G = {
    "name": "clip_g.safetensors",
    "url": "https://huggingface.co/Comfy-Org/stable-diffusion-3.5-fp8/resolve/main/text_encoders/clip_g.safetensors",
    "directory": "text_encoders",
}
T5XXL_FP8 = {
    "name": "t5xxl_fp8_e4m3fn_scaled.safetensors",
    "url": "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp8_e4m3fn_scaled.safetensors",
    "directory": "text_encoders",
}
FLUX_DEV_FP8 = {
    "name": "flux1-dev-fp8.safetensors",
    "url": "https://huggingface.co/Comfy-Org/flux1-dev/resolve/main/flux1-dev-fp8.safetensors",
    "directory": "diffusion_models",
}
FLUX_VAE = {
    "name": "ae.safetensors",
    "url": "https://huggingface.co/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors",
    "directory": "vae",
}


class Graph:
    """A UI-format workflow under construction."""

    def __init__(self, definitions, classes):
        self.defs, self.classes = definitions, classes
        self.nodes, self.links = [], []

    def node(self, kind, pos, widgets=None, title=None, size=(320, 120), properties=None):
        from scripts.workflow_api import is_widget

        title = title or SHORT_TITLES.get(kind)
        if kind.startswith("P2PZ_") and not title:
            raise ValueError(f"{kind}: give it a short title (SHORT_TITLES): its display name widens it")

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
        width = max(size[0], CLASSIC_MIN_WIDTH.get(f"{kind} {title}" if title else kind, 0))
        node = {"id": len(self.nodes) + 1, "type": kind, "pos": list(pos),
                "size": [width, file_height(kind, width, size[1])], "flags": {},
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
        # Code spans render dark blue on the note's blue in Nodes 2.0 (frontend 1.35): file and folder names are
        # set in bold instead, which reads in both renderers.
        if re.search(r"`[^`]*<", text):
            raise ValueError("a code span with '<' would become an HTML tag in bold: write NAME instead")
        text = re.sub(r"`([^`]+)`", r"**\1**", text)
        node = {"id": len(self.nodes) + 1, "type": "MarkdownNote", "pos": list(pos), "size": list(size), "flags": {},
                "order": len(self.nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                "widgets_values": [text]}
        if title:
            node["title"] = title
        self.nodes.append(node)
        return node

    def write(self, file_name, headline):
        """Write ``file_name`` and its thumbnail ``<name>.jpg``; ``headline`` is the thumbnail's caption."""
        check_nodes2_gaps(self.nodes, file_name)
        view = framed_view(self.nodes)
        if view["scale"] < MIN_SCALE:
            raise ValueError(f"{file_name} would open at scale {view['scale']} (< {MIN_SCALE}): lay it out tighter")
        # Sockets that stayed unconnected are listed with link null, as the frontend saves them.
        workflow = {"id": workflow_id(file_name), "revision": 0, "last_node_id": len(self.nodes),
                    "last_link_id": len(self.links), "nodes": self.nodes, "links": self.links, "groups": [],
                    "config": {}, "extra": {"ds": view}, "version": 0.4}
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

# Where a workflow may be drawn when it opens in a 1280 x 720 window, in canvas pixels (LiteGraph draws graph point p
# at (p + offset) * scale; the canvas is the whole window in frontend 1.35 and the window less the 40 px top and side
# bars in 1.27). Measured in both frontends (document.elementFromPoint over the window, and the minimap's
# getBoundingClientRect), each with an 8 px margin:
# - the canvas: 1240 x 680 in 1.27; the side bar (64 px) in 1.35;
# - 1.35 draws the workflow tabs (top 40 px), the workflow's name (left, to x 256) and the Run bar (right, from
#   x 946) down to y 84 over its canvas; 1.27 draws its tabs (to x 240, y 38 in canvas pixels) over its canvas;
# - the minimap, shown by default (1.27: always; 1.35: from 1024 px wide), with the zoom toolbar under it, covers the
#   bottom-right corner: 1.27 from canvas (922, 414) (the minimap at 946..1196 x 414..614, the toolbar at 922..1218
#   x 626..660), 1.35 from (1026, 462) to the window's corner;
# - 1.35 writes its render info over the bottom-left corner (to x 120, from y 644); 1.27 under its side bar.
CANVAS = (72, 46, 1232, 672)  # x0, y0, x1, y1
KEEP_CLEAR = [
    (0, 0, 480, 92),  # 1.35: the workflow's name (its box grows with the name: 40 characters reach x 440); 1.27: tabs
    (938, 0, 1280, 92),  # 1.35: the Run bar
    (914, 406, 1280, 720),  # the minimap and the zoom toolbar (1.27 and 1.35)
    (0, 636, 130, 720),  # 1.35: LiteGraph's render info (T:, I:, N:, V:, FPS:) drawn over the canvas's corner
]
# Nodes 2.0 (frontend 1.35 only, where the canvas is the whole window): the same bars and minimap (1.35's minimap at
# 1023..1276 x 462..662 with its toolbar under it), each with an 8 px margin; its DOM nodes are drawn over the render
# info, which is drawn on the canvas.
NODES_2_CANVAS = (66, 46, 1272, 712)
NODES_2_KEEP_CLEAR = [(0, 0, 480, 92), (938, 0, 1280, 92), (1015, 454, 1280, 720)]
# Below this scale LiteGraph draws nodes as boxes without text: LGraphCanvas.updateLowQualityThreshold,
# min_font_size_for_lod / (LiteGraph.NODE_TEXT_SIZE * sqrt(devicePixelRatio)) = 8 / 14 = 0.571 (setting
# LiteGraph.Canvas.MinFontSizeForLOD, default 8, in both 1.27.10 and 1.35.9). The examples open at least at this.
MIN_SCALE = 0.6
TITLE_HEIGHT = 30  # LiteGraph draws a node's title bar above its pos
GAP_X, GAP_Y = 30, 20  # between columns, between the nodes of a column

# Nodes 2.0 ("Modern Node Design", setting Comfy.VueNodes.Enabled, frontend 1.32+) draws nodes as DOM boxes. A
# workflow without extra.workflowRendererVersion "Vue" (these) is scaled when it opens there (ensureCorrectLayoutScale,
# setting Comfy.VueNodes.AutoScaleLayout, on by default): about the top-left corner of the nodes' bounding box less
# 10 (createBounds), every pos and width x 1.2 and every height x 1.2 + the 30 of the header, which the DOM box
# includes; then the file's extra.ds is restored, so the same view frames both renderers, Nodes 2.0's layout 1.2 x
# larger. Marking a file "Vue" would shrink it by 1 / 1.2 in the classic renderer of 1.32+, but not in 1.27's, so
# the files stay unmarked. A DOM box also grows to its content: these heights (graph units, header included) were
# measured in frontend 1.35.9 (the browser test writes the boxes to nodes2_boxes_*.json next to its screenshots).
# Each node is made tall enough in the file that Nodes 2.0 does not grow it, so both renderers show the same layout.
NODES_2_SCALE = 1.2
NODES_2_HEIGHT = {
    "CheckpointLoaderSimple": 161, "ImageScale": 212, "VAEEncode": 102, "VAEDecode": 102, "PreviewAny": 183,
    "P2PZ_BLIPCaption": 280, "P2PZ_EncodeCaptions": 102, "P2PZ_InvertLatent": 354, "P2PZ_BuildDirection": 507,
    "P2PZ_GuidedEdit": 361, "P2PZ_LoadDirection": 113, "P2PZ_SaveDirection": 150, "P2PZ_LoadStudent": 147,
    "P2PZ_ApplyStudent": 102, "TripleCLIPLoader": 182, "ModelSamplingSD3": 110, "P2PZ_GuidedEditOptions": 170,
    "UNETLoader": 147, "DualCLIPLoader": 217, "VAELoader": 113, "ModelSamplingFlux": 206, "FluxGuidance": 110,
    "CLIPTextEncode": 174, "P2PZ_NoiseLatent": 246,
}
# Nodes that show a square image (the cat photo, and the 512 x 512 or 1024 x 1024 results after a run) as wide as the
# node: their height is the DOM width plus the rest of the node.
NODES_2_IMAGE_EXTRA = {"LoadImage": 156, "SaveImage": 132, "PreviewImage": 96}


# The classic renderer widens a node to its title and widgets (LGraphNode.computeSize) where the file's width is
# smaller: these widths (graph units, frontend 1.35.9; key: the type, or "type title" for a node given a title) for
# the nodes the examples use; others compute to <= 210. The pack's display names are long (e.g. "Guided Edit
# (pix2pix-zero cross-attention guidance)": 383 wide), so the examples give its nodes short titles (SHORT_TITLES):
# both renderers show the pack's name on the node anyway (its source badge), and the narrower nodes let the photo
# and MMDiT layouts open at MIN_SCALE or above.
CLASSIC_MIN_WIDTH = {
    "P2PZ_GuidedEdit Guided Edit": 213, "P2PZ_InvertLatent Invert Latent": 233, "LoadImage": 223,
    "CLIPTextEncode": 219,
}
SHORT_TITLES = {
    "P2PZ_GuidedEdit": "Guided Edit", "P2PZ_InvertLatent": "Invert Latent", "P2PZ_EncodeCaptions": "Encode Captions",
    "P2PZ_NoiseLatent": "Noise Latent", "P2PZ_LoadStudent": "Load Student", "P2PZ_ApplyStudent": "Apply Student",
    "P2PZ_BuildDirection": "Build Edit Direction", "P2PZ_LoadDirection": "Load Edit Direction",
    "P2PZ_SaveDirection": "Save Edit Direction", "P2PZ_BLIPCaption": "BLIP Caption",
}
# Measured untitled (display names) in 1.35.9, none of which the examples use: GuidedEdit 383, InvertLatent 339,
# EncodeCaptions 322, NoiseLatent 349, ApplyStudent 288, LoadStudent 283, Build/Load/SaveDirection 262,
# BLIPCaption 222, GuidedEditOptions 290 (untitled, not measured again); VAEDecode titled "VAE Decode (reconstruction)" 232.


def nodes2_height(kind, width):
    """The height (header included) a node of ``kind`` takes in Nodes 2.0 when its file width is ``width``."""
    if kind in NODES_2_IMAGE_EXTRA:
        return math.ceil(width * NODES_2_SCALE) + NODES_2_IMAGE_EXTRA[kind]
    return NODES_2_HEIGHT.get(kind, 0)


def file_height(kind, width, height):
    """The height to write: at least ``height``, and enough that Nodes 2.0 does not grow the node."""
    return max(height, math.ceil((nodes2_height(kind, width) - TITLE_HEIGHT) / NODES_2_SCALE))


def workflow_id(file_name):
    return str(uuid.uuid5(WORKFLOW_ID_NAMESPACE, file_name))


def node_rects(nodes):
    """(x0, y0, x1, y1) in graph units of every node, title bar included."""
    return [(n["pos"][0], n["pos"][1] - TITLE_HEIGHT, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
            for n in nodes]


def nodes2_rects(nodes):
    """The DOM boxes of ``nodes`` in Nodes 2.0 after its 1.2 x auto-scale (NODES_2_SCALE), in graph units."""
    rects = node_rects(nodes)
    fx, fy = min(r[0] for r in rects) - 10, min(r[1] for r in rects) - 10
    k = NODES_2_SCALE
    return [(fx + (x - fx) * k, fy + (y - fy) * k - TITLE_HEIGHT, fx + (x + w - fx) * k, fy + (y + h - fy) * k)
            for (x, y), (w, h) in ((n["pos"], n["size"]) for n in nodes)]


# Frontend 1.32's Nodes 2.0 (ComfyUI 0.3.75, its first, opt-in version) draws the same boxes 36 graph units higher
# (its auto-scale leaves out the header it adds: 22 CSS px at scale 0.6) and each about 8 units taller, under the same
# bars as 1.35; its notes grow to their text, which it sets larger (so the notes' texts are kept short enough for their
# boxes). Measured from the browser test's boxes on both frontends (nodes2_boxes_*.json).
NODES_2_132_SHIFT, NODES_2_132_TALLER = 36, 8


def nodes2_132_rects(nodes):
    """The DOM boxes of ``nodes`` in frontend 1.32's Nodes 2.0, in graph units (see NODES_2_132_SHIFT)."""
    return [(a, b - NODES_2_132_SHIFT, c, d - NODES_2_132_SHIFT + NODES_2_132_TALLER)
            for a, b, c, d in nodes2_rects(nodes)]


def _fits(rects, scale, ox, oy, canvas=CANVAS, keep_clear=KEEP_CLEAR):
    x0, y0, x1, y1 = canvas
    for a, b, c, d in rects:
        a, b, c, d = (a + ox) * scale, (b + oy) * scale, (c + ox) * scale, (d + oy) * scale
        if a < x0 or b < y0 or c > x1 or d > y1:
            return False
        if any(a < k2 and c > k0 and b < k3 and d > k1 for k0, k1, k2, k3 in keep_clear):
            return False
    return True


def framed_view(nodes):
    """``extra.ds``: the largest round scale (at most 1) at which every node fits CANVAS clear of KEEP_CLEAR in the
    classic renderer and NODES_2_CANVAS clear of NODES_2_KEEP_CLEAR in Nodes 2.0 (nodes2_rects), and the offset in
    the middle of those that fit."""
    rects, rects2, rects132 = node_rects(nodes), nodes2_rects(nodes), nodes2_132_rects(nodes)
    bx0, by0 = min(r[0] for r in rects), min(r[1] for r in rects)  # the same corner in both renderers
    bx1, by1 = max(r[2] for r in rects2), max(r[3] for r in rects2)  # Nodes 2.0's boxes reach further
    x0, y0 = min(CANVAS[0], NODES_2_CANVAS[0]), min(CANVAS[1], NODES_2_CANVAS[1])
    x1, y1 = max(CANVAS[2], NODES_2_CANVAS[2]), max(CANVAS[3], NODES_2_CANVAS[3])
    for step in range(100, 9, -1):
        scale = step / 100
        # Offsets that keep the bounding box in the window, on a 2-pixel grid.
        fits = [(ox, oy)
                for sx in range(math.ceil(x0 - bx0 * scale), math.floor(x1 - bx1 * scale) + 1, 2)
                for sy in range(math.ceil(y0 - by0 * scale), math.floor(y1 - by1 * scale) + 1, 2)
                for ox, oy in [(sx / scale, sy / scale)]
                if _fits(rects, scale, ox, oy) and _fits(rects2, scale, ox, oy, NODES_2_CANVAS, NODES_2_KEEP_CLEAR)
                and _fits(rects132, scale, ox, oy, NODES_2_CANVAS, NODES_2_KEEP_CLEAR)]
        if fits:
            mx, my = sum(f[0] for f in fits) / len(fits), sum(f[1] for f in fits) / len(fits)
            ox, oy = min(fits, key=lambda f: (f[0] - mx) ** 2 + (f[1] - my) ** 2)
            return {"scale": scale, "offset": [round(ox, 1), round(oy, 1)]}
    raise ValueError("the workflow does not fit a 1280 x 720 window")


def check_nodes2_gaps(nodes, file_name):
    """No two Nodes 2.0 boxes touch (the browser test measures them)."""
    rects = nodes2_rects(nodes)
    for i, a in enumerate(rects):
        for j in range(i + 1, len(rects)):
            b = rects[j]
            if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
                raise ValueError(f"{file_name}: nodes {nodes[i]['id']} and {nodes[j]['id']} overlap in Nodes 2.0")


def column(x, y, nodes, gap=GAP_Y):
    """Stack ``nodes`` top-down from (x, y) (y: the top of the first title bar); returns the column's right edge."""
    for n in nodes:
        n["pos"] = [x, y + TITLE_HEIGHT]
        y += TITLE_HEIGHT + n["size"][1] + gap
    return x + max(n["size"][0] for n in nodes)


# How far a top-row column under the workflow's name (left) or the Run bar (right) starts below the others: frontend
# 1.32's Nodes 2.0 draws the layout NODES_2_132_SHIFT higher than 1.35 does, under the same bars.
UNDER_BARS = 40


def columns(x, y, cols, gap=GAP_X, drops=()):
    """Columns side by side from (x, y), left to right; the columns whose indices are in ``drops`` start UNDER_BARS
    lower. Returns the right edge of the last."""
    for i, col in enumerate(cols):
        x = column(x, y + (UNDER_BARS if i in drops else 0), col) + gap
    return x - gap


def bottom(nodes):
    return max(n["pos"][1] + n["size"][1] for n in nodes)


def checkpoint(g):
    return g.node("CheckpointLoaderSimple", (0, 0), {"ckpt_name": SD15["name"]}, size=(250, 100),
                  properties={"models": [SD15]})


def caption_and_invert(g, ckpt):
    """LoadImage -> 512x512 -> BLIP caption -> caption conditioning; VAEEncode -> InvertLatent. Returns the nodes by
    role (placed by photo_layout)."""
    image = g.node("LoadImage", (0, 0), {"image": PHOTO}, size=(220, 270))
    scaled = g.node("ImageScale", (0, 0), {"upscale_method": "lanczos", "width": 512, "height": 512,
                                          "crop": "center"}, size=(210, 130))
    g.link(image, 0, scaled, "image")
    blip = g.node("P2PZ_BLIPCaption", (0, 0), {"blip_model": "blip-image-captioning-base"}, size=(230, 180))
    g.link(scaled, 0, blip, "image")
    show = g.node("PreviewAny", (0, 0), size=(230, 120), title="Caption")
    g.link(blip, 0, show, "source")
    caption = g.node("P2PZ_EncodeCaptions", (0, 0), size=(280, 50))
    g.link(ckpt, 1, caption, "clip")
    g.link(blip, 0, caption, "captions")
    latent = g.node("VAEEncode", (0, 0), size=(210, 50))
    g.link(scaled, 0, latent, "pixels")
    g.link(ckpt, 2, latent, "vae")
    invert = g.node("P2PZ_InvertLatent", (0, 0), {"steps": 50}, size=(280, 270))
    g.link(ckpt, 0, invert, "model")
    g.link(caption, 0, invert, "conditioning")
    g.link(latent, 0, invert, "latent")
    return {"image": image, "scaled": scaled, "blip": blip, "show": show, "caption": caption, "latent": latent,
            "invert": invert}


def edit_and_save(g, ckpt, caption, start, direction, lambda_xa=0.1, negative=None, prefix="edited"):
    """GuidedEdit -> VAEDecode -> SaveImage, and its reconstruction -> PreviewImage. Returns the nodes by role."""
    edit = g.node("P2PZ_GuidedEdit", (0, 0), {"steps": 50, "cfg": 5.0, "lambda_xa": lambda_xa}, size=(320, 260))
    g.link(ckpt, 0, edit, "model")
    g.link(caption, 0, edit, "positive")
    g.link(start, 0, edit, "inverted_latent")
    g.link(direction, 0, edit, "direction")
    if negative is not None:
        g.link(negative, 0, edit, "negative")
    decoded = g.node("VAEDecode", (0, 0), size=(230, 50))
    g.link(edit, 0, decoded, "samples")
    g.link(ckpt, 2, decoded, "vae")
    save = g.node("SaveImage", (0, 0), {"filename_prefix": f"pix2pix-zero/{prefix}"}, size=(220, 180))
    g.link(decoded, 0, save, "images")
    recon = g.node("VAEDecode", (0, 0), size=(230, 50), title="Decode (reconstruction)")
    g.link(edit, 1, recon, "samples")
    g.link(ckpt, 2, recon, "vae")
    preview = g.node("PreviewImage", (0, 0), size=(220, 160), title="Reconstruction")
    g.link(recon, 0, preview, "images")
    return {"edit": edit, "decoded": decoded, "save": save, "recon": recon, "preview": preview}


def photo_layout(note, ckpt, prep, direction, out):
    """Two rows that read left to right, top then bottom, clear of the minimap's bottom-right corner: the note, the
    photo, its resizing and encoding over the checkpoint, the caption and inversion, the edit direction; under them
    the edit, its decoders and the two images, each with room below for the picture Nodes 2.0 shows after a run.
    The columns under the bars start lower (UNDER_BARS)."""
    top = [note, ckpt, direction] + list(prep.values())
    ckpt["size"][0] = prep["scaled"]["size"][0]  # as wide as its column
    columns(0, 0, [[note], [prep["image"]], [prep["scaled"], prep["latent"], ckpt], [prep["blip"], prep["show"]],
                   [prep["caption"], prep["invert"]], [direction]], drops=(0, 1, 4, 5))
    columns(0, bottom(top) + GAP_Y, [[out["edit"]], [out["decoded"], out["recon"]], [out["save"]], [out["preview"]]])


def real_photo(defs, classes):
    g = Graph(defs, classes)
    note = g.note("## pix2pix-zero: edit a photo (cat -> dog)\n\n1. Put the checkpoint (SD 1.5) in `models/checkpoints`.\n"
                  "2. Run: it opens on the pack's cat photo (`pix2pix_zero_cat.jpg`, put in ComfyUI's input folder by "
                  "the pack). Load your own photo instead (resized to 512 x 512).\n3. Set **source** and **target** "
                  "in Build Edit Direction.\n\nBLIP writes the caption (downloaded into `models/blip/` on first use); the photo is "
                  "inverted, and the guided sampler edits it while holding its cross-attention maps to the "
                  "reconstruction's, so the structure stays.", (0, 0), size=(300, 312),
                  title="Start here: edit a photo")
    ckpt = checkpoint(g)
    prep = caption_and_invert(g, ckpt)
    direction = g.node("P2PZ_BuildDirection", (0, 0), {"source": "cat", "target": "dog", "count": 1000},
                       size=(250, 360))
    g.link(ckpt, 1, direction, "clip")
    out = edit_and_save(g, ckpt, prep["caption"], prep["invert"], direction, prefix="cat_to_dog")
    photo_layout(note, ckpt, prep, direction, out)
    g.write(REAL_PHOTO, "Edit a photo: cat -> dog")


def synthetic(defs, classes):
    """Two rows, left to right: note and checkpoint, the prompts, x_T, the direction; the edit, decode, the images."""
    g = Graph(defs, classes)
    note = g.note("## pix2pix-zero: generate, then edit (synthetic image)\n\nNoise Latent draws x_T; the guided "
                  "sampler's **reconstruction** is the image generated from the prompt and its **edited** output the "
                  "same image with cat -> dog. As the authors: lambda_xa 0.15, cfg 5, empty negative prompt.", (0, 0),
                  size=(300, 190), title="Generate, then edit")
    ckpt = checkpoint(g)
    prompt = g.node("CLIPTextEncode", (0, 0), {"text": "a photo of a cat sitting on a wooden bench in a park"},
                    size=(300, 120))
    g.link(ckpt, 1, prompt, "clip")
    negative = g.node("CLIPTextEncode", (0, 0), {"text": ""}, size=(300, 90), title="Negative (empty)")
    g.link(ckpt, 1, negative, "clip")
    noise = g.node("P2PZ_NoiseLatent", (0, 0), {"width": 512, "height": 512, "steps": 50}, size=(300, 180))
    g.link(ckpt, 0, noise, "model")
    direction = g.node("P2PZ_BuildDirection", (0, 0), {"source": "cat", "target": "dog", "count": 1000},
                       size=(250, 360))
    g.link(ckpt, 1, direction, "clip")
    out = edit_and_save(g, ckpt, prompt, noise, direction, lambda_xa=0.15, negative=negative,
                        prefix="synthetic_cat_to_dog")
    top = [note, ckpt, prompt, negative, noise, direction]
    columns(0, 0, [[note, ckpt], [prompt, negative], [noise], [direction]])
    columns(0, bottom(top) + GAP_Y, [[out["edit"]], [out["decoded"], out["recon"]], [out["save"]], [out["preview"]]])
    g.write(SYNTHETIC, "Generate, then edit: cat -> dog")


def direction_build_and_save(defs, classes):
    g = Graph(defs, classes)
    note = g.note("## Build an edit direction once and save it\n\n1000 generated sentences per word, encoded with the "
           "checkpoint's text encoder. Saved as `models/pix2pix_zero_directions/cat_to_dog.safetensors` (an "
           "existing file is never replaced: `_2`, `_3` ... are added). Reuse it with Load Edit Direction "
           f"({REUSE_DIRECTION}).", (0, 0), size=(520, 180), title="Build a direction once")
    ckpt = checkpoint(g)
    direction = g.node("P2PZ_BuildDirection", (0, 0), {"source": "cat", "target": "dog", "count": 1000},
                       size=(320, 360))
    g.link(ckpt, 1, direction, "clip")
    save = g.node("P2PZ_SaveDirection", (0, 0), {"name": "cat_to_dog"}, size=(320, 100))
    g.link(direction, 0, save, "direction")
    # The note over the checkpoint, then left to right.
    column(0, 0, [note])
    columns(0, bottom([note]) + GAP_Y, [[ckpt], [direction], [save]])
    g.write(BUILD_DIRECTION, "Build and save a direction")


def direction_reuse(defs, classes):
    g = Graph(defs, classes)
    note = g.note("## Edit a photo with a saved direction\n\nRuns as it is: the pack ships "
           f"`{BUNDLED_DIRECTION}` (cat -> dog from the authors' SD 1.4 word embeddings; SD 1.4 and 1.5 share "
           "the text encoder). Load Edit Direction also lists your own, saved in "
           f"`models/pix2pix_zero_directions/` ({BUILD_DIRECTION}); a direction must come from the same text "
           "encoder as the checkpoint.", (0, 0), size=(300, 250),
           title="Edit with a saved direction")
    ckpt = checkpoint(g)
    prep = caption_and_invert(g, ckpt)
    direction = g.node("P2PZ_LoadDirection", (0, 0), {"direction_name": BUNDLED_DIRECTION},
                       size=(250, 60))
    out = edit_and_save(g, ckpt, prep["caption"], prep["invert"], direction, prefix="saved_direction_edit")
    photo_layout(note, ckpt, prep, direction, out)
    g.write(REUSE_DIRECTION, "Edit a photo with a saved direction")


def student_apply(defs, classes):
    """A trained student applied to a photo: LoadImage -> Load Student -> Apply Student -> SaveImage."""
    g = Graph(defs, classes)
    image = g.node("LoadImage", (0, 0), {"image": PHOTO}, size=(250, 290))
    student = g.node("P2PZ_LoadStudent", (0, 0), {"student_name": "cat_to_dog-step005000.safetensors"},
                     size=(250, 82))
    apply = g.node("P2PZ_ApplyStudent", (0, 0), size=(290, 50))
    g.link(student, 0, apply, "student")
    g.link(image, 0, apply, "image")
    save = g.node("SaveImage", (0, 0), {"filename_prefix": "pix2pix-zero/student"}, size=(260, 300))
    g.link(apply, 0, save, "images")
    note = g.note("### pix2pix-zero fast student\n\nA student applies ONE edit (e.g. cat -> dog) in a single forward pass: "
           "milliseconds on a GPU, about 0.1 s at 512 px on a CPU, instead of a diffusion edit per image.\n\n"
           "1. **Collect**: add *Save Pairs for a Student* after the pix2pix-zero editor (original + edited image); "
           "pairs go to `output/pix2pix_zero_pairs/DATASET/`. A few hundred to thousands of pairs per edit.\n"
           "2. **Train**: `python custom_nodes/comfyui-pix2pix-zero/train_student.py "
           "output/pix2pix_zero_pairs/cat_to_dog --output models/pix2pix_zero_students` (or the *Train Student* "
           "node).\n3. **Load + apply**: pick the last checkpoint (`NAME-stepNNNNNN.safetensors`) below and "
           "queue.\n\nAny image size works (padded to a multiple of 16 and cropped back).", (0, 0),
           size=(400, 420), title="How to get a student")
    columns(0, 0, [[note], [student, image], [apply], [save]])
    g.write(STUDENT, "Fast student: one edit in one pass")


def mmdit_photo(g, model, clip, vae, caption_then=None, size=1024):
    """The photo chain of the MMDiT examples: LoadImage -> 1024 x 1024 -> BLIP caption -> caption conditioning (then
    ``caption_then``, e.g. FluxGuidance); VAEEncode -> InvertLatent (28 steps); the cat -> dog direction from the same
    CLIP. ``model``, ``clip``, ``vae``: (node, output slot)."""
    image = g.node("LoadImage", (0, 0), {"image": PHOTO}, size=(220, 250))
    scaled = g.node("ImageScale", (0, 0), {"upscale_method": "lanczos", "width": size, "height": size,
                                          "crop": "center"}, size=(210, 130))
    g.link(image, 0, scaled, "image")
    blip = g.node("P2PZ_BLIPCaption", (0, 0), {"blip_model": "blip-image-captioning-base"}, size=(230, 180))
    g.link(scaled, 0, blip, "image")
    caption = g.node("P2PZ_EncodeCaptions", (0, 0), size=(230, 50))
    g.link(clip[0], clip[1], caption, "clip")
    g.link(blip, 0, caption, "captions")
    positive = caption
    if caption_then is not None:
        g.link(caption, 0, caption_then, "conditioning")
        positive = caption_then
    latent = g.node("VAEEncode", (0, 0), size=(210, 50))
    g.link(scaled, 0, latent, "pixels")
    g.link(vae[0], vae[1], latent, "vae")
    invert = g.node("P2PZ_InvertLatent", (0, 0), {"steps": 28}, size=(250, 270))
    g.link(model[0], model[1], invert, "model")
    g.link(positive, 0, invert, "conditioning")
    g.link(latent, 0, invert, "latent")
    direction = g.node("P2PZ_BuildDirection", (0, 0), {"source": "cat", "target": "dog", "count": 1000},
                       size=(240, 360))
    g.link(clip[0], clip[1], direction, "clip")
    return {"image": image, "scaled": scaled, "blip": blip, "caption": caption, "positive": positive,
            "latent": latent, "invert": invert, "direction": direction}


def mmdit_edit(g, model, vae, positive, start, direction, cfg, prefix, options):
    """GuidedEdit (28 steps: the inversion's; the Guided Edit Options node connected) -> VAEDecode -> SaveImage;
    the reconstruction -> PreviewImage."""
    edit = g.node("P2PZ_GuidedEdit", (0, 0), {"steps": 28, "cfg": cfg, "lambda_xa": 0.1}, size=(270, 260))
    g.link(model, 0, edit, "model")
    g.link(options, 0, edit, "options")
    g.link(positive, 0, edit, "positive")
    g.link(start, 0, edit, "inverted_latent")
    g.link(direction, 0, edit, "direction")
    decoded = g.node("VAEDecode", (0, 0), size=(230, 50))
    g.link(edit, 0, decoded, "samples")
    g.link(vae[0], vae[1], decoded, "vae")
    save = g.node("SaveImage", (0, 0), {"filename_prefix": f"pix2pix-zero/{prefix}"}, size=(200, 180))
    g.link(decoded, 0, save, "images")
    recon = g.node("VAEDecode", (0, 0), size=(230, 50), title="Decode (reconstruction)")
    g.link(edit, 1, recon, "samples")
    g.link(vae[0], vae[1], recon, "vae")
    preview = g.node("PreviewImage", (0, 0), size=(200, 160), title="Reconstruction")
    g.link(recon, 0, preview, "images")
    return {"edit": edit, "decoded": decoded, "save": save, "recon": recon, "preview": preview}


MMDIT_NOTE_END = ("BLIP writes the caption (into `models/blip/` on first use). A 24 GB GPU fits SD 3.5 Medium at "
                  "1024 px with the default options (docs/nodes.md: \"MMDiT models\", the memory estimate).")


def sd35_photo(defs, classes):
    """SD 3.5 Medium: the checkpoint (MODEL, VAE) with the three text encoders; ModelSamplingSD3 shift 3 -> Guided
    Edit Options -> Guided Edit (cfg 4.5 with the caption as negative)."""
    g = Graph(defs, classes)
    note = g.note("## pix2pix-zero on SD 3.5 Medium (cat -> dog)\n\nInstall: `sd3.5_medium.safetensors` in "
                  "`models/checkpoints` (Stability AI's gated repository: accept the licence first); `clip_g`, "
                  "`clip_l`, `t5xxl_fp8_e4m3fn_scaled` in `models/text_encoders`. " + MMDIT_NOTE_END, (0, 0),
                  size=(300, 262), title="Start here: SD 3.5 photo edit")
    ckpt = g.node("CheckpointLoaderSimple", (0, 0), {"ckpt_name": SD35_MEDIUM["name"]}, size=(250, 100),
                  properties={"models": [SD35_MEDIUM]})
    clip = g.node("TripleCLIPLoader", (0, 0), {"clip_name1": CLIP_L["name"], "clip_name2": CLIP_G["name"],
                                               "clip_name3": T5XXL_FP8["name"]}, size=(250, 106),
                  properties={"models": [CLIP_L, CLIP_G, T5XXL_FP8]})
    sampling = g.node("ModelSamplingSD3", (0, 0), {"shift": 3.0}, size=(250, 58))
    g.link(ckpt, 0, sampling, "model")
    # the flow defaults, shown: guidance on the first half of the steps, every joint block
    options = g.node("P2PZ_GuidedEditOptions", (0, 0), {"guided_fraction": 0.5}, size=(250, 106),
                     title="Guided Edit Options")
    prep = mmdit_photo(g, (sampling, 0), (clip, 0), (ckpt, 2))
    out = mmdit_edit(g, sampling, (ckpt, 2), prep["positive"], prep["invert"], prep["direction"], 4.5,
                     "sd35_cat_to_dog", options)
    # Two rows, as photo_layout: the loaders and the photo's chain, then the inversion, the edit and the images.
    top = [note, ckpt, clip, sampling, options] + [prep[k] for k in ("image", "scaled", "latent", "blip", "caption",
                                                                     "direction")]
    columns(0, 0, [[note, ckpt], [clip, sampling, options], [prep["image"]], [prep["scaled"], prep["latent"]],
                   [prep["blip"], prep["caption"]], [prep["direction"]]])
    columns(0, bottom(top) + GAP_Y, [[prep["invert"]], [out["edit"]], [out["decoded"], out["recon"]], [out["save"]],
                                     [out["preview"]]])
    g.write(SD35_PHOTO, "SD 3.5 Medium: edit a photo")


def flux_photo(defs, classes):
    """Flux-dev: the diffusion model, T5 + CLIP-L and the VAE from their own loaders; ModelSamplingFlux -> Guided
    Edit Options (block_stride 2) -> Guided Edit; the caption at FluxGuidance 3.5 (no negative pass)."""
    g = Graph(defs, classes)
    note = g.note("## pix2pix-zero on Flux-dev (cat -> dog)\n\n`flux1-dev-fp8` in `models/diffusion_models`; "
                  "`t5xxl_fp8_e4m3fn_scaled`, `clip_l` in `models/text_encoders`; `ae` in `models/vae`. Runs at the "
                  "caption's FluxGuidance (cfg, negative ignored); block_stride 2 guides every other "
                  "block.", (0, 0),
                  size=(300, 200), title="Start here: Flux photo edit")
    unet = g.node("UNETLoader", (0, 0), {"unet_name": FLUX_DEV_FP8["name"]}, size=(250, 82),
                  properties={"models": [FLUX_DEV_FP8]})
    clip = g.node("DualCLIPLoader", (0, 0), {"clip_name1": CLIP_L["name"], "clip_name2": T5XXL_FP8["name"],
                                             "type": "flux"}, size=(250, 106),
                  properties={"models": [CLIP_L, T5XXL_FP8]})
    vae = g.node("VAELoader", (0, 0), {"vae_name": FLUX_VAE["name"]}, size=(220, 58),
                 properties={"models": [FLUX_VAE]})
    sampling = g.node("ModelSamplingFlux", (0, 0), {"width": 1024, "height": 1024}, size=(250, 122))
    g.link(unet, 0, sampling, "model")
    options = g.node("P2PZ_GuidedEditOptions", (0, 0), {"guided_fraction": 0.5, "block_stride": 2}, size=(250, 106),
                     title="Guided Edit Options")
    guidance = g.node("FluxGuidance", (0, 0), {"guidance": 3.5}, size=(230, 60))
    prep = mmdit_photo(g, (sampling, 0), (clip, 0), (vae, 0), caption_then=guidance)
    out = mmdit_edit(g, sampling, (vae, 0), prep["positive"], prep["invert"], prep["direction"], 1.0,
                     "flux_cat_to_dog", options)
    # Two rows, as photo_layout: the loaders and the photo's chain, then the inversion, the edit and the images.
    top = [note, unet, clip, vae, sampling, options, guidance] + [prep[k] for k in ("image", "scaled", "latent", "blip",
                                                                                    "caption", "direction")]
    columns(0, 0, [[note, clip], [unet, sampling, options], [prep["image"], vae], [prep["scaled"], prep["latent"]],
                   [prep["blip"], prep["caption"], guidance], [prep["direction"]]])
    columns(0, bottom(top) + GAP_Y, [[prep["invert"]], [out["edit"]], [out["decoded"], out["recon"]], [out["save"]],
                                     [out["preview"]]])
    g.write(FLUX_PHOTO, "Flux-dev: edit a photo")


def main():
    from scripts import comfy_host

    nodes = comfy_host.boot(device="cpu")
    comfy_host.load_pack()
    from scripts.workflow_api import node_definitions_from_classes

    classes = nodes.NODE_CLASS_MAPPINGS
    defs = node_definitions_from_classes(classes)
    # Model combos list what is installed here; the examples name the files users download.
    for build in (real_photo, synthetic, direction_build_and_save, direction_reuse, student_apply, sd35_photo,
                  flux_photo):
        build(defs, classes)
    for name in (REAL_PHOTO, SYNTHETIC, BUILD_DIRECTION, REUSE_DIRECTION, STUDENT, SD35_PHOTO, FLUX_PHOTO):
        with open(os.path.join(OUT_DIR, name), encoding="utf-8") as f:
            print(f"{name}: opens at scale {json.load(f)['extra']['ds']['scale']}")


if __name__ == "__main__":
    main()
