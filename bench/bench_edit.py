"""pix2pix-zero invert + edit: this pack's nodes vs diffusers' StableDiffusionPix2PixZeroPipeline, same weights.

    COMFYUI_PATH=/path/to/ComfyUI python bench/bench_edit.py                     # CPU: tiny SD 1.5 UNet, 256 px
    COMFYUI_PATH=/path/to/ComfyUI python bench/bench_edit.py --device cuda --dtype fp16 --full-sd15 --size 512

One run builds one UNet with random weights (seeded) in ComfyUI's SD 1.5 layout, copies it into a diffusers
UNet2DConditionModel with ComfyUI's own key map (comfy.utils.unet_to_diffusers), and then runs, each side in a
FRESH subprocess so that one side's memory cannot hide in the other's:
- ours: P2PZ_InvertLatent (regularized DDIM inversion) then P2PZ_GuidedEdit (cross-attention guidance), called as
  ComfyUI's executor calls nodes (under torch.inference_mode), negative not connected (= the caption);
- diffusers: pipe.invert(...) then pipe(...) with negative_prompt_embeds = the caption (so both do the same work:
  the authors' real-image setting), cross_attention_guidance_amount 0.1, guidance_scale 5.
Same latent, caption embedding and direction, same size and steps; regularization at the references' defaults
(lambda_ac 20, lambda_kl 20, 5 x 5 steps). Default (reference-faithful) guidance mode.

Measured per side, around invert + edit only (model loading excluded): wall time (the best of --repeats runs), the
process's CPU time (user + system, the least of the runs, with its split; on a machine shared with other work it shows
the work done far more steadily than wall time) and peak memory above the level just before the run. CPU: the process's resident-set high-water mark (VmHWM, reset
through /proc/self/clear_refs right before the run, so everything torch allocates counts and nothing before);
CUDA: torch.cuda.max_memory_allocated (absolute, weights included, and the part above the pre-run level). A side
that runs out of memory is reported as such. Prints both sides and the ratios ours / diffusers.

Models (--model): "tiny" = the tests' SD 1.5 structure at 32 channels (3.2M parameters, context width 32, 16 attn2
layers, where attention is a large share of the work); "mini" = the tests' checkpoint UNet (320 channels, context
768, two levels, 44M parameters); "sd15" (= --full-sd15) = the full SD 1.5 UNet (860M parameters).
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def unet_config(name):
    from fixtures import tiny_models

    return {"tiny": tiny_models.TINY_UNET_CONFIG, "mini": tiny_models.CKPT_UNET_CONFIG, "sd15": SD15_UNET_CONFIG}[name]


def diffusers_unet(cfg):
    """A diffusers UNet2DConditionModel with the block structure of a ComfyUI SD 1.x unet_config."""
    from diffusers import UNet2DConditionModel

    levels, per_level = len(cfg["channel_mult"]), cfg["num_res_blocks"][0]
    depth_out = cfg["transformer_depth_output"]  # ComfyUI pops it from the end: output block j gets [-(j + 1)]
    down = ["CrossAttnDownBlock2D" if cfg["transformer_depth"][lv * per_level] else "DownBlock2D"
            for lv in range(levels)]
    up = ["CrossAttnUpBlock2D" if depth_out[len(depth_out) - 1 - u * (per_level + 1)] else "UpBlock2D"
          for u in range(levels)]
    return UNet2DConditionModel(
        sample_size=cfg["image_size"], in_channels=4, out_channels=4, layers_per_block=per_level,
        block_out_channels=tuple(cfg["model_channels"] * m for m in cfg["channel_mult"]),
        down_block_types=tuple(down), up_block_types=tuple(up), cross_attention_dim=cfg["context_dim"],
        attention_head_dim=cfg["num_heads"], use_linear_projection=cfg["use_linear_in_transformer"],
        norm_num_groups=32,
    )


# ---------------------------------------------------------------------------------------------------------------
# Measuring

def _hwm_kib():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))


def _cpu_seconds():
    """(user, system) CPU time of this process: the work done, much less sensitive than wall time to other
    processes sharing the CPU. System time is mostly page faults of fresh allocations."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _rss_kib():
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1))


