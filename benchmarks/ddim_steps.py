"""What fewer DDIM steps change in a finished demo's samples (DESIGN §9: the demo's DDIM steps
are one of its budget levers; sampling is its largest cost).

For one of a demo's fine-tunes (``--model task/unit``, its own checkpoint, store and planted
truth), per number of DDIM steps in ``--steps``, the demo's paired-sample check
(:func:`genbrain.finetune.finetune_checks`, ``--pairs`` pairs per label and modality, the
demo's guidance, batch size, seed and precision) and, against the most steps listed (the
reference: DDIM with eta 0 is a deterministic ODE solver, so from the same initial noise more
steps only refine the same image):

- per label and modality: the sample gain (slope on the planted map; 1 = the full effect) and
  r with the planted map, and ``r_ref``, the r of the paired-difference map with the
  reference's (how much of the measured effect is discretisation);
- per modality: ``image_r``, the mean r of each drawn image with the same row's reference image,
  and ``rel_rmse``, the RMS difference over the reference images' RMS (in store units).

Sampling time is printed per setting: the steps' cost is linear (one model call per step).

    .venv/bin/python benchmarks/ddim_steps.py --results <demo>/results [--model scz/siteA] \
        [--steps 15 20 25 50] [--pairs 4] [--config config/demo.yaml] > ddim_steps.txt
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbrain.finetune import finetune_checks
from genbrain.io import read_tsv
from genbrain.modalities import registry_from_config
from genbrain.sampling import SamplingConfig, sample_table
from genbrain.simulate.write import checks_truth
from genbrain.stats.correlation import pearson
from genbrain.store import ImageStore
from genbrain.training.checkpoints import load_for_sampling, read_checkpoint

LABELS = ("disease", "age", "sex")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, type=Path, help="a finished demo's results/")
    ap.add_argument("--model", default="scz/siteA", help="a fine-tune of the demo: task/unit")
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--steps", nargs="+", type=int, default=[15, 20, 25, 50])
    ap.add_argument("--pairs", type=int, default=4)
    ap.add_argument("--images", type=int, default=8, help="rows for the image comparison")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    config = yaml.safe_load(Path(args.config).read_text())
    demo = args.results / "finetune" / args.model
    ckpt = demo / "checkpoint.pt"
    task = read_checkpoint(ckpt)["config"]["meta"]["task"]
    cohort, mods = task["cohort"], list(task["modalities"])
    index = args.results / "stores" / cohort / "index.tsv"
    training = demo / "training.tsv"
    truth, reference = checks_truth(args.results / "simulated" / cohort / "ground_truth",
                                    config["cohorts"][cohort]["simulate"], mods)
    s = config["synthesize"]
    base = SamplingConfig(steps=s["ddim_steps"], guidance=s["guidance"],
                          batch_size=s["batch_size"], seed=config["seed"],
                          precision=s.get("precision", "fp32"))
    registry = registry_from_config(config)
    torch.set_num_threads(args.threads)
    steps = sorted(set(args.steps))
    ref_steps = steps[-1]
    print(f"{args.model}: DDIM steps {steps} (reference {ref_steps}), guidance {base.guidance}, "
          f"precision {base.precision}, {args.pairs} pairs per label and modality", flush=True)

    # the image comparison: the first --images training rows of each modality, k = 1
    model, norms, tcfg = load_for_sampling(ckpt)
    members = set(read_tsv(training)["participant_id"].astype(str))
    table = ImageStore(index, modalities=mods, participants=members).table
    rows = (table.groupby("modality", sort=False).head(args.images)
            .reset_index(drop=True).assign(synthetic_id=lambda d: np.arange(len(d))))
    keep = [c for c in ("synthetic_id", "participant_id", "modality", "age", "sex",
                        "diagnosis") if c in rows.columns]
    rows = rows[keep]

    images, effects, checks_by_steps, timing = {}, {}, {}, {}
    for n in steps:
        sampling = replace(base, steps=n)
        t0 = time.perf_counter()
        images[n] = sample_table(model, norms, tcfg, rows, sampling, registry, "ddim_steps")
        t_img = time.perf_counter() - t0
        t0 = time.perf_counter()
        checks, maps = finetune_checks(ckpt, index, training, truth, seed=config["seed"],
                                       paired_samples=args.pairs, sampling=sampling,
                                       registry=registry, reference=reference)
        timing[n] = (t_img, time.perf_counter() - t0)
        got = {(r.check, r.modality): r.value for r in checks.itertuples()}
        effects[n] = {(m, label): mp["sample"] for (m, label, _), mp in maps.items()
                      if "sample" in mp}
        checks_by_steps[n] = got
    print("steps  modality  label     gain    r_truth  r_ref   (check s, images s)")
    for n in steps:
        got = checks_by_steps[n]
        for m in mods:
            for label in LABELS:
                key = (m, label)
                if key not in effects[n]:
                    continue
                print(f"{n:5d}  {m:8s}  {label:8s} {got.get((f'{label}_sample_gain', m), np.nan):7.3f}"
                      f"  {got.get((f'{label}_sample_vs_truth', m), np.nan):7.3f}"
                      f"  {pearson(effects[n][key], effects[ref_steps][key]):6.3f}"
                      f"   ({timing[n][1]:.0f} s, {timing[n][0]:.0f} s)", flush=True)
    print("steps  modality  image_r  rel_rmse (each image against the same row at "
          f"{ref_steps} steps)")
    for n in steps:
        for m in mods:
            sel = (rows["modality"] == m).to_numpy()
            a, b = images[n][sel].astype(np.float64), images[ref_steps][sel].astype(np.float64)
            r = np.mean([pearson(x, y) for x, y in zip(a, b)])
            rel = np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b ** 2))
            print(f"{n:5d}  {m:8s}  {r:7.4f}  {rel:7.4f}", flush=True)


if __name__ == "__main__":
    main()
