"""Overlap scores between two effect-size maps and their chance levels (DESIGN §7, Fig. 5).

For a map A (a site's or a synthetic cohort's d map) and the reference map B, inside a mask of
m voxels, with P = {d > 0}, N = {d < 0} (a voxel with d = 0 is in neither):

- ``r``: Pearson correlation of the two maps;
- ``dice_p`` = 2|PA ∩ PB| / (|PA| + |PB|), ``dice_n`` likewise with N;
- ``dice`` (micro-average) = (2|PA ∩ PB| + 2|NA ∩ NB|) / (|PA| + |PB| + |NA| + |NB|);
- ``top_dice_p`` / ``top_dice_n`` / ``top_dice``: the same with PA, NA replaced by PA ∩ TA,
  NA ∩ TA and PB, NB by PB ∩ TB, NB ∩ TB, where TA is A's *top set*: its k = ceil(0.2 m)
  voxels of largest |d| (ties at the boundary broken by voxel order), and TB is B's. So
  ``top_dice`` is the fraction of the two top sets that overlap with the same sign.

Dice of two empty sets is 1. Every formula is written once, in :func:`scores_from_counts`,
and used by both the exact scores here and the bootstrap in :mod:`genbrain.stats.cohens_d`.

Chance levels. :func:`chance_levels` is the *sign-fraction null*: the expected score when A's
values are put on the voxels in a uniformly random order (a permutation null; A's and B's sign
fractions and top sets keep their sizes). Its expectation is exact, not an approximation:
E|PA ∩ PB| = |PA| |PB| / m, so chance Dice-p = 2 |PA||PB| / (m (|PA| + |PB|)), chance Dice =
2(|PA||PB| + |NA||NB|) / (m (|PA| + |PB| + |NA| + |NB|)) (= p q + (1 - p)(1 - q) with
negative fractions p, q when no voxel is 0), the top variants the same with the top-set counts
(~0.1 for 20% top sets), and chance r = 0. A permutation ignores that neighbouring voxels are
alike, so its spread is too narrow for smooth maps; :func:`spatial_null` gives a
*spatially-aware* null distribution: surrogate maps with A's exact value distribution (sign
fraction, |d| quantiles) and A's smoothness, made by smoothing white noise in the volume with
a Gaussian kernel whose width reproduces A's lag-1 neighbour correlation, then giving A's
sorted values to its voxels in rank order. Its mean matches the sign-fraction null (both are
unrelated to B with A's composition); its 95th percentile is the bar a score must clear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.stats.correlation import pearson

METRICS = ("r", "dice", "dice_p", "dice_n", "top_dice", "top_dice_p", "top_dice_n")
METRIC_LABELS = {"r": "Correlation", "dice": "Dice", "dice_p": "Dice-p", "dice_n": "Dice-n",
                 "top_dice": "Top-Dice", "top_dice_p": "Top-Dice-p",
                 "top_dice_n": "Top-Dice-n"}
TOP = 0.2


def top_k(m: int, top: float = TOP) -> int:
    """Size of a map's top set: ceil(top * m) of the m voxels in the mask (at least 1)."""
    if not 0 < top <= 1:
        raise GenbrainInputError(f"top fraction must be in (0, 1], got {top}")
    return max(1, math.ceil(top * m - 1e-9))


def top_set(values: np.ndarray, top: float = TOP) -> np.ndarray:
    """(m,) bool: the k = ceil(top m) voxels of largest |value| (ties: earlier voxel first)."""
    values = np.asarray(values)
    order = np.argsort(-np.abs(values), kind="stable")
    out = np.zeros(len(values), dtype=bool)
    out[order[:top_k(len(values), top)]] = True
    return out


@dataclass
class SignClasses:
    """A map's fixed voxel sets (each (m,) bool): P, N, and P, N inside its top set."""

    pos: np.ndarray
    neg: np.ndarray
    top_pos: np.ndarray
    top_neg: np.ndarray


