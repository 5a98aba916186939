"""The clinical-score regressor and its augmentation sweep: learning a planted score, the
one-row-per-(ratio, seed) table, validation-only selection and its t-tests, determinism,
bitwise resume, the 3:1:1 split, the synthetic-pool draw, bad inputs and the figures.

Images live on a tiny 16^3 grid (a ball mask of ~1,400 voxels) and the narrow ResNet sees a
14^3 crop, so a fit of a few epochs takes well under a second per epoch on one core."""

from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from genbrain.clinical.figures import pairs_figure, sweep_figure
from genbrain.clinical.regress import (
    PAPER_CROP,
    CropVolumes,
    RegressConfig,
    ScoreImages,
    fit,
    match_pairs,
    n_synthetic,
    predict,
    split_images,
    summarise_sweep,
    sweep_job,
    synthetic_rows,
)
from genbrain.errors import GenbrainInputError
from genbrain.io import save_tsv
from genbrain.space import StandardSpace
from genbrain.splits import score_split
from genbrain.stats.correlation import pearson
from genbrain.store import ImageStore, write_shard
from genbrain.tables import check_scores

SHAPE = (16, 16, 16)
CROP = ((1, 15), (1, 15), (1, 15))
MAX = 40.0


@pytest.fixture(scope="module")
def space() -> StandardSpace:
    ijk = np.indices(SHAPE) - 7.5
    mask = (ijk ** 2).sum(0) < 7.2 ** 2
    return StandardSpace(shape=SHAPE, affine=np.eye(4), mask=mask)


def planted(space: StandardSpace, scores: np.ndarray, seed: int) -> np.ndarray:
    """(n, V) images: noise plus a Gaussian blob whose amplitude is linear in the score."""
    rng = np.random.default_rng(seed)
    ijk = space.voxel_indices.T.astype(float)  # (V, 3)
    blob = np.exp(-((ijk - [5.0, 8.0, 8.0]) ** 2).sum(1) / (2 * 2.0 ** 2))  # (V,)
    return 0.3 * rng.standard_normal((len(scores), len(blob))) + np.outer(scores / 10.0, blob)


def make_store(root: Path, space: StandardSpace, n: int, seed: int, prefix: str = "sub-",
               scores: np.ndarray | None = None, **columns) -> ImageStore:
    rng = np.random.default_rng(seed + 100)
    scores = rng.uniform(0, MAX, n).round(1) if scores is None else scores
    root.mkdir(parents=True, exist_ok=True)
    write_shard(planted(space, np.nan_to_num(scores), seed), root / "FA.npy", "float32")
    table = {"participant_id": [f"{prefix}{i:03d}" for i in range(n)], "site": "h1",
             "age": rng.uniform(45, 85, n).round(1), "sex": rng.choice(["M", "F"], n),
             "modality": "FA", "modality_index": 34, "shard": "FA.npy", "row": range(n),
             "score": scores, **columns}
    save_tsv(pd.DataFrame(table), root / "index.tsv")
    return ImageStore(root / "index.tsv")


def cfg(**changes) -> RegressConfig:
    base = {"score_max": MAX, "crop": CROP, "epochs": 3, "batch_size": 8, "lr": 1e-3,
            "dropout": 0.0, "eval_batch": 32}
    return RegressConfig(**{**base, **changes})


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


# --------------------------------------------------------------------------------------------


def test_crop_volumes_scatter_equals_volume_slicing(space):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, space.n_voxels)).astype(np.float32)
    vol = space.to_volume(x)[:, 2:14, 3:15, 1:13]  # (3, 12, 12, 12)
    got = CropVolumes(((2, 14), (3, 15), (1, 13)), space=space)(x)
    assert got.shape == (3, 1, 12, 12, 12)
    np.testing.assert_array_equal(got[:, 0].numpy(), vol)
    pooled = CropVolumes(((2, 14), (3, 15), (1, 13)), pool=2, space=space)
    assert pooled.shape == (6, 6, 6)
    np.testing.assert_allclose(pooled(x)[:, 0].numpy(),
                               vol.reshape(3, 6, 2, 6, 2, 6, 2).mean((2, 4, 6)), atol=1e-6)


def test_regressor_learns_a_planted_linear_score(tmp_path, space, caplog):
    store = make_store(tmp_path / "s", space, 80, seed=1)
    split = score_split(store.table, "score", seed=0, score_max=MAX)
    assert split["split"].value_counts().to_dict() == {"train": 48, "val": 16, "test": 16}
    parts = split_images(store, split, cfg())
    with caplog.at_level("INFO", logger="genbrain.clinical.regress"):
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


