"""Who is used for what: the pretraining hold-out and the evaluation cohorts drawn from it.

The paper pretrains on UK Biobank images and evaluates the pretrained model on held-out
subjects: small cohorts (N = 100) of real hold-out subjects, five of them without overlap, and
synthetic cohorts with the same ages and sexes, are compared with a large reference cohort
taken from the pretraining data. Every draw here is seeded, so two runs use the same people.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import read_tsv

SPLITS = ("train", "holdout")


def holdout_split(participants: pd.DataFrame, fraction: float, seed: int) -> pd.DataFrame:
    """Assign each participant to ``train`` or ``holdout``.

    Within every site, ``round(fraction * n_site)`` participants (at least one when the site
    has two or more) are held out, chosen by a generator seeded with ``seed``; sites are
    processed in sorted order so the result does not depend on row order.
    Returns (participant_id, site, age, sex, split), one row per participant, in input order.
    """
    if not 0 < fraction < 1:
        raise GenbrainInputError(f"pretrain.holdout_fraction must be in (0, 1), got {fraction}")
    table = participants[["participant_id", "site", "age", "sex"]].copy()
    table["split"] = "train"
    rng = np.random.default_rng(seed)
    for site in sorted(table["site"].unique()):
        rows = np.flatnonzero((table["site"] == site).to_numpy())
        ids = np.sort(table["participant_id"].to_numpy()[rows])
        n_hold = round(fraction * len(rows))
        n_hold = min(max(n_hold, 1 if len(rows) > 1 else 0), len(rows) - 1)
        held = set(rng.choice(ids, size=n_hold, replace=False)) if n_hold else set()
        is_held = table["participant_id"].iloc[rows].isin(held).to_numpy()
        table.loc[table.index[rows[is_held]], "split"] = "holdout"
    return table.reset_index(drop=True)



def split_ids(split: str | os.PathLike | pd.DataFrame, which: str) -> set[str]:
    """participant_ids whose ``split`` is ``which`` (``train`` or ``holdout``) in a split table
    (a :func:`holdout_split` result or its TSV); a one-line error when there are none."""
    table = split if isinstance(split, pd.DataFrame) else read_tsv(split)
    source = "split table" if isinstance(split, pd.DataFrame) else str(split)
    missing = [c for c in ("participant_id", "split") if c not in table.columns]
    if missing:
        raise GenbrainInputError(f"{source}: not a split table (missing columns {missing})")
    ids = set(table.loc[table["split"] == which, "participant_id"].astype(str))
    if not ids:
        raise GenbrainInputError(f"{source}: no participants with split '{which}'")
    return ids

def evaluation_cohorts(split: pd.DataFrame, cohort_size: int, n_cohorts: int,
                       seed: int) -> pd.DataFrame:
    """``n_cohorts`` non-overlapping cohorts of ``cohort_size`` hold-out participants.

    Returns (replicate, participant_id, site, age, sex), replicate = 0..n_cohorts-1; a
    one-line error when the hold-out is too small.
    """
    hold = split[split["split"] == "holdout"].sort_values("participant_id")
    need = cohort_size * n_cohorts
    if len(hold) < need:
        raise GenbrainInputError(
            f"evaluate.similarity needs {n_cohorts} x {cohort_size} = {need} hold-out "
            f"participants but the pretraining cohort holds out {len(hold)}; lower "
            "evaluate.similarity.cohort_size or n_cohorts, or raise pretrain.holdout_fraction")
    rng = np.random.default_rng(seed)
    picked = hold.iloc[rng.permutation(len(hold))[:need]].reset_index(drop=True)
    picked.insert(0, "replicate", np.repeat(np.arange(n_cohorts), cohort_size))
    return picked[["replicate", "participant_id", "site", "age", "sex"]]


def similarity_covariates(cohorts: pd.DataFrame, modalities: list[str], k: int) -> pd.DataFrame:
    """The synthetic counterpart of the evaluation cohorts: for every cohort member, modality
    and sample j < k, one covariate row (synthetic_id, replicate, participant_id, age, sex,
    modality, sample). Sample 0 is the single-sample image; the mean over j the averaged one."""
    rows = [(r.replicate, r.participant_id, r.age, r.sex, m, j)
            for m in modalities for r in cohorts.itertuples() for j in range(k)]
    table = pd.DataFrame(rows, columns=["replicate", "participant_id", "age", "sex", "modality",
                                        "sample"])
    table.insert(0, "synthetic_id", np.arange(len(table)))
    return table
