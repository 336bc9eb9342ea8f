"""Charts for the report, drawn with matplotlib (Agg) and embedded as SVG data URIs.

Each function takes already-aggregated rows (a few dozen values, never raw events)
and returns a ``data:image/svg+xml;base64,...`` string the HTML embeds, so the report
stays one self-contained file that prints sharply.
"""

from __future__ import annotations

import base64
import functools
import io
from typing import Any, Sequence

# loaded with the module (so with every flow that reports), not in the middle of a run
import matplotlib
import matplotlib.backends.backend_svg  # noqa: F401  (savefig(format="svg") needs it)
import matplotlib.dates as mdates
from matplotlib.figure import Figure

COLOURS = {"ok": "#1a7f37", "done": "#1a7f37", "skipped": "#8c959f", "failed": "#b42318",
           "needs_review": "#bf8700", "pending": "#bf8700", "other": "#0969da"}


RC = {"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
      "font.family": "DejaVu Sans"}


def _styled(draw):
    """Run a chart function with the report's matplotlib style (a context, not a global change)."""
    @functools.wraps(draw)
    def styled(*args: Any, **kwargs: Any) -> str | None:
        with matplotlib.rc_context(RC):
            return draw(*args, **kwargs)

    return styled


def _axes(figsize: tuple[float, float]):
    """A figure and its axes from matplotlib's object API: no pyplot, so no GUI backend,
    no global figure registry, safe in any thread, and a lighter import."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def _data_uri(fig) -> str:
    """The figure as an SVG data URI (fonts left as text, so it stays small and crisp)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@_styled
def stage_bars(rows: Sequence[dict]) -> str | None:
    """Horizontal stacked bars: per stage, items ok / skipped / failed / needing review."""
    if not rows:
        return None
    stages = [r["stage"] for r in rows][::-1]
    fig, ax = _axes((7.5, 0.42 * len(stages) + 0.9))
    left = [0] * len(stages)
    for key in ("ok", "skipped", "failed", "needs_review"):
        values = [int(r[key] or 0) for r in rows][::-1]
        ax.barh(stages, values, left=left, color=COLOURS[key], label=key.replace("_", " "))
        left = [a + b for a, b in zip(left, values)]
    ax.set_xlabel("items")
    ax.legend(ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return _data_uri(fig)


@_styled
def throughput(rows: Sequence[dict], bucket_seconds: int) -> str | None:
    """Items finished per hour over time, stacked done / skipped / failed, as the
    library's stakeholder chart showed progress."""
    if not rows:
        return None

    per_hour = 3600.0 / bucket_seconds
    times = [r["bucket"] for r in rows]
    fig, ax = _axes((7.5, 2.8))
    width = bucket_seconds / 86400 * 0.9
    bottom = [0.0] * len(rows)
    for key in ("done", "skipped", "failed"):
        values = [float(r[key] or 0) * per_hour for r in rows]
        ax.bar(times, values, width=width, bottom=bottom, color=COLOURS[key], label=key, align="edge")
        bottom = [a + b for a, b in zip(bottom, values)]
    ax.set_ylabel("items per hour")
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(ax.xaxis.get_major_locator()))
    ax.legend(ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    return _data_uri(fig)


@_styled
def distances(best: Sequence[tuple[float, int]], rest: Sequence[tuple[float, int]], threshold: float | None,
              *, xlabel: str = "distance", higher_is_closer: bool = False) -> str | None:
    """Histogram of match distances, best candidates vs the rest, with the threshold marked.

    ``best`` and ``rest`` are (distance, count) pairs already counted by DuckDB.
    """
    if not best and not rest:
        return None
    fig, ax = _axes((7.5, 2.8))
    values = [d for d, _ in best] + [d for d, _ in rest] + ([threshold] if threshold is not None else [])
    bins = _bins(min(values), max(values))
    if rest:
        ax.hist([d for d, _ in rest], weights=[n for _, n in rest], bins=bins, color="#8c959f", alpha=0.8,
                label="other candidates")
    if best:
        ax.hist([d for d, _ in best], weights=[n for _, n in best], bins=bins, color=COLOURS["ok"], alpha=0.85,
                label="best candidate")
    if threshold is not None:
        ax.axvline(threshold, color=COLOURS["failed"], linestyle="--", linewidth=1.5)
        ax.annotate(f"threshold {threshold:g}", xy=(threshold, 1), xycoords=("data", "axes fraction"),
                    xytext=(4, -12), textcoords="offset points", color=COLOURS["failed"])
    ax.set_xlabel(xlabel + (" (higher is closer)" if higher_is_closer else " (lower is closer)"))
    ax.set_ylabel("count")
    ax.legend(frameon=False)
    return _data_uri(fig)


def _bins(lo: float, hi: float) -> Any:
    """Integer-width bins for hash distances, 30 even bins for anything else."""
    if float(lo).is_integer() and float(hi).is_integer() and hi - lo <= 128:
        return [x - 0.5 for x in range(int(lo), int(hi) + 2)]
    if hi == lo:
        return 10
    return 30


@_styled
def counts(labels: Sequence[str], values: Sequence[int], *, title: str = "") -> str | None:
    """Horizontal bars of counts (provenance, storage classes...)."""
    if not labels:
        return None
    fig, ax = _axes((7.5, 0.38 * len(labels) + 0.8))
    ax.barh(list(labels)[::-1], list(values)[::-1], color=COLOURS["other"])
    for y, v in enumerate(list(values)[::-1]):
        ax.annotate(f"{v:,}", xy=(v, y), xytext=(3, 0), textcoords="offset points", va="center")
    ax.set_xlabel("items")
    if title:
        ax.set_title(title, loc="left")
    return _data_uri(fig)


def warm_up() -> None:
    """Draw one small chart and throw it away: matplotlib reads its font list and the
    font's metrics when it first lays text out. ``photo-escape run`` does it while a
    temporary Prefect server starts, so the report at the end of the run does not."""
    stage_bars([{"stage": "hash", "ok": 1, "skipped": 0, "failed": 0, "needs_review": 0}])
