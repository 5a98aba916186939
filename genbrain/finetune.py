"""The fine-tuning stage: every downstream task adapts the pretrained DiT with one trainer.

The paper fine-tunes its pretrained model on a small target dataset with a new condition:

- a disease label per site (BWAS, cross-site diagnosis; 10,000 steps of 32 at lr 1e-4);
- a numeric clinical score (stroke severity, aphasia);
- a modality unseen in pretraining (ABIDE seed-based FC, stroke ADC): a new modality index;
- source images as extra input channels (enhancement, cross-modality synthesis), with age and
  sex removed.

A task (config ``finetune.tasks.<name>``) names its cohort, target ``modalities``, what it
``conditions`` on (``diagnosis`` and/or a score column of the cohort), its ``sources`` and
whether it keeps ``demographics``; with ``per_site`` it is one job per site (the paper's
single-site fine-tunes), else one job on the cohort's selected sites. Nothing about surgery or
architecture is restated: the model starts from the init checkpoint (``init``: ``pretrain`` or
a checkpoint path, a public GenBrain checkpoint converted by ``python -m genbrain.model.public``
included: its voxel layout is kept, the stores are converted to it) with its architecture, and
the trainer adds the heads, modality rows and input channels the data imply (:mod:`genbrain.training.surgery`). Training settings are
``finetune.train`` (shared) overridden by the task's ``train``.

:func:`plan_finetunes` runs at DAG build time (no torch): it checks every task against the
cohort tables and names the config key, site or participant of a mistake before any GPU job.
:func:`run_finetune` is the job; :func:`finetune_checks` measures what each fine-tune learned.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import (
    atomic_path,
    check_start_checkpoint,
    file_sha256,
    read_tsv,
    save_tsv,
)
from genbrain.splits import SplitBasis
from genbrain.tables import score_names
from genbrain.training.config import FINETUNE_KEYS

if TYPE_CHECKING:  # torch stays out of the plan, which runs at DAG build time
    from genbrain.modalities import ModalityRegistry
    from genbrain.sampling import SamplingConfig

log = logging.getLogger(__name__)

SPLITS = ("all", "train")
#: TrainConfig keys a fine-tune may set (its architecture comes from the init checkpoint and
#: its data and conditions from the task).
TRAIN_KEYS = FINETUNE_KEYS
#: the fewest participants per diagnosis level of a fine-tune's training set
MIN_PER_LEVEL = 2
#: a label head -> the simulated effect whose true map it is checked against
HEAD_EFFECTS = {"disease": "diagnosis", "score": "score"}
#: every label the paired-sample check switches -> its simulated effect
LABEL_EFFECTS = {**HEAD_EFFECTS, "age": "age", "sex": "sex"}
#: the paired-sample check's age contrast (years, older first): inside the paper's and the
#: demo's pretraining ages (UK Biobank 45-82), which every fine-tune's age range spans
AGE_CONTRAST = (75.0, 50.0)


@dataclass(frozen=True)
class FinetuneJob:
    """One fine-tuning job: task ``task`` on ``unit`` (a site label, or ``all``).

    ``sites``: the cohort's site names whose participants train; ``split``: ``all`` of them, or
    only the ``train`` split of the cohort's seeded per-site 3:1:1 split (so held-out
    participants stay unseen, as a classifier's validation and test sets must); ``init``:
    ``pretrain`` or a checkpoint path; ``train``: TrainConfig keys."""

    task: str
    unit: str
    cohort: str
    sites: tuple[str, ...]
    modalities: tuple[str, ...]
    diagnosis_levels: tuple[str, ...] | None
    score_column: str | None
    sources: tuple[str, ...]
    demographics: bool
    split: str
    init: str
    train: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The model's name (``<task>/<unit>``), as synthetic cohorts refer to it."""
        return f"{self.task}/{self.unit}"

    @property
    def out_dir(self) -> str:
        return f"results/finetune/{self.task}/{self.unit}"

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for params and the checkpoint's ``meta``)."""
        d = asdict(self)
        d["train"] = dict(self.train)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FinetuneJob:
        d = dict(d)
        for key in ("sites", "modalities", "sources"):
            d[key] = tuple(d[key])
        if d["diagnosis_levels"] is not None:
            d["diagnosis_levels"] = tuple(d["diagnosis_levels"])
        return cls(**d)


