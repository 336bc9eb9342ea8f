"""Stakeholder reports made from the ledger: report.md, report.html, outcomes.csv/.parquet.

:func:`write_reports` is what the escape flow calls at the end of each run (with its
open :class:`~tasks.ledger.Ledger`, through which it only reads) and what
``photo-escape report`` calls on a ledger file (opened read-only). Numbers come from
DuckDB aggregates (:mod:`reports.queries`); text goes through
:func:`photo_escape.secrets.redact` before it is written. Plain code, no Prefect.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from photo_escape import TOOL_VERSION
from photo_escape.secrets import MASK, redact
from reports import charts, common, stories, thumbs
from reports import queries as q

TEMPLATES = Path(__file__).parent / "templates"
SPEC_NUMBERS = {"expected_count", "start", "stop", "stop_after_missing"}  # numbers worth showing in "asked"
SECRET_KEYS = re.compile(r"(pass(word)?|secret|token|api_?key|credential|auth)", re.I)


def write_reports(ledger: Any, *, run_id: str | None = None, job: str | None = None,
                  since: datetime | str | None = None, out_dir: str | Path | None = None,
                  dry_run_plan: Any = None) -> dict:
    """Write the reports for a run (``run_id``) or a whole job (``job``, ``since``).

    ``ledger`` is an open ``tasks.ledger.Ledger`` or the path of a ledger file.
    Returns ``{"dir", "report_html", "report_md", "outcomes_csv", "outcomes_parquet",
    "summary": {listed, done, skipped, failed, pending, needs_review, reconciles, ...}}``.
    """
    clock = _Clock()
    own, con = _connect(ledger)
    bar = q.progress_bar(con, False)
    try:
        scope = q.resolve_scope(con, run_id=run_id, job=job, since=_parse_since(since))
        out = Path(out_dir) if out_dir else default_out_dir(scope)
        out.mkdir(parents=True, exist_ok=True)
        q.prepare(con, scope)
        try:
            facts = gather(con, scope)
            facts["out_dir"] = out
            facts["plan_given"] = plan_rows(dry_run_plan, out, facts)
            paths = write_outcomes(con, facts, out)
            clock.lap("summarise")
            decorate(con, facts)
        finally:
            q.release(con)
    finally:
        q.progress_bar(con, bar)
        if own is not None:
            own.close()
    paths.update(render(facts, out))
    paths.update(facts.get("extra_files", {}))
    clock.lap("render")
    return {"dir": str(out), **paths, "summary": facts["summary"], "timings": clock.laps}


class _Clock:
    """Wall and CPU seconds of the steps of a report (returned as ``timings``)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.laps[f"{name}_s"] = round(wall - self._wall, 3)
        self.laps[f"{name}_cpu_s"] = round(cpu - self._cpu, 3)
        self._wall, self._cpu = wall, cpu


def plan_rows(plan: Any, out: Path, facts: dict) -> list[dict] | None:
    """A plan handed over by the flow (rows of dicts), written to plan.csv and shown as given."""
    if not plan:
        return None
    rows = [dict(r) for r in plan]
    cols = list(dict.fromkeys(k for r in rows for k in r))
    path = out / "plan.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows({k: redact(str(v)) if v is not None else "" for k, v in r.items()} for r in rows)
    facts.setdefault("extra_files", {})["plan_csv"] = str(path)
    return rows


def default_out_dir(scope: q.Scope) -> Path:
    """``reports/out/<job>/<run_id>/`` for a run, ``reports/out/<job>/all/`` for a job."""
    return Path("reports/out") / _safe(scope.job) / (_safe(scope.run_id) if scope.run_id else "all")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "_"


def _connect(ledger: Any):
    """(owned Ledger or None, DuckDB connection) for a Ledger object or a path."""
    if hasattr(ledger, "con"):
        return None, ledger.con
    from tasks.ledger import Ledger

    own = Ledger(ledger, read_only=True)
    return own, own.con


def _parse_since(since: datetime | str | None) -> datetime | None:
    if since is None or isinstance(since, datetime):
        return since.replace(tzinfo=since.tzinfo or timezone.utc) if since else None
    d = datetime.fromisoformat(str(since))
    return d if d.tzinfo else d.replace(tzinfo=timezone.utc)


