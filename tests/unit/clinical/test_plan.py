"""The clinical stage's parse-time plan: a valid analysis is sized from the cohort's score
split, every config mistake is one line naming its key, and the pool's covariates mirror the
training split deterministically."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from genbrain.clinical.plan import (
    ClinicalAnalysis,
    plan_clinical,
    pool_covariates,
    replicate_seed,
)
from genbrain.errors import GenbrainInputError
from genbrain.finetune import plan_finetunes
from genbrain.splits import cohort_split

from .conftest import one_line


def stroke(n=30, sites=("h1", "h2"), scores=("nihss",), declared=42.0, bad=None):
    rng = np.random.default_rng(0)
    rows = [{"participant_id": f"sub-{sites[i % len(sites)]}{i:03d}", "site": sites[i % len(sites)],
             "age": round(float(rng.uniform(45, 85)), 1), "sex": "MF"[i % 2],
             "diagnosis": "stroke", "nihss": round(float(rng.uniform(0, 30)), 1)}
            for i in range(n)]
    table = pd.DataFrame(rows)
    if bad is not None:
        table.loc[3, "nihss"] = bad
    spec = {"modalities": ["T1w", "ADC"],
            "scores": [{"name": s, "range": [0, declared]} if declared else s for s in scores]}
    return SimpleNamespace(name="stroke", spec=spec, table=table, sites=sorted(sites),
                           scores=list(scores), modalities=spec["modalities"],
                           participants="stroke/participants.tsv",
                           site_label=lambda s: s)


TASK = {"cohort": "stroke", "modalities": ["ADC"], "conditions": ["nihss"], "split": "train"}


def plan(clinical, tasks=None, cohort=None, seed=3):
    cohort = cohort or stroke()
    cfg = {"seed": seed, "finetune": {"train": {}, "tasks": tasks or {"sev": TASK}},
           "clinical": clinical}
    finetunes = plan_finetunes(cfg, {"stroke": cohort}, "pop")
    return plan_clinical(cfg, {"stroke": cohort}, finetunes)


def test_a_valid_analysis_is_planned_from_its_fine_tune_and_the_score_split():
    out = plan({"ratios": [0, 1, 2.5], "seeds": 2, "regress": {"epochs": 3, "pool": 2},
                "analyses": {"nihss": {"finetune": "sev", "regress": {"lr": 1e-3}}}})
    a = out["nihss"]
    split = cohort_split(stroke().table, None, 3, "s", "nihss", 42.0)
    n_train = int((split["split"] == "train").sum())
    assert (a.cohort, a.score, a.score_max, a.modality, a.model) == (
        "stroke", "nihss", 42.0, "ADC", "sev/all")
    assert a.ratios == (0.0, 1.0, 2.5) and a.n_train == n_train == 18
    assert a.n_pool == 45  # round(2.5 x 18)
    assert a.seeds == (replicate_seed(3, "nihss", 0), replicate_seed(3, "nihss", 1))
    assert len(set(a.seeds)) == 2
    assert a.regress["epochs"] == 3 and a.regress["pool"] == 2 and a.regress["lr"] == 1e-3
    assert a.regress["score_column"] == "nihss" and "seed" not in a.regress
    assert a.synth == "clinical-nihss" and a.out_dir == "results/clinical/nihss"
    assert a.job_tsv(2.5, 1) == "results/clinical/nihss/sweep/ratio-2.5_seed-1.tsv"
    assert len(a.jobs()) == 6
    assert ClinicalAnalysis.from_dict(a.to_dict()) == a
    # the paper's grid by default, 5 seeds
    paper = plan({"analyses": {"nihss": {"finetune": "sev"}}})["nihss"]
    assert len(paper.ratios) == 31 and paper.ratios[28] == 2.8 and len(paper.seeds) == 5


@pytest.mark.parametrize("analysis, tasks, message", [
    ({"finetune": "nope"}, None, "'clinical.analyses.a.finetune' is 'nope', not a fine-tuning"),
    ({"finetune": "sev"}, {"sev": {**TASK, "per_site": True}},
     "'clinical.analyses.a': fine-tuning task 'sev' is per site"),
    ({"finetune": "sev"}, {"sev": {**TASK, "conditions": [], "split": "all"}},
     "'clinical.analyses.a': fine-tuning task 'sev' is not conditioned on a score alone"),
    ({"finetune": "sev"}, {"sev": {**TASK, "split": "all"}},
     "'clinical.analyses.a': fine-tuning task 'sev' trains on split 'all'"),
    ({"finetune": "sev"}, {"sev": {**TASK, "sites": ["h1"]}},
     "'clinical.analyses.a': fine-tuning task 'sev' trains on sites ['h1']"),
    ({"finetune": "sev", "modality": "T1w"}, None,
     "'clinical.analyses.a.modality' is 'T1w'; fine-tune task 'sev' trains on ['ADC']"),
    ({"finetune": "sev", "score_max": 50}, None,
     "'clinical.analyses.a.score_max' is 50, above the maximum 42"),
    ({"finetune": "sev", "ratios": [0.5, 1]}, None,
     "'clinical.analyses.a.ratios' is [0.5, 1.0]; expected non-negative ratios including 0.0"),
    ({"finetune": "sev", "seeds": 0}, None, "'clinical.analyses.a.seeds' is 0"),
    ({"finetune": "sev", "regress": {"seed": 1}}, None,
     "'clinical.analyses.a.regress' sets 'seed'"),
    ({"finetune": "sev", "regress": {"arch": "resnet50"}}, None,
     "config: 'clinical.analyses.a.regress': regression config: 'arch' is 'resnet50'"),
    ({"finetune": "sev", "regress": {"crop": [[0, 95], [0, 109], [0, 91]]}}, None,
     ("'clinical.analyses.a.regress.crop' is [[0, 95], [0, 109], [0, 91]]: axis x (0:95) "
      "lies outside the 91x109x91 grid")),
])
def test_each_config_mistake_is_one_line_naming_its_key(analysis, tasks, message):
    with pytest.raises(GenbrainInputError) as err:
        plan({"analyses": {"a": analysis}}, tasks)
    assert message in one_line(err)


def test_bad_scores_and_too_few_participants_name_the_table_and_the_key():
    with pytest.raises(GenbrainInputError) as err:  # no declared range, no score_max
        plan({"analyses": {"a": {"finetune": "sev"}}}, cohort=stroke(declared=None))
    assert "'clinical.analyses.a.score_max' is not set" in one_line(err)
    with pytest.raises(GenbrainInputError) as err:  # above the analysis's maximum
        plan({"analyses": {"a": {"finetune": "sev", "score_max": 20}}})
    msg = one_line(err)
    assert msg.startswith("stroke/participants.tsv (config key 'clinical.analyses.a'): "
                          "participant sub-") and "is above the declared maximum 20" in msg
    with pytest.raises(GenbrainInputError) as err:  # a missing score: the fine-tune's check
        plan({"analyses": {"a": {"finetune": "sev"}}}, cohort=stroke(bad=np.nan))
    assert "participant sub-h2003: score 'nihss' nan is missing or not a number" in one_line(err)
    with pytest.raises(GenbrainInputError) as err:  # 12 < 15 for a 3:1:1 split
        plan({"analyses": {"a": {"finetune": "sev"}}}, cohort=stroke(n=12))
    assert "at least 15" in one_line(err)


def test_the_pool_mirrors_the_training_split_deterministically():
    a = plan({"ratios": [0, 2], "seeds": 1, "analyses": {"a": {"finetune": "sev"}}})["a"]
    people = stroke().table
    split = cohort_split(people, None, 3, "s", "nihss", 42.0)
    pool = pool_covariates(a, split, people, 3)
    pd.testing.assert_frame_equal(pool, pool_covariates(a, split, people.iloc[::-1], 3))
    assert not pool.equals(pool_covariates(a, split, people, 4))
    assert list(pool.columns) == ["synthetic_id", "age", "sex", "nihss", "modality",
                                  "reference_participant_id"]
    assert len(pool) == a.n_pool == 36 and set(pool["modality"]) == {"ADC"}
    train = people[people["participant_id"].isin(split.loc[split["split"] == "train",
                                                           "participant_id"])]
    counts = pool["reference_participant_id"].value_counts()
    assert set(counts.index) == set(train["participant_id"]) and set(counts) == {2}
    merged = pool.merge(train, left_on="reference_participant_id", right_on="participant_id",
                        suffixes=("", "_real"))
    for c in ("age", "sex", "nihss"):  # each row is its member's (age, sex, score)
        assert (merged[c] == merged[f"{c}_real"]).all()
    with pytest.raises(GenbrainInputError, match="the plan was made for 18"):
        pool_covariates(a, split, people[people["participant_id"] != train[
            "participant_id"].iloc[0]], 3)


def test_the_stage_functions_run_a_tiny_analysis_end_to_end(tmp_path):
    """What the rules call, on 20 standard-space images: a fit per (ratio, replicate) whose
    row is the same twice (its checkpoint folder removed), the summary tables and figures, the
    matched pairs from a pool store."""
    from genbrain.clinical.plan import pairs_output, run_sweep_job, summary_outputs
    from genbrain.io import read_tsv, save_tsv
    from genbrain.space import standard_space
    from genbrain.store import write_shard

    people = stroke(n=20).table
    a = plan({"ratios": [0, 1], "seeds": 2, "regress": {"pool": 6, "epochs": 1,
                                                          "batch_size": 8, "lr": 1e-3},
              "analyses": {"a": {"finetune": "sev"}}}, cohort=stroke(n=20))["a"]
    split = cohort_split(people, None, 3, "s", "nihss", 42.0)
    save_tsv(split, tmp_path / "split.tsv")
    n_vox = standard_space().n_voxels
    rng = np.random.default_rng(1)

    def store(root, table):
        root.mkdir()
        write_shard(rng.standard_normal((len(table), n_vox)).astype(np.float32),
                    root / "ADC.npy", "float16")
        save_tsv(table.assign(modality="ADC", modality_index=34, shard="ADC.npy",
                              row=range(len(table))), root / "index.tsv")
        return str(root / "index.tsv")

    real = store(tmp_path / "real", people)
    cov = pool_covariates(a, split, people, 3).drop(columns="modality")
    pool = store(tmp_path / "pool", cov.assign(participant_id=[f"syn-{i}" for i in range(len(
        cov))], site="synthetic"))
    rows = []
    for ratio, k in a.jobs():
        work = tmp_path / f"fit-{ratio}-{k}"
        row = run_sweep_job(a, ratio, k, real, str(tmp_path / "split.tsv"),
                            pool if ratio else None, str(work))
        assert not work.exists() and len(row) == 1
        assert (row["replicate"].item(), row["n_synthetic"].item()) == (k, round(ratio * 12))
        path = tmp_path / f"row-{ratio}-{k}.tsv"
        save_tsv(row, path)
        rows.append(str(path))
    again = run_sweep_job(a, 1.0, 1, real, str(tmp_path / "split.tsv"), pool,
                          str(tmp_path / "again"))
    pd.testing.assert_frame_equal(again, read_tsv(rows[-1]), check_dtype=False)
    out = {k: str(tmp_path / f"{k}.{ext}") for k, ext in (
        ("sweep", "tsv"), ("summary", "tsv"), ("comparison", "tsv"), ("figure", "png"))}
    summary_outputs(a, rows, out)
    comparison = read_tsv(out["comparison"])
    assert list(comparison["metric"]) == ["test_mae", "test_r"]
    # the comparison names its fine-tune, score and modality (the fidelity record's pool row)
    assert list(comparison.columns[:4]) == ["analysis", "model", "score", "modality"]
    assert list(read_tsv(out["summary"]).columns[:4]) == list(comparison.columns[:4])
    assert (comparison["model"] == a.model).all() and (comparison["score"] == a.score).all()
    assert (comparison["n_seeds_base"] == 2).all() and len(read_tsv(out["sweep"])) == 4
    pairs_output(a, real, str(tmp_path / "split.tsv"), pool, str(tmp_path / "pairs.png"))
    assert (tmp_path / "pairs.png").stat().st_size > 0
    with pytest.raises(GenbrainInputError, match="3 fits; the plan has 4"):
        summary_outputs(a, rows[:3], out)