def plan_finetunes(config: Mapping, cohorts: Mapping, pretrain: str | None,
                   registry=None) -> dict[str, FinetuneJob]:
    """Every fine-tuning job of ``config["finetune"]``, keyed by model name, checked against
    the cohorts (:class:`genbrain.workflow.Cohort`) at parse time."""
    section = config.get("finetune") or {}
    shared = dict(section.get("train") or {})
    jobs: dict[str, FinetuneJob] = {}
    bases: dict[str, tuple[str, SplitBasis]] = {}  # cohort -> (first task, its split's basis)
    for task, spec in (section.get("tasks") or {}).items():
        key = f"finetune.tasks.{task}"
        name = spec["cohort"]
        if name not in cohorts:
            raise GenbrainInputError(f"config: '{key}.cohort' is '{name}', not a cohort; "
                                     f"expected one of {sorted(cohorts)}")
        cohort = cohorts[name]
        own = cohort.modalities
        sources = list(spec.get("sources") or [])
        targets = list(spec.get("modalities") or [m for m in own if m not in sources])
        if not targets:
            raise GenbrainInputError(f"config: '{key}': every modality of cohort '{name}' is a "
                                     "source; name the target modalities under 'modalities'")
        for what, mods in (("modalities", targets), ("sources", sources)):
            for m in mods:
                if m not in own:
                    raise GenbrainInputError(f"config: '{key}.{what}' lists '{m}', which "
                                             f"cohort '{name}' lacks; expected some of {own}")
        both = sorted(set(targets) & set(sources))
        if both:
            raise GenbrainInputError(f"config: '{key}': '{both[0]}' is both a target modality "
                                     "and a source; a task maps sources to other modalities")
        if registry is not None:
            for m in targets + sources:
                registry[m]  # an unregistered modality: one line from the registry
        conditions = list(spec.get("conditions") or [])
        levels = None
        score = None
        for c in conditions:
            if c == "diagnosis":
                levels = cohort.spec.get("diagnosis_levels")
                if not levels:
                    raise GenbrainInputError(f"config: '{key}.conditions' has 'diagnosis' but "
                                             f"cohort '{name}' declares no diagnosis_levels")
            elif c in score_names(cohort.spec.get("scores")):
                if score is not None:
                    raise GenbrainInputError(f"config: '{key}.conditions': one score per task "
                                             f"('{score}' and '{c}')")
                score = c
            else:
                raise GenbrainInputError(
                    f"config: '{key}.conditions' has '{c}'; expected 'diagnosis' or one of "
                    f"cohort '{name}'s scores {score_names(cohort.spec.get('scores'))}")
        split = spec.get("split", "all")
        if split == "train" and not (levels or score):
            raise GenbrainInputError(f"config: '{key}.split' is 'train', which needs the "
                                     "per-site split stratified by diagnosis or the split "
                                     "stratified by a score; condition the task on "
                                     "'diagnosis' or a score, or use split 'all'")
        if split == "train":  # the split job splits every site of the cohort: check them now
            basis = SplitBasis.of(levels, score, cohort.spec.get("scores"))
            other = bases.setdefault(name, (task, basis))
            if other[1] != basis:
                raise GenbrainInputError(
                    f"config: '{key}.split' is 'train' {basis.describe()}, but task "
                    f"'{other[0]}' trains on cohort '{name}'s split {other[1].describe()}; a "
                    "cohort has one split (train both on the same condition)")
            try:
                basis.split(cohort.table, int(config.get("seed", 0)), f"cohort '{name}'")
            except GenbrainInputError as err:
                raise GenbrainInputError(f"config: '{key}.split' is 'train', but the cohort's "
                                         f"3:1:1 split fails: {err}") from None
        sites = list(spec.get("sites") or cohort.sites)
        for s in sites:
            if s not in cohort.sites:
                raise GenbrainInputError(f"config: '{key}.sites' lists '{s}', not a site of "
                                         f"cohort '{name}'; expected some of {cohort.sites}")
        init = _check_init(spec.get("init", "pretrain"), pretrain, f"{key}.init")
        train = {**shared, **dict(spec.get("train") or {})}
        bad = sorted(set(train) - set(TRAIN_KEYS))
        if bad:
            raise GenbrainInputError(f"config: '{key}.train' sets '{bad[0]}'; a fine-tune takes "
                                     "its architecture from its init checkpoint and its data "
                                     f"from the task (settable: {', '.join(TRAIN_KEYS)})")
        if train.get("label_tokens") and not (levels or score):
            raise GenbrainInputError(f"config: '{key}': train key 'label_tokens' is true but the "
                                     "task conditions on neither 'diagnosis' nor a score, the "
                                     "heads label tokens belong to")
        units = [(cohort.site_label(s), (s,)) for s in sites] if spec.get("per_site") \
            else [("all", tuple(sites))]
        for unit, unit_sites in units:
            job = FinetuneJob(task=task, unit=unit, cohort=name, sites=unit_sites,
                              modalities=tuple(targets),
                              diagnosis_levels=tuple(levels) if levels else None,
                              score_column=score, sources=tuple(sources),
                              demographics=bool(spec.get("demographics", True)), split=split,
                              init=init, train=train)
            _check_members(job, cohort.table, key)
            jobs[job.name] = job
    return jobs


