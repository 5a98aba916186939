"""One site's BWAS analysis and the pre-fine-tuning screen, on the site's real store and its
synthetic cohort's store.

- :func:`site_analysis` scores the real and synthetic maps against the reference
  (:func:`genbrain.bwas.compare.site_scores`: scores, bootstrap CIs, chance levels, the spatial
  null), the recovery of the simulated truth, and the synthetic cohort's effective sample size;
  :func:`write_site_analysis` writes it, :func:`read_d_maps` reads its maps back and
  :func:`site_figures` draws them;
- :func:`site_screen` is the pre-fine-tuning screen
  (:func:`genbrain.bwas.compare.concordance_screen` against the reference map): whether the
  site's own signal is reliable and population-consistent enough to expect a gain;
  :func:`screen_sites` screens every site of an analysis.

Smoothing (``bwas.smoothing_fwhm``, :attr:`BwasSite.smoothing_fwhm`): with a kernel, every
subject's map, real and synthetic alike, is smoothed inside the brain mask
(:func:`genbrain.stats.smoothing.smooth_cohort`: normalised Gaussian smoothing, the zeros
outside the brain do not leak in) before any d map is fitted: the site's, the reference's,
the synthetic cohort's, every bootstrap resample's (resamples of the smoothed maps), every
agreement subsample's and the screen's split halves. The spatial null needs nothing more: its
surrogates take each d map's own smoothness. What smoothing leaves alone: the analysis mask
(the unsmoothed reference's mean grey matter, so that every kernel scores the same voxels)
and the simulated truth (see :func:`site_analysis`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from genbrain.bwas.plan import BwasSite
from genbrain.errors import GenbrainInputError

log = logging.getLogger(__name__)

#: the maps a site analysis compares (names in its tables and NIfTI files)
MAPS = ("reference", "real", "synthetic")


def _real_cohorts(job: BwasSite, index: str | Path, smoothed=None):
    """(site cohort, reference cohort) of the job's modality from the real store; their maps
    as stored, or taken from ``smoothed`` (:func:`smoothed_store`) when given."""
    from genbrain.stats.similarity import Cohort
    from genbrain.store import ImageStore

    store = ImageStore(index, modalities=[job.modality])
    table = store.table
    site = table[table["site"].astype(str) == job.site]
    ref = table[table["site"].astype(str).isin(job.reference_sites)]
    for what, sel, n in (("site", site, job.n_real), ("reference", ref, job.n_reference)):
        if len(sel) != n:
            raise GenbrainInputError(f"{index}: {len(sel)} {job.modality} images of the {what} "
                                     f"cohort of {job.name}; the participants table has {n}")
    if smoothed is not None:  # members by their position in the store's table
        if len(smoothed) != len(table):
            raise GenbrainInputError(f"{index}: {len(table)} {job.modality} images; the "
                                     f"smoothed maps hold {len(smoothed)}")
        return (smoothed.subset(site.index.to_numpy(), label=f"{job.name} real"),
                smoothed.subset(ref.index.to_numpy(), label=f"{job.name} reference"))
    return (Cohort.from_store(store, site, label=f"{job.name} real"),
            Cohort.from_store(store, ref, label=f"{job.name} reference"))


def smoothed_store(job: BwasSite, index: str | Path):
    """Every ``job.modality`` map of a real store, smoothed with the job's kernel
    (:func:`genbrain.stats.smoothing.smooth_cohort`; in memory, 4 V bytes a map), in the
    store's order: the screen smooths each map once for all of its sites."""
    from genbrain.stats.similarity import Cohort
    from genbrain.stats.smoothing import smooth_cohort
    from genbrain.store import ImageStore

    store = ImageStore(index, modalities=[job.modality])
    log.info("%s: smoothing %d %s maps (FWHM %g mm)", job.name, len(store), job.modality,
             job.smoothing_fwhm)
    return smooth_cohort(Cohort.from_store(store, label=f"{job.name} {index}"),
                         job.smoothing_fwhm)


def analysis_mask_of(job: BwasSite, reference, registry=None) -> np.ndarray:
    """The analysis mask (V,) bool: ``brain`` = every voxel of the store; ``gm`` = the
    reference's mean map, back in the modality's raw units, > ``job.gm_threshold``."""
    from genbrain.modalities import registry_from_config
    from genbrain.stats.cohens_d import mean_map

    mean = mean_map(reference)
    if job.mask == "brain":
        return np.ones(len(mean), bool)
    raw = (registry or registry_from_config(None))[job.modality].denormalise(mean)
    mask = raw > job.gm_threshold
    if not mask.any():
        raise GenbrainInputError(f"{job.name}: no voxel has a mean {job.modality} above "
                                 f"{job.gm_threshold} in the reference cohort (largest "
                                 f"{raw.max():.3g}); is it a grey-matter map? (set the "
                                 "analysis's mask: brain)")
    return mask


