"""Demo, story 2: the numbered harvest, ``/gallery/full/{n}.jpg`` with many gaps.

An old event site's media host still serves submissions 1..400 by number, about a
quarter of them missing (404), and nothing after 400. The job asks for 1..20000
politely (4 requests at a time per host) with ``stop_after_missing: 40``: the
missing numbers are recorded as skipped (``not_found``), the host's 5xx and 429
answers are retried, and the listing ends soon after the last submission instead
of asking 19,600 more times. The job file is written to ``<workdir>/numbered.yaml``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import yaml

from sandbox.numbered import NumberedHost

COUNT = 400
STOP_AFTER_MISSING = 40


def job(workdir: Path, host: NumberedHost) -> dict:
    source = host.job_source(start=1, stop=20000, stop_after_missing=STOP_AFTER_MISSING)
    source["http"] = {"per_host": 4, "read_timeout": 5.0}
    return {
        "name": "find-my-photo-harvest",
        "ledger": str(workdir / "ledger.duckdb"),
        "work_dir": str(workdir / "work"),
        "source": source,
        "destination": {"kind": "local", "path": str(workdir / "harvest"), "layout": "{name}"},
        "options": {"batch_size": 100, "concurrency": 8, "retries": 3, "backoff_seconds": 0.2},
    }


def run(workdir: Path, as_json: bool) -> dict:
    from flows.escape import escape

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    workdir = Path(workdir)
    host = NumberedHost(COUNT, missing_rate=0.25, size=(320, 240), cache_dir=workdir / "sandbox-cache")
    with host:
        host.faults.add("error", match=r"/1[0-9]\.jpg$", times=1, status=500, per_path=True)
        host.faults.add("rate_limit", match=r"/2[0-9]{2}\.jpg$", times=3, retry_after=1)
        host.faults.add("reset", match=r"/3[0-9]{2}\.jpg$", times=2)
        spec = job(workdir, host)
        (workdir / "numbered.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        summary = escape(spec)
        summary["requests_made"] = host.faults.count(r"\.jpg$")
    present = len(host.present_numbers())
    summary["expected_count"] = present
    summary["expected_count_met"] = summary.get("done") == present
    summary["job_file"] = str(workdir / "numbered.yaml")
    return summary
