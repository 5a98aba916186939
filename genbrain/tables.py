"""Participants tables: vectorised validation against the participants JSON schema.

Validating 50,000 rows one by one with jsonschema takes seconds at every DAG build; here each
column is checked at once and the first offending row is named (file, line, participant, value).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from genbrain.config import load_yaml
from genbrain.errors import GenbrainInputError

_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]")


def site_label(site: str) -> str:
    """The file-system- and BIDS-safe label of a site name, used in every path: its ASCII
    letters and digits in order, everything else dropped (``'SH_JZ2'`` -> ``'SHJZ2'``,
    ``'KKI 1'`` -> ``'KKI1'``, ``'Site-A'`` -> ``'SiteA'``). Tables, figures and the report
    keep the original name."""
    return _NOT_ALNUM.sub("", str(site))


def site_labels(sites: Sequence[str], source: str) -> dict[str, str]:
    """site name -> :func:`site_label` for the distinct names in ``sites``.

    Raises :class:`GenbrainInputError` naming ``source`` for a name without a letter or digit
    and for two names whose labels are equal ignoring case (they would share a folder, also on
    case-insensitive file systems)."""
    out: dict[str, str] = {}
    seen: dict[str, str] = {}
    for site in dict.fromkeys(str(s) for s in sites):
        label = site_label(site)
        if not label:
            raise GenbrainInputError(f"{source}: site '{site}' has no letter or digit; a site "
                                     "name needs at least one (its file-name label keeps only "
                                     "A-Z, a-z and 0-9)")
        other = seen.get(label.lower())
        if other is not None:
            raise GenbrainInputError(
                f"{source}: sites '{other}' and '{site}' both map to the file-name label "
                f"'{label}' (a site's letters and digits, compared ignoring case); rename one "
                "of them in the table")
        seen[label.lower()] = site
        out[site] = label
    return out


def score_names(scores: Sequence[str | Mapping] | None) -> list[str]:
    """The column names of a cohort's ``scores`` (config: each a bare name or
    ``{name, range}``)."""
    return [str(s["name"]) if isinstance(s, Mapping) else str(s) for s in scores or ()]


def score_ranges(scores: Sequence[str | Mapping] | None) -> dict[str, tuple[float, float]]:
    """name -> declared (low, high) of each score of ``scores`` that declares a range."""
    return {str(s["name"]): (float(s["range"][0]), float(s["range"][1]))
            for s in scores or () if isinstance(s, Mapping) and s.get("range") is not None}


def row_name(table: pd.DataFrame, i: int) -> str:
    """Row ``i`` (0-based) of a table in an error message: ``participant <id>`` (and its
    modality) when the table has them, else ``row <i + 1>``."""
    row = table.iloc[i]
    if "participant_id" in table.columns:
        mod = f" ({row['modality']})" if "modality" in table.columns else ""
        return f"participant {row['participant_id']}{mod}"
    return f"row {i + 1}"


def check_scores(table: pd.DataFrame, column: str, score_max: float, source: str
                 ) -> np.ndarray:
    """(n,) float64 scores of ``table[column]``; a one-line error naming ``source`` and the first
    row whose score is missing, not a number, negative or above ``score_max``."""
    if column not in table.columns:
        raise GenbrainInputError(f"{source}: missing score column '{column}'; columns are "
                                 f"{', '.join(map(str, table.columns))}")
    values = pd.to_numeric(table[column], errors="coerce").to_numpy(np.float64)
    for bad, what in ((~np.isfinite(values), "is missing or not a number"),
                      (values < 0, "is below 0"),
                      (values > score_max, f"is above the declared maximum {score_max:g}")):
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise GenbrainInputError(f"{source}: {row_name(table, i)}: score '{column}' "
                                     f"{table[column].iloc[i]} {what}")
    return values


def _first_bad(df: pd.DataFrame, bad: np.ndarray) -> tuple[int, str]:
    i = int(np.flatnonzero(bad)[0])
    pid = df["participant_id"].iloc[i] if "participant_id" in df else "?"
    return i + 2, str(pid)  # +1 for 0-based, +1 for the header line


def _participant_id_message(source: str, line: int, value: str) -> str:
    """Why a participant_id is refused and how to write it instead."""
    value = str(value)
    if not value.startswith("sub-"):
        label = site_label(value)
        fix = (f"write it as 'sub-{label}'" if label else
               "write it as 'sub-<label>' with a label of letters and digits")
        return (f"{source}: line {line}: participant_id '{value}' lacks the BIDS prefix "
                f"'sub-'; {fix} (ids are not rewritten silently: they name the images and "
                "the store's rows; an image pattern can use {subject} for the id without "
                "'sub-')")
    return (f"{source}: line {line}: participant_id '{value}': the label after 'sub-' must be "
            f"letters and digits only (BIDS), e.g. 'sub-{site_label(value[4:]) or '01'}'")


def _check_levels(df: pd.DataFrame, col: str, allowed: Sequence[str], source: str, what: str,
                  hint: str) -> None:
    bad = ~df[col].isin(list(allowed)).to_numpy()
    if bad.any():
        line, pid = _first_bad(df, bad)
        raise GenbrainInputError(f"{source}: line {line} ({pid}): unknown {what} "
                                 f"'{df[col].iloc[line - 2]}'; expected one of {list(allowed)}"
                                 f"{hint}")


def validate_participants(
    df: pd.DataFrame,
    schema_path: str | os.PathLike,
    source: str,
    *,
    sites: Sequence[str] | None = None,
    age_range: Sequence[float] | None = None,
    diagnosis_levels: Sequence[str] | None = None,
    scores: Sequence[str | Mapping] = (),
) -> pd.DataFrame:
    """Check a participants table; return it with numeric columns as floats.

    Raises :class:`GenbrainInputError` naming ``source`` and the first bad line/participant.
    Checks: required columns (schema + ``scores`` + ``diagnosis`` when levels are given),
    missing values in them, types, patterns, enums, schema bounds and ``age_range``, scores
    outside their declared ranges (``scores``: names, or ``{name, range}``), duplicate
    participant ids, sites outside ``sites``, diagnoses outside ``diagnosis_levels``.
    """
    schema = load_yaml(schema_path)
    props: Mapping = schema["properties"]
    names = score_names(scores)
    required = list(schema.get("required", [])) + names
    if diagnosis_levels:
        required.append("diagnosis")
    for col in required:
        if col not in df.columns:
            raise GenbrainInputError(f"{source}: missing column '{col}' (required columns: "
                                     f"{required}; found {list(df.columns)})")
    if len(df) == 0:
        raise GenbrainInputError(f"{source}: the table has no rows")
    df = df.copy()
    for col in required:
        bad = df[col].isna().to_numpy()
        if bad.any():
            line, pid = _first_bad(df, bad)
            raise GenbrainInputError(f"{source}: line {line} ({pid}): missing value in "
                                     f"required column '{col}'")
    numeric = [c for c, p in props.items() if p.get("type") in ("number", "integer")]
    for col in [c for c in numeric + names if c in df.columns]:
        values = pd.to_numeric(df[col], errors="coerce")
        bad = (values.isna() & df[col].notna()).to_numpy()
        if bad.any():
            line, pid = _first_bad(df, bad)
            raise GenbrainInputError(f"{source}: line {line} ({pid}): column '{col}' must be a "
                                     f"number, got '{df[col].iloc[line - 2]}'")
        df[col] = values.astype(float)
    for col, (lo, hi) in score_ranges(scores).items():
        v = df[col].to_numpy(float)
        bad = (v < lo) | (v > hi)
        if bad.any():
            line, pid = _first_bad(df, bad)
            raise GenbrainInputError(f"{source}: line {line} ({pid}): {col} {v[line - 2]:g} is "
                                     f"outside its declared range [{lo:g}, {hi:g}] (the "
                                     "cohort's 'scores' in the config)")
    for col, p in props.items():
        if col not in df.columns:
            continue
        present = df[col].notna().to_numpy()
        if p.get("type") == "string":
            df[col] = df[col].astype("string").astype(object).where(df[col].notna(), None)
        if "pattern" in p:
            rx = re.compile(p["pattern"])
            bad = present & ~np.array([bool(rx.search(str(v))) for v in df[col]])
            if bad.any():
                line, pid = _first_bad(df, bad)
                if col == "participant_id":
                    raise GenbrainInputError(_participant_id_message(source, line,
                                                                     df[col].iloc[line - 2]))
                if col == "site":
                    raise GenbrainInputError(f"{source}: line {line} ({pid}): the site is "
                                             "blank; expected a site name")
                raise GenbrainInputError(f"{source}: line {line}: column '{col}' value "
                                         f"'{df[col].iloc[line - 2]}' does not match "
                                         f"{p['pattern']}")
        if "enum" in p:
            bad = present & ~df[col].isin(p["enum"]).to_numpy()
            if bad.any():
                line, pid = _first_bad(df, bad)
                raise GenbrainInputError(f"{source}: line {line} ({pid}): column '{col}' must be "
                                         f"one of {p['enum']}, got '{df[col].iloc[line - 2]}'")
        lo = p.get("minimum", -np.inf)
        hi = p.get("maximum", np.inf)
        if col == "age" and age_range is not None:
            lo, hi = max(lo, age_range[0]), min(hi, age_range[1])
        if col in numeric and (np.isfinite(lo) or np.isfinite(hi)):
            v = df[col].to_numpy(float)
            bad = present & ((v < lo) | (v > hi))
            if bad.any():
                line, pid = _first_bad(df, bad)
                raise GenbrainInputError(f"{source}: line {line} ({pid}): {col} "
                                         f"{v[line - 2]:g} is out of range; expected "
                                         f"{lo:g} to {hi:g}")
    if "site" in df.columns:
        bad = np.array([not site_label(v) for v in df["site"]])
        if bad.any():
            line, pid = _first_bad(df, bad)
            raise GenbrainInputError(f"{source}: line {line} ({pid}): site "
                                     f"'{df['site'].iloc[line - 2]}' has no letter or digit; a "
                                     "site name needs at least one (its file-name label keeps "
                                     "only A-Z, a-z and 0-9)")
        site_labels(df["site"], source)
    dup = df["participant_id"].duplicated().to_numpy()
    if dup.any():
        line, pid = _first_bad(df, dup)
        first = int(np.flatnonzero((df["participant_id"] == pid).to_numpy())[0]) + 2
        raise GenbrainInputError(f"{source}: line {line}: duplicate participant_id '{pid}' "
                                 f"(first at line {first})")
    if sites:
        _check_levels(df, "site", sites, source, "site",
                      " (the cohort's 'sites' in the config)")
    if diagnosis_levels:
        _check_levels(df, "diagnosis", diagnosis_levels, source, "diagnosis", "")
    return df
