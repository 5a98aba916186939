"""Image metrics and DeepTaskGen metrics against hand-computed cases and library references."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from genbrain.errors import GenbrainInputError
from genbrain.imaging.metrics import (
    MS_SSIM_WINDOW,
    bootstrap_indices,
    bootstrap_mean_ci,
    bootstrap_similarity,
    correlation_matrix,
    dice,
    dice_auc,
    dice_curve,
    discriminability,
    identified,
    ms_ssim,
    ms_ssim_vectors,
    normalise_01,
    paired_tests,
    psnr,
    rmse,
    score_batch,
    ssim3d,
    ssim3d_vectors,
    summarise_scores,
    top_q,
)
from genbrain.space import standard_space, template_t1
from genbrain.stats.similarity import t_from_r


@pytest.fixture(scope="module")
def t1_vector():
    space = standard_space()
    return space.to_vector(np.asarray(template_t1(), np.float64))


def test_psnr_and_rmse_of_a_known_mse():
    rng = np.random.default_rng(0)
    target = rng.uniform(0, 1, (3, 1000))
    pred = target + 0.1 * rng.choice([-1.0, 1.0], size=target.shape)  # MSE = 0.01 exactly
    np.testing.assert_allclose(psnr(pred, target, normalise=False), 20.0)
    np.testing.assert_allclose(rmse(pred, target, normalise=False), 0.1)
    np.testing.assert_allclose(psnr(pred * 255, target * 255, normalise=False, data_range=255),
                               20.0)


def test_normalisation_is_per_image_min_max():
    x = np.array([[2.0, 4.0, 6.0], [5.0, 5.0, 5.0]])
    np.testing.assert_array_equal(normalise_01(x), [[0, 0.5, 1], [0, 0, 0]])
    rng = np.random.default_rng(1)
    t = rng.normal(size=(2, 500))
    # an affine change of units does not change the normalised scores
    assert np.all(psnr(3.0 * t + 7.0, t) > 200) and np.allclose(rmse(3.0 * t + 7.0, t), 0)
    assert np.all(np.isinf(psnr(t, t)))
    robust = normalise_01(np.r_[np.linspace(0, 1, 99), 100.0][None], percentiles=(0, 98))
    assert robust.max() == 1 and robust[0, 50] > 0.4  # one outlier no longer squashes the rest


def test_ssim_of_identical_images_is_one_and_falls_with_noise(t1_vector):
    rng = np.random.default_rng(2)
    same = ssim3d_vectors(t1_vector[None], t1_vector[None])
    np.testing.assert_allclose(same, 1.0)
    noisy = [ssim3d_vectors(t1_vector + s * rng.standard_normal(t1_vector.shape), t1_vector)[0]
             for s in (0.02, 0.1)]
    assert 1.0 > noisy[0] > noisy[1] > 0
    vol = rng.uniform(size=(12, 13, 14))
    assert ssim3d(vol, vol) == pytest.approx(1.0)
    with pytest.raises(GenbrainInputError):
        ssim3d(vol, vol[:-1])


def test_ms_ssim_needs_a_window_of_5_on_the_2mm_grid(t1_vector):
    """MONAI's default window (11) and 7 are refused on a side of 91 with 5 scales; 5 works."""
    import torch
    from monai.metrics import MultiScaleSSIMMetric

    space = standard_space()
    vol = normalise_01(t1_vector)
    grid = torch.as_tensor(space.to_volume(vol), dtype=torch.float32)[None, None]
    with pytest.raises(ValueError, match="must be larger than 160"):
        MultiScaleSSIMMetric(spatial_dims=3, data_range=1.0)(grid, grid)
    with pytest.raises(ValueError):
        ms_ssim(space.to_volume(vol), space.to_volume(vol), kernel_size=7)
    assert MS_SSIM_WINDOW == 5
    rng = np.random.default_rng(3)
    noisy = t1_vector + 0.1 * rng.standard_normal(t1_vector.shape)
    scores = ms_ssim_vectors(np.stack([t1_vector, noisy]), np.stack([t1_vector, t1_vector]))
    assert scores[0] == pytest.approx(1.0, abs=1e-5) and 0 < scores[1] < 0.999


def test_correlation_matrix_matches_numpy():
    rng = np.random.default_rng(4)
    a, p = rng.normal(size=(5, 50)), rng.normal(size=(4, 50))
    mask = rng.uniform(size=50) > 0.3
    c = correlation_matrix(a, p, mask)
    ref = np.corrcoef(a[:, mask], p[:, mask])[:5, 5:]
    np.testing.assert_allclose(c, ref, atol=1e-12)
    assert np.all(correlation_matrix(np.ones((1, 50)), p)[0] == 0)  # constant map: r = 0


