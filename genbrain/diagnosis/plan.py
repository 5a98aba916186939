"""The cross-site diagnosis stage (paper Fig. 6a-b): per training site, does a LightGBM
classifier of regional volumes generalise better to other sites when its training set is
augmented with images from the site's disease-conditioned fine-tune, and how does that compare
with ComBat harmonisation?

An analysis (config ``diagnosis.analyses.<name>``) names a per-site fine-tuning task
conditioned on diagnosis that trains on the cohort's ``train`` split only
(``finetune.tasks.<task>`` with ``per_site: true`` and ``split: train``), so the classifiers'
validation and test participants stay unseen by the generator. Every site of the cohort is a
training site (:class:`DiagnosisSite`):

- its **real-only** model (ratio 0) and its **harmonised** evaluations run for every site;
- a site with a fine-tune also gets a **synthetic pool**: ``ceil(max ratio x n_train)``
  images of the modality (T1w), the training split's covariates cycled in seeded
  permutations (:func:`pool_covariates`), drawn through the same synthesis jobs, memorisation
  audit and privacy gate as every synthetic cohort, and measured by the same volume backend as
  the real images;
- :func:`site_sweep` runs :func:`genbrain.diagnosis.classify.run_sweep` for the site on the shared
  split table (the one the fine-tune trained on) and explains its selected models (SHAP);
- :func:`summarise` gathers the sites: mean cross-site accuracy per method, pairs improved,
  the within-site real-only baseline, and whether the top regions are the simulated ones.

:func:`plan_diagnosis` runs at DAG build time: a config mistake is one line naming the key.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from genbrain.errors import GenbrainInputError
from genbrain.jobs import SiteJob, per_site_finetunes
from genbrain.splits import split_sites

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DiagnosisSite(SiteJob):
    """One training site of a diagnosis analysis.

    ``site``/``label``: its name in the participants table and its path label; ``levels``:
    the diagnosis levels, control first; ``model``: the fine-tune (``<task>/<label>``) that
    draws its synthetic pool ``synth`` (``dx-<analysis>-<label>``), "" when it has none
    (real-only and harmonised rows only); ``n_train``: its training-split size; ``n_pool``:
    its pool's size (0 without a model)."""

    STAGE = "diagnosis"
    SYNTH_PREFIX = "dx"
    TUPLES = ("levels",)

    analysis: str
    cohort: str
    site: str
    label: str
    levels: tuple[str, ...]
    modality: str
    model: str
    n_train: int
    n_pool: int


def analysis_ratios(section: Mapping, name: str) -> tuple[float, ...]:
    """The synthetic:real ratios of analysis ``name`` (its own ``ratios``, else the section's;
    default 0.0..3.0 by 0.1), checked."""
    from genbrain.diagnosis.classify import spec_from_config

    spec = dict(section.get("analyses", {}).get(name, {}))
    ratios = spec.get("ratios", section.get("ratios"))
    cfg = {} if ratios is None else {"ratios": ratios}
    out = spec_from_config(cfg, ("a", "b"), key=f"diagnosis.analyses.{name}").ratios
    if 0.0 not in out or min(out) < 0:
        raise GenbrainInputError(f"config: 'diagnosis.analyses.{name}.ratios' is {list(out)}; "
                                 "expected non-negative ratios including 0.0 (the real-only "
                                 "baseline)")
    return out


def plan_diagnosis(config: Mapping, cohorts: Mapping, finetunes: Mapping
                  ) -> dict[str, DiagnosisSite]:
    """Every training site of every ``diagnosis.analyses`` entry, checked against the cohorts
    (:class:`genbrain.workflow.Cohort`) and the planned fine-tunes
    (:class:`genbrain.finetune.FinetuneJob` by model name) -> {``<analysis>/<label>``: site}.
    The cohort's split is made here too, so a site whose classes cannot be split 3:1:1 stops
    the workflow at parse time."""
    section = config.get("diagnosis") or {}
    out: dict[str, DiagnosisSite] = {}
    for name, spec in (section.get("analyses") or {}).items():
        key = f"diagnosis.analyses.{name}"
        task = spec["finetune"]
        jobs, cohort = per_site_finetunes(key, task, finetunes, cohorts,
                                          "each training site needs its own fine-tune")
        first = next(iter(jobs.values()))
        if first.split != "train":
            raise GenbrainInputError(f"config: '{key}': fine-tuning task '{task}' trains on "
                                     f"split '{first.split}'; a classifier's validation and "
                                     "test participants must stay unseen by its generator "
                                     f"(set 'finetune.tasks.{task}.split: train')")
        modality = spec.get("modality", "T1w")
        if modality not in first.modalities:
            raise GenbrainInputError(f"config: '{key}.modality' is '{modality}'; fine-tune "
                                     f"task '{task}' trains on {list(first.modalities)}")
        if len(cohort.sites) < 2:
            raise GenbrainInputError(f"config: '{key}': cohort '{cohort.name}' has one site; "
                                     "cross-site diagnosis needs at least two")
        levels = tuple(first.diagnosis_levels)
        split = split_sites(cohort.table, levels, int(config["seed"]),
                            source=f"config: '{key}': cohort '{cohort.name}'")
        top = max(analysis_ratios(section, name))
        for site in cohort.sites:
            label = cohort.site_label(site)
            n_train = int(((split["site"] == site) & (split["split"] == "train")).sum())
            job = jobs.get(label)
            model = job.name if job is not None else ""
            n_pool = math.ceil(top * n_train - 1e-9) if model else 0
            if model and n_pool == 0:
                model = ""  # real-only ratios: nothing to draw
            out[f"{name}/{label}"] = DiagnosisSite(name, cohort.name, site, label, levels,
                                                   modality, model, n_train, n_pool)
    return out


