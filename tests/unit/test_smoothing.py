"""Gaussian smoothing inside the brain mask (genbrain.stats.smoothing): normalised, so no
zeros leak in at the brain's edge; 0 is no smoothing, bitwise; equal to scipy.ndimage on the
whole volume; a cohort smoothed in blocks equals its maps smoothed at once."""

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter

from genbrain.errors import GenbrainInputError
from genbrain.space import standard_space
from genbrain.stats.rows import ImageRows
from genbrain.stats.similarity import Cohort
from genbrain.stats.smoothing import (
    MaskedSmoother,
    fwhm_to_sigma,
    smooth_cohort,
    smooth_maps,
)


def _small_mask(shape=(13, 15, 12)):
    """An ellipsoid away from the volume's faces (its bounding box is smaller than the
    volume, as the brain's is)."""
    i, j, k = np.indices(shape)
    c = (np.array(shape) - 1) / 2
    return ((i - c[0]) / 4.5) ** 2 + ((j - c[1]) / 5.5) ** 2 + ((k - c[2]) / 3.8) ** 2 <= 1


def test_sigma_is_fwhm_over_2_sqrt_2ln2_in_voxels():
    assert fwhm_to_sigma(8.0, 2.0) == pytest.approx([8 / 2.354820045 / 2] * 3)
    assert fwhm_to_sigma(6.0, (2.0, 2.0, 3.0)) == pytest.approx(
        [6 / 2.354820045 / 2, 6 / 2.354820045 / 2, 6 / 2.354820045 / 3])
    with pytest.raises(GenbrainInputError, match="expected a number of mm >= 0"):
        fwhm_to_sigma(-1.0, 2.0)


@pytest.mark.parametrize("voxel_mm", [2.0, (2.0, 2.0, 3.0)])
def test_equals_scipy_on_the_whole_volume_normalised_by_the_smoothed_mask(voxel_mm):
    mask = _small_mask()
    x = np.random.default_rng(0).standard_normal((5, int(mask.sum())))
    got = smooth_maps(x, 6.0, volume_mask=mask, voxel_mm=voxel_mm)
    sigma = 6.0 / (2 * np.sqrt(2 * np.log(2))) / np.broadcast_to(voxel_mm, (3,))
    weight = gaussian_filter(mask.astype(np.float64), sigma, mode="constant")
    for i in range(len(x)):
        vol = np.zeros(mask.shape)
        vol[mask] = x[i]
        want = (gaussian_filter(vol, sigma, mode="constant") / weight)[mask]
        np.testing.assert_allclose(got[i], want, atol=2e-6)
    assert got.dtype == np.float32 and got.shape == x.shape


def test_a_constant_map_stays_constant_up_to_the_brain_edge():
    space = standard_space()
    x = np.full((2, space.n_voxels), 0.6, np.float32)
    got = smooth_maps(x, 8.0)
    np.testing.assert_allclose(got, 0.6, atol=1e-6)
    # what normalising prevents: plain smoothing of the masked image leaks the zeros outside
    vol = space.to_volume(x[0].astype(np.float64))
    plain = space.to_vector(gaussian_filter(vol, fwhm_to_sigma(8.0, 2.0), mode="constant"))
    assert plain.min() < 0.4


def test_zero_fwhm_is_no_smoothing_bitwise():
    mask = _small_mask()
    x = np.random.default_rng(1).standard_normal((3, int(mask.sum()))).astype(np.float32)
    assert np.array_equal(MaskedSmoother(0.0, mask)(x), x)
    cov = pd.DataFrame({"age": [40.0, 50.0, 60.0], "sex": ["M", "F", "M"]})
    cohort = Cohort(ImageRows(x), cov, "c")
    assert smooth_cohort(cohort, 0, volume_mask=mask) is cohort


def test_a_cohort_smoothed_in_blocks_equals_its_maps_smoothed_at_once():
    mask = _small_mask()
    rng = np.random.default_rng(2)
    x = rng.standard_normal((11, int(mask.sum()))).astype(np.float16)
    cov = pd.DataFrame({"age": rng.uniform(20, 80, 11), "sex": rng.choice(["M", "F"], 11)})
    members = np.array([7, 0, 3, 3, 10, 5, 1])  # any order, a repeat
    cohort = Cohort(ImageRows(x, members), cov.iloc[members], "c")
    out = smooth_cohort(cohort, 5.0, volume_mask=mask, voxel_mm=2.0, block_rows=3, label="s")
    want = smooth_maps(x[members].astype(np.float32), 5.0, volume_mask=mask, voxel_mm=2.0)
    assert out.label == "s" and len(out) == len(members)
    np.testing.assert_array_equal(out.images.read(dtype=np.float32), want)
    pd.testing.assert_frame_equal(out.covariates, cohort.covariates)
    # smoothing mixes neighbours only: the result is not the input
    assert np.abs(want - x[members]).max() > 0.1


def test_smoothing_refuses_maps_of_another_mask():
    mask = _small_mask()
    with pytest.raises(GenbrainInputError, match=rf"expected \(m, {int(mask.sum())}\) maps"):
        smooth_maps(np.zeros((2, 7)), 8.0, volume_mask=mask)
    with pytest.raises(GenbrainInputError, match="smoothing FWHM is 'x'"):
        MaskedSmoother("x", mask)
