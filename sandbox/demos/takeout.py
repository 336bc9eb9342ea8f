"""Demo: a Google Photos Takeout export (two zip parts made from real photographs, with
every quirk Google's exports have: see sandbox/takeout.py) escaped into a dated folder,
read in place, each photo once, through the escape flow on an ephemeral Prefect API.

Prints what the export held and what became of it: photos, albums, videos, sidecars
found by each naming rule, capture times by where they came from."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sandbox import takeout as export


def job(workdir: Path) -> dict:
    """The job as a user writes it (see jobs/takeout.yaml), pointed at the demo's export."""
    destination: dict[str, Any] = {"kind": "local", "path": str(workdir / "archive"),
                                   "layout": "{taken:%Y/%m/%d}/{name}", "sidecars": "xmp"}
    return {
        "name": "demo-takeout",
        "ledger": str(workdir / "ledger.duckdb"),
        "work_dir": str(workdir / "work"),
        "reports_dir": str(workdir / "reports"),
        "source": {"kind": "takeout", "path": str(workdir / "takeout"), "videos": "deliver"},
        "destination": destination,
        "default_tz": export.ZONE,  # the camera's home: the last resort for a photo nothing else places
        "options": {"batch_size": 16, "concurrency": 4},
    }


def story(summary: dict, made: export.Export, archive: Path) -> dict[str, Any]:
    """What the run made of the export, from the ledger and the archive folder."""
    from tasks.ledger import Ledger

    with Ledger(summary["ledger"], read_only=True) as led:
        rules = led.query(
            """SELECT coalesce(json_extract_string(detail, '$.meta.sidecar_rule'), 'no sidecar') AS rule,
                      count(*) AS n FROM items WHERE job = ? GROUP BY ALL ORDER BY n DESC, rule""", [summary["job"]])
        albums = led.query("SELECT album, count(*) AS n FROM albums WHERE job = ? GROUP BY ALL ORDER BY album",
                           [summary["job"]])
        times = led.query("""SELECT coalesce(provenance, 'none') AS provenance, count(*) AS n FROM capture_times
                             WHERE run_id = ? GROUP BY ALL ORDER BY n DESC, provenance""", [summary["run_id"]])
    delivered = [hashlib.sha256(p.read_bytes()).hexdigest() for p in archive.rglob("*")
                 if p.is_file() and p.suffix.lower() != ".xmp"
                 and not p.relative_to(archive).parts[0].startswith(".photo-escape")]  # staging
    truth = {p.sha256 for p in made.photos}
    return {
        "photos": sum(not p.video for p in made.photos),
        "videos": sum(p.video for p in made.photos),
        "albums": {r["album"]: r["n"] for r in albums},
        "sidecar_rules": {r["rule"]: r["n"] for r in rules},
        "times_by_provenance": {r["provenance"]: r["n"] for r in times},
        "delivered_exactly_once": sorted(delivered) == sorted(truth),
        "xmp_sidecars": sum(1 for p in archive.rglob("*.xmp")),
    }


def run(workdir: Path, as_json: bool) -> dict:
    from flows.escape import escape

    made = export.make_export(workdir / "takeout")
    summary = escape(job(workdir))
    if not isinstance(summary, dict):
        return summary
    told = story(summary, made, workdir / "archive")
    summary["takeout_story"] = told
    if not as_json:
        print(f"Takeout export: {len(made.parts)} zip parts, {told['photos']} photos and {told['videos']} videos "
              f"(album copies counted once), read in place from {workdir / 'takeout'}")
        print("albums (photos in each): " + ", ".join(f"{a} ({n})" for a, n in told["albums"].items()))
        print("sidecars by naming rule: " + ", ".join(f"{r} {n}" for r, n in told["sidecar_rules"].items()))
        print("capture times by provenance: " + ", ".join(f"{p} {n}" for p, n in told["times_by_provenance"].items()))
        print(f"every photo and video delivered exactly once: {'yes' if told['delivered_exactly_once'] else 'NO'}"
              f"; XMP sidecars written: {told['xmp_sidecars']}")
    return summary