def test_sweep_table_has_one_row_per_ratio_and_seed_and_repeats_exactly(tmp_path, space):
    store = make_store(tmp_path / "real", space, 25, seed=2)
    pool = ScoreImages.from_store(make_store(tmp_path / "pool", space, 30, seed=3,
                                             prefix="syn-"), "score", MAX)
    parts = split_images(store, score_split(store.table, "score", 0, score_max=MAX), cfg())
    n_train = len(parts["train"])
    jobs = [(r, s) for r in (0.0, 0.5, 1.0) for s in (0, 1)]
    table = pd.concat([sweep_job(cfg(epochs=2), parts, pool, r, s, tmp_path / f"r{r}s{s}",
                                 space=space) for r, s in jobs], ignore_index=True)
    assert len(table) == 6 and not table.duplicated(["ratio", "seed"]).any()
    assert list(zip(table["ratio"], table["seed"])) == jobs
    assert table["n_synthetic"].tolist() == [n_synthetic(r, n_train) for r, _ in jobs]
    assert table["n_real"].eq(n_train).all() and table["chosen_epoch"].between(1, 2).all()
    # the seed changes the run, the same seed repeats it exactly (fresh folder, fresh process
    # state otherwise identical)
    assert table.loc[0, "val_mae"] != table.loc[1, "val_mae"]
    again = sweep_job(cfg(epochs=2), parts, pool, 1.0, 1, tmp_path / "again", space=space)
    pd.testing.assert_frame_equal(again, table.iloc[[5]].reset_index(drop=True))
    summary = summarise_sweep(table)
    assert len(summary.per_ratio) == 3 * 4 and summary.chosen_ratio in (0.0, 0.5, 1.0)


def test_ratio_is_chosen_by_validation_mae_only_and_tested_across_seeds():
    rng = np.random.default_rng(0)
    rows = []
    # validation prefers ratio 1.0, test would prefer 2.0 (a selection peeking at test fails)
    for ratio, val_mae, test_mae, test_r in ((0.0, 6.0, 6.0, 0.30), (1.0, 5.0, 5.5, 0.40),
                                             (2.0, 5.6, 4.0, 0.50)):
        for seed in range(5):
            rows.append({"ratio": ratio, "seed": seed, "val_mae": val_mae + rng.normal(0, .1),
                         "val_r": 0.4, "test_mae": test_mae + rng.normal(0, .2),
                         "test_r": test_r + rng.normal(0, .03)})
    table = pd.DataFrame(rows)
    s = summarise_sweep(table)
    assert s.chosen_ratio == 1.0
    cmp = s.comparison.set_index("metric")
    a = table.loc[table.ratio == 0, "test_mae"].to_numpy()
    b = table.loc[table.ratio == 1.0, "test_mae"].to_numpy()
    welch = stats.ttest_ind(b, a, equal_var=False)
    assert cmp.loc["test_mae", "t"] == pytest.approx(welch.statistic)
    assert cmp.loc["test_mae", "p"] == pytest.approx(welch.pvalue)
    assert cmp.loc["test_mae", "difference"] == pytest.approx(b.mean() - a.mean())
    se = b.std(ddof=1) / np.sqrt(5)
    assert cmp.loc["test_mae", "ci_low_chosen"] == pytest.approx(b.mean() - 1.96 * se)
    paired = summarise_sweep(table, test="paired").comparison.set_index("metric")
    assert paired.loc["test_r", "p"] == pytest.approx(stats.ttest_rel(
        table.loc[table.ratio == 1.0, "test_r"], table.loc[table.ratio == 0, "test_r"]).pvalue)
    with pytest.raises(GenbrainInputError, match="more than once"):
        summarise_sweep(pd.concat([table, table.iloc[[3]]]))
    with pytest.raises(GenbrainInputError, match="no rows at ratio 0"):
        summarise_sweep(table[table.ratio > 0])


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
    torch.manual_seed(123)  # a resumed fit must not depend on the global RNG either
    resumed = fit(c, parts["train"], parts["val"], tmp_path / "cut", space=space)
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


