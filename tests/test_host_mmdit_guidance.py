"""Attention guidance through joint attention (issue 13): P2PZ_GuidedEdit on tiny SD 3.x and Flux MODELs in
ComfyUI's real layouts (fixtures/tiny_models.py), checked against stock nodes (SamplerCustom, KSampler) and against
ComfyUI's own attention function (seen through an optimized_attention_override installed before ours)."""
import copy

import pytest
import torch
from flow_checks import check_model_untouched
from flow_checks import smooth_latent as _latent
from map_losses import recording
from tolerances import gamma, rounding_atol

from fixtures import tiny_models

pytestmark = pytest.mark.host

NODE = "P2PZ_GuidedEdit"
FAMILIES = ("sd3", "flux")
STEPS = 4



@pytest.fixture(scope="module", params=FAMILIES + ("sd35m",))
def flow(request, comfy, pack_nodes):
    """(family, MODEL, caption, edited caption, negative). "sd35m": SD3 with SD 3.5 Medium's extra image
    self-attention in its first joint block (MMDiT-X), a second attention call per block that is not joint."""
    family = "sd3" if request.param == "sd35m" else request.param
    extra = {"x_self_attn_layers": [0]} if request.param == "sd35m" else {}
    model, width, pooled = tiny_models.tiny_mmdit_model(family, seed=7, **extra)
    if extra:
        assert model.model.diffusion_model.joint_blocks[0].x_block.x_block_self_attn
    cond = tiny_models.tiny_flow_conditioning(width, pooled, seed=1, scale=4.0)  # peaked maps (see tiny_conditioning)
    edited = tiny_models.tiny_flow_conditioning(width, pooled, seed=2, scale=4.0)
    negative = tiny_models.tiny_flow_conditioning(width, pooled, seed=3, scale=4.0)
    return family, model, cond, edited, negative


def _invert(comfy, model, cond, latent, steps=STEPS):
    # first-order (fixed_point_iters 0), the inversion these guidance tests were written on: they isolate the guidance
    return comfy.call_node("P2PZ_InvertLatent", model=model, conditioning=cond, latent=latent, steps=steps,
                           schedule="diffusers", lambda_ac=0.0, lambda_kl=0.0, reg_steps=0, ac_rolls=0, seed=0,
                           fixed_point_iters=0)


def _options(comfy, fraction=1.0, stride=1, checkpoint=True):
    return comfy.call_node("P2PZ_GuidedEditOptions", guided_fraction=fraction, block_stride=stride,
                           checkpoint_blocks=checkpoint)[0]


def _edit(comfy, model, cond, inverted, edited, lambda_xa, cfg=1.0, negative=None, results=None, options=None):
    """The node's output; results (a dict): its "losses" receive the run's per-step map losses, observed from
    outside the node (map_losses.recording around the flow loop: with lambda_xa 0 measured as a gradient pass would
    see them)."""
    flow_node = comfy.pack_import("nodes.guided_flow")
    runs, inner = [], flow_node.guided_edit
    if results is not None:
        flow_node.guided_edit = recording(inner, runs)
    try:
        out = comfy.call_node(NODE, model=model, positive=cond, inverted_latent=inverted, steps=STEPS, cfg=cfg,
                              lambda_xa=lambda_xa, guidance="paper", negative=negative, edited_positive=edited,
                              options=options)
    finally:
        flow_node.guided_edit = inner
    if results is not None:
        (results["losses"],) = runs
    return out


def _stock(comfy, model, cond, negative, latent, sigmas, cfg):
    sampler = comfy.call_node("KSamplerSelect", sampler_name="euler")[0]
    return comfy.call_node("SamplerCustom", model=model, add_noise=False, noise_seed=0, cfg=cfg, positive=cond,
                           negative=negative, sampler=sampler, sigmas=sigmas, latent_image=latent)[0]["samples"]