def test_discriminability_on_a_hand_made_matrix():
    c = np.array([
        [0.9, 0.1, 0.2, 0.3, 0.0],   # own prediction best: identified
        [0.5, 0.4, 0.3, 0.2, 0.1],   # another subject's prediction fits better
        [0.2, 0.2, 0.8, 0.8, 0.1],   # a tie with another subject: not unique
        [0.1, 0.1, 0.1, 0.7, 0.2],   # identified
        [0.3, 0.3, 0.3, 0.3, 0.6],   # identified
    ])
    np.testing.assert_array_equal(identified(c), [True, False, False, True, True])
    assert discriminability(c) == pytest.approx(0.6 * 0.68)
    assert discriminability(np.eye(5)) == pytest.approx(1.0)
    assert discriminability(np.ones((5, 5))) == 0.0  # all ties: no one identified


def test_top_q_and_dice_on_hand_made_maps():
    v = np.array([0.1, -0.9, 0.5, 0.3, -0.7, 0.2, 0.0, 0.8, -0.4, 0.6])
    # q = 0.3: k = 3, the 3rd largest |v| is 0.7; strictly above it: -0.9 and 0.8
    np.testing.assert_array_equal(np.flatnonzero(top_q(v, 0.3)), [1, 7])
    assert not top_q(v, 0.05).any()  # k = 0 keeps none
    assert dice(np.zeros(4, bool), np.zeros(4, bool)) == 1.0
    assert dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 1, 0], bool)) == 0.5
    assert dice(np.array([1, 0], bool), np.array([0, 1], bool)) == 0.0


def _reference_dice_auc(pred, actual):
    """DeepTaskGen's 4b_compute_dice-auc.py, transcribed (sort-based threshold, trapezoid)."""
    def threshold(img, q):
        k = int(q * img.shape[-1])
        return np.abs(img) > np.sort(np.abs(img), axis=-1)[..., -k][..., None]

    qs = np.arange(0.05, 0.51, 0.05)
    dices = []
    for q in qs:
        a, b = threshold(pred, q), threshold(actual, q)
        inter, union = np.sum(a * b, -1), np.sum(a, -1) + np.sum(b, -1)
        dices.append(np.where(union == 0, 1.0, 2.0 * inter / np.maximum(union, 1)))
    return np.trapezoid(dices, dx=0.05, axis=0)


def test_dice_auc_matches_the_reference_code_and_its_bounds():
    rng = np.random.default_rng(5)
    actual = rng.normal(size=(5, 2000))
    pred = actual + rng.normal(size=actual.shape)
    np.testing.assert_allclose(dice_auc(pred, actual), _reference_dice_auc(pred, actual))
    assert dice_curve(pred, actual).shape == (5, 10)
    np.testing.assert_allclose(dice_auc(actual, actual), 0.45)
    unrelated = dice_auc(rng.normal(size=actual.shape), actual)
    assert np.all(unrelated < dice_auc(pred, actual))


def test_score_batch_is_a_tidy_table(t1_vector):
    rng = np.random.default_rng(6)
    target = np.stack([t1_vector, 0.9 * t1_vector])
    pred = target + 0.05 * rng.standard_normal(target.shape)
    table = score_batch(pred, target, ["s1", "s2"], metrics=("psnr", "rmse", "r", "identified",
                                                             "dice_auc"),
                        method="unet", task="T1w->FLAIR")
    assert list(table.columns) == ["method", "task", "subject", "metric", "value"]
    assert len(table) == 2 * 5 and set(table["method"]) == {"unet"}
    row = table[(table.subject == "s1") & (table.metric == "psnr")]["value"].item()
    assert row == pytest.approx(psnr(pred[:1], target[:1])[0])
    own_r = table[table.metric == "r"]["value"].to_numpy()
    np.testing.assert_allclose(own_r, np.diag(correlation_matrix(target, pred)), atol=1e-12)
    with pytest.raises(GenbrainInputError, match="did you mean 'psnr'"):
        score_batch(pred, target, ["s1", "s2"], metrics=("pnsr",))
    with pytest.raises(GenbrainInputError, match="2 images but 1 subjects"):
        score_batch(pred, target, ["s1"])


def test_paired_tests_match_scipy():
    rng = np.random.default_rng(7)
    subjects = [f"s{i}" for i in range(8)]
    base = rng.normal(20, 1, 8)
    better = base + rng.normal(1, 0.5, 8)
    rows = [("mean", s, "psnr", v) for s, v in zip(subjects, base)]
    rows += [("genbrain", s, "psnr", v) for s, v in zip(subjects, better)]
    table = pd.DataFrame(rows, columns=["method", "subject", "metric", "value"])
    out = paired_tests(table, baseline="mean")
    ref = sstats.ttest_rel(better, base)
    assert len(out) == 1 and out["method"].item() == "genbrain" and out["n"].item() == 8
    assert out["t"].item() == pytest.approx(ref.statistic)
    assert out["p"].item() == pytest.approx(ref.pvalue)
    assert out["mean_difference"].item() == pytest.approx(np.mean(better - base))
    with pytest.raises(GenbrainInputError, match="baseline 'unet'"):
        paired_tests(table, baseline="unet")


