"""ComBat baseline: fitted with age and sex only (never the diagnosis), site differences shrink,
the training site stays as it is, bad inputs."""

from __future__ import annotations

import neuroCombat
import numpy as np
import pandas as pd
import pytest

from genbrain.diagnosis import harmonize as hz
from genbrain.errors import GenbrainInputError

FEATS = [f"v{i}" for i in range(6)]


def _site(n: int, shift: float, scale: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 70, n)
    diag = np.where(np.arange(n) % 3 == 0, "SCZ", "CN")
    # the site adds an offset and scales the residual noise (not the age effect)
    x = 1000 + 5 * age[:, None] + scale * rng.normal(0, 30, (n, len(FEATS))) + shift
    x[diag == "SCZ"] -= 40
    df = pd.DataFrame(x, columns=FEATS)
    return df.assign(age=age, sex=rng.choice(["M", "F"], n), diagnosis=diag)


def test_combat_never_sees_the_diagnosis(monkeypatch):
    seen = []
    real = neuroCombat.neuroCombat

    def spy(**kwargs):
        seen.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(neuroCombat, "neuroCombat", spy)
    train, target = _site(60, 0, 1.0, 0), _site(80, 300, 1.3, 1)
    hz.combat_pair(train, target, FEATS, "A", "B")
    (call,) = seen
    assert list(call["covars"].columns) == ["batch", "age", "sex"]
    assert call["categorical_cols"] == ["sex"] and call["continuous_cols"] == ["age"]
    assert call["dat"].shape == (len(FEATS), 140)  # features x samples
    assert "diagnosis" not in " ".join(map(str, call.values()))


def test_site_differences_shrink_and_the_training_site_is_the_reference():
    train, target = _site(60, 0, 1.0, 0), _site(80, 300, 2.0, 1)
    out = hz.combat_pair(train, target, FEATS, "A", "B")
    before = np.abs(target[FEATS].mean() - train[FEATS].mean())
    after = np.abs(out[FEATS].mean() - train[FEATS].mean())
    assert (after < 0.15 * before).all()
    def resid_sd(df):
        design = np.c_[np.ones(len(df)), df["age"], df["diagnosis"] == "SCZ"]
        y = df[FEATS].to_numpy()
        return (y - design @ np.linalg.lstsq(design, y, rcond=None)[0]).std(axis=0)

    assert (resid_sd(target) / resid_sd(train) > 1.6).all()
    assert (np.abs(resid_sd(out) / resid_sd(train) - 1) < 0.25).all()  # the 2x scale removed
    assert list(out.columns) == list(target.columns)
    pd.testing.assert_frame_equal(out.drop(columns=FEATS), target.drop(columns=FEATS))
    # the diagnosis effect within the target survives harmonisation
    d = out.groupby("diagnosis")[FEATS].mean()
    assert ((d.loc["CN"] - d.loc["SCZ"]) > 20).all()


def test_combat_bad_inputs():
    train, target = _site(30, 0, 1.0, 0), _site(30, 10, 1.0, 1)
    with pytest.raises(GenbrainInputError, match=r"site 'A': ComBat needs column\(s\) \['age'\]"):
        hz.combat_pair(train.drop(columns="age"), target, FEATS, "A", "B")
    with pytest.raises(GenbrainInputError, match="at least 2 subjects"):
        hz.combat_pair(train, target.iloc[:1], FEATS, "A", "B")
    target.loc[3, "sex"] = np.nan
    with pytest.raises(GenbrainInputError, match="missing age or sex"):
        hz.combat_pair(train, target, FEATS, "A", "B")
