"""The fidelity record (genbrain.fidelity): values, CIs and verdicts read from result files in
the formats the evaluation writes (made by the real writers where practical), missing files,
the registry, and the markdown/TSV/RST outputs."""

import math

import numpy as np
import pandas as pd
import pytest
from docutils.core import publish_doctree
from docutils.nodes import row as rst_row
from scipy import stats

from genbrain import fidelity
from genbrain.audit import memorisation_audit, privacy_gate
from genbrain.fidelity import (
    COLUMNS,
    Claim,
    Goal,
    fidelity_rst,
    fidelity_table,
    read_result,
    register,
    t_interval,
    write_fidelity,
)
from genbrain.io import read_tsv, save_tsv
from genbrain.stats.similarity import Cohort, similarity_protocol

MODALITIES = ["T1w", "VBM", "FLAIR", "FA", "fc01", "fc02", "fc03", "task_shapes", "task_faces"]


def _similarity_table(rel: dict[tuple[str, str], list[float]], modality: str = "VBM",
                      real_cos: float = 0.5) -> pd.DataFrame:
    """A table with :data:`genbrain.stats.similarity.COLUMNS`, given relative scores (%)."""
    rows = []
    for effect in ("age", "sex"):
        for i in range(3):
            rows.append((modality, effect, "real", i, 15, real_cos, 100.0))
        for kind in ("synthetic", "synthetic_avg"):
            for i, r in enumerate(rel[(effect, kind)]):
                rows.append((modality, effect, kind, i, 15, r / 100 * real_cos, r))
    return pd.DataFrame(rows, columns=["modality", "effect", "kind", "replicate", "n",
                                       "cosine", "relative_to_real"])


def _samples_table(r_syn: list[float]) -> pd.DataFrame:
    """The columns of :func:`genbrain.pretrain.sample_panel`'s table (one row per modality);
    the real writer needs a trained checkpoint, see test_samples_table_of_the_real_writer."""
    return pd.DataFrame({"modality": MODALITIES[:len(r_syn)], "real": "sub-x", "real_age": 66.0,
                         "synthetic_id": np.arange(len(r_syn)), "r_real": 0.9,
                         "r_synthetic": r_syn})


def _audit(copy: bool) -> pd.DataFrame:
    """A memorisation audit by the real writer: 6 synthetic vs 20 training images of VBM and
    T1w; with ``copy`` the first synthetic image is a training image plus tiny noise."""
    rng = np.random.default_rng(3)
    v = 500
    train = rng.standard_normal((20, v)).astype(np.float32)
    syn = rng.standard_normal((6, v)).astype(np.float32)
    if copy:
        syn[0] = train[4] + 0.01 * rng.standard_normal(v).astype(np.float32)
    mods = ["VBM"] * 3 + ["T1w"] * 3
    syn_t = pd.DataFrame({"modality": mods, "synthetic_id": [f"syn-{i}" for i in range(6)]})
    train_t = pd.DataFrame({"modality": (["VBM"] * 10 + ["T1w"] * 10),
                            "participant_id": [f"sub-{i}" for i in range(20)]})
    return memorisation_audit(syn, train, syn_t, train_t)


def _rows(table: pd.DataFrame, claim_id: str) -> pd.DataFrame:
    return table[table["claim_id"] == claim_id].reset_index(drop=True)


@pytest.fixture
def results(tmp_path):
    """A finished demo's evaluation files (fabricated in the writers' formats)."""
    root = tmp_path / "results"
    rel = {("age", "synthetic"): [50.0, 60.0, 70.0], ("age", "synthetic_avg"): [90, 100, 140],
           ("sex", "synthetic"): [10.0, -20.0, 40.0], ("sex", "synthetic_avg"): [40, 35, 45]}
    save_tsv(_similarity_table(rel), root / fidelity.SIMILARITY_FILE)
    save_tsv(_samples_table([0.80, 0.85, 0.65, 0.9, 0.5, 0.72, 0.7, 0.3, 0.4]),
             root / fidelity.SAMPLES_FILE)
    audit = _audit(copy=False)
    save_tsv(audit, root / fidelity.AUDIT_FILE)
    save_tsv(privacy_gate(audit, 0.95), root / fidelity.GATE_FILE)
    return root


