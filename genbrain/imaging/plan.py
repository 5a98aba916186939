"""The image-level stage (paper Fig. 3, Methods "Image enhancement"): per task, corrupted
copies of hold-out images, each method's predictions of the clean images, and their scores.

A task (config ``imaging.tasks.<name>``, :class:`ImagingTask`) names a cohort, a target
modality and a kind:

- ``enhancement``: the source is the target corrupted (:mod:`genbrain.imaging.corrupt`:
  k-space rigid motion and Gaussian + Rician noise, drawn per image from the config's seed);
  (``synthesis``, another modality as the source, is planned, not yet here).

Who is used for what: the **test** images are the pretraining cohort's hold-out
(``results/pretrain/split.tsv``, ``split == holdout``), never seen by the pretrained model; the
**training** pairs (for the mean image and the U-Net; the DiT fine-tune later) come from its
``train`` split. ``n_test`` / ``n_train`` cap them: participants are ranked by a seeded key of
their id (:func:`select_participants`), so the choice depends neither on table order nor on
the other participants, and a larger cap keeps the smaller cap's images.

Units: the store keeps T1w as per-image z-scores; corruption needs non-negative intensities
(Rician noise is a magnitude), so every clean image is first mapped to [0, 1] over its brain
voxels (:func:`genbrain.imaging.metrics.normalise_01`, the metrics' own normalisation) and
``corrupt.noise_scale`` puts the paper's sigmas (raw UK Biobank units, 0..50) on that scale.

Methods (``methods``, each one job writing ``predictions/<method>.npy``): ``mean`` (the mean
training target), ``nlmeans`` (non-local means of the corrupted image), ``unet`` (a MONAI 3D
U-Net trained on the training pairs); the GenBrain fine-tune joins as one more method.
Scores: per test image and method the image metrics against the clean target, the corrupted
input itself scored as method ``input``; a summary with bootstrap CIs and paired t-tests
against ``input`` (:func:`score_task`).

:func:`plan_imaging` runs at DAG build time: a config mistake is one line naming the key.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.imaging.baselines import UNetSettings
from genbrain.imaging.corrupt import CorruptionSettings
from genbrain.imaging.metrics import IMAGE_METRICS
from genbrain.seeds import name_seed, seed_of
from genbrain.splits import holdout_split

log = logging.getLogger(__name__)

KINDS = ("enhancement",)
#: the methods a task can compare; ``input`` (the corrupted image itself) is always scored
METHODS = ("mean", "nlmeans", "unet")
#: methods that learn from the training pairs
TRAINED = ("mean", "unet")
INPUT = "input"
#: paired tests and bootstrap CIs need at least this many test images
MIN_TEST = 2


@dataclass(frozen=True)
class ImagingTask:
    """One image-level task.

    ``task``: its name (``results/imaging/<task>/``); ``kind``: :data:`KINDS`; ``cohort``,
    ``modality``: whose images and which; ``n_test`` / ``n_train``: the images used (after the
    caps; ``n_train`` is 0 when no method trains); ``methods``: :data:`METHODS` in the config's
    order; ``corrupt`` / ``unet``: the settings' fields (seed included); ``metrics``: names of
    :data:`genbrain.imaging.metrics.METRICS`; ``n_examples``: test images in the figure;
    ``n_boot``: bootstrap resamples of the summary's CIs."""

    task: str
    kind: str
    cohort: str
    modality: str
    n_test: int
    n_train: int
    methods: tuple[str, ...]
    corrupt: Mapping
    unet: Mapping
    metrics: tuple[str, ...]
    n_examples: int
    n_boot: int
    seed: int

    TUPLES = ("methods", "metrics")

    @property
    def out_dir(self) -> str:
        return f"results/imaging/{self.task}"

    @property
    def trains(self) -> bool:
        """Whether a method needs the training pairs."""
        return any(m in TRAINED for m in self.methods)

    def corruption(self) -> CorruptionSettings:
        return CorruptionSettings.from_config(dict(self.corrupt),
                                              section=f"imaging.tasks.{self.task}.corrupt")

    def unet_settings(self) -> UNetSettings:
        spec = dict(self.unet)
        for k in ("channels", "strides"):
            if k in spec:
                spec[k] = tuple(spec[k])
        return UNetSettings(**spec, section=f"imaging.tasks.{self.task}.unet")

    def to_dict(self) -> dict:
        """A plain dict (a rule's params) that :meth:`from_dict` turns back."""
        d = asdict(self)
        d["corrupt"], d["unet"] = dict(self.corrupt), dict(self.unet)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> ImagingTask:
        d = dict(d)
        for k in cls.TUPLES:
            d[k] = tuple(d[k])
        return cls(**d)


