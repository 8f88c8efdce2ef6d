"""A stated, simple estimate of what an image size costs (standard library only: the command line uses it before
torch is imported).

The part of an SD UNet that grows fastest with the image is self-attention at the top level: the latent is
(H / 8) x (W / 8) = N tokens, and attention holds an N x N score matrix per head. The guided edit evaluates the
caption and the edited caption together (a batch of 2) and its gradient pass keeps those scores for the backward
pass, so one top-level layer needs at least
    2 x heads x N^2 x bytes per value
(8 heads in SD 1.x, fp32 on the CPU: 4 bytes, fp16 on a GPU: 2). Kernels that never store the matrix (flash/SDPA on a
GPU in the no-grad passes) need less there; the gradient pass on the CPU does store it. Work grows the same way:
attention is N^2, so relative to 512 px an image costs about (N / 4096)^2 times the attention work of a 512 px edit
(and at least N / 4096 times the rest). This is a floor, not a measurement: it is used to warn, never to refuse.
"""

REFERENCE_SIZE = 512  # the size SD 1.x was trained at, and the one suggested when warning
HEADS = 8
CPU_WARN_PIXELS = 768 * 768  # above this the CPU takes many minutes per step (bench/README.md: CPU timings at 512 px)


def tokens(height_px: int, width_px: int) -> int:
    return max(1, height_px // 8) * max(1, width_px // 8)


def attention_bytes(height_px: int, width_px: int, bytes_per_value: int = 4, heads: int = HEADS,
                    batch: int = 2) -> int:
    """The floor above: one top-level self-attention layer's score matrices for the guided edit's batch."""
    n = tokens(height_px, width_px)
    return batch * heads * n * n * bytes_per_value


def work_ratio(height_px: int, width_px: int) -> float:
    """Attention work relative to a 512 x 512 image: (N / N_512)^2."""
    return (tokens(height_px, width_px) / tokens(REFERENCE_SIZE, REFERENCE_SIZE)) ** 2


def size_warning(height_px: int, width_px: int, on_cpu: bool, available_bytes=None, bytes_per_value: int = 4):
    """A warning text when the size will take very long (on the CPU) or its attention alone exceeds the memory
    available, with the estimate and how to go smaller; None when neither."""
    need = attention_bytes(height_px, width_px, bytes_per_value)
    reasons = []
    if available_bytes is not None and need > available_bytes:
        reasons.append(f"its top-level self-attention alone needs about {need / 2**30:,.1f} GiB (2 x {HEADS} heads "
                       f"x ({height_px // 8} x {width_px // 8})^2 scores x {bytes_per_value} bytes), more than the "
                       f"{available_bytes / 2**30:,.1f} GiB available")
    if on_cpu and height_px * width_px > CPU_WARN_PIXELS:
        reasons.append(f"on the CPU its attention is about {work_ratio(height_px, width_px):,.0f} times the work of a "
                       f"{REFERENCE_SIZE} px image, which already takes minutes per step")
    if not reasons:
        return None
    return (f"a {width_px}x{height_px} image may not finish: {'; and '.join(reasons)}. Scale it down first (ImageScale "
            f"to {REFERENCE_SIZE}, or the command's --size {REFERENCE_SIZE}); the edit keeps the layout")