class Meter:
    """Wall time and peak memory above the level at start() of one run."""

    def __init__(self, device):
        self.device = device

    def start(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current resident set
            self.base = _rss_kib() * 1024
        self.cpu0 = _cpu_seconds()
        self.t0 = time.perf_counter()

    def stop(self):
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            seconds = time.perf_counter() - self.t0
            peak = torch.cuda.max_memory_allocated()
        else:
            seconds = time.perf_counter() - self.t0
            peak = _hwm_kib() * 1024
        user, system = (b - a for a, b in zip(self.cpu0, _cpu_seconds()))
        return {"seconds": seconds, "cpu_seconds": user + system, "user_seconds": user, "system_seconds": system,
                "peak_bytes": peak,
                "base_bytes": self.base, "delta_bytes": peak - self.base}


def inputs(args, width):
    import torch

    g = torch.Generator().manual_seed(args.seed)
    side = args.size // 8
    latent = torch.randn(1, 4, side, side, generator=g)  # in the UNet's latent units (ComfyUI: after process_in)
    caption = torch.randn(1, 77, width, generator=g)
    direction = 0.3 * torch.randn(1, 77, width, generator=g)
    return latent, caption, direction


def host_attention(args):
    """comfy_host.boot's attention for --attention: "pytorch", or None for ComfyUI's default."""
    return "pytorch" if args.attention == "pytorch" else None


def run_ours(args, weights_path, cfg, instrument=None):
    """Our invert + edit, --repeats runs; instrument(diffusion_model), if given, is called once before the runs."""
    import torch

    from scripts import comfy_host

    # attention "pytorch" is ComfyUI's --use-pytorch-cross-attention (fused SDPA; the default on NVIDIA GPUs)
    comfy_host.boot(device=args.device, attention=host_attention(args))
    comfy_host.load_pack()
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    with torch.inference_mode():  # as CheckpointLoaderSimple runs: the weights are inference tensors
        config = comfy.supported_models.SD15(dict(cfg))
        config.set_inference_dtype(dtype, None)
        model = config.get_model({})
        model.diffusion_model.load_state_dict(comfy.utils.load_torch_file(weights_path))
        model.eval()
        if instrument is not None:
            instrument(model.diffusion_model)
        patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                                   offload_device=mm.unet_offload_device())
    latent, caption, direction = inputs(args, cfg["context_dim"])
    scale = model.latent_format.scale_factor
    positive = [[caption, {}]]
    edited = [[caption + direction, {}]]
    image = {"samples": latent / scale}  # VAEEncode's units
    meter = Meter(args.device)
    results = []
    for _ in range(args.repeats):
        mm.load_models_gpu([patcher])  # weights on the device before the meter starts, as diffusers' are
        meter.start()
        inverted, _ = comfy_host.call_node(
            "P2PZ_InvertLatent", model=patcher, conditioning=positive, latent=image, steps=args.steps,
            schedule="diffusers", lambda_ac=20.0, lambda_kl=20.0, reg_steps=5, ac_rolls=5, seed=0,
            fixed_point_iters=0)  # first-order, as diffusers' side and the paper (the node's default solves each step)
        out, _ = comfy_host.call_node(
            "P2PZ_GuidedEdit", model=patcher, positive=positive, inverted_latent=inverted, steps=args.steps, cfg=5.0,
            lambda_xa=0.1, guidance="references", edited_positive=edited)
        results.append(meter.stop())
        mm.unload_all_models()  # the next repeat starts from the same state (model loaded inside the nodes)
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return results, out["samples"] * scale


