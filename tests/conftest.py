"""Shared fixtures: small simulated cohorts written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from genbrain.simulate import participants, write_chunk

ROOT = Path(__file__).resolve().parents[1]

SPEC = {
    "kind": "disorder",
    "age": [30, 70],
    "patient_fraction": 0.5,
    "patient_label": "SCZ",
    "disease_effect": 0.10,
    "sites": {
        "nat": {"n": 2, "native": True, "voxel_size": [1.5, 1.5, 2.0]},
        "std": {"n": 3},
    },
}


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip, saying why, where CUDA is not available."""
    gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if not gpu:
        return
    import torch  # only when gpu tests were collected

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device: torch.cuda.is_available() is False")
        for item in gpu:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory):
    """A 5-subject simulated cohort (2 native-space, 3 standard-space), T1w + VBM."""
    root = tmp_path_factory.mktemp("sim")
    pattern = str(root / "{participant_id}" / "{participant_id}_{modality}.nii.gz")
    table = participants("tiny", SPEC, 7)
    for site in ("nat", "std"):
        write_chunk("tiny", SPEC, 7, table[table.site == site], ["T1w", "VBM"], pattern,
                    root / f"manifest_{site}.tsv")
    return {"root": root, "pattern": pattern, "table": table, "spec": SPEC, "seed": 7}
