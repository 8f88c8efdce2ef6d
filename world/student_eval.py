"""The fast student on the learned world: the teacher's pairs collected with collect_pairs.py, a student trained on
them with train_student.py, and both read by the judge on held-out captions.

  python -m world.student_eval --ckpt DIR/checkpoints/world-sd15-latest.safetensors --judge DIR/judge.safetensors \\
      --out REPORT_DIR [--source red --target blue] [--train-pairs 160] [--eval-pairs 32] [--steps 20] \\
      [--workers 2] [--student-steps 600]

1. The edit direction is built by the pack's own nodes (Build Edit Direction with the world's sentences for each
   word, world.render.concept_sentences; Save Edit Direction) into REPORT_DIR/base/models/pix2pix_zero_directions.
2. Training pairs: collect_pairs.py --seeds on the world's training captions that name the source word (generate,
   then edit: example 2), with the pack's filters (--min-structure 0.3 --min-change 0.01), Ray actors when
   --workers > 1.
3. Held-out pairs: the same on captions of the held-out test split (never in training), other seeds, no filter.
4. The student: train_student.py on the training pairs, at the pairs' 64 px.
5. The judge reads, on the held-out pairs, the teacher's edit and the student's output of the same input:
   edit accuracy (the target value), kept (the other four attributes as the judge reads them on the input), both,
   the object mask's IoU with the input's, edge correlation with the input (core.student_data.structure_score), and
   the student's L1 distance to the teacher. Writes report.json and grid.png (input, teacher, student).
Every step runs the repository's commands as a user would (subprocesses with this Python).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

from . import render

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _captions_with(word, split):
    """The split's captions that name ``word`` as the source attribute's value (whole word)."""
    return [c for c in render.all_captions(split) if f" {word} " in f" {c} "]


def _build_direction(python, base, ckpt, source, target, name, comfyui):
    code = f"""
import os, sys
sys.path.insert(0, {REPO!r})
from scripts import comfy_host
from world import render
nodes = comfy_host.boot({comfyui!r}, device="cpu", base_directory={base!r})
comfy_host.load_pack()
model, clip, vae = comfy_host.call_node(nodes.CheckpointLoaderSimple, ckpt_name={os.path.basename(ckpt)!r})
d = comfy_host.call_node("P2PZ_BuildDirection", clip=clip, source={source!r}, target={target!r},
    sentence_source="custom", count=1000, seed=0, kind="auto",
    source_sentences="\\n".join(render.concept_sentences({source!r}, 1000)),
    target_sentences="\\n".join(render.concept_sentences({target!r}, 1000)))[0]
