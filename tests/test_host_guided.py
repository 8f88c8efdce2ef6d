"""P2PZ_GuidedEdit inside a real ComfyUI (in-process, CPU): SD 1.x, SD 2.x v-prediction and SDXL UNet layouts,
parity with diffusers' pipeline on the same weights, the shared MODEL left untouched, interruption, errors."""

import pytest
import torch
from map_losses import recording, total
from tolerances import rounding_atol

from fixtures import tiny_models

pytestmark = pytest.mark.host

NODE = "P2PZ_GuidedEdit"



# ---------------------------------------------------------------------------------------------------------------
# Tiny models of the three UNet layouts

ATTN2_LAYERS = {"sd15": 16, "sd2v": 7, "sdxl": 8}
_tiny_model = tiny_models.tiny_unet_model
_conditioning = tiny_models.tiny_conditioning


def _shifted(cond, seed, amount=0.8):
    """The conditioning moved along a random direction (tokens and pooled vector)."""
    g = torch.Generator().manual_seed(seed)
    tensor, extra = cond[0]
    extra = dict(extra)
    if "pooled_output" in extra:
        extra["pooled_output"] = extra["pooled_output"] + amount * torch.randn(extra["pooled_output"].shape, generator=g)
    return [[tensor + amount * torch.randn(tensor.shape, generator=g), extra]]


def _latent(seed=0, batch=1, size=8):
    return {"samples": torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))}


def _invert(comfy, model, cond, latent, steps, **kw):
    args = {"model": model, "conditioning": cond, "latent": latent, "steps": steps, "schedule": "diffusers",
            "lambda_ac": 20.0, "lambda_kl": 20.0, "reg_steps": 5, "ac_rolls": 5, "seed": 0}
    args.update(kw)
    return comfy.call_node("P2PZ_InvertLatent", **args)[0]


def _edit(comfy, model, positive, inverted, steps, **kw):
    args = {"model": model, "positive": positive, "inverted_latent": inverted, "steps": steps, "cfg": 5.0,
            "lambda_xa": 0.1, "guidance": "references"}
    args.update(kw)
    return comfy.call_node(NODE, **args)


@pytest.fixture
def runs(comfy, pack_nodes, monkeypatch):
    """Records every guided run's per-step map losses (map_losses.recording: measured also without guidance) and
    the attn2 layer keys whose maps reached the recorder."""
    guided = comfy.pack_import("nodes.guided_unet")
    attention = comfy.pack_import("core.attention")
    results, layers = [], set()

    observe = attention.AttentionMaps.observe

    def recording_observe(self, layer, branch, probs, heads):
        layers.add(layer)
        return observe(self, layer, branch, probs, heads)

    monkeypatch.setattr(guided, "guided_edit", recording(guided.guided_edit, results))
    monkeypatch.setattr(attention.AttentionMaps, "observe", recording_observe)
    return results, layers


# ---------------------------------------------------------------------------------------------------------------

def test_pack_registers_the_node(pack_nodes, comfy):
    import nodes

    assert NODE in pack_nodes and nodes.NODE_CLASS_MAPPINGS[NODE] is pack_nodes[NODE]
    cls = pack_nodes[NODE]
    assert cls.CATEGORY == "pix2pix-zero" and cls.DESCRIPTION and nodes.NODE_DISPLAY_NAME_MAPPINGS[NODE]
    spec = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, (_, options) in spec[section].items():
            assert options.get("tooltip"), f"input {name} has no tooltip"
    assert spec["required"]["cfg"][1]["default"] == 5.0 and spec["required"]["lambda_xa"][1]["default"] == 0.1
    assert "0.01" in spec["required"]["lambda_xa"][1]["tooltip"]  # v-prediction advice
    assert cls.RETURN_TYPES == ("LATENT", "LATENT")


