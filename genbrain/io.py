"""Files: validated NIfTI reading, atomic writes, tables, and a look inside checkpoints.

Every writer goes through :func:`atomic_path` (a file) or :func:`atomic_dir` (a folder), which
write to a temporary name in the target folder and rename it into place, so a killed job leaves
either the whole output or nothing. Outputs get the permissions the process's umask gives a
new file or folder (0644 / 0755 under the usual 022), not the owner-only mode of a temporary
file: results on a shared file system stay readable by the group.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import gzip
import hashlib
import os
import pickle
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name keeps the full suffix (``.nii.gz``, ``.npy``) so writers that choose the
    format from the name behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.split('.')[0]}.", suffix=suffix,
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        tmp.chmod(0o666 & ~_umask())  # mkstemp made it owner-only
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success replace the folder ``path`` (if
    any) with it, so readers see the old folder or the complete new one, never a mix.

    Temporary folders of ``path`` that a killed earlier attempt left behind (a synthesis shard
    can be gigabytes) are removed first: one job at a time writes an output (Snakemake's
    locks), so any such folder is stale."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        tmp.chmod(0o777 & ~_umask())  # mkdtemp made it owner-only
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def _umask() -> int:
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_nifti(img: nib.Nifti1Image, path: str | os.PathLike) -> None:
    """Write a NIfTI image atomically."""
    with atomic_path(path) as tmp:
        nib.save(img, tmp)


def save_npy(array: np.ndarray, path: str | os.PathLike) -> None:
    """Write a .npy array atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, array)


def save_tsv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a tab-separated table (no index, 'n/a' for missing, BIDS style) atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False, na_rep="n/a")


def read_tsv(path: str | os.PathLike) -> pd.DataFrame:
    """Read a BIDS-style TSV ('n/a' = missing), with a one-line error if it is unreadable."""
    path = Path(path)
    if not path.exists():
        raise GenbrainInputError(f"{path}: file not found")
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"], keep_default_na=True,
                           dtype={"participant_id": str, "site": str})
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise GenbrainInputError(f"{path}: not a readable tab-separated table ({err})") from err


def load_volume(path: str | os.PathLike) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Load a 3D NIfTI image and its float32 data, checking it can be used.

    Accepted: a 3D image, or 4D with a single volume. Refused with a one-line
    :class:`GenbrainInputError` naming the file: missing, unreadable/corrupt/truncated,
    more than one volume, no finite voxels, or any NaN/inf voxel.
    """
    path = Path(path)
    if not path.exists():
        raise GenbrainInputError(f"{path}: image not found")
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj).astype(np.float32)
    except (nib.filebasedimages.ImageFileError, EOFError, OSError, zlib.error,
            gzip.BadGzipFile, ValueError) as err:
        raise GenbrainInputError(
            f"{path}: cannot read NIfTI image (corrupt or truncated file: "
            f"{type(err).__name__}: {err})"
        ) from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise GenbrainInputError(
            f"{path}: expected a 3D image, got shape {tuple(data.shape)}"
            + (" (a 4D series; give one volume per file)" if data.ndim == 4 else "")
        )
    bad = ~np.isfinite(data)
    if bad.any():
        i, j, k = (int(x) for x in np.argwhere(bad)[0])
        raise GenbrainInputError(
            f"{path}: {int(bad.sum())} NaN/inf voxels (first at voxel {i},{j},{k}); "
            "expected finite values everywhere (set background to 0)"
        )
    img3 = nib.Nifti1Image(data, img.affine, img.header if data.ndim == img.ndim else None)
    return img3, data


def file_sha256(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (provenance checksums, release sidecars)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(block):
            digest.update(chunk)
    return digest.hexdigest()


#: what a genbrain training checkpoint holds at least (:mod:`genbrain.training.checkpoints`)
CHECKPOINT_KEYS = ("model", "ema", "step", "config")


class _Opaque:
    """Stands for every object of a checkpoint's pickle but plain data (tensors, storages, an
    argparse namespace): built from nothing, so no code of the file runs."""

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass

    def __setitem__(self, key, value):
        pass

    def append(self, value):
        pass

    def extend(self, values):
        pass


class _PeekUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        return collections.OrderedDict if (module, name) == ("collections", "OrderedDict") \
            else _Opaque

    def persistent_load(self, pid):  # a tensor's storage: left in the archive
        return None


def peek_checkpoint(path: str | os.PathLike) -> Any:
    """What ``torch.save`` pickled into ``path``, without its tensors: dicts, lists, strings and
    numbers as saved, every tensor (and any other object) an opaque placeholder.

    Reads only the archive's ``data.pkl`` (kilobytes, however large the weights), imports no
    torch and runs no code from the file, so the workflow can look inside a checkpoint when it
    builds the DAG. One-line errors for a file that is not such an archive."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise GenbrainInputError(f"{path}: not a PyTorch checkpoint (not the zip archive "
                                 "torch.save writes)")
    with zipfile.ZipFile(path) as z:
        names = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if not names:
            raise GenbrainInputError(f"{path}: a zip archive without data.pkl, not a PyTorch "
                                     "checkpoint")
        try:
            with z.open(names[0]) as fh:
                return _PeekUnpickler(fh).load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                AttributeError, zipfile.BadZipFile) as err:
            raise GenbrainInputError(f"{path}: not a readable PyTorch checkpoint ({names[0]}: "
                                     f"{type(err).__name__}: {err})") from None


