"""Registration backends: ANTs recovers a known pose; FSL command lines are what FSL expects."""

import os
import stat

import numpy as np
import pandas as pd
import pytest

from genbrain.preprocess.registration import fsl_commands, itk_affine_to_ras, register_ants
from genbrain.space import standard_space


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
    assert cmds[0][1:] == ["-in", "t1.nii.gz", "-ref", f"{std}/MNI152_T1_2mm_brain.nii.gz",
                           "-omat", f"{tmp_path}/w/affine.mat", "-dof", "12"]
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