def pool_covariates(job: DiagnosisSite, split: pd.DataFrame, participants: pd.DataFrame,
                    seed: int) -> pd.DataFrame:
    """The covariate table of a site's synthetic pool: ``job.n_pool`` rows, each mirroring a
    member of the site's training split (age, sex, diagnosis; ``reference_participant_id``),
    taken as the concatenation of seeded permutations of the training split, so the pool keeps
    the training set's covariate distribution and every member is mirrored equally often
    (within one)."""
    from genbrain.covariates import mirror_covariates

    train_ids = set(split.loc[(split["site"].astype(str) == job.site)
                              & (split["split"] == "train"), "participant_id"].astype(str))
    members = participants[participants["participant_id"].astype(str).isin(train_ids)]
    if len(members) != job.n_train:
        raise GenbrainInputError(f"{job.name}: the training split holds {len(members)} "
                                 f"participants of site '{job.site}'; the plan was made for "
                                 f"{job.n_train} (was the participants table edited? rerun)")
    members = members.assign(diagnosis=members["diagnosis"].astype(str))
    return mirror_covariates(members, job.n_pool, ["diagnosis"], job.modality, seed, job.synth)


def real_features(volume_tables: Sequence[pd.DataFrame], participants: pd.DataFrame,
                  split: pd.DataFrame, source: str = "volumes") -> pd.DataFrame:
    """One row per real participant: participant_id, site, age, sex, diagnosis, split and the
    volume columns (:data:`genbrain.diagnosis.volumes.COLUMNS`), from the per-site volume
    tables (as :func:`genbrain.diagnosis.volumes.read_volumes` returns them). One-line error for
    a participant of the split without volumes."""
    from genbrain.diagnosis import volumes as vol

    v = pd.concat(list(volume_tables), ignore_index=True)
    dup = v["participant_id"].duplicated()
    if dup.any():
        raise GenbrainInputError(f"{source}: participant '{v['participant_id'][dup].iloc[0]}' "
                                 "has volumes twice")
    cov = participants[["participant_id", "site", "age", "sex", "diagnosis"]].merge(
        split[["participant_id", "split"]], on="participant_id")
    missing = sorted(set(cov["participant_id"]) - set(v["participant_id"]))
    if missing:
        raise GenbrainInputError(f"{source}: no volumes for participant '{missing[0]}' "
                                 f"({len(missing)} missing)")
    keep = ["participant_id", *[c for c in vol.COLUMNS[1:] if c in v.columns]]
    return cov.merge(v[keep], on="participant_id")


def pool_features(volumes: pd.DataFrame, covariates: pd.DataFrame, source: str
                  ) -> pd.DataFrame:
    """A synthetic pool's feature table: its covariates (diagnosis, age, sex) joined to the
    volumes of its images by ``synthetic_id`` (the volume table's participant_id)."""
    v = volumes.rename(columns={"participant_id": "synthetic_id"})
    v["synthetic_id"] = pd.to_numeric(v["synthetic_id"], errors="coerce")
    out = covariates.merge(v, on="synthetic_id", how="left")
    if len(out) != len(covariates) or out.isna().any().any():
        raise GenbrainInputError(f"{source}: volumes for {int(v['synthetic_id'].notna().sum())}"
                                 f" synthetic images; the pool's covariate table has "
                                 f"{len(covariates)} rows")
    return out


