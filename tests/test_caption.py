"""core.caption: BLIP captioning with a tiny random BLIP saved in Hugging Face format and loaded offline."""
import os

import pytest
import torch
from tiny_blip import IMAGE_SIZE, save_tiny_blip

from core.caption import (
    BlipModelMissingError,
    caption_images,
    download_blip,
    ensure_blip,
    is_blip_folder,
    load_blip,
    missing_blip_files,
    preprocess_images,
)


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory):
    return save_tiny_blip(str(tmp_path_factory.mktemp("blip") / "tiny-blip"))


@pytest.fixture(scope="module")
def captioner(blip_dir):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # loading must never need the network
        return load_blip(blip_dir)


def _images(batch=2, size=IMAGE_SIZE, seed=0):
    """Smooth random RGB images [B, H, W, 3] in 0..1 (ComfyUI IMAGE layout), all different."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, 4, 4, generator=g)
    return torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear").permute(0, 2, 3, 1)


def test_tiny_folder_is_a_usable_blip(blip_dir, tmp_path):
    assert is_blip_folder(blip_dir) and missing_blip_files(blip_dir) == []
    assert missing_blip_files(str(tmp_path / "nothing")) == ["the folder itself"]
    os.makedirs(tmp_path / "partial")
    (tmp_path / "partial" / "config.json").write_text('{"model_type": "blip", "architectures": ["BlipForQuestionAnswering"]}')
    missing = missing_blip_files(str(tmp_path / "partial"))
    assert len(missing) == 4 and "BlipForConditionalGeneration" in missing[0]
    assert any("model.safetensors" in m for m in missing) and "preprocessor_config.json" in missing


def test_one_caption_per_image_deterministic(captioner):
    images = _images(batch=2)
    first = caption_images(captioner, images)
    assert isinstance(first, list) and len(first) == 2 and all(isinstance(c, str) and c for c in first)
    assert first[0] != first[1]  # the tiny model looks at the image
    assert caption_images(captioner, images) == first


def test_batch_equals_each_image_alone(captioner):
    images = _images(batch=3, seed=1)
    batch = caption_images(captioner, images)
    alone = [caption_images(captioner, images[i:i + 1])[0] for i in range(3)]
    assert batch == alone
    assert caption_images(captioner, images, chunk_size=2) == batch  # chunking changes nothing


def test_prefix_strip_and_keep(captioner):
    images = _images(batch=2, seed=2)
    strip = caption_images(captioner, images, prefix="a picture of ", prefix_mode="strip")
    keep = caption_images(captioner, images, prefix="a picture of ", prefix_mode="keep")
    # the prefix tokens start the decoder, so the sequence carries them: keep = prefix + stripped caption
    assert keep == ["a picture of " + c for c in strip]
    assert not any(c.startswith("a picture of") for c in strip)
    # case and spacing of the prefix do not matter (BLIP's tokenizer lowercases; strip works on tokens)
    assert caption_images(captioner, images, prefix="  A   Picture OF") == strip
    assert caption_images(captioner, images, prefix="A Picture of", prefix_mode="keep") == keep
    # another prefix conditions the decoder differently
    other = caption_images(captioner, images, prefix="a photo of", prefix_mode="keep")
    assert all(c.startswith("a photo of ") for c in other)
    # no prefix: unconditional captioning, nothing to strip
    uncond = caption_images(captioner, images, prefix="", prefix_mode="strip")
    assert uncond == caption_images(captioner, images, prefix="", prefix_mode="keep")


def test_length_limits_count_prefix_and_start_token(captioner):
    tok = captioner.tokenizer
    images = _images(batch=2, seed=3)
    for max_length, min_length in ((30, 10), (12, 12), (8, 0)):
        for c in caption_images(captioner, images, max_length=max_length, min_length=min_length):
            n = len(tok(c, add_special_tokens=False)["input_ids"])
            # [DEC] + 3 prefix tokens + caption (+ [SEP] when it ended early, which also counts)
            assert 1 + 3 + n <= max_length
            assert 1 + 3 + n >= min(min_length, max_length) - 1
    with pytest.raises(ValueError, match="max_length"):
        caption_images(captioner, images, max_length=4)  # [DEC] + 3 prefix tokens leave no room
    with pytest.raises(ValueError, match="min_length"):
        caption_images(captioner, images, max_length=10, min_length=20)


def test_preprocessing_matches_blip_image_processor(captioner, blip_dir):
    import numpy as np
    from PIL import Image
    from transformers import BlipProcessor

    processor = BlipProcessor.from_pretrained(blip_dir, local_files_only=True)
    std = torch.tensor(captioner.image_std).view(1, 3, 1, 1)
    for size in (IMAGE_SIZE, 80, 20):  # same size, downscale, upscale
        image = (_images(batch=1, size=size, seed=size) * 255).round() / 255  # exactly 8-bit values
        ours = preprocess_images(image, captioner)
        pil = Image.fromarray((image[0].numpy() * 255).round().astype(np.uint8))
        ref = processor.image_processor(images=pil, return_tensors="pt")["pixel_values"]
        assert ours.shape == ref.shape == (1, 3, IMAGE_SIZE, IMAGE_SIZE)
        err = ((ours - ref).abs() * std * 255).max().item()  # in 8-bit levels
        assert err <= (0.01 if size == IMAGE_SIZE else 1.01), (size, err)


def test_channels_and_bad_images(captioner):
    rgb = _images(batch=1, seed=4)
    rgba = torch.cat([rgb, torch.rand(1, IMAGE_SIZE, IMAGE_SIZE, 1)], dim=-1)
    assert caption_images(captioner, rgba) == caption_images(captioner, rgb)  # alpha is ignored
    grey = rgb[..., :1]
    assert caption_images(captioner, grey) == caption_images(captioner, grey.expand(-1, -1, -1, 3))
    for bad in (torch.rand(IMAGE_SIZE, IMAGE_SIZE, 3), torch.rand(1, 3, IMAGE_SIZE, IMAGE_SIZE),
                torch.zeros(0, IMAGE_SIZE, IMAGE_SIZE, 3), (rgb * 255).to(torch.uint8),
                torch.full((1, 8, 8, 3), float("nan"))):
        with pytest.raises(ValueError, match="image"):
            caption_images(captioner, bad)
    with pytest.raises(ValueError, match="prefix_mode"):
        caption_images(captioner, rgb, prefix_mode="remove")


def test_missing_folder_offline_gives_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "blip" / "blip-image-captioning-base"
    with pytest.raises(BlipModelMissingError) as info:
        ensure_blip(str(folder))
    msg = str(info.value)
    assert str(folder) in msg and "HF_HUB_OFFLINE" in msg
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
                 "Salesforce/blip-image-captioning-base"):
        assert name in msg
    assert not folder.exists() and not (tmp_path / "blip").exists()  # nothing written
    with pytest.raises(BlipModelMissingError, match="preprocessor_config.json"):
        load_blip(str(folder))


def test_incomplete_folder_is_never_downloaded_into(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder = tmp_path / "my-blip"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "blip"}')
    with pytest.raises(BlipModelMissingError, match="has files but not all") as info:
        ensure_blip(str(folder))
    assert str(folder) in str(info.value)
    assert sorted(os.listdir(folder)) == ["config.json"]


def _fake_hub(monkeypatch, source_dir, fail_after_first=False):
    """Replace the two network calls of download_blip: files listed from `source_dir`, 'downloaded' by copying
    (optionally: one file written, then a connection error)."""
    import shutil

    import huggingface_hub

    calls = {}

    def list_repo_files(repo_id, **kwargs):
        calls["repo"] = repo_id
        return sorted(os.listdir(source_dir)) + ["pytorch_model.bin", "tf_model.h5", "README.md"]

    def snapshot_download(repo_id, local_dir, allow_patterns, **kwargs):
        calls["patterns"] = list(allow_patterns)
        os.makedirs(os.path.join(local_dir, ".cache", "huggingface"), exist_ok=True)
        for name in allow_patterns:
            shutil.copy(os.path.join(source_dir, name), os.path.join(local_dir, name))
            if fail_after_first:
                raise ConnectionError("Failed to establish a new connection")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    import core.caption
    monkeypatch.setattr(core.caption, "unreachable_reason", lambda *a, **k: None)  # the fake hub is "reachable"
    return calls


def test_no_network_fails_at_once_without_hub_retries(tmp_path, monkeypatch):
    """Online mode but nothing answers: a clear error in seconds, not huggingface_hub's ~25 s of retries."""
    import time

    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # a port nobody listens on
    monkeypatch.setattr(huggingface_hub, "list_repo_files", lambda *a, **k: pytest.fail("the hub was called"))
    folder = tmp_path / "blip" / "blip-image-captioning-base"
    started = time.monotonic()
    with pytest.raises(BlipModelMissingError) as info:
        ensure_blip(str(folder))
    assert time.monotonic() - started < 5
    msg = str(info.value)
    assert "no network: cannot reach 127.0.0.1:9" in msg and str(folder) in msg and "hf download" in msg
    assert not (tmp_path / "blip").exists() or os.listdir(tmp_path / "blip") == []


