"""The BWAS stage (genbrain.bwas.plan, genbrain.bwas.analysis): planning, the synthetic
covariates, one site's analysis on full-size stores with a planted effect, its files, and the
fidelity rows they feed."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from genbrain.bwas.analysis import (
    heldout_agreement,
    read_d_maps,
    screen_sites,
    site_analysis,
    site_figures,
    site_screen,
    write_site_analysis,
)
from genbrain.bwas.plan import BwasSite, plan_bwas, synthetic_covariates
from genbrain.errors import GenbrainInputError
from genbrain.fidelity import fidelity_table
from genbrain.finetune import FinetuneJob
from genbrain.io import read_tsv, save_tsv
from genbrain.space import standard_space
from genbrain.stats.cohens_d import as_cohort
from genbrain.store import write_shard
from genbrain.tables import site_label

SITES = ("S1", "S2", "S3", "S4")


def _job(**kw):
    base = {"analysis": "scz", "cohort": "scz", "site": "S1", "label": "S1",
            "modality": "VBM", "model": "scz/S1", "reference_sites": ("S2", "S3", "S4"),
            "control": "CN", "mask": "gm", "gm_threshold": 0.2, "n_real": 40,
            "n_reference": 120, "n_synthetic": 120}
    base.update(kw)
    return BwasSite(**base)


def _participants(n_per_site=40, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for s in SITES:
        for i in range(n_per_site):
            rows.append({"participant_id": f"sub-{s}{i:03d}", "site": s,
                         "age": round(float(rng.uniform(25, 70)), 1), "sex": "MF"[i % 2],
                         "diagnosis": "SCZ" if i % 4 < 2 else "CN"})
    return pd.DataFrame(rows)


def _truth():
    """A smooth planted effect over the brain (VBM units)."""
    xyz = standard_space().world_coords
    return 0.04 * np.sin(xyz[:, 0] / 14.0) * np.cos(xyz[:, 1] / 18.0) + 0.01


def _images(table, truth, seed, site_shift=True, sign=None):
    """Normalised VBM-like vectors ((raw - 0.35) / 0.25): a GM-like base, the planted effect
    for patients (times ``sign[site]``, default 1), age, site offsets and noise."""
    rng = np.random.default_rng(seed)
    v = len(truth)
    base = 0.45 + 0.1 * np.cos(np.arange(v) / 5000.0)
    x = np.empty((len(table), v), np.float32)
    shift = {s: 0.01 * k for k, s in enumerate(SITES)} if site_shift else {}
    for i, row in enumerate(table.itertuples()):
        effect = (sign or {}).get(row.site, 1.0) * truth
        raw = (base + (row.diagnosis == "SCZ") * effect - 0.001 * (row.age - 50)
               + shift.get(row.site, 0.0) + 0.05 * rng.standard_normal(v))
        x[i] = (raw - 0.35) / 0.25
    return x


def _store(folder, table, x):
    folder.mkdir(parents=True, exist_ok=True)
    write_shard(x, folder / "VBM.npy", "float16")
    save_tsv(table.assign(modality="VBM", modality_index=1, shard="VBM.npy",
                          row=np.arange(len(table))), folder / "index.tsv")
    return folder / "index.tsv"


def test_synthetic_covariates_mirror_the_reference_and_keep_its_patient_fraction():
    table = _participants(n_per_site=30)
    full = synthetic_covariates(_job(n_real=30, n_reference=90, n_synthetic=90), table, 1)
    ref = table[table["site"] != "S1"]
    assert list(full["reference_participant_id"]) == list(ref["participant_id"])
    assert list(full["age"]) == list(ref["age"]) and set(full["modality"]) == {"VBM"}
    assert list(full["synthetic_id"]) == list(range(90))
    capped_job = _job(n_real=30, n_reference=90, n_synthetic=45)
    capped = synthetic_covariates(capped_job, table, 1)
    assert len(capped) == 45 and capped["reference_participant_id"].is_unique
    # the reference holds 48 patients and 42 controls: 45 x 48 / 90 = 24 and 21
    assert capped["diagnosis"].value_counts().to_dict() == {"SCZ": 24, "CN": 21}
    odd = synthetic_covariates(_job(n_real=30, n_reference=90, n_synthetic=31), table, 1)
    # 16.53 and 14.47: the larger remainder (patients) gets the 31st row
    assert odd["diagnosis"].value_counts().to_dict() == {"SCZ": 17, "CN": 14}
    pd.testing.assert_frame_equal(capped, synthetic_covariates(capped_job, table, 1))
    assert not capped.equals(synthetic_covariates(capped_job, table, 2))
    with pytest.raises(GenbrainInputError, match="the plan was made for 100"):
        synthetic_covariates(_job(n_reference=100), table, 1)


def _plan(sizes, **bwas):
    """plan_bwas of one analysis of a per-site, diagnosis-conditioned task on SITES."""
    cohort = SimpleNamespace(name="scz", sites=list(SITES), table=_participants(n_per_site=12),
                             site_label=site_label)
    jobs = {f"scz/{s}": FinetuneJob("scz", s, "scz", (s,), ("VBM",), ("CN", "SCZ"), None, (),
                                    True, "all", "pretrain") for s in SITES}
    config = {"bwas": {"agreement": {"sizes": sizes, "repeats": 1},
                       "analyses": {"scz": {"finetune": "scz", "modality": "VBM"}}, **bwas}}
    return plan_bwas(config, {"scz": cohort}, jobs)


def test_plan_refuses_agreement_sizes_a_subsample_design_cannot_fit():
    with pytest.raises(GenbrainInputError) as err:
        _plan([20, 4])
    msg = str(err.value)
    assert msg.startswith("config: 'bwas.agreement.sizes' has 4;") and "must exceed 4" in msg
    assert "intercept, age, sex, diagnosis" in msg and "reference" not in msg
    jobs, _ = _plan([5, 20])
    assert sorted(jobs) == [f"scz/{s}" for s in SITES]


def test_an_agreement_subsample_that_cannot_be_fitted_is_named_as_such():
    table = _participants(n_per_site=10)
    x = np.random.default_rng(0).standard_normal((len(table), 64)).astype(np.float32)
    pool = as_cohort(x, table, label="scz/S1 reference")
    with pytest.raises(GenbrainInputError) as err:  # a size the plan refuses, forced here
        heldout_agreement(pool, np.ones(64, bool), [4], control="CN", n_repeats=1)
    msg = str(err.value)
    assert "agreement subsample of 4 (repeat 0; bwas.agreement.sizes): 4 subjects" in msg


def test_job_round_trips_through_a_plain_dict():
    job = _job()
    assert BwasSite.from_dict(job.to_dict()) == job
    assert job.synth == "bwas-scz-S1" and job.out_dir == "results/bwas/scz/site-S1"
    # unsmoothed, the dict (a rule's params) is what it was before the option existed
    assert "smoothing_fwhm" not in job.to_dict()
    smoothed = _job(smoothing_fwhm=7.5)
    assert BwasSite.from_dict(smoothed.to_dict()) == smoothed
    assert smoothed.out_dir == "results/bwas/scz/site-S1_fwhm-7p5"
    assert smoothed.name == "scz/S1_fwhm-7p5" and smoothed.synth == job.synth


def test_each_smoothing_kernel_is_a_site_of_its_own_on_the_one_synthetic_cohort():
    plain, plain_screens = _plan([5])
    assert plain == _plan([5], smoothing_fwhm=0)[0]
    jobs, screens = _plan([5], smoothing_fwhm=[0, 8.0])
    assert sorted(jobs) == sorted([f"scz/{s}" for s in SITES]
                                  + [f"scz/{s}_fwhm-8" for s in SITES])
    for s in SITES:
        assert jobs[f"scz/{s}"] == plain[f"scz/{s}"]  # the unsmoothed sites are untouched
        smoothed = jobs[f"scz/{s}_fwhm-8"]
        assert smoothed == dataclasses.replace(plain[f"scz/{s}"], smoothing_fwhm=8.0)
        assert smoothed.out_dir == f"results/bwas/scz/site-{s}_fwhm-8"
    assert len({j.synth for j in jobs.values()}) == len(SITES)  # sampled once per site
    assert [(j.site, j.smoothing_fwhm) for j in screens["scz"]] == [
        (s, f) for f in (0.0, 8.0) for s in SITES]
    assert screens["scz"][:len(SITES)] == plain_screens["scz"]
    for value, message in (([8, 8.0], "lists 8 and 8.0: the same kernel twice"),
                           ([0, -2], "is -2; expected a number of mm >= 0"),
                           ([], "is an empty list")):
        with pytest.raises(GenbrainInputError, match=message):
            _plan([5], smoothing_fwhm=value)


@pytest.fixture(scope="module")
def site_run(tmp_path_factory):
    """A site (S1, n 40) and its reference (S2-S4, n 120) from one planted effect; a
    "synthetic" cohort of 120 drawn from the same process without site offsets: it carries
    the same effect with 3x the site's n, so it must agree better with the reference."""
    tmp = tmp_path_factory.mktemp("bwas")
    truth = _truth()
    table = _participants()
    real_index = _store(tmp / "real", table, _images(table, truth, 0))
    job = _job()
    cov = synthetic_covariates(job, table, 3)
    # as synthesis indexes them (genbrain.synthesize.synthesize_shard)
    cov = cov.assign(participant_id=[f"syn{i:06d}" for i in cov["synthetic_id"]],
                     site="synthetic")
    syn_index = _store(tmp / "syn", cov, _images(cov, truth, 1, site_shift=False))
    result = site_analysis(job, real_index, syn_index, truth=truth, n_boot=60, n_null=4,
                           sizes=(10, 20, 40), n_repeats=2, seed=7)
    return SimpleNamespace(tmp=tmp, truth=truth, table=table, real_index=real_index,
                           syn_index=syn_index, job=job, result=result)