def synthetic_volumes(job: DiagnosisSite, index: str, registry, method: str = "pve",
                      seed: int = 0) -> pd.DataFrame:
    """Volumes of a synthetic pool's store -> volume table whose ``Input-file`` is each
    image's ``synthetic_id`` (its covariate row); a one-line error when the store does not
    hold the pool's ``n_pool`` images."""
    from genbrain.diagnosis import volumes as vol
    from genbrain.store import ImageStore

    table = ImageStore(index, modalities=[job.modality]).table
    if len(table) != job.n_pool:
        raise GenbrainInputError(f"{index}: {len(table)} {job.modality} images; the synthetic "
                                 f"pool of {job.name} has {job.n_pool}")
    out = vol.store_volumes(index, registry, t1_modality=job.modality, seed=seed, method=method)
    sid = dict(zip(table["participant_id"].astype(str), table["synthetic_id"].astype(int)))
    out[vol.ID_COLUMN] = [str(sid[str(p)]) for p in out[vol.ID_COLUMN]]
    return out


def sweep_inputs(job: DiagnosisSite, volume_csvs: Sequence[str], participants: str,
                 split: str, pool_csv: str | None = None, pool_covariates_tsv: str | None = None
                 ) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Read a sweep's inputs -> (real features with the shared split, the synthetic pool's
    features or None). The split table must be the one :func:`plan_diagnosis` planned (the
    fine-tune's): a site whose training split changed size is a one-line error."""
    from genbrain.diagnosis import volumes as vol
    from genbrain.io import read_tsv

    split_t = read_tsv(split)
    features = real_features([vol.read_volumes(p) for p in volume_csvs], read_tsv(participants),
                             split_t, source=", ".join(map(str, volume_csvs[:1])) + " ...")
    n_train = int(((features["site"].astype(str) == job.site)
                   & (features["split"] == "train")).sum())
    if n_train != job.n_train:
        raise GenbrainInputError(f"{split}: site '{job.site}' has {n_train} training "
                                 f"participants; the plan was made for {job.n_train} (rerun)")
    pool = None
    if pool_csv:
        pool = pool_features(vol.read_volumes(pool_csv), read_tsv(pool_covariates_tsv),
                             str(pool_csv))
    return features, pool


def site_sweep(job: DiagnosisSite, features: pd.DataFrame, pool: pd.DataFrame | None,
               section: Mapping, n_jobs: int = 1, seed: int = 0) -> dict[str, pd.DataFrame]:
    """One training site's sweep (:func:`genbrain.diagnosis.classify.run_sweep` with the split in
    ``features``) -> {"sweep": the tidy result table, "selection": every (ratio,
    configuration)'s validation scores, "shap": mean |SHAP| per feature of the selected
    real-only and augmented models}."""
    from genbrain.diagnosis import classify as cl
    from genbrain.diagnosis import volumes as vol

    cfg = {k: v for k, v in section.items() if k in ("n_configs", "n_boot", "fixed")}
    cfg["ratios"] = list(analysis_ratios(section, job.analysis))
    cfg["harmonize"] = bool(section.get("harmonize", True))
    spec = cl.spec_from_config(cfg, job.levels, n_jobs, key="diagnosis")
    spec = cl.SweepSpec(**{**asdict(spec), "seed": int(seed)})
    feats = [c for c in vol.COLUMNS[1:] if c in features.columns]
    pools = {job.site: pool} if pool is not None else None
    log.info("%s: %d ratios x %d LightGBM configurations on %d features; %d real training "
             "subjects, synthetic pool %d", job.name, len(spec.ratios) if pool is not None else 1,
             spec.n_configs, len(feats), job.n_train, 0 if pool is None else len(pool))
    res = cl.run_sweep(features, feats, spec, pools, train_sites=[job.site],
                       splits=features["split"] if "split" in features.columns else None)
    table = res.table
    table.insert(0, "analysis", job.analysis)
    shap = cl.explain(res, feats, len(job.levels))
    shap.insert(0, "analysis", job.analysis)
    sel = res.selection
    sel.insert(0, "analysis", job.analysis)
    return {"sweep": table, "selection": sel, "shap": shap}


def summarise(sweeps: Sequence[pd.DataFrame], shap: Sequence[pd.DataFrame],
              diseased: Sequence[str] | None = None, k: int = 5) -> dict[str, pd.DataFrame]:
    """An analysis's summary -> {"summary": per (method, metric) the mean cross-site value
    over pairs, its mean difference from real-only with a 95% CI, and pairs better / CI above
    and below 0, plus the within-site real-only baseline; "regions": per (site, method) the
    top-``k`` SHAP regions and, when ``diseased`` (the simulated disease's structures) is
    given, their overlap with them}.

    The CI of a mean difference over P pairs combines the pairs' bootstrap CIs: each pair's
    standard error is its CI width / 3.92, the pairs' test sets are independent samples, and
    ``SE(mean) = sqrt(sum SE_i^2) / P`` (normal approximation; pairs that share a training site
    share its model, so this is the evaluation's sampling error, not the training's)."""
    from genbrain.diagnosis import classify as cl

    table = pd.concat(list(sweeps), ignore_index=True)
    rows = []
    for metric in cl.METRICS:
        summ = cl.summarise_cross_site(table, metric)
        cross = table[(table["setting"] == "cross") & (table["metric"] == metric)]
        for r in summ.itertuples():
            g = cross[cross["method"] == r.method]
            if r.method != "real":
                g = g[g["chosen"].astype(bool) | (g["method"] == "harmonized")]
            se = (g["diff_high"] - g["diff_low"]) / 3.92
            se_mean = float(np.sqrt((se ** 2).sum()) / len(g)) if r.method != "real" else np.nan
            rows.append({"setting": "cross", "method": r.method, "metric": metric,
                         "pairs": r.pairs, "mean": r.mean, "mean_diff": r.mean_diff,
                         "diff_low": r.mean_diff - 1.96 * se_mean,
                         "diff_high": r.mean_diff + 1.96 * se_mean,
                         "pairs_better": r.pairs_better, "pairs_ci_above_0": r.pairs_ci_above_0,
                         "pairs_ci_below_0": r.pairs_ci_below_0})
        within = table[(table["setting"] == "within") & (table["metric"] == metric)
                       & (table["method"] == "real")]
        if len(within):
            rows.append({"setting": "within", "method": "real", "metric": metric,
                         "pairs": len(within), "mean": float(within["value"].mean()),
                         "mean_diff": 0.0, "diff_low": np.nan, "diff_high": np.nan,
                         "pairs_better": 0, "pairs_ci_above_0": 0, "pairs_ci_below_0": 0})
        aug = table[(table["setting"] == "within") & (table["metric"] == metric)
                    & table["chosen"].astype(bool) & (table["method"] == "augmented")]
        if len(aug):
            se = (aug["diff_high"] - aug["diff_low"]) / 3.92
            se_mean = float(np.sqrt((se ** 2).sum()) / len(aug))
            md = float(aug["diff"].mean())
            rows.append({"setting": "within", "method": "augmented", "metric": metric,
                         "pairs": len(aug), "mean": float(aug["value"].mean()),
                         "mean_diff": md, "diff_low": md - 1.96 * se_mean,
                         "diff_high": md + 1.96 * se_mean,
                         "pairs_better": int((aug["diff"] > 0).sum()),
                         "pairs_ci_above_0": int((aug["diff_low"] > 0).sum()),
                         "pairs_ci_below_0": int((aug["diff_high"] < 0).sum())})
    regions = []
    imp = pd.concat(list(shap), ignore_index=True)
    for (site, method), g in imp.groupby(["train_site", "method"], sort=True):
        ranking = list(g.sort_values("rank")["feature"])
        row = {"train_site": site, "method": method, "ratio": float(g["ratio"].iloc[0]),
               "top": "; ".join(ranking[:k])}
        if diseased:
            row.update(cl.region_overlap(ranking, diseased, k))
        regions.append(row)
    return {"summary": pd.DataFrame(rows), "regions": pd.DataFrame(regions)}


def summary_outputs(sweep_tsvs: Sequence[str], shap_tsvs: Sequence[str], analysis: str,
                    simulated: bool, out: Mapping[str, str]) -> None:
    """Write an analysis's summary (``out['summary']``, ``out['regions']``) and its figures
    (``heatmap``, ``ratios``, ``harmonization``, ``shap``) from its sites' tables."""
    from genbrain.diagnosis import figures as cf
    from genbrain.io import read_tsv, save_tsv

    sweeps = [read_tsv(p) for p in sweep_tsvs]
    shap = [read_tsv(p) for p in shap_tsvs]
    diseased = simulated_disease_structures() if simulated else None
    res = summarise(sweeps, shap, diseased)
    res["summary"].insert(0, "analysis", analysis)
    res["regions"].insert(0, "analysis", analysis)
    save_tsv(res["summary"], out["summary"])
    save_tsv(res["regions"], out["regions"])
    table = pd.concat(sweeps, ignore_index=True)
    for c in ("chosen",):
        table[c] = table[c].astype(str).str.lower().isin(["true", "1"])
    cf.heatmap(table, out["heatmap"], title=f"{analysis}: accuracy change with augmentation "
               "at the chosen ratio (%)")
    cf.ratio_curves(table, out["ratios"], title=f"{analysis}: metric vs synthetic:real ratio")
    cf.harmonization_bars(table, out["harmonization"],
                          title=f"{analysis}: cross-site, augmentation vs ComBat")
    cf.shap_summary(pd.concat(shap, ignore_index=True), out["shap"],
                    title=f"{analysis}: regions driving the selected models")


def simulated_disease_structures() -> list[str]:
    """The volume columns whose grey matter the embedded disorder cohort's disease changes
    (:data:`genbrain.anatomy.REGIONS` ``disease_gm``)."""
    from genbrain.anatomy import REGIONS
    from genbrain.diagnosis.volumes import structures_of_labels

    return structures_of_labels(REGIONS["disease_gm"])
