"""BWAS comparison of a site's real and synthetic cohorts with the reference (paper Fig. 5).

- :func:`site_score_table`: one tidy table per site, a row per metric: the real and synthetic
  maps' scores against the reference, their bootstrap means and 95% CIs, the
  synthetic-minus-real difference with its CI, the paper's bootstrap t-test and a plain
  bootstrap p-value, and each map's chance level (:mod:`genbrain.stats.overlap`).
- :func:`truth_recovery`: correlation of each map with a known true effect map (simulations).
- :func:`agreement_curve` / :func:`effective_sample_size`: the size of a real cohort whose map
  agrees with the reference as well as the synthetic one does.
- :func:`concordance_screen`: before fine-tuning, whether a site is expected to benefit.

The bootstrap t-test. The paper ("bootstrap t-tests (1,000 random resampling with
replacement) within each cohort") reports p-values down to 1e-128 and "p = 0"; the definition
that produces such values, and the one used here (``p_bootstrap_t``), is a two-sided Student
two-sample t-test (scipy ``ttest_ind``, equal variances) between the B bootstrap scores of the
synthetic cohort and the B of the real one. Its p-value shrinks as B grows, whatever the data,
because bootstrap replicates are not independent observations; so the table also gives
``p_bootstrap``, the two-sided bootstrap p-value of the difference: with
``delta_b = synthetic_b - real_b`` (independent resamples paired by index),
``p = min(1, 2 min(#(delta_b <= 0) + 1, #(delta_b >= 0) + 1) / (B + 1))``, the ``delta_b``
centred as below (:func:`genbrain.stats.resampling.bootstrap_p`). Read that one.

CIs: percentile intervals of the bootstrap scores, **shifted by the bootstrap's bias** (each
interval moved by the full cohort's score minus the bootstrap mean), so every interval is
centred on the score it qualifies. The shift is needed: a resample drawn with replacement
holds ~63% distinct subjects, so its d map is noisier and its agreement with the reference
lower than the full cohort's (measured on a planted effect, n 40: bootstrap mean r 0.60
against the full cohort's 0.71, a raw 95% interval of 0.55-0.63 that misses it). The
``*_boot_mean`` columns keep the raw bootstrap means, which show the bias; the paper's
t-test uses the raw scores (the paper's error bars use 1.96 SE).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sstats

from genbrain.errors import GenbrainInputError
from genbrain.stats.cohens_d import as_cohort, bootstrap_overlaps, cohens_d, design_matrix
from genbrain.stats.correlation import pearson
from genbrain.stats.overlap import METRICS, chance_levels, overlap_scores, spatial_null
from genbrain.stats.resampling import bootstrap_p
from genbrain.stats.similarity import Cohort

log = logging.getLogger(__name__)

KINDS = ("real", "synthetic")
SCREEN_COLUMNS = ("site", "n", "split_half_r", "reliability", "r_prior", "concordance",
                  "verdict", "reason")
TABLE_COLUMNS = [
    "site", "metric", "real", "synthetic", "real_boot_mean", "real_ci_low", "real_ci_high",
    "synthetic_boot_mean", "synthetic_ci_low", "synthetic_ci_high", "difference",
    "difference_ci_low", "difference_ci_high", "relative_gain_pct", "relative_gain_ci_low",
    "relative_gain_ci_high", "t_statistic", "p_bootstrap_t", "p_bootstrap", "chance_real",
    "chance_synthetic", "chance_spatial_q95_real", "chance_spatial_q95_synthetic", "n_boot"]


def bootstrap_t_test(synthetic: np.ndarray, real: np.ndarray) -> tuple[float, float]:
    """The paper's bootstrap t-test: (t, two-sided p) of a Student two-sample t-test between
    two sets of bootstrap scores (module docstring for why ``p`` is not a calibrated p-value)."""
    a, b = np.asarray(synthetic, np.float64), np.asarray(real, np.float64)
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return (0.0, 1.0) if a[0] == b[0] else (math.copysign(math.inf, a[0] - b[0]), 0.0)
    res = sstats.ttest_ind(a, b, equal_var=True)
    return float(res.statistic), float(res.pvalue)


def _ci(x: np.ndarray, observed: float, level: float) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap values ``x`` shifted by their bias
    (mean - ``observed``): centred on the observed value (module docstring)."""
    shift = float(np.nanmean(x)) - observed
    lo, hi = np.nanquantile(x, [(1 - level) / 2, (1 + level) / 2])
    return float(lo) - shift, float(hi) - shift


