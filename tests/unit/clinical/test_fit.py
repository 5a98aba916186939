"""The clinical-score regressor's fit: learning a planted score, the epoch chosen by
validation MAE, bitwise resume of a killed fit."""

import os

import numpy as np
import pandas as pd
import pytest
import torch

from genbrain.clinical.data import CropVolumes, split_images
from genbrain.clinical.fit import fit, predict
from genbrain.errors import GenbrainInputError
from genbrain.splits import score_split
from genbrain.stats.correlation import pearson
from tests.unit.clinical.conftest import CROP, MAX, cfg, make_store, one_line


def test_regressor_learns_a_planted_linear_score(tmp_path, space, caplog):
    store = make_store(tmp_path / "s", space, 80, seed=1)
    split = score_split(store.table, "score", seed=0, score_max=MAX)
    assert split["split"].value_counts().to_dict() == {"train": 48, "val": 16, "test": 16}
    parts = split_images(store, split, cfg())
    with caplog.at_level("INFO", logger="genbrain.clinical.fit"):
        result = fit(cfg(epochs=10, lr=3e-3), parts["train"], parts["val"], tmp_path / "run",
                     space=space)
    pred = predict(result.model, parts["test"], CropVolumes(CROP, space=space))
    y = parts["test"].y
    baseline = np.mean(np.abs(y - parts["train"].y.mean()))  # predict the training mean
    assert np.mean(np.abs(pred - y)) < 0.4 * baseline  # seeds and data seeds: 0.07-0.24
    assert pearson(pred, y) > 0.9
    assert ((pred >= 0) & (pred <= MAX)).all()  # sigmoid x score_max
    # The chosen epoch is the one of lowest validation MAE, and the progress lines say so.
    h = result.history
    assert len(h) == 10 and result.chosen_epoch == int(h["epoch"][h["val_mae"].idxmin()])
    assert result.val_mae == h["val_mae"].min()
    lines = [r.getMessage() for r in caplog.records if "val MAE" in r.getMessage()]
    assert len(lines) == 10 and lines[-1].startswith("epoch 10/10  train loss ")
    assert "ETA 0:00:00" in lines[-1]


class Killed(Exception):
    pass


def test_killed_and_rerun_fit_equals_an_uninterrupted_one_bitwise(tmp_path, space):
    store = make_store(tmp_path / "s", space, 25, seed=4)
    parts = split_images(store, score_split(store.table, "score", 0, score_max=MAX), cfg())
    c = cfg(epochs=4, batch_size=4, dropout=0.5)  # 15 images: a short last batch, dropout
    rng_before = torch.get_rng_state()
    whole = fit(c, parts["train"], parts["val"], tmp_path / "whole", space=space)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched

    def die(epoch, path):
        if epoch == 2:
            raise Killed
    with pytest.raises(Killed):
        fit(c, parts["train"], parts["val"], tmp_path / "cut", space=space, on_epoch=die)
    (tmp_path / "cut" / ".checkpoint.dead1234.pt").write_bytes(b"half a killed write")
    torch.manual_seed(123)  # a resumed fit must not depend on the global RNG either
    resumed = fit(c, parts["train"], parts["val"], tmp_path / "cut", space=space)
    assert os.listdir(tmp_path / "cut") == ["checkpoint.pt"]  # the stale temporary file went
    a = torch.load(whole.checkpoint, weights_only=True)
    b = torch.load(resumed.checkpoint, weights_only=True)
    for key in ("model", "best_model"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    cols = ["epoch", "train_loss", "val_mae", "val_r"]
    pd.testing.assert_frame_equal(resumed.history[cols], whole.history[cols])
    assert resumed.chosen_epoch == whole.chosen_epoch
    # a finished fit returns at once and leaves its checkpoint alone
    before = whole.checkpoint.read_bytes()
    assert fit(c, parts["train"], parts["val"], tmp_path / "whole",
               space=space).chosen_epoch == whole.chosen_epoch
    assert whole.checkpoint.read_bytes() == before
    with pytest.raises(GenbrainInputError, match="config key 'lr'") as err:
        fit(cfg(epochs=4, batch_size=4, dropout=0.5, lr=1e-4), parts["train"], parts["val"],
            tmp_path / "whole", space=space)
    assert "cannot resume" in one_line(err)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(GenbrainInputError, match="junk/checkpoint.pt: not a readable "
                       "regression checkpoint") as err:
        fit(c, parts["train"], parts["val"], tmp_path / "junk", space=space)
    one_line(err)
