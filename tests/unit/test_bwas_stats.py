import itertools

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats as sstats

from genbrain.bwas.compare import truth_recovery
from genbrain.errors import GenbrainInputError
from genbrain.io import save_tsv
from genbrain.stats.cohens_d import (
    analysis_mask,
    bootstrap_overlaps,
    bootstrap_weights,
    cohens_d,
    design_matrix,
)
from genbrain.stats.overlap import (
    METRICS,
    chance_levels,
    neighbour_correlation,
    overlap_scores,
    spatial_null,
    top_set,
)
from genbrain.store import ImageStore, merge_indices, write_shard


def planted_cohort(n, v, seed, effect=None, sites=("A",), noise=1.0, offset=5.0):
    """Images with a planted diagnosis effect (patients minus controls, in noise SDs), age
    and sex effects, per-site offsets; covariates as a participants table."""
    rng = np.random.default_rng(seed)
    cov = pd.DataFrame({"participant_id": [f"sub-{seed}-{i:04d}" for i in range(n)],
                        "age": rng.uniform(20, 80, n).round(1),
                        "sex": rng.choice(["M", "F"], n),
                        "diagnosis": np.where(np.arange(n) % 2 == 0, "SCZ", "CN"),
                        "site": [sites[i % len(sites)] for i in range(n)]})
    x = (offset + noise * rng.standard_normal((n, v))
         + np.outer((cov["age"] - 50) / 10, np.sin(np.linspace(0, 5, v)))
         + np.outer(cov["sex"] == "F", 0.3 * np.cos(np.linspace(0, 7, v)))
         + np.outer(cov["site"].map({s: 0.5 * k for k, s in enumerate(sites)}), np.ones(v)))
    if effect is not None:
        x += np.outer(cov["diagnosis"] == "SCZ", noise * effect)
    return x, cov


def _statsmodels_d(x, design):
    out = []
    for j in range(x.shape[1]):
        fit = sm.OLS(x[:, j], design).fit()
        out.append(fit.params[-1] / np.sqrt(fit.mse_resid))
    return np.array(out)


@pytest.mark.parametrize("site", [False, True])
def test_d_equals_statsmodels_ols_per_voxel(site):
    x, cov = planted_cohort(70, 40, 0, effect=np.linspace(-1, 1, 40), sites=("A", "B", "C"))
    d = cohens_d(x, cov, site=site, block_rows=16)  # several blocks
    design = design_matrix(cov, site=site)
    assert design.names[-1] == "diagnosis" and design.p == (6 if site else 4)
    # statsmodels on an independently built design (raw age, dummies by pandas)
    raw = pd.DataFrame({"const": 1.0, "age": cov["age"], "sex": (cov["sex"] == "F") * 1.0})
    if site:
        raw = raw.join(pd.get_dummies(cov["site"], drop_first=True, dtype=float))
    raw["dx"] = (cov["diagnosis"] == "SCZ") * 1.0
    np.testing.assert_allclose(d, _statsmodels_d(x, raw.to_numpy()), atol=1e-6, rtol=0)


def test_d_from_a_float16_store_matches_the_array(tmp_path):
    x, cov = planted_cohort(40, 30, 1, effect=np.ones(30))
    x = x.astype(np.float16)
    idx = []
    for k, rows in enumerate(np.array_split(np.arange(40), 2)):
        d = tmp_path / f"chunk-{k}"
        d.mkdir()
        write_shard(x[rows], d / "VBM.npy", "float16")
        save_tsv(cov.iloc[rows].assign(modality="VBM", modality_index=0, shard="VBM.npy",
                                       row=np.arange(len(rows))), d / "index.tsv")
        idx.append(d / "index.tsv")
    merge_indices(idx, tmp_path / "index.tsv")
    store = ImageStore(tmp_path / "index.tsv")
    sel = store.table.iloc[::-1].iloc[:35]  # a subset, in another order
    got = cohens_d(store, sel)  # float32 arithmetic for a float16 store
    want = _statsmodels_d(x.astype(np.float64)[sel.index], design_matrix(sel).x)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    np.testing.assert_allclose(cohens_d(store, sel, dtype=np.float64), want, atol=1e-6, rtol=0)