def _unknown(key: str, value: str, allowed: Sequence[str], what: str) -> GenbrainInputError:
    hint = difflib.get_close_matches(str(value), list(allowed), n=1)
    did = f" (did you mean '{hint[0]}'?)" if hint else ""
    return GenbrainInputError(f"config: '{key}' is '{value}'{did}; expected {what} "
                              f"{list(allowed)}")


def _unet_spec(spec: Mapping | None, key: str, seed: int) -> dict:
    allowed = sorted(f.name for f in fields(UNetSettings) if f.name not in ("section", "seed"))
    spec = dict(spec or {})
    for k in spec:
        if k not in allowed:
            raise _unknown(f"{key}.{k}", k, allowed, "a U-Net setting, one of")
    out = {**spec, "seed": int(seed)}
    for k in ("channels", "strides"):
        if k in out:
            out[k] = [int(v) for v in out[k]]
    UNetSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in out.items()},
                 section=key)  # checks every value, naming the key
    return out


def _corrupt_spec(spec: Mapping | None, key: str, seed: int) -> dict:
    spec = dict(spec or {})
    if "seed" in spec:
        raise GenbrainInputError(f"config: '{key}.seed': the corruption is seeded per image from "
                                 "the top-level 'seed'; remove this key")
    out = {**spec, "seed": int(seed)}
    settings = CorruptionSettings.from_config(out, section=key)  # one line naming the key
    d = {f.name: getattr(settings, f.name) for f in fields(settings) if f.name != "section"}
    d["n_movements"], d["sigmas"] = list(d["n_movements"]), list(d["sigmas"])
    return d


def plan_imaging(config: Mapping, cohorts: Mapping, pretrain: str | None
                 ) -> dict[str, ImagingTask]:
    """Every ``imaging.tasks`` entry, checked against the cohorts
    (:class:`genbrain.workflow.Cohort` by name) and the pretraining cohort's hold-out split
    (recomputed here as ``split_pretrain`` will write it) -> {task name: task}."""
    section = config.get("imaging") or {}
    seed = int(config["seed"])
    out: dict[str, ImagingTask] = {}
    for name, spec in (section.get("tasks") or {}).items():
        key = f"imaging.tasks.{name}"
        kind = spec.get("kind", "enhancement")
        if kind not in KINDS:
            raise _unknown(f"{key}.kind", kind, KINDS, "one of")
        cohort_name = spec.get("cohort") or pretrain
        if cohort_name is None:
            raise GenbrainInputError(f"config: '{key}': no cohort has role 'pretrain', whose "
                                     "hold-out the test images come from; add one or remove "
                                     "the task")
        if cohort_name not in cohorts:
            raise _unknown(f"{key}.cohort", cohort_name, list(cohorts), "a cohort, one of")
        if cohort_name != pretrain:
            raise GenbrainInputError(
                f"config: '{key}.cohort' is '{cohort_name}'; the test images are the "
                f"pretraining cohort's hold-out (results/pretrain/split.tsv), so the cohort must "
                f"be the pretraining cohort{f' {pretrain!r}' if pretrain else ' (none is set)'}")
        cohort = cohorts[cohort_name]
        modality = spec.get("modality", "T1w")
        if modality not in cohort.modalities:
            raise _unknown(f"{key}.modality", modality, cohort.modalities,
                           f"a modality of cohort '{cohort_name}', one of")
        methods = tuple(spec.get("methods", METHODS))
        for m in methods:
            if m not in METHODS:
                raise _unknown(f"{key}.methods", m, METHODS, "methods among")
        if len(set(methods)) != len(methods):
            raise GenbrainInputError(f"config: '{key}.methods' lists a method twice: "
                                     f"{list(methods)}")
        metrics = tuple(spec.get("metrics", IMAGE_METRICS))
        for m in metrics:
            if m not in IMAGE_METRICS:
                raise _unknown(f"{key}.metrics", m, IMAGE_METRICS, "image metrics among")
        split = holdout_split(cohort.table, float(config["pretrain"]["holdout_fraction"]), seed)
        n_hold = int((split["split"] == "holdout").sum())
        n_train_all = int((split["split"] == "train").sum())
        cap = spec.get("n_test")
        n_test = n_hold if cap is None else min(int(cap), n_hold)
        if n_test < MIN_TEST:
            raise GenbrainInputError(
                f"config: '{key}.n_test': {n_test} test image(s) (the pretraining hold-out of "
                f"'{cohort_name}' holds {n_hold}); paired tests and CIs need at least {MIN_TEST}")
        trains = any(m in TRAINED for m in methods)
        cap = spec.get("n_train")
        n_train = (n_train_all if cap is None else min(int(cap), n_train_all)) if trains else 0
        if trains and n_train < 1:
            raise GenbrainInputError(f"config: '{key}.n_train' is {cap}; methods "
                                     f"{[m for m in methods if m in TRAINED]} need training "
                                     "images")
        n_examples = spec.get("n_examples")
        n_examples = min(3, n_test) if n_examples is None else int(n_examples)
        if not 1 <= n_examples <= n_test:
            raise GenbrainInputError(f"config: '{key}.n_examples' is {n_examples}; expected "
                                     f"1..{n_test} (the test images)")
        out[name] = ImagingTask(
            task=name, kind=kind, cohort=cohort_name, modality=modality, n_test=n_test,
            n_train=n_train, methods=methods,
            corrupt=_corrupt_spec(spec.get("corrupt"), f"{key}.corrupt", seed),
            unet=_unet_spec(spec.get("unet"), f"{key}.unet", seed), metrics=metrics,
            n_examples=n_examples, n_boot=int(section.get("n_boot", 1000)), seed=seed)
    return out