def _check_init(init: str, pretrain: str | None, key: str) -> str:
    """``pretrain`` (needs a pretraining cohort) or a genbrain training checkpoint
    (:func:`genbrain.io.check_start_checkpoint`); logs which voxel layout its model has and
    whether the stores will be converted to it."""
    if init == "pretrain":
        if pretrain is None:
            raise GenbrainInputError(f"config: '{key}' is 'pretrain' but no cohort has role "
                                     "'pretrain'; give a checkpoint path")
        return init
    log.info("config key '%s': %s", key, check_start_checkpoint(init, key, "fine-tuning"))
    return str(init)


def _check_members(job: FinetuneJob, table: pd.DataFrame, key: str) -> None:
    """The job's participants: enough of them, every diagnosis level in its training data
    (pooled over its sites; at every site for split ``train``, whose 3:1:1 split is per site
    and level), no missing score."""
    rows = table[table["site"].astype(str).isin(job.sites)]
    where = f"site '{job.sites[0]}'" if len(job.sites) == 1 else f"sites {list(job.sites)}"
    if job.diagnosis_levels:
        if job.split == "train":  # 3:1:1 needs 5 per level, at every site
            need, groups = 5, [(f"site '{s}' has", rows[rows["site"].astype(str) == s])
                               for s in job.sites]
        else:  # a per-site job has one site; a pooled one trains on its sites together
            together = "has" if len(job.sites) == 1 else "together have"
            need, groups = MIN_PER_LEVEL, [(f"{where} {together}", rows)]
        for what, at in groups:
            counts = at["diagnosis"].value_counts()
            for level in job.diagnosis_levels:
                if counts.get(level, 0) < need:
                    have = [lv for lv in job.diagnosis_levels if counts.get(lv, 0)]
                    raise GenbrainInputError(
                        f"config: '{key}': {what} {counts.get(level, 0)} '{level}' "
                        f"participant(s) (levels present: {have}); a disease-conditioned "
                        f"fine-tune needs at least {need} of each of {list(job.diagnosis_levels)}")
    elif len(rows) < MIN_PER_LEVEL:
        raise GenbrainInputError(f"config: '{key}': {where} of cohort '{job.cohort}' has "
                                 f"{len(rows)} participant(s); a fine-tune needs at least "
                                 f"{MIN_PER_LEVEL}")
    if job.score_column:
        values = pd.to_numeric(rows[job.score_column], errors="coerce")
        if values.isna().any():
            pid = rows["participant_id"].iloc[int(np.flatnonzero(values.isna())[0])]
            raise GenbrainInputError(f"config: '{key}': participant {pid} ({where}) has no "
                                     f"'{job.score_column}' value; a score-conditioned "
                                     "fine-tune needs the score of every participant (drop "
                                     "them from the task's sites or fill the value)")


def training_table(job: FinetuneJob, participants: pd.DataFrame,
                   split: pd.DataFrame | None) -> pd.DataFrame:
    """The participants a job trains on: (participant_id, site, split = train), in a table
    the memorisation audit reads like the pretraining split."""
    rows = participants[participants["site"].astype(str).isin(job.sites)]
    if job.split == "train":
        if split is None:
            raise GenbrainInputError(f"fine-tune {job.name}: split 'train' needs the cohort's "
                                     "split table")
        train_ids = set(split.loc[split["split"] == "train", "participant_id"].astype(str))
        rows = rows[rows["participant_id"].astype(str).isin(train_ids)]
    out = rows[["participant_id", "site"]].copy()
    out["split"] = "train"
    return out.reset_index(drop=True)


def run_finetune(job: Mapping[str, Any] | FinetuneJob, index: str | os.PathLike,
                 training: str | os.PathLike, init_checkpoint: str | os.PathLike,
                 work_dir: str | os.PathLike, checkpoint: str | os.PathLike, *, seed: int,
                 threads: int | None = None) -> Path:
    """Fine-tune (resuming from ``work_dir``) and copy the final checkpoint to ``checkpoint``.

    ``index``: the cohort's store; ``training``: :func:`training_table`'s TSV. The run's
    TrainConfig = the job's training keys + the init checkpoint's architecture + the task's
    conditions; its checkpoint records the task, the init checkpoint and the training set
    (``config["meta"]``)."""
    import torch

    from genbrain.store import ImageStore
    from genbrain.training.checkpoints import read_checkpoint
    from genbrain.training.config import TrainConfig
    from genbrain.training.loop import train
    from genbrain.training.surgery import inherit_architecture

    job = job if isinstance(job, FinetuneJob) else FinetuneJob.from_dict(job)
    if threads:
        torch.set_num_threads(int(threads))
    members = read_tsv(training)
    ids = set(members["participant_id"].astype(str))
    wanted = list(job.modalities) + list(job.sources)
    store = ImageStore(index, modalities=wanted, participants=ids)
    if len(store) == 0:
        raise GenbrainInputError(f"{index}: no {', '.join(wanted)} images of the {len(ids)} "
                                 f"participants of fine-tune {job.name}")
    init = read_checkpoint(init_checkpoint)
    values = {k: v for k, v in job.train.items() if v is not None}
    values.setdefault("seed", seed)
    values = inherit_architecture(values, init["config"]["train"])
    values.update(modalities=list(job.modalities),
                  diagnosis_levels=list(job.diagnosis_levels) if job.diagnosis_levels else None,
                  score_column=job.score_column, sources=list(job.sources) or None,
                  demographics=job.demographics,
                  n_modalities=init["config"]["model"]["n_modalities"])
    config = TrainConfig.from_dict(values, f"finetune.tasks.{job.task}")
    log.info("fine-tuning %s from %s on %d images of %d participants (%s; conditions: %s) "
             "for %d steps", job.name, init_checkpoint, len(store), len(ids),
             ", ".join(job.modalities), ", ".join(_conditions(job)) or "modality only",
             config.steps)
    meta = {"task": job.to_dict(), "training_participants": sorted(ids),
            "init_checkpoint": str(init_checkpoint),
            "init_sha256": file_sha256(init_checkpoint),
            "training_sha256": store.sha256()}
    _discard_stale_work(Path(work_dir), meta)
    result = train(config, store, work_dir, init_checkpoint=init_checkpoint, meta=meta)
    with atomic_path(checkpoint) as tmp:
        shutil.copyfile(result.checkpoint, tmp)
    return Path(checkpoint)


