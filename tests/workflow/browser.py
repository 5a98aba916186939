"""Opening a Snakemake HTML report in Debian's headless Chromium (Selenium): the browser
fixtures of tests/workflow/conftest.py and the helpers the report tests share.

Chromium comes from Debian (``.ci/setup-browser.sh``); ``GENBRAIN_CHROMIUM`` and
``GENBRAIN_CHROMEDRIVER`` point the tests at other binaries. Without them the tests skip.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from tests.workflow.helpers import rule_blocks

CHROMIUM = os.environ.get("GENBRAIN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GENBRAIN_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--disable-background-networking")
WAIT_S = 60


def categories_by_rule() -> dict[str, set[str]]:
    """rule name -> the literal categories of its report() outputs, from rules/*.smk."""
    return {name: {c for c in re.findall(r'category="([^"]+)"', block) if "{" not in c}
            for name, (_, block) in rule_blocks().items()}


def open_report(driver, html: Path) -> str:
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


def severe(driver) -> list[str]:
    """The browser console's SEVERE messages since the last call."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def open_provenance_page(driver, html: Path) -> str:
    """Open the report, click the Provenance category and the eye icon of its page; returns
    the text of the page as the report's iframe shows it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    open_report(driver, html)
    driver.find_element(By.XPATH, "//*[normalize-space(text())='Provenance']").click()
    eye = WebDriverWait(driver, WAIT_S).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "a[iconname='eye']"))
    eye[0].click()
    frame = WebDriverWait(driver, WAIT_S).until(lambda d: d.find_element(By.TAG_NAME, "iframe"))
    driver.switch_to.frame(frame)
    try:
        return WebDriverWait(driver, WAIT_S).until(
            lambda d: d.find_element(By.TAG_NAME, "body").text)
    finally:
        driver.switch_to.default_content()


def menu(driver, html: Path, path: tuple[str, ...] = ()) -> tuple[list[str], list[dict]]:
    """Open the report and click the menu entries of ``path`` in turn (a category, then a
    subcategory). Returns what the menu then shows: its entries (the categories, or a
    category's subcategories) and its results, one ``{LABEL: value}`` per result (the labels
    of the report() calls, upper-cased as the menu's table heads them)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def shown(d):
        return d.execute_script("return arguments[0].innerText",
                                d.find_element(By.TAG_NAME, "nav"))

    open_report(driver, html)
    for entry in path:
        before = shown(driver)
        driver.find_element(By.XPATH, f"//nav//*[normalize-space(text())='{entry}']").click()
        # the lambda only runs inside this iteration's wait, so it sees this `before`
        WebDriverWait(driver, WAIT_S).until(lambda d: shown(d) != before)  # noqa: B023
    lines = [ln for ln in shown(driver).splitlines() if ln.strip()]
    if path:  # after the breadcrumbs: Results > category > subcategory
        lines = lines[lines.index("Results") + 1 + len(path):]
    else:  # after the GENERAL entries (Workflow, Statistics, About)
        lines = lines[lines.index("RESULTS") + 1:]
    table = [ln.rstrip("\t").split("\t") for ln in lines if "\t" in ln]
    entries = [ln.strip() for ln in lines if "\t" not in ln]
    results = [dict(zip(table[0], row)) for row in table[1:]] if table else []
    return entries, results