comfy_host.call_node("P2PZ_SaveDirection", direction=d, name={name!r})
"""
    subprocess.run([python, "-c", code], check=True, capture_output=True, text=True)


def _collect(python, args, base, seeds, prompts_file, output, filters):
    cmd = [python, os.path.join(REPO, "collect_pairs.py"), "--seeds", seeds, "--prompts-file", prompts_file,
           "--direction", f"{args.source}_to_{args.target}.safetensors", "--edit", f"{args.source} -> {args.target}",
           "--checkpoint", os.path.basename(args.ckpt), "--base-directory", base, "--output", output, "--cpu",
           "--steps", str(args.steps), "--size", "64", *filters]
    if args.workers > 1:
        cmd += ["--workers", str(args.workers), "--cpus-per-worker", "1"]
    if args.comfyui:
        cmd += ["--comfyui", args.comfyui]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"collect_pairs failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = [line for line in done.stdout.splitlines() if line.startswith("done in")]
    return {"seconds": round(time.monotonic() - started, 1), "summary": summary[-1] if summary else done.stdout[-500:]}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m world.student_eval", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ckpt", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--source", default="red")
    ap.add_argument("--target", default="blue")
    ap.add_argument("--train-pairs", type=int, default=160)
    ap.add_argument("--eval-pairs", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--student-steps", type=int, default=600)
    ap.add_argument("--comfyui", default=None)
    ap.add_argument("--judge-only", action="store_true", help="read an earlier run's pairs and student again")
    args = ap.parse_args(argv)
    for word in (args.source, args.target):
        render.concept_attribute(word)  # refuses a word the world does not have
    python = sys.executable
    out = os.path.abspath(args.out)
    if args.judge_only:
        with open(os.path.join(out, "report.json")) as f:
            report = json.load(f)
        report.update(judge_pairs(args, out, os.path.join(out, "students")))
        with open(os.path.join(out, "report.json"), "w") as f:
            json.dump(report, f, indent=1)
        print(json.dumps(report, indent=1))
        return 0
    base = os.path.join(out, "base")
    os.makedirs(os.path.join(base, "models", "checkpoints"), exist_ok=True)
    link = os.path.join(base, "models", "checkpoints", os.path.basename(args.ckpt))
    if not os.path.exists(link):
        os.symlink(os.path.abspath(args.ckpt), link)
    report = {"checkpoint": os.path.abspath(args.ckpt), "edit": f"{args.source} -> {args.target}",
              "steps": args.steps}
    name = f"{args.source}_to_{args.target}"
    if not os.path.exists(os.path.join(base, "models", "pix2pix_zero_directions", f"{name}.safetensors")):
        _build_direction(python, base, args.ckpt, args.source, args.target, name, args.comfyui)
    prompts = {}
    for split in ("train", "test"):
        prompts[split] = os.path.join(out, f"prompts-{split}.txt")
        with open(prompts[split], "w", encoding="utf-8") as f:
            f.write("\n".join(_captions_with(args.source, split)) + "\n")
    report["collect_train"] = _collect(python, args, base, f"0:{args.train_pairs}", prompts["train"],
                                       os.path.join(out, "pairs-train"), ["--min-structure", "0.3",
                                                                          "--min-change", "0.01"])
    report["collect_held_out"] = _collect(python, args, base, f"1000000:{1000000 + args.eval_pairs}",
                                          prompts["test"], os.path.join(out, "pairs-held-out"), [])
    students = os.path.join(out, "students")
    started = time.monotonic()
    trained = subprocess.run(
        [python, os.path.join(REPO, "train_student.py"), os.path.join(out, "pairs-train"), "--output", students,
         "--name", name, "--steps", str(args.student_steps), "--resolution", "64", "--batch-size", "16",
         "--checkpoint-every", "0", "--device", "cpu", "--held-out", "0.1"], capture_output=True, text=True)
    if trained.returncode:
        raise SystemExit(f"train_student failed:\n{trained.stdout[-3000:]}\n{trained.stderr[-3000:]}")
    report["student_training_seconds"] = round(time.monotonic() - started, 1)
    report.update(judge_pairs(args, out, students))
    with open(os.path.join(out, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))
    return 0


def judge_pairs(args, out, students):
    """The judge on the held-out pairs: the teacher's edit against the student's output of the same input."""
    import numpy as np
    import torch

    sys.path.insert(0, REPO)
    from core.student import apply_student, load_student
    from core.student_data import list_pairs, read_image, structure_score

    from .judge import load_judge, mask_iou, predict

    files = sorted(f for f in os.listdir(students) if f.endswith(".safetensors"))
    student = load_student(os.path.join(students, files[-1]))
    student = student[0] if isinstance(student, tuple) else student
    pairs = list_pairs(os.path.join(out, "pairs-held-out"))
    inputs = torch.stack([read_image(p).float() / 255 for _, p, _ in pairs])
    teacher = torch.stack([read_image(p).float() / 255 for _, _, p in pairs])
    with torch.no_grad():
        pupil = apply_student(student, inputs).clamp(0, 1)
    judge = load_judge(args.judge)
    read = {k: predict(judge, v) for k, v in (("input", inputs), ("teacher", teacher), ("student", pupil))}
    kind = render.concept_attribute(args.source)
    others = [a for a in render.ATTRIBUTES if a != kind]
    result = {"held_out_pairs": len(pairs), "student_file": files[-1],
              "inputs_read_as_source": round(float(np.mean([v == args.source for v in read["input"][kind]])), 3)}
    for who in ("teacher", "student"):
        r = read[who]
        acc = [v == args.target for v in r[kind]]
        kept = [all(r[a][i] == read["input"][a][i] for a in others) for i in range(len(pairs))]
        images = teacher if who == "teacher" else pupil
        result[who] = {"edit_accuracy": round(float(np.mean(acc)), 3), "kept": round(float(np.mean(kept)), 3),
                       "both": round(float(np.mean([a and k for a, k in zip(acc, kept)])), 3),
                       "mask_iou": round(float(mask_iou(read["input"]["mask"], r["mask"]).mean()), 3),
                       "edge_correlation": round(float(structure_score(inputs, images).mean()), 3)}
    result["student_l1_to_teacher"] = round(float((pupil - teacher).abs().mean()), 4)
    # what the edits turned into, as the judge reads them, and how often the student lands where the teacher did
    result["edited_reads"] = {who: dict(collections.Counter(read[who][kind])) for who in ("teacher", "student")}
    result["student_agrees_with_teacher"] = round(float(np.mean(
        [s == t for s, t in zip(read["student"][kind], read["teacher"][kind])])), 3)
    from PIL import Image
    rows = [np.concatenate([np.asarray(t.permute(1, 2, 0).clamp(0, 1) * 255, dtype=np.uint8)
                            for t in (inputs[i], teacher[i], pupil[i])], axis=1) for i in range(min(8, len(pairs)))]
    sheet = np.concatenate(rows, axis=0)
    Image.fromarray(sheet).resize((sheet.shape[1] * 3, sheet.shape[0] * 3), Image.NEAREST).save(
        os.path.join(out, "grid.png"))
    return result


if __name__ == "__main__":
    sys.exit(main())
