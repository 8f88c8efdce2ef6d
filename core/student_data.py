"""Pair datasets for training a student: folder format, writing without overwriting, the structural filter,
augmentation and loading.

Folder format (one folder per edit)::

    <dataset>/input/000001.png     the image given to the diffusion editor
    <dataset>/edited/000001.png    the editor's result (same size)
    <dataset>/pairs.jsonl          one JSON object per written pair: index, files, edit, structure score, ...

A pair is an index present in both input/ and edited/ (png, jpg, jpeg or webp; written as 8-bit png). Any folder
laid out like this trains, whatever made the pairs.

Filtering. The paper kept a pair only if a segmentation of the object overlapped before and after (0.70) and CLIP
moved towards the target text (0.10). This pack ships no segmentation or CLIP model, so it offers a structural
check that needs none: `structure_score`, the correlation of the two images' edge maps (see there), and
`change_score`, the mean change, to drop edits that did nothing.

Images here are float tensors [B, 3, H, W] (or [3, H, W]) in [0, 1]. Pillow reads and writes the files (ComfyUI
and diffusers both depend on it).
"""
from __future__ import annotations

import dataclasses
import datetime
import io
import json
import os
import re
import uuid

import torch
import torch.nn.functional as F

INPUT_DIR = "input"
EDITED_DIR = "edited"
PAIRS_FILE = "pairs.jsonl"
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")
_INDEX_RE = re.compile(r"^(\d+)$")


def _pil():
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - ComfyUI and diffusers both install Pillow
        raise ImportError("reading and writing pair images needs Pillow: pip install pillow") from e
    return Image


# ----------------------------------------------------------------------------------------------------------------
# Scores
# ----------------------------------------------------------------------------------------------------------------

def _as_batch(x: torch.Tensor) -> torch.Tensor:
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected RGB images [B, 3, H, W] or [3, H, W], got shape {tuple(x.shape)}")
    return x if x.dtype == torch.float64 else x.float()  # scores in float32, or float64 when asked (tests)