def test_site_analysis_scores_the_larger_synthetic_cohort_closer_to_the_reference(site_run):
    res = site_run.result
    scores = res["scores"].set_index("metric")
    assert scores.loc["r", "synthetic"] > scores.loc["r", "real"] > 0.2
    assert scores.loc["r", "difference_ci_low"] > 0
    assert scores.loc["dice", "synthetic"] > scores.loc["dice", "chance_synthetic"]
    assert (res["scores"]["n_boot"] == 60).all() and set(res["scores"]["site"]) == {"S1"}
    maps = res["maps"].set_index("map")
    assert list(maps["n"]) == [120, 40, 120]
    # the planted effect is recovered, better by the bigger cohorts
    assert maps.loc["synthetic", "r_truth"] > maps.loc["real", "r_truth"] > 0.3
    assert maps.loc["reference", "r_truth"] > 0.5
    # the analysis mask: mean raw GM of the reference > 0.2 (the base is 0.35-0.55)
    assert res["mask"].all()
    curve, eff = res["agreement"], res["effective_n"].iloc[0]
    assert sorted(curve["n"].unique()) == [10, 20, 40]
    assert (curve["n_reference"] == 120 - curve["n"]).all()
    assert eff["n_effective_model"] > eff["n_real_model"] and eff["gain_model"] > 1
    assert np.isnan(res["d"]["real"]).sum() == 0