def test_similarity_rows_give_mean_relative_score_t_interval_and_verdict(results):
    table = fidelity_table(results)
    age1 = _rows(table, "similarity.age.single").iloc[0]
    assert age1["subject"] == "VBM" and age1["unit"] == "%" and age1["n"] == 3
    assert age1["measured"] == pytest.approx(60.0)
    lo, hi = stats.t.interval(0.95, 2, loc=60.0, scale=10.0 / math.sqrt(3))
    assert (age1["ci_low"], age1["ci_high"]) == (pytest.approx(lo), pytest.approx(hi))
    assert age1["verdict"] == "met" and age1["goal"] == ">= 60%"  # exactly at the goal
    assert age1["paper"] == "88%"
    avg = _rows(table, "similarity.age.averaged").iloc[0]
    assert avg["measured"] == pytest.approx(110.0) and avg["verdict"] == "met"
    sex1 = _rows(table, "similarity.sex.single").iloc[0]
    assert sex1["measured"] == pytest.approx(10.0) and sex1["verdict"] == "not met"
    assert sex1["ci_low"] < 0 < sex1["ci_high"]
    assert "cosine 0.050 vs real 0.500" in sex1["note"]
    assert str(results / fidelity.SIMILARITY_FILE) == sex1["source"]


def test_similarity_of_the_real_protocol_table(tmp_path):
    """The table similarity_protocol writes, read back from TSV: the record's value is the
    mean of relative_to_real over replicates (mean synthetic / mean real cosine)."""
    rng = np.random.default_rng(0)
    n, v = 12, 300
    age = rng.uniform(40, 80, 60)
    sex = np.where(rng.random(60) < 0.5, "M", "F")
    effect = np.linspace(-1, 1, v)
    x = (age[:, None] - 60) / 10 * effect + rng.standard_normal((60, v))
    cov = pd.DataFrame({"age": age, "sex": sex})
    ref = Cohort.of(x[:24], cov.iloc[:24])
    reals = [Cohort.of(x[24 + n * i:24 + n * (i + 1)], cov.iloc[24 + n * i:24 + n * (i + 1)])
             for i in range(3)]
    noisy = [Cohort.of(c.images.read(slice(None), slice(None)) + 2 * rng.standard_normal((n, v)),
                       c.covariates) for c in reals]
    table = similarity_protocol("VBM", ref, reals, noisy, [], n=n, n_cohorts=3)
    save_tsv(table, tmp_path / fidelity.SIMILARITY_FILE)
    got = _rows(fidelity_table(tmp_path), "similarity.age.single").iloc[0]
    syn = table[(table["effect"] == "age") & (table["kind"] == "synthetic")]
    real = table[(table["effect"] == "age") & (table["kind"] == "real")]
    assert got["measured"] == pytest.approx(100 * syn["cosine"].mean() / real["cosine"].mean())
    assert got["measured"] < 100  # added noise weakens the age map
    # no k-averaged cohorts in this table: that claim is not measured, naming the rows
    avg = _rows(fidelity_table(tmp_path), "similarity.age.averaged").iloc[0]
    assert avg["verdict"] == "not measured" and "no age/synthetic_avg rows" in avg["note"]


def test_realism_rows_per_modality_without_ci_for_one_sample(results):
    rows = _rows(fidelity_table(results), "realism").set_index("subject")
    assert list(rows.index) == MODALITIES
    assert rows.loc["T1w", "measured"] == pytest.approx(0.80)
    assert rows.loc["FLAIR", "verdict"] == "not met" and rows.loc["fc02", "verdict"] == "met"
    assert rows.loc["task_shapes", "verdict"] == "not met"
    assert rows.loc["fc03", "verdict"] == "met"  # 0.70: exactly at the goal
    assert math.isnan(rows.loc["VBM", "ci_low"]) and rows.loc["VBM", "ci_method"] == "one sample"
    assert rows.loc["VBM", "note"] == "real image r 0.90"