def check_start_checkpoint(path: str | os.PathLike, key: str, purpose: str) -> str:
    """A genbrain training checkpoint that a run starts from (config key ``key``), checked
    before any job by the keys of its pickle (:func:`peek_checkpoint`: no weights are read):
    one of our runs, or a public GenBrain checkpoint converted by ``python -m
    genbrain.model.public``. Returns a one-line note saying which voxel layout its model has
    and whether the stores' vectors will be converted to it for ``purpose`` (e.g.
    "fine-tuning"); one-line errors for a missing file, a public checkpoint not yet converted
    (with the command that converts it) or a pickle the run could not start from."""
    init = str(path)
    if not Path(init).exists():
        raise GenbrainInputError(f"{init}: init checkpoint not found (config key '{key}')")
    try:
        record = peek_checkpoint(init)
    except GenbrainInputError as err:
        raise GenbrainInputError(f"{err} (config key '{key}'); expected a genbrain training "
                                 "checkpoint") from None
    keys = set(record) if isinstance(record, Mapping) else set()
    if {"model", "args"} <= keys and "config" not in keys:
        raise GenbrainInputError(
            f"{init}: a checkpoint of the public GenBrain code ({{model, ema, opt, args}}), not "
            f"a genbrain training checkpoint (config key '{key}'); convert it first: python -m "
            f"genbrain.model.public --checkpoint {init} --mask MNI152_T1_2mm_brain.nii.gz "
            "--data-info data_info.json --out genbrain.pt")
    missing = [k for k in CHECKPOINT_KEYS if k not in keys]
    problem = f"its pickle lacks {missing}" if missing else _init_record_problem(record)
    if problem:
        raise GenbrainInputError(f"{init}: not a genbrain training checkpoint (config key "
                                 f"'{key}'): {problem}")
    return _layout_note(init, record["config"], key, purpose)


def _init_record_problem(record: Mapping[str, Any]) -> str:
    """What in a checkpoint's pickle (read by :func:`peek_checkpoint`) a run could not start
    from, or "": ``model`` and ``ema`` must be state dicts, and ``config`` must hold the
    model's architecture (``model``), its training settings (``train``) and its age scaling
    (``norms.age``), which a fine-tune inherits."""
    for weights in ("model", "ema"):
        if not isinstance(record[weights], Mapping):
            return f"its '{weights}' is not a state dict"
    config = record["config"]
    if not isinstance(config, Mapping):
        return "its 'config' is not a dict"
    lacking = [k for k in ("model", "train") if not isinstance(config.get(k), Mapping)]
    norms = config.get("norms")
    if not (isinstance(norms, Mapping) and isinstance(norms.get("age"), Mapping)):
        lacking.append("norms.age")
    return f"its 'config' lacks {lacking}" if lacking else ""


def _layout_note(init: str, config: Mapping[str, Any], key: str, purpose: str) -> str:
    """Which voxel layout the checkpoint's model has (its ``config["layout"]``, resolved
    now so that a mask that cannot be found fails at parse time) and whether the stores'
    vectors will be converted to it (:func:`genbrain.layout.store_converter`)."""
    from genbrain import layout as layouts

    record = config.get("layout") if isinstance(config, Mapping) else None
    n_model = (config.get("model") or {}).get("n_voxels") if isinstance(config, Mapping) \
        else None
    imported = " (imported from the public GenBrain code)" if config.get("public_import") \
        else ""
    if record is None or record.get("sha256") == layouts.KNOWN_SHA256[layouts.STANDARD]:
        how = "records no layout" if record is None else f"has layout {layouts.STANDARD}"
        return (f"{init}{imported} {how} ({n_model} voxels): the stores' vectors reach it "
                "unconverted")
    try:
        layout = layouts.VoxelLayout.from_dict(record, init)
    except GenbrainInputError as err:
        raise GenbrainInputError(f"{err} (config key '{key}')") from None
    return (f"{init}{imported} has layout {layout}; the stores' {layouts.STANDARD} vectors "
            f"({layouts.N_VOXELS[layouts.STANDARD]:,}) will be converted to it for "
            f"{purpose}, and its samples back to {layouts.STANDARD} for synthesis")


