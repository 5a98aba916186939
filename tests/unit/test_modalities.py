import numpy as np
import pytest

from genbrain.errors import GenbrainInputError
from genbrain.modalities import DEFAULT_REGISTRY, registry_from_config


def test_default_registry_is_the_papers_34_modalities():
    assert len(DEFAULT_REGISTRY) == 34
    assert sorted(m.index for m in DEFAULT_REGISTRY.values()) == list(range(34))
    assert DEFAULT_REGISTRY["fc01"].index == 0
    assert DEFAULT_REGISTRY["FLAIR"].index == 33
    assert DEFAULT_REGISTRY["T1w"].norm == "zscore"
    assert DEFAULT_REGISTRY["FA"].norm == "fixed"


def test_zscore_and_fixed_normalisation():
    x = np.array([[1.0, 2.0, 3.0, 4.0]])
    z = DEFAULT_REGISTRY["T1w"].normalise(x)
    np.testing.assert_allclose(z.mean(), 0, atol=1e-7)
    np.testing.assert_allclose(z.std(), 1, atol=1e-6)
    fa = DEFAULT_REGISTRY["FA"]
    y = fa.normalise(np.array([0.3, 1.7, -0.2]))
    np.testing.assert_allclose(y, [(0.3 - 0.3) / 0.15, (1.0 - 0.3) / 0.15, (0.0 - 0.3) / 0.15],
                               rtol=1e-6)
    np.testing.assert_allclose(fa.denormalise(fa.normalise(np.array([0.5]))), [0.5], rtol=1e-6)


def test_new_modality_gets_a_new_index():
    reg = registry_from_config({"modalities": {"ADC": {"index": 34, "norm": "fixed",
                                                       "mean": 1e-3, "std": 4e-4}}})
    assert reg["ADC"].index == 34
    assert reg.n_indices == 35


def test_registry_errors_name_the_modality():
    with pytest.raises(GenbrainInputError, match="index 0 is already used by 'fc01'"):
        registry_from_config({"modalities": {"ADC": {"index": 0}}})
    with pytest.raises(GenbrainInputError, match="unknown modality 'T1'"):
        DEFAULT_REGISTRY["T1"]
    with pytest.raises(GenbrainInputError, match="modalities.ADC.index"):
        registry_from_config({"modalities": {"ADC": {"norm": "zscore"}}})
