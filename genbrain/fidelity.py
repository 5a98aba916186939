"""The fidelity record: per scientific claim the demo checks, the paper's number, our goal, what
a finished run measured, its 95% CI and a verdict (issue 12, item 4).

    python -m genbrain.fidelity --results results --out docs/fidelity.md   # or: make fidelity

writes ``docs/fidelity.md`` and the same table as ``results/fidelity.tsv``;
:func:`fidelity_rst` renders it for the report's front page.

Each claim is registered once with its text, the paper's number and our goal, together with a
collector ``function(results_dir) -> rows`` (:func:`register`); a later stage adds its claims
by registering its collectors, without touching the writer. A collector reads result files
through :func:`read_result`: a file that is not there (the stage has not run) gives one
"not measured" row naming it, never a crash; so does a file without the expected columns.

Definitions (also printed under the table):

- **verdict**: *met* when the measured value satisfies the goal, *not met* when it does not,
  *not measured* when the result is missing or not finite. It judges the point estimate; the
  CI says how far the replicates let us trust it.
- **95% CI**: a t-interval over replicates, ``mean +- t(0.975, m - 1) * sd / sqrt(m)`` (the
  error bars of :func:`genbrain.stats.similarity.summarise_similarity`). For similarity the
  replicates are the m hold-out cohorts and their synthetic mirrors, and the value is
  ``relative_to_real`` (100 * cosine / the mean cosine of the real cohorts, that mean taken
  as fixed, as in the paper's relative score). A single replicate, or a maximum over images
  (memorisation), has no CI.
"""

from __future__ import annotations

import argparse
import logging
import math
import operator
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sstats

from genbrain.errors import GenbrainInputError
from genbrain.io import atomic_path, read_tsv, save_tsv
from genbrain.jobs import split_path_label

log = logging.getLogger(__name__)

VERDICTS = ("met", "not met", "not measured")
COLUMNS = ["claim_id", "claim", "subject", "paper", "goal", "measured", "ci_low", "ci_high",
           "ci_method", "n", "unit", "verdict", "source", "note"]
_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le,
                                                   ">": operator.gt, "<": operator.lt}


class MissingResult(Exception):
    """A result file a collector needs is absent or lacks what it needs (the stage has not
    run, or ran with older code); the claim is then *not measured*."""

    def __init__(self, path: str | os.PathLike, reason: str = "not found"):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Goal:
    """A goal on a measured value: ``op`` (``>=``, ``>``, ``<=`` or ``<``) ``value``, in
    ``unit``; with ``on="ci_low"`` the goal judges the lower end of the 95% CI instead of the
    point estimate (e.g. "the gain's CI lies above 0"), with ``on="ci_high"`` its upper end
    (e.g. "the error change's CI lies below 0")."""

    op: str
    value: float
    unit: str = ""
    on: str = "value"

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"goal operator must be one of {sorted(_OPS)}, got {self.op!r}")
        if self.on not in ("value", "ci_low", "ci_high"):
            raise ValueError(f"goal 'on' must be 'value', 'ci_low' or 'ci_high', got "
                             f"{self.on!r}")

    def met(self, measured: float, ci_low: float = math.nan, ci_high: float = math.nan
            ) -> bool:
        """Whether ``measured`` (or the CI's end, for a goal on the CI) satisfies the goal;
        a goal on a CI that is missing (NaN) is not met."""
        judged = {"value": measured, "ci_low": ci_low, "ci_high": ci_high}[self.on]
        return _OPS[self.op](judged, self.value)

    def __str__(self) -> str:
        text = f"{self.op} {_fmt(self.value, self.unit)}"
        return f"95% CI {text}" if self.on != "value" else text


@dataclass(frozen=True)
class Row:
    """One row of the record: a claim measured on one subject (a modality, a cohort)."""

    claim_id: str
    claim: str
    subject: str
    paper: str
    goal: str
    measured: float
    ci_low: float
    ci_high: float
    ci_method: str
    n: int
    unit: str
    verdict: str
    source: str
    note: str = ""


@dataclass(frozen=True)
class Claim:
    """A claim: its id, what is claimed (``text``), the paper's number as text, our goal, and
    the unit of the measured value (``%``, ``pp`` for percentage points, ``r``)."""

    id: str
    text: str
    paper: str
    goal: Goal
    unit: str = ""

    def measured(self, value: float, subject: str = "", *, ci: tuple[float, float] | None = None,
                 ci_method: str = "", n: int = 1, source: str = "", note: str = "") -> Row:
        """A measured row; the verdict follows from the goal (NaN -> not measured)."""
        value = float(value)
        if not math.isfinite(value):
            return self.not_measured(source, f"the value is {value}", subject)
        lo, hi = ci if ci is not None else (math.nan, math.nan)
        verdict = "met" if self.goal.met(value, float(lo), float(hi)) else "not met"
        return Row(self.id, self.text, subject, self.paper, str(self.goal), value,
                   float(lo), float(hi), ci_method or ("-" if ci is None else ""), int(n),
                   self.unit, verdict, source, note)

    def not_measured(self, source: str, reason: str, subject: str = "") -> Row:
        """The row of a claim whose result is missing: ``source`` names the file."""
        return Row(self.id, self.text, subject, self.paper, str(self.goal), math.nan,
                   math.nan, math.nan, "-", 0, self.unit, "not measured", source, reason)


Collector = Callable[[Path], Sequence[Row]]


@dataclass
class Entry:
    claim: Claim
    collect: Collector


REGISTRY: dict[str, Entry] = {}


def register(claim: Claim, registry: dict[str, Entry] | None = None
             ) -> Callable[[Collector], Collector]:
    """Decorator: register ``collect(results_dir) -> rows`` for ``claim`` in ``registry``
    (default :data:`REGISTRY`, the one ``make fidelity`` runs); claim ids are unique.

    A collector returns the rows of its claim (``claim.measured(...)``, one per modality or
    cohort) and reads files with :func:`read_result`, whose :class:`MissingResult` the writer
    turns into a *not measured* row. A later stage registers its claims in its own module,
    imported at the end of this one."""
    target = REGISTRY if registry is None else registry

    def add(collect: Collector) -> Collector:
        if claim.id in target:
            raise ValueError(f"fidelity claim '{claim.id}' is already registered")
        target[claim.id] = Entry(claim, collect)
        return collect
    return add