@pytest.mark.parametrize("layout", ["sd15", "sd2v", "sdxl"])
def test_layouts_guidance_lowers_the_map_loss(comfy, pack_nodes, runs, layout):
    """Every attn2 layer of the layout is recorded and compared; guidance lowers the summed map loss (edit vs
    reconstruction, both guided copies, all steps). SD 2.x v-prediction uses the advised lambda_xa 0.01."""
    results, layers = runs
    model, width, pooled = _tiny_model(comfy, layout)
    caption = _conditioning(width, pooled, seed=1)
    edited = _shifted(caption, seed=2)
    # 16x16: at 8x8 the four-level SD 1.5 layout narrows to 1x1, where a raw random network is chaotic
    inverted = _invert(comfy, model, caption, _latent(seed=3, size=16), steps=6)
    lam = 0.01 if layout == "sd2v" else 0.1
    outputs = {}
    for value in (0.0, lam):
        outputs[value] = _edit(comfy, model, caption, inverted, 6, lambda_xa=value, edited_positive=edited)
    guided = comfy.pack_import("nodes.guided_unet")
    assert len(layers) == ATTN2_LAYERS[layout] == len(guided.attn2_layers(model.model.diffusion_model))
    unguided, with_guidance = (total(losses) for losses in results)
    assert 0 < with_guidance < unguided, (unguided, with_guidance)
    edit, reconstruction = outputs[lam]
    assert edit["samples"].shape == reconstruction["samples"].shape == inverted["samples"].shape
    assert torch.isfinite(edit["samples"]).all() and "p2pz_inversion" not in edit
    assert not torch.equal(edit["samples"], outputs[0.0][0]["samples"])
    torch.testing.assert_close(reconstruction["samples"], outputs[0.0][1]["samples"])  # guidance never touches it


def test_options_guide_the_first_steps_and_every_nth_layer(comfy, pack_nodes, runs):
    """Guided Edit Options on the UNet path: guided_fraction 0.5 of 4 steps guides steps 0 and 1 only (no loss, no
    gradient pass after them); block_stride 2 guides cross-attention layers 0, 2, 4, ... only, with the step scaled
    by layers / guided layers; without options every step and layer is guided (the paper). The deprecated
    SD 3.x / Flux options node, whose settings travel in the MODEL, still applies, to the same result."""
    results, layers = runs
    model, width, pooled = _tiny_model(comfy, "sd15")
    caption = _conditioning(width, pooled, seed=1)
    edited = _shifted(caption, seed=2)
    inverted = _invert(comfy, model, caption, _latent(seed=3, size=16), steps=4)
    guided = comfy.pack_import("nodes.guided_unet")
    every_layer = list(guided.attn2_layers(model.model.diffusion_model))
    _edit(comfy, model, caption, inverted, 4, edited_positive=edited)
    assert [set(step) for step in results[-1]] == [{"negative", "edited"}] * 4 and layers == set(every_layer)
    layers.clear()
    options = comfy.call_node("P2PZ_GuidedEditOptions", guided_fraction=0.5, block_stride=2,
                              checkpoint_blocks=True)[0]
    seen = []
    inner = guided.guided_edit
    guided.guided_edit = lambda *a, **k: seen.append(k["lambda_xa"]) or inner(*a, **k)
    try:
        tuned = _edit(comfy, model, caption, inverted, 4, edited_positive=edited, options=options)[0]["samples"]
    finally:
        guided.guided_edit = inner
    assert [bool(step) for step in results[-1]] == [True, True, False, False]
    assert layers == set(every_layer[::2]) and seen == [pytest.approx(0.1 * 2)]
    legacy = comfy.call_node("P2PZ_MMDiTGuidanceOptions", model=model, guided_fraction=0.5, block_stride=2,
                             checkpoint_blocks=True)[0]
    again = _edit(comfy, legacy, caption, inverted, 4, edited_positive=edited)[0]["samples"]
    assert torch.equal(again, tuned) and [bool(step) for step in results[-1]] == [True, True, False, False]
    with pytest.raises(ValueError, match="guided_fraction must be between 0.0 and 1.0"):
        comfy.call_node("P2PZ_GuidedEditOptions", guided_fraction=1.5, block_stride=1, checkpoint_blocks=True)


