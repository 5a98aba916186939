"""Bootstrap p-values and the augmentation sweep's ratio grid, each written once for the stages.

- :func:`ratio_grid`: the synthetic:real ratios of an augmentation sweep (the diagnosis and
  clinical sweeps; the paper's 0.0..3.0 by 0.1).
- :func:`bootstrap_p`: the two-sided bootstrap p-value of a difference, read off its B
  bootstrap values by counting: ``min(1, 2 min(#(d_b <= 0) + 1, #(d_b >= 0) + 1) / (B + 1))``
  (the BWAS score table's ``p_bootstrap``).
- :func:`bootstrap_t_p`: the bootstrap t-test of a difference ``d``: ``t = d / sd(d_b)``
  against Student's t with B - 1 degrees of freedom, ``p = 2 t.sf(|t|, B - 1)`` (the paper's
  test of a paired difference; the diagnosis sweep's ``p``).

The two p-values are not interchangeable: :func:`bootstrap_p` assumes nothing about the
shape of the resampled differences and cannot go below ``2 / (B + 1)``; :func:`bootstrap_t_p`
assumes they are normal and goes to 0 for a difference many standard errors from 0.
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sstats

from genbrain.errors import GenbrainInputError


def ratio_grid(start: float = 0.0, stop: float = 3.0, step: float = 0.1) -> tuple[float, ...]:
    """Ratios start, start + step, ..., stop (inclusive), rounded to 6 decimals (so 0.3 is
    0.3, not 0.30000000000000004). One-line error unless 0 <= start <= stop and step > 0."""
    if step <= 0 or stop < start or start < 0:
        raise GenbrainInputError(f"ratio grid: expected 0 <= start <= stop and step > 0, got "
                                 f"start {start}, stop {stop}, step {step}")
    n = int(np.floor((stop - start) / step + 1e-9)) + 1
    return tuple(round(start + i * step, 6) for i in range(n))


def bootstrap_p(delta: np.ndarray) -> float:
    """Two-sided bootstrap p-value that a difference is 0, from its (B,) bootstrap values
    ``delta`` (centred on the observed difference by the caller): the counting formula of the
    module docstring, at least ``2 / (B + 1)``."""
    delta = np.asarray(delta, np.float64)
    lo, hi = np.count_nonzero(delta <= 0) + 1, np.count_nonzero(delta >= 0) + 1
    return float(min(1.0, 2.0 * min(lo, hi) / (len(delta) + 1)))


def bootstrap_t_p(diff: float, resampled: np.ndarray) -> float:
    """Two-sided bootstrap t-test of an observed difference ``diff`` from its (B,) resampled
    values: ``t = diff / sd(resampled)`` (ddof 1, non-finite values dropped),
    ``p = 2 t.sf(|t|, B - 1)``. When the resampled values do not vary: 1.0 for ``diff`` 0,
    else 0.0; NaN with fewer than two finite values."""
    v = resampled[np.isfinite(resampled)]
    if len(v) < 2:
        return float("nan")
    sd = float(np.std(v, ddof=1))
    if sd == 0:
        return 1.0 if diff == 0 else 0.0
    return float(2 * sstats.t.sf(abs(diff) / sd, len(v) - 1))


__all__ = ["bootstrap_p", "bootstrap_t_p", "ratio_grid"]