# -- gathering the facts ------------------------------------------------------------------
def gather(con, scope: q.Scope) -> dict:
    """Everything the templates show, as plain data."""
    rec = q.reconciliation(con)
    q.stage_latest(con, scope)
    stage_names = q.stages(con)
    by_stage = {r["stage"]: r for r in q.stage_outcomes(con)}
    stage_rows = [by_stage[s] for s in stage_names if s in by_stage]
    attention_total, attention = q.attention(con)
    run = scope.runs[-1] if scope.runs else {}
    spec = common.json_value(run.get("spec")) or {}
    run_summary = common.json_value(run.get("summary")) or {}
    activity = q.activity(con, scope)
    reconciles = rec["listed"] == rec["done"] + rec["skipped"] + rec["failed"] + rec["pending"]
    summary = {
        "job": scope.job, "run_id": scope.run_id, "scope": scope.label,
        "listed": rec["listed"], "done": rec["done"], "skipped": rec["skipped"],
        "failed": rec["failed"], "pending": rec["pending"], "needs_review": rec["needs_review"],
        "carried_from_earlier_runs": rec["carried"], "reconciles": reconciles,
        "needs_attention": attention_total, "dry_run": bool(run.get("dry_run")) if scope.run_id else None,
        "runs": len(scope.runs), "events": int(activity["events"] or 0),
    }
    return {
        "scope": scope, "summary": summary, "spec": spec, "run_summary": run_summary,
        "asked": describe_spec(spec, scope.job, run_summary if run.get("flow") == "verify" and scope.run_id else None),
        "runs": [_run_row(r) for r in scope.runs],
        "stages": stage_names, "stage_rows": stage_rows, "reasons": q.reasons(con),
        "final_reasons": q.final_reasons(con), "attention": attention,
        "attention_total": attention_total, "activity": activity,
        "generated_at": datetime.now(timezone.utc), "tool_version": TOOL_VERSION,
    }


def decorate(con, facts: dict) -> None:
    """Add what the HTML needs beyond numbers: sentences, charts, thumbnails, story sections."""
    s = facts["summary"]
    facts["headline"] = headline(s, facts["final_reasons"])
    facts["attention_words"] = attention_words(facts["final_reasons"], s)
    act = facts["activity"]
    seconds = bucket_seconds(act.get("first_at"), act.get("last_at"))
    rows = q.throughput(con, facts["scope"], seconds)
    finished = sum(r["done"] + r["skipped"] + r["failed"] for r in rows)
    facts["charts"] = {"stages": charts.stage_bars(facts["stage_rows"]),
                       "throughput": charts.throughput(rows, seconds) if len(rows) >= 3 else None}
    peak = max((r["done"] + r["skipped"] + r["failed"] for r in rows), default=0) * 3600 / seconds
    facts["throughput_caption"] = (
        f"Items finishing per hour ({_span(seconds)} buckets; peak {peak:,.0f} per hour), "
        "from the ledger's event timestamps.")
    span = (act["last_at"] - act["first_at"]).total_seconds() if act.get("first_at") else 0
    facts["throughput_text"] = (
        f"{finished:,} items finished within {_duration(span)}, too short a time for a chart"
        + (f" (about {finished * 3600 / span:,.0f} per hour)." if span >= 1 else "."))
    facts["attention_thumbs"] = False
    for a, row in zip(facts["attention"], common.side_by_side(con, facts["attention"])):
        a["link"] = thumbs.link(a.get("source_ref"))
        a["thumbs"] = row
        facts["attention_thumbs"] |= any(t["src"] for t in row)
    facts["stories"], facts["story_lines"] = stories.sections(con, facts)
    s["stories"] = {st["id"]: {f["key"]: f["value"] for f in st["facts"] if f.get("key")}
                    for st in facts["stories"]}


def bucket_seconds(first: Any, last: Any) -> int:
    """A bucket width giving a readable number of bars (at most ~120) for the time span."""
    if not first or not last:
        return 3600
    span = (last - first).total_seconds()
    for seconds in (10, 60, 300, 900, 3600, 6 * 3600):
        if span <= seconds * 120:
            return seconds
    return 24 * 3600


def _duration(seconds: float) -> str:
    """'3 seconds', '4.5 minutes', '2.0 hours'."""
    if seconds < 90:
        return f"{max(1, round(seconds))} seconds"
    if seconds < 5400:
        return f"{seconds / 60:.1f} minutes"
    return f"{seconds / 3600:.1f} hours"


def _span(seconds: float) -> str:
    """'10-second', '5-minute', '6-hour'... for captions."""
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            n = seconds / size
            return f"{n:.0f}-{unit}" if n.is_integer() else f"{n:.1f} {unit}s"
    return f"{seconds:.0f}-second"


