"""The fast student (paper section 5): collect (input, edited) pairs, train, load, apply.

P2PZ_SavePairs writes pairs from the diffusion editor into output/pix2pix_zero_pairs/<dataset>/; train_student.py
(or P2PZ_TrainStudent) trains a student on such a folder; P2PZ_LoadStudent + P2PZ_ApplyStudent apply it.
"""
import dataclasses
import logging
import os

import comfy.model_management
import comfy.model_patcher
import comfy.utils
import folder_paths
import torch

from ..core.files import check_name
from ..core.student import (
    FeaturePerceptualLoss,
    StudentConfig,
    apply_student,
    load_student,
    vae_encoder_features,
)
from ..core.student_data import (
    Augment,
    PairFilter,
    dataset_edit_name,
    list_pairs,
    save_pairs,
)
from ..core.student_training import (
    STATE_DIR,
    TrainOptions,
    find_checkpoints,
    format_losses,
    train_student,
    training_report,
)
from .common import CATEGORY, SEED_INPUT, model_files, model_patcher_for, register_model_folder

STUDENTS_FOLDER = "pix2pix_zero_students"  # student .safetensors files (train_state/ sub-folders are not listed)
PAIRS_SUBDIR = "pix2pix_zero_pairs"  # under ComfyUI's output directory: datasets are user data, not models
STUDENT_TYPE = "P2PZ_STUDENT"
APPLY_CHUNK = 8  # images per forward pass: bounds memory on big batches (images are independent: no effect on results)
register_model_folder(STUDENTS_FOLDER, {".safetensors"})

def student_files():
    return [f for f in model_files(STUDENTS_FOLDER, (".safetensors",))
            if STATE_DIR not in f.replace("\\", "/").split("/")[:-1]]


def pairs_root():
    return os.path.join(folder_paths.get_output_directory(), PAIRS_SUBDIR)


@dataclasses.dataclass
class Student:
    """What flows on a P2PZ_STUDENT socket: the patcher (ComfyUI loads and evicts it) and the file's metadata."""

    patcher: comfy.model_patcher.ModelPatcher
    metadata: dict
    name: str

    def describe(self):
        m = self.metadata
        edit = m.get("edit") or "unnamed edit"
        return f"{self.name}: {edit}, {m.get('training_steps', '?')} steps at {m.get('resolution', '?')} px"


def make_student(net, metadata, name, dtype_choice="auto"):
    """Wrap a loaded student network in a ModelPatcher; dtype: fp16 where ComfyUI would run fp16, else fp32."""
    mm = comfy.model_management
    load_device = mm.get_torch_device()
    offload_device = mm.unet_offload_device()
    if dtype_choice == "auto":
        dtype = torch.float16 if mm.should_use_fp16(load_device) else torch.float32
    else:
        dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype_choice]
    # channels_last: about 20% faster on CPUs and tensor-core GPUs (apply_student feeds the input in that layout)
    net = net.to(device=offload_device, dtype=dtype, memory_format=torch.channels_last)
    patcher = model_patcher_for(net, dtype, load_device, offload_device)
    return Student(patcher, dict(metadata), name)


