"""The smoke scenario (.test/smoke/config.yaml): every rule of the demo's DAG on tiny inputs, end
to end in minutes, its report opened in headless Chromium.

It runs with the overlay .test/smoke/public-init.yaml: one more fine-tune, which starts from a
checkpoint in the public GenBrain code's format (random weights, converted with the README's
``python -m genbrain.model.public``), and a synthetic cohort drawn from it through the audit, the
gate and the export. It checks that the workflow runs and that each stage writes what it
promises, not that the models learn (the demo does: tests/workflow/test_demo.py, ``make test-demo``). A dry-run test
keeps the scenario complete: every rule the demo's DAG schedules must be scheduled here too, so
a stage added to the demo and forgotten here fails `make test` at once.
"""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from genbrain import space
from genbrain.imaging.plan import KIND_METHODS
from genbrain.io import read_tsv
from genbrain.layout import PUBLIC, public_layout, standard_layout
from genbrain.model.public import main as import_public
from genbrain.store import ImageStore
from tests.public_checkpoint import AGE, write_full_size
from tests.workflow.browser import (
    categories_by_rule,
    open_provenance_page,
    open_report,
    severe,
)
from tests.workflow.helpers import ROOT, snakemake

SMOKE = ROOT / ".test" / "smoke" / "config.yaml"
PUBLIC_INIT = ROOT / ".test" / "smoke" / "public-init.yaml"  # its init: <work>/pretrained/...
DEMO = ROOT / "config" / "demo.yaml"
# Categories the smoke report must show whatever the rules say: guards the derivation from the
# rules' report() calls against silently expecting nothing.
MUST_SHOW = {"Simulation", "Preprocessing", "Pretraining", "Fine-tuning", "Synthetic images",
             "BWAS", "Diagnosis", "Fidelity record", "Provenance"}


def job_counts(log: str) -> dict[str, int]:
    """Rule name -> number of jobs, from Snakemake's 'Job stats' table."""
    assert "Job stats:" in log, log[-2000:]
    lines = log.split("Job stats:", 1)[1].strip().splitlines()
    out = {}
    for line in lines[2:]:  # header, dashes
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        out[parts[0]] = int(parts[1])
    return out


