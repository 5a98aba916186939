"""Pearson's r, written once: every correlation the package reports (map overlap and the BWAS
screen, registration QC, the clinical regressor's validation and test r, the pretraining
sample panel, the fine-tune and paired-sample checks) is :func:`pearson`."""

from __future__ import annotations

import math

import numpy as np


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r of two (n,) arrays, in float64 whatever their dtype:
    ``r = sum(a' b') / sqrt(sum(a'^2) sum(b'^2))`` with ``a' = a - mean(a)``, ``b'`` likewise.

    NaN when either array is constant (r is undefined: a placeholder image, a model that
    predicts one value for everyone), never 0, which would read as "no relation"; callers
    that average several r skip it with ``np.isfinite``."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else float("nan")


__all__ = ["pearson"]