def select_participants(ids: Sequence[str], n: int, seed: int, task: str) -> list[str]:
    """``n`` of ``ids`` (all when fewer), ranked by the seeded key
    ``seed_of(seed, name_seed(task), name_seed(id))``, returned sorted: independent of the
    order of ``ids`` and of which other ids are there, and nested in ``n``."""
    ids = sorted({str(i) for i in ids})
    ranked = sorted(ids, key=lambda i: seed_of(int(seed), name_seed(task), name_seed(i)))
    return sorted(ranked[:n])


# ---------------------------------------------------------------- the pairs step


def load_clean(index: str | Path, modality: str, participants: Sequence[str]) -> np.ndarray:
    """The clean images of ``participants`` (in that order) from a store -> float32 (n, V)
    mapped to [0, 1] over the brain voxels; one line naming the participant without one."""
    from genbrain.imaging.metrics import normalise_01
    from genbrain.store import ImageStore

    store = ImageStore(index, modalities=[modality], participants=participants)
    pos = {p: i for i, p in enumerate(store.table["participant_id"].astype(str))}
    missing = [p for p in participants if p not in pos]
    if missing:
        raise GenbrainInputError(f"{index}: participant '{missing[0]}' has no {modality} image "
                                 f"({len(missing)} missing)")
    x = store.batch([pos[p] for p in participants])
    return normalise_01(x).astype(np.float32)