@pytest.mark.parametrize("layout", ["sd15", "sdxl"])
def test_zero_direction_without_guidance_gives_the_reconstruction(comfy, pack_nodes, layout):
    """lambda_xa 0 and the caption itself as the edited caption (what a zero direction gives; the node refuses a
    zero direction input, tests/test_host_newcomer.py): the edit equals the reconstruction. Both are the same model
    on the same inputs, batched differently and with attn2 explicit in the reference pass but ComfyUI's attention in
    the edit's pass: float32 rounding over 6 steps, bounded by the run's own amplification of a nudge
    (tests/tolerances.py, rule 4)."""
    model, width, pooled = _tiny_model(comfy, layout)
    caption = _conditioning(width, pooled, seed=4)
    inverted = _invert(comfy, model, caption, _latent(seed=5), steps=6)
    edit, reconstruction = _edit(comfy, model, caption, inverted, 6, lambda_xa=0.0, edited_positive=caption)

    def reconstruct(samples):
        return _edit(comfy, model, caption, dict(inverted, samples=samples), 6, lambda_xa=0.0,
                     edited_positive=caption)[1]["samples"]

    tol = rounding_atol(reconstruct, inverted["samples"], reconstruction["samples"], evaluations=2 * 6)  # 2 passes
    torch.testing.assert_close(edit["samples"], reconstruction["samples"], rtol=0, atol=tol)


def test_direction_input_equals_the_edited_conditioning(comfy, pack_nodes):
    """The direction (with a multiplier, pooled vector included for SDXL) gives exactly what an already edited
    conditioning gives."""
    direction_module = comfy.pack_import("core.direction")
    model, width, pooled = _tiny_model(comfy, "sdxl")
    caption = _conditioning(width, pooled, seed=6)
    g = torch.Generator().manual_seed(7)
    direction = direction_module.EditDirection(embedding=torch.randn(1, 77, width, generator=g),
                                               pooled=torch.randn(1, pooled, generator=g))
    inverted = _invert(comfy, model, caption, _latent(seed=8), steps=4)
    by_direction = _edit(comfy, model, caption, inverted, 4, direction=direction, direction_multiplier=0.5)[0]
    edited = [[caption[0][0] + 0.5 * direction.embedding,
               {"pooled_output": caption[0][1]["pooled_output"] + 0.5 * direction.pooled}]]
    by_conditioning = _edit(comfy, model, caption, inverted, 4, edited_positive=edited)[0]
    torch.testing.assert_close(by_direction["samples"], by_conditioning["samples"], rtol=0, atol=0)


def test_unconnected_negative_is_the_caption_with_one_reference_evaluation(comfy, tiny_sd15_objects, pack_nodes):
    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a photo of a cat")[0]
    edited = comfy.call_node("CLIPTextEncode", clip=clip, text="a photo of a dog")[0]
    inverted = _invert(comfy, model, caption, _latent(seed=9), steps=3)
    calls = {}
    for name, kwargs in (("default", {}), ("explicit", {"negative": caption}), ("paper", {"guidance": "paper"})):
        counted = model.clone()
        log = calls.setdefault(name, [])

        def counting(apply_model, args, log=log):
            log.append(len(args["cond_or_uncond"]))
            return apply_model(args["input"], args["timestep"], **args["c"])

        counted.set_model_unet_function_wrapper(counting)
        calls[name + "_out"] = _edit(comfy, counted, caption, inverted, 3, edited_positive=edited, **kwargs)[0]
    # per step: reference (1 branch), gradient pass (1 branch at the first step, then 2), CFG pass (2 branches, 1 at
    # the first step: the unmoved negative copy's prediction is the reference's)
    assert calls["default"] == calls["explicit"] == [1, 1, 1] + [1, 2, 2] * 2
    torch.testing.assert_close(calls["default_out"]["samples"], calls["explicit_out"]["samples"], rtol=0, atol=0)
    # the paper's formulation guides the edited branch only
    assert calls["paper"] == [1, 1, 2] * 3
    assert not torch.allclose(calls["paper_out"]["samples"], calls["default_out"]["samples"])


