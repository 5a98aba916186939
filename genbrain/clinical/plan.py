"""The clinical stage (paper Fig. 6c-f): does augmenting a 3D ResNet's training set with
images from a score-conditioned fine-tune lower its error in predicting a clinical score from a
modality the pretrained model never saw?

An analysis (config ``clinical.analyses.<name>``) names a fine-tuning task conditioned on one of
its cohort's scores (and not on diagnosis) that trains on the cohort's ``train`` split only
(``finetune.tasks.<task>`` with ``conditions: [<score>]`` and ``split: train``, one pooled job):
the cohort's split (``results/splits/<cohort>.tsv``) is then the 3:1:1 split stratified by that
score (:func:`genbrain.splits.score_split`), which the fine-tune and every regressor share, so
the regressors' validation and test participants stay unseen by the generator. Per analysis
(:class:`ClinicalAnalysis`):

- a **synthetic pool** ``clinical-<analysis>`` of ``round(max ratio x n_train)`` images of the
  analysis's modality, mirroring the training split's (age, sex, score) in seeded permutations
  (:func:`pool_covariates`), drawn through the same synthesis jobs, memorisation audit and
  privacy gate as every synthetic cohort;
- one regressor fit per (ratio, seed) (:func:`genbrain.clinical.sweep.sweep_job`);
- the summary (:func:`genbrain.clinical.sweep.summarise_sweep`): the ratio of lowest mean
  validation MAE against ratio 0 on the test split, t-tests across seeds, and the figures.

:func:`plan_clinical` runs at DAG build time: a config mistake is one line naming the key, a
bad score one line naming the participants table and the participant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.seeds import name_seed, seed_of
from genbrain.stats.resampling import ratio_grid

#: RegressConfig keys the config sets (``clinical.regress``, an analysis's ``regress``); the
#: score column, its maximum and the seed come from the analysis.
REGRESS_KEYS = ("arch", "dropout", "crop", "pool", "epochs", "batch_size", "lr", "eval_batch")
SYNTH_PREFIX = "clinical"


@dataclass(frozen=True)
class ClinicalAnalysis:
    """One clinical analysis, planned.

    ``cohort``; ``score`` (its column) and ``score_max`` (its declared maximum); ``modality``:
    the regressor's input images (the fine-tune's); ``model``: the fine-tune
    (``<task>/all``) drawing the pool ``synth``; ``ratios`` (0 first) and ``seeds`` (one per
    replicate: the regressor's seed of replicate k, :func:`replicate_seed`); ``n_train``: the
    training split's size; ``n_pool``: the pool's size; ``regress``: the RegressConfig keys
    (score_column and score_max included, seed excluded); ``test``: the t-test of
    :func:`genbrain.clinical.sweep.summarise_sweep`."""

    analysis: str
    cohort: str
    score: str
    score_max: float
    modality: str
    model: str
    ratios: tuple[float, ...]
    seeds: tuple[int, ...]
    n_train: int
    n_pool: int
    regress: Mapping[str, Any] = field(default_factory=dict)
    test: str = "welch"

    @property
    def name(self) -> str:
        return self.analysis

    @property
    def synth(self) -> str:
        """The synthetic pool's name (``results/synthetic/<synth>``)."""
        return f"{SYNTH_PREFIX}-{self.analysis}"

    @property
    def out_dir(self) -> str:
        return f"results/clinical/{self.analysis}"

    def job_tsv(self, ratio: float, replicate: int) -> str:
        """The one-row table of the (ratio, replicate) fit."""
        return f"{self.out_dir}/sweep/ratio-{ratio_label(ratio)}_seed-{replicate}.tsv"

    def jobs(self) -> list[tuple[float, int]]:
        """Every (ratio, replicate) of the sweep."""
        return [(r, k) for r in self.ratios for k in range(len(self.seeds))]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["regress"] = dict(self.regress)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClinicalAnalysis:
        d = dict(d)
        d["ratios"], d["seeds"] = tuple(d["ratios"]), tuple(d["seeds"])
        return cls(**d)


def ratio_label(ratio: float) -> str:
    """A ratio in a path: ``0``, ``0.5``, ``2.8`` (``%g``)."""
    return f"{float(ratio):g}"


def replicate_seed(seed: int, analysis: str, replicate: int) -> int:
    """The regressor's seed of replicate ``replicate`` (its initial weights, data order,
    dropout and pool subset), a stream of the config's ``seed``."""
    return seed_of(int(seed), name_seed(analysis), int(replicate)) % 2**31


def _ratios(value: Any, key: str) -> tuple[float, ...]:
    if isinstance(value, Mapping):
        out = ratio_grid(float(value.get("start", 0.0)), float(value.get("stop", 3.0)),
                         float(value.get("step", 0.1)))
    else:
        out = tuple(sorted({round(float(r), 6) for r in value}))
    if not out or out[0] != 0.0 or min(out) < 0:
        raise GenbrainInputError(f"config: '{key}' is {list(out)}; expected non-negative "
                                 "ratios including 0.0 (the real-only baseline)")
    return out


def plan_clinical(config: Mapping, cohorts: Mapping, finetunes: Mapping
                  ) -> dict[str, ClinicalAnalysis]:
    """Every ``clinical.analyses`` entry, checked against the cohorts
    (:class:`genbrain.workflow.Cohort`) and the planned fine-tunes
    (:class:`genbrain.finetune.FinetuneJob` by model name) -> {analysis: plan}. The cohort's
    score split is drawn here too, so bad scores or too few participants stop the workflow at
    parse time."""
    from genbrain.clinical.config import RegressConfig
    from genbrain.clinical.sweep import n_synthetic
    from genbrain.splits import SplitBasis
    from genbrain.tables import score_ranges

    section = config.get("clinical") or {}
    out: dict[str, ClinicalAnalysis] = {}
    for name, spec in (section.get("analyses") or {}).items():
        key = f"clinical.analyses.{name}"
        task = spec["finetune"]
        jobs = [j for j in finetunes.values() if j.task == task]
        if not jobs:
            tasks = sorted({j.task for j in finetunes.values()})
            raise GenbrainInputError(f"config: '{key}.finetune' is '{task}', not a fine-tuning "
                                     f"task; expected one of {tasks}")
        if len(jobs) != 1:
            raise GenbrainInputError(f"config: '{key}': fine-tuning task '{task}' is per site "
                                     f"({len(jobs)} jobs); the regressor's pool comes from one "
                                     f"fine-tune on the cohort's training split (remove "
                                     f"'finetune.tasks.{task}.per_site')")
        job = jobs[0]
        cohort = cohorts[job.cohort]
        if not job.score_column or job.diagnosis_levels:
            raise GenbrainInputError(f"config: '{key}': fine-tuning task '{task}' is not "
                                     "conditioned on a score alone (its conditions must be one "
                                     f"of cohort '{cohort.name}'s scores {cohort.scores}, "
                                     "without 'diagnosis': the split is stratified by it)")
        if job.split != "train":
            raise GenbrainInputError(f"config: '{key}': fine-tuning task '{task}' trains on "
                                     f"split '{job.split}'; a regressor's validation and test "
                                     "participants must stay unseen by its generator (set "
                                     f"'finetune.tasks.{task}.split: train')")
        if set(job.sites) != set(cohort.sites):
            raise GenbrainInputError(f"config: '{key}': fine-tuning task '{task}' trains on "
                                     f"sites {list(job.sites)} of cohort '{cohort.name}'; the "
                                     f"score split covers all of {cohort.sites} (remove "
                                     f"'finetune.tasks.{task}.sites')")
        modality = spec.get("modality", job.modalities[0])
        if modality not in job.modalities:
            raise GenbrainInputError(f"config: '{key}.modality' is '{modality}'; fine-tune "
                                     f"task '{task}' trains on {list(job.modalities)}")
        declared = score_ranges(cohort.spec.get("scores")).get(job.score_column)
        score_max = spec.get("score_max", declared[1] if declared else None)
        if score_max is None:
            raise GenbrainInputError(f"config: '{key}.score_max' is not set and cohort "
                                     f"'{cohort.name}' declares no range for score "
                                     f"'{job.score_column}'; set one (the regressor's output "
                                     "is sigmoid x the maximum)")
        score_max = float(score_max)
        if declared and score_max > declared[1]:
            raise GenbrainInputError(f"config: '{key}.score_max' is {score_max:g}, above the "
                                     f"maximum {declared[1]:g} cohort '{cohort.name}' "
                                     f"declares for '{job.score_column}'")
        regress = {**dict(section.get("regress") or {}), **dict(spec.get("regress") or {})}
        bad = sorted(set(regress) - set(REGRESS_KEYS))
        if bad:
            raise GenbrainInputError(f"config: '{key}.regress' sets '{bad[0]}'; expected some "
                                     f"of {', '.join(REGRESS_KEYS)} (the score and the seed "
                                     "come from the analysis)")
        regress.update(score_column=job.score_column, score_max=score_max)
        try:
            checked = RegressConfig.from_dict(regress, f"config: '{key}.regress'")
        except GenbrainInputError as err:
            raise GenbrainInputError(f"config: '{key}.regress': {err}") from None
        _check_crop(checked.crop, checked.pool, f"{key}.regress.crop")
        ratios = _ratios(spec.get("ratios", section.get("ratios", {})), f"{key}.ratios")
        n_seeds = int(spec.get("seeds", section.get("seeds", 5)))
        if n_seeds < 1:
            raise GenbrainInputError(f"config: '{key}.seeds' is {n_seeds}; expected >= 1")
        source = f"{cohort.participants} (config key '{key}')"
        basis = SplitBasis.of(None, job.score_column, cohort.spec.get("scores"))
        split = SplitBasis(score=basis.score, score_max=score_max).split(
            cohort.table, int(config.get("seed", 0)), source)
        n_train = int((split["split"] == "train").sum())
        seeds = tuple(replicate_seed(int(config.get("seed", 0)), name, k)
                      for k in range(n_seeds))
        out[name] = ClinicalAnalysis(
            analysis=name, cohort=cohort.name, score=job.score_column, score_max=score_max,
            modality=modality, model=job.name, ratios=ratios, seeds=seeds, n_train=n_train,
            n_pool=n_synthetic(max(ratios), n_train),
            regress={k: v for k, v in checked.to_dict().items() if k != "seed"},
            test=str(section.get("test", "welch")))
    return out


def _check_crop(crop: Sequence[Sequence[int]], pool: int, key: str) -> None:
    """A crop outside the standard grid, or thinner than ``pool``: one line naming ``key``."""
    from genbrain.space import standard_space

    shape = standard_space().shape
    for axis, ((a, b), size) in enumerate(zip(crop, shape)):
        if not 0 <= a < b <= size or (b - a) < pool:
            raise GenbrainInputError(
                f"config: '{key}' is {[list(c) for c in crop]}: axis {'xyz'[axis]} ({a}:{b}) "
                f"lies outside the {'x'.join(map(str, shape))} grid (expected 0 <= start < stop "
                f"<= {size}, at least 'pool' = {pool} voxels)")


def pool_covariates(job: ClinicalAnalysis, split: pd.DataFrame, participants: pd.DataFrame,
                    seed: int) -> pd.DataFrame:
    """The covariate table of an analysis's synthetic pool: ``job.n_pool`` rows mirroring the
    training split's members (age, sex, score; :func:`genbrain.covariates.mirror_covariates`)."""
    from genbrain.covariates import mirror_covariates

    train_ids = set(split.loc[split["split"] == "train", "participant_id"].astype(str))
    members = participants[participants["participant_id"].astype(str).isin(train_ids)]
    if len(members) != job.n_train:
        raise GenbrainInputError(f"clinical analysis {job.name}: the training split holds "
                                 f"{len(members)} participants; the plan was made for "
                                 f"{job.n_train} (was the participants table edited? rerun)")
    return mirror_covariates(members, job.n_pool, [job.score], job.modality, seed, job.synth)


def run_sweep_job(job: ClinicalAnalysis, ratio: float, replicate: int, index: str,
                  split: str, pool_index: str | None, work_dir: str) -> pd.DataFrame:
    """One (ratio, replicate) fit of an analysis (:func:`genbrain.clinical.sweep.sweep_job`)
    on the cohort's store ``index`` (the analysis's modality), its split table ``split`` and,
    above ratio 0, the pool's store ``pool_index`` -> the one-row table, with the analysis's
    name and the replicate. The fit's checkpoint lives in ``work_dir`` (resumed if there) and is
    removed once the row exists."""
    import shutil

    from genbrain.clinical.config import RegressConfig
    from genbrain.clinical.data import ScoreImages, split_images
    from genbrain.clinical.sweep import sweep_job
    from genbrain.io import read_tsv
    from genbrain.store import ImageStore

    config = RegressConfig.from_dict({**job.regress, "seed": 0}, f"clinical analysis {job.name}")
    store = ImageStore(index, modalities=[job.modality])
    splits = split_images(store, read_tsv(split), config)
    if len(splits["train"]) != job.n_train:
        raise GenbrainInputError(f"{split}: {len(splits['train'])} training images of "
                                 f"{job.modality}; the plan was made for {job.n_train} (rerun)")
    pool = None
    if pool_index:
        pool = ScoreImages.from_store(ImageStore(pool_index, modalities=[job.modality]),
                                      job.score, job.score_max)
    row = sweep_job(config, splits, pool, ratio, job.seeds[replicate], work_dir)
    row.insert(0, "analysis", job.analysis)
    row.insert(3, "replicate", int(replicate))
    shutil.rmtree(work_dir, ignore_errors=True)
    return row


def summary_outputs(job: ClinicalAnalysis, row_tsvs: Sequence[str],
                    out: Mapping[str, str]) -> None:
    """Gather an analysis's fits into ``out['sweep']``, summarise them
    (:func:`genbrain.clinical.sweep.summarise_sweep`: ``out['summary']`` per ratio and metric,
    ``out['comparison']`` the chosen ratio against ratio 0) and draw Fig. 6d/f
    (``out['figure']``). The summary and comparison name the analysis, its fine-tune
    (``model``), ``score`` and ``modality``, so a reader of the table (the fidelity record's
    pool row among them) finds the fine-tune's checks without the config."""
    from genbrain.clinical.figures import sweep_figure
    from genbrain.clinical.sweep import summarise_sweep
    from genbrain.io import read_tsv, save_tsv

    table = pd.concat([read_tsv(p) for p in row_tsvs], ignore_index=True)
    table = table.sort_values(["ratio", "replicate"]).reset_index(drop=True)
    expected = len(job.ratios) * len(job.seeds)
    if len(table) != expected:
        raise GenbrainInputError(f"clinical analysis {job.name}: {len(table)} fits; the plan "
                                 f"has {expected} ({len(job.ratios)} ratios x "
                                 f"{len(job.seeds)} seeds)")
    res = summarise_sweep(table, job.test, source=f"clinical analysis {job.name}")
    for name, t in (("summary", res.per_ratio), ("comparison", res.comparison)):
        t = t.copy()
        for i, (column, value) in enumerate((("analysis", job.analysis), ("model", job.model),
                                             ("score", job.score),
                                             ("modality", job.modality))):
            t.insert(i, column, value)
        save_tsv(t, out[name])
    save_tsv(table, out["sweep"])
    sweep_figure(res.per_ratio, res.chosen_ratio, out["figure"], job.score,
                 title=f"{job.analysis}: {job.score} from {job.modality} against the "
                       f"synthetic:real ratio (mean and 95% CI over {len(job.seeds)} seeds)")


def pairs_output(job: ClinicalAnalysis, index: str, split: str, pool_index: str,
                 out_png: str, n_pairs: int = 4) -> None:
    """Fig. 6c/e: test-split images of the analysis's modality beside the pool's images
    nearest in (age, score) of the same sex (:func:`genbrain.clinical.sweep.match_pairs`)."""
    import numpy as np

    from genbrain.clinical.figures import pairs_figure
    from genbrain.clinical.sweep import match_pairs
    from genbrain.io import read_tsv
    from genbrain.store import ImageStore

    real = ImageStore(index, modalities=[job.modality])
    synthetic = ImageStore(pool_index, modalities=[job.modality])
    test = set(read_tsv(split).query("split == 'test'")["participant_id"].astype(str))
    rows = np.flatnonzero(real.table["participant_id"].astype(str).isin(test).to_numpy())
    pairs = match_pairs(real.table.iloc[rows].reset_index(drop=True), synthetic.table,
                        job.score, n_pairs)
    pairs_figure(pairs, real, synthetic, out_png, job.score, real_rows=rows,
                 title=f"{job.analysis}: real (test split) and synthetic {job.modality} matched "
                       f"for age, sex and {job.score}")
