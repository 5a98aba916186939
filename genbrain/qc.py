"""Quality control: content checks of every input image, registration tables and mosaics of
preprocessed images."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_path, read_tsv, save_tsv
from genbrain.modalities import Modality
from genbrain.space import standard_space
from genbrain.store import ImageStore

QC_COLUMNS = ["participant_id", "site", "input", "qc_modality", "qc_corr", "qc_outside",
              "qc_pass", "qc_note"]
MAX_OUT_OF_RANGE = 0.5  # "mostly outside": more than half of the image's non-zero brain voxels


def check_content(values: np.ndarray, modality: Modality, source: str) -> None:
    """Refuse an image whose in-brain values cannot be this modality, with one line naming
    ``source`` (the file), the modality, what was found and what was expected.

    values: (V,) raw values inside the brain mask, in the modality's units, before clamping.
    Refused: a constant map (all zeros, or one value everywhere), and, for a modality with a
    ``clamp`` range, a map of which more than :data:`MAX_OUT_OF_RANGE` of the non-zero voxels
    lie outside that range: a T1w given as VBM (raw intensities), a VBM in percent, an FA or
    NODDI map scaled by 1000, MD in um^2/ms. Zeros are not counted, so a map that is zero
    outside grey matter is judged by its grey matter. Clamping, which is for the few outliers
    of a correct map, would turn such an image into a constant row of the store."""
    x = np.asarray(values, dtype=np.float64)
    lo_v, hi_v = float(x.min()), float(x.max())
    if lo_v == hi_v:
        raise GenbrainInputError(
            f"{source}: {modality.name} image is constant inside the brain mask (every voxel "
            f"{lo_v:g}); expected a {modality.name} map with contrast (an empty, placeholder "
            "or wrongly masked file?)")
    if modality.clamp is None:
        return
    lo, hi = modality.clamp
    nonzero = x[x != 0]
    outside = float(np.mean((nonzero < lo) | (nonzero > hi)))
    if outside > MAX_OUT_OF_RANGE:
        p1, p50, p99 = np.percentile(nonzero, [1, 50, 99])
        what = f" ({modality.description})" if modality.description else ""
        raise GenbrainInputError(
            f"{source}: {modality.name} image has {outside:.0%} of its non-zero brain voxels "
            f"outside [{lo:g}, {hi:g}] (median {p50:.4g}, 1st-99th percentile {p1:.4g} to "
            f"{p99:.4g}); expected {modality.name}{what} values in [{lo:g}, {hi:g}]: another "
            f"modality or other units (e.g. percent)? Fix the file, or set "
            f"'modalities.{modality.name}.clamp' in the config if its range differs")


def registration_table(index_paths: Sequence[str | os.PathLike], out_path: str | os.PathLike,
                       threshold: float) -> pd.DataFrame:
    """One row per subject (site, how the input reached standard space, QC r, pass flag),
    sorted by QC r so failures come first; written atomically."""
    frames = [read_tsv(p) for p in index_paths]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=QC_COLUMNS)
    df = df.drop_duplicates("participant_id")[QC_COLUMNS].copy()
    df["qc_threshold"] = threshold
    df = df.sort_values(["qc_pass", "qc_corr"], kind="stable").reset_index(drop=True)
    save_tsv(df, out_path)
    return df


def mosaic(store_index: str | os.PathLike, site: str, modality: str, n_subjects: int,
           out_png: str | os.PathLike, title: str = "") -> None:
    """PNG: for up to ``n_subjects`` subjects of ``site``, axial/coronal/sagittal slices of the
    preprocessed ``modality`` with the MNI152 brain-mask outline in red (150 dpi); a
    misregistered subject shows brain outside or gaps inside the outline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    space = standard_space()
    store = ImageStore(store_index, modalities=[modality])
    rows = store.table.index[store.table["site"] == site][:n_subjects]
    outline = space.mask.astype(float)
    cut = (45, 54, 36)  # voxel indices through the basal ganglia
    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 3, figsize=(6.0, 2.1 * n), squeeze=False)
    for r, item in enumerate(rows):
        vol = space.to_volume(store[item])
        meta = store.table.iloc[item]
        for c, (name, sl) in enumerate([("axial", np.s_[:, :, cut[2]]),
                                        ("coronal", np.s_[:, cut[1], :]),
                                        ("sagittal", np.s_[cut[0], :, :])]):
            ax = axes[r, c]
            lo, hi = np.percentile(vol[space.mask], [1, 99])
            img = np.where(space.mask[sl], vol[sl], lo).T
            ax.imshow(img, origin="lower", cmap="gray", vmin=lo, vmax=hi)
            ax.contour(outline[sl].T, levels=[0.5], colors="red", linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(f"{meta['participant_id']}\nr={meta.get('qc_corr', np.nan):.2f}",
                              fontsize=7)
            if r == 0:
                ax.set_title(name, fontsize=8)
    if not len(rows):
        axes[0, 0].text(0.5, 0.5, f"no {modality} images at site {site}", ha="center")
    fig.suptitle(title or f"site {site}: {modality} in MNI152NLin6Asym 2 mm "
                          "(red: template brain-mask outline)", fontsize=8)
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, dpi=150, format="png")
    plt.close(fig)


