"""BWAS figures (paper Fig. 5) and d maps as NIfTI, drawn from maps and score tables.

- :func:`d_map_figure`: per site, the reference, real-site and synthetic d maps on the same
  axial slices with one symmetric colour scale, through nilearn's ``plot_stat_map`` over the
  MNI152 2 mm template (:func:`genbrain.space.template_t1`); works offline.
- :func:`gain_figure`: relative gain (%) of synthetic over real per metric with its 95% CI,
  and beside it the raw scores with their CIs and each map's chance level.
- :func:`write_d_map`: a (V,) d map as a NIfTI image on the standard grid (0 outside the
  analysis mask) for the researcher's own viewer.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from genbrain.figures import pyplot, save_figure
from genbrain.io import save_nifti
from genbrain.space import StandardSpace, standard_space, template_t1
from genbrain.stats.overlap import METRIC_LABELS, METRICS

Z_CUTS = (-20, -8, 4, 16, 28, 40)  # mm: temporal lobe, hippocampus/insula, basal ganglia, cortex


def _volume_image(d: np.ndarray, space: StandardSpace):
    vec = np.nan_to_num(np.asarray(d, np.float64), nan=0.0).astype(np.float32)
    return space.image(space.to_volume(vec))


def write_d_map(d: np.ndarray, path: str | os.PathLike, space: StandardSpace | None = None
                ) -> None:
    """Write a (V,) Cohen's d map as float32 NIfTI on the standard grid, atomically; voxels
    outside the brain mask or NaN (outside the analysis mask) are 0."""
    save_nifti(_volume_image(d, space or standard_space()), path)


def symmetric_limit(maps: Sequence[np.ndarray], q: float = 99.0) -> float:
    """One colour limit for maps shown together: the ``q``-th percentile of |d| over all of
    them (finite voxels), so a few extreme voxels do not wash out the rest."""
    vals = np.concatenate([np.abs(np.asarray(m)[np.isfinite(m)]) for m in maps])
    return float(np.percentile(vals, q)) if len(vals) and np.percentile(vals, q) > 0 else 1.0


def d_map_figure(maps: Mapping[str, np.ndarray], out_png: str | os.PathLike, title: str = "",
                 space: StandardSpace | None = None, cut_coords: Sequence[float] = Z_CUTS,
                 vmax: float | None = None) -> float:
    """One row per map (name -> (V,) d, e.g. reference / real / synthetic), the same axial
    slices (``cut_coords``, mm) and one symmetric colour scale (``vmax``, default
    :func:`symmetric_limit`) -> PNG; returns the colour limit used."""
    from nilearn import plotting

    plt = pyplot()
    space = space or standard_space()
    vmax = vmax or symmetric_limit(list(maps.values()))
    bg = space.image(np.asarray(template_t1(), np.float32))
    fig, axes = plt.subplots(len(maps), 1, figsize=(11, 2.1 * len(maps)), squeeze=False)
    # nilearn calls gc.collect() on every image it reads (7 per map); in a process holding
    # many objects (torch, the workflow) that costs seconds each. Freezing the objects that
    # exist now makes those collections cheap; nothing created here is leaked.
    gc.freeze()
    try:
        for ax, (name, d) in zip(axes[:, 0], maps.items()):
            display = plotting.plot_stat_map(
                _volume_image(d, space), bg_img=bg, display_mode="z",
                cut_coords=list(cut_coords), axes=ax, vmax=vmax, symmetric_cbar=True,
                cmap="RdBu_r", threshold=1e-6, annotate=True, draw_cross=False,
                black_bg=False, colorbar=True)
            display.title(name, size=8, color="k", bgcolor="w", y=1.02)
    finally:
        gc.unfreeze()
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, out_png)
    return vmax


def gain_figure(table: pd.DataFrame, out_png: str | os.PathLike, title: str = "",
                curve: pd.DataFrame | None = None, effective: Mapping | None = None) -> None:
    """From a site's score table (:func:`genbrain.bwas.compare.site_score_table`): left, the
    relative gain (%) of synthetic over real per metric with its 95% CI (the paper's bars);
    middle, real and synthetic scores with bootstrap 95% CIs and each map's chance level as a
    tick, so a Dice near chance is seen as such. With ``curve`` (n, repeat, r: real cohorts
    of n against the reference) and ``effective`` (``r_real``, ``r_synthetic``,
    ``n_effective_interp``, ``n_real``), a third panel reads the effective sample size off
    the curve."""
    plt = pyplot()
    t = table.set_index("metric").reindex([m for m in METRICS if m in set(table["metric"])])
    labels = [METRIC_LABELS[m] for m in t.index]
    x = np.arange(len(t))
    three = curve is not None and len(curve) > 0
    fig, axes = plt.subplots(1, 3 if three else 2, figsize=(15 if three else 11, 3.4))
    ax1, ax2 = axes[0], axes[1]
    gain = t["relative_gain_pct"].to_numpy(np.float64)
    err = np.vstack([gain - t["relative_gain_ci_low"], t["relative_gain_ci_high"] - gain])
    ax1.bar(x, gain, color=np.where(gain >= 0, "C0", "0.6"), alpha=0.6)
    ax1.errorbar(x, gain, yerr=np.abs(np.nan_to_num(err)), fmt="none", ecolor="k", capsize=2,
                 lw=1)
    ax1.axhline(0, color="0.5", lw=0.6)
    ax1.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    ax1.set_ylabel("gain of synthetic over real (%)", fontsize=8)
    for j, (kind, colour) in enumerate((("real", "0.45"), ("synthetic", "C0"))):
        off = x - 0.18 + 0.36 * j
        mean = t[kind].to_numpy(np.float64)
        lo, hi = t[f"{kind}_ci_low"].to_numpy(), t[f"{kind}_ci_high"].to_numpy()
        ax2.errorbar(off, mean, yerr=np.abs(np.nan_to_num(np.vstack([mean - lo, hi - mean]))),
                     fmt="o", ms=3, color=colour, capsize=2, lw=1, label=kind)
        ax2.scatter(off, t[f"chance_{kind}"], marker="_", s=120, color=colour, lw=1.5,
                    label=f"chance ({kind})")
    ax2.set_xticks(x, labels, rotation=35, ha="right", fontsize=7)
    ax2.set_ylabel("score vs reference", fontsize=8)
    ax2.legend(fontsize=6, ncol=2)
    if three:
        ax3 = axes[2]
        ax3.scatter(curve["n"], curve["r"], s=8, color="0.6", label="real cohort (repeat)")
        mean = curve.groupby("n")["r"].mean()
        ax3.plot(mean.index, mean.to_numpy(), "o-", ms=3, color="0.3", label="mean")
        eff = dict(effective or {})
        for key, colour, what in (("r_real", "0.45", "site's real"),
                                  ("r_synthetic", "C0", "synthetic")):
            if np.isfinite(eff.get(key, np.nan)):
                ax3.axhline(eff[key], color=colour, ls="--", lw=1,
                            label=f"{what} map (r {eff[key]:.2f})")
        n_eff = eff.get("n_effective_interp", np.nan)
        if np.isfinite(n_eff):
            ax3.axvline(n_eff, color="C0", ls=":", lw=1, label=f"effective n {n_eff:.0f}")
        ax3.set_xscale("log")
        ns = sorted(curve["n"].unique())
        ax3.set_xticks(ns, [str(int(n)) for n in ns])
        ax3.minorticks_off()
        ax3.set_xlabel("real cohort size n (subsamples of the reference pool)", fontsize=8)
        ax3.set_ylabel("r with the rest of the pool", fontsize=8)
        ax3.legend(fontsize=6)
    for ax in axes:
        ax.tick_params(labelsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png)