@pytest.fixture(scope="module")
def smoothed_run(site_run):
    """site_run's stores analysed at 8 mm FWHM (the same synthetic cohort)."""
    job = dataclasses.replace(site_run.job, smoothing_fwhm=8.0)
    result = site_analysis(job, site_run.real_index, site_run.syn_index, truth=site_run.truth,
                           n_boot=20, n_null=2, sizes=(10, 20), n_repeats=1, seed=7)
    return SimpleNamespace(job=job, result=result)


def test_smoothing_brings_every_map_closer_to_the_planted_truth(site_run, smoothed_run):
    """Why the field smooths VBM maps: the planted effect is regional and the noise is voxel
    by voxel, so averaging neighbours raises each noisy map's r with the truth (unsmoothed,
    the population effect) and the maps' agreement with each other."""
    plain = site_run.result["maps"].set_index("map")
    smooth = smoothed_run.result["maps"].set_index("map")
    for m in ("real", "synthetic", "reference"):  # at least half of what r misses of 1
        assert 1 - smooth.loc[m, "r_truth"] < 0.5 * (1 - plain.loc[m, "r_truth"]), m
    assert smooth.loc["real", "r_truth"] > 0.8 > plain.loc["real", "r_truth"]
    assert smooth.loc["real", "r_reference"] > plain.loc["real", "r_reference"] + 0.1
    assert list(smooth["n"]) == list(plain["n"])
    # the same voxels are scored: the mask is the unsmoothed reference's mean grey matter
    assert np.array_equal(smoothed_run.result["mask"], site_run.result["mask"])
    scores = smoothed_run.result["scores"].set_index("metric")
    assert scores.loc["r", "real"] == pytest.approx(smooth.loc["real", "r_reference"])
    assert (scores["n_boot"] == 20).all()
    # the d maps themselves are smoother: neighbouring voxels agree more
    space = standard_space()
    for m in ("real", "synthetic"):
        vols = [space.to_volume(np.nan_to_num(r["d"][m])) for r in (site_run.result,
                                                                     smoothed_run.result)]
        lag1 = [np.corrcoef(v[1:][space.mask[1:] & space.mask[:-1]],
                            v[:-1][space.mask[1:] & space.mask[:-1]])[0, 1] for v in vols]
        assert lag1[1] > 0.95 and lag1[1] > lag1[0] + 0.1, (m, lag1)


