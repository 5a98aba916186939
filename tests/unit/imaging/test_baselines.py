"""Non-DiT baselines: population mean, NL-means, the MONAI 3D U-Net."""

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from genbrain.errors import GenbrainInputError
from genbrain.imaging.baselines import (
    BRAIN_BOX,
    BrainGrid,
    UNetBaseline,
    UNetSettings,
    estimate_noise_sigma,
    nlmeans_denoise,
    nlmeans_vectors,
    population_mean,
    predict_mean,
    predict_unet,
    train_unet,
)
from genbrain.space import standard_space, template_t1

TINY = {"channels": (4, 8), "strides": (2,), "num_res_units": 1, "batch_size": 2, "lr": 3e-3}


def _smooth_volumes(rng, n, shape=(16, 16, 16)):
    """Smooth random fields, sd ~ 1: something a small U-Net can learn to map."""
    x = ndi.gaussian_filter(rng.standard_normal((n, *shape)), sigma=(0, 2, 2, 2))
    return (x / x.std()).astype(np.float32)


def test_population_mean_and_its_prediction():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(7, 50)).astype(np.float32)
    mean = population_mean(x, block=3)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-6)
    pred = predict_mean(mean, 4)
    assert pred.shape == (4, 50) and np.all(pred == mean)
    with pytest.raises(GenbrainInputError):
        population_mean(np.zeros((0, 50)))


def test_noise_estimate_ignores_the_background():
    rng = np.random.default_rng(1)
    shape = (40, 40, 40)
    mask = np.zeros(shape, bool)
    mask[6:34, 6:34, 6:34] = True
    signal = 100 * _smooth_volumes(rng, 1, shape)[0]
    noisy = np.where(mask, signal + 5.0 * rng.standard_normal(shape), 0.0)
    assert estimate_noise_sigma(noisy, mask) == pytest.approx(5.0, rel=0.06)
    assert estimate_noise_sigma(noisy) < 3.0  # the noiseless background drags it down


def test_nlmeans_reduces_noise_and_keeps_the_shape():
    rng = np.random.default_rng(2)
    z, y, x = np.mgrid[:24, :24, :24]
    clean = ((z - 12) ** 2 + (y - 12) ** 2 + (x - 12) ** 2 < 81).astype(np.float64) * 100
    clean = ndi.gaussian_filter(clean, 1.0)
    noisy = clean + 10 * rng.standard_normal(clean.shape)
    out = nlmeans_denoise(noisy, box=None)
    assert out.shape == clean.shape and out.dtype == np.float32
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
    np.testing.assert_array_equal(nlmeans_denoise(clean, sigma=0.0, box=None),
                                  clean.astype(np.float32))


def test_nlmeans_on_voxel_vectors_improves_a_noisy_template():
    space = standard_space()
    t1 = space.to_vector(np.asarray(template_t1()))
    noisy = t1 + 0.05 * np.random.default_rng(3).standard_normal(t1.shape)
    out = nlmeans_vectors(noisy[None])
    assert out.shape == (1, space.n_voxels)
    assert np.mean((out[0] - t1) ** 2) < 0.5 * np.mean((noisy - t1) ** 2)


def test_brain_grid_round_trip_and_crop():
    space = standard_space()
    grid = BrainGrid(space, multiple=8)
    assert grid.shape == (72, 96, 80) and grid.mask.sum() == space.n_voxels
    v = np.random.default_rng(4).normal(size=(2, 3, space.n_voxels)).astype(np.float32)
    g = grid.to_grid(v)
    assert g.shape == (2, 3, 72, 96, 80)
    np.testing.assert_array_equal(grid.to_vectors(g), v)
    assert BRAIN_BOX[0] == slice(10, 82)
    with pytest.raises(GenbrainInputError, match="holds 228444 of the 228483"):
        BrainGrid(space, box=(slice(9, 81), slice(10, 100), slice(1, 77)))  # the ResNet crop


def test_unet_learns_a_mapping_on_tiny_volumes():
    rng = np.random.default_rng(5)
    src = _smooth_volumes(rng, 6)[:, None]  # (6, 1, 16, 16, 16)
    tgt = 2.0 * src[:, 0] + 1.0
    state = torch.random.get_rng_state()
    model, losses = train_unet(src, tgt, UNetSettings(**TINY, steps=150, seed=1), device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    assert losses[-10:].mean() < 0.3 * losses[:5].mean()
    test = _smooth_volumes(np.random.default_rng(6), 2)[:, None]
    pred = predict_unet(model, test)
    assert pred.shape == (2, 16, 16, 16)
    err = np.mean(np.abs(pred - (2.0 * test[:, 0] + 1.0)))
    assert err < 0.5 * np.mean(np.abs(2.0 * test[:, 0]))  # well below predicting the constant 1


def test_unet_training_is_seeded():
    rng = np.random.default_rng(7)
    src = _smooth_volumes(rng, 3)[:, None]
    settings = UNetSettings(**TINY, steps=5, seed=2)
    _, a = train_unet(src, src[:, 0], settings, device="cpu")
    _, b = train_unet(src, src[:, 0], settings, device="cpu")
    _, c = train_unet(src, src[:, 0], UNetSettings(**TINY, steps=5, seed=3), device="cpu")
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(GenbrainInputError, match="multiples of 2"):
        train_unet(src[..., :15], src[:, 0, ..., :15], settings, device="cpu")


def test_unet_baseline_on_voxel_vectors(tmp_path):
    """Two source modalities -> one target on the real grid: shapes, and save/load."""
    space = standard_space()
    rng = np.random.default_rng(8)
    t1 = space.to_vector(np.asarray(template_t1()))
    src = np.stack([np.stack([t1, 1 - t1]) + 0.01 * rng.standard_normal((2, t1.size))
                    for _ in range(2)]).astype(np.float32)  # (2, K=2, V)
    settings = UNetSettings(channels=(2, 4), strides=(2,), num_res_units=0, steps=2, seed=0)
    baseline = UNetBaseline.fit(src, src[:, 0], settings, device="cpu")
    pred = baseline.predict(src)
    assert pred.shape == (2, space.n_voxels) and np.all(np.isfinite(pred))
    assert baseline.losses.shape == (2,)
    baseline.save(tmp_path / "unet.pt")
    again = UNetBaseline.load(tmp_path / "unet.pt", device="cpu")
    np.testing.assert_allclose(again.predict(src), pred, atol=1e-6)
    with pytest.raises(GenbrainInputError, match="takes 2 source channels"):
        baseline.predict(src[:, :1])


@pytest.mark.parametrize("kwargs, key", [
    ({"channels": (4, 8, 16), "strides": (2,)}, "baselines.unet.strides"),
    ({"loss": "l2"}, "baselines.unet.loss"),
    ({"steps": 0}, "baselines.unet.steps"),
    ({"lr": -1.0}, "baselines.unet.lr"),
])
def test_bad_unet_settings_name_the_key(kwargs, key):
    with pytest.raises(GenbrainInputError, match=key.replace(".", r"\.")):
        UNetSettings(**kwargs)
