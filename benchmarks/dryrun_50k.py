"""Dry-run time of a 50,000-subject cohort: chunked jobs vs one job per subject.

Builds a fake real-data cohort (participants.tsv with 50,000 rows over 20 sites and one empty
file per image, so Snakemake's input checks run for real), then times
``snakemake -n`` with the pipeline's chunked preprocessing (``chunk_size`` 500: ~100 jobs) and,
as the named baseline in the same process, with one job per subject (``chunk_size`` 1: the
design the issue measured at ~48 s). Prints both times and their ratio.

    .venv/bin/python benchmarks/dryrun_50k.py [--subjects 50000] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def make_cohort(root: Path, n: int, n_sites: int = 20) -> None:
    rng = np.random.default_rng(0)
    sites = [f"site{k:02d}" for k in range(n_sites)]
    pids = [f"sub-{i:06d}" for i in range(n)]
    pd.DataFrame({
        "participant_id": pids,
        "site": rng.choice(sites, n),
        "age": rng.uniform(45, 80, n).round(1),
        "sex": rng.choice(["M", "F"], n),
        "diagnosis": rng.choice(["CN", "SCZ"], n),
    }).to_csv(root / "participants.tsv", sep="\t", index=False)
    img = root / "img"
    img.mkdir()
    for pid in pids:
        (img / f"{pid}_VBM.nii.gz").touch()


def config(root: Path, chunk_size: int) -> Path:
    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    scz = cfg["cohorts"]["scz"]
    scz.update(participants=str(root / "participants.tsv"),
               images=str(root / "img" / "{participant_id}_{modality}.nii.gz"),
               modalities=["VBM"])
    cfg["cohorts"] = {"scz": scz}
    cfg["preprocess"]["chunk_size"] = chunk_size
    cfg["qc"]["modality"] = "VBM"
    path = root / f"config-{chunk_size}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def dry_run(cfg: Path, workdir: Path) -> float:
    cmd = [str(Path(sys.executable).parent / "snakemake"), "-s", str(ROOT / "Snakefile"), "-n",
           "--quiet", "all", "--configfile", str(cfg), "-d", str(workdir)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"dry-run failed:\n{res.stdout}\n{res.stderr}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subjects", type=int, default=50_000)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_cohort(root, args.subjects)
        print(f"fake cohort: {args.subjects} subjects, {time.perf_counter() - t0:.1f} s to write")
        chunked = dry_run(config(root, 500), root / "work-500")
        print(f"chunked (chunk_size=500): {chunked:.1f} s")
        if not args.skip_baseline:
            baseline = dry_run(config(root, 1), root / "work-1")
            print(f"baseline per-subject jobs (chunk_size=1): {baseline:.1f} s")
            print(f"ratio baseline/chunked: {baseline / chunked:.1f}x")


if __name__ == "__main__":
    main()