def demographics(index: pd.DataFrame, scores: Sequence[str] = ()) -> pd.DataFrame:
    """A cohort's participants as a paper's Table 1, from its store index (one row per image;
    each participant counted once): one row per (site, diagnosis) and each site's total
    (diagnosis ``all``), then the same for the whole cohort (site ``all``). Columns: ``n``,
    ``female_pct``, ``age_mean``, ``age_sd`` (n - 1 in the denominator; missing for n = 1),
    ``age_min``, ``age_max``, ``qc_pass_pct`` (share passing registration QC) and ``<score>_mean``,
    ``<score>_sd`` for each clinical score (missing values skipped). Without a ``diagnosis``
    column (or with none filled in) only the site totals and the cohort row are given, all with
    diagnosis ``all``."""
    subj = index.drop_duplicates("participant_id")
    has_dx = "diagnosis" in subj.columns and subj["diagnosis"].notna().any()
    groups = []
    for site, at_site in [*subj.groupby("site", sort=True), ("all", subj)]:
        if has_dx:
            groups += [(site, str(dx), g) for dx, g in at_site.groupby("diagnosis", sort=True)]
        groups.append((site, "all", at_site))
    rows = []
    for site, dx, g in groups:
        age = g["age"].astype(float)
        row = {"site": site, "diagnosis": dx, "n": len(g),
               "female_pct": 100.0 * (g["sex"] == "F").mean(),
               "age_mean": age.mean(), "age_sd": age.std(ddof=1),
               "age_min": age.min(), "age_max": age.max()}
        if "qc_pass" in g.columns:
            row["qc_pass_pct"] = 100.0 * g["qc_pass"].astype(str).str.lower().eq("true").mean()
        for score in scores:
            values = pd.to_numeric(g[score], errors="coerce")
            row[f"{score}_mean"], row[f"{score}_sd"] = values.mean(), values.std(ddof=1)
        rows.append(row)
    return pd.DataFrame(rows)


def write_demographics(index_path: str | os.PathLike, out_path: str | os.PathLike,
                       scores: Sequence[str] = ()) -> pd.DataFrame:
    """:func:`demographics` of the store index at ``index_path``, written atomically with two
    decimals; a score missing from the index is a one-line error."""
    index = read_tsv(index_path)
    missing = [s for s in scores if s not in index.columns]
    if missing:
        raise GenbrainInputError(f"{index_path}: no column {', '.join(map(repr, missing))} "
                                 "(the cohort's `scores`)")
    df = demographics(index, scores).round(2)
    save_tsv(df, out_path)
    return df
