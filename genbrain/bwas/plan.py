"""Planning of the BWAS stage at DAG build time (no torch): mistakes in the config are one
line naming the key before any job runs.

- :class:`BwasSite`: one site of an analysis (its fine-tune, reference sites, sizes) at one
  smoothing kernel.
- :func:`plan_bwas`: every site of every ``bwas.analyses`` entry at every
  ``bwas.smoothing_fwhm``, checked against the cohorts and the planned fine-tunes.
- :func:`smoothing_kernels`: the FWHMs of ``bwas.smoothing_fwhm`` (a number or a list).
- :func:`synthetic_covariates`: the covariate table of a site's synthetic cohort, mirroring
  its reference cohort.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.jobs import SiteJob, fwhm_suffix, per_site_finetunes
from genbrain.seeds import name_seed

MASKS = ("gm", "brain")


def smoothing_kernels(section: Mapping) -> tuple[float, ...]:
    """The FWHMs (mm) of ``bwas.smoothing_fwhm``, a number or a list of them, in the order
    given; refused (one line) when one is negative or two give the same kernel."""
    from genbrain.stats.smoothing import check_fwhm

    value = section.get("smoothing_fwhm", 0)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise GenbrainInputError("config: 'bwas.smoothing_fwhm' is an empty list; expected a "
                                 "number of mm (0 = no smoothing) or a list of them")
    kernels = tuple(check_fwhm(v, "config: 'bwas.smoothing_fwhm'") for v in values)
    seen = {}
    for v, k in zip(values, kernels):
        if fwhm_suffix(k) in seen:
            raise GenbrainInputError(f"config: 'bwas.smoothing_fwhm' lists "
                                     f"{seen[fwhm_suffix(k)]} and {v}: the same kernel twice")
        seen[fwhm_suffix(k)] = v
    return kernels


@dataclass(frozen=True)
class BwasSite(SiteJob):
    """One site of a BWAS analysis.

    ``site``/``label``: the site's name in the participants table (every table's ``site``
    column) and its path label (paths only);
    ``model``: the fine-tune (``<task>/<label>``) that draws the synthetic cohort ``synth``
    (``bwas-<analysis>-<label>``); ``reference_sites``: the pooled other sites;
    ``n_synthetic``: the synthetic cohort's size (the reference's, or ``max_synthetic`` when
    smaller); ``smoothing_fwhm``: the Gaussian kernel (mm) every subject's map is smoothed
    with before the d maps (0: none).

    Each kernel of ``bwas.smoothing_fwhm`` is its own ``BwasSite`` with its own outputs
    (``out_dir`` ends in ``suffix``, ``_fwhm-8`` for 8 mm, nothing for 0), sharing the
    site's one synthetic cohort (``synth``): a kernel recomputes the statistics, it never
    draws images again."""

    STAGE = "bwas"
    SYNTH_PREFIX = "bwas"
    TUPLES = ("reference_sites",)

    analysis: str
    cohort: str
    site: str
    label: str
    modality: str
    model: str
    reference_sites: tuple[str, ...]
    control: str
    mask: str
    gm_threshold: float
    n_real: int
    n_reference: int
    n_synthetic: int
    smoothing_fwhm: float = 0.0

    @property
    def suffix(self) -> str:
        """The kernel's path suffix: "" unsmoothed, ``_fwhm-8`` for 8 mm, ``_fwhm-7p5`` for
        7.5 mm."""
        return fwhm_suffix(self.smoothing_fwhm)

    @property
    def path_label(self) -> str:
        """The ``{site}{smooth}`` part of the site's paths (``siteA_fwhm-8``)."""
        return f"{self.label}{self.suffix}"

    @property
    def name(self) -> str:
        return f"{self.analysis}/{self.path_label}"

    @property
    def out_dir(self) -> str:
        return f"results/bwas/{self.analysis}/site-{self.path_label}"

    def to_dict(self) -> dict:
        """A plain dict (rule params); without ``smoothing_fwhm`` when it is 0, so that an
        unsmoothed site's params, hence its jobs, are those of runs made before the option."""
        d = SiteJob.to_dict(self)
        if not self.smoothing_fwhm:
            del d["smoothing_fwhm"]
        return d


