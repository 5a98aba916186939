"""The image-level stage (paper Figs. 3-4, Methods "Image enhancement" and "Cross-modality
synthesis"): per task, the hold-out images and their sources, each method's predictions of the
targets, and their scores.

A task (config ``imaging.tasks.<name>``, :class:`ImagingTask`) names a cohort, a target
modality and a kind:

- ``enhancement``: the source is the target corrupted (:mod:`genbrain.imaging.corrupt`:
  k-space rigid motion and Gaussian + Rician noise, drawn per image from the config's seed);
- ``synthesis``: the source is the same participant's image of another modality (``source``,
  e.g. T1w -> FLAIR), from the same store, mapped to [0, 1] the same way; nothing is
  corrupted (``corruption.tsv`` keeps its header only). ``source`` may list several
  modalities (rest -> task, the DeepTaskGen problem: ``source: [fc01, fc02, fc03]`` ->
  ``task_faces``): every one is an input channel of the U-Net and the DiT, in that order.

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
training target), ``nlmeans`` (non-local means of the corrupted image; enhancement only),
``unet`` (a MONAI 3D U-Net trained on the training pairs), and on synthesis tasks the DiT:
``genbrain`` (the pretrained model fine-tuned image-conditioned, ``sources`` = the task's,
``modalities: [target]``, on the task's training participants) and ``scratch`` (the same DiT
architecture from a random initialisation, the same data, steps and seed: the paper's
"pretraining helps" control). Both train through the fine-tuning stage's own job
(:func:`genbrain.finetune.run_finetune`, wired by ``rules/imaging.smk``; this stage imports no
other stage) and are sampled by :func:`dit_predictions`: DDIM from the ``synthesize``
section's sampler, conditioned on each test participant's source image (and age and sex with
``demographics``), ``k`` samples averaged, then mapped to [0, 1] like the pairs. The GenBrain
method of enhancement (fine-tuned on corrupted -> clean) is not here yet: its corrupted
sources are not in a store.
Scores: per test image and method the image metrics against the target, the method's input
itself scored as method ``input`` (the corrupted image; for synthesis the source image as if
it were the target: the floor of copying the input, which shows how far apart the two
modalities are; with several sources, the mean of their [0, 1] images, :func:`input_image`);
a summary with bootstrap CIs and paired t-tests against ``input``, and for
``genbrain`` against every other method too (:func:`score_task`).

:func:`plan_imaging` runs at DAG build time: a config mistake is one line naming the key.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.imaging.baselines import UNetSettings
from genbrain.imaging.corrupt import CorruptionSettings
from genbrain.imaging.metrics import IDENTIFIABILITY_METRICS, IMAGE_METRICS, MAP_METRICS
from genbrain.seeds import name_seed, seed_of
from genbrain.splits import holdout_split
from genbrain.training.config import FINETUNE_KEYS, NOT_IMAGING_KEYS

log = logging.getLogger(__name__)

KINDS = ("enhancement", "synthesis")
#: the methods a task can compare; ``input`` (the corrupted or source image itself) is always
#: scored
METHODS = ("mean", "nlmeans", "unet", "genbrain", "scratch")
#: the methods ``imaging_method`` predicts with (the DiT's come from its fine-tune and sampler)
BASELINES = ("mean", "nlmeans", "unet")
#: the DiT methods: fine-tuned from the pretrained model, and the same DiT from random weights
DIT_METHODS = ("genbrain", "scratch")
#: the methods of each kind (and its default ``methods``)
KIND_METHODS = {"enhancement": ("mean", "nlmeans", "unet"),
                "synthesis": ("mean", "unet", "genbrain", "scratch")}
#: why a method is refused on a kind (config key ``methods``)
REFUSED = {("synthesis", "nlmeans"): "non-local means denoises its input, and a synthesis "
                                     "task's input is another modality",
           ("enhancement", "genbrain"): "the GenBrain method of enhancement (a fine-tune on "
                                        "corrupted -> clean pairs) is not implemented yet "
                                        "(issue 30)",
           ("enhancement", "scratch"): "the DiT-from-scratch control of enhancement is not "
                                       "implemented yet (issue 30)"}
#: methods that learn from the training pairs
TRAINED = ("mean", "unet", "genbrain", "scratch")
#: the method compared with every other method of its task too (not only with ``input``)
COMPARED = "genbrain"
INPUT = "input"
#: TrainConfig keys an image task's DiT fine-tunes (``genbrain`` and ``scratch`` alike) may
#: set under ``train``: a fine-tune's keys (genbrain.training.config.FINETUNE_KEYS) but the
#: seed (the top-level one), the fine-tuning mode and the label heads' (there are none)
TRAIN_KEYS = tuple(k for k in FINETUNE_KEYS if k not in NOT_IMAGING_KEYS)
#: the metrics a task may list (``metrics``): the image metrics and the DeepTaskGen map
#: metrics (own r, identified, Dice AUC); with ``identifiability`` (the default) ``r`` and
#: ``identified`` come from the correlation matrix whether listed or not
SCORED_METRICS = IMAGE_METRICS + MAP_METRICS
#: the voxels the memory estimate of the scores step assumes (FSL's 2 mm brain mask)
N_VOXELS = 228_483
#: paired tests and bootstrap CIs need at least this many test images
MIN_TEST = 2
#: the age/sex similarity's default and least minimum of test images (a t-map needs 3; with
#: fewer than ~20 its cosine is mostly noise)
BIOLOGY_MIN_N = 20
MIN_SIMILARITY_N = 3
#: the real targets' row of the similarity table (the paper's "real" 0.97 / 0.91)
TARGET = "target"


@dataclass(frozen=True)
class ImagingTask:
    """One image-level task.

    ``task``: its name (``results/imaging/<task>/``); ``kind``: :data:`KINDS`; ``cohort``,
    ``modality``: whose images and which (the target); ``sources``: the source modalities of a
    synthesis task, in the config's order (empty for enhancement); ``n_test`` / ``n_train``: the
    images used (after the caps; ``n_train`` is 0 when no method trains); ``methods``:
    :data:`METHODS` in the config's order; ``corrupt`` / ``unet``: the settings' fields (seed
    included); ``metrics``: names of :data:`SCORED_METRICS`; ``n_examples``:
    test images in the figure; ``n_boot``: bootstrap resamples of the summary's CIs; ``k``: DiT
    samples averaged per test image; ``demographics``: the DiT is conditioned on age and sex
    too; ``train``: the DiT fine-tunes' TrainConfig keys (:data:`TRAIN_KEYS`);
    ``identifiability``: score the identifiability metrics
    (:data:`genbrain.imaging.metrics.IDENTIFIABILITY_METRICS`) too;
    ``biology_min_n``: the age/sex similarity is computed only with at least this many test
    images (below, its rows say so)."""

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
    sources: tuple[str, ...] = ()
    k: int = 5
    demographics: bool = True
    train: Mapping = field(default_factory=dict)
    identifiability: bool = True
    biology_min_n: int = 20

    TUPLES = ("methods", "metrics", "sources")

    @property
    def out_dir(self) -> str:
        return f"results/imaging/{self.task}"

    @property
    def source_label(self) -> str:
        """The sources for titles and logs: ``T1w``, ``fc01 + fc02 + fc03``."""
        return " + ".join(self.sources)

    @property
    def pixel_metrics(self) -> tuple[str, ...]:
        """The metrics :func:`score_task` scores per image pair: ``metrics`` without those the
        identifiability matrices give anyway (``r``, ``identified`` with ``identifiability``)."""
        skip = IDENTIFIABILITY_METRICS if self.identifiability else ()
        return tuple(m for m in self.metrics if m not in skip)

    def scores_mem_mb(self, n_voxels: int = N_VOXELS) -> int:
        """Memory (MB) the scores step needs, from n_test: the targets and every method's
        predictions held as float32 ((1 + methods) x 4 n V bytes; the sources are memory-mapped
        and reduced to the input image, one more), and the largest transient, the
        identifiability matrix's float64 copies (targets, predictions, both centred and scaled,
        one temporary: 5 x 8 n V; the per-image metrics' [0, 1] copies take no more), plus
        1 GB for the interpreter, torch, MONAI and scikit-image. 500 test images with 4 methods:
        ~8 GB (the float64 copies alone 4.6 GB)."""
        n = int(self.n_test) * int(n_voxels)
        held = (2 + len(self.methods)) * 4 * n
        transient = 5 * 8 * n
        return int(np.ceil((held + transient) / 2**20)) + 1024

    @property
    def dit_methods(self) -> tuple[str, ...]:
        """The task's DiT methods (fine-tuned and sampled by their own rules)."""
        return tuple(m for m in self.methods if m in DIT_METHODS)

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
        d["corrupt"], d["unet"], d["train"] = dict(self.corrupt), dict(self.unet), dict(self.train)
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
        sources = _sources(spec, key, kind, modality, cohort, cohort_name)
        if kind == "synthesis" and spec.get("corrupt"):
            raise GenbrainInputError(f"config: '{key}.corrupt': a synthesis task corrupts "
                                     "nothing (its source is another modality); remove the key")
        methods = tuple(spec.get("methods", KIND_METHODS[kind]))
        for m in methods:
            if m not in METHODS:
                raise _unknown(f"{key}.methods", m, METHODS, "methods among")
            if (kind, m) in REFUSED:
                raise GenbrainInputError(f"config: '{key}.methods' has '{m}' on a task of kind "
                                         f"'{kind}': {REFUSED[(kind, m)]}; expected some of "
                                         f"{list(KIND_METHODS[kind])}")
        if len(set(methods)) != len(methods):
            raise GenbrainInputError(f"config: '{key}.methods' lists a method twice: "
                                     f"{list(methods)}")
        k = int(spec.get("k", 5))
        if k < 1:
            raise GenbrainInputError(f"config: '{key}.k' is {k}; expected the number of DiT "
                                     "samples averaged per test image, an integer >= 1")
        train = _train_spec(spec.get("train"), f"{key}.train")
        metrics = tuple(spec.get("metrics", IMAGE_METRICS))
        for m in metrics:
            if m not in SCORED_METRICS:
                raise _unknown(f"{key}.metrics", m, SCORED_METRICS, "metrics among")
        if len(set(metrics)) != len(metrics):
            raise GenbrainInputError(f"config: '{key}.metrics' lists a metric twice: "
                                     f"{list(metrics)}")
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
        identifiability = spec.get("identifiability", True)
        if not isinstance(identifiability, bool):
            raise GenbrainInputError(f"config: '{key}.identifiability' is {identifiability!r}; "
                                     "expected true or false")
        min_n = spec.get("biology_min_n", BIOLOGY_MIN_N)
        if isinstance(min_n, bool) or not isinstance(min_n, int) or min_n < MIN_SIMILARITY_N:
            raise GenbrainInputError(f"config: '{key}.biology_min_n' is {min_n!r}; expected an "
                                     f"integer >= {MIN_SIMILARITY_N} (the fewest test images "
                                     "the age/sex similarity is computed from)")
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
            n_examples=n_examples, n_boot=int(section.get("n_boot", 1000)), seed=seed,
            sources=sources, k=k, demographics=bool(spec.get("demographics", True)),
            train=train, identifiability=identifiability, biology_min_n=int(min_n))
    return out