def test_synthetic_rows_are_nested_across_ratios_and_seeded():
    assert [n_synthetic(r, 663) for r in (0.0, 0.1, 2.8)] == [0, 66, 1856]
    small, big = synthetic_rows(200, 60, 0.5, seed=1), synthetic_rows(200, 60, 1.5, seed=1)
    assert len(small) == 30 and len(big) == 90 and (big[:30] == small).all()
    assert len(set(big)) == 90
    assert not np.array_equal(synthetic_rows(200, 60, 0.5, seed=2), small)
    with pytest.raises(GenbrainInputError, match="pool.tsv: ratio 3 of 60 training images "
                       "needs 180 synthetic images but the pool holds 100") as err:
        synthetic_rows(100, 60, 3.0, seed=1, source="pool.tsv")
    one_line(err)


def test_bad_inputs_give_one_line_errors(tmp_path, space):
    scores = np.linspace(0, 30, 20)
    scores[6] = np.nan
    store = make_store(tmp_path / "nan", space, 20, seed=5, scores=scores)
    with pytest.raises(GenbrainInputError) as err:
        score_split(store.table, "score", 0, score_max=MAX, source=str(store.index_path))
    msg = one_line(err)
    assert "nan/index.tsv" in msg and "sub-006 (FA)" in msg and "missing" in msg
    high = pd.DataFrame({"participant_id": ["a", "b"], "nihss": [3, 43]})
    with pytest.raises(GenbrainInputError, match=r"t.tsv: participant b: score 'nihss' 43 is "
                       "above the declared maximum 42"):
        check_scores(high, "nihss", 42, "t.tsv")
    with pytest.raises(GenbrainInputError, match="missing score column 'wab'"):
        check_scores(high, "wab", 100, "t.tsv")
    few = pd.DataFrame({"participant_id": [f"s{i}" for i in range(14)], "score": 1.0})
    with pytest.raises(GenbrainInputError, match="14 participants .* needs at least 15"):
        score_split(few, "score", 0, score_max=MAX)
    with pytest.raises(GenbrainInputError) as err:
        CropVolumes(((9, 81), (10, 100), (1, 95)), space=space)
    assert "'crop'" in one_line(err) and "axis x" in str(err.value)
    grid = StandardSpace(shape=(91, 109, 91), affine=np.eye(4),
                         mask=np.zeros((91, 109, 91), bool))
    CropVolumes(PAPER_CROP, space=grid)  # the paper's crop fits the 2 mm grid
    with pytest.raises(GenbrainInputError, match="axis z .1:95"):
        CropVolumes(((9, 81), (10, 100), (1, 95)), space=grid)
    with pytest.raises(GenbrainInputError, match="'arch' is 'resnet18'"):
        RegressConfig(arch="resnet18")
    with pytest.raises(GenbrainInputError, match="unknown key 'learning_rate'"):
        RegressConfig.from_dict({"learning_rate": 1e-3})


def test_matched_pairs_and_figures(tmp_path, space):
    real = make_store(tmp_path / "real", space, 12, seed=6)
    synth = make_store(tmp_path / "syn", space, 40, seed=7, prefix="syn-")
    pairs = match_pairs(real.table, synth.table, "score", n_pairs=3)
    assert len(pairs) == 3 and pairs["sex_matched"].all() and pairs["synthetic_row"].is_unique
    assert (pairs["sex"].to_numpy() == synth.table["sex"].to_numpy()[pairs["synthetic_row"]]).all()
    # the lowest and the highest real score are shown, each with its nearest same-sex image
    assert pairs["score_real"].iloc[0] == real.table["score"].min()
    assert pairs["score_real"].iloc[-1] == real.table["score"].max()
    r0, s0 = pairs.iloc[0], synth.table
    same = s0[s0["sex"] == r0["sex"]]
    sd_age, sd_score = real.table["age"].std(ddof=0), real.table["score"].std(ddof=0)
    dist = ((same["age"] - r0["age_real"]) / sd_age) ** 2 + \
        ((same["score"] - r0["score_real"]) / sd_score) ** 2
    assert r0["synthetic_row"] == dist.idxmin()
    pairs_figure(pairs, real, synth, tmp_path / "pairs.png", space=space, cuts=(8, 8, 8))
    per_ratio = pd.DataFrame([{"ratio": r, "metric": m, "mean": 5 - r, "ci_low": 4.5 - r,
                               "ci_high": 5.5 - r} for r in (0.0, 0.5, 1.0)
                              for m in ("val_mae", "val_r", "test_mae", "test_r")])
    sweep_figure(per_ratio, 0.5, tmp_path / "sweep.png", score_name="NIHSS")
    for name in ("pairs.png", "sweep.png"):
        img = matplotlib.image.imread(tmp_path / name)
        assert img.shape[0] > 200 and img.std() > 0.01  # a drawn figure, not a blank canvas
