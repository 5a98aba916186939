"""The Snakemake HTML report renders in a real browser (headless Chromium through Selenium):
no severe console errors, every report category of the rules that ran is in the page, and the
provenance page opens inside it.

The report is built from a small slice (one simulated cohort of 4 standard-space subjects:
simulation and its ground truth, preprocessing, QC and provenance; about 20 s), so that a broken report fails fast;
the demo's own report, with every stage, is opened by tests/workflow/test_demo.py. The
expected categories are read from the ``report(category=...)`` calls of the rules that ran, so
a stage that joins the slice later brings its category with it.
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.workflow.browser import categories_by_rule, open_provenance_page, open_report, severe
from tests.workflow.helpers import ROOT, snakemake

# Categories the slice must show whatever the rules say: guards the derivation below against
# silently expecting nothing.
SLICE_MUST_SHOW = {"Simulation", "Preprocessing", "Provenance"}

SLICE_COHORT = {
    "role": "disorder",
    "modalities": ["T1w", "VBM"],
    "diagnosis_levels": ["CN", "SCZ"],
    "simulate": {"kind": "disorder", "age": [30, 60],
                 "sites": {"s1": {"n": 2}, "s2": {"n": 2}}},
}


def _rules_that_ran(log: str) -> set[str]:
    """Rule names of Snakemake's 'Job stats' table."""
    stats = log.split("Job stats:", 1)[1].strip().splitlines()
    names = set()
    for line in stats[2:]:  # header, dashes
        if not line.strip():
            break
        names.add(line.split()[0])
    return names


@pytest.fixture(scope="module")
def report(chromium, tmp_path_factory):
    """Run the slice, build its report; returns the report path, the work folder and the
    categories the report should show."""
    tmp = tmp_path_factory.mktemp("report")
    cfg = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    cfg.update(seed=5, cohorts={"slice": SLICE_COHORT})
    cfg["synthesize"]["cohorts"] = {}  # the slice has no pretraining cohort to draw them
    cfg["finetune"]["tasks"] = {}  # nor the case-control cohort the demo fine-tunes on
    cfg["bwas"]["analyses"] = {}  # whose fine-tunes BWAS compares
    cfg["preprocess"]["chunk_size"] = 2
    cfg["qc"]["mosaic_subjects"] = 2
    cfgfile = tmp / "slice.yaml"
    cfgfile.write_text(yaml.safe_dump(cfg))
    work = tmp / "work"
    res = snakemake("--configfile", str(cfgfile), "--cores", "2", "-d", str(work), timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ran = _rules_that_ran(res.stdout + res.stderr)
    html = tmp / "report.html"
    res = snakemake("--configfile", str(cfgfile), "-d", str(work), "--report", str(html),
                    timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    by_rule = categories_by_rule()
    expected = set().union(*(by_rule.get(r, set()) for r in ran))
    assert SLICE_MUST_SHOW <= expected, (ran, expected)
    return {"html": html, "work": work, "categories": expected}


def test_report_renders_without_severe_console_errors(report, browser):
    text = open_report(browser, report["html"])
    assert "genbrain-pipeline" in text  # the workflow description, rendered by the app
    assert severe(browser) == []


def test_every_category_of_the_rules_that_ran_is_shown(report, browser):
    lines = {line.strip() for line in open_report(browser, report["html"]).splitlines()}
    assert sorted(report["categories"] - lines) == []


def test_the_provenance_page_opens_inside_the_report(report, browser):
    page = open_provenance_page(browser, report["html"])
    record = json.loads((report["work"] / "results" / "provenance" / "provenance.json")
                        .read_text())
    assert record["config_sha256"] in page
    assert {r["rule"] for r in record["runtime"]} >= {"simulate_cohort", "preprocess_chunk"}
    for row in record["runtime"]:
        assert row["rule"] in page
    assert severe(browser) == []
