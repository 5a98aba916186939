"""Figures of the image-level stage (PNG, written atomically), drawn from the pairs, the
predictions and the score tables of :mod:`genbrain.imaging.plan` (nothing is computed here
but a display window).

- :func:`examples`: the paper's Fig. 3 first row: for a few test images, the corrupted input
  (or each source of a several-source synthesis task), each method's output and the clean
  target on the same axial slice.
- :func:`metric_distributions`: the paper's Fig. 3 second row: per metric, each method's
  per-image values with the mean and its bootstrap 95% CI.
- :func:`identifiability`: per method, the test targets x predictions correlation matrix,
  each row centred on its mean, so an identifiable prediction is a positive diagonal.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from genbrain.figures import CUTS, pyplot, save_figure

METRIC_LABELS = {"psnr": "PSNR (dB)", "rmse": "RMSE", "ssim3d": "3D-SSIM", "ms_ssim": "MS-SSIM",
                 "r": "own r", "identified": "identified (0/1)",
                 "r_gap": "own r - mean other r", "dice_auc": "Dice AUC (top 5-50%)"}


def examples(panels: Mapping[str, np.ndarray], subjects: Sequence[str],
             out_png: str | os.PathLike, title: str = "") -> None:
    """One row per test image, one column per panel (``panels``: name -> (n, V), e.g. input,
    each method, target, in that order), the axial slice through the basal ganglia. Every
    image is shown on its own 1-99th percentile window (methods speak different units)."""
    from genbrain.space import standard_space

    plt = pyplot()
    space = standard_space()
    names = list(panels)
    n = len(subjects)
    fig, axes = plt.subplots(n, len(names), figsize=(1.3 * len(names), 1.55 * n + 0.4),
                             squeeze=False)
    for r, subject in enumerate(subjects):
        for c, name in enumerate(names):
            vec = np.asarray(panels[name][r], np.float32)
            lo, hi = np.percentile(vec, [1, 99])
            vol = space.to_volume(vec, fill=np.nan)
            ax = axes[r, c]
            ax.imshow(vol[:, :, CUTS[2]].T, origin="lower", cmap="gray", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r, 0].set_ylabel(subject, fontsize=6)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png)


def metric_distributions(scores: pd.DataFrame, summary: pd.DataFrame,
                         out_png: str | os.PathLike, methods: Sequence[str],
                         title: str = "") -> None:
    """One panel per metric of ``summary``: per method (x, in ``methods`` order) its per-image
    values (dots, from ``scores``) and the mean with its 95% CI (bar, from ``summary``)."""
    plt = pyplot()
    metrics = list(dict.fromkeys(summary["metric"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=(2.3 * len(metrics) + 0.4, 2.8),
                             squeeze=False)
    rng = np.random.default_rng(0)  # horizontal jitter of the dots only
    for ax, metric in zip(axes[0], metrics):
        for i, method in enumerate(methods):
            v = scores[(scores["metric"] == metric) & (scores["method"] == method)]["value"]
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(v)), v, s=6, color="0.55", zorder=1)
            s = summary[(summary["metric"] == metric) & (summary["method"] == method)]
            if len(s):
                s = s.iloc[0]
                ax.errorbar(i, s["mean"], yerr=[[s["mean"] - s["ci_low"]],
                                                [s["ci_high"] - s["mean"]]],
                            fmt="o", color="C0" if method != "input" else "C3", capsize=3,
                            zorder=2)
        ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=7)
        ax.set_title(METRIC_LABELS.get(metric, metric), fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png)


def identifiability(correlations: np.ndarray, runs: Sequence[str], summary: pd.DataFrame,
                    out_png: str | os.PathLike, title: str = "") -> None:
    """One panel per run (``runs``, e.g. input and each method): its (n, n) matrix ``C[i, j]``
    = r(target i, prediction j) (``correlations``: (len(runs), n, n)) minus each row's mean,
    on one symmetric colour scale for all panels; titled with the top-1 accuracy and the
    mean r_gap from ``summary`` (rows of metric ``identified`` / ``r_gap``). With no
    matrices (identifiability off) the figure says so."""
    plt = pyplot()
    c = np.asarray(correlations, np.float64)
    if len(c) == 0:
        fig, ax = plt.subplots(figsize=(4, 1.2))
        ax.axis("off")
        ax.text(0.5, 0.5, "identifiability not scored (the task's identifiability: false)",
                ha="center", va="center", fontsize=8)
        save_figure(fig, out_png)
        return
    centred = c - c.mean(axis=2, keepdims=True)
    vmax = float(np.abs(centred).max()) or 1.0
    fig, axes = plt.subplots(1, len(runs), figsize=(2.0 * len(runs) + 0.8, 2.5), squeeze=False)
    for ax, name, m in zip(axes[0], runs, centred):
        im = ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, interpolation="nearest")
        stats = []
        for metric, label in (("identified", "top-1"), ("r_gap", "gap")):
            row = summary[(summary["method"] == name) & (summary["metric"] == metric)]
            if len(row):
                stats.append(f"{label} {row['mean'].iloc[0]:.2f}")
        ax.set_title(f"{name}\n{', '.join(stats)}", fontsize=7)
        ax.set_xlabel("prediction", fontsize=6)
        ax.set_ylabel("target", fontsize=6)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=list(axes[0]), shrink=0.8, label="r - row mean")
    fig.suptitle(title, fontsize=8)
    save_figure(fig, out_png)
