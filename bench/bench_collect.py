"""Pair collection: pairs per minute of collect_pairs.py with one in-process worker, one Ray actor and two Ray
actors, against the collect graph queued image by image in one ComfyUI (what a user did before), on tiny models.

    COMFYUI_PATH=/path/to/ComfyUI python bench/bench_collect.py [--items 12] [--steps 4] [--size 64] [--json out.json]

Every configuration runs in its own process, one after another, on the same generated-image edits (seeds 0..N-1,
example 2's generate-then-edit workflow, the tests' tiny SD 1.5 checkpoint). Printed per configuration:
- start: seconds from the command's start to its first pair (ComfyUI's start-up, Ray's and the actors', the
  checkpoint's load and the direction's build; the graph's first prompt does the last two);
- per pair: steady seconds per pair, from the moment every worker has finished its first item (start-up, model load
  and the direction's build are in it) to the last pair, and pairs per minute;
- in the worker: seconds per item inside the worker (the graph: the prompt's run, Save Pairs included), and
  dispatch: what a pair costs beyond that (per pair x workers - in the worker: Ray's calls, the PNGs' trip, the
  driver's writing);
- over --rounds interleaved rounds (default 3), the medians, collect's per pair against the graph's, and the
  speed-up of two actors over one.
The two actors share this machine's cores (each gets half, `--cpus-per-worker 1` on 2 cores), so on a CPU the
speed-up shows the scheduling's cost more than what two GPUs would give; on GPUs each actor has its own.
"""
import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CONFIGS = ("graph", "local", "ray1", "ray2")
PROMPT = "a photo of a cat"


def _setup(base):
    """The tiny checkpoint under base/models/checkpoints/tiny.safetensors (built in a throwaway ComfyUI)."""
    code = ("import sys; sys.path.insert(0, %r)\n"
            "from scripts import comfy_host\nfrom fixtures import tiny_models\n"
            "comfy_host.boot(device='cpu')\n"
            "print(tiny_models.tiny_sd15_checkpoint(%r))\n") % (REPO, os.path.join(base, "cache"))
    path = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()[-1]
    os.makedirs(os.path.join(base, "models", "checkpoints"), exist_ok=True)
    os.symlink(path, os.path.join(base, "models", "checkpoints", "tiny.safetensors"))


def _collect_args(args, base, out):
    return ["--seeds", f"0:{args.items}", "--prompt", PROMPT, "--source", "cat", "--target", "dog",
            "--checkpoint", "tiny.safetensors", "--base-directory", base, "--output", out, "--cpu",
            "--steps", str(args.steps), "--sentences", "4", "--size", str(args.size)]


def run_config(name, args, base, out):
    """One configuration, in this process; returns its timings."""
    started = time.monotonic()
    if name == "graph":
        events = _graph(args, base, out)
    else:
        import collect_pairs
        extra = {"local": ["--no-ray"], "ray1": ["--ray", "--workers", "1", "--cpus-per-worker", "2"],
                 "ray2": ["--workers", "2", "--cpus-per-worker", "1"]}[name]
        events = []  # (time, worker, seconds in the worker)

        def on_pool(pool, progress):
            result = progress.result

            def timed(kind, detail=None, seconds=None, worker=None):
                events.append((time.monotonic(), worker, seconds))
                result(kind, detail, seconds, worker)
            progress.result = timed
        status = collect_pairs.main(_collect_args(args, base, out) + extra, on_pool=on_pool, stream=io.StringIO())
        if status != 0:
            raise SystemExit(f"{name}: collect_pairs exited {status}")
    # Steady state: from the moment every worker has finished its first item (start-up, model load and direction
    # build are in it) to the last result, over the results in between; the same for the work inside a worker.
    firsts = {}
    for i, (t, worker, _) in enumerate(events):
        firsts.setdefault(worker, i)
    t0 = events[max(firsts.values())][0]
    steady = [e for i, e in enumerate(events) if i > max(firsts.values())]
    work = [s for i, (_, w, s) in enumerate(events) if i != firsts[w]]
    n = len(events)
    return {"config": name, "pairs": n, "workers": len(firsts), "start_s": events[0][0] - started,
            "per_pair_s": (events[-1][0] - t0) / max(len(steady), 1), "total_s": events[-1][0] - started,
            "work_s": sum(work) / max(len(work), 1)}


