"""report.html in a real browser: Debian's Chromium, headless, driven by Playwright.

The page must open from file:// with no console errors and no network requests
(everything is embedded), and the numbers it shows must equal the ledger's.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
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


# -- every story's report, on a desktop and on a phone ----------------------------------------
#: a number, a percentage, a date or a time standing alone in the text (not part of a name
#: such as IMG_0001.JPG, 26~a~…~6361….jpg or a run id); a <wbr> joins the text around it
NUMBERS_JS = r"""
() => {
  const TOKEN = /(?<![\w~.\/\-])[+\-\u2212]?\d(?:[\d,.:\/\-]*\d)?%?(?![\w~]|[.,:\/\-]\w)/g;
  const joined = (n, side) => {
    const sib = side < 0 ? n.previousSibling : n.nextSibling;
    if (!sib || sib.nodeName !== 'WBR') return '';
    const t = side < 0 ? sib.previousSibling : sib.nextSibling;
    return t && t.nodeType === 3 ? (side < 0 ? t.nodeValue.slice(-1) : t.nodeValue.slice(0, 1)) : '';
  };
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const broken = [];
  let measured = 0, inCells = 0;
  for (let n = walker.nextNode(); n; n = walker.nextNode()) {
    const el = n.parentElement;
    if (!el || el.closest('style,script') || !el.getClientRects().length) continue;
    const before = joined(n, -1), text = n.nodeValue, all = before + text + joined(n, 1);
    for (const m of all.matchAll(TOKEN)) {
      const start = m.index - before.length, end = start + m[0].length;
      if (start < 0 || end > text.length) continue;
      const range = document.createRange();
      range.setStart(n, start);
      range.setEnd(n, end);
      const lines = new Set([...range.getClientRects()].filter(r => r.width > 0 && r.height > 0)
                                                        .map(r => Math.round(r.top)));
      measured += 1;
      if (el.closest('td, th')) inCells += 1;
      if (lines.size > 1) broken.push(`${m[0]} (${lines.size} lines, in <${el.closest('td,th,dd,figcaption,p,div')?.tagName.toLowerCase()}>)`);
    }
  }
  return {broken, measured, inCells, scrollWidth: document.documentElement.scrollWidth,
          innerWidth: window.innerWidth};
}
"""
WIDTHS = (1280, 390, 360)
STORIES = ("gallery-bad-day", "gallery", "hires", "find-my-photo", "numbered", "s3", "verify", "job")


@pytest.fixture(scope="module")
def story_reports(tmp_path_factory, prefect_harness, _numbered_server, s3_server, s3_credentials) -> dict:
    """{story: report.html} for a real run of each story: the gallery rescue (its bad day,
    then the rerun), the hi-res replacement, find my photo, the numbered harvest, a folder
    to S3, a verify of a tampered archive, and a job's report across two runs."""
    from flows.escape import escape
    from flows.find_my_photo import find_my_photo
    from flows.verify import verify
    from sandbox import photos
    from sandbox.demos import gallery as gallery_demo
    from sandbox.demos import hires as hires_demo
    from tests.fixtures.jobs import local_job
    from tests.fixtures.matching import make_harvest
    from tests.fixtures.reports import write_story

    root = tmp_path_factory.mktemp("story-reports")
    out: dict[str, dict] = {}
    g = gallery_demo.run(root / "gallery", True, count=72)
    out["gallery-bad-day"] = {"html": g["first_run"]["report"], "summary": g["first_run"]}
    out["gallery"] = {"html": g["report"], "summary": g}
    h = hires_demo.run(root / "hires", True, photos=16)
    out["hires"] = {"html": h["report"], "summary": h}

    harvest = make_harvest(root / "find")
    f = find_my_photo({"name": "find-report", "ledger": str(root / "find" / "l.duckdb"),
                       "folder": str(harvest["folder"]), "references": [str(r) for r in harvest["references"]],
                       "top": 5, "batch_size": 25, "processes": 1, "cache": str(root / "find" / "thumbs.npz"),
                       "reports_dir": str(root / "find" / "reports")})
    out["find-my-photo"] = {"html": f["report"], "summary": f, "truth": harvest["truth"]}

    _numbered_server.faults.clear()
    n = escape({"name": "numbered-report", "ledger": str(root / "numbered" / "l.duckdb"),
                "work_dir": str(root / "numbered" / "work"), "reports_dir": str(root / "numbered" / "reports"),
                "source": _numbered_server.job_source(start=1, stop=20000, stop_after_missing=5),
                "destination": {"kind": "local", "path": str(root / "numbered" / "harvest"), "layout": "{name}"},
                "options": {"batch_size": 25, "processes": 1, "concurrency": 4}})
    out["numbered"] = {"html": n["report"], "summary": n}

    photos.make_collection(root / "s3" / "camera", count=8, bad=True)
    bucket = s3_server.make_bucket("report-layout")
    s = escape(local_job(root / "s3", "s3-report", {"batch_size": 4, "processes": 1, "concurrency": 4},
                         destination={"kind": "s3", "bucket": bucket, "endpoint_url": s3_server.url,
                                      "credentials": {"env": s3_credentials}, "storage_class": "GLACIER_IR"}))
    out["s3"] = {"html": s["report"], "summary": s}

    photos.make_collection(root / "v" / "camera", count=10, bad=False)
    job = local_job(root / "v", "verify-report", {"batch_size": 5, "processes": 1, "concurrency": 4})
    escape(job)
    delivered = sorted(p for p in (root / "v" / "archive").rglob("*") if p.suffix.lower() == ".jpg")
    delivered[0].unlink()
    delivered[1].write_bytes(delivered[1].read_bytes()[:-200])
    v = verify(job)
    out["verify"] = {"html": v["report"], "summary": v}

    story = write_story(root / "job")
    out["job"] = {"html": write_reports(story.path, job=story.job, out_dir=root / "job" / "all")["report_html"],
                  "summary": None}
    return out