def _with_spy(model):
    """A clone of `model` carrying an optimized_attention_override as another pack could install it: it passes
    through to ComfyUI's function and keeps what it saw (the arguments of every call). A closure, so that
    ModelPatcher.clone()'s deepcopy of model_options keeps sharing it."""
    calls = []

    def spy(func, *args, **kwargs):
        calls.append((args, dict(kwargs)))
        return func(*args, **kwargs)

    spied = model.clone()
    spied.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = spy
    return spied, calls


def _stock_probs(args, kwargs):
    """softmax(q k^T / sqrt(d)) over all keys as [B, H, L, L], from the arguments ComfyUI's attention received."""
    q, k = args[0], args[1]
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    if not kwargs.get("skip_reshape", False):
        b, n, inner = q.shape
        q, k = (t.reshape(b, n, heads, inner // heads).transpose(1, 2) for t in (q, k))
    return torch.softmax((q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5, dim=-1)


def _float32_probs_rtol(args, kwargs):
    """Relative error bound of probabilities formed in float32 from these q and k against float64 (tolerances.py,
    rule 3): each score q.k / sqrt(d) is off by at most delta = gamma(d + 1) * sum_i |q_i k_i| / sqrt(d), a softmax
    whose scores move by at most delta changes each probability by a factor within exp(+-2 delta), and its
    normalizing sum over n keys adds gamma(n + 1)."""
    q, k = args[0], args[1]
    heads = args[3] if len(args) > 3 else kwargs["heads"]
    if not kwargs.get("skip_reshape", False):
        b, n, inner = q.shape
        q, k = (t.reshape(b, n, heads, inner // heads).transpose(1, 2) for t in (q, k))
    d, n = q.shape[-1], k.shape[-2]
    delta = gamma(d + 1) * float((q.double().abs() @ k.double().abs().transpose(-1, -2)).max()) / d ** 0.5
    return float(torch.tensor(2 * delta, dtype=torch.float64).expm1()) + gamma(n + 1)


def test_captured_maps_are_the_image_rows_over_text_columns(comfy, flow):
    """Maps recorded on the clone are the model's own joint-attention probabilities (recomputed from the q, k that
    ComfyUI's attention received, seen through an existing override, which is still called) restricted to image
    queries and text keys: rows sum to < 1 over text columns and to 1 with the image columns."""
    family, model, cond, _, _ = flow
    guided_flow = comfy.pack_import("nodes.guided_flow")
    spied, calls = _with_spy(model)
    patched, run = guided_flow.patched_flow_model(spied, _options(comfy, fraction=0.5))
    run.branch_of_flag = {0: "positive"}
    run.maps.record()
    sampler = comfy.call_node("KSamplerSelect", sampler_name="euler")[0]
    sigmas = torch.tensor([0.8, 0.0])
    out = comfy.call_node("SamplerCustom", model=patched, add_noise=False, noise_seed=0, cfg=1.0, positive=cond,
                          negative=cond, sampler=sampler, sigmas=sigmas, latent_image=_latent())[0]["samples"]
    run.maps.off()

    def stock(samples):
        return comfy.call_node("SamplerCustom", model=model, add_noise=False, noise_seed=0, cfg=1.0, positive=cond,
                               negative=cond, sampler=sampler, sigmas=sigmas, latent_image={"samples": samples})[0][
            "samples"]

    plain = stock(_latent()["samples"])
    # recording does not change the output: the same model with explicit joint attention instead of ComfyUI's
    # kernel, float32 rounding only (tolerances.py, rule 4)
    torch.testing.assert_close(out, plain, rtol=0, atol=rounding_atol(stock, _latent()["samples"], plain, 1))

    dm = model.model.diffusion_model
    n_blocks = len(dm.joint_blocks) if family == "sd3" else len(dm.double_blocks)
    heads = 2
    n_img, n_txt = (8 // 2) ** 2, 77
    assert sorted(k for k, _ in run.maps.reference) == [("double_block", i) for i in range(n_blocks)]
    joint = [(a, kw) for a, kw in calls if (a[1].shape[-2] if kw.get("skip_reshape") else a[1].shape[1])
             == n_txt + n_img]
    assert len(joint) >= n_blocks  # the joint calls reached the existing override
    for i in range(n_blocks):
        maps = run.maps.reference[(("double_block", i), "positive")]
        assert maps.shape == (heads, n_img, n_txt)
        rows = maps.double().sum(-1)
        assert bool((rows < 1).all()) and bool((rows > 0).all())
        full = _stock_probs(*joint[i])[0]  # text first in both families' joint token order
        torch.testing.assert_close(full.sum(-1), torch.ones_like(full.sum(-1)))
        rtol = _float32_probs_rtol(*joint[i])  # our maps: float32 from the same q, k (rule 3)
        torch.testing.assert_close(maps.double(), full[:, n_txt:, :n_txt], atol=0, rtol=rtol)
        # a row's text mass plus its image mass is 1 up to the same relative error of each probability
        torch.testing.assert_close(rows + full[:, n_txt:, n_txt:].sum(-1), torch.ones_like(rows), atol=rtol, rtol=0)


def test_guidance_lowers_the_joint_attention_map_loss(comfy, flow):
    family, model, cond, edited, negative = flow
    inverted = _invert(comfy, model, cond, _latent(seed=2))[0]
    tuned = _options(comfy)
    off, on = {}, {}
    e0 = _edit(comfy, model, cond, inverted, edited, 0.0, results=off, options=tuned)[0]["samples"]
    e1 = _edit(comfy, model, cond, inverted, edited, 1.0, results=on, options=tuned)[0]["samples"]
    loss_off = [step["edited"] for step in off["losses"]]
    loss_on = [step["edited"] for step in on["losses"]]
    assert len(loss_off) == len(loss_on) == STEPS
    assert loss_on[0] == loss_off[0]  # the same start, the same arithmetic: the guidance acts from step 1
    # every later step's loss is lower (the same deterministic run but for the gradient steps: no rounding noise)
    assert all(a < b for a, b in zip(loss_on[1:], loss_off[1:])), (loss_on, loss_off)
    assert not torch.allclose(e0, e1)


def test_guided_fraction_limits_the_guided_steps(comfy, flow):
    family, model, cond, edited, _ = flow
    inverted = _invert(comfy, model, cond, _latent(seed=2))[0]
    results = {}
    _edit(comfy, model, cond, inverted, edited, 0.5, results=results, options=_options(comfy, fraction=0.5))
    assert [bool(step) for step in results["losses"]] == [True, True, False, False]


def test_lambda_zero_equals_stock_samplercustom(comfy, flow):
    """lambda 0 and an edit equal to the caption (a zero direction): both outputs are stock SamplerCustom (euler,
    the inversion's sigmas, no added noise) with SD 3.x's CFG against a real negative, Flux at cfg 1 (no negative
    pass). Tolerance: float32 rounding of differently batched model calls, bounded by the stock run's own
    amplification of a nudge of its input (tolerances.py, rule 4)."""
    family, model, cond, _, negative = flow
    inverted, sigmas = _invert(comfy, model, cond, _latent(seed=5))
    cfg = 3.0 if family == "sd3" else 1.0
    edit, ref = _edit(comfy, model, cond, inverted, [[cond[0][0].clone(), dict(cond[0][1])]], 0.0, cfg=cfg,
                      negative=negative)
    stock = _stock(comfy, model, cond, negative, inverted, sigmas, cfg)
    tol = rounding_atol(lambda x: _stock(comfy, model, cond, negative, dict(inverted, samples=x), sigmas, cfg),
                        inverted["samples"], stock, evaluations=2 * STEPS)  # reference and edit pass per step
    torch.testing.assert_close(ref["samples"], stock, rtol=0, atol=tol)
    torch.testing.assert_close(edit["samples"], stock, rtol=0, atol=tol)
    assert "p2pz_inversion" not in edit


def test_batch_equals_singles(comfy, flow):
    family, model, cond, edited, _ = flow
    latent = _latent(batch=2, seed=6)
    inverted = _invert(comfy, model, cond, latent)[0]
    both = _edit(comfy, model, cond, inverted, edited, 0.5, options=_options(comfy))[0]["samples"]
    for i in range(2):
        def edit_one(samples):
            single = dict(inverted, samples=samples, p2pz_inversion=dict(inverted["p2pz_inversion"], shape=[1, 16, 8, 8]))
            return _edit(comfy, model, cond, single, edited, 0.5, options=_options(comfy))[0]["samples"]

        one = edit_one(inverted["samples"][i:i + 1])
        # another batch composition: float32 rounding, bounded by the run's amplification of a nudge (rule 4)
        tol = rounding_atol(edit_one, inverted["samples"][i:i + 1], one, evaluations=3 * STEPS)  # + gradient pass
        torch.testing.assert_close(both[i:i + 1], one, rtol=0, atol=tol)


def test_model_unchanged_and_stock_sampler_same_before_and_after(comfy, flow):
    family, model, cond, edited, _ = flow
    latent = _latent(seed=4)

    def invert_and_edit():
        inverted = _invert(comfy, model, cond, latent)[0]
        _edit(comfy, model, cond, inverted, edited, 0.5, options=_options(comfy))
        _edit(comfy, model, cond, inverted, edited, 0.5)

    check_model_untouched(comfy, model, cond, latent, invert_and_edit)
    assert not any(v.requires_grad for v in model.model.state_dict().values())


def test_existing_override_is_still_called(comfy, flow):
    """Another pack's override keeps working: called on every attention while no maps are wanted (unguided steps),
    producing the output in the map passes too; results equal the run without it."""
    family, model, cond, edited, _ = flow
    inverted = _invert(comfy, model, cond, _latent(seed=8))[0]
    spied, calls = _with_spy(model)
    with_spy = _edit(comfy, spied, cond, inverted, edited, 0.5, options=_options(comfy, fraction=0.5))[0]["samples"]
    without = _edit(comfy, model, cond, inverted, edited, 0.5, options=_options(comfy, fraction=0.5))[0]["samples"]
    assert calls
    # the override passes through to the same attention function: the same arithmetic
    assert torch.equal(with_spy, without)


def test_flux_gradient_block_equals_comfyui_block(comfy, pack_nodes, monkeypatch):
    """The gradient pass's out-of-place Flux double block gives ComfyUI's block output (ComfyUI's adds in place),
    with RoPE as the torch formula (the block applies core.joint_attention.apply_rope, differentiable; 0.8.0's own
    comfy_kitchen op has no backward). That formula is checked against the host's RoPE, then the block against
    ComfyUI's block with the same formula (set for this test only)."""
    import comfy.ldm.flux.math as flux_math
    guided_flow = comfy.pack_import("nodes.guided_flow")
    model, width, pooled = tiny_models.tiny_mmdit_model("flux", seed=3)
    block = model.model.diffusion_model.double_blocks[0]
    g = torch.Generator().manual_seed(0)
    img, txt, vec = torch.randn(1, 16, 32, generator=g), torch.randn(1, 7, 32, generator=g), torch.randn(1, 32, generator=g)
    ids = torch.zeros(1, 23, 3)
    ids[0, 7:, 1] = torch.arange(16) // 4
    ids[0, 7:, 2] = torch.arange(16) % 4
    pe = model.model.diffusion_model.pe_embedder(ids)
    core_rope = comfy.pack_import("core.joint_attention").apply_rope
    q, k = torch.randn(2, 1, 2, 23, 16, generator=g).unbind(0)
    with torch.no_grad():
        ours_q, ours_k = core_rope(q, k, pe)
        host_q, host_k = flux_math.apply_rope(q, k, pe) if hasattr(flux_math, "apply_rope") else (ours_q, ours_k)
    # each element is pe0 * a + pe1 * b (|pe| <= 1): two products and a sum, rounded on each side in its own order
    # (rule 3): 2 gamma(3) (|a| + |b|)
    bound = 2 * gamma(3) * 2 * float(torch.maximum(q.abs().max(), k.abs().max()))
    torch.testing.assert_close(ours_q, host_q, rtol=0, atol=bound)
    torch.testing.assert_close(ours_k, host_k, rtol=0, atol=bound)
    monkeypatch.setattr(flux_math, "apply_rope", core_rope, raising=False)
    with torch.no_grad():
        stock_img, stock_txt = block(img=img.clone(), txt=txt.clone(), vec=vec, pe=pe, transformer_options={})
        ours_img, ours_txt = guided_flow.flux_double_block_out_of_place(block, img, txt, vec, pe)
    # the same operations, out of place instead of in place: the same arithmetic, apart from the order of the
    # residual additions' operands (commutative, exact in float): equal
    assert torch.equal(ours_img, stock_img) and torch.equal(ours_txt, stock_txt)
    # fp16, with a text stream that overflows (an inf entry): ComfyUI's block clamps the text stream to fp16's range
    # and so must this one (NaN elsewhere compared as equal)
    txt_bad = txt.clone()
    txt_bad[0, 0, 0] = float("inf")
    with torch.inference_mode():  # the weights are inference tensors (as ComfyUI's loaders make them)
        block.half()
        stock = block(img=img.half(), txt=txt_bad.half(), vec=vec.half(), pe=pe, transformer_options={})
        ours = guided_flow.flux_double_block_out_of_place(block, img.half(), txt_bad.half(), vec.half(), pe)
    for a, b in zip(ours, stock):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def test_no_comfyui_module_is_patched_during_an_edit(comfy, flow):
    """The guided edit changes nothing of ComfyUI process-wide (other prompts, other packs and other threads see the
    host as it is): every attribute write to ComfyUI's attention and Flux/MMDiT modules during a whole edit,
    gradient passes included, is recorded, and there must be none."""
    import importlib
    import types

    family, model, cond, edited, _ = flow
    names = ["comfy.ldm.modules.attention", "comfy.ldm.flux.math", "comfy.ldm.flux.layers", "comfy.ldm.flux.model",
             "comfy.ldm.modules.diffusionmodules.mmdit"]
    modules = [importlib.import_module(n) for n in names]
    writes = []

    class Recording(types.ModuleType):
        def __setattr__(self, name, value):
            writes.append(f"{self.__name__}.{name}")
            super().__setattr__(name, value)

    inverted = _invert(comfy, model, cond, _latent(seed=9))[0]
    originals = [m.__class__ for m in modules]
    try:
        for m in modules:
            m.__class__ = Recording
        _edit(comfy, model, cond, inverted, edited, 1.0)
        during = list(writes)
    finally:
        for m, cls in zip(modules, originals):
            m.__class__ = cls
    assert during == []


def test_block_checkpointing_gives_the_same_edit(comfy, flow):
    """Recomputing blocks in the backward (the default) gives the gradient of the plain backward, whose in-place
    checks autograd enforces."""
    family, model, cond, edited, _ = flow
    inverted = _invert(comfy, model, cond, _latent(seed=9))[0]
    a = _edit(comfy, model, cond, inverted, edited, 1.0, options=_options(comfy, checkpoint=True))[0]["samples"]
    b = _edit(comfy, model, cond, inverted, edited, 1.0, options=_options(comfy, checkpoint=False))[0]["samples"]
    # recomputation runs the same forward again: the same arithmetic, the same gradient
    assert torch.equal(a, b)


def test_clear_errors(comfy, flow):
    family, model, cond, edited, _ = flow
    plain = _latent()
    with pytest.raises(ValueError, match="inverted_latent output of Invert Latent"):
        _edit(comfy, model, cond, plain, edited, 0.1)
    inverted = _invert(comfy, model, cond, _latent())[0]
    with pytest.raises(ValueError, match="exactly one"):
        comfy.call_node(NODE, model=model, positive=cond, inverted_latent=inverted, steps=STEPS, cfg=1.0,
                        lambda_xa=0.1, guidance="paper")
    # the UNet path's conditioning checks hold here too: what the maps cannot honour is refused, not dropped
    area = comfy.call_node("ConditioningSetArea", conditioning=cond, width=64, height=64, x=0, y=0, strength=1.0)[0]
    ranged = comfy.call_node("ConditioningSetTimestepRange", conditioning=cond, start=0.0, end=0.5)[0]
    combined = comfy.call_node("ConditioningCombine", conditioning_1=cond, conditioning_2=cond)[0]
    for bad, message in ((area, "carries area"), (ranged, "carries a timestep range"), (combined, "has 2 entries")):
        with pytest.raises(ValueError, match=message):
            _edit(comfy, model, bad, inverted, edited, 0.1)
    for lam in (-0.1, 1.5):  # the input's range, checked by the shell for both families
        with pytest.raises(ValueError, match=f"lambda_xa must be between 0.0 and 1.0, got {lam}"):
            _edit(comfy, model, cond, inverted, edited, lam)
    if family == "sd3":  # SkipLayerGuidanceSD3 (common with SD 3.5 Medium) is a post-CFG hook: refused at cfg > 1
        slg = comfy.call_node("SkipLayerGuidanceSD3", model=model, layers="0", scale=3.0, start_percent=0.01,
                              end_percent=0.15)[0]
        with pytest.raises(ValueError, match=r"carries a CFG patch \(sampler_post_cfg_function"):
            _edit(comfy, slg, cond, inverted, edited, 0.1, cfg=4.5)


def test_kontext_reference_tokens_are_not_map_rows(comfy, pack_nodes):
    """Flux Kontext appends a reference image's tokens to the image stream (ReferenceLatent's reference_latents):
    the maps' rows are the edited image's tokens only, and the edit runs and is guided."""
    guided_flow = comfy.pack_import("nodes.guided_flow")
    model, width, pooled = tiny_models.tiny_mmdit_model("flux", seed=3)
    cond = tiny_models.tiny_flow_conditioning(width, pooled, seed=1, scale=4.0)
    edited = tiny_models.tiny_flow_conditioning(width, pooled, seed=2, scale=4.0)
    reference = _latent(seed=5)
    with_ref = [[c, dict(extra, reference_latents=[reference["samples"]])] for c, extra in cond]
    edited_ref = [[c, dict(extra, reference_latents=[reference["samples"]])] for c, extra in edited]
    inverted = _invert(comfy, model, with_ref, _latent(seed=2))[0]
    rows, inner = [], guided_flow.explicit_joint_attention

    def spy(q, k, v, heads, text, image, **kw):
        out, maps = inner(q, k, v, heads, text=text, image=image, **kw)
        rows.append((k.shape[-2] if kw.get("skip_reshape") else k.shape[1], maps.shape[-2]))
        return out, maps

    guided_flow.explicit_joint_attention = spy
    try:
        off, on = {}, {}
        _edit(comfy, model, with_ref, inverted, edited_ref, 0.0, results=off)
        _edit(comfy, model, with_ref, inverted, edited_ref, 1.0, results=on)
    finally:
        guided_flow.explicit_joint_attention = inner
    # 8 x 8 latent, 2 x 2 patches: 16 image tokens, and 16 more of the reference image; 77 text tokens
    assert rows and all(tokens == 77 + 32 and n == 16 for tokens, n in rows), rows[:3]
    # the step after the first guided one: the guidance lowered the map loss
    assert on["losses"][1]["edited"] < off["losses"][1]["edited"]


def test_flux_schnell_is_warned_about(comfy, pack_nodes, caplog):
    """The tiny Flux has no guidance embedding, as Flux.1-schnell (distilled for 1-4 steps): the edit runs and says
    in the log that many-step inversion and guidance are untested on such a model."""
    model, width, pooled = tiny_models.tiny_mmdit_model("flux", seed=3)
    assert not model.model.diffusion_model.params.guidance_embed
    cond = tiny_models.tiny_flow_conditioning(width, pooled, seed=1)
    edited = tiny_models.tiny_flow_conditioning(width, pooled, seed=2)
    inverted = _invert(comfy, model, cond, _latent(seed=2))[0]
    with caplog.at_level("WARNING"):
        _edit(comfy, model, cond, inverted, edited, 0.1)
    assert any("Flux.1-schnell" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("variant", ["Chroma", "Flux2", "HunyuanVideo"])
def test_other_flow_models_are_refused_by_name_before_any_model_call(comfy, pack_nodes, variant):
    """A model whose class is not SD3 or Flux (Chroma and Flux 2 subclass Flux with other blocks; HunyuanVideo has
    double blocks too) is refused up front, naming its class. The tiny Flux network stands in: only the class of the
    model object is changed, which is all the check may read, and any model call would be counted."""
    import comfy.model_base as model_base

    cls = getattr(model_base, variant, None)
    if cls is None:
        pytest.skip(f"this ComfyUI has no {variant}")
    model, width, pooled = tiny_models.tiny_mmdit_model("flux", seed=3)
    cond = tiny_models.tiny_flow_conditioning(width, pooled, seed=1)
    edited = tiny_models.tiny_flow_conditioning(width, pooled, seed=2)
    inverted = _invert(comfy, model, cond, _latent(seed=2))[0]
    calls = []
    other = model.clone()
    other.model = copy.copy(model.model)
    other.model.__class__ = type(variant, (cls,), {"apply_model": lambda self, *a, **k: calls.append(1)})
    with pytest.raises(ValueError, match=f"this model is {variant}: the guided edit on flow models supports"):
        _edit(comfy, other, cond, inverted, edited, 0.1)
    assert calls == []


@pytest.mark.parametrize("family", FAMILIES)
def test_block_stride_guides_every_other_block(comfy, pack_nodes, family):
    """block_stride 2: SD3's two joint blocks -> block 0 guided, the gradient pass stops after it; Flux's three
    double blocks -> blocks 0 and 2, the unguided block 1 between them is differentiated too (out of place, as
    ComfyUI's in-place block cannot be). The guidance still lowers the loss."""
    extra = {"double_blocks": 3} if family == "flux" else {}
    model, width, pooled = tiny_models.tiny_mmdit_model(family, seed=11, **extra)
    cond = tiny_models.tiny_flow_conditioning(width, pooled, seed=1, scale=4.0)
    edited = tiny_models.tiny_flow_conditioning(width, pooled, seed=2, scale=4.0)
    inverted = _invert(comfy, model, cond, _latent(seed=2))[0]
    guided_flow = comfy.pack_import("nodes.guided_flow")
    _, run = guided_flow.patched_flow_model(model, _options(comfy, stride=2))
    assert run.guided_blocks == ({("double_block", 0), ("double_block", 2)} if family == "flux"
                                 else {("double_block", 0)})
    # the loss sums over the guided blocks: the step is scaled by blocks / guided blocks (3 / 2 and 2 / 1)
    assert run.loss_scale == (1.5 if family == "flux" else 2.0)
    seen = []
    inner = guided_flow.guided_edit
    guided_flow.guided_edit = lambda *a, **k: seen.append(k["lambda_xa"]) or inner(*a, **k)
    try:
        _edit(comfy, model, cond, inverted, edited, 0.1, options=_options(comfy, stride=2))
    finally:
        guided_flow.guided_edit = inner
    assert seen == [pytest.approx(0.1 * run.loss_scale)]
    tuned = {s: _options(comfy, stride=s) for s in (1, 2)}
    off, on = {}, {}
    _edit(comfy, model, cond, inverted, edited, 0.0, results=off, options=tuned[2])
    _edit(comfy, model, cond, inverted, edited, 1.0, results=on, options=tuned[2])
    assert all(a < b for a, b in zip([s["edited"] for s in on["losses"]][1:], [s["edited"] for s in off["losses"]][1:]))
    every = {}
    _edit(comfy, model, cond, inverted, edited, 0.0, results=every, options=tuned[1])
    assert every["losses"][0]["edited"] > off["losses"][0]["edited"]  # more blocks' maps than with stride 2