def _discard_stale_work(work_dir: Path, meta: Mapping[str, Any]) -> None:
    """Remove a work folder whose checkpoint was trained from another init checkpoint (its
    sha256), on other participants or on other images or covariates of them (the training
    store's sha256: a site re-simulated or re-preprocessed keeps its participant ids): the
    workflow reruns a fine-tune exactly when one of those changed, and resuming would return
    the stale model. A work folder from before a key was recorded starts afresh too."""
    import torch

    ckpt = work_dir / "checkpoint.pt"
    if not ckpt.exists():
        return
    old = torch.load(ckpt, map_location="cpu", weights_only=True)["config"].get("meta") or {}
    for key in ("init_sha256", "training_participants", "training_sha256"):
        if old.get(key) != meta[key]:
            log.info("%s: %s changed since this work folder was trained; starting afresh",
                     work_dir, key.replace("_", " "))
            shutil.rmtree(work_dir)
            return


def _conditions(job: FinetuneJob) -> list[str]:
    out = ["age", "sex"] * job.demographics + ["diagnosis"] * bool(job.diagnosis_levels)
    out += [job.score_column] * bool(job.score_column)
    out += [f"{m} image" for m in job.sources]
    return out


# --------------------------------------------------------------------------------------------
# What a fine-tune learned
# --------------------------------------------------------------------------------------------


def _x0(model, diffusion, x: Any, t: int, noise: Any, labels: Mapping[str, Any],
        x_cond: Any = None) -> np.ndarray:
    """(n, V) the model's clean-image estimate at timestep ``t`` from fixed noise."""
    import torch

    tt = torch.full((x.shape[0],), t, dtype=torch.long)
    x_t = diffusion.q_sample(x, tt, noise)
    inp = x_t if x_cond is None else torch.cat([x_t, x_cond], dim=1)
    with torch.no_grad():
        out = model(inp, diffusion.model_timesteps(tt), **labels)
        _, x0 = diffusion.eps_and_xstart(out[:, : x.shape[1]], x_t, tt)
    return x0[:, 0].double().numpy()