def run_diffusers(args, weights_path, cfg):
    import torch
    from fixtures.diffusers_tiny import tiny_pix2pix_zero_pipeline
    from safetensors.torch import load_file

    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    unet = diffusers_unet(cfg)
    unet.load_state_dict(load_file(weights_path), strict=True)
    pipe = tiny_pix2pix_zero_pipeline(unet.eval()).to(args.device, dtype)
    latent, caption, direction = (t.to(args.device, dtype) for t in inputs(args, cfg["context_dim"]))
    meter = Meter(args.device)
    results = []
    for _ in range(args.repeats):
        meter.start()
        try:
            inverted = pipe.invert(image=latent, prompt_embeds=caption, num_inference_steps=args.steps,
                                   output_type="latent").latents
            out = pipe(prompt_embeds=caption, negative_prompt_embeds=caption, source_embeds=torch.zeros_like(direction),
                       target_embeds=direction, num_inference_steps=args.steps, guidance_scale=5.0,
                       cross_attention_guidance_amount=0.1, latents=inverted, output_type="latent").images
        except torch.OutOfMemoryError as e:
            results.append({"oom": str(e).splitlines()[0], "peak_bytes": torch.cuda.max_memory_allocated()})
            break
        results.append(meter.stop())
        if args.device == "cuda":
            torch.cuda.empty_cache()
    return results, out if not results[-1].get("oom") else None


def child(args):
    import torch

    cfg = unet_config(args.model)
    weights = os.path.join(args.workdir, f"{args.side}.safetensors")
    results, edited = (run_ours if args.side == "ours" else run_diffusers)(args, weights, cfg)
    if edited is not None:
        torch.save(edited.float().cpu(), os.path.join(args.workdir, f"{args.side}_edited.pt"))
    print("RESULT " + json.dumps({"side": args.side, "runs": results, "threads": torch.get_num_threads()}))


def seeded_unets(cfg, seed):
    """(ComfyUI's diffusion model, diffusers' UNet2DConditionModel) for a ComfyUI SD 1.x unet_config, with the same
    float32 weights: seeded in ComfyUI's layout, copied with ComfyUI's own key map. ComfyUI must be booted."""
    import torch
    import comfy.supported_models
    import comfy.utils

    from fixtures import tiny_models

    config = comfy.supported_models.SD15(dict(cfg))
    config.set_inference_dtype(torch.float32, None)
    ours = config.get_model({}).diffusion_model
    tiny_models.init_module_weights(ours, seed)
    state = ours.state_dict()
    theirs = diffusers_unet(cfg)
    key_map = comfy.utils.unet_to_diffusers(cfg)  # diffusers key -> ComfyUI key
    theirs.load_state_dict({k: state[key_map[k]] for k in theirs.state_dict()}, strict=True)
    return ours, theirs


def build_weights(args, workdir):
    """One seeded UNet in ComfyUI's layout, saved twice: ComfyUI keys (ours) and diffusers keys (theirs)."""
    import torch
    from safetensors.torch import save_file

    from scripts import comfy_host

    comfy_host.boot(device="cpu", attention=host_attention(args))  # a later run_ours in this process boots no more
    ours, theirs = seeded_unets(unet_config(args.model), args.seed)
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    for name, module in (("ours", ours), ("diffusers", theirs)):
        state = {k: v.detach().to(dtype).contiguous() for k, v in module.state_dict().items()}
        save_file(state, os.path.join(workdir, f"{name}.safetensors"))
    return sum(v.numel() for v in ours.state_dict().values())


