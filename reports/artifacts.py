"""Publishing a report to Prefect: the markdown, a table of the counts, a link to the HTML.

The escape flow calls :func:`publish` inside its flow run with what
:func:`reports.build.write_reports` returned. Outside a flow run it does nothing
(and raises nothing), so the same code path serves ``photo-escape report``.
"""

from __future__ import annotations

import re
from pathlib import Path

from photo_escape.secrets import redact

COUNT_KEYS = ("listed", "done", "skipped", "failed", "pending", "needs_review")


def artifact_key(text: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-")[:100] or "report"


def publish(result: dict, *, key_prefix: str) -> list[str]:
    """Create the markdown, table and link artifacts for a written report.

    Returns the keys created (empty outside a flow or task run).
    """
    try:
        from prefect.context import FlowRunContext, TaskRunContext
    except Exception:  # Prefect not importable: nothing to publish to
        return []
    if FlowRunContext.get() is None and TaskRunContext.get() is None:
        return []
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

    key = artifact_key(key_prefix)
    summary = result.get("summary", {})
    md = redact(Path(result["report_md"]).read_text(encoding="utf-8"))
    reconciles = "reconciles" if summary.get("reconciles") else "DOES NOT reconcile"
    create_markdown_artifact(markdown=md, key=f"{key}-report",
                             description=f"Report for {summary.get('job')} ({summary.get('scope')})")
    create_table_artifact(
        table=[{k: summary.get(k, 0) for k in COUNT_KEYS}], key=f"{key}-counts",
        description=f"listed = done + skipped + failed + pending: {reconciles}")
    html = Path(result["report_html"]).resolve()
    create_link_artifact(link=html.as_uri(), link_text=f"report.html ({summary.get('scope')})",
                         key=f"{key}-html", description="The full report (self-contained HTML)")
    return [f"{key}-report", f"{key}-counts", f"{key}-html"]


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
        publish(result, key_prefix=f"{job}-report")
    except Exception as exc:  # noqa: BLE001
        if log is not None:
            log.warning("report artifacts not published: %s", redact(str(exc)))
    return str(Path(result["report_html"]).resolve())