def test_realism_with_several_samples_has_a_t_interval_and_names_absent_modalities(tmp_path):
    t = pd.concat([_samples_table([0.6, 0.8]), _samples_table([0.7, 0.9]),
                   _samples_table([0.8, 0.7])])
    save_tsv(t, tmp_path / fidelity.SAMPLES_FILE)
    rows = _rows(fidelity_table(tmp_path), "realism").set_index("subject")
    m, lo, hi = t_interval([0.6, 0.7, 0.8])
    assert rows.loc["T1w", "measured"] == pytest.approx(0.7) == pytest.approx(m)
    assert (rows.loc["T1w", "ci_low"], rows.loc["T1w", "ci_high"]) == (pytest.approx(lo),
                                                                         pytest.approx(hi))
    assert lo == pytest.approx(0.7 - stats.t.ppf(0.975, 2) * 0.1 / math.sqrt(3))
    assert rows.loc["T1w", "ci_method"] == "t, 3 samples"
    # FLAIR, FA, the fc and task maps are required but absent
    for want in ("FLAIR", "FA", "fc*", "task*"):
        assert rows.loc[want, "verdict"] == "not measured"
    assert "VBM" in rows.index and rows.loc["VBM", "verdict"] == "met"


def test_memorisation_passes_below_the_gate_and_fails_on_a_planted_copy(results, tmp_path):
    row = _rows(fidelity_table(results), "memorisation").iloc[0]
    audit = read_tsv(results / fidelity.AUDIT_FILE)
    assert row["measured"] == pytest.approx(audit["max_r"].max())
    assert row["measured"] < 0.5 and row["verdict"] == "met" and row["n"] == 6
    assert row["goal"] == "<= 0.95" and math.isnan(row["ci_low"])
    assert "0 of 6 images above 0.95" in row["note"]
    # a copy: the gate would stop the release (no gate table), the audit shows it
    save_tsv(_audit(copy=True), tmp_path / fidelity.AUDIT_FILE)
    row = _rows(fidelity_table(tmp_path), "memorisation").iloc[0]
    assert row["measured"] > 0.99 and row["verdict"] == "not met"
    assert "1 of 6 images above 0.95" in row["note"]


def test_memorisation_from_the_gate_alone_uses_its_threshold(tmp_path):
    save_tsv(privacy_gate(_audit(copy=False), 0.4), tmp_path / fidelity.GATE_FILE)
    row = _rows(fidelity_table(tmp_path), "memorisation").iloc[0]
    assert row["goal"] == "<= 0.40" and row["verdict"] == "met"
    assert row["source"].endswith("pretrain_gate.tsv") and "audit table absent" in row["note"]


def test_missing_files_give_not_measured_rows_naming_them(tmp_path):
    table = fidelity_table(tmp_path)  # an empty results folder: no crash
    assert list(table.columns) == COLUMNS
    assert set(table["verdict"]) == {"not measured"}
    assert set(table["claim_id"]) == set(fidelity.REGISTRY)
    src = dict(zip(table["claim_id"], table["source"]))
    assert src["similarity.sex.averaged"] == str(tmp_path / fidelity.SIMILARITY_FILE)
    assert src["realism"] == str(tmp_path / fidelity.SAMPLES_FILE)
    assert str(tmp_path / fidelity.AUDIT_FILE) in src["memorisation"]
    assert str(tmp_path / fidelity.GATE_FILE) in src["memorisation"]
    assert (table["note"] == "not found").all()
    # a file without the expected columns: not measured, saying which
    save_tsv(pd.DataFrame({"modality": ["T1w"]}), tmp_path / fidelity.SAMPLES_FILE)
    row = _rows(fidelity_table(tmp_path), "realism").iloc[0]
    assert row["verdict"] == "not measured" and "no column(s) ['r_synthetic', 'r_real']" in row[
        "note"]


def test_a_later_stage_adds_rows_by_registering_a_collector(results):
    registry = dict(fidelity.REGISTRY)
    claim = Claim("bwas.dice", "BWAS map Dice with the reference", "0.8", Goal(">=", 0.5))

    @register(claim, registry)
    def _bwas(res):
        t = read_result(res, "bwas/overlap.tsv", ("site", "dice"))
        return [claim.measured(d, s, source="bwas") for s, d in zip(t["site"], t["dice"])]

    with pytest.raises(ValueError, match="already registered"):
        register(claim, registry)(_bwas)
    assert "bwas.dice" not in fidelity.REGISTRY  # the module's registry is untouched
    table = fidelity_table(results, registry)
    assert _rows(table, "bwas.dice")["verdict"].tolist() == ["not measured"]
    save_tsv(pd.DataFrame({"site": ["a", "b"], "dice": [0.7, 0.3]}), results / "bwas/overlap.tsv")
    rows = _rows(fidelity_table(results, registry), "bwas.dice")
    assert rows["verdict"].tolist() == ["met", "not met"]
    assert table["claim_id"].iloc[-1] == "bwas.dice"  # after the claims registered before


