"""P2PZ_GuidedEdit's gradient pass under every attention backend, and its cost on the MODEL (in-process ComfyUI,
CPU, a tiny SD 1.5 UNet whose weights are inference tensors, as ComfyUI's loaders make them).

The guided step backpropagates through every self-attention layer. Backends without an autograd backward (sage,
flash, xformers) or an `optimized_attention_override` would lose the attention terms of that gradient; the node runs
the gradient pass through ComfyUI's PyTorch attention on its clone. Here every backend ComfyUI can select on a CPU,
and two simulated no-backward backends (an optimized_attention, and an override, whose output is computed under
no_grad), must give the gradient and the edit of the SDPA run.
"""

import pytest
import torch

from fixtures import tiny_models
from tolerances import NUDGE, PER_EVALUATION, unit_roundoff

pytestmark = pytest.mark.host

STEPS = 3



def _no_backward(q, k, v, heads, **kwargs):
    """A backend like sage or flash as autograd sees them: the right values, no gradient through them."""
    import comfy.ldm.modules.attention as attention

    kwargs.pop("transformer_options", None)
    with torch.no_grad():
        return attention.attention_pytorch(q, k, v, heads, **kwargs)


def _no_backward_override(func, *args, **kwargs):
    """An optimized_attention_override (wrap_attn calls it with the backend function) that drops the gradient."""
    with torch.no_grad():
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def setup(comfy, pack_nodes):
    model, width, pooled = tiny_models.tiny_unet_model(comfy, "sd15")
    assert next(model.model.diffusion_model.parameters()).is_inference()  # the weights the gradient pass must alias
    caption = tiny_models.tiny_conditioning(width, pooled, seed=21)
    g = torch.Generator().manual_seed(22)
    edited = [[caption[0][0] + 0.8 * torch.randn(caption[0][0].shape, generator=g), {}]]
    latent = {"samples": torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(23))}
    inverted = comfy.call_node("P2PZ_InvertLatent", model=model, conditioning=caption, latent=latent, steps=STEPS,
                               schedule="diffusers", lambda_ac=0.0, lambda_kl=0.0, reg_steps=0, ac_rolls=5, seed=0)[0]
    return model, caption, edited, inverted


def _guided_run(comfy, monkeypatch, setup, backend=None, model=None):
    """One guided edit (lambda_xa 0.1, cfg 5); returns (edited latent, [per step: the gradient step of each guided
    branch, i.e. -step_size * gradient of the map loss w.r.t. that branch's latent], [per step: losses])."""
    import comfy.ldm.modules.attention as attention

    base, caption, edited, inverted = setup
    guided = comfy.pack_import("nodes.guided_unet")
    steps, losses = [], []
    inner = guided.guided_edit

    def on_gradient_step(x, stepped, values):  # core.guidance's public observer of each gradient pass
        steps.append({b: (s - x).double() for b, s in stepped.items()})
        losses.append(values)

    with monkeypatch.context() as m:
        m.setattr(guided, "guided_edit", lambda *a, **k: inner(*a, on_gradient_step=on_gradient_step, **k))
        if backend is not None:
            m.setattr(attention, "optimized_attention", getattr(attention, backend) if isinstance(backend, str) else backend)
        out = comfy.call_node("P2PZ_GuidedEdit", model=model or base, positive=caption, inverted_latent=inverted,
                              steps=STEPS, cfg=5.0, lambda_xa=0.1, guidance="references", edited_positive=edited)[0]
    assert len(steps) == STEPS and all(torch.isfinite(s).all() for d in steps for s in d.values())
    return out["samples"].double(), steps, losses


@pytest.fixture(scope="module")
def sdpa_run(comfy, setup):
    mp = pytest.MonkeyPatch()
    try:
        return _guided_run(comfy, mp, setup, "attention_pytorch")
    finally:
        mp.undo()


def _difference(run, reference):
    """(edit's max difference, gradient steps' max difference), each relative to the reference's largest value."""
    edit, steps, _ = run
    ref_edit, ref_steps, _ = reference
    edit_err = float((edit - ref_edit).abs().max() / ref_edit.abs().max())
    step_err = max(float((s[b] - r[b]).abs().max() / r[b].abs().max())
                   for s, r in zip(steps, ref_steps) for b in r)
    assert all(s.keys() == r.keys() for s, r in zip(steps, ref_steps))
    return edit_err, step_err


