"""Shared pieces of the pack's ComfyUI nodes."""
CATEGORY = "pix2pix-zero"

# Key under which a LATENT from the inversion node carries its step schedule (plain Python values). Stock nodes
# read only "samples" (and "noise_mask", "batch_index"), so an extra key passes through them untouched.
INVERSION_KEY = "p2pz_inversion"

SEED_INPUT = (
    "INT",
    {
        "default": 0,
        "min": 0,
        "max": 0xFFFFFFFFFFFFFFFF,
        "control_after_generate": True,
        "tooltip": "Seed of every random draw this node makes. The same seed gives the same result.",
    },
)


def check_conditioning_batch(conditioning, batch_size: int, what: str = "conditioning") -> None:
    """ComfyUI silently repeats or truncates a conditioning batch to the latent batch: refuse a mismatch instead."""
    for tensor, _ in conditioning:
        if tensor.shape[0] not in (1, batch_size):
            raise ValueError(
                f"the {what} has a batch of {tensor.shape[0]} but the latent has {batch_size} images: give one "
                f"conditioning for all images, or exactly one per image (in the same order)"
            )