def site_score_table(site: str, observed: Mapping[str, Mapping[str, float]],
                     boot: Mapping[str, pd.DataFrame],
                     chance: Mapping[str, Mapping[str, float]],
                     spatial: Mapping[str, pd.DataFrame] | None = None,
                     level: float = 0.95) -> pd.DataFrame:
    """One site's score table (:data:`TABLE_COLUMNS`, a row per metric of :data:`METRICS`).

    observed[kind][metric]: the full cohort's score (kind in ``real``, ``synthetic``);
    boot[kind]: B bootstrap scores (:func:`~genbrain.stats.cohens_d.bootstrap_overlaps`);
    chance[kind][metric]: the sign-fraction null of that map; spatial[kind] (optional): the
    spatial null's scores, whose 95th percentile is reported. Relative gain (%) is
    100 (synthetic - real) / |real| and its CI the difference's CI over |real|.
    """
    for kind in KINDS:
        for what, src in (("observed", observed), ("boot", boot), ("chance", chance)):
            if kind not in src:
                raise GenbrainInputError(f"site {site}: no {what} scores for the {kind} cohort")
    n_boot = min(len(boot["real"]), len(boot["synthetic"]))
    rows = []
    for metric in METRICS:
        br = boot["real"][metric].to_numpy(np.float64)[:n_boot]
        bs = boot["synthetic"][metric].to_numpy(np.float64)[:n_boot]
        real, syn = float(observed["real"][metric]), float(observed["synthetic"][metric])
        delta = bs - br
        d_lo, d_hi = _ci(delta, syn - real, level)
        t, p_t = bootstrap_t_test(bs, br)
        base = abs(real)

        def gain(x: float, base: float = base) -> float:
            return 100.0 * x / base if base > 0 else float("nan")

        q95 = {k: float(spatial[k][metric].quantile(0.95)) if spatial and k in spatial
               else float("nan") for k in KINDS}
        centred = delta - (float(np.nanmean(delta)) - (syn - real))
        rows.append([site, metric, real, syn, float(np.nanmean(br)), *_ci(br, real, level),
                     float(np.nanmean(bs)), *_ci(bs, syn, level), syn - real, d_lo, d_hi,
                     gain(syn - real), gain(d_lo), gain(d_hi), t, p_t, bootstrap_p(centred),
                     float(chance["real"][metric]), float(chance["synthetic"][metric]),
                     q95["real"], q95["synthetic"], n_boot])
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def site_scores(site: str, real: Cohort, synthetic: Cohort, reference_map: np.ndarray,
                mask: np.ndarray, *, volume_mask: np.ndarray | None = None,
                n_boot: int = 1000, seed: int = 0, n_null: int = 100,
                control: str | None = None, memory_mb: float = 768
                ) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """Everything of one site: its real and synthetic d maps (NaN outside ``mask``), their
    scores against ``reference_map`` (V,), bootstraps (seeds ``seed`` and ``seed + 1``),
    chance levels, and the spatial null when ``volume_mask`` (3D bool with V voxels, e.g.
    ``standard_space().mask``) is given -> (score table, {"real": d, "synthetic": d})."""
    maps, observed, boots, chance, spatial = {}, {}, {}, {}, {}
    for i, (kind, cohort) in enumerate((("real", real), ("synthetic", synthetic))):
        d = cohens_d(cohort, control=control, mask=mask, memory_mb=memory_mb)
        maps[kind] = d
        observed[kind] = overlap_scores(d, reference_map, mask)
        chance[kind] = chance_levels(d, reference_map, mask)
        boots[kind] = bootstrap_overlaps(cohort, reference=reference_map, mask=mask,
                                         n_boot=n_boot, seed=seed + i, control=control,
                                         memory_mb=memory_mb)
        if volume_mask is not None and n_null > 0:
            spatial[kind] = spatial_null(d, reference_map, mask, volume_mask, n_null, seed + i)
    return site_score_table(site, observed, boots, chance, spatial or None), maps


