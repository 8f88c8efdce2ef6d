"""P2PZ_InvertLatent inside a real ComfyUI (in-process, CPU): stock nodes around it, the real executor."""
import math
import os

import pytest
import torch
from official_data import copy_photo
from fixtures import tiny_models
from tolerances import rounding_atol

pytestmark = pytest.mark.host

NODE = "P2PZ_InvertLatent"


def _invert(comfy, model, cond, latent, steps=10, seed=0, **overrides):
    kwargs = dict(model=model, conditioning=cond, latent=latent, steps=steps, schedule="diffusers", lambda_ac=20.0,
                  lambda_kl=20.0, reg_steps=5, ac_rolls=5, seed=seed)
    kwargs.update(overrides)
    return comfy.call_node(NODE, **kwargs)


def _encode(comfy, clip, text):
    return comfy.call_node("CLIPTextEncode", clip=clip, text=text)[0]


def _image_latent(comfy, vae, batch=1, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images in [0, 1], [B, H, W, 3] like LoadImage's
    low = torch.rand(batch, 3, size // 8, size // 8, generator=g)
    image = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear").permute(0, 2, 3, 1)
    return comfy.call_node("VAEEncode", vae=vae, pixels=image)[0]


def _ksampler(comfy, model, cond, latent, **kw):
    args = dict(model=model, seed=1, steps=4, cfg=5.0, sampler_name="ddim", scheduler="ddim_uniform",
                positive=cond, negative=cond, latent_image=latent, denoise=1.0)
    args.update(kw)
    return comfy.call_node("KSampler", **args)[0]["samples"]


def _smooth_model(comfy, v_prediction=False):
    return tiny_models.smooth_sd15(v_prediction)


def test_pack_registers_the_node(pack_nodes, comfy):
    import nodes

    assert NODE in pack_nodes and nodes.NODE_CLASS_MAPPINGS[NODE] is pack_nodes[NODE]
    cls = pack_nodes[NODE]
    assert cls.CATEGORY == "pix2pix-zero" and cls.DESCRIPTION
    for name, spec in cls.INPUT_TYPES()["required"].items():
        assert spec[1].get("tooltip"), f"input {name} has no tooltip"
    assert nodes.NODE_DISPLAY_NAME_MAPPINGS[NODE]


@pytest.mark.parametrize("v_prediction", [False, True], ids=["eps", "v"])
def test_stock_ksampler_regenerates_the_image_latent(comfy, pack_nodes, v_prediction):
    """Inversion without regularization, then stock KSamplerAdvanced (ddim, ddim_uniform, cfg 1, no added noise)
    gives back the latent. Bound, in the model's latent units (where the noise has unit variance): rms <= 0.1 for
    eps-prediction, the bound of the core's CI round-trip test (first-order discretization error of DDIM
    inversion); measured 0.03. For v-prediction the noise is sqrt(1 - alpha_bar) x_t + sqrt(alpha_bar) v, so it
    depends on x_t directly, however smooth the network: bound 0.15, measured 0.09."""
    model, clip, vae = _smooth_model(comfy, v_prediction)
    cond = _encode(comfy, clip, "a photo of a cat")
    latent = _image_latent(comfy, vae)
    inverted, regen_sigmas = _invert(comfy, model, cond, latent, steps=50, lambda_ac=0.0, lambda_kl=0.0)
    assert inverted["samples"].shape == latent["samples"].shape
    assert inverted["p2pz_inversion"]["steps"] == 50 and inverted["p2pz_inversion"]["schedule"] == "diffusers"
    back = comfy.call_node("KSamplerAdvanced", model=model, add_noise="disable", noise_seed=0, steps=50, cfg=1.0,
                           sampler_name="ddim", scheduler="ddim_uniform", positive=cond, negative=cond,
                           latent_image=inverted, start_at_step=0, end_at_step=50,
                           return_with_leftover_noise="disable")[0]["samples"]
    to_model_units = model.get_model_object("latent_format").scale_factor
    err = (back - latent["samples"]).pow(2).mean().sqrt() * to_model_units
    assert err <= (0.15 if v_prediction else 0.1), f"rms error {err:.4f}"
    # the SIGMAS output is ddim_uniform's schedule for 50 steps, usable with SamplerCustom
    import comfy.samplers as cs

    expected = cs.calculate_sigmas(model.get_model_object("model_sampling"), "ddim_uniform", 50)
    torch.testing.assert_close(regen_sigmas, expected.to(regen_sigmas.dtype))
    sampler = comfy.call_node("KSamplerSelect", sampler_name="ddim")[0]
    custom = comfy.call_node("SamplerCustom", model=model, add_noise=False, noise_seed=0, cfg=1.0, positive=cond,
                             negative=cond, sampler=sampler, sigmas=regen_sigmas, latent_image=inverted)[0]["samples"]
    torch.testing.assert_close(custom, back)


def test_fixed_point_inversion_is_the_inverse_of_the_stock_sampler(comfy, pack_nodes):
    """fixed_point_iters solves each step as the inverse of the sampler's own step (core.inversion), so the round
    trip through stock SamplerCustom (ddim along regeneration_sigmas, regularization off) must shrink well beyond
    first order. Measured on this model (bench/bench_roundtrip.py): relative error 0.24 first-order (mostly the
    references' start level, sigma_0 * eps), 1.3e-4 with 2 iterations; asserted: at least 4x (the issue's bar) and
    the record says how the latent was made."""
    model, clip, vae = _smooth_model(comfy)
    cond = _encode(comfy, clip, "a photo of a cat")
    latent = _image_latent(comfy, vae)
    sampler = comfy.call_node("KSamplerSelect", sampler_name="ddim")[0]
    errors = {}
    for n in (0, 2):
        inverted, sigmas = _invert(comfy, model, cond, latent, steps=10, lambda_ac=0.0, lambda_kl=0.0, reg_steps=0,
                                   fixed_point_iters=n)
        assert inverted["p2pz_inversion"]["fixed_point_iters"] == n
        back = comfy.call_node("SamplerCustom", model=model, add_noise=False, noise_seed=0, cfg=1.0, positive=cond,
                               negative=cond, sampler=sampler, sigmas=sigmas, latent_image=inverted)[0]["samples"]
        errors[n] = float((back - latent["samples"]).pow(2).mean().sqrt() / latent["samples"].pow(2).mean().sqrt())
    assert errors[2] < errors[0] / 4, errors


def test_stock_ksampler_is_unchanged_by_an_inversion(comfy, tiny_sd15_objects, pack_nodes):
    model, clip, vae = tiny_sd15_objects
    cond = _encode(comfy, clip, "a cat")
    latent = _image_latent(comfy, vae)
    options_before = repr(model.model_options)
    before = _ksampler(comfy, model, cond, latent)
    _invert(comfy, model, cond, latent, steps=5)
    after = _ksampler(comfy, model, cond, latent)
    assert torch.equal(before, after)
    assert repr(model.model_options) == options_before and not model.patches


def test_same_seed_same_output_and_batches(comfy, pack_nodes):
    model, clip, vae = _smooth_model(comfy)  # raw random weights amplify batch-size rounding differences
    cond = _encode(comfy, clip, "a cat")
    latent = _image_latent(comfy, vae, batch=2)
    a = _invert(comfy, model, cond, latent, steps=5, seed=11)[0]["samples"]
    b = _invert(comfy, model, cond, latent, steps=5, seed=11)[0]["samples"]
    c = _invert(comfy, model, cond, latent, steps=5, seed=12)[0]["samples"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.isfinite(a).all()
    def invert_one(samples):
        return _invert(comfy, model, cond, {"samples": samples}, steps=5, seed=11)[0]["samples"]

    single = invert_one(latent["samples"][1:2])
    # a batch and one image alone: float32 rounding of other batch compositions, bounded by the run's own
    # amplification of a nudge of its input (tolerances.py, rule 4)
    # per step: one UNet call and 5 x (5 + 1) regularization steps
    tol = rounding_atol(invert_one, latent["samples"][1:2], single, evaluations=5 * 31)
    torch.testing.assert_close(a[1:2], single, rtol=0, atol=tol)
    # one conditioning per image is accepted too
    pair = [[torch.cat([cond[0][0]] * 2), dict(cond[0][1])]]
    assert torch.isfinite(_invert(comfy, model, pair, latent, steps=2)[0]["samples"]).all()


def test_authors_schedule_runs_steps_minus_two_calls(comfy, tiny_sd15_objects, pack_nodes):
    model, clip, vae = tiny_sd15_objects
    cond = _encode(comfy, clip, "a cat")
    latent = _image_latent(comfy, vae)
    calls = []
    m = model.clone()
    m.set_model_unet_function_wrapper(lambda apply, args: calls.append(1) or apply(args["input"], args["timestep"], **args["c"]))
    out, sigmas = _invert(comfy, m, cond, latent, steps=10, schedule="authors", fixed_point_iters=0)
    assert len(calls) == 8 and out["p2pz_inversion"]["timesteps"] == list(range(101, 802, 100))
    assert len(sigmas) == 9 and sigmas[-1] == 0
    # the default (one fixed-point iteration) costs one more call on every step of the same schedule
    calls.clear()
    out, _ = _invert(comfy, m, cond, latent, steps=10, schedule="authors")
    assert len(calls) == 16 and out["p2pz_inversion"]["fixed_point_iters"] == 1


def test_bad_inputs_get_clear_errors(comfy, tiny_sd15_objects, pack_nodes):
    model, clip, vae = tiny_sd15_objects
    cond = _encode(comfy, clip, "a cat")
    latent = _image_latent(comfy, vae, batch=2)
    with pytest.raises(ValueError, match="16 channels but this model works on 4-channel latents"):
        _invert(comfy, model, cond, {"samples": torch.zeros(1, 16, 8, 8)})
    with pytest.raises(ValueError, match="steps must be an integer >= 1"):
        _invert(comfy, model, cond, latent, steps=0)
    nan = latent["samples"].clone()
    nan[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        _invert(comfy, model, cond, {"samples": nan})
    triple = [[torch.cat([cond[0][0]] * 3), dict(cond[0][1])]]
    with pytest.raises(ValueError, match="batch of 3 but the latent has 2 images"):
        _invert(comfy, model, triple, latent)


def test_interruption_stops_cleanly_and_the_next_run_works(comfy, tiny_sd15_objects, pack_nodes):
    import comfy.model_management as mm

    model, clip, vae = tiny_sd15_objects
    cond = _encode(comfy, clip, "a cat")
    latent = _image_latent(comfy, vae)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _invert(comfy, model, cond, latent, steps=5)
    finally:
        mm.interrupt_current_processing(False)
    assert torch.isfinite(_invert(comfy, model, cond, latent, steps=5)[0]["samples"]).all()


def test_graph_through_the_real_executor(comfy, tiny_checkpoint_name, pack_nodes):
    """CheckpointLoaderSimple (tiny SD 1.5 checkpoint) -> LoadImage (an authors' photo) -> VAEEncode ->
    CLIPTextEncode -> P2PZ_InvertLatent -> stock samplers (KSamplerAdvanced and SamplerCustom) -> VAEDecode."""
    copy_photo("cat_1.png", comfy.io_dirs()["input"])
    steps = 10
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint_name}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "cat_1.png"}},
        "3": {"class_type": "ImageScale", "inputs": {"image": ["2", 0], "upscale_method": "area", "width": 64,
                                                     "height": 64, "crop": "center"}},
        "4": {"class_type": "VAEEncode", "inputs": {"pixels": ["3", 0], "vae": ["1", 2]}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat sitting on a sofa"}},
        "6": {"class_type": NODE, "inputs": {"model": ["1", 0], "conditioning": ["5", 0], "latent": ["4", 0],
                                             "steps": steps, "schedule": "diffusers", "lambda_ac": 20.0,
                                             "lambda_kl": 20.0, "reg_steps": 5, "ac_rolls": 5, "seed": 7}},
        "7": {"class_type": "KSamplerAdvanced", "inputs": {
            "model": ["1", 0], "add_noise": "disable", "noise_seed": 0, "steps": steps, "cfg": 1.0,
            "sampler_name": "ddim", "scheduler": "ddim_uniform", "positive": ["5", 0], "negative": ["5", 0],
            "latent_image": ["6", 0], "start_at_step": 0, "end_at_step": steps, "return_with_leftover_noise": "disable"}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "p2pz_regen"}},
        "10": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "11": {"class_type": "SamplerCustom", "inputs": {
            "model": ["1", 0], "add_noise": False, "noise_seed": 0, "cfg": 1.0, "positive": ["5", 0],
            "negative": ["5", 0], "sampler": ["10", 0], "sigmas": ["6", 1], "latent_image": ["6", 0]}},
        "12": {"class_type": "VAEDecode", "inputs": {"samples": ["11", 0], "vae": ["1", 2]}},
        "13": {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "p2pz_custom"}},
    }
    result = comfy.run_prompt(prompt)
    for node_id in ("9", "13"):
        images = result["outputs"][node_id]["images"]
        assert len(images) == 1
        assert os.path.isfile(os.path.join(comfy.io_dirs()["output"], images[0]["subfolder"], images[0]["filename"]))
    decoded = comfy.node_output(result, "8")
    assert decoded.shape == (1, 64, 64, 3) and torch.isfinite(decoded).all()
    inverted = comfy.node_output(result, "6")
    assert inverted["p2pz_inversion"]["shape"] == [1, 4, 8, 8]
    # euler (SamplerCustom + the node's sigmas) and ddim (KSamplerAdvanced + ddim_uniform) are the same sampler
    torch.testing.assert_close(comfy.node_output(result, "11")["samples"], comfy.node_output(result, "7")["samples"])
