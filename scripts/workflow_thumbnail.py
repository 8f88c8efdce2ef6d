"""Template-browser thumbnails for example_workflows/*.json, drawn from each workflow's own graph with Pillow.

The frontend's template browser fetches ``/api/workflow_templates/<pack>/<name>.jpg`` for the card of
``<name>.json``. The picture: the workflow's nodes (boxes coloured by kind, the pack's own nodes highlighted) and
links, a caption, and, where the workflow edits a photo, the photo it opens on (the pack's assets/cat.jpg, the
authors' MIT-licensed test_images/cat_1.png) with the edit it asks for. No model runs: the images are about what the workflow does.
"""
import os

from PIL import Image, ImageDraw, ImageFont

SIZE = 400  # square: the 1.27 and 1.35 frontends both crop card images to a square-ish box
GRAPH_BOX = (14, 14, SIZE - 14, 262)
BACKGROUND = (32, 32, 36)
NODE = (70, 70, 78)
PACK_NODE = (46, 110, 160)  # P2PZ_* nodes
NOTE = (120, 110, 60)
LINK = {"MODEL": (180, 160, 255), "CLIP": (255, 210, 80), "VAE": (255, 110, 110), "IMAGE": (100, 200, 170),
        "LATENT": (255, 150, 200), "CONDITIONING": (255, 170, 90)}
OTHER_LINK = (170, 170, 170)
JPEG_QUALITY = 82
PHOTO_WORKFLOW_NODES = ("LoadImage",)


def pack_photo():
    """The photo the photo examples open on: the pack's assets/cat.jpg (the authors' cat_1.png, MIT), which the pack
    copies into ComfyUI's input folder as pix2pix_zero_cat.jpg (nodes/bundled.py)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "cat.jpg")


def _font(size):
    return ImageFont.load_default(size=size)  # Pillow's bundled font: the same pixels on every machine


def _graph(draw, workflow):
    nodes = workflow["nodes"]
    x0 = min(n["pos"][0] for n in nodes)
    y0 = min(n["pos"][1] - 30 for n in nodes)
    x1 = max(n["pos"][0] + n["size"][0] for n in nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in nodes)
    bx0, by0, bx1, by1 = GRAPH_BOX
    scale = min((bx1 - bx0) / (x1 - x0), (by1 - by0) / (y1 - y0))
    ox = bx0 + ((bx1 - bx0) - (x1 - x0) * scale) / 2
    oy = by0 + ((by1 - by0) - (y1 - y0) * scale) / 2

    def at(x, y):
        return ox + (x - x0) * scale, oy + (y - y0) * scale

    by_id = {n["id"]: n for n in nodes}
    for _, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        a, b = by_id[src], by_id[dst]
        start = at(a["pos"][0] + a["size"][0], a["pos"][1] + 10 + 20 * src_slot)
        end = at(b["pos"][0], b["pos"][1] + 10 + 20 * dst_slot)
        mid = (start[0] + end[0]) / 2
        draw.line([start, (mid, start[1]), (mid, end[1]), end], fill=LINK.get(kind, OTHER_LINK), width=2)
    for n in nodes:
        left, top = at(n["pos"][0], n["pos"][1] - 30)
        right, bottom = at(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        fill = NOTE if n["type"] in ("Note", "MarkdownNote") else PACK_NODE if n["type"].startswith("P2PZ_") else NODE
        draw.rounded_rectangle([left, top, right, bottom], radius=4, fill=fill, outline=(20, 20, 20))
        draw.rectangle([left, top, right, top + 30 * scale], fill=tuple(max(0, c - 25) for c in fill))


def draw_thumbnail(workflow, headline, path):
    """Write the thumbnail of ``workflow`` (UI format) to ``path`` (JPEG, ``SIZE`` px square, a few tens of KB)."""
    image = Image.new("RGB", (SIZE, SIZE), BACKGROUND)
    draw = ImageDraw.Draw(image)
    _graph(draw, workflow)
    text_left = 16
    photo = pack_photo() if any(n["type"] in PHOTO_WORKFLOW_NODES for n in workflow["nodes"]) else None
    if photo:
        cat = Image.open(photo).convert("RGB")
        side = min(cat.size)
        cat = cat.crop(((cat.width - side) // 2, (cat.height - side) // 2, (cat.width + side) // 2,
                        (cat.height + side) // 2)).resize((112, 112), Image.LANCZOS)
        image.paste(cat, (14, SIZE - 126))
        text_left = 140
    draw.text((text_left, SIZE - 124), "pix2pix-zero", font=_font(18), fill=(150, 190, 230))
    words = headline.split()
    lines, line = [], ""
    font = _font(24)
    for word in words:  # wrap the caption to the space right of the photo
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) > SIZE - text_left - 12 and line:
            lines.append(line)
            line = word
        else:
            line = trial
    lines.append(line)
    for i, text in enumerate(lines[:3]):
        draw.text((text_left, SIZE - 96 + 30 * i), text, font=font, fill=(240, 240, 240))
    image.save(path, "JPEG", quality=JPEG_QUALITY, optimize=True)
