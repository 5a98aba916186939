"""Calibration of the embedded disorder cohort's disease effect for cross-site diagnosis
(issue 16 item 0): the real-only LightGBM baseline on regional volumes, per disease effect.

The criterion, fixed before any augmentation result was seen: the demo's ``disease_effect``
is the value of the grid whose **mean real-only within-site test accuracy** over the demo
cohort's sites (the protocol of :func:`genbrain.diagnosis.classify.run_sweep` at ratio 0: seeded
3:1:1 split, the paper's 20 LightGBM configurations, selection on validation accuracy) is
closest to 0.70, the middle of the paper's real-only range 0.59-0.80, and that value must stay
inside 0.59-0.80 on two other simulator seeds. Nothing here looks at synthetic images.

Each subject's T1w is made exactly as the simulator writes it (``Generator.subject`` +
``apply_site`` with the subject's own random stream), normalised as the preprocessing stores it
(the registry's per-image z-score, float16), and measured by the ``tissue`` volume backend.
Controls do not depend on the effect and are made once per seed.

    .venv/bin/python benchmarks/diagnosis_calibration.py [--effects 0.1 0.2 0.3 0.4 0.5 0.6]
        [--seeds 20251219 1 2] [--config config/demo.yaml] [--cohort sczdx]

The cohort's name is part of every simulator seed, so ``--cohort scz`` (the draw the value was
calibrated on; the BWAS cohort now) and ``--cohort sczdx`` (the demo's diagnosis cohort, same
sites) are different draws of the same design.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbrain.diagnosis import classify as cl
from genbrain.diagnosis import volumes as vol
from genbrain.modalities import DEFAULT_REGISTRY
from genbrain.simulate.cohort import Generator, participants, site_specs, subject_rng


def t1_vectors(gen: Generator, cohort: str, spec: dict, seed: int, rows: pd.DataFrame,
               index_of: dict) -> np.ndarray:
    """(n, V) stored T1w vectors (z-scored, float16 round trip) of ``rows``."""
    sites = {s.name: s for s in site_specs(cohort, spec, seed)}
    out = []
    for row in rows.to_dict("records"):
        site = sites[row["site"]]
        rng = subject_rng(seed, cohort, site.name, index_of[row["participant_id"]])
        img = gen.apply_site(gen.subject(row, site, rng, ["T1w"]), site, rng)["T1w"]
        out.append(DEFAULT_REGISTRY["T1w"].normalise(img).astype(np.float16))
    return np.asarray(out, np.float32)


def baseline(features: pd.DataFrame, levels: tuple, seed: int) -> pd.DataFrame:
    """Real-only within- and cross-site accuracy per training site."""
    spec = cl.SweepSpec(levels=levels, ratios=(0.0,), seed=seed, n_boot=200, n_jobs=2,
                        harmonize=False)
    res = cl.run_sweep(features, list(vol.COLUMNS[1:]), spec)
    acc = res.table[res.table["metric"] == "accuracy"]
    return acc.groupby(["train_site", "setting"])["value"].mean().unstack()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config/demo.yaml")
    ap.add_argument("--cohort", default="sczdx")
    ap.add_argument("--effects", type=float, nargs="+", default=[0.10, 0.20, 0.30, 0.40, 0.50, 0.60])
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    args = ap.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    cohort_cfg = config["cohorts"][args.cohort]
    levels = tuple(cohort_cfg["diagnosis_levels"])
    seeds = args.seeds or [int(config["seed"])]
    for seed in seeds:
        spec = copy.deepcopy(cohort_cfg["simulate"])
        table = participants(args.cohort, spec, seed)
        index_of = {p: i for i, p in enumerate(table["participant_id"])}
        control = table["diagnosis"] == levels[0]
        t0 = time.perf_counter()
        gen = Generator.from_spec(spec)
        vol_c = vol.volumes_table(list(table.loc[control, "participant_id"]),
                                  t1_vectors(gen, args.cohort, spec, seed, table[control],
                                             index_of))
        print(f"seed {seed}: {int(control.sum())} controls in {time.perf_counter() - t0:.0f} s",
              flush=True)
        for effect in args.effects:
            t0 = time.perf_counter()
            gen = Generator(spec["kind"], effect)
            vol_p = vol.volumes_table(list(table.loc[~control, "participant_id"]),
                                      t1_vectors(gen, args.cohort, spec, seed, table[~control],
                                                 index_of))
            v = pd.concat([vol_c, vol_p]).rename(columns={vol.ID_COLUMN: "participant_id"})
            feats = table.merge(v, on="participant_id")
            acc = baseline(feats, levels, seed)
            print(f"seed {seed}, disease_effect {effect:.2f}: mean within-site accuracy "
                  f"{acc['within'].mean():.3f}, cross-site {acc['cross'].mean():.3f} "
                  f"({time.perf_counter() - t0:.0f} s); per site within "
                  + " ".join(f"{s} {a:.2f}" for s, a in acc["within"].items()), flush=True)


if __name__ == "__main__":
    main()
