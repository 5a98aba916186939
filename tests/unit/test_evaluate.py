"""The evaluation stage's glue (genbrain.evaluate) on small stores written as the workflow
writes them: the members it picks, checked against scipy, and the audit/gate on planted copies."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sstats

from genbrain.audit import PrivacyGateError
from genbrain.errors import GenbrainInputError
from genbrain.evaluate import audit_report, privacy_gate, similarity_report
from genbrain.io import read_tsv, save_tsv
from genbrain.splits import evaluation_cohorts, similarity_covariates
from genbrain.store import merge_indices, write_shard

V = 300
K = 2


def _images(rng, age, sex):
    """Images with an age and a sex pattern on a shared mean image, plus subject noise."""
    grid = np.linspace(0, 6, V)
    mean, age_map, sex_map = 3 + np.sin(grid), np.cos(2 * grid), np.sin(3 * grid) ** 2
    z = (np.asarray(age, float) - 60) / 10
    s = (np.asarray(sex) == "F").astype(float)
    noise = rng.standard_normal((len(z), V))
    return (mean + np.outer(z, age_map) + np.outer(s, sex_map) + noise).astype(np.float32)


def _store(root, table, images):
    root.mkdir(parents=True)
    index = []
    for m, rows in table.groupby("modality").groups.items():
        rows = np.asarray(rows)
        write_shard(images[rows], root / f"{m}.npy", "float32")
        index.append(table.loc[rows].assign(shard=f"{m}.npy", row=np.arange(len(rows))))
    save_tsv(pd.concat(index), root / "chunk.tsv")
    merge_indices([root / "chunk.tsv"], root / "index.tsv")
    return root / "index.tsv"


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A real VBM store of 40 participants (24 train, 16 hold-out), two evaluation cohorts of
    5 and the synthetic store of their k = 2 mirrors, laid out as the workflow lays them out."""
    tmp = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(7)
    n = 40
    people = pd.DataFrame({"participant_id": [f"sub-{i:02d}" for i in range(n)], "site": "s1",
                           "age": np.round(rng.uniform(40, 80, n), 1),
                           "sex": rng.choice(["M", "F"], n)})
    split = people.assign(split=np.where(np.arange(n) < 24, "train", "holdout"))
    save_tsv(split, tmp / "split.tsv")
    real_table = people.assign(modality="VBM", modality_index=28)
    real = _images(rng, real_table["age"], real_table["sex"])
    real_index = _store(tmp / "real", real_table, real)
    cohorts = evaluation_cohorts(split, 5, 2, seed=3)
    save_tsv(cohorts, tmp / "cohorts.tsv")
    cov = similarity_covariates(cohorts, ["VBM"], K)
    syn_table = cov.rename(columns={"participant_id": "source_participant_id"})
    syn_table.insert(0, "participant_id", [f"syn{i:06d}" for i in cov["synthetic_id"]])
    syn_table = syn_table.assign(site="synthetic", modality_index=28)
    syn = _images(rng, syn_table["age"], syn_table["sex"])
    syn_index = _store(tmp / "synthetic", syn_table, syn)
    return {"tmp": tmp, "split": split, "real": real, "real_index": real_index,
            "cohorts": cohorts, "syn_table": syn_table, "syn": syn, "syn_index": syn_index}


