"""Batching subjects into chunks: one job per (cohort, site, chunk), not per subject.

Chunks are formed within each site, in table order, so adding a site adds jobs without
changing any existing chunk (researchers rerun only the rules that concern the new site).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def assign_chunks(table: pd.DataFrame, chunk_size: int) -> pd.DataFrame:
    """Return a copy of ``table`` with an integer ``chunk`` column (0, 1, ... within each site)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    out = table.copy()
    position = out.groupby("site", sort=False).cumcount().to_numpy()
    out["chunk"] = (position // chunk_size).astype(np.int64)
    return out


def chunk_keys(table: pd.DataFrame, chunk_size: int) -> list[tuple[str, int]]:
    """Sorted unique (site, chunk) pairs of a table."""
    chunked = assign_chunks(table, chunk_size)
    pairs = chunked[["site", "chunk"]].drop_duplicates()
    return sorted((str(s), int(c)) for s, c in pairs.itertuples(index=False))


def chunk_rows(table: pd.DataFrame, chunk_size: int, site: str, chunk: int) -> pd.DataFrame:
    """The rows of one (site, chunk), in table order."""
    chunked = assign_chunks(table, chunk_size)
    return chunked[(chunked["site"] == site) & (chunked["chunk"] == int(chunk))]