def read_result(results: str | os.PathLike, relpath: str,
                columns: Iterable[str] = ()) -> pd.DataFrame:
    """A result table ``results/relpath``; :class:`MissingResult` when it is absent,
    unreadable, or lacks one of ``columns``."""
    path = Path(results) / relpath
    if not path.exists():
        raise MissingResult(path)
    try:
        table = read_tsv(path)
    except GenbrainInputError as err:
        raise MissingResult(path, f"unreadable ({err})") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise MissingResult(path, f"no column(s) {missing}")
    return table


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the ``level`` t-interval of the mean of the finite ``values``
    (low = high = NaN for fewer than two)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    m = float(x.mean())
    if len(x) < 2:
        return m, math.nan, math.nan
    half = float(sstats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - half, m + half


# ---------------------------------------------------------------------------------------------
# today's claims: the pretrained model's evaluation (similarity, realism, memorisation)

SIMILARITY_FILE = "evaluate/similarity/pretrain.tsv"
SAMPLES_FILE = "pretrain/samples.tsv"
AUDIT_FILE = "evaluate/audit/pretrain.tsv"
GATE_FILE = "evaluate/audit/pretrain_gate.tsv"
#: modalities the later stages use; each should look like a brain (issue 12, item 3)
REALISM_REQUIRED = ("T1w", "VBM", "FLAIR", "FA", "fc*", "task*")


def _similarity(claim: Claim, effect: str, kind: str) -> Collector:
    """Collector of one (effect, kind) of the similarity table: per modality, the mean
    ``relative_to_real`` over replicates and its t-interval."""
    def collect(results: Path) -> list[Row]:
        path = Path(results) / SIMILARITY_FILE
        table = read_result(results, SIMILARITY_FILE,
                            ("modality", "effect", "kind", "replicate", "n", "cosine",
                             "relative_to_real"))
        rows = []
        for modality, of_m in table.groupby("modality", sort=True):
            mine = of_m[(of_m["effect"] == effect) & (of_m["kind"] == kind)]
            if mine.empty:
                rows.append(claim.not_measured(str(path), f"no {effect}/{kind} rows", modality))
                continue
            real = of_m[(of_m["effect"] == effect) & (of_m["kind"] == "real")]["cosine"]
            m, lo, hi = t_interval(mine["relative_to_real"])
            reps = int(mine["relative_to_real"].notna().sum())
            note = (f"cosine {mine['cosine'].mean():.3f} vs real {real.mean():.3f}; "
                    f"cohorts of {int(mine['n'].iloc[0])}")
            rows.append(claim.measured(m, modality, ci=None if reps < 2 else (lo, hi),
                                       ci_method=f"t, {reps} replicates" if reps >= 2 else "",
                                       n=reps, source=str(path), note=note))
        return rows
    return collect


for _effect, _kind, _goal, _paper, _what in (
        ("age", "synthetic", 60.0, "88%", "single synthetic samples"),
        ("age", "synthetic_avg", 100.0, "140%", "means of k synthetic samples"),
        ("sex", "synthetic", 30.0, "not transcribed here", "single synthetic samples"),
        ("sex", "synthetic_avg", 30.0, "not transcribed here", "means of k synthetic samples")):
    _claim = Claim(
        id=f"similarity.{_effect}.{'single' if _kind == 'synthetic' else 'averaged'}",
        text=f"{_effect} t-map similarity of cohorts of {_what}, relative to real cohorts",
        paper=_paper, goal=Goal(">=", _goal, "%"), unit="%")
    register(_claim)(_similarity(_claim, _effect, _kind))


REALISM = Claim("realism", "synthetic image's Pearson r with the hold-out mean image",
                paper="not reported (our check; real brains score 0.77-0.99)",
                goal=Goal(">=", 0.7), unit="r")


@register(REALISM)
def _realism(results: Path) -> list[Row]:
    """Per modality of ``samples.tsv``: the mean ``r_synthetic`` over its samples (one per
    modality today: no CI); a required modality absent from the table is not measured."""
    path = str(Path(results) / SAMPLES_FILE)
    table = read_result(results, SAMPLES_FILE, ("modality", "r_synthetic", "r_real"))
    rows = []
    for modality, of_m in table.groupby("modality", sort=False):
        m, lo, hi = t_interval(of_m["r_synthetic"])
        k = int(of_m["r_synthetic"].notna().sum())
        rows.append(REALISM.measured(
            m, modality, ci=None if k < 2 else (lo, hi),
            ci_method=f"t, {k} samples" if k >= 2 else "one sample", n=k, source=path,
            note=f"real image r {of_m['r_real'].mean():.2f}"))
    present = list(table["modality"].astype(str).unique())
    for want in REALISM_REQUIRED:
        if not any(_matches(m, want) for m in present):
            rows.append(REALISM.not_measured(path, "no such modality in the table", want))
    return rows


MEMORISATION = Claim("memorisation",
                     "no synthetic image is a near-copy of a training image: largest Pearson r",
                     paper="none above r = 0.95 (the paper's near-copy threshold)",
                     goal=Goal("<=", 0.95), unit="r")


@register(MEMORISATION)
def _memorisation(results: Path) -> list[Row]:
    """The largest ``max_r`` of the evaluation cohort's audit (every synthetic image vs every
    training image of its modality); the gate table when the audit is absent. The goal's
    threshold is the gate's own when the gate table records one."""
    audit_path, gate_path = Path(results) / AUDIT_FILE, Path(results) / GATE_FILE
    claim = MEMORISATION
    try:
        gate = read_result(results, GATE_FILE, ("threshold", "max_r", "n_synthetic"))
        threshold = float(gate["threshold"].iloc[0])
        claim = Claim(claim.id, claim.text, claim.paper, Goal("<=", threshold), claim.unit)
    except MissingResult:
        gate = None
    try:
        audit = read_result(results, AUDIT_FILE, ("modality", "max_r"))
    except MissingResult:
        if gate is None:
            raise MissingResult(f"{audit_path} and {gate_path}") from None
        return [claim.measured(float(gate["max_r"].iloc[0]), "pretrain cohort",
                               ci_method="a maximum", n=int(gate["n_synthetic"].iloc[0]),
                               source=str(gate_path),
                               note="from the gate table (audit table absent)")]
    r = pd.to_numeric(audit["max_r"], errors="coerce")
    flagged = int((r > claim.goal.value).sum())
    per_mod = audit.assign(max_r=r).groupby("modality", sort=True)["max_r"].max()
    note = (f"{flagged} of {len(audit)} images above {claim.goal.value:g}; per modality "
            + ", ".join(f"{m} {v:.2f}" for m, v in per_mod.items()))
    return [claim.measured(float(r.max()), "pretrain cohort", ci_method="a maximum", n=len(audit),
                           source=str(audit_path), note=note)]


# ---------------------------------------------------------------------------------------------
# the writer


FINETUNE_DIRECTION = Claim(
    "finetune.disease_direction",
    "a disease-conditioned fine-tune's learned patients-minus-controls effect (one-step "
    "clean-image estimate) agrees with the planted effect map (Pearson r)",
    paper="not reported (our check; the BWAS and diagnosis gains rest on it)",
    goal=Goal(">=", 0.3), unit="r")


def _finetune_checks_files(results: Path) -> list[Path]:
    files = sorted(Path(results).glob("finetune/*/*/checks.tsv"))
    if not files:
        raise MissingResult(Path(results) / "finetune/<task>/<unit>/checks.tsv")
    return files


def _finetune_checks(results: Path, path: Path) -> dict[tuple[str, str, str], float]:
    """A fine-tune's ``checks.tsv`` as {(check, modality, contrast): value}; one contrast per
    non-control level (tables written before contrasts had one, unnamed: "")."""
    table = read_result(results, str(path.relative_to(results)), ("check", "modality", "value"))
    contrast = (table["contrast"].fillna("") if "contrast" in table.columns
                else pd.Series("", index=table.index))
    return {(c, m, k): v for c, m, k, v in zip(table["check"], table["modality"], contrast,
                                               table["value"])}


@register(FINETUNE_DIRECTION)
def _finetune_direction(results: Path) -> list[Row]:
    """Per fine-tune and modality with a disease head, on simulated cohorts: the r of the
    learned effect with the truth (``checks.tsv``), beside the training set's own map's r (the
    yardstick a site's own data reach). The goal, 0.3, is about what the demo's sites' own maps
    reach (n = 60-80)."""
    files = _finetune_checks_files(results)
    rows = []
    for path in files:
        value = _finetune_checks(results, path)
        for (check, modality, k), r in value.items():
            if check != "disease_effect_vs_truth":
                continue
            own = value.get(("disease_site_vs_truth", modality, k), math.nan)
            several = sum(c == check and m == modality for c, m, _ in value) > 1
            rows.append(FINETUNE_DIRECTION.measured(
                r, f"{path.parent.parent.name}/{path.parent.name} {modality}"
                   + (f" {k}" if several else ""),
                ci_method="one map", source=str(path),
                note=f"the training set's own map: r {own:.2f}"))
    if not rows:
        raise MissingResult(files[0], "no disease head with a simulated truth")
    return rows


FINETUNE_PAIRED = Claim(
    "finetune.paired_sample_gain",
    "a fine-tune's label reaches its samples: pairs of samples from identical noise that differ "
    "only in that label differ by the planted effect (gain: least-squares slope of the mean "
    "paired difference on the planted map; 1 = the full effect)",
    paper="not in the paper (our check); its closest statement: fine-tuned models generate "
          "\"synthetic cohorts that preserve crucial biological and pathological signatures\" "
          "(Discussion), shown through the BWAS maps (Fig. 5)",
    goal=Goal(">=", 0.5), unit="")


@register(FINETUNE_PAIRED)
def _finetune_paired(results: Path) -> list[Row]:
    """Per fine-tune, modality and label contrast (each diagnosis level, a score, age, sex), on
    simulated cohorts: the paired-sample gain (``<label>_sample_gain`` of ``checks.tsv``); the
    note gives the gain the training set's own data show (below 1: anatomy blurs the planted
    effect), the samples' r with the truth beside the training set's own map's (the goal
    there: at least as high), their r with that map, and the one-step check's r with the truth
    for a head.
    The goal, half the planted effect, is ours (issue 28): below it a synthetic cohort's
    effect maps are mostly noise."""
    files = _finetune_checks_files(results)
    rows = [row for path in files
            for row in _paired_rows(FINETUNE_PAIRED, results, path,
                                    f"{path.parent.parent.name}/{path.parent.name}")]
    if not rows:
        raise MissingResult(files[0], "no paired-sample check with a simulated truth "
                                      "(finetune.checks.paired_samples 0, or older checks)")
    return rows


def _paired_rows(claim: Claim, results: Path, path: Path, model: str) -> list[Row]:
    """The paired-sample gain rows of one checks table (see :func:`_finetune_paired`)."""
    value = _finetune_checks(results, path)
    rows = []
    for (check, modality, k), gain in value.items():
        if not str(check).endswith("_sample_gain"):
            continue
        label = check.removesuffix("_sample_gain")
        rows.append(claim.measured(gain, f"{model} {modality} {k}",
                                   ci_method="one set of pairs", source=str(path),
                                   note=_paired_note(value, label, modality, k)))
    return rows


def _paired_note(value: Mapping[tuple[str, str, str], float], label: str, modality: str,
                 k: str) -> str:
    """The note of a paired-sample gain row: the training set's own gain, the samples' r with
    the truth beside the training set's own map's, their r with that map, and the one-step
    check's r with the truth where the fine-tune has a head for ``label``."""
    r_truth = value.get((f"{label}_sample_vs_truth", modality, k), math.nan)
    own = value.get((f"{label}_site_vs_truth", modality, k), math.nan)
    r_site = value.get((f"{label}_sample_vs_site", modality, k), math.nan)
    site_gain = value.get((f"{label}_site_gain", modality, k), math.nan)
    note = (f"the training set's own data: gain {site_gain:.2f}; "
            if math.isfinite(site_gain) else "")
    note += (f"r with the truth {r_truth:.2f} (the training set's own map: {own:.2f}), "
             f"with the training set's map {r_site:.2f}")
    one_step = value.get((f"{label}_effect_vs_truth", modality, k))
    if one_step is not None:
        note += f"; the one-step check's r with the truth {one_step:.2f}"
    return note


PRETRAIN_PAIRED = Claim(
    "pretrain.paired_sample_gain",
    "the pretrained model's age and sex reach its samples: pairs of samples from identical "
    "noise that differ only in age (75 vs 50 years) or sex differ by the planted effect (gain: "
    "least-squares slope of the mean paired difference on the planted map; 1 = the full "
    "effect)",
    paper="not in the paper (our check); its closest number: synthetic cohorts' age and sex "
          "t-maps reach 95-98% of real cohorts' similarity with the reference (Fig. 2a)",
    goal=Goal(">=", 0.5), unit="")


@register(PRETRAIN_PAIRED)
def _pretrain_paired(results: Path) -> list[Row]:
    """Per evaluated modality and label (age, sex), on a simulated pretraining cohort: the
    paired-sample gain of ``pretrain/checks.tsv`` (rule ``pretrain_checks``), with the same note
    as the fine-tunes' rows. The goal, half the planted effect, is ours (issue 28)."""
    path = Path(results) / "pretrain" / "checks.tsv"
    rows = _paired_rows(PRETRAIN_PAIRED, results, path, "pretrained")
    if not rows:
        raise MissingResult(path, "no paired-sample check with a simulated truth "
                                  "(evaluate.checks.paired_samples 0, or a real cohort)")
    return rows

BWAS_FILES = "bwas/*/site-*"
BWAS_GAIN = {
    metric: Claim(
        f"bwas.gain_{metric}",
        f"a site's synthetic cohort gives a Cohen's d map closer to the reference (the other "
        f"sites pooled) than the site's own data: {label}, synthetic minus real",
        paper=paper, goal=Goal(">", 0.0, on="ci_low"), unit="r" if metric == "r" else "")
    for metric, label, paper in (
        ("r", "gain in Pearson r",
         "+0.12 (SH_JZ2, n 330: 0.17 -> 0.29), +0.03 (SH_JZ1), +0.02 (zhengzhou, fBIRN)"),
        ("dice", "gain in sign Dice",
         "+0.10 (SH_JZ2: 0.59 -> 0.69), +0.04 (SH_JZ1), +0.01 (zhengzhou)"))}
BWAS_TRUTH = Claim(
    "bwas.truth_gain",
    "on simulated cohorts, the synthetic cohort's d map recovers the planted disease effect "
    "better than the site's own: r with the truth, synthetic minus real",
    paper="not measurable on real data (no ground truth); our check", goal=Goal(">", 0.0),
    unit="r")
BWAS_EFFECTIVE_N = Claim(
    "bwas.effective_n",
    "the synthetic cohort is worth more real participants than the site has: effective n "
    "over the site's n, both read off the real-cohort agreement curve under the attenuation "
    "model r^2 = n / (n + a)",
    paper="~3.4x for SH_JZ2 (r 0.17 -> 0.29 at n 330, the same model)", goal=Goal(">", 1.0),
    unit="x")


def _bwas_sites(results: Path, name: str) -> list[Path]:
    files = sorted(Path(results).glob(f"{BWAS_FILES}/{name}"))
    if not files:
        raise MissingResult(Path(results) / f"bwas/<analysis>/site-<site>/{name}")
    return files


def _bwas_subject(path: Path, table: pd.DataFrame) -> str:
    """``<analysis> <site>``, and ``fwhm <mm>`` for a smoothed analysis (``bwas.smoothing_fwhm``:
    ``site-siteA_fwhm-8`` -> ``scz siteA fwhm 8``), so each kernel's rows stand apart. The site
    is the table's ``site`` column, its name in the participants table (``Site A-1``), as every
    BWAS table has it; the path holds only its label (``SiteA1``)."""
    sites = table["site"].astype(str).unique()
    if len(sites) != 1:
        raise MissingResult(path, f"'site' column holds {sorted(sites)}; expected one site")
    _, fwhm = split_path_label(path.parent.name.removeprefix("site-"))
    return f"{path.parent.parent.name} {sites[0]}" + (f" fwhm {fwhm:g}" if fwhm else "")


def _bwas_gain(claim: Claim, metric: str) -> Collector:
    def collect(results: Path) -> list[Row]:
        """Per BWAS site, the synthetic-minus-real difference of ``metric`` with its bootstrap
        95% CI (``scores.tsv``); the note gives both scores, their CIs and chance levels."""
        rows = []
        for path in _bwas_sites(results, "scores.tsv"):
            table = read_result(results, str(path.relative_to(results)), (
                "site", "metric", "real", "synthetic", "difference", "difference_ci_low",
                "difference_ci_high", "real_ci_low", "real_ci_high", "synthetic_ci_low",
                "synthetic_ci_high", "chance_real", "chance_synthetic", "p_bootstrap",
                "n_boot"))
            row = table[table["metric"] == metric]
            if row.empty:
                raise MissingResult(path, f"no '{metric}' row")
            t = row.iloc[0]
            note = (f"real {t['real']:.3f} [{t['real_ci_low']:.3f}, {t['real_ci_high']:.3f}], "
                    f"synthetic {t['synthetic']:.3f} [{t['synthetic_ci_low']:.3f}, "
                    f"{t['synthetic_ci_high']:.3f}]; chance {t['chance_real']:.2f} / "
                    f"{t['chance_synthetic']:.2f}; bootstrap p {t['p_bootstrap']:.3g}")
            rows.append(claim.measured(
                t["difference"], _bwas_subject(path, table),
                ci=(t["difference_ci_low"], t["difference_ci_high"]),
                ci_method="bootstrap percentile, bias-shifted", n=int(t["n_boot"]),
                source=str(path), note=note))
        return rows
    return collect


for _metric, _claim in BWAS_GAIN.items():
    register(_claim)(_bwas_gain(_claim, _metric))


@register(BWAS_TRUTH)
def _bwas_truth(results: Path) -> list[Row]:
    """Per BWAS site of a simulated cohort (``maps.tsv`` with finite ``r_truth``): the
    synthetic map's r with the planted effect minus the real map's (one map each: no CI)."""
    rows = []
    for path in _bwas_sites(results, "maps.tsv"):
        table = read_result(results, str(path.relative_to(results)),
                            ("site", "map", "n", "r_truth")).set_index("map")
        if not np.isfinite(table["r_truth"]).all():
            continue  # a real cohort: no ground truth
        real, syn = table.loc["real", "r_truth"], table.loc["synthetic", "r_truth"]
        rows.append(BWAS_TRUTH.measured(
            syn - real, _bwas_subject(path, table), ci_method="one map each",
            source=str(path),
            note=f"real (n {int(table.loc['real', 'n'])}) {real:.3f}, synthetic (n "
                 f"{int(table.loc['synthetic', 'n'])}) {syn:.3f}, reference (n "
                 f"{int(table.loc['reference', 'n'])}) {table.loc['reference', 'r_truth']:.3f}"))
    if not rows:
        raise MissingResult(Path(results) / BWAS_FILES, "no site with a simulated truth")
    return rows


@register(BWAS_EFFECTIVE_N)
def _bwas_effective_n(results: Path) -> list[Row]:
    """Per BWAS site, ``gain_model`` of ``effective_n.tsv``: the synthetic cohort's effective
    n over the real site's, both from the attenuation model fitted to the curve."""
    rows = []
    for path in _bwas_sites(results, "effective_n.tsv"):
        table = read_result(results, str(path.relative_to(results)), (
            "site", "n_real", "n_synthetic", "r_real", "r_synthetic", "n_effective_interp",
            "n_effective_model", "gain_model"))
        t = table.iloc[0]
        rows.append(BWAS_EFFECTIVE_N.measured(
            t["gain_model"], _bwas_subject(path, table), ci_method="model fit",
            source=str(path),
            note=f"n real {int(t['n_real'])} (r {t['r_real']:.3f}), synthetic "
                 f"{int(t['n_synthetic'])} (r {t['r_synthetic']:.3f}): effective n "
                 f"{t['n_effective_model']:.0f} (model), {t['n_effective_interp']:.0f} "
                 "(interpolated)"))
    return rows


DX_FILES = "diagnosis/*/summary.tsv"
DX_WITHIN = Claim(
    "diagnosis.within_baseline",
    "the real-only classifier of regional volumes learns the diagnosis within its own site: "
    "mean within-site test accuracy over training sites (the calibrated task, issue 16 item 0)",
    paper="0.59-0.80 (schizophrenia sites, real only)", goal=Goal(">=", 0.59))
DX_GAIN = {
    method: Claim(
        f"diagnosis.{key}",
        f"{text}: mean cross-site accuracy over train x test pairs, minus the real-only "
        "model's on the same pairs (percentage points)",
        paper=paper, goal=Goal(">", 0.0, "pp", on="ci_low"), unit="pp")
    for method, key, text, paper in (
        ("augmented", "cross_site_gain",
         ("training on one site augmented with its fine-tune's synthetic images (chosen "
          "ratio) generalises better to other sites"),
         "+7.34% mean cross-site accuracy (schizophrenia, 7 sites, 42 pairs)"),
        ("harmonized", "harmonized_gain",
         "ComBat-harmonised features (real only) generalise better to other sites",
         "not in the paper (the researcher's alternative)"),
        ("harmonized+augmented", "combined_gain",
         "ComBat-harmonised features and augmentation together generalise better",
         "not in the paper"))}
DX_PAIRS = Claim(
    "diagnosis.pairs_improved",
    "augmentation improves most cross-site pairs: the fraction of train x test pairs whose "
    "accuracy rises (Clopper-Pearson 95% CI)",
    # judged on the interval's low end: with a handful of pairs (the demo's 5) a majority of
    # better pairs is within chance of a coin flip
    paper="26 of 42 pairs (62%)", goal=Goal(">", 50.0, "%", on="ci_low"), unit="%")


DX_REGIONS_FILES = "diagnosis/*/regions.tsv"
DX_REGIONS = Claim(
    "diagnosis.shap_regions",
    "the real-only classifiers rely on the diseased structures: the share of their SHAP top-k "
    "regions that are the simulated disease's structures, minus the share expected by chance "
    "(percentage points; embedded default only, where the diseased structures are known)",
    paper="not in the paper (SHAP explains its models; simulation gives the truth to check)",
    goal=Goal(">", 0.0, "pp", on="ci_low"), unit="pp")


def _dx_summaries(results: Path) -> list[tuple[Path, pd.DataFrame]]:
    files = sorted(Path(results).glob(DX_FILES))
    if not files:
        raise MissingResult(Path(results) / "diagnosis/<analysis>/summary.tsv")
    return [(path, read_result(results, str(path.relative_to(results)), (
        "setting", "method", "metric", "pairs", "mean", "mean_diff", "diff_low", "diff_high",
        "pairs_better", "pairs_ci_above_0", "pairs_ci_below_0"))) for path in files]


def _dx_row(table: pd.DataFrame, setting: str, method: str) -> pd.Series | None:
    row = table[(table["setting"] == setting) & (table["method"] == method)
                & (table["metric"] == "accuracy")]
    return None if row.empty else row.iloc[0]


@register(DX_WITHIN)
def _dx_within(results: Path) -> list[Row]:
    """Per diagnosis analysis, the real-only within-site accuracy averaged over its training
    sites (``summary.tsv``; one test split per site, so no CI across sites)."""
    rows = []
    for path, table in _dx_summaries(results):
        t = _dx_row(table, "within", "real")
        if t is None:
            raise MissingResult(path, "no within-site real-only accuracy row")
        rows.append(DX_WITHIN.measured(
            t["mean"], path.parent.name, ci_method="one test split per site", n=int(t["pairs"]),
            source=str(path), note=f"mean over {int(t['pairs'])} training sites"))
    return rows


def _dx_gain(claim: Claim, method: str) -> Collector:
    def collect(results: Path) -> list[Row]:
        """Per diagnosis analysis, ``method``'s mean cross-site accuracy difference from real
        only, in percentage points, with the pairs' bootstrap CIs combined."""
        rows = []
        for path, table in _dx_summaries(results):
            t = _dx_row(table, "cross", method)
            if t is None:
                rows.append(claim.not_measured(str(path), f"no '{method}' rows (no training "
                                               "site with a fine-tune, or harmonize: false)",
                                               path.parent.name))
                continue
            rows.append(claim.measured(
                100 * t["mean_diff"], path.parent.name,
                ci=(100 * t["diff_low"], 100 * t["diff_high"]),
                ci_method="pairs' bootstrap CIs combined (normal)", n=int(t["pairs"]),
                source=str(path),
                note=f"mean cross-site accuracy {t['mean']:.3f} over {int(t['pairs'])} pairs; "
                     f"{int(t['pairs_better'])} better, {int(t['pairs_ci_above_0'])} with CI "
                     f"above 0, {int(t['pairs_ci_below_0'])} below"))
        return rows
    return collect


for _method, _claim in DX_GAIN.items():
    register(_claim)(_dx_gain(_claim, _method))


@register(DX_PAIRS)
def _dx_pairs(results: Path) -> list[Row]:
    """Per diagnosis analysis, the share of cross-site pairs whose augmented accuracy beats
    real only, with its Clopper-Pearson interval."""
    rows = []
    for path, table in _dx_summaries(results):
        t = _dx_row(table, "cross", "augmented")
        if t is None:
            rows.append(DX_PAIRS.not_measured(str(path), "no 'augmented' rows",
                                              path.parent.name))
            continue
        k, n = int(t["pairs_better"]), int(t["pairs"])
        ci = sstats.binomtest(k, n).proportion_ci(0.95, method="exact")
        rows.append(DX_PAIRS.measured(
            100 * k / n, path.parent.name, ci=(100 * ci.low, 100 * ci.high),
            ci_method="Clopper-Pearson", n=n, source=str(path),
            note=f"{k} of {n} pairs better; {int(t['pairs_ci_above_0'])} with CI above 0, "
                 f"{int(t['pairs_ci_below_0'])} below"))
    return rows


@register(DX_REGIONS)
def _dx_regions(results: Path) -> list[Row]:
    """Per diagnosis analysis of a simulated cohort, the real-only models' top-k SHAP regions
    (``regions.tsv``) pooled over training sites: hits over slots minus chance (k |diseased| /
    F over k), with a Clopper-Pearson interval on the pooled hits."""
    files = sorted(Path(results).glob(DX_REGIONS_FILES))
    if not files:
        raise MissingResult(Path(results) / "diagnosis/<analysis>/regions.tsv")
    rows = []
    for path in files:
        t = read_result(results, str(path.relative_to(results)), ("train_site", "method", "k"))
        real = t[t["method"] == "real"]
        if "hits" not in t.columns or real.empty or real["hits"].isna().all():
            rows.append(DX_REGIONS.not_measured(str(path), "no simulated truth (a real cohort) "
                                                "or no real-only model", path.parent.name))
            continue
        hits, slots = int(real["hits"].sum()), int(real["k"].sum())
        chance = float((real["expected"] / real["k"]).mean())
        ci = sstats.binomtest(hits, slots).proportion_ci(0.95, method="exact")
        per_site = ", ".join(f"{r.train_site} {int(r.hits)}/{int(r.k)}"
                             for r in real.itertuples())
        rows.append(DX_REGIONS.measured(
            100 * (hits / slots - chance), path.parent.name,
            ci=(100 * (ci.low - chance), 100 * (ci.high - chance)),
            ci_method="Clopper-Pearson on pooled top-k slots", n=slots, source=str(path),
            note=f"{hits} of {slots} top-k slots are diseased structures ({per_site}); chance "
                 f"{100 * chance:.1f}%"))
    return rows


IMAGING_FILES = "imaging/*/summary.tsv"
#: the paper's Fig. 3a (T1w, UK Biobank, N = 500): GenBrain-ft's gain over the input
IMAGING_PAPER = {"psnr": "GenBrain-ft +2.70 dB (23.75 -> 26.45); its baselines' values are "
                         "in Fig. 3a, not transcribed",
                 "ssim3d": "GenBrain-ft +0.042 (0.920 -> 0.962); its baselines' values are in "
                           "Fig. 3a, not transcribed"}
IMAGING_BASELINE_GAIN = {
    metric: Claim(
        f"imaging.baseline_gain.{metric}",
        f"BASELINE (not GenBrain): each non-DiT method's {label} gain over the corrupted input, "
        "the mean paired difference over test images (bootstrap 95% CI); the context the "
        "GenBrain fine-tune's row will be read against",
        paper=IMAGING_PAPER[metric], goal=Goal(">", 0.0, unit, on="ci_low"), unit=unit)
    for metric, label, unit in (("psnr", "PSNR", "dB"), ("ssim3d", "3D-SSIM", ""))}


#: the paper's Fig. 4a-b (UK Biobank, N = 500): GenBrain-ft against GenBrain-st (from scratch)
SYNTHESIS_PAPER = {
    ("scratch", "psnr"): "T1w -> FLAIR: GenBrain-ft 21.50 dB vs from scratch 20.38 (+1.12, p = "
                         "4.6e-221); FLAIR -> T1w: 23.57 vs 23.04 (+0.53)",
    ("scratch", "ssim3d"): "T1w -> FLAIR: GenBrain-ft 0.941 vs from scratch 0.928 (+0.013, p = "
                           "0); FLAIR -> T1w: 0.958 vs 0.950 (+0.008)",
    ("mean", "psnr"): "T1w -> FLAIR: GenBrain-ft 21.50 dB; the mean brain is below every method "
                      "in Fig. 4a (its value not transcribed)",
    ("mean", "ssim3d"): "T1w -> FLAIR: GenBrain-ft 0.941; the mean brain is below every method "
                        "in Fig. 4a (its value not transcribed)",
}
for _base in ("scratch", "mean"):
    SYNTHESIS_PAPER[(_base, "identified")] = (
        "no identification accuracy is given for T1w <-> FLAIR; chance is 1/n (the mean image, "
        "one prediction for all, identifies no one)")
    SYNTHESIS_PAPER[(_base, "r_gap")] = (
        "not given for T1w <-> FLAIR (DeepTaskGen reports own-vs-other r for rest -> task)")
#: rest -> task (paper Fig. 4c, UK Biobank emotion task, 15 FC maps -> the shapes / faces
#: z-maps; DeepTaskGen's problem): the paper gives the spatial r, not Dice AUC
SYNTHESIS_PAPER[("mean", "r")] = (
    "rest -> task: GenBrain-ft r 0.54 (shapes and faces), from scratch 0.53 (shapes), Pix2Pix "
    "0.52 / 0.51, U-Net 0.47 / 0.47; the group-mean map's r is not given (DeepTaskGen's "
    "benchmark; its values not transcribed); diffusion -> FC: 0.24 (language) / 0.29 (visual)")
SYNTHESIS_PAPER[("mean", "dice_auc")] = (
    "not given by GenBrain; DeepTaskGen reports the Dice AUC of its predictions and of the "
    "group-mean map (values not transcribed; at most 0.45)")
_IDENTIFIED = ("top-1 identification accuracy (own prediction best matches the own target "
               "among all test predictions)")
_R_GAP = "discriminability (own r minus mean r with the other test subjects' predictions)"
SYNTHESIS_METRICS = (("psnr", "PSNR", "dB"), ("ssim3d", "3D-SSIM", ""),
                     ("identified", _IDENTIFIED, ""), ("r_gap", _R_GAP, "r"))
#: the DeepTaskGen metrics, against the mean image only (its group-average benchmark: does the
#: output carry the subject's own map beyond the population's?)
_MAP_METRICS = (("r", "own spatial r (prediction with its own target)", "r"),
                ("dice_auc", "Dice AUC of the top 5-50% voxels (prediction vs its own target)",
                 ""))
SYNTHESIS_GAIN = {
    (base, metric): Claim(
        f"imaging.genbrain_vs_{base}.{metric}",
        f"cross-modality synthesis: the fine-tuned GenBrain's {label} minus "
        + ("the same DiT trained from scratch on the same pairs and steps (pretraining helps)"
           if base == "scratch" else "the mean training image's (subject-specific output)")
        + ", the mean paired difference over test images (bootstrap 95% CI)",
        paper=SYNTHESIS_PAPER[(base, metric)], goal=Goal(">", 0.0, unit, on="ci_low"),
        unit=unit)
    for base, metrics in (("scratch", SYNTHESIS_METRICS),
                          ("mean", SYNTHESIS_METRICS + _MAP_METRICS))
    for metric, label, unit in metrics}

SIMILARITY_FILES = "imaging/*/similarity.tsv"
#: the paper's Fig. 4a (T1w -> FLAIR, UK Biobank, N = 500): GenBrain-ft's age/sex similarity
SIMILARITY_PAPER = {
    ("target", "age"): "T1w -> FLAIR: GenBrain-ft 0.96 vs the real FLAIR 0.97 (-0.01); "
                       "FLAIR -> T1w 0.90",
    ("target", "sex"): "T1w -> FLAIR: GenBrain-ft 0.89 vs the real FLAIR 0.91 (-0.02); "
                       "FLAIR -> T1w 0.88",
    ("scratch", "age"): "given for enhancement on ZIC (FLAIR 0.89 vs 0.80); for synthesis in "
                        "Fig. 4, not transcribed",
    ("scratch", "sex"): "given for enhancement on ZIC (FLAIR 0.53 vs 0.45); for synthesis in "
                        "Fig. 4, not transcribed",
}
#: how far below the real targets' similarity the synthesized images' may be ("nearly matching":
#: the paper's -0.01 / -0.02)
SIMILARITY_MARGIN = 0.05
SIMILARITY_GAIN = {
    (base, effect): Claim(
        f"imaging.similarity_vs_{'real' if base == 'target' else base}.{effect}",
        f"cross-modality synthesis keeps the {effect} pattern: the {effect} t-map of the "
        "fine-tuned GenBrain's outputs over the test images, cosine with the reference t-map "
        "(training split), minus "
        + ("that of the real targets (goal: the CI within "
           f"{SIMILARITY_MARGIN} of them)" if base == "target"
           else "that of the same DiT trained from scratch")
        + "; subject bootstrap, paired",
        paper=SIMILARITY_PAPER[(base, effect)],
        goal=Goal(">", -SIMILARITY_MARGIN if base == "target" else 0.0, on="ci_low"))
    for base in ("target", "scratch") for effect in ("age", "sex")}


def _summaries(results: Path) -> list[Path]:
    files = sorted(Path(results).glob(IMAGING_FILES))
    if not files:
        raise MissingResult(Path(results) / "imaging/<task>/summary.tsv")
    return files


def _genbrain_row(claim: Claim, path: Path, base: str, t: pd.Series, other: pd.Series,
                  value: str, difference: str, test: str) -> Row:
    """A synthesis task's row of genbrain against ``base``: ``t`` (genbrain's row against
    ``base``) gives the difference and its paired bootstrap CI, ``other`` (base's own row) its
    value for the note; ``value`` / ``difference`` name their columns."""
    return claim.measured(
        t[difference], f"{path.parent.name} genbrain vs {base}",
        ci=(t["difference_ci_low"], t["difference_ci_high"]),
        ci_method="bootstrap percentile, paired", n=int(t["n"]), source=str(path),
        note=f"genbrain {t[value]:.3f} [{t['ci_low']:.3f}, {t['ci_high']:.3f}] vs {base} "
             f"{other[value]:.3f} [{other['ci_low']:.3f}, {other['ci_high']:.3f}]; {test} p "
             f"{t['p']:.3g}; {int(t['n'])} test images")


def _synthesis_gain(claim: Claim, base: str, metric: str) -> Collector:
    def collect(results: Path) -> list[Row]:
        """Per synthesis task, genbrain's paired difference of ``metric`` from ``base``
        (``summary.tsv`` rows with method genbrain, baseline ``base``) with its bootstrap CI.
        A task that does not run ``base`` or genbrain, or does not score ``metric``, has no
        row (the comparison is not its; e.g. rest -> task has no from-scratch control in the
        demo); a task that runs both and scores it but lacks the row is not measured; no task
        at all: one row, not measured, saying so."""
        rows = []
        for path in _summaries(results):
            table = read_result(results, str(path.relative_to(results)), (
                "method", "metric", "n", "mean", "ci_low", "ci_high", "baseline",
                "mean_difference", "difference_ci_low", "difference_ci_high", "p"))
            if "kind" in table.columns and not (table["kind"] == "synthesis").any():
                continue  # an enhancement task: its rows are imaging.baseline_gain's
            if "kind" not in table.columns:
                continue  # written before the synthesis kind: an enhancement task
            task = path.parent.name
            if not ({"genbrain", base} <= set(table["method"])
                    and metric in set(table["metric"])):
                continue  # not among the task's methods or metrics
            pick = table[(table["method"] == "genbrain") & (table["baseline"] == base)
                         & (table["metric"] == metric)]
            if pick.empty:
                rows.append(claim.not_measured(
                    str(path), f"no genbrain vs {base} '{metric}' row (both methods and the "
                               "metric must be among the task's)", task))
                continue
            other = table[(table["method"] == base) & (table["metric"] == metric)].iloc[0]
            rows.append(_genbrain_row(claim, path, base, pick.iloc[0], other, "mean",
                                      "mean_difference", "paired t-test"))
        if not rows:
            raise MissingResult(Path(results) / "imaging/<task>/summary.tsv",
                                f"no synthesis task scores '{metric}' of genbrain and {base}")
        return rows
    return collect


def _similarity_gain(claim: Claim, base: str, effect: str) -> Collector:
    def collect(results: Path) -> list[Row]:
        """Per synthesis task, genbrain's ``effect`` similarity minus ``base``'s
        (``similarity.tsv``) with its paired bootstrap CI; a task whose similarity was not
        computed (too few test images) is not measured, with the table's note."""
        files = sorted(Path(results).glob(SIMILARITY_FILES))
        if not files:
            raise MissingResult(Path(results) / "imaging/<task>/similarity.tsv")
        rows = []
        for path in files:
            table = read_result(results, str(path.relative_to(results)), (
                "kind", "method", "effect", "n", "similarity", "ci_low", "ci_high", "baseline",
                "difference", "difference_ci_low", "difference_ci_high", "p", "note"))
            if not (table["kind"] == "synthesis").any():
                continue
            task = path.parent.name
            if not {"genbrain", base} <= set(table["method"]):
                continue  # not among the task's methods (e.g. no from-scratch control)
            pick = table[(table["method"] == "genbrain") & (table["baseline"] == base)
                         & (table["effect"] == effect)]
            other = table[(table["method"] == base) & (table["effect"] == effect)]
            if pick.empty or other.empty:
                # not computed (too few test images): the table's note says so on every row
                skipped = table.loc[table["note"].astype(str).str.startswith("not computed"),
                                    "note"]
                rows.append(claim.not_measured(
                    str(path), skipped.iloc[0] if len(skipped) else
                    f"no genbrain vs {base} {effect} row (both methods must be among the "
                    "task's)", task))
                continue
            t, o = pick.iloc[0], other.iloc[0]
            if isinstance(t["note"], str) and t["note"].startswith("not computed"):
                rows.append(claim.not_measured(str(path), t["note"], task))
                continue
            rows.append(_genbrain_row(claim, path, base, t, o, "similarity", "difference",
                                      "bootstrap t-test"))
        if not rows:
            raise MissingResult(Path(results) / "imaging/<task>/similarity.tsv",
                                f"no synthesis task runs genbrain and {base}")
        return rows
    return collect


def _imaging_gain(claim: Claim, metric: str) -> Collector:
    def collect(results: Path) -> list[Row]:
        """Per image task and baseline method, the paired difference of ``metric`` from the
        corrupted input with its bootstrap CI (``summary.tsv``)."""
        rows = []
        for path in _summaries(results):
            table = read_result(results, str(path.relative_to(results)), (
                "method", "metric", "n", "mean", "ci_low", "ci_high", "mean_difference",
                "difference_ci_low", "difference_ci_high", "p"))
            if "kind" in table.columns and (table["kind"] != "enhancement").all():
                continue  # a synthesis task's input is another modality, not a corrupted copy
            if "baseline" in table.columns:  # each method against the input only
                table = table[table["baseline"] == "input"]
            of_m = table[table["metric"] == metric]
            inp = of_m[of_m["method"] == "input"]
            if of_m.empty or inp.empty:
                rows.append(claim.not_measured(str(path), f"no '{metric}' rows (not among the "
                                               "task's metrics)", path.parent.name))
                continue
            base = inp.iloc[0]
            for t in of_m[~of_m["method"].isin(["input", "genbrain", "scratch"])].itertuples():
                rows.append(claim.measured(
                    t.mean_difference, f"{path.parent.name} {t.method} (baseline)",
                    ci=(t.difference_ci_low, t.difference_ci_high),
                    ci_method="bootstrap percentile, paired", n=int(t.n), source=str(path),
                    note=f"{t.method} {t.mean:.3f} [{t.ci_low:.3f}, {t.ci_high:.3f}] vs input "
                         f"{base['mean']:.3f} [{base['ci_low']:.3f}, {base['ci_high']:.3f}]; "
                         f"paired t-test p {t.p:.3g}; {int(t.n)} test images"))
        if not rows:
            raise MissingResult(Path(results) / "imaging/<task>/summary.tsv",
                                "no enhancement task")
        return rows
    return collect


# ---------------------------------------------------------------------------------------------
# clinical score prediction (paper Fig. 6c-f): results/clinical/<analysis>/comparison.tsv

CLINICAL_FILES = "clinical/*/comparison.tsv"
CLINICAL_COLUMNS = ("metric", "mean_base", "ci_low_base", "ci_high_base", "ratio_chosen",
                    "mean_chosen", "ci_low_chosen", "ci_high_chosen", "difference", "t", "p",
                    "test", "n_seeds_base", "n_seeds_chosen")
CLINICAL_REAL_R = Claim(
    "clinical.real_only_r",
    "the real-only 3D ResNet learns the score: Pearson r of predicted and true scores on the "
    "test split at ratio 0, mean over seeds",
    paper="0.33 (NIHSS from acute-stroke ADC); 0.59 (WAB-AQ from chronic-stroke FA)",
    goal=Goal(">", 0.0, on="ci_low"), unit="r")
CLINICAL_CHANGE = {
    "test_mae": Claim(
        "clinical.mae_change",
        "augmentation at the chosen ratio (lowest mean validation MAE) lowers the test MAE: "
        "its mean minus ratio 0's, in score points",
        paper="5.88 -> 5.29 at 2.8:1 (NIHSS, -0.59); 21.90 -> 19.21 (WAB-AQ)",
        goal=Goal("<", 0.0, on="ci_high")),
    "test_r": Claim(
        "clinical.r_change",
        "augmentation at the chosen ratio raises the test r: its mean minus ratio 0's",
        paper="0.33 -> 0.42 at 2.8:1 (NIHSS, +0.09); 0.59 -> 0.71 (WAB-AQ)",
        goal=Goal(">", 0.0, on="ci_low"), unit="r"),
}


def _clinical_comparisons(results: Path) -> list[tuple[Path, pd.DataFrame]]:
    files = sorted(Path(results).glob(CLINICAL_FILES))
    if not files:
        raise MissingResult(Path(results) / "clinical/<analysis>/comparison.tsv")
    return [(path, read_result(results, str(path.relative_to(results)), CLINICAL_COLUMNS))
            for path in files]


def _clinical_row(path: Path, table: pd.DataFrame, metric: str) -> pd.Series:
    row = table[table["metric"] == metric]
    if row.empty:
        raise MissingResult(path, f"no '{metric}' row")
    return row.iloc[0]


def _ci_text(mean: float, low: float, high: float) -> str:
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]" if math.isfinite(low) else f"{mean:.3f}"


