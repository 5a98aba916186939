"""How much of the planted age and sex effects a pretrained model carries into its samples, per
training setting (issue 28 item 2: why the CPU demo's 300 x 8 pretraining learns 2-3x less than
the same run on a GPU).

Trains the demo's pretraining (``pretrain.train`` of the config, with ``--steps``,
``--batch``, ``--precision`` and ``--seed`` overriding it) on the training split of a finished
demo's population store, then measures the model on the sample path with the fine-tunes'
paired-sample check (:func:`genbrain.finetune.finetune_checks`, ``paired_samples`` pairs per
label, the synthesis stage's sampler): age 75 vs 50 and sex M vs F, on ``--modalities``. A
pair's two samples start from the same noise, so the mean difference is the label's effect on
what synthesis draws; ``gain`` is its slope on the planted map in store units (1 = the full
effect), beside the training data's own (``site_gain``).

    .venv/bin/python benchmarks/pretrain_learning.py --results <demo>/results \
        [--config config/demo.yaml] [--seeds 20251219 1 2] [--precision fp32 bf16] \
        [--steps 300] [--batch 8] [--pairs 8] [--modalities VBM] [--work /tmp/pretrain_learning]

Each (seed, precision) trains in its own folder under ``--work`` and is reused when its
checkpoint is there (delete it to retrain). One line per run and label is printed and the
whole table is written to ``<work>/summary.tsv``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbrain.finetune import finetune_checks
from genbrain.modalities import registry_from_config
from genbrain.pretrain import pretrain
from genbrain.sampling import SamplingConfig
from genbrain.simulate.write import checks_truth

KEEP = ("age_sample_sd", "age_sample_vs_truth", "age_sample_gain", "age_site_gain",
        "sex_sample_sd", "sex_sample_vs_truth", "sex_sample_gain", "sex_site_gain")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, type=Path, help="a finished demo's results/")
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="training seeds (default: the config's seed)")
    ap.add_argument("--precision", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--modalities", nargs="+", default=["VBM"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/pretrain_learning"))
    args = ap.parse_args(argv)

    config = yaml.safe_load(Path(args.config).read_text())
    cohort = next(n for n, c in config["cohorts"].items() if c.get("role") == "pretrain")
    index = args.results / "stores" / cohort / "index.tsv"
    split = args.results / "pretrain" / "split.tsv"
    truth_dir = args.results / "simulated" / cohort / "ground_truth"
    truth, reference = checks_truth(truth_dir, config["cohorts"][cohort]["simulate"],
                                    args.modalities)
    s = config["synthesize"]
    sampling = SamplingConfig(steps=s["ddim_steps"], guidance=s["guidance"],
                              batch_size=s["batch_size"], seed=config["seed"])
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    training = args.work / "training.tsv"  # the checks' training images: the training split
    table = pd.read_csv(split, sep="\t")
    table[table["split"] == "train"].to_csv(training, sep="\t", index=False)
    rows = []
    for seed in args.seeds or [config["seed"]]:
        for precision in args.precision:
            train = dict(config["pretrain"]["train"], seed=seed, precision=precision)
            for key, value in (("steps", args.steps), ("global_batch", args.batch),
                               ("lr", args.lr)):
                if value is not None:
                    train[key] = value
            name = f"seed-{seed}_{precision}_{train['steps']}x{train['global_batch']}" \
                   f"_lr-{train['lr']:g}"
            out = args.work / name
            ckpt = out / "checkpoint.pt"
            t0 = time.perf_counter()
            if not ckpt.exists():
                pretrain(index, split, train, out / "work", ckpt, seed=seed,
                         threads=args.threads)
            t_train = time.perf_counter() - t0
            t0 = time.perf_counter()
            table, _ = finetune_checks(ckpt, index, training, truth, seed=config["seed"],
                                       paired_samples=args.pairs, sampling=sampling,
                                       registry=registry_from_config(config),
                                       reference=reference, modalities=args.modalities)
            t_check = time.perf_counter() - t0
            table = table[table["check"].isin(KEEP + ("loss_end",))]
            for r in table.itertuples():
                rows.append({"run": name, "seed": seed, "precision": precision,
                             "check": r.check, "modality": r.modality, "value": r.value})
            got = {(r.check, r.modality): r.value for r in table.itertuples()}
            for m in args.modalities:
                print(f"{name} {m}: loss_end {got.get(('loss_end', ''), float('nan')):.4f}  "
                      + "  ".join(f"{k} {got.get((k, m), float('nan')):.3f}" for k in KEEP)
                      + f"  (train {t_train:.0f} s, check {t_check:.0f} s)", flush=True)
    summary = pd.DataFrame(rows)
    summary.to_csv(args.work / "summary.tsv", sep="\t", index=False)


if __name__ == "__main__":
    main()
