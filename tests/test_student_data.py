"""Pair datasets: never-overwriting writer (also under concurrent writers), structural filter, augmentation, split."""
import json
import os
import threading

import pytest
import torch
from tolerances import SAME_MATH_RTOL

from core.student_data import (
    Augment,
    PairDataset,
    PairFilter,
    augment_pair,
    change_score,
    dataset_edit_name,
    held_out_split,
    list_pairs,
    read_image,
    sample_batch,
    save_pairs,
    structure_score,
    write_pair,
)


def _images(batch, size, seed=0, cells=8):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, cells, cells, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear").clamp(0, 1)


def _u8(x):
    return (x * 255).round().to(torch.uint8)


def test_structure_score_sees_edges_not_colours():
    a = _images(3, 96, seed=1)
    assert torch.allclose(structure_score(a, a), torch.ones(3))
    # float64: a normalized correlation of equal edge maps is 1 in exact arithmetic; its reductions over 96 * 96
    # pixels are what float32 rounding would blur (tolerances.py, rule 2)
    a = a.double()
    one = torch.ones(3, dtype=torch.float64)
    assert torch.allclose(structure_score(a, a[:, [2, 1, 0]]), one, rtol=0, atol=SAME_MATH_RTOL)  # recolouring
    assert torch.allclose(structure_score(a, 0.5 * a + 0.25), one, rtol=0, atol=SAME_MATH_RTOL)
    unrelated = structure_score(a, _images(3, 96, seed=2))
    assert unrelated.abs().max() < 0.3
    # half of the image redrawn scores between the two
    b = a.clone()
    b[..., :, 48:] = _images(3, 96, seed=2)[..., :, 48:]
    partial = structure_score(a, b)
    assert (partial > 0.4).all() and (partial < 0.7).all() and partial.mean() > unrelated.mean() + 0.2
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert structure_score(flat, flat) == 1
    with pytest.raises(ValueError, match="differ in shape"):
        structure_score(a, a[..., :64])


def test_pairs_are_written_under_the_next_free_number_and_never_overwritten(tmp_path):
    d = str(tmp_path)
    os.makedirs(tmp_path / "input")
    os.makedirs(tmp_path / "edited")
    (tmp_path / "input" / "000002.png").write_bytes(b"user file")  # an input without its edited image
    (tmp_path / "edited" / "000005.jpg").write_bytes(b"user file 2")
    a, b = _images(3, 32, seed=1), _images(3, 32, seed=2)
    indices = [write_pair(d, a[i], b[i], {"edit": "x -> y"}) for i in range(3)]
    assert indices == [6, 7, 8]
    assert (tmp_path / "input" / "000002.png").read_bytes() == b"user file"
    assert (tmp_path / "edited" / "000005.jpg").read_bytes() == b"user file 2"
    assert [p[0] for p in list_pairs(d)] == [6, 7, 8]
    assert torch.equal(read_image(str(tmp_path / "edited" / "000007.png")), _u8(b[1]))
    lines = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == [6, 7, 8] and lines[0]["edited"] == "edited/000006.png"
    assert dataset_edit_name(d) == "x -> y"
    assert not [f for f in os.listdir(tmp_path / "input") if f.endswith(".tmp")]


def test_concurrent_writers_never_share_an_index(tmp_path):
    d = str(tmp_path)
    imgs = _images(8, 16, seed=3)
    errors = []

    def writer(offset):
        try:
            for i in range(4):
                write_pair(d, imgs[offset + i], imgs[(offset + i + 1) % 8])
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in (0, 4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    pairs = list_pairs(d)
    assert [p[0] for p in pairs] == list(range(1, 9))
    written = sorted(read_image(p[1]).flatten().tolist() for p in pairs)
    expected = sorted(_u8(imgs[i]).flatten().tolist() for i in range(8))
    assert written == expected  # every image arrived whole, none replaced another


def test_save_pairs_filters_by_structure_and_change(tmp_path):
    a = _images(3, 64, seed=1)
    edited = torch.stack([a[0][[2, 1, 0]], _images(1, 64, seed=9)[0], a[2]])  # recolour, unrelated, no change
    out = save_pairs(str(tmp_path), a, edited, PairFilter(min_structure=0.5, min_change=0.01), {"edit": "e"})
    assert [r["kept"] for r in out] == [True, False, False]
    assert out[0]["index"] == 1 and out[1]["index"] is None
    assert out[1]["structure_score"] < 0.5 and out[2]["change_score"] == 0
    assert [p[0] for p in list_pairs(str(tmp_path))] == [1]
    line = json.loads((tmp_path / "pairs.jsonl").read_text())
    assert line["structure_score"] == pytest.approx(out[0]["structure_score"], abs=0.5e-6)  # stored to 6 decimals
    out = save_pairs(str(tmp_path), a, edited)  # filters off: everything is kept
    assert [r["index"] for r in out] == [2, 3, 4]
    with pytest.raises(ValueError, match="differ in shape"):
        save_pairs(str(tmp_path), a, edited[:2])
    assert change_score(a, a).eq(0).all()


def test_augmentation_is_seeded_and_treats_both_images_alike():
    a, b = _u8(_images(1, 48, seed=1)[0]), _u8(_images(1, 48, seed=1)[0][[2, 1, 0]])
    aug = Augment(flip=True, brightness=0.2, contrast=0.0, saturation=0.0, noise=0.0)
    outs = [augment_pair(a, b, 32, aug, torch.Generator().manual_seed(s)) for s in range(6)]
    again = augment_pair(a, b, 32, aug, torch.Generator().manual_seed(0))
    assert torch.equal(outs[0][0], again[0]) and torch.equal(outs[0][1], again[1])
    for x, y in outs:  # same crop, flip and brightness: the edit (a channel swap) still holds exactly
        assert x.shape == (3, 32, 32)
        torch.testing.assert_close(y, x[[2, 1, 0]])
    assert len({tuple(x[0, 0, :4].tolist()) for x, _ in outs}) > 3  # different crops
    noisy, clean = augment_pair(a, b, 32, Augment(flip=False, brightness=0, contrast=0, saturation=0, noise=0.1),
                                torch.Generator().manual_seed(0))
    plain_x, plain_y = augment_pair(a, b, 32, Augment.off(), torch.Generator().manual_seed(0))
    assert torch.equal(clean, plain_y) and not torch.equal(noisy, plain_x)  # noise on the input only
    with pytest.raises(ValueError, match="smaller than the 64 px"):
        augment_pair(a, b, 64, aug, torch.Generator())


def test_dataset_loading_split_and_batches(tmp_path):
    d = str(tmp_path)
    a = _images(6, 40, seed=2)
    save_pairs(d, a, a.flip(-1))
    ds = PairDataset(d, load_size=32)
    assert len(ds) == 6 and ds[0][0].shape == (3, 32, 32) and ds[0][0].dtype == torch.uint8
    train, held = held_out_split(6, 0.34, seed=1)
    assert len(held) == 2 and sorted(train + held) == list(range(6))
    assert held_out_split(6, 0.34, seed=1) == (train, held)
    assert held_out_split(1, 0.5, seed=0) == ([0], [])
    x, y = sample_batch(ds, train, 5, 16, Augment.off(), torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (5, 3, 16, 16)
    # a pair whose images differ in size is refused with its number
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "input" / "000099.png")
    Image.new("RGB", (24, 20)).save(tmp_path / "edited" / "000099.png")
    with pytest.raises(ValueError, match="pair 99"):
        PairDataset(d)[len(ds)]
    with pytest.raises(ValueError, match="no image pairs"):
        PairDataset(str(tmp_path / "input"))
