"""The world: seeded procedural 64 x 64 images of one coloured shape on a textured background (numpy only).

Attributes (``ATTRIBUTES``), each a small closed vocabulary whose values are also the caption words:
  shape       circle, square, triangle, star
  colour      red, green, blue, yellow                  (the object's colour)
  size        small, medium, large                      (half-extent 8, 11, 14 px, +-0.6 px jitter)
  position    left, center, right                       (object centre x = 18, 32, 46 px +-2, y = 32 +-3)
  background  stripes, dots, checks                     (each with its own colour: purple stripes, grey dots,
                                                         brown checks; random angle / period / phase per image)

Every image is drawn on a 4x supersampled grid and box-downsampled (anti-aliased edges), then gets mild texture:
a soft shading gradient and fine grain on the object, and pixel noise everywhere. Each sample is a dict:
``image`` float32 [64, 64, 3] in [0, 1], ``mask`` float32 [64, 64] (object coverage in [0, 1]; > 0.5 is the object),
``attributes`` {name: value}, ``caption`` (from ``TEMPLATES``), ``split``, ``index``.

Determinism: sample ``index`` of ``split`` under world seed ``seed`` is always the same image (its own
``numpy.random.Generator`` from SeedSequence([seed, split code, index])); no global RNG is touched.

The split (fixed, never to be tuned to results):
- ``"train"``: attribute combinations whose (shape, colour, position, background) quadruple is NOT held out.
- ``"val"``: the same combinations as train, other seeds (an in-distribution check).
- ``"test"``: only held-out quadruples (``is_held_out``: (shape + colour + position + background) indices sum to a
  multiple of 4: 36 of the 144 quadruples), other seeds. A test caption that names all four attributes (the
  ``FULL_TEMPLATES``) is therefore a caption no training image ever had. Every single attribute value, every pair
  and every triple still occurs in training, so the held-out set measures composition, not unseen words.

Sentences for edit directions: ``concept_sentences(word)`` gives up to ~1000 different captions that contain the
concept word (other attributes and templates varied), as the paper uses ~1000 sentences per word.
"""

from __future__ import annotations

import itertools
import math
import random

import numpy as np

SIZE = 64
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "star")
COLOURS = ("red", "green", "blue", "yellow")
SIZES = ("small", "medium", "large")
POSITIONS = ("left", "center", "right")
BACKGROUNDS = ("stripes", "dots", "checks")
ATTRIBUTES = {"shape": SHAPES, "colour": COLOURS, "size": SIZES, "position": POSITIONS, "background": BACKGROUNDS}
# the attributes whose combination decides the split
SPLIT_ATTRIBUTES = ("shape", "colour", "position", "background")
SPLITS = {"train": 0, "val": 1, "test": 2}

# object colours (linear RGB in [0, 1]) and a per-image jitter around them
COLOUR_RGB = {"red": (0.86, 0.16, 0.14), "green": (0.16, 0.68, 0.22), "blue": (0.16, 0.30, 0.90),
              "yellow": (0.96, 0.84, 0.14)}
# each background: (colour word, base RGB, pattern RGB, adjective, noun phrase)
BACKGROUND_STYLE = {
    "stripes": ("purple", (0.42, 0.28, 0.52), (0.62, 0.47, 0.72), "striped", "stripes"),
    "dots": ("grey", (0.46, 0.46, 0.46), (0.70, 0.70, 0.70), "dotted", "dots"),
    "checks": ("brown", (0.42, 0.30, 0.20), (0.60, 0.45, 0.30), "checkered", "checks"),
}
SIZE_PX = {"small": 8.0, "medium": 11.0, "large": 14.0}
POSITION_X = {"left": 18.0, "center": 32.0, "right": 46.0}

