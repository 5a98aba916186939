"""Memorisation audit (the paper's Fig. 2b) and the privacy gate built on it.

For every synthetic image, the Pearson correlation with every training image of the same
modality; we keep the best match (and the runner-up). Pearson r of two images is the dot
product of their standardised vectors ``z = (x - mean(x)) / ||x - mean(x)||``, so all pairs of
a synthetic block and a training block come from one matrix product. Memory is bounded by the
blocks, never by the cohorts:

- synthetic rows are standardised once per block of ``syn_block`` rows (float32 by default);
- training rows are streamed in blocks of ``train_block`` rows (read from float16/float32
  stores, standardised in float32 with pairwise-summed means and norms), one
  (syn_block, train_block) product at a time, keeping a running top-2 per synthetic row;
- the training store is read ``ceil(n_syn / syn_block)`` times, so ``syn_block`` is as large as
  the memory budget allows.

A synthetic or training image without variance has r = 0 with everything (it copies nothing);
an image with non-finite voxels cannot be audited and is refused, naming it.

The gate: a synthetic image whose best r exceeds the threshold (paper: r > 0.95, "a
near-identical copy") stops the release with :class:`PrivacyGateError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.stats.rows import ImageRows
from genbrain.store import ImageStore

log = logging.getLogger(__name__)

AUDIT_COLUMNS = ["synthetic_row", "synthetic_id", "modality", "training_row",
                 "training_participant_id", "max_r", "second_training_row",
                 "second_participant_id", "second_r"]


class PrivacyGateError(GenbrainInputError):
    """A synthetic image is a near-copy of a training image (r above the gate's threshold)."""


def _standardise(x: np.ndarray, what: str, first: int) -> np.ndarray:
    """Rows of x (m, V) as unit-norm centred vectors, in place, in x's float dtype.

    Means and sums of squares use numpy's pairwise summation along each row (relative error
    ~1e-7 in float32 at V = 228,483, where a plain float32 dot product is off by ~1e-5);
    the squares are formed 16 rows at a time so the temporary stays small."""
    x -= x.mean(axis=1, keepdims=True)
    sumsq = np.empty(len(x))
    for i in range(0, len(x), 16):
        b = x[i:i + 16]
        sumsq[i:i + 16] = np.add.reduce(b * b, axis=1)
    bad = ~np.isfinite(sumsq)
    if bad.any():
        raise GenbrainInputError(f"{what} image {first + int(np.flatnonzero(bad)[0])} has "
                                 "non-finite voxels; it cannot be audited")
    norm = np.sqrt(sumsq)
    scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    x *= scale.astype(x.dtype)[:, None]
    return x


def _as_rows(images: np.ndarray | ImageStore | ImageRows) -> ImageRows:
    return images if isinstance(images, ImageRows) else ImageRows(images)


#: working-set budget of the image blocks (MB). The process adds ~150-250 MB to it (interpreter,
#: numpy, the index tables): with 2048 the paper-scale audit (10,000 x 50,000) reached 2,058 MiB
#: of RSS, so the default leaves room to stay under 2 GiB (docs/benchmarks.md).
DEFAULT_MEMORY_MB = 1792


def _syn_block_for(memory_mb: float, n_voxels: int, train_block: int, itemsize: int,
                   work: int) -> int:
    """Synthetic rows that fit the budget beside one training block (native read buffer +
    working copy) and the (syn_block, train_block) products. A synthetic block briefly holds
    its native read buffer beside its working copy while being converted."""
    budget = memory_mb * 2**20 - train_block * n_voxels * (itemsize + work)
    return int(max(1, budget // (n_voxels * (work + itemsize) + train_block * 3 * 8)))


def max_correlation(synthetic: np.ndarray | ImageStore | ImageRows,
                    training: np.ndarray | ImageStore | ImageRows, *, top: int = 2,
                    syn_block: int | None = None, train_block: int = 128,
                    memory_mb: float = DEFAULT_MEMORY_MB, dtype: type = np.float32,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For every synthetic image, its ``top`` best-correlated training images.

    synthetic: n_syn images, training: n_train images, both V voxels (arrays, memmaps, stores
    or :class:`ImageRows`). Returns (rows, r): (n_syn, top) int64 positions in ``training``
    and (n_syn, top) float64 Pearson r, best first (-1 / NaN where n_train < top).
    ``dtype`` is the arithmetic type (float32: |r error| ~ 2e-7 against np.corrcoef at
    V = 228,483, measured; float64 for exactness).
    Results do not depend on the block sizes (up to float rounding).
    """
    syn, train = _as_rows(synthetic), _as_rows(training)
    if syn.n_voxels != train.n_voxels:
        raise GenbrainInputError(f"synthetic images have {syn.n_voxels} voxels, training images "
                                 f"{train.n_voxels}")
    n_syn, n_train, v = len(syn), len(train), syn.n_voxels
    work = np.dtype(dtype).itemsize
    if syn_block is None:
        syn_block = _syn_block_for(memory_mb, v, train_block,
                                   max(syn.dtype.itemsize, train.dtype.itemsize), work)
    syn_block, train_block = max(1, min(syn_block, n_syn)), max(1, train_block)
    best_r = np.full((n_syn, top), -np.inf)
    best_i = np.full((n_syn, top), -1, dtype=np.int64)
    t0, done = time.perf_counter(), 0
    for s0 in range(0, n_syn, syn_block):
        s1 = min(s0 + syn_block, n_syn)
        zs = _standardise(syn.read(slice(s0, s1), dtype=dtype), "synthetic", s0)  # (bs, V)
        run_r, run_i = best_r[s0:s1], best_i[s0:s1]
        for t_start in range(0, n_train, train_block):
            t_stop = min(t_start + train_block, n_train)
            zt = _standardise(train.read(slice(t_start, t_stop), dtype=dtype), "training",
                              t_start)  # (bt, V)
            r = zs @ zt.T  # (bs, bt): every pair of the two blocks in one product
            del zt  # free before the next block is read: one training block alive at a time
            kk = min(top, r.shape[1])
            if r.shape[1] > kk:
                part = np.sort(np.argpartition(-r, kk - 1, axis=1)[:, :kk], axis=1)
            else:
                part = np.broadcast_to(np.arange(r.shape[1]), r.shape)
            cand_r = np.concatenate([run_r, np.take_along_axis(r, part, 1)], axis=1)
            cand_i = np.concatenate([run_i, part + t_start], axis=1)
            # stable sort on -r over candidates in training order: ties go to the earlier row
            order = np.argsort(-cand_r, axis=1, kind="stable")[:, :top]
            run_r[:] = np.take_along_axis(cand_r, order, 1)
            run_i[:] = np.take_along_axis(cand_i, order, 1)
            done += (s1 - s0) * (t_stop - t_start)
        del zs  # likewise, one synthetic block alive at a time
        if progress:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            log.info("audit: %d/%d synthetic images, %.3g pairs/s, ETA %.0f s", s1, n_syn,
                     rate, (n_syn * n_train - done) / rate)
    best_r[best_i < 0] = np.nan
    return best_i, np.clip(best_r, -1.0, 1.0)


def _table_of(images: np.ndarray | ImageStore, table: pd.DataFrame | None,
              what: str) -> pd.DataFrame:
    if table is None:
        if isinstance(images, ImageStore):
            table = images.table
        else:
            table = pd.DataFrame({"modality": ["unknown"] * len(images)})
    table = table.reset_index(drop=True)
    if len(table) != len(images):
        raise GenbrainInputError(f"{what}: {len(table)} table rows for {len(images)} images")
    if "modality" not in table.columns:
        raise GenbrainInputError(f"{what}: the table has no 'modality' column")
    return table


def memorisation_audit(synthetic: np.ndarray | ImageStore, training: np.ndarray | ImageStore,
                       synthetic_table: pd.DataFrame | None = None,
                       training_table: pd.DataFrame | None = None, *,
                       syn_block: int | None = None, train_block: int = 128,
                       memory_mb: float = DEFAULT_MEMORY_MB, dtype: type = np.float32,
                       progress: bool = False) -> pd.DataFrame:
    """Best and second-best training match of every synthetic image, within its modality.

    Inputs are stores (their index is the table) or (N, V) arrays with a table (one row per
    image: ``modality``; optional ``synthetic_id`` / ``participant_id``). Returns
    :data:`AUDIT_COLUMNS`, one row per synthetic image in its order: ``synthetic_row`` /
    ``training_row`` are positions in the inputs, ``*_participant_id`` the training table's
    participant_id (the row number as text when it has none), ``max_r`` / ``second_r`` Pearson r.
    """
    syn_t = _table_of(synthetic, synthetic_table, "synthetic images")
    train_t = _table_of(training, training_table, "training images")
    train_ids = (train_t["participant_id"].astype(str) if "participant_id" in train_t.columns
                 else pd.Series(np.arange(len(train_t)).astype(str)))
    syn_ids = syn_t["synthetic_id"] if "synthetic_id" in syn_t.columns else syn_t.index
    out = []
    for modality in pd.unique(syn_t["modality"]):
        s_rows = np.flatnonzero((syn_t["modality"] == modality).to_numpy())
        t_rows = np.flatnonzero((train_t["modality"] == modality).to_numpy())
        if len(t_rows) == 0:
            raise GenbrainInputError(f"no training images of modality '{modality}' to audit "
                                     f"{len(s_rows)} synthetic images against")
        idx, r = max_correlation(ImageRows(synthetic, s_rows), ImageRows(training, t_rows),
                                 top=2, syn_block=syn_block, train_block=train_block,
                                 memory_mb=memory_mb, dtype=dtype, progress=progress)
        best = np.where(idx >= 0, t_rows[np.maximum(idx, 0)], -1)  # positions in the input
        frame = pd.DataFrame({
            "synthetic_row": s_rows, "synthetic_id": np.asarray(syn_ids)[s_rows],
            "modality": modality, "training_row": best[:, 0],
            "training_participant_id": train_ids.to_numpy()[best[:, 0]], "max_r": r[:, 0],
            "second_training_row": best[:, 1],
            "second_participant_id": np.where(best[:, 1] >= 0,
                                              train_ids.to_numpy()[np.maximum(best[:, 1], 0)],
                                              None),
            "second_r": r[:, 1]})
        out.append(frame)
        log.info("audit %s: %d synthetic x %d training images, max r %.4f", modality,
                 len(s_rows), len(t_rows), float(np.nanmax(r[:, 0])) if len(r) else np.nan)
    if not out:
        return pd.DataFrame(columns=AUDIT_COLUMNS)
    return pd.concat(out).sort_values("synthetic_row").reset_index(drop=True)[AUDIT_COLUMNS]


def privacy_gate(audit: pd.DataFrame, threshold: float = 0.95, max_listed: int = 5,
                 source: str = "memorisation audit") -> pd.DataFrame:
    """Pass (return a one-row summary: passed, threshold, max_r, n_synthetic, n_flagged) when
    no synthetic image has max_r > ``threshold``; else raise :class:`PrivacyGateError` naming
    every offending synthetic/training pair, the ``max_listed`` highest first."""
    if not -1.0 < float(threshold) <= 1.0:
        raise GenbrainInputError(f"privacy gate threshold must be in (-1, 1], got {threshold}")
    missing = [c for c in ("synthetic_id", "modality", "training_participant_id", "max_r")
               if c not in audit.columns]
    if missing:
        raise GenbrainInputError(f"{source}: not an audit table (missing columns {missing})")
    r = pd.to_numeric(audit["max_r"], errors="coerce")
    flagged = audit[r > threshold].assign(max_r=r[r > threshold])
    flagged = flagged.sort_values("max_r", ascending=False, kind="stable")
    if len(flagged):
        shown = [f"synthetic {row.synthetic_id} ~ training {row.training_participant_id} "
                 f"({row.modality}, r = {row.max_r:.4f})"
                 for row in flagged.head(max_listed).itertuples()]
        more = f"; and {len(flagged) - max_listed} more" if len(flagged) > max_listed else ""
        raise PrivacyGateError(f"{source}: {len(flagged)} of {len(audit)} synthetic images "
                               f"correlate with a training image above r = {threshold:g}: "
                               + "; ".join(shown) + more)
    return pd.DataFrame([{"passed": True, "threshold": float(threshold),
                          "max_r": float(r.max()) if len(r) else float("nan"),
                          "n_synthetic": len(audit), "n_flagged": 0}])


def audit_summary(audit: pd.DataFrame) -> pd.DataFrame:
    """Per modality: synthetic images, and the max, 99th percentile and median of max_r."""
    g = audit.groupby("modality", sort=False)["max_r"]
    return pd.DataFrame({"n_synthetic": g.size(), "max_r": g.max(),
                         "p99_r": g.quantile(0.99), "median_r": g.median()}).reset_index()


__all__: Sequence[str] = ("AUDIT_COLUMNS", "PrivacyGateError", "audit_summary", "max_correlation",
                          "memorisation_audit", "privacy_gate")