# float32 rounding: the backends compute the same attention with other kernels (basic: explicit softmax) in the
# no-grad passes (and in attn2 outside the map passes). Bound (tests/tolerances.py, rule 4): PER_EVALUATION x 2 x
# EVALUATIONS times how far the SDPA run's edit and gradient steps move when its inverted latent moves by NUDGE (this
# run, this CPU), plus 8 float32 ulps. Dropping the self-attention terms of the gradient changes it by far more
# (0.2 relative: see test_a_no_backward_patch_of_another_pack_is_respected_and_loses_terms).


EVALUATIONS = 3 * STEPS  # per step: the reference pass, the gradient pass, the CFG pass


@pytest.fixture(scope="module")
def tolerance(comfy, setup, sdpa_run):
    """(edit, gradient step) tolerances relative to the SDPA run's largest values (rule 4)."""
    model, caption, edited, inverted = setup
    n = torch.randn(inverted["samples"].shape, generator=torch.Generator().manual_seed(0))
    nudged = dict(inverted, samples=inverted["samples"] + NUDGE * float(inverted["samples"].abs().max()) * n)
    mp = pytest.MonkeyPatch()
    try:
        moved = _guided_run(comfy, mp, (model, caption, edited, nudged), "attention_pytorch")
    finally:
        mp.undo()
    edit_moved, step_moved = _difference(moved, sdpa_run)
    floor = 8 * unit_roundoff()
    factor = PER_EVALUATION * 2 * EVALUATIONS
    tol = factor * edit_moved + floor, factor * step_moved + floor
    print(f"tolerance (rule 4): edit {tol[0]:.2e}, gradient step {tol[1]:.2e} relative")
    return tol


def _with_override(setup):
    clone = setup[0].clone()
    clone.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = _no_backward_override
    return clone


@pytest.mark.parametrize("backend", ["attention_sub_quad", "attention_split", "attention_basic", "attention_pytorch",
                                     "no_backward", "no_backward_override"])
def test_gradient_pass_equals_sdpa_under_every_backend(comfy, monkeypatch, setup, sdpa_run, tolerance, backend):
    import comfy.ldm.modules.attention as attention

    if backend == "no_backward":
        run = _guided_run(comfy, monkeypatch, setup, _no_backward)
    elif backend == "no_backward_override":  # with SDPA selected, the override is all that stands in the way
        run = _guided_run(comfy, monkeypatch, setup, "attention_pytorch", model=_with_override(setup))
    else:
        assert callable(getattr(attention, backend))
        run = _guided_run(comfy, monkeypatch, setup, backend)
    edit_err, step_err = _difference(run, sdpa_run)
    print(f"{backend}: edit {edit_err:.2e}, gradient step {step_err:.2e} relative to SDPA")
    assert edit_err <= tolerance[0] and step_err <= tolerance[1], (edit_err, step_err, tolerance)


def test_override_is_honoured_in_the_no_grad_passes(comfy, monkeypatch, setup):
    """transformer_options reach the attention calls: an override sees the no-grad passes (self-attention, and
    cross-attention when no maps are taken) but never the gradient pass."""
    calls = {"grad": 0, "no_grad": 0}

    def counting(func, *args, **kwargs):
        calls["grad" if torch.is_grad_enabled() else "no_grad"] += 1
        return func(*args, **kwargs)

    clone = setup[0].clone()
    clone.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = counting
    _guided_run(comfy, monkeypatch, setup, "attention_pytorch", model=clone)
    assert calls["no_grad"] > 0 and calls["grad"] == 0, calls


