"""Demo: a camera folder (real photographs with EXIF, and a few broken files) escaped
into a dated archive folder, through the escape flow on an ephemeral Prefect API."""

from __future__ import annotations

from pathlib import Path

from sandbox import photos


def job(workdir: Path) -> dict:
    return {
        "name": "demo-local",
        "ledger": str(workdir / "ledger.duckdb"),
        "work_dir": str(workdir / "work"),
        "source": {"kind": "local", "path": str(workdir / "camera"), "pattern": ["*.jpg", "*.jpeg"]},
        "destination": {"kind": "local", "path": str(workdir / "archive"), "layout": "{taken:%Y/%m/%d}/{name}"},
        "options": {"batch_size": 50, "concurrency": 4},
    }


def run(workdir: Path, as_json: bool) -> dict:
    from flows.escape import escape

    photos.make_collection(workdir / "camera", count=40, bad=True)
    return escape(job(workdir))