def test_float32_arithmetic_stays_close_to_float64_despite_a_large_mean():
    x, cov = planted_cohort(300, 200, 18, effect=np.linspace(-0.5, 0.5, 200), offset=50.0,
                            noise=0.5)
    d64 = cohens_d(x, cov)
    d32 = cohens_d(x.astype(np.float32), cov, block_rows=64)
    np.testing.assert_allclose(d32, cohens_d(x.astype(np.float32).astype(np.float64), cov),
                               atol=1e-5, rtol=0)
    assert np.abs(d32 - d64).max() < 1e-4  # float32 rounding of the data itself included


def test_planted_effect_is_recovered():
    v = 400
    truth = np.where(np.arange(v) < 100, -0.8, 0.0) + np.where(np.arange(v) >= 350, 0.5, 0.0)
    x, cov = planted_cohort(400, v, 2, effect=truth)
    d = cohens_d(x, cov)
    assert sstats.pearsonr(d, truth).statistic > 0.85
    assert d[:100].mean() == pytest.approx(-0.8, abs=0.1)  # d in noise SDs, patients - controls
    assert d[350:].mean() == pytest.approx(0.5, abs=0.1)
    assert abs(d[100:350].mean()) < 0.05
    rec = truth_recovery({"site": d}, truth)
    assert rec["r_truth"].iloc[0] == pytest.approx(sstats.pearsonr(d, truth).statistic)


def test_constant_voxel_has_zero_d_and_mask_sets_nan():
    x, cov = planted_cohort(30, 10, 3)
    x[:, 4] = 2.5
    mask = np.ones(10, bool)
    mask[7] = False
    d = cohens_d(x, cov, mask=mask)
    assert d[4] == 0.0 and np.isnan(d[7]) and np.isfinite(np.delete(d, 7)).all()


def test_analysis_mask_is_mean_gm_above_threshold():
    gm = np.tile(np.array([0.1, 0.19, 0.21, 0.9]), (5, 1)) + np.linspace(-0.01, 0.01, 5)[:, None]
    np.testing.assert_array_equal(analysis_mask(gm), [False, False, True, True])
    with pytest.raises(GenbrainInputError, match="no voxel has mean grey matter > 0.2"):
        analysis_mask(gm * 0.1)


def test_user_errors_are_one_line_and_name_the_culprit():
    x, cov = planted_cohort(20, 5, 4, sites=("A", "B"))
    with pytest.raises(GenbrainInputError, match="one level 'CN' only"):
        cohens_d(x, cov.assign(diagnosis="CN"))
    # site B holds only patients: its dummy is colinear with diagnosis - intercept - site A
    bad = cov.assign(site=np.where(cov["diagnosis"] == "SCZ", "B", "A"))
    with pytest.raises(GenbrainInputError, match=r"singular design: column 'diagnosis'"):
        cohens_d(x, bad, site=True)
    with pytest.raises(GenbrainInputError, match="singular design: column 'age'"):
        cohens_d(x, cov.assign(age=40.0))
    with pytest.raises(GenbrainInputError, match=r"4 subjects for 4 design columns"):
        cohens_d(x[:4], cov.iloc[:4])
    y = x.copy()
    y[7, 2] = np.nan
    with pytest.raises(GenbrainInputError, match="sub-4-0007") as err:
        cohens_d(y, cov, block_rows=5)
    assert "\n" not in str(err.value)
    with pytest.raises(GenbrainInputError, match="lack column"):
        cohens_d(x, cov.drop(columns="diagnosis"))
    with pytest.raises(GenbrainInputError, match="cannot tell controls"):
        cohens_d(x, cov.assign(diagnosis=np.where(cov["diagnosis"] == "CN", "X", "Y")))
    assert np.isfinite(cohens_d(x, cov.assign(diagnosis=np.where(
        cov["diagnosis"] == "CN", "X", "Y")), control="X")).all()