@register(CLINICAL_REAL_R)
def _clinical_real_r(results: Path) -> list[Row]:
    """Per clinical analysis, the real-only regressors' mean test r with its 95% CI over
    seeds (mean +- 1.96 SE, as the sweep's summary)."""
    rows = []
    for path, table in _clinical_comparisons(results):
        t = _clinical_row(path, table, "test_r")
        mae = _clinical_row(path, table, "test_mae")
        rows.append(CLINICAL_REAL_R.measured(
            t["mean_base"], path.parent.name, ci=(t["ci_low_base"], t["ci_high_base"]),
            ci_method="mean +- 1.96 SE over seeds", n=int(t["n_seeds_base"]), source=str(path),
            note="test MAE at ratio 0: " + _ci_text(mae["mean_base"], mae["ci_low_base"],
                                                      mae["ci_high_base"])))
    return rows


def _clinical_change(claim: Claim, metric: str) -> Collector:
    def collect(results: Path) -> list[Row]:
        """Per clinical analysis, ``metric`` at the chosen ratio minus ratio 0, its CI from the
        two ratios' SEs (independent seeds' fits), with both values, their CIs and the
        sweep's t-test in the note; a chosen ratio of 0 (augmentation never lowered the
        validation MAE) is a difference of 0, not met, said so."""
        rows = []
        for path, table in _clinical_comparisons(results):
            t = _clinical_row(path, table, metric)
            se = math.sqrt(sum(((t[f"ci_high_{w}"] - t[f"mean_{w}"]) / 1.96) ** 2
                               for w in ("base", "chosen")))
            diff = float(t["difference"])
            ci = (diff - 1.96 * se, diff + 1.96 * se) if math.isfinite(se) else None
            note = (f"ratio 0: {_ci_text(t['mean_base'], t['ci_low_base'], t['ci_high_base'])}"
                    f"; chosen {t['ratio_chosen']:g}:1: "
                    f"{_ci_text(t['mean_chosen'], t['ci_low_chosen'], t['ci_high_chosen'])}; "
                    f"{t['test']} t {t['t']:.2f}, p {t['p']:.3g}")
            if float(t["ratio_chosen"]) == 0.0:
                note = ("the chosen ratio is 0: no augmented ratio had a lower mean validation "
                        "MAE than real only; " + note)
            rows.append(claim.measured(diff, path.parent.name, ci=ci,
                                       ci_method="normal, SEs over seeds combined",
                                       n=int(t["n_seeds_base"]) + int(t["n_seeds_chosen"]),
                                       source=str(path), note=note))
        return rows
    return collect


