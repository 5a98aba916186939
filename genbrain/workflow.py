"""Planning helpers the Snakemake files call at parse time (no snakemake import here).

:func:`load_cohorts` validates every cohort's participants table once and groups it into
(site, chunk) batches, so input functions answer in O(chunk) without re-reading tables.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from genbrain.chunks import assign_chunks
from genbrain.errors import GenbrainInputError
from genbrain.io import check_start_checkpoint, read_tsv
from genbrain.simulate.cohort import participants as simulated_participants
from genbrain.simulate.write import image_path
from genbrain.tables import score_names, score_ranges, site_labels, validate_participants

if TYPE_CHECKING:
    from genbrain.conditions import Conditions

log = logging.getLogger(__name__)

SIM_ROOT = "results/simulated"


def simulated_pattern(cohort: str) -> str:
    """Where the simulator writes a cohort's images (same placeholders as real patterns)."""
    return f"{SIM_ROOT}/{cohort}/{{participant_id}}/{{participant_id}}_{{modality}}.nii.gz"


@dataclass
class Cohort:
    """One cohort: its config entry, validated table (with ``chunk``) and image pattern.

    Sites keep their names from the table (``site`` column, tables, figures); every path uses
    the site's label instead (:func:`genbrain.tables.site_label`: its letters and digits), so
    the ``{site}`` wildcard of the rules holds labels: :meth:`site_label` and
    :meth:`site_of_label` convert."""

    name: str
    spec: Mapping
    table: pd.DataFrame
    participants: str
    pattern: str
    simulated: bool
    native_sites: frozenset[str]
    brain_extracted_sites: frozenset[str] = frozenset()
    _groups: dict = field(default_factory=dict, repr=False)
    _labels: dict = field(default_factory=dict, repr=False)
    _sites: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._groups = {(str(s), int(c)): g for (s, c), g in
                        self.table.groupby(["site", "chunk"], sort=True)}
        self._labels = site_labels(self.table["site"], self.participants)
        self._sites = {label: site for site, label in self._labels.items()}

    def site_label(self, site: str) -> str:
        """The label of a site of this cohort as it appears in paths (``'SH_JZ2'`` ->
        ``'SHJZ2'``)."""
        try:
            return self._labels[str(site)]
        except KeyError:
            raise GenbrainInputError(f"cohort '{self.name}' has no site '{site}'; expected one "
                                     f"of {self.sites}") from None

    def site_of_label(self, label: str) -> str:
        """The site name whose path label is ``label`` (inverse of :meth:`site_label`)."""
        try:
            return self._sites[str(label)]
        except KeyError:
            raise GenbrainInputError(f"cohort '{self.name}' has no site labelled '{label}'; "
                                     f"expected one of {sorted(self._sites)}") from None

    @property
    def modalities(self) -> list[str]:
        return list(self.spec["modalities"])

    @property
    def sites(self) -> list[str]:
        return sorted(self.table["site"].unique())

    @property
    def scores(self) -> list[str]:
        """The score columns (config ``scores``: names, or ``{name, range}``)."""
        return score_names(self.spec.get("scores"))

    def chunks(self) -> list[tuple[str, int]]:
        """Sorted (site, chunk) pairs."""
        return sorted(self._groups)

    def rows(self, site: str, chunk: int | str) -> pd.DataFrame:
        key = (str(site), int(chunk))
        if key not in self._groups:
            raise GenbrainInputError(f"cohort '{self.name}' has no chunk {chunk} at site '{site}'")
        return self._groups[key]

    def is_native(self, site: str) -> bool:
        return self.spec.get("space") == "native" or site in self.native_sites

    def is_brain_extracted(self, site: str) -> bool:
        """Whether the site's native T1w images are brain-extracted (else whole head)."""
        return site in self.brain_extracted_sites

    def images(self, rows: pd.DataFrame) -> dict[str, dict[str, str]]:
        """participant_id -> {modality: path} for ``rows`` (pattern placeholders:
        ``{participant_id}``, ``{site}``, ``{modality}``)."""
        return {pid: {m: image_path(self.pattern, pid, site, m) for m in self.modalities}
                for pid, site in zip(rows["participant_id"], rows["site"])}

    def image_paths(self, site: str, chunk: int | str) -> list[str]:
        return [p for d in self.images(self.rows(site, chunk)).values() for p in d.values()]


