"""Cohen's d engine (issue 15, item 2): the d map, its bootstrap, and a large store from disk.

(a) The d map of n = 300 images of V = 228,483 voxels (an in-memory float32 array, a planted
    effect) by :func:`genbrain.stats.cohens_d.cohens_d`, against two baselines run here: one
    read pass over the same data in the same blocks (``ImageRows.read`` + a sum: the floor
    any streaming method pays; goal: within 5x) and a statsmodels per-voxel loop
    (``sm.OLS(y, X).fit()``, then ``params[-1] / sqrt(mse_resid)``) timed on a few hundred
    voxels and extrapolated to V (goal: >= 500x).
(b) 1,000 bootstrap resamples of that cohort scored against a reference map
    (:func:`~genbrain.stats.cohens_d.bootstrap_overlaps`; goal <= 15 s), beside the naive
    baseline: resample the rows and call ``cohens_d`` again (a few resamples, extrapolated).
(c) The reference map of n = 20,000 images from a float16 store on disk (40 shards of 500
    rows, 9.1 GB, written under ``--workdir``), in a fresh child process: wall time and peak
    RSS (VmHWM; goal <= 2 GB) at the default memory budget.

``--quick``: n = 100, V = 50,000, 200 resamples, a 2,000-image store. Threads: whatever
OMP_NUM_THREADS says (the issue's goals are for 2 cores).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/cohens_d.py [--quick] [--workdir DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbrain.io import save_tsv
from genbrain.stats.cohens_d import (
    DEFAULT_MEMORY_MB,
    _block_rows,
    bootstrap_overlaps,
    cohens_d,
    design_matrix,
)
from genbrain.stats.rows import ImageRows
from genbrain.store import ImageStore, merge_indices, write_shard

V_FULL = 228_483
SHARD = 500


def covariates(n: int, seed: int, sites: int = 1) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"participant_id": [f"sub-{i:06d}" for i in range(n)],
                         "age": rng.uniform(20, 80, n).round(1), "sex": rng.choice(["M", "F"], n),
                         "diagnosis": np.where(np.arange(n) % 2 == 0, "SCZ", "CN"),
                         "site": [f"S{(i // 7) % sites}" for i in range(n)]})


def cohort(n: int, v: int, seed: int = 0) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    cov = covariates(n, seed)
    truth = 0.4 * np.sin(np.linspace(0, 60, v))
    x = rng.standard_normal((n, v), dtype=np.float32)
    x += 0.5
    x += np.outer(cov["diagnosis"] == "SCZ", truth).astype(np.float32)
    return x, cov, truth


def best_of(f, rounds: int) -> tuple[float, object]:
    best, out = np.inf, None
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


class Clock:
    """Wall and CPU seconds (all threads of this process) of a block: on a shared machine the
    CPU time shows how much of the wall time was spent waiting for a core."""

    def __enter__(self) -> Self:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0

    def __str__(self) -> str:
        return f"{self.wall:.2f} s wall, {self.cpu:.2f} s CPU"


def read_pass(x: np.ndarray | ImageStore, block: int) -> float:
    """The floor: every value read once, in blocks of rows in the data's own dtype (a column
    sum of each block of an array; for a store, the positioned reads into a buffer)."""
    rows, total = ImageRows(x), 0.0
    for s in range(0, len(rows), block):
        stop = min(s + block, len(rows))
        y = x[s:stop] if isinstance(x, np.ndarray) else rows.read(slice(s, stop), dtype=rows.dtype)
        total += float(y.sum(axis=0, dtype=np.float32)[0])
    return total


def part_a(x: np.ndarray, cov: pd.DataFrame, truth: np.ndarray, rounds: int, sm_voxels: int
           ) -> np.ndarray:
    import statsmodels.api as sm

    n, v = x.shape
    block = _block_rows(v, x.dtype.itemsize, DEFAULT_MEMORY_MB)
    t_read, _ = best_of(lambda: read_pass(x, block), rounds)
    rows = ImageRows(x)
    t_read64, _ = best_of(lambda: [rows.read(slice(s, s + block)) for s in range(0, n, block)],
                          rounds)
    t_d, d = best_of(lambda: cohens_d(x, cov), rounds)
    design = design_matrix(cov).x
    cols = np.linspace(0, v - 1, sm_voxels).astype(int)
    ref = []
    with Clock() as c_sm:
        for j in cols:
            fit = sm.OLS(x[:, j].astype(np.float64), design).fit()
            ref.append(fit.params[-1] / np.sqrt(fit.mse_resid))
    t_sm = c_sm.wall / sm_voxels * v
    with Clock() as c_d:
        cohens_d(x, cov)
    err = float(np.max(np.abs(d[cols] - np.array(ref))))
    print(f"\n(a) d map, n = {n}, V = {v:,}, float32 array ({x.nbytes / 2**20:.0f} MiB), "
          f"best of {rounds}")
    print(f"   baseline, one read pass (column sums of blocks of {block} rows, float32): "
          f"{t_read:.3f} s")
    print(f"   second baseline, the read the other statistics modules do (ImageRows.read into "
          f"float64, same blocks): {t_read64:.3f} s")
    print(f"   cohens_d: {t_d:.3f} s  -> {t_d / t_read:.2f}x the read pass (goal <= 5x), "
          f"{t_d / t_read64:.2f}x the float64 read")
    print(f"   baseline, statsmodels OLS loop: {t_sm / v * 1e3:.3f} ms/voxel on {sm_voxels} "
          f"voxels, extrapolated {t_sm:.0f} s for V  -> cohens_d is {t_sm / t_d:,.0f}x faster "
          "(goal >= 500x)")
    print(f"   CPU time: cohens_d {c_d} (one more run); statsmodels {c_sm} for "
          f"{sm_voxels} voxels -> CPU-time ratio {c_sm.cpu / sm_voxels * v / c_d.cpu:,.0f}x")
    print(f"   max |d - statsmodels| on those voxels: {err:.1e} (float32 arithmetic for a "
          f"float32 array); r(d, truth) = {np.corrcoef(d, truth)[0, 1]:.3f}")
    return d


def part_b(x: np.ndarray, cov: pd.DataFrame, reference: np.ndarray, n_boot: int,
           naive: int) -> None:
    n, v = x.shape
    with Clock() as c_boot:
        boot = bootstrap_overlaps(x, cov, reference=reference, n_boot=n_boot, seed=0)
    t_boot = c_boot.wall
    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    for _ in range(naive):
        idx = np.sort(rng.integers(0, n, n))
        cohens_d(x[idx], cov.iloc[idx])
    t_naive = (time.perf_counter() - t0) / naive * n_boot
    print(f"\n(b) bootstrap, {n_boot} resamples of n = {n}, V = {v:,} (scored against a "
          "reference map, all voxels in the mask)")
    print(f"   bootstrap_overlaps: {c_boot} (goal <= 15 s wall for 1,000 at n = 300, "
          f"V = 228,483; CPU / 2 = {c_boot.cpu / 2:.1f} s is the wall two free cores would "
          "need at best)")
    print(f"   baseline, resample rows + cohens_d per resample (map only, no scores): "
          f"{t_naive / n_boot:.2f} s each, extrapolated {t_naive:.0f} s  -> "
          f"{t_naive / t_boot:.1f}x")
    print("   bootstrap means: " + ", ".join(f"{m} {boot[m].mean():.3f}"
                                             for m in boot.columns[1:]))


def build_store(root: Path, n: int, v: int) -> None:
    """A float16 store of n images (shards of 500 rows; reused when present)."""
    index = root / "index.tsv"
    if index.exists() and len(ImageStore(index)) == n:
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    pool = rng.standard_normal((1000, v), dtype=np.float32).astype(np.float16)  # rows reused
    cov = covariates(n, 0, sites=20)
    parts = []
    for k, start in enumerate(range(0, n, SHARD)):
        rows = np.arange(start, min(start + SHARD, n))
        d = root / f"chunk-{k}"
        d.mkdir(parents=True)
        block = pool[rng.permutation(len(pool))[:len(rows)]]
        block[cov["diagnosis"].iloc[rows].to_numpy() == "SCZ"] += np.float16(0.1)
        write_shard(block, d / "VBM.npy", "float16")
        save_tsv(cov.iloc[rows].assign(modality="VBM", modality_index=0, shard="VBM.npy",
                                       row=np.arange(len(rows))), d / "index.tsv")
        parts.append(d / "index.tsv")
    merge_indices(parts, index)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(workdir: str, mode: str) -> None:
    store = ImageStore(Path(workdir) / "index.tsv")
    before = rss_mb()
    t0 = time.perf_counter()
    if mode == "read":
        read_pass(store, _block_rows(store.n_voxels, 2, DEFAULT_MEMORY_MB))
        d = np.zeros(1)
    else:
        d = cohens_d(store, site=True)
    print(json.dumps({"n": len(store), "seconds": time.perf_counter() - t0,
                      "rss_before_mb": before, "rss_peak_mb": rss_mb(),
                      "finite": bool(np.isfinite(d).all()), "mean_d": float(d.mean())}))


def part_c(workdir: Path, n: int, v: int) -> None:
    t0 = time.perf_counter()
    build_store(workdir, n, v)
    gib = sum(p.stat().st_size for p in workdir.rglob("*.npy")) / 2**30
    t_build = time.perf_counter() - t0
    res = {}
    for mode in ("read", "d"):  # the read pass first: both then find the same page cache
        out = subprocess.run([sys.executable, __file__, "--child", str(workdir), "--mode", mode],
                             check=False, capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"(c) child failed:\n{out.stderr[-3000:]}")
        res[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    read, res = res["read"], res["d"]
    print(f"\n(c) reference map (site dummies, 20 sites) of n = {n:,}, V = {v:,}, float16 store "
          f"on disk ({gib:.2f} GiB; built/checked in {t_build:.0f} s), fresh process, "
          f"memory_mb {DEFAULT_MEMORY_MB}")
    print(f"   baseline, one read pass of the store (same blocks): {read['seconds']:.1f} s, "
          f"peak RSS {read['rss_peak_mb']:.0f} MB")
    print(f"   cohens_d: wall {res['seconds']:.1f} s ({gib * 1024 / res['seconds']:.0f} MiB/s of "
          f"store, {res['seconds'] / read['seconds']:.2f}x the read pass); peak RSS "
          f"{res['rss_peak_mb']:.0f} MB (after imports {res['rss_before_mb']:.0f} MB; goal <= "
          f"2048 MB); map finite: {res['finite']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    p.add_argument("--workdir", default="/tmp/genbrain-bench-cohens-d")
    p.add_argument("--keep", action="store_true", help="keep the store of (c)")
    p.add_argument("--skip-c", action="store_true", help="skip the on-disk store run")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="d", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child, args.mode)
        return
    n, v, n_boot, big = (100, 50_000, 200, 2_000) if args.quick else (300, V_FULL, 1000, 20_000)
    x, cov, truth = cohort(n, v)
    d = part_a(x, cov, truth, rounds=3, sm_voxels=300)
    reference = truth + 0.3 * np.random.default_rng(5).standard_normal(v)
    part_b(x, cov, reference, n_boot, naive=3)
    del x, d
    if not args.skip_c:
        workdir = Path(args.workdir) / f"n{big}-v{v}"
        try:
            part_c(workdir, big, v)
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
