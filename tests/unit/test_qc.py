import statistics

import numpy as np
import pandas as pd
import pytest

from genbrain.errors import GenbrainInputError
from genbrain.io import read_tsv
from genbrain.qc import demographics, write_demographics


def _index(seed=0, n=23):
    """A store index: n participants at 2 sites, 2 diagnoses, 2 images each (the second
    image's row repeats the participant's values, as a store index does)."""
    rng = np.random.default_rng(seed)
    people = pd.DataFrame({
        "participant_id": [f"sub-{i:03d}" for i in range(n)],
        "site": rng.choice(["b", "a"], n),
        "age": rng.uniform(20, 80, n).round(1),
        "sex": rng.choice(["F", "M"], n),
        "diagnosis": rng.choice(["CN", "SCZ"], n),
        "score": np.where(rng.random(n) < 0.2, np.nan, rng.normal(10, 3, n)),
        "qc_pass": rng.random(n) < 0.8,
    })
    people.loc[0, ["site", "diagnosis"]] = ["a", "CN"]
    people.loc[1, ["site", "diagnosis"]] = ["a", "SCZ"]
    return pd.concat([people.assign(modality=m) for m in ("T1w", "VBM")], ignore_index=True)


def _expected(group: pd.DataFrame) -> dict:
    """The same summary from the standard library, one participant at a time."""
    people = {r.participant_id: r for r in group.itertuples()}.values()
    ages = [float(r.age) for r in people]
    scores = [float(r.score) for r in people if r.score == r.score]
    return {"n": len(ages), "female_pct": 100 * sum(r.sex == "F" for r in people) / len(ages),
            "age_mean": statistics.fmean(ages),
            "age_sd": statistics.stdev(ages) if len(ages) > 1 else np.nan,
            "age_min": min(ages), "age_max": max(ages),
            "qc_pass_pct": 100 * sum(bool(r.qc_pass) for r in people) / len(ages),
            "score_mean": statistics.fmean(scores) if scores else np.nan,
            "score_sd": statistics.stdev(scores) if len(scores) > 1 else np.nan}


def test_demographics_match_the_standard_library_per_site_diagnosis_and_overall():
    index = _index()
    table = demographics(index, scores=["score"])
    groups = [(s, d) for s in ("a", "b", "all") for d in ("CN", "SCZ", "all")]
    assert list(zip(table["site"], table["diagnosis"])) == groups
    for row in table.itertuples():
        sel = index
        if row.site != "all":
            sel = sel[sel["site"] == row.site]
        if row.diagnosis != "all":
            sel = sel[sel["diagnosis"] == row.diagnosis]
        for key, value in _expected(sel).items():
            np.testing.assert_allclose(getattr(row, key), value, rtol=0, atol=1e-9,
                                       err_msg=f"{row.site}/{row.diagnosis} {key}")
    assert table.iloc[-1]["n"] == index["participant_id"].nunique()  # each person once


def test_demographics_without_diagnoses_give_site_totals_only():
    index = _index().drop(columns="diagnosis")
    table = demographics(index)
    assert list(zip(table["site"], table["diagnosis"])) == [("a", "all"), ("b", "all"),
                                                            ("all", "all")]
    assert "score_mean" not in table.columns


def test_write_demographics_rounds_and_names_a_missing_score(tmp_path):
    path = tmp_path / "index.tsv"
    _index().to_csv(path, sep="\t", index=False, na_rep="n/a")
    df = write_demographics(path, tmp_path / "demographics.tsv", scores=["score"])
    back = read_tsv(tmp_path / "demographics.tsv")
    assert list(back.columns) == list(df.columns)
    assert back["age_mean"].tolist() == df["age_mean"].tolist()
    assert all(v == round(v, 2) for v in back["age_sd"])
    with pytest.raises(GenbrainInputError, match=r"index\.tsv: no column 'nihss' \(the "
                                                 r"cohort's `scores`\)"):
        write_demographics(path, tmp_path / "other.tsv", scores=["nihss"])
    assert not (tmp_path / "other.tsv").exists()