def test_download_failure_leaves_nothing(tmp_path, monkeypatch, blip_dir):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    _fake_hub(monkeypatch, blip_dir, fail_after_first=True)
    folder = tmp_path / "blip" / "blip-image-captioning-base"
    with pytest.raises(BlipModelMissingError, match="ConnectionError") as info:
        ensure_blip(str(folder))
    assert str(folder) in str(info.value) and "model.safetensors" in str(info.value)
    assert os.listdir(tmp_path / "blip") == []  # no half-written model, no temporary folder


def test_download_into_place(tmp_path, monkeypatch, blip_dir):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    calls = _fake_hub(monkeypatch, blip_dir)
    folder = tmp_path / "blip" / "blip-image-captioning-base"
    folder.mkdir(parents=True)  # an empty folder made for it is fine
    assert download_blip(str(folder)) == str(folder)
    assert calls["repo"] == "Salesforce/blip-image-captioning-base"
    assert "model.safetensors" in calls["patterns"] and "pytorch_model.bin" not in calls["patterns"]
    assert is_blip_folder(str(folder)) and not (folder / ".cache").exists()
    assert os.listdir(tmp_path / "blip") == ["blip-image-captioning-base"]
    assert ensure_blip(str(folder)) == str(folder)  # usable now: no second download