def model_calls(args):
    """--calls: the model calls each side's invert + edit makes per step, timed on the same weights in one process.

    Both UNets get the same seeded weights and run under torch.inference_mode (the gradient passes leave it) with
    SDPA attention (ComfyUI booted with --use-pytorch-cross-attention; the pack's guided run uses SDPA on the CPU
    too). Printed: each call's CPU time (the least of --repeats timings of 3 calls each), then the model work per
    step of each pipeline:
      ours:      invert 1 row + reference 1 row (negative = caption) + gradient pass 2 rows, gradient w.r.t. the
                 latent only (an upper bound: the pack's pass stops at the last cross-attention layer) + CFG 2 rows;
      diffusers: invert 1 row + reference 2 rows + gradient pass 2 rows (loss.backward() also fills every weight's
                 .grad: the UNet's parameters require grad) + CFG 2 rows.
    Their ratio is the CPU-time ratio that model work alone gives; the full run adds the regularization and the maps
    (ours) and the system time of fresh allocations (mostly diffusers'), so its ratio comes out lower."""
    import torch

    from scripts import comfy_host

    comfy_host.boot(device="cpu", attention="pytorch")
    cfg = unet_config(args.model)
    ours, theirs = seeded_unets(cfg, args.seed)
    ours.eval().requires_grad_(False)  # the pack's gradient pass: weights are constants, the latent is the leaf
    theirs.eval()  # requires_grad left on, as StableDiffusionPix2PixZeroPipeline.from_pretrained leaves it

    # the full run's inputs, as a CFG batch [negative = caption, edited caption]
    latent, caption, direction = inputs(args, cfg["context_dim"])
    side = latent.shape[-1]
    x2, c2 = latent.repeat(2, 1, 1, 1), torch.cat([caption, caption + direction])
    t2 = torch.full((2,), 500.0)

    def ours_call(rows, grad=False):
        x, c, t = x2[:rows], c2[:rows], t2[:rows]
        if not grad:
            return ours(x, timesteps=t, context=c)
        with torch.inference_mode(False), torch.enable_grad():
            leaf = x.clone().requires_grad_(True)
            torch.autograd.grad(ours(leaf, timesteps=t, context=c).square().mean(), leaf)

    def theirs_call(rows, grad=False):
        x, c, t = x2[:rows], c2[:rows], t2[:rows]
        if not grad:
            return theirs(x, t, encoder_hidden_states=c).sample
        with torch.inference_mode(False), torch.enable_grad():
            theirs.zero_grad(set_to_none=True)
            leaf = x.clone().requires_grad_(True)
            theirs(leaf, t, encoder_hidden_states=c).sample.square().mean().backward()

    def cpu_ms(fn):
        fn()  # warm-up
        best = float("inf")
        for _ in range(max(args.repeats, 1)):
            start = time.process_time()
            for _ in range(3):
                fn()
            best = min(best, (time.process_time() - start) / 3 * 1000)
        return best

    with torch.inference_mode():
        gap = (ours_call(2) - theirs_call(2)).abs().max().item()
        timed = {}
        for name, rows, grad in (("1 row", 1, False), ("2 rows", 2, False), ("gradient pass, 2 rows", 2, True)):
            timed[name] = (cpu_ms(lambda: ours_call(rows, grad)), cpu_ms(lambda: theirs_call(rows, grad)))
    print(f"UNet '{args.model}', latent {side}x{side}, fp32, CPU, {torch.get_num_threads()} threads, SDPA attention; "
          f"max |ComfyUI UNet - diffusers UNet| on the same input: {gap:.1e}")
    for name, (o, d) in timed.items():
        print(f"  {name:>22}: ComfyUI's UNet {o:8.1f} ms   diffusers' UNet {d:8.1f} ms   ratio {o / d:.3f}")
    one, two, grad = timed["1 row"], timed["2 rows"], timed["gradient pass, 2 rows"]
    ours_step = one[0] + one[0] + grad[0] + two[0]
    theirs_step = one[1] + two[1] + grad[1] + two[1]
    print(f"model work per step: ours {ours_step:.0f} ms (invert 1 + reference 1 + gradient 2 + CFG 2 rows), "
          f"diffusers {theirs_step:.0f} ms (invert 1 + reference 2 + gradient 2 with weight grads + CFG 2 rows): "
          f"ratio {ours_step / theirs_step:.3f}")
    return 0


