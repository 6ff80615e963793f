"""Open a local page in Debian's headless Chromium (through chromedriver) and read it back."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
needs_chromium = pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                                    reason="Debian's chromium and chromium-driver (make deps)")


def in_chromium(page: Path, script: str, then: str | None = None) -> tuple[list[dict], object, object]:
    """(console messages, the value of `script`, the value of `then` run after it) for `page`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        first = driver.execute_script(script)
        second = driver.execute_script(then) if then else None
        return driver.get_log("browser"), first, second
    finally:
        driver.quit()
