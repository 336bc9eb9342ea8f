"""Demo, story 1: the gallery rescue, on the sandbox photo-frame site with its bad days.

A Kodak-Pulse-like site (login form, 48 thumbnails a page, originals on a CDN
under ``~a~`` URLs) holds 300 pictures. The CDN misbehaves the way real ones do:
resets, 5xx bursts, a truncated body, a 429 with Retry-After, a slow answer, and
the site's session expires in the middle of the album. Two pictures are behind a
CDN outage that outlasts every retry. The job file the demo writes
(``<workdir>/gallery.yaml``) is the one a user would write.

1. run the escape flow: everything recovers after retries except the 2 pictures
   behind the outage (``http_503``) and one answered by an HTML error page with
   status 200 (``not_an_image``); the report says the expected count was not met;
2. the outage ends; run the same job again: the album is listed again, the 297
   pictures already rescued are skipped by the ledger, the 3 others arrive, and
   the expected count of 300 is met.

Returns the second run's summary, with the first run's counts under ``first_run``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import yaml

from sandbox.gallery import Gallery

COUNT = 300


def job(workdir: Path, gallery: Gallery) -> dict:
    """The job spec, with the issue's fields (the password comes from KODAK_PASSWORD)."""
    source = gallery.job_source(password_env="KODAK_PASSWORD")
    source["http"] = {"per_host": 8, "read_timeout": 2.0, "connect_timeout": 5.0, "retry_after_max": 5}
    return {
        "name": "kodak-pulse-rescue",
        "ledger": str(workdir / "ledger.duckdb"),
        "work_dir": str(workdir / "work"),
        "source": source,
        "destination": {"kind": "local", "path": str(workdir / "rescued"), "layout": "{taken:%Y/%m/%d}/{name}"},
        "options": {"batch_size": 100, "concurrency": 8, "retries": 3, "backoff_seconds": 0.2},
    }


def bad_day(gallery: Gallery) -> None:
    """The faults of the demo's first run (deterministic: named pictures and pages)."""

    def key(i: int) -> str:  # picture i of the 300, wherever it falls in a smaller album
        return gallery.original_key(i * gallery.count // COUNT)

    cdn = gallery.cdn_faults
    cdn.add("reset", match=key(3), times=1)
    cdn.add("error", match=key(10), times=2, status=502)
    cdn.add("truncate", match=key(21), times=1, keep=0.3)
    cdn.add("rate_limit", match=key(42), times=1, retry_after=1)
    cdn.add("slow", match=key(77), times=1, delay=3.0)
    cdn.add("html", match=key(150), times=1)  # an error page with status 200: not retried
    cdn.add("error", match=f"{key(200)}|{key(201)}", times=None, status=503)  # the outage
    gallery.site_faults.add("expire_session", match=r"AllPictures\?p=4$", times=1)
    gallery.site_faults.add("error", match=r"AllPictures\?p=2$", times=1, status=500)


def run(workdir: Path, as_json: bool, count: int = COUNT) -> dict:
    from flows.escape import escape

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    workdir = Path(workdir)
    gallery = Gallery(count, size=(640, 480), cache_dir=workdir / "sandbox-cache")
    with gallery:
        os.environ["KODAK_PASSWORD"] = gallery.password  # what the user exports
        spec = job(workdir, gallery)
        (workdir / "gallery.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        bad_day(gallery)
        first = escape(spec)
        if not as_json:
            failures = ", ".join(f"{reason} x{n}" for reason, n in _failures(first["ledger"], first["run_id"]).items())
            print(f"first run, on a bad day: {first['done']} of {count} rescued, {first['failed']} failed "
                  f"({failures or 'none'}); the CDN outage ends and the same job runs again:", flush=True)
        gallery.cdn_faults.clear()  # the outage is over
        second = escape(spec)
    second.setdefault("expected_count", count)
    second.setdefault("expected_count_met", second.get("done") == count)
    second["first_run"] = {k: first.get(k) for k in ("run_id", "listed", "done", "failed", "skipped", "pending",
                                                      "expected_count_met", "report")}
    second["first_run"]["failures"] = _failures(first["ledger"], first["run_id"])
    second["job_file"] = str(workdir / "gallery.yaml")
    return second


def _failures(ledger: str, run_id: str) -> dict:
    """``{reason: count}`` of the items that failed in a run."""
    from tasks.ledger import Ledger

    with Ledger(ledger) as led:
        rows = led.query("SELECT reason, count(*) AS n FROM events WHERE run_id = ? AND outcome = 'failed' "
                         "GROUP BY reason ORDER BY reason", [run_id])
    return {r["reason"]: int(r["n"]) for r in rows}
