"""Registration backends: ANTs recovers a known pose from whole-head and brain-extracted T1s;
FSL command lines are what FSL expects."""

import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from genbrain.preprocess.chunk import outside_ratio
from genbrain.preprocess.registration import fsl_commands, itk_affine_to_ras, register_ants
from genbrain.simulate.cohort import to_native
from genbrain.space import standard_space, template_t1

COLIN = Path("/usr/share/mricron/templates")  # Debian's mricron-data: Colin27, a real T1


def _pose(small_cohort, pid):
    man = pd.read_csv(small_cohort["root"] / "manifest_nat.tsv", sep="\t")
    row = man[(man.participant_id == pid) & (man.modality == "T1w")].iloc[0]
    return np.array(row["pose"].split(), float).reshape(4, 4)


def test_ants_recovers_the_simulated_affine_within_2mm(small_cohort):
    space = standard_space()
    pid = small_cohort["table"].query("site == 'nat'")["participant_id"].iloc[0]
    paths = {m: small_cohort["pattern"].format(participant_id=pid, modality=m)
             for m in ("T1w", "VBM")}
    reg = register_ants(paths, "T1w", {"type_of_transform": "SyN"}, seed=1, threads=2)
    true = _pose(small_cohort, pid)
    assert not np.allclose(true, np.eye(4), atol=1e-2)  # there was real work to do
    pts = np.c_[space.world_coords, np.ones(space.n_voxels)]
    displacement = np.linalg.norm((pts @ reg.std_to_native.T - pts @ true.T)[:, :3], axis=1)
    assert displacement.mean() < 2.0
    # the registered T1w matches the template anatomy and the Jacobian is plausible
    assert set(reg.volumes) == {"T1w", "VBM"}
    assert reg.volumes["T1w"].shape == space.shape
    jac = reg.jacobian[space.mask]
    assert 0.8 < np.median(jac) < 1.2


def _displacement(a, b):
    space = standard_space()
    pts = np.c_[space.world_coords, np.ones(space.n_voxels)]
    return np.linalg.norm((pts @ a.T - pts @ b.T)[:, :3], axis=1)


def test_whole_head_and_brain_extracted_t1s_recover_the_same_pose(small_cohort, tmp_path):
    # the simulator writes native T1s with the template's scalp and skull; the same image
    # brain-extracted (the true brain mask carried into native space) must land where it does
    space = standard_space()
    pid = small_cohort["table"].query("site == 'nat'")["participant_id"].iloc[0]
    head_path = small_cohort["pattern"].format(participant_id=pid, modality="T1w")
    true = _pose(small_cohort, pid)
    img = nib.load(head_path)
    head = np.asanyarray(img.dataobj)
    brain = to_native(space.mask.astype(np.float32), true, head.shape, img.affine) > 0.5
    assert head[~brain].mean() > 0.2 * head[brain].mean()  # a real scalp to get wrong
    bet_path = tmp_path / "bet.nii.gz"
    nib.save(nib.Nifti1Image(head * brain, img.affine), bet_path)
    opts = {"type_of_transform": "SyN"}
    whole = register_ants({"T1w": head_path}, "T1w", opts, seed=1, threads=2)
    bet = register_ants({"T1w": str(bet_path)}, "T1w", opts, seed=1, threads=2,
                        brain_extracted=True)
    assert _displacement(whole.std_to_native, true).mean() < 1.0
    assert _displacement(bet.std_to_native, true).mean() < 1.0
    assert _displacement(whole.std_to_native, bet.std_to_native).mean() < 1.0
    # QC tells them apart: scalp signal around the registered whole head, none around the brain
    assert outside_ratio(whole.volumes["T1w"]) > 0.3
    assert outside_ratio(bet.volumes["T1w"]) < 0.05


@pytest.mark.skipif(not (COLIN / "ch2.nii.gz").exists(),
                    reason="Colin27 not installed (apt-get install mricron-data)")
