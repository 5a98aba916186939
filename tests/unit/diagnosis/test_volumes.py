"""Regional volumes: known volumes on synthetic label/tissue images, intensity-driven volumes
that vary across subjects, a planted atrophy recovered, the CSV layout and its reader, the
synthseg command line."""

from __future__ import annotations

import os
import stat

import numpy as np
import pandas as pd
import pytest

from genbrain.anatomy import REGIONS, anatomy
from genbrain.diagnosis import volumes as vol
from genbrain.errors import GenbrainInputError
from genbrain.space import standard_space

T1_MEANS = (0.30, 0.62, 0.95)  # the simulator's CSF, GM, WM intensities


def _t1(frac: np.ndarray, rng: np.random.Generator, noise: float = 0.01) -> np.ndarray:
    return np.asarray(T1_MEANS) @ frac + noise * rng.standard_normal(frac.shape[1])


def test_structure_volumes_of_a_known_label_image():
    # 10 voxels: 4 left cortex (label 1030), 3 right thalamus (49), 3 left lateral ventricle (4)
    labels = np.array([1030] * 4 + [49] * 3 + [4] * 3)
    x = np.array([-10.0] * 4 + [10.0] * 3 + [-5.0] * 3)
    frac = np.array([[0.1, 0.0, 0.2, 0.0, 0.5, 0.0, 0.0, 1.0, 0.9, 0.8],   # CSF
                     [0.9, 0.5, 0.8, 1.0, 0.5, 0.6, 0.3, 0.0, 0.1, 0.0],   # GM
                     [0.0, 0.5, 0.0, 0.0, 0.0, 0.4, 0.7, 0.0, 0.0, 0.2]])  # WM
    out = dict(zip(vol.COLUMNS[1:], vol.structure_volumes(frac, vol.tissue_targets(labels, x))))
    assert out[vol.ICV_COLUMN] == pytest.approx(80.0)
    assert out["Left-Cerebral-Cortex(3)"] == pytest.approx(8 * 3.2)
    assert out["Left-Cerebral-White-Matter(2)"] == pytest.approx(8 * (0.5 + 0.1 + 0.2))  # cortex WM + ventricle tissue
    assert out["CSF(24)"] == pytest.approx(8 * (0.3 + 0.5))  # cortex + thalamus CSF
    assert out["Right-Thalamus(49)"] == pytest.approx(8 * 2.5)
    assert out["Left-Lateral-Ventricle(4)"] == pytest.approx(8 * 2.7)
    assert out["Right-Cerebral-Cortex(42)"] == 0
    # a Jacobian scales every voxel's volume
    jac = np.full(10, 1.5)
    assert vol.structure_volumes(frac, vol.tissue_targets(labels, x), jac)[0] == \
        pytest.approx(120.0)


def test_atlas_targets_cover_every_voxel_and_all_32_structures():
    t = vol.atlas_targets()
    assert t.shape == (3, standard_space().n_voxels)
    assert set(np.unique(t)) == set(vol.LABELS)
    assert vol.structures_of_labels(REGIONS["disease_gm"]) == [
        "Left-Cerebral-Cortex(3)", "Left-Thalamus(10)", "Right-Cerebral-Cortex(42)",
        "Right-Thalamus(49)"]


def test_tissue_fractions_recover_known_partial_volumes():
    rng = np.random.default_rng(0)
    anat = anatomy()
    space = standard_space()
    gm, wm = space.to_vector(anat.gm), space.to_vector(anat.wm)
    frac = np.stack([1 - gm - wm, gm, wm])
    got = vol.tissue_fractions(_t1(frac, rng) * 37.0 + 5.0, seed=0)  # any intensity scale
    np.testing.assert_allclose(got.sum(axis=0), 1.0, atol=1e-9)
    # one intensity separates two tissues per voxel: voxels mixing all three (smooth priors)
    # lose some CSF to GM, so totals agree to 15% (GM, WM) and CSF is underestimated
    for k in range(3):
        assert got[k].sum() == pytest.approx(frac[k].sum(), rel=0.15)
    assert np.corrcoef(got[1], gm)[0, 1] > 0.95
    # a VBM map replaces the GM fraction exactly
    with_gm = vol.tissue_fractions(_t1(frac, rng), seed=0, gm=gm)
    np.testing.assert_allclose(with_gm[1], gm, atol=1e-6)
    np.testing.assert_allclose(with_gm.sum(axis=0), 1.0, atol=1e-9)
    post = vol.tissue_fractions(_t1(frac, rng), seed=0, method="posterior")
    np.testing.assert_allclose(post.sum(axis=0), 1.0, atol=1e-6)
    with pytest.raises(GenbrainInputError, match="method"):
        vol.tissue_fractions(_t1(frac, rng), method="kmeans")


