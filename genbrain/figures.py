"""Figures of the pipeline's stages (PNG, 150 dpi, written atomically).

- :func:`similarity_figure`: the paper's Fig. 2a, cosine similarity with the reference t-maps
  per modality, one panel per effect (age, sex), mean and 95% CI over replicates per kind.
- :func:`audit_histogram`: the paper's Fig. 2b as a distribution, the best Pearson r of every
  synthetic image with the training images of its modality, and the gate's threshold.
- :func:`loss_curve`: the pretraining loss per step and its running mean.
- :func:`synthetic_vs_real`: the paper's Fig. 2c, slices of synthetic and real images per
  modality for one condition.
- :func:`truth_maps`: the ground-truth effect maps planted in a simulated cohort.

Every figures module (these and the stages') draws through :func:`pyplot` and writes through
:func:`save_figure`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from genbrain.io import atomic_path

DPI = 150
CUTS = (45, 54, 36)  # voxel indices (x, y, z) through the basal ganglia
KIND_STYLE = {  # kind -> (label, colour); the paper's order and its three colours
    "real": ("real", "0.45"),
    "synthetic": ("synthetic", "C0"),
    "synthetic_avg": ("synthetic, mean of k", "C3"),
}


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed); every figures
    module draws through it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out_png: str | os.PathLike) -> None:
    """Write ``fig`` to ``out_png`` (PNG, :data:`DPI` dpi) atomically and close it."""
    plt = pyplot()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)


def similarity_figure(table: pd.DataFrame, out_png: str | os.PathLike, title: str = "") -> None:
    """Cosine similarity per modality (x) and kind (colour): replicates as dots, mean and 95%
    CI (t over replicates) as a bar; one panel per effect. ``table``: the tidy table of
    :func:`genbrain.stats.similarity.similarity_protocol` (several modalities concatenated)."""
    from genbrain.stats.similarity import summarise_similarity

    plt = pyplot()
    summary = summarise_similarity(table)
    modalities = list(pd.unique(table["modality"]))
    effects = [e for e in ("age", "sex") if e in set(table["effect"])]
    kinds = [k for k in KIND_STYLE if k in set(table["kind"])]
    width = max(4.0, 0.55 * len(modalities) * max(len(kinds), 1) / 2 + 1.5)
    fig, axes = plt.subplots(len(effects), 1, figsize=(min(width, 16), 2.6 * len(effects)),
                             squeeze=False, sharex=True)
    x = np.arange(len(modalities))
    step = 0.8 / max(len(kinds), 1)
    for ax, effect in zip(axes[:, 0], effects):
        for j, kind in enumerate(kinds):
            label, colour = KIND_STYLE[kind]
            off = x - 0.4 + step * (j + 0.5)
            s = summary[(summary["effect"] == effect) & (summary["kind"] == kind)]
            s = s.set_index("modality").reindex(modalities)
            ax.bar(off, s["cosine_mean"], width=step * 0.9, color=colour, alpha=0.35,
                   label=label)
            err = np.vstack([s["cosine_mean"] - s["ci_low"], s["ci_high"] - s["cosine_mean"]])
            ax.errorbar(off, s["cosine_mean"], yerr=np.nan_to_num(err), fmt="none",
                        ecolor=colour, capsize=2, lw=1)
            d = table[(table["effect"] == effect) & (table["kind"] == kind)]
            pos = off[[modalities.index(m) for m in d["modality"]]]
            ax.scatter(pos, d["cosine"], s=6, color=colour, zorder=3)
        ax.axhline(0, color="0.8", lw=0.6)
        ax.set_ylabel(f"{effect}: cosine with\nreference t-map", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[-1, 0].set_xticks(x, modalities, rotation=45 if len(modalities) > 6 else 0,
                           ha="right" if len(modalities) > 6 else "center")
    # legend above the panels: bars near 1 leave no free corner inside
    axes[0, 0].legend(frameon=False, fontsize=7, ncol=len(kinds), loc="lower left",
                      bbox_to_anchor=(0, 1.0))
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png)


def audit_histogram(audit: pd.DataFrame, out_png: str | os.PathLike, threshold: float = 0.95,
                    title: str = "") -> None:
    """Histogram of ``max_r`` (best training match of every synthetic image), one colour per
    modality when there are at most 8, with the gate's threshold as a dashed line and the count
    above it in the legend. ``audit``: :func:`genbrain.audit.memorisation_audit`'s table."""
    plt = pyplot()
    r = pd.to_numeric(audit["max_r"], errors="coerce")
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    lo = float(np.nanmin(np.append(r.to_numpy(), threshold))) if len(r) else 0.0
    bins = np.linspace(max(-1.0, lo - 0.02), 1.0, 51)  # the threshold always in range
    modalities = list(pd.unique(audit["modality"]))
    if 1 < len(modalities) <= 8:
        ax.hist([r[audit["modality"] == m].dropna() for m in modalities], bins=bins,
                stacked=True, label=modalities)
    else:
        ax.hist(r.dropna(), bins=bins, color="C0",
                label=modalities[0] if len(modalities) == 1 else f"{len(modalities)} modalities")
    n_over = int((r > threshold).sum())
    ax.axvline(threshold, color="C3", ls="--", lw=1.2,
               label=f"threshold r = {threshold:g} ({n_over} above)")
    ax.set_xlabel("max Pearson r with a training image (same modality)")
    ax.set_ylabel("synthetic images")
    ax.legend(frameon=False, fontsize=7)
    ax.set_title(title or f"memorisation audit: {len(audit)} synthetic images", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png)


