"""Cross-attention-guided editing (core.guidance) against diffusers' StableDiffusionPix2PixZeroPipeline.__call__ on
the same tiny weights, plus the loop's own behaviour (guidance lowers the map loss, identity edits, modes, batches).

Our side drives diffusers' UNet through `DiffusersBranchModel`: its attn2 layers compute explicit probabilities
with core.attention and hand them to an AttentionMaps by branch; self-attention stays on diffusers' SDPA processor
(the pipeline itself uses explicit attention everywhere).
"""
import copy

import pytest
import torch
import torch.nn.functional as F
from map_losses import recording, total
from tolerances import SAME_MATH_RTOL, same_math_atol

from core import sigmas_from_alphas_cumprod
from core.attention import AttentionMaps, explicit_attention
from core.guidance import CAPTION, EDITED, NEGATIVE, GuidedEditor, generation_sigmas, guided_edit, restate
from fixtures.diffusers_tiny import SD_BETAS, alphas_cumprod, tiny_pix2pix_zero_pipeline, tiny_unet

WIDTH = 32  # tiny_unet's cross_attention_dim


class _Attn2Processor:
    """attn2 through core.attention: probabilities for the maps when they are wanted, SDPA otherwise."""

    def __init__(self, name, model):
        self.name, self.model = name, model

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        assert attention_mask is None and encoder_hidden_states is not None
        q, k, v = attn.to_q(hidden_states), attn.to_k(encoder_hidden_states), attn.to_v(encoder_hidden_states)
        maps = self.model.maps
        if maps.wants_maps:
            out, probs = explicit_attention(q, k, v, attn.heads)
            maps.observe_batch(self.name, probs, self.model.branches, attn.heads)
        else:
            b, h = q.shape[0], attn.heads
            out = F.scaled_dot_product_attention(*(t.view(b, -1, h, t.shape[-1] // h).transpose(1, 2) for t in (q, k, v)))
            out = out.transpose(1, 2).reshape(b, -1, q.shape[-1])
        return attn.to_out[1](attn.to_out[0](out))


class DiffusersBranchModel:
    """core.guidance's BranchDenoiser around a diffusers UNet (ComfyUI's sigma-space convention).

    Branches are batched in diffusers' CFG order [negative, caption or edited]. `calls` keeps every call's inputs."""

    ORDER = (NEGATIVE, CAPTION, EDITED)

    def __init__(self, unet, contexts, prediction_type="epsilon"):
        from diffusers.models.attention_processor import AttnProcessor2_0

        self.unet = copy.deepcopy(unet)
        self.unet.set_attn_processor({name: _Attn2Processor(name, self) if "attn2" in name else AttnProcessor2_0()
                                      for name in self.unet.attn_processors})
        self.contexts = contexts
        self.prediction_type = prediction_type
        self.maps = AttentionMaps()
        self.branches = []
        self.calls = []
        self.log_table = sigmas_from_alphas_cumprod(alphas_cumprod()).log()

    def __call__(self, xs, sigma):
        self.branches = [b for b in self.ORDER if b in xs]
        self.calls.append({b: xs[b].detach().clone() for b in self.branches})
        x = torch.cat([xs[b] for b in self.branches])
        context = torch.cat([self.contexts[b].expand(xs[b].shape[0], -1, -1) for b in self.branches])
        t = int((torch.tensor(sigma).log() - self.log_table).abs().argmin())
        out = self.unet(x / (1 + sigma**2) ** 0.5, t, encoder_hidden_states=context).sample
        if self.prediction_type == "epsilon":
            denoised = x - out * sigma
        else:  # ComfyUI's V_PREDICTION.calculate_denoised (sigma_data 1)
            denoised = x / (sigma**2 + 1) - out * sigma / (sigma**2 + 1) ** 0.5
        return dict(zip(self.branches, denoised.chunk(len(self.branches))))


def run_diffusers(unet, x_T, caption, negative, direction, steps, cfg, lambda_xa, prediction_type="epsilon"):
    """The pipeline's __call__ on x_T (its own copy of the weights); returns the edited latent and, per UNet call,
    (input sample, output), and per scheduler step (noise_pred, timestep, sample, prev_sample)."""
    from diffusers import DDIMScheduler

    pipe = tiny_pix2pix_zero_pipeline(copy.deepcopy(unet))
    if prediction_type != "epsilon":
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type=prediction_type)
    unet_calls, steps_seen = [], []
    pipe.unet.register_forward_hook(
        lambda m, args, kwargs, out: unet_calls.append(((args[0] if args else kwargs["sample"]).detach().clone(),
                                                        out.sample.detach().clone())), with_kwargs=True)
    step = pipe.scheduler.step

    def recording_step(noise_pred, t, sample, *args, **kwargs):
        out = step(noise_pred, t, sample, *args, **kwargs)
        steps_seen.append((noise_pred.detach().clone(), int(t), sample.clone(), out.prev_sample.clone()))
        return out

    pipe.scheduler.step = recording_step
    # construct_direction = target.mean(0) - source.mean(0): exactly `direction`
    edited = pipe(prompt_embeds=caption, negative_prompt_embeds=negative, source_embeds=torch.zeros_like(direction),
                  target_embeds=direction, num_inference_steps=steps, guidance_scale=cfg,
                  cross_attention_guidance_amount=lambda_xa, latents=x_T, output_type="latent").images
    return edited, unet_calls, steps_seen


def _embeddings(seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    caption, other, direction = (torch.randn(1, 77, WIDTH, generator=g).to(dtype) for _ in range(3))
    return caption, other, 0.5 * direction


def _x_T(seed=2, batch=1, dtype=torch.float32):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny UNet's tensors are so small that a second thread costs more in synchronisation than it saves
    (these tests take 2-3x longer with two threads); numerics are checked, not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def unet():
    return tiny_unet(seed=0)


@pytest.fixture(scope="module")
def unet64(unet):
    """The same weights in float64, for comparisons of computations that are equal in exact arithmetic but batch or
    skip work differently (tolerances.py, rule 2): float32 rounding of the tiny random network differs by CPU and
    kernel (1e-5 relative on one CPU, 1.08e-5 on another), float64's is 1e-9 times smaller."""
    return copy.deepcopy(unet).double()


@pytest.fixture(scope="module")
def table():
    return sigmas_from_alphas_cumprod(alphas_cumprod())


def test_generation_sigmas_are_the_references_ddim_levels(table):
    """Timesteps 901, 801, ..., 1 (leading, steps_offset 1) and a last step to alpha_bar[0], not to sigma 0."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    sched.set_timesteps(10)
    sigmas = generation_sigmas(table, 10)
    assert torch.equal(sigmas[:-1], table[sched.timesteps])
    assert sigmas[-1] == table[0] and float(sched.final_alpha_cumprod) == float(alphas_cumprod()[0])
    x = torch.randn(3)
    torch.testing.assert_close(restate(restate(x, 1.0, 14.0), 14.0, 1.0), x)


def _check_steps(model, editor, sigmas, unet_calls, steps_seen, steps, cfg):
    """Feed diffusers' own latents into our reference and edit steps, one at a time, and compare.

    Tolerances (float64 everywhere, same weights, so kernels and batch composition only add float64 rounding,
    tolerances.py rule 2): what remains is the schedule, which both sides read from the same float32 alphas, diffusers
    as alpha and we as float32 sigma (ComfyUI's tables are float32): a relative change of at most gamma(4) = 2.4e-7
    in each step coefficient, entering linearly (rule 3). The latents of a step (x_t, up to ~30 for a raw random
    network) then agree to 1e-5 relative to their size (40x that bound). The noise prediction: eps = (x - denoised) /
    sigma inherits the rounding of x (x = x_t sqrt(1 + sigma^2), one float32-rounded coefficient) divided by sigma,
    and CFG multiplies differences by up to 2 cfg, so |d eps| <= 1e-6 * 2 cfg * (1 + max|x| / sigma), 4x gamma(4).
    The guidance update itself (x_in after the SGD step minus before): its step size lambda (1 + sigma^2) carries
    the same coefficient rounding, 1e-3 of its size leaves 4000x room, plus 4e-7 of x for the update's subtraction.
    """
    worst = {}
    for i in range(steps):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        c, c_next = (1 + s**2) ** 0.5, (1 + s_next**2) ** 0.5
        # reconstruction: diffusers' reference loop is calls[0..steps-1] and scheduler steps[0..steps-1]
        noise_ref, _, sample_ref, prev_ref = steps_seen[i]
        x_ref_next, eps_ref = editor.reference_step(sample_ref * c, s, s_next)
        x_scale = float(sample_ref.abs().max()) * c
        eps_tol = 1e-6 * 2 * cfg * (1 + x_scale / s)
        assert (eps_ref - noise_ref).abs().max() <= eps_tol, (i, "reference eps")
        torch.testing.assert_close(x_ref_next / c_next, prev_ref, rtol=0, atol=1e-5 * float(prev_ref.abs().max()))
        # edit: calls[steps + 2i] is the gradient pass on x_in = [x, x], calls[steps + 2i + 1] the updated x_in
        x_in, _ = unet_calls[steps + 2 * i]
        x_in_updated, _ = unet_calls[steps + 2 * i + 1]
        noise_edit, _, sample_edit, prev_edit = steps_seen[steps + i]
        assert torch.equal(sample_edit, x_in_updated[:1])  # the carried latent is the negative copy
        model.calls.clear()
        x_next, eps, losses = editor.edit_step(x_in[:1] * c, s, s_next, x_ref=sample_ref * c)
        final = model.calls[-1]
        if i == 0:  # the negative copy sits on the reconstruction: not moved, its prediction is the reference's
            assert list(final) == [EDITED]
        for k, branch in enumerate((NEGATIVE, EDITED)):
            ours_update = (final[branch] / c if branch in final else x_in[:1]) - x_in[k:k + 1]
            theirs_update = x_in_updated[k:k + 1] - x_in[k:k + 1]
            tol = 1e-3 * float(theirs_update.abs().max()) + 4e-7 * float(x_in.abs().max())
            assert (ours_update - theirs_update).abs().max() <= tol, (i, branch, "guidance update")
            worst[branch] = max(worst.get(branch, 0.0), float(theirs_update.abs().max()))
        assert (eps - noise_edit).abs().max() <= eps_tol, (i, "edit eps")
        torch.testing.assert_close(x_next / c_next, prev_edit, rtol=0, atol=1e-5 * float(prev_edit.abs().max()))
        assert set(losses) == {NEGATIVE, EDITED}
    return worst


def test_step_by_step_parity_real_image_default(unet64, table):
    """The authors' real-image setting: negative = caption, cfg 5, lambda_xa 0.1; 8 steps. Our reference pass
    evaluates the caption once (the CFG pair is identical) where diffusers evaluates it twice."""
    unet = unet64  # float64: see _check_steps
    caption, _, direction = _embeddings(dtype=torch.float64)
    x_T, steps, cfg = _x_T(dtype=torch.float64), 8, 5.0
    _, unet_calls, steps_seen = run_diffusers(unet, x_T, caption, caption, direction, steps, cfg, 0.1)
    assert len(unet_calls) == 3 * steps and len(steps_seen) == 2 * steps
    model = DiffusersBranchModel(unet, {NEGATIVE: caption, CAPTION: caption, EDITED: caption + direction})
    editor = GuidedEditor(model, model.maps, cfg=cfg, lambda_xa=0.1, negative_is_caption=True)
    worst = _check_steps(model, editor, generation_sigmas(table, steps), unet_calls, steps_seen, steps, cfg)
    assert worst[EDITED] > 1e-6  # the guidance moved the latent (by more than rounding)


def test_step_by_step_parity_with_another_negative_and_strong_guidance(unet64, table):
    """negative != caption (two reference branches), and lambda_xa 20 so that the guidance update (~1e-3 here:
    maps of a random network barely react to its input) stands far above float32 rounding (~1e-6)."""
    unet = unet64  # float64: see _check_steps
    caption, negative, direction = _embeddings(seed=3, dtype=torch.float64)
    x_T, steps, cfg = _x_T(seed=4, dtype=torch.float64), 6, 7.5
    _, unet_calls, steps_seen = run_diffusers(unet, x_T, caption, negative, direction, steps, cfg, 20.0)
    model = DiffusersBranchModel(unet, {NEGATIVE: negative, CAPTION: caption, EDITED: caption + direction})
    editor = GuidedEditor(model, model.maps, cfg=cfg, lambda_xa=20.0)
    worst = _check_steps(model, editor, generation_sigmas(table, steps), unet_calls, steps_seen, steps, cfg)
    assert min(worst.values()) > 1e-4, worst


def test_step_by_step_parity_v_prediction(unet64, table):
    """SD 2.x-style v-prediction (the scheduler converts v; we take eps from ComfyUI's denoised); lambda_xa 0.01."""
    unet = unet64  # float64: see _check_steps
    caption, negative, direction = _embeddings(seed=5, dtype=torch.float64)
    x_T, steps, cfg = _x_T(seed=6, dtype=torch.float64), 5, 5.0
    _, unet_calls, steps_seen = run_diffusers(unet, x_T, caption, negative, direction, steps, cfg, 0.01,
                                              prediction_type="v_prediction")
    model = DiffusersBranchModel(unet, {NEGATIVE: negative, CAPTION: caption, EDITED: caption + direction},
                                 prediction_type="v_prediction")
    editor = GuidedEditor(model, model.maps, cfg=cfg, lambda_xa=0.01)
    sigmas = generation_sigmas(table, steps)
    for i in range(steps):  # diffusers records v; compare the latents (the noise is checked through them)
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        c, c_next = (1 + s**2) ** 0.5, (1 + s_next**2) ** 0.5
        _, _, sample_ref, prev_ref = steps_seen[i]
        x_ref_next, _ = editor.reference_step(sample_ref * c, s, s_next)
        torch.testing.assert_close(x_ref_next / c_next, prev_ref, rtol=0, atol=1e-5 * float(prev_ref.abs().max()))
        x_in, _ = unet_calls[steps + 2 * i]
        _, _, _, prev_edit = steps_seen[steps + i]
        x_next, _, _ = editor.edit_step(x_in[:1] * c, s, s_next)
        torch.testing.assert_close(x_next / c_next, prev_edit, rtol=0, atol=1e-5 * float(prev_edit.abs().max()))


def test_end_to_end_edit_and_reconstruction_match_diffusers(unet64, table):
    """Whole runs from the same x_T: our edited latent vs the pipeline's output, our reconstruction vs its reference
    loop's last latent. Tolerance: 20x the change of diffusers' own result when its x_T moves by 1e-6 (its
    sensitivity to rounding, measured here), plus 1e-5 of the latent's size."""
    unet = unet64  # float64: see _check_steps
    caption, _, direction = _embeddings(seed=7, dtype=torch.float64)
    x_T, steps, cfg = _x_T(seed=8, dtype=torch.float64), 6, 5.0
    reference, _, steps_seen = run_diffusers(unet, x_T, caption, caption, direction, steps, cfg, 0.1)
    nudged = x_T + 1e-6 * torch.randn(x_T.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    perturbed, _, _ = run_diffusers(unet, nudged, caption, caption, direction, steps, cfg, 0.1)
    sensitivity = float((perturbed - reference).abs().max())
    model = DiffusersBranchModel(unet, {NEGATIVE: caption, CAPTION: caption, EDITED: caption + direction})
    sigmas = generation_sigmas(table, steps)
    losses = []
    result = guided_edit(model, model.maps, x_T * (1 + float(sigmas[0]) ** 2) ** 0.5, sigmas, cfg=cfg,
                         lambda_xa=0.1, negative_is_caption=True, callback=lambda *step: losses.append(step[-1]))
    tol = 20 * sensitivity + 1e-5 * float(reference.abs().max())
    assert float((result.edited - reference).abs().max()) <= tol
    assert float((result.reconstruction - steps_seen[steps - 1][3]).abs().max()) <= tol
    assert len(losses) == steps and all(set(s) == {NEGATIVE, EDITED} for s in losses)


# ---------------------------------------------------------------------------------------------------------------
# The loop's own behaviour (no pipeline)

def _model(unet, caption, negative, direction, **kw):
    return DiffusersBranchModel(unet, {NEGATIVE: negative, CAPTION: caption, EDITED: caption + direction}, **kw)


def _run(model, x_T, sigmas, runs=None, **kw):
    """guided_edit from x_T; runs (a list): receives the run's per-step map losses (map_losses.recording; with
    lambda_xa 0 measured as a gradient pass would see them)."""
    edit = guided_edit if runs is None else recording(guided_edit, runs)
    return edit(model, model.maps, x_T * (1 + float(sigmas[0]) ** 2) ** 0.5, sigmas, **kw)


def test_guidance_lowers_the_map_loss(unet, table):
    """Summed map loss (edit vs reference, all steps, both guided copies, measured before each step's update) with
    lambda_xa > 0 is below lambda_xa = 0, and lower with more guidance; and within one step the update lowers the
    loss of both copies. Text embeddings are scaled x4 so the tiny random network's softmax is peaked enough for
    its maps to respond to the latent (with unit embeddings they are nearly uniform and flat in x)."""
    caption, negative, direction = _embeddings(seed=10)
    caption, negative, direction = 4 * caption, 4 * negative, 0.8 * direction
    sigmas, x_T = generation_sigmas(table, 5), _x_T(seed=11)
    for neg, lambdas in ((caption, (0.0, 0.1, 0.5)), (negative, (0.0, 0.1))):
        model = _model(unet, caption, neg, direction)
        runs = []
        for lam in lambdas:
            _run(model, x_T, sigmas, runs, lambda_xa=lam, negative_is_caption=neg is caption)
        totals = [total(losses) for losses in runs]
        assert 0 < min(totals) and totals == sorted(totals, reverse=True) and len(set(totals)) == len(totals), totals
    # one step, the edit's latent a little off the reconstruction's: loss at the updated copies < loss before
    s, s_next = float(sigmas[2]), float(sigmas[3])
    x_ref = _x_T(seed=12) * (1 + s**2) ** 0.5
    x = x_ref + 0.1 * _x_T(seed=13) * (1 + s**2) ** 0.5
    editor = GuidedEditor(model, model.maps, cfg=5.0, lambda_xa=0.5)
    editor.reference_step(x_ref, s, s_next)
    model.calls.clear()
    _, _, before = editor.edit_step(x, s, s_next)
    updated = model.calls[-1]
    model.maps.compare({NEGATIVE: NEGATIVE, EDITED: CAPTION}, copies=2)
    with torch.no_grad():
        model(updated, s)
    after = {b: float(v) for b, v in model.maps.losses.items()}
    assert all(after[b] < before[b] for b in (NEGATIVE, EDITED)), (before, after)


def test_zero_direction_without_guidance_reproduces_the_reconstruction(unet64, table):
    """lambda_xa 0 and a zero direction: the edit is the reconstruction. The two loops evaluate the same model on the
    same inputs, only batched differently (and attn2 explicit in the reference pass, SDPA in the edit pass): equal in
    exact arithmetic, so compared in float64 (tolerances.py, rule 2)."""
    caption, negative, _ = _embeddings(seed=12, dtype=torch.float64)
    sigmas, x_T = generation_sigmas(table, 10), _x_T(seed=13, dtype=torch.float64)
    for neg in (caption, negative):
        model = _model(unet64, caption, neg, torch.zeros(1, 77, WIDTH, dtype=torch.float64))
        result = _run(model, x_T, sigmas, lambda_xa=0.0, negative_is_caption=neg is caption)
        tol = same_math_atol(result.reconstruction)
        assert float((result.edited - result.reconstruction).abs().max()) <= tol
        assert not torch.equal(result.edited, x_T)


def test_redundant_work_is_skipped_without_changing_results(unet64, table):
    """An identical negative: one reference evaluation per step; the first step: no gradient for the negative copy
    (it sits on the reconstruction's latent, its maps are the reference maps) and no evaluation of it (its prediction
    is the reference step's negative one); lambda_xa 0: no gradient pass.
    Results equal those of the full computation in exact arithmetic; the full computation's extra work only adds
    rounding (the negative copy's gradient step is rounding noise, evaluated in another batch), so the comparison
    runs in float64 (tolerances.py, rule 2)."""
    caption, _, direction = _embeddings(seed=14, dtype=torch.float64)
    sigmas, x_T = generation_sigmas(table, 4), _x_T(seed=15, dtype=torch.float64)
    model = _model(unet64, caption, caption, direction)
    runs = []
    full = _run(model, x_T, sigmas, runs, lambda_xa=0.1)
    batches = [list(call) for call in model.calls]
    assert batches[:6] == [[NEGATIVE, CAPTION], [EDITED], [EDITED], [NEGATIVE, CAPTION], [NEGATIVE, EDITED],
                           [NEGATIVE, EDITED]]
    assert runs[0][0][NEGATIVE] == 0.0 and runs[0][1][NEGATIVE] > 0
    # the same first step with the negative copy computed: its update is rounding noise, ~0
    editor = GuidedEditor(model, model.maps, cfg=5.0, lambda_xa=0.1)
    s, s_next = float(sigmas[0]), float(sigmas[1])
    x = x_T * (1 + s**2) ** 0.5
    editor.reference_step(x, s, s_next)
    model.calls.clear()
    _, eps_full, losses = editor.edit_step(x, s, s_next)
    # float64: the maps of equal inputs differ by rounding only, so the loss is a sum of squares of ~1e-16 terms and
    # the step moves x by rounding noise amplified through one gradient pass (rule 2's bound)
    assert losses[NEGATIVE] < SAME_MATH_RTOL and float((model.calls[-1][NEGATIVE] - x).abs().max()) <= same_math_atol(x)
    # and its noise prediction is the reference step's, reused when the step knows it starts on the reconstruction
    _, eps_lean, _ = editor.edit_step(x, s, s_next, x_ref=x)
    assert list(model.calls[-1]) == [EDITED]
    torch.testing.assert_close(eps_lean, eps_full, rtol=0, atol=same_math_atol(eps_full))
    model.calls.clear()
    lean = _run(model, x_T, sigmas, lambda_xa=0.1, negative_is_caption=True)
    assert [list(call) for call in model.calls[:6]] == [[CAPTION], [EDITED], [EDITED], [CAPTION],
                                                        [NEGATIVE, EDITED], [NEGATIVE, EDITED]]
    torch.testing.assert_close(lean.edited, full.edited, rtol=0, atol=same_math_atol(full.edited))
    model.calls.clear()
    _run(model, x_T, sigmas, lambda_xa=0.0, negative_is_caption=True)
    assert len(model.calls) == 2 * 4  # reference + CFG pass per step, no gradient pass


def test_paper_mode_guides_only_the_edited_branch_and_carries_it(unet64, table):
    """From the same latent, the edited copy gets exactly the references' step; the negative copy is not guided, both
    CFG halves see the guided latent, and the guided latent is carried. float64: the two modes' gradient passes
    batch differently (tolerances.py, rule 2)."""
    unet = unet64
    caption, negative, direction = _embeddings(seed=16, dtype=torch.float64)
    sigmas, x_T = generation_sigmas(table, 3), _x_T(seed=17, dtype=torch.float64)
    s, s_next = float(sigmas[0]), float(sigmas[1])
    x = x_T * (1 + s**2) ** 0.5
    steps = {}
    for mode in ("references", "paper"):
        model = _model(unet, caption, negative, direction)
        editor = GuidedEditor(model, model.maps, cfg=5.0, lambda_xa=20.0, mode=mode)
        editor.reference_step(x, s, s_next)
        model.calls.clear()
        x_next, eps, losses = editor.edit_step(x, s, s_next)
        steps[mode] = (model.calls, x_next, eps, losses)
    ref_calls, _, _, ref_losses = steps["references"]
    paper_calls, paper_next, paper_eps, paper_losses = steps["paper"]
    assert list(ref_calls[0]) == [NEGATIVE, EDITED] and list(paper_calls[0]) == [EDITED]  # gradient passes
    torch.testing.assert_close(paper_calls[1][EDITED], ref_calls[1][EDITED], rtol=0,
                               atol=same_math_atol(ref_calls[1][EDITED]))
    assert torch.equal(paper_calls[1][NEGATIVE], paper_calls[1][EDITED])
    assert not torch.equal(ref_calls[1][NEGATIVE], ref_calls[1][EDITED])
    # the DDIM step's formula, a few float64 operations: assert_close's float64 default (rtol 1e-7) is far above
    # gamma(4) = 4.4e-16 (rule 3)
    torch.testing.assert_close(paper_next, paper_calls[1][EDITED] + paper_eps * (s_next - s))
    assert set(ref_losses) == {NEGATIVE, EDITED} and set(paper_losses) == {EDITED}
    assert paper_losses[EDITED] == pytest.approx(ref_losses[EDITED], rel=SAME_MATH_RTOL)
    # whole runs differ, and without CFG the two modes are the same computation
    model = _model(unet, caption, negative, direction)
    runs = {m: _run(model, x_T, sigmas, lambda_xa=20.0, mode=m) for m in ("references", "paper")}
    assert not torch.allclose(runs["references"].edited, runs["paper"].edited)
    no_cfg = {m: _run(model, x_T, sigmas, cfg=1.0, lambda_xa=20.0, mode=m).edited for m in ("references", "paper")}
    assert torch.equal(no_cfg["references"], no_cfg["paper"])


def test_a_batch_edits_each_image_as_if_alone(unet64, table):
    """Equal in exact arithmetic, batched differently: float64 (tolerances.py, rule 2)."""
    caption, negative, direction = _embeddings(seed=18, dtype=torch.float64)
    sigmas, x_T = generation_sigmas(table, 3), _x_T(seed=19, batch=2, dtype=torch.float64)
    model = _model(unet64, caption, negative, direction)
    both = _run(model, x_T, sigmas, lambda_xa=20.0)
    for i in range(2):
        alone = _run(model, x_T[i:i + 1], sigmas, lambda_xa=20.0)
        tol = same_math_atol(alone.edited)
        torch.testing.assert_close(both.edited[i:i + 1], alone.edited, rtol=0, atol=tol)
        torch.testing.assert_close(both.reconstruction[i:i + 1], alone.reconstruction, rtol=0, atol=tol)


def test_bad_settings_get_clear_errors(unet, table):
    caption, negative, direction = _embeddings()
    model = _model(unet, caption, negative, direction)
    sigmas = generation_sigmas(table, 4)
    x = _x_T()
    with pytest.raises(ValueError, match="unknown guidance mode 'other'"):
        _run(model, x, sigmas, mode="other")
    with pytest.raises(ValueError, match="cfg must be >= 1"):
        _run(model, x, sigmas, cfg=0.5)
    with pytest.raises(ValueError, match="lambda_xa must be >= 0"):
        _run(model, x, sigmas, lambda_xa=-0.1)
    with pytest.raises(ValueError, match="strictly descending"):
        _run(model, x, sigmas.flip(0))
    with pytest.raises(ValueError, match="the last level must be above 0"):
        _run(model, x, torch.cat([sigmas[:-1], sigmas.new_zeros(1)]))
    from diffusers.models.attention_processor import AttnProcessor2_0

    unhooked = DiffusersBranchModel(unet, model.contexts)
    unhooked.unet.set_attn_processor(AttnProcessor2_0())  # no processor reports maps
    with pytest.raises(RuntimeError, match="attention hook is not installed"):
        guided_edit(unhooked, unhooked.maps, x, sigmas)


def test_guided_steps_guide_only_the_first_steps(unet64, table):
    """guided_steps K: the first K steps are the fully guided run's, step for step and bit for bit (the same
    calls on the same inputs: rule 1); the later steps run no gradient pass and report no loss; K 0 is lambda_xa 0
    exactly (the same calls: no maps recorded, no gradient pass)."""
    caption, negative, direction = _embeddings(seed=18, dtype=torch.float64)
    sigmas, x_T = generation_sigmas(table, 5), _x_T(seed=19, dtype=torch.float64)
    model = _model(unet64, 4 * caption, 4 * negative, direction)

    def run(**kw):
        seen = []
        result = _run(model, x_T, sigmas, cfg=5.0, callback=lambda step, x, ref, x0, losses: seen.append(
            (x.clone(), dict(losses))), **kw)
        return result, seen

    full, full_steps = run(lambda_xa=0.5)
    first, first_steps = run(lambda_xa=0.5, guided_steps=2)
    assert [set(losses) for _, losses in first_steps] == [{NEGATIVE, EDITED}] * 2 + [set()] * 3
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first_steps[:2], full_steps[:2]))
    assert not torch.equal(first_steps[2][0], full_steps[2][0]) and not torch.equal(first.edited, full.edited)
    model.calls.clear()
    none, _ = run(lambda_xa=0.5, guided_steps=0)
    calls_none = [list(c) for c in model.calls]
    model.calls.clear()
    unguided, _ = run(lambda_xa=0.0)
    assert calls_none == [list(c) for c in model.calls] and torch.equal(none.edited, unguided.edited)


def test_flow_rules_take_the_flow_step_over_the_edited_rows(unet64, table):
    """The family seam: from the same latent and maps, FLOW_RULES' gradient step is DDIM_RULES' scaled by
    flow_sgd_step_size / sgd_step_size and by 2 (the flow loss averages over the edited branch's heads, the
    references' over the CFG batch's 2 x heads rows), and its result is the latent itself, where DDIM_RULES' is the
    DDIM sample. Same gradient pass on both sides (rule 1 for the gradient; the steps are a product and a
    difference in float64, checked to rule 2)."""
    from core.flow_space import flow_sgd_step_size
    from core.guidance import DDIM_RULES, FLOW_RULES
    from core.sigma_space import sgd_step_size, to_ddim

    caption, negative, direction = _embeddings(seed=20, dtype=torch.float64)
    sigmas, x_T = generation_sigmas(table, 3), _x_T(seed=21, dtype=torch.float64)
    s, s_next = float(sigmas[1]), float(sigmas[2])
    x_ref = x_T * (1 + s**2) ** 0.5
    x = x_ref + 0.1 * _x_T(seed=22, dtype=torch.float64)
    moved = {}
    for rules in (DDIM_RULES, FLOW_RULES):
        model = _model(unet64, 4 * caption, 4 * negative, direction)
        editor = GuidedEditor(model, model.maps, cfg=5.0, lambda_xa=0.3, mode="paper", rules=rules,
                              on_gradient_step=lambda x0, stepped, losses, r=rules: moved.__setitem__(
                                  r.name, stepped[EDITED] - x0))
        editor.reference_step(x_ref, s, s_next)
        editor.edit_step(x, s, s_next)
    ratio = 2 * flow_sgd_step_size(0.3, s) / sgd_step_size(0.3, s)
    torch.testing.assert_close(moved["flow"], ratio * moved["ddim"], rtol=0,
                               atol=same_math_atol(moved["flow"]) + same_math_atol(x))
    assert float(moved["ddim"].abs().max()) > 1e3 * same_math_atol(x)  # a step that the comparison can see
    model = _model(unet64, caption, caption, direction)
    levels = torch.tensor([0.9, 0.6, 0.3, 0.1], dtype=torch.float64)  # within both families' limits
    ddim, flow = (_run(model, x_T, levels, lambda_xa=0.0, rules=rules) for rules in (DDIM_RULES, FLOW_RULES))
    assert torch.equal(ddim.edited, to_ddim(flow.edited, 0.1)) and not torch.equal(ddim.edited, flow.edited)
