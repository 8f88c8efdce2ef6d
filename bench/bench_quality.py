"""Do the edits do what they are for? pix2pix-zero and its baselines on a learned-world checkpoint (SD 1.x or SD 3.x layout), read by its judge, on
held-out images.

    COMFYUI_PATH=/path/to/ComfyUI python bench/bench_quality.py --ckpt WORLD/checkpoints/world-sd15-latest.safetensors \\
        --judge WORLD/judge.safetensors [--images 24] [--edits colour shape] [--steps 20] [--sentences 200] \\
        [--methods paper no_guidance ...] [--out DIR] [--json out.json]

Held-out images: renders of the world's test split (attribute combinations never shown in training), each with
its true caption (the world's stand-in for BLIP's; a full template naming shape, colour, position and background).
Each image is edited along one attribute: its colour to the next colour (red -> green -> blue -> yellow -> red) or
its shape to the next shape (circle -> square -> triangle -> star -> circle), with directions built from the
world's own sentences (world.render.concept_sentences: every caption that names the word). The pipeline is the
pack's nodes through ComfyUI, as a user wires them: CheckpointLoaderSimple, VAEEncode, CLIPTextEncode (the caption),
P2PZ_InvertLatent, P2PZ_BuildDirection (custom sentences), P2PZ_GuidedEdit (cfg 5, caption as negative), VAEDecode.

Methods (each on the same images and edits; ``METHODS``):
- paper: the paper's settings (first-order inversion with the regularization, lambda_xa 0.1);
- no_guidance: lambda_xa 0 (the direction alone: the paper's ablation);
- no_regularization: lambda_xa 0.1 on a plain inversion (lambda_ac = lambda_kl = 0, reg_steps 0);
- fixed_point_1, fixed_point_2: the paper's settings with 1 / 2 fixed-point iterations per inversion step
  (P2PZ_InvertLatent's fixed_point_iters, issue 26); fixed_point_1 is the pack's defaults since 2026-12-07;
- lambda_0.05, lambda_0.2, lambda_0.4: the paper's settings at other guidance strengths; fraction_1, fraction_0.5,
  fraction_0.25: every step, the first half, the first quarter guided (Guided Edit Options' guided_fraction; without
  the node every step on the UNet path, the first half on SD 3.x / Flux); lambda_1_all_steps: the input's largest
  strength on every step; lambda_3_all_steps, lambda_10_all_steps: beyond the input's range, an experiment (the
  loop's strength scaled inside the benchmark, ``scaled_lambda``);
- caption_guided, caption_unguided: the paper's inversion and Guided Edit (lambda_xa 0.1, and 0) with the edit
  given as the edited caption (edited_positive) instead of a direction: the guidance apart from the direction;
- prompt_swap: plain inversion, then stock SamplerCustom (ddim, or euler on a flow model; no added noise) from the
  inverted latent along its regeneration sigmas, with the edited caption (the source word replaced) against the
  caption at the same cfg;
- sdedit_0.5, sdedit_0.8: stock nodes only, VAEEncode -> KSampler (euler) at denoise 0.5 / 0.8 with the edited
  caption against the caption.

Reported per method and edit kind (the judge reads every image):
- edit accuracy: the edited image shows the target value;
- kept: the other four attributes still read as the original's truth (the structure the edit must keep);
- both: accuracy and all four kept;
- mask IoU: the judge's object masks of original and edit (colour edits should keep it near the reconstruction's);
- edge correlation: core.student_data.structure_score between the original and the edit;
- background PSNR: input against edit, over the pixels outside both object masks (the render's true mask of the
  input, the judge's mask of the edit, each grown by a pixel);
- reconstruction (pix2pix-zero methods): the judge reads all five attributes right on the unedited reconstruction,
  and its PSNR to the input (what inversion + the world's VAE lose before any edit); the JSON rows also give what the
  judge reads on input and reconstruction and the reconstruction's mask IoU (the most an edit can keep);
- model calls per edit in forward-equivalents (``GRADIENT_PASS_COST``), inversion included, and seconds per edit;
- direction reach (text space, the same for every method): the fraction of the caption -> edited caption distance
  that adding the direction closes (``direction_reach``);
- the guidance's push (methods with lambda_xa > 0): the median over guided steps of the edited latent's step
  relative to the latent, and of the map loss that drives it (``recorded_gradient_steps``; each row's JSON has
  every step).
A grid (input, reconstruction, one edit per method) goes to --out as grid.png, the table as table.md.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Each method on the same images and edits. "p2pz" methods run the pack's nodes (P2PZ_InvertLatent, then
# P2PZ_GuidedEdit with a direction); the others are stock ComfyUI nodes only, with the edited caption.
METHODS = {
    "paper": {"kind": "p2pz", "lambda_xa": 0.1, "regularize": True, "fixed_point_iters": 0},
    "no_guidance": {"kind": "p2pz", "lambda_xa": 0.0, "regularize": True, "fixed_point_iters": 0},
    "no_regularization": {"kind": "p2pz", "lambda_xa": 0.1, "regularize": False, "fixed_point_iters": 0},
    "fixed_point_1": {"kind": "p2pz", "lambda_xa": 0.1, "regularize": True, "fixed_point_iters": 1},
    "fixed_point_2": {"kind": "p2pz", "lambda_xa": 0.1, "regularize": True, "fixed_point_iters": 2},
    # the guidance strength, and the share of guided steps (Guided Edit Options' guided_fraction; without the node
    # every step on the UNet path, the first half on SD 3.x / Flux): the evidence for the defaults
    "lambda_0.05": {"kind": "p2pz", "lambda_xa": 0.05, "regularize": True, "fixed_point_iters": 0},
    "lambda_0.2": {"kind": "p2pz", "lambda_xa": 0.2, "regularize": True, "fixed_point_iters": 0},
    "lambda_0.4": {"kind": "p2pz", "lambda_xa": 0.4, "regularize": True, "fixed_point_iters": 0},
    "fraction_1": {"kind": "p2pz", "lambda_xa": 0.1, "regularize": True, "fixed_point_iters": 0,
                   "guided_fraction": 1.0},
    "fraction_0.5": {"kind": "p2pz", "lambda_xa": 0.1, "regularize": True, "fixed_point_iters": 0,
                     "guided_fraction": 0.5},
    "fraction_0.25": {"kind": "p2pz", "lambda_xa": 0.1, "regularize": True, "fixed_point_iters": 0,
                      "guided_fraction": 0.25},
    "lambda_1_all_steps": {"kind": "p2pz", "lambda_xa": 1.0, "regularize": True, "fixed_point_iters": 0,
                           "guided_fraction": 1.0},
    # beyond the widget's range (0-1), an experiment only: the loop's lambda_xa is the node's 1 times lambda_scale
    # (the loop wrapped as the tests observe it); how far the SD 3.x world's too-small step is from doing something
    "lambda_3_all_steps": {"kind": "p2pz", "lambda_xa": 1.0, "lambda_scale": 3.0, "regularize": True,
                           "fixed_point_iters": 0, "guided_fraction": 1.0},
    "lambda_10_all_steps": {"kind": "p2pz", "lambda_xa": 1.0, "lambda_scale": 10.0, "regularize": True,
                            "fixed_point_iters": 0, "guided_fraction": 1.0},
    # the pack's inversion and guided sampler with the edit given as the edited caption (Guided Edit's
    # edited_positive) instead of a sentence-mean direction: separates what the guidance does from what the
    # direction reaches
    "caption_guided": {"kind": "p2pz", "lambda_xa": 0.1, "regularize": True, "fixed_point_iters": 0,
                       "edit": "caption"},
    "caption_unguided": {"kind": "p2pz", "lambda_xa": 0.0, "regularize": True, "fixed_point_iters": 0,
                         "edit": "caption"},
    # plain inversion (no regularization), then SamplerCustom from the inverted latent with the edited caption
    "prompt_swap": {"kind": "prompt_swap", "regularize": False, "fixed_point_iters": 0},
    # SDEdit: VAEEncode -> KSampler at partial denoise with the edited caption; 0.5 and diffusers' img2img default 0.8
    # (both ends shown, not a strength picked from the results)
    "sdedit_0.5": {"kind": "sdedit", "denoise": 0.5},
    "sdedit_0.8": {"kind": "sdedit", "denoise": 0.8},
}
DEFAULT_METHODS = ("paper", "no_guidance", "no_regularization", "fixed_point_2", "caption_guided",
                   "caption_unguided", "prompt_swap", "sdedit_0.5", "sdedit_0.8")
EDIT_KINDS = ("colour", "shape")
SENTENCES = 200  # per word; the world has 3,240 captions per colour, 3,240 per shape
# model calls are counted in forward-equivalents: one row of one diffusion-model forward pass is 1; a row of a
# forward pass with gradients (the guidance's gradient pass) is 3 (its backward costs about two forwards)
GRADIENT_PASS_COST = 3


def _next(values, value):
    return values[(values.index(value) + 1) % len(values)]


def held_out_images(count, seed=0):
    """``count`` renders of the test split with their attributes and true captions (full templates)."""
    import numpy as np

    from world import render

    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), 28, 2])))
    out = []
    for i in range(count):
        s = render.sample(i, "test", seed)
        template = render.FULL_TEMPLATES[int(rng.integers(len(render.FULL_TEMPLATES)))]
        out.append({"image": s["image"], "mask": s["mask"], "attributes": s["attributes"],
                    "caption": render.caption(s["attributes"], template)})
    return out


@contextlib.contextmanager
def _guided_edit_kwargs(comfy_host, change):
    """Within the block, both seams (nodes.guided_unet, nodes.guided_flow) call Guided Edit's loop
    (core.guidance.guided_edit) with its keyword arguments passed through `change` (kwargs -> kwargs)."""
    seams = [comfy_host.pack_import(f"nodes.{name}") for name in ("guided_unet", "guided_flow")]
    inners = [seam.guided_edit for seam in seams]
    for seam, inner in zip(seams, inners):
        seam.guided_edit = lambda *a, _inner=inner, **k: _inner(*a, **change(k))
    try:
        yield
    finally:
        for seam, inner in zip(seams, inners):
            seam.guided_edit = inner


@contextlib.contextmanager
def scaled_lambda(comfy_host, scale):
    """Within the block, Guided Edit's loop runs at its lambda_xa times `scale`: an experiment beyond the widget's
    range, for the benchmark only."""
    if scale == 1.0:
        yield
        return
    with _guided_edit_kwargs(comfy_host, lambda k: dict(k, lambda_xa=k["lambda_xa"] * scale)):
        yield


@contextlib.contextmanager
def recorded_gradient_steps(comfy_host, sink):
    """Within the block, every gradient step of Guided Edit's loop appends to `sink` the edited branch's step size
    relative to its latent, |x' - x| / |x|, and its map loss before the step (core.guidance's public observer
    on_gradient_step): how hard the guidance pushes on this model, comparable across families since both are ratios
    within the family's own sampling space."""
    def observe(x, stepped, losses):
        if "edited" in stepped:
            x64 = x.double()
            sink.append({"relative_step": float((stepped["edited"].double() - x64).norm() / x64.norm()),
                         "map_loss": float(losses.get("edited", float("nan")))})

    with _guided_edit_kwargs(comfy_host, lambda k: dict(k, on_gradient_step=observe)):
        yield