def headline(s: dict, final: list[dict]) -> str:
    """One sentence a manager reads: what happened to the listed items."""
    if not s["listed"]:
        return "Nothing was listed: the source returned no items."
    skip = _top(final, "skipped")
    fail = _top(final, "failed")
    parts = [f"{s['listed']:,} items were listed", f"{s['done']:,} delivered ({_pct(s['done'], s['listed'])})"]
    if s["skipped"]:
        parts.append(f"{s['skipped']:,} skipped" + (f" ({skip})" if skip else ""))
    if s["failed"]:
        parts.append(f"{s['failed']:,} failed" + (f" ({fail})" if fail else ""))
    if s["pending"]:
        parts.append(f"{s['pending']:,} still pending")
    text = ", ".join(parts[:-1]) + " and " + parts[-1] + "." if len(parts) > 1 else parts[0] + "."
    if s.get("dry_run"):
        text += " This was a dry run: nothing was delivered."
    return text


def attention_words(final: list[dict], s: dict) -> str:
    """What the items needing a person are, in a few words."""
    parts = []
    if s["failed"]:
        parts.append(f"{s['failed']:,} failed (" + _top(final, "failed", 3) + ")")
    if s["needs_review"]:
        parts.append(f"{s['needs_review']:,} need review")
    return "; ".join(parts) or "see the table"


def _top(final: list[dict], status: str, n: int = 2) -> str:
    """The most common reasons for a status, as 'reason × count' phrases."""
    rows = [r for r in final if r["status"] == status and r["reason"]]
    more = ", …" if len(rows) > n else ""  # the list is not the whole story: say so
    return ", ".join(f"{r['reason']} × {r['count']:,}" for r in rows[:n]) + more


def _run_row(run: dict) -> dict:
    """What the report shows of one run."""
    return {k: run.get(k) for k in ("run_id", "flow", "status", "started_at", "finished_at",
                                    "dry_run", "only_failed", "tool_version")}


def describe_spec(spec: dict, job: str, verify: dict | None = None) -> dict:
    """What was asked: job name, source and destination as 'kind: field=value...' lines.

    Plain settings and addresses only (nested blocks contribute their ``url``/``path``);
    secrets appear only as their references (env:NAME / block:NAME), listed once.
    ``verify``: the summary of a ``verify`` run, which checked the job's destination
    instead of copying to it (``check`` says how).
    """
    def side(cfg: Any) -> str:
        if not isinstance(cfg, dict):
            return "(not recorded)"
        kind = cfg.get("kind", "?")
        parts = []
        for k, v in cfg.items():
            if k == "kind" or v in (None, [], {}, ""):
                continue
            if _is_ref(v) or isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)
                                                     and k in SPEC_NUMBERS):
                parts.append(f"{k}={_show(k, v)}")
            elif isinstance(v, dict):
                parts += [f"{k}.{sub}={v[sub]}" for sub in ("url", "path", "bucket") if isinstance(v.get(sub), str)]
        refs = sorted({r for r in _refs(cfg)} - {_show("", v) for v in cfg.values() if _is_ref(v)})
        if refs:
            parts.append("secrets from " + ", ".join(refs))
        text = f"{kind}: " + ", ".join(parts) if parts else str(kind)
        return text if len(text) <= 400 else text[:399] + "…"

    if "source" not in spec and isinstance(spec.get("flickr"), dict):  # the hi-res replacement job
        fl, masters = spec["flickr"], spec.get("masters") or {}
        return {"name": spec.get("name") or job,
                "source": side({"kind": "flickr", "user_id": fl.get("user_id"), "photoset_id": fl.get("photoset_id"),
                                "api_key": fl.get("api_key")})
                + " (matched against the library catalogue"
                + (f", masters from {masters.get('listing') or masters.get('store')}" if masters else "") + ")",
                "destination": "the same Flickr account: each photo replaced by its larger master, date taken kept"}
    asked = {"name": spec.get("name") or job, "source": side(spec.get("source")),
             "destination": side(spec.get("destination"))}
    if verify is not None:
        sample = verify.get("sample_percent")
        asked["check"] = ("the size of every photo and a full read of a random "
                          f"{float(sample):g}%" if sample is not None else "a full read of every photo") \
            + ("; deliver again from the source what is missing or changed" if verify.get("repair") else "")
    return asked


def _is_ref(value: Any) -> bool:
    """A secret reference as the spec stores it: {env: NAME} or {block: NAME}."""
    return isinstance(value, dict) and bool(value) and set(value) <= {"env", "block"} \
        and bool(value.get("env") or value.get("block"))


