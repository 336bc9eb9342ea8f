"""The Prefect UI, used as a person uses it: Debian's Chromium, driven by Playwright, on a
real `prefect server start` with every deployment of prefect.yaml and a process worker.

Only through the UI's pages (the API is read afterwards, to check what the pages did):

1. Deployments: every story's deployment is listed, with its schedule, and its page
   says what it moves from where to where (the description of prefect.yaml);
2. gallery-rescue's *Custom run* form shows the job file, dry_run, only_failed and
   fail_on_failed_items as fields (not a JSON box) with their descriptions and
   defaults; it is filled with a job for the sandbox gallery, whose CDN answers 503
   for three photos, and submitted;
3. the run is watched to its end: Failed, its logs readable and free of the password;
   its Artifacts tab holds the progress, the counts table (equal to the ledger's) and
   the link to report.html;
4. Retry: the retried run asks the gallery only for the three photos that failed and
   ends Completed; the ledger shows every photo delivered once over both runs;
5. a scheduled deployment: its schedule switched on shows its next runs under
   Upcoming, and is switched off again (each checked through the API).

A screenshot of every step is saved in ``PHOTO_ESCAPE_UI_SCREENSHOTS`` (a folder), or
else in the test's own temporary folder (``ui-screenshots``).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import duckdb
import pytest
import requests
import yaml

from tests.fixtures.prefect_server import ROOT, start_worker, stop_worker, ui_url, wait_for

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 90_000  # the longest wait for one thing on a page (a run's end on a busy machine)
FAILING = (5, 48, 101)  # the gallery's photos whose originals answer 503 on the first run
COUNTS = ("listed", "done", "skipped", "failed", "pending", "needs_review")

pytestmark = pytest.mark.skipif(not CHROMIUM.exists() and not shutil.which("chromium"),
                                reason="Debian's chromium is not installed (make browser)")


@pytest.fixture
def browser_page(tmp_path):
    """A page of a headless Chromium, and a function saving a numbered screenshot of it."""
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("PHOTO_ESCAPE_UI_SCREENSHOTS") or tmp_path / "ui-screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    taken: list[Path] = []
    t0 = time.monotonic()

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        # times as prefect.yaml writes them (its schedules are in UTC), in English
        page = browser.new_page(viewport={"width": 1400, "height": 1000}, timezone_id="UTC", locale="en-US")
        page.set_default_timeout(TIMEOUT_MS)
        expect.set_options(timeout=TIMEOUT_MS)

        def shot(name: str) -> Path:
            path = shots / f"{len(taken) + 1:02d}-{name}.png"
            page.screenshot(path=str(path), full_page=True)
            taken.append(path)
            print(f"{time.monotonic() - t0:6.1f}s {path.name}")
            return path

        try:
            yield page, shot
        finally:
            expect.set_options(timeout=5_000)  # Playwright's default, for whoever comes next
            browser.close()
    print(f"\nUI screenshots: {shots}")


def _deployments() -> list[dict]:
    return yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]


def _api(env: dict, method: str, path: str, **kw) -> object:
    answer = requests.request(method, env["PREFECT_API_URL"] + path, timeout=30, **kw)
    answer.raise_for_status()
    return answer.json() if answer.content else None


def _deployment(env: dict, name: str) -> dict:
    (dep,) = _api(env, "POST", "/deployments/filter", json={"deployments": {"name": {"any_": [name]}}})
    return dep


def _scheduled_runs(env: dict, deployment_id: str) -> list[dict]:
    return _api(env, "POST", "/flow_runs/filter", json={
        "deployments": {"id": {"any_": [deployment_id]}}, "flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}},
        "sort": "EXPECTED_START_TIME_ASC"})


def _logged(env: dict, flow_run_id: str, start: str) -> bool:
    """Whether the server has a log line of the flow run beginning with ``start``."""
    logs = _api(env, "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200})
    return any(log["message"].startswith(start) for log in logs)


def _runs_named(env: dict, deployment_id: str, name: str) -> list[dict]:
    return _api(env, "POST", "/flow_runs/filter", json={
        "deployments": {"id": {"any_": [deployment_id]}}, "flow_runs": {"name": {"any_": [name]}}})


def _submitted(env: dict, page, deployment_id: str, run_name: str, shot) -> str:
    """Wait until the run the form's Submit asked for exists (the server is asked, not the
    page: the UI's move back to the deployment is not what matters). A click the form did
    not take (seen once in ~20 walks, under load) is given again, under a new run name so
    that a late first run could never be mistaken for it; the name of the run to follow."""
    try:
        wait_for(lambda: _runs_named(env, deployment_id, run_name), 30, "the run submitted from the form")
        return run_name
    except AssertionError:
        if "/run" not in page.url:
            raise
    shot("submit-not-taken")
    run_name = f"{run_name}-again"
    page.get_by_label("Run Name").fill(run_name)
    page.get_by_role("button", name="Submit").click()
    wait_for(lambda: _runs_named(env, deployment_id, run_name), 60, "the run submitted from the form again")
    return run_name


def _gallery_job(tmp_path: Path, gallery) -> Path:
    """A job file for the sandbox gallery, everything it writes under ``tmp_path``."""
    job = {
        "name": "ui-gallery-rescue",
        "ledger": str(tmp_path / "ledger.duckdb"),
        "work_dir": str(tmp_path / "work"),
        "reports_dir": str(tmp_path / "reports"),
        "source": gallery.job_source(),
        "destination": {"kind": "local", "path": str(tmp_path / "rescued"), "layout": "{name}"},
        "options": {"batch_size": 40, "concurrency": 4, "retries": 1, "backoff_seconds": 0.01},
    }
    path = tmp_path / "gallery-job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _state(page):
    """The state shown at the top of a flow run's page (a coloured badge: Running, Failed...)."""
    return page.get_by_role("main").locator('[data-slot="badge"][class*="bg-state-"]').first