def test_parity_with_diffusers_pipeline_on_shared_weights(comfy, tiny_sd15_objects, pack_nodes):
    """ComfyUI's tiny SD 1.5 UNet copied into diffusers (ComfyUI's own key map); from the same inverted latent, 2
    steps: our edit and reconstruction vs StableDiffusionPix2PixZeroPipeline.__call__.

    Tolerance: the two hosts compute the same float32 math with different kernels (ComfyUI's CPU attention is
    sub-quadratic, diffusers' explicit; ComfyUI's sigma-to-timestep interpolation lands a hair off t = 1), so each
    result is within float32's own error of the exact one. That error is measured: diffusers' pipeline run in
    float64 vs float32. Both sides lie within it of the float64 result, so within 2x of each other; the bound is
    10x, plus 1e-6. Only 2 steps: a raw random network amplifies such differences step after step (the CI parity
    tests check every step, and a whole run, against the pipeline with diffusers' own UNet)."""
    from test_host_diffusers_parity import _diffusers_twin

    from fixtures.diffusers_tiny import tiny_pix2pix_zero_pipeline

    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a photo of a cat")[0]
    caption = [[4 * caption[0][0], caption[0][1]]]  # peaked maps: a well-conditioned guidance gradient
    edited = [[caption[0][0] + 0.8 * torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(10)), {}]]
    steps, cfg = 2, 5.0
    inverted = _invert(comfy, model, caption, {"samples": 2 * _latent(seed=11)["samples"]}, steps, lambda_ac=0.0,
                       lambda_kl=0.0)
    edit, reconstruction = _edit(comfy, model, caption, inverted, steps, cfg=cfg, lambda_xa=0.1,
                                 edited_positive=edited)

    scale = model.get_model_object("latent_format").scale_factor
    sigma_start = float(inverted["p2pz_inversion"]["levels"][-1])
    x_T = inverted["samples"] * scale / (1 + sigma_start**2) ** 0.5
    direction = (edited[0][0] - caption[0][0]).float()

    def pipeline(dtype):
        pipe = tiny_pix2pix_zero_pipeline(_diffusers_twin(model)).to(dtype=dtype)
        reference_latents = []
        step = pipe.scheduler.step

        def recording_step(*args, **kwargs):
            out = step(*args, **kwargs)
            reference_latents.append(out.prev_sample)
            return out

        pipe.scheduler.step = recording_step
        c = caption[0][0].to(dtype)
        edited_latent = pipe(prompt_embeds=c, negative_prompt_embeds=c, source_embeds=torch.zeros_like(direction,
                             dtype=dtype), target_embeds=direction.to(dtype), num_inference_steps=steps,
                             guidance_scale=cfg, cross_attention_guidance_amount=0.1, latents=x_T.to(dtype),
                             output_type="latent").images
        return edited_latent.double(), reference_latents[steps - 1].double()

    theirs, exact = pipeline(torch.float32), pipeline(torch.float64)
    ours = (edit["samples"].double() * scale, reconstruction["samples"].double() * scale)
    for name, a, b, c in zip(("edit", "reconstruction"), ours, theirs, exact):
        size = float(c.abs().max())
        floor = float((b - c).abs().max()) / size
        err = float((a - b).abs().max()) / size
        assert err <= 10 * floor + 1e-6, f"{name}: relative difference {err:.2e}, float32's own error {floor:.2e}"


