"""Cross-site diagnosis from regional volumes: LightGBM with synthetic:real augmentation ratios,
within and across sites, against ComBat harmonisation (the paper's Fig. 6a-b, DESIGN §7).

The protocol (every choice below is what :func:`run_sweep` does):

- **Splits** (:func:`genbrain.splits.split_sites`): per site and per diagnosis level, a
  seeded 3:1:1 train/validation/test split (``round(n/5)`` to validation and to test, the rest
  to train; at least one subject of every level in every split), so each split keeps the
  site's class balance. Sites and ids are sorted first: the split does not depend on row
  order.
- **Features**: the 32 volumes (or any columns given), z-scored with the mean and sd of the
  training site's *real training split*; synthetic rows, validation, test and other sites are
  scaled with the same statistics.
- **Augmentation**: at ratio r the training set is the real training split plus the first
  ``round(r * n_train)`` rows of a seeded permutation of the site's synthetic pool, so pools
  are nested across ratios (ratio 0.2's rows contain ratio 0.1's) and a difference between
  ratios is more data, not other data. Ratios come from the config
  (:func:`genbrain.stats.resampling.ratio_grid`; paper 0.0..3.0 by 0.1) and must include 0
  (the real-only baseline).
- **Models**: :data:`N_CONFIGS` = 20 LightGBM configurations drawn once, with a seed, from the
  paper's grid :data:`GRID` (:func:`draw_configs`); ``subsample`` is LightGBM's bagging
  fraction with bagging every iteration (it has no effect otherwise). Fixed settings:
  ``deterministic``, ``force_col_wise``, the caller's thread count, and
  ``min_child_samples`` (default :data:`FIXED`: 10, not LightGBM's 20, which leaves a
  36-subject training split with one split per tree).
- **Selection** (:func:`select_config`): per (training site, ratio) the configuration with
  the highest validation accuracy; ties broken by the lower validation log-loss, then by the
  lower configuration index. The **chosen ratio** of a site is the ratio > 0 whose selected
  model has the highest validation accuracy (ties: lower log-loss, then the smaller ratio) --
  chosen on validation, never on test.
- **Evaluation**: within-site on the training site's test split; cross-site on *all* subjects
  of every other site.
- **Metrics** (:data:`METRICS`): accuracy, balanced accuracy, AUROC (binary; multi-class:
  one-vs-rest, macro average) and F1 (binary: of the patient level, ``levels[1]``; 3-class:
  macro). CIs: 1,000 bootstrap resamples of the evaluation subjects (percentile 95%), seeded
  per (training, test) site pair, and the *same* resamples for every ratio and method, so the
  augmented-minus-real-only difference is paired: its CI is the percentile interval of the
  resampled differences and its p-value the bootstrap t-test
  ``2 * t.sf(|d| / sd(d_b), B - 1)`` (the paper's test,
  :func:`genbrain.stats.resampling.bootstrap_t_p`).
- **Methods**: ``real`` (ratio 0), ``augmented`` (each ratio > 0), ``harmonized`` (the real
  model on ComBat-harmonised target features, :mod:`genbrain.diagnosis.harmonize`) and
  ``harmonized+augmented`` (the chosen-ratio model on the same features); cross-site only
  for the last two, and every difference is against ``real``.

Output: a tidy table, one row per (train_site, test_site, ratio, method, metric), with the
value, its CI, and the difference from ``real`` with CI and p (:data:`RESULT_COLUMNS`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import sparse
from scipy import stats as sstats

from genbrain.errors import GenbrainInputError
from genbrain.seeds import name_seed
from genbrain.splits import SITE_SPLITS, level_codes, split_sites
from genbrain.stats.resampling import bootstrap_t_p, ratio_grid

GRID: dict[str, tuple] = {
    "n_estimators": (25, 50, 100, 200, 300),
    "max_depth": (5, 10, 15, 20, 25, 30),
    "num_leaves": (5, 10, 15, 20, 25, 30),
    "subsample": tuple(round(0.60 + 0.05 * i, 2) for i in range(9)),
    "learning_rate": (0.1, 0.05, 0.01, 0.001),
    "colsample_bytree": tuple(round(0.60 + 0.05 * i, 2) for i in range(9)),
}
N_CONFIGS = 20
FIXED: dict = {"min_child_samples": 10}
METRICS = ("accuracy", "balanced_accuracy", "auroc", "f1")
METHODS = ("real", "augmented", "harmonized", "harmonized+augmented")
RESULT_COLUMNS = (
    "train_site", "test_site", "setting", "ratio", "method", "metric", "value", "ci_low",
    "ci_high", "diff", "diff_low", "diff_high", "p", "n_eval", "n_train", "n_synthetic",
    "config", "val_accuracy", "chosen",
)


@dataclass(frozen=True)
class SweepSpec:
    """Settings of one sweep.

    levels: diagnosis levels, control first (2 = binary; 3 = e.g. CN, MCI, AD);
    ratios: synthetic:real ratios (must contain 0.0); n_configs: LightGBM configurations;
    seed: every draw (split, configurations, pools, bootstrap, LightGBM); n_boot: bootstrap
    resamples; n_jobs: LightGBM threads; fixed: LightGBM settings outside the paper's grid;
    harmonize: add the ComBat rows.
    """

    levels: tuple[str, ...]
    ratios: tuple[float, ...] = (0.0,)
    n_configs: int = N_CONFIGS
    seed: int = 0
    n_boot: int = 1000
    n_jobs: int = 1
    fixed: Mapping = field(default_factory=lambda: dict(FIXED))
    harmonize: bool = True


def spec_from_config(cfg: Mapping, levels: Sequence[str], n_jobs: int = 1,
                     key: str = "classify") -> SweepSpec:
    """A :class:`SweepSpec` from a config section: ``ratios`` (a list, or ``{start, stop,
    step}``), ``n_configs``, ``n_boot``, ``seed``, ``fixed``, ``harmonize``; threads from the
    caller (the rule's ``threads``)."""
    known = {"ratios", "n_configs", "n_boot", "seed", "fixed", "harmonize"}
    extra = sorted(set(cfg) - known)
    if extra:
        raise GenbrainInputError(f"config key '{key}.{extra[0]}': unknown (expected one of "
                                 f"{sorted(known)})")
    r = cfg.get("ratios", {"start": 0.0, "stop": 3.0, "step": 0.1})
    ratios = ratio_grid(**{k: float(v) for k, v in r.items()}) if isinstance(r, Mapping) \
        else tuple(round(float(x), 6) for x in r)
    return SweepSpec(levels=tuple(levels), ratios=ratios,
                     n_configs=int(cfg.get("n_configs", N_CONFIGS)),
                     seed=int(cfg.get("seed", 0)), n_boot=int(cfg.get("n_boot", 1000)),
                     n_jobs=int(n_jobs), fixed={**FIXED, **dict(cfg.get("fixed", {}))},
                     harmonize=bool(cfg.get("harmonize", True)))


def draw_configs(n: int = N_CONFIGS, seed: int = 0) -> list[dict]:
    """``n`` LightGBM configurations, each parameter drawn uniformly from :data:`GRID` with
    ``numpy.random.default_rng(seed)`` (parameters in GRID order): the same list every run."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out.append({k: (v[int(rng.integers(len(v)))]) for k, v in GRID.items()})
    return [{k: (float(v) if isinstance(v, float) else int(v)) for k, v in c.items()}
            for c in out]


def select_config(scores: pd.DataFrame) -> int:
    """The selection rule: the row with the highest ``val_accuracy``; ties -> lower
    ``val_logloss``; then lower ``config``. Returns that row's ``config``."""
    best = scores.sort_values(["val_accuracy", "val_logloss", "config"],
                              ascending=[False, True, True], kind="stable")
    return int(best["config"].iloc[0])


def lgbm_params(config: Mapping, n_classes: int, n_jobs: int, seed: int,
                fixed: Mapping | None = None) -> dict:
    """LightGBM ``train`` parameters of one grid configuration (without n_estimators)."""
    p = {
        "objective": "binary" if n_classes == 2 else "multiclass",
        "learning_rate": float(config["learning_rate"]),
        "num_leaves": int(config["num_leaves"]),
        "max_depth": int(config["max_depth"]),
        "bagging_fraction": float(config["subsample"]),
        "bagging_freq": 1,
        "feature_fraction": float(config["colsample_bytree"]),
        "num_threads": int(n_jobs), "seed": int(seed), "deterministic": True,
        "force_col_wise": True, "verbosity": -1,
    }
    if n_classes > 2:
        p["num_class"] = int(n_classes)
    for k, v in dict(fixed if fixed is not None else FIXED).items():
        p["min_data_in_leaf" if k == "min_child_samples" else k] = v
    return p


def fit_lgbm(x: np.ndarray, y: np.ndarray, config: Mapping, n_classes: int, n_jobs: int = 1,
             seed: int = 0, fixed: Mapping | None = None, dataset=None):
    """Fit one LightGBM booster on (n, F) features and (n,) codes; ``dataset`` reuses an
    already binned ``lightgbm.Dataset`` of the same rows (the 20 configurations share it)."""
    import lightgbm as lgb

    params = lgbm_params(config, n_classes, n_jobs, seed, fixed)
    if dataset is None:
        dataset = make_dataset(x, y, params)
    return lgb.train(params, dataset, num_boost_round=int(config["n_estimators"]))


def make_dataset(x: np.ndarray, y: np.ndarray, params: Mapping | None = None):
    """A binned ``lightgbm.Dataset`` (kept raw data: it is reused across configurations)."""
    import lightgbm as lgb

    p = {"verbosity": -1, "min_data_in_bin": 1,
         "min_data_in_leaf": (params or {}).get("min_data_in_leaf", FIXED["min_child_samples"])}
    return lgb.Dataset(np.asarray(x, np.float64), label=np.asarray(y), params=p,
                       free_raw_data=False)


def predict_proba(booster, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, K) class probabilities of a booster."""
    p = np.asarray(booster.predict(np.asarray(x, np.float64)))
    return np.c_[1.0 - p, p] if n_classes == 2 else p.reshape(len(x), n_classes)


def bootstrap_counts(n: int, n_boot: int, seed: Sequence[int] | int) -> np.ndarray:
    """(n_boot, n) multiplicities of n subjects in ``n_boot`` resamples with replacement."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)


def _weighted_auc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """(B,) AUROC of ``score`` for ``positive`` (n,) under subject weights ``w`` (B, n): the
    Mann-Whitney statistic with ties counted 1/2, vectorised over resamples."""
    _, group = np.unique(score, return_inverse=True)
    onehot = sparse.csr_matrix((np.ones(len(score)), (np.arange(len(score)), group.ravel())))
    neg = (onehot.T @ (w * ~positive).T).T  # (B, G) negative weight per score group
    pos = (onehot.T @ (w * positive).T).T
    below = np.cumsum(neg, axis=1) - neg
    num = (pos * (below + 0.5 * neg)).sum(axis=1)
    den = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def metric_values(y: np.ndarray, proba: np.ndarray, weights: np.ndarray | None = None
                  ) -> dict[str, np.ndarray]:
    """:data:`METRICS` of probabilities (n, K) for codes y (n,), under subject weights
    (B, n) (bootstrap multiplicities; default one row of ones) -> {metric: (B,)}."""
    y = np.asarray(y)
    n, k = proba.shape
    w = np.ones((1, n)) if weights is None else np.atleast_2d(weights)
    pred = proba.argmax(axis=1)
    correct = (pred == y).astype(np.float64)
    onehot_y = (y[:, None] == np.arange(k)).astype(np.float64)
    onehot_p = (pred[:, None] == np.arange(k)).astype(np.float64)
    n_true = w @ onehot_y  # (B, K)
    n_pred = w @ onehot_p
    tp = w @ (onehot_y * correct[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(n_true > 0, tp / n_true, np.nan)
        f1 = np.where(n_true + n_pred > 0, 2 * tp / (n_true + n_pred), np.nan)
        out = {"accuracy": (w @ correct) / w.sum(axis=1),
               "balanced_accuracy": np.nanmean(recall, axis=1)}
        if k == 2:
            out["auroc"] = _weighted_auc(w, y == 1, proba[:, 1])
            out["f1"] = f1[:, 1]
        else:
            out["auroc"] = np.nanmean(np.stack([_weighted_auc(w, y == c, proba[:, c])
                                                for c in range(k)]), axis=0)
            out["f1"] = np.nanmean(f1, axis=1)
    return out


def _interval(values: np.ndarray) -> tuple[float, float]:
    v = values[np.isfinite(values)]
    if not len(v):
        return float("nan"), float("nan")
    lo, hi = np.percentile(v, [2.5, 97.5])
    return float(lo), float(hi)


def synthetic_rows(pool: pd.DataFrame, n_train: int, ratio: float, seed: int,
                   site: str) -> pd.DataFrame:
    """The synthetic rows added at ``ratio``: the first ``round(ratio * n_train)`` rows of a
    permutation of ``pool`` seeded with (seed, site) -- nested across ratios."""
    need = round(ratio * n_train)
    if need > len(pool):
        raise GenbrainInputError(f"synthetic pool of site '{site}': ratio {ratio} needs {need} "
                                 f"rows ({ratio} x {n_train} training subjects), the pool has "
                                 f"{len(pool)}")
    order = np.random.default_rng([seed, name_seed(site), 1]).permutation(len(pool))
    return pool.iloc[order[:need]]


@dataclass
class SiteModel:
    """A selected model of one training site: its booster, configuration index, ratio and
    the z-score statistics (F,) of the site's real training split."""

    booster: object
    config: int
    ratio: float
    mean: np.ndarray
    sd: np.ndarray


@dataclass
class SweepResult:
    """table: the tidy result table (:data:`RESULT_COLUMNS`); selection: one row per
    (train_site, ratio, config) with validation accuracy/log-loss and ``selected``;
    models: {(train_site, "real" | "augmented"): SiteModel} (ratio 0 and the chosen ratio);
    splits: the input table with its ``split`` column."""

    table: pd.DataFrame
    selection: pd.DataFrame
    models: dict
    splits: pd.DataFrame


def _check_features(table: pd.DataFrame, features: Sequence[str], source: str) -> None:
    missing = [c for c in features if c not in table.columns]
    if missing:
        raise GenbrainInputError(f"{source}: missing feature column(s) {missing[:3]}")
    x = table[list(features)].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    if not np.isfinite(x).all():
        r, c = (int(v) for v in np.argwhere(~np.isfinite(x))[0])
        raise GenbrainInputError(f"{source}: row {r + 1}, column '{features[c]}' is not a "
                                 "finite number")


def run_sweep(features: pd.DataFrame, feature_columns: Sequence[str], spec: SweepSpec,
              synthetic: Mapping[str, pd.DataFrame] | None = None,
              train_sites: Collection[str] | None = None,
              splits: Sequence[str] | None = None) -> SweepResult:
    """The whole protocol (module docstring) for every training site (or ``train_sites``).

    ``features``: one row per real subject: participant_id, site, age, sex, diagnosis and
    ``feature_columns`` (e.g. volumes in mm^3); ``synthetic[site]``: that site's synthetic
    pool (diagnosis, age, sex and the same feature columns), optional (ratio 0 only without
    one). Results do not depend on which other training sites run in the same call.
    ``splits``: each row's train / validation / test assignment, when the split is shared with
    another stage (the workflow's fine-tunes train on the cohort's training split); default
    :func:`genbrain.splits.split_sites` with ``spec.seed``.
    """
    feats = list(feature_columns)
    levels, k = tuple(spec.levels), len(spec.levels)
    if 0.0 not in spec.ratios:
        raise GenbrainInputError(f"classify ratios {list(spec.ratios)} must include 0.0 (the "
                                 "real-only baseline every difference is taken against)")
    _check_features(features, feats, "features")
    if splits is None:
        table = split_sites(features.reset_index(drop=True), levels, spec.seed)
    else:
        splits = [str(v) for v in splits]
        if len(splits) != len(features):
            raise GenbrainInputError(f"split: {len(splits)} assignments for {len(features)} "
                                     "feature rows; expected one per row")
        table = features.reset_index(drop=True).assign(split=splits)
        bad = ~table["split"].isin(SITE_SPLITS)
        if bad.any():
            r = int(np.argmax(bad.to_numpy()))
            raise GenbrainInputError(f"split: row {r + 1} is '{table['split'].iloc[r]}'; "
                                     f"expected one of {list(SITE_SPLITS)}")
    codes = level_codes(table["diagnosis"], levels)
    sites = sorted(table["site"].astype(str).unique())
    wanted = sites if train_sites is None else [s for s in sites if s in set(train_sites)]
    unknown = sorted(set(train_sites or ()) - set(sites))
    if unknown:
        raise GenbrainInputError(f"training site '{unknown[0]}' is not in the features table "
                                 f"(sites: {sites})")
    configs = draw_configs(spec.n_configs, spec.seed)
    rows, sel_rows, models = [], [], {}
    x_all = table[feats].to_numpy(np.float64)
    for s in wanted:
        at = (table["site"].astype(str) == s).to_numpy()
        tr, va, te = (at & (table["split"] == p).to_numpy() for p in SITE_SPLITS)
        empty = [p for p, m in zip(SITE_SPLITS, (tr, va, te)) if not m.any()]
        if empty:
            raise GenbrainInputError(f"split: site '{s}' has no '{empty[0]}' participants; "
                                     f"a training site needs all of {list(SITE_SPLITS)}")
        mean, sd = x_all[tr].mean(axis=0), x_all[tr].std(axis=0, ddof=1)
        sd = np.where(sd > 0, sd, 1.0)

        def z(x, mean=mean, sd=sd):
            return (np.asarray(x, np.float64) - mean) / sd

        pool = None
        if synthetic is not None and s in synthetic:
            pool = synthetic[s]
            _check_features(pool, feats, f"synthetic pool of site '{s}'")
            pool_codes = level_codes(pool["diagnosis"], levels, f"synthetic pool of site '{s}'")
            pool = pool.assign(_code=pool_codes)
        ratios = sorted(r for r in spec.ratios if r == 0.0 or pool is not None)
        evals = {s: te, **{t: (table["site"].astype(str) == t).to_numpy()
                           for t in sites if t != s}}
        counts = {t: bootstrap_counts(int(m.sum()), spec.n_boot, [spec.seed, name_seed(s), name_seed(t)])
                  for t, m in evals.items()}
        per_ratio: dict[float, tuple] = {}
        n_train = int(tr.sum())
        for r in ratios:
            syn = synthetic_rows(pool, n_train, r, spec.seed, s) if r > 0 else None
            x = z(x_all[tr]) if syn is None else np.vstack([z(x_all[tr]), z(syn[feats])])
            y = codes[tr] if syn is None else np.r_[codes[tr], syn["_code"].to_numpy()]
            dataset = make_dataset(x, y, lgbm_params(configs[0], k, spec.n_jobs, spec.seed,
                                                     spec.fixed))
            scores, boosters = [], []
            for c, cfg in enumerate(configs):
                b = fit_lgbm(x, y, cfg, k, spec.n_jobs, spec.seed, spec.fixed, dataset)
                p = predict_proba(b, z(x_all[va]), k)
                acc = float((p.argmax(axis=1) == codes[va]).mean())
                ll = float(-np.mean(np.log(np.clip(p[np.arange(len(p)), codes[va]], 1e-15,
                                                   None))))
                scores.append((c, acc, ll))
                boosters.append(b)
            sc = pd.DataFrame(scores, columns=["config", "val_accuracy", "val_logloss"])
            best = select_config(sc)
            sc.insert(0, "ratio", r)
            sc.insert(0, "train_site", s)
            sc["selected"] = sc["config"] == best
            sel_rows.append(sc)
            per_ratio[r] = (boosters[best], best, float(sc["val_accuracy"][best]),
                            float(sc["val_logloss"][best]), 0 if syn is None else len(syn))
        aug = [r for r in ratios if r > 0]
        chosen = min(aug, key=lambda r: (-per_ratio[r][2], per_ratio[r][3], r)) if aug else None
        models[s, "real"] = SiteModel(per_ratio[0.0][0], per_ratio[0.0][1], 0.0, mean, sd)
        if chosen is not None:
            models[s, "augmented"] = SiteModel(per_ratio[chosen][0], per_ratio[chosen][1],
                                               chosen, mean, sd)

        ctx = {"site": s, "chosen": chosen, "n_train": n_train, "counts": counts, "base": {},
               "codes": {t: codes[m] for t, m in evals.items()}}
        for t, m in evals.items():
            for r in ratios:
                proba = predict_proba(per_ratio[r][0], z(x_all[m]), k)
                _emit(rows, ctx, t, r, "real" if r == 0 else "augmented", proba, per_ratio[r])
        if spec.harmonize:
            from genbrain.diagnosis.harmonize import combat_pair

            train_rows = table[tr]
            for t, m in evals.items():
                if t == s:
                    continue  # one site: nothing to harmonise
                target = combat_pair(train_rows, table[m], feats, s, t)
                xt = z(target[feats].to_numpy(np.float64))
                _emit(rows, ctx, t, 0.0, "harmonized", predict_proba(per_ratio[0.0][0], xt, k),
                      per_ratio[0.0])
                if chosen is not None:
                    _emit(rows, ctx, t, chosen, "harmonized+augmented",
                          predict_proba(per_ratio[chosen][0], xt, k), per_ratio[chosen])
    out = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    selection = pd.concat(sel_rows, ignore_index=True) if sel_rows else pd.DataFrame()
    return SweepResult(table=out, selection=selection, models=models, splits=table)


def _emit(rows: list, ctx: dict, t: str, r: float, method: str, proba: np.ndarray,
          info: tuple) -> None:
    """Append the :data:`METRICS` rows of one (test site, ratio, method) evaluation; the
    ``real`` one is stored in ``ctx['base']`` as the reference of every later difference."""
    s, y_t, counts = ctx["site"], ctx["codes"][t], ctx["counts"][t]
    point = metric_values(y_t, proba)
    boot = metric_values(y_t, proba, counts)
    if method == "real":
        ctx["base"][t] = {"point": point, "boot": boot}
    ref = ctx["base"][t]
    for m in METRICS:
        v = float(point[m][0])
        lo, hi = _interval(boot[m])
        row = {"train_site": s, "test_site": t, "setting": "within" if t == s else "cross",
               "ratio": r, "method": method, "metric": m, "value": v, "ci_low": lo,
               "ci_high": hi, "diff": np.nan, "diff_low": np.nan, "diff_high": np.nan,
               "p": np.nan, "n_eval": len(y_t), "n_train": ctx["n_train"],
               "n_synthetic": info[4], "config": info[1], "val_accuracy": info[2],
               "chosen": method != "real" and r == ctx["chosen"]}
        if method != "real":
            d = v - float(ref["point"][m][0])
            db = boot[m] - ref["boot"][m]
            lo_d, hi_d = _interval(db)
            row.update(diff=d, diff_low=lo_d, diff_high=hi_d, p=bootstrap_t_p(d, db))
        rows.append(row)


def summarise_cross_site(table: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Per method (real; augmented at the chosen ratio; harmonized; harmonized+augmented): the
    mean cross-site ``metric`` over (train, test) pairs, its mean difference from real-only,
    and the pairs whose difference CI lies above / below 0 (the paper's "26 of 42 pairs")."""
    cross = table[(table["setting"] == "cross") & (table["metric"] == metric)]
    cross = cross[(cross["method"] == "real") | cross["chosen"].astype(bool)
                  | (cross["method"] == "harmonized")]
    rows = []
    for method in METHODS:
        g = cross[cross["method"] == method]
        if g.empty:
            continue
        rows.append({"method": method, "metric": metric, "pairs": len(g),
                     "mean": float(g["value"].mean()),
                     "mean_diff": float(g["diff"].mean()) if method != "real" else 0.0,
                     "pairs_better": int((g["diff"] > 0).sum()),
                     "pairs_ci_above_0": int((g["diff_low"] > 0).sum()),
                     "pairs_ci_below_0": int((g["diff_high"] < 0).sum())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Explanations


def shap_values(booster, x: np.ndarray, n_classes: int) -> np.ndarray:
    """(n, C, F) SHAP values (LightGBM's exact TreeSHAP, ``pred_contrib=True``) of (n, F)
    features, in log-odds units; C = 1 for a binary model (the patient level's margin), else
    one block per class. The per-row bias term is dropped."""
    contrib = np.asarray(booster.predict(np.asarray(x, np.float64), pred_contrib=True))
    n, f = x.shape
    c = 1 if n_classes == 2 else n_classes
    return contrib.reshape(n, c, f + 1)[:, :, :f]


def explain(result: SweepResult, feature_columns: Sequence[str], n_classes: int) -> pd.DataFrame:
    """Mean |SHAP| per feature of each training site's selected real-only and chosen-ratio
    augmented model, over all real subjects of that site -> (train_site, method, ratio,
    feature, mean_abs_shap, rank), rank 1 = most important."""
    feats = list(feature_columns)
    rows = []
    for (s, method), model in sorted(result.models.items()):
        at = result.splits["site"].astype(str) == s
        x = (result.splits.loc[at, feats].to_numpy(np.float64) - model.mean) / model.sd
        imp = np.abs(shap_values(model.booster, x, n_classes)).mean(axis=(0, 1))
        order = np.argsort(-imp, kind="stable")
        rank = np.empty(len(feats), dtype=int)
        rank[order] = np.arange(1, len(feats) + 1)
        rows += [{"train_site": s, "method": method, "ratio": model.ratio, "feature": f,
                  "mean_abs_shap": float(imp[i]), "rank": int(rank[i])}
                 for i, f in enumerate(feats)]
    return pd.DataFrame(rows)


def region_overlap(ranking: Sequence[str], diseased: Collection[str], k: int = 5,
                   n_features: int | None = None) -> dict:
    """Are the top-``k`` features of ``ranking`` (most important first) the truly diseased
    structures? -> hits, precision (hits / k), recall (hits / |diseased|), the hits expected
    by chance (k |diseased| / F) and the hypergeometric p of at least that many hits."""
    ranking = list(ranking)
    f = int(n_features or len(ranking))
    d = set(diseased)
    unknown = sorted(d - set(ranking))
    if unknown:
        raise GenbrainInputError(f"diseased structure '{unknown[0]}' is not a feature")
    top = ranking[:k]
    hits = sum(1 for x in top if x in d)
    return {"k": k, "hits": hits, "precision": hits / k if k else float("nan"),
            "recall": hits / len(d) if d else float("nan"), "expected": k * len(d) / f,
            "p": float(sstats.hypergeom.sf(hits - 1, f, len(d), k))}
