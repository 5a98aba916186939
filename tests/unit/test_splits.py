"""The participant splitters (hold-out, per-site 3:1:1 by diagnosis, 3:1:1 by score) and the
evaluation cohorts: seeded, per site, independent of row order, non-overlapping, clear errors."""

import numpy as np
import pandas as pd
import pytest

from genbrain.errors import GenbrainInputError
from genbrain.io import save_tsv
from genbrain.splits import (
    SITE_SPLITS,
    evaluation_cohorts,
    holdout_split,
    level_codes,
    score_split,
    similarity_covariates,
    split_ids,
    split_sites,
)


def people(n_a: int = 40, n_b: int = 20) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = n_a + n_b
    return pd.DataFrame({"participant_id": [f"sub-{i:03d}" for i in range(n)],
                         "site": ["A"] * n_a + ["B"] * n_b, "age": rng.uniform(40, 80, n),
                         "sex": rng.choice(["M", "F"], n)})


def test_holdout_is_per_site_seeded_and_order_free():
    table = people()
    split = holdout_split(table, 0.25, seed=1)
    counts = split.groupby(["site", "split"]).size()
    assert counts[("A", "holdout")] == 10 and counts[("B", "holdout")] == 5
    assert split["participant_id"].tolist() == table["participant_id"].tolist()
    shuffled = holdout_split(table.sample(frac=1, random_state=3), 0.25, seed=1)
    held = set(split.loc[split.split == "holdout", "participant_id"])
    assert set(shuffled.loc[shuffled.split == "holdout", "participant_id"]) == held
    other = holdout_split(table, 0.25, seed=2)
    assert set(other.loc[other.split == "holdout", "participant_id"]) != held


def test_a_site_keeps_a_training_subject_and_bad_fractions_are_refused():
    split = holdout_split(people(1, 2), 0.9, seed=0)
    assert (split.groupby("site")["split"].apply(lambda s: (s == "train").sum()) >= 1).all()
    with pytest.raises(GenbrainInputError, match="holdout_fraction must be in"):
        holdout_split(people(), 1.0, seed=0)


def test_evaluation_cohorts_do_not_overlap_and_come_from_the_holdout():
    split = holdout_split(people(), 0.5, seed=0)
    cohorts = evaluation_cohorts(split, 6, 4, seed=5)
    assert len(cohorts) == 24 and cohorts["participant_id"].is_unique
    assert cohorts.groupby("replicate").size().tolist() == [6, 6, 6, 6]
    held = set(split.loc[split.split == "holdout", "participant_id"])
    assert set(cohorts["participant_id"]) <= held
    assert cohorts.equals(evaluation_cohorts(split, 6, 4, seed=5))
    with pytest.raises(GenbrainInputError, match=r"needs 5 x 7 = 35 hold-out participants but "
                                                 r"the pretraining cohort holds out 30"):
        evaluation_cohorts(split, 7, 5, seed=0)


def test_similarity_covariates_mirror_every_member_k_times_per_modality():
    split = holdout_split(people(), 0.5, seed=0)
    cohorts = evaluation_cohorts(split, 3, 2, seed=0)
    cov = similarity_covariates(cohorts, ["VBM", "T1w"], k=2)
    assert len(cov) == 6 * 2 * 2
    assert cov["synthetic_id"].tolist() == list(range(24))
    first = cov[(cov.modality == "VBM") & (cov.participant_id == cohorts.participant_id[0])]
    assert first["sample"].tolist() == [0, 1]
    assert (first["age"] == cohorts.age[0]).all() and (first["sex"] == cohorts.sex[0]).all()


def test_split_ids_reads_a_split_and_names_a_bad_one(tmp_path):
    table = pd.DataFrame({"participant_id": ["sub-1", "sub-2", "sub-3"],
                          "split": ["train", "holdout", "train"]})
    assert split_ids(table, "train") == {"sub-1", "sub-3"}
    save_tsv(table, tmp_path / "split.tsv")
    assert split_ids(tmp_path / "split.tsv", "holdout") == {"sub-2"}
    with pytest.raises(GenbrainInputError, match="split.tsv: no participants with split 'x'"):
        split_ids(tmp_path / "split.tsv", "x")
    with pytest.raises(GenbrainInputError, match=r"missing columns \['split'\]"):
        split_ids(table.drop(columns="split"), "train")


def diagnosed(sizes: dict, levels=("CN", "SCZ")) -> pd.DataFrame:
    """Participants of each site with levels in turn (n // len(levels) or one more each)."""
    frames = [pd.DataFrame({"participant_id": [f"sub-{site}{i:03d}" for i in range(n)],
                            "site": site,
                            "diagnosis": np.array(levels)[np.arange(n) % len(levels)]})
              for site, n in sizes.items()]
    return pd.concat(frames, ignore_index=True)