def test_stock_ksampler_is_unchanged_and_no_patch_is_left(comfy, tiny_sd15_objects, pack_nodes):
    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    edited = comfy.call_node("CLIPTextEncode", clip=clip, text="a dog")[0]
    latent = _latent(seed=12)

    def ksampler():
        return comfy.call_node("KSampler", model=model, seed=1, steps=3, cfg=5.0, sampler_name="ddim",
                               scheduler="ddim_uniform", positive=caption, negative=caption, latent_image=latent,
                               denoise=1.0)[0]["samples"]

    state = lambda: (repr(model.model_options), dict(model.patches), dict(model.object_patches),
                     dict(model.weight_wrapper_patches), model.patches_uuid)
    before_state = state()
    flags = [p.requires_grad for p in model.model.parameters()]
    before = ksampler()
    inverted = _invert(comfy, model, caption, latent, steps=3)
    _edit(comfy, model, caption, inverted, 3, edited_positive=edited)
    assert state() == before_state
    after = ksampler()
    assert torch.equal(before, after)
    leftovers = [name for name, m in model.model.named_modules()
                 if getattr(m, "weight_function", None) or getattr(m, "bias_function", None)]
    assert leftovers == []  # the guided run's weight wrappers lived on its clone's load only
    assert [p.requires_grad for p in model.model.parameters()] == flags  # never touched
    assert all(p.grad is None for p in model.model.parameters())  # no weight gradient was ever computed


def test_other_packs_model_wrappers_keep_running(comfy, tiny_sd15_objects, pack_nodes):
    """Another pack's model_function_wrapper and APPLY_MODEL wrapper on the MODEL are still called in every model
    call of the guided run (the pack's own wrapper sits under its own key beside them), the edit is the one without
    them, bit for bit (both pass through: the same arithmetic, tests/tolerances.py rule 1; the gradient pass then
    runs the whole UNet instead of stopping after the last cross-attention layer, but what follows that layer is not
    in the loss's graph), and the MODEL keeps its wrappers as they were."""
    from comfy import patcher_extension

    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    edited = comfy.call_node("CLIPTextEncode", clip=clip, text="a dog")[0]
    inverted = _invert(comfy, model, caption, _latent(seed=13), steps=3)
    seen = {"function": 0, "apply": 0}

    def function_wrapper(apply_model, args):
        seen["function"] += 1
        return apply_model(args["input"], args["timestep"], **args["c"])

    def apply_wrapper(executor, *args, **kwargs):
        seen["apply"] += 1
        return executor(*args, **kwargs)

    wrapped = model.clone()
    wrapped.set_model_unet_function_wrapper(function_wrapper)
    wrapped.add_wrapper_with_key(patcher_extension.WrappersMP.APPLY_MODEL, "another_pack", apply_wrapper)
    before = repr(wrapped.wrappers)

    def run(m, samples):
        return _edit(comfy, m, caption, dict(inverted, samples=samples), 3, edited_positive=edited)[0]["samples"]

    plain = run(model, inverted["samples"])
    with_others = run(wrapped, inverted["samples"])
    # at least one model call per pass: the reference, the gradient pass and the CFG pass of each of the 3 steps
    assert seen["function"] == seen["apply"] >= 3 * 3
    assert repr(wrapped.wrappers) == before
    assert torch.equal(with_others, plain)


def _scaled_fp8_unet(seed=0):
    """A scaled-fp8 SD 1.x diffusion model as the fp8 checkpoints people run store it: every attention and
    feed-forward Linear weight in float8_e4m3fn with its per-layer scale, and the "scaled_fp8" marker. Loaded by
    ComfyUI's own diffusion-model loader (UNETLoader's), under inference mode."""
    from comfy import sd as comfy_sd
    from comfy import supported_models

    config = supported_models.SD15(dict(tiny_models.CKPT_UNET_CONFIG))
    config.set_inference_dtype(torch.float32, None)
    net = config.get_model({}).diffusion_model
    tiny_models.init_module_weights(net, seed)
    sd = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    for key, value in net.state_dict().items():
        if key.endswith(".weight") and value.ndim == 2 and ("attn" in key or "ff." in key):
            scale = value.abs().max().float() / 448.0  # float8_e4m3fn's largest value
            sd[key] = (value / scale).to(torch.float8_e4m3fn)
            sd[key[:-len("weight")] + "scale_weight"] = scale.reshape(())
        else:
            sd[key] = value.detach().clone()
    with torch.inference_mode():
        return comfy_sd.load_diffusion_model_state_dict(sd)


