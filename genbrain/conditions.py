"""What a model is conditioned on, and how a table becomes its labels: defined once.

Training (:class:`genbrain.training.data.VoxelDataset`, over store rows) and sampling
(:func:`genbrain.sampling.condition_labels`, over covariate rows) both call
:func:`encode_labels`, and the specification it reads, :class:`Conditions`, is built from the
run's :class:`~genbrain.training.config.TrainConfig` (saved in every checkpoint) and its label
scalings (``config.norms`` in the checkpoint). A new kind of condition is one entry here.

The labels of one image (each an (N,) array), as the DiT takes them:

- ``age``: years, z-scored with ``norms["age"]`` (mean, std over one value per participant of
  the pretraining cohort; fine-tunes inherit it so the pretrained age embedder keeps its
  meaning); ``sex``: M = 0, F = 1. Without ``demographics`` (image tasks: the paper conditions
  enhancement and cross-modality synthesis on the modality only) both are fed as their null
  values (standardised age 0, the null sex row 2) in training and sampling alike;
- ``modality``: the registry index (a store's own ``modality_index`` column in training);
- ``disease``: position of ``diagnosis`` in ``diagnosis_levels`` (fine-tunes with a disease
  head);
- ``score``: the ``score_column``, z-scored with ``norms["score"]`` (score heads).

What a model has seen: ``ranges`` (``config.ranges`` in the checkpoint) holds the smallest and
largest age and score of its training participants (a fine-tune's age range also spans its init
model's); :meth:`Conditions.training_ranges` gives them, or the training mean +/- 4 SD for a
checkpoint written before ranges were recorded, and the workflow refuses synthetic covariates
outside them (:func:`genbrain.covariates.check_ranges`) unless a cohort allows extrapolation.

Source images for image-conditioned tasks (``sources``: modalities paired by participant) are
not labels: they ride along as extra input channels (``x_cond``), dropped to zeros together
with the labels for classifier-free guidance (see :mod:`genbrain.model.dit`).

No torch here: the workflow checks covariate tables with it at DAG build time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from genbrain.covariates import SEXES, fail_at_first
from genbrain.errors import GenbrainInputError

NULL_SEX = len(SEXES)  # the DiT's sex table: M, F, then the null row
#: a condition's range, in SDs around its training mean, for checkpoints that record none
FALLBACK_SDS = 4.0


@dataclass(frozen=True)
class Conditions:
    """The conditions of one model (see the module docstring). ``norms`` maps ``age`` (and
    ``score``) to ``{"mean", "std"}``, ``ranges`` to ``{"min", "max"}`` seen in training."""

    norms: Mapping[str, Mapping[str, float]]
    demographics: bool = True
    diagnosis_levels: tuple[str, ...] | None = None
    score_column: str | None = None
    sources: tuple[str, ...] = field(default_factory=tuple)
    ranges: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    @classmethod
    def of(cls, config, norms: Mapping[str, Mapping[str, float]],
           ranges: Mapping[str, Mapping[str, float]] | None = None) -> Conditions:
        """The conditions of a run from its TrainConfig (or anything with the same
        attributes), its label scalings and the ranges it saw (None: not recorded)."""
        return cls(norms=norms, demographics=bool(getattr(config, "demographics", True)),
                   diagnosis_levels=tuple(config.diagnosis_levels)
                   if config.diagnosis_levels else None,
                   score_column=config.score_column,
                   sources=tuple(getattr(config, "sources", None) or ()),
                   ranges=dict(ranges or {}))

    @classmethod
    def from_record(cls, record: Mapping) -> Conditions:
        """The conditions of a checkpoint's ``config`` record (``train`` as a dict, ``norms``,
        ``ranges``), e.g. as :func:`genbrain.io.peek_checkpoint` reads it without torch."""
        train = record["train"]
        levels = train.get("diagnosis_levels")
        return cls(norms=record["norms"], demographics=bool(train.get("demographics", True)),
                   diagnosis_levels=tuple(levels) if levels else None,
                   score_column=train.get("score_column"),
                   sources=tuple(train.get("sources") or ()),
                   ranges=dict(record.get("ranges") or {}))

    def range_of(self, key: str) -> tuple[float, float, str]:
        """(low, high, where from) of condition ``key`` (``age``, ``score``): the values seen
        in training, else (a checkpoint that records none) the mean +/- FALLBACK_SDS SD of its
        scaling."""
        if key in self.ranges:
            r = self.ranges[key]
            return float(r["min"]), float(r["max"]), "seen in training"
        mean, std = float(self.norms[key]["mean"]), float(self.norms[key]["std"])
        return (mean - FALLBACK_SDS * std, mean + FALLBACK_SDS * std,
                f"the training mean +/- {FALLBACK_SDS:g} SD: the checkpoint records no range")

    def training_ranges(self) -> dict[str, tuple[float, float, str]]:
        """Table column -> :meth:`range_of` for every numeric condition (``age``, the score
        column)."""
        keys = [("age", "age")] * self.demographics
        keys += [("score", self.score_column)] * bool(self.score_column)
        return {col: self.range_of(key) for key, col in keys}

    @property
    def columns(self) -> list[str]:
        """Table columns the labels are read from (besides ``modality``)."""
        cols = ["age", "sex"] * self.demographics
        cols += ["diagnosis"] * bool(self.diagnosis_levels)
        cols += [self.score_column] * bool(self.score_column)
        return cols

    def describe(self) -> dict[str, object]:
        """What a release sidecar records: every condition the model uses."""
        out: dict[str, object] = {"modality": "registry index"}
        ranges = self.training_ranges()
        if self.demographics:
            out["age"] = {"units": "years", "standardised_with": dict(self.norms["age"]),
                          "training_range": list(ranges["age"][:2]),
                          "training_range_from": ranges["age"][2]}
            out["sex"] = {"levels": list(SEXES)}
        if self.diagnosis_levels:
            out["diagnosis"] = {"levels": list(self.diagnosis_levels)}
        if self.score_column:
            col = self.score_column
            out[col] = {"standardised_with": dict(self.norms["score"]),
                        "training_range": list(ranges[col][:2]),
                        "training_range_from": ranges[col][2]}
        if self.sources:
            out["source_modalities"] = list(self.sources)
        return out


def fit_norm(values: np.ndarray) -> dict[str, float]:
    """{"mean", "std"} of ``values`` (a constant column keeps unit scale)."""
    std = float(values.std())
    return {"mean": float(values.mean()), "std": std if std > 0 else 1.0}


def zscore(column: pd.Series | np.ndarray, norm: Mapping[str, float]) -> np.ndarray:
    """(N,) float32 ``(x - mean) / std``."""
    x = pd.to_numeric(pd.Series(np.asarray(column)), errors="coerce").to_numpy(np.float64)
    return ((x - norm["mean"]) / norm["std"]).astype(np.float32)


def encode_labels(table: pd.DataFrame, conditions: Conditions, modality: np.ndarray,
                  source: str, describe_row=None) -> dict[str, np.ndarray]:
    """The DiT labels of every row of ``table`` -> {name: (N,) array}.

    ``modality``: (N,) int64 modality indices (the caller resolves names: a store has its own
    index column, a covariate table goes through the registry). Bad rows raise one line naming
    ``source`` and the row (``describe_row(i)`` overrides ``row <i+1>``, e.g. to name the
    participant and modality of a store row)."""
    n = len(table)

    def fail(bad, what) -> None:
        if describe_row is None:
            fail_at_first(bad, source, what)
            return
        bad = np.asarray(bad, bool)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GenbrainInputError(f"{source}: {describe_row(i)}: {what(i)}")

    for col in conditions.columns:
        if col not in table.columns:
            raise GenbrainInputError(f"{source}: missing column '{col}' (the model is "
                                     f"conditioned on {', '.join(conditions.columns)})")
    labels: dict[str, np.ndarray] = {"modality": np.asarray(modality, np.int64).reshape(n)}
    if conditions.demographics:
        age = pd.to_numeric(table["age"], errors="coerce").to_numpy(np.float64)
        fail(~np.isfinite(age), lambda i: f"age '{table['age'].iloc[i]}' is not a number")
        fail(~table["sex"].isin(SEXES).to_numpy(),
             lambda i: f"sex '{table['sex'].iloc[i]}' is not one of {', '.join(SEXES)}")
        labels["age"] = zscore(age, conditions.norms["age"])
        labels["sex"] = table["sex"].map(SEXES.index).to_numpy(np.int64)
    else:  # the null labels, as the guided null branch sees them
        labels["age"] = np.zeros(n, np.float32)
        labels["sex"] = np.full(n, NULL_SEX, np.int64)
    if conditions.diagnosis_levels:
        levels = list(conditions.diagnosis_levels)
        fail(~table["diagnosis"].isin(levels).to_numpy(),
             lambda i: f"diagnosis '{table['diagnosis'].iloc[i]}' is not one of "
                       f"{', '.join(levels)}")
        labels["disease"] = table["diagnosis"].map(levels.index).to_numpy(np.int64)
    if conditions.score_column:
        col = conditions.score_column
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(np.float64)
        fail(~np.isfinite(values), lambda i: f"{col} '{table[col].iloc[i]}' is not a number")
        labels["score"] = zscore(values, conditions.norms["score"])
    return labels


def fit_norms(people: pd.DataFrame, conditions_columns: Sequence[tuple[str, str | None]],
              given: Mapping[str, Mapping[str, float]] | None) -> dict[str, dict[str, float]]:
    """Label scalings: those ``given``, plus ``key -> fit_norm(people[column])`` for every
    (key, column) pair not given (``people``: one row per participant)."""
    norms = {k: dict(v) for k, v in (given or {}).items()}
    for key, col in conditions_columns:
        if col and key not in norms:
            values = pd.to_numeric(people[col], errors="coerce").to_numpy(np.float64)
            norms[key] = fit_norm(values[np.isfinite(values)])
    return norms


def fit_ranges(people: pd.DataFrame, conditions_columns: Sequence[tuple[str, str | None]],
               given: Mapping[str, Mapping[str, float]] | None
               ) -> dict[str, dict[str, float]]:
    """The ranges a model sees: ``key -> {"min", "max"}`` of ``people[column]`` (finite values)
    for every (key, column) pair, widened to span the range ``given`` for that key (a
    fine-tune's :func:`inherited_ranges`, a resumed run's own)."""
    ranges = {}
    for key, col in conditions_columns:
        if not col:
            continue
        values = pd.to_numeric(people[col], errors="coerce").to_numpy(np.float64)
        values = values[np.isfinite(values)]
        old = (given or {}).get(key)
        if old:
            values = np.append(values, [float(old["min"]), float(old["max"])])
        if len(values):
            ranges[key] = {"min": float(values.min()), "max": float(values.max())}
    return ranges


def inherited_ranges(init: Conditions) -> dict[str, dict[str, float]]:
    """The range a fine-tune starts from: the age range of its init model's conditions
    (:meth:`Conditions.range_of`) when that model was conditioned on age (a new score head has
    seen nothing)."""
    if not init.demographics:
        return {}
    lo, hi, _ = init.range_of("age")
    return {"age": {"min": lo, "max": hi}}
