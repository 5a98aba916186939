"""Release export of a synthetic cohort: NIfTI images in a BIDS-derivatives layout.

Layout (``out_dir``)::

    dataset_description.json          DatasetType "derivative", GeneratedBy genbrain-pipeline
    participants.tsv                  one row per exported synthetic image's subject
    sub-<id>/<datatype>/sub-<id>_space-MNI152NLin6Asym_res-2_desc-synthetic_<modality>.nii.gz
                                      + .json sidecar: model, conditions, sampling, seed, gate,
                                        and ``Extrapolated`` for an age or score outside the
                                        range the model saw in training

The folder is built beside ``out_dir`` and renamed into place (complete or absent). Only a
cohort whose privacy gate passed may be exported; the workflow makes the export depend on the
gate's output and this function checks the gate table says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_dir, file_sha256, read_tsv, save_nifti, save_tsv
from genbrain.modalities import DEFAULT_REGISTRY, ModalityRegistry
from genbrain.space import standard_space
from genbrain.store import ImageStore
from genbrain.training.checkpoints import model_conditions

SPACE_ENTITIES = "space-MNI152NLin6Asym_res-2"
BIDS_VERSION = "1.10.0"
_DWI = {"FA", "MD", "MO", "L1", "L2", "L3", "OD", "ICVF", "ISOVF", "ADC"}


def datatype(modality: str) -> str:
    """BIDS datatype folder of a modality: dwi for diffusion maps, func for connectivity and
    task maps, anat otherwise."""
    if modality in _DWI:
        return "dwi"
    if modality.startswith(("fc", "task_")):
        return "func"
    return "anat"


def check_gate(gate: str | os.PathLike) -> pd.Series:
    """The privacy gate's summary row; a one-line error unless it says the gate passed."""
    table = read_tsv(gate)
    if len(table) != 1 or "passed" not in table.columns:
        raise GenbrainInputError(f"{gate}: not a privacy-gate table (one row with 'passed')")
    row = table.iloc[0]
    if str(row["passed"]).lower() not in ("true", "1"):
        raise GenbrainInputError(f"{gate}: the privacy gate did not pass; refusing to export")
    return row


def export_cohort(index: str | os.PathLike, gate: str | os.PathLike, out_dir: str | os.PathLike,
                  sampling: Mapping[str, Any], checkpoint: str | os.PathLike,
                  max_images: int | None = None,
                  registry: ModalityRegistry = DEFAULT_REGISTRY) -> pd.DataFrame:
    """Write up to ``max_images`` images (None = all, in index order) of a synthetic store as a
    BIDS-derivatives dataset. Images of fixed-normalisation modalities are written in their
    physical units (the registry's mean/std undone); z-scored ones stay z-scores (the sidecar
    says which). Returns the table of files written."""
    gate_row = check_gate(gate)
    store = ImageStore(index)
    out_dir = Path(out_dir)
    space = standard_space()
    n = len(store) if max_images is None else min(int(max_images), len(store))
    model = {"checkpoint": str(checkpoint), "sha256": file_sha256(checkpoint)}
    spec = model_conditions(checkpoint)  # what the model was conditioned on, from its run
    ranges = spec.training_ranges()
    columns = ["modality", *spec.columns] + ["source_participant_id"] * bool(spec.sources)
    rows = []
    with atomic_dir(out_dir) as tmp:
        for i in range(n):
            meta = store.table.iloc[i]
            mod = registry[str(meta["modality"])]
            sub = f"sub-{meta['participant_id']}"
            kind = datatype(mod.name)
            stem = f"{sub}_{SPACE_ENTITIES}_desc-synthetic_{mod.name}"
            vec = store[i]
            units = "z-score within the brain mask"
            if mod.norm == "fixed":
                vec = mod.denormalise(vec)
                units = mod.description or mod.name
            path = tmp / sub / kind / f"{stem}.nii.gz"
            save_nifti(space.image(space.to_volume(vec.astype(np.float32))), path)
            conditions = {k: _plain(meta[k]) for k in columns
                          if k in meta.index and not pd.isna(meta[k])}
            sidecar = {"Description": "Synthetic image drawn by GenBrain (diffusion transformer)",
                       "Sources": [f"model:{model['checkpoint']}"], "Model": model,
                       "Conditions": conditions, "ConditionSpec": spec.describe(),
                       "SyntheticId": int(meta["synthetic_id"]),
                       "Sampling": dict(sampling), "Units": units,
                       "PrivacyGate": {"threshold": float(gate_row["threshold"]),
                                       "max_r": float(gate_row["max_r"])}}
            outside = {col: {"value": _plain(meta[col]), "training_range": [lo, hi],
                             "training_range_from": how}
                       for col, (lo, hi, how) in ranges.items() if col in meta.index
                       and pd.notna(meta[col]) and not lo <= float(meta[col]) <= hi}
            if outside:  # drawn beyond what the model saw (allow_extrapolation)
                sidecar["Extrapolated"] = outside
            (path.parent / f"{stem}.json").write_text(json.dumps(sidecar, indent=2))
            rows.append({"participant_id": sub, "modality": mod.name,
                         "path": str(path.relative_to(tmp)), "age": meta["age"],
                         "sex": meta["sex"]})
        files = pd.DataFrame(rows, columns=["participant_id", "modality", "path", "age", "sex"])
        save_tsv(files.drop_duplicates("participant_id")[["participant_id", "age", "sex"]],
                 tmp / "participants.tsv")
        description = {"Name": f"GenBrain synthetic cohort {out_dir.name}",
                       "BIDSVersion": BIDS_VERSION, "DatasetType": "derivative",
                       "GeneratedBy": [{"Name": "genbrain-pipeline",
                                        "Description": "DDIM sampling of a GenBrain DiT"}],
                       "SourceDatasets": [{"URL": f"model:{model['checkpoint']}"}],
                       "ImagesExported": len(files), "ImagesInStore": len(store)}
        (tmp / "dataset_description.json").write_text(json.dumps(description, indent=2))
    return files


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