def test_a_smoothed_site_writes_its_own_files_and_fidelity_rows(site_run, smoothed_run,
                                                                 tmp_path):
    for run in (site_run, smoothed_run):
        out_dir = tmp_path / run.job.out_dir
        output = SimpleNamespace(scores=out_dir / "scores.tsv", maps=out_dir / "maps.tsv",
                                 agreement=out_dir / "agreement.tsv",
                                 effective=out_dir / "effective_n.tsv",
                                 d_maps=out_dir / "d_maps")
        write_site_analysis(run.result, output)
    figs = SimpleNamespace(maps=tmp_path / "maps.png", gain=tmp_path / "gain.png")
    site_figures(smoothed_run.job, output, figs)
    assert figs.maps.stat().st_size > 10_000
    table = fidelity_table(tmp_path / "results")
    rows = table[table["claim_id"].str.startswith("bwas.")]
    for claim in ("bwas.gain_r", "bwas.gain_dice", "bwas.truth_gain", "bwas.effective_n"):
        assert rows.loc[rows["claim_id"] == claim, "subject"].tolist() == [
            "scz S1", "scz S1 fwhm 8"], claim
    truth = rows[rows["claim_id"] == "bwas.truth_gain"].set_index("subject")
    maps = smoothed_run.result["maps"].set_index("map")
    assert truth.loc["scz S1 fwhm 8", "measured"] == pytest.approx(
        maps.loc["synthetic", "r_truth"] - maps.loc["real", "r_truth"])
    assert truth.loc["scz S1 fwhm 8", "source"].endswith("site-S1_fwhm-8/maps.tsv")


def test_site_analysis_is_reproducible_with_its_seed(site_run):
    again = site_analysis(site_run.job, site_run.real_index, site_run.syn_index,
                          truth=site_run.truth, n_boot=60, n_null=4, sizes=(10, 20, 40),
                          n_repeats=2, seed=7)
    for key in ("scores", "maps", "agreement", "effective_n"):
        pd.testing.assert_frame_equal(again[key], site_run.result[key])


