"""The embedded demo end to end (slow: minutes), and determinism of a small slice."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from genbrain.io import read_tsv
from genbrain.space import standard_space
from genbrain.store import ImageStore
from tests.workflow.helpers import ROOT, snakemake


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    work = tmp_path_factory.mktemp("demo")
    res = snakemake("--configfile", str(ROOT / "config" / "demo.yaml"), "--cores", "2",
                    "-d", str(work), timeout=3600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return work


@pytest.mark.slow
def test_demo_builds_every_store(demo):
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    v = standard_space().n_voxels
    for name, cohort in cfg["cohorts"].items():
        n = sum(s["n"] for s in cohort["simulate"]["sites"].values())
        n_native = sum(s["n"] for s in cohort["simulate"]["sites"].values() if s.get("native"))
        store = ImageStore(demo / "results" / "stores" / name / "index.tsv")
        assert len(store) == n * len(cohort["modalities"]) + n_native  # + Jacobians
        assert store.table["participant_id"].nunique() == n
        assert store[len(store) - 1].shape == (v,)
        assert np.isfinite(store.batch([0, len(store) - 1])).all()
        qc = read_tsv(demo / "results" / "qc" / name / "registration.tsv")
        assert len(qc) == n
        assert qc["qc_pass"].mean() >= 0.9
        for site in cohort["simulate"]["sites"]:
            png = demo / "results" / "qc" / name / f"site-{site}_mosaic.png"
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        truth = demo / "results" / "simulated" / name / "ground_truth"
        assert (truth / "effect-age_T1w.nii.gz").exists()


@pytest.mark.slow
def test_demo_registration_recovers_native_poses(demo):
    space = standard_space()
    pts = np.c_[space.world_coords, np.ones(space.n_voxels)]
    man = pd.concat([read_tsv(p) for p in
                     (demo / "results" / "simulated" / "stroke" / "manifests").glob("*.tsv")])
    man = man[man.modality == "T1w"].set_index("participant_id")
    xfm = pd.concat([read_tsv(p) for p in
                     (demo / "results" / "stores" / "stroke").glob("site-*/*/transforms.tsv")])
    assert len(xfm) == (man["space"] == "native").sum() == 32
    worst = 0.0
    for pid, est in zip(xfm["participant_id"], xfm["std_to_native"]):
        est = np.array(est.split(), float).reshape(4, 4)
        true = np.array(man.loc[pid, "pose"].split(), float).reshape(4, 4)
        d = np.linalg.norm((pts @ est.T - pts @ true.T)[:, :3], axis=1).mean()
        worst = max(worst, d)
    assert worst < 2.0


@pytest.mark.slow
def test_demo_store_carries_the_planted_disease_effect(demo):
    space = standard_space()
    import nibabel as nib

    truth = space.to_vector(np.asanyarray(nib.load(
        demo / "results" / "simulated" / "scz" / "ground_truth" / "effect-diagnosis_VBM.nii.gz"
    ).dataobj))
    store = ImageStore(demo / "results" / "stores" / "scz" / "index.tsv", modalities=["VBM"])
    region = np.flatnonzero(truth < -0.02)[::20]
    control = np.flatnonzero(np.abs(truth) < 1e-4)[::200]
    x = store.batch(range(len(store)))
    patients = (store.table["diagnosis"] == "SCZ").to_numpy()
    t_region, _ = stats.ttest_ind(x[patients][:, region], x[~patients][:, region])
    t_control, _ = stats.ttest_ind(x[patients][:, control], x[~patients][:, control])
    assert np.nanmean(t_region) < -2.0
    assert abs(np.nanmean(t_control)) < 1.0


TINY = {
    "seed": 3,
    "cohorts": {"tiny": {"role": "disorder", "modalities": ["T1w", "VBM"],
                         "diagnosis_levels": ["CN", "SCZ"],
                         "simulate": {"kind": "disorder", "age": [30, 60],
                                      "sites": {"n1": {"n": 2, "native": True},
                                                "s1": {"n": 3}}}}},
    "preprocess": {"chunk_size": 2, "ants": {"type_of_transform": "SyN"}},
    "qc": {"mosaic_subjects": 2},
}


def _digest(work):
    out = {}
    for p in sorted((work / "results").rglob("*")):
        if p.is_file() and p.suffix in (".tsv", ".npy") and "benchmarks" not in p.parts:
            out[str(p.relative_to(work))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def test_two_runs_give_identical_tables_and_stores(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY))
    digests = []
    for k in range(2):
        work = tmp_path / f"run{k}"
        res = snakemake("--configfile", str(cfg), "--cores", "2", "-d", str(work), timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        digests.append(_digest(work))
    assert len(digests[0]) >= 10
    assert digests[0] == digests[1]