def test_fp8_weights_on_an_fp8_gpu(comfy, pack_nodes, runs, monkeypatch):
    """fp8 weights where the GPU multiplies in fp8 (simulated here: ComfyUI is told the device has fp8 compute, and
    its CPU fallbacks run the fp8 products). ComfyUI 0.8's mixed-precision layers (which it also makes of scaled fp8
    files): the gradient pass runs them dequantized, so guidance moves the edit and lowers the map loss, and the
    layers are left as the host set them. Older hosts (fp8 products with no backward): a clear error saying what to
    change."""
    from comfy import model_management

    monkeypatch.setattr(model_management, "supports_fp8_compute", lambda *a, **k: True)
    results, _ = runs
    model = _scaled_fp8_unet()
    layers = [m for m in model.model.diffusion_model.modules() if hasattr(m, "comfy_cast_weights")
              and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.ndim == 2]
    mixed_precision = any(type(m.weight) not in (torch.Tensor, torch.nn.Parameter) for m in layers)
    flags = [m.comfy_cast_weights for m in layers]
    caption = _conditioning(768, None, seed=1)
    edited = _shifted(caption, seed=2)
    inverted = _invert(comfy, model, caption, _latent(seed=3), steps=3, reg_steps=0)
    if not mixed_precision:
        with pytest.raises(RuntimeError, match="fp8 matrix products.*Update to ComfyUI 0.8"):
            _edit(comfy, model, caption, inverted, 3, edited_positive=edited)
        return
    off, on = (_edit(comfy, model, caption, inverted, 3, lambda_xa=lam, edited_positive=edited)[0]["samples"]
               for lam in (0.0, 0.1))
    assert not torch.equal(on, off) and torch.isfinite(on).all()
    unguided, guided = (total(losses) for losses in results)
    assert 0 < guided < unguided, (unguided, guided)
    assert [m.comfy_cast_weights for m in layers] == flags


def test_progress_and_latent_previews_every_step(comfy, tiny_sd15_objects, pack_nodes, monkeypatch):
    """ComfyUI's progress hook sees steps 1..N of N, each with a preview image (Latent2RGB previews on)."""
    import latent_preview
    from comfy import utils as comfy_utils
    from comfy.cli_args import LatentPreviewMethod

    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    edited = comfy.call_node("CLIPTextEncode", clip=clip, text="a dog")[0]
    inverted = _invert(comfy, model, caption, _latent(seed=15), steps=3)
    seen = []
    monkeypatch.setattr(latent_preview.args, "preview_method", LatentPreviewMethod.Latent2RGB)
    monkeypatch.setattr(comfy_utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None: seen.append((value, total, preview is not None)))
    _edit(comfy, model, caption, inverted, 3, edited_positive=edited)
    assert seen == [(1, 3, True), (2, 3, True), (3, 3, True)]


def test_interruption_stops_cleanly_and_the_next_run_works(comfy, tiny_sd15_objects, pack_nodes):
    import comfy.model_management as mm

    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    edited = comfy.call_node("CLIPTextEncode", clip=clip, text="a dog")[0]
    inverted = _invert(comfy, model, caption, _latent(seed=13), steps=4)
    clean = _edit(comfy, model, caption, inverted, 4, edited_positive=edited)[0]["samples"]

    interrupting = model.clone()
    calls = []

    def interrupt_midway(apply_model, args):
        calls.append(1)
        if len(calls) == 5:  # inside the second step
            mm.interrupt_current_processing(True)
        return apply_model(args["input"], args["timestep"], **args["c"])

    interrupting.set_model_unet_function_wrapper(interrupt_midway)
    options = repr(interrupting.model_options)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            _edit(comfy, interrupting, caption, inverted, 4, edited_positive=edited)
    finally:
        mm.interrupt_current_processing(False)
    assert 5 <= len(calls) < 3 * 4 and repr(interrupting.model_options) == options
    again = _edit(comfy, model, caption, inverted, 4, edited_positive=edited)[0]["samples"]
    assert torch.equal(again, clean)