# Caption templates. Fields: {size} {colour} {shape} {pos} (a phrase: "on the left"), {bgc} (background colour word),
# {bgadj} (striped / dotted / checkered), {bgnoun} (stripes / dots / checks). Every template names shape and colour.
TEMPLATES = (
    "a {colour} {shape} on a {bgc} {bgadj} background",
    "a {size} {colour} {shape} {pos} on a {bgc} {bgadj} background",
    "a {colour} {shape} {pos}, {bgc} {bgnoun} behind it",
    "{colour} {shape}, {size}, {pos}, {bgc} {bgadj} background",
    "a picture of a {colour} {shape}",
    "a {size} {colour} {shape}",
    "a {colour} {shape} {pos}",
    "there is a {size} {colour} {shape} {pos}",
    "a {bgc} {bgadj} background with a {colour} {shape} {pos}",
    "a {bgadj} {bgc} background and a {size} {colour} {shape}",
    "a {colour} {shape} in front of {bgc} {bgnoun}",
    "an image of a {size} {colour} {shape} {pos} on {bgc} {bgnoun}",
    "{colour} {shape} on {bgc} {bgnoun}",
    "a {shape} that is {colour}, {pos}, on a {bgc} {bgadj} background",
    "a drawing of a {size} {colour} {shape} on a {bgadj} background",
    "a {size} {shape}, colored {colour}, {pos}, {bgc} {bgnoun}",
    "{bgc} {bgnoun} and a {colour} {shape}",
    "one {colour} {shape} {pos} over a {bgc} {bgadj} pattern",
    "{bgc} {bgnoun}, a {size} {colour} {shape} {pos}",
    "a simple image: a {colour} {shape} {pos} and {bgc} {bgnoun}",
    "a {size} {colour} {shape} sits {pos} on a {bgadj} {bgc} background",
)
_POS_PHRASES = {"left": "on the left", "center": "in the center", "right": "on the right"}


def _template_fields(template):
    import string
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


def _names(template):
    """Which attributes a template names."""
    fields = _template_fields(template)
    out = {"shape", "colour"}
    if "size" in fields:
        out.add("size")
    if "pos" in fields:
        out.add("position")
    if fields & {"bgc", "bgadj", "bgnoun"}:
        out.add("background")
    return out


# templates that name all four split attributes: their captions of held-out quadruples are unseen in training
FULL_TEMPLATES = tuple(i for i, t in enumerate(TEMPLATES) if set(SPLIT_ATTRIBUTES) <= _names(t))


def caption(attributes: dict, template: int) -> str:
    """The caption of ``attributes`` with template number ``template``."""
    t = TEMPLATES[template]
    bgc, _, _, bgadj, bgnoun = BACKGROUND_STYLE[attributes["background"]]
    pos = attributes["position"]
    pos_phrase = _POS_PHRASES[pos]
    return t.format(size=attributes["size"], colour=attributes["colour"], shape=attributes["shape"], pos=pos_phrase,
                    bgc=bgc, bgadj=bgadj, bgnoun=bgnoun)


def is_held_out(attributes: dict) -> bool:
    """Whether the (shape, colour, position, background) quadruple belongs to the held-out test split."""
    return sum(ATTRIBUTES[a].index(attributes[a]) for a in SPLIT_ATTRIBUTES) % 4 == 0


def held_out_quadruples():
    return [dict(zip(SPLIT_ATTRIBUTES, q)) for q in itertools.product(*(ATTRIBUTES[a] for a in SPLIT_ATTRIBUTES))
            if is_held_out(dict(zip(SPLIT_ATTRIBUTES, q)))]


def _rng(seed, split, index):
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), SPLITS[split], int(index)])))


def sample_attributes(rng, split):
    """Uniform attributes, drawn until the quadruple belongs to ``split`` (test: held out; train / val: not)."""
    want_held_out = split == "test"
    while True:
        attrs = {name: values[int(rng.integers(len(values)))] for name, values in ATTRIBUTES.items()}
        if is_held_out(attrs) == want_held_out:
            return attrs


# ----------------------------------------------------------------------------------------------------------------
# Drawing

def _grid(n):
    """Pixel-centre coordinates of an n x n supersampled grid, in output-pixel units."""
    c = (np.arange(n * SUPERSAMPLE, dtype=np.float32) + 0.5) / SUPERSAMPLE
    return np.meshgrid(c, c)  # x, y


_GRID = None


def _get_grid():
    global _GRID
    if _GRID is None:
        _GRID = _grid(SIZE)
    return _GRID


def _downsample(a):
    s = SUPERSAMPLE
    if a.ndim == 2:
        return a.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3))
    return a.reshape(SIZE, s, SIZE, s, a.shape[-1]).mean(axis=(1, 3))


