"""How hard an image task's corrupted input is, per ``noise_scale``: the input's PSNR and
3D-SSIM against the clean images, on a finished demo's **training-split** images (never the
task's test images), beside the paper's input (T1w enhancement, UK Biobank: PSNR 23.75 dB,
3D-SSIM 0.920). Issue 30: the stores keep normalised images, so the paper's raw noise units are
lost and ``noise_scale`` sets the input's difficulty; it is calibrated here, on inputs only,
before any method's output is looked at.

    .venv/bin/python benchmarks/imaging_calibration.py --results <demo>/results \
        [--config config/demo.yaml] [--task t1enhance] [--n 8] \
        [--scales 0.0005 0.001 0.0015 0.002 0.003]

Each image is corrupted exactly as the task's pairs step does (motion, then Gaussian and
Rician noise, seeded per image; the config's corruption with only ``noise_scale`` changed);
one line per setting: the mean and range over images. Motion alone and noise alone (at each
scale) are printed for context.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbrain.imaging.corrupt import CorruptionSettings, corrupt_vectors
from genbrain.imaging.metrics import psnr, ssim3d_vectors
from genbrain.imaging.plan import load_clean, select_participants
from genbrain.io import read_tsv
from genbrain.splits import split_ids

PAPER_INPUT = {"psnr": 23.75, "ssim3d": 0.920}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, type=Path, help="a finished demo's results/")
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--task", default="t1enhance")
    ap.add_argument("--n", type=int, default=8, help="training-split images corrupted")
    ap.add_argument("--scales", nargs="+", type=float,
                    default=[0.0005, 0.001, 0.0015, 0.002, 0.003])
    args = ap.parse_args(argv)

    config = yaml.safe_load(Path(args.config).read_text())
    spec = config["imaging"]["tasks"][args.task]
    cohort = spec.get("cohort") or next(n for n, c in config["cohorts"].items()
                                        if c.get("role") == "pretrain")
    split = read_tsv(args.results / "pretrain" / "split.tsv")
    # a key of its own: not the task's training pairs either
    ids = select_participants(split_ids(split, "train"), args.n, config["seed"],
                              f"{args.task}-calibration")
    clean = load_clean(args.results / "stores" / cohort / "index.tsv",
                       spec.get("modality", "T1w"), ids)
    base = {**spec.get("corrupt", {}), "seed": int(config["seed"])}
    print(f"{len(ids)} training-split {spec.get('modality', 'T1w')} images of {cohort}; the "
          f"paper's input: PSNR {PAPER_INPUT['psnr']} dB, 3D-SSIM {PAPER_INPUT['ssim3d']}")
    settings = [("motion only", {**base, "sigmas": [0.0]})]
    for s in args.scales:
        settings += [(f"noise only, noise_scale {s:g}", {**base, "noise_scale": s,
                                                          "n_movements": [0, 0]}),
                     (f"motion + noise, noise_scale {s:g}", {**base, "noise_scale": s})]
    for label, values in settings:
        t0 = time.perf_counter()
        corrupted, _ = corrupt_vectors(clean, ids, CorruptionSettings.from_config(values))
        p, q = psnr(corrupted, clean), ssim3d_vectors(corrupted, clean)
        print(f"{label:34s} PSNR {p.mean():6.2f} dB ({p.min():.2f}-{p.max():.2f})  "
              f"3D-SSIM {q.mean():.3f} ({q.min():.3f}-{q.max():.3f})  "
              f"[{time.perf_counter() - t0:.0f} s]", flush=True)


if __name__ == "__main__":
    main()