def _refs(value: Any):
    """Every secret reference inside a spec value, as 'env:NAME' / 'block:NAME'."""
    if _is_ref(value):
        yield _show("", value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _refs(v)
    elif isinstance(value, list):
        for v in value:
            yield from _refs(v)


def _show(key: str, value: Any) -> str:
    """A spec value for people: secret references as references, secret-looking strings masked."""
    if _is_ref(value):
        return f"env:{value['env']}" if value.get("env") else f"block:{value['block']}"
    if isinstance(value, str) and SECRET_KEYS.search(key):
        return MASK
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


# -- outcomes.csv / .parquet -------------------------------------------------------------
def write_outcomes(con, facts: dict, out: Path) -> dict:
    """One row per item: status and the final outcome and reason of each stage."""
    table = common.redact_table(q.outcomes_table(con, facts["stages"]))
    csv_path, pq_path = out / "outcomes.csv", out / "outcomes.parquet"
    pacsv.write_csv(table, csv_path)
    pq.write_table(table, pq_path)
    facts["outcomes_rows"] = table.num_rows
    return {"outcomes_csv": str(csv_path), "outcomes_parquet": str(pq_path)}


# -- rendering ------------------------------------------------------------------------
MD_TEMPLATE, HTML_TEMPLATE = "report.md.j2", "report.html.j2"  # under TEMPLATES


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """Jinja2 with the report's filters (numbers, percentages, byte sizes); one per
    process, so a process that runs many flows (``serve``, a worker) compiles the
    templates once (jinja2 reloads a template whose file changed)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html", "html.j2"], default_for_string=False),
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters.update(num=_num, pct=_pct, size=_size, when=_when, short=_short, ids=breakable, cell=cell_class)
    return env


def warm_up() -> None:
    """Do now what the first report of a process would do at the end of its run: compile
    the templates (jinja2 keeps them, one environment per process) and draw one small
    chart (:func:`reports.charts.warm_up`)."""
    env = environment()
    for name in (MD_TEMPLATE, HTML_TEMPLATE):
        env.get_template(name)
    charts.warm_up()


def render(facts: dict, out: Path) -> dict:
    """Write report.md and report.html; text goes through ``redact`` first."""
    env = environment()
    md = redact(env.get_template(MD_TEMPLATE).render(**facts))
    html = redact(env.get_template(HTML_TEMPLATE).render(**facts))
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(md, encoding="utf-8")
    html_path.write_text(html, encoding="utf-8")
    return {"report_md": str(md_path), "report_html": str(html_path)}


def _num(n: Any) -> str:
    return "—" if n is None else f"{int(n):,}"


def _pct(part: Any, whole: Any) -> str:
    if not whole:
        return "—"
    return f"{100.0 * float(part or 0) / float(whole):.1f}%"


def _size(n: Any) -> str:
    n = float(n or 0)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _when(d: Any) -> str:
    if not d:
        return "—"
    if isinstance(d, datetime):
        d = d.astimezone(timezone.utc) if d.tzinfo else d
        return d.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if d.tzinfo else "")
    return str(d)


def _short(value: Any, width: int = 160) -> str:
    """A compact one-line rendering of a detail value."""
    if value in (None, "", {}, []):
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= width else text[: width - 1] + "…"


LONG_WORD = re.compile(r"\S{25,}")
NUMBER_CELL = re.compile(r"[+\-\u2212]?\d[\d,]*(?:\.\d+)?%?(?: [KMGT]?B)?|—")
DATE_CELL = re.compile(r"\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2})?)?(?: UTC)?|[+\-]\d{2}:\d{2}")


def breakable(value: Any) -> Markup:
    """Text that may hold long identifiers (paths, URLs, file names, ids, details) for
    HTML, escaped, each word of 25 characters or more in a ``<span class="id">`` that
    may break anywhere: it wraps in a narrow column instead of widening it. Shorter
    words (every number, percentage and date among them) keep the page's rule: never
    broken, and a table column is never narrower than the longest of them. The text
    itself is unchanged (a search of the page still finds it)."""
    text = "" if value is None else str(value)
    out, at = [], 0
    for m in LONG_WORD.finditer(text):
        out += [str(escape(text[at:m.start()])), '<span class="id">', str(escape(m.group())), "</span>"]
        at = m.end()
    out.append(str(escape(text[at:])))
    return Markup("".join(out))


def cell_class(value: Any) -> str:
    """The class of a table cell that holds just a number ("num": right-aligned, never
    wrapped) or just a date, time or offset ("nb": never wrapped); "" otherwise."""
    text = "" if value is None else str(value).strip()
    if isinstance(value, (int, float)) and not isinstance(value, bool) or NUMBER_CELL.fullmatch(text):
        return "num"
    return "nb" if DATE_CELL.fullmatch(text) else ""


def _isfinite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