for _metric, _claim in IMAGING_BASELINE_GAIN.items():
    register(_claim)(_imaging_gain(_claim, _metric))

for (_base, _metric), _claim in SYNTHESIS_GAIN.items():
    register(_claim)(_synthesis_gain(_claim, _base, _metric))

for (_base, _effect), _claim in SIMILARITY_GAIN.items():
    register(_claim)(_similarity_gain(_claim, _base, _effect))

for _metric, _claim in CLINICAL_CHANGE.items():
    register(_claim)(_clinical_change(_claim, _metric))

CLINICAL_POOL_GAIN = Claim(
    "clinical.pool_score_gain",
    "the clinical synthetic pool carries the planted score effect: pairs of samples of the "
    "analysis's fine-tune from identical noise that differ only in the score (+1 SD vs -1 SD) "
    "differ by the planted effect on the analysis's modality (gain: least-squares slope of the "
    "mean paired difference on the planted map; 1 = the full effect)",
    paper="-", goal=FINETUNE_PAIRED.goal, unit=FINETUNE_PAIRED.unit)


@register(CLINICAL_POOL_GAIN)
def _clinical_pool_gain(results: Path) -> list[Row]:
    """Per clinical analysis, on a simulated cohort: the paired-sample score gain of the
    fine-tune that draws its pool (``results/finetune/<model>/checks.tsv``, the model, score and
    modality named by the analysis's comparison table), the fine-tune rows' goal and note; a
    gain below the goal means the pool's images barely vary with the score, whatever the
    regressor makes of them."""
    rows = []
    for path, table in _clinical_comparisons(results):
        missing = [c for c in ("model", "score", "modality") if c not in table.columns]
        if missing:
            raise MissingResult(path, f"no column(s) {missing} (written before the comparison "
                                      "named its fine-tune: rerun clinical_summary)")
        first = table.iloc[0]
        model, score, modality = str(first["model"]), str(first["score"]), str(first["modality"])
        checks = Path(results) / "finetune" / model / "checks.tsv"
        value = _finetune_checks(results, checks)
        # the score head's label is "score"; its contrast names the column ("<score> +1 SD...")
        gains = {k: g for (c, m, k), g in value.items()
                 if c == "score_sample_gain" and m == modality}
        if not gains:
            raise MissingResult(checks, f"no paired-sample score check on {modality} "
                                        "(finetune.checks.paired_samples 0, or a real cohort)")
        for k, gain in gains.items():
            rows.append(CLINICAL_POOL_GAIN.measured(
                gain, f"{path.parent.name} {modality}" + (f" {k}" if len(gains) > 1 else ""),
                ci_method="one set of pairs", source=str(checks),
                note=f"fine-tune {model}, {k or score}; "
                     + _paired_note(value, "score", modality, k)))
    return rows