def test_volumes_vary_across_subjects_and_a_planted_atrophy_is_recovered():
    anat = anatomy()
    space = standard_space()
    gm0, wm0 = space.to_vector(anat.gm), space.to_vector(anat.wm)
    thal = np.isin(space.to_vector(anat.labels), [10, 49])
    t1, gms, truth = [], [], []
    for i in range(5):
        # individual anatomy: global and smooth regional GM differences; subject 4 is subject
        # 3 (same anatomy, same noise) with 30% of the thalamic GM lost
        j = min(i, 3)
        gm = gm0 * (0.9 + 0.05 * j) * (1 + 0.1 * np.sin(space.world_coords[:, 1] / 20 + j))
        if i == 4:
            gm = np.where(thal, gm * 0.7, gm)
        gm = np.clip(gm, 0, 1 - wm0)
        frac = np.stack([1 - gm - wm0, gm, wm0])
        t1.append(_t1(frac, np.random.default_rng(j)))
        gms.append(gm)
        truth.append(vol.structure_volumes(frac))
    ids = [f"sub-{i}" for i in range(5)]
    table = vol.volumes_table(ids, np.array(t1), seed=0)
    assert list(table.columns) == list(vol.COLUMNS)
    x = table[list(vol.STRUCTURE_COLUMNS)].to_numpy()
    # not the trap: structures differ between subjects (every subject on the same atlas)
    assert (x[:4].std(axis=0) > 0).sum() >= 30
    # a Jacobian-free standard-space ICV is the mask's volume for everyone (documented)
    np.testing.assert_allclose(table[vol.ICV_COLUMN], 8.0 * space.n_voxels)
    truth = np.array(truth)[:, 1:]
    for c in ("Left-Cerebral-Cortex(3)", "Right-Cerebral-Cortex(42)"):
        k = vol.STRUCTURE_COLUMNS.index(c)
        assert np.corrcoef(x[:4, k], truth[:4, k])[0, 1] > 0.95
    th = [vol.STRUCTURE_COLUMNS.index(c) for c in ("Left-Thalamus(10)", "Right-Thalamus(49)")]
    measured = 1 - x[4, th].sum() / x[3, th].sum()
    expected = 1 - truth[4, th].sum() / truth[3, th].sum()
    assert expected > 0.05
    # T1w alone sees the loss but under-reads it: a thalamic voxel mixes GM, WM and CSF and one
    # intensity separates only two, so most of the new CSF is read as GM + WM (documented)
    assert 0.25 * expected < measured < expected
    # with the VBM map (the GM fraction itself) the size is recovered
    with_vbm = vol.volumes_table(ids, np.array(t1), gm=np.array(gms), seed=0)
    xv = with_vbm[list(vol.STRUCTURE_COLUMNS)].to_numpy()
    assert 1 - xv[4, th].sum() / xv[3, th].sum() == pytest.approx(expected, rel=0.25)
    others = [k for k in range(len(vol.STRUCTURE_COLUMNS)) if k not in th
              and vol.STRUCTURE_COLUMNS[k] not in ("CSF(24)", "WM-hypointensities(77)")]
    np.testing.assert_allclose(x[4, others], x[3, others], rtol=0.02)


def test_csv_round_trip_and_reader_checks(tmp_path):
    values = np.tile(np.arange(1, 34, dtype=float) * 100, (2, 1))
    table = pd.DataFrame(values, columns=vol.COLUMNS[1:])
    table.insert(0, vol.ID_COLUMN, ["/data/sub-01_T1w.nii.gz", "sub-02"])
    path = tmp_path / "vols.csv"
    vol.save_volumes(table, path)
    assert path.read_text().splitlines()[0].startswith(
        "Input-file,Intracranial-volume,Left-Cerebral-White-Matter(2),Left-Cerebral-Cortex(3)")
    back = vol.read_volumes(path)
    assert list(back["participant_id"]) == ["sub-01", "sub-02"]
    np.testing.assert_allclose(back[list(vol.COLUMNS[1:])].to_numpy(), values)
    # missing structures
    table.drop(columns=["Optic-Chiasm(85)"]).to_csv(tmp_path / "miss.csv", index=False)
    with pytest.raises(GenbrainInputError, match=r"miss.csv: missing 1 structure.*Optic-Chiasm"):
        vol.read_volumes(tmp_path / "miss.csv")
    # non-positive volume, named by row and column
    bad = table.copy()
    bad.loc[1, "Left-Thalamus(10)"] = 0.0
    bad.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(GenbrainInputError,
                       match=r"row 2 \('sub-02'\), column 'Left-Thalamus\(10\)'"):
        vol.read_volumes(tmp_path / "bad.csv")
    with pytest.raises(GenbrainInputError, match="non-positive|positive"):
        vol.save_volumes(bad, tmp_path / "never.csv")
    assert not (tmp_path / "never.csv").exists()


def test_reader_accepts_plain_synthseg_names(tmp_path):
    names = ["subject", "total intracranial"] + list(vol._SYNTHSEG_NAMES)
    row = ["sub-07"] + [1000.0] * (len(names) - 1)
    pd.DataFrame([row], columns=names).to_csv(tmp_path / "ss.csv", index=False)
    got = vol.read_volumes(tmp_path / "ss.csv", structures=[
        c for c in vol.STRUCTURE_COLUMNS if not c.endswith(("(24)", "(77)", "(85)"))])
    assert got["participant_id"].tolist() == ["sub-07"]
    assert got["Left-Lateral-Ventricle(4)"].iloc[0] == 2000.0  # + inferior lateral ventricle
    assert got["Right-Hippocampus(53)"].iloc[0] == 1000.0


