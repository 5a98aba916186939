import numpy as np
import pytest
from scipy import stats as sstats

from genbrain.stats.correlation import pearson


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pearson_matches_scipy_pearsonr(dtype):
    rng = np.random.default_rng(0)
    for n in (3, 50, 20000):
        a = rng.normal(size=n)
        b = 0.3 * a + rng.normal(size=n) + 5.0  # offset: the centring matters
        a, b = a.astype(dtype), b.astype(dtype)
        ref = sstats.pearsonr(a.astype(np.float64), b.astype(np.float64)).statistic
        assert pearson(a, b) == pytest.approx(ref, abs=1e-12)
    assert pearson(np.arange(5.0), -2 * np.arange(5.0)) == pytest.approx(-1.0, abs=1e-12)


def test_pearson_of_a_constant_input_is_nan_not_zero():
    x = np.linspace(0, 1, 10)
    assert np.isnan(pearson(np.full(10, 3.0), x))
    assert np.isnan(pearson(x, np.zeros(10)))
    assert np.isnan(pearson(np.ones(10, np.float32), np.ones(10, np.float32)))