def test_dice_variants_on_hand_computed_maps():
    a = np.array([1.0, 2.0, -1.0, -3.0, 0.5, -0.2, 4.0, -0.1, 0.3, 0.0])
    b = np.array([2.0, -1.0, -2.0, -1.0, 1.0, 0.1, 3.0, 0.2, -0.3, 1.0])
    s = overlap_scores(a, b, top=0.2)
    # PA = {0,1,4,6,8}, NA = {2,3,5,7}; PB = {0,4,5,6,7,9}, NB = {1,2,3,8}
    assert s["dice_p"] == pytest.approx(2 * 3 / (5 + 6))  # PA∩PB = {0,4,6}
    assert s["dice_n"] == pytest.approx(2 * 2 / (4 + 4))  # NA∩NB = {2,3}
    assert s["dice"] == pytest.approx((2 * 3 + 2 * 2) / (5 + 6 + 4 + 4))
    # top 20% (k = 2): TA = {6, 3} (|4|, |-3|), TB = {6, 0} (|3|; |2| ties with 2: earlier)
    np.testing.assert_array_equal(np.flatnonzero(top_set(b, 0.2)), [0, 6])
    assert s["top_dice_p"] == pytest.approx(2 * 1 / (1 + 2))  # {6} vs {0, 6}
    assert s["top_dice_n"] == pytest.approx(0.0)  # {3} vs {}
    assert s["top_dice"] == pytest.approx(2 * 1 / (2 + 2))
    assert s["r"] == pytest.approx(sstats.pearsonr(a, b).statistic)


def test_dice_of_empty_sets_is_one():
    a, b = np.array([1.0, 2.0, 3.0]), np.array([0.5, 1.0, 2.0])
    s = overlap_scores(a, b, top=0.34)
    assert s["dice_n"] == 1.0 and s["top_dice_n"] == 1.0  # no negative voxel in either
    assert s["dice_p"] == 1.0 and s["dice"] == 1.0
    s = overlap_scores(a, -b)
    assert s["dice_p"] == 0.0 and s["dice_n"] == 0.0 and s["dice"] == 0.0


def test_chance_levels_equal_brute_force_permutation_mean():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal(7) - 0.4, rng.standard_normal(7) + 0.2
    mask = np.ones(7, bool)
    perms = [overlap_scores(a[list(p)], b, mask, top=0.3)
             for p in itertools.permutations(range(7))]  # all 5,040 orders
    brute = pd.DataFrame(perms).mean()
    null = chance_levels(a, b, mask, top=0.3)
    for m in METRICS:
        assert null[m] == pytest.approx(brute[m], abs=1e-9), m


def test_chance_dice_is_sign_agreement_fraction_for_70_percent_negative_maps():
    rng = np.random.default_rng(6)
    m = 10_000
    a = np.where(np.arange(m) < 7000, -1.0, 1.0) * rng.uniform(0.1, 1, m)
    b = rng.permutation(a)
    assert chance_levels(a, b)["dice"] == pytest.approx(0.7 * 0.7 + 0.3 * 0.3)  # 0.58
    assert chance_levels(a, b)["top_dice"] == pytest.approx(0.2 * 0.58, abs=0.01)


def grid_mask(shape=(14, 14, 14)):
    vm = np.zeros(shape, bool)
    vm[2:-2, 2:-2, 2:-2] = True
    return vm


def test_spatial_null_keeps_values_and_smoothness_and_is_wider_than_permutation():
    from scipy.ndimage import gaussian_filter

    vm = grid_mask()
    rng = np.random.default_rng(7)
    smooth = lambda: gaussian_filter(rng.standard_normal(vm.shape), 1.5)[vm]
    a, b = smooth() - 0.02, smooth()
    mask = np.ones(vm.sum(), bool)
    null = spatial_null(a, b, mask, vm, n_null=60, seed=1)
    rho_a = neighbour_correlation(np.where(vm, 0, 0) + _vol(a, vm), vm)
    assert null.attrs["neighbour_r"] == pytest.approx(rho_a)
    chance = chance_levels(a, b, mask)
    perm = pd.DataFrame([overlap_scores(rng.permutation(a), b) for _ in range(60)])
    for m in ("dice", "dice_p", "top_dice"):
        assert null[m].mean() == pytest.approx(chance[m], abs=0.05), m
    assert null["r"].std() > 2 * perm["r"].std()  # smooth maps: chance spreads wider
    assert null["dice"].std() > 2 * perm["dice"].std()
    # reproducible, and white noise gives (nearly) no smoothing
    pd.testing.assert_frame_equal(null, spatial_null(a, b, mask, vm, n_null=60, seed=1))
    white = spatial_null(rng.standard_normal(len(a)), b, mask, vm, n_null=5)
    assert white.attrs["sigma_voxels"] < 0.4