def test_authors_schedule_latent_is_edited_with_its_own_steps(comfy, tiny_sd15_objects, pack_nodes, runs):
    """An 'authors' inversion of 5 DDIM steps records 3 UNet calls; the edit with steps 5 retraces the 5 DDIM levels
    (an old equality check compared the widget with the 3 calls and refused every such latent)."""
    results, _ = runs
    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    edited = comfy.call_node("CLIPTextEncode", clip=clip, text="a dog")[0]
    inverted = _invert(comfy, model, caption, _latent(seed=16), steps=5, schedule="authors")
    assert inverted["p2pz_inversion"]["steps"] == 3
    edit, reconstruction = _edit(comfy, model, caption, inverted, 5, edited_positive=edited)
    assert len(results[-1]) == 5
    assert torch.isfinite(edit["samples"]).all() and torch.isfinite(reconstruction["samples"]).all()


def test_bad_inputs_get_clear_errors(comfy, tiny_sd15_objects, pack_nodes):
    direction_module = comfy.pack_import("core.direction")
    model, clip, _ = tiny_sd15_objects
    caption = comfy.call_node("CLIPTextEncode", clip=clip, text="a cat")[0]
    edited = comfy.call_node("CLIPTextEncode", clip=clip, text="a dog")[0]
    inverted = _invert(comfy, model, caption, _latent(seed=14), steps=4)
    ok = {"edited_positive": edited}
    wide = direction_module.EditDirection(embedding=torch.ones(1, 77, 768), source="cat", target="dog")
    with pytest.raises(ValueError, match="768 wide but this model's cross-attention expects 32"):
        _edit(comfy, model, caption, inverted, 4, direction=wide)
    # The steps widget must match the latent's inversion record: no widget is silently ignored.
    with pytest.raises(ValueError, match="Guided Edit's steps is 10 but the inverted_latent was made with 4 DDIM "
                                         "steps.*Set Guided Edit's steps to 4"):
        _edit(comfy, model, caption, inverted, 10, **ok)
    damaged = dict(inverted, p2pz_inversion=dict(inverted["p2pz_inversion"], levels=None))
    with pytest.raises(ValueError, match="inversion record is damaged"):
        _edit(comfy, model, caption, damaged, 4, **ok)
    zsnr = comfy.call_node("ModelSamplingDiscrete", model=model, sampling="eps", zsnr=True)[0]
    with pytest.raises(ValueError, match="made with a model of another noise schedule"):
        _edit(comfy, zsnr, caption, inverted, 4, **ok)
    resized = dict(inverted, samples=torch.nn.functional.interpolate(inverted["samples"], scale_factor=2))
    with pytest.raises(ValueError, match=r"inverted latent is \[1, 4, 16, 16\] but its inversion produced"):
        _edit(comfy, model, caption, resized, 4, **ok)
    with pytest.raises(ValueError, match="16 channels but this model works on 4-channel latents"):
        _edit(comfy, model, caption, {"samples": torch.zeros(1, 16, 8, 8)}, 4, **ok)
    with pytest.raises(ValueError, match="cfg must be between 1.0 and 30.0, got 0.5"):
        _edit(comfy, model, caption, inverted, 4, cfg=0.5, **ok)
    with pytest.raises(ValueError, match="lambda_xa must be between 0.0 and 1.0, got -0.1"):
        _edit(comfy, model, caption, inverted, 4, lambda_xa=-0.1, **ok)
    with pytest.raises(ValueError, match="lambda_xa must be between 0.0 and 1.0, got 1.5"):
        _edit(comfy, model, caption, inverted, 4, lambda_xa=1.5, **ok)
    with pytest.raises(ValueError, match="exactly one"):
        _edit(comfy, model, caption, inverted, 4)
    with pytest.raises(ValueError, match="exactly one"):
        _edit(comfy, model, caption, inverted, 4, edited_positive=edited,
              direction=direction_module.EditDirection(embedding=torch.ones(1, 77, 32)))
    with pytest.raises(ValueError, match="has 2 entries"):
        _edit(comfy, model, caption + edited, inverted, 4, **ok)
    long = [[torch.cat([edited[0][0]] * 2, dim=1), {}]]
    with pytest.raises(ValueError, match="edited_positive has 154 tokens but the caption has 77"):
        _edit(comfy, model, caption, inverted, 4, edited_positive=long)
    with pytest.raises(ValueError, match="unknown guidance 'other'"):
        _edit(comfy, model, caption, inverted, 4, guidance="other", **ok)
    pair = [[torch.cat([caption[0][0]] * 3), {}]]
    with pytest.raises(ValueError, match="batch of 3 but the latent has 1 images"):
        _edit(comfy, model, pair, inverted, 4, **ok)
    # a CFG hook (stock RescaleCFG) could not take effect in the guided sampler's own CFG: refused when CFG is used,
    # and the run goes on at cfg 1, where there is nothing to combine
    rescaled = comfy.call_node("RescaleCFG", model=model, multiplier=0.7)[0]
    with pytest.raises(ValueError, match=r"carries a CFG patch \(sampler_cfg_function"):
        _edit(comfy, rescaled, caption, inverted, 4, cfg=5.0, **ok)
    assert torch.isfinite(_edit(comfy, rescaled, caption, inverted, 4, cfg=1.0, **ok)[0]["samples"]).all()


