"""Figures of the cross-site diagnosis stage (PNG, 150 dpi, written atomically), all drawn
from the tidy tables of :mod:`genbrain.diagnosis.classify` (nothing is computed here but means).

- :func:`heatmap`: the paper's Fig. 6a, training site x test site, relative change (%) of a
  metric with augmentation at each site's chosen ratio vs real-only; '*' where the paired
  bootstrap CI of the difference excludes 0.
- :func:`ratio_curves`: a metric vs the synthetic:real ratio per training site, within-site
  (value and 95% CI) and cross-site (mean over target sites, band = mean of the pairs' CIs),
  the chosen ratio marked.
- :func:`harmonization_bars`: mean cross-site metric for real-only, augmentation, ComBat and
  both, error bars 1.96 x SE over the (train, test) pairs (the paper's error bars).
- :func:`shap_summary`: mean |SHAP| of the top features, real-only vs augmented, averaged over
  training sites.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from genbrain.figures import pyplot, save_figure

METHOD_STYLE = {"real": ("real only", "0.45"), "augmented": ("augmented", "C0"),
                "harmonized": ("ComBat", "C2"), "harmonized+augmented": ("ComBat + augmented",
                                                                         "C3")}


def heatmap(table: pd.DataFrame, out_png: str | os.PathLike, metric: str = "accuracy",
            method: str = "augmented", title: str = "") -> None:
    """Train x test heatmap of 100 * diff / real-only value for ``method`` rows (the chosen
    ratio's for augmentation); diagonal = within-site; '*' = difference CI excludes 0."""
    plt = pyplot()
    t = table[(table["metric"] == metric) & (table["method"] == method)]
    if method in ("augmented", "harmonized+augmented"):
        t = t[t["chosen"].astype(bool)]
    sites = sorted(set(table["train_site"]) | set(table["test_site"]))
    rel = np.full((len(sites), len(sites)), np.nan)
    sig = np.zeros_like(rel, dtype=bool)
    for r in t.itertuples():
        i, j = sites.index(r.train_site), sites.index(r.test_site)
        base = r.value - r.diff
        rel[i, j] = 100.0 * r.diff / base if base else np.nan
        sig[i, j] = r.diff_low > 0 or r.diff_high < 0
    lim = max(float(np.nanmax(np.abs(rel))) if np.isfinite(rel).any() else 1.0, 1.0)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(sites), 0.8 + 0.6 * len(sites)))
    im = ax.imshow(rel, cmap="RdBu_r", vmin=-lim, vmax=lim)
    for i in range(len(sites)):
        for j in range(len(sites)):
            if np.isfinite(rel[i, j]):
                ax.text(j, i, f"{rel[i, j]:+.1f}{'*' if sig[i, j] else ''}", ha="center",
                        va="center", fontsize=7)
    ax.set_xticks(range(len(sites)), sites, rotation=45, ha="right")
    ax.set_yticks(range(len(sites)), sites)
    ax.set_xlabel("test site")
    ax.set_ylabel("training site")
    fig.colorbar(im, ax=ax, label=f"{metric} change vs real only (%)")
    ax.set_title(title or f"{METHOD_STYLE.get(method, (method,))[0]}: {metric}", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png)


def ratio_curves(table: pd.DataFrame, out_png: str | os.PathLike,
                 metrics: Sequence[str] = ("accuracy", "auroc"), title: str = "") -> None:
    """Metric vs ratio per training site: within-site (left) and mean cross-site (right)."""
    plt = pyplot()
    t = table[table["method"].isin(["real", "augmented"])]
    sites = sorted(t["train_site"].unique())
    fig, axes = plt.subplots(len(metrics), 2, figsize=(9, 2.8 * len(metrics)), squeeze=False,
                             sharex=True)
    for row, metric in enumerate(metrics):
        m = t[t["metric"] == metric]
        for col, setting in enumerate(("within", "cross")):
            ax = axes[row, col]
            for k, s in enumerate(sites):
                g = m[(m["train_site"] == s) & (m["setting"] == setting)]
                g = g.groupby("ratio")[["value", "ci_low", "ci_high"]].mean().sort_index()
                colour = f"C{k % 10}"
                ax.plot(g.index, g["value"], color=colour, lw=1.2, label=s)
                ax.fill_between(g.index, g["ci_low"], g["ci_high"], color=colour, alpha=0.12)
                chosen = m.loc[(m["train_site"] == s) & m["chosen"].astype(bool), "ratio"]
                if len(chosen):
                    r = float(chosen.iloc[0])
                    ax.plot([r], [g.loc[r, "value"]], marker="v", color=colour, ms=7)
            ax.set_title(f"{metric}, {setting}-site" + (" (mean over targets)"
                                                        if setting == "cross" else ""),
                         fontsize=9)
            ax.set_ylabel(metric)
            if row == len(metrics) - 1:
                ax.set_xlabel("synthetic : real ratio")
    axes[0, 0].legend(fontsize=7, title="training site (v = chosen ratio)", title_fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png)


def harmonization_bars(table: pd.DataFrame, out_png: str | os.PathLike,
                       metrics: Sequence[str] = ("accuracy", "auroc"), title: str = "") -> None:
    """Mean cross-site metric per method (chosen ratio for augmentation), +-1.96 SE over
    pairs, with every pair as a dot."""
    plt = pyplot()
    cross = table[(table["setting"] == "cross")]
    keep = (cross["method"].isin(["real", "harmonized"])) | cross["chosen"].astype(bool)
    cross = cross[keep]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        m = cross[cross["metric"] == metric]
        methods = [x for x in METHOD_STYLE if x in set(m["method"])]
        for i, method in enumerate(methods):
            v = m.loc[m["method"] == method, "value"].to_numpy()
            se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0.0
            colour = METHOD_STYLE[method][1]
            ax.bar(i, v.mean(), yerr=1.96 * se, color=colour, alpha=0.7, capsize=3)
            ax.scatter(np.full(len(v), i) + np.linspace(-0.2, 0.2, len(v)), v, s=6,
                       color="k", zorder=3)
        ax.set_xticks(range(len(methods)), [METHOD_STYLE[x][0] for x in methods], rotation=20,
                      ha="right", fontsize=8)
        ax.set_ylabel(f"cross-site {metric}")
        lo = float(m["value"].min()) if len(m) else 0.0
        ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, out_png)


def shap_summary(explanations: pd.DataFrame, out_png: str | os.PathLike, top: int = 10,
                 title: str = "") -> None:
    """Top features by mean |SHAP| (averaged over training sites), real-only vs augmented."""
    plt = pyplot()
    mean = explanations.groupby(["feature", "method"])["mean_abs_shap"].mean().unstack()
    order = mean.max(axis=1).sort_values(ascending=False).index[:top][::-1]
    mean = mean.loc[order]
    methods = [m for m in ("real", "augmented") if m in mean.columns]
    fig, ax = plt.subplots(figsize=(6, 0.8 + 0.32 * len(order)))
    h = 0.8 / max(len(methods), 1)
    for k, method in enumerate(methods):
        label, colour = METHOD_STYLE[method]
        ax.barh(np.arange(len(order)) + (k - (len(methods) - 1) / 2) * h, mean[method],
                height=h, color=colour, label=label)
    ax.set_yticks(range(len(order)), order, fontsize=7)
    ax.set_xlabel("mean |SHAP| (log-odds), averaged over training sites")
    ax.legend(fontsize=8)
    ax.set_title(title or "regions driving the selected models", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png)
