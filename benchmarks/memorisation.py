"""Memorisation audit: streamed block products vs a per-pair ``np.corrcoef`` loop, and its memory.

Data: float16 image stores at the full V = 228,483 (shards of 500 rows), a training store and
a synthetic store as large as the largest size asked for (each run uses their first rows),
image-like (a shared mean image plus noise, so unrelated images correlate at r ~ 0.5), with
two planted near-copies
(synthetic 0 = training 123 + small noise, synthetic 1 = training 1000 exactly).

1. Speed, in this process, at ``--speed`` (default budget, 2 GB): the audit
   (:func:`genbrain.audit.memorisation_audit`) against the baseline, a Python loop calling
   ``np.corrcoef(a, b)[0, 1]`` per pair. The loop runs on a subset of pairs (its rows already
   in memory as float32: the loop's reading is not timed, in its favour) and is extrapolated per
   pair to the audit's pair count.
2. Memory, in one child process per size (``--small``, ``--large``): peak RSS
   (``VmHWM`` of /proc/self/status) of the audit at a fixed ``--memory-mb`` budget, next to
   the RSS after imports and the bytes of image data. For contrast, a child that only reads the same training
   rows through the store's memory maps (``ImageStore.rows``) in blocks.
3. An estimate of the paper-scale run (10,000 synthetic x 50,000 training images) from a
   cost model fitted to the speed run: ``pairs * t_pair + passes * n_train * t_row``.
4. ``--paper``: instead of 1-3, the paper-scale run itself: stores of 10,000 synthetic and
   50,000 training images (27 GB of float16 under ``--workdir``), one audit child at
   ``--memory-mb`` (use 1792, the default budget), its wall time and peak RSS. About an hour
   and a half on 2 cores; the training store does not fit a 24 GB machine's page cache, so
   every pass reads it from disk.

Page cache is warm (the stores were just written); the machine may be shared, so ratios of
runs in one process are what to compare.

    .venv/bin/python benchmarks/memorisation.py [--speed 1000x4000] [--small 400x4000]
        [--large 800x8000] [--memory-mb 512] [--workdir /tmp/genbrain-bench-memorisation]
        [--keep]
    .venv/bin/python benchmarks/memorisation.py --paper --memory-mb 1792
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbrain.audit import (
    DEFAULT_MEMORY_MB,
    _standardise,
    _syn_block_for,
    max_correlation,
    memorisation_audit,
)
from genbrain.io import save_tsv
from genbrain.stats.rows import ImageRows
from genbrain.store import ImageStore, merge_indices, write_shard

V = 228_483
SHARD = 500
PLANTS = {0: 123, 1: 1000}  # synthetic row -> training row (0: + noise, 1: exact copy)


def _size(text: str) -> tuple[int, int]:
    a, b = text.lower().split("x")
    return int(a), int(b)


def build(root: Path, n_syn: int, n_train: int) -> None:
    """Training and synthetic float16 stores (written once; reused if present)."""
    if (root / "syn" / "index.tsv").exists() and (root / "train" / "index.tsv").exists() and \
            len(ImageStore(root / "train" / "index.tsv")) >= n_train and \
            len(ImageStore(root / "syn" / "index.tsv")) >= n_syn:
        return
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    base = rng.standard_normal(V, dtype=np.float32)
    planted = {}
    for name, n, prefix in (("train", n_train, "tr"), ("syn", n_syn, "sy")):
        indices = []
        for k, start in enumerate(range(0, n, SHARD)):
            rows = np.arange(start, min(start + SHARD, n))
            x = rng.standard_normal((len(rows), V), dtype=np.float32)
            x += base
            if name == "train":
                for t in PLANTS.values():
                    if t in rows:
                        planted[t] = x[t - start].copy()
            else:
                for s, t in PLANTS.items():
                    if s in rows:
                        x[s - start] = planted[t] + (0.1 * rng.standard_normal(V)
                                                     if s == 0 else 0)
            d = root / name / f"chunk-{k}"
            d.mkdir(parents=True)
            write_shard(x, d / "T1w.npy", "float16")
            save_tsv(pd.DataFrame({"participant_id": [f"{prefix}-{i:05d}" for i in rows],
                                   "site": "s", "age": 60.0, "sex": "F", "modality": "T1w",
                                   "modality_index": 27, "shard": "T1w.npy",
                                   "row": np.arange(len(rows)), "synthetic_id": rows}),
                     d / "index.tsv")
            indices.append(d / "index.tsv")
        merge_indices(indices, root / name / "index.tsv")


def stores(root: Path, n_syn: int, n_train: int) -> tuple[ImageStore, ImageStore]:
    def first(name: str, prefix: str, n: int) -> ImageStore:
        return ImageStore(root / name / "index.tsv",
                          participants=[f"{prefix}-{i:05d}" for i in range(n)])
    return first("syn", "sy", n_syn), first("train", "tr", n_train)


def rss_mb() -> float:
    """Peak resident set of this process image (MB): VmHWM, which exec resets; ru_maxrss would
    also count the parent's pages that the child held between fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args: argparse.Namespace) -> None:
    """One measurement in a fresh process (its own peak RSS); prints one JSON line."""
    n_syn, n_train = _size(args.child_size)
    syn, train = stores(Path(args.workdir), n_syn, n_train)
    before = rss_mb()
    t0 = time.perf_counter()
    out: dict = {"n_syn": n_syn, "n_train": n_train, "rss_before_mb": before}
    if args.child == "audit":
        audit = memorisation_audit(syn, train, memory_mb=args.memory_mb)
        hit = audit[audit["max_r"] > 0.95]
        out["flagged"] = [[int(s), str(t), round(float(r), 4)] for s, t, r in zip(
            hit["synthetic_id"], hit["training_participant_id"], hit["max_r"])]
        out["max_r_others"] = float(audit.loc[audit["max_r"] <= 0.95, "max_r"].max())
        out["syn_block"] = _syn_block_for(args.memory_mb, V, 128, 2, 4)
    else:  # read every training row once through the store's memory maps
        for s in range(0, len(train), 128):
            train.rows(range(s, min(s + 128, len(train))))
    out["seconds"] = time.perf_counter() - t0
    out["rss_peak_mb"] = rss_mb()
    print(json.dumps(out))