def test_site_split_is_stratified_disjoint_and_seeded():
    table = diagnosed({"A": 50, "B": 75})
    table = table.sample(frac=1.0, random_state=3).reset_index(drop=True)  # row order
    s1 = split_sites(table, ("CN", "SCZ"), seed=5)
    s2 = split_sites(table.iloc[::-1].reset_index(drop=True), ("CN", "SCZ"), seed=5)
    key = ["participant_id", "split"]
    pd.testing.assert_frame_equal(s1[key].sort_values(key[0]).reset_index(drop=True),
                                  s2[key].sort_values(key[0]).reset_index(drop=True))
    assert set(s1["split"]) == set(SITE_SPLITS)
    counts = s1.groupby(["site", "diagnosis", "split"]).size().unstack()
    # 3:1:1 per site and level: 25 per level at A -> 15/5/5
    assert counts.loc[("A", "CN")].to_dict() == {"test": 5, "train": 15, "validation": 5}
    b = counts.loc[("B", "CN")]
    assert b["train"] / b.sum() == pytest.approx(0.6, abs=0.05)
    assert s1["participant_id"].is_unique  # each subject in exactly one split
    other = split_sites(table, ("CN", "SCZ"), seed=6)
    assert not (other.set_index("participant_id")["split"]
                == s1.set_index("participant_id")["split"]).all()


def test_site_split_bad_inputs_name_the_site():
    one = diagnosed({"A": 20, "B": 20})
    one.loc[one["site"] == "B", "diagnosis"] = "CN"
    with pytest.raises(GenbrainInputError, match=r"site 'B' has one class only \('CN'\)"):
        split_sites(one, ("CN", "SCZ"), 0)
    few = diagnosed({"A": 20})
    few = few[~((few["diagnosis"] == "SCZ") & (few.index % 10 != 1))]
    with pytest.raises(GenbrainInputError, match=r"site 'A' has 2 'SCZ' subject\(s\).*at least 3"):
        split_sites(few, ("CN", "SCZ"), 0)
    three = diagnosed({"A": 30, "B": 30}, levels=("CN", "MCI", "AD"))
    three = three[~((three["site"] == "B") & (three["diagnosis"] == "MCI"))]
    with pytest.raises(GenbrainInputError, match=r"site 'B' lacks diagnosis level\(s\) \['MCI'\]"):
        split_sites(three, ("CN", "MCI", "AD"), 0)
    with pytest.raises(GenbrainInputError, match="diagnosis 'AD' is not one of"):
        split_sites(diagnosed({"A": 30}, levels=("CN", "AD")), ("CN", "SCZ"), 0)


def test_level_codes_follow_the_levels_and_name_an_unknown_one():
    assert level_codes(["SCZ", "CN", "SCZ"], ("CN", "SCZ")).tolist() == [1, 0, 1]
    with pytest.raises(GenbrainInputError, match=r"t.tsv: diagnosis 'AD' is not one of the "
                                                 r"task's levels \['CN', 'SCZ'\]"):
        level_codes(["CN", "AD"], ("CN", "SCZ"), "t.tsv")


def test_score_split_is_3_1_1_seeded_stratified_and_order_free():
    rng = np.random.default_rng(0)
    table = pd.DataFrame({"participant_id": [f"s{i:03d}" for i in range(103)],
                          "score": rng.gamma(2.0, 5.0, 103).clip(0, 42).round(1)})
    a = score_split(table, "score", 7, score_max=42)
    counts = a["split"].value_counts()
    assert abs(counts["train"] - 61.8) <= 3 and abs(counts["val"] - 20.6) <= 3
    assert counts.sum() == 103
    shuffled = table.sample(frac=1, random_state=1)
    pd.testing.assert_frame_equal(score_split(shuffled, "score", 7, score_max=42), a)
    assert not score_split(table, "score", 8, score_max=42)["split"].equals(a["split"])
    # stratified: every split spans the score range (the lowest 5 hold one val and one test)
    top = a.sort_values("score").head(5)["split"].value_counts().to_dict()
    assert top == {"train": 3, "val": 1, "test": 1}
    rand = score_split(table, "score", 7, score_max=42, stratify="random")
    assert rand["split"].value_counts().to_dict() == {"train": 62, "val": 21, "test": 20}
    with pytest.raises(GenbrainInputError, match="'stratify' is 'deciles'; expected one of "
                                                 "quantile, random"):
        score_split(table, "score", 7, score_max=42, stratify="deciles")
