"""The cross-site diagnosis stage (genbrain.diagnosis.plan): the synthetic pool's covariates, the
feature tables and their bad inputs, the shared split, one site's sweep with a pool carrying
the planted signal, the analysis summary against a hand computation, its fidelity rows, and
the bad inputs a researcher can give (one class at a site, a class too small for the split, a
3-class level missing at a site: at parse time; a bad volume table: at the sweep)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from genbrain.diagnosis import classify as cl
from genbrain.diagnosis import plan as dx
from genbrain.diagnosis import volumes as vol
from genbrain.diagnosis.plan import plan_diagnosis
from genbrain.errors import GenbrainInputError
from genbrain.fidelity import fidelity_table
from genbrain.finetune import plan_finetunes
from genbrain.io import save_tsv
from genbrain.splits import split_sites

FEATS = list(vol.COLUMNS[1:])
DISEASED = [FEATS[3], FEATS[7]]  # the structures the planted disease shrinks
LEVELS = ("CN", "SCZ")


def _job(**kw) -> dx.DiagnosisSite:
    base = {"analysis": "dx", "cohort": "scz", "site": "A", "label": "A", "levels": LEVELS,
            "modality": "T1w", "model": "sczdx/A", "n_train": 24, "n_pool": 48}
    base.update(kw)
    return dx.DiagnosisSite(**base)


def _participants(sizes: dict, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for site, n in sizes.items():
        for i in range(n):
            rows.append({"participant_id": f"sub-{site}{i:03d}", "site": site,
                         "age": round(float(rng.uniform(25, 70)), 1), "sex": "MF"[i % 2],
                         "diagnosis": LEVELS[(i // 2) % 2]})
    return pd.DataFrame(rows)


def _volumes(cov: pd.DataFrame, effect: float, seed: int, site_offset: dict | None = None
             ) -> np.ndarray:
    """(n, 33) positive volumes: ~1e4 mm^3 per structure with 4% subject noise, the diseased
    structures ``effect`` x 10% smaller in patients, times a site scale (acquisition)."""
    rng = np.random.default_rng(seed)
    n = len(cov)
    x = 1e4 * (1 + 0.04 * rng.standard_normal((n, len(FEATS))))
    sick = (cov["diagnosis"].to_numpy() == "SCZ")
    for f in DISEASED:
        x[sick, FEATS.index(f)] *= 1 - 0.1 * effect
    if site_offset:
        x *= np.array([site_offset.get(s, 1.0) for s in cov["site"]])[:, None]
    return x


def _real(sizes=None, effect=1.0, seed=0):
    sizes = sizes or {"A": 40, "B": 50, "C": 50}
    part = _participants(sizes, seed)
    split = split_sites(part, LEVELS, seed=7)
    x = _volumes(part, effect, seed + 1, {"B": 1.05, "C": 0.95})
    tables = []
    for site in sizes:
        rows = part["site"] == site
        t = pd.DataFrame(x[rows.to_numpy()], columns=FEATS)
        t.insert(0, "participant_id", part.loc[rows, "participant_id"].to_numpy())
        tables.append(t)
    return part, split, tables


def test_pool_mirrors_the_training_split_evenly_and_is_seeded():
    part, split, _ = _real()
    n_train = int(((split["site"] == "A") & (split["split"] == "train")).sum())
    job = _job(n_train=n_train, n_pool=2 * n_train + 5)
    pool = dx.pool_covariates(job, split, part, seed=3)
    assert len(pool) == job.n_pool and list(pool["synthetic_id"]) == list(range(job.n_pool))
    train_ids = set(split.loc[(split["site"] == "A") & (split["split"] == "train"),
                              "participant_id"])
    assert set(pool["reference_participant_id"]) == train_ids  # never validation or test
    counts = pool["reference_participant_id"].value_counts()
    assert counts.max() - counts.min() <= 1  # every member mirrored equally often (within 1)
    ref = part.set_index("participant_id").loc[pool["reference_participant_id"]]
    assert (ref["age"].to_numpy() == pool["age"].to_numpy()).all()
    assert (ref["diagnosis"].to_numpy() == pool["diagnosis"].to_numpy()).all()
    assert (pool["modality"] == "T1w").all()
    pd.testing.assert_frame_equal(pool, dx.pool_covariates(job, split, part, seed=3))
    assert not dx.pool_covariates(job, split, part, seed=4).equals(pool)
    with pytest.raises(GenbrainInputError, match=r"dx/A: the training split holds \d+ "
                                                 r"participants of site 'A'; the plan was made"):
        dx.pool_covariates(_job(n_train=n_train + 1), split, part, seed=3)


def test_feature_tables_refuse_missing_and_duplicated_volumes():
    part, split, tables = _real()
    feats = dx.real_features(tables, part, split)
    assert len(feats) == len(part) and set(FEATS) <= set(feats.columns)
    assert {"split", "site", "age", "sex", "diagnosis"} <= set(feats.columns)
    with pytest.raises(GenbrainInputError, match=r"vols.csv: no volumes for participant "
                                                 r"'sub-A\d+' \(1 missing\)"):
        dx.real_features([tables[0].iloc[1:], *tables[1:]], part, split, source="vols.csv")
    with pytest.raises(GenbrainInputError, match="participant 'sub-A000' has volumes twice"):
        dx.real_features([tables[0], tables[0].iloc[:1], *tables[1:]], part, split)
    cov = pd.DataFrame({"synthetic_id": range(4), "age": 40.0, "sex": "F",
                        "diagnosis": ["CN", "SCZ"] * 2})
    v = tables[0].iloc[:3].assign(participant_id=["0", "1", "2"])
    with pytest.raises(GenbrainInputError, match="pool.csv: volumes for 3 synthetic images; "
                                                 "the pool's covariate table has 4 rows"):
        dx.pool_features(v, cov, "pool.csv")
    ok = dx.pool_features(tables[0].iloc[:4].assign(participant_id=["3", "2", "1", "0"]), cov,
                          "pool.csv")
    assert list(ok["synthetic_id"]) == [0, 1, 2, 3] and ok[FEATS[0]].notna().all()


def test_the_shared_split_is_checked():
    part, split, tables = _real()
    feats = dx.real_features(tables, part, split)
    spec = cl.SweepSpec(levels=LEVELS, ratios=(0.0,), n_configs=2, n_boot=20, harmonize=False)
    bad = feats["split"].replace({"validation": "val"})
    with pytest.raises(GenbrainInputError, match=r"split: row \d+ is 'val'"):
        cl.run_sweep(feats, FEATS, spec, train_sites=["A"], splits=bad)
    with pytest.raises(GenbrainInputError, match=r"split: 139 assignments for 140 feature rows"):
        cl.run_sweep(feats, FEATS, spec, train_sites=["A"], splits=feats["split"].iloc[1:])
    no_val = feats["split"].where(~((feats["site"] == "A") & (feats["split"] == "validation")),
                                  "train")
    with pytest.raises(GenbrainInputError, match="split: site 'A' has no 'validation' "
                                                 "participants"):
        cl.run_sweep(feats, FEATS, spec, train_sites=["A"], splits=no_val)


@pytest.fixture(scope="module")
def site_run():
    """Site A's sweep on the shared split with a 2x pool carrying the planted disease, and
    site B's real-only sweep; the analysis summary."""
    part, split, tables = _real()
    feats = dx.real_features(tables, part, split)
    n_train = int(((split["site"] == "A") & (split["split"] == "train")).sum())
    job_a = _job(n_train=n_train, n_pool=2 * n_train)
    cov = dx.pool_covariates(job_a, split, part, seed=3)
    pool_v = pd.DataFrame(_volumes(cov.assign(site="A"), 1.0, 11), columns=FEATS)
    pool_v.insert(0, "participant_id", cov["synthetic_id"].astype(str))
    pool = dx.pool_features(pool_v, cov, "pool.csv")
    section = {"n_configs": 4, "n_boot": 100, "ratios": [0.0, 1.0, 2.0], "harmonize": True,
               "analyses": {"dx": {"finetune": "sczdx"}}}
    a = dx.site_sweep(job_a, feats, pool, section, n_jobs=1, seed=5)
    job_b = _job(site="B", label="B", model="", n_pool=0,
                 n_train=int(((split["site"] == "B") & (split["split"] == "train")).sum()))
    b = dx.site_sweep(job_b, feats, None, section, n_jobs=1, seed=5)
    summ = dx.summarise([a["sweep"], b["sweep"]], [a["shap"], b["shap"]], DISEASED, k=2)
    return {"a": a, "b": b, "summary": summ, "section": section, "feats": feats,
            "job_b": job_b}


