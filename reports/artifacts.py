"""Publishing a report to Prefect: the markdown, a table of the counts, a link to the HTML.

The run record calls :func:`publish` inside a flow run with what
:func:`reports.build.write_reports` returned. Outside a flow run it does nothing
(and raises nothing), so the same code path serves ``photo-escape report``.

The artifacts belong to the flow run a person looks at: the outermost one. A deployment
starts ``photo-escape-job``, which runs the story's flow (``escape``...) inside it; its
artifacts go on the deployment's run, whose *Artifacts* tab is the one people open.
Keys are the job's name and what the artifact is (``<job>-report``, ``<job>-counts``,
``<job>-report-html``, ``<job>-progress``): the Artifacts page lists the latest of each
key, so every job has its latest report, counts and progress there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from uuid import UUID

from photo_escape.secrets import redact

COUNT_KEYS = ("listed", "done", "skipped", "failed", "pending", "needs_review")


def artifact_key(text: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:100] or "report"


def outermost_flow_run() -> UUID | None:
    """The flow run a person started and watches: the outermost one around the current
    flow run (itself when it is not a subflow); None outside a flow run."""
    try:
        from prefect.context import FlowRunContext
        from prefect.runtime import flow_run

        if FlowRunContext.get() is None:
            return None
        return UUID(str(flow_run.root_flow_run_id))
    except Exception:  # noqa: BLE001 - an API hiccup: Prefect then files the artifact under the current run
        return None


def create(kind: str, *, key: str, description: str, **data: Any) -> UUID:
    """Create a Prefect artifact (``kind``: markdown, table, link, progress) on the
    outermost flow run; its id."""
    from prefect import artifacts

    cls = {"markdown": artifacts.MarkdownArtifact, "table": artifacts.TableArtifact,
           "link": artifacts.LinkArtifact, "progress": artifacts.ProgressArtifact}[kind]
    return cls(key=artifact_key(key), description=description, flow_run_id=outermost_flow_run(), **data).create().id


def publish(result: dict, *, key_prefix: str) -> list[str]:
    """Create the markdown, table and link artifacts for a written report, keyed
    ``<key_prefix>-report``, ``-counts`` and ``-report-html``.

    Returns the keys created (empty outside a flow or task run).
    """
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except Exception:  # Prefect not importable: nothing to publish to
        return []
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return []
    key = artifact_key(key_prefix)
    summary = result.get("summary", {})
    job, scope = summary.get("job"), summary.get("scope")
    md = redact(Path(result["report_md"]).read_text(encoding="utf-8"))
    reconciles = "they add up" if summary.get("reconciles") else "they DO NOT add up"
    html = Path(result["report_html"]).resolve()
    create("markdown", key=f"{key}-report", markdown=md,
           description=f"The report: what was listed, delivered, skipped and failed, and what needs a person "
                       f"({job}, {scope})")
    create("table", key=f"{key}-counts", table=[{k: summary.get(k, 0) for k in COUNT_KEYS}],
           description=f"Photos by outcome; listed = done + skipped + failed + pending: {reconciles} "
                       f"({job}, {scope})")
    # the path itself is the link's text: Prefect's UI shows a file:// link as plain text (a
    # browser does not follow one from a web page), so the person copies it from there
    create("link", key=f"{key}-report-html", link=html.as_uri(), link_text=str(html),
           description=f"Link to report.html, the full report with charts and thumbnails ({job}, {scope}): "
                       "a file on the worker's disk")
    return [f"{key}-report", f"{key}-counts", f"{key}-report-html"]


def report_run(ledger, *, job: str, run_id: str, reports_dir: str | Path, log=None) -> str | None:
    """Write a finished run's report and publish it to Prefect; the path of report.html.

    Every flow ends with this. A problem with the report is logged and never loses
    the run's record: the outcomes are already in the ledger, and
    ``photo-escape report`` can write it again.
    """
    try:
        # imported here: the report's libraries (matplotlib, pyarrow, jinja2) are not needed
        # until a run ends, and a flow that imports this module starts sooner without them
        from reports.build import write_reports

        result = write_reports(ledger, run_id=run_id, out_dir=Path(reports_dir) / job / run_id)
    except Exception as exc:  # noqa: BLE001
        if log is not None:
            log.error("report could not be written: %s", redact(str(exc)))
        return None
    try:
        publish(result, key_prefix=job)
    except Exception as exc:  # noqa: BLE001
        if log is not None:
            log.warning("report artifacts not published: %s", redact(str(exc)))
    return str(Path(result["report_html"]).resolve())
