"""The clinical stage's fidelity rows: read from the summary's comparison table, the
real-only r and the changes at the chosen ratio with CIs, a chosen ratio of 0 reported as not
met with its reason, a missing table as not measured."""

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


def record(tmp_path, gain):
    out = tmp_path / "clinical" / "stroke"
    out.mkdir(parents=True)
    save_tsv(summarise_sweep(sweep(gain)).comparison, out / "comparison.tsv")
    reg = {k: REGISTRY[k] for k in CLAIMS}
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