def _fake_tool(folder, name: str) -> str:
    """An executable that writes a WMH-SynthSeg CSV of constant volumes to --csv_vols."""
    path = folder / name
    cols = ",".join(vol.COLUMNS)
    vals = ",".join(["1234.5"] * (len(vol.COLUMNS) - 1))
    path.write_text("#!/bin/sh\nwhile [ $# -gt 0 ]; do\n  case $1 in --csv_vols) out=$2;; "
                    "--i) img=$2;; esac\n  shift\ndone\n"
                    f"printf '%s\\n' '{cols}' > \"$out\"\n"
                    f"printf '%s,%s\\n' \"$img\" '{vals}' >> \"$out\"\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_synthseg_command_and_backend_without_freesurfer(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(GenbrainInputError, match="mri_WMHsynthseg or mri_synthseg on PATH"):
        vol.synthseg_command("t1.nii.gz", "seg.nii.gz", "v.csv")
    exe = _fake_tool(tmp_path, "mri_WMHsynthseg")
    assert vol.synthseg_command("t1.nii.gz", "seg.nii.gz", "v.csv", threads=2) == [
        exe, "--i", "t1.nii.gz", "--o", "seg.nii.gz", "--csv_vols", "v.csv", "--device", "cpu",
        "--threads", "2"]
    out = vol.run_synthseg({"sub-01": "/data/sub-01_T1w.nii.gz"}, tmp_path / "w", threads=2)
    assert list(out.columns) == list(vol.COLUMNS)
    assert out[vol.ID_COLUMN].tolist() == ["sub-01"]
    assert (out[list(vol.STRUCTURE_COLUMNS)] == 1234.5).all().all()
    os.remove(exe)
    ss = tmp_path / "mri_synthseg"
    ss.write_text("#!/bin/sh\nexit 0\n")
    ss.chmod(0o755)
    assert vol.synthseg_command("t1.nii.gz", "s.nii.gz", "v.csv") == [
        str(ss), "--i", "t1.nii.gz", "--o", "s.nii.gz", "--vol", "v.csv", "--robust",
        "--threads", "1", "--cpu"]


def test_an_implausible_bias_field_leaves_the_image_uncorrected():
    """Per-image z-scored intensities (as the stores hold T1w) put the GM mean near 0, where
    the multiplicative field is unconstrained: the fit is refused and the image left as it is
    (bias_order 0), instead of being divided by a field that zeroes whole regions."""
    anat = anatomy()
    space = standard_space()
    gm, wm = space.to_vector(anat.gm), space.to_vector(anat.wm)
    frac = np.stack([1 - gm - wm, gm, wm])
    x = _t1(frac, np.random.default_rng(1)) * (1 + 0.12 * np.sin(space.world_coords[:, 0] / 30))
    raw, z = {}, {}
    vol.class_means(x, status=raw)
    assert raw["bias"] == "corrected"  # positive intensities: a plausible field
    zx = (x - x.mean()) / x.std()
    vol.class_means(zx, status=z)
    assert z["bias"] == "uncorrected"
    np.testing.assert_array_equal(vol.tissue_fractions(zx), vol.tissue_fractions(zx, bias_order=0))
    off = {}
    vol.class_means(x, bias_order=0, status=off)
    assert off["bias"] == "off"


def test_an_image_measuring_a_zero_structure_is_named_before_a_table_is_written(tmp_path):
    """diagnosis_volumes / diagnosis_synthetic_volumes: a store image without tissue in a
    structure (here the optic chiasm blacked out) stops the job at that image, naming the
    store and the participant (the first, valid image passes), before any table is saved."""
    from genbrain.io import save_tsv
    from genbrain.store import write_shard

    space = standard_space()
    gm, wm = space.to_vector(anatomy().gm), space.to_vector(anatomy().wm)
    t1 = _t1(np.stack([1 - gm - wm, gm, wm]), np.random.default_rng(0))
    x = np.stack([t1, t1]).astype(np.float32)
    x[1, (vol.atlas_targets()[1:] == 85).any(axis=0)] = 0.0  # CSF-dark where the chiasm is
    shard = tmp_path / "site-A" / "T1w.npy"
    shard.parent.mkdir()
    write_shard(x, shard, "float16")
    index = tmp_path / "index.tsv"
    save_tsv(pd.DataFrame({"participant_id": ["sub-A0", "sub-A1"], "site": "A", "age": 40.0,
                           "sex": "F", "modality": "T1w", "modality_index": 0,
                           "shard": "site-A/T1w.npy", "row": [0, 1]}), index)
    with pytest.raises(GenbrainInputError) as err:
        vol.store_volumes(index, None, sites=["A"])
    assert str(err.value) == (f"{index}: the 'T1w' image of participant 'sub-A1' measures 0 "
                              "mm^3 in 'Optic-Chiasm(85)'; expected a positive volume in "
                              "every structure (is it a whole-brain T1w in standard space?)")