def test_site_files_figures_and_fidelity_rows(site_run):
    out_dir = site_run.tmp / "results" / "bwas" / "scz" / "site-S1"
    output = SimpleNamespace(scores=out_dir / "scores.tsv", maps=out_dir / "maps.tsv",
                             agreement=out_dir / "agreement.tsv",
                             effective=out_dir / "effective_n.tsv", d_maps=out_dir / "d_maps")
    write_site_analysis(site_run.result, output)
    d = read_d_maps(output.d_maps)
    for name, want in site_run.result["d"].items():
        np.testing.assert_allclose(d[name], want, atol=1e-6)  # float32 NIfTI
    figs = SimpleNamespace(maps=site_run.tmp / "maps.png", gain=site_run.tmp / "gain.png")
    site_figures(site_run.job, output, figs)
    assert figs.maps.stat().st_size > 10_000 and figs.gain.stat().st_size > 10_000
    table = fidelity_table(site_run.tmp / "results")
    rows = table[table["claim_id"].str.startswith("bwas.")].set_index("claim_id")
    assert set(rows.index) == {"bwas.gain_r", "bwas.gain_dice", "bwas.truth_gain",
                               "bwas.effective_n"}
    assert (rows["subject"] == "scz S1").all()
    assert rows.loc["bwas.gain_r", "verdict"] == "met"
    assert rows.loc["bwas.gain_r", "ci_low"] > 0
    assert rows.loc["bwas.truth_gain", "verdict"] == "met"
    scores = read_tsv(output.scores).set_index("metric")
    assert rows.loc["bwas.gain_r", "measured"] == pytest.approx(scores.loc["r", "difference"])


def test_a_gain_whose_ci_reaches_zero_is_not_met(site_run, tmp_path):
    out_dir = tmp_path / "bwas" / "scz" / "site-S1"
    out_dir.mkdir(parents=True)
    scores = site_run.result["scores"].copy()
    scores.loc[scores["metric"] == "r", "difference_ci_low"] = -0.01
    save_tsv(scores, out_dir / "scores.tsv")
    table = fidelity_table(tmp_path)
    row = table[table["claim_id"] == "bwas.gain_r"].iloc[0]
    assert row["verdict"] == "not met" and row["measured"] > 0
    missing = table[table["claim_id"] == "bwas.truth_gain"].iloc[0]
    assert missing["verdict"] == "not measured" and "maps.tsv" in missing["source"]


def test_screen_of_a_site_with_the_population_effect(site_run):
    screen = site_screen(site_run.job, site_run.real_index, seed=0).iloc[0]
    assert screen["site"] == "S1" and screen["n"] == 40
    assert screen["r_prior"] > 0.2 and screen["verdict"] == "benefit"
    # smoothed, the site's map is more reliable and closer to the (smoothed) reference's
    job = dataclasses.replace(site_run.job, smoothing_fwhm=8.0)
    smoothed = screen_sites([job], site_run.real_index, n_splits=4, seed=0).iloc[0]
    plain = site_screen(site_run.job, site_run.real_index, n_splits=4, seed=0).iloc[0]
    assert smoothed["reliability"] > plain["reliability"] + 0.1
    assert smoothed["r_prior"] > plain["r_prior"] + 0.1
    # the screen smooths the store once for all its sites; one site alone smooths it itself
    alone = site_screen(job, site_run.real_index, n_splits=4, seed=0).iloc[0]
    assert alone.drop(["fine_tuned", "n_reference"], errors="ignore").equals(
        smoothed.drop(["fine_tuned", "n_reference"]))
    with pytest.raises(GenbrainInputError, match="one modality at one smoothing kernel"):
        screen_sites([site_run.job, job], site_run.real_index)


