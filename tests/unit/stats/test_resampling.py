import numpy as np
import pytest
from scipy import stats as sstats

from genbrain.errors import GenbrainInputError
from genbrain.stats.resampling import bootstrap_p, bootstrap_t_p, ratio_grid


def test_ratio_grid_is_inclusive_and_rounded():
    grid = ratio_grid(0.0, 3.0, 0.1)
    assert len(grid) == 31 and grid[0] == 0.0 and grid[-1] == 3.0
    assert grid[3] == 0.3 and grid[7] == 0.7  # not 0.30000000000000004
    assert isinstance(grid, tuple)
    assert ratio_grid(0.5, 1.0, 0.25) == (0.5, 0.75, 1.0)
    assert ratio_grid(stop=0.0) == (0.0,)
    for bad in ({"step": 0.0}, {"start": 2.0, "stop": 1.0}, {"start": -0.1}):
        with pytest.raises(GenbrainInputError, match="ratio grid: expected 0 <= start"):
            ratio_grid(**bad)


def test_bootstrap_p_counts_the_resampled_differences():
    rng = np.random.default_rng(0)
    delta = rng.normal(0.3, 0.2, 999)
    below = np.count_nonzero(delta <= 0)
    assert bootstrap_p(delta) == pytest.approx(2 * (below + 1) / 1000)
    assert bootstrap_p(np.ones(200)) == pytest.approx(2 / 201)  # no delta <= 0: the floor
    assert bootstrap_p(np.r_[-np.ones(50), np.ones(50)]) == 1.0


def test_bootstrap_t_p_is_the_t_test_of_the_difference_over_its_bootstrap_sd():
    rng = np.random.default_rng(1)
    resampled = rng.normal(0.05, 0.1, 1000)
    sd = np.std(resampled, ddof=1)
    assert bootstrap_t_p(0.2, resampled) == pytest.approx(
        2 * sstats.t.sf(0.2 / sd, 999), rel=1e-12)
    assert bootstrap_t_p(-0.2, resampled) == bootstrap_t_p(0.2, resampled)  # two-sided
    with_nan = np.r_[resampled, np.nan]
    assert bootstrap_t_p(0.2, with_nan) == bootstrap_t_p(0.2, resampled)  # NaN dropped
    assert bootstrap_t_p(0.0, np.array([-0.1, 0.1, 0.0, 0.05])) == pytest.approx(1.0)
    assert bootstrap_t_p(0.5, np.full(100, 0.5) + np.linspace(-0.01, 0.01, 100)) < 1e-6
    assert bootstrap_t_p(0.0, np.full(5, 0.3)) == 1.0 and bootstrap_t_p(0.1, np.full(5, 0.3)) == 0.0
    assert np.isnan(bootstrap_t_p(0.1, np.array([0.2, np.nan])))
