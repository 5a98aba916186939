"""Cross-site diagnosis sweep: splits, configurations, selection rule, metrics and bootstrap,
learnable vs shuffled signals, the tidy table, explanations, figures and bad inputs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from genbrain.diagnosis import classify as cl
from genbrain.errors import GenbrainInputError

FEATS = [f"f{i}" for i in range(8)]


def _cohort(sizes: dict, effect: float = 2.5, seed: int = 0, levels=("CN", "SCZ"),
            shuffle: bool = False) -> pd.DataFrame:
    """Sites of subjects with 8 features; the diagnosis shifts f0 (+) and f1 (-); each site
    adds its own offset to every feature (an acquisition effect)."""
    rng = np.random.default_rng(seed)
    frames = []
    for j, (site, n) in enumerate(sizes.items()):
        y = np.arange(n) % len(levels)
        x = rng.normal(size=(n, len(FEATS))) + 0.5 * j
        x[:, 0] += effect * y
        x[:, 1] -= effect * y
        df = pd.DataFrame(x, columns=FEATS)
        df["participant_id"] = [f"sub-{site}{i:03d}" for i in range(n)]
        df["site"] = site
        lab = np.array(levels)[y]
        df["diagnosis"] = rng.permutation(lab) if shuffle else lab
        df["age"] = rng.uniform(20, 70, n)
        df["sex"] = rng.choice(["M", "F"], n)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def test_twenty_configurations_are_drawn_once_from_the_grid():
    a, b = cl.draw_configs(20, seed=11), cl.draw_configs(20, seed=11)
    assert a == b and len(a) == 20
    assert a != cl.draw_configs(20, seed=12)
    for c in a:
        assert set(c) == set(cl.GRID)
        assert all(c[k] in v for k, v in cl.GRID.items())
    assert len({tuple(sorted(c.items())) for c in a}) == 20
    assert cl.GRID["subsample"] == (0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
    assert cl.GRID["max_depth"] == (5, 10, 15, 20, 25, 30)
    p = cl.lgbm_params(a[0], 3, n_jobs=2, seed=1)
    assert p["objective"] == "multiclass" and p["num_class"] == 3 and p["num_threads"] == 2
    assert p["deterministic"] and p["force_col_wise"] and p["bagging_freq"] == 1


def test_spec_from_config_ratios():
    assert cl.spec_from_config({"ratios": {"start": 0, "stop": 1, "step": 0.25}},
                               ("CN", "SCZ")).ratios == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert cl.spec_from_config({"ratios": [0, 0.5, 1]}, ("CN", "SCZ")).ratios == (0.0, 0.5, 1.0)
    with pytest.raises(GenbrainInputError, match="classify.n_trees"):
        cl.spec_from_config({"n_trees": 3}, ("CN", "SCZ"))


def test_selection_rule_on_a_hand_made_table():
    t = pd.DataFrame({"config": [0, 1, 2, 3, 4],
                      "val_accuracy": [0.70, 0.80, 0.80, 0.75, 0.80],
                      "val_logloss": [0.40, 0.55, 0.50, 0.30, 0.50]})
    assert cl.select_config(t) == 2  # best accuracy; tie -> lower log-loss; tie -> lower index
    assert cl.select_config(t.iloc[::-1]) == 2
    assert cl.select_config(t.assign(val_logloss=0.5)) == 1


def test_metrics_match_sklearn_and_bootstrap_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p1 = np.clip(0.3 * y + rng.uniform(0, 0.7, 60), 0, 1)
    p1[:10] = 0.5  # ties
    proba = np.c_[1 - p1, p1]
    m = cl.metric_values(y, proba)
    pred = proba.argmax(axis=1)
    assert m["accuracy"][0] == pytest.approx((pred == y).mean())
    assert m["balanced_accuracy"][0] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["auroc"][0] == pytest.approx(roc_auc_score(y, p1))
    assert m["f1"][0] == pytest.approx(f1_score(y, pred))
    # a resample's weights = metrics of the resampled subjects
    counts = cl.bootstrap_counts(60, 5, 1)
    mb = cl.metric_values(y, proba, counts)
    idx = np.repeat(np.arange(60), counts[2].astype(int))
    assert mb["auroc"][2] == pytest.approx(roc_auc_score(y[idx], p1[idx]))
    assert mb["accuracy"][2] == pytest.approx((pred[idx] == y[idx]).mean())
    # three classes: one-vs-rest macro AUROC and macro F1
    y3 = rng.integers(0, 3, 90)
    p3 = rng.dirichlet(np.ones(3), 90) + 0.4 * np.eye(3)[y3]
    p3 /= p3.sum(axis=1, keepdims=True)
    m3 = cl.metric_values(y3, p3)
    assert m3["auroc"][0] == pytest.approx(roc_auc_score(y3, p3, multi_class="ovr"))
    assert m3["f1"][0] == pytest.approx(f1_score(y3, p3.argmax(1), average="macro"))


def test_separable_signal_is_learned_and_shuffled_labels_are_not():
    spec = cl.SweepSpec(levels=("CN", "SCZ"), ratios=(0.0,), n_configs=4, seed=0, n_boot=200,
                        harmonize=False)
    good = cl.run_sweep(_cohort({"A": 100, "B": 100}, effect=4.0), FEATS, spec).table
    acc = good[(good["metric"] == "accuracy")].set_index(["train_site", "test_site"])["value"]
    assert acc.min() > 0.9  # within and cross-site
    bad = cl.run_sweep(_cohort({"A": 150, "B": 150}, effect=4.0, shuffle=True), FEATS,
                       spec).table
    acc = bad[(bad["metric"] == "accuracy")]
    assert acc["value"].between(0.3, 0.7).all()
    assert abs(acc["value"].mean() - 0.5) < 0.1
    au = bad[bad["metric"] == "auroc"]
    assert (au["ci_low"] < 0.5).all()  # chance lies inside every CI


@pytest.fixture(scope="module")
def sweep():
    feats = _cohort({"A": 60, "B": 70, "C": 80}, effect=1.0, seed=1)
    rng = np.random.default_rng(2)
    pools = {}
    for j, s in enumerate(("A", "B", "C")):
        pool = _cohort({s: 120}, effect=1.0, seed=10 + j)
        pool[FEATS] += 0.5 * j + rng.normal(0, 0.1, (120, len(FEATS)))  # site offset
        pools[s] = pool.drop(columns=["participant_id", "site"])
    spec = cl.SweepSpec(levels=("CN", "SCZ"), ratios=(0.0, 0.5, 1.0), n_configs=3, seed=4,
                        n_boot=100)
    return feats, pools, spec, cl.run_sweep(feats, FEATS, spec, pools)


def test_sweep_table_is_tidy_and_deterministic(sweep):
    feats, pools, spec, res = sweep
    t = res.table
    assert list(t.columns) == list(cl.RESULT_COLUMNS)
    assert not t.duplicated(["train_site", "test_site", "ratio", "method", "metric"]).any()
    # 3 sites x (3 within + 3 x 2 cross) ratios x 4 metrics, plus the ComBat rows
    core = t[t["method"].isin(["real", "augmented"])]
    assert len(core) == 3 * 3 * 3 * 4
    assert set(t.loc[t["method"].str.startswith("harmonized"), "setting"]) == {"cross"}
    assert len(t[t["method"] == "harmonized"]) == 3 * 2 * 4
    real = t[t["method"] == "real"]
    assert real["diff"].isna().all()
    aug = t[t["method"] == "augmented"]
    assert aug["diff"].notna().all() and aug["p"].between(0, 1).all()
    assert ((aug["diff_low"] <= aug["diff"] + 1e-12) | aug["diff"].eq(0)).all()
    assert (t["ci_low"] <= t["ci_high"]).all()
    within = t[(t["setting"] == "within") & (t["method"] == "real")]
    n_test = res.splits.query("split == 'test'").groupby("site").size()
    assert (within.set_index("train_site")["n_eval"].groupby(level=0).first() == n_test).all()
    cross = t[(t["train_site"] == "A") & (t["test_site"] == "C") & (t["method"] == "real")]
    assert (cross["n_eval"] == 80).all()  # all of the other site
    # nested pools: n_synthetic = round(r * n_train)
    a = t[(t["train_site"] == "A") & (t["method"] == "augmented")]
    assert set(zip(a["ratio"], a["n_synthetic"])) == {(0.5, 18), (1.0, 36)}
    # one chosen ratio per training site, chosen on validation
    chosen = t[t["chosen"] & (t["method"] == "augmented")].groupby("train_site")["ratio"]
    assert (chosen.nunique() == 1).all()
    again = cl.run_sweep(feats, FEATS, spec, pools, train_sites=["B"]).table
    pd.testing.assert_frame_equal(again.reset_index(drop=True),
                                  t[t["train_site"] == "B"].reset_index(drop=True))
    sel = res.selection
    assert (sel.groupby(["train_site", "ratio"])["selected"].sum() == 1).all()


def test_synthetic_pools_are_nested_and_bounded():
    pool = pd.DataFrame({"v": np.arange(50)})
    r1 = cl.synthetic_rows(pool, 20, 0.5, 3, "A")["v"].tolist()
    r2 = cl.synthetic_rows(pool, 20, 1.0, 3, "A")["v"].tolist()
    assert len(r1) == 10 and r2[:10] == r1
    with pytest.raises(GenbrainInputError, match=r"site 'A': ratio 3.0 needs 60 rows"):
        cl.synthetic_rows(pool, 20, 3.0, 3, "A")


def test_three_class_sweep_runs_with_macro_metrics():
    feats = _cohort({"A": 60, "B": 60}, effect=3.0, levels=("CN", "MCI", "AD"))
    spec = cl.SweepSpec(levels=("CN", "MCI", "AD"), ratios=(0.0,), n_configs=2, n_boot=50,
                        harmonize=False)
    res = cl.run_sweep(feats, FEATS, spec)
    acc = res.table.query("metric == 'accuracy'")["value"]
    assert acc.min() > 0.6  # well above 1/3
    shap = cl.shap_values(res.models["A", "real"].booster, np.zeros((4, len(FEATS))), 3)
    assert shap.shape == (4, 3, len(FEATS))


def test_shap_explanations_find_the_planted_features(sweep):
    feats, _, _, res = sweep
    ex = cl.explain(res, FEATS, 2)
    assert set(ex["method"]) == {"real", "augmented"}
    top2 = ex[ex["rank"] <= 2].groupby(["train_site", "method"])["feature"].apply(set)
    assert sum(s == {"f0", "f1"} for s in top2) >= 4
    # SHAP values add up to the model's margin (LightGBM's pred_contrib is exact)
    m = res.models["A", "real"]
    x = (feats[FEATS].to_numpy()[:5] - m.mean) / m.sd
    contrib = m.booster.predict(x, pred_contrib=True)
    np.testing.assert_allclose(contrib.sum(axis=1), m.booster.predict(x, raw_score=True),
                               atol=1e-9)
    ov = cl.region_overlap(["f0", "f1", "f5", "f2"], {"f0", "f1"}, k=2, n_features=8)
    assert ov["hits"] == 2 and ov["precision"] == 1.0 and ov["p"] == pytest.approx(1 / 28)
    assert cl.region_overlap(["f5", "f0", "f1"], {"f0"}, k=1)["hits"] == 0
    with pytest.raises(GenbrainInputError, match="'f9' is not a feature"):
        cl.region_overlap(FEATS, {"f9"}, k=2)


def test_summary_and_figures(sweep, tmp_path):
    from genbrain.diagnosis import figures as cf

    _, _, _, res = sweep
    summ = cl.summarise_cross_site(res.table)
    assert list(summ["method"]) == list(cl.METHODS)
    assert (summ["pairs"] == 6).all()
    ex = cl.explain(res, FEATS, 2)
    paths = [tmp_path / n for n in ("heat.png", "ratio.png", "harm.png", "shap.png")]
    cf.heatmap(res.table, paths[0])
    cf.ratio_curves(res.table, paths[1])
    cf.harmonization_bars(res.table, paths[2])
    cf.shap_summary(ex, paths[3])
    for p in paths:
        assert p.stat().st_size > 5000 and p.read_bytes()[:4] == b"\x89PNG"


def test_bad_feature_and_ratio_inputs():
    feats = _cohort({"A": 30, "B": 30})
    spec = cl.SweepSpec(levels=("CN", "SCZ"), ratios=(0.5,), n_configs=1, n_boot=10)
    with pytest.raises(GenbrainInputError, match="must include 0.0"):
        cl.run_sweep(feats, FEATS, spec)
    spec = cl.SweepSpec(levels=("CN", "SCZ"), n_configs=1, n_boot=10)
    bad = feats.copy()
    bad.loc[3, "f2"] = np.nan
    with pytest.raises(GenbrainInputError, match=r"row 4, column 'f2'"):
        cl.run_sweep(bad, FEATS, spec)
    with pytest.raises(GenbrainInputError, match=r"missing feature column\(s\) \['f9'\]"):
        cl.run_sweep(feats, [*FEATS, "f9"], spec)
    with pytest.raises(GenbrainInputError, match="training site 'Z'"):
        cl.run_sweep(feats, FEATS, spec, train_sites=["Z"])
