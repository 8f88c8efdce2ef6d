"""Train a pix2pix-zero student (a fast image-to-image network for one edit) on a folder of (input, edited) pairs.

Needs torch, safetensors, numpy and Pillow, not ComfyUI. Run it from anywhere with the python that has those:

    python train_student.py DATASET_DIR --output OUT_DIR [--name cat2dog] [--steps 5000] [--resolution 256]
    python ComfyUI/custom_nodes/comfyui-pix2pix-zero/train_student.py ...

DATASET_DIR holds input/000001.png + edited/000001.png ... (P2PZ_SavePairs writes such folders under ComfyUI's
output/pix2pix_zero_pairs/). Checkpoints OUT_DIR/<name>-stepNNNNNN.safetensors are students: copy the last one into
ComfyUI/models/pix2pix_zero_students/ and load it with P2PZ_LoadStudent. --resume latest continues a run.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # the pack's own core/, wherever this is run from
    sys.path.insert(0, HERE)


def _parse_args(argv):
    from core.student import GAN_LOSSES

    d = _defaults()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="pair folder (input/ and edited/ with matching numbered images)")
    p.add_argument("--output", required=True, help="folder for checkpoints (created; never overwritten)")
    p.add_argument("--name", default=None, help="run name, the checkpoint file prefix (default: the dataset "
                   "folder's name, or the resumed checkpoint's)")
    p.add_argument("--edit", default=None, help="edit name stored in the student (default: from pairs.jsonl)")
    p.add_argument("--resume", default=None, help="a checkpoint of this run, or 'latest'")
    p.add_argument("--steps", type=int, default=d.steps, help="total training steps (raise it when resuming to "
                   "train longer; default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="crops per step (default %(default)s; "
                   "the paper: 64)")
    p.add_argument("--resolution", type=int, default=d.resolution, help="training crop in px, a multiple of 16 "
                   "(default %(default)s)")
    p.add_argument("--load-size", type=int, default=None, help="resize pairs so the shorter side is this first "
                   "(default: as stored)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate (default %(default)s)")
    p.add_argument("--lambda-l1", type=float, default=d.lambda_l1, help="default %(default)s")
    p.add_argument("--lambda-perceptual", type=float, default=d.lambda_perceptual, help="default %(default)s")
    p.add_argument("--lambda-adv", type=float, default=d.lambda_adv, help="0 trains without a discriminator "
                   "(default %(default)s)")
    p.add_argument("--adv-start", type=int, default=d.adv_start, help="steps before the adversarial term starts")
    p.add_argument("--gan-loss", choices=GAN_LOSSES, default=d.gan_loss, help="default %(default)s")
    p.add_argument("--perceptual", choices=("laplacian", "vae", "lpips", "none"), default="laplacian",
                   help="laplacian: Laplacian-pyramid L1, needs no weights; vae: features of a VAE encoder "
                   "(--vae); lpips: only if the lpips package and its backbone weights are already installed")
    p.add_argument("--vae", default=None, help="for --perceptual vae: a diffusers AutoencoderKL folder, or a "
                   "single .safetensors VAE file (with --vae-config FOLDER holding its config.json if diffusers "
                   "cannot infer it offline)")
    p.add_argument("--vae-config", default=None)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints, 0: only the final one (default %(default)s)")
    p.add_argument("--held-out", type=float, default=d.held_out_fraction, help="fraction of pairs held out for "
                   "the final L1 (default %(default)s)")
    p.add_argument("--no-augment", action="store_true", help="no flip, colour jitter or noise (crops only)")
    p.add_argument("--no-color-jitter", action="store_true", help="for edits that are colour changes")
    p.add_argument("--base-channels", type=int, default=d.student.base_channels, help="student width (default "
                   "%(default)s; speed scales about with its square)")
    p.add_argument("--res-blocks", type=int, default=d.student.num_res_blocks, help="residual blocks at 1/16 "
                   "resolution (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="seeds weights, split, crops and augmentation")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu", help="default: cuda if available")
    return p.parse_args(argv)


def _defaults():
    from core.student_training import TrainOptions

    return TrainOptions()


def _cuda():
    import torch

    return torch.cuda.is_available()


def _vae_encoder(args):
    """The encoder of a diffusers AutoencoderKL, loaded from local files only."""
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        sys.exit("--perceptual vae needs diffusers (pip install diffusers)")
    if not args.vae:
        sys.exit("--perceptual vae needs --vae PATH")
    try:
        if os.path.isdir(args.vae):
            vae = AutoencoderKL.from_pretrained(args.vae, local_files_only=True)
        else:
            kw = {"config": args.vae_config} if args.vae_config else {}
            vae = AutoencoderKL.from_single_file(args.vae, local_files_only=True, **kw)
    except Exception as e:  # noqa: BLE001 (diffusers raises many types here; all mean "cannot load offline")
        sys.exit(f"could not load the VAE {args.vae} offline ({type(e).__name__}: {e}); give a diffusers folder, "
                 "or --vae-config with a folder holding the VAE's config.json")
    return vae.encoder


def _progress():
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    state = {}

    def update(step, total, losses):
        text = " ".join(f"{k} {v:.4f}" for k, v in losses.items())
        if tqdm is not None:
            if "bar" not in state:
                state["bar"] = tqdm(total=total, initial=step - 1, unit="step", dynamic_ncols=True)
            state["bar"].set_postfix_str(text, refresh=False)
            state["bar"].update(1)
            if step == total:
                state["bar"].close()
        elif step % 50 == 0 or step == total:
            print(f"step {step}/{total} {text}", flush=True)

    return update


def main(argv=None) -> int:
    args = _parse_args(argv)
    import torch

    from core.student import (
        FeaturePerceptualLoss,
        StudentConfig,
        lpips_loss_if_available,
        vae_encoder_features,
    )
    from core.student_data import Augment, dataset_edit_name
    from core.student_training import TrainOptions, parse_checkpoint_name, train_student

    name = args.name
    if name is None and args.resume and args.resume != "latest":
        parsed = parse_checkpoint_name(args.resume)
        name = parsed[0] if parsed else None
    if name is None:
        name = os.path.basename(os.path.normpath(args.dataset)) or "student"
    edit = args.edit if args.edit is not None else dataset_edit_name(args.dataset)

    aug = Augment.off() if args.no_augment else Augment()
    if args.no_color_jitter:
        aug = dataclasses.replace(aug, brightness=0.0, contrast=0.0, saturation=0.0)
    options = TrainOptions(
        steps=args.steps, batch_size=args.batch_size, resolution=args.resolution, load_size=args.load_size,
        lr=args.lr, lambda_l1=args.lambda_l1, lambda_perceptual=args.lambda_perceptual, lambda_adv=args.lambda_adv,
        adv_start=args.adv_start, gan_loss=args.gan_loss, checkpoint_every=args.checkpoint_every,
        held_out_fraction=args.held_out, seed=args.seed, augment=aug,
        student=StudentConfig(base_channels=args.base_channels, num_res_blocks=args.res_blocks),
    )
    perceptual = None
    if args.perceptual == "none":
        options = dataclasses.replace(options, lambda_perceptual=0.0)
    elif args.perceptual == "vae":
        perceptual = FeaturePerceptualLoss(vae_encoder_features(_vae_encoder(args)))
    elif args.perceptual == "lpips":
        perceptual = lpips_loss_if_available()
        if perceptual is None:
            sys.exit("--perceptual lpips: the lpips package or its backbone weights are not installed here; "
                     "use --perceptual laplacian (no weights) or vae")

    torch.manual_seed(args.seed)
    try:
        result = train_student(args.dataset, args.output, options, name=name, edit=edit, resume=args.resume,
                               perceptual=perceptual, device=args.device, progress=_progress(), log=print)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"student: {result.student_path}")
    if result.held_out_l1 is not None:
        print(f"held-out L1 ({result.held_out_pairs} pairs): student {result.held_out_l1:.4f}, "
              f"input unchanged {result.identity_l1:.4f}")
    print("use it: copy it into ComfyUI/models/pix2pix_zero_students/ and load it with P2PZ_LoadStudent")
    return 0


if __name__ == "__main__":
    sys.exit(main())