def make_pairs(task: ImagingTask, index: str | Path, split: str | Path,
               out: Mapping[str, str]) -> pd.DataFrame:
    """Write a task's pairs: ``out['images']`` (participant_id, set = test/train, row, site,
    age, sex), ``test_target`` / ``test_source`` (n_test, V) and ``train_target`` /
    ``train_source`` (n_train, V; (0, V) when no method trains) as float32 .npy, and
    ``out['corruption']``, the draws per image (:data:`genbrain.imaging.corrupt.TABLE_COLUMNS`
    with ``set``). Returns the images table."""
    from genbrain.imaging.corrupt import corrupt_vectors
    from genbrain.io import read_tsv, save_npy, save_tsv
    from genbrain.splits import split_ids

    table = read_tsv(split)
    picked = {"test": select_participants(split_ids(table, "holdout"), task.n_test, task.seed,
                                          task.task),
              "train": select_participants(split_ids(table, "train"), task.n_train, task.seed,
                                           task.task) if task.n_train else []}
    if len(picked["test"]) != task.n_test or len(picked["train"]) != task.n_train:
        raise GenbrainInputError(f"{split}: {len(picked['test'])} hold-out and "
                                 f"{len(picked['train'])} training participants; the plan of "
                                 f"imaging task '{task.task}' was made for {task.n_test} and "
                                 f"{task.n_train} (was the participants table edited? rerun)")
    settings = task.corruption()
    info = table.set_index(table["participant_id"].astype(str))
    images, draws, n_voxels = [], [], 0
    for which, ids in picked.items():  # test first: it sets V for an empty training set
        clean = (load_clean(index, task.modality, ids) if ids
                 else np.zeros((0, n_voxels), np.float32))
        n_voxels = clean.shape[1]
        source = clean
        if ids:
            source, drawn = corrupt_vectors(clean, ids, settings)
            drawn.insert(1, "set", which)
            draws.append(drawn)
        log.info("%s: %d %s images corrupted", task.task, len(ids), which)
        save_npy(clean, out[f"{which}_target"])
        save_npy(source, out[f"{which}_source"])
        images.append(pd.DataFrame({"participant_id": ids, "set": which,
                                    "row": np.arange(len(ids)),
                                    "site": info.loc[ids, "site"].to_numpy() if ids else [],
                                    "age": info.loc[ids, "age"].to_numpy() if ids else [],
                                    "sex": info.loc[ids, "sex"].to_numpy() if ids else []}))
    images_t = pd.concat(images, ignore_index=True)
    save_tsv(images_t, out["images"])
    save_tsv(pd.concat(draws, ignore_index=True), out["corruption"])
    return images_t


# ---------------------------------------------------------------- methods


def predict(task: ImagingTask, method: str, pairs: Mapping[str, str]) -> np.ndarray:
    """One method's predictions of the test targets -> float32 (n_test, V), from the pairs'
    .npy files (``pairs``: test_source, train_source, train_target)."""
    from genbrain.imaging import baselines as bl

    if method not in task.methods:
        raise GenbrainInputError(f"imaging task '{task.task}': method '{method}' is not among "
                                 f"its methods {list(task.methods)}")
    source = np.load(pairs["test_source"])
    if method == "mean":
        mean = bl.population_mean(np.load(pairs["train_target"], mmap_mode="r"))
        return np.array(bl.predict_mean(mean, len(source)))
    if method == "nlmeans":
        return bl.nlmeans_vectors(source)
    # unet: trained on the training pairs, then applied to the test sources
    model = bl.UNetBaseline.fit(np.load(pairs["train_source"]), np.load(pairs["train_target"]),
                                task.unet_settings())
    losses = model.losses
    log.info("%s unet: %d steps, loss %.4f (first 10 steps) -> %.4f (last 10)", task.task,
             len(losses), losses[:10].mean(), losses[-10:].mean())
    return model.predict(source)


# ---------------------------------------------------------------- scores

SUMMARY_COLUMNS = ["task", "method", "metric", "n", "mean", "ci_low", "ci_high", "baseline",
                   "mean_difference", "difference_ci_low", "difference_ci_high", "t", "p"]