def _tmaps_scipy(x, age, sex):
    """Age and sex t-maps voxel by voxel with scipy.stats.pearsonr (independent reference)."""
    n = len(x)
    out = []
    for y in (np.asarray(age, float), (np.asarray(sex) == "F").astype(float)):
        r = np.array([sstats.pearsonr(x[:, v].astype(np.float64), y).statistic
                      for v in range(x.shape[1])])
        out.append(r * np.sqrt((n - 2) / (1 - r ** 2)))
    return out


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_similarity_report_picks_the_right_members(stage):
    tmp = stage["tmp"]
    table = similarity_report(stage["syn_index"], tmp / "cohorts.tsv", stage["real_index"],
                              tmp / "split.tsv", tmp / "sim.tsv", tmp / "sim.png")
    assert (tmp / "sim.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pd.testing.assert_frame_equal(read_tsv(tmp / "sim.tsv"), table, check_dtype=False)
    assert len(table) == 3 * 2 * 2  # kinds x replicates x effects
    assert set(table["n"]) == {5}

    split, real, syn, st = stage["split"], stage["real"], stage["syn"], stage["syn_table"]
    train = (split["split"] == "train").to_numpy()
    ref = _tmaps_scipy(real[train], split["age"][train], split["sex"][train])
    for rep, members in stage["cohorts"].groupby("replicate"):
        pos = split.index[split["participant_id"].isin(members["participant_id"])]
        expect = {"real": _tmaps_scipy(real[pos], split["age"][pos], split["sex"][pos])}
        one = st[(st["replicate"] == rep) & (st["sample"] == 0)]
        expect["synthetic"] = _tmaps_scipy(syn[one.index], one["age"], one["sex"])
        avg = st[st["replicate"] == rep].groupby("source_participant_id", sort=False)
        mean = np.stack([syn[g.index].mean(axis=0) for _, g in avg])
        first = avg.head(1)
        expect["synthetic_avg"] = _tmaps_scipy(mean, first["age"], first["sex"])
        for kind, maps in expect.items():  # noqa: PERF102 (table.query reads `kind` as @kind)
            for e, effect in enumerate(("age", "sex")):
                got = table.query("kind == @kind and replicate == @rep and effect == @effect")
                assert got["cosine"].item() == pytest.approx(_cos(maps[e], ref[e]), abs=1e-6)
    real_mean = table[table["kind"] == "real"].groupby("effect")["cosine"].mean()
    np.testing.assert_allclose(table["relative_to_real"],
                               100 * table["cosine"] / table["effect"].map(real_mean))
    # averaging k samples removes noise: the averaged cohorts track the reference better
    by_kind = table.groupby("kind")["cosine"].mean()
    assert by_kind["synthetic_avg"] > by_kind["synthetic"]


def test_similarity_report_refuses_a_store_not_drawn_from_the_cohorts(stage, tmp_path):
    other = stage["cohorts"].copy()
    other.loc[0, "participant_id"] = "sub-00"  # a training participant: not a mirror
    save_tsv(other, tmp_path / "cohorts.tsv")
    with pytest.raises(GenbrainInputError, match="mirrors 4 of its 5 real members"):
        similarity_report(stage["syn_index"], tmp_path / "cohorts.tsv", stage["real_index"],
                          stage["tmp"] / "split.tsv", tmp_path / "s.tsv", tmp_path / "s.png")
    assert not (tmp_path / "s.tsv").exists()


def _planted_store(stage, tmp_path):
    """The synthetic store with row 2 = an exact copy of training participant sub-05 and row 7
    = a copy of hold-out participant sub-30 (not a training image: must not be flagged)."""
    syn = stage["syn"].copy()
    syn[2] = stage["real"][5]
    syn[7] = stage["real"][30]
    return _store(tmp_path / "planted", stage["syn_table"], syn)


def test_audit_compares_with_training_images_only(stage, tmp_path):
    index = _planted_store(stage, tmp_path)
    audit = audit_report(index, stage["real_index"], stage["tmp"] / "split.tsv",
                         tmp_path / "audit.tsv", tmp_path / "top.tsv", tmp_path / "audit.png",
                         threshold=0.95, top=3)
    assert len(audit) == len(stage["syn_table"])
    assert audit.loc[2, "training_participant_id"] == "sub-05"
    assert audit.loc[2, "max_r"] == pytest.approx(1.0, abs=1e-6)
    train_ids = set(stage["split"].loc[stage["split"]["split"] == "train", "participant_id"])
    assert set(audit["training_participant_id"]) <= train_ids
    assert audit.loc[7, "max_r"] < 0.95  # its twin is in the hold-out, not in training
    top = read_tsv(tmp_path / "top.tsv")
    assert len(top) == 3 and top.iloc[0]["synthetic_id"] == 2
    assert (tmp_path / "audit.png").read_bytes()[:4] == b"\x89PNG"
    r = np.corrcoef(np.r_[stage["syn"][[4]], stage["real"][:24]].astype(np.float64))[0, 1:]
    assert audit.loc[4, "max_r"] == pytest.approx(r.max(), abs=1e-6)


def test_gate_fails_naming_the_copy_and_writes_nothing(stage, tmp_path):
    index = _planted_store(stage, tmp_path)
    audit_report(index, stage["real_index"], stage["tmp"] / "split.tsv", tmp_path / "audit.tsv",
                 tmp_path / "top.tsv", tmp_path / "audit.png")
    with pytest.raises(PrivacyGateError) as err:
        privacy_gate(tmp_path / "audit.tsv", 0.95, tmp_path / "gate.tsv")
    msg = str(err.value)
    assert "1 of 20 synthetic images" in msg and "synthetic 2 ~ training sub-05" in msg
    assert "\n" not in msg
    assert not (tmp_path / "gate.tsv").exists()
    # the clean store passes
    audit_report(stage["syn_index"], stage["real_index"], stage["tmp"] / "split.tsv",
                 tmp_path / "clean.tsv", tmp_path / "ctop.tsv", tmp_path / "c.png")
    gate = privacy_gate(tmp_path / "clean.tsv", 0.95, tmp_path / "gate.tsv")
    assert bool(gate["passed"].item()) and gate["n_synthetic"].item() == 20
    assert read_tsv(tmp_path / "gate.tsv")["n_flagged"].item() == 0
