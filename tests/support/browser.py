"""Headless Chromium from Debian's packages, driven by Selenium, for the console's tests.

    def test_x(browser: Browser): browser.driver.get(url)

The system's /usr/bin/chromedriver is given to Selenium explicitly, so Selenium
Manager never runs and nothing is downloaded. A missing browser fails the test
with the command that installs it (scripts/test.sh runs it).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
INSTALL = "apt-get install -y chromium chromium-driver"
DOCS = Path(__file__).resolve().parents[2] / "docs"
# Flags for a root user in a container: no sandbox (it needs user namespaces), and
# nothing that reaches the network on its own (updates, sync, QUIC probes).
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1360,1000",
)


@dataclass
class Browser:
    driver: Any

    def wait(self, what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"waited {timeout}s for {what}; page: {self.driver.current_url}"
                )
            time.sleep(0.1)

    def screenshot(self, name: str) -> Path:
        """docs/ui-<name>.png, the whole page's height (the README links them)."""
        height = self.driver.execute_script("return document.documentElement.scrollHeight")
        self.driver.set_window_size(1360, max(700, min(int(height) + 120, 2400)))
        path = DOCS / f"ui-{name}.png"
        self.driver.execute_script("window.scrollTo(0, 0)")
        self.driver.save_screenshot(str(path))
        self.driver.set_window_size(1360, 1000)
        return path

    def text(self) -> str:
        return str(self.driver.find_element("tag name", "body").text)

    def missing_text_alternatives(self) -> list[str]:
        """Every img, svg and role=img on the page that has no text alternative."""
        found: list[str] = self.driver.execute_script(
            """
            const bad = [];
            for (const img of document.querySelectorAll('img')) {
              if (!img.hasAttribute('alt')) bad.push('img ' + img.src);
            }
            for (const svg of document.querySelectorAll('svg')) {
              if (svg.getAttribute('aria-hidden') === 'true') continue;
              const ids = (svg.getAttribute('aria-labelledby') || '').split(/\\s+/).filter(Boolean);
              const named = ids.length && ids.every(id => {
                const el = document.getElementById(id); return el && el.textContent.trim();
              });
              const label = (svg.getAttribute('aria-label') || '').trim();
              if (svg.getAttribute('role') !== 'img' || !(named || label)) {
                bad.push('svg ' + svg.outerHTML.slice(0, 80));
              }
            }
            return bad;
            """
        )
        return found


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            pytest.fail(f"{path} is missing; install it with:  {INSTALL}", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield Browser(driver)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
