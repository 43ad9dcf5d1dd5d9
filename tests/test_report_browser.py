"""The report in a real browser: headless Chromium (the system's, never a downloaded one) opens it
offline, logs no error, fetches nothing, and lays out every figure with a non-empty box.

CI installs Chromium from Debian (.ci/run) and sets CI, so there a missing browser fails the test;
elsewhere it is skipped. It screenshots the whole page, to look at: SEEDBED_SCREENSHOT=PATH keeps it.
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest

from seedbed.report import label, write_report

from test_report import trial_result, write_trial

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.slow


def need(what: str) -> None:
    message = f"{what}: the browser test cannot run (CI installs it: see .ci/run)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium():
    """The system's Chromium under Playwright; a missing one fails under CI and skips elsewhere (in the test, not in setup)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need("playwright is not installed (pip install -e '.[test]')")
    if not (Path(CHROMIUM).is_file() and shutil.which(CHROMIUM)):
        need(f"{CHROMIUM} is missing (apt-get install chromium)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def test_report_renders_offline_in_chromium(tmp_path):
    with chromium() as browser:
        check_in_browser(tmp_path, browser)


def check_in_browser(tmp_path: Path, browser) -> None:
    result = trial_result()
    page_file = write_report(write_trial(tmp_path / "run", result))

    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    fetched: list[str] = []
    page.on("console", lambda m: errors.append(f"console: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))

    def only_local(route):
        url = route.request.url
        if url.startswith(("file:", "data:")):
            route.continue_()
        else:
            fetched.append(url)
            route.abort()

    page.route("**/*", only_local)
    page.goto(page_file.as_uri(), wait_until="load")
    page.wait_for_load_state("networkidle")

    assert errors == []
    assert fetched == []
    assert "induction" in page.title() and page.locator(".badge").inner_text() == "inconclusive"

    figures = page.locator("main figure")
    assert figures.count() == len(result["figures"])
    for i in range(figures.count()):
        figure = figures.nth(i)
        pictures = figure.locator("svg, img")
        assert pictures.count() >= 1, f"figure {i + 1} has no picture"
        for j in range(pictures.count()):
            box = pictures.nth(j).bounding_box()
            assert box is not None and box["width"] > 0 and box["height"] > 0, f"figure {i + 1} is not laid out: {box}"
        assert figure.locator("figcaption").inner_text().startswith(f"Figure {i + 1}.")

    # the escaped text shows as text, and no element came from it
    assert '<script>alert("x")</script>' in page.locator("blockquote").inner_text()
    assert page.locator("script").count() == 0

    # the evidence reads as words, its keys beside
    first_key, first_row = next(iter(result["evidence"])), page.locator("table.evidence tbody tr").first
    assert first_row.locator("td").first.inner_text() == label(first_key)
    assert first_row.locator("code").inner_text() == first_key

    shot = Path(os.environ.get("SEEDBED_SCREENSHOT") or tmp_path / "report.png")
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.close()