def test_site_sweep_uses_the_shared_split_and_learns_the_planted_signal(site_run):
    a, b = site_run["a"]["sweep"], site_run["b"]["sweep"]
    assert set(a["train_site"]) == {"A"} and set(b["train_site"]) == {"B"}
    assert set(a["ratio"]) == {0.0, 1.0, 2.0} and set(b["ratio"]) == {0.0}  # no pool at B
    assert set(a["method"]) == {"real", "augmented", "harmonized", "harmonized+augmented"}
    assert (a["analysis"] == "dx").all()
    within = a[(a["setting"] == "within") & (a["metric"] == "accuracy") & (a["method"] == "real")]
    n_test = int(((site_run["feats"]["site"] == "A")
                  & (site_run["feats"]["split"] == "test")).sum())
    assert (within["n_eval"] == n_test).all()  # the shared split's test participants, no others
    acc = a[a["metric"] == "accuracy"].groupby(["setting", "method", "test_site"])["value"]
    acc = acc.mean()
    assert acc["within", "real", "A"] >= 0.9  # a 10% loss in two structures is learnable
    # site C's volumes are all 5% smaller (acquisition): ComBat, fitted on A's training split
    # and C's unlabelled features, removes it
    assert acc["cross", "harmonized", "C"] > acc["cross", "real", "C"] + 0.05
    assert a["chosen"].astype(bool).any()
    job_b = site_run["job_b"]  # seeded: a second run gives the identical table
    again = dx.site_sweep(job_b, site_run["feats"], None, site_run["section"], seed=5)
    pd.testing.assert_frame_equal(again["sweep"], b)


