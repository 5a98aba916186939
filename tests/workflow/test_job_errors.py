"""A bad image met while a job runs: one line naming the file, no traceback, no output."""

import nibabel as nib
import numpy as np
import pandas as pd
import yaml

from genbrain.space import AFFINE, standard_space
from tests.workflow.helpers import snakemake


def test_corrupt_image_fails_the_job_with_one_line(tmp_path):
    data = tmp_path / "data"
    rows = []
    rng = np.random.default_rng(0)
    for i in range(3):
        pid = f"sub-x{i}"
        rows.append({"participant_id": pid, "site": "X", "age": 50 + i, "sex": "F"})
        p = data / pid / f"{pid}_VBM.nii.gz"
        p.parent.mkdir(parents=True)
        nib.save(nib.Nifti1Image(rng.random(standard_space().shape).astype(np.float32), AFFINE),
                 p)
    (data / "sub-x2" / "sub-x2_VBM.nii.gz").write_bytes(b"\x1f\x8b\x08 truncated")
    pd.DataFrame(rows).to_csv(data / "participants.tsv", sep="\t", index=False)
    cfg = {"seed": 1, "cohorts": {"vbm": {
        "role": "disorder", "modalities": ["VBM"],
        "participants": str(data / "participants.tsv"),
        "images": str(data / "{participant_id}" / "{participant_id}_{modality}.nii.gz")}},
        "qc": {"modality": "VBM"}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    work = tmp_path / "work"
    res = snakemake("--configfile", str(path), "--cores", "1", "-d", str(work),
                    "results/stores/vbm/index.tsv")
    out = res.stdout + res.stderr
    assert res.returncode == 1
    assert "Traceback" not in out
    msg = [ln for ln in out.splitlines() if ln.startswith("genbrain error:")]
    assert len(msg) == 1
    assert "sub-x2_VBM.nii.gz: cannot read NIfTI image (corrupt or truncated" in msg[0]
    assert not (work / "results" / "stores" / "vbm" / "site-X" / "chunk-000").exists()