def _artifact_card(page, key: str):
    """A card of the run's Artifacts tab (a link to the artifact's key)."""
    return page.get_by_role("tabpanel").get_by_role("link").filter(
        has=page.get_by_role("heading", name=key, exact=True))


def _open_latest_artifact(page, run_page: str, key: str, flow_run_id: str) -> None:
    """From the run's Artifacts tab: the key's card, then its latest version, which must be
    this run's (the page stays on that artifact)."""
    from playwright.sync_api import expect

    page.goto(run_page)
    page.get_by_role("tab", name="Artifacts").click()
    _artifact_card(page, key).click()
    page.get_by_role("main").get_by_role("link", name=re.compile(r"^[0-9a-f]{8}$")).first.click()
    # the artifact belongs to the run the person started
    expect(page.get_by_role("complementary").locator(f'a[href$="/runs/flow-run/{flow_run_id}"]')).to_have_count(1)


def _ledger(path: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(path), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


@pytest.mark.timeout(420)
def test_run_rerun_and_read_it_from_the_prefect_ui(deployed, gallery, browser_page, tmp_path):
    from playwright.sync_api import expect

    env = deployed
    page, shot = browser_page
    ui = ui_url(env)
    job_file = _gallery_job(tmp_path, gallery)
    ledger = tmp_path / "ledger.duckdb"
    failing = [gallery.original_url(i) for i in FAILING]
    gallery.cdn_faults.add("error", status=503, match="|".join(re.escape(gallery.original_key(i)) for i in FAILING),
                           times=None)
    # the worker as an operator starts it: INFO logs go to the UI
    worker = start_worker(env, tmp_path / "worker.log", KODAK_PASSWORD=gallery.password, PREFECT_LOGGING_LEVEL="INFO")
    try:
        # 1. Deployments: every story's deployment, its schedule, and what it does
        page.goto(ui)  # the UI a browser opens by default (Prefect 3.8's React UI, under /v2)
        page.get_by_role("link", name="Deployments", exact=True).first.click()
        table = page.get_by_role("table")
        for dep in _deployments():
            expect(table.get_by_role("link", name=dep["name"], exact=True)).to_be_visible()
        s3_row = table.get_by_role("row").filter(has=page.get_by_role("link", name="archive-to-s3", exact=True))
        expect(s3_row).to_contain_text("At 02:30 AM")
        shot("deployments")
        listing = page.url
        base = listing.split("/deployments")[0]  # where the UI lives (.../v2)
        for dep in _deployments():
            table.get_by_role("link", name=dep["name"], exact=True).click()
            page.get_by_role("tab", name="Description").click()
            expect(page.get_by_role("tabpanel")).to_contain_text(dep["description"])
            expect(page.get_by_role("switch", name=re.compile(r"^toggle "))).to_have_count(len(dep.get("schedules", [])))
            shot(f"deployment-{dep['name']}")
            page.goto(listing)
            table = page.get_by_role("table")

        # 2. gallery-rescue's Custom run form: fields with their descriptions and defaults
        gallery_dep = _deployment(env, "gallery-rescue")
        page.goto(f"{base}/deployments/deployment/{gallery_dep['id']}")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Custom run").click()
        job_box = page.get_by_label(re.compile(r"^Job file"))
        expect(job_box).to_have_value("jobs/gallery.yaml")
        switches = {name: page.get_by_role("switch", name=re.compile(rf"^{name}\b"))
                    for name in ("dry_run", "only_failed", "fail_on_failed_items")}
        expect(switches["dry_run"]).to_have_attribute("aria-checked", "false")
        expect(switches["only_failed"]).to_have_attribute("aria-checked", "false")
        expect(switches["fail_on_failed_items"]).to_have_attribute("aria-checked", "true")
        form = page.locator("form")
        for text in ("Path of the job's YAML file on the worker", "Plan only: fetch and date the photos",
                     "Redo only the photos whose last attempt failed", "End the run Failed when any photo failed"):
            expect(form).to_contain_text(text)
        job_box.fill(str(job_file))
        run_name = page.get_by_label("Run Name").input_value()
        shot("custom-run-form")
        page.get_by_role("button", name="Submit").click()
        run_name = _submitted(env, page, gallery_dep["id"], run_name, shot)

        # 3. the run, watched to its end: Failed, readable logs without the password, artifacts
        # (the UI goes back to the deployment, whose Runs tab lists the new run once the
        # page is loaded again: the list it had may predate the run)
        page.goto(f"{base}/deployments/deployment/{gallery_dep['id']}")
        page.get_by_role("tabpanel").get_by_role("link", name=run_name, exact=True).click()
        page.wait_for_url(re.compile(r"/runs/flow-run/[0-9a-f-]{36}"))
        flow_run_id = re.search(r"/flow-run/([0-9a-f-]{36})", page.url).group(1)
        run_page = f"{base}/runs/flow-run/{flow_run_id}"
        expect(_state(page)).to_have_text("Failed")
        shot("run-failed")
        # the run's last lines reach the server a moment after its state (logs are sent in
        # batches) and the Logs tab does not fetch again by itself: once they are there, reload
        wait_for(lambda: _logged(env, flow_run_id, f"ui-gallery-rescue: Flow run encountered an exception: "
                                                   f"PhotosFailed: {len(FAILING)} of {gallery.count} photos failed"),
                 60, "the run's last log lines")
        page.reload()
        page.get_by_role("tab", name="Logs").click()
        expect(page.get_by_text(f"{len(FAILING)} of {gallery.count} photos failed").first).to_be_visible()
        expect(page.get_by_text(re.compile(r"^job ui-gallery-rescue: the escape story")).first).to_be_visible()
        assert gallery.password not in page.locator("body").inner_text()
        shot("run-logs")
        # the story's own flow run, with the logs of its batches
        page.get_by_role("tab", name="Subflow Runs").click()
        page.get_by_role("tabpanel").locator('a[href*="/runs/flow-run/"]').first.click()
        page.get_by_role("tab", name="Logs").click()
        expect(page.get_by_text(re.compile(r"^run \S+ of job ui-gallery-rescue: gallery -> local")).first).to_be_visible()
        assert gallery.password not in page.locator("body").inner_text()
        shot("story-run-logs")
        page.goto(run_page)
        page.get_by_role("tab", name="Artifacts").click()
        for key in ("progress", "counts", "report", "report-html"):
            expect(_artifact_card(page, f"ui-gallery-rescue-{key}")).to_be_visible()
        shot("run-artifacts")

        ((run1,),) = _ledger(ledger, "SELECT run_id FROM runs")
        counts = dict(zip(COUNTS, _ledger(ledger, f"SELECT {', '.join(COUNTS)} FROM reconciliation_run "
                                                  "WHERE run_id = ?", [run1])[0]))
        assert counts["failed"] == len(FAILING) and counts["listed"] == gallery.count
        _open_latest_artifact(page, run_page, "ui-gallery-rescue-counts", flow_run_id)
        table = page.get_by_role("tabpanel", name="Artifact").get_by_role("table")
        expect(table.get_by_role("cell").first).to_be_visible()
        headers = table.get_by_role("columnheader").all_inner_texts()
        cells = table.get_by_role("row").nth(1).get_by_role("cell").all_inner_texts()
        assert {h.strip(): int(c) for h, c in zip(headers, cells)} == counts
        shot("artifact-counts")
        _open_latest_artifact(page, run_page, "ui-gallery-rescue-progress", flow_run_id)
        expect(page.get_by_role("tabpanel", name="Artifact")).to_contain_text("Progress: 100%")
        shot("artifact-progress")
        _open_latest_artifact(page, run_page, "ui-gallery-rescue-report-html", flow_run_id)
        report_html = tmp_path / "reports" / "ui-gallery-rescue" / run1 / "report.html"
        expect(page.get_by_role("tabpanel", name="Artifact")).to_contain_text(str(report_html))
        assert report_html.is_file()
        shot("artifact-report-link")

        # 4. Retry: the gallery has recovered; only the failed photos are fetched again
        gallery.cdn_faults.clear()
        page.goto(run_page)
        expect(_state(page)).to_have_text("Failed")
        page.get_by_role("button", name="Open menu").first.click()
        page.get_by_role("menuitem", name="Retry").click()
        dialog = page.get_by_role("alertdialog")
        shot("retry-dialog")
        dialog.get_by_role("button", name="Retry").click()
        expect(_state(page)).to_have_text("Completed")
        wait_for(lambda: _logged(env, flow_run_id, f"ui-gallery-rescue: {gallery.count} listed = "), 60,
                 "the retried run's last log lines")
        page.reload()
        page.get_by_role("tab", name="Logs").click()
        # the list shows what fits on the page: the newest lines first, as a person would ask
        page.get_by_role("combobox", name="log sort order").click()
        page.get_by_role("option", name="Newest to oldest").click()
        expect(page.get_by_text(re.compile(
            rf"^ui-gallery-rescue: {gallery.count} listed = \d+ done \+ \d+ skipped \+ 0 failed \+ 0 pending")).first
        ).to_be_visible()
        shot("run-completed")
    finally:
        stop_worker(worker)

    fetched = sorted(r["target"] for r in gallery.cdn_faults.requests if "~a~" in r["target"])
    assert fetched == sorted("/" + u.rsplit("/", 1)[1] for u in failing)
    per_item = _ledger(ledger, "SELECT item_id, count(*) FROM events WHERE stage = 'deliver' AND outcome = 'ok' "
                               "GROUP BY ALL")
    assert len(per_item) == gallery.count and all(n == 1 for _, n in per_item)
    assert _ledger(ledger, "SELECT listed, done, failed, pending FROM reconciliation_job") == [(gallery.count, gallery.count, 0, 0)]
    assert _ledger(ledger, "SELECT count(*), count(*) FILTER (WHERE status = 'finished') FROM runs") == [(2, 2)]

    # 5. a schedule switched on from the UI lists the next runs; switched off, none are left
    s3 = _deployment(env, "archive-to-s3")
    page.goto(f"{base}/deployments/deployment/{s3['id']}")
    switch = page.get_by_role("switch", name=re.compile(r"^toggle "))
    expect(switch).to_have_attribute("aria-checked", "false")
    switch.click()
    expect(page.get_by_text("Deployment schedule active")).to_be_visible()
    expect(switch).to_have_attribute("aria-checked", "true")
    assert [s["active"] for s in _api(env, "GET", f"/deployments/{s3['id']}/schedules")] == [True]
    # the server's scheduler makes the next runs (every 2 s here); the person then reloads the page
    upcoming = wait_for(lambda: _scheduled_runs(env, s3["id"]), 60, "the schedule's next runs")
    page.reload()
    page.get_by_role("tab", name="Upcoming").click()
    panel = page.get_by_role("tabpanel", name="Upcoming")
    for run in upcoming[:3]:
        expect(panel.get_by_role("link", name=run["name"], exact=True)).to_be_visible()
    shot("schedule-on-upcoming")
    switch.click()
    expect(page.get_by_text("Deployment schedule paused")).to_be_visible()
    expect(switch).to_have_attribute("aria-checked", "false")
    shot("schedule-paused")
    assert [s["active"] for s in _api(env, "GET", f"/deployments/{s3['id']}/schedules")] == [False]
