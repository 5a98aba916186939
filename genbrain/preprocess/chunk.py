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
A registered subject's declaration of its T1w as brain-extracted or whole head is checked too:
``qc_outside`` is the registered T1w's mean in a shell of scalp and skull around the brain
(the template's head outside its brain mask dilated by 4 mm) over its mean inside the brain;
a brain-extracted image has next to nothing there, a whole head a lot (see
:data:`OUTSIDE_THRESHOLD`). A subject whose image contradicts the declaration fails QC with a
``qc_note`` saying which key to change.

The chunk folder is built under a temporary name and renamed into place at the end, so a killed
job leaves no half-written chunk.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_dir, load_volume, save_nifti, save_tsv
from genbrain.modalities import ModalityRegistry
from genbrain.preprocess.registration import register, resample_to_standard
from genbrain.qc import check_content
from genbrain.space import standard_space, template_t1
from genbrain.stats.correlation import pearson
from genbrain.store import write_shard

log = logging.getLogger(__name__)

# qc_outside above this: the T1w has scalp and skull (whole head); below it: brain-extracted.
# Measured on Colin27 (a real 1 mm T1, docs/benchmarks.md "Whole-head registration"): 0.79
# whole head (0.60 when wrongly declared brain-extracted), 0.00 brain-extracted; the
# simulator's native T1s: above 0.3 whole head, below 0.05 brain-extracted (unit tests).
OUTSIDE_THRESHOLD = 0.15


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
    brain_extracted: Sequence[bool] | None = None,
) -> pd.DataFrame:
    """Preprocess ``rows`` (participants table rows of one chunk) into ``out_dir``.

    images: participant_id -> {modality: NIfTI path}; native: per row, whether the subject's
    images are in native space (registered) or standard space (checked/resampled);
    brain_extracted: per row, whether a native subject's ``reference`` image is
    brain-extracted (default: all whole head).
    Returns the chunk's store index (also written to ``out_dir/index.tsv``).
    """
    space = standard_space()
    out_dir = Path(out_dir)
    modalities = list(next(iter(images.values())).keys()) if images else []
    vectors: dict[str, list[np.ndarray]] = {m: [] for m in modalities}
    vectors["jacobian"] = []
    records, transforms, qc_vectors, outside = [], [], [], []
    extracted = list(brain_extracted) if brain_extracted is not None else [False] * len(rows)
    t0 = time.time()
    with atomic_dir(out_dir) as tmp_dir:
        (tmp_dir / "jacobian").mkdir()
        for k, (row, is_native) in enumerate(zip(rows.to_dict("records"), native)):
            pid = row["participant_id"]
            paths = images[pid]
            jac = None
            declared = None
            if is_native:
                for path in paths.values():  # validate before handing files to the backend
                    load_volume(path)
                declared = bool(extracted[k])
                reg = register(backend, paths, reference, options, seed, threads,
                               brain_extracted=declared)
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
            outside.append((declared, outside_ratio(volumes[reference])
                            if declared is not None and reference in volumes else np.nan))
            done = k + 1
            if done % 10 == 0 or done == len(rows):
                el = time.time() - t0
                log.info("%d/%d subjects, %.1f s/subject, ETA %.0f s", done, len(rows),
                         el / done, el / done * (len(rows) - done))
        qc = _registration_qc(rows, qc_vectors, qc_modality, qc_threshold, outside)
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
                     threshold: float, outside: list | None = None) -> pd.DataFrame:
    """Per subject: Pearson r of the QC image with its reference inside the mask, and, for a
    registered subject, whether its T1w agrees with its brain-extracted/whole-head declaration
    (``outside``: per subject (declared brain-extracted or None, qc_outside))."""
    space = standard_space()
    present = [v for v in qc_vectors if v is not None]
    if modality == "T1w":
        ref = space.to_vector(template_t1())
    elif present:
        ref = np.mean(present, axis=0)
    else:
        ref = None
    r = [pearson(v, ref) if v is not None and ref is not None else np.nan
         for v in qc_vectors]
    r = np.asarray(r, dtype=float)
    outside = outside or [(None, np.nan)] * len(r)
    ratio = np.array([o for _, o in outside], dtype=float)
    notes = [declaration_note(d, o) for d, o in outside]
    return pd.DataFrame({"participant_id": rows["participant_id"].to_numpy(),
                         "qc_modality": modality, "qc_corr": np.round(r, 4),
                         "qc_outside": np.round(ratio, 4),
                         "qc_pass": (r >= threshold) & np.array([n == "" for n in notes]),
                         "qc_note": notes})


@functools.lru_cache(maxsize=1)
def _outside_shell() -> np.ndarray:
    """The template's head (T1w above 10% of its brain's 99.5th percentile) outside its brain
    mask dilated by 2 voxels (4 mm): scalp and skull, on the standard grid."""
    space = standard_space()
    shell = (template_t1() > 0.10) & ~ndi.binary_dilation(space.mask, iterations=2)
    shell.setflags(write=False)
    return shell


def outside_ratio(volume: np.ndarray) -> float:
    """A registered T1w's mean in the scalp-and-skull shell over its mean inside the brain
    (0 for a brain-extracted image; NaN when the brain's mean is not positive)."""
    inside = float(np.mean(volume[standard_space().mask]))
    if not inside > 0:
        return float("nan")
    return float(np.mean(np.abs(volume[_outside_shell()]))) / inside


def declaration_note(declared: bool | None, ratio: float) -> str:
    """'' when a registered T1w agrees with its declaration, else what to change."""
    if declared is None or not np.isfinite(ratio):
        return ""
    if declared and ratio > OUTSIDE_THRESHOLD:
        return (f"declared brain-extracted but has scalp/skull signal (qc_outside {ratio:.2f} > "
                f"{OUTSIDE_THRESHOLD}): remove the site from 'brain_extracted'")
    if not declared and ratio <= OUTSIDE_THRESHOLD:
        return (f"declared whole head but looks brain-extracted (qc_outside {ratio:.2f} <= "
                f"{OUTSIDE_THRESHOLD}): list the site under 'brain_extracted'")
    return ""


def check_images_exist(images: Mapping[str, Mapping[str, str]]) -> None:
    """Raise a one-line error naming the first missing image."""
    for pid, paths in images.items():
        for m, p in paths.items():
            if not Path(p).exists():
                raise GenbrainInputError(f"{p}: image not found (participant {pid}, modality {m})")
