"""world.render: determinism, ground truth and the fixed split (numpy only, no torch, no ComfyUI)."""

import ast
import os

import numpy as np
import pytest

from world import render as R

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_same_seed_same_image_other_seed_other_image():
    a, b = R.sample(5, "train", seed=3), R.sample(5, "train", seed=3)
    assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])
    assert a["caption"] == b["caption"] and a["attributes"] == b["attributes"]
    c = R.sample(5, "train", seed=4)
    assert not np.array_equal(a["image"], c["image"])
    assert not np.array_equal(a["image"], R.sample(6, "train", seed=3)["image"])


def test_image_and_mask_ranges_and_antialiasing():
    s = R.sample(0)
    assert s["image"].shape == (64, 64, 3) and s["image"].dtype == np.float32
    assert s["mask"].shape == (64, 64)
    assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
    m = s["mask"]
    assert ((m > 0) & (m < 1)).any(), "edges are anti-aliased (fractional coverage)"
    assert (m == 1).sum() > 50 and (m == 0).sum() > 1000


@pytest.mark.parametrize("index", range(6))
def test_ground_truth_matches_the_pixels(index):
    s = R.sample(index, "val", seed=0)
    a = s["attributes"]
    inside = s["mask"] > 0.99
    mean = s["image"][inside].mean(axis=0)
    # the object's pixels have its colour (within jitter, shading and noise)
    assert np.abs(mean - np.array(R.COLOUR_RGB[a["colour"]])).max() < 0.12
    # the mask's centroid is where the position says
    ys, xs = np.nonzero(s["mask"] > 0.5)
    assert abs(xs.mean() + 0.5 - R.POSITION_X[a["position"]]) < 4.0
    # its extent grows with the size
    area = (s["mask"] > 0.5).sum()
    lo, hi = {"small": (60, 320), "medium": (130, 560), "large": (230, 900)}[a["size"]]
    assert lo < area < hi, (a, area)
    # the caption names shape and colour
    assert a["shape"] in s["caption"] and a["colour"] in s["caption"]


def test_shapes_differ_on_the_same_randomness():
    base = {"colour": "red", "size": "large", "position": "center", "background": "dots"}
    masks = [R.sample(0, "val", attributes=dict(base, shape=sh))["mask"] > 0.5 for sh in R.SHAPES]
    for i in range(4):
        for j in range(i + 1, 4):
            iou = (masks[i] & masks[j]).sum() / (masks[i] | masks[j]).sum()
            assert iou < 0.9, (R.SHAPES[i], R.SHAPES[j], iou)


def test_split_is_fixed_and_disjoint():
    held = R.held_out_quadruples()
    assert len(held) == 36
    for i in range(40):
        assert not R.is_held_out(R.sample(i, "train")["attributes"])
        assert R.is_held_out(R.sample(i, "test")["attributes"])
    train_caps = set(R.all_captions("train"))
    test_full = {R.caption(dict(q, size=sz), t) for q in held for sz in R.SIZES for t in R.FULL_TEMPLATES}
    assert not (train_caps & test_full), "a full held-out caption occurs in training"
    # every attribute value, every pair of split attributes still occurs in training
    seen = set()
    for s in (R.sample(i, "train") for i in range(400)):
        a = s["attributes"]
        seen.update((k1, a[k1], k2, a[k2]) for k1 in R.SPLIT_ATTRIBUTES for k2 in R.SPLIT_ATTRIBUTES if k1 < k2)
    expected = sum(len(R.ATTRIBUTES[k1]) * len(R.ATTRIBUTES[k2])
                   for k1 in R.SPLIT_ATTRIBUTES for k2 in R.SPLIT_ATTRIBUTES if k1 < k2)
    assert len(seen) == expected


def test_concept_sentences():
    for word in ("square", "red", "dots", "left", "small"):
        s = R.concept_sentences(word, 1000, seed=0)
        assert len(s) == 1000 and len(set(s)) == 1000
        assert s == R.concept_sentences(word, 1000, seed=0)
    assert all("square" in x for x in R.concept_sentences("square", 200))
    assert all(("circle" not in x) for x in R.concept_sentences("square", 200))
    with pytest.raises(ValueError):
        R.concept_sentences("dog")


def test_world_is_outside_the_pack():
    """Nothing the pack ships (core/, nodes/, the root __init__.py) imports world."""
    files = [os.path.join(REPO, "__init__.py")]
    for d in ("core", "nodes"):
        for root, _, names in os.walk(os.path.join(REPO, d)):
            files += [os.path.join(root, n) for n in names if n.endswith(".py")]
    for path in files:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in ast.walk(tree):
            mods = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""] if node.level == 0 else []
            assert not any(m == "world" or m.startswith("world.") for m in mods), path