def _matches(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def fidelity_table(results: str | os.PathLike,
                   registry: Mapping[str, Entry] | None = None) -> pd.DataFrame:
    """Run every registered collector on a results folder -> the record, columns
    :data:`COLUMNS`, claims in registration order. A collector's :class:`MissingResult`
    becomes one *not measured* row naming the file."""
    registry = REGISTRY if registry is None else registry
    rows: list[Row] = []
    for claim_id, entry in registry.items():
        try:
            got = list(entry.collect(Path(results)))
        except MissingResult as missing:
            log.info("fidelity: %s not measured: %s", claim_id, missing)
            got = [entry.claim.not_measured(missing.path, missing.reason)]
        if not got:
            got = [entry.claim.not_measured(str(results), "the collector found nothing")]
        rows.extend(got)
    return pd.DataFrame([asdict(r) for r in rows], columns=COLUMNS)


def _fmt(value: float, unit: str) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return "n/a"
    if unit == "pp":
        return f"{value:+.1f} pp"
    return f"{value:.0f}%" if unit == "%" else f"{value:.2f}"


def _cells(row: Mapping) -> dict[str, str]:
    """The human-readable cells of one record row."""
    unit = row["unit"]
    claim = row["claim"] + (f" ({row['subject']})" if row["subject"] else "")
    if math.isfinite(row["ci_low"]):
        ci = f"{_fmt(row['ci_low'], unit)} to {_fmt(row['ci_high'], unit)} ({row['ci_method']})"
    else:
        ci = f"n/a ({row['ci_method']})" if row["ci_method"] not in ("", "-") else "n/a"
    where = f"`{row['source']}`" if row["source"] else ""
    detail = "; ".join(x for x in (row["note"], where) if x)
    return {"claim": claim, "paper": str(row["paper"]), "goal": str(row["goal"]),
            "measured": _fmt(row["measured"], unit), "ci": ci, "verdict": row["verdict"],
            "detail": detail}


HEADERS = {"claim": "claim", "paper": "paper", "goal": "our goal", "measured": "measured",
           "ci": "95% CI", "verdict": "verdict", "detail": "notes and source"}


def fidelity_markdown(table: pd.DataFrame, results: str | os.PathLike = "results") -> str:
    """docs/fidelity.md: a title, how it was made, the table and the definitions."""
    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    counts = table["verdict"].value_counts()
    lines = [
        "# Fidelity record",
        "",
        f"What the run in `{results}/` measured for each scientific claim the demo checks, "
        "against the paper and our goals (issue 12). Written by `make fidelity` "
        f"(`python -m genbrain.fidelity --results {results} --out docs/fidelity.md`); the same "
        f"table is `{results}/fidelity.tsv`. Verdicts: "
        + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + ".",
        "",
        "| " + " | ".join(HEADERS.values()) + " |",
        "| " + " | ".join("---" for _ in HEADERS) + " |",
    ]
    for row in table.to_dict("records"):
        cells = _cells(row)
        lines.append("| " + " | ".join(esc(cells[k]) for k in HEADERS) + " |")
    lines += ["", "How to read it:", ""]
    lines += [
        ("- *verdict*: met / not met judge the measured value (the point estimate) against our "
         "goal; not measured means the result file is missing (named) or holds no finite "
         "value."),
        ("- *95% CI*: a t-interval over replicates, mean +- t(0.975, m - 1) sd / sqrt(m). "
         "Similarity: over the m hold-out cohorts and their synthetic mirrors, of 100 x cosine "
         "/ mean cosine of the real cohorts (that mean taken as fixed, as in the paper's "
         "relative score). Realism: over samples per modality (one today: no CI). "
         "Memorisation is a maximum over all synthetic images: no CI."),
        ("- *similarity* is relative to real cohorts of the same size (100% = as good as real "
         "data); the demo's cohorts are smaller than the paper's 100."),
        "",
    ]
    return "\n".join(lines)


def fidelity_rst(table: pd.DataFrame) -> str:
    """The record as an RST ``list-table`` (for the report's front page, workflow.rst)."""
    def esc(text: str) -> str:
        return text.replace("\\", "\\\\").replace("*", "\\*").replace("`", "").replace(
            "\n", " ") or "n/a"

    title = "Fidelity record (``make fidelity``; definitions in docs/fidelity.md)"
    out = [f".. list-table:: {title}", "   :header-rows: 1", ""]
    out.append("   * - " + "\n     - ".join(HEADERS.values()))
    for row in table.to_dict("records"):
        cells = _cells(row)
        out.append("   * - " + "\n     - ".join(esc(cells[k]) for k in HEADERS))
    return "\n".join(out) + "\n"


def write_fidelity(results: str | os.PathLike, out_md: str | os.PathLike,
                   out_tsv: str | os.PathLike | None = None,
                   registry: Mapping[str, Entry] | None = None) -> pd.DataFrame:
    """Build the record from ``results`` and write the markdown page and the TSV
    (default ``results/fidelity.tsv``), both atomically. Returns the table."""
    table = fidelity_table(results, registry)
    out_tsv = Path(results) / "fidelity.tsv" if out_tsv is None else out_tsv
    save_tsv(table, out_tsv)
    with atomic_path(out_md) as tmp:
        tmp.write_text(fidelity_markdown(table, results))
    return table


def write_fidelity_page(results: str | os.PathLike, out_html: str | os.PathLike,
                        out_tsv: str | os.PathLike,
                        registry: Mapping[str, Entry] | None = None) -> pd.DataFrame:
    """The record as a self-contained HTML page (the report's *Fidelity record*, rendered
    from :func:`fidelity_rst` by docutils) and its TSV, both atomically. Returns the table."""
    from docutils.core import publish_string

    table = fidelity_table(results, registry)
    save_tsv(table, out_tsv)
    counts = table["verdict"].value_counts()
    intro = ("One row per scientific claim of the paper that this run checks: the paper's "
             "number, our goal, the measured value with its 95% CI and the verdict ("
             + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + "). A claim whose "
             "results file is missing is 'not measured', with the file named.")
    html = publish_string(f"Fidelity record\n===============\n\n{intro}\n\n"
                          + fidelity_rst(table), writer_name="html5",
                          settings_overrides={"embed_stylesheet": True,
                                              "report_level": 4}).decode()
    with atomic_path(out_html) as tmp:
        tmp.write_text(html)
    return table


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m genbrain.fidelity --results results --out docs/fidelity.md``."""
    p = argparse.ArgumentParser(prog="python -m genbrain.fidelity", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--results", default="results", help="a finished run's results folder")
    p.add_argument("--out", default="docs/fidelity.md", help="the markdown page to write")
    p.add_argument("--tsv", default=None, help="the TSV copy (default: RESULTS/fidelity.tsv)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not Path(a.results).is_dir():
        print(f"genbrain error: {a.results}: no such results folder (run `make demo` first)",
              file=sys.stderr)
        sys.exit(1)
    table = write_fidelity(a.results, a.out, a.tsv)
    counts = table["verdict"].value_counts()
    print(f"{a.out}: {len(table)} rows ("
          + ", ".join(f"{counts.get(v, 0)} {v}" for v in VERDICTS) + ")")


__all__ = [
    "COLUMNS",
    "REGISTRY",
    "Claim",
    "Collector",
    "Goal",
    "MissingResult",
    "Row",
    "fidelity_markdown",
    "fidelity_rst",
    "fidelity_table",
    "read_result",
    "register",
    "t_interval",
    "write_fidelity",
    "write_fidelity_page",
]

if __name__ == "__main__":
    main()