def test_summary_combines_the_pairs_cis_and_finds_the_diseased_regions(site_run):
    s = site_run["summary"]["summary"]
    table = pd.concat([site_run["a"]["sweep"], site_run["b"]["sweep"]])
    acc = table[(table["metric"] == "accuracy") & (table["setting"] == "cross")]
    aug = acc[(acc["method"] == "augmented") & acc["chosen"].astype(bool)]
    row = s[(s["setting"] == "cross") & (s["method"] == "augmented")
            & (s["metric"] == "accuracy")].iloc[0]
    se = (aug["diff_high"] - aug["diff_low"]) / 3.92
    half = 1.96 * np.sqrt((se ** 2).sum()) / len(aug)
    assert row["pairs"] == len(aug) == 2  # A -> B, A -> C
    assert row["mean_diff"] == pytest.approx(aug["diff"].mean(), abs=1e-12)
    assert row["diff_low"] == pytest.approx(aug["diff"].mean() - half, abs=1e-12)
    assert row["pairs_better"] == int((aug["diff"] > 0).sum())
    real = s[(s["setting"] == "cross") & (s["method"] == "real")
             & (s["metric"] == "accuracy")].iloc[0]
    assert real["pairs"] == 4  # every ordered pair of A, B, C whose training site ran
    assert real["mean"] == pytest.approx(acc[acc["method"] == "real"]["value"].mean())
    within = s[(s["setting"] == "within") & (s["method"] == "real")
               & (s["metric"] == "accuracy")].iloc[0]
    assert within["pairs"] == 2
    regions = site_run["summary"]["regions"].set_index(["train_site", "method"])
    assert (regions["hits"] == 2).all()  # the two planted structures are the top 2
    assert {"expected", "p", "precision"} <= set(regions.columns)


