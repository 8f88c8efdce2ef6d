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
