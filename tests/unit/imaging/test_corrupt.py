"""Corruption simulator: identity, noise levels, motion severity, draws, seeding, bad settings."""

import itertools

import numpy as np
import pytest
from scipy import stats as sstats

from genbrain.errors import GenbrainInputError
from genbrain.imaging.corrupt import (
    PAPER_SIGMAS,
    TABLE_COLUMNS,
    CorruptionSettings,
    add_noise,
    apply_motion,
    corrupt_vectors,
    corrupt_volume,
    draw_corruption,
)
from genbrain.space import standard_space, template_t1

NO_MOTION = {"n_movements": (0, 0)}


@pytest.fixture(scope="module")
def brain():
    """The MNI template T1 (range ~[0, 1]) skull-stripped by the brain mask."""
    space = standard_space()
    return np.asarray(template_t1()) * space.mask


def _psnr_in_mask(a, b, mask):
    return 10 * np.log10(1.0 / np.mean((a[mask] - b[mask]) ** 2))


def test_no_motion_no_noise_is_the_identity(brain):
    settings = CorruptionSettings(n_movements=(0, 0), sigmas=(0,))
    out, c = corrupt_volume(brain, settings, "sub-01")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, brain.astype(np.float32))
    assert c.n_movements == 0 and c.sigma_gaussian == 0 and c.sigma_rician == 0
    vec = standard_space().to_vector(brain)[None]
    out_v, table = corrupt_vectors(vec, ["sub-01"], settings)
    np.testing.assert_array_equal(out_v, vec.astype(np.float32))
    assert list(table.columns) == TABLE_COLUMNS and len(table) == 1


def test_motion_without_displacement_is_lossless(brain):
    """The k-space route itself (resample, FFT, segment, inverse FFT) changes nothing."""
    out = apply_motion(brain, np.zeros((2, 3)), np.zeros((2, 3)), [0.3, 0.6])
    np.testing.assert_allclose(out, brain, atol=1e-5)


def test_motion_degrades_psnr_monotonically_in_its_magnitude(brain):
    """Two movements around the k-space centre, scaled up: PSNR falls at every step. (Beyond
    ~5 degrees/mm it saturates: the moved k-space segments no longer resemble the original.)"""
    mask = standard_space().mask
    direction = np.array([[1.0, -1.0, 1.0], [-1.0, 1.0, 1.0]])
    scores = [_psnr_in_mask(apply_motion(brain, k * direction, k * direction, [0.45, 0.7]),
                            brain, mask) for k in (0.5, 1.0, 2.0, 4.0)]
    assert all(a > b + 0.5 for a, b in itertools.pairwise(scores)), scores
    assert scores[-1] < 30 < scores[0]


def test_gaussian_noise_has_the_drawn_sd():
    rng = np.random.default_rng(0)
    x = np.full((40, 40, 40), 1000.0)
    out = add_noise(x, 20.0, 0.0, rng)
    assert abs(out.std() - 20.0) < 0.4 and abs(out.mean() - 1000.0) < 0.2


def test_rician_noise_is_the_magnitude_of_complex_noise():
    """High signal: ~Gaussian with sd sigma; zero signal: Rayleigh, mean sigma sqrt(pi/2)."""
    rng = np.random.default_rng(1)
    high = add_noise(np.full((40, 40, 40), 1000.0), 0.0, 30.0, rng)
    assert abs(high.std() - 30.0) < 0.6
    assert abs(high.mean() - 1000.0) < 0.6  # 5 SE; the bias sigma^2 / 2A = 0.45 is too small
    zero = add_noise(np.zeros((40, 40, 40)), 0.0, 30.0, rng)
    assert zero.min() >= 0
    assert abs(zero.mean() - 30.0 * np.sqrt(np.pi / 2)) < 0.4
    assert abs(zero.std() - 30.0 * np.sqrt(2 - np.pi / 2)) < 0.4


def test_noise_scale_and_both_components_add_in_variance():
    """sigma 20 (Gaussian) and 20 (Rician) scaled by 0.01 on a bright constant image:
    sd = 0.2 * sqrt(2)."""
    settings = CorruptionSettings(**NO_MOTION, sigmas=(20,), noise_scale=0.01)
    out, c = corrupt_volume(np.full((40, 40, 40), 10.0), settings, "sub-x")
    assert (c.sigma_gaussian, c.sigma_rician, c.noise_scale) == (20.0, 20.0, 0.01)
    assert abs(out.std() - 0.2 * np.sqrt(2)) < 0.006