def reference_map(job: BwasSite, reference, mask: np.ndarray) -> np.ndarray:
    """The reference cohort's d map (site dummies), NaN outside ``mask``."""
    from genbrain.stats.cohens_d import cohens_d

    return cohens_d(reference, site=True, control=job.control, mask=mask)


def heldout_agreement(pool, mask: np.ndarray, sizes: Sequence[int], *, control: str,
                      n_repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """How well a real cohort of n agrees with a reference it is not part of -> DataFrame (n,
    repeat, n_reference, r). For each n, up to ``n_repeats`` disjoint subsamples of the pool
    (without replacement, the pool's patient fraction); each subsample's d map is scored
    (Pearson r in ``mask``) against the map of the rest of the pool (site dummies). The rest
    is N - n, slightly smaller than the full reference: sizes are kept below N / 3."""
    from genbrain.bwas.compare import draw_disjoint
    from genbrain.stats.cohens_d import cohens_d, design_matrix
    from genbrain.stats.overlap import overlap_scores

    dx = design_matrix(pool.covariates, site=True, control=control, label=pool.label).x[:, -1]
    rng = np.random.default_rng(seed)
    rows = []
    for n in sorted({int(s) for s in sizes}):
        if n > len(pool) / 3:
            log.info("%s: agreement size %d is over a third of the pool (%d); skipped",
                     pool.label, n, len(pool))
            continue
        for r, members in enumerate(draw_disjoint(dx, n, n_repeats, rng)):
            rest = np.setdiff1d(np.arange(len(pool)), members)
            # named in a fit's error: the subsample, not the reference it is drawn from
            sub = f"agreement subsample of {n} (repeat {r}; bwas.agreement.sizes)"
            d_sub = cohens_d(pool.subset(members, label=f"{pool.label}: {sub}"),
                             control=control, mask=mask)
            d_rest = cohens_d(pool.subset(rest, label=f"{pool.label} without its {sub}"),
                              site=True, control=control, mask=mask)
            rows.append((n, r, len(rest), overlap_scores(d_sub, d_rest, mask)["r"]))
            log.info("%s: agreement of a real cohort of %d (repeat %d): r %.3f", pool.label, n,
                     r, rows[-1][-1])
    return pd.DataFrame(rows, columns=["n", "repeat", "n_reference", "r"])


def site_analysis(job: BwasSite, real_index: str | Path, synthetic_index: str | Path, *,
                  truth: np.ndarray | None = None, n_boot: int = 1000, n_null: int = 100,
                  sizes: Sequence[int] = (20, 40, 80, 160), n_repeats: int = 3,
                  seed: int = 0, registry=None) -> dict:
    """One site's BWAS comparison -> {"scores": the score table (a row per metric: real and
    synthetic against the reference with bootstrap CIs, the difference, chance levels), "maps":
    per map its n and r with the reference and with ``truth`` (V,) when known, "agreement":
    :func:`heldout_agreement`, "effective_n": one row, "d": {map: (V,) d, NaN off-mask},
    "mask": (V,) bool}.

    With ``job.smoothing_fwhm`` > 0 the real, reference and synthetic maps are all smoothed
    with that kernel before any statistic (module docstring), and ``truth`` is compared as
    given, unsmoothed: the planted map is the population effect the analysis is after, and
    smoothing is part of the analysis, so its r with the truth counts both what smoothing
    buys (less voxel noise) and what it costs (blurred edges, spill into neighbouring
    tissue). Smoothing the truth as well would score recovery of a blurred target the
    smoothed maps match by construction, and would favour any kernel."""
    from genbrain.bwas.compare import effective_sample_size, site_scores
    from genbrain.space import standard_space
    from genbrain.stats.overlap import overlap_scores
    from genbrain.stats.similarity import Cohort
    from genbrain.stats.smoothing import smooth_cohort
    from genbrain.store import ImageStore

    real, ref = _real_cohorts(job, real_index)
    mask = analysis_mask_of(job, ref, registry)
    log.info("%s: analysis mask %d of %d voxels (%s); real n %d, reference n %d (%d sites)",
             job.name, int(mask.sum()), len(mask), job.mask, len(real), len(ref),
             len(job.reference_sites))
    sstore = ImageStore(synthetic_index, modalities=[job.modality])
    if len(sstore.table) != job.n_synthetic:
        raise GenbrainInputError(f"{synthetic_index}: {len(sstore.table)} {job.modality} images; "
                                 f"the synthetic cohort of {job.name} has {job.n_synthetic}")
    synth = Cohort.from_store(sstore, label=f"{job.name} synthetic")
    if job.smoothing_fwhm:
        log.info("%s: smoothing the real, reference and synthetic maps (FWHM %g mm, %d maps)",
                 job.name, job.smoothing_fwhm, len(real) + len(ref) + len(synth))
        real, ref, synth = (smooth_cohort(c, job.smoothing_fwhm) for c in (real, ref, synth))
    d_ref = reference_map(job, ref, mask)
    log.info("%s: scoring the real (n %d) and synthetic (n %d) maps, %d bootstrap resamples "
             "each", job.name, len(real), len(synth), n_boot)
    scores, d = site_scores(job.site, real, synth, d_ref, mask,
                            volume_mask=standard_space().mask, n_boot=n_boot, seed=seed,
                            n_null=n_null, control=job.control)
    scores.insert(0, "analysis", job.analysis)
    scores.insert(2, "modality", job.modality)
    d = {"reference": d_ref, **d}
    sizes_n = {"reference": len(ref), "real": len(real), "synthetic": len(synth)}
    maps = pd.DataFrame([{
        "analysis": job.analysis, "site": job.site, "map": m, "n": sizes_n[m],
        "r_reference": 1.0 if m == "reference" else overlap_scores(d[m], d_ref, mask)["r"],
        "r_truth": (overlap_scores(d[m], truth, mask)["r"] if truth is not None
                    else float("nan"))} for m in MAPS])
    log.info("%s: effective sample size from real subsamples of the reference pool", job.name)
    curve = heldout_agreement(ref, mask, sizes, control=job.control, n_repeats=n_repeats,
                              seed=seed + 2)
    r_syn = float(maps.loc[maps["map"] == "synthetic", "r_reference"].iloc[0])
    r_real = float(maps.loc[maps["map"] == "real", "r_reference"].iloc[0])
    eff = (effective_sample_size(curve, r_syn) if len(curve) else
           {"target": r_syn, "n_interp": math.nan, "n_model": math.nan,
            "above_curve": math.nan})
    eff_real = (effective_sample_size(curve, r_real) if len(curve) else
                {"n_interp": math.nan, "n_model": math.nan})
    effective = pd.DataFrame([{
        "analysis": job.analysis, "site": job.site, "n_real": len(real),
        "n_synthetic": len(synth), "r_real": r_real, "r_synthetic": r_syn,
        "n_effective_interp": eff["n_interp"], "n_effective_model": eff["n_model"],
        "above_curve": eff["above_curve"], "n_real_model": eff_real["n_model"],
        "gain_model": (eff["n_model"] / eff_real["n_model"]
                       if eff_real["n_model"] and math.isfinite(eff_real["n_model"])
                       else math.nan)}])
    return {"scores": scores, "maps": maps, "agreement": curve, "effective_n": effective,
            "d": d, "mask": mask}


def write_site_analysis(result: Mapping, output) -> None:
    """Write :func:`site_analysis`'s result to the rule's outputs (``scores``, ``maps``,
    ``agreement``, ``effective``: TSV; ``d_maps``: a folder of ``d_<map>.nii.gz`` and the
    analysis ``mask.nii.gz``), each atomically."""
    from genbrain.bwas.figures import write_d_map
    from genbrain.io import atomic_dir, save_nifti, save_tsv
    from genbrain.space import standard_space

    save_tsv(result["scores"], output.scores)
    save_tsv(result["maps"], output.maps)
    save_tsv(result["agreement"], output.agreement)
    save_tsv(result["effective_n"], output.effective)
    space = standard_space()
    with atomic_dir(output.d_maps) as tmp:
        for name, d in result["d"].items():
            write_d_map(d, Path(tmp) / f"d_{name}.nii.gz", space)
        save_nifti(space.image(space.to_volume(result["mask"].astype(np.uint8))),
                   Path(tmp) / "mask.nii.gz")


def read_d_maps(folder: str | Path) -> dict[str, np.ndarray]:
    """The d maps a site analysis wrote, {map: (V,) float64, NaN outside the analysis
    mask}."""
    from genbrain.io import load_volume
    from genbrain.space import standard_space

    space = standard_space()
    mask = space.to_vector(load_volume(Path(folder) / "mask.nii.gz")[1]) > 0
    out = {}
    for name in MAPS:
        d = space.to_vector(load_volume(Path(folder) / f"d_{name}.nii.gz")[1]).astype(
            np.float64)
        d[~mask] = np.nan
        out[name] = d
    return out


def site_figures(job: BwasSite, inputs, outputs) -> None:
    """A site's figures from its tables and d maps: ``outputs.maps`` the reference, real and
    synthetic maps (one colour scale), ``outputs.gain`` the relative gains with CIs and
    chance levels beside the effective-n curve."""
    from genbrain.bwas.figures import d_map_figure, gain_figure
    from genbrain.io import read_tsv

    maps = read_tsv(inputs.maps).set_index("map")
    eff = read_tsv(inputs.effective).iloc[0].to_dict()
    d = read_d_maps(inputs.d_maps)

    def caption(m: str) -> str:
        row = maps.loc[m]
        text = f"{m} (n {int(row['n'])})"
        if m != "reference":
            text += f": r {row['r_reference']:.2f} with the reference"
        if np.isfinite(row["r_truth"]):
            text += f", {row['r_truth']:.2f} with the truth"
        return text

    smoothed = (f", maps smoothed at FWHM {job.smoothing_fwhm:g} mm" if job.smoothing_fwhm
                else "")
    d_map_figure({caption(m): d[m] for m in MAPS}, outputs.maps,
                 title=f"BWAS {job.analysis}, site {job.site}: Cohen's d of {job.modality} "
                       f"({job.mask} mask{smoothed}), patients minus controls")
    n_eff = eff.get("n_effective_interp", math.nan)
    gain_figure(read_tsv(inputs.scores), outputs.gain, curve=read_tsv(inputs.agreement),
                effective=eff,
                title=f"BWAS {job.analysis}, site {job.site}{smoothed}: synthetic (n "
                      f"{int(eff['n_synthetic'])}) vs real (n {int(eff['n_real'])}) against "
                      f"the reference; effective n "
                      f"{f'{n_eff:.0f}' if math.isfinite(n_eff) else 'off the curve'}")


def site_screen(job: BwasSite, real_index: str | Path, *, n_splits: int = 10,
                seed: int = 0, registry=None, smoothed=None) -> pd.DataFrame:
    """The pre-fine-tuning screen of a site (real data only): the split-half reliability of
    its d map and that map's agreement with the reference cohort's (the other sites pooled;
    :func:`genbrain.bwas.compare.concordance_screen`) -> one row with a verdict. With a
    smoothing kernel, on the store's maps smoothed with it (``smoothed``:
    :func:`smoothed_store`, made here when not given)."""
    from genbrain.bwas.compare import concordance_screen

    real, ref = _real_cohorts(job, real_index)
    mask = analysis_mask_of(job, ref, registry)
    if job.smoothing_fwhm:
        real, ref = _real_cohorts(job, real_index,
                                  smoothed if smoothed is not None
                                  else smoothed_store(job, real_index))
    d_ref = reference_map(job, ref, mask)
    out = concordance_screen(job.site, real, d_ref, mask, n_splits=n_splits, seed=seed,
                             control=job.control)
    out.insert(0, "analysis", job.analysis)
    return out


def screen_sites(jobs: Sequence[BwasSite], real_index: str | Path, *, n_splits: int = 10,
                 seed: int = 0, registry=None) -> pd.DataFrame:
    """:func:`site_screen` of every site of an analysis's cohort -> one row per site, with
    ``fine_tuned`` (whether the site has a fine-tune and a synthetic cohort). A site whose own
    d map cannot be fitted (one diagnosis level, one sex...) gets verdict ``not screened``
    and the reason, instead of stopping the others. The sites share one modality and one
    smoothing kernel: with a kernel, the store's maps are smoothed once for all of them."""
    from genbrain.bwas.compare import SCREEN_COLUMNS

    kernels = {(job.modality, job.smoothing_fwhm) for job in jobs}
    if len(kernels) > 1:
        raise GenbrainInputError(f"a BWAS screen covers one modality at one smoothing kernel; "
                                 f"got {sorted(kernels)}")
    smoothed = (smoothed_store(jobs[0], real_index) if jobs and jobs[0].smoothing_fwhm
                else None)
    rows = []
    for job in jobs:
        try:
            row = site_screen(job, real_index, n_splits=n_splits, seed=seed,
                              registry=registry, smoothed=smoothed)
        except GenbrainInputError as err:
            log.warning("%s: not screened: %s", job.name, err)
            row = pd.DataFrame([{"analysis": job.analysis, "site": job.site, "n": job.n_real,
                                 **{c: math.nan for c in SCREEN_COLUMNS if c not in (
                                     "site", "n", "verdict", "reason")},
                                 "verdict": "not screened", "reason": str(err)}])
        else:
            log.info("%s: %s (%s; reliability %.2f, r with the reference %.2f)", job.name,
                     row["verdict"].iloc[0], row["reason"].iloc[0],
                     row["reliability"].iloc[0], row["r_prior"].iloc[0])
        row.insert(2, "fine_tuned", bool(job.model))
        row.insert(4, "n_reference", job.n_reference)
        rows.append(row)
    return pd.concat(rows, ignore_index=True)


__all__ = ["MAPS", "analysis_mask_of", "heldout_agreement", "read_d_maps", "reference_map",
           "screen_sites", "site_analysis", "site_figures", "site_screen", "smoothed_store",
           "write_site_analysis"]
