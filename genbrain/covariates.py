"""Covariate tables of synthetic cohorts: checks, and the tables researchers configure.

A covariate table has one row per synthetic image: ``synthetic_id`` (unique integer >= 0; it
seeds the image's initial noise), ``age`` (years), ``sex`` (M/F) and ``modality`` (a registry
name). Other columns ride along into the synthetic store's index and the release export.

Researchers ask for their own cohorts under ``synthesize.cohorts.<name>`` in the config, either
as a TSV (``covariates: path``; ``synthetic_id`` may be left out and is then the row number) or
as a grid (``grid: {age: [...], sex: [...], modality: [...]}``, plus ``diagnosis`` and the
model's score column for models conditioned on them, and ``n`` images per combination).
:func:`cohort_covariates` turns either into the table that is sampled; the workflow calls it at
parse time (to size the shards; the model's ranges predicted from the tables it will train on)
and again in the job that writes the table (the ranges its checkpoint records), so both see
the same rows. Ages and scores outside the ranges the model saw in training are refused unless
the cohort sets ``allow_extrapolation`` (:func:`check_ranges`). No torch here: this runs
whenever Snakemake builds the DAG.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import read_tsv

log = logging.getLogger(__name__)

SEXES = ("M", "F")  # sex label = position in this tuple; the DiT's row 2 is the null label
REQUIRED = ("synthetic_id", "age", "sex", "modality")
# written by synthesis into the store index; a covariate column of that name would be lost
RESERVED = ("source_participant_id", "modality_index", "shard", "row", "k", "seed", "guidance",
            "ddim_steps")
GRID_KEYS = ("age", "sex", "modality")
OPTIONAL_GRID_KEYS = ("diagnosis",)  # for models with a disease head


def read_covariates(path: str | os.PathLike) -> pd.DataFrame:
    """Read a covariate table and check its generic columns (one-line errors naming the row)."""
    table = read_tsv(path)
    check_covariates(table, str(path))
    return table


def fail_at_first(bad, source: str, what: Callable[[int], str]) -> None:
    """One-line error ``<source>: row <i+1>: <what(i)>`` at the first True of ``bad``."""
    bad = np.asarray(bad, bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise GenbrainInputError(f"{source}: row {i + 1}: {what(i)}")


def check_covariates(table: pd.DataFrame, source: str) -> None:
    """Required columns present, ``synthetic_id`` unique non-negative integers, ages finite,
    sexes in M/F."""
    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise GenbrainInputError(f"{source}: missing column '{missing[0]}' (a covariate table "
                                 f"needs {', '.join(REQUIRED)})")
    if len(table) == 0:
        raise GenbrainInputError(f"{source}: the covariate table has no rows")
    ids = pd.to_numeric(table["synthetic_id"], errors="coerce")
    fail_at_first(ids.isna() | (ids < 0) | (ids != ids.round()), source,
                  lambda i: f"synthetic_id '{table['synthetic_id'].iloc[i]}' is not an integer "
                            ">= 0")
    fail_at_first(ids.duplicated(), source,
                  lambda i: f"synthetic_id {int(ids.iloc[i])} is used twice")
    age = pd.to_numeric(table["age"], errors="coerce").to_numpy(np.float64)
    fail_at_first(~np.isfinite(age), source,
                  lambda i: f"age '{table['age'].iloc[i]}' is not a number")
    fail_at_first(~table["sex"].isin(SEXES), source,
                  lambda i: f"sex '{table['sex'].iloc[i]}' is not one of {', '.join(SEXES)}")


def grid_covariates(grid: Mapping[str, Sequence], n: int,
                    score_column: str | None = None) -> pd.DataFrame:
    """Every combination of the grid's ages, sexes, (diagnoses,) (values of ``score_column``,)
    and modalities, ``n`` rows each (column ``replicate`` 0..n-1), in the order age, sex,
    (diagnosis,) (score,) modality, replicate."""
    optional = [*OPTIONAL_GRID_KEYS, *[score_column] * bool(score_column)]
    keys = [k for k in ("age", "sex", *optional, "modality") if k in grid or k in GRID_KEYS]
    combos = itertools.product(*(list(grid[k]) for k in keys), range(n))
    table = pd.DataFrame(list(combos), columns=[*keys, "replicate"])
    table.insert(0, "synthetic_id", np.arange(len(table)))
    return table


def check_ranges(table: pd.DataFrame, source: str,
                 ranges: Mapping[str, tuple[float, float, str]], model: str, key: str,
                 allow: bool = False) -> None:
    """Every value of the columns of ``ranges`` (column -> (low, high, where the range comes
    from): :meth:`genbrain.conditions.Conditions.training_ranges`) within the range ``model``
    saw in training: else a one-line error naming the row, the value and the range, or, with
    ``allow`` (config ``<key>.allow_extrapolation``), one warning per column."""
    for col, (lo, hi, how) in ranges.items():
        if col not in table.columns:
            continue
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(np.float64)
        out = (values < lo) | (values > hi)
        if not out.any():
            continue
        i = int(np.flatnonzero(out)[0])
        what = (f"{col} {values[i]:g} is outside the range {model} saw in training "
                f"({lo:g} to {hi:g}, {how})")
        if not allow:
            raise GenbrainInputError(f"{source}: row {i + 1}: {what}; the model would "
                                     "extrapolate: change the value, or set "
                                     f"'{key}.allow_extrapolation: true' to draw it anyway")
        log.warning("%s: %d row(s) outside the training range of %s, drawn anyway "
                    "(allow_extrapolation; the export sidecars record it); first: row %d: %s",
                    source, int(out.sum()), col, i + 1, what)


def cohort_covariates(name: str, spec: Mapping, modalities: Sequence[str],
                      model: str = "the pretrained model",
                      diagnosis_levels: Sequence[str] | None = None,
                      score_column: str | None = None,
                      ranges: Mapping[str, tuple[float, float, str]] | None = None
                      ) -> pd.DataFrame:
    """The covariate table of the configured synthetic cohort ``name`` (config entry ``spec``:
    exactly one of ``covariates`` / ``grid``, with ``n`` for a grid), checked against the
    ``modalities`` and conditions (``diagnosis_levels``, ``score_column``) of the sampling
    ``model`` and, with ``ranges`` (None: not known yet), the ages and scores it saw
    (:func:`check_ranges`; ``spec["allow_extrapolation"]`` lets them through with a
    warning). Errors are one line naming the file (or config key) and row."""
    key = f"synthesize.cohorts.{name}"
    if name == "pretrain":
        raise GenbrainInputError(f"config: '{key}': the name 'pretrain' is the pretrained "
                                 "model's evaluation cohort; choose another")
    if ("covariates" in spec) == ("grid" in spec):
        raise GenbrainInputError(f"config: '{key}' needs exactly one of 'covariates' (a TSV "
                                 "path) or 'grid' (age, sex, modality lists)")
    n = int(spec.get("n", 1))
    if "covariates" in spec and n != 1:
        raise GenbrainInputError(f"config: '{key}.n' repeats grid combinations; with "
                                 "'covariates' every row is one image (repeat rows instead)")
    if "covariates" in spec:
        path = spec["covariates"]
        source = str(path)
        if not Path(path).exists():
            raise GenbrainInputError(f"{path}: covariate table of synthetic cohort '{name}' not "
                                     f"found (config key '{key}.covariates')")
        table = read_tsv(path)
        if "synthetic_id" not in table.columns:
            table.insert(0, "synthetic_id", np.arange(len(table)))
    else:
        source = f"config key '{key}.grid'"
        known = [*GRID_KEYS, *OPTIONAL_GRID_KEYS, *[score_column] * bool(score_column)]
        for k in spec["grid"]:
            if k not in known:
                hint = difflib.get_close_matches(k, known, n=1)
                did = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise GenbrainInputError(f"config: '{key}.grid.{k}' is not a condition of "
                                         f"{model}{did}; expected some of {known}")
        table = grid_covariates(spec["grid"], n, score_column)
    reserved = [c for c in RESERVED if c in table.columns]
    if reserved:
        raise GenbrainInputError(f"{source}: column '{reserved[0]}' is written by synthesis; "
                                 "rename it")
    if diagnosis_levels:
        if "diagnosis" not in table.columns:
            raise GenbrainInputError(f"{source}: {model} is conditioned on diagnosis "
                                     f"({', '.join(diagnosis_levels)}); the table needs a "
                                     "'diagnosis' column")
        fail_at_first(~table["diagnosis"].isin(list(diagnosis_levels)), source,
                      lambda i: f"diagnosis '{table['diagnosis'].iloc[i]}' is not one of "
                                f"{', '.join(diagnosis_levels)}")
    elif "diagnosis" in table.columns:
        raise GenbrainInputError(f"{source}: column 'diagnosis': {model} has no disease "
                                 "condition (only age, sex, modality); drop the column")
    if score_column:
        values = pd.to_numeric(table[score_column], errors="coerce") \
            if score_column in table.columns else None
        if values is None:
            need = f"a '{score_column}' list" if "grid" in spec else "that column"
            raise GenbrainInputError(f"{source}: {model} is conditioned on '{score_column}'; "
                                     f"the {'grid' if 'grid' in spec else 'table'} needs {need}")
        fail_at_first(values.isna(), source,
                      lambda i: f"{score_column} '{table[score_column].iloc[i]}' is not a "
                                "number")
    check_covariates(table, source)
    fail_at_first(~table["modality"].isin(list(modalities)), source,
                  lambda i: f"modality '{table['modality'].iloc[i]}' is not one {model} was "
                            f"trained on; expected one of {list(modalities)}")
    if ranges:
        check_ranges(table, source, ranges, model, key, bool(spec.get("allow_extrapolation")))
    return table.reset_index(drop=True)


def mirror_covariates(members: pd.DataFrame, n: int, columns: Sequence[str], modality: str,
                      seed: int, synth: str) -> pd.DataFrame:
    """The covariate table of a synthetic pool that mirrors a training set: ``n`` rows, each
    copying one member's age, sex and ``columns`` (e.g. diagnosis, a score) with its
    ``reference_participant_id``, taken from the concatenation of permutations of ``members``
    seeded by (``seed``, ``synth``), so the pool keeps the training set's joint covariate
    distribution and every member is mirrored equally often (within one).

    ``members``: the training participants (participant_id, age, sex, ``columns``), in any
    order (sorted by participant_id here). Columns: synthetic_id, age, sex, ``columns``,
    modality, reference_participant_id."""
    from genbrain.seeds import name_seed

    members = members.sort_values("participant_id").reset_index(drop=True)
    if n and members.empty:
        raise GenbrainInputError(f"synthetic pool '{synth}': no training participants to mirror")
    rng = np.random.default_rng([int(seed), name_seed(synth)])
    cycles = -(-n // max(len(members), 1))
    order = np.concatenate([rng.permutation(len(members)) for _ in range(cycles)]
                           or [np.zeros(0, np.int64)])[:n]
    sel = members.iloc[order]
    out = {"synthetic_id": np.arange(len(sel)), "age": sel["age"].to_numpy(),
           "sex": sel["sex"].to_numpy()}
    for c in columns:
        out[c] = sel[c].to_numpy()
    out["modality"] = modality
    out["reference_participant_id"] = sel["participant_id"].to_numpy()
    return pd.DataFrame(out)