def sign_classes(values: np.ndarray, top: float = TOP) -> SignClasses:
    """P = {d > 0}, N = {d < 0} and their parts inside the top set of a map (m,)."""
    values = np.asarray(values)
    t = top_set(values, top)
    pos, neg = values > 0, values < 0
    return SignClasses(pos, neg, pos & t, neg & t)


@dataclass
class SignCounts:
    """Set sizes for the Dice formulas (scalars or (B,) arrays): |PA|, |NA|, |PB|, |NB|,
    |PA ∩ PB| (``pp``) and |NA ∩ NB| (``nn``)."""

    pa: np.ndarray | float
    na: np.ndarray | float
    pb: np.ndarray | float
    nb: np.ndarray | float
    pp: np.ndarray | float
    nn: np.ndarray | float


def dice_of(inter: np.ndarray | float, size_a: np.ndarray | float,
            size_b: np.ndarray | float) -> np.ndarray:
    """Dice = 2 |A ∩ B| / (|A| + |B|), 1 when both sets are empty (arrays broadcast)."""
    inter, den = np.asarray(inter, np.float64), np.asarray(size_a, np.float64) + size_b
    return np.divide(2.0 * inter, den, out=np.ones(np.broadcast(inter, den).shape),
                     where=den > 0)


def scores_from_counts(r: np.ndarray | float, whole: SignCounts, top: SignCounts
                       ) -> dict[str, np.ndarray]:
    """The seven scores of :data:`METRICS` from Pearson r and the whole-map and top-set
    counts; the only place the Dice variants are defined."""
    out = {"r": np.asarray(r, np.float64)}
    for prefix, c in (("", whole), ("top_", top)):
        out[f"{prefix}dice_p"] = dice_of(c.pp, c.pa, c.pb)
        out[f"{prefix}dice_n"] = dice_of(c.nn, c.na, c.nb)
        out[f"{prefix}dice"] = dice_of(np.asarray(c.pp, np.float64) + c.nn,
                                       np.asarray(c.pa, np.float64) + c.na,
                                       np.asarray(c.pb, np.float64) + c.nb)
    return out


def _in_mask(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None) -> tuple[np.ndarray, ...]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise GenbrainInputError(f"overlap: maps must be vectors of one length, got "
                                 f"{a.shape} and {b.shape}")
    if mask is None:
        mask = np.isfinite(a) & np.isfinite(b)
    mask = np.asarray(mask, bool)
    if mask.shape != a.shape or not mask.any():
        raise GenbrainInputError(f"overlap: mask must be a non-empty ({len(a)},) boolean vector")
    a, b = a[mask], b[mask]
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise GenbrainInputError("overlap: a map has NaN/inf voxels inside the mask")
    return a, b


def _counts(a: np.ndarray, cb: SignClasses, top: float) -> tuple[SignCounts, SignCounts]:
    ca = sign_classes(a, top)
    whole = SignCounts(ca.pos.sum(), ca.neg.sum(), cb.pos.sum(), cb.neg.sum(),
                       (ca.pos & cb.pos).sum(), (ca.neg & cb.neg).sum())
    topc = SignCounts(ca.top_pos.sum(), ca.top_neg.sum(), cb.top_pos.sum(), cb.top_neg.sum(),
                      (ca.top_pos & cb.top_pos).sum(), (ca.top_neg & cb.top_neg).sum())
    return whole, topc


def overlap_scores(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None,
                   top: float = TOP) -> dict[str, float]:
    """The seven scores (:data:`METRICS`) of map ``a`` against map ``b`` (both (V,)), inside
    ``mask`` (V,) bool (default: voxels finite in both)."""
    a, b = _in_mask(a, b, mask)
    whole, topc = _counts(a, sign_classes(b, top), top)
    return {k: float(v) for k, v in scores_from_counts(pearson(a, b), whole, topc).items()}


