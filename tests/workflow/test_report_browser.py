"""The Snakemake HTML report renders in a real browser (headless Chromium through Selenium):
no severe console errors, every report category of the rules that ran is in the page, and the
provenance page opens inside it.

The report is built from a small slice (one simulated cohort of 4 standard-space subjects:
simulation, preprocessing, QC and provenance; about 20 s), not from the full demo. The expected
categories are read from the ``report(category=...)`` calls of the rules that ran, so a stage
that joins the slice later brings its category with it.

Chromium comes from Debian (``.ci/setup-browser.sh``); ``GENBRAIN_CHROMIUM`` and
``GENBRAIN_CHROMEDRIVER`` point the test at other binaries. Without them the tests skip.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml

from tests.workflow.helpers import ROOT, snakemake

CHROMIUM = os.environ.get("GENBRAIN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GENBRAIN_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking")
WAIT_S = 60

# Categories the slice must show whatever the rules say: guards the derivation below against
# silently expecting nothing.
SLICE_MUST_SHOW = {"Preprocessing", "Provenance"}

SLICE_COHORT = {
    "role": "disorder",
    "modalities": ["T1w", "VBM"],
    "diagnosis_levels": ["CN", "SCZ"],
    "simulate": {"kind": "disorder", "age": [30, 60],
                 "sites": {"s1": {"n": 2}, "s2": {"n": 2}}},
}


@pytest.fixture(scope="module")
def chromium():
    """(browser, driver) paths, or skip saying what is missing and how to get it."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -r "
                                           "requirements.lock)")
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"headless Chromium not available: {', '.join(missing)} missing (run "
                    ".ci/setup-browser.sh as root, or set GENBRAIN_CHROMIUM / "
                    "GENBRAIN_CHROMEDRIVER)")
    return CHROMIUM, CHROMEDRIVER


def _categories_by_rule() -> dict[str, set[str]]:
    """rule name -> the literal categories of its report() outputs, from rules/*.smk."""
    out = {}
    for smk in sorted((ROOT / "rules").glob("*.smk")):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            if block.startswith("rule "):
                name = block.split(":")[0][5:].strip()
                out[name] = {c for c in re.findall(r'category="([^"]+)"', block) if "{" not in c}
    return out


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
    by_rule = _categories_by_rule()
    expected = set().union(*(by_rule.get(r, set()) for r in ran))
    assert SLICE_MUST_SHOW <= expected, (ran, expected)
    return {"html": html, "work": work, "categories": expected}


@pytest.fixture(scope="module")
def browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in CHROME_ARGS:
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SE_OFFLINE", "true")  # never let Selenium Manager look for downloads
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    driver.set_page_load_timeout(WAIT_S)
    yield driver
    driver.quit()


def _open(driver, html: Path) -> str:
    """Load the report and wait until the app has drawn its menu; returns the rendered text
    (innerText: what the app drew, scripts excluded, including a long workflow description
    that the app's centred layout pushes above the top of a small headless window)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop messages of earlier pages
    driver.get(html.as_uri())
    WebDriverWait(driver, WAIT_S).until(
        lambda d: "Workflow" in d.find_element(By.TAG_NAME, "body").text)
    return driver.execute_script("return document.body.innerText")


def _severe(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_report_renders_without_severe_console_errors(report, browser):
    text = _open(browser, report["html"])
    assert "genbrain-pipeline" in text  # the workflow description, rendered by the app
    assert _severe(browser) == []


def test_every_category_of_the_rules_that_ran_is_shown(report, browser):
    lines = {line.strip() for line in _open(browser, report["html"]).splitlines()}
    assert sorted(report["categories"] - lines) == []


def test_the_provenance_page_opens_inside_the_report(report, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    _open(browser, report["html"])
    browser.find_element(By.XPATH, "//*[normalize-space(text())='Provenance']").click()
    eye = WebDriverWait(browser, WAIT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "a[iconname='eye']"))
    eye[0].click()
    frame = WebDriverWait(browser, WAIT_S).until(lambda d: d.find_element(By.TAG_NAME, "iframe"))
    browser.switch_to.frame(frame)
    try:
        page = WebDriverWait(browser, WAIT_S).until(
            lambda d: d.find_element(By.TAG_NAME, "body").text)
    finally:
        browser.switch_to.default_content()
    record = json.loads((report["work"] / "results" / "provenance" / "provenance.json")
                        .read_text())
    assert record["config_sha256"] in page
    assert {r["rule"] for r in record["runtime"]} >= {"simulate_cohort", "preprocess_chunk"}
    for row in record["runtime"]:
        assert row["rule"] in page
    assert _severe(browser) == []