def _vol(vec, vm):
    out = np.zeros(vm.shape)
    out[vm] = vec
    return out


def test_bootstrap_is_seeded_and_equals_refitting_resampled_cohorts():
    v = 300
    x, cov = planted_cohort(60, v, 8, effect=0.8 * np.sin(np.linspace(0, 9, v)))
    ref = np.sin(np.linspace(0, 9, v)) + 0.3
    one = bootstrap_overlaps(x, cov, reference=ref, n_boot=25, seed=3)
    pd.testing.assert_frame_equal(one, bootstrap_overlaps(x, cov, reference=ref, n_boot=25,
                                                          seed=3))
    assert not one.equals(bootstrap_overlaps(x, cov, reference=ref, n_boot=25, seed=4))
    w = bootstrap_weights(design_matrix(cov).x[:, -1], 25, seed=3)
    assert (w.sum(axis=1) == 60).all()
    assert (w[:, cov["diagnosis"] == "SCZ"].sum(axis=1) == 30).all()  # stratified
    for b in (0, 7, 24):
        idx = np.repeat(np.arange(60), w[b])
        want = overlap_scores(cohens_d(x[idx], cov.iloc[idx]), ref)
        for m in METRICS:
            assert one.loc[b, m] == pytest.approx(want[m], abs=1e-5), (b, m)


def test_bootstrap_top_sets_from_the_pilot_bracket_are_close_to_exact():
    v = 12_000
    x, cov = planted_cohort(50, v, 9, effect=0.5 * np.sin(np.linspace(0, 40, v)))
    ref = np.sin(np.linspace(0, 40, v)) + np.random.default_rng(1).standard_normal(v)
    mask = np.ones(v, bool)
    mask[:500] = False
    boot = bootstrap_overlaps(x, cov, reference=ref, mask=mask, n_boot=12, seed=0,
                              pilot_voxels=3000)
    w = bootstrap_weights(design_matrix(cov).x[:, -1], 12, seed=0)
    for b in range(12):
        idx = np.repeat(np.arange(50), w[b])
        want = overlap_scores(cohens_d(x[idx], cov.iloc[idx]), ref, mask)
        for m in METRICS:
            assert boot.loc[b, m] == pytest.approx(want[m], abs=1e-2 if "top" in m else 1e-5)


def test_bootstrap_from_a_store_equals_the_array(tmp_path):
    x, cov = planted_cohort(40, 50, 17, effect=np.linspace(-1, 1, 50))
    write_shard(x, tmp_path / "VBM.npy", "float32")
    save_tsv(cov.assign(modality="VBM", modality_index=0, shard="VBM.npy", row=np.arange(40)),
             tmp_path / "index.tsv")
    store = ImageStore(tmp_path / "index.tsv")
    ref = np.linspace(-1, 1, 50)
    mask = np.arange(50) % 3 != 0
    a = bootstrap_overlaps(store, store.table, reference=ref, mask=mask, n_boot=10, seed=5)
    b = bootstrap_overlaps(x.astype(np.float32), cov, reference=ref, mask=mask, n_boot=10,
                           seed=5)
    pd.testing.assert_frame_equal(a, b, atol=1e-6)


def test_near_perfect_fits_are_recomputed_from_residuals():
    x, cov = planted_cohort(80, 6, 19)
    rng = np.random.default_rng(0)
    x[:, 2] = 3.0 + 0.5 * (cov["diagnosis"] == "SCZ") + 1e-4 * rng.standard_normal(80)
    x32 = x.astype(np.float32)
    want = _statsmodels_d(x32.astype(np.float64), design_matrix(cov).x)
    got = cohens_d(x32, cov)  # float32 Gram sums cannot resolve RSS of voxel 2
    assert abs(want[2]) > 1000
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_blocks_of_many_rows_give_the_same_map():
    x, cov = planted_cohort(2600, 70, 20, effect=np.linspace(-0.3, 0.3, 70))
    x = x.astype(np.float32)
    np.testing.assert_allclose(cohens_d(x, cov), cohens_d(x, cov, block_rows=500), atol=1e-5)