def run_student(student, images):
    """IMAGE [B, H, W, 3] -> IMAGE: the student on ComfyUI's device, in chunks, with progress and interruption."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(f"expected an IMAGE batch [B, H, W, C], got {getattr(images, 'shape', type(images))}")
    if images.shape[-1] != 3:
        raise ValueError(f"the student takes RGB images, this IMAGE has {images.shape[-1]} channels (an alpha or "
                         "greyscale image?): convert it to RGB first")
    mm = comfy.model_management
    mm.load_models_gpu([student.patcher])
    net = student.patcher.model.inner
    x = images.movedim(-1, 1)
    pbar = comfy.utils.ProgressBar(x.shape[0])
    out = []
    for start in range(0, x.shape[0], APPLY_CHUNK):
        mm.throw_exception_if_processing_interrupted()
        chunk = x[start:start + APPLY_CHUNK].to(student.patcher.load_device)
        out.append(apply_student(net, chunk).float().to(mm.intermediate_device()))
        pbar.update(chunk.shape[0])
    return torch.cat(out).movedim(1, -1)


class LoadStudent:
    DESCRIPTION = ("Loads a trained pix2pix-zero student (a fast network that applies one edit, e.g. cat -> dog, in "
                   "milliseconds) from models/pix2pix_zero_students/. The file's metadata (edit, architecture, "
                   "training steps) is checked; any other kind of file is refused with what it looks like.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (STUDENT_TYPE,)
    RETURN_NAMES = ("student",)
    OUTPUT_TOOLTIPS = ("The student, managed by ComfyUI (moved to the GPU when applied, evicted when memory is needed).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "student_name": (student_files(), {"tooltip": "A student .safetensors in models/pix2pix_zero_students/ (made by train_student.py or Train Student)."}),
                "dtype": (["auto", "fp32", "fp16", "bf16"], {"default": "auto", "tooltip": "auto: fp16 on GPUs where ComfyUI uses fp16, fp32 on the CPU. fp16 is about twice as fast on a GPU; on the CPU keep fp32."}),
            }
        }

    def load(self, student_name, dtype="auto"):
        path = folder_paths.get_full_path_or_raise(STUDENTS_FOLDER, student_name)
        net, metadata = load_student(path)
        return (make_student(net, metadata, student_name, dtype),)


class ApplyStudent:
    DESCRIPTION = ("Applies a trained student's edit to images: one fast forward pass per image, no diffusion. "
                   "Any size works (the image is padded to the network's multiple of 16 by reflection and cropped "
                   "back). Best at sizes near the one it was trained at.")
    CATEGORY = CATEGORY
    FUNCTION = "apply"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The edited images, same size and batch as the input.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "student": (STUDENT_TYPE, {"tooltip": "From Load Student (or Train Student)."}),
                "image": ("IMAGE", {"tooltip": "RGB images of any size; a batch is edited image by image (each result equals the image edited alone)."}),
            }
        }

    def apply(self, student, image):
        return (run_student(student, image),)


class SavePairs:
    DESCRIPTION = ("Collects training pairs for a student: writes each (original, edited) image pair into "
                   "output/pix2pix_zero_pairs/<dataset>/input/ and edited/ under the next free number, never "
                   "overwriting, with a line of metadata in pairs.jsonl. Optional filters drop pairs whose edges "
                   "changed too much (the paper filtered with segmentation and CLIP, which this pack does not ship) "
                   "or that barely changed.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    OUTPUT_NODE = True
    RETURN_TYPES = ("INT",)
    RETURN_NAMES = ("saved",)
    OUTPUT_TOOLTIPS = ("How many pairs of this batch were written.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "original": ("IMAGE", {"tooltip": "The images given to the diffusion editor (decoded input)."}),
                "edited": ("IMAGE", {"tooltip": "The editor's results, in the same order and size as original (when VAEEncode cropped the photo to a multiple of 8, the original is cropped the same way)."}),
                "dataset_name": ("STRING", {"default": "cat_to_dog", "tooltip": "Folder under output/pix2pix_zero_pairs/; one dataset per edit: letters, digits, '_', '-' or '.' (a letter or digit first)."}),
                "edit": ("STRING", {"default": "cat -> dog", "tooltip": "Name of the edit, stored with every pair and later in the student file."}),
                "min_structure": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Keep a pair only if the edge maps of original and edited correlate at least this much (0 = off). Structure-keeping edits score about 0.5-0.95, unrelated images near 0; 0.3-0.5 drops edits that redrew the scene."}),
                "min_change": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.005, "tooltip": "Keep a pair only if the mean pixel change is at least this (0 = off); 0.01-0.03 drops edits that did nothing."}),
            }
        }

    def save(self, original, edited, dataset_name, edit, min_structure, min_change):
        name = check_name(dataset_name, "dataset name")
        original = _match_vae_crop(original, edited)
        if original.shape != edited.shape:
            raise ValueError(f"original {tuple(original.shape)} and edited {tuple(edited.shape)} differ: connect the "
                             "editor's input and its output (same batch, same size)")
        folder = os.path.join(pairs_root(), name)
        results = save_pairs(folder, original.movedim(-1, 1).float().cpu(), edited.movedim(-1, 1).float().cpu(),
                             PairFilter(min_structure=min_structure, min_change=min_change),
                             record={"edit": edit, "source": "P2PZ_SavePairs"})
        kept = [r for r in results if r["kept"]]
        lines = [(f"{len(kept)}/{len(results)} pairs written to {PAIRS_SUBDIR}/{name} "
                 f"({len(list_pairs(folder))} in total)")]
        for i, r in enumerate(results):
            state = f"#{r['index']}" if r["kept"] else "rejected"
            lines.append(f"image {i}: structure {r['structure_score']:.3f}, change {r['change_score']:.4f} -> {state}")
        return {"ui": {"text": lines}, "result": (len(kept),)}


def _match_vae_crop(original, edited, max_crop=32):
    """VAEEncode centre-crops an image to a multiple of the VAE's factor (8 for SD), so the decoded edit of a
    500x375 photo is 496x368. Crop the original the same way (ComfyUI's vae_encode_crop_pixels) so the pair lines
    up; any other size difference is left for the caller to refuse."""
    if original.ndim != 4 or edited.ndim != 4 or original.shape[0] != edited.shape[0]:
        return original
    for dim in (1, 2):
        big, small = original.shape[dim], edited.shape[dim]
        if small < big < small + max_crop:  # less than one VAE factor (8 for SD; 32 at most in ComfyUI's VAEs)
            original = original.narrow(dim, (big - small) // 2, small)
    return original


class TrainStudent:
    DESCRIPTION = ("Trains a student on a pair dataset (from Save Pairs) inside ComfyUI and saves checkpoints to "
                   "models/pix2pix_zero_students/<student_name>-stepNNNNNN.safetensors. Blocks the queue while it "
                   "runs (minutes to hours): for long runs prefer the command line, train_student.py. If checkpoints "
                   "of that name exist, training resumes from the latest with that run's own settings (only steps "
                   "and checkpoint_every apply): raise steps to train longer.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    OUTPUT_NODE = True
    RETURN_TYPES = (STUDENT_TYPE,)
    RETURN_NAMES = ("student",)
    OUTPUT_TOOLTIPS = ("The trained student, ready for Apply Student.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "dataset_name": ("STRING", {"default": "cat_to_dog", "tooltip": "A folder under output/pix2pix_zero_pairs/ (written by Save Pairs)."}),
                "student_name": ("STRING", {"default": "cat_to_dog", "tooltip": "Checkpoint file prefix in models/pix2pix_zero_students/: letters, digits, '_', '-' or '.' (a letter or digit first)."}),
                "steps": ("INT", {"default": 5000, "min": 1, "max": 1000000, "tooltip": "Total training steps. Thousands for a real edit; with existing checkpoints, training continues up to this."}),
                "resolution": ("INT", {"default": 256, "min": 16, "max": 2048, "step": 16, "tooltip": "Training crop size in px (multiple of 16). Pairs must be at least this big."}),
                "batch_size": ("INT", {"default": 8, "min": 1, "max": 256, "tooltip": "Crops per step (the paper: 64)."}),
                "learning_rate": ("FLOAT", {"default": 2e-4, "min": 1e-6, "max": 1e-2, "step": 1e-5, "tooltip": "Adam learning rate (2e-4; the paper used 1e-3 at batch 64)."}),
                "lambda_adv": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 10.0, "step": 0.01, "tooltip": "Weight of the adversarial (PatchGAN) term next to L1 at 10 (0 = no discriminator: faster, slightly blurrier)."}),
                "checkpoint_every": ("INT", {"default": 1000, "min": 0, "max": 1000000, "tooltip": "Write a checkpoint every this many steps (0: only the last)."}),
                "color_jitter": ("BOOLEAN", {"default": True, "tooltip": "Brightness/contrast/saturation augmentation applied to both images. Turn off for edits that are themselves colour changes."}),
                "seed": SEED_INPUT,
            },
            "optional": {
                "vae": ("VAE", {"tooltip": "Optional: the checkpoint's VAE; its encoder's features then replace the weight-free Laplacian-pyramid perceptual loss (slower, closer to the paper's LPIPS)."}),
            },
        }

    def train(self, dataset_name, student_name, steps, resolution, batch_size, learning_rate, lambda_adv,
              checkpoint_every, color_jitter, seed, vae=None):
        dataset = os.path.join(pairs_root(), check_name(dataset_name, "dataset name"))
        name = check_name(student_name, "student name")
        if not os.path.isdir(dataset):
            raise ValueError(f"no dataset {dataset_name!r} in {pairs_root()}: collect pairs with Save Pairs first")
        out_dir = folder_paths.get_folder_paths(STUDENTS_FOLDER)[0]
        existing = find_checkpoints(out_dir, name)
        aug = Augment() if color_jitter else dataclasses.replace(Augment(), brightness=0.0, contrast=0.0, saturation=0.0)
        options = TrainOptions(steps=steps, batch_size=batch_size, resolution=resolution, lr=learning_rate,
                               lambda_adv=lambda_adv, checkpoint_every=checkpoint_every, seed=seed, augment=aug,
                               student=StudentConfig())
        device = comfy.model_management.get_torch_device()
        pbar = comfy.utils.ProgressBar(steps)
        start = existing[-1][0] if existing else 0
        # The queue is blocked for minutes to hours: say in the console where it stands (about 20 lines a run).
        log_every = max(1, steps // 20)
        last = {}

        def progress(step, total, losses):
            comfy.model_management.throw_exception_if_processing_interrupted()
            pbar.update_absolute(step, total)
            last.update(losses)
            if step == total or step % log_every == 0:
                logging.info("P2PZ_TrainStudent %s: step %d/%d, loss %s", name, step, total, format_losses(losses))

        logging.info("P2PZ_TrainStudent %s: training on %s (%d pairs) to step %d on %s%s", name, dataset,
                     len(list_pairs(dataset)), steps, device, f", resuming from step {start}" if start else "")
        held_out = None
        # the executor runs nodes under inference_mode: training needs autograd back, on tensors made here
        with torch.inference_mode(False), torch.enable_grad():
            perceptual = None
            if vae is not None:
                perceptual = FeaturePerceptualLoss(vae_encoder_features(_trainable_copy(vae.first_stage_model.encoder)))
            if start >= steps:
                result_path = existing[-1][1]
            else:
                pbar.update_absolute(start, steps)
                result = train_student(dataset, out_dir, options, name=name, edit=dataset_edit_name(dataset),
                                       resume="latest" if existing else None,
                                       perceptual=perceptual, device=device, progress=progress)
                result_path = result.student_path
                held_out = result
        net, metadata = load_student(result_path)
        folder_paths.filename_list_cache.pop(STUDENTS_FOLDER, None)  # the new files show up in Load Student
        lines = training_report(result_path, start, steps, last, held_out)
        for line in lines:
            logging.info("P2PZ_TrainStudent %s: %s", name, line)
        return {"ui": {"text": lines},
                "result": (make_student(net, metadata, os.path.basename(result_path)),)}


def _trainable_copy(module):
    """A float32 copy of a module whose weights are ordinary tensors (weights loaded under inference_mode cannot be
    saved for backward, even when only the input needs gradients)."""
    import copy

    copied = copy.deepcopy(module).float()
    for m in copied.modules():
        for k, p in list(m._parameters.items()):
            if p is not None:
                m._parameters[k] = torch.nn.Parameter(p.detach().clone(), requires_grad=False)
        for k, b in list(m._buffers.items()):
            if b is not None:
                m._buffers[k] = b.detach().clone()
    return copied


NODE_CLASS_MAPPINGS = {
    "P2PZ_LoadStudent": LoadStudent,
    "P2PZ_ApplyStudent": ApplyStudent,
    "P2PZ_SavePairs": SavePairs,
    "P2PZ_TrainStudent": TrainStudent,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "P2PZ_LoadStudent": "Load Student (pix2pix-zero fast edit)",
    "P2PZ_ApplyStudent": "Apply Student (pix2pix-zero fast edit)",
    "P2PZ_SavePairs": "Save Pairs for a Student (pix2pix-zero)",
    "P2PZ_TrainStudent": "Train Student (pix2pix-zero)",
}