def _inside_polygon(x, y, verts):
    """Even-odd rule for the polygon ``verts`` ([n, 2]) at every grid point."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        x1, y1 = verts[i]
        x2, y2 = verts[(i + 1) % n]
        if y1 == y2:
            continue
        cond = (y1 > y) != (y2 > y)
        xint = (x2 - x1) * (y - y1) / (y2 - y1) + x1
        inside ^= cond & (x < xint)
    return inside


def _shape_mask(shape, cx, cy, r, angle, x, y):
    """Boolean supersampled mask of ``shape`` with half-extent ``r`` centred at (cx, cy), rotated by ``angle``."""
    ca, sa = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    u = ca * dx + sa * dy
    v = -sa * dx + ca * dy
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        h = r * 0.88  # about the circle's area
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if shape == "triangle":
        R = r * 1.18  # circumradius; apex up, centroid at the centre (shifted down a little to fill the box)
        pts = [(R * math.cos(math.radians(a)), R * math.sin(math.radians(a)) + 0.12 * R) for a in (-90, 30, 150)]
        return _inside_polygon(u, v, np.array(pts, dtype=np.float32))
    if shape == "star":
        outer, inner = r * 1.15, r * 1.15 * 0.45
        pts = []
        for k in range(10):
            a = math.radians(-90 + 36 * k)
            rad = outer if k % 2 == 0 else inner
            pts.append((rad * math.cos(a), rad * math.sin(a) + 0.05 * r))
        return _inside_polygon(u, v, np.array(pts, dtype=np.float32))
    raise ValueError(f"unknown shape {shape!r}")


def _background(kind, rng, x, y):
    """Pattern coverage in [0, 1] on the supersampled grid (1 = pattern colour)."""
    if kind == "stripes":
        period = rng.uniform(7.0, 11.0)
        angle = rng.uniform(0, math.pi)
        phase = rng.uniform(0, period)
        t = (math.cos(angle) * x + math.sin(angle) * y + phase) % period
        return (t < period * rng.uniform(0.4, 0.55)).astype(np.float32)
    if kind == "dots":
        step = rng.uniform(7.0, 10.0)
        rad = rng.uniform(1.6, 2.4)
        ox, oy = rng.uniform(0, step, size=2)
        dx = (x + ox) % step - step / 2
        dy = (y + oy) % step - step / 2
        return (dx * dx + dy * dy <= rad * rad).astype(np.float32)
    if kind == "checks":
        cell = rng.uniform(5.0, 8.0)
        angle = rng.uniform(-0.3, 0.3)
        ox, oy = rng.uniform(0, 2 * cell, size=2)
        u = math.cos(angle) * x + math.sin(angle) * y + ox
        v = -math.sin(angle) * x + math.cos(angle) * y + oy
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    raise ValueError(f"unknown background {kind!r}")


def _jitter_rgb(rgb, rng, amount):
    c = np.asarray(rgb, dtype=np.float32) * (1.0 + rng.uniform(-amount, amount))  # brightness
    c = c + rng.uniform(-amount / 2, amount / 2, size=3).astype(np.float32)       # tint
    return np.clip(c, 0.0, 1.0)


def render(attributes: dict, rng) -> dict:
    """Draw one image of ``attributes`` with the randomness of ``rng`` (a numpy Generator): positions jitter,
    rotation, background geometry, colours, texture. Returns {"image", "mask", "attributes", "geometry"}."""
    x, y = _get_grid()
    shape, colour = attributes["shape"], attributes["colour"]
    r = SIZE_PX[attributes["size"]] + rng.uniform(-0.6, 0.6)
    cx = POSITION_X[attributes["position"]] + rng.uniform(-2.0, 2.0)
    cy = SIZE / 2 + rng.uniform(-3.0, 3.0)
    max_angle = {"circle": 0.0, "square": 0.2, "triangle": 0.15, "star": 0.2}[shape]
    angle = rng.uniform(-max_angle, max_angle)

    bgc, base, pattern, _, _ = BACKGROUND_STYLE[attributes["background"]]
    base = _jitter_rgb(base, rng, 0.06)
    pattern = _jitter_rgb(pattern, rng, 0.06)
    cover = _background(attributes["background"], rng, x, y)
    bg = _downsample(cover)[..., None] * (pattern - base) + base  # [64, 64, 3]

    obj = _downsample(_shape_mask(shape, cx, cy, r, angle, x, y).astype(np.float32))  # coverage [64, 64]
    rgb = _jitter_rgb(COLOUR_RGB[colour], rng, 0.05)
    # soft shading across the object and a fine grain: objects are not flat
    g = np.linspace(-1.0, 1.0, SIZE, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    a = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + 0.07 * (math.cos(a) * gx + math.sin(a) * gy) * (32.0 / max(r, 1.0)) * 0.5
    grain = 1.0 + 0.025 * rng.standard_normal((SIZE, SIZE)).astype(np.float32)
    fg = np.clip(rgb[None, None, :] * (shade * grain)[..., None], 0.0, 1.0)

    image = bg * (1.0 - obj[..., None]) + fg * obj[..., None]
    image = image + 0.012 * rng.standard_normal(image.shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0).astype(np.float32)
    return {"image": image, "mask": obj.astype(np.float32), "attributes": dict(attributes),
            "geometry": {"cx": float(cx), "cy": float(cy), "r": float(r), "angle": float(angle)}}


def sample(index: int, split: str = "train", seed: int = 0, attributes: dict | None = None,
           template: int | None = None) -> dict:
    """Sample ``index`` of ``split``: attributes (drawn for the split unless given), a rendered image with its mask,
    and a caption (random template unless given). Deterministic from (seed, split, index)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: {sorted(SPLITS)}")
    rng = _rng(seed, split, index)
    attrs = sample_attributes(rng, split) if attributes is None else dict(attributes)
    for name, values in ATTRIBUTES.items():
        if attrs.get(name) not in values:
            raise ValueError(f"attribute {name}={attrs.get(name)!r} not in {values}")
    if template is None:
        template = int(rng.integers(len(TEMPLATES)))
    out = render(attrs, rng)
    out.update(caption=caption(attrs, template), template=int(template), split=split, index=int(index))
    return out


