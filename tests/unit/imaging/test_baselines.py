"""Non-DiT baselines: population mean, NL-means, the MONAI 3D U-Net."""

import tracemalloc

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
    build_unet,
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


def _memmap(tmp_path, name, array):
    np.save(tmp_path / f"{name}.npy", array)
    return np.load(tmp_path / f"{name}.npy", mmap_mode="r")


def _eager_unet(src, tgt, settings, space):
    """The U-Net baseline as it was before it streamed (issue 30): every pair scattered onto
    the 91x109x91 grid, cropped and padded up front, batches indexed from those tensors."""
    box, m = BRAIN_BOX, settings.multiple
    sides = [len(range(*b.indices(n))) for b, n in zip(box, space.shape)]
    shape = tuple(-(-s // m) * m for s in sides)

    def to_grid(v):
        vol = space.to_volume(np.asarray(v, np.float32))[(..., *box)]
        out = np.zeros(vol.shape[:-3] + shape, np.float32)
        out[..., :vol.shape[-3], :vol.shape[-2], :vol.shape[-1]] = vol
        return out

    mask = to_grid(np.ones(space.n_voxels)) != 0
    net = build_unet(src.shape[1], settings).train()
    opt = torch.optim.Adam(net.parameters(), lr=settings.lr)
    weight = torch.as_tensor(mask.astype(np.float32))[None, None]
    gen = torch.Generator().manual_seed(settings.seed)
    x_all, y_all = torch.from_numpy(to_grid(src)), torch.from_numpy(to_grid(tgt))[:, None]
    losses = np.empty(settings.steps)
    for step in range(settings.steps):
        idx = torch.randint(0, len(src), (settings.batch_size,), generator=gen)
        err = (net(x_all[idx]) - y_all[idx]).abs()
        loss = (err * weight).sum() / (weight.sum() * err.shape[0]).clamp_min(1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses[step] = float(loss.detach())
    net.eval()
    with torch.no_grad():
        pred = torch.cat([net(x_all[i:i + 2]) for i in range(0, len(src), 2)])[:, 0].numpy()
    return net.state_dict(), losses, pred[:, mask]


def test_streamed_unet_is_bitwise_the_eager_one(tmp_path):
    """Gridding one batch at a time from memmapped vectors trains and predicts exactly what
    gridding every pair up front did: same draws, same volumes, same arithmetic."""
    space = standard_space()
    rng = np.random.default_rng(9)
    src = rng.uniform(size=(3, 2, space.n_voxels)).astype(np.float32)  # (n=3, K=2, V)
    tgt = (0.5 * src[:, 0] + 0.25 * src[:, 1]).astype(np.float32)
    settings = UNetSettings(channels=(2, 4), strides=(2,), num_res_units=0, steps=3,
                            batch_size=2, lr=1e-2, seed=4)
    state, losses, pred = _eager_unet(src, tgt, settings, space)
    mapped = _memmap(tmp_path, "src", src)
    streamed = UNetBaseline.fit(mapped, _memmap(tmp_path, "tgt", tgt), settings, space=space,
                                device="cpu")
    np.testing.assert_array_equal(streamed.losses, losses)
    assert not np.all(losses == losses[0])  # it did learn something to compare
    got = streamed.model.state_dict()
    assert got.keys() == state.keys()
    assert all(torch.equal(got[k], state[k]) for k in state)
    np.testing.assert_array_equal(streamed.predict(mapped), pred)


def _numpy_peak(fn) -> int:
    """Peak bytes of the allocations tracemalloc sees (numpy's arrays; not torch's) in fn()."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_unet_memory_does_not_grow_with_the_memmapped_pairs(tmp_path):
    """Training holds one batch of volumes, however many pairs there are; prediction adds
    only its (n, V) output. Eager gridding added ~7 MB per pair here."""
    space = standard_space()
    v = space.n_voxels
    data = np.random.default_rng(10).uniform(size=(8, v)).astype(np.float32)
    small, large = _memmap(tmp_path, "small", data[:2]), _memmap(tmp_path, "large", data)
    settings = UNetSettings(channels=(2, 4), strides=(2,), num_res_units=0, steps=2,
                            batch_size=1, seed=0)

    def fit(x):
        return UNetBaseline.fit(x, x, settings, space=space, device="cpu")

    model = fit(small)  # warm-up: lazily built caches are not the pairs' cost
    grow = _numpy_peak(lambda: fit(large)) - _numpy_peak(lambda: fit(small))
    assert grow < 0.25 * v * 4  # under a quarter of one vector; eager: 6 pairs x ~6 MB
    grow = _numpy_peak(lambda: model.predict(large)) - _numpy_peak(lambda: model.predict(small))
    assert grow < 6 * v * 4 + 0.25 * v * 4  # the 6 more output rows


def test_unet_inputs_of_the_wrong_shape_say_what_was_expected():
    space = standard_space()
    grid = BrainGrid(space, multiple=2)
    settings = UNetSettings(**TINY, steps=1)
    vectors = np.zeros((2, 1, space.n_voxels - 1), np.float32)
    with pytest.raises(GenbrainInputError, match=r"\(n, K, V\) and targets \(n, V\), V = 228483"):
        train_unet(vectors, vectors[:, 0], settings, grid=grid, device="cpu")
    empty = np.zeros((0, 1, space.n_voxels), np.float32)
    with pytest.raises(GenbrainInputError, match="n >= 1"):
        train_unet(empty, empty[:, 0], settings, grid=grid, device="cpu")
    with pytest.raises(GenbrainInputError, match="expected sources"):
        predict_unet(build_unet(1, settings), vectors, grid=grid)


@pytest.mark.parametrize("kwargs, key", [
    ({"channels": (4, 8, 16), "strides": (2,)}, "baselines.unet.strides"),
    ({"loss": "l2"}, "baselines.unet.loss"),
    ({"steps": 0}, "baselines.unet.steps"),
    ({"lr": -1.0}, "baselines.unet.lr"),
])
def test_bad_unet_settings_name_the_key(kwargs, key):
    with pytest.raises(GenbrainInputError, match=key.replace(".", r"\.")):
        UNetSettings(**kwargs)