def test_non_finite_value_is_not_measured():
    claim = Claim("x", "x", "-", Goal("<=", 1.0))
    assert claim.measured(float("nan"), source="f.tsv").verdict == "not measured"
    assert claim.measured(1.0).verdict == "met" and claim.measured(1.01).verdict == "not met"
    with pytest.raises(ValueError, match="operator"):
        Goal("==", 1.0)
    with pytest.raises(ValueError, match="'on'"):
        Goal(">", 0.0, on="mean")


def test_a_goal_on_the_ci_judges_its_lower_end():
    claim = Claim("gain", "a gain", "-", Goal(">", 0.0, on="ci_low"))
    assert str(claim.goal) == "95% CI > 0.00"
    assert claim.measured(0.2, ci=(0.05, 0.3)).verdict == "met"
    assert claim.measured(0.2, ci=(-0.01, 0.3)).verdict == "not met"  # the point is > 0
    assert claim.measured(0.2).verdict == "not met"  # no CI: the goal cannot be shown
    assert claim.measured(0.0, ci=(0.0, 0.1)).verdict == "not met"  # strictly above


def test_a_goal_below_a_value_on_the_ci_judges_its_upper_end():
    # "augmentation lowers the error": a point estimate below 0 whose CI spans 0 is not shown
    claim = Claim("change", "an error change", "-", Goal("<", 0.0, on="ci_high"))
    assert str(claim.goal) == "95% CI < 0.00"
    assert claim.measured(-0.3, ci=(-0.5, -0.1)).verdict == "met"
    assert claim.measured(-0.35, ci=(-1.19, 0.50)).verdict == "not met"
    assert claim.measured(-0.3).verdict == "not met"  # no CI: the goal cannot be shown


def test_written_markdown_tsv_and_rst(results, tmp_path):
    md = tmp_path / "docs" / "fidelity.md"
    table = write_fidelity(results, md)
    back = read_tsv(results / "fidelity.tsv")
    assert list(back.columns) == COLUMNS and len(back) == len(table)
    np.testing.assert_allclose(back["measured"], table["measured"])
    text = md.read_text()
    assert "| claim | paper | our goal | measured | 95% CI | verdict |" in text
    age = ("| age t-map similarity of cohorts of single synthetic samples, relative to real "
           "cohorts (VBM) | 88% | >= 60% | 60% | 35% to 85% (t, 3 replicates) | met |")
    assert age in text
    assert "| 0.65 | n/a (one sample) | not met |" in text  # FLAIR realism
    n_rows = len(table)
    assert text.count("\n| ") == n_rows + 2  # header, separator, one line per row
    doc = publish_doctree(fidelity_rst(table), settings_overrides={"report_level": 2,
                                                                    "halt_level": 2})
    rows = list(doc.findall(rst_row))
    assert len(rows) == n_rows + 1
    assert "35% to 85% (t, 3 replicates)" in rows[1].astext()


def test_command_line(results, tmp_path, capsys):
    out = tmp_path / "f.md"
    fidelity.main(["--results", str(results), "--out", str(out)])
    assert out.exists() and (results / "fidelity.tsv").exists()
    assert "rows (" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        fidelity.main(["--results", str(tmp_path / "nothing"), "--out", str(out)])
    assert err.value.code == 1
    assert "no such results folder" in capsys.readouterr().err


