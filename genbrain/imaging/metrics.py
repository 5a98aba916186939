"""Image metrics for enhancement and cross-modality synthesis (paper Figs. 3-4) and the
DeepTaskGen metrics for resting-state -> task synthesis.

Definitions (DESIGN.md section 7; every function works on batches of voxel vectors):

- **[0, 1] normalisation** ("all T1w and FLAIR images were normalized to the range [0,1]"):
  each image separately, min-max over its brain voxels, ``(x - min) / (max - min)`` (a
  constant image becomes 0). Per image because every method speaks its own units (z-scores
  from the DiT, raw intensities from NL-means), so the scores do not depend on an affine
  change of intensity. ``percentiles=(p_lo, p_hi)`` uses those percentiles instead of the
  extremes and clips, for outputs with a few extreme voxels (off by default: the paper's plain
  min-max). Outside the mask the normalised volume is 0.
- **MSE / RMSE / PSNR** on the V brain voxels of the normalised pair:
  ``RMSE = sqrt(mean((p - t)^2))``, ``PSNR = 10 log10(1 / MSE)`` dB (data range 1; +inf for
  identical images).
- **3D-SSIM**: ``skimage.metrics.structural_similarity`` on the 91x109x91 normalised volumes
  (whole grid: the zero background counts, as "computed in the MNI152 2mm standard space"),
  with Wang et al.'s settings: Gaussian window sigma 1.5, population covariances,
  ``data_range = 1``.
- **MS-SSIM**: MONAI's ``MultiScaleSSIMMetric`` with 5 scales (weights 0.0448, 0.2856, 0.3001,
  0.2363, 0.1333) and a Gaussian window of size **5** (sigma 1.5). MONAI requires every side
  // 16 > window - 1; at 91 voxels that is 5 > 4, so the default window of 11 fails on this
  grid (:data:`MS_SSIM_WINDOW`).
- **DeepTaskGen** (Serin et al.; eminSerin/deeptaskgen-paper): ``C[i, j]`` = Pearson r of
  subject i's actual map with subject j's predicted map (in a mask); the diagonal is the
  reconstruction accuracy; **discriminability** = (fraction of rows whose largest entry is the
  diagonal, uniquely) x mean(diag(C)). **Dice at q**: each map keeps the voxels whose |v| is
  strictly above its k-th largest |v|, k = floor(q V) (unsigned; as the reference code, so ties
  at the threshold are dropped; k = 0 keeps none); Dice of two empty sets is 1. **Dice AUC**:
  trapezoid rule with dx = 0.05 over q = 0.05, 0.10, ..., 0.50 (maximum 0.45).
- **Identifiability** (:func:`identifiability`): per image, its own r ``C[i, i]``, whether
  it is identified (row i's unique maximum; the mean is the top-1 accuracy, chance 1/n) and
  ``r_gap`` = own r minus the mean of row i's other entries (the mean over images is the mean
  own r minus the mean other r).
- **Comparisons**: paired two-sided t-tests over subjects (``scipy.stats.ttest_rel``) of each
  method against a baseline; bootstrap CIs of means over subjects; and a subject bootstrap of
  the age/sex similarity (cosine of a covariate's t-map with a reference t-map,
  :mod:`genbrain.stats.similarity`), vectorised over resamples.

Per-subject scores come as a tidy table (:func:`score_batch`): one row per subject x metric.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sstats

from genbrain.errors import GenbrainInputError
from genbrain.space import StandardSpace, standard_space
from genbrain.stats.similarity import t_from_r

#: MS-SSIM window: the largest odd Gaussian window 5-scale MS-SSIM allows on a side of 91
MS_SSIM_WINDOW = 5
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_SIGMA = 1.5
#: DeepTaskGen's thresholds q = 0.05..0.50 and the trapezoid step
DICE_QS = tuple(np.round(np.arange(0.05, 0.51, 0.05), 2))
DICE_STEP = 0.05
SCORE_COLUMNS = ["subject", "metric", "value"]
TEST_COLUMNS = ["metric", "method", "baseline", "n", "mean_method", "mean_baseline",
                "mean_difference", "t", "p"]


def _pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred, np.float64), np.asarray(target, np.float64)
    if p.ndim == 1:
        p, t = p[None], t[None] if t.ndim == 1 else t
    if p.shape != t.shape or p.ndim != 2:
        raise GenbrainInputError(f"metrics: predictions {np.shape(pred)} and targets "
                                 f"{np.shape(target)} must both be (n, V)")
    return p, t


def normalise_01(x: np.ndarray, percentiles: tuple[float, float] | None = None) -> np.ndarray:
    """Per-image min-max normalisation of voxel vectors (..., V) -> float64 (..., V) in [0, 1].

    ``percentiles=(lo, hi)``: map those percentiles to 0 and 1 and clip instead."""
    x = np.asarray(x, np.float64)
    if percentiles is None:
        lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    else:
        lo, hi = (np.percentile(x, q, axis=-1, keepdims=True) for q in percentiles)
    rng = hi - lo
    out = np.divide(x - lo, rng, out=np.zeros_like(x), where=rng > 0)
    return np.clip(out, 0.0, 1.0) if percentiles is not None else out


def mse(pred: np.ndarray, target: np.ndarray, normalise: bool = True) -> np.ndarray:
    """Mean squared error per image over the V voxels: (n, V), (n, V) -> (n,).
    ``normalise``: score the [0, 1]-normalised pair (module docstring)."""
    p, t = _pair(pred, target)
    if normalise:
        p, t = normalise_01(p), normalise_01(t)
    return np.mean((p - t) ** 2, axis=1)


def rmse(pred: np.ndarray, target: np.ndarray, normalise: bool = True) -> np.ndarray:
    """Root mean squared error per image: (n, V), (n, V) -> (n,) (normalised units)."""
    return np.sqrt(mse(pred, target, normalise))


def psnr(pred: np.ndarray, target: np.ndarray, normalise: bool = True,
         data_range: float = 1.0) -> np.ndarray:
    """PSNR per image, ``10 log10(data_range^2 / MSE)`` dB: (n, V), (n, V) -> (n,); +inf where
    the images are equal."""
    m = mse(pred, target, normalise)
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / m)


def ssim3d(pred_volume: np.ndarray, target_volume: np.ndarray, data_range: float = 1.0) -> float:
    """3D-SSIM of two volumes (X, Y, Z) on a common scale (Wang et al. settings:
    Gaussian window sigma 1.5, population covariances, the given data range)."""
    from skimage.metrics import structural_similarity

    a, b = np.asarray(pred_volume, np.float64), np.asarray(target_volume, np.float64)
    if a.shape != b.shape or a.ndim != 3:
        raise GenbrainInputError(f"ssim3d: expected two volumes of one 3D shape, got {a.shape} "
                                 f"and {b.shape}")
    return float(structural_similarity(a, b, gaussian_weights=True, sigma=SSIM_SIGMA,
                                       use_sample_covariance=False, data_range=data_range))


def ms_ssim(pred_volumes: np.ndarray, target_volumes: np.ndarray, data_range: float = 1.0,
            kernel_size: int = MS_SSIM_WINDOW, weights: Sequence[float] = MS_SSIM_WEIGHTS
            ) -> np.ndarray:
    """MS-SSIM per image pair (MONAI ``MultiScaleSSIMMetric``, Gaussian window sigma 1.5):
    (n, X, Y, Z), (n, X, Y, Z) on a common scale -> (n,). MONAI raises ValueError when a side
    is too small for ``len(weights)`` scales with this window (91 needs ``kernel_size`` <= 5)."""
    import torch
    from monai.metrics import MultiScaleSSIMMetric

    a = torch.as_tensor(np.asarray(pred_volumes, np.float32))
    b = torch.as_tensor(np.asarray(target_volumes, np.float32))
    if a.ndim == 3:
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 4:
        raise GenbrainInputError(f"ms_ssim: expected two (n, X, Y, Z) batches of one shape, got "
                                 f"{tuple(a.shape)} and {tuple(b.shape)}")
    metric = MultiScaleSSIMMetric(spatial_dims=3, data_range=data_range, kernel_type="gaussian",
                                  kernel_size=kernel_size, kernel_sigma=SSIM_SIGMA,
                                  weights=tuple(weights), reduction="none")
    out = []
    for i in range(len(a)):  # one pair at a time bounds the memory of the 3D convolutions
        out.append(float(metric(a[i:i + 1, None], b[i:i + 1, None]).reshape(-1)[0]))
    return np.asarray(out)


def _volumes01(x: np.ndarray, space: StandardSpace) -> np.ndarray:
    return space.to_volume(normalise_01(x))


def ssim3d_vectors(pred: np.ndarray, target: np.ndarray,
                   space: StandardSpace | None = None) -> np.ndarray:
    """3D-SSIM of [0, 1]-normalised voxel vectors on the standard grid: (n, V) x2 -> (n,)."""
    space = standard_space() if space is None else space
    p, t = _pair(pred, target)
    return np.array([ssim3d(_volumes01(p[i], space), _volumes01(t[i], space))
                     for i in range(len(p))])


def ms_ssim_vectors(pred: np.ndarray, target: np.ndarray,
                    space: StandardSpace | None = None) -> np.ndarray:
    """5-scale MS-SSIM of [0, 1]-normalised voxel vectors on the grid: (n, V) x2 -> (n,)."""
    space = standard_space() if space is None else space
    p, t = _pair(pred, target)
    return np.concatenate([ms_ssim(_volumes01(p[i], space), _volumes01(t[i], space))
                           for i in range(len(p))])


# ---------------------------------------------------------------- DeepTaskGen metrics


def correlation_matrix(actual: np.ndarray, predicted: np.ndarray,
                       mask: np.ndarray | None = None) -> np.ndarray:
    """C[i, j] = Pearson r(actual_i, predicted_j) over the voxels (in ``mask``, a boolean (V,)):
    (n, V), (m, V) -> (n, m) float64; r = 0 where a map is constant."""
    a, p = np.asarray(actual, np.float64), np.asarray(predicted, np.float64)
    if a.ndim != 2 or p.ndim != 2 or a.shape[1] != p.shape[1]:
        raise GenbrainInputError(f"correlation_matrix: expected (n, V) and (m, V) maps, got "
                                 f"{a.shape} and {p.shape}")
    if mask is not None:
        a, p = a[:, mask], p[:, mask]

    def unit(x: np.ndarray) -> np.ndarray:
        x = x - x.mean(axis=1, keepdims=True)
        n = np.linalg.norm(x, axis=1, keepdims=True)
        return np.divide(x, n, out=np.zeros_like(x), where=n > 0)

    return np.clip(unit(a) @ unit(p).T, -1.0, 1.0)


def identified(corr: np.ndarray) -> np.ndarray:
    """(n, n) correlation matrix -> (n,) bool: row i's largest entry is C[i, i] and no other
    entry of the row ties it (the subject's own prediction is its unique best match)."""
    c = np.asarray(corr, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise GenbrainInputError(f"identified: expected a square matrix, got shape {c.shape}")
    diag = np.diag(c)
    others = np.where(np.eye(len(c), dtype=bool), -np.inf, c)
    return diag > others.max(axis=1, initial=-np.inf)


def discriminability(corr: np.ndarray) -> float:
    """DeepTaskGen's discriminability of an (n, n) matrix: fraction identified x mean diag.
    Not the per-image ``r_gap`` of :func:`identifiability` (own r minus mean other r)."""
    return float(identified(corr).mean() * np.mean(np.diag(corr)))


#: per-image identifiability metrics read off a correlation matrix (:func:`identifiability`)
IDENTIFIABILITY_METRICS = ("r", "identified", "r_gap")


def identifiability(corr: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image identifiability from an (n, n) matrix ``C[i, j]`` = r(target_i,
    prediction_j) (:func:`correlation_matrix`) -> {name: (n,)} for
    :data:`IDENTIFIABILITY_METRICS`: ``r`` = C[i, i] (the image's own r); ``identified`` = 1
    where C[i, i] is row i's unique maximum (:func:`identified`; its mean is the top-1
    identification accuracy, chance 1/n; identical predictions tie and identify no one);
    ``r_gap`` = C[i, i] minus the mean of row i's other entries (its mean over images is the
    mean own r minus the mean other r, the differential identifiability of Amico & Goni 2018;
    NaN when n = 1)."""
    c = np.asarray(corr, np.float64)
    if c.ndim != 2 or c.shape[0] != c.shape[1]:
        raise GenbrainInputError(f"identifiability: expected a square matrix, got {c.shape}")
    n = len(c)
    own = np.diag(c).copy()
    others = (c.sum(axis=1) - own) / (n - 1) if n > 1 else np.full(n, np.nan)
    return {"r": own, "identified": identified(c).astype(np.float64), "r_gap": own - others}


def top_q(maps: np.ndarray, q: float) -> np.ndarray:
    """Unsigned top-q voxels of maps (..., V) -> bool (..., V): |v| strictly above the k-th
    largest |v| of its map, k = floor(q V) (DeepTaskGen's threshold; k = 0 keeps none)."""
    a = np.abs(np.asarray(maps, np.float64))
    k = int(np.floor(q * a.shape[-1] + 1e-9))  # + 1e-9: 0.3 * 10 is 2.9999999999999996
    if k <= 0:
        return np.zeros(a.shape, dtype=bool)
    kth = np.partition(a, a.shape[-1] - k, axis=-1)[..., a.shape[-1] - k]
    return a > kth[..., None]


def dice(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Dice of boolean sets along the last axis: (..., V) x2 -> (...,); 1 where both are empty."""
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    inter = np.sum(a & b, axis=-1)
    total = np.sum(a, axis=-1) + np.sum(b, axis=-1)
    return np.divide(2.0 * inter, total, out=np.ones(total.shape), where=total > 0)


def dice_curve(pred: np.ndarray, actual: np.ndarray, qs: Sequence[float] = DICE_QS
               ) -> np.ndarray:
    """Dice of unsigned top-q voxels per subject and q: (n, V) x2 -> (n, len(qs))."""
    p, a = _pair(pred, actual)
    return np.stack([dice(top_q(p, q), top_q(a, q)) for q in qs], axis=-1)


def dice_auc(pred: np.ndarray, actual: np.ndarray, qs: Sequence[float] = DICE_QS,
             step: float = DICE_STEP) -> np.ndarray:
    """DeepTaskGen's Dice AUC per subject: trapezoid (dx = step) of the Dice curve over qs:
    (n, V) x2 -> (n,), at most (len(qs) - 1) * step = 0.45."""
    return np.trapezoid(dice_curve(pred, actual, qs), dx=step, axis=-1)


# ---------------------------------------------------------------- tables


def _r_own(pred, target, space, mask):
    """diag(C) without the (n, n) product: row-wise Pearson r of target_i and pred_i."""
    p, t = _pair(pred, target)
    if mask is not None:
        p, t = p[:, mask], t[:, mask]
    p, t = p - p.mean(axis=1, keepdims=True), t - t.mean(axis=1, keepdims=True)
    den = np.linalg.norm(p, axis=1) * np.linalg.norm(t, axis=1)
    num = np.einsum("ij,ij->i", p, t)
    return np.clip(np.divide(num, den, out=np.zeros_like(num), where=den > 0), -1.0, 1.0)


def _identified(pred, target, space, mask):
    return identified(correlation_matrix(target, pred, mask)).astype(np.float64)


def _masked(fn):
    def run(pred, target, space, mask):
        p, t = _pair(pred, target)
        return fn(p[:, mask], t[:, mask]) if mask is not None else fn(p, t)
    return run


#: per-subject metrics by name: f(pred (n, V), target (n, V), space, mask) -> (n,).
#: ``identified`` is 0/1; its mean times the mean ``r`` is the discriminability.
METRICS: dict[str, Callable[..., np.ndarray]] = {
    "psnr": _masked(psnr),
    "rmse": _masked(rmse),
    "ssim3d": lambda p, t, space, mask: ssim3d_vectors(p, t, space),
    "ms_ssim": lambda p, t, space, mask: ms_ssim_vectors(p, t, space),
    "r": _r_own,
    "identified": _identified,
    "dice_auc": _masked(dice_auc),
}
IMAGE_METRICS = ("psnr", "rmse", "ssim3d", "ms_ssim")
MAP_METRICS = ("r", "identified", "dice_auc")


def score_batch(pred: np.ndarray, target: np.ndarray, subjects: Sequence[str],
                metrics: Sequence[str] = IMAGE_METRICS, space: StandardSpace | None = None,
                mask: np.ndarray | None = None, **labels: str) -> pd.DataFrame:
    """Score predictions (n, V) against targets (n, V) -> tidy table, one row per subject x
    metric (columns: the ``labels`` given, e.g. method="unet", task="T1w->FLAIR", then
    subject, metric, value).

    ``metrics`` are names of :data:`METRICS`; ``mask`` (boolean (V,)) restricts every metric
    but the SSIMs (which need the whole grid). Vectors are of ``space`` (default: the 2 mm
    standard space) when a SSIM is asked for."""
    p, t = _pair(pred, target)
    subjects = [str(s) for s in subjects]
    if len(subjects) != len(p):
        raise GenbrainInputError(f"score_batch: {len(p)} images but {len(subjects)} subjects")
    rows = []
    for name in metrics:
        if name not in METRICS:
            hint = difflib.get_close_matches(name, list(METRICS), n=1)
            did = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise GenbrainInputError(f"unknown metric '{name}'{did}; expected one of "
                                     f"{sorted(METRICS)}")
        values = METRICS[name](p, t, space, mask)
        rows.append(pd.DataFrame({"subject": subjects, "metric": name, "value": values}))
    table = pd.concat(rows, ignore_index=True)
    for k, v in reversed(list(labels.items())):
        table.insert(0, k, v)
    return table


def paired_tests(table: pd.DataFrame, baseline: str, method_column: str = "method"
                 ) -> pd.DataFrame:
    """Paired two-sided t-tests (``scipy.stats.ttest_rel``) of every method against
    ``baseline``, per metric, over the subjects both have: a score table (columns method,
    subject, metric, value) -> one row per (metric, method) with :data:`TEST_COLUMNS`.
    t > 0 means the method scores higher (better for all but rmse)."""
    need = {method_column, "subject", "metric", "value"}
    if not need <= set(table.columns):
        raise GenbrainInputError(f"paired_tests: score table lacks columns "
                                 f"{sorted(need - set(table.columns))}")
    if baseline not in set(table[method_column]):
        raise GenbrainInputError(f"paired_tests: baseline '{baseline}' is not among the methods "
                                 f"{sorted(set(table[method_column]))}")
    wide = table.pivot_table(index=["metric", "subject"], columns=method_column, values="value",
                             aggfunc="first")
    rows = []
    for metric, g in wide.groupby(level="metric", sort=False):
        for method in [m for m in wide.columns if m != baseline]:
            pair = g[[method, baseline]].dropna()
            a, b = pair[method].to_numpy(), pair[baseline].to_numpy()
            d = a - b
            finite = np.isfinite(d)
            a, b, d = a[finite], b[finite], d[finite]
            if len(d) >= 2 and np.ptp(d) > 0:
                res = sstats.ttest_rel(a, b)
                t, p = float(res.statistic), float(res.pvalue)
            else:
                t = p = float("nan")
            rows.append((metric, method, baseline, len(d), float(np.mean(a)) if len(a) else
                         float("nan"), float(np.mean(b)) if len(b) else float("nan"),
                         float(np.mean(d)) if len(d) else float("nan"), t, p))
    return pd.DataFrame(rows, columns=TEST_COLUMNS)


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n) subject resamples with replacement from ``default_rng(seed)``: the same
    (n, n_boot, seed) gives the same resamples, so methods scored on them are paired."""
    if n < 1 or n_boot < 1:
        raise GenbrainInputError(f"bootstrap needs n >= 1 subjects and n_boot >= 1, got {n}, "
                                 f"{n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 1000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float, float]:
    """Mean of per-subject values (n,) and its percentile bootstrap ``level`` CI -> (mean,
    low, high); non-finite values are dropped first."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    means = v[bootstrap_indices(len(v), n_boot, seed)].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(v.mean()), float(lo), float(hi)


def summarise_scores(table: pd.DataFrame, by: Sequence[str] = ("method", "metric"),
                     n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Per group of a score table: n, mean and bootstrap CI of the value (columns: ``by``,
    n, mean, ci_low, ci_high)."""
    rows = []
    for key, g in table.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi = bootstrap_mean_ci(g["value"].to_numpy(), n_boot, level, seed)
        rows.append((*key, int(np.isfinite(g["value"].to_numpy(np.float64)).sum()), m, lo, hi))
    return pd.DataFrame(rows, columns=[*by, "n", "mean", "ci_low", "ci_high"])


def bootstrap_similarity(images: np.ndarray, covariate: np.ndarray, reference: np.ndarray,
                         n_boot: int = 1000, seed: int = 0, indices: np.ndarray | None = None,
                         chunk_voxels: int = 4096) -> np.ndarray:
    """Subject bootstrap of a similarity score: for each resample b of the n subjects (with
    replacement), the t-map of ``covariate`` (t from the Pearson r of intensity and covariate
    over the resampled subjects, duplicates counted) and its cosine with ``reference`` (V,).

    images: (n, V); covariate: (n,) (age in years, or sex coded M = 0, F = 1). Returns
    (n_boot,) cosines. Resample b is row b of ``indices`` (default :func:`bootstrap_indices`
    (n, n_boot, seed)), so two methods' outputs for the same subjects are resampled alike.
    A resample is a vector of counts w, so every statistic is a weighted sum: per voxel chunk
    three (n_boot, n) @ (n, chunk) products; memory ~ 4 x n_boot x chunk_voxels x 8 bytes.
    """
    x = np.asarray(images)
    y = np.asarray(covariate, np.float64)
    ref = np.asarray(reference, np.float64)
    n, v = x.shape
    if y.shape != (n,) or ref.shape != (v,):
        raise GenbrainInputError(f"bootstrap_similarity: expected covariate ({n},) and reference "
                                 f"({v},), got {y.shape} and {ref.shape}")
    idx = bootstrap_indices(n, n_boot, seed) if indices is None else np.asarray(indices)
    w = np.zeros((len(idx), n))
    np.add.at(w, (np.repeat(np.arange(len(idx)), idx.shape[1]), idx.ravel()), 1.0)
    m = w.sum(axis=1, keepdims=True)  # (B, 1): subjects per resample
    yc = y - y.mean()  # centring first keeps the weighted sums well conditioned
    my = (w @ yc)[:, None] / m
    syy = (w @ yc**2)[:, None] / m - my**2
    dot = np.zeros(len(idx))
    tt = np.zeros(len(idx))
    for s in range(0, v, chunk_voxels):
        xc = np.asarray(x[:, s:s + chunk_voxels], np.float64)
        const = np.ptp(xc, axis=0) == 0
        xc = xc - xc.mean(axis=0)
        xc[:, const] = 0.0  # exactly: a mean's rounding must not look like variance
        mx = (w @ xc) / m  # (B, c)
        sxx = (w @ xc**2) / m - mx**2
        sxy = ((w * yc) @ xc) / m - mx * my
        # a voxel (or covariate) constant within a resample has r = 0, as in correlation_maps;
        # "constant" is relative to its variance over all subjects (the sums leave ~1e-16)
        ok = (sxx > 1e-10 * np.mean(xc**2, axis=0)) & (syy > 1e-10 * np.mean(yc**2))
        den = np.sqrt(np.where(ok, sxx * syy, 1.0))
        r = np.where(ok, sxy / den, 0.0)
        t = t_from_r(np.clip(r, -1.0, 1.0), int(idx.shape[1]))
        dot += t @ ref[s:s + chunk_voxels]
        tt += np.einsum("bc,bc->b", t, t)
    nref = np.linalg.norm(ref)
    return np.divide(dot, np.sqrt(tt) * nref, out=np.full(len(idx), np.nan),
                     where=(tt > 0) & (nref > 0))


def similarity_draws(images: np.ndarray, age: np.ndarray, sex: np.ndarray,
                     reference: np.ndarray, indices: np.ndarray,
                     chunk_voxels: int = 4096) -> dict[str, tuple[float, np.ndarray]]:
    """Age and sex similarity of one set of n images (n, V) with the reference t-maps
    (2, V; rows age, sex, :func:`genbrain.stats.similarity.tmaps` of a reference cohort) ->
    {"age" | "sex": (cosine of the n images' own t-map, (B,) cosines of the resamples
    ``indices`` (B, n))}: the paper's Fig. 3-4 "age/sex similarity" of a test cohort and its
    subject bootstrap (:func:`bootstrap_similarity`). ``sex``: codes M = 0, F = 1."""
    ident = np.arange(len(images))[None]
    out = {}
    for effect, y, ref in (("age", age, reference[0]), ("sex", sex, reference[1])):
        point = bootstrap_similarity(images, y, ref, indices=ident, chunk_voxels=chunk_voxels)
        draws = bootstrap_similarity(images, y, ref, indices=indices, chunk_voxels=chunk_voxels)
        out[effect] = (float(point[0]), draws)
    return out