def test_a_no_backward_patch_of_another_pack_is_respected_and_loses_terms(comfy, monkeypatch, setup, sdpa_run,
                                                                          tolerance):
    """Control: another pack's attn1 replace is never overridden, so a no-backward one DOES change the gradient.
    This is what the node prevents for backends and overrides, and it shows the tolerance above can fail."""
    clone = setup[0].clone()
    guided = comfy.pack_import("nodes.guided_unet")

    def other_pack(q, k, v, extra_options):
        return _no_backward(q, k, v, extra_options["n_heads"])

    for key in guided.attn2_layers(clone.model.diffusion_model):
        clone.set_model_attn1_replace(other_pack, *key)
    edit_err, step_err = _difference(_guided_run(comfy, monkeypatch, setup, "attention_pytorch", model=clone),
                                     sdpa_run)
    print(f"another pack's no-backward attn1: edit {edit_err:.2e}, gradient step {step_err:.2e}")
    assert step_err > 10 * tolerance[1], (step_err, tolerance)


def test_no_repatch_and_no_weight_copies(comfy, monkeypatch, setup):
    """A patched MODEL (a LoRA-like weight patch) loaded once is not re-patched by guided runs nor by the stock
    sampler after them, and the guided run adds no weight function (no per-forward weight copy)."""
    from comfy import model_patcher

    base, caption, edited, inverted = setup
    lora = base.clone()
    key = next(k for k in lora.model.state_dict() if k.endswith("attn1.to_q.weight"))
    with torch.inference_mode():
        lora.add_patches({key: (0.01 * torch.ones_like(lora.model.state_dict()[key]),)}, 1.0)

    def ksampler():
        return comfy.call_node("KSampler", model=lora, seed=1, steps=2, cfg=5.0, sampler_name="ddim",
                               scheduler="ddim_uniform", positive=caption, negative=caption,
                               latent_image={"samples": inverted["samples"]}, denoise=1.0)[0]["samples"]

    patched, functions = [], []
    original = model_patcher.ModelPatcher.patch_weight_to_device

    def counting(self, key, *args, **kwargs):
        patched.append(key)
        return original(self, key, *args, **kwargs)

    before = ksampler()  # loads and patches the model
    monkeypatch.setattr(model_patcher.ModelPatcher, "patch_weight_to_device", counting)
    guided = comfy.pack_import("nodes.guided_unet")
    inner = guided.guided_edit

    def looking(*args):  # the model's modules as the guided run sees them, mid-run (after each gradient pass)
        functions.extend(n for n, m in lora.model.named_modules()
                         if getattr(m, "weight_function", None) or getattr(m, "bias_function", None))

    monkeypatch.setattr(guided, "guided_edit", lambda *a, **k: inner(*a, on_gradient_step=looking, **k))
    for _ in range(2):
        comfy.call_node("P2PZ_GuidedEdit", model=lora, positive=caption, inverted_latent=inverted, steps=STEPS,
                        cfg=5.0, lambda_xa=0.1, guidance="references", edited_positive=edited)
    after = ksampler()
    assert patched == [] and functions == []
    assert torch.equal(before, after)
    assert all(p.is_inference() for p in lora.model.diffusion_model.parameters())  # originals put back


def test_gradient_pass_stops_at_the_last_cross_attention_layer_with_the_same_gradient(comfy, monkeypatch, setup):
    """The gradient pass only uses its map loss: it ends once the last recorded cross-attention layer is observed.
    Running the whole UNet instead (maps_only off) gives bit-identical gradient steps and edit."""
    guided = comfy.pack_import("nodes.guided_unet")
    attention_maps = comfy.pack_import("core.attention").AttentionMaps
    stops = []
    raise_ = guided._MapsComplete.__init__

    def counting(self, *args):
        stops.append(1)
        raise_(self, *args)

    monkeypatch.setattr(guided._MapsComplete, "__init__", counting)
    stopped = _guided_run(comfy, monkeypatch, setup, "attention_pytorch")
    assert len(stops) >= STEPS  # one gradient pass per step, each ended early
    compare = attention_maps.compare
    with monkeypatch.context() as m:
        m.setattr(attention_maps, "compare", lambda self, targets, copies, maps_only=False: compare(self, targets, copies))
        stops.clear()
        whole = _guided_run(comfy, m, setup, "attention_pytorch")
    assert not stops
    assert torch.equal(stopped[0], whole[0])
    assert all(torch.equal(a[b], w[b]) for a, w in zip(stopped[1], whole[1]) for b in w)
