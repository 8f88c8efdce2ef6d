"""Student vs diffusion editor: time per image at one size, and the ratio (pix2pix-zero paper section 5: 0.018 s vs
about 70 s on an A100, ~3,800x).

    python bench/bench_student.py                          # CPU, 512 px, fp32
    python bench/bench_student.py --device cuda --dtype fp16
    python bench/bench_student.py --size 256 --editor-steps 25 --skip-full-size   # quick look

Student: the default architecture (core.student.StudentConfig(), random weights: time does not depend on their
values) through core.student.apply_student, batch 1, after warm-up runs, median of --runs.

Diffusion editor, in two parts:
1. Which calls it makes. diffusers' StableDiffusionPix2PixZeroPipeline (invert() then __call__(), the reference
   implementation) is run for real with the same step count, with tiny random components (UNet
   block_out_channels (32, 64), 2 layers per block, cross-attention width 32; a 4-level VAE with 8 channels, so
   latents are size/8 as in SD), and every UNet call is recorded: its batch size and whether it ran with gradients
   (the cross-attention-guided step does forward + backward to the latent). The count does not depend on the
   image size, so it runs at --count-size (64 px) unless asked for --count-size 0 (= --size; its wall time is
   then the pipeline's own work around a negligible UNet: 317 s at 512 px on 2 CPU cores).
2. What each call costs at full size. The SD 1.5 UNet architecture (its unet/config.json: 860M parameters,
   64x64 latents at 512 px) with random weights is timed for each kind of call recorded
   (forward at batch 1, forward at batch 2, forward + backward to the input at batch 2), with PyTorch's SDPA
   attention, plus the SD VAE's encode and decode at the size. Estimate = sum over calls of the measured time of
   its kind + VAE encode + decode. The pipeline itself computes explicit attention probabilities in every layer,
   which is slower still, and a caption model would add more: the estimate is a lower bound, the ratio conservative.
"""
from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the pack's core/, wherever this is run from

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TARGETS = {"cpu": 0.25, "cuda": 0.005}  # seconds per 512 px image (the targets)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, runs, warmup):
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times), times


def bench_student(size, device, dtype, runs, warmup, channels_last):
    from core.student import StudentConfig, apply_student, build_student

    net = build_student(StudentConfig(), seed=0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.02)
    net = net.to(device=device, dtype=dtype).eval()
    x = torch.rand(1, 3, size, size, generator=g).to(device=device, dtype=dtype)
    if channels_last:  # as P2PZ_LoadStudent does
        net = net.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        median, times = _timed(lambda: apply_student(net, x), device, runs, warmup)
    params = sum(p.numel() for p in net.parameters())
    return median, times, params


# ----------------------------------------------------------------------------------------------------------------
# The editor: count the calls of diffusers' pipeline with tiny components
# ----------------------------------------------------------------------------------------------------------------

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