def _page(browser, html: str, width: int):
    page = browser.new_page(viewport={"width": width, "height": 900})
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(Path(html).resolve().as_uri(), wait_until="load")
    return page, requests


@pytest.mark.timeout(900)
@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("story", STORIES)
def test_no_number_breaks_over_lines_and_the_page_never_scrolls_sideways(browser, story_reports, story, width):
    """Every number, percentage and date the page shows sits on one line (a DOM range over
    it has one line box), at a desktop's width and a phone's; wide tables scroll inside
    their own box, never the page."""
    page, _ = _page(browser, story_reports[story]["html"], width)
    try:
        seen = page.evaluate(NUMBERS_JS)
        assert seen["inCells"] > 10, seen  # the measure measured the tables
        assert seen["broken"] == [], f"{story} at {width} px: {seen['broken']}"
        assert seen["scrollWidth"] <= seen["innerWidth"], seen
        assert page.evaluate("document.querySelector('meta[name=viewport]').content") \
            == "width=device-width, initial-scale=1"
        # every table sits in a box of its own that scrolls sideways
        loose = page.evaluate("""[...document.querySelectorAll('table')].filter(t => {
            const box = t.parentElement; return !box.classList.contains('scroll')
                || getComputedStyle(box).overflowX !== 'auto'
                || box.getBoundingClientRect().right > window.innerWidth + 0.5; }).length""")
        assert loose == 0
        # no picture outside the tables' boxes reaches past the page's edge
        assert page.evaluate("""[...document.images].filter(i => !i.closest('.scroll')
            && i.getBoundingClientRect().right > window.innerWidth + 0.5).length""") == 0
    finally:
        page.close()


