"""What the per-site jobs of the analysis stages share.

A stage that runs once per site of an analysis (``bwas``, ``diagnosis``) plans a frozen
dataclass per site at DAG build time; the rules pass it to their scripts as a plain dict
(``params``), which the script turns back into the dataclass. :class:`SiteJob` holds what
those dataclasses have in common: the job's name, its synthetic cohort's name, its results
folder and that round trip. Each stage keeps its own fields (and their order, which is the
order of the params dict).

A smoothed BWAS site's paths add its kernel to the site's label, ``site-<label>_fwhm-<mm>``
(:func:`fwhm_suffix`); :func:`split_path_label` reads the two back from such a path label
(the fidelity collectors, from a results folder's name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from typing import Any, ClassVar, Self

from genbrain.errors import GenbrainInputError

SUFFIX = "_fwhm-"  # a smoothed site's paths: site-<label>_fwhm-<mm>


def fwhm_suffix(fwhm: float) -> str:
    """The path suffix of a smoothing kernel: "" for 0 (today's paths), ``_fwhm-8`` for 8 mm,
    ``_fwhm-7p5`` for 7.5 mm (no dot in a path label)."""
    return f"{SUFFIX}{float(fwhm):g}".replace(".", "p") if fwhm else ""


def split_path_label(text: str) -> tuple[str, float]:
    """(site label, FWHM in mm) of a ``{site}{smooth}`` path label: ``siteA_fwhm-7p5`` ->
    ("siteA", 7.5), ``siteA`` -> ("siteA", 0.0)."""
    label, _, fwhm = text.partition(SUFFIX)
    return label, float(fwhm.replace("p", ".")) if fwhm else 0.0


class SiteJob:
    """Mixin of a stage's frozen per-site dataclass, which must have the fields ``analysis``
    and ``label`` (the site's path label) and set the class variables below."""

    STAGE: ClassVar[str]  # results/<STAGE>/<analysis>/site-<label>
    SYNTH_PREFIX: ClassVar[str]  # the synthetic cohort: <SYNTH_PREFIX>-<analysis>-<label>
    TUPLES: ClassVar[tuple[str, ...]] = ()  # tuple fields (a params dict may hold lists)

    analysis: str
    label: str

    @property
    def name(self) -> str:
        """``<analysis>/<label>``: the key of the stage's plan."""
        return f"{self.analysis}/{self.label}"

    @property
    def synth(self) -> str:
        """The site's synthetic cohort's name (``results/synthetic/<synth>``)."""
        return f"{self.SYNTH_PREFIX}-{self.analysis}-{self.label}"

    @property
    def out_dir(self) -> str:
        """The site's results folder."""
        return f"results/{self.STAGE}/{self.analysis}/site-{self.label}"

    def to_dict(self) -> dict:
        """The fields as a plain dict, in field order (a rule's ``params``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> Self:
        """The job back from :meth:`to_dict`'s dict (its ``TUPLES`` fields from lists too)."""
        d = dict(d)
        for key in cls.TUPLES:
            d[key] = tuple(d[key])
        return cls(**d)


def per_site_finetunes(key: str, task: str, finetunes: Mapping[str, Any],
                       cohorts: Mapping[str, Any], why: str) -> tuple[dict[str, Any], Any]:
    """The planned fine-tunes of ``task`` by site label and their cohort, for an analysis at
    config key ``key`` that needs one diagnosis-conditioned fine-tune per site; refused with
    one line naming ``key`` otherwise (``why``: what the analysis does with them)."""
    jobs = {j.unit: j for j in finetunes.values() if j.task == task}
    if not jobs:
        tasks = sorted({j.task for j in finetunes.values()})
        raise GenbrainInputError(f"config: '{key}.finetune' is '{task}', not a fine-tuning "
                                 f"task; expected one of {tasks}")
    first = next(iter(jobs.values()))
    cohort = cohorts[first.cohort]
    if any(len(j.sites) != 1 or j.unit != cohort.site_label(j.sites[0])
           for j in jobs.values()):
        raise GenbrainInputError(f"config: '{key}': fine-tuning task '{task}' is not per "
                                 f"site; {why} (set 'finetune.tasks.{task}.per_site: true')")
    if not first.diagnosis_levels:
        raise GenbrainInputError(f"config: '{key}': fine-tuning task '{task}' is not "
                                 "conditioned on diagnosis (add 'diagnosis' to its "
                                 "conditions)")
    return jobs, cohort


__all__ = ["SUFFIX", "SiteJob", "fwhm_suffix", "per_site_finetunes", "split_path_label"]
