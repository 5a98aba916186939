"""The clinical regressor's inputs: the cropped volumes, and one-line errors for bad scores,
splits, crops and settings."""

import numpy as np
import pandas as pd
import pytest

from genbrain.clinical.config import PAPER_CROP, RegressConfig
from genbrain.clinical.data import CropVolumes
from genbrain.errors import GenbrainInputError
from genbrain.space import StandardSpace
from genbrain.splits import score_split
from genbrain.tables import check_scores
from tests.unit.clinical.conftest import MAX, make_store, one_line


def test_crop_volumes_scatter_equals_volume_slicing(space):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, space.n_voxels)).astype(np.float32)
    vol = space.to_volume(x)[:, 2:14, 3:15, 1:13]  # (3, 12, 12, 12)
    got = CropVolumes(((2, 14), (3, 15), (1, 13)), space=space)(x)
    assert got.shape == (3, 1, 12, 12, 12)
    np.testing.assert_array_equal(got[:, 0].numpy(), vol)
    pooled = CropVolumes(((2, 14), (3, 15), (1, 13)), pool=2, space=space)
    assert pooled.shape == (6, 6, 6)
    np.testing.assert_allclose(pooled(x)[:, 0].numpy(),
                               vol.reshape(3, 6, 2, 6, 2, 6, 2).mean((2, 4, 6)), atol=1e-6)


def test_bad_inputs_give_one_line_errors(tmp_path, space):
    scores = np.linspace(0, 30, 20)
    scores[6] = np.nan
    store = make_store(tmp_path / "nan", space, 20, seed=5, scores=scores)
    with pytest.raises(GenbrainInputError) as err:
        score_split(store.table, "score", 0, score_max=MAX, source=str(store.index_path))
    msg = one_line(err)
    assert "nan/index.tsv" in msg and "sub-006 (FA)" in msg and "missing" in msg
    high = pd.DataFrame({"participant_id": ["a", "b"], "nihss": [3, 43]})
    with pytest.raises(GenbrainInputError, match=r"t.tsv: participant b: score 'nihss' 43 is "
                       "above the declared maximum 42"):
        check_scores(high, "nihss", 42, "t.tsv")
    with pytest.raises(GenbrainInputError, match="missing score column 'wab'"):
        check_scores(high, "wab", 100, "t.tsv")
    few = pd.DataFrame({"participant_id": [f"s{i}" for i in range(14)], "score": 1.0})
    with pytest.raises(GenbrainInputError, match="14 participants .* needs at least 15"):
        score_split(few, "score", 0, score_max=MAX)
    with pytest.raises(GenbrainInputError) as err:
        CropVolumes(((9, 81), (10, 100), (1, 95)), space=space)
    assert "'crop'" in one_line(err) and "axis x" in str(err.value)
    grid = StandardSpace(shape=(91, 109, 91), affine=np.eye(4),
                         mask=np.zeros((91, 109, 91), bool))
    CropVolumes(PAPER_CROP, space=grid)  # the paper's crop fits the 2 mm grid
    with pytest.raises(GenbrainInputError, match="axis z .1:95"):
        CropVolumes(((9, 81), (10, 100), (1, 95)), space=grid)
    with pytest.raises(GenbrainInputError, match="'arch' is 'resnet18'"):
        RegressConfig(arch="resnet18")
    with pytest.raises(GenbrainInputError, match="unknown key 'learning_rate'"):
        RegressConfig.from_dict({"learning_rate": 1e-3})
