"""The clinical stage's fidelity rows: read from the summary's comparison table, the
real-only r and the changes at the chosen ratio with CIs, a chosen ratio of 0 reported as not
met with its reason, a missing table as not measured; the pool's score gain read from the
fine-tune's checks the comparison names."""

import numpy as np
import pandas as pd
import pytest

from genbrain.clinical.sweep import summarise_sweep
from genbrain.fidelity import REGISTRY, fidelity_table
from genbrain.io import save_tsv

CLAIMS = ("clinical.real_only_r", "clinical.mae_change", "clinical.r_change")


def sweep(gain: float) -> pd.DataFrame:
    """Two ratios x 3 seeds; at ratio 1 validation and test MAE drop by ``gain``."""
    rng = np.random.default_rng(0)
    rows = []
    for ratio in (0.0, 1.0):
        for seed in range(3):
            e = rng.normal(0, 0.05, 4)
            rows.append({"ratio": ratio, "seed": seed, "val_mae": 6.0 - gain * ratio + e[0],
                         "val_r": 0.3 + e[1], "test_mae": 6.0 - gain * ratio + e[2],
                         "test_r": 0.3 + 0.1 * gain * ratio + e[3]})
    return pd.DataFrame(rows)


def record(tmp_path, gain, claims=CLAIMS, model="stroke/all"):
    out = tmp_path / "clinical" / "stroke"
    out.mkdir(parents=True)
    comparison = summarise_sweep(sweep(gain)).comparison
    if model:  # as clinical.plan.summary_outputs writes it
        comparison = comparison.assign(model=model, score="nihss", modality="ADC")
    save_tsv(comparison, out / "comparison.tsv")
    reg = {k: REGISTRY[k] for k in claims}
    return fidelity_table(tmp_path, reg).set_index("claim_id")


def test_the_rows_carry_the_values_their_cis_and_the_papers_numbers(tmp_path):
    t = record(tmp_path, gain=1.0)
    mae = t.loc["clinical.mae_change"]
    assert mae["verdict"] == "met" and mae["measured"] == pytest.approx(-1.0, abs=0.1)
    assert mae["ci_low"] < mae["measured"] < mae["ci_high"] and mae["subject"] == "stroke"
    assert "5.88 -> 5.29" in mae["paper"] and "chosen 1:1" in mae["note"]
    assert t.loc["clinical.r_change", "verdict"] == "met"
    base = t.loc["clinical.real_only_r"]
    assert base["verdict"] == "met" and base["measured"] == pytest.approx(0.3, abs=0.1)
    assert base["n"] == 3 and "test MAE at ratio 0" in base["note"]


def test_a_chosen_ratio_of_zero_is_not_met_and_says_why(tmp_path):
    t = record(tmp_path, gain=-1.0)  # augmentation raises the validation MAE
    for claim in ("clinical.mae_change", "clinical.r_change"):
        assert t.loc[claim, "verdict"] == "not met" and t.loc[claim, "measured"] == 0
        assert t.loc[claim, "note"].startswith("the chosen ratio is 0")


def test_a_missing_table_is_not_measured(tmp_path):
    t = fidelity_table(tmp_path, {k: REGISTRY[k] for k in CLAIMS})
    assert set(t["verdict"]) == {"not measured"} and len(t) == 3


def fine_tune_checks(tmp_path, model, gain):
    """A score-conditioned fine-tune's checks.tsv with a paired-sample score gain on ADC (and
    one on T1w, and an age gain, that the pool's row must not read)."""
    from genbrain.finetune import write_checks

    k = "nihss +1 SD minus -1 SD"  # the score head's label is "score", its contrast the column
    table = pd.DataFrame([
        ("score_sample_gain", "paired-sample", "ADC", k, gain),
        ("score_site_gain", "paired-sample", "ADC", k, 1.51),
        ("score_sample_vs_truth", "paired-sample", "ADC", k, 0.62),
        ("score_site_vs_truth", "paired-sample", "ADC", k, 0.58),
        ("score_sample_vs_site", "paired-sample", "ADC", k, 0.4),
        ("score_sample_gain", "paired-sample", "T1w", k, 9.0),
        ("age_sample_gain", "paired-sample", "ADC", "age 75 minus 50 years", 8.0)],
        columns=["check", "method", "modality", "contrast", "value"]).assign(detail="")
    out = tmp_path / "finetune" / model
    out.mkdir(parents=True)
    task, unit = model.split("/")
    write_checks(table, {"task": task, "unit": unit}, out / "checks.tsv")


@pytest.mark.parametrize(("gain", "verdict"), [(1.57, "met"), (0.2, "not met")])
def test_the_pool_row_reads_the_score_gain_of_the_fine_tune_the_comparison_names(
        tmp_path, gain, verdict):
    fine_tune_checks(tmp_path, "stroke/all", gain)
    fine_tune_checks(tmp_path, "other/all", 5.0)  # another fine-tune: not this pool's
    row = record(tmp_path, 1.0, ("clinical.pool_score_gain",)).loc["clinical.pool_score_gain"]
    assert (row["measured"], row["verdict"]) == (gain, verdict)
    assert row["subject"] == "stroke ADC" and row["goal"] == ">= 0.50" and row["paper"] == "-"
    assert row["source"].endswith("finetune/stroke/all/checks.tsv")
    assert row["note"].startswith("fine-tune stroke/all, nihss +1 SD minus -1 SD; the training "
                                  "set's own data: gain 1.51; r with the truth 0.62")


def test_the_pool_row_without_its_checks_or_model_is_not_measured(tmp_path):
    t = record(tmp_path, 1.0, ("clinical.pool_score_gain",))  # no fine-tune checks
    row = t.loc["clinical.pool_score_gain"]
    assert row["verdict"] == "not measured"
    assert row["source"].endswith("finetune/stroke/all/checks.tsv")
    old = record(tmp_path / "old", 1.0, ("clinical.pool_score_gain",), model=None)
    row = old.loc["clinical.pool_score_gain"]
    assert row["verdict"] == "not measured" and "rerun clinical_summary" in row["note"]