def test_a_real_whole_head_t1_registers_as_its_brain_extracted_version(tmp_path):
    # Colin27 (a real 1 mm T1 nobody on the project made), whole head and brain-extracted,
    # the whole head also with its header pose changed by 12 degrees and 8-15 mm
    space = standard_space()
    pose = np.eye(4)
    c, s = np.cos(np.deg2rad(12)), np.sin(np.deg2rad(12))
    pose[1:3, 1:3] = [[c, -s], [s, c]]
    pose[:3, 3] = [8.0, -10.0, 15.0]
    img = nib.load(COLIN / "ch2.nii.gz")
    posed = tmp_path / "ch2_posed.nii.gz"
    nib.save(nib.Nifti1Image(np.asanyarray(img.dataobj), pose @ img.affine), posed)
    opts = {"type_of_transform": "Affine"}
    bet = register_ants({"T1w": str(COLIN / "ch2bet.nii.gz")}, "T1w", opts, seed=1,
                        threads=2, brain_extracted=True)
    head = register_ants({"T1w": str(COLIN / "ch2.nii.gz")}, "T1w", opts, seed=1, threads=2)
    moved = register_ants({"T1w": str(posed)}, "T1w", opts, seed=1, threads=2)
    assert _displacement(moved.std_to_native, pose @ head.std_to_native).max() < 1.0
    # the whole head and the brain-extracted version agree to within a few mm at most
    assert _displacement(head.std_to_native, bet.std_to_native).mean() < 3.0
    template = space.to_vector(template_t1())
    for reg in (head, moved):
        r = np.corrcoef(space.to_vector(reg.volumes["T1w"]), template)[0, 1]
        assert r > 0.5  # the pipeline's default QC threshold (config qc.min_corr)
        assert outside_ratio(reg.volumes["T1w"]) > 0.15
    assert outside_ratio(bet.volumes["T1w"]) < 0.15


def test_itk_lps_affine_converts_to_ras():
    # a 5 mm ITK (LPS) translation along +x is -5 mm along RAS x
    m = itk_affine_to_ras(np.eye(3), np.array([5.0, 2.0, 3.0]))
    np.testing.assert_allclose(m[:3, 3], [-5.0, -2.0, 3.0])


@pytest.fixture
def fake_fsl(tmp_path, monkeypatch):
    bin_dir = tmp_path / "fsl" / "bin"
    bin_dir.mkdir(parents=True)
    for tool in ("flirt", "fnirt", "applywarp"):
        f = bin_dir / tool
        f.write_text("#!/bin/sh\nexit 0\n")
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("FSLDIR", str(tmp_path / "fsl"))
    return tmp_path / "fsl"


def test_fsl_backend_builds_ukb_style_command_lines(fake_fsl, tmp_path):
    cmds = fsl_commands({"T1w": "t1.nii.gz", "FA": "fa.nii.gz"}, "T1w", tmp_path / "w",
                        {"dof": 12})
    std = f"{fake_fsl}/data/standard"
    assert [os.path.basename(c[0]) for c in cmds] == ["flirt", "fnirt", "applywarp", "applywarp"]
    assert cmds[0][1:] == ["-in", "t1.nii.gz", "-ref", f"{std}/MNI152_T1_2mm.nii.gz",
                           "-omat", f"{tmp_path}/w/affine.mat", "-dof", "12"]
    bet = fsl_commands({"T1w": "t1.nii.gz"}, "T1w", tmp_path / "w", brain_extracted=True)
    assert bet[0][4] == f"{std}/MNI152_T1_2mm_brain.nii.gz"  # brain to brain
    assert "--config=T1_2_MNI152_2mm" in cmds[1]
    assert f"--aff={tmp_path}/w/affine.mat" in cmds[1]
    assert f"--jout={tmp_path}/w/jacobian" in cmds[1]
    assert f"--refmask={std}/MNI152_T1_2mm_brain_mask_dil.nii.gz" in cmds[1]
    assert cmds[3][1:] == ["--in=fa.nii.gz", f"--ref={std}/MNI152_T1_2mm_brain.nii.gz",
                           f"--out={tmp_path}/w/FA.nii.gz", f"--warp={tmp_path}/w/warp",
                           "--interp=spline"]


def test_fsl_backend_without_fsl_says_so(monkeypatch, tmp_path):
    from genbrain.errors import GenbrainInputError

    monkeypatch.delenv("FSLDIR", raising=False)
    with pytest.raises(GenbrainInputError, match=r"\$FSLDIR is not set"):
        fsl_commands({"T1w": "t1.nii.gz"}, "T1w", tmp_path)