def test_fidelity_rows_from_a_summary(site_run, tmp_path):
    out = tmp_path / "results" / "diagnosis" / "dx"
    out.mkdir(parents=True)
    s = site_run["summary"]["summary"].copy()
    s.insert(0, "analysis", "dx")
    save_tsv(s, out / "summary.tsv")
    regions = site_run["summary"]["regions"].copy()
    regions.insert(0, "analysis", "dx")
    save_tsv(regions, out / "regions.tsv")
    rec = fidelity_table(tmp_path / "results")
    rows = rec[rec["claim_id"].str.startswith("diagnosis.")].set_index("claim_id")
    assert set(rows.index) == {"diagnosis.within_baseline", "diagnosis.cross_site_gain",
                               "diagnosis.harmonized_gain", "diagnosis.combined_gain",
                               "diagnosis.pairs_improved", "diagnosis.shap_regions"}
    # the real-only models' top regions: pooled hits over slots, minus chance, exact CI
    real = regions[regions["method"] == "real"]
    hits, slots = int(real["hits"].sum()), int(real["k"].sum())
    chance = float((real["expected"] / real["k"]).mean())
    shap = rows.loc["diagnosis.shap_regions"]
    assert shap["measured"] == pytest.approx(100 * (hits / slots - chance))
    assert shap["ci_low"] < shap["measured"] <= shap["ci_high"]
    assert shap["verdict"] == "met"  # the two planted structures lead every ranking
    assert shap["n"] == slots
    aug = s[(s["setting"] == "cross") & (s["method"] == "augmented")
            & (s["metric"] == "accuracy")].iloc[0]
    gain = rows.loc["diagnosis.cross_site_gain"]
    assert gain["measured"] == pytest.approx(100 * aug["mean_diff"])
    assert gain["ci_low"] == pytest.approx(100 * aug["diff_low"])
    assert gain["verdict"] == ("met" if aug["diff_low"] > 0 else "not met")
    pairs = rows.loc["diagnosis.pairs_improved"]
    assert pairs["measured"] == pytest.approx(100 * aug["pairs_better"] / aug["pairs"])
    assert pairs["ci_low"] <= pairs["measured"] <= pairs["ci_high"]
    assert rows.loc["diagnosis.within_baseline", "subject"] == "dx"
    # no summary at all: one "not measured" row per claim naming the file
    empty = fidelity_table(tmp_path / "nothing")
    miss = empty[empty["claim_id"].str.startswith("diagnosis.")]
    assert len(miss) == 6 and (miss["verdict"] == "not measured").all()
    assert miss["source"].str.contains("summary.tsv|regions.tsv").all()


# --------------------------------------------------------------------------------------------
# Bad inputs (issue 29 item 6): what a researcher hits, as one line


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def _cohort(levels=LEVELS, per_level=6, sites=("A", "B")) -> SimpleNamespace:
    rows = [{"participant_id": f"sub-{s}{lv}{i}", "site": s, "diagnosis": lv, "age": 40.0 + i,
             "sex": "MF"[i % 2]} for s in sites for lv in levels for i in range(per_level)]
    return SimpleNamespace(name="c", modalities=["T1w"], table=pd.DataFrame(rows),
                           spec={"modalities": ["T1w"], "diagnosis_levels": list(levels)},
                           sites=sorted(sites), site_label=lambda s: s)


def _plan(cohort: SimpleNamespace, finetunes=None):
    """The parse-time chain of rules/common.smk: the fine-tunes, then the diagnosis plan."""
    cfg = {"seed": 0, "finetune": {"tasks": {"dx": {
               "cohort": "c", "conditions": ["diagnosis"], "per_site": True, "split": "train",
               "sites": ["A"]}}},
           "diagnosis": {"ratios": [0.0, 1.0], "analyses": {"dx": {"finetune": "dx"}}}}
    finetunes = finetunes or plan_finetunes(cfg, {"c": cohort}, "pop")
    return plan_diagnosis(cfg, {"c": cohort}, finetunes), finetunes


def _drop(cohort: SimpleNamespace, site: str, level: str, keep: int = 0) -> SimpleNamespace:
    t = cohort.table
    rows = t.index[(t["site"] == site) & (t["diagnosis"] == level)][keep:]
    cohort.table = t.drop(index=rows).reset_index(drop=True)
    return cohort


SPLIT_FAILS = "config: 'finetune.tasks.dx.split' is 'train', but the cohort's 3:1:1 split fails: "


def test_a_training_site_with_one_class_stops_the_plan():
    plan, _ = _plan(_cohort())  # valid: every site trains, A (fine-tuned) with a pool
    assert [(j.site, bool(j.model)) for j in plan.values()] == [("A", True), ("B", False)]
    with pytest.raises(GenbrainInputError) as err:  # B is not fine-tuned, still a training site
        _plan(_drop(_cohort(), "B", "SCZ"))
    assert _one_line(err) == (SPLIT_FAILS + "cohort 'c': site 'B' has one class only ('CN'); "
                              "a classifier needs ['CN', 'SCZ']")


