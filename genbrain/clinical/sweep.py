"""The synthetic-augmentation sweep, and matched real/synthetic examples.

The paper's Methods "Clinical Application" (Fig. 6c-f): the regressor's training set is
augmented with ``round(ratio * n_train)`` synthetic images for ratios 0..3 by 0.1, five seeds
per ratio, and the ratio with the lowest mean validation MAE is compared with ratio 0 on the
test set.

Sweep. :func:`sweep_job` runs one (ratio, seed) and returns its one-row table (a cluster runs
the jobs in parallel); :func:`synthetic_rows` picks the pool rows, nested across ratios for a
seed; :func:`summarise_sweep` picks the ratio by mean validation MAE (validation only) and
tests test MAE and r at that ratio against ratio 0 across seeds (Welch's two-sided t-test by
default; see there), with 95% CIs = mean +- 1.96 x SE as the paper.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from genbrain.clinical.config import STREAM_POOL, RegressConfig
from genbrain.clinical.data import CropVolumes, ScoreImages
from genbrain.clinical.fit import fit, predict
from genbrain.errors import GenbrainInputError
from genbrain.seeds import seed_of
from genbrain.space import StandardSpace
from genbrain.stats.correlation import pearson

TESTS = ("welch", "student", "paired")
METRICS = ("val_mae", "val_r", "test_mae", "test_r")


def n_synthetic(ratio: float, n_train: int) -> int:
    """round(ratio * n_train), halves up (0.5 * 3 -> 2), robust to 0.1-step float error."""
    return math.floor(ratio * n_train + 0.5 + 1e-9)


def synthetic_rows(n_pool: int, n_train: int, ratio: float, seed: int,
                   source: str = "synthetic pool") -> np.ndarray:
    """(round(ratio * n_train),) rows of the synthetic pool used at ``ratio`` with ``seed``: the
    first rows of a permutation seeded by (seed, pool), so a larger ratio adds rows to a
    smaller one's (nested) and a seed sees its own subset. One-line error when the pool is too
    small or the ratio negative."""
    if ratio < 0:
        raise GenbrainInputError(f"regression sweep: ratio {ratio} is negative")
    k = n_synthetic(ratio, n_train)
    if k > n_pool:
        raise GenbrainInputError(
            f"{source}: ratio {ratio:g} of {n_train} training images needs {k} synthetic images "
            f"but the pool holds {n_pool}; synthesize at least {k} or lower the ratio grid")
    perm = np.random.default_rng(seed_of(seed, STREAM_POOL)).permutation(n_pool)
    return perm[:k]


def sweep_job(config: RegressConfig, splits: Mapping[str, ScoreImages],
              pool: ScoreImages | None, ratio: float, seed: int, out_dir: str | os.PathLike,
              *, space: StandardSpace | None = None) -> pd.DataFrame:
    """One (ratio, seed) job of the sweep: fit on the real training split plus
    ``round(ratio * n_train)`` pool images (:func:`synthetic_rows`), choose the epoch by
    validation MAE, then predict the test split once with that epoch's weights.

    ``splits``: :func:`split_images` output; ``pool``: the synthetic images (None only for
    ratio 0); ``seed`` replaces ``config.seed``; ``out_dir``: this job's checkpoint folder.
    Returns one row: ratio, seed, n_real, n_synthetic, epochs, chosen_epoch, val_mae, val_r,
    test_mae, test_r (scores in the score's units).
    """
    config = dataclasses.replace(config, seed=seed)
    real = splits["train"]
    k = n_synthetic(ratio, len(real))
    train = real
    if k > 0:
        if pool is None:
            raise GenbrainInputError(f"regression sweep: ratio {ratio:g} needs a synthetic pool")
        train = real + pool.subset(synthetic_rows(len(pool), len(real), ratio, seed,
                                                  pool.source))
    result = fit(config, train, splits["val"], out_dir, space=space)
    volumes = CropVolumes(config.crop, config.pool, space)
    test = splits["test"]
    pred = predict(result.model, test, volumes, config.eval_batch)
    return pd.DataFrame([{
        "ratio": float(ratio), "seed": int(seed), "n_real": len(real), "n_synthetic": k,
        "epochs": config.epochs, "chosen_epoch": result.chosen_epoch,
        "val_mae": result.val_mae,
        "val_r": float(result.history["val_r"].iloc[result.chosen_epoch - 1]),
        "test_mae": float(np.mean(np.abs(pred - test.y))), "test_r": pearson(pred, test.y)}])


@dataclass
class SweepSummary:
    """What :func:`summarise_sweep` found.

    ``per_ratio``: one row per (ratio, metric) with n_seeds, mean, se, ci_low, ci_high (mean
    +- 1.96 SE); ``comparison``: one row per test metric (test_mae, test_r): the mean and CI at
    ratio 0 and at the chosen ratio, difference (chosen - ratio 0), change_pct, t, p, test;
    ``chosen_ratio``: the ratio of lowest mean validation MAE (ties: the smallest ratio).
    """

    per_ratio: pd.DataFrame
    comparison: pd.DataFrame
    chosen_ratio: float


def summarise_sweep(table: pd.DataFrame, test: str = "welch",
                    source: str = "sweep table") -> SweepSummary:
    """Choose the ratio by mean validation MAE and compare it with ratio 0 on the test split.

    ``table``: the concatenated :func:`sweep_job` rows. The choice reads ``val_mae`` only, so
    the test metrics stay an unbiased estimate. ``test`` (two-sided, across seeds):
    ``welch`` (default; ``scipy.stats.ttest_ind(equal_var=False)``): the runs at two ratios are
    treated as independent samples: they share a seed's initial weights, but their training
    sets, hence their data order and trajectories, differ, and the paper says "two-sided
    t-tests" here where it says "paired" elsewhere; Welch because augmentation may change the
    seed-to-seed variance (with equal seed counts t equals Student's, only the df differ).
    ``student``: pooled variance; ``paired``: ``ttest_rel`` on the seeds both ratios have.
    """
    from scipy import stats

    if test not in TESTS:
        raise GenbrainInputError(f"regression summary: 'test' is {test!r}; expected one of "
                                 f"{', '.join(TESTS)}")
    missing = [c for c in ("ratio", "seed", *METRICS) if c not in table.columns]
    if missing:
        raise GenbrainInputError(f"{source}: missing columns {missing}")
    dup = table.duplicated(["ratio", "seed"])
    if dup.any():
        row = table[dup].iloc[0]
        raise GenbrainInputError(f"{source}: ratio {row['ratio']:g} seed {row['seed']} appears "
                                 "more than once; expected one row per (ratio, seed)")
    if not (table["ratio"] == 0).any():
        raise GenbrainInputError(f"{source}: no rows at ratio 0 (the baseline)")
    rows = []
    for ratio, g in table.groupby("ratio", sort=True):
        for metric in METRICS:
            v = g[metric].to_numpy(np.float64)
            v = v[np.isfinite(v)]
            mean = float(v.mean()) if len(v) else float("nan")
            se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
            rows.append({"ratio": float(ratio), "metric": metric, "n_seeds": len(v),
                         "mean": mean, "se": se, "ci_low": mean - 1.96 * se,
                         "ci_high": mean + 1.96 * se})
    per_ratio = pd.DataFrame(rows)
    val = per_ratio[per_ratio["metric"] == "val_mae"].sort_values("ratio")
    chosen = float(val["ratio"].iloc[int(np.nanargmin(val["mean"].to_numpy()))])

    comparison = []
    base_rows, best_rows = table[table["ratio"] == 0], table[table["ratio"] == chosen]
    for metric in ("test_mae", "test_r"):
        a = base_rows.set_index("seed")[metric]
        b = best_rows.set_index("seed")[metric]
        if test == "paired":
            common = sorted(set(a.index) & set(b.index))
            res = stats.ttest_rel(b[common], a[common], nan_policy="omit")
        else:
            res = stats.ttest_ind(b, a, equal_var=test == "student", nan_policy="omit")
        pa = per_ratio[(per_ratio["ratio"] == 0) & (per_ratio["metric"] == metric)].iloc[0]
        pb = per_ratio[(per_ratio["ratio"] == chosen) & (per_ratio["metric"] == metric)].iloc[0]
        diff = pb["mean"] - pa["mean"]
        comparison.append({
            "metric": metric, "ratio_base": 0.0, "mean_base": pa["mean"],
            "ci_low_base": pa["ci_low"], "ci_high_base": pa["ci_high"],
            "ratio_chosen": chosen, "mean_chosen": pb["mean"], "ci_low_chosen": pb["ci_low"],
            "ci_high_chosen": pb["ci_high"], "difference": diff,
            "change_pct": 100 * diff / abs(pa["mean"]) if pa["mean"] else float("nan"),
            "t": float(res.statistic), "p": float(res.pvalue), "test": test,
            "n_seeds_base": int(pa["n_seeds"]), "n_seeds_chosen": int(pb["n_seeds"])})
    return SweepSummary(per_ratio, pd.DataFrame(comparison), chosen)


# --------------------------------------------------------------------------------------------
# Matched real/synthetic examples (Fig. 6c, e)
# --------------------------------------------------------------------------------------------


def match_pairs(real: pd.DataFrame, synthetic: pd.DataFrame, score_column: str,
                n_pairs: int = 4) -> pd.DataFrame:
    """Real subjects at evenly spaced score quantiles, each with the synthetic image of the
    same sex nearest in (age, score), distances in units of the real table's SD; no synthetic
    image is used twice. ``real``, ``synthetic``: tables with age, sex and the score (e.g.
    store indices). Returns one row per pair: real_row, synthetic_row (positions in the
    tables), participant_id, sex, age_real, age_synthetic, score_real, score_synthetic,
    sex_matched (False only when no unused synthetic image of that sex is left)."""
    for name, t in (("real", real), ("synthetic", synthetic)):
        missing = [c for c in ("age", "sex", score_column) if c not in t.columns]
        if missing:
            raise GenbrainInputError(f"{name} table: missing columns {missing}")
    n_pairs = min(n_pairs, len(real), len(synthetic))
    ra, rs = real["age"].to_numpy(np.float64), real[score_column].to_numpy(np.float64)
    sa, ss = synthetic["age"].to_numpy(np.float64), synthetic[score_column].to_numpy(np.float64)
    age_sd, score_sd = (float(np.std(v)) or 1.0 for v in (ra, rs))
    order = np.argsort(rs, kind="stable")
    picks = order[np.linspace(0, len(order) - 1, n_pairs).round().astype(int)]
    used = np.zeros(len(synthetic), bool)
    rows = []
    for i in picks:
        dist = ((sa - ra[i]) / age_sd) ** 2 + ((ss - rs[i]) / score_sd) ** 2
        same = (synthetic["sex"].to_numpy() == real["sex"].iloc[i]) & ~used
        pool = same if same.any() else ~used
        j = int(np.flatnonzero(pool)[np.argmin(dist[pool])])
        used[j] = True
        rows.append({"real_row": int(i), "synthetic_row": j,
                     "participant_id": real["participant_id"].iloc[i]
                     if "participant_id" in real.columns else str(i),
                     "sex": real["sex"].iloc[i], "age_real": ra[i], "age_synthetic": sa[j],
                     "score_real": rs[i], "score_synthetic": ss[j],
                     "sex_matched": bool(same.any())})
    return pd.DataFrame(rows)