def truth_recovery(maps: Mapping[str, np.ndarray], truth: np.ndarray,
                   mask: np.ndarray | None = None) -> pd.DataFrame:
    """Pearson r of each map (name -> (V,)) with the true effect map (V,) inside ``mask``
    (default: voxels finite in both) -> DataFrame (map, r_truth)."""
    rows = [(name, overlap_scores(d, truth, mask)["r"]) for name, d in maps.items()]
    return pd.DataFrame(rows, columns=["map", "r_truth"])


def draw_disjoint(diagnosis: np.ndarray, n: int, repeats: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """``repeats`` disjoint subsamples of ``n`` members (without replacement), each with the
    pool's patient fraction (at least one of each group)."""
    pat, con = np.flatnonzero(diagnosis == 1), np.flatnonzero(diagnosis == 0)
    n_pat = int(np.clip(round(n * len(pat) / len(diagnosis)), 1, n - 1))
    n_con = n - n_pat
    repeats = min(repeats, len(pat) // n_pat, len(con) // n_con)
    pat, con = rng.permutation(pat), rng.permutation(con)
    return [np.sort(np.concatenate([pat[r * n_pat:(r + 1) * n_pat],
                                    con[r * n_con:(r + 1) * n_con]])) for r in range(repeats)]


def agreement_curve(pool: Cohort, reference_map: np.ndarray, mask: np.ndarray,
                    sizes: Sequence[int], *, n_repeats: int = 5, seed: int = 0,
                    metric: str = "r", control: str | None = None) -> pd.DataFrame:
    """Agreement with the reference of real cohorts of each size -> DataFrame (n, repeat,
    ``metric`` value). For each n, up to ``n_repeats`` disjoint subsamples of the pool drawn
    without replacement (fewer when the pool is too small), each with the pool's patient
    fraction. The pool should be disjoint from the reference cohort (e.g. held-out reference
    sites); when it is the reference cohort itself, a subsample's members are part of the
    reference and agreement is inflated by roughly n / N."""
    if metric not in METRICS:
        raise GenbrainInputError(f"agreement metric must be one of {METRICS}, got '{metric}'")
    dx = design_matrix(pool.covariates, control=control, label=pool.label).x[:, -1]
    rng = np.random.default_rng(seed)
    rows = []
    for n in sorted({int(s) for s in sizes}):
        if n > len(pool):
            log.warning("%s: size %d is larger than the pool (%d); skipped", pool.label, n,
                        len(pool))
            continue
        for r, members in enumerate(draw_disjoint(dx, n, n_repeats, rng)):
            d = cohens_d(pool.subset(members), control=control, mask=mask)
            rows.append((n, r, overlap_scores(d, reference_map, mask)[metric]))
    return pd.DataFrame(rows, columns=["n", "repeat", metric])


def effective_sample_size(curve: pd.DataFrame, target: float, metric: str = "r"
                          ) -> dict[str, float]:
    """The n at which the mean agreement curve reaches ``target`` (the synthetic map's score).

    ``n_interp``: linear interpolation in log n on the mean curve made non-decreasing (NaN
    when ``target`` lies outside the curve's range: ``above_curve`` says which side).
    ``n_model`` (``metric == "r"`` only): under the attenuation model r(n)^2 = n / (n + a)
    (independent noise of variance ~ 1/n around a fixed true map), a is fitted to the curve
    (median of n (1/r^2 - 1) over points with 0 < r < 1) and n = a r^2 / (1 - r^2): it
    extrapolates beyond the largest size."""
    mean = curve.groupby("n")[metric].mean().sort_index()
    ns, vals = mean.index.to_numpy(np.float64), np.maximum.accumulate(mean.to_numpy())
    out = {"target": float(target), "n_interp": float("nan"), "n_model": float("nan"),
           "above_curve": float(target > vals.max()) if len(vals) else float("nan")}
    if len(vals) >= 1 and vals.min() <= target <= vals.max():
        j = int(np.searchsorted(vals, target, side="left"))
        if j == 0 or vals[j] == vals[j - 1]:
            out["n_interp"] = float(ns[j])
        else:
            f = (target - vals[j - 1]) / (vals[j] - vals[j - 1])
            out["n_interp"] = float(np.exp(np.log(ns[j - 1]) + f * np.log(ns[j] / ns[j - 1])))
    if metric == "r":
        pts = curve[(curve["r"] > 0) & (curve["r"] < 1)]
        if len(pts) and 0 < target < 1:
            a = float(np.median(pts["n"] * (1.0 / pts["r"] ** 2 - 1.0)))
            out["n_model"] = a * target**2 / (1.0 - target**2)
    return out


def concordance_screen(site: str, cohort: Cohort, prior_map: np.ndarray, mask: np.ndarray, *,
                       n_splits: int = 10, seed: int = 0, min_concordance: float = 0.2,
                       min_reliability: float = 0.2, control: str | None = None
                       ) -> pd.DataFrame:
    """Whether a site is expected to benefit from synthetic augmentation -> one-row DataFrame
    (site, n, split_half_r, reliability, r_prior, concordance, verdict, reason).

    reliability: split-half r of the site's d map (``n_splits`` seeded random halves, each
    with half of the patients and half of the controls), mean over splits, Spearman-Brown
    corrected to the full n: 2 r / (1 + r). r_prior: Pearson r of the site's full map with
    ``prior_map`` (V,) in ``mask`` (e.g. the pretrained prior's or the reference cohort's
    map). concordance: r_prior / sqrt(reliability), the agreement of the site's reliable
    signal with the prior (disattenuated; clipped to [-1, 1]).

    Rule: **benefit** when concordance >= ``min_concordance``; otherwise **no benefit**,
    reason ``discordant`` when reliability >= ``min_reliability`` (the site's own signal is
    real and points elsewhere: the synthetic map cannot both follow the site and the prior),
    else ``unreliable`` (too little signal to tell)."""
    cohort = as_cohort(cohort, label=site)
    dx = design_matrix(cohort.covariates, control=control, label=cohort.label).x[:, -1]
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(n_splits):
        half = np.zeros(len(dx), bool)
        for g in (0, 1):
            idx = rng.permutation(np.flatnonzero(dx == g))
            half[idx[: len(idx) // 2]] = True
        maps = [cohens_d(cohort.subset(np.flatnonzero(h)), control=control, mask=mask)
                for h in (half, ~half)]
        rs.append(pearson(maps[0][mask], maps[1][mask]))
    r_half = float(np.nanmean(rs))
    rel = 2 * r_half / (1 + r_half) if r_half > -1 else float("nan")
    d = cohens_d(cohort, control=control, mask=mask)
    r_prior = overlap_scores(d, prior_map, mask)["r"]
    conc = float(np.clip(r_prior / math.sqrt(rel), -1, 1)) if rel > 0 else float("nan")
    if np.isfinite(conc) and conc >= min_concordance:
        verdict, reason = "benefit", "concordant"
    else:
        verdict = "no benefit"
        reason = "discordant" if rel >= min_reliability else "unreliable"
    return pd.DataFrame([dict(zip(SCREEN_COLUMNS, (site, len(cohort), r_half, rel, r_prior,
                                                   conc, verdict, reason)))])
