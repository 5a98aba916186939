"""Preprocess one chunk of subjects into image-store shards.

For each subject: read every modality (validated), bring it onto the MNI152NLin6Asym 2 mm grid
(register native-space subjects; accept standard-grid images as they are; resample
standard-space images on another grid), mask, clamp + normalise per modality, and append it as a
row of the chunk's ``<modality>.npy``. Native subjects also get a Jacobian-determinant map (in
the store as modality ``jacobian`` and as NIfTI) and their affine in ``transforms.tsv``.
Every image of every modality passes :func:`genbrain.qc.check_content` (no constant map, values
mostly inside the modality's range) before it is normalised, or the chunk stops naming it.
Registration quality: Pearson r of the registered QC image with the template (T1w) or with the
chunk's mean image (other modalities) inside the brain mask; ``qc_pass = r >= threshold``.

The chunk folder is built under a temporary name and renamed into place at the end, so a killed
job leaves no half-written chunk.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_dir, load_volume, save_nifti, save_tsv
from genbrain.modalities import ModalityRegistry
from genbrain.preprocess.registration import register, resample_to_standard
from genbrain.qc import check_content
from genbrain.space import standard_space, template_t1
from genbrain.store import write_shard

log = logging.getLogger(__name__)


def pearson_masked(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r between two (V,) vectors (0 when either is constant)."""
    a = a - a.mean()
    b = b - b.mean()
    den = float(np.sqrt((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / den) if den > 0 else 0.0


def _standardise_grid(path: str) -> tuple[np.ndarray, str]:
    space = standard_space()
    img, data = load_volume(path)
    if space.is_standard(img):
        return data, "standard"
    return resample_to_standard(img, data, path), "resampled"


def preprocess_chunk(
    rows: pd.DataFrame,
    images: Mapping[str, Mapping[str, str]],
    native: Sequence[bool],
    registry: ModalityRegistry,
    out_dir: str | os.PathLike,
    *,
    backend: str = "ants",
    reference: str = "T1w",
    options: Mapping | None = None,
    seed: int = 0,
    threads: int = 1,
    dtype: str = "float16",
    qc_modality: str = "T1w",
    qc_threshold: float = 0.8,
) -> pd.DataFrame:
    """Preprocess ``rows`` (participants table rows of one chunk) into ``out_dir``.

    images: participant_id -> {modality: NIfTI path}; native: per row, whether the subject's
    images are in native space (registered) or standard space (checked/resampled).
    Returns the chunk's store index (also written to ``out_dir/index.tsv``).
    """
    space = standard_space()
    out_dir = Path(out_dir)
    modalities = list(next(iter(images.values())).keys()) if images else []
    vectors: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    vectors["jacobian"] = []
    records, transforms, qc_vectors = [], [], []
    t0 = time.time()
    with atomic_dir(out_dir) as tmp_dir:
        (tmp_dir / "jacobian").mkdir()
        for k, (row, is_native) in enumerate(zip(rows.to_dict("records"), native)):
            pid = row["participant_id"]
            paths = images[pid]
            jac = None
            if is_native:
                for path in paths.values():  # validate before handing files to the backend
                    load_volume(path)
                reg = register(backend, paths, reference, options, seed, threads)
                volumes = reg.volumes
                jac = reg.jacobian
                transforms.append({"participant_id": pid, "backend": backend,
                                   "std_to_native": " ".join(f"{v:.6f}" for v in
                                                             reg.std_to_native.ravel())})
                how = "registered"
            else:
                volumes, hows = {}, set()
                for m, path in paths.items():
                    volumes[m], h = _standardise_grid(path)
                    hows.add(h)
                how = "resampled" if "resampled" in hows else "standard"
            for m in modalities:
                raw = space.to_vector(volumes[m])
                check_content(raw, registry[m], f"{paths[m]} (participant {pid})")
                vectors[m].append(registry[m].normalise(raw))
                records.append({**row, "modality": m, "modality_index": registry[m].index,
                                "shard": f"{m}.npy", "row": len(vectors[m]) - 1, "input": how})
            if jac is not None:
                save_nifti(space.image(jac * space.mask),
                           tmp_dir / "jacobian" / f"{pid}_space-MNI152NLin6Asym_desc-jacobian.nii.gz")
                if "jacobian" in registry:
                    vectors["jacobian"].append(registry["jacobian"].normalise(space.to_vector(jac)))
                    records.append({**row, "modality": "jacobian",
                                    "modality_index": registry["jacobian"].index,
                                    "shard": "jacobian.npy", "row": len(vectors["jacobian"]) - 1,
                                    "input": how})
            qc_vectors.append(space.to_vector(volumes[qc_modality]) if qc_modality in volumes
                              else None)
            done = k + 1
            if done % 10 == 0 or done == len(rows):
                el = time.time() - t0
                log.info("%d/%d subjects, %.1f s/subject, ETA %.0f s", done, len(rows),
                         el / done, el / done * (len(rows) - done))
        qc = _registration_qc(rows, qc_vectors, qc_modality, qc_threshold)
        for m, vecs in vectors.items():
            if vecs:
                write_shard(np.stack(vecs), tmp_dir / f"{m}.npy", dtype)
        index = pd.DataFrame(records)
        if len(index):
            index = index.merge(qc, on="participant_id", how="left")
        save_tsv(index, tmp_dir / "index.tsv")
        save_tsv(pd.DataFrame(transforms, columns=["participant_id", "backend", "std_to_native"]),
                 tmp_dir / "transforms.tsv")
    return index


def _registration_qc(rows: pd.DataFrame, qc_vectors: list, modality: str,
                     threshold: float) -> pd.DataFrame:
    """Per subject: Pearson r of the QC image with its reference inside the mask."""
    space = standard_space()
    present = [v for v in qc_vectors if v is not None]
    if modality == "T1w":
        ref = space.to_vector(template_t1())
    elif present:
        ref = np.mean(present, axis=0)
    else:
        ref = None
    r = [pearson_masked(v, ref) if v is not None and ref is not None else np.nan
         for v in qc_vectors]
    r = np.asarray(r, dtype=float)
    return pd.DataFrame({"participant_id": rows["participant_id"].to_numpy(),
                         "qc_modality": modality, "qc_corr": np.round(r, 4),
                         "qc_pass": r >= threshold})


def check_images_exist(images: Mapping[str, Mapping[str, str]]) -> None:
    """Raise a one-line error naming the first missing image."""
    for pid, paths in images.items():
        for m, p in paths.items():
            if not Path(p).exists():
                raise GenbrainInputError(f"{p}: image not found (participant {pid}, modality {m})")