def chance_levels(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None,
                  top: float = TOP) -> dict[str, float]:
    """Sign-fraction (permutation) null of every score: the exact expectation when ``a``'s
    values are placed on the voxels in random order (module docstring). (V,) maps -> dict."""
    a, b = _in_mask(a, b, mask)
    m = len(a)
    ca, cb = sign_classes(a, top), sign_classes(b, top)

    def expected(pa, na, pb, nb) -> SignCounts:
        return SignCounts(pa, na, pb, nb, pa * pb / m, na * nb / m)

    whole = expected(ca.pos.sum(), ca.neg.sum(), cb.pos.sum(), cb.neg.sum())
    topc = expected(ca.top_pos.sum(), ca.top_neg.sum(), cb.top_pos.sum(), cb.top_neg.sum())
    return {k: float(v) for k, v in scores_from_counts(0.0, whole, topc).items()}


def neighbour_correlation(volume: np.ndarray, inside: np.ndarray) -> float:
    """Mean lag-1 correlation of a 3D map between face neighbours both ``inside`` (3D bool),
    over the three axes: the smoothness the spatial null reproduces."""
    rs = []
    for axis in range(3):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        both = inside[tuple(lo)] & inside[tuple(hi)]
        if both.sum() > 2:
            rs.append(pearson(volume[tuple(lo)][both], volume[tuple(hi)][both]))
    rs = [r for r in rs if np.isfinite(r)]
    return float(np.mean(rs)) if rs else 0.0


def spatial_null(a: np.ndarray, b: np.ndarray, mask: np.ndarray, volume_mask: np.ndarray,
                 n_null: int = 100, seed: int = 0, top: float = TOP) -> pd.DataFrame:
    """Scores of ``n_null`` smoothness-matched surrogates of ``a`` against ``b`` -> DataFrame
    (n_null rows, :data:`METRICS` columns).

    a, b: (V,) maps on the voxel vector of ``volume_mask`` (a 3D bool volume with V voxels, C
    order, e.g. ``standard_space().mask``); mask: (V,) bool analysis mask. Each surrogate is
    white noise in the volume smoothed by a Gaussian of sigma s voxels, where s makes the
    lag-1 correlation exp(-1 / (4 s^2)) equal ``a``'s (:func:`neighbour_correlation`), then
    rank-matched to ``a``'s values in the mask (module docstring). Seeded.
    """
    from scipy.ndimage import gaussian_filter

    volume_mask = np.asarray(volume_mask, bool)
    if volume_mask.ndim != 3 or volume_mask.sum() != len(a):
        raise GenbrainInputError(f"spatial null: the volume mask holds {volume_mask.sum()} "
                                 f"voxels, the maps {len(a)}")
    av, bv = _in_mask(a, b, mask)
    inside = np.zeros(volume_mask.shape, bool)
    inside[volume_mask] = np.asarray(mask, bool)
    vol = np.zeros(volume_mask.shape)
    vol[inside] = av
    rho = neighbour_correlation(vol, inside)
    sigma = math.sqrt(-1.0 / (4.0 * math.log(rho))) if 0 < rho < 1 else 0.0
    sorted_a = np.sort(av)
    cb = sign_classes(bv, top)
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_null):
        noise = rng.standard_normal(volume_mask.shape)
        if sigma > 0:
            noise = gaussian_filter(noise, sigma, mode="constant")
        field = noise[inside]
        sur = np.empty_like(field)
        sur[np.argsort(field, kind="stable")] = sorted_a
        whole, topc = _counts(sur, cb, top)
        rows.append({k: float(v) for k, v in
                     scores_from_counts(pearson(sur, bv), whole, topc).items()})
    out = pd.DataFrame(rows, columns=list(METRICS))
    out.attrs["sigma_voxels"] = sigma
    out.attrs["neighbour_r"] = rho
    return out
