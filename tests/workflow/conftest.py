"""Fixtures of the workflow tests: a headless Chromium for the report tests."""

from __future__ import annotations

import os

import pytest

from tests.workflow.browser import CHROME_ARGS, CHROMEDRIVER, CHROMIUM, WAIT_S


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


@pytest.fixture(scope="module")
def browser(chromium):
    """A headless Chromium driven by Selenium, logging the browser console."""
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
