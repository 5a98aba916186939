"""Cross-site diagnosis sweep at the paper's size: wall time against one LightGBM fit.

The protocol of :func:`genbrain.diagnosis.classify.run_sweep` at the paper's schizophrenia size:
7 sites (120-300 subjects, the paper's sites have > 100), 31 synthetic:real ratios (0.0..3.0
by 0.1), 20 LightGBM configurations, every (training, test) pair, 1,000 bootstrap resamples,
ComBat rows, on synthetic features (32 columns like the volumes; a diagnosis shift in 4 of them,
a per-site offset and scale) and a synthetic pool of 3x each site's training split.
LightGBM runs on ``--threads`` threads (default 2: the 2-core budget machine).

Baseline, in the same process: one LightGBM fit of the grid's median-cost configuration
(n_estimators 100) on the largest site's real training split, median of 5. The sweep is
reported as seconds and as a multiple of that fit, and the fits it made, so a reader can see
how much of the time is model fitting and how much bootstrap, ComBat and bookkeeping.

    .venv/bin/python benchmarks/diagnosis_sweep.py [--quick] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from genbrain.diagnosis import classify as cl
from genbrain.splits import level_codes, split_sites
from genbrain.stats.resampling import ratio_grid

SIZES = {"S1": 120, "S2": 150, "S3": 180, "S4": 200, "S5": 230, "S6": 260, "S7": 300}
N_FEATURES = 32


def cohort(sizes: dict, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Real features for every site and a 3x-training-size synthetic pool per site."""
    rng = np.random.default_rng(seed)
    feats = [f"f{i}" for i in range(N_FEATURES)]
    frames, pools = [], {}
    for j, (site, n) in enumerate(sizes.items()):
        shift, scale = rng.normal(0, 0.5, N_FEATURES), rng.uniform(0.8, 1.25, N_FEATURES)

        def draw(m, shift=shift, scale=scale):
            y = rng.random(m) < 0.5
            x = rng.normal(size=(m, N_FEATURES))
            x[:, :4] -= 0.6 * y[:, None]
            df = pd.DataFrame(x * scale + shift, columns=feats)
            return df.assign(diagnosis=np.where(y, "SCZ", "CN"), age=rng.uniform(20, 60, m),
                             sex=rng.choice(["M", "F"], m))

        real = draw(n)
        real.insert(0, "participant_id", [f"sub-{site}{i:04d}" for i in range(n)])
        real.insert(1, "site", site)
        frames.append(real)
        pools[site] = draw(3 * n)
    return pd.concat(frames, ignore_index=True), pools, feats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 sites, ratios 0..3 by 1.0, 5 configurations, 200 resamples")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sizes = dict(list(SIZES.items())[:3]) if args.quick else SIZES
    ratios = ratio_grid(0.0, 3.0, 1.0 if args.quick else 0.1)
    n_configs, n_boot = (5, 200) if args.quick else (cl.N_CONFIGS, 1000)
    feats_table, pools, feats = cohort(sizes)
    spec = cl.SweepSpec(levels=("CN", "SCZ"), ratios=ratios, n_configs=n_configs, seed=0,
                        n_boot=n_boot, n_jobs=args.threads)

    # baseline: one fit on the largest site's training split
    big = max(sizes, key=sizes.get)
    split = split_sites(feats_table, spec.levels, 0)
    tr = split[(split["site"] == big) & (split["split"] == "train")]
    x, y = tr[feats].to_numpy(), level_codes(tr["diagnosis"], spec.levels)
    config = {"n_estimators": 100, "max_depth": 15, "num_leaves": 15, "subsample": 0.8,
              "learning_rate": 0.05, "colsample_bytree": 0.8}
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        cl.fit_lgbm(x, y, config, 2, args.threads, 0)
        times.append(time.perf_counter() - t0)
    fit = statistics.median(times)

    t0 = time.perf_counter()
    res = cl.run_sweep(feats_table, feats, spec, pools)
    sweep = time.perf_counter() - t0
    n_fits = len(res.selection)
    pairs = len(sizes) * (len(sizes) - 1)
    print(f"protocol: {len(sizes)} sites ({sum(sizes.values())} subjects), {len(ratios)} ratios, "
          f"{n_configs} configurations, {pairs} cross-site pairs, {n_boot} resamples, "
          f"{args.threads} LightGBM threads; {len(res.table)} result rows")
    print(f"  baseline: one LightGBM fit (n_estimators 100, {len(x)} rows x {len(feats)} "
          f"features): {fit * 1e3:.1f} ms (median of 5)")
    print(f"  sweep: {sweep:.1f} s = {sweep / fit:.0f}x one fit; {n_fits} fits "
          f"({sweep / n_fits * 1e3:.1f} ms per fit incl. evaluation, bootstrap and ComBat)")
    summ = cl.summarise_cross_site(res.table)
    print("  mean cross-site accuracy: " + ", ".join(
        f"{r.method} {r.mean:.3f}" for r in summ.itertuples()))


if __name__ == "__main__":
    main()
