"""The evaluation stage of a synthetic cohort: the files behind the workflow's rules.

- :func:`similarity_report`: the paper's Fig. 2a. Per modality, the age and sex t-maps of the
  real hold-out cohorts, of their single-sample synthetic mirrors (``sample`` 0) and of the
  k-sample averages, each compared with the maps of the reference cohort (every training-split
  image of the modality) by cosine similarity.
- :func:`audit_report`: the paper's Fig. 2b. The best training match of every synthetic image
  (same modality, training split only), a table of the closest pairs and a histogram.
- :func:`privacy_gate`: the release gate on an audit table.

Inputs are the stores and tables the workflow writes: a synthetic store made from the
covariates of :func:`genbrain.splits.similarity_covariates` (columns ``replicate``,
``source_participant_id``, ``sample``), the real cohort's store, the pretraining split and the
evaluation cohorts of :func:`genbrain.splits.evaluation_cohorts`.
"""

from __future__ import annotations

import logging
import os

import pandas as pd

from genbrain import audit as _audit
from genbrain.errors import GenbrainInputError
from genbrain.figures import audit_histogram, similarity_figure
from genbrain.io import read_tsv, save_tsv
from genbrain.splits import split_ids
from genbrain.stats.similarity import Cohort, similarity_protocol
from genbrain.store import ImageStore

log = logging.getLogger(__name__)


def _need(table: pd.DataFrame, columns: tuple[str, ...], source: str) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise GenbrainInputError(f"{source}: missing column(s) {missing}")


def similarity_tables(synthetic: ImageStore, real: ImageStore, cohorts: pd.DataFrame,
                      training_ids: set[str], seed: int = 0,
                      source: str = "synthetic store") -> pd.DataFrame:
    """The similarity protocol for every modality of the synthetic store -> the tidy table of
    :func:`genbrain.stats.similarity.similarity_protocol`, modalities concatenated."""
    syn = synthetic.table
    _need(syn, ("replicate", "source_participant_id", "sample", "modality"), source)
    _need(cohorts, ("replicate", "participant_id"), "evaluation cohorts")
    replicates = sorted(pd.unique(cohorts["replicate"]))
    k = int(syn["sample"].max()) + 1
    out = []
    for modality in sorted(pd.unique(syn["modality"])):
        rt = real.table
        ref_sel = rt[(rt["modality"] == modality) & rt["participant_id"].isin(training_ids)]
        if len(ref_sel) < 4:
            raise GenbrainInputError(f"{real.index_path}: {len(ref_sel)} training-split "
                                     f"images of {modality}; the reference cohort needs >= 4")
        reference = Cohort.from_store(real, ref_sel, label=f"{modality} reference cohort")
        reals, singles, averages = [], [], []
        for rep in replicates:
            members = cohorts.loc[cohorts["replicate"] == rep, "participant_id"].astype(str)
            r_sel = rt[(rt["modality"] == modality) & rt["participant_id"].isin(set(members))]
            present = set(r_sel["participant_id"])
            if len(present) < len(members):
                log.warning("%s cohort %s: %d of %d members have no real image; they are left "
                            "out of both the real and the synthetic cohort", modality, rep,
                            len(members) - len(present), len(members))
            s_sel = syn[(syn["modality"] == modality) & (syn["replicate"] == rep)
                        & syn["source_participant_id"].isin(present)]
            if s_sel["source_participant_id"].nunique() != len(present):
                raise GenbrainInputError(
                    f"{source}: {modality} cohort {rep} mirrors "
                    f"{s_sel['source_participant_id'].nunique()} of its {len(present)} real "
                    "members; was it synthesized from these evaluation cohorts?")
            reals.append(Cohort.from_store(real, r_sel, label=f"{modality} real cohort {rep}"))
            singles.append(Cohort.from_store(synthetic, s_sel[s_sel["sample"] == 0],
                                             label=f"{modality} synthetic cohort {rep}"))
            if k > 1:
                averages.append(Cohort.from_store(
                    synthetic, s_sel, average_by="source_participant_id",
                    label=f"{modality} synthetic cohort {rep} (mean of {k})"))
        log.info("similarity %s: reference %d images, %d cohorts of %d", modality,
                 len(reference), len(reals), len(reals[0]))
        out.append(similarity_protocol(modality, reference, reals, singles, averages,
                                       n=len(reals[0]), n_cohorts=len(reals), seed=seed))
    if not out:
        raise GenbrainInputError(f"{source}: no synthetic images")
    return pd.concat(out, ignore_index=True)


def similarity_report(synthetic_index: str | os.PathLike, cohorts: str | os.PathLike,
                      real_index: str | os.PathLike, split: str | os.PathLike,
                      out_table: str | os.PathLike, out_png: str | os.PathLike) -> pd.DataFrame:
    """Run :func:`similarity_tables` on the workflow's files; write the table and figure."""
    table = similarity_tables(ImageStore(synthetic_index), ImageStore(real_index),
                              read_tsv(cohorts), split_ids(split, "train"),
                              source=str(synthetic_index))
    save_tsv(table, out_table)
    n = int(table["n"].iloc[0])
    similarity_figure(table, out_png, title=f"age/sex t-maps of cohorts of {n}\nvs the "
                                            "reference cohort (training split)")
    return table


def audit_report(synthetic_index: str | os.PathLike, real_index: str | os.PathLike,
                 split: str | os.PathLike, out_table: str | os.PathLike,
                 out_top: str | os.PathLike, out_png: str | os.PathLike,
                 threshold: float = 0.95, top: int = 20) -> pd.DataFrame:
    """Audit every synthetic image against the training-split images of its modality; write
    the full audit, the ``top`` closest pairs and the histogram. Returns the audit."""
    synthetic = ImageStore(synthetic_index)
    modalities = sorted(pd.unique(synthetic.table["modality"]))
    training = ImageStore(real_index, modalities=modalities,
                          participants=split_ids(split, "train"))
    if len(training) == 0:
        raise GenbrainInputError(f"{real_index}: no training-split images of {modalities}")
    audit = _audit.memorisation_audit(synthetic, training, progress=True)
    save_tsv(audit, out_table)
    save_tsv(audit.sort_values("max_r", ascending=False, kind="stable").head(int(top)), out_top)
    audit_histogram(audit, out_png, threshold,
                    title=f"memorisation audit: {len(audit)} synthetic vs {len(training)} "
                          "training images")
    return audit


def privacy_gate(audit: str | os.PathLike, threshold: float,
                 out_gate: str | os.PathLike) -> pd.DataFrame:
    """Write the one-row gate table when no synthetic image of the audit correlates with a
    training image above ``threshold``; otherwise raise
    :class:`genbrain.audit.PrivacyGateError` naming the pairs (and write nothing)."""
    table = read_tsv(audit)
    gate = _audit.privacy_gate(table, threshold, source=str(audit))
    save_tsv(gate, out_gate)
    log.info("privacy gate passed: %d synthetic images, max r %.4f <= %g", len(table),
             gate["max_r"].item(), threshold)
    return gate
