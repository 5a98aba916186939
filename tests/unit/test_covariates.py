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


# --------------------------------------------------------------------------------------------
# Training ranges (issue 34 item 2) and scores in grids (item 8)

SEEN = {"age": (45.2, 81.9, "seen in training")}
NIHSS = {**SEEN, "nihss": (1.0, 39.0, "seen in training")}


@pytest.mark.parametrize("age, shown", [(150, "150"), (-5, "-5"), (0.5, "0.5")])
def test_an_age_outside_the_training_range_is_refused_naming_row_value_and_range(
        tmp_path, age, shown):
    path = write(tmp_path, {"age": [60, age], "sex": ["F", "M"], "modality": ["T1w"] * 2})
    with pytest.raises(GenbrainInputError) as err:
        cohort_covariates("mine", {"covariates": path}, MODS, ranges=SEEN)
    assert str(err.value).startswith(
        f"{path}: row 2: age {shown} is outside the range the pretrained model saw in training "
        "(45.2 to 81.9, seen in training); "), err.value
    assert "'synthesize.cohorts.mine.allow_extrapolation: true'" in str(err.value)
    assert "\n" not in str(err.value)


def test_a_score_outside_the_training_range_is_refused():
    spec = {"grid": {"age": [60], "sex": ["F"], "modality": ["T1w"], "nihss": [10, 400]}}
    with pytest.raises(GenbrainInputError, match=r"config key 'synthesize\.cohorts\.s\.grid': "
                       r"row 2: nihss 400 is outside the range fine-tune stroke/all saw in "
                       r"training \(1 to 39, seen in training\)"):
        cohort_covariates("s", spec, MODS, "fine-tune stroke/all", score_column="nihss",
                          ranges=NIHSS)


def test_allow_extrapolation_draws_them_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, {"age": [60, 150, 90], "sex": ["F", "M", "F"],
                            "modality": ["T1w"] * 3})
    with caplog.at_level("WARNING"):
        table = cohort_covariates("mine", {"covariates": path, "allow_extrapolation": True},
                                  MODS, ranges=SEEN)
    assert table["age"].tolist() == [60, 150, 90]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "2 row(s) outside the training range of age" in warned[0]
    assert "row 2: age 150 is outside" in warned[0]
    # inside the range: no warning, and without ranges (not known yet) nothing is checked
    caplog.clear()
    cohort_covariates("mine", {"covariates": write(tmp_path, {"age": [45.2, 81.9], "sex": [
        "F", "M"], "modality": ["T1w"] * 2}, "in.tsv")}, MODS, ranges=SEEN)
    cohort_covariates("mine", {"covariates": path}, MODS)
    assert not caplog.records


def test_a_checkpoint_without_ranges_falls_back_to_four_sds_and_says_so():
    from genbrain.conditions import Conditions

    old = Conditions(norms={"age": {"mean": 63.8, "std": 10.9}})
    lo, hi, how = old.training_ranges()["age"]
    assert (lo, hi) == pytest.approx((63.8 - 43.6, 63.8 + 43.6))
    assert "mean +/- 4 SD" in how and "records no range" in how
    with pytest.raises(GenbrainInputError, match=r"age 150 is outside .* \(20\.2 to 107\.4, "
                       r"the training mean \+/- 4 SD: the checkpoint records no range\)"):
        cohort_covariates("g", {"grid": {"age": [150], "sex": ["F"], "modality": ["T1w"]}},
                          MODS, ranges=old.training_ranges())
    recorded = Conditions(norms=old.norms, ranges={"age": {"min": 45.0, "max": 82.0}})
    assert recorded.training_ranges() == {"age": (45.0, 82.0, "seen in training")}


def test_a_grid_takes_the_models_score_and_refuses_other_keys():
    grid = {"age": [50], "sex": ["F"], "nihss": [4, 20], "modality": ["T1w", "FA"]}
    table = cohort_covariates("s", {"grid": grid, "n": 2}, MODS, "fine-tune stroke/all",
                              score_column="nihss", ranges=NIHSS)
    assert list(table.columns) == ["synthetic_id", "age", "sex", "nihss", "modality",
                                   "replicate"]
    assert sorted(set(zip(table["nihss"], table["modality"]))) == \
        [(4, "FA"), (4, "T1w"), (20, "FA"), (20, "T1w")] and len(table) == 8
    with pytest.raises(GenbrainInputError, match=r"'synthesize\.cohorts\.s\.grid\.nihs' is not "
                       r"a condition of fine-tune stroke/all \(did you mean 'nihss'\?\)"):
        cohort_covariates("s", {"grid": {**grid, "nihs": [4]}}, MODS, "fine-tune stroke/all",
                          score_column="nihss")
    with pytest.raises(GenbrainInputError, match=r"'synthesize\.cohorts\.s\.grid\.nihss' is not "
                       "a condition of the pretrained model"):
        cohort_covariates("s", {"grid": grid}, MODS)
    with pytest.raises(GenbrainInputError, match="the grid needs a 'nihss' list"):
        cohort_covariates("s", {"grid": {k: v for k, v in grid.items() if k != "nihss"}}, MODS,
                          "fine-tune stroke/all", score_column="nihss")
    # the schema lets a grid name a score and fills allow_extrapolation
    cfg = _demo_config(s={"grid": grid})
    assert cfg["synthesize"]["cohorts"]["s"]["allow_extrapolation"] is False


def test_the_workflow_checks_ranges_predicted_from_the_training_tables(tmp_path):
    from genbrain.config import load_yaml
    from genbrain.finetune import plan_finetunes
    from genbrain.splits import holdout_split
    from genbrain.workflow import planned_conditions

    cfg = _demo_config()
    cohorts = load_cohorts(cfg, SCHEMAS / "participants.schema.yaml", 60)
    split = holdout_split(cohorts["population"].table, cfg["pretrain"]["holdout_fraction"],
                          cfg["seed"])
    train = split.loc[split["split"] == "train", "age"]
    pre = planned_conditions("pretrain", cfg, cohorts, "population")
    assert pre.training_ranges()["age"][:2] == (train.min(), train.max())
    assert 45 <= train.min() < 46 and 81 < train.max() <= 82
    # a fine-tune's ages span its own training participants' and its init model's
    finetunes = plan_finetunes(cfg, cohorts, "population")
    site = cohorts["scz"].table.query("site == 'siteA'")["age"]
    tuned = planned_conditions("scz/siteA", cfg, cohorts, "population", finetunes)
    assert tuned.training_ranges()["age"][:2] == (site.min(), train.max())
    assert site.min() < 35  # the demo's sitea grid (ages 35, 55) is inside
    # the demo's own cohorts pass; an age of 150 stops the plan naming the grid and row
    demo = validate_config(load_yaml(ROOT / "config" / "demo.yaml"), SCHEMAS / "config.schema.yaml")
    synthetic_cohorts(demo, cohorts, "population", finetunes)
    cfg = _demo_config(old={"grid": {"age": [60, 150], "modality": ["T1w"]}})
    with pytest.raises(GenbrainInputError, match=r"config key 'synthesize\.cohorts\.old\.grid': "
                       r"row 3: age 150 is outside the range the pretrained model saw"):
        synthetic_cohorts(cfg, cohorts, "population")