def breakdown(args):
    """--breakdown: one run of our invert + edit in this process, its CPU time split by where it goes: the UNet's
    forward calls (by rows, with or without gradients; module hooks on the diffusion model, called even when the
    gradient pass stops early), the backward of the gradient passes (torch.autograd.grad, which only they call), and
    the rest (the regularization, maps and losses, conversions, ComfyUI's sampling loop: the pack's own work)."""
    import collections

    import torch

    cfg = unet_config(args.model)
    spent = collections.defaultdict(lambda: [0, 0.0])  # kind -> [calls, CPU seconds]
    started = []

    def instrument(unet):
        def before(module, call_args):
            started.append((call_args[0].shape[0], torch.is_grad_enabled(), time.process_time()))

        def after(module, call_args, output):
            rows, grad, t0 = started.pop()
            kind = spent[f"UNet forward, {rows} row{'s' if rows > 1 else ''}{', with gradients' if grad else ''}"]
            kind[0] += 1
            kind[1] += time.process_time() - t0

        unet.register_forward_pre_hook(before)
        unet.register_forward_hook(after, always_call=True)

    real_grad = torch.autograd.grad

    def timed_grad(*grad_args, **kwargs):
        t0 = time.process_time()
        try:
            return real_grad(*grad_args, **kwargs)
        finally:
            kind = spent["backward of the gradient passes"]
            kind[0] += 1
            kind[1] += time.process_time() - t0

    args.repeats = 1
    with tempfile.TemporaryDirectory(prefix="p2pz-bench-edit-") as workdir:
        build_weights(args, workdir)
        torch.autograd.grad = timed_grad
        try:
            (run,), _ = run_ours(args, os.path.join(workdir, "ours.safetensors"), cfg, instrument)
        finally:
            torch.autograd.grad = real_grad
    total = run["cpu_seconds"]
    print(f"ours, UNet '{args.model}', {args.size} px, {args.steps} steps, invert + edit, CPU, "
          f"{torch.get_num_threads()} threads, ComfyUI attention: {args.attention}: CPU time {total:.2f} s "
          f"(user {run['user_seconds']:.2f} + system {run['system_seconds']:.2f})")
    for name, (calls, seconds) in sorted(spent.items()):
        print(f"  {name:>36}: {calls:3d} calls {seconds:7.2f} s  {seconds / calls * 1000:6.0f} ms each  "
              f"{seconds / total:6.1%}")
    rest = total - sum(seconds for _, seconds in spent.values())
    print(f"  {'everything else':>36}: {rest:17.2f} s  {'':14}{rest / total:6.1%}")
    return 0


