"""Exact inversion: how close P2PZ_InvertLatent's round trip through a stock sampler comes, by fixed-point iterations.

    COMFYUI_PATH=/path/to/ComfyUI python bench/bench_roundtrip.py [--iterations 0 1 2 3] [--json out.json]

For each model (ComfyUI's real layouts, in-process, CPU):
- "sd15": the tests' tiny SD 1.5 with a denoiser-like smooth response to its input (fixtures.tiny_models.smooth_sd15),
  regenerated with stock SamplerCustom (ddim, cfg 1, add_noise off) along the node's regeneration_sigmas;
- "sd3", "flux": the tests' tiny SD 3.x / Flux MMDiTs with raw random weights (far more input-sensitive than a
  trained model, so the hard case), regenerated with SamplerCustom (euler, cfg 1, add_noise off),
the node inverts a smooth latent with regularization off (the round trip is then a property of the inversion alone;
--regularize: with the paper's regularization)
and fixed_point_iters 0 (the paper's first-order inversion), 1, 2, 3. Printed: relative round-trip error
rms(regenerated - latent) / rms(latent), the ratio to first-order at the same steps, and model calls per step
(1 + iterations).

--world CKPT (repeatable): a learned-world checkpoint (world.sd15 / world.sd3, trained on the world's renders), loaded
by stock CheckpointLoaderSimple; its latents are VAEEncode of 4 held-out renders (the test split) and its conditioning
their captions through CLIPTextEncode; regenerated with ddim (SD 1.x) or euler (SD 3.x), cfg 1, as above; steps 10,
20, 50 (--world-steps N ...: others). A trained model's smooth velocity / noise field is the case issue 26's bar is
about.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

STEPS = {"sd15": (10, 50), "sd3": (8, 16, 50), "flux": (8, 16, 50)}


def _smooth_latent(channels, size=8, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, channels, size // 2, size // 2, generator=g)
    return {"samples": torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear")}


def _model(family):
    from fixtures import tiny_models
    if family == "sd15":
        model, _clip, _vae = tiny_models.smooth_sd15()
        cond = tiny_models.tiny_conditioning(32, None, seed=1)
        return model, cond, _smooth_latent(4), "ddim"
    model, width, pooled = tiny_models.tiny_mmdit_model(family, seed=7)
    return model, tiny_models.tiny_flow_conditioning(width, pooled, seed=1), _smooth_latent(16), "euler"


WORLD_STEPS = (10, 20, 50)
_WORLD = {}


def _world_model(path, images=4):
    """A world checkpoint through stock nodes: (MODEL, caption conditioning, LATENT of held-out renders, sampler)."""
    if path not in _WORLD:
        import folder_paths
        import numpy as np
        import torch

        import nodes
        from bench.bench_quality import held_out_images
        from scripts.comfy_host import call_node
        folder_paths.add_model_folder_path("checkpoints", os.path.dirname(os.path.abspath(path)))
        model, clip, vae = call_node(nodes.CheckpointLoaderSimple, ckpt_name=os.path.basename(path))
        items = held_out_images(images)
        pixels = torch.from_numpy(np.stack([np.asarray(i["image"], dtype=np.float32) for i in items]))
        latent = call_node(nodes.VAEEncode, vae=vae, pixels=pixels)[0]
        conds = [call_node(nodes.CLIPTextEncode, clip=clip, text=i["caption"])[0] for i in items]
        cond = [[torch.cat([c[0][0] for c in conds]), {k: torch.cat([c[0][1][k] for c in conds])
                                                       for k in conds[0][0][1] if k == "pooled_output"}]]
        flow = type(model.model.model_config).__name__.startswith("SD3")
        _WORLD[path] = (model, cond, latent, "euler" if flow else "ddim")
    return _WORLD[path]


def round_trip(family, steps, iterations, regularize=False):
    from scripts.comfy_host import call_node
    model, cond, latent, sampler_name = _world_model(family) if family.endswith(".safetensors") else _model(family)
    inverted, sigmas = call_node("P2PZ_InvertLatent", model=model, conditioning=cond, latent=latent, steps=steps,
                                 schedule="diffusers", lambda_ac=20.0 * regularize, lambda_kl=20.0 * regularize,
                                 reg_steps=5 * regularize, ac_rolls=5 * regularize, seed=0,
                                 fixed_point_iters=iterations)
    sampler = call_node("KSamplerSelect", sampler_name=sampler_name)[0]
    back = call_node("SamplerCustom", model=model, add_noise=False, noise_seed=0, cfg=1.0, positive=cond,
                     negative=cond, sampler=sampler, sigmas=sigmas, latent_image=inverted)[0]["samples"]
    ref = latent["samples"]
    return float((back - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", nargs="*", default=list(STEPS), choices=list(STEPS))
    ap.add_argument("--iterations", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--regularize", action="store_true",
                    help="with the paper's noise regularization (lambda 20, 5 x 5 steps); the round trip is then not "
                         "expected to be exact: the regularization moves the noise on purpose")
    ap.add_argument("--world", action="append", default=[], metavar="CKPT",
                    help="also a learned-world checkpoint (world/), on held-out renders; repeatable")
    ap.add_argument("--world-steps", nargs="+", type=int, default=list(WORLD_STEPS),
                    help=f"step counts for the --world checkpoints (default {' '.join(map(str, WORLD_STEPS))})")
    ap.add_argument("--json", default=None, help="also write the table as JSON here")
    args = ap.parse_args(argv)
    import torch

    from scripts import comfy_host
    comfy_host.boot(device="cpu")
    comfy_host.load_pack()
    rows = []
    with torch.inference_mode():
        for family in args.families + [os.path.abspath(w) for w in args.world]:
            for steps in (args.world_steps if family.endswith(".safetensors") else STEPS[family]):
                first = None
                for n in args.iterations:
                    err = round_trip(family, steps, n, args.regularize)
                    first = err if n == 0 else first
                    rows.append({"model": os.path.basename(family), "regularized": args.regularize, "steps": steps, "iterations": n, "calls_per_step": 1 + n,
                                 "relative_error": err, "vs_first_order": (first / err) if first and n else None})
                    print(json.dumps(rows[-1]), flush=True)
    print("\n| model | steps | iterations | calls / step | relative round-trip error | first-order / this |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['vs_first_order']:.1f}x" if r["vs_first_order"] else "-"
        print(f"| {r['model']} | {r['steps']} | {r['iterations']} | {r['calls_per_step']} | "
              f"{r['relative_error']:.2e} | {ratio} |")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"comfyui": comfy_host.comfyui_version(), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
