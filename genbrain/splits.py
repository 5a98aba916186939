"""Who is used for what: every participant splitter of the pipeline, each seeded so two runs
use the same people, and none depending on the order of the table's rows.

- :func:`holdout_split` (``train`` / ``holdout``, :data:`HOLDOUT_SPLITS`): the pretraining
  hold-out, a fraction of every site, unstratified. The paper pretrains on UK Biobank images
  and evaluates the pretrained model on held-out subjects: :func:`evaluation_cohorts` draws
  small cohorts (N = 100) of hold-out subjects, five of them without overlap, which are
  compared with synthetic cohorts of the same ages and sexes
  (:func:`similarity_covariates`) and with a large reference cohort from the pretraining data.
- :func:`split_sites` (``train`` / ``validation`` / ``test``, :data:`SITE_SPLITS`): a 3:1:1
  split within every site *and diagnosis level*, so each part keeps the site's class balance
  and holds every level: the fine-tunes conditioned on diagnosis and the cross-site diagnosis
  classifiers share it.
- :func:`score_split` (``train`` / ``val`` / ``test``, :data:`SCORE_SPLITS`): a 3:1:1 split
  of all participants stratified by a clinical score (the clinical regressor's, Fig. 6c-f):
  ``quantile`` (default): participants sorted by score (random tie-break) form consecutive
  blocks of five, and each block's members get a random permutation of (train x3, val, test),
  so every part covers the score range even when n is small (a plain random 3:1:1 split of
  the 72 demo subjects can leave the validation set without a severe case); ``random``: a
  plain seeded shuffle, 60% / 20% / the rest.

A cohort's split table (``results/splits/<cohort>.tsv``, :func:`cohort_split`) is one of the
last two, by its :class:`SplitBasis`: the site split of a case-control cohort, or the score
split of a clinical cohort whose score-conditioned fine-tune trains on its training part.

They are different draws for different questions, not one splitter with options: the
hold-out keeps no validation part and needs no labels; the site split stratifies by a
category within each site and refuses a site that lacks a level; the score split stratifies
by a continuous score across sites. Their labels differ accordingly (``validation`` for the
site split, which the diagnosis tables carry, ``val`` for the score split).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.io import read_tsv
from genbrain.seeds import name_seed, seed_of
from genbrain.tables import check_scores, score_ranges

HOLDOUT_SPLITS = ("train", "holdout")
SITE_SPLITS = ("train", "validation", "test")
SCORE_SPLITS = ("train", "val", "test")
SCORE_STRATIFY = ("quantile", "random")
SCORE_MIN_SPLIT = 3  # smallest validation/test part: r of 2 points is always +-1
SCORE_SPLIT_STREAM = 14  # seed_of key (the trainer's streams are 1..3, the regressor's 11..13)


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


def level_codes(diagnosis: pd.Series | Sequence, levels: Sequence[str],
                source: str = "features") -> np.ndarray:
    """(n,) integer codes of ``diagnosis`` in ``levels`` order (control first: 0); a
    one-line error naming ``source`` for a diagnosis outside ``levels``."""
    d = pd.Series(diagnosis).astype(str).to_numpy()
    code = {lv: i for i, lv in enumerate(levels)}
    bad = [x for x in d if x not in code]
    if bad:
        raise GenbrainInputError(f"{source}: diagnosis '{bad[0]}' is not one of the task's "
                                 f"levels {list(levels)}")
    return np.array([code[x] for x in d], dtype=np.int64)


def split_sites(table: pd.DataFrame, levels: Sequence[str], seed: int,
                fractions: tuple[int, int, int] = (3, 1, 1),
                source: str = "features") -> pd.DataFrame:
    """``table`` (participant_id, site, diagnosis, ...) with a ``split`` column added
    (:data:`SITE_SPLITS`): per site and diagnosis level, a seeded ``fractions`` (3:1:1) split.

    Within a level of n participants: ``round(n/5)`` to validation and to test (at least one
    each, and at least one left to train), the rest to train. Sites are taken in sorted order
    and ids sorted before the permutation, drawn from ``default_rng([seed,
    name_seed(site)])``: the split depends neither on row order nor on the other sites.
    One-line errors naming ``source``: a missing column, a diagnosis outside ``levels``, a site
    with one class, a level missing from a site, a level with fewer subjects than the three
    parts need."""
    for c in ("participant_id", "site", "diagnosis"):
        if c not in table.columns:
            raise GenbrainInputError(f"{source}: missing column '{c}'")
    out = table.copy()
    out["split"] = ""
    total = sum(fractions)
    for site in sorted(out["site"].astype(str).unique()):
        at = out["site"].astype(str) == site
        codes = level_codes(out.loc[at, "diagnosis"], levels, f"{source}, site '{site}'")
        present = sorted(set(codes))
        if len(present) == 1:
            raise GenbrainInputError(f"{source}: site '{site}' has one class only "
                                     f"('{levels[present[0]]}'); a classifier needs "
                                     f"{list(levels)}")
        if len(present) < len(levels):
            miss = [lv for i, lv in enumerate(levels) if i not in present]
            raise GenbrainInputError(f"{source}: site '{site}' lacks diagnosis level(s) {miss}; "
                                     f"the {len(levels)}-class task needs every level at "
                                     f"every site")
        rng = np.random.default_rng([seed, name_seed(site)])
        for k, level in enumerate(levels):
            rows = out.index[at.to_numpy()][codes == k]
            ids = out.loc[rows, "participant_id"].astype(str).to_numpy()
            if len(rows) < len(fractions):
                raise GenbrainInputError(
                    f"{source}: site '{site}' has {len(rows)} '{level}' subject(s); the "
                    f"{':'.join(map(str, fractions))} split needs at least {len(fractions)} "
                    "per level (one in each split)")
            order = rows[np.argsort(ids, kind="stable")][rng.permutation(len(rows))]
            n_val = max(1, round(len(rows) * fractions[1] / total))
            n_test = max(1, round(len(rows) * fractions[2] / total))
            n_val = min(n_val, len(rows) - 2)
            n_test = min(n_test, len(rows) - 1 - n_val)
            out.loc[order[:n_val], "split"] = "validation"
            out.loc[order[n_val:n_val + n_test], "split"] = "test"
            out.loc[order[n_val + n_test:], "split"] = "train"
    return out


def score_split(table: pd.DataFrame, score_column: str, seed: int, *, score_max: float,
                stratify: str = "quantile", source: str = "participants table") -> pd.DataFrame:
    """Seeded 3:1:1 split of the participants of ``table`` (one or more rows each),
    stratified by ``score_column`` (module docstring).

    Returns (participant_id, <score_column>, split) with split in :data:`SCORE_SPLITS`, one row
    per participant sorted by participant_id; the draw (``seed_of(seed,
    SCORE_SPLIT_STREAM)``) depends on (seed, the participants and their scores), not on row
    order. ``stratify``: one of :data:`SCORE_STRATIFY`. One-line errors: bad scores (see
    :func:`genbrain.tables.check_scores`), fewer than 5 x :data:`SCORE_MIN_SPLIT`
    participants.
    """
    if stratify not in SCORE_STRATIFY:
        raise GenbrainInputError(f"regression split: 'stratify' is {stratify!r}; expected one "
                                 f"of {', '.join(SCORE_STRATIFY)}")
    if "participant_id" not in table.columns:
        raise GenbrainInputError(f"{source}: missing column 'participant_id'")
    check_scores(table, score_column, score_max, source)
    people = (table.drop_duplicates("participant_id")[["participant_id", score_column]]
              .sort_values("participant_id").reset_index(drop=True))
    n = len(people)
    if n < 5 * SCORE_MIN_SPLIT:
        raise GenbrainInputError(
            f"{source}: {n} participants with a score '{score_column}'; a 3:1:1 split needs at "
            f"least {5 * SCORE_MIN_SPLIT} ({SCORE_MIN_SPLIT} each in validation and test)")
    rng = np.random.default_rng(seed_of(seed, SCORE_SPLIT_STREAM))
    labels = np.array(["train"] * 3 + ["val", "test"])
    split = np.empty(n, dtype=object)
    if stratify == "random":
        order = rng.permutation(n)
        n_train, n_val = round(0.6 * n), round(0.2 * n)
        split[order[:n_train]] = "train"
        split[order[n_train:n_train + n_val]] = "val"
        split[order[n_train + n_val:]] = "test"
    else:
        scores = pd.to_numeric(people[score_column]).to_numpy(np.float64)
        order = np.lexsort((rng.random(n), scores))  # by score, ties in random order
        for start in range(0, n, 5):
            block = order[start:start + 5]
            split[block] = rng.permutation(labels)[:len(block)]
    people["split"] = split
    return people


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


def cohort_split(participants: pd.DataFrame, levels: Sequence[str] | None, seed: int,
                 source: str, score: str | None = None,
                 score_max: float | None = None) -> pd.DataFrame:
    """The cohort's seeded 3:1:1 train/validation/test split (participant_id, site, diagnosis,
    split): per site, stratified by diagnosis when ``levels`` are given
    (:func:`genbrain.splits.split_sites`: fine-tunes and classifiers share it; labels
    ``validation``); else over all participants, stratified by the score column ``score``
    (:func:`genbrain.splits.score_split`, at most ``score_max``: the clinical regressor and its
    score-conditioned fine-tune share it; labels ``val``, the score column kept)."""
    if levels:
        table = split_sites(participants, list(levels), seed, source=source)
        return table[["participant_id", "site", "diagnosis", "split"]].reset_index(drop=True)
    if not score:
        raise GenbrainInputError(f"{source}: a split needs diagnosis levels or a score column")
    split = score_split(participants, score, seed,
                        score_max=math.inf if score_max is None else float(score_max),
                        source=source)
    people = participants.drop_duplicates("participant_id")[["participant_id", "site",
                                                              "diagnosis"]]
    table = people.merge(split, on="participant_id")
    return table[["participant_id", "site", "diagnosis", score, "split"]].sort_values(
        "participant_id").reset_index(drop=True)


@dataclass(frozen=True)
class SplitBasis:
    """What a cohort's split (``results/splits/<cohort>.tsv``) is stratified by: the diagnosis
    ``levels`` (per site), or else the score column ``score`` (declared maximum
    ``score_max``, None when the cohort declares no range)."""

    levels: tuple[str, ...] | None = None
    score: str | None = None
    score_max: float | None = None

    @classmethod
    def of(cls, levels: Sequence[str] | None, score: str | None,
           scores: Sequence | None = None) -> SplitBasis:
        """The basis of a task conditioned on ``levels`` and/or ``score`` (diagnosis wins),
        the score's maximum from the cohort's declared ``scores``."""
        if levels:
            return cls(levels=tuple(levels))
        high = score_ranges(scores).get(score, (0.0, None))[1] if score else None
        return cls(score=score, score_max=high)

    def describe(self) -> str:
        return (f"by diagnosis {list(self.levels)}" if self.levels
                else f"by score '{self.score}'")

    def split(self, participants: pd.DataFrame, seed: int, source: str) -> pd.DataFrame:
        """:func:`cohort_split` on this basis."""
        return cohort_split(participants, self.levels, seed, source, self.score,
                            self.score_max)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (a rule's params)."""
        return {"levels": list(self.levels) if self.levels else None, "score": self.score,
                "score_max": self.score_max}


def split_basis(cohort: str, spec: Mapping, finetunes: Mapping) -> SplitBasis:
    """The basis of cohort ``cohort``'s split: that of its fine-tunes with split ``train``
    (:func:`genbrain.finetune.plan_finetunes` checked they agree; ``finetunes``: its
    :class:`~genbrain.finetune.FinetuneJob` by name), else its diagnosis levels (``spec``: the
    cohort's config entry)."""
    for job in finetunes.values():
        if job.cohort == cohort and job.split == "train":
            return SplitBasis.of(job.diagnosis_levels, job.score_column, spec.get("scores"))
    return SplitBasis(levels=tuple(spec.get("diagnosis_levels") or ()) or None)
