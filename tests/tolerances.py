"""Error bounds the suite's numerical tolerances are derived from (see CONTRIBUTING.md, "Tolerances").

A tolerance is never a number one machine printed. Three kinds of comparison, three rules:

1. Two computations that are the SAME arithmetic (same inputs, same ops, same shapes, same kernel): compared with
   `torch.equal`. Where they could differ only in which rows share a batch, the test makes them share none (one
   row per call) or moves the comparison to rule 2.
2. Two computations that are equal in exact arithmetic but may round differently (another batch composition, a
   skipped or reordered pass, a different kernel or thread count): run in float64 and compared to
   `SAME_MATH_RTOL` of the result's size. float64's unit roundoff is 2**-53 = 1.1e-16; the tiny random networks
   amplify a relative input change at most ~1e4-fold per evaluation chain in this suite (the end-to-end parity test
   measures that amplification in float32: a 1e-6 nudge of x_T moves the result by ~1e-2), so float64 rounding stays
   below ~1e-11 relative. SAME_MATH_RTOL = 1e-9 is 100x above that and 1e5x below any logic error the tests look
   for (a wrong branch, a skipped term: >= 1e-4 relative).
3. A float32 result against a formula of a few operations: the standard bound for n floating-point operations,
   |fl(x) - x| <= gamma(n) * sum|terms|, gamma(n) = n u / (1 - n u), u = 2**-24 for float32 (`gamma`). Differences
   of two such evaluations get twice that. Reductions of length n (a sum, a dot product, a mean) count n operations
   whatever the order or blocking a kernel picks, so the bound holds on every CPU and for every thread count.

4. Where float64 is not available (ComfyUI's own models and samplers run in float32), two float32 evaluations that
   are equal in exact arithmetic (a batch and its images alone, another attention kernel, a skipped pass) are
   compared against the computation's own amplification of rounding, measured in the same run on the same CPU:
   `nudge_sensitivity` moves the input by NUDGE = 1e-6 of its size (about 8 float32 ulps of the largest value) and
   returns how far the result moves. Each evaluation whose rounding may differ between the two sides (a model call,
   a regularization step: any op chain between two points where the result is carried on) injects at most gamma(k)
   of its values, k its longest reduction (typically ~sqrt(k) u: a few ulps, as large as a nudge or somewhat more
   where whole kernels differ, e.g. chunked against plain softmax), and what it injects is carried through the rest
   as the nudge is. With n such evaluations on each side the tolerance is PER_EVALUATION = 4 nudges for each of the
   2 n evaluations (`rounding_atol(..., evaluations=n)`) plus 8 float32 ulps of the result. A logic error moves
   results by 1e-3 of their size or more, above this on the tiny models (the largest here, 155 evaluations of a
   regularized inversion, allows 7e-4 of the result's size).
   For a whole network evaluated in float32 twice with other batch compositions (a text encoder's sentences
   batched or alone), rule 3 applies to its chain of reductions: `network_chain_length` adds up the lengths of
   every reduction a value can pass through (every Linear's input width, every norm's width, two token-length
   reductions per attention), an over-count since parallel branches are counted in series; each evaluation's result
   is within gamma(chain) of the magnitudes it was formed from, which the networks' normalization layers keep at the
   scale of their outputs, so two evaluations differ by at most 2 gamma(chain) max|output|.

Helpers below compute those numbers; each call site says which rule it uses.
"""
from __future__ import annotations

import torch

# float64 comparisons of computations equal in exact arithmetic (rule 2)
SAME_MATH_RTOL = 1e-9


def unit_roundoff(dtype: torch.dtype = torch.float32) -> float:
    """u = eps / 2: the largest relative error of one correctly rounded operation."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of n chained operations or a length-n reduction."""
    nu = n * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"{n} operations exceed what gamma bounds in {dtype}")
    return nu / (1 - nu)


def same_math_atol(reference: torch.Tensor, rtol: float = SAME_MATH_RTOL) -> float:
    """Rule 2's absolute tolerance: rtol times the largest magnitude of the float64 reference result."""
    if reference.dtype != torch.float64:
        raise TypeError(f"rule 2 compares float64 computations; got {reference.dtype}: run the test in float64")
    return rtol * float(reference.abs().max())


# rule 4: float32 computations compared against their own measured amplification of a tiny input change
NUDGE = 1e-6
PER_EVALUATION = 4  # nudges one evaluation's rounding may amount to


def nudge_sensitivity(run, x: torch.Tensor, seed: int = 0) -> float:
    """max |run(x + NUDGE * max|x| * n) - run(x)|, n ~ N(0, 1) seeded: how much `run` amplifies an input change at
    the level of float32 rounding (rule 4). `run` maps a tensor to a tensor; both runs happen here, on this CPU."""
    n = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).to(x.dtype)
    return float((run(x + NUDGE * float(x.abs().max()) * n) - run(x)).abs().max())


def rounding_atol(run, x: torch.Tensor, result: torch.Tensor, evaluations: int, seed: int = 0) -> float:
    """Rule 4's absolute tolerance for another float32 evaluation of `run(x)` against `result`: PER_EVALUATION nudges
    for each of the 2 * evaluations (those whose rounding may differ, on each side) plus 8 float32 ulps."""
    if evaluations < 1:
        raise ValueError("evaluations counts the model calls and steps whose rounding may differ: at least 1")
    sensitivity = nudge_sensitivity(run, x, seed)
    return PER_EVALUATION * 2 * evaluations * sensitivity + 8 * unit_roundoff() * float(result.abs().max())


def network_chain_length(module: torch.nn.Module, tokens: int) -> int:
    """Rule 3's reduction chain of a network (see the module docstring): every Linear's in_features, every
    convolution's input channels per group times its kernel size, every norm's width, and 2 * tokens per attention
    module (scores' softmax sum and the weighted sum of values)."""
    total = 0
    for m in module.modules():
        name = type(m).__name__.lower()
        if isinstance(m, torch.nn.Linear):
            total += m.in_features
        elif isinstance(m, torch.nn.modules.conv._ConvNd):
            total += (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
        elif "norm" in name and getattr(m, "weight", None) is not None and m.weight.dim() == 1:
            total += m.weight.numel()
        elif "attention" in name and not any("attention" in type(c).__name__.lower() for c in m.children()):
            total += 2 * tokens
    return total


def network_rounding_atol(module: torch.nn.Module, tokens: int, output: torch.Tensor) -> float:
    """Two float32 evaluations of `module` (batched differently) differ by at most 2 gamma(chain) max|output|."""
    return 2 * gamma(network_chain_length(module, tokens)) * float(output.abs().max())