def load_cohorts(config: Mapping, schema_path: str | os.PathLike,
                 chunk_size: int) -> dict[str, Cohort]:
    """Validate and chunk every cohort of a (validated) config."""
    out = {}
    for name, spec in config["cohorts"].items():
        if "simulate" in spec:
            table = simulated_participants(name, spec["simulate"], int(config["seed"]))
            participants = f"{SIM_ROOT}/{name}/participants.tsv"
            pattern = simulated_pattern(name)
            native = {s for s, v in spec["simulate"]["sites"].items() if v.get("native")}
            extracted = {s for s, v in spec["simulate"]["sites"].items()
                         if v.get("brain_extracted")}
            source = f"simulated cohort '{name}'"
        else:
            participants = spec["participants"]
            if not Path(participants).exists():
                raise GenbrainInputError(
                    f"{participants}: participants table of cohort '{name}' not found "
                    f"(config key 'cohorts.{name}.participants'; to try the pipeline without "
                    "data use --configfile config/demo.yaml)")
            table = read_tsv(participants)
            pattern = spec["images"]
            native = set(spec.get("native_sites") or [])
            flag = spec.get("brain_extracted", False)
            extracted = (set(table["site"].astype(str)) if flag is True
                         else set(flag or []))
            unknown = sorted(extracted - set(table["site"].astype(str)))
            if unknown:
                raise GenbrainInputError(
                    f"{participants}: 'cohorts.{name}.brain_extracted' lists site "
                    f"'{unknown[0]}', which is not in the table")
            source = participants
        for score, (lo, hi) in score_ranges(spec.get("scores")).items():
            if lo > hi:
                raise GenbrainInputError(f"config: 'cohorts.{name}.scores': the range of "
                                         f"'{score}' is [{lo:g}, {hi:g}]; expected [low, high]")
        table = validate_participants(
            table, schema_path, source,
            sites=spec.get("sites"), age_range=spec.get("age_range"),
            diagnosis_levels=spec.get("diagnosis_levels"), scores=spec.get("scores", []),
        )
        out[name] = Cohort(name=name, spec=spec, table=assign_chunks(table, chunk_size),
                           participants=participants, pattern=pattern,
                           simulated="simulate" in spec, native_sites=frozenset(native),
                           brain_extracted_sites=frozenset(extracted))
    return out


def pretrain_cohort(cohorts: Mapping[str, Cohort]) -> str | None:
    """The name of the cohort with role ``pretrain`` (None without one; two is an error)."""
    names = [n for n, c in cohorts.items() if c.spec["role"] == "pretrain"]
    if len(names) > 1:
        raise GenbrainInputError(f"config: cohorts {names} both have role 'pretrain'; the model "
                                 "is pretrained on one cohort (merge their tables)")
    return names[0] if names else None


def given_pretrained(config: Mapping, pretrain: str | None) -> str | None:
    """``pretrain.checkpoint``: the genbrain checkpoint the workflow takes as its pretrained
    model instead of training one (e.g. the authors' model, imported), checked now with
    :func:`genbrain.io.check_start_checkpoint` and its layout note logged; None when the
    workflow pretrains. It needs the pretraining cohort, whose hold-out evaluates it."""
    path = (config.get("pretrain") or {}).get("checkpoint")
    if path is None:
        return None
    key = "pretrain.checkpoint"
    if pretrain is None:
        raise GenbrainInputError(f"config: '{key}' is set but no cohort has role 'pretrain', "
                                 "whose hold-out evaluates the model; to fine-tune from the "
                                 "checkpoint alone, set 'finetune.tasks.<name>.init' to it")
    log.info("config key '%s': %s", key, check_start_checkpoint(path, key, "its evaluation"))
    return str(path)


def model_checkpoint(model: str) -> str:
    """The checkpoint of a model the workflow trains: ``pretrain`` or a fine-tune's
    ``<task>/<unit>`` (:mod:`genbrain.finetune`)."""
    if model == "pretrain":
        return "results/pretrain/checkpoint.pt"
    return f"results/finetune/{model}/checkpoint.pt"


def model_training_set(model: str) -> str:
    """The table naming a model's training participants (``split`` = train), which the
    memorisation audit compares its synthetic images with."""
    if model == "pretrain":
        return "results/pretrain/split.tsv"
    return f"results/finetune/{model}/training.tsv"