def loss_curve(table: pd.DataFrame, out_png: str | os.PathLike, title: str = "") -> None:
    """Per-step training loss (light) and its running mean (dark) on a log scale. A table
    without rows (a checkpoint trained elsewhere, which records no loss, e.g. one imported by
    :mod:`genbrain.model.public`) gives a figure that says so."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    if len(table):
        _loss_axes(ax, table, "optimizer step", title)
    else:
        ax.text(0.5, 0.5, "the checkpoint records no training loss\n(a model trained elsewhere, "
                "e.g. imported)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    save_figure(fig, out_png)


def _loss_axes(ax, table: pd.DataFrame, xlabel: str, title: str) -> None:
    """Per-step loss (light) and its running mean (dark), log scale, on ``ax``."""
    ax.plot(table["step"], table["loss"], color="0.75", lw=0.6, label="loss per step")
    ax.plot(table["step"], table["smoothed"], color="C0", lw=1.5, label="running mean")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("IDDPM hybrid loss")
    ax.legend(frameon=False, fontsize=8)
    ax.set_title(title, fontsize=9)


def synthetic_vs_real(real: np.ndarray, synthetic: np.ndarray, names: Sequence[str],
                      out_png: str | os.PathLike, real_labels: Sequence[str] = (),
                      title: str = "", synthetic_labels: Sequence[str] = ()) -> None:
    """One row per modality: axial and coronal slices of a real image and of a synthetic one,
    both on the real image's 1-99th percentile intensity window (so a synthetic image that
    misses the contrast shows it). real, synthetic: (n_modalities, V); the labels (one short
    line per row) go under the real and the synthetic pair."""
    from genbrain.space import standard_space

    plt = pyplot()
    space = standard_space()
    n = len(names)
    fig, axes = plt.subplots(n, 4, figsize=(6.4, 1.85 * n), squeeze=False)
    views = [("axial", np.s_[:, :, CUTS[2]]), ("coronal", np.s_[:, CUTS[1], :])]
    for r, name in enumerate(names):
        lo, hi = np.percentile(real[r], [1, 99])
        for c, (kind, vec) in enumerate([("real", real[r]), ("synthetic", synthetic[r])]):
            vol = space.to_volume(vec, fill=np.nan)
            for v, (view, sl) in enumerate(views):
                ax = axes[r, 2 * c + v]
                ax.imshow(vol[sl].T, origin="lower", cmap="gray", vmin=lo, vmax=hi)
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    ax.set_title(f"{kind} {view}", fontsize=7)
            labels = real_labels if c == 0 else synthetic_labels
            if len(labels):  # under the pair, from its left edge
                axes[r, 2 * c].set_xlabel(labels[r], fontsize=6, loc="left")
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png)


def truth_maps(maps: dict[tuple[str, str], np.ndarray], out_png: str | os.PathLike,
               title: str = "") -> None:
    """The planted ground truth of a simulated cohort: one row per modality, one column per
    effect, each panel the axial slice where that effect map is largest (sum of |effect|),
    on a symmetric blue-red scale of its own (99th percentile of |effect|), over the brain
    mask in grey, subject's left on the left; a map that is zero everywhere says so. maps: ``{(modality, effect): (V,)}`` in the modality's raw units."""
    from genbrain.space import standard_space

    plt = pyplot()
    space = standard_space()
    modalities = list(dict.fromkeys(m for m, _ in maps))
    effects = list(dict.fromkeys(e for _, e in maps))
    fig, axes = plt.subplots(len(modalities), len(effects),
                             figsize=(1.7 * len(effects) + 0.6, 1.75 * len(modalities)),
                             squeeze=False)
    for r, m in enumerate(modalities):
        for c, e in enumerate(effects):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            vec = maps.get((m, e))
            if vec is not None and not np.any(vec):
                ax.text(0.5, 0.5, "no effect", ha="center", va="center", fontsize=7,
                        transform=ax.transAxes)
            elif vec is not None:
                vol = space.to_volume(vec)
                z = int(np.argmax(np.abs(vol).sum(axis=(0, 1))))
                scale = float(np.percentile(np.abs(vec), 99)) or 1.0
                ax.imshow(np.where(space.mask[:, :, z], 0.85, 1.0).T, origin="lower",
                          cmap="gray", vmin=0, vmax=1)
                shown = np.where(space.mask[:, :, z], vol[:, :, z], np.nan).T
                im = ax.imshow(shown, origin="lower", cmap="RdBu_r", vmin=-scale, vmax=scale)
                cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
                cb.ax.tick_params(labelsize=5)
                cb.ax.yaxis.get_offset_text().set_fontsize(5)
                ax.set_xlabel(f"z = {space.affine[2, 2] * z + space.affine[2, 3]:.0f} mm",
                              fontsize=6)
            if r == 0:
                ax.set_title(e, fontsize=8)
            if c == 0:
                ax.set_ylabel(m, fontsize=8)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    save_figure(fig, out_png)


def finetune_checks_figure(loss: pd.DataFrame, checks: pd.DataFrame,
                           maps: dict[tuple[str, str, str], dict[str, np.ndarray]],
                           out_png: str | os.PathLike, title: str = "") -> None:
    """One fine-tune at a glance: its loss curve, then per (modality, label, contrast) the
    model's one-step learned effect and its effect on paired samples (when checked) beside the
    training set's own effect map (and the simulated truth when known), each on the axial slice
    where the reference map is largest and its own symmetric blue-red scale (99th percentile of
    |value|), with the r (and the samples' gain) of the checks table. A column per kind of map;
    age and sex have only the paired-sample check."""
    from genbrain.space import standard_space

    plt = pyplot()
    space = standard_space()
    kinds = [k for k in ("model", "sample", "site", "truth") if any(k in m for m in maps.values())]
    n_rows, n_cols = 1 + len(maps), max(len(kinds), 1)
    fig = plt.figure(figsize=(2.5 * n_cols, 2.6 * n_rows))
    _loss_axes(fig.add_subplot(n_rows, 1, 1), loss, "fine-tuning step", title)
    value = {(r.check, r.modality, r.contrast): r.value for r in checks.itertuples()}
    names = {"model": "one-step effect", "sample": "paired samples",
             "site": "training set's own map", "truth": "simulated truth"}
    for r, key in enumerate(maps):
        m, head, contrast = key
        # a head of several contrasts (3 diagnosis levels) is named by each contrast
        shown_as = (f"{m} {head}" if sum(k[:2] == key[:2] for k in maps) == 1
                    else f"{m} {contrast}")
        ref = maps[key].get("truth", maps[key]["site"])
        vol_ref = space.to_volume(np.nan_to_num(ref))
        z = int(np.argmax(np.abs(vol_ref).sum(axis=(0, 1))))
        for c, kind in enumerate(kinds):
            if kind not in maps[key]:
                continue
            a = fig.add_subplot(n_rows, n_cols, n_cols * (r + 1) + c + 1)
            vec = np.nan_to_num(maps[key][kind])
            vol = space.to_volume(vec)
            scale = float(np.percentile(np.abs(vec), 99)) or 1.0
            a.imshow(np.where(space.mask[:, :, z], 0.85, 1.0).T, origin="lower", cmap="gray",
                     vmin=0, vmax=1)
            if np.abs(vec).max() < 1e-6:  # a zero-initialised head that has not moved
                a.text(0.5, 0.5, "no effect learned", ha="center", va="center", fontsize=7,
                       transform=a.transAxes)
            else:
                shown = np.where(space.mask[:, :, z], vol[:, :, z], np.nan).T
                a.imshow(shown, origin="lower", cmap="RdBu_r", vmin=-scale, vmax=scale)
            label = names[kind]
            if kind in ("model", "sample"):
                what = "effect" if kind == "model" else "sample"
                r_site = value.get((f"{head}_{what}_vs_site", m, contrast), float("nan"))
                r_truth = value.get((f"{head}_{what}_vs_truth", m, contrast))
                gain = value.get((f"{head}_sample_gain", m, contrast)) if kind == "sample" \
                    else None
                label += f"\nr site {r_site:.2f}" + (
                    "" if r_truth is None else f", r truth {r_truth:.2f}") + (
                    "" if gain is None else f", gain {gain:.2f}")
            elif kind == "site" and (f"{head}_site_vs_truth", m, contrast) in value:
                label += f"\nr truth {value[(f'{head}_site_vs_truth', m, contrast)]:.2f}"
            a.set_title(f"{shown_as}: {label}", fontsize=7)
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    save_figure(fig, out_png)
