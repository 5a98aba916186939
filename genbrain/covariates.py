"""Covariate tables of synthetic cohorts: checks, and the tables researchers configure.

A covariate table has one row per synthetic image: ``synthetic_id`` (unique integer >= 0; it
seeds the image's initial noise), ``age`` (years), ``sex`` (M/F) and ``modality`` (a registry
name). Other columns ride along into the synthetic store's index and the release export.

Researchers ask for their own cohorts under ``synthesize.cohorts.<name>`` in the config, either
as a TSV (``covariates: path``; ``synthetic_id`` may be left out and is then the row number) or
as a grid (``grid: {age: [...], sex: [...], modality: [...]}`` and ``n`` images per
combination). :func:`cohort_covariates` turns either into the table that is sampled; the
workflow calls it at parse time (to size the shards) and again in the job that writes the
table, so both see the same rows. No torch here: this runs whenever Snakemake builds the DAG.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import read_tsv

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


def grid_covariates(grid: Mapping[str, Sequence], n: int) -> pd.DataFrame:
    """Every combination of the grid's ages, sexes, (diagnoses,) and modalities, ``n`` rows
    each (column ``replicate`` 0..n-1), in the order age, sex, (diagnosis,) modality,
    replicate."""
    keys = [k for k in ("age", "sex", *OPTIONAL_GRID_KEYS, "modality") if k in grid
            or k in GRID_KEYS]
    combos = itertools.product(*(list(grid[k]) for k in keys), range(n))
    table = pd.DataFrame(list(combos), columns=[*keys, "replicate"])
    table.insert(0, "synthetic_id", np.arange(len(table)))
    return table


def cohort_covariates(name: str, spec: Mapping, modalities: Sequence[str],
                      model: str = "the pretrained model",
                      diagnosis_levels: Sequence[str] | None = None,
                      score_column: str | None = None) -> pd.DataFrame:
    """The covariate table of the configured synthetic cohort ``name`` (config entry ``spec``:
    exactly one of ``covariates`` / ``grid``, with ``n`` for a grid), checked against the
    ``modalities`` and conditions (``diagnosis_levels``, ``score_column``) of the sampling
    ``model``. Errors are one line naming the file (or config key) and row."""
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
        table = grid_covariates(spec["grid"], n)
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
            raise GenbrainInputError(f"{source}: {model} is conditioned on '{score_column}'; "
                                     "the table needs that column")
        fail_at_first(values.isna(), source,
                      lambda i: f"{score_column} '{table[score_column].iloc[i]}' is not a "
                                "number")
    check_covariates(table, source)
    fail_at_first(~table["modality"].isin(list(modalities)), source,
                  lambda i: f"modality '{table['modality'].iloc[i]}' is not one {model} was "
                            f"trained on; expected one of {list(modalities)}")
    return table.reset_index(drop=True)