def _sources(spec: Mapping, key: str, kind: str, modality: str, cohort, cohort_name: str
             ) -> tuple[str, ...]:
    """A synthesis task's source modalities (``source``: one name or a list; checked: each one
    of the cohort's, none the target, none twice), in the config's order; () for enhancement,
    which takes none."""
    source = spec.get("source")
    if kind != "synthesis":
        if source is not None:
            raise GenbrainInputError(f"config: '{key}.source' is {source!r} on a task of kind "
                                     f"'{kind}', whose source is its target corrupted; remove "
                                     "the key or set kind: synthesis")
        return ()
    if source is None or (isinstance(source, (list, tuple)) and not source):
        raise GenbrainInputError(f"config: '{key}.source': a synthesis task needs the source "
                                 f"modality it maps to '{modality}', or a list of them (of "
                                 f"cohort '{cohort_name}'s {list(cohort.modalities)})")
    names = [source] if isinstance(source, str) else source
    if not isinstance(names, (list, tuple)) or not all(isinstance(m, str) for m in names):
        raise GenbrainInputError(f"config: '{key}.source' is {source!r}; expected a modality "
                                 "name or a list of modality names")
    for m in names:
        if m not in cohort.modalities:
            raise _unknown(f"{key}.source", m, cohort.modalities,
                           f"a modality of cohort '{cohort_name}', one of")
    if modality in names:
        raise GenbrainInputError(f"config: '{key}.source' is '{modality}', the task's target "
                                 "modality too; a synthesis task maps its sources to another "
                                 "modality")
    twice = sorted({m for m in names if names.count(m) > 1})
    if twice:
        raise GenbrainInputError(f"config: '{key}.source' lists '{twice[0]}' twice: "
                                 f"{list(names)}; each source is one input channel")
    return tuple(str(m) for m in names)