def test_bootstrap_mean_ci():
    rng = np.random.default_rng(8)
    v = rng.normal(5, 1, 200)
    m, lo, hi = bootstrap_mean_ci(v, n_boot=2000, seed=1)
    assert m == pytest.approx(v.mean()) and lo < m < hi
    assert hi - lo == pytest.approx(2 * 1.96 * v.std() / np.sqrt(200), rel=0.15)
    assert bootstrap_mean_ci(v, n_boot=200, seed=1) == bootstrap_mean_ci(v, n_boot=200, seed=1)
    table = pd.DataFrame({"method": "a", "metric": "psnr", "subject": range(200), "value": v})
    s = summarise_scores(table, n_boot=2000, seed=1)
    assert s[["mean", "ci_low", "ci_high"]].iloc[0].tolist() == pytest.approx([m, lo, hi])


def test_bootstrap_similarity_matches_a_loop_over_resamples():
    rng = np.random.default_rng(9)
    n, v = 15, 300
    age = rng.uniform(40, 80, n)
    images = rng.normal(size=(n, v)) + np.outer(age - 60, rng.normal(0, 0.05, v))
    reference = rng.normal(size=v) + 5 * np.corrcoef(images.T, age)[-1, :-1]
    images[:, 7] = 2.5  # a constant voxel has r = 0 in every resample
    idx = np.vstack([np.arange(n), bootstrap_indices(n, 6, seed=2)])
    got = bootstrap_similarity(images, age, reference, indices=idx, chunk_voxels=64)
    for b, rows in enumerate(idx):
        x, y = images[rows], age[rows]
        xc, yc = x - x.mean(0), y - y.mean()
        den = np.sqrt((xc**2).sum(0) * (yc**2).sum())
        r = np.divide(yc @ xc, den, out=np.zeros(v), where=den > 1e-9)
        t = t_from_r(r, n)
        expect = t @ reference / (np.linalg.norm(t) * np.linalg.norm(reference))
        assert got[b] == pytest.approx(expect, rel=1e-9)
    assert np.all(np.isfinite(bootstrap_similarity(images, age, reference, n_boot=50)))


def test_identifiability_against_a_loop_over_scipy():
    from genbrain.imaging.metrics import IDENTIFIABILITY_METRICS, identifiability

    rng = np.random.default_rng(3)
    target = rng.standard_normal((6, 40))
    pred = target + 1.5 * rng.standard_normal((6, 40))
    got = identifiability(correlation_matrix(target, pred))
    assert tuple(got) == IDENTIFIABILITY_METRICS
    c = np.array([[sstats.pearsonr(target[i], pred[j])[0] for j in range(6)] for i in range(6)])
    own = np.diag(c)
    others = np.array([np.mean(np.delete(c[i], i)) for i in range(6)])
    np.testing.assert_allclose(got["r"], own, atol=1e-6)
    np.testing.assert_allclose(got["r_gap"], own - others, atol=1e-6)
    np.testing.assert_array_equal(got["identified"], [float(np.argmax(c[i]) == i)
                                                      for i in range(6)])
    # the mean gap is the mean own r minus the mean of every off-diagonal entry
    off = c[~np.eye(6, dtype=bool)]
    assert got["r_gap"].mean() == pytest.approx(own.mean() - off.mean(), abs=1e-9)


def test_identification_is_perfect_for_the_targets_and_chance_when_shuffled():
    from genbrain.imaging.metrics import identifiability

    rng = np.random.default_rng(4)
    target = rng.standard_normal((50, 300))
    assert identifiability(correlation_matrix(target, target))["identified"].mean() == 1.0
    # the predictions of other subjects: accuracy near chance (1/n), averaged over shuffles
    acc = [identifiability(correlation_matrix(target, target[rng.permutation(50)]))[
        "identified"].mean() for _ in range(40)]
    assert np.mean(acc) < 0.06  # chance 0.02 (a derangement-free shuffle keeps ~1 fixed point)
    # one image for all (the mean image): every row ties, no one is identified
    same = np.repeat(target.mean(axis=0, keepdims=True), 50, axis=0)
    got = identifiability(correlation_matrix(target, same))
    assert got["identified"].sum() == 0 and np.allclose(got["r_gap"], 0.0)


def test_similarity_draws_match_tmaps_and_cosine_by_hand():
    from genbrain.imaging.metrics import similarity_draws

    rng = np.random.default_rng(5)
    n, v = 12, 30
    age = rng.uniform(45, 80, n)
    sex = np.array([0.0, 1.0] * (n // 2))
    images = rng.standard_normal((n, v)) + np.outer(age, rng.standard_normal(v)) / 20
    reference = rng.standard_normal((2, v))
    idx = bootstrap_indices(n, 5, seed=1)
    got = similarity_draws(images, age, sex, reference, idx)

    def cos(x, y, ref):
        r = np.array([sstats.pearsonr(x[:, j], y)[0] for j in range(x.shape[1])])
        t = t_from_r(r, len(y))
        return t @ ref / np.linalg.norm(t) / np.linalg.norm(ref)

    assert got["age"][0] == pytest.approx(cos(images, age, reference[0]), abs=1e-6)
    assert got["sex"][0] == pytest.approx(cos(images, sex, reference[1]), abs=1e-6)
    np.testing.assert_allclose(got["age"][1], [cos(images[i], age[i], reference[0])
                                               for i in idx], atol=1e-6)