def _fmt_bytes(n):
    return f"{n / 2**20:8.1f} MiB" if n < 2**30 else f"{n / 2**30:8.2f} GiB"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", choices=("tiny", "mini", "sd15"))
    parser.add_argument("--full-sd15", action="store_true", help="the full SD 1.5 UNet (same as --model sd15)")
    parser.add_argument("--size", type=int, default=256, help="image size in pixels (latent = size / 8)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "fp16"))
    parser.add_argument("--repeats", type=int, default=2,
                        help="runs per side, each in a fresh process, sides alternating; time: the best run, "
                             "memory: the largest")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--attention", default="default", choices=("default", "pytorch"),
                        help="ComfyUI's attention backend for our side: its default for the device (CPU: "
                             "sub-quadratic), or pytorch (--use-pytorch-cross-attention: fused SDPA)")
    parser.add_argument("--calls", action="store_true",
                        help="instead of the full run: time each kind of model call both pipelines make per step, "
                             "on the same weights in one process, and print the model work per step of each")
    parser.add_argument("--breakdown", action="store_true",
                        help="instead of the full run: run our side once in this process and split its CPU time "
                             "into UNet forwards (by rows), the gradient passes' backward and everything else")
    parser.add_argument("--side", choices=("ours", "diffusers"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.full_sd15:
        args.model = "sd15"
    if not os.environ.get("COMFYUI_PATH"):
        sys.exit("set COMFYUI_PATH to a ComfyUI checkout (the benchmark runs the pack's nodes inside ComfyUI)")
    if args.side:
        return child(args)
    if args.calls:
        if args.device != "cpu" or args.dtype != "fp32":
            sys.exit("--calls times the CPU in fp32 only")
        return model_calls(args)
    if args.breakdown:
        if args.device != "cpu":
            sys.exit("--breakdown measures CPU time: use it with --device cpu")
        return breakdown(args)

    import torch

    with tempfile.TemporaryDirectory(prefix="p2pz-bench-edit-") as workdir:
        params = build_weights(args, workdir)
        print(f"UNet '{args.model}' ({params / 1e6:.1f}M parameters, {args.dtype}), {args.size} px "
              f"(latent {args.size // 8}x{args.size // 8}), {args.steps} steps, invert + edit, device {args.device}, "
              f"torch {torch.__version__}, ComfyUI attention: {args.attention}")
        # Each run is a fresh process; the sides alternate so that a busy machine slows both alike.
        sides = {"ours": {"runs": []}, "diffusers": {"runs": []}}
        child_args = [f"--model={args.model}", f"--size={args.size}", f"--steps={args.steps}",
                      f"--device={args.device}", f"--dtype={args.dtype}", f"--seed={args.seed}",
                      f"--attention={args.attention}"]
        for _ in range(args.repeats):
            for side, record in sides.items():
                if any("oom" in r for r in record["runs"]):
                    continue
                cmd = [sys.executable, os.path.abspath(__file__), "--side", side, "--workdir", workdir,
                       "--repeats", "1"] + child_args
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(f"{side} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
                    return 1
                result = json.loads(line[-1][len("RESULT "):])
                record["runs"] += result["runs"]
                record["threads"] = result["threads"]
        print(f"threads: {sides['ours']['threads']}; memory = peak "
              f"{'VRAM allocated' if args.device == 'cuda' else 'resident set'} during the run")
        summary = {}
        for side, data in sides.items():
            runs = [r for r in data["runs"] if "seconds" in r]
            oom = [r for r in data["runs"] if "oom" in r]
            if not runs:
                print(f"{side:>10}: OUT OF MEMORY ({oom[0]['oom']}), peak {_fmt_bytes(oom[0]['peak_bytes'])}")
                continue
            best = min(r["seconds"] for r in runs)
            least = min(runs, key=lambda r: r["cpu_seconds"])
            cpu = least["cpu_seconds"]
            delta = max(r["delta_bytes"] for r in runs)
            peak = max(r["peak_bytes"] for r in runs)
            summary[side] = (best, delta, peak, cpu)
            times = ", ".join(f"{r['seconds']:.2f}" for r in runs)
            cpus = ", ".join(f"{r['cpu_seconds']:.2f}" for r in runs)
            print(f"{side:>10}: time {best:8.2f} s (runs: {times})   CPU time {cpu:8.2f} s (user "
                  f"{least['user_seconds']:.2f} + system {least['system_seconds']:.2f}; runs: {cpus})   peak above "
                  f"start {_fmt_bytes(delta)}   peak {_fmt_bytes(peak)}")
        if len(summary) == 2:
            (to, mo, po, co), (td, md, pd, cd) = summary["ours"], summary["diffusers"]
            print(f"ratio ours / diffusers: time {to / td:.3f}   CPU time {co / cd:.3f}   peak memory above start "
                  f"{mo / md:.3f}   absolute peak {po / pd:.3f}")
        ours = os.path.join(workdir, "ours_edited.pt")
        theirs = os.path.join(workdir, "diffusers_edited.pt")
        if os.path.exists(ours) and os.path.exists(theirs):
            a, b = torch.load(ours, weights_only=True), torch.load(theirs, weights_only=True)
            print(f"edited latents, max |ours - diffusers| / max |diffusers|: "
                  f"{float((a - b).abs().max() / b.abs().max()):.2e} (random weights amplify rounding over the steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
