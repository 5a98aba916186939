"""Researchers' synthetic cohorts: covariate tables from a TSV or a grid, and their checks."""

import pandas as pd
import pytest

from genbrain.config import validate_config
from genbrain.covariates import cohort_covariates, grid_covariates
from genbrain.errors import GenbrainInputError
from genbrain.workflow import load_cohorts, synthetic_cohorts
from tests.workflow.helpers import ROOT

MODS = ["T1w", "VBM", "FA"]
SCHEMAS = ROOT / "workflow" / "schemas"


def write(tmp_path, rows, name="cov.tsv"):
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return str(path)


def test_grid_is_every_combination_n_times():
    table = grid_covariates({"age": [50, 80], "sex": ["F", "M"], "modality": ["T1w"]}, 3)
    assert len(table) == 2 * 2 * 1 * 3
    assert table["synthetic_id"].tolist() == list(range(12))
    counts = table.groupby(["age", "sex", "modality"]).size()
    assert (counts == 3).all() and len(counts) == 4
    assert sorted(table["replicate"].unique()) == [0, 1, 2]


def test_tsv_without_ids_gets_row_numbers_and_keeps_other_columns(tmp_path):
    path = write(tmp_path, {"age": [55, 70.5], "sex": ["F", "M"], "modality": ["T1w", "FA"],
                            "participant_id": ["sub-01", "sub-02"]})
    table = cohort_covariates("mine", {"covariates": path}, MODS)
    assert table["synthetic_id"].tolist() == [0, 1]
    assert table["participant_id"].tolist() == ["sub-01", "sub-02"]
    assert table["age"].tolist() == [55, 70.5]


def test_tsv_ids_are_kept(tmp_path):
    path = write(tmp_path, {"synthetic_id": [7, 3], "age": [55, 70], "sex": ["F", "M"],
                            "modality": ["T1w", "VBM"]})
    assert cohort_covariates("mine", {"covariates": path}, MODS)["synthetic_id"].tolist() == [7, 3]


@pytest.mark.parametrize("rows, message", [
    ({"age": [55, 60], "sex": ["F", "X"], "modality": ["T1w"] * 2},
     "row 2: sex 'X' is not one of M, F"),
    ({"age": [55, "old"], "sex": ["F", "M"], "modality": ["T1w"] * 2},
     "row 2: age 'old' is not a number"),
    ({"age": [55, 60, 61], "sex": ["F"] * 3, "modality": ["T1w", "T1w", "fc01"]},
     ("row 3: modality 'fc01' is not one the pretrained model was trained on; expected one of "
      "['T1w', 'VBM', 'FA']")),
    ({"synthetic_id": [1, 1], "age": [55, 60], "sex": ["F"] * 2, "modality": ["T1w"] * 2},
     "row 2: synthetic_id 1 is used twice"),
    ({"age": [55], "modality": ["T1w"]}, "missing column 'sex'"),
    ({"age": [55], "sex": ["F"], "modality": ["T1w"], "diagnosis": ["SCZ"]},
     "column 'diagnosis': the pretrained model has no disease condition"),
    ({"age": [55], "sex": ["F"], "modality": ["T1w"], "shard": ["x"]},
     "column 'shard' is written by synthesis; rename it"),
])
def test_bad_tables_name_the_file_and_row(tmp_path, rows, message):
    path = write(tmp_path, rows)
    with pytest.raises(GenbrainInputError) as err:
        cohort_covariates("mine", {"covariates": path}, MODS)
    assert str(err.value).startswith(f"{path}: {message}"), err.value
    assert "\n" not in str(err.value)


def test_missing_tsv_names_the_config_key(tmp_path):
    with pytest.raises(GenbrainInputError, match=r"nope\.tsv: covariate table of synthetic "
                       r"cohort 'mine' not found \(config key 'synthesize\.cohorts\.mine\."
                       r"covariates'\)"):
        cohort_covariates("mine", {"covariates": str(tmp_path / "nope.tsv")}, MODS)


