"""The student network, its losses and its files: any-size apply, batches, bit-exact save/load, refused files."""
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tolerances import same_math_atol

from core.student import (
    ARCHITECTURE,
    FILE_FORMAT,
    FeaturePerceptualLoss,
    HookedFeatures,
    LaplacianPyramidLoss,
    PatchDiscriminator,
    StudentConfig,
    StudentFileError,
    apply_student,
    build_student,
    discriminator_loss,
    generator_adversarial_loss,
    load_student,
    lpips_loss_if_available,
    save_student,
    vae_encoder_features,
)

SMALL = StudentConfig(base_channels=8, channel_mult=(1, 2, 4), num_res_blocks=2, unshuffle=2)  # multiple of 8


def _trained_like(config=SMALL, seed=0):
    """A student with random non-zero weights everywhere (an untrained one is the identity, which proves little)."""
    net = build_student(config, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return net.eval()


def _images(batch, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(batch, 3, max(1, h // 4), max(1, w // 4), generator=g)
    return torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear").clamp(0, 1)


def test_default_student_is_small_and_starts_as_the_identity():
    net = build_student()
    assert 1e6 < sum(p.numel() for p in net.parameters()) < 4e6
    assert net.config.size_multiple == 16
    x = _images(2, 64, 48)
    assert torch.equal(apply_student(net, x), x)


@pytest.mark.parametrize("size", [(1, 1), (5, 7), (33, 17), (64, 64), (70, 130)])
def test_any_size_is_padded_and_cropped_back(size):
    net = _trained_like()
    x = _images(2, *size)
    y = apply_student(net, x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert not torch.equal(y, x)
    if size[0] % 8 == 0 and size[1] % 8 == 0:  # no padding needed: exactly the network
        with torch.no_grad():
            torch.testing.assert_close(y, net(x).clamp(0, 1), rtol=0, atol=0)


def test_network_refuses_sizes_it_cannot_take():
    net = _trained_like()
    with pytest.raises(ValueError, match="multiples of 8"):
        net(_images(1, 20, 16))
    with pytest.raises(ValueError, match="RGB"):
        apply_student(net, torch.rand(1, 4, 16, 16))


def test_a_batch_gives_its_images_edited_one_by_one():
    # no normalisation across the batch: equal in exact arithmetic, only the summation order differs (oneDNN picks
    # kernels by batch size): float64 (tolerances.py, rule 2)
    net = _trained_like().double()
    x = _images(5, 40, 24, seed=3).double()
    batch = apply_student(net, x)
    alone = torch.cat([apply_student(net, x[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batch, alone, rtol=0, atol=same_math_atol(alone))
    torch.testing.assert_close(apply_student(net, x, chunk_size=2), batch, rtol=0, atol=same_math_atol(batch))


def test_channels_last_model_gets_the_same_values():
    import copy

    # another memory format, other kernels, the same arithmetic in exact terms: float64 (tolerances.py, rule 2)
    net = _trained_like(seed=2).double()
    fast = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x = _images(2, 37, 50, seed=4).double()
    plain = apply_student(net, x)
    torch.testing.assert_close(apply_student(fast, x), plain, rtol=0, atol=same_math_atol(plain))


def test_save_load_apply_round_trip_is_bit_exact(tmp_path):
    net = _trained_like(seed=5)
    path = save_student(str(tmp_path / "s.safetensors"), net, edit="cat -> dog", resolution=256, training_steps=1234)
    loaded, meta = load_student(path)
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b), k
    x = _images(3, 45, 61, seed=9)
    assert torch.equal(apply_student(loaded, x), apply_student(net, x))
    assert meta["edit"] == "cat -> dog" and meta["resolution"] == "256" and meta["training_steps"] == "1234"
    assert meta["architecture"] == ARCHITECTURE and meta["format"] == FILE_FORMAT and meta["format_version"] == "1"
    assert StudentConfig.from_dict(json.loads(meta["config"])) == SMALL
    assert load_student(path)[1] == meta
    half, _ = load_student(path, dtype=torch.float16)
    assert next(half.parameters()).dtype == torch.float16


def test_save_never_overwrites(tmp_path):
    path = str(tmp_path / "s.safetensors")
    save_student(path, _trained_like(seed=1))
    before = Path(path).read_bytes()
    with pytest.raises(FileExistsError, match="never overwrites"):
        save_student(path, _trained_like(seed=2))
    assert Path(path).read_bytes() == before
    assert os.listdir(tmp_path) == ["s.safetensors"]  # no temporary file left behind


def _student_file(tmp_path, **meta_changes):
    path = str(tmp_path / f"x{len(os.listdir(tmp_path))}.safetensors")
    save_student(path, _trained_like())
    from safetensors import safe_open

    with safe_open(path, "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    meta.update(meta_changes)
    os.remove(path)
    save_file(tensors, path, metadata=meta)
    return path, tensors, meta


def test_loader_rejects_other_models_with_what_they_look_like(tmp_path):
    sd = tmp_path / "sd.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3)}, str(sd))
    with pytest.raises(StudentFileError, match="not a pix2pix-zero student.*Stable Diffusion checkpoint"):
        load_student(str(sd))
    lora = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0.lora_up.weight": torch.zeros(4, 4)}, str(lora))
    with pytest.raises(StudentFileError, match="LoRA"):
        load_student(str(lora))
    path, _, _ = _student_file(tmp_path, architecture="co-mod-gan")
    with pytest.raises(StudentFileError, match="architecture 'co-mod-gan'"):
        load_student(path)


def test_loader_checks_tensors_against_the_config(tmp_path):
    path, _, _ = _student_file(tmp_path, config=json.dumps(dict(SMALL.to_dict(), base_channels=16)))
    with pytest.raises(StudentFileError, match="do not match its own config.*wrong shapes"):
        load_student(path)
    path, _, _ = _student_file(tmp_path, config=json.dumps(dict(SMALL.to_dict(), num_res_blocks=3)))
    with pytest.raises(StudentFileError, match="missing"):
        load_student(path)
    path, _, _ = _student_file(tmp_path, config=json.dumps(dict(SMALL.to_dict(), attention=True)))
    with pytest.raises(StudentFileError, match="unknown student config keys"):
        load_student(path)
    path, _, _ = _student_file(tmp_path, format_version="2")
    with pytest.raises(StudentFileError, match="update the pack"):
        load_student(path)


def test_loader_rejects_corrupt_files(tmp_path):
    good = str(tmp_path / "good.safetensors")
    save_student(good, _trained_like())
    data = Path(good).read_bytes()
    for name, content in (("truncated", data[: len(data) // 2]), ("header-only", data[:200]), ("empty", b""),
                          ("garbage", os.urandom(4096))):
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(content)
        with pytest.raises(StudentFileError, match="corrupt or truncated"):
            load_student(str(p))
    path, tensors, meta = _student_file(tmp_path)
    tensors["head.bias"] = torch.full_like(tensors["head.bias"], float("nan"))
    os.remove(path)
    save_file(tensors, path, metadata=meta)
    with pytest.raises(StudentFileError, match="NaN"):
        load_student(path)
    with pytest.raises(StudentFileError, match="not found"):
        load_student(str(tmp_path / "missing.safetensors"))


def test_laplacian_loss_weighs_lost_detail_more_than_plain_l1():
    target = _images(2, 64, 64, seed=1)
    target = target + 0.2 * (torch.rand(target.shape, generator=torch.Generator().manual_seed(2)) > 0.5)  # texture
    blurred = torch.nn.functional.avg_pool2d(target, 3, 1, 1, count_include_pad=False)
    offset = target + (blurred - target).abs().mean()  # same plain L1 as the blurred one, but all detail kept
    l1_blur, l1_off = (blurred - target).abs().mean(), (offset - target).abs().mean()
    torch.testing.assert_close(l1_blur, l1_off)
    lap = LaplacianPyramidLoss()
    assert lap(target, target) == 0
    # plain L1 ties the two; Lap1 prefers the prediction that kept the detail (measured 0.0209 vs 0.0178)
    assert lap(blurred, target) > 1.1 * lap(offset, target)


def test_feature_perceptual_loss_on_a_vae_encoder_runs_only_what_it_needs():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8)
    features = vae_encoder_features(vae.encoder, num_levels=3)
    assert features.layer_names == ["down_blocks.0", "down_blocks.1", "down_blocks.2"]
    ran = []
    vae.encoder.mid_block.register_forward_hook(lambda *a: ran.append("mid"))
    vae.encoder.down_blocks[3].register_forward_hook(lambda *a: ran.append("down3"))
    loss = FeaturePerceptualLoss(features)
    a = _images(2, 32, 32, seed=1).requires_grad_(True)
    b = _images(2, 32, 32, seed=2)
    value = loss(a, b)
    value.backward()
    assert value > 0 and a.grad is not None and a.grad.abs().sum() > 0
    assert loss(b, b) < 1e-6 and ran == []
    assert all(not p.requires_grad for p in vae.encoder.parameters())
    with pytest.raises(ValueError, match="no layers named"):
        HookedFeatures(vae.encoder, ["down_blocks.9"])


def test_adversarial_losses():
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    assert discriminator_loss(ones, zeros, "lsgan") == 0 and generator_adversarial_loss(ones, "lsgan") == 0
    assert discriminator_loss(ones, -ones, "hinge") == 0
    assert generator_adversarial_loss(zeros, "lsgan") == 0.5
    with pytest.raises(ValueError, match="unknown GAN loss"):
        discriminator_loss(ones, zeros, "wgan")
    d = PatchDiscriminator(8, 2)
    out = d(_images(2, 32, 32), _images(2, 32, 32, seed=1))
    assert out.shape == (2, 1, 8, 8)


def test_lpips_is_optional():
    try:
        import lpips  # noqa: F401
    except ImportError:
        assert lpips_loss_if_available() is None
    else:  # pragma: no cover - only where lpips is installed
        loss = lpips_loss_if_available()
        assert loss is None or loss(_images(1, 32, 32), _images(1, 32, 32)) < 1e-6
