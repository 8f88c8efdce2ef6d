"""Train the world's models: ``python -m world.train --out DIR --seed 0 [--part vae|judge|sd15|all] [--minutes N]
[--reduced] [--comfyui PATH]``.

Parts (in the order ``all`` runs them): ``judge`` (renders only), ``vae`` (TAESD layout, renders only),
``vae_refine`` (the decoder alone at full resolution, encoder fixed), ``vae_refine_all`` (encoder and decoder, every
block), ``sd15`` and ``sd3`` (the SD 1.x and SD 3.x layouts; need ComfyUI: $COMFYUI_PATH or --comfyui; use the
VAE). Every part is resumable: run the same command again and
it continues from its last checkpoint in DIR; a finished part is skipped, or resumed to its default where that
has grown since it ran. ``--minutes`` caps each part's wall time
(the part then saves, exports what it has, and a later run continues). ``--reduced``: the CI-sized world.

Outputs in DIR: judge.safetensors (+ .json report), taesd.safetensors (+ .json), checkpoints/world-sd15*.safetensors
and world-sd3*.safetensors (+ .json), data/ (cached renders and caption embeddings), *.ckpt (resume state).
"""

import argparse
import os
import sys
import time

PARTS = ("judge", "vae", "vae_refine", "vae_refine_all", "sd15", "sd3")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m world.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output folder (weights, caches, resume state)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (weights, data order, noise)")
    ap.add_argument("--world-seed", type=int, default=0, help="the renderer's seed (which images)")
    ap.add_argument("--part", choices=PARTS + ("all",), default="all")
    ap.add_argument("--minutes", type=float, default=None, help="wall-time cap per part")
    ap.add_argument("--reduced", action="store_true", help="CI-sized world: small models, few steps")
    ap.add_argument("--comfyui", default=None, help="ComfyUI folder for the sd15 and sd3 parts (default $COMFYUI_PATH)")
    ap.add_argument("--steps", type=int, default=None,
                    help="override the planned step count of the part(s) (the schedule follows it)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = ap.parse_args(argv)

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    parts = PARTS if args.part == "all" else (args.part,)
    from . import loop
    reports = {"judge": "judge.json", "vae": "taesd.json", "vae_refine": "taesd-refine.json",
               "vae_refine_all": "taesd-refine-all.json", "sd15": os.path.join("checkpoints", "world-sd15.json"),
               "sd3": os.path.join("checkpoints", "world-sd3.json")}
    for part in parts:
        t0 = time.time()
        done = _finished(os.path.join(out, reports[part]))
        steps = args.steps
        if done and not steps:
            default = _default_steps(part, args.reduced)
            if done >= default:
                loop.log(f"part {part}: already finished ({done} steps; delete {reports[part]} to redo it)")
                continue
            # finished under an earlier, shorter default (SD 1.x 800 -> 4,600, SD 3.x 4,000 -> 8,000): resumed, its
            # schedule stretched to the default, as --steps does
            loop.log(f"part {part}: finished at {done} steps, the default is now {default}: resuming to it")
            steps = default
        loop.log(f"part {part}: start (seed {args.seed}, reduced={args.reduced}, minutes={args.minutes})")
        if part == "judge":
            from .judge import train_judge
            train_judge(out, seed=args.seed, reduced=args.reduced, minutes=args.minutes, world_seed=args.world_seed,
                        steps=steps)
        elif part == "vae":
            from .taesd import train_taesd
            train_taesd(out, seed=args.seed, reduced=args.reduced, minutes=args.minutes, world_seed=args.world_seed,
                        steps=steps)
        elif part in ("vae_refine", "vae_refine_all"):
            from .taesd import refine_taesd
            refine_taesd(out, seed=args.seed, reduced=args.reduced, minutes=args.minutes, world_seed=args.world_seed,
                         steps=steps, stage="decoder" if part == "vae_refine" else "all")
        elif part == "sd15":
            from .sd15 import train_sd15
            train_sd15(out, seed=args.seed, reduced=args.reduced, minutes=args.minutes, world_seed=args.world_seed,
                       comfyui=args.comfyui, steps=steps)
        elif part == "sd3":
            from .sd3 import train_sd3
            train_sd3(out, seed=args.seed, reduced=args.reduced, minutes=args.minutes, world_seed=args.world_seed,
                      comfyui=args.comfyui, steps=steps)
        loop.log(f"part {part}: done in {time.time() - t0:.0f} s")
    return 0


def _default_steps(part, reduced):
    """The steps a part plans without --steps: its module's configuration table."""
    from . import judge, sd3, sd15, taesd
    table = {"judge": judge.CONFIGS, "vae": taesd.CONFIGS, "vae_refine": taesd.REFINE, "vae_refine_all": taesd.REFINE,
             "sd15": sd15.TRAIN, "sd3": sd3.TRAIN}[part]
    return table["reduced" if reduced else "full"]["steps"]


def _finished(report_path):
    """Steps of a finished part (its report says all planned steps ran), else None."""
    import json
    try:
        with open(report_path, encoding="utf-8") as f:
            r = json.load(f)
    except (OSError, ValueError):
        return None
    return r["steps"] if r.get("steps") and r.get("steps") == r.get("steps_planned") else None


if __name__ == "__main__":
    sys.exit(main())
