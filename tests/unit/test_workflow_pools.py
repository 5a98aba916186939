"""genbrain.workflow's synthetic pools of the diagnosis and clinical stages."""

from types import SimpleNamespace

import pytest

from genbrain.errors import GenbrainInputError
from genbrain.workflow import clinical_pools


def test_a_clinical_pool_is_one_image_per_row_and_a_taken_name_is_one_line():
    job = SimpleNamespace(synth="clinical-stroke", n_pool=4, cohort="stroke", modality="ADC",
                          model="stroke/all", name="stroke")
    empty = SimpleNamespace(**{**vars(job), "synth": "clinical-none", "n_pool": 0})
    pools = clinical_pools({"stroke": job, "none": empty}, {}, 60)
    assert list(pools) == ["clinical-stroke"]  # a pool of 0 images is not drawn
    pool = pools["clinical-stroke"]
    assert (pool.n_rows, pool.shard_size, pool.real, pool.modalities, pool.k, pool.model) == (
        4, 60, "stroke", ("ADC",), 1, "stroke/all")
    with pytest.raises(GenbrainInputError, match="'clinical-stroke' is taken by clinical "
                                                 "analysis stroke; rename the other cohort"):
        clinical_pools({"stroke": job}, {"clinical-stroke": pool}, 60)
