"""Do the edits do what they are for? pix2pix-zero on the learned world's SD 1.x checkpoint, read by its judge, on
held-out images.

    COMFYUI_PATH=/path/to/ComfyUI python bench/bench_quality.py --ckpt WORLD/checkpoints/world-sd15-latest.safetensors \\
        --judge WORLD/judge.safetensors [--images 24] [--edits colour shape] [--steps 20] \\
        [--variants paper no_guidance fixed_point_2] [--out DIR] [--json out.json]

Held-out images: renders of the world's test split (attribute combinations never shown in training), each with
its true caption (the world's stand-in for BLIP's; a full template naming shape, colour, position and background).
Each image is edited along one attribute: its colour to the next colour (red -> green -> blue -> yellow -> red) or
its shape to the next shape (circle -> square -> triangle -> star -> circle), with directions built from the
world's own sentences (world.render.concept_sentences: every caption that names the word). The pipeline is the
pack's nodes through ComfyUI, as a user wires them: CheckpointLoaderSimple, VAEEncode, CLIPTextEncode (the caption),
P2PZ_InvertLatent, P2PZ_BuildDirection (custom sentences), P2PZ_GuidedEdit (cfg 5, caption as negative), VAEDecode.

Variants (each on the same images):
- paper: the paper's settings (first-order inversion with the regularization, lambda_xa 0.1);
- no_guidance: lambda_xa 0 (the direction alone: a plain prompt edit, the paper's baseline);
- fixed_point_2: the paper's settings with 2 fixed-point iterations per inversion step (P2PZ_InvertLatent's
  fixed_point_iters, issue 26).

Reported per variant and edit kind (the judge reads every image):
- edit accuracy: the edited image shows the target value;
- kept: the other four attributes still read as the original's truth (the structure the edit must keep);
- both: accuracy and all four kept;
- mask IoU: the judge's object masks of original and edit (colour edits should keep it near the reconstruction's);
- edge correlation: core.student_data.structure_score between the original and the edit;
- reconstruction: the judge reads all five attributes right on the unedited reconstruction, and its PSNR to the
  input (how much the edit loses before any edit: inversion + the world's VAE).
A grid (input, reconstruction, one edit per variant) goes to --out as grid.png.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

VARIANTS = {
    "paper": {"lambda_xa": 0.1, "fixed_point_iters": 0},
    "no_guidance": {"lambda_xa": 0.0, "fixed_point_iters": 0},
    "fixed_point_2": {"lambda_xa": 0.1, "fixed_point_iters": 2},
}
EDIT_KINDS = ("colour", "shape")
SENTENCES = 200  # per word; the world has 3,240 captions per colour, 3,240 per shape


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
        out.append({"image": s["image"], "attributes": s["attributes"], "caption": render.caption(s["attributes"],
                                                                                                   template)})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--edits", nargs="+", choices=EDIT_KINDS, default=list(EDIT_KINDS))
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out")
    ap.add_argument("--json")
    ap.add_argument("--comfyui")
    args = ap.parse_args(argv)
    report = run(args)
    text = json.dumps(report["summary"], indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


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
    judge = load_judge(args.judge)
    images = held_out_images(args.images, args.seed)
    directions = {}

    def direction(source, target):
        if (source, target) not in directions:
            directions[(source, target)] = call(
                "P2PZ_BuildDirection", clip=clip, source=source, target=target, sentence_source="custom",
                count=SENTENCES, seed=0, kind="auto",
                source_sentences="\n".join(render.concept_sentences(source, SENTENCES)),
                target_sentences="\n".join(render.concept_sentences(target, SENTENCES)))[0]
        return directions[(source, target)]

    rows = []  # one per (image, edit kind, variant)
    started = time.monotonic()
    for n, item in enumerate(images):
        pixels = torch.from_numpy(np.asarray(item["image"], dtype=np.float32))[None]  # [1, 64, 64, 3] in [0, 1]
        (latent,) = call(nodes.VAEEncode, vae=vae, pixels=pixels)
        (positive,) = call(nodes.CLIPTextEncode, clip=clip, text=item["caption"])
        truth = item["attributes"]
        inverted = {}
        for kind in args.edits:
            source = truth[kind]
            target = _next(render.ATTRIBUTES[kind], source)
            for name in args.variants:
                v = VARIANTS[name]
                fp = v["fixed_point_iters"]
                if fp not in inverted:
                    inverted[fp] = call("P2PZ_InvertLatent", model=model, conditioning=positive, latent=latent,
                                        steps=args.steps, schedule="diffusers", lambda_ac=20.0, lambda_kl=20.0,
                                        reg_steps=5, ac_rolls=5, seed=args.seed, fixed_point_iters=fp)[0]
                edited, recon = call("P2PZ_GuidedEdit", model=model, positive=positive, inverted_latent=inverted[fp],
                                     steps=args.steps, cfg=args.cfg, lambda_xa=v["lambda_xa"], guidance="references",
                                     direction=direction(source, target))
                (edited_img,) = call(nodes.VAEDecode, vae=vae, samples=edited)
                (recon_img,) = call(nodes.VAEDecode, vae=vae, samples=recon)
                rows.append({"image": n, "kind": kind, "variant": name, "source": source, "target": target,
                             "truth": truth, "input": pixels, "edited": edited_img.float().cpu(),
                             "reconstruction": recon_img.float().cpu()})
        print(f"[{time.monotonic() - started:6.0f} s] image {n + 1}/{len(images)}: {item['caption']!r}",
              flush=True)

    # the judge reads inputs, reconstructions and edits in one batch each
    inputs = torch.cat([r["input"] for r in rows])
    edits = torch.cat([r["edited"] for r in rows])
    recons = torch.cat([r["reconstruction"] for r in rows])
    read_in, read_ed, read_rec = predict(judge, inputs), predict(judge, edits), predict(judge, recons)
    iou = mask_iou(read_in["mask"], read_ed["mask"])
    iou_rec = mask_iou(read_in["mask"], read_rec["mask"])
    edges = structure_score(inputs.permute(0, 3, 1, 2), edits.permute(0, 3, 1, 2))
    rec_psnr = psnr(recons.permute(0, 3, 1, 2), inputs.permute(0, 3, 1, 2))
    for i, r in enumerate(rows):
        others = [a for a in render.ATTRIBUTES if a != r["kind"]]
        r.update(accurate=read_ed[r["kind"]][i] == r["target"],
                 kept=all(read_ed[a][i] == r["truth"][a] for a in others),
                 kept_fraction=float(np.mean([read_ed[a][i] == r["truth"][a] for a in others])),
                 iou=float(iou[i]), iou_reconstruction=float(iou_rec[i]), edges=float(edges[i]),
                 reconstruction_right=all(read_rec[a][i] == r["truth"][a] for a in render.ATTRIBUTES),
                 input_right=all(read_in[a][i] == r["truth"][a] for a in render.ATTRIBUTES),
                 reconstruction_psnr=float(rec_psnr[i]))

    summary = {"checkpoint": os.path.abspath(args.ckpt), "images": len(images), "steps": args.steps,
               "cfg": args.cfg, "seconds": round(time.monotonic() - started, 1), "results": {}}
    for name in args.variants:
        for kind in args.edits:
            sel = [r for r in rows if r["variant"] == name and r["kind"] == kind]
            mean = lambda key: round(float(np.mean([float(r[key]) for r in sel])), 3)  # noqa: E731
            summary["results"][f"{name}/{kind}"] = {
                "edit_accuracy": mean("accurate"), "kept": mean("kept"), "kept_fraction": mean("kept_fraction"),
                "both": round(float(np.mean([r["accurate"] and r["kept"] for r in sel])), 3),
                "mask_iou": mean("iou"), "edge_correlation": mean("edges"),
                "reconstruction_right": mean("reconstruction_right"), "reconstruction_psnr": mean("reconstruction_psnr"),
                "mask_iou_reconstruction": mean("iou_reconstruction"), "n": len(sel)}
    summary["judge_on_inputs"] = round(float(np.mean([r["input_right"] for r in rows])), 3)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        _grid(rows, args, os.path.join(args.out, "grid.png"))
        with open(os.path.join(args.out, "report.json"), "w") as f:
            json.dump({"summary": summary}, f, indent=1)
    return {"summary": summary,
            "rows": [{k: v for k, v in r.items() if k not in ("input", "edited", "reconstruction")} for r in rows]}


def _grid(rows, args, path, max_images=8):
    """Per image and edit kind, a row: input, reconstruction (paper), then each variant's edit; 2x scale."""
    import numpy as np
    from PIL import Image

    lines = []
    keys = []
    for r in rows:
        if (r["image"], r["kind"]) not in keys and r["image"] < max_images:
            keys.append((r["image"], r["kind"]))
    for image, kind in keys:
        sel = {r["variant"]: r for r in rows if r["image"] == image and r["kind"] == kind}
        first = sel[args.variants[0]]
        tiles = [first["input"][0], first["reconstruction"][0]] + [sel[v]["edited"][0] for v in args.variants]
        lines.append(np.concatenate([np.asarray(t.clamp(0, 1) * 255, dtype=np.uint8) for t in tiles], axis=1))
    sheet = np.concatenate(lines, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path)


if __name__ == "__main__":
    sys.exit(main())