@pytest.mark.timeout(900)
@pytest.mark.parametrize("width", (1280, 390))
def test_a_rescue_report_shows_a_contact_sheet_of_what_arrived(browser, story_reports, width):
    """A dozen of the photos that arrived, taken evenly across the run (not its first
    twelve), each a visible picture with its name and capture date."""
    rescue = story_reports["gallery"]
    page, requests = _page(browser, rescue["html"], width)
    try:
        assert requests == [Path(rescue["html"]).resolve().as_uri()]  # nothing fetched
        arrived = rescue["summary"]["done"]
        sheet = page.locator("#arrived")
        assert int(sheet.get_attribute("data-total")) == arrived == 72
        items = sheet.locator("li")
        assert items.count() == min(12, arrived)
        positions = [int(items.nth(i).get_attribute("data-position")) for i in range(items.count())]
        assert positions[0] == 1 and positions[-1] == arrived  # the first to arrive and the last
        gaps = {b - a for a, b in zip(positions, positions[1:])}
        assert max(gaps) - min(gaps) <= 1  # evenly between
        for i in range(items.count()):
            li = items.nth(i)
            assert li.locator(".name").inner_text().strip().endswith(".jpg")
            assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", li.locator("time").inner_text())
            assert re.match(r"\d{4}-\d{2}-\d{2}T", li.locator("time").get_attribute("datetime"))
            img = li.locator("img")
            assert img.evaluate("i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0")
            box = img.bounding_box()
            assert box["width"] >= 80 and box["x"] >= 0 and box["x"] + box["width"] <= width
        # the names are those of photos the ledger says were delivered, in the order they were
        names = [items.nth(i).locator(".name").inner_text().strip() for i in range(items.count())]
        con = duckdb.connect(rescue["summary"]["ledger"], read_only=True)
        try:
            order = [r[0] for r in con.execute(
                """SELECT i.name FROM item_stage_latest l JOIN items i USING (job, item_id)
                   WHERE l.stage = 'deliver' AND l.outcome = 'ok' ORDER BY l.seq""").fetchall()]
        finally:
            con.close()
        assert names == [order[p - 1] for p in positions]
        # the bad day's report has one too, of the photos that did arrive that day
        first = story_reports["gallery-bad-day"]
        page.goto(Path(first["html"]).resolve().as_uri(), wait_until="load")
        assert int(page.locator("#arrived").get_attribute("data-total")) == first["summary"]["done"]
        assert page.locator("#arrived img").count() == 12
    finally:
        page.close()


@pytest.mark.timeout(900)
def test_the_find_my_photo_report_shows_each_reference_beside_its_best_candidates(browser, story_reports):
    """Each reference's picture beside its three best candidates, with their scores (the
    ledger's) and the margin: the best's score minus the runner-up's."""
    find = story_reports["find-my-photo"]
    page, requests = _page(browser, find["html"], 1280)
    try:
        assert len(requests) == 1
        rows = page.locator("#story-find table.thumbs tbody tr")
        assert rows.count() == len(find["truth"]) == 2
        con = duckdb.connect(find["summary"]["ledger"], read_only=True)
        try:
            ranked = {}
            for query, candidate, score in con.execute(
                    "SELECT i.source_ref, m.candidate, m.distance FROM matches m JOIN items i ON i.item_id = m.query "
                    "WHERE m.run_id = ? ORDER BY m.query, m.distance DESC", [find["summary"]["run_id"]]).fetchall():
                ranked.setdefault(query, []).append((candidate, score))
        finally:
            con.close()
        for i in range(rows.count()):
            row = rows.nth(i)
            cells = row.locator("td.thumb")
            assert cells.count() == 4  # the reference, then its three best candidates
            assert row.locator("img").evaluate_all(
                "imgs => imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0)")
            ref = next(r for r in ranked if Path(r).name == row.locator("td:first-child b").inner_text().strip())
            best = ranked[ref][:3]
            assert best[0][0] == find["truth"][ref]  # the true picture first
            for cell, (candidate, score) in zip([cells.nth(k) for k in (1, 2, 3)], best):
                assert Path(candidate).name in cell.locator(".cap").inner_text()
                assert cell.locator(".score").inner_text() == f"{score:.3f}"
            margin = float(row.locator("[data-margin]").get_attribute("data-margin"))
            assert margin == pytest.approx(best[0][1] - best[1][1], abs=1e-9) and margin > 0.2
            assert row.locator("[data-margin]").inner_text() == f"margin {margin:+.2f}"
    finally:
        page.close()
