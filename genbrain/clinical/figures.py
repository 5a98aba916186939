"""Figures of the clinical-score sweep (the paper's Fig. 6c-f); PNG, written atomically.

- :func:`sweep_figure`: Fig. 6d/f, Pearson r (left) and MAE (right) of the validation and test
  splits against the synthetic:real ratio, mean and 95% CI (1.96 x SE over seeds) per ratio,
  the chosen ratio (lowest mean validation MAE) as a dashed line. Drawn from
  :attr:`genbrain.clinical.sweep.SweepSummary.per_ratio`, nothing is computed here.
- :func:`pairs_figure`: Fig. 6c/e, real and synthetic images matched for age, sex and score
  (:func:`genbrain.clinical.sweep.match_pairs`), one axial and one coronal slice each.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from genbrain.figures import pyplot, save_figure
from genbrain.space import StandardSpace, standard_space
from genbrain.store import ImageStore

SPLIT_STYLE = {"val": ("validation", "C0"), "test": ("test", "C3")}
#: (x, y, z) voxel cuts: z = 45 is +18 mm, through the perisylvian white matter where the
#: simulated (and most middle-cerebral-artery) lesions lie.
PAIR_CUTS = (30, 60, 45)


def sweep_figure(per_ratio: pd.DataFrame, chosen_ratio: float, out_png: str | os.PathLike,
                 score_name: str = "score", title: str = "") -> None:
    """r and MAE against the ratio for the validation and test splits (mean line, CI band and
    bars), the chosen ratio dashed. ``per_ratio``: rows (ratio, metric, mean, ci_low,
    ci_high) with metrics val_mae, val_r, test_mae, test_r."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.8))
    for ax, (kind, label) in zip(axes, (("r", "Pearson r"), ("mae", f"MAE ({score_name})"))):
        for split, (name, colour) in SPLIT_STYLE.items():
            d = per_ratio[per_ratio["metric"] == f"{split}_{kind}"].sort_values("ratio")
            x, m = d["ratio"].to_numpy(), d["mean"].to_numpy()
            lo, hi = d["ci_low"].to_numpy(), d["ci_high"].to_numpy()
            ax.plot(x, m, "-o", color=colour, ms=3, lw=1.2, label=name)
            ax.fill_between(x, lo, hi, color=colour, alpha=0.15, lw=0)
            ax.errorbar(x, m, yerr=np.nan_to_num(np.vstack([m - lo, hi - m])), fmt="none",
                        ecolor=colour, capsize=2, lw=0.8)
        ax.axvline(chosen_ratio, color="0.3", ls="--", lw=1,
                   label=f"chosen ratio {chosen_ratio:g}:1")
        ax.set_xlabel("synthetic : real ratio", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, frameon=False)
    fig.suptitle(title or "score prediction against the augmentation ratio "
                 "(mean and 95% CI over seeds)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png)


def pairs_figure(pairs: pd.DataFrame, real: ImageStore, synthetic: ImageStore,
                 out_png: str | os.PathLike, score_name: str = "score",
                 real_rows: np.ndarray | None = None, synthetic_rows: np.ndarray | None = None,
                 space: StandardSpace | None = None,
                 cuts: tuple[int, int, int] = PAIR_CUTS, title: str = "") -> None:
    """One row per matched pair: axial and coronal slices of the real and the synthetic image,
    both on the real image's 1-99th percentile window, with age, sex and score under each.

    ``pairs``: :func:`genbrain.clinical.sweep.match_pairs` output; its real_row /
    synthetic_row are positions in ``real_rows`` / ``synthetic_rows`` (store rows; None = the
    stores' own rows).
    """
    plt = pyplot()
    space = space or standard_space()
    r_rows = pairs["real_row"].to_numpy() if real_rows is None else \
        np.asarray(real_rows)[pairs["real_row"].to_numpy()]
    s_rows = pairs["synthetic_row"].to_numpy() if synthetic_rows is None else \
        np.asarray(synthetic_rows)[pairs["synthetic_row"].to_numpy()]
    real_x, synth_x = real.batch(r_rows), synthetic.batch(s_rows)  # (n_pairs, V)
    views = [("axial", np.s_[:, :, cuts[2]]), ("coronal", np.s_[:, cuts[1], :])]
    n = len(pairs)
    fig, axes = plt.subplots(n, 4, figsize=(6.4, 1.9 * n), squeeze=False)
    for i, p in enumerate(pairs.itertuples()):
        lo, hi = np.percentile(real_x[i], [1, 99])
        captions = (f"{p.sex}, {p.age_real:.0f} y, {score_name} {p.score_real:.1f}",
                    f"{p.sex}, {p.age_synthetic:.0f} y, {score_name} {p.score_synthetic:.1f}")
        for c, (kind, vec) in enumerate((("real", real_x[i]), ("synthetic", synth_x[i]))):
            vol = space.to_volume(vec, fill=np.nan)
            for v, (view, sl) in enumerate(views):
                ax = axes[i, 2 * c + v]
                ax.imshow(vol[sl].T, origin="lower", cmap="gray", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"{kind} {view}", fontsize=7)
            axes[i, 2 * c].set_xlabel(captions[c], fontsize=6, loc="left")
        axes[i, 0].set_ylabel(str(p.participant_id), fontsize=6)
    fig.suptitle(title or f"real and synthetic images matched for age, sex and {score_name} "
                 "(left hemisphere on the left)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png)