def run_child(args: argparse.Namespace, mode: str, size: tuple[int, int]) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--child-size", f"{size[0]}x{size[1]}",
           "--workdir", args.workdir, "--memory-mb", str(args.memory_mb)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def paper(args: argparse.Namespace, root: Path) -> None:
    """The paper-scale audit, measured: 10,000 synthetic x 50,000 training images."""
    size = (10_000, 50_000)
    t0 = time.perf_counter()
    build(root, *size)
    disk = sum(f.stat().st_size for f in root.rglob("*.npy")) / 2**30
    print(f"stores: float16, V = {V:,}, {disk:.2f} GiB on disk under {root} (built/checked in "
          f"{time.perf_counter() - t0:.0f} s)", flush=True)
    res = run_child(args, "audit", size)
    print(f"paper scale, {size[0]:,} x {size[1]:,} = {size[0] * size[1]:,} pairs, --memory-mb "
          f"{args.memory_mb:g} (syn_block {res['syn_block']}): {res['seconds'] / 3600:.2f} h, "
          f"{size[0] * size[1] / res['seconds']:,.0f} pairs/s; RSS after imports "
          f"{res['rss_before_mb']:.0f} MB, peak RSS {res['rss_peak_mb']:.0f} MB")
    print(f"flagged: {res['flagged']}; best r of the others {res['max_r_others']:.3f}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--speed", default="1000x4000", help="n_syn x n_train for the speed run")
    p.add_argument("--small", default="400x4000", help="n_syn x n_train, first memory run")
    p.add_argument("--large", default="800x8000", help="n_syn x n_train, second memory run")
    p.add_argument("--memory-mb", type=float, default=512,
                   help="audit working-set budget of the memory runs (both sizes above the "
                        "synthetic block it allows, so the blocks are the same)")
    p.add_argument("--loop-syn", type=int, default=4, help="synthetic rows in the loop subset")
    p.add_argument("--loop-train", type=int, default=150, help="training rows in the loop subset")
    p.add_argument("--workdir", default="/tmp/genbrain-bench-memorisation")
    p.add_argument("--keep", action="store_true", help="keep the stores for another run")
    p.add_argument("--paper", action="store_true",
                   help="measure the paper-scale audit (10,000 x 50,000) instead")
    p.add_argument("--child", choices=["audit", "memmap"], help=argparse.SUPPRESS)
    p.add_argument("--child-size", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    root = Path(args.workdir)
    if args.paper:
        return paper(args, root)
    speed, small, large = _size(args.speed), _size(args.small), _size(args.large)
    t0 = time.perf_counter()
    build(root, max(speed[0], small[0], large[0]), max(speed[1], small[1], large[1]))
    disk = sum(f.stat().st_size for f in root.rglob("*.npy")) / 2**30
    print(f"stores: float16, V = {V:,}, {disk:.2f} GiB on disk under {root} "
          f"(built/checked in {time.perf_counter() - t0:.0f} s)")

    # 1. speed, same process, same data
    syn, train = stores(root, *speed)
    t0 = time.perf_counter()
    audit = memorisation_audit(syn, train)  # default budget
    t_audit = time.perf_counter() - t0
    pairs = len(syn) * len(train)
    a = syn.batch(range(args.loop_syn)).astype(np.float32)
    b = train.batch(range(args.loop_train)).astype(np.float32)
    t0 = time.perf_counter()
    loop_r = np.array([[np.corrcoef(x, y)[0, 1] for y in b] for x in a])
    t_pair_loop = (time.perf_counter() - t0) / loop_r.size
    _, r32 = max_correlation(a, b)
    err = float(np.abs(r32[:, 0] - loop_r.max(axis=1)).max())
    t_loop = t_pair_loop * pairs
    print(f"\n1. speed: {len(syn)} synthetic x {len(train)} training images = {pairs:,} pairs")
    print(f"   audit (float32 block products, default memory_mb {DEFAULT_MEMORY_MB}): {t_audit:.1f} s "
          f"= {pairs / t_audit:,.0f} pairs/s")
    print(f"   baseline np.corrcoef loop: {t_pair_loop * 1e3:.3f} ms/pair on "
          f"{loop_r.size} pairs (rows preloaded as float32), extrapolated to {pairs:,} pairs: "
          f"{t_loop:,.0f} s")
    print(f"   ratio: {t_loop / t_audit:,.0f}x   (max |r_audit - r_corrcoef| on the subset's "
          f"best matches: {err:.1e})")
    flagged = audit[audit["max_r"] > 0.95]
    print("   flagged (r > 0.95): " + ", ".join(
        f"synthetic {s} ~ training {t} (r = {r:.4f})" for s, t, r in
        flagged[["synthetic_id", "training_participant_id", "max_r"]].itertuples(index=False))
        + f"; best r of the others: {audit.loc[audit['max_r'] <= 0.95, 'max_r'].max():.3f}")

    # 2. memory: peak RSS per size in fresh processes
    print(f"\n2. peak RSS (fresh process per row; budget --memory-mb {args.memory_mb:g})")
    print("   | run | synthetic x training | image data | syn_block | seconds | RSS after "
          "imports | peak RSS |")
    print("   | --- | --- | --- | --- | --- | --- | --- |")
    results = {}
    for name, size in (("audit", small), ("audit", large), ("memmap", small),
                       ("memmap", large)):
        res = run_child(args, name, size)
        results[name, size] = res
        data = (size[0] + size[1]) * V * 2 / 2**30 if name == "audit" else size[1] * V * 2 / 2**30
        label = ("memorisation_audit (positioned reads)" if name == "audit"
                 else "ImageStore.rows over training only (memmap)")
        print(f"   | {label} | {size[0]} x {size[1]} | {data:.2f} GiB | "
              f"{res.get('syn_block', '-')} | {res['seconds']:.1f} | {res['rss_before_mb']:.0f} MB"
              f" | {res['rss_peak_mb']:.0f} MB |")
    big = results["audit", large]
    print(f"   large run flagged: {big['flagged']}; best r of the others {big['max_r_others']:.3f}")

    # 3. the paper-scale estimate: t_row (read + convert + standardise one training row, per
    # pass over the training store) timed here, t_pair from the speed run (same process, the
    # default budget the estimate uses)
    rows = ImageRows(train)
    t0 = time.perf_counter()
    for s in range(0, 512, 128):
        _standardise(rows.read(slice(s, s + 128), dtype=np.float32), "training", s)
    t_row = (time.perf_counter() - t0) / 512
    passes_speed = math.ceil(speed[0] / _syn_block_for(DEFAULT_MEMORY_MB, V, 128, 2, 4))
    t_pair = (t_audit - passes_speed * speed[1] * t_row) / pairs
    print(f"\n3. paper scale: 10,000 synthetic x 50,000 training images, V = {V:,} "
          f"(float16: {10_000 * V * 2 / 1e9:.1f} GB + {50_000 * V * 2 / 1e9:.1f} GB)")
    print(f"   fitted: t_row = {t_row * 1e3:.2f} ms per training row per pass, "
          f"t_pair = {t_pair * 1e6:.2f} us per pair")
    for mem in (args.memory_mb, DEFAULT_MEMORY_MB, 8192):
        sb = _syn_block_for(mem, V, 128, 2, 4)
        passes = math.ceil(10_000 / sb)
        est = 10_000 * 50_000 * t_pair + passes * 50_000 * t_row
        print(f"   --memory-mb {mem:g}: syn_block {sb}, {passes} passes over the training "
              f"store, estimated {est / 3600:.1f} h on this machine")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