def test_graph_through_the_real_executor(comfy, tiny_checkpoint_name, pack_nodes):
    """CheckpointLoaderSimple -> VAEEncode -> CLIPTextEncode (caption, edited caption) -> P2PZ_InvertLatent ->
    P2PZ_GuidedEdit -> VAEDecode -> SaveImage, validated and executed by ComfyUI."""
    steps = 4
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": tiny_checkpoint_name}},
        "2": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0x806040}},
        "3": {"class_type": "VAEEncode", "inputs": {"pixels": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a cat sitting on a sofa"}},
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": "a dog sitting on a sofa"}},
        "6": {"class_type": "P2PZ_InvertLatent", "inputs": {"model": ["1", 0], "conditioning": ["4", 0],
                                                            "latent": ["3", 0], "steps": steps, "schedule": "diffusers",
                                                            "lambda_ac": 20.0, "lambda_kl": 20.0, "reg_steps": 5,
                                                            "ac_rolls": 5, "seed": 7}},
        "7": {"class_type": NODE, "inputs": {"model": ["1", 0], "positive": ["4", 0], "inverted_latent": ["6", 0],
                                             "steps": steps, "cfg": 5.0, "lambda_xa": 0.1, "guidance": "references",
                                             "edited_positive": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 0], "vae": ["1", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "p2pz_edit"}},
        "10": {"class_type": "VAEDecode", "inputs": {"samples": ["7", 1], "vae": ["1", 2]}},
        "11": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "p2pz_rec"}},
    }
    result = comfy.run_prompt(prompt)
    for node_id in ("9", "11"):
        assert len(result["outputs"][node_id]["images"]) == 1
    decoded = comfy.node_output(result, "8")
    assert decoded.shape == (1, 64, 64, 3) and torch.isfinite(decoded).all()
    edit, reconstruction = comfy.node_output(result, "7", 0), comfy.node_output(result, "7", 1)
    assert not torch.equal(edit["samples"], reconstruction["samples"])