def test_a_class_too_small_for_the_split_stops_the_plan():
    with pytest.raises(GenbrainInputError) as err:
        _plan(_drop(_cohort(), "B", "SCZ", keep=2))
    assert _one_line(err) == (SPLIT_FAILS + "cohort 'c': site 'B' has 2 'SCZ' subject(s); the "
                              "3:1:1 split needs at least 3 per level (one in each split)")
    plan, _ = _plan(_drop(_cohort(), "B", "SCZ", keep=3))  # one in each split is enough
    assert plan["dx/B"].n_train == 4 + 1


def test_a_three_class_level_missing_at_a_site_stops_the_plan():
    three = ("CN", "MCI", "AD")
    plan, _ = _plan(_cohort(three))
    assert plan["dx/A"].levels == three
    with pytest.raises(GenbrainInputError) as err:
        _plan(_drop(_cohort(three), "B", "MCI"))
    assert _one_line(err) == (SPLIT_FAILS + "cohort 'c': site 'B' lacks diagnosis level(s) "
                              "['MCI']; the 3-class task needs every level at every site")


def test_the_diagnosis_plan_checks_the_split_itself():
    """Fine-tunes planned on a table that has since lost a class: the diagnosis plan's own
    split names its analysis."""
    _, finetunes = _plan(_cohort())
    with pytest.raises(GenbrainInputError) as err:
        _plan(_drop(_cohort(), "B", "SCZ"), finetunes)
    assert _one_line(err) == ("config: 'diagnosis.analyses.dx': cohort 'c': site 'B' has one "
                              "class only ('CN'); a classifier needs ['CN', 'SCZ']")


def test_a_researchers_volume_table_with_a_missing_structure_or_a_bad_volume(tmp_path):
    """A table written over results/volumes/<cohort>/site-<site>.csv is read by the sweep."""
    part, split, tables = _real(sizes={"A": 20, "B": 20})
    save_tsv(part, tmp_path / "participants.tsv")
    save_tsv(split, tmp_path / "split.tsv")
    paths = []
    for site, t in zip(("A", "B"), tables):
        t = t.rename(columns={"participant_id": vol.ID_COLUMN})
        t[vol.ID_COLUMN] = "/data/" + t[vol.ID_COLUMN] + "_T1w.nii.gz"
        paths.append(tmp_path / f"site-{site}.csv")
        t.to_csv(paths[-1], index=False)
    n_train = int(((split["site"] == "A") & (split["split"] == "train")).sum())
    job = _job(n_train=n_train, model="", n_pool=0)

    def sweep_inputs(a_table):
        return dx.sweep_inputs(job, [str(a_table), str(paths[1])],
                               str(tmp_path / "participants.tsv"), str(tmp_path / "split.tsv"))

    features, _ = sweep_inputs(paths[0])
    assert len(features) == 40 and set(FEATS) <= set(features.columns)
    a = pd.read_csv(paths[0])
    a.drop(columns=["Left-Hippocampus(17)"]).to_csv(tmp_path / "miss.csv", index=False)
    with pytest.raises(GenbrainInputError) as err:
        sweep_inputs(tmp_path / "miss.csv")
    assert _one_line(err) == (f"{tmp_path / 'miss.csv'}: missing 1 structure column(s), e.g. "
                              "['Left-Hippocampus(17)'] (expected mri_WMHsynthseg --csv_vols "
                              "columns)")
    for value, shown in ((0.0, "0"), (-12.5, "-12.5")):
        bad = a.copy()
        bad.loc[3, "Left-Thalamus(10)"] = value
        bad.to_csv(tmp_path / "bad.csv", index=False)
        with pytest.raises(GenbrainInputError) as err:
            sweep_inputs(tmp_path / "bad.csv")
        assert _one_line(err) == (f"{tmp_path / 'bad.csv'}: row 4 ('/data/sub-A003_T1w.nii.gz'), "
                                  f"column 'Left-Thalamus(10)': volume {shown}; expected a "
                                  "positive number of mm^3")
