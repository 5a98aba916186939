"""The BWAS comparison statistics (genbrain.bwas.compare: score tables, bootstrap tests,
agreement curve, effective n, concordance screen) and figures (genbrain.bwas.figures)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from genbrain.bwas.compare import (
    TABLE_COLUMNS,
    agreement_curve,
    bootstrap_t_test,
    concordance_screen,
    effective_sample_size,
    site_score_table,
)
from genbrain.stats.cohens_d import as_cohort
from genbrain.stats.overlap import METRICS, chance_levels, overlap_scores
from tests.unit.test_bwas_stats import grid_mask, planted_cohort


def test_score_table_cis_are_centred_on_the_observed_scores_when_the_bootstrap_is_biased():
    # bootstrap maps are noisier than the full cohort's: their scores sit below it
    rng = np.random.default_rng(11)
    boot = {"real": pd.DataFrame({m: rng.normal(0.6, 0.02, 500) for m in METRICS}),
            "synthetic": pd.DataFrame({m: rng.normal(0.75, 0.01, 500) for m in METRICS})}
    observed = {"real": dict.fromkeys(METRICS, 0.7), "synthetic": dict.fromkeys(METRICS, 0.8)}
    chance = {k: dict.fromkeys(METRICS, 0.0) for k in ("real", "synthetic")}
    row = site_score_table("S1", observed, boot, chance).iloc[0]
    assert row["real_boot_mean"] == pytest.approx(0.6, abs=0.01)  # the raw mean shows the bias
    assert row["real_ci_low"] < 0.7 < row["real_ci_high"]
    assert row["real_ci_high"] - row["real_ci_low"] == pytest.approx(
        np.subtract(*np.quantile(boot["real"]["r"], [0.975, 0.025])))
    assert row["synthetic_ci_low"] < 0.8 < row["synthetic_ci_high"]
    assert row["difference_ci_low"] < 0.1 < row["difference_ci_high"]
    assert row["difference_ci_high"] < 0.15  # the raw bootstrap difference, 0.15, is outside


def test_score_table_and_bootstrap_tests():
    rng = np.random.default_rng(10)
    boot = {"real": pd.DataFrame({m: rng.normal(0.3, 0.05, 200) for m in METRICS}),
            "synthetic": pd.DataFrame({m: rng.normal(0.4, 0.05, 200) for m in METRICS})}
    observed = {"real": dict.fromkeys(METRICS, 0.3), "synthetic": dict.fromkeys(METRICS, 0.4)}
    chance = {"real": dict.fromkeys(METRICS, 0.1), "synthetic": dict.fromkeys(METRICS, 0.12)}
    t = site_score_table("S1", observed, boot, chance)
    assert list(t.columns) == TABLE_COLUMNS and list(t["metric"]) == list(METRICS)
    row = t.iloc[0]
    assert row["difference"] == pytest.approx(0.1)
    assert row["relative_gain_pct"] == pytest.approx(100 * 0.1 / 0.3)
    assert row["difference_ci_low"] < 0.1 < row["difference_ci_high"]
    assert row["real_ci_low"] < row["real_boot_mean"] < row["real_ci_high"]
    want = sstats.ttest_ind(boot["synthetic"]["r"], boot["real"]["r"])
    assert row["p_bootstrap_t"] == pytest.approx(want.pvalue)
    delta = boot["synthetic"]["r"] - boot["real"]["r"]
    delta = delta - (delta.mean() - 0.1)  # centred on the observed difference
    assert row["p_bootstrap"] == pytest.approx(2 * ((delta <= 0).sum() + 1) / 201)
    assert row["chance_synthetic"] == 0.12 and np.isnan(row["chance_spatial_q95_real"])
    assert bootstrap_t_test(np.ones(3), np.ones(3)) == (0.0, 1.0)


def test_effective_sample_size_interpolates_and_extrapolates():
    a = 200.0  # r(n)^2 = n / (n + a)
    ns = [25, 50, 100, 200, 400]
    curve = pd.DataFrame([(n, 0, np.sqrt(n / (n + a))) for n in ns], columns=["n", "repeat", "r"])
    mid = effective_sample_size(curve, np.sqrt(150 / 350))
    assert 100 < mid["n_interp"] < 200 and mid["n_model"] == pytest.approx(150)
    high = effective_sample_size(curve, np.sqrt(1000 / 1200))
    assert np.isnan(high["n_interp"]) and high["above_curve"] == 1.0
    assert high["n_model"] == pytest.approx(1000)


def test_agreement_curve_grows_with_n_and_uses_disjoint_subsamples():
    v = 200
    truth = np.sin(np.linspace(0, 12, v))
    x, cov = planted_cohort(400, v, 11, effect=0.4 * truth)
    pool = as_cohort(x, cov, "pool")
    curve = agreement_curve(pool, truth, np.ones(v, bool), [20, 80, 200], n_repeats=3, seed=0)
    assert curve.groupby("n").size().to_dict() == {20: 3, 80: 3, 200: 2}  # 2 x 200 = pool
    mean = curve.groupby("n")["r"].mean()
    assert mean[20] < mean[80] < mean[200]


def test_concordance_screen_separates_concordant_and_discordant_sites():
    v = 300
    prior = np.sin(np.linspace(0, 10, v))
    mask = np.ones(v, bool)
    good = as_cohort(*planted_cohort(160, v, 12, effect=0.6 * prior), label="good")
    other = np.cos(np.linspace(0, 23, v))
    bad = as_cohort(*planted_cohort(160, v, 13, effect=0.6 * other), label="bad")
    noise = as_cohort(*planted_cohort(30, v, 14), label="noise")
    s = pd.concat([concordance_screen(n, c, prior, mask, n_splits=4, seed=0)
                   for n, c in (("good", good), ("bad", bad), ("noise", noise))])
    s = s.set_index("site")
    assert s.loc["good", "verdict"] == "benefit"
    assert (s.loc["bad", "verdict"], s.loc["bad", "reason"]) == ("no benefit", "discordant")
    assert s.loc["good", "reliability"] > 0.5 and s.loc["bad", "reliability"] > 0.5
    assert s.loc["noise", "verdict"] == "no benefit"


def test_figures_and_nifti(tmp_path):
    import nibabel as nib

    from genbrain.bwas.figures import d_map_figure, gain_figure, write_d_map
    from genbrain.space import standard_space

    space = standard_space()
    z = space.world_coords[:, 2]
    ref = np.where(np.abs(z) < 10, -1.0, 0.2)
    ref[::7] = np.nan
    write_d_map(ref, tmp_path / "d.nii.gz")
    img = nib.load(tmp_path / "d.nii.gz")
    vec = space.to_vector(np.asarray(img.dataobj))
    assert np.allclose(img.affine, space.affine) and vec[0] == 0.0 and vec[1] == pytest.approx(
        ref[1])
    vmax = d_map_figure({"reference": ref, "real": 2 * ref, "synthetic": ref},
                        tmp_path / "maps.png", title="site S1")
    assert vmax == pytest.approx(2.0) and (tmp_path / "maps.png").stat().st_size > 10_000
    table = site_score_table(
        "S1", {"real": dict.fromkeys(METRICS, 0.3), "synthetic": dict.fromkeys(METRICS, 0.4)},
        {k: pd.DataFrame({m: np.random.default_rng(0).normal(mu, 0.02, 50) for m in METRICS})
         for k, mu in (("real", 0.3), ("synthetic", 0.4))},
        {k: dict.fromkeys(METRICS, 0.1) for k in ("real", "synthetic")})
    gain_figure(table, tmp_path / "gain.png")
    assert (tmp_path / "gain.png").stat().st_size > 5_000


def test_site_scores_end_to_end_on_a_small_grid(tmp_path):
    from genbrain.bwas.compare import site_scores

    vm = grid_mask((12, 12, 12))  # 512 voxels
    v = int(vm.sum())
    truth = np.where(np.arange(v) % 64 < 20, -0.6, 0.1)
    real = as_cohort(*planted_cohort(60, v, 15, effect=truth), label="site S1")
    syn = as_cohort(*planted_cohort(300, v, 16, effect=truth), label="synthetic S1")
    mask = np.ones(v, bool)
    mask[:12] = False
    table, maps = site_scores("S1", real, syn, truth, mask, volume_mask=vm, n_boot=40,
                              n_null=10, seed=2)
    assert list(table.columns) == TABLE_COLUMNS and len(table) == len(METRICS)
    assert np.isnan(maps["real"][:12]).all() and np.isfinite(maps["synthetic"][12:]).all()
    t = table.set_index("metric")
    # the larger cohort agrees better with the truth: the synthetic gain is positive
    assert t.loc["r", "synthetic"] > t.loc["r", "real"] and t.loc["r", "difference_ci_low"] > 0
    assert t.loc["r", "real"] == pytest.approx(overlap_scores(maps["real"], truth, mask)["r"])
    assert (t["chance_spatial_q95_real"].notna()).all() and (t["n_boot"] == 40).all()
    assert t.loc["dice", "chance_real"] == pytest.approx(
        chance_levels(maps["real"], truth, mask)["dice"])