def label_indices(attributes: dict) -> dict:
    return {name: ATTRIBUTES[name].index(attributes[name]) for name in ATTRIBUTES}


def batch(indices, split="train", seed=0, uint8=True) -> dict:
    """Render many samples: {"images": [N, 64, 64, 3] (uint8 or float32), "masks": [N, 64, 64] uint8 coverage
    x 255, "labels": {attr: int64 [N]}, "captions", "templates"}."""
    samples = [sample(i, split, seed) for i in indices]
    imgs = np.stack([s["image"] for s in samples])
    masks = np.stack([s["mask"] for s in samples])
    if uint8:
        imgs = np.round(imgs * 255).astype(np.uint8)
    return {"images": imgs, "masks": np.round(masks * 255).astype(np.uint8),
            "labels": {a: np.array([label_indices(s["attributes"])[a] for s in samples], dtype=np.int64)
                       for a in ATTRIBUTES},
            "captions": [s["caption"] for s in samples], "templates": np.array([s["template"] for s in samples]),
            "attributes": [s["attributes"] for s in samples]}


def all_captions(split="train"):
    """Every caption that the split's images can have (train / val: non-held-out quadruples; test: held out)."""
    out = set()
    for combo in itertools.product(*ATTRIBUTES.values()):
        attrs = dict(zip(ATTRIBUTES, combo))
        if is_held_out(attrs) != (split == "test"):
            continue
        for t in range(len(TEMPLATES)):
            out.add(caption(attrs, t))
    return sorted(out)


# ----------------------------------------------------------------------------------------------------------------
# Sentences for edit directions

def concept_attribute(word: str) -> str:
    for name, values in ATTRIBUTES.items():
        if word in values:
            return name
    raise ValueError(f"{word!r} is not a concept of the world: {ATTRIBUTES}")


def concept_sentences(word: str, count: int = 1000, seed: int = 0) -> list:
    """Up to ``count`` different captions that contain the concept ``word`` (a shape, colour, size, position or
    background value), every other attribute and the template varied; deterministic from ``seed``. For a position
    or background word only templates that name it are used. Fewer than ``count`` when the world has fewer."""
    name = concept_attribute(word)
    pool = set()
    for combo in itertools.product(*ATTRIBUTES.values()):
        attrs = dict(zip(ATTRIBUTES, combo))
        if attrs[name] != word:
            continue
        for t, template in enumerate(TEMPLATES):
            if name in _names(template):
                pool.add(caption(attrs, t))
    pool = sorted(pool)
    random.Random(f"{seed}:{word}").shuffle(pool)
    return pool[:count]


def contact_sheet(samples, columns=8, scale=2):
    """A uint8 [H, W, 3] grid of the samples' images (each ``scale`` x enlarged), for looking at the world."""
    imgs = [np.asarray(s["image"] if isinstance(s, dict) else s) for s in samples]
    imgs = [np.round(i * 255).astype(np.uint8) if i.dtype != np.uint8 else i for i in imgs]
    rows = math.ceil(len(imgs) / columns)
    h = SIZE * scale + 2
    sheet = np.full((rows * h, columns * h, 3), 255, dtype=np.uint8)
    for k, img in enumerate(imgs):
        big = img.repeat(scale, 0).repeat(scale, 1)
        r, c = divmod(k, columns)
        sheet[r * h:r * h + SIZE * scale, c * h:c * h + SIZE * scale] = big
    return sheet