def score_task(task: ImagingTask, test_source: np.ndarray, test_target: np.ndarray,
               predictions: Mapping[str, np.ndarray], subjects: Sequence[str]
               ) -> dict[str, pd.DataFrame]:
    """Score every method's (n, V) predictions and the corrupted input (method ``input``)
    against the clean targets -> {"scores": one row per (method, subject, metric): task,
    method, subject, metric, value; "summary": per (method, metric) the mean with its
    bootstrap CI and, against ``input``, the mean paired difference with its bootstrap CI
    and the paired two-sided t-test (:data:`SUMMARY_COLUMNS`)}.

    The bootstrap resamples subjects (``task.n_boot``, seeded by ``task.seed``), the same
    resamples for every method, so their CIs are paired."""
    from genbrain.imaging.metrics import bootstrap_mean_ci, paired_tests, score_batch

    runs = {INPUT: test_source, **predictions}
    scores = pd.concat([score_batch(p, test_target, subjects, task.metrics, task=task.task,
                                    method=m) for m, p in runs.items()], ignore_index=True)
    rows = []
    wide = scores.pivot_table(index=["metric", "subject"], columns="method", values="value",
                              aggfunc="first")
    tests = paired_tests(scores, INPUT).set_index(["metric", "method"])
    for method in runs:
        for metric in task.metrics:
            v = wide.loc[metric, method].to_numpy(np.float64)
            m, lo, hi = bootstrap_mean_ci(v, task.n_boot, seed=task.seed)
            row = {"task": task.task, "method": method, "metric": metric,
                   "n": int(np.isfinite(v).sum()), "mean": m, "ci_low": lo, "ci_high": hi,
                   "baseline": INPUT}
            if method == INPUT:
                row.update(mean_difference=0.0, difference_ci_low=np.nan,
                           difference_ci_high=np.nan, t=np.nan, p=np.nan)
            else:
                d = v - wide.loc[metric, INPUT].to_numpy(np.float64)
                md, dlo, dhi = bootstrap_mean_ci(d, task.n_boot, seed=task.seed)
                t = tests.loc[(metric, method)]
                row.update(mean_difference=md, difference_ci_low=dlo, difference_ci_high=dhi,
                           t=float(t["t"]), p=float(t["p"]))
            rows.append(row)
    return {"scores": scores, "summary": pd.DataFrame(rows, columns=SUMMARY_COLUMNS)}


def scores_outputs(task: ImagingTask, pairs: Mapping[str, str], predictions: Sequence[str],
                   out: Mapping[str, str]) -> None:
    """Read a task's pairs and predictions (in ``task.methods`` order), write ``out['scores']``
    and ``out['summary']`` (:func:`score_task`)."""
    from genbrain.io import read_tsv, save_tsv

    images = read_tsv(pairs["images"])
    subjects = images.loc[images["set"] == "test", "participant_id"].astype(str).tolist()
    target = np.load(pairs["test_target"])
    preds = {}
    for method, path in zip(task.methods, predictions):
        p = np.load(path)
        if p.shape != target.shape:
            raise GenbrainInputError(f"{path}: predictions of shape {p.shape}; the task's test "
                                     f"targets are {target.shape}")
        preds[method] = p
    res = score_task(task, np.load(pairs["test_source"]), target, preds, subjects)
    save_tsv(res["scores"], out["scores"])
    save_tsv(res["summary"], out["summary"])


def figure_outputs(task: ImagingTask, pairs: Mapping[str, str], predictions: Sequence[str],
                   scores: str, summary: str, out: Mapping[str, str]) -> None:
    """The task's figures: ``out['examples']`` (input, each method, target on the same slices
    of ``task.n_examples`` test images) and ``out['metrics']`` (per metric, each method's
    per-image values with the mean and its 95% CI, from the score tables)."""
    from genbrain.imaging import figures as fg
    from genbrain.io import read_tsv

    images = read_tsv(pairs["images"])
    test = images[images["set"] == "test"].reset_index(drop=True)
    summ = read_tsv(summary)
    # the examples: the test images with the lowest, median and highest input PSNR, so the
    # figure shows the range of corruption, not a chosen best case
    sc = read_tsv(scores)
    metric = "psnr" if "psnr" in task.metrics else task.metrics[0]
    by = sc[(sc["method"] == INPUT) & (sc["metric"] == metric)].sort_values("value")
    pos = np.linspace(0, len(by) - 1, task.n_examples).round().astype(int)
    ids = list(dict.fromkeys(by["subject"].astype(str).iloc[pos]))
    rows = [int(test.index[test["participant_id"].astype(str) == i][0]) for i in ids]
    panels = {"input": np.load(pairs["test_source"], mmap_mode="r")[rows]}
    for method, path in zip(task.methods, predictions):
        panels[method] = np.load(path, mmap_mode="r")[rows]
    panels["target"] = np.load(pairs["test_target"], mmap_mode="r")[rows]
    fg.examples(panels, ids, out["examples"],
                title=f"{task.task}: {task.modality} {task.kind}, test images with the "
                      f"lowest to highest input {metric.upper()}")
    fg.metric_distributions(sc, summ, out["metrics"], methods=[INPUT, *task.methods],
                            title=f"{task.task}: image metrics against the clean "
                                  f"{task.modality} ({task.n_test} test images)")