def test_fine_tune_direction_rows_come_from_each_fine_tunes_checks(tmp_path):
    import pandas as pd

    from genbrain.fidelity import FINETUNE_DIRECTION, fidelity_table
    from genbrain.finetune import write_checks

    checks = pd.DataFrame({"check": ["loss_start", "disease_effect_vs_truth",
                                     "disease_site_vs_truth"],
                           "modality": ["", "VBM", "VBM"], "value": [0.5, 0.42, 0.31],
                           "detail": ["", "", ""]})
    out = tmp_path / "finetune" / "scz" / "siteA"
    out.mkdir(parents=True)
    write_checks(checks, {"task": "scz", "unit": "siteA"}, out / "checks.tsv")
    rows = fidelity_table(tmp_path)
    rows = rows[rows["claim_id"] == FINETUNE_DIRECTION.id]
    assert rows["subject"].tolist() == ["scz/siteA VBM"]
    assert rows["measured"].tolist() == [0.42] and rows["verdict"].tolist() == ["met"]
    assert "own map: r 0.31" in rows["note"].item()
    empty = fidelity_table(tmp_path / "none")
    assert empty.loc[empty["claim_id"] == FINETUNE_DIRECTION.id, "verdict"].item() == \
        "not measured"


def test_paired_sample_rows_come_from_each_fine_tunes_checks(tmp_path):
    import pandas as pd

    from genbrain.fidelity import FINETUNE_PAIRED, fidelity_table
    from genbrain.finetune import write_checks

    def checks(rows):
        return pd.DataFrame(rows, columns=["check", "method", "modality", "contrast", "value",
                                           "detail"]).assign(detail="")

    tables = {
        "scz/siteA": checks([
            ("loss_start", "training", "", "", 0.5, ""),
            ("disease_effect_vs_truth", "one-step", "VBM", "SCZ minus CN", 0.19, ""),
            ("disease_site_vs_truth", "one-step", "VBM", "SCZ minus CN", 0.34, ""),
            ("disease_sample_vs_site", "paired-sample", "VBM", "SCZ minus CN", 0.2, ""),
            ("disease_sample_vs_truth", "paired-sample", "VBM", "SCZ minus CN", 0.14, ""),
            ("disease_sample_gain", "paired-sample", "VBM", "SCZ minus CN", 0.04, ""),
            ("disease_site_gain", "paired-sample", "VBM", "SCZ minus CN", 0.78, ""),
            ("age_sample_vs_truth", "paired-sample", "VBM", "age 75 minus 50 years", 0.57, ""),
            ("age_site_vs_truth", "paired-sample", "VBM", "age 75 minus 50 years", 0.6, ""),
            ("age_sample_gain", "paired-sample", "VBM", "age 75 minus 50 years", 0.72, "")]),
        # checks written before the paired-sample check: no rows, no crash
        "scz/siteB": checks([("disease_effect_vs_truth", "one-step", "VBM", "SCZ minus CN",
                              0.2, "")])}
    for name, table in tables.items():
        out = tmp_path / "finetune" / name
        out.mkdir(parents=True)
        task, unit = name.split("/")
        write_checks(table, {"task": task, "unit": unit}, out / "checks.tsv")
    rows = fidelity_table(tmp_path)
    rows = rows[rows["claim_id"] == FINETUNE_PAIRED.id].set_index("subject")
    assert sorted(rows.index) == ["scz/siteA VBM SCZ minus CN",
                                  "scz/siteA VBM age 75 minus 50 years"]
    disease, age = rows.loc["scz/siteA VBM SCZ minus CN"], rows.loc[
        "scz/siteA VBM age 75 minus 50 years"]
    assert (disease["measured"], disease["verdict"]) == (0.04, "not met")
    assert (age["measured"], age["verdict"]) == (0.72, "met")
    assert disease["goal"] == ">= 0.50" and "not in the paper" in disease["paper"]
    assert "r with the truth 0.14 (the training set's own map: 0.34)" in disease["note"]
    assert "own data: gain 0.78" in disease["note"] and "own data" not in age["note"]
    assert "one-step check's r with the truth 0.19" in disease["note"]
    assert "one-step" not in age["note"] and "own map: 0.60" in age["note"]
    # no paired-sample rows anywhere: the claim is not measured, naming why
    (tmp_path / "finetune" / "scz" / "siteA" / "checks.tsv").unlink()
    rows = fidelity_table(tmp_path)
    row = rows[rows["claim_id"] == FINETUNE_PAIRED.id]
    assert row["verdict"].item() == "not measured" and "paired_samples" in row["note"].item()
