"""report.html in a real browser: Debian's Chromium, headless, driven by Playwright.

The page must open from file:// with no console errors and no network requests
(everything is embedded), and the numbers it shows must equal the ledger's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reports.build import write_reports
from tests.fixtures.reports import ledger_view

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not shutil.which("chromium"),
                                reason="Debian's chromium is not installed (make browser)")


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield b
        b.close()


def open_report(browser, html: Path, shot: Path) -> tuple[object, list[str], list[str]]:
    """Load a report from file://, recording console errors and every request; screenshot it."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    requests: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.resolve().as_uri(), wait_until="load")
    page.wait_for_load_state("networkidle")
    page.screenshot(path=str(shot), full_page=True)
    return page, errors, requests


def shown(page, key: str) -> int:
    """The number the page shows for a key, read from its element (data-value and text agree)."""
    el = page.locator(f"#n-{key}")
    value = int(el.get_attribute("data-value"))
    assert int(el.inner_text().replace(",", "")) == value
    return value


@pytest.mark.timeout(180)
def test_job_report_opens_offline_and_shows_the_ledgers_numbers(browser, story_ledger, tmp_path):
    result = write_reports(story_ledger.path, job=story_ledger.job, out_dir=tmp_path / "all")
    html = Path(result["report_html"])
    page, errors, requests = open_report(browser, html, tmp_path / "report.png")
    try:
        assert errors == []
        assert requests == [html.resolve().as_uri()]
        view = ledger_view(story_ledger.path, "SELECT * FROM reconciliation_job WHERE job = ?",
                                     [story_ledger.job])
        for key in ("listed", "done", "skipped", "failed", "pending", "needs_review"):
            assert shown(page, key) == view[key]
        assert page.locator("#reconciliation").get_attribute("data-reconciles") == "true"
        # every embedded image decoded (charts and thumbnails are data: URIs)
        broken = page.evaluate("[...document.images].filter(i => !i.complete || i.naturalWidth === 0).length")
        assert broken == 0 and page.evaluate("document.images.length") > 0
        assert (tmp_path / "report.png").stat().st_size > 10_000
        pdf = tmp_path / "report.pdf"
        page.emulate_media(media="print")
        page.pdf(path=str(pdf))
        assert pdf.read_bytes()[:5] == b"%PDF-"
    finally:
        page.close()


@pytest.mark.timeout(180)
def test_run_report_numbers_in_the_browser(browser, story_ledger, tmp_path):
    run1 = story_ledger.runs[0]
    result = write_reports(story_ledger.path, run_id=run1, out_dir=tmp_path / "r1")
    page, errors, requests = open_report(browser, Path(result["report_html"]), tmp_path / "run.png")
    try:
        assert errors == [] and len(requests) == 1
        view = ledger_view(story_ledger.path, "SELECT * FROM reconciliation_run WHERE run_id = ?", [run1])
        for key in ("listed", "done", "skipped", "failed", "pending"):
            assert shown(page, key) == view[key]
        rows = page.locator("#attention tbody tr")
        assert rows.count() == result["summary"]["needs_attention"]
    finally:
        page.close()