@dataclass(frozen=True)
class SyntheticCohort:
    """A synthetic cohort the workflow draws: its covariate table has ``n_rows`` rows, sampled
    in shards of ``shard_size`` rows (one job each) by ``model`` (``pretrain`` or a fine-tune's
    ``<task>/<unit>``); ``real`` is the cohort whose training images the memorisation audit
    compares it with (the model's training set)."""

    name: str
    n_rows: int
    shard_size: int
    real: str
    modalities: tuple[str, ...]
    k: int = 1
    model: str = "pretrain"

    @property
    def n_shards(self) -> int:
        return max(1, -(-self.n_rows // self.shard_size))

    def shard_rows(self, shard: int) -> slice:
        if not 0 <= shard < self.n_shards:
            raise GenbrainInputError(f"synthetic cohort '{self.name}' has shards "
                                     f"0..{self.n_shards - 1}, not {shard}")
        return slice(shard * self.shard_size, min((shard + 1) * self.shard_size, self.n_rows))

    @property
    def checkpoint(self) -> str:
        return model_checkpoint(self.model)

    @property
    def training_set(self) -> str:
        return model_training_set(self.model)


def planned_conditions(model: str, config: Mapping, cohorts: Mapping[str, Cohort],
                       pretrain: str | None, finetunes: Mapping | None = None
                       ) -> Conditions | None:
    """The :class:`genbrain.conditions.Conditions` (scalings and ranges) that ``model``
    (``pretrain`` or a fine-tune ``<task>/<unit>`` of ``finetunes``) will record once trained,
    from the tables it trains on, so that synthetic covariates are checked before any job:
    the pretrained model's training split (:func:`genbrain.splits.holdout_split`), or the
    record of the checkpoint ``pretrain.checkpoint`` gives (:func:`given_pretrained`); a
    fine-tune's training participants (:func:`genbrain.finetune.training_table`), its age range
    widened by its init model's (that model's plan, or the init checkpoint's record read by
    :func:`genbrain.io.peek_checkpoint`). None when an init checkpoint records no conditions."""
    from genbrain.conditions import Conditions, fit_norms, fit_ranges, inherited_ranges
    from genbrain.finetune import training_table
    from genbrain.io import peek_checkpoint
    from genbrain.splits import SplitBasis, holdout_split

    if model == "pretrain" and config["pretrain"].get("checkpoint"):
        return Conditions.from_record(peek_checkpoint(config["pretrain"]["checkpoint"])["config"])
    if model == "pretrain":
        split = holdout_split(cohorts[pretrain].table, config["pretrain"]["holdout_fraction"],
                              int(config["seed"]))
        people, numeric = split[split["split"] == "train"], [("age", "age")]
        return Conditions(norms=fit_norms(people, numeric, None),
                          ranges=fit_ranges(people, numeric, None))
    job = finetunes[model]
    if job.init == "pretrain":
        init = planned_conditions("pretrain", config, cohorts, pretrain, finetunes)
    else:
        record = peek_checkpoint(job.init).get("config") or {}
        if "train" not in record or "norms" not in record:
            return None
        init = Conditions.from_record(record)
    cohort = cohorts[job.cohort]
    basis = SplitBasis.of(job.diagnosis_levels, job.score_column, cohort.spec.get("scores"))
    split = basis.split(cohort.table, int(config.get("seed", 0)),
                        f"cohort '{job.cohort}'") if job.split == "train" else None
    ids = set(training_table(job, cohort.table, split)["participant_id"].astype(str))
    people = cohort.table[cohort.table["participant_id"].astype(str).isin(ids)]
    numeric = [("age", "age" if job.demographics else None), ("score", job.score_column)]
    return Conditions(norms=fit_norms(people, numeric, {"age": init.norms["age"]}),
                      demographics=job.demographics, diagnosis_levels=job.diagnosis_levels,
                      score_column=job.score_column,
                      ranges=fit_ranges(people, numeric, inherited_ranges(init)))


def synthetic_cohorts(config: Mapping, cohorts: Mapping[str, Cohort], pretrain: str | None,
                      finetunes: Mapping | None = None, bwas: Mapping | None = None,
                      diagnosis: Mapping | None = None) -> dict[str, SyntheticCohort]:
    """The synthetic cohorts of the configured stages, sized at parse time so that shards are
    known before any job runs:

    - ``pretrain``: the evaluation cohort of the pretrained model (the paper's Fig. 2a-b): for
      each of ``n_cohorts`` hold-out cohorts of ``cohort_size``, every member's age and sex,
      every similarity modality, ``k`` samples (one row each; the evaluation averages them);
    - every ``synthesize.cohorts.<name>``: a researcher's own covariate table or grid, drawn by
      its ``model`` (the pretrained model, or a fine-tune ``<task>/<unit>`` of ``finetunes``:
      :class:`genbrain.finetune.FinetuneJob` by name) with ``k`` samples averaged per row
      (:func:`genbrain.covariates.cohort_covariates` checks the table against the model's
      modalities and conditions, and its ages and scores against the ranges
      :func:`planned_conditions` predicts the model will see);
    - every BWAS site's synthetic cohort (``bwas``: :class:`genbrain.bwas.plan.BwasSite` by
      name): the reference cohort's covariates, drawn by the site's fine-tune, one image per
      row; once per site, however many smoothing kernels its analysis has;
    - every diagnosis training site's synthetic pool (``diagnosis``:
      :class:`genbrain.diagnosis.plan.DiagnosisSite` by name, those with a fine-tune): its training
      split's covariates cycled to the pool's size, one image per row."""
    from genbrain.covariates import cohort_covariates
    from genbrain.splits import holdout_split

    finetunes = finetunes or {}
    out: dict[str, SyntheticCohort] = {}
    shard_size = config["synthesize"]["shard_size"]
    if pretrain is not None:
        sim = config["evaluate"]["similarity"]
        own = cohorts[pretrain].modalities
        mods = sim["modalities"] or own
        for m in mods:
            if m not in own:
                raise GenbrainInputError(f"config: 'evaluate.similarity.modalities' lists "
                                         f"'{m}', which the pretraining cohort '{pretrain}' "
                                         f"lacks; expected some of {own}")
        split = holdout_split(cohorts[pretrain].table, config["pretrain"]["holdout_fraction"],
                              int(config["seed"]))
        n_hold = int((split["split"] == "holdout").sum())
        need = sim["cohort_size"] * sim["n_cohorts"]
        if n_hold < need:
            raise GenbrainInputError(
                f"config: evaluate.similarity needs {sim['n_cohorts']} x {sim['cohort_size']} "
                f"= {need} hold-out participants but pretrain.holdout_fraction "
                f"{config['pretrain']['holdout_fraction']} holds out {n_hold} of cohort "
                f"'{pretrain}'; lower cohort_size or n_cohorts, or raise the fraction")
        n_rows = need * len(mods) * sim["k"]
        out["pretrain"] = SyntheticCohort("pretrain", n_rows, shard_size, pretrain, tuple(mods))
    for name, spec in config["synthesize"]["cohorts"].items():
        model = spec.get("model", "pretrain")
        key = f"synthesize.cohorts.{name}.model"
        if model == "pretrain":
            if pretrain is None:
                raise GenbrainInputError(f"config: '{key}' is 'pretrain' but no cohort has role "
                                         "'pretrain' (its model draws the images); add one, or "
                                         "name a fine-tune")
            real, mods, levels, score = pretrain, cohorts[pretrain].modalities, None, None
            what = "the pretrained model"
        elif model in finetunes:
            job = finetunes[model]
            if job.sources:
                raise GenbrainInputError(f"config: '{key}': fine-tune {model} is conditioned on "
                                         "source images; synthesize.cohorts draws from label-"
                                         "conditioned models only")
            real, mods = job.cohort, list(job.modalities)
            levels, score, what = job.diagnosis_levels, job.score_column, f"fine-tune {model}"
        else:
            raise GenbrainInputError(f"config: '{key}' is '{model}'; expected 'pretrain' or one "
                                     f"of the fine-tunes {sorted(finetunes)}")
        planned = planned_conditions(model, config, cohorts, pretrain, finetunes)
        table = cohort_covariates(name, spec, mods, what, diagnosis_levels=levels,
                                  score_column=score,
                                  ranges=planned.training_ranges() if planned else None)
        out[name] = SyntheticCohort(name, len(table), shard_size, real,
                                    tuple(sorted(table["modality"].unique())), int(spec["k"]),
                                    model)
    drawn = set()
    for job in (bwas or {}).values():
        if job.synth in drawn:  # another smoothing kernel of the site: the same cohort
            continue
        drawn.add(job.synth)
        if job.synth in out:
            raise GenbrainInputError(f"config: synthetic cohort name '{job.synth}' is taken by "
                                     f"BWAS analysis {job.name}; rename the other cohort")
        out[job.synth] = SyntheticCohort(job.synth, job.n_synthetic, shard_size, job.cohort,
                                         (job.modality,), 1, job.model)
    for job in (diagnosis or {}).values():
        if job.model:
            out[job.synth] = _pool(job, "diagnosis", out, shard_size)
    return out


def _pool(job: Any, stage: str, taken: Mapping[str, SyntheticCohort], shard_size: int
          ) -> SyntheticCohort:
    """A stage's synthetic pool (``job``: its plan, with ``synth``, ``n_pool``, ``cohort``,
    ``modality``, ``model``): one image per row, drawn by the job's fine-tune; a name already
    in ``taken`` is one line naming the analysis."""
    if job.synth in taken:
        raise GenbrainInputError(f"config: synthetic cohort name '{job.synth}' is taken by "
                                 f"{stage} analysis {job.name}; rename the other cohort")
    return SyntheticCohort(job.synth, job.n_pool, shard_size, job.cohort, (job.modality,), 1,
                           job.model)


def clinical_pools(clinical: Mapping, taken: Mapping[str, SyntheticCohort], shard_size: int
                   ) -> dict[str, SyntheticCohort]:
    """The synthetic pools of the clinical analyses (``clinical``:
    :class:`genbrain.clinical.plan.ClinicalAnalysis` by name, those whose largest ratio draws
    any): the training split's covariates mirrored to the pool's size, one image per row, drawn
    by the analysis's fine-tune; ``taken``: the other synthetic cohorts (a name clash is one
    line)."""
    out: dict[str, SyntheticCohort] = {}
    for job in clinical.values():
        if job.n_pool:
            out[job.synth] = _pool(job, "clinical", taken, shard_size)
    return out


#: the from-scratch control's random initialisation (the pretrained model's architecture)
SCRATCH_INIT = "results/imaging/scratch_init.pt"


def imaging_model_dir(task: str, method: str) -> str:
    """Where an image task's DiT method trains (``work/``) and writes its checkpoint."""
    return f"results/imaging/{task}/models/{method}"


def imaging_finetunes(imaging: Mapping[str, Any], cohorts: Mapping[str, Cohort]
                      ) -> dict[str, Any]:
    """The fine-tuning jobs of the image tasks' DiT methods, by ``<task>/<method>``: a
    :class:`genbrain.finetune.FinetuneJob` each, which ``rules/imaging.smk`` runs through
    :func:`genbrain.finetune.run_finetune` on the task's training participants.

    ``genbrain`` starts from the pretrained checkpoint, ``scratch`` from :data:`SCRATCH_INIT`
    (the same architecture, random weights: :func:`genbrain.training.checkpoints.
    random_init_checkpoint`); otherwise the two are the same job: target ``modality``, the
    ``sources`` modalities as input channels (in the task's order), age and sex with ``demographics``, the task's
    ``train`` keys, the top-level seed (set by the rule). ``split`` is ``train`` (the
    pretraining cohort's training split, capped at ``n_train``: the pairs' ``images.tsv``)."""
    from genbrain.finetune import FinetuneJob

    # task.train holds only keys plan_imaging accepted: a subset of the fine-tune's own
    # (genbrain.training.config.FINETUNE_KEYS), so no second check here
    jobs = {}
    for name, task in imaging.items():
        for method in task.dit_methods:
            init = model_checkpoint("pretrain") if method == "genbrain" else SCRATCH_INIT
            jobs[f"{name}/{method}"] = FinetuneJob(
                task=name, unit=method, cohort=task.cohort,
                sites=tuple(cohorts[task.cohort].sites), modalities=(task.modality,),
                diagnosis_levels=None, score_column=None, sources=tuple(task.sources),
                demographics=task.demographics, split="train", init=init,
                train=dict(task.train))
    return jobs