def edited_caption(caption, source, target):
    """The caption with its ``source`` word replaced by ``target`` (the prompt the stock methods are given)."""
    import re
    out, n = re.subn(rf"\b{re.escape(source)}\b", target, caption)
    if n != 1:
        raise ValueError(f"{source!r} occurs {n} times in {caption!r}")
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--edits", nargs="+", choices=EDIT_KINDS, default=list(EDIT_KINDS))
    ap.add_argument("--methods", "--variants", nargs="+", choices=list(METHODS), default=list(DEFAULT_METHODS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sentences", type=int, default=SENTENCES,
                    help=f"sentences per word for each direction (default {SENTENCES})")
    ap.add_argument("--out")
    ap.add_argument("--json")
    ap.add_argument("--comfyui")
    args = ap.parse_args(argv)
    report = run(args)
    print(markdown_table(report["summary"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


class CallCounter:
    """A forward hook on the diffusion model: rows of forward passes, in forward-equivalents (GRADIENT_PASS_COST
    for a row computed with gradients)."""

    def __init__(self, net):
        import torch
        self.count = 0.0

        def hook(module, inputs, output):
            x = inputs[0] if inputs else None
            rows = x.shape[0] if hasattr(x, "shape") else 1
            self.count += rows * (GRADIENT_PASS_COST if torch.is_grad_enabled() else 1)

        # always_call: the guidance's gradient pass ends with an exception at the last reference layer (the rest of
        # the UNet is not needed); it is counted as a whole pass (an upper bound)
        net.register_forward_hook(hook, always_call=True)

    def take(self):
        n, self.count = self.count, 0.0
        return n


def direction_reach(caption, edited, direction):
    """How far the direction takes the caption's embedding towards the edited caption's, in text space:
    1 - |E(caption) + d - E(edited)| / |E(caption) - E(edited)| (1: all the way; 0: no closer). On a real CLIP the
    sentence-mean direction carries the word into every later token (causal attention), as the caption's own
    change does; an encoder that hardly mixes tokens leaves most of the gap."""
    from core.direction import apply_direction
    a, b = caption[0][0].float(), edited[0][0].float()
    moved = apply_direction(a, direction).float()
    return float(1 - (moved - b).norm() / (a - b).norm().clamp(min=1e-12))


def background_psnr(a, b, mask_a, mask_b):
    """PSNR of images a and b ([B, H, W, 3]) over the pixels outside both object masks ([B, H, W], > 0.5), each mask
    grown by one pixel so that anti-aliased edges do not count as background."""
    import torch
    import torch.nn.functional as F
    grow = lambda m: F.max_pool2d((torch.as_tensor(m) > 0.5).float()[:, None], 3, 1, 1)[:, 0] > 0
    keep = ~(grow(mask_a) | grow(mask_b))
    err = ((a - b) ** 2).mean(-1)
    mse = (err * keep).flatten(1).sum(1) / keep.flatten(1).sum(1).clamp(min=1)
    return 10 * torch.log10(1.0 / mse.clamp(min=1e-10))


def run(args):
    import numpy as np
    import torch

    from core.student_data import structure_score
    from scripts import comfy_host
    from world import render
    from world.judge import load_judge, mask_iou, predict
    from world.taesd import psnr

    nodes = comfy_host.boot(args.comfyui, device="cpu")
    comfy_host.load_pack()
    import folder_paths
    folder_paths.add_model_folder_path("checkpoints", os.path.dirname(os.path.abspath(args.ckpt)))
    call = comfy_host.call_node
    model, clip, vae = call(nodes.CheckpointLoaderSimple, ckpt_name=os.path.basename(args.ckpt))
    flow = "SD3" in type(model.model.model_config).__name__ or "Flux" in type(model.model.model_config).__name__
    # stock samplers: Euler along the model's own schedule; the prompt swap regenerates the inversion's own steps
    ksampler = ("euler", "simple" if flow else "normal")
    swap_sampler = "euler" if flow else "ddim"
    counter = CallCounter(model.model.diffusion_model)
    judge = load_judge(args.judge)
    images = held_out_images(args.images, args.seed)
    directions = {}

    def direction(source, target):
        if (source, target) not in directions:
            directions[(source, target)] = call(
                "P2PZ_BuildDirection", clip=clip, source=source, target=target, sentence_source="custom",
                count=args.sentences, seed=0, kind="auto",
                source_sentences="\n".join(render.concept_sentences(source, args.sentences)),
                target_sentences="\n".join(render.concept_sentences(target, args.sentences)))[0]
        return directions[(source, target)]

    def timed(node, **inputs):
        """call(node, **inputs) with its model calls and seconds"""
        counter.take()
        t0 = time.monotonic()
        out = call(node, **inputs)
        return out, counter.take(), time.monotonic() - t0

    rows = []  # one per (image, edit kind, method)
    started = time.monotonic()
    for n, item in enumerate(images):
        pixels = torch.from_numpy(np.asarray(item["image"], dtype=np.float32))[None]  # [1, 64, 64, 3] in [0, 1]
        (latent,) = call(nodes.VAEEncode, vae=vae, pixels=pixels)
        (positive,) = call(nodes.CLIPTextEncode, clip=clip, text=item["caption"])
        truth = item["attributes"]
        inverted = {}  # (regularize, fixed_point_iters) -> (inverted latent, regeneration sigmas, calls, seconds)
        for kind in args.edits:
            source = truth[kind]
            target = _next(render.ATTRIBUTES[kind], source)
            (edited_positive,) = call(nodes.CLIPTextEncode, clip=clip,
                                      text=edited_caption(item["caption"], source, target))
            reach = direction_reach(positive, edited_positive, direction(source, target))
            for name in args.methods:
                m = METHODS[name]
                recon, inv_calls, inv_seconds = None, 0.0, 0.0
                gradient_steps = []  # the guidance's steps on the edited branch (p2pz methods with lambda_xa > 0)
                if m["kind"] in ("p2pz", "prompt_swap"):
                    key = (m["regularize"], m["fixed_point_iters"])
                    if key not in inverted:
                        strength = 20.0 if m["regularize"] else 0.0
                        out, calls, seconds = timed(
                            "P2PZ_InvertLatent", model=model, conditioning=positive, latent=latent, steps=args.steps,
                            schedule="diffusers", lambda_ac=strength, lambda_kl=strength,
                            reg_steps=5 if m["regularize"] else 0, ac_rolls=5, seed=args.seed,
                            fixed_point_iters=m["fixed_point_iters"])
                        inverted[key] = (out[0], out[1], calls, seconds)
                    inv, sigmas, inv_calls, inv_seconds = inverted[key]
                if m["kind"] == "p2pz":
                    edit = ({"edited_positive": edited_positive} if m.get("edit") == "caption"
                            else {"direction": direction(source, target)})
                    if "guided_fraction" in m:  # Guided Edit Options; without it each family's default
                        (edit["options"],) = call("P2PZ_GuidedEditOptions", guided_fraction=m["guided_fraction"],
                                                  block_stride=1, checkpoint_blocks=True)
                    with scaled_lambda(comfy_host, m.get("lambda_scale", 1.0)), \
                            recorded_gradient_steps(comfy_host, gradient_steps):
                        (edited, recon), calls, seconds = timed(
                            "P2PZ_GuidedEdit", model=model, positive=positive, inverted_latent=inv,
                            steps=args.steps, cfg=args.cfg, lambda_xa=m["lambda_xa"], guidance="references", **edit)
                elif m["kind"] == "prompt_swap":
                    (sampler,) = call("KSamplerSelect", sampler_name=swap_sampler)
                    plain = {k: v for k, v in inv.items() if k == "samples"}
                    (edited, _), calls, seconds = timed(
                        "SamplerCustom", model=model, add_noise=False, noise_seed=0, cfg=args.cfg,
                        positive=edited_positive, negative=positive, sampler=sampler, sigmas=sigmas,
                        latent_image=plain)
                else:  # sdedit
                    (edited,), calls, seconds = timed(
                        nodes.KSampler, model=model, seed=args.seed + n, steps=args.steps, cfg=args.cfg,
                        sampler_name=ksampler[0], scheduler=ksampler[1], positive=edited_positive,
                        negative=positive, latent_image=latent, denoise=m["denoise"])
                (edited_img,) = call(nodes.VAEDecode, vae=vae, samples=edited)
                recon_img = call(nodes.VAEDecode, vae=vae, samples=recon)[0].float().cpu() if recon else None
                rows.append({"image": n, "kind": kind, "method": name, "source": source, "target": target,
                             "truth": truth, "input": pixels, "input_mask": torch.from_numpy(item["mask"])[None],
                             "edited": edited_img.float().cpu(), "reconstruction": recon_img,
                             "calls": inv_calls + calls, "seconds": inv_seconds + seconds, "reach": reach,
                             "gradient_steps": gradient_steps})
        print(f"[{time.monotonic() - started:6.0f} s] image {n + 1}/{len(images)}: {item['caption']!r}",
              flush=True)

    # the judge reads inputs and edits in one batch each
    inputs = torch.cat([r["input"] for r in rows])
    edits = torch.cat([r["edited"] for r in rows])
    read_in, read_ed = predict(judge, inputs), predict(judge, edits)
    iou = mask_iou(read_in["mask"], read_ed["mask"])
    edges = structure_score(inputs.permute(0, 3, 1, 2), edits.permute(0, 3, 1, 2))
    true_masks = torch.cat([r["input_mask"] for r in rows])
    bg = background_psnr(inputs, edits, true_masks, read_ed["mask"])
    with_rec = [i for i, r in enumerate(rows) if r["reconstruction"] is not None]
    if with_rec:
        recons = torch.cat([rows[i]["reconstruction"] for i in with_rec])
        read_rec = predict(judge, recons)
        rec_psnr = psnr(recons.permute(0, 3, 1, 2), inputs[with_rec].permute(0, 3, 1, 2))
        rec_iou = mask_iou(read_in["mask"][with_rec], read_rec["mask"])
        for j, i in enumerate(with_rec):
            reads = {a: read_rec[a][j] for a in render.ATTRIBUTES}
            rows[i].update(reconstruction_psnr=float(rec_psnr[j]), reconstruction_reads=reads,
                           reconstruction_right=all(reads[a] == rows[i]["truth"][a] for a in render.ATTRIBUTES),
                           reconstruction_iou=float(rec_iou[j]))
    for i, r in enumerate(rows):
        others = [a for a in render.ATTRIBUTES if a != r["kind"]]
        input_reads = {a: read_in[a][i] for a in render.ATTRIBUTES}
        r.update(accurate=read_ed[r["kind"]][i] == r["target"],
                 kept=all(read_ed[a][i] == r["truth"][a] for a in others),
                 kept_fraction=float(np.mean([read_ed[a][i] == r["truth"][a] for a in others])),
                 iou=float(iou[i]), edges=float(edges[i]), background_psnr=float(bg[i]),
                 edited_reads=read_ed[r["kind"]][i],
                 input_reads=input_reads,
                 input_right=all(input_reads[a] == r["truth"][a] for a in render.ATTRIBUTES))

    summary = {"checkpoint": os.path.abspath(args.ckpt), "model": type(model.model.model_config).__name__,
               "images": len(images), "steps": args.steps, "cfg": args.cfg,
               "seconds": round(time.monotonic() - started, 1), "forward_equivalent_rule":
               f"one row of a forward pass = 1, with gradients = {GRADIENT_PASS_COST}", "results": {}}
    for name in args.methods:
        for kind in args.edits:
            sel = [r for r in rows if r["method"] == name and r["kind"] == kind]
            mean = lambda key, s=sel: round(float(np.mean([float(r[key]) for r in s])), 3)
            res = {"edit_accuracy": mean("accurate"), "kept": mean("kept"), "kept_fraction": mean("kept_fraction"),
                   "both": round(float(np.mean([r["accurate"] and r["kept"] for r in sel])), 3),
                   "mask_iou": mean("iou"), "edge_correlation": mean("edges"), "background_psnr": mean("background_psnr"),
                   "calls_per_edit": mean("calls"), "calls_per_step": round(mean("calls") / args.steps, 2),
                   "seconds_per_edit": mean("seconds"), "direction_reach": mean("reach"), "n": len(sel),
                   "edited_reads": {v: sum(r["edited_reads"] == v for r in sel) for v in render.ATTRIBUTES[kind]}}
            steps = [g for r in sel for g in r["gradient_steps"]]
            if steps:  # medians over every guided step of every edit: the step the guidance takes, and what drives it
                res.update(relative_step_median=float(np.median([g["relative_step"] for g in steps])),
                           map_loss_median=float(np.median([g["map_loss"] for g in steps])))
            if "reconstruction_psnr" in sel[0]:
                res.update(reconstruction_psnr=mean("reconstruction_psnr"),
                           reconstruction_right=mean("reconstruction_right"))
            summary["results"][f"{name}/{kind}"] = res
    summary["judge_on_inputs"] = round(float(np.mean([r["input_right"] for r in rows])), 3)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        _grid(rows, args, os.path.join(args.out, "grid.png"))
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump({"summary": summary}, f, indent=1)
        with open(os.path.join(args.out, "table.md"), "w") as f:
            f.write(markdown_table(summary) + "\n")
    drop = ("input", "input_mask", "edited", "reconstruction")
    return {"summary": summary, "rows": [{k: v for k, v in r.items() if k not in drop} for r in rows]}


def markdown_table(summary):
    head = ("| method / edit | edit accuracy | kept (other 4) | both | mask IoU | edge corr. | background PSNR | "
            "reconstruction PSNR | calls / edit | s / edit | guidance step / latent |")
    lines = [head, "|" + " --- |" * 11]
    for key, r in summary["results"].items():
        rec = f"{r['reconstruction_psnr']:.1f} dB" if "reconstruction_psnr" in r else ""
        push = f"{r['relative_step_median']:.1e}" if "relative_step_median" in r else ""
        lines.append(f"| {key} | {r['edit_accuracy']:.0%} | {r['kept']:.0%} | {r['both']:.0%} | {r['mask_iou']:.2f} | "
                     f"{r['edge_correlation']:.2f} | {r['background_psnr']:.1f} dB | {rec} | {r['calls_per_edit']:.0f} | "
                     f"{r['seconds_per_edit']:.1f} | {push} |")
    return "\n".join(lines)


def _grid(rows, args, path, max_images=8):
    """Per image and edit kind, a row: input, reconstruction (the first p2pz method's), then each method's edit; 2x scale."""
    import numpy as np
    from PIL import Image

    lines = []
    keys = []
    for r in rows:
        if (r["image"], r["kind"]) not in keys and r["image"] < max_images:
            keys.append((r["image"], r["kind"]))
    for image, kind in keys:
        sel = {r["method"]: r for r in rows if r["image"] == image and r["kind"] == kind}
        rec = next((sel[m]["reconstruction"] for m in args.methods if sel[m]["reconstruction"] is not None),
                   sel[args.methods[0]]["input"])
        tiles = [sel[args.methods[0]]["input"][0], rec[0]] + [sel[m]["edited"][0] for m in args.methods]
        lines.append(np.concatenate([np.asarray(t.clamp(0, 1) * 255, dtype=np.uint8) for t in tiles], axis=1))
    sheet = np.concatenate(lines, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path)


if __name__ == "__main__":
    sys.exit(main())
