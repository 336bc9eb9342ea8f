"""Story 2, the matching step: find my photos in a harvested folder by small mosaic crops.

It reads like the job it automates:

1. take the folder the numbered harvest filled (``flows/escape.py`` with a
   ``numbered`` source does the harvest) and the reference crops (72 x 62 tiles cut
   from the mosaic);
2. make every picture's 32 x 32 thumbnail, in batches of hundreds per Prefect task
   (a process pool inside each), reusing the thumbnail cache so a rerun computes only
   new pictures; the flow records each new picture's hashes in the ledger's
   ``assets`` table;
3. rank the folder against each reference (thumbnail correlation shortlist, then
   structural similarity), one task per reference;
4. record every reference as an item and its ranking as ``matches`` rows (method
   ``ssim``; distance = the SSIM score, higher is closer; rank 1 is ``chosen``),
   with the margin between the best match and the rest (the flow is the ledger's
   only writer);
5. reconcile, write the report and return the summary with the rankings.

The job (a dict or a YAML file with ``flow: find_my_photo``)::

    name: find-my-photo
    flow: find_my_photo
    ledger: ./find-my-photo.duckdb
    folder: ./harvest/battlecry          # what the numbered harvest delivered
    references: [refs/forehead.png, refs/sky.png]
    top: 5                               # pictures listed per reference
    shortlist: 200                       # best-correlating thumbnails scored by SSIM
    batch_size: 500                      # pictures per thumbnail task
    cache: null                          # thumbnail cache file (default beside the folder)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import yaml
from prefect import flow, get_run_logger, task
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, ConfigDict, Field

from photo_escape.outcomes import outcome
from reports.artifacts import report_run
from tasks.ledger import Ledger, new_run_id


class FindJob(BaseModel):
    """A find-my-photo job: where the pictures are and what to look for."""

    model_config = ConfigDict(extra="forbid")
    name: str = "find-my-photo"
    flow: str = "find_my_photo"
    ledger: str = "find-my-photo.duckdb"
    folder: str = Field(description="the folder of harvested pictures (searched recursively)")
    references: list[str] = Field(min_length=1, description="the small reference crops")
    top: int = Field(5, ge=1)
    shortlist: int = Field(200, ge=1)
    batch_size: int = Field(500, ge=1)
    processes: int = Field(0, ge=0)
    cache: str | None = None
    reports_dir: str = "reports/out"


def load_job(job: FindJob | dict | str | Path) -> FindJob:
    """A validated job from a model, a dict or a YAML file (relative paths are taken
    from the file's folder)."""
    if isinstance(job, FindJob):
        return job
    if isinstance(job, dict):
        return FindJob(**job)
    path = Path(job)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    base = path.resolve().parent

    def rel(p: str) -> str:
        return str(p if Path(p).is_absolute() else base / p)

    data["folder"] = rel(data["folder"])
    data["references"] = [rel(r) for r in data.get("references") or []]
    data["ledger"] = rel(data.get("ledger", "find-my-photo.duckdb"))
    for key in ("cache", "reports_dir"):
        if data.get(key):
            data[key] = rel(data[key])
    return FindJob(**data)


@task(name="thumbnails", retries=2, retry_delay_seconds=1, cache_policy=None, persist_result=False)
def thumbnail_batch(paths: list[str], processes: int) -> list[dict]:
    """Hash records (with thumbnails) of a batch of pictures, computed on a process pool."""
    from tasks.hashing import hash_files

    return hash_files(paths, processes=processes)


@task(name="rank", retries=1, cache_policy=None, persist_result=False)
def rank_reference(reference: str, paths: list[str], thumbs: Any, top: int, shortlist: int) -> tuple[list[dict], dict]:
    """One reference's ranking of the folder and its margin."""
    from tasks.similar import rank

    rankings, margins = rank([reference], paths, thumbs, top=top, shortlist_size=shortlist)
    return rankings[str(reference)], margins[str(reference)]


@flow(name="find-my-photo", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def find_my_photo(job: dict | str, dry_run: bool = False, only_failed: bool = False,
                  run_id: str | None = None) -> dict:
    """Rank the harvested folder against each reference crop; returns the summary with
    ``rankings`` ({reference: [{rank, path, score}]}) and ``margins``.

    ``dry_run`` and ``only_failed`` are accepted for the common job interface; ranking
    changes nothing outside the ledger, so both simply rank again."""
    import numpy as np

    from tasks.hashing import image_files, store_assets
    from tasks.similar import ThumbCache, default_cache_path

    log = get_run_logger()
    spec = load_job(job)
    run_id = run_id or new_run_id()
    settings = hashlib.sha256(json.dumps({"top": spec.top, "shortlist": spec.shortlist}).encode()).hexdigest()[:16]
    pictures = image_files([spec.folder])
    cache = ThumbCache(spec.cache or default_cache_path(spec.folder))
    ledger = Ledger(spec.ledger)
    try:
        ledger.start_run(run_id, spec.name, flow="find_my_photo", settings=settings,
                         spec=spec.model_dump(mode="json"), dry_run=dry_run, only_failed=only_failed)
        refs = [{"item_id": f"reference:{Path(r).name}", "source_ref": r, "name": Path(r).name} for r in spec.references]
        ledger.add_items(spec.name, run_id, refs)

        # 2. thumbnails, in batches, only for pictures the cache does not know
        todo = [p for p in pictures if cache.known(p) is None]
        futures = [thumbnail_batch.submit(todo[i:i + spec.batch_size], spec.processes)
                   for i in range(0, len(todo), spec.batch_size)]
        failed = {}
        for fut in futures:
            recs = fut.result()
            for r in recs:
                cache.add(r)
                if r["status"] != "ok":
                    failed[r["path"]] = r["error"]
            store_assets(ledger, recs)
        if todo:
            cache.save()
        paths = [p for p in pictures if cache.known(p)]
        thumbs = np.stack([cache.by_sha[cache.known(p)] for p in paths]) if paths else np.zeros((0, 32, 32), np.uint8)
        log.info("%d pictures: %d thumbnails computed, %d from the cache, %d unreadable",
                 len(pictures), len(todo) - len(failed), len(pictures) - len(todo), len(failed))

        # 3.-4. rank against each reference and record
        rankings, margins, events, matches = {}, {}, [], []
        ranked = {r["item_id"]: rank_reference.submit(r["source_ref"], paths, thumbs, spec.top, spec.shortlist)
                  for r in refs}
        for ref in refs:
            try:
                ranking, margin = ranked[ref["item_id"]].result()
            except Exception as exc:  # noqa: BLE001 - an unreadable reference fails alone
                events.append(outcome(ref["item_id"], "match", "failed", "unreadable_reference",
                                      detail={"message": str(exc)[:300]}))
                continue
            rankings[ref["source_ref"]], margins[ref["source_ref"]] = ranking, margin
            for row in ranking:
                matches.append({"query": ref["item_id"], "candidate": row["path"], "distance": row["score"],
                                "rank": row["rank"], "chosen": row["rank"] == 1, "method": "ssim",
                                "detail": {"correlation": row["correlation"], **({"margin": margin["margin"]} if row["rank"] == 1 else {})}})
            events.append(outcome(ref["item_id"], "match", "ok" if ranking else "skipped",
                                  None if ranking else "empty_folder", detail=margin, final=bool(ranking)))
        ledger.add_matches(spec.name, run_id, matches)
        ledger.append_events(spec.name, run_id, events, settings=settings)

        # 5. reconcile and report
        summary = {"run_id": run_id, "job": spec.name, "ledger": str(Path(spec.ledger).resolve()), "report": None,
                   **ledger.reconciliation(run_id=run_id), "pictures": len(pictures),
                   "thumbnails_computed": len(todo) - len(failed), "unreadable": len(failed),
                   "rankings": rankings, "margins": margins, "status": "finished"}
        ledger.finish_run(run_id, "finished", {k: v for k, v in summary.items() if k != "rankings"})
        summary["report"] = report_run(ledger, job=spec.name, run_id=run_id, reports_dir=spec.reports_dir, log=log)
        for ref, m in margins.items():
            log.info("%s: best %s (%s), runner-up %s, margin %s", ref, m["best_score"], m["best"],
                     m["rest_best_score"], m["margin"])
        return summary
    finally:
        ledger.close()