def plan_bwas(config: Mapping, cohorts: Mapping, finetunes: Mapping
              ) -> tuple[dict[str, BwasSite], dict[str, list[BwasSite]]]:
    """Every site of every ``bwas.analyses`` entry at every kernel of
    ``bwas.smoothing_fwhm``, checked against the cohorts (:class:`genbrain.workflow.Cohort`)
    and the planned fine-tunes (:class:`genbrain.finetune.FinetuneJob` by model name) at
    parse time -> (the fine-tuned sites keyed by :attr:`BwasSite.name`,
    ``<analysis>/<site label><suffix>``, and per analysis every site of its cohort at every
    kernel for the pre-fine-tuning screens: those without a fine-tune have ``model`` "" and
    no synthetic cohort)."""
    from genbrain.stats.cohens_d import design_matrix, diagnosis_codes

    section = config.get("bwas") or {}
    out: dict[str, BwasSite] = {}
    screens: dict[str, list[BwasSite]] = {}
    sizes = (section.get("agreement") or {}).get("sizes") or ()
    kernels = smoothing_kernels(section)
    for name, spec in (section.get("analyses") or {}).items():
        key = f"bwas.analyses.{name}"
        task = spec["finetune"]
        jobs, cohort = per_site_finetunes(key, task, finetunes, cohorts,
                                          "BWAS compares single-site fine-tunes")
        first = next(iter(jobs.values()))
        levels = list(first.diagnosis_levels)
        if len(levels) != 2:
            raise GenbrainInputError(f"config: '{key}': cohort '{cohort.name}' has diagnosis "
                                     f"levels {levels}; a Cohen's d map needs exactly two")
        # the control level as the d maps will code it (one-line error if it is unclear)
        codes = diagnosis_codes(levels, spec.get("control"), f"config: '{key}'")
        control = levels[int(np.flatnonzero(codes == 0)[0])]
        if first.split != "all":
            raise GenbrainInputError(f"config: '{key}': fine-tuning task '{task}' trains on "
                                     f"its '{first.split}' split; BWAS compares the site's "
                                     "whole cohort with its fine-tune (use split: all)")
        modality = spec["modality"]
        if modality not in first.modalities:
            raise GenbrainInputError(f"config: '{key}.modality' is '{modality}'; fine-tune "
                                     f"task '{task}' trains on {list(first.modalities)}")
        wanted = spec.get("sites") or [j.sites[0] for j in jobs.values()]
        table = cohort.table
        for site in wanted:
            if site not in cohort.sites:
                raise GenbrainInputError(f"config: '{key}.sites' lists '{site}', not a site of "
                                         f"cohort '{cohort.name}'; expected some of "
                                         f"{cohort.sites}")
            label = cohort.site_label(site)
            if label not in jobs:
                raise GenbrainInputError(f"config: '{key}.sites' lists '{site}', which "
                                         f"fine-tuning task '{task}' has no fine-tune for; "
                                         f"it has {sorted(jobs)}")
            others = tuple(s for s in cohort.sites if s != site)
            if not others:
                raise GenbrainInputError(f"config: '{key}': cohort '{cohort.name}' has one "
                                         "site; the reference cohort is the other sites")
            ref = table[table["site"].isin(others)]
            # both designs at parse time: a singular one (e.g. a site of one sex) is one line
            # now rather than a failed job after its fine-tune and synthesis
            own = design_matrix(table[table["site"] == site], control=control,
                                label=f"config: '{key}': site '{site}'")
            # an agreement subsample is fitted with the site's design (no site dummies)
            small = [int(n) for n in sizes if int(n) <= own.p]
            if small:
                raise GenbrainInputError(
                    f"config: 'bwas.agreement.sizes' has {small[0]}; each agreement subsample's "
                    f"d map fits {own.p} design columns ({', '.join(own.names)}), so every size "
                    f"must exceed {own.p}")
            design_matrix(ref, site=True, control=control,
                          label=f"config: '{key}': the reference cohort of site '{site}'")
            cap = spec.get("max_synthetic")
            n_syn = len(ref) if cap is None else min(int(cap), len(ref))
            for fwhm in kernels:
                job = BwasSite(name, cohort.name, site, label, modality, f"{task}/{label}",
                               others, str(control), spec.get("mask", "gm"),
                               float(section.get("gm_threshold", 0.2)),
                               int((table["site"] == site).sum()), len(ref), n_syn, fwhm)
                out[job.name] = job
        if len(cohort.sites) > 1:
            fine_tuned = {(j.site, j.smoothing_fwhm): j for j in out.values()
                          if j.analysis == name}
            screens[name] = [fine_tuned.get((site, fwhm)) or BwasSite(
                name, cohort.name, site, cohort.site_label(site), modality, "",
                tuple(s for s in cohort.sites if s != site), str(control),
                spec.get("mask", "gm"), float(section.get("gm_threshold", 0.2)),
                int((table["site"] == site).sum()), int((table["site"] != site).sum()), 0,
                fwhm) for fwhm in kernels for site in cohort.sites]
    return out, screens


def synthetic_covariates(job: BwasSite, participants: pd.DataFrame, seed: int
                         ) -> pd.DataFrame:
    """The covariate table of a site's synthetic cohort: one row per reference member (age,
    sex, diagnosis; ``reference_participant_id`` names whom it mirrors), modality
    ``job.modality``. When the cap ``job.n_synthetic`` is below the reference's size, a seeded
    draw without replacement within each diagnosis level keeps the reference's patient
    fraction (largest remainders)."""
    ref = participants[participants["site"].isin(job.reference_sites)].reset_index(drop=True)
    if len(ref) != job.n_reference:
        raise GenbrainInputError(f"{job.name}: the reference sites hold {len(ref)} "
                                 f"participants; the plan was made for {job.n_reference} "
                                 "(was the participants table edited? rerun the workflow)")
    keep = np.arange(len(ref))
    if job.n_synthetic < len(ref):
        rng = np.random.default_rng([int(seed), name_seed(job.synth)])
        groups = {lv: np.flatnonzero(ref["diagnosis"].astype(str) == lv)
                  for lv in sorted(ref["diagnosis"].astype(str).unique())}
        share = {lv: job.n_synthetic * len(g) / len(ref) for lv, g in groups.items()}
        take = {lv: math.floor(s) for lv, s in share.items()}
        for lv in sorted(share, key=lambda lv: share[lv] - take[lv],
                         reverse=True)[: job.n_synthetic - sum(take.values())]:
            take[lv] += 1
        keep = np.sort(np.concatenate([rng.choice(g, take[lv], replace=False)
                                       for lv, g in groups.items()]))
    sel = ref.iloc[keep]
    return pd.DataFrame({"synthetic_id": np.arange(len(sel)),
                         "age": sel["age"].to_numpy(), "sex": sel["sex"].to_numpy(),
                         "diagnosis": sel["diagnosis"].astype(str).to_numpy(),
                         "modality": job.modality,
                         "reference_participant_id": sel["participant_id"].to_numpy()})


__all__ = ["MASKS", "BwasSite", "plan_bwas", "smoothing_kernels", "synthetic_covariates"]