def _graph(args, base, out):
    """Example 2 with a Save Pairs node, queued once per seed in one ComfyUI with one executor (caches kept
    between prompts, as the server keeps them)."""
    import edit_image
    from scripts import comfy_host
    from scripts.workflow_api import node_definitions_from_classes, set_widget, ui_to_api

    nodes = comfy_host.boot(device="cpu", base_directory=base)
    comfy_host.load_pack()
    defs = node_definitions_from_classes(nodes.NODE_CLASS_MAPPINGS)
    with open(os.path.join(REPO, "example_workflows", "pix2pix_zero_2_generate_then_edit.json")) as f:
        workflow = json.load(f)
    ns = argparse.Namespace(checkpoint="tiny.safetensors", source="cat", target="dog", seed=0, sentences=4,
                            steps=args.steps, size=args.size, blip=None)
    for node_type, widget, value in edit_image.edit_settings(ns, photo=False):
        workflow = set_widget(workflow, node_type, widget, value, defs)
    prompt = ui_to_api(workflow, defs)
    guided = next(i for i, n in prompt.items() if n["class_type"] == "P2PZ_GuidedEdit")
    decode = {tuple(n["inputs"]["samples"]): i for i, n in prompt.items() if n["class_type"] == "VAEDecode"}
    for i in [i for i, n in prompt.items() if n["class_type"] in ("SaveImage", "PreviewImage")]:
        del prompt[i]
    prompt["save"] = {"class_type": "P2PZ_SavePairs",
                      "inputs": {"original": [decode[(guided, 1)], 0], "edited": [decode[(guided, 0)], 0],
                                 "dataset_name": "bench", "edit": "cat -> dog", "min_structure": 0.0,
                                 "min_change": 0.0}}
    noise = next(i for i, n in prompt.items() if n["class_type"] == "P2PZ_NoiseLatent")
    executor = comfy_host.new_executor()
    events = []
    for seed in range(args.items):
        prompt[noise]["inputs"]["seed"] = seed
        t0 = time.monotonic()
        comfy_host.run_prompt(prompt, executor=executor, capture=None)
        events.append((time.monotonic(), "graph", time.monotonic() - t0))
    return events


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=12)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions (medians are reported)")
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    ap.add_argument("--json")
    ap.add_argument("--one", choices=CONFIGS, help=argparse.SUPPRESS)  # internal: run one config, print JSON
    ap.add_argument("--base", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        out = tempfile.mkdtemp(prefix="p2pz-bench-pairs-")
        try:
            print("RESULT " + json.dumps(run_config(args.one, args, args.base, out)))
        finally:
            shutil.rmtree(out, ignore_errors=True)
        return 0
    base = tempfile.mkdtemp(prefix="p2pz-bench-collect-")
    try:
        _setup(base)
        rows = []
        for round_ in range(args.rounds):  # interleaved rounds: a slow spell of the machine hits every config
            for name in args.configs:
                cmd = [sys.executable, os.path.abspath(__file__), "--one", name, "--base", base, "--items",
                       str(args.items), "--steps", str(args.steps), "--size", str(args.size)]
                done = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
                line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
                if done.returncode or not line:
                    raise SystemExit(f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                r = dict(json.loads(line[-1][7:]), round=round_)
                rows.append(r)
                workers = r["workers"]
                print(f"round {round_} {name:6s} {r['pairs']} pairs  start {r['start_s']:5.1f} s  per pair "
                      f"{r['per_pair_s']:5.2f} s ({60 / r['per_pair_s']:5.1f}/min)  in the worker "
                      f"{r['work_s']:5.2f} s  dispatch {r['per_pair_s'] * workers - r['work_s']:+.2f} s", flush=True)
        med = {name: {k: statistics.median(r[k] for r in rows if r["config"] == name)
                      for k in ("start_s", "per_pair_s", "work_s")} for name in args.configs}
        print(f"medians over {args.rounds} rounds:")
        for name, m in med.items():
            print(f"  {name:6s} start {m['start_s']:5.1f} s  per pair {m['per_pair_s']:5.2f} s "
                  f"({60 / m['per_pair_s']:5.1f} pairs/min)  in the worker {m['work_s']:5.2f} s")
        if "graph" in med:
            for name in ("local", "ray1", "ray2"):
                if name in med:
                    print(f"  {name} vs graph: per pair {med[name]['per_pair_s'] / med['graph']['per_pair_s']:.2f}x")
        if "ray1" in med and "ray2" in med:
            print(f"  two actors vs one: {med['ray1']['per_pair_s'] / med['ray2']['per_pair_s']:.2f}x pairs per "
                  f"minute")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"items": args.items, "steps": args.steps, "size": args.size, "rows": rows,
                           "medians": med}, f, indent=1)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