def _train_spec(spec: Mapping | None, key: str) -> dict:
    """The DiT fine-tunes' TrainConfig keys (:data:`TRAIN_KEYS`), checked by name; the values
    are checked by TrainConfig when the job starts."""
    spec = dict(spec or {})
    for k in spec:
        if k not in TRAIN_KEYS:
            reason = {"seed": "the top-level 'seed' seeds it",
                      "label_tokens": "the task has no label head"}.get(k)
            if reason:
                raise GenbrainInputError(f"config: '{key}.{k}': {reason}; remove this key")
            raise _unknown(f"{key}.{k}", k, TRAIN_KEYS, "a training setting, one of")
    return spec


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
    ``train_source`` (n_train, V; (0, V) when no method trains) as float32 .npy in [0, 1]
    (the source: the target corrupted, or for synthesis the ``source`` modality's image; with
    K >= 2 sources, (n, K, V), channel j the j-th of ``task.sources``, written one channel at
    a time into the memory-mapped file so a cohort's 15 FC maps are never all in memory), and
    ``out['corruption']``, the draws per image (:data:`genbrain.imaging.corrupt.TABLE_COLUMNS`
    with ``set``; the header only for synthesis). Returns the images table."""
    from genbrain.imaging.corrupt import TABLE_COLUMNS, corrupt_vectors
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
    images, n_voxels = [], 0
    draws = [pd.DataFrame(columns=[TABLE_COLUMNS[0], "set", *TABLE_COLUMNS[1:]])]
    for which, ids in picked.items():  # test first: it sets V for an empty training set
        clean = (load_clean(index, task.modality, ids) if ids
                 else np.zeros((0, n_voxels), np.float32))
        n_voxels = clean.shape[1]
        source = clean
        if task.kind == "synthesis" and len(task.sources) > 1:
            save_npy(clean, out[f"{which}_target"])
            _save_sources(index, task.sources, ids, n_voxels, out[f"{which}_source"])
            log.info("%s: %d %s %s -> %s pairs", task.task, len(ids), which, task.source_label,
                     task.modality)
            source = None
        elif ids and task.kind == "synthesis":  # the same participants' other modality
            source = load_clean(index, task.sources[0], ids)
            log.info("%s: %d %s %s -> %s pairs", task.task, len(ids), which, task.sources[0],
                     task.modality)
        elif ids:
            source, drawn = corrupt_vectors(clean, ids, settings)
            drawn.insert(1, "set", which)
            draws.append(drawn)
            log.info("%s: %d %s images corrupted", task.task, len(ids), which)
        if source is not None:
            save_npy(clean, out[f"{which}_target"])
            save_npy(source, out[f"{which}_source"])
        images.append(pd.DataFrame({"participant_id": ids, "set": which,
                                    "row": np.arange(len(ids)),
                                    "site": info.loc[ids, "site"].to_numpy() if ids else [],
                                    "age": info.loc[ids, "age"].to_numpy() if ids else [],
                                    "sex": info.loc[ids, "sex"].to_numpy() if ids else []}))
    images_t = pd.concat(images, ignore_index=True)
    save_tsv(images_t, out["images"])
    # synthesis: the header only (nothing is corrupted)
    save_tsv(pd.concat(draws, ignore_index=True) if len(draws) > 1 else draws[0],
             out["corruption"])
    return images_t


def _save_sources(index: str | Path, sources: Sequence[str], ids: Sequence[str],
                  n_voxels: int, path: str | Path) -> None:
    """The K ``sources`` images of ``ids`` as one float32 (n, K, V) .npy in [0, 1], written
    atomically one channel at a time (memory: one channel's (n, V))."""
    from genbrain.io import atomic_path, save_npy

    if not len(ids):  # no training set: nothing to map
        save_npy(np.zeros((0, len(sources), n_voxels), np.float32), path)
        return
    with atomic_path(path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32,
                                        shape=(len(ids), len(sources), n_voxels))
        for j, m in enumerate(sources):
            arr[:, j] = load_clean(index, m, ids)
        arr.flush()
        del arr


def input_image(source: np.ndarray) -> np.ndarray:
    """The image scored as method ``input``: the source itself (n, V) (the corrupted image, a
    single-source synthesis task's source), or for K sources (n, K, V) the mean of their [0, 1]
    images (float32 (n, V)): what copying the input gives, channel-blind, one channel at a time
    (``source`` may be memory-mapped)."""
    if source.ndim == 2:
        return np.asarray(source)
    out = np.zeros((source.shape[0], source.shape[2]), np.float64)
    for j in range(source.shape[1]):
        out += source[:, j]
    return (out / source.shape[1]).astype(np.float32)


# ---------------------------------------------------------------- methods


def predict(task: ImagingTask, method: str, pairs: Mapping[str, str]) -> np.ndarray:
    """One method's predictions of the test targets -> float32 (n_test, V), from the pairs'
    .npy files (``pairs``: test_source, train_source, train_target)."""
    from genbrain.imaging import baselines as bl

    if method not in task.methods:
        raise GenbrainInputError(f"imaging task '{task.task}': method '{method}' is not among "
                                 f"its methods {list(task.methods)}")
    # memory-mapped: a rest -> task U-Net's 500 test and 1,000 training pairs of 15 sources
    # are 21 GB; each method reads them a row or a batch at a time
    source = np.load(pairs["test_source"], mmap_mode="r")
    if method == "mean":
        mean = bl.population_mean(np.load(pairs["train_target"], mmap_mode="r"))
        return np.array(bl.predict_mean(mean, len(source)))
    if method == "nlmeans":
        return bl.nlmeans_vectors(source)
    # unet: trained on the training pairs, then applied to the test sources
    model = bl.UNetBaseline.fit(np.load(pairs["train_source"], mmap_mode="r"),
                                np.load(pairs["train_target"], mmap_mode="r"),
                                task.unet_settings())
    losses = model.losses
    log.info("%s unet: %d steps, loss %.4f (first 10 steps) -> %.4f (last 10)", task.task,
             len(losses), losses[:10].mean(), losses[-10:].mean())
    return model.predict(source)


def training_participants(images: str | Path, out_tsv: str | Path) -> pd.DataFrame:
    """The DiT fine-tunes' training set: the task's training participants (``set == train``
    of the pairs' ``images.tsv``) as (participant_id, site, split = train), the table the
    fine-tuning job and the memorisation audit read. One line when there are none."""
    from genbrain.io import read_tsv, save_tsv

    t = read_tsv(images)
    train = t[t["set"] == "train"]
    if train.empty:
        raise GenbrainInputError(f"{images}: no training participants (set == train); the DiT "
                                 "methods fine-tune on them")
    out = pd.DataFrame({"participant_id": train["participant_id"].astype(str).to_numpy(),
                        "site": train["site"].to_numpy(), "split": "train"})
    save_tsv(out, out_tsv)
    return out


def dit_predictions(task: ImagingTask, checkpoint: str | Path, index: str | Path,
                    images: str | Path, sampling: Mapping, registry=None) -> np.ndarray:
    """A DiT method's predictions of the test targets -> float32 (n_test, V) in [0, 1].

    Each test participant (``images.tsv``, ``set == test``, in row order) gets one covariate row
    (``synthetic_id`` = its row, its age and sex, ``modality`` = the target) and its ``sources``
    images (K channels, the task's order) from the store (the store's normalised units, which
    the model was trained on; not the pairs' [0, 1] copy);
    :func:`genbrain.sampling.sample_table` draws ``task.k`` DDIM samples per row with
    ``sampling`` (:class:`~genbrain.sampling.SamplingConfig` keys: the ``synthesize`` section's
    steps, guidance, weights and the top-level seed) and averages them. Row i's initial noise is
    seeded by (seed, i, j) whichever model draws it, so ``genbrain`` and ``scratch`` start from
    identical noise: their paired difference is the models', not the draws'. The average is
    mapped to [0, 1] over the brain (:func:`genbrain.imaging.metrics.normalise_01`) as the pairs
    are."""
    from genbrain.imaging.metrics import normalise_01
    from genbrain.io import read_tsv
    from genbrain.modalities import DEFAULT_REGISTRY
    from genbrain.sampling import SamplingConfig, sample_table, source_images
    from genbrain.store import ImageStore
    from genbrain.training.checkpoints import load_for_sampling

    if task.kind != "synthesis":
        raise GenbrainInputError(f"imaging task '{task.task}': the DiT methods take a source "
                                 f"modality (kind synthesis), not kind {task.kind}")
    t = read_tsv(images)
    test = t[t["set"] == "test"].sort_values("row")
    ids = test["participant_id"].astype(str).tolist()
    if len(ids) != task.n_test:
        raise GenbrainInputError(f"{images}: {len(ids)} test participants; the plan of imaging "
                                 f"task '{task.task}' was made for {task.n_test} (rerun the "
                                 "pairs)")
    settings = SamplingConfig(**{**dict(sampling), "k": int(task.k)})
    model, norms, config = load_for_sampling(checkpoint, settings.weights)
    if list(config.sources or []) != list(task.sources):
        raise GenbrainInputError(f"{checkpoint}: the model takes source images "
                                 f"{list(config.sources or [])}; imaging task '{task.task}' "
                                 f"maps {task.source_label} -> {task.modality}")
    covariates = pd.DataFrame({"synthetic_id": np.arange(len(ids)), "participant_id": ids,
                               "age": test["age"].to_numpy(np.float64),
                               "sex": test["sex"].astype(str).to_numpy(),
                               "modality": task.modality})
    where = f"imaging task '{task.task}' test images"
    store = ImageStore(index, modalities=list(task.sources), participants=ids)
    sources = source_images(store, covariates, list(task.sources), where)  # (n, K, V)
    log.info("%s: %d test images, %d DDIM steps, k = %d samples averaged each", task.task,
             len(ids), settings.steps, settings.k)
    x = sample_table(model, norms, config, covariates, settings, registry or DEFAULT_REGISTRY,
                     where, sources=sources)  # (n, V) store units
    return normalise_01(x).astype(np.float32)


# ---------------------------------------------------------------- scores

SUMMARY_COLUMNS = ["task", "kind", "method", "metric", "n", "mean", "ci_low", "ci_high",
                   "baseline", "mean_difference", "difference_ci_low", "difference_ci_high",
                   "t", "p"]


def score_task(task: ImagingTask, test_source: np.ndarray, test_target: np.ndarray,
               predictions: Mapping[str, np.ndarray], subjects: Sequence[str]
               ) -> dict[str, pd.DataFrame]:
    """Score every method's (n, V) predictions and the input (method ``input``: the corrupted
    image, or a synthesis task's source image; ``test_source`` (n, V), or (n, K, V) for K
    sources, scored as their mean, :func:`input_image`) against the targets on
    ``task.metrics`` -> {"scores": one row per
    (method, subject, metric): task, method, subject, metric, value; "summary": per (method,
    metric, baseline) the mean with its bootstrap CI and the mean paired difference from the
    baseline with its bootstrap CI and the paired two-sided t-test (:data:`SUMMARY_COLUMNS`)}.
    Every method has a row against ``input`` (``input``'s own: difference 0, no test);
    :data:`COMPARED` (``genbrain``) also one against every other method of the task (the
    paper's "fine-tuned > from scratch > mean image").

    With ``task.identifiability`` the scores also hold, per image, the identifiability metrics
    (:func:`genbrain.imaging.metrics.identifiability`: own r, identified, r_gap) read off each
    method's (n, n) correlation matrix of targets (rows) with predictions (columns) over the
    brain voxels, returned as {"correlations": (len(runs), n, n) float32, "runs": the method
    names in its order (input first)}. Their bootstrap resamples the images with the matrix
    fixed (each image's identification is against all n predictions).

    The bootstrap resamples subjects (``task.n_boot``, seeded by ``task.seed``), the same
    resamples for every method, so their CIs are paired."""
    from genbrain.imaging.metrics import (
        bootstrap_mean_ci,
        correlation_matrix,
        identifiability,
        paired_tests,
        score_batch,
    )

    runs = {INPUT: input_image(test_source), **predictions}
    parts, corrs = [], []
    for m, p in runs.items():
        if task.pixel_metrics:
            parts.append(score_batch(p, test_target, subjects, task.pixel_metrics,
                                     task=task.task, method=m))
        if task.identifiability:
            c = correlation_matrix(test_target, p)  # (n, n): targets x predictions
            corrs.append(c.astype(np.float32))
            for name, v in identifiability(c).items():
                parts.append(pd.DataFrame({"task": task.task, "method": m,
                                           "subject": [str(x) for x in subjects],
                                           "metric": name, "value": v}))
    scores = pd.concat(parts, ignore_index=True)
    metrics = list(dict.fromkeys(scores["metric"]))
    rows = []
    wide = scores.pivot_table(index=["metric", "subject"], columns="method", values="value",
                              aggfunc="first")
    baselines = {m: [INPUT] + ([b for b in predictions if b != m] if m == COMPARED else [])
                 for m in runs}
    tests = pd.concat([paired_tests(scores, b) for b in dict.fromkeys(
        b for bs in baselines.values() for b in bs)], ignore_index=True)
    tests = tests.set_index(["metric", "method", "baseline"])
    for method in runs:
        for metric in metrics:
            v = wide.loc[metric, method].to_numpy(np.float64)
            m, lo, hi = bootstrap_mean_ci(v, task.n_boot, seed=task.seed)
            for base in baselines[method]:
                row = {"task": task.task, "kind": task.kind, "method": method,
                       "metric": metric, "n": int(np.isfinite(v).sum()), "mean": m,
                       "ci_low": lo, "ci_high": hi, "baseline": base}
                if method == base:
                    row.update(mean_difference=0.0, difference_ci_low=np.nan,
                               difference_ci_high=np.nan, t=np.nan, p=np.nan)
                else:
                    d = v - wide.loc[metric, base].to_numpy(np.float64)
                    md, dlo, dhi = bootstrap_mean_ci(d, task.n_boot, seed=task.seed)
                    t = tests.loc[(metric, method, base)]
                    row.update(mean_difference=md, difference_ci_low=dlo,
                               difference_ci_high=dhi, t=float(t["t"]), p=float(t["p"]))
                rows.append(row)
    n = len(test_target)
    return {"scores": scores, "summary": pd.DataFrame(rows, columns=SUMMARY_COLUMNS),
            "correlations": np.stack(corrs) if corrs else np.zeros((0, n, n), np.float32),
            "runs": list(runs) if corrs else []}


SIMILARITY_COLUMNS = ["task", "kind", "method", "effect", "n", "similarity", "ci_low",
                      "ci_high", "baseline", "difference", "difference_ci_low",
                      "difference_ci_high", "t", "p", "note"]


def reference_tmaps(index: str | Path, split: str | Path, modality: str) -> np.ndarray:
    """The reference t-maps (2, V; age, sex) of ``modality``: every training-split image of
    the pretraining cohort's store (store units), the reference cohort of the pretrained
    model's evaluation (:func:`genbrain.evaluate.similarity_tables`, the paper's "reference
    vectors established during the pre-training model evaluation")."""
    from genbrain.splits import split_ids
    from genbrain.stats.similarity import Cohort, tmaps
    from genbrain.store import ImageStore

    store = ImageStore(index)
    t = store.table
    sel = t[(t["modality"] == modality) & t["participant_id"].astype(str).isin(
        split_ids(split, "train"))]
    if len(sel) < MIN_SIMILARITY_N:
        raise GenbrainInputError(f"{index}: {len(sel)} training-split images of {modality}; "
                                 f"the reference cohort needs >= {MIN_SIMILARITY_N}")
    log.info("reference cohort: %d training-split %s images", len(sel), modality)
    return tmaps(Cohort.from_store(store, sel, label=f"{modality} reference cohort"))


def similarity_task(task: ImagingTask, runs: Mapping[str, np.ndarray], age: np.ndarray,
                    sex: Sequence, reference: np.ndarray | None) -> pd.DataFrame:
    """The age/sex similarity (paper Figs. 3-4, Methods "Image enhancement": the cosine of a
    test cohort's voxelwise age or sex t-map with the reference t-map) of every run (``runs``:
    name -> (n, V), e.g. target, input, each method) over the n test images -> a table with
    :data:`SIMILARITY_COLUMNS`, per (method, effect, baseline): the cosine of the n images'
    t-map, its subject-bootstrap percentile 95% CI (``task.n_boot`` resamples seeded by
    ``task.seed``, the same for every run, so differences are paired), and the difference
    from the baseline with its CI and the bootstrap t-test p (the paper's test). Every run
    has a row against :data:`TARGET` (the real targets, the paper's "real" 0.97 / 0.91), and
    :data:`COMPARED` against every other run too.

    With n < ``task.biology_min_n`` (or no ``reference``) nothing is computed: one row per
    (run, effect) against the target, values NaN, ``note`` saying why."""
    from genbrain.imaging.metrics import bootstrap_indices, similarity_draws
    from genbrain.stats.resampling import bootstrap_t_p
    from genbrain.stats.similarity import EFFECTS, sex_codes

    n = len(age)

    def ci(v: np.ndarray) -> tuple[float, float]:
        v = v[np.isfinite(v)]
        return tuple(np.percentile(v, (2.5, 97.5))) if len(v) else (np.nan, np.nan)

    base = {"task": task.task, "kind": task.kind}
    if n < task.biology_min_n or reference is None:
        note = (f"not computed: n_test {n} < biology_min_n {task.biology_min_n}"
                if n < task.biology_min_n else "not computed: no reference t-maps given")
        return pd.DataFrame([{**base, "method": m, "effect": e, "n": n, "baseline": TARGET,
                              "note": note} for m in runs for e in EFFECTS],
                            columns=SIMILARITY_COLUMNS)
    idx = bootstrap_indices(n, task.n_boot, task.seed)
    codes = sex_codes(sex, f"imaging task '{task.task}' test images")
    draws = {m: similarity_draws(x, np.asarray(age, np.float64), codes, reference, idx)
             for m, x in runs.items()}
    rows = []
    for m in runs:
        others = [TARGET] + ([b for b in runs if b not in (m, TARGET)] if m == COMPARED else [])
        for e in EFFECTS:
            point, d = draws[m][e]
            lo, hi = ci(d)
            # a zero t-map (e.g. the mean image, one image for all) has no direction
            note = "" if np.isfinite(point) else "undefined: the t-map is zero"
            for b in others:
                row = {**base, "method": m, "effect": e, "n": n, "similarity": point,
                       "ci_low": lo, "ci_high": hi, "baseline": b, "note": note}
                if b == m:
                    row.update(difference=0.0)
                else:
                    bpoint, bd = draws[b][e]
                    diff, dd = point - bpoint, d - bd
                    dlo, dhi = ci(dd)
                    fin = dd[np.isfinite(dd)]
                    sd = np.std(fin, ddof=1) if len(fin) > 1 else np.nan
                    row.update(difference=diff, difference_ci_low=dlo, difference_ci_high=dhi,
                               t=diff / sd if sd > 0 else np.nan, p=bootstrap_t_p(diff, dd))
                rows.append(row)
    return pd.DataFrame(rows, columns=SIMILARITY_COLUMNS)


def scores_outputs(task: ImagingTask, pairs: Mapping[str, str], predictions: Sequence[str],
                   out: Mapping[str, str], index: str | None = None,
                   split: str | None = None) -> None:
    """Read a task's pairs and predictions (in ``task.methods`` order), write ``out['scores']``
    and ``out['summary']`` (:func:`score_task`), ``out['correlations']`` (.npy, (runs, n, n):
    the identifiability matrices, input first, then ``task.methods``; (0, n, n) without
    identifiability) and ``out['similarity']`` (:func:`similarity_task`; the reference t-maps
    of the target modality from the store ``index`` and ``split``, only when n_test reaches
    ``task.biology_min_n``)."""
    from genbrain.io import read_tsv, save_npy, save_tsv

    images = read_tsv(pairs["images"])
    test = images[images["set"] == "test"].sort_values("row")
    subjects = test["participant_id"].astype(str).tolist()
    target = np.load(pairs["test_target"])
    preds = {}
    for method, path in zip(task.methods, predictions):
        p = np.load(path)
        if p.shape != target.shape:
            raise GenbrainInputError(f"{path}: predictions of shape {p.shape}; the task's test "
                                     f"targets are {target.shape}")
        preds[method] = p
    source = input_image(np.load(pairs["test_source"], mmap_mode="r"))  # (n, V)
    res = score_task(task, source, target, preds, subjects)
    save_tsv(res["scores"], out["scores"])
    save_tsv(res["summary"], out["summary"])
    if "correlations" in out:
        save_npy(res["correlations"], out["correlations"])
    if "similarity" in out:
        reference = (reference_tmaps(index, split, task.modality)
                     if len(subjects) >= task.biology_min_n and index and split else None)
        sim = similarity_task(task, {TARGET: target, INPUT: source, **preds},
                              test["age"].to_numpy(np.float64), test["sex"].tolist(), reference)
        save_tsv(sim, out["similarity"])


def figure_outputs(task: ImagingTask, pairs: Mapping[str, str], predictions: Sequence[str],
                   scores: str, summary: str, out: Mapping[str, str],
                   correlations: str | None = None) -> None:
    """The task's figures: ``out['examples']`` (input, each method, target on the same slices
    of ``task.n_examples`` test images), ``out['metrics']`` (per metric, each method's
    per-image values with the mean and its 95% CI, from the score tables) and, with
    ``correlations`` (the scores step's .npy), ``out['identifiability']`` (each method's
    targets x predictions correlation matrix)."""
    from genbrain.imaging import figures as fg
    from genbrain.io import read_tsv

    images = read_tsv(pairs["images"])
    test = images[images["set"] == "test"].reset_index(drop=True)
    summ = read_tsv(summary)
    summ = summ[summ["baseline"] == INPUT]  # one row per (method, metric)
    # the examples: the test images with the lowest, median and highest input PSNR, so the
    # figure shows the range of corruption, not a chosen best case
    sc = read_tsv(scores)
    metric = "psnr" if "psnr" in task.metrics else task.metrics[0]
    by = sc[(sc["method"] == INPUT) & (sc["metric"] == metric)].sort_values("value")
    pos = np.linspace(0, len(by) - 1, task.n_examples).round().astype(int)
    ids = list(dict.fromkeys(by["subject"].astype(str).iloc[pos]))
    rows = [int(test.index[test["participant_id"].astype(str) == i][0]) for i in ids]
    source = np.load(pairs["test_source"], mmap_mode="r")
    # several sources: each its own panel (the scored input is their mean)
    panels = ({"input": source[rows]} if source.ndim == 2 else
              {m: source[rows, j] for j, m in enumerate(task.sources)})
    for method, path in zip(task.methods, predictions):
        panels[method] = np.load(path, mmap_mode="r")[rows]
    panels["target"] = np.load(pairs["test_target"], mmap_mode="r")[rows]
    what = (f"{task.source_label} -> {task.modality} synthesis" if task.kind == "synthesis"
            else f"{task.modality} {task.kind}")
    fg.examples(panels, ids, out["examples"],
                title=f"{task.task}: {what}, test images with the lowest to highest input "
                      f"{metric.upper()}")
    if "identifiability" in out:
        fg.identifiability(np.load(correlations), [INPUT, *task.methods] if task.identifiability
                           else [], summ, out["identifiability"],
                           title=f"{task.task}: r of each real {task.modality} (rows) with each "
                                 f"prediction (columns), minus the row mean ({task.n_test} test "
                                 "images)")
    fg.metric_distributions(sc, summ, out["metrics"], methods=[INPUT, *task.methods],
                            title=f"{task.task}: image metrics against the "
                                  f"{'real' if task.kind == 'synthesis' else 'clean'} "
                                  f"{task.modality} ({task.n_test} test images)")
