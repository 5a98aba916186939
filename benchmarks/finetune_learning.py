"""How much of the planted disease (and age, sex) effect a fine-tune carries into its samples,
per fine-tuning setting (issue 28 item 2: the levers that could make a label reach the samples
at the demo's budget).

Re-runs one of a finished demo's fine-tunes (``--model task/unit``: its job, training set,
store and init checkpoint, as the demo ran them) with training keys changed by ``--set
key=value`` (any ``finetune.train`` key: steps, global_batch, lr, label_dropout,
label_tokens...), and measures it with the demo's own paired-sample check
(:func:`genbrain.finetune.finetune_checks`, ``--pairs`` pairs per label, the synthesis stage's
sampler): per label and modality the spatial SD of the mean paired difference, its r with the
planted map and its ``gain`` (slope on the planted map in store units; 1 = the full effect),
beside the training data's own gain (``site_gain``).

    .venv/bin/python benchmarks/finetune_learning.py --results <demo>/results \
        [--model scz/siteA] [--config config/demo.yaml] [--set steps=240 --set lr=2e-3] \
        [--seeds 20251219 1] [--pairs 8] [--work /tmp/finetune_learning]

Each setting and seed trains in its own folder under ``--work`` (its name lists the changed
keys) and is reused when its checkpoint is there. One line per run, modality and label is
printed and appended to ``<work>/summary.tsv``.
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

from genbrain.finetune import FinetuneJob, finetune_checks, run_finetune
from genbrain.modalities import registry_from_config
from genbrain.sampling import SamplingConfig
from genbrain.simulate.write import checks_truth
from genbrain.training.checkpoints import read_checkpoint

LABELS = ("disease", "score", "age", "sex")
KEEP = ("sample_sd", "sample_vs_truth", "sample_gain", "site_gain")


def parse_value(text: str):
    """A --set value as YAML reads it (numbers, booleans, null, lists)."""
    return yaml.safe_load(text)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", required=True, type=Path, help="a finished demo's results/")
    ap.add_argument("--model", default="scz/siteA", help="a fine-tune of the demo: task/unit")
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a finetune train key to change (repeatable)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="training seeds (default: the demo's)")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/finetune_learning"))
    args = ap.parse_args(argv)

    config = yaml.safe_load(Path(args.config).read_text())
    demo = args.results / "finetune" / args.model
    record = read_checkpoint(demo / "checkpoint.pt")["config"]
    job = FinetuneJob.from_dict(record["meta"]["task"])
    init = Path(record["init_checkpoint"])
    if not init.is_absolute():  # the demo ran in its own folder
        init = args.results.parent / init
    changes = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        changes[key] = parse_value(value)
    index = args.results / "stores" / job.cohort / "index.tsv"
    training = demo / "training.tsv"
    spec = config["cohorts"][job.cohort]["simulate"]
    truth, reference = checks_truth(args.results / "simulated" / job.cohort / "ground_truth",
                                    spec, list(job.modalities))
    s = config["synthesize"]
    sampling = SamplingConfig(steps=s["ddim_steps"], guidance=s["guidance"],
                              batch_size=s["batch_size"], seed=config["seed"])
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in args.seeds or [config["seed"]]:
        train = {**job.train, **changes, "seed": seed}
        tag = "_".join(f"{k}-{v}" for k, v in sorted(changes.items())) or "as-demo"
        name = f"{args.model.replace('/', '-')}_{tag}_seed-{seed}"
        out = args.work / name
        ckpt = out / "checkpoint.pt"
        t0 = time.perf_counter()
        if not ckpt.exists():
            run_finetune(FinetuneJob(**{**job.to_dict(), "train": train}), index, training,
                         init, out / "work", ckpt, seed=seed, threads=args.threads)
        t_train = time.perf_counter() - t0
        t0 = time.perf_counter()
        table, _ = finetune_checks(ckpt, index, training, truth, seed=config["seed"],
                                   paired_samples=args.pairs, sampling=sampling,
                                   registry=registry_from_config(config), reference=reference)
        t_check = time.perf_counter() - t0
        got = {(r.check, r.modality): r.value for r in table.itertuples()}
        for m in job.modalities:
            for label in LABELS:
                values = {k: got.get((f"{label}_{k}", m)) for k in KEEP}
                if values["sample_sd"] is None:
                    continue
                rows.append({"run": name, "seed": seed, "modality": m, "label": label,
                             **{k: v for k, v in values.items()},
                             "train_s": round(t_train), "check_s": round(t_check)})
                print(f"{name} {m} {label}: " + "  ".join(
                    f"{k} {float('nan') if v is None else v:.3f}" for k, v in values.items())
                      + f"  (train {t_train:.0f} s, check {t_check:.0f} s)", flush=True)
    summary = args.work / "summary.tsv"
    new = pd.DataFrame(rows)
    if summary.exists():
        new = pd.concat([pd.read_csv(summary, sep="\t"), new], ignore_index=True)
    new.to_csv(summary, sep="\t", index=False)


if __name__ == "__main__":
    main()