def finetune_checks(checkpoint: str | os.PathLike, index: str | os.PathLike,
                    training: str | os.PathLike | pd.DataFrame,
                    truth: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                    *, n_images: int = 16, t: int = 500, seed: int = 0, paired_samples: int = 0,
                    sampling: SamplingConfig | None = None,
                    registry: ModalityRegistry | None = None,
                    reference: Mapping[str, np.ndarray] | None = None,
                    modalities: Sequence[str] | None = None
                    ) -> tuple[pd.DataFrame, dict[tuple[str, str, str], dict[str, np.ndarray]]]:
    """Faithfulness checks of one fine-tune -> (a tidy table (check, method, modality, contrast,
    value, detail), the effect maps ``{(modality, label, contrast): {"model", "sample", "site"[,
    "truth"]: (V,)}}`` behind them). ``method`` says how a row was measured: ``training`` (the
    loss), ``one-step`` (the clean-image estimate below) or ``paired-sample``.

    - ``loss_start`` / ``loss_end``: mean loss of the first / last 10% of steps;
    - label heads (disease, score), one-step: the direction of the learned effect. The model's
      clean-image estimate at timestep ``t`` of up to ``n_images`` training images per modality,
      from fixed noise, with the label switched between two values, averaged; one ``contrast`` per
      non-control diagnosis level (``SCZ minus CN``: each level against the first, the
      control) and ``<score> +1 SD minus -1 SD``: ``effect_vs_site`` is its Pearson r with the
      training set's own standardised mean difference map of the same contrast,
      ``effect_vs_truth`` with the simulated true effect map
      (``truth``: effect (``diagnosis``, ``score``) -> modality -> (V,), when the cohort is
      simulated; each head is compared with its own effect's map). A zero-initialised head that
      learned nothing gives no effect (r undefined);
    - image-conditioned models: ``x0_vs_target``, the mean Pearson r of the clean-image estimate
      given the sources with the real target image;
    - paired-sample (``paired_samples`` > 0 pairs per label and modality; :func:`_paired_checks`):
      the label's effect on what synthesis actually draws, which the one-step estimate can
      overstate (issue 28). Full samples of :func:`genbrain.sampling.sample_table` with
      ``sampling`` (the synthesis stage's sampler, steps, guidance and seed; None =
      :class:`~genbrain.sampling.SamplingConfig` with ``seed``), ``registry`` mapping modality
      names to the model's indices and normalisations as synthesis does (None = the default
      registry); ``reference``: modality -> (V,) the raw image the ``truth`` maps are changes
      of (:func:`genbrain.simulate.cohort.reference_subject`), which puts them in store units.

    ``training``: the training participants (a table or its TSV, column ``participant_id``).
    ``modalities``: check only these of the model's modalities (None = all; a pretrained
    model's nine cost nine times the sampling). A pretrained model (no task modalities and no
    heads) gets the loss and the age and sex paired-sample rows.
    """
    import torch

    from genbrain.layout import standard_converter
    from genbrain.model.diffusion import GaussianDiffusion
    from genbrain.stats.correlation import pearson
    from genbrain.store import ImageStore
    from genbrain.training.checkpoints import load_for_sampling, loss_history
    from genbrain.training.data import VoxelDataset

    model, norms, config = load_for_sampling(checkpoint)
    losses = loss_history(checkpoint)
    tail = max(1, len(losses) // 10)
    rows = [("loss_start", "", "", float(losses[:tail].mean()), f"mean of steps 1-{tail}"),
            ("loss_end", "", "", float(losses[-tail:].mean()),
             f"mean of the last {tail} of {len(losses)} steps")]
    members = training if isinstance(training, pd.DataFrame) else read_tsv(training)
    ids = set(members["participant_id"].astype(str))
    mods = list(config.modalities or [])
    if modalities is not None and mods:
        unknown = sorted(set(modalities) - set(mods))
        if unknown:
            raise GenbrainInputError(f"{checkpoint}: modalities {unknown} are not the model's "
                                     f"(it has {mods})")
        mods = [m for m in mods if m in modalities]
    elif modalities is not None:  # a pretrained model: the store's indices are its own
        mods = list(modalities)
    store = ImageStore(index, modalities=(mods + list(config.sources or [])) or None,
                       participants=ids)
    if not mods:  # a pretrained model checked on all of its store's modalities
        mods = sorted(store.table["modality"].unique())
    data = VoxelDataset([store], modalities=mods, norms=norms,
                        diagnosis_levels=config.diagnosis_levels,
                        score_column=config.score_column, sources=config.sources,
                        demographics=config.demographics)
    # a model of another layout (an imported public checkpoint) reads the store converted; its
    # one-step effects go back to the standard layout of the maps they are compared with
    data.to_model({"layout": model.voxel_layout, "model": {"n_voxels": model.n_voxels}},
                  f"the model of {checkpoint}")
    to_standard = standard_converter(model.voxel_layout, f"the model of {checkpoint}")
    diffusion = GaussianDiffusion.linear(prediction=config.prediction)
    modality = data._labels["modality"]
    maps: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
    for m_name in mods:
        items = np.flatnonzero(data.table["modality"].to_numpy() == m_name)
        rng = np.random.default_rng([seed, len(items)])
        items = np.sort(rng.permutation(items)[:n_images]) if len(items) > n_images else items
        batch = data.__getitems__(items)
        x = batch["x"].float()
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(x.shape, generator=g)
        labels = {k: v for k, v in batch.items() if k not in ("x", "x_cond")}
        x_cond = batch["x_cond"].float() if "x_cond" in batch else None
        real = x[:, 0].double().numpy()
        heads = []
        if config.diagnosis_levels:  # every other level against the first (the control)
            lv = list(config.diagnosis_levels)
            heads += [("disease", k, 0, f"{lv[k]} minus {lv[0]}") for k in range(1, len(lv))]
        if config.score_column:
            heads.append(("score", 1.0, -1.0, f"{config.score_column} +1 SD minus -1 SD"))
        for head, hi, lo, what in heads:
            dtype = torch.long if head == "disease" else torch.float32
            a = _x0(model, diffusion, x, t, noise,
                    {**labels, head: torch.full((len(items),), hi, dtype=dtype)}, x_cond)
            b = _x0(model, diffusion, x, t, noise,
                    {**labels, head: torch.full((len(items),), lo, dtype=dtype)}, x_cond)
            effect = (a - b).mean(axis=0)  # (V,)
            effect = effect if to_standard is None else to_standard(effect)
            rows.append((f"{head}_effect_sd", m_name, what, float(effect.std()),
                         f"{what}: spatial SD of the model's effect (0 = nothing learned)"))
            all_items = np.flatnonzero(modality == modality[items[0]])
            site = _group_smd(store, data, all_items, head, config, hi)
            rows.append((f"{head}_effect_vs_site", m_name, what, pearson(effect, site),
                         f"r with the training set's own {what} standardised mean difference"))
            maps[(m_name, head, what)] = {"model": effect, "site": site}
            true = (truth or {}).get(HEAD_EFFECTS[head], {}).get(m_name)
            if true is not None:
                rows.append((f"{head}_effect_vs_truth", m_name, what, pearson(effect, true),
                             f"r with the simulated true {what} map"))
                rows.append((f"{head}_site_vs_truth", m_name, what, pearson(site, true),
                             "r of the training set's own map with the truth (the yardstick)"))
                maps[(m_name, head, what)]["truth"] = true
        if x_cond is not None:
            est = _x0(model, diffusion, x, t, noise, labels, x_cond)
            r = np.mean([pearson(e, y) for e, y in zip(est, real)])
            rows.append(("x0_vs_target", m_name, "", float(r),
                         f"mean r of the clean-image estimate at t={t} with the target"))
    table = pd.DataFrame(rows, columns=["check", "modality", "contrast", "value", "detail"])
    table.insert(1, "method", np.where(table["check"].str.startswith("loss_"), "training",
                                       "one-step"))
    if paired_samples > 0:
        paired = _paired_checks(model, norms, config, checkpoint, store, data, truth,
                                paired_samples, sampling, registry, reference, seed, maps, mods)
        table = pd.concat([table, paired], ignore_index=True)
    return table, maps


def _paired_checks(model, norms, config, checkpoint, store, data,
                   truth: Mapping[str, Mapping[str, np.ndarray]] | None, n_pairs: int,
                   sampling: SamplingConfig | None, registry: ModalityRegistry | None,
                   reference: Mapping[str, np.ndarray] | None, seed: int,
                   maps: dict[tuple[str, str, str], dict[str, np.ndarray]],
                   modalities: Sequence[str]) -> pd.DataFrame:
    """The paired-sample rows of :func:`finetune_checks` (method ``paired-sample``); their maps
    go into ``maps`` under ``"sample"``.

    Per target modality, ``n_pairs`` training images are drawn (seeded by ``seed``) and their
    participants' covariates (age, sex, diagnosis, score) are the pairs' base rows. Per label
    contrast, the base rows are sampled twice, differing only in that label: each diagnosis
    level against the first (the control), the score at its training mean +1 SD against -1 SD,
    age :data:`AGE_CONTRAST` (75 against 50 years), sex M against F. Both copies have the same
    ``synthetic_id`` and go through :func:`~genbrain.sampling.sample_table` in the same batch
    layout, so the two members of a pair start from the same initial noise
    (:func:`~genbrain.sampling.row_noise`) and, were the sampler stochastic, would draw the
    same per-step noise too (each batch's generator starts from the same state); DDIM with eta 0
    is deterministic. The mean paired difference (V,), in the store's normalised units, is the
    label's effect on the sample path: a model that ignores the label gives exactly 0.

    Rows per (label, modality, contrast): ``<label>_sample_sd``, the spatial SD of the mean
    difference (0 = the label does not reach the samples); ``<label>_sample_vs_site``, its
    Pearson r with the training set's own map (:func:`_group_smd`, as the one-step check). With
    the planted truth: ``<label>_sample_vs_truth``, its r with the planted map (in store units
    where they are known: a per-image z-score removes the global part of T1w's age and sex
    changes), for age and sex, which the one-step check lacks, ``<label>_site_vs_truth``; and
    where the planted effect of the contrast can be put in store units
    (:func:`_planted_in_store_units`): ``<label>_sample_gain``, the least-squares slope (with
    intercept) of the mean difference on it (1 = the full effect, 0 = none), beside
    ``<label>_site_gain``, the same slope of the training images' own covariate-adjusted effect
    (:func:`_site_effects`: what the data show a model, below 1 where individual anatomy blurs
    the effect), and per modality ``truth_to_store_scale``, the slope of the planted maps in
    store units on the raw ones (1 / std for a fixed normalisation)."""
    from genbrain.modalities import DEFAULT_REGISTRY
    from genbrain.sampling import SamplingConfig, sample_table, source_images
    from genbrain.stats.correlation import pearson
    from genbrain.training.checkpoints import load_for_sampling

    sampling = sampling or SamplingConfig(seed=seed)
    registry = registry or DEFAULT_REGISTRY
    if sampling.weights and sampling.weights != config.sampling_weights:
        model, norms, config = load_for_sampling(checkpoint, sampling.weights)
    t = data.table
    levels = list(config.diagnosis_levels or [])
    score = config.score_column
    # (label, contrast, column, high, low, the contrast in units of the label's truth map)
    contrasts = [("disease", f"{levels[k]} minus {levels[0]}", "diagnosis", levels[k],
                  levels[0], 1.0) for k in range(1, len(levels))]
    if score:
        mu, sd = norms["score"]["mean"], norms["score"]["std"]
        contrasts.append(("score", f"{score} +1 SD minus -1 SD", score, mu + sd, mu - sd,
                          2 * sd))
    if config.demographics:
        old, young = AGE_CONTRAST
        contrasts += [("age", f"age {old:g} minus {young:g} years", "age", old, young,
                       old - young),
                      ("sex", "sex M minus F", "sex", "M", "F", 1.0)]
    rows = []
    for m_name in modalities:
        items = np.flatnonzero(t["modality"].to_numpy() == m_name)
        rng = np.random.default_rng([seed, len(items), n_pairs])
        drawn = rng.choice(items, n_pairs, replace=len(items) < n_pairs)
        base = pd.DataFrame({"synthetic_id": np.arange(n_pairs), "modality": m_name,
                             "participant_id": t["participant_id"].to_numpy()[drawn]})
        base["age"] = (t["age"].to_numpy(np.float64)[drawn] if config.demographics
                       else norms["age"]["mean"])  # without demographics: fed as null anyway
        base["sex"] = t["sex"].to_numpy()[drawn] if config.demographics else "F"
        for col in ("diagnosis", score):
            if col and col in t.columns:
                base[col] = t[col].to_numpy()[drawn]
        src = (source_images(store, base, list(config.sources), f"paired samples {m_name}")
               if config.sources else None)
        true = {label: (truth or {}).get(LABEL_EFFECTS[label], {}).get(m_name)
                for label, *_ in contrasts}
        planted = {what: true[label] * scale for label, what, *_, scale in contrasts
                   if true[label] is not None}  # raw units per contrast
        ref = (reference or {}).get(m_name)
        in_store, how = {}, ""
        for what, raw in planted.items():
            in_store[what], how = _planted_in_store_units(raw, registry, m_name, ref)
        known = {w: v for w, v in in_store.items() if v is not None}
        if known:
            rows.append(("truth_to_store_scale", m_name, "",
                         _slope(np.concatenate(list(known.values())),
                                np.concatenate([planted[w] for w in known])), how))
            own = _site_effects(store, data, items, contrasts)  # what ->(V,) store units
        elif planted:
            log.warning("%s: %s", m_name, how)
        for label, what, column, hi, lo, _ in contrasts:
            source = f"paired samples {label} {m_name}"
            a = sample_table(model, norms, config, base.assign(**{column: hi}), sampling,
                             registry, source, sources=src)
            b = sample_table(model, norms, config, base.assign(**{column: lo}), sampling,
                             registry, source, sources=src)
            effect = (a.astype(np.float64) - b).mean(axis=0)  # (V,) store units
            level = levels.index(hi) if label == "disease" else 1.0
            site = _group_smd(store, data, items, label, config, level)
            sd_note = (f"{what}: spatial SD of the mean difference of {n_pairs} pairs of "
                       "samples from identical noise (0 = the label does not reach samples)")
            rows.append((f"{label}_sample_sd", m_name, what, float(effect.std()), sd_note))
            rows.append((f"{label}_sample_vs_site", m_name, what, pearson(effect, site),
                         f"r with the training set's own {what} standardised mean difference"))
            maps.setdefault((m_name, label, what), {}).update(sample=effect, site=site)
            if what not in planted:
                continue
            # the planted map in store units where known (a z-score reshapes T1w's), else raw
            p = in_store[what]
            true_map = true[label] if p is None else p
            rows.append((f"{label}_sample_vs_truth", m_name, what, pearson(effect, true_map),
                         f"r with the simulated true {what} map"))
            if label in ("age", "sex"):  # the one-step check has the heads' yardstick
                rows.append((f"{label}_site_vs_truth", m_name, what, pearson(site, true_map),
                             "r of the training set's own map with the truth (the yardstick)"))
                maps[(m_name, label, what)]["truth"] = true_map
            if p is None:
                continue
            rows.append((f"{label}_sample_gain", m_name, what, _slope(effect, p),
                         ("least-squares slope of the samples' effect on the planted effect "
                          "(store units; 1 = the full effect)")))
            rows.append((f"{label}_site_gain", m_name, what, _slope(own[what], p),
                         ("the same slope of the training set's own covariate-adjusted effect "
                          "(what its data show: the yardstick)")))
    out = pd.DataFrame(rows, columns=["check", "modality", "contrast", "value", "detail"])
    out.insert(1, "method", "paired-sample")
    return out


def _slope(y: np.ndarray, x: np.ndarray) -> float:
    """The least-squares slope (with intercept) of ``y`` on ``x``, both (V,)."""
    x = x - x.mean()
    den = float((x * x).sum())
    return float(((y - y.mean()) * x).sum() / den) if den > 0 else float("nan")


def _site_effects(store, data, items: np.ndarray, contrasts: Sequence[tuple],
                  chunk: int = 32) -> dict[str, np.ndarray]:
    """The training images' own effect of every contrast, in store units: per voxel OLS
    ``x ~ 1 + <each label>`` over ``items`` (diagnosis and sex as dummies of the contrast's
    level, age and score as numbers), each coefficient times its contrast (years, SDs).
    Streams the images ``chunk`` at a time: memory (labels + 1) x V."""
    t = data.table.iloc[items]
    columns, scales = [np.ones(len(items))], []
    for _, what, column, hi, lo, scale in contrasts:
        if column in ("diagnosis", "sex"):  # a dummy's coefficient is the contrast itself
            columns.append((t[column].astype(str) == str(hi)).to_numpy(np.float64))
            scales.append((what, 1.0))
        else:
            columns.append(t[column].to_numpy(np.float64))
            scales.append((what, float(hi) - float(lo)))
    pinv = np.linalg.pinv(np.stack(columns, axis=1))  # (p, n)
    beta = np.zeros((len(columns), store.n_voxels))  # (p, V)
    for start in range(0, len(items), chunk):
        y = store.batch(data._row[items[start:start + chunk]]).astype(np.float64)  # (c, V)
        beta += pinv[:, start:start + chunk] @ y
    return {what: beta[j + 1] * scale for j, (what, scale) in enumerate(scales)}


def _planted_in_store_units(raw: np.ndarray, registry, modality: str,
                            reference: np.ndarray | None) -> tuple[np.ndarray | None, str]:
    """A planted change ``raw`` (V,) of ``modality``, in raw units, as the change it makes in
    the store's normalised units -> ((V,) or None, how).

    With the raw ``reference`` image the change is of, exactly: ``normalise(reference + raw) -
    normalise(reference)`` with the modality's registry normalisation (its clamp included). For
    a per-image z-score (T1w, FLAIR) that is the change divided by the image's SD, less its
    mean and the image's own share: real images' SDs differ from the noise-free reference's by
    their noise and bias fields, a few per cent in the simulator. Without a reference, a
    ``fixed`` normalisation is linear, ``raw / std``; a z-scored modality has no fixed scale (the
    store keeps no image's SD), so None."""
    try:
        mod = registry[modality]
    except GenbrainInputError:
        return None, f"'{modality}' is not in the registry: its normalisation is unknown"
    if reference is not None:
        ref = np.asarray(reference, np.float64)
        how = f"{mod.norm} normalisation of the planted change at the reference subject"
        return mod.normalise(ref + raw).astype(np.float64) - mod.normalise(ref), how
    if mod.norm == "fixed":
        return raw / mod.std, f"fixed normalisation: planted change / std {mod.std:g}"
    return None, (f"per-image {mod.norm} normalisation and no reference image: the planted map "
                  "cannot be put in store units, no gain")


def _group_smd(store, data, items: np.ndarray, head: str, config, level: float) -> np.ndarray:
    """(V,) the training images' own effect map: standardised mean difference between the
    label's groups (diagnosis level index ``level`` vs the first, the controls; sex M vs F;
    score or age above vs at or below its training mean)."""
    x = store.batch(data._row[items]).astype(np.float64)  # (n, V)
    if head == "disease":
        lv = list(config.diagnosis_levels)
        diag = data.table["diagnosis"].to_numpy()[items]
        hi, lo = diag == lv[int(level)], diag == lv[0]
    elif head == "sex":
        sex = data._labels["sex"][items]
        hi, lo = sex == 0, sex == 1  # M = 0, F = 1 (genbrain.conditions)
    else:
        z = data._labels[head][items]  # score or age, standardised
        hi, lo = z > 0, z <= 0
    if hi.sum() < 2 or lo.sum() < 2:
        return np.full(x.shape[1], np.nan)
    pooled = np.sqrt(((hi.sum() - 1) * x[hi].var(0, ddof=1) + (lo.sum() - 1)
                      * x[lo].var(0, ddof=1)) / (hi.sum() + lo.sum() - 2))
    return (x[hi].mean(0) - x[lo].mean(0)) / np.where(pooled > 0, pooled, np.inf)


def write_checks(table: pd.DataFrame, job: Mapping[str, Any], out_tsv: str | os.PathLike) -> None:
    """The checks table with the job's task and unit columns."""
    out = table.copy()
    out.insert(0, "unit", job["unit"])
    out.insert(0, "task", job["task"])
    save_tsv(out, out_tsv)