def test_grid_modality_error_names_the_config_key():
    with pytest.raises(GenbrainInputError, match=r"config key 'synthesize\.cohorts\.g\.grid': "
                       r"row 1: modality 'MD'"):
        cohort_covariates("g", {"grid": {"age": [50], "sex": ["F"], "modality": ["MD"]},
                                "n": 1}, MODS)


@pytest.mark.parametrize("name, spec, message", [
    ("both", {"covariates": "a.tsv", "grid": {"age": [50], "modality": ["T1w"]}},
     "'synthesize.cohorts.both' needs exactly one of 'covariates'"),
    ("neither", {"k": 2}, "'synthesize.cohorts.neither' needs exactly one of 'covariates'"),
    ("pretrain", {"grid": {"age": [50], "modality": ["T1w"]}},
     "the name 'pretrain' is the pretrained model's evaluation cohort"),
    ("rep", {"covariates": "a.tsv", "n": 3}, "'synthesize.cohorts.rep.n' repeats grid"),
])
def test_bad_cohort_specs(name, spec, message):
    with pytest.raises(GenbrainInputError, match=message.replace(".", r"\.")):
        cohort_covariates(name, {"n": 1, "k": 1, **spec}, MODS)


def _demo_config(**synthesize):
    from genbrain.config import load_yaml

    cfg = load_yaml(ROOT / "config" / "demo.yaml")
    cfg["synthesize"]["cohorts"] = synthesize
    return validate_config(cfg, SCHEMAS / "config.schema.yaml")


def test_workflow_sizes_researcher_cohorts_and_fills_schema_defaults(tmp_path):
    path = write(tmp_path, {"age": [60] * 5, "sex": ["F"] * 5, "modality": ["T1w"] * 5})
    cfg = _demo_config(tsv={"covariates": path, "k": 3},
                       grid={"grid": {"age": [50, 60, 70], "modality": ["T1w", "FA"]}, "n": 50})
    assert cfg["synthesize"]["cohorts"]["grid"]["grid"]["sex"] == ["F", "M"]
    assert cfg["synthesize"]["cohorts"]["grid"]["k"] == 1
    cohorts = load_cohorts(cfg, SCHEMAS / "participants.schema.yaml", 60)
    synth = synthetic_cohorts(cfg, cohorts, "population")
    assert set(synth) == {"pretrain", "tsv", "grid"}
    assert (synth["tsv"].n_rows, synth["tsv"].k, synth["tsv"].modalities) == (5, 3, ("T1w",))
    assert synth["grid"].n_rows == 3 * 2 * 2 * 50 and synth["grid"].k == 1
    shard = cfg["synthesize"]["shard_size"]
    assert synth["grid"].n_shards == -(-600 // shard)
    assert synth["grid"].shard_rows(synth["grid"].n_shards - 1).stop == 600
    assert synth["tsv"].real == "population"


def test_cohort_names_are_checked_by_the_schema():
    with pytest.raises(GenbrainInputError, match=r"config: key 'my-cohort' under "
                       r"'synthesize\.cohorts' is not a valid name \(expected to match \^"):
        _demo_config(**{"my-cohort": {"grid": {"age": [50], "modality": ["T1w"]}}})


def test_researcher_cohorts_need_a_pretraining_cohort():
    cfg = _demo_config(g={"grid": {"age": [50], "modality": ["T1w"]}})
    with pytest.raises(GenbrainInputError, match="'synthesize.cohorts.g.model' is 'pretrain' but "
                       "no cohort has role 'pretrain'"):
        synthetic_cohorts(cfg, {}, None)
    cfg["synthesize"]["cohorts"]["g"]["model"] = "scz/siteX"
    with pytest.raises(GenbrainInputError, match="'synthesize.cohorts.g.model' is 'scz/siteX'; "
                       r"expected 'pretrain' or one of the fine-tunes \[\]"):
        synthetic_cohorts(cfg, {}, None)