def test_draws_follow_the_paper():
    settings = CorruptionSettings()
    draws = [draw_corruption(settings, f"sub-{i}") for i in range(3000)]
    n = np.array([d.n_movements for d in draws])
    assert set(n) == {1, 2, 3, 4} and abs(n.mean() - 2.5) < 0.1
    times = np.concatenate([d.times for d in draws])
    assert times.min() > 0 and times.max() < 1 and abs(times.mean() - 0.5) < 0.02
    assert all(np.all(np.diff(d.times) >= 0) for d in draws)
    rot = np.concatenate([d.rotations for d in draws]).ravel()
    trans = np.concatenate([d.translations for d in draws]).ravel()
    assert abs(np.mean(np.abs(rot)) - 10.0) < 0.3 and np.abs(rot).max() <= 30
    assert abs(np.mean(rot > 0) - 0.5 * (1 - sstats.poisson.pmf(0, 10))) < 0.03
    # clipping at 10 mm: P(|t| = 10) = P(Poisson(5) >= 10), E|t| = E[min(P, 10)]
    assert np.abs(trans).max() == 10
    p_clip = sstats.poisson.sf(9, 5)
    assert abs(np.mean(np.abs(trans) == 10) - p_clip) < 0.01
    e_clipped = sum(min(k, 10) * sstats.poisson.pmf(k, 5) for k in range(60))
    assert abs(np.mean(np.abs(trans)) - e_clipped) < 0.1
    sg = np.array([d.sigma_gaussian for d in draws])
    sr = np.array([d.sigma_rician for d in draws])
    assert set(sg) == set(PAPER_SIGMAS) == set(sr)
    assert abs(np.corrcoef(sg, sr)[0, 1]) < 0.06  # drawn independently


def test_corruption_is_seeded_per_image_and_independent_of_order(brain):
    space = standard_space()
    settings = CorruptionSettings(n_movements=(1, 1), sigmas=(5, 10), noise_scale=0.002, seed=3)
    vec = space.to_vector(brain)
    x = np.stack([vec, 0.5 * vec])
    out_ab, table_ab = corrupt_vectors(x, ["a", "b"], settings)
    out_ba, table_ba = corrupt_vectors(x[::-1], ["b", "a"], settings)
    np.testing.assert_array_equal(out_ab, out_ba[::-1])
    assert table_ab.iloc[0].to_dict() == table_ba.iloc[1].to_dict()
    other, _ = corrupt_volume(brain, CorruptionSettings(n_movements=(1, 1), sigmas=(5, 10),
                                                        noise_scale=0.002, seed=4), "a")
    assert not np.allclose(space.to_vector(other), out_ab[0])
    row = table_ab.iloc[0]
    assert row["image_id"] == "a" and row["n_movements"] == 1 and row["seed"] == 3
    assert len(row["rotations_deg"].split(",")) == 3


@pytest.mark.parametrize("kwargs, key", [
    ({"max_rotation": 45}, "corrupt.max_rotation"),
    ({"max_translation": -1}, "corrupt.max_translation"),
    ({"sigmas": (0, -5)}, "corrupt.sigmas"),
    ({"sigmas": ()}, "corrupt.sigmas"),
    ({"n_movements": (3, 1)}, "corrupt.n_movements"),
    ({"rotation_lambda": -1}, "corrupt.rotation_lambda"),
    ({"noise_scale": 0}, "corrupt.noise_scale"),
    ({"interpolation": "cubic"}, "corrupt.interpolation"),
])
def test_bad_settings_name_the_key(kwargs, key):
    with pytest.raises(GenbrainInputError) as err:
        CorruptionSettings(**kwargs)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_settings_from_config():
    s = CorruptionSettings.from_config({"n_movements": [2, 3], "sigmas": [0, 10], "seed": 5})
    assert s.n_movements == (2, 3) and s.sigmas == (0.0, 10.0) and s.seed == 5
    with pytest.raises(GenbrainInputError, match="did you mean 'max_rotation'"):
        CorruptionSettings.from_config({"max_rotations": 10})


def test_bad_vectors_are_refused():
    settings = CorruptionSettings(**NO_MOTION, sigmas=(0,))
    v = standard_space().n_voxels
    with pytest.raises(GenbrainInputError, match="'a' occurs twice"):
        corrupt_vectors(np.zeros((2, v)), ["a", "a"], settings)
    with pytest.raises(GenbrainInputError, match=f"length {v}"):
        corrupt_vectors(np.zeros((1, 10)), ["a"], settings)