def test_the_smoke_dag_holds_every_rule_of_the_demo_dag(tmp_path):
    plans = {}
    for name, cfg in (("demo", DEMO), ("smoke", SMOKE)):
        res = snakemake("-n", "--configfile", str(cfg), "-d", str(tmp_path / name))
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        plans[name] = job_counts(res.stdout)
    assert len(plans["demo"]) >= 30, plans["demo"]  # the parse found the table
    assert sorted(set(plans["demo"]) - set(plans["smoke"])) == []
    # and it stays small: a few jobs per rule at most
    assert sum(plans["smoke"].values()) < sum(plans["demo"].values())


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """Import a public-format checkpoint into the work folder as the README does, run the smoke
    scenario with the overlay that fine-tunes it, and build the report; returns the work folder
    and the report."""
    tmp = tmp_path_factory.mktemp("smoke")
    work = tmp / "work"
    (work / "pretrained").mkdir(parents=True)
    public = write_full_size(work / "pretrained" / "0000200.pt")
    assert import_public(["--checkpoint", str(public), "--mask", PUBLIC,
                          "--age-mean", str(AGE["mean"]), "--age-std", str(AGE["std"]),
                          "--out", str(work / "pretrained" / "genbrain.pt")]) == 0
    configs = ("--configfile", str(SMOKE), str(PUBLIC_INIT))
    res = snakemake(*configs, "--cores", "2", "-d", str(work), timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    html = tmp / "report.html"
    res = snakemake(*configs, "-d", str(work), "--report", str(html), timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return {"work": work, "html": html}


@pytest.mark.slow
def test_every_rule_of_the_workflow_ran(smoke):
    # every rule writes a benchmark file: the rules that ran are the folders there
    ran = {p.name for p in (smoke["work"] / "results" / "benchmarks").iterdir()}
    assert sorted(set(categories_by_rule()) - ran) == []


@pytest.mark.slow
def test_each_stage_wrote_what_it_promises(smoke):
    cfg = yaml.safe_load(SMOKE.read_text())
    res = smoke["work"] / "results"
    # stores: every subject and modality, native subjects with their Jacobians
    for name, cohort in cfg["cohorts"].items():
        sites = cohort["simulate"]["sites"].values()
        n = sum(s["n"] for s in sites)
        n_native = sum(s["n"] for s in sites if s.get("native"))
        store = ImageStore(res / "stores" / name / "index.tsv")
        assert len(store) == n * len(cohort["modalities"]) + n_native, name
    assert read_tsv(res / "qc" / "stroke" / "registration.tsv")["qc_pass"].all()
    # pretraining and its synthetic cohorts, audited, gated and exported
    for name in ["pretrain", *cfg["synthesize"]["cohorts"]]:
        syn = ImageStore(res / "synthetic" / name / "index.tsv")
        assert np.isfinite(syn.batch(range(len(syn)))).all(), name
        assert bool(read_tsv(res / "evaluate" / "audit" / f"{name}_gate.tsv")["passed"].item())
        assert list((res / "export" / name).rglob("*.nii.gz")), name
    # what the pretrained model carries into paired samples: age and sex on the evaluated
    # modalities, and the fidelity rows they give
    checks = read_tsv(res / "pretrain" / "checks.tsv")
    gains = checks[checks["check"].isin(["age_sample_gain", "sex_sample_gain"])]
    assert set(gains["modality"]) == set(cfg["evaluate"]["similarity"]["modalities"])
    assert len(gains) == 2 * len(cfg["evaluate"]["similarity"]["modalities"])
    assert (res / "figures" / "pretrain" / "checks.png").read_bytes()[:4] == b"\x89PNG"
    # fine-tunes (one per site, or one pooled unit "all"), BWAS and diagnosis
    for task, spec in cfg["finetune"]["tasks"].items():
        for unit in spec["sites"] if spec.get("per_site") else ["all"]:
            assert (res / "finetune" / task / unit / "checkpoint.pt").exists(), (task, unit)
    for name, spec in cfg["bwas"]["analyses"].items():
        for site in cfg["finetune"]["tasks"][spec["finetune"]]["sites"]:
            for fwhm in cfg["bwas"].get("smoothing_fwhm", [0]):  # each kernel's own folder
                label = f"{site}_fwhm-{fwhm:g}" if fwhm else site
                scores = read_tsv(res / "bwas" / name / f"site-{label}" / "scores.tsv")
                assert len(scores) and np.isfinite(scores.select_dtypes("number")).any().any()
    for name in cfg["diagnosis"]["analyses"]:
        summary = read_tsv(res / "diagnosis" / name / "summary.tsv")
        assert len(summary) > 0, name
        for fig in ("heatmap", "ratios", "harmonization", "shap"):
            png = res / "figures" / "diagnosis" / name / f"{fig}.png"
            assert png.read_bytes()[:4] == b"\x89PNG", png
    # image tasks: the input and every method scored on every metric
    for name, task in cfg["imaging"]["tasks"].items():
        kind = task.get("kind", "enhancement")
        methods = task.get("methods", KIND_METHODS[kind])
        summary = read_tsv(res / "imaging" / name / "summary.tsv")
        assert set(summary["method"]) == {"input", *methods}, name
        assert summary["mean"].notna().all(), name
        # the biology: identifiability per image, its matrices; the similarity not computed
        # (n_test 2 < biology_min_n)
        assert {"r", "identified", "r_gap"} <= set(summary["metric"]), name
        assert set(task.get("metrics", ())) <= set(summary["metric"]), name
        corr = np.load(res / "imaging" / name / "correlations.npy")
        assert corr.shape == (1 + len(methods), task["n_test"], task["n_test"]), name
        sim = read_tsv(res / "imaging" / name / "similarity.tsv")
        assert set(sim["method"]) == {"target", "input", *methods}, name
        assert sim["note"].str.startswith("not computed").all(), name
        if kind != "synthesis":
            continue
        # every source a channel of the pairs ((n, K, V) with several)
        pairs = np.load(res / "imaging" / name / "pairs" / "test_source.npy", mmap_mode="r")
        assert pairs.shape[:-1] == ((task["n_test"], len(task["source"]))
                                    if isinstance(task["source"], list) else (task["n_test"],))
        # the DiT methods: fine-tuned from the pretrained model and from the random start of
        # its architecture, each on the task's training participants, sampled per test image
        sources = task["source"] if isinstance(task["source"], list) else [task["source"]]
        for method in ("genbrain", "scratch"):
            ckpt = torch.load(res / "imaging" / name / "models" / method / "checkpoint.pt",
                              weights_only=True)
            assert ckpt["config"]["train"]["sources"] == sources, method
            assert ckpt["config"]["train"]["modalities"] == [task["modality"]], method
            assert ckpt["step"] == task["train"]["steps"], method
            pred = np.load(res / "imaging" / name / "predictions" / f"{method}.npy")
            assert pred.shape[0] == task["n_test"] and np.isfinite(pred).all(), method
        starts = {m: torch.load(res / "imaging" / name / "models" / m / "checkpoint.pt",
                                weights_only=True)["config"]["init_checkpoint"]
                  for m in ("genbrain", "scratch")}
        assert starts == {"genbrain": "results/pretrain/checkpoint.pt",
                          "scratch": "results/imaging/scratch_init.pt"}
        # genbrain against every other method, paired over the test images
        vs = summary[summary["method"] == "genbrain"]
        assert set(vs["baseline"]) == {"input", *(m for m in methods if m != "genbrain")}
        rows = read_tsv(res / "fidelity" / "fidelity.tsv").set_index("claim_id")
        for base, metric in (("scratch", "psnr"), ("mean", "ssim3d")):
            row = rows.loc[f"imaging.genbrain_vs_{base}.{metric}"]
            assert row["subject"] == f"{name} genbrain vs {base}", row
    # clinical: one fit per (ratio, seed), the comparison against ratio 0
    for name in cfg["clinical"]["analyses"]:
        sweep = read_tsv(res / "clinical" / name / "sweep.tsv")
        assert len(sweep) == len(cfg["clinical"]["ratios"]) * cfg["clinical"]["seeds"], name
        comparison = read_tsv(res / "clinical" / name / "comparison.tsv")
        assert set(comparison["metric"]) >= {"test_mae", "test_r"}, name
    fidelity = read_tsv(res / "fidelity" / "fidelity.tsv")
    assert len(fidelity) > 0
    pretrained = fidelity[fidelity["claim_id"] == "pretrain.paired_sample_gain"]
    assert len(pretrained) == len(gains) and pretrained["measured"].notna().all()
    pool = fidelity[fidelity["claim_id"] == "clinical.pool_score_gain"]
    assert len(pool) == len(cfg["clinical"]["analyses"]) and pool["measured"].notna().all()


@pytest.mark.slow
def test_a_public_checkpoint_fine_tunes_and_its_cohort_is_audited_and_exported(smoke):
    """The overlay's fine-tune starts from the imported public checkpoint (layout
    fsl-t1-brain-nonzero): the store's standard vectors are converted to its layout on the way
    in and its samples back on the way out, so the synthetic store, the audit and the export
    see the standard layout, and the NIfTI are on the standard grid, zero outside the brain mask
    and on the 30 mask voxels the public layout lacks."""
    work, res = smoke["work"], smoke["work"] / "results"
    overlay = yaml.safe_load(PUBLIC_INIT.read_text())
    assert overlay["finetune"]["tasks"]["public"]["init"] == "pretrained/genbrain.pt"
    std, pub = standard_layout(), public_layout()
    log = (work / "logs" / "finetune_model" / "public" / "siteA.log").read_text()
    assert "pretrained/genbrain.pt" in log
    assert "its vectors are converted to the layout of" in log
    assert f"{std} -> {pub}" in log  # both layouts named, with their sizes and hashes
    config = torch.load(res / "finetune" / "public" / "siteA" / "checkpoint.pt",
                        weights_only=True)["config"]
    assert (config["layout"]["name"], config["layout"]["sha256"]) == (PUBLIC, pub.sha256)
    assert config["model"]["n_voxels"] == 228_453
    shard_logs = "".join(p.read_text() for p in (work / "logs" / "synthesize_shard" / "public")
                         .glob("*.log"))
    assert f"samples are converted to the standard layout: {pub} -> {std}" in shard_logs

    syn = ImageStore(res / "synthetic" / "public" / "index.tsv")
    assert len(syn) == 2 and syn.n_voxels == std.n_voxels
    assert np.isfinite(syn.batch(range(2))).all()
    assert len(read_tsv(res / "evaluate" / "audit" / "public.tsv")) == 2
    assert bool(read_tsv(res / "evaluate" / "audit" / "public_gate.tsv")["passed"].item())
    files = sorted((res / "export" / "public").rglob("*.nii.gz"))
    assert len(files) == 2
    for path in files:
        img = nib.load(path)
        np.testing.assert_allclose(img.affine, space.AFFINE)
        assert img.shape == space.SHAPE
        vol = np.asanyarray(img.dataobj)
        assert not vol[~std.mask].any(), path  # nothing outside the brain mask
        assert not vol[std.mask & ~pub.mask].any(), path  # the slice the public layout lacks
        assert np.count_nonzero(vol[pub.mask]) > 0.99 * pub.n_voxels, path


@pytest.mark.slow
def test_the_report_renders_with_every_category_of_the_rules(smoke, browser):
    by_rule = categories_by_rule()
    expected = set().union(*by_rule.values())
    assert MUST_SHOW <= expected, expected
    text = open_report(browser, smoke["html"])
    assert "genbrain-pipeline" in text  # the workflow description, rendered by the app
    assert sorted(expected - {line.strip() for line in text.splitlines()}) == []
    assert severe(browser) == []


@pytest.mark.slow
def test_the_provenance_page_opens_inside_the_report(smoke, browser):
    page = open_provenance_page(browser, smoke["html"])
    record = json.loads((smoke["work"] / "results" / "provenance" / "provenance.json")
                        .read_text())
    assert record["config_sha256"] in page
    assert {r["rule"] for r in record["runtime"]} == set(categories_by_rule()) - {"provenance"}
    for row in record["runtime"]:
        assert row["rule"] in page
    assert severe(browser) == []


DETERMINISM = ROOT / ".test" / "determinism" / "config.yaml"


def _digest(work):
    out = {}
    for p in sorted((work / "results").rglob("*")):
        if p.is_file() and p.suffix in (".tsv", ".npy") and "benchmarks" not in p.parts:
            out[str(p.relative_to(work))] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
def test_two_runs_of_the_determinism_scenario_give_identical_tables_and_stores(tmp_path):
    digests = []
    for k in range(2):
        work = tmp_path / f"run{k}"
        res = snakemake("--configfile", str(DETERMINISM), "--cores", "2", "-d", str(work),
                        timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        digests.append(_digest(work))
    assert len(digests[0]) >= 10
    assert digests[0] == digests[1]