def count_editor_calls(size, steps, device):
    from diffusers import (
        AutoencoderKL,
        DDIMInverseScheduler,
        DDIMScheduler,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.deprecated.stable_diffusion_variants.pipeline_stable_diffusion_pix2pix_zero import (
        StableDiffusionPix2PixZeroPipeline,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=size // 8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, norm_num_groups=16,
    )
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8)
    config = dict(SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPix2PixZeroPipeline(
        vae=vae, text_encoder=None, tokenizer=None, unet=unet, scheduler=DDIMScheduler(**config),
        inverse_scheduler=DDIMInverseScheduler(**config), feature_extractor=None, safety_checker=None,
        caption_generator=None, caption_processor=None, requires_safety_checker=False,
    ).to(device)
    pipe.set_progress_bar_config(disable=True)

    calls = collections.Counter()
    original_forward = unet.forward

    def counting_forward(sample, *args, **kwargs):
        calls[(sample.shape[0], torch.is_grad_enabled() and sample.requires_grad)] += 1
        return original_forward(sample, *args, **kwargs)

    unet.forward = counting_forward
    g = torch.Generator().manual_seed(0)
    caption = torch.randn(1, 77, 32, generator=g).to(device)
    image = torch.rand(1, 3, size, size, generator=g).to(device)
    t = time.perf_counter()
    inv = pipe.invert(image=image, prompt_embeds=caption, num_inference_steps=steps, output_type="latent",
                      generator=torch.Generator().manual_seed(0)).latents
    source, target = torch.randn(8, 77, 32, generator=g).to(device), torch.randn(8, 77, 32, generator=g).to(device)
    pipe(prompt_embeds=caption, negative_prompt_embeds=torch.zeros_like(caption), source_embeds=source, target_embeds=target, num_inference_steps=steps,
         latents=inv, output_type="pt", cross_attention_guidance_amount=0.1, guidance_scale=5.0,
         generator=torch.Generator().manual_seed(0))
    _sync(torch.device(device))
    return calls, time.perf_counter() - t


# ----------------------------------------------------------------------------------------------------------------
# The editor: what each call costs with the full SD 1.5 architecture
# ----------------------------------------------------------------------------------------------------------------

def _fast_random_(module, seed):
    """Fill every parameter with small Gaussian values (quick for 860M parameters; values do not change timing
    except through denormals, which N(0, 0.02) weights do not produce)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).mul_(0.02).to(p.dtype))
    return module


# stable-diffusion-v1-5's unet/config.json (the values that differ from UNet2DConditionModel's defaults)
SD15_UNET = {"cross_attention_dim": 768, "attention_head_dim": 8, "block_out_channels": (320, 640, 1280, 1280),
             "layers_per_block": 2, "in_channels": 4, "out_channels": 4}


def full_size_call_times(kinds, size, device, dtype, warmup, runs):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD15_UNET, sample_size=size // 8)
    unet = _fast_random_(unet.to_empty(device="cpu"), 1).to(device=device, dtype=dtype).eval().requires_grad_(False)
    params = sum(p.numel() for p in unet.parameters())
    h = size // 8
    context = {b: torch.randn(b, 77, 768).to(device=device, dtype=dtype) for b in (1, 2)}
    t = torch.tensor(500, device=device)
    out = {}
    for batch, grad in sorted(kinds):
        x = torch.randn(batch, 4, h, h).to(device=device, dtype=dtype)

        def call(batch=batch, grad=grad, x=x):
            if grad:
                x_in = x.clone().requires_grad_(True)
                with torch.enable_grad():
                    unet(x_in, t, encoder_hidden_states=context[batch]).sample.square().mean().backward()
            else:
                with torch.no_grad():
                    unet(x, t, encoder_hidden_states=context[batch])

        out[(batch, grad)] = _timed(call, device, runs, warmup)[0]
        print(f"  full-size UNet, batch {batch}, {'forward + backward' if grad else 'forward'}: "
              f"{out[(batch, grad)]:.3f} s", flush=True)
    unet = None  # free its memory before the VAE
    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, layers_per_block=2,
                            sample_size=size)
    vae = _fast_random_(vae.to_empty(device="cpu"), 2).to(device=device, dtype=dtype).eval()
    img = torch.rand(1, 3, size, size).to(device=device, dtype=dtype)
    lat = torch.randn(1, 4, h, h).to(device=device, dtype=dtype)
    with torch.no_grad():
        enc = _timed(lambda: vae.encode(img).latent_dist.mean, device, runs, warmup)[0]
        dec = _timed(lambda: vae.decode(lat).sample, device, runs, warmup)[0]
    print(f"  full-size VAE: encode {enc:.3f} s, decode {dec:.3f} s", flush=True)
    return out, enc, dec, params


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: fp32 on the CPU, fp16 on a GPU")
    p.add_argument("--runs", type=int, default=None, help="student timing runs (default 20 CPU, 200 GPU)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--contiguous", action="store_true", help="student in the default memory format instead of "
                   "channels_last (what P2PZ_LoadStudent uses)")
    p.add_argument("--editor-steps", type=int, default=50, help="DDIM steps of inversion and of the edit (50)")
    p.add_argument("--count-size", type=int, default=64, help="pixel size at which the tiny pipeline is run to count "
                   "the calls (the count does not depend on it; 0: --size, slow on a CPU: the reference pipeline's "
                   "own work took 317 s at 512 px with the tiny UNet on 2 cores)")
    p.add_argument("--full-warmup", type=int, default=1, help="warm-up calls per full-size kind")
    p.add_argument("--full-runs", type=int, default=1, help="timed calls per full-size kind (median)")
    p.add_argument("--skip-full-size", action="store_true", help="no full-size timings (no editor estimate)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp32" if device.type == "cpu" else "fp16")]
    if args.threads:
        torch.set_num_threads(args.threads)
    runs = args.runs or (20 if device.type == "cpu" else 200)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; {args.size} px; {str(dtype).replace('torch.', '')}")

    median, times, params = bench_student(args.size, device, dtype, runs, args.warmup, not args.contiguous)
    print(f"student ({params / 1e6:.2f}M parameters): {median * 1000:.1f} ms per image (median of {runs}; "
          f"min {min(times) * 1000:.1f}, max {max(times) * 1000:.1f})", flush=True)
    target = TARGETS.get(device.type)
    if target is not None and args.size == 512:
        print(f"  target {target * 1000:.0f} ms at 512 px: {'met' if median < target else 'NOT met'}")

    count_size = args.count_size or args.size
    calls, tiny_time = count_editor_calls(count_size, args.editor_steps, device)
    total_calls = sum(calls.values())
    print(f"editor UNet calls per image (diffusers StableDiffusionPix2PixZeroPipeline, invert + edit, "
          f"{args.editor_steps} steps): {total_calls} = " + ", ".join(
              f"{n} x batch {b} {'forward+backward' if g else 'forward'}" for (b, g), n in sorted(calls.items())))
    print(f"  (counted by running it with tiny random components at {count_size} px: {tiny_time:.1f} s)")
    if args.skip_full_size:
        return 0
    per_call, enc, dec, unet_params = full_size_call_times(calls.keys(), args.size, device, dtype,
                                                           args.full_warmup, args.full_runs)
    editor = sum(n * per_call[k] for k, n in calls.items()) + enc + dec
    print(f"editor estimate, SD 1.5 architecture ({unet_params / 1e6:.0f}M UNet parameters): {editor:.1f} s per image "
          "(calls x measured time per call + VAE encode/decode; a lower bound)")
    print(f"RESULT {args.size} px {device.type} {str(dtype).replace('torch.', '')}: student {median * 1000:.1f} ms, "
          f"editor {editor:.1f} s, ratio {editor / median:,.0f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