def _edge_map(x: torch.Tensor) -> torch.Tensor:
    """Colour-blind gradient magnitude: sqrt of the summed squared Sobel responses of the three channels, after a
    binomial blur (so pixel noise and JPEG blocks do not count as structure)."""
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0], dtype=x.dtype) / 16
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, 5).expand(3, 1, 1, 5), groups=3)
    x = F.conv2d(x, k.view(1, 1, 5, 1).expand(3, 1, 5, 1), groups=3)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=x.dtype)
    x = F.pad(x, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(x, sobel.view(1, 1, 3, 3).expand(3, 1, 3, 3), groups=3)
    gy = F.conv2d(x, sobel.t().reshape(1, 1, 3, 3).expand(3, 1, 3, 3), groups=3)
    return (gx.pow(2) + gy.pow(2)).sum(1).add(1e-12).sqrt()


def structure_score(original: torch.Tensor, edited: torch.Tensor, analysis_size: int = 256) -> torch.Tensor:
    """Per image: Pearson correlation (in [-1, 1]) of the edge maps of `original` and `edited`, both resized so
    the longer side is `analysis_size`. 1 = the same edges (the structure kept, whatever the colours: a channel
    swap scores 1); unrelated photos score near 0. pix2pix-zero edits keep the layout, so a low score flags an edit
    that redrew the scene. Edge maps are colour blind (summed over channels), so recolouring is never penalised.
    Returns a float tensor [B]."""
    a, b = _as_batch(original), _as_batch(edited)
    if a.shape != b.shape:
        raise ValueError(f"original and edited images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    h, w = a.shape[-2:]
    scale = analysis_size / max(h, w)
    if scale < 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        a = F.interpolate(a, size=size, mode="area")
        b = F.interpolate(b, size=size, mode="area")
    ea, eb = _edge_map(a).flatten(1), _edge_map(b).flatten(1)
    ea, eb = ea - ea.mean(1, keepdim=True), eb - eb.mean(1, keepdim=True)
    denom = (ea.pow(2).sum(1) * eb.pow(2).sum(1)).sqrt()
    corr = (ea * eb).sum(1) / denom.clamp_min(1e-12)
    # two flat images have no edges to compare: call that the same structure
    return torch.where(denom > 1e-12, corr, torch.ones_like(corr)).clamp(-1, 1)


def change_score(original: torch.Tensor, edited: torch.Tensor) -> torch.Tensor:
    """Per image: mean absolute difference in [0, 1] units. Near 0 means the edit did nothing. Float tensor [B]."""
    a, b = _as_batch(original), _as_batch(edited)
    if a.shape != b.shape:
        raise ValueError(f"original and edited images differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return (a - b).abs().flatten(1).mean(1)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------

def png_bytes(image: torch.Tensor) -> bytes:
    """An RGB image [3, H, W] in [0, 1] as the bytes of an 8-bit PNG (rounded to the nearest level)."""
    Image = _pil()
    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


def indexed_files(dataset_dir: str, sub: str) -> dict[int, str]:
    """{index: path} of the numbered images in one sub-folder (input/ or edited/); the first name per index."""
    d = os.path.join(dataset_dir, sub)
    out = {}
    if os.path.isdir(d):
        for f in sorted(os.listdir(d)):
            stem, ext = os.path.splitext(f)
            m = _INDEX_RE.match(stem)
            if m and ext.lower() in IMAGE_EXTS:
                out.setdefault(int(m.group(1)), os.path.join(d, f))
    return out


def _existing_indices(dataset_dir: str) -> set[int]:
    return set(indexed_files(dataset_dir, INPUT_DIR)) | set(indexed_files(dataset_dir, EDITED_DIR))


def _publish_exclusive(data: bytes, final: str) -> None:
    """Create `final` with `data`, atomically and never replacing an existing file (FileExistsError then).

    The bytes go to a temporary file in the same folder, which is hard-linked to the final name: a link fails if
    the name exists, and readers never see half a file. Where hard links are not supported, the file is created
    with O_EXCL (still never overwrites; the content appears while it is written)."""
    folder = os.path.dirname(final)
    tmp = os.path.join(folder, f".{os.path.basename(final)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise
        except OSError:  # no hard links here (some network or FAT file systems)
            fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
    finally:
        os.remove(tmp)


def write_pair(dataset_dir: str, original: torch.Tensor, edited: torch.Tensor, record: dict | None = None,
               max_tries: int = 1000) -> int:
    """Write one pair ([3, H, W] in [0, 1] each) as the next free index; returns the index.

    Never overwrites: the index is claimed by creating input/N.png exclusively (another writer that took it makes
    this one move on to N+1), then edited/N.png. A line with `record` plus index, files and time is appended to
    pairs.jsonl."""
    if original.ndim != 3 or original.shape[0] != 3 or original.shape != edited.shape:
        raise ValueError(f"a pair is two RGB images [3, H, W] of one size, got {tuple(original.shape)} and "
                         f"{tuple(edited.shape)}")
    return write_pair_png(dataset_dir, png_bytes(original), png_bytes(edited),
                          (int(original.shape[1]), int(original.shape[2])), record, max_tries)


def write_pair_png(dataset_dir: str, input_png: bytes, edited_png: bytes, size: tuple[int, int],
                   record: dict | None = None, max_tries: int = 1000, on_claim=None) -> int:
    """`write_pair` for images already encoded as PNG (`size` = (height, width)); returns the index.

    `on_claim(index, line)`, if given, is called with the chosen index and the complete pairs.jsonl line before
    any file of the pair is created, so a caller can journal the claim and finish or undo a pair that a crash
    left half written (see core.pair_ledger). It may be called again with the next index if another writer
    takes the first one meanwhile."""
    in_dir, ed_dir = os.path.join(dataset_dir, INPUT_DIR), os.path.join(dataset_dir, EDITED_DIR)
    os.makedirs(in_dir, exist_ok=True)
    os.makedirs(ed_dir, exist_ok=True)
    index = max(_existing_indices(dataset_dir), default=0) + 1
    for _ in range(max_tries):
        name = f"{index:06d}.png"
        if any(os.path.exists(os.path.join(d, f"{index:06d}{e}")) for d in (in_dir, ed_dir) for e in IMAGE_EXTS):
            index += 1
            continue
        line = dict(record or {})
        line.update(index=index, input=f"{INPUT_DIR}/{name}", edited=f"{EDITED_DIR}/{name}",
                    size=[int(size[0]), int(size[1])],
                    time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        if on_claim is not None:
            on_claim(index, line)
        try:
            _publish_exclusive(input_png, os.path.join(in_dir, name))
        except FileExistsError:
            index += 1
            continue
        try:
            _publish_exclusive(edited_png, os.path.join(ed_dir, name))
        except FileExistsError:  # an edited image without its input appeared: leave it, give up our claim
            os.remove(os.path.join(in_dir, name))
            index += 1
            continue
        append_pair_line(dataset_dir, line)
        return index
    raise RuntimeError(f"could not find a free pair index in {dataset_dir} after {max_tries} tries")


def append_pair_line(dataset_dir: str, line: dict) -> None:
    """Append one record to pairs.jsonl (one write per line: concurrent appends stay whole)."""
    with open(os.path.join(dataset_dir, PAIRS_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_pair_lines(dataset_dir: str) -> list[dict]:
    """The records of pairs.jsonl (lines that are not JSON objects, e.g. one cut short by a crash, are skipped)."""
    path = os.path.join(dataset_dir, PAIRS_FILE)
    out = []
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(rec, dict):
                    out.append(rec)
    return out


@dataclasses.dataclass
class PairFilter:
    """Which pairs to keep. min_structure: minimum `structure_score` (0 = off; edits that keep the layout score
    about 0.5-0.95, unrelated images about 0). min_change: minimum `change_score` (0 = off; drops failed edits)."""

    min_structure: float = 0.0
    min_change: float = 0.0


def save_pairs(dataset_dir: str, originals: torch.Tensor, edited: torch.Tensor, pair_filter: PairFilter | None = None,
               record: dict | None = None) -> list[dict]:
    """Score and write a batch of pairs [B, 3, H, W]; returns, per image, {"index" (None if rejected),
    "structure_score", "change_score", "kept"}. Scores are stored in pairs.jsonl with each kept pair."""
    a, b = _as_batch(originals), _as_batch(edited)
    if a.shape != b.shape:
        raise ValueError(f"original and edited batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}; "
                         "connect the editor's input and output images (same batch, same size)")
    pf = pair_filter or PairFilter()
    structure, change = structure_score(a, b), change_score(a, b)
    results = []
    for i in range(a.shape[0]):
        s, c = float(structure[i]), float(change[i])
        kept = (pf.min_structure <= 0 or s >= pf.min_structure) and (pf.min_change <= 0 or c >= pf.min_change)
        index = None
        if kept:
            rec = dict(record or {}, structure_score=round(s, 6), change_score=round(c, 6), batch_index=i)
            index = write_pair(dataset_dir, a[i], b[i], rec)
        results.append({"index": index, "structure_score": s, "change_score": c, "kept": kept})
    return results


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------

def list_pairs(dataset_dir: str) -> list[tuple[int, str, str]]:
    """(index, input path, edited path) of every complete pair, by index."""
    if not os.path.isdir(dataset_dir):
        raise FileNotFoundError(f"dataset folder not found: {dataset_dir}")

    inputs, edits = indexed_files(dataset_dir, INPUT_DIR), indexed_files(dataset_dir, EDITED_DIR)
    return [(i, inputs[i], edits[i]) for i in sorted(set(inputs) & set(edits))]


def dataset_edit_name(dataset_dir: str) -> str:
    """The edit named in pairs.jsonl if all its lines agree ("" otherwise)."""
    names = {str(rec.get("edit", "")) for rec in read_pair_lines(dataset_dir)}
    return names.pop() if len(names) == 1 else ""


def read_image(path: str) -> torch.Tensor:
    """An image file as uint8 [3, H, W] (RGB; alpha dropped, greyscale expanded)."""
    Image = _pil()
    import numpy as np

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def resize_shorter_side(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8/float [3, H, W] so the shorter side is `size` (antialiased bilinear); uint8 stays uint8."""
    h, w = image.shape[-2:]
    if min(h, w) == size:
        return image
    s = size / min(h, w)
    new = (max(size, round(h * s)), max(size, round(w * s)))
    out = F.interpolate(image[None].float(), size=new, mode="bilinear", antialias=True, align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8) if image.dtype == torch.uint8 else out


class PairDataset:
    """The pairs of a dataset folder as uint8 tensors, resized so the shorter side is `load_size` (None: as
    stored). Decoded pairs are kept in memory up to `cache_bytes` (the rest are read again when drawn)."""

    def __init__(self, dataset_dir: str, load_size: int | None = None, cache_bytes: int = 4 << 30):
        self.dataset_dir = dataset_dir
        self.pairs = list_pairs(dataset_dir)
        if not self.pairs:
            raise ValueError(f"no image pairs in {dataset_dir}: expected {INPUT_DIR}/000001.png with "
                             f"{EDITED_DIR}/000001.png (same index, same size)")
        self.load_size = load_size
        self.cache_bytes = cache_bytes
        self._cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._cached_bytes = 0

    def __len__(self):
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i in self._cache:
            return self._cache[i]
        index, in_path, ed_path = self.pairs[i]
        a, b = read_image(in_path), read_image(ed_path)
        if a.shape != b.shape:
            raise ValueError(f"pair {index} of {self.dataset_dir}: input is {a.shape[2]}x{a.shape[1]} but edited is "
                             f"{b.shape[2]}x{b.shape[1]}; the two images of a pair must have one size")
        if self.load_size:
            a, b = resize_shorter_side(a, self.load_size), resize_shorter_side(b, self.load_size)
        if self._cached_bytes + 2 * a.numel() <= self.cache_bytes:
            self._cache[i] = (a, b)
            self._cached_bytes += 2 * a.numel()
        return a, b

    def index_of(self, i: int) -> int:
        return self.pairs[i][0]


def held_out_split(num_pairs: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train positions, held-out positions): a seeded random `fraction` (at least one pair when there are two or
    more and fraction > 0) is held out for the final L1 figure."""
    if num_pairs < 1:
        raise ValueError("no pairs to split")
    n_val = 0 if fraction <= 0 or num_pairs < 2 else min(num_pairs - 1, max(1, round(fraction * num_pairs)))
    perm = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


# ----------------------------------------------------------------------------------------------------------------
# Augmentation
# ----------------------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Augment:
    """The paper's augmentations (colour jitter, noise, random crop) plus a horizontal flip.

    Crop and flip apply to both images alike. Colour jitter (brightness, contrast, saturation factors drawn in
    [1 - x, 1 + x]) also applies to both alike, so the student sees the edit under other lighting; turn it off for
    edits that are themselves colour changes it would not commute with. Noise (Gaussian, std `noise`) goes on the
    input only: the student learns to ignore it."""

    flip: bool = True
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    noise: float = 0.02

    @classmethod
    def off(cls) -> Augment:
        return cls(flip=False, brightness=0.0, contrast=0.0, saturation=0.0, noise=0.0)


def _grey(x: torch.Tensor) -> torch.Tensor:
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def augment_pair(inp: torch.Tensor, out: torch.Tensor, crop: int, aug: Augment,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [3, H, W] pair -> float [3, crop, crop] pair in [0, 1], with random crop and `aug`. Every draw comes
    from `generator`, in a fixed order (so a saved generator state resumes the exact same stream)."""
    h, w = inp.shape[-2:]
    if h < crop or w < crop:
        raise ValueError(f"a {w}x{h} pair is smaller than the {crop} px training crop: lower the resolution or "
                         "raise load_size")
    r = torch.rand(8, generator=generator).tolist()  # always draw the same count: the stream never depends on aug
    top, left = int(r[0] * (h - crop + 1)), int(r[1] * (w - crop + 1))
    x = inp[None, :, top:top + crop, left:left + crop].float() / 255
    y = out[None, :, top:top + crop, left:left + crop].float() / 255
    if aug.flip and r[2] < 0.5:
        x, y = x.flip(-1), y.flip(-1)
    if aug.brightness:
        f = 1 + aug.brightness * (2 * r[3] - 1)
        x, y = x * f, y * f
    if aug.contrast:
        f = 1 + aug.contrast * (2 * r[4] - 1)
        x = (x - _grey(x).mean()) * f + _grey(x).mean()
        y = (y - _grey(y).mean()) * f + _grey(y).mean()
    if aug.saturation:
        f = 1 + aug.saturation * (2 * r[5] - 1)
        x = (x - _grey(x)) * f + _grey(x)
        y = (y - _grey(y)) * f + _grey(y)
    noise = torch.randn(x.shape, generator=generator)  # drawn even when unused, for a stream that never changes
    if aug.noise:
        x = x + aug.noise * noise
    return x[0].clamp(0, 1), y[0].clamp(0, 1)


def sample_batch(dataset: PairDataset, positions: list[int], batch_size: int, crop: int, aug: Augment,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch ([B, 3, crop, crop] inputs, targets): pairs drawn uniformly with replacement."""
    picks = torch.randint(len(positions), (batch_size,), generator=generator).tolist()
    xs, ys = zip(*(augment_pair(*dataset[positions[p]], crop, aug, generator) for p in picks))
    return torch.stack(xs), torch.stack(ys)