def test_site_analysis_refuses_a_synthetic_store_of_the_wrong_size(site_run):
    with pytest.raises(GenbrainInputError, match="the synthetic cohort of scz/S1 has 99"):
        site_analysis(_job(n_synthetic=99), site_run.real_index, site_run.syn_index,
                      n_boot=10, n_null=0, sizes=(10,))


def test_every_table_names_the_site_by_its_name_not_its_path_label(tmp_path):
    truth = _truth()
    table = _participants(n_per_site=20)
    table["site"] = table["site"].replace({"S1": "Site S-1"})
    real_index = _store(tmp_path / "real", table, _images(table, truth, 0))
    job = _job(site="Site S-1", label=site_label("Site S-1"), n_real=20, n_reference=60,
               n_synthetic=60)
    assert job.label == "SiteS1" and job.out_dir == "results/bwas/scz/site-SiteS1"
    cov = synthetic_covariates(job, table, 3)
    cov = cov.assign(participant_id=[f"syn{i:06d}" for i in cov["synthetic_id"]],
                     site="synthetic")
    syn_index = _store(tmp_path / "syn", cov, _images(cov, truth, 1, site_shift=False))
    result = site_analysis(job, real_index, syn_index, truth=truth, n_boot=10, n_null=0,
                           sizes=(20,), n_repeats=1, seed=7)
    for key in ("scores", "maps", "effective_n"):
        assert set(result[key]["site"]) == {"Site S-1"}, key
    # the fidelity record too: its subject reads the site from the tables, not the path
    out_dir = tmp_path / job.out_dir
    write_site_analysis(result, SimpleNamespace(
        scores=out_dir / "scores.tsv", maps=out_dir / "maps.tsv",
        agreement=out_dir / "agreement.tsv", effective=out_dir / "effective_n.tsv",
        d_maps=out_dir / "d_maps"))
    record = fidelity_table(tmp_path / "results")
    rows = record[record["claim_id"].str.startswith("bwas.")]
    assert len(rows) == 4 and set(rows["subject"]) == {"scz Site S-1"}
    assert rows["source"].str.contains("site-SiteS1/").all()


def test_gm_mask_refuses_a_map_that_is_not_grey_matter(tmp_path):
    table = _participants(n_per_site=10)
    x = np.full((len(table), standard_space().n_voxels), -2.0, np.float32)  # raw -0.15
    index = _store(tmp_path, table, x)
    job = _job(n_real=10, n_reference=30, n_synthetic=30)
    with pytest.raises(GenbrainInputError, match="is it a grey-matter map"):
        site_screen(job, index)


def test_screen_turns_down_a_discordant_site_and_reports_an_unfittable_one(tmp_path):
    truth = _truth()
    table = _participants(n_per_site=40)
    table.loc[table["site"] == "S3", "diagnosis"] = "CN"  # a control-only site
    # S4's patients differ the opposite way (at half the size, so that the pooled reference
    # of each of the other sites still carries the population's effect)
    index = _store(tmp_path, table, _images(table, truth, 5, sign={"S4": -0.5}))
    jobs = [_job(site=s, label=s, model="scz/S1" if s == "S1" else "",
                 reference_sites=tuple(o for o in SITES if o != s), n_real=40,
                 n_reference=120, n_synthetic=120 if s == "S1" else 0) for s in SITES]
    screen = screen_sites(jobs, index, seed=0).set_index("site")
    assert list(screen.index) == list(SITES)
    assert screen["fine_tuned"].tolist() == [True, False, False, False]
    assert (screen["n_reference"] == 120).all()
    assert screen.loc["S1", "verdict"] == "benefit" and screen.loc["S2", "verdict"] == "benefit"
    # S4: a reliable signal pointing elsewhere
    assert screen.loc["S4", "r_prior"] < -0.2
    assert screen.loc["S4", "verdict"] == "no benefit"
    assert screen.loc["S4", "reason"] == "discordant"
    assert screen.loc["S3", "verdict"] == "not screened"
    assert "one level 'CN' only" in screen.loc["S3", "reason"]
