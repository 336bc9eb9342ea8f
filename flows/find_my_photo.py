"""Story 2, the matching step: find my photos in a harvested folder by small mosaic crops.

It reads like the job it automates:

1. take the folder the numbered harvest filled (``flows/escape.py`` with a
   ``numbered`` source does the harvest) and the reference crops (72 x 62 tiles cut
   from the mosaic);
2. make every picture's thumbnails (32 x 32 for the shortlist, 72 x 64 for the
   scoring; :mod:`tasks.similar`), in batches of hundreds per Prefect task (a process
   pool inside each), reusing the thumbnail cache so a rerun computes only new
   pictures; a progress artifact shows how far it got; the flow records each new
   picture (sha256, size, format, its 32 x 32 thumbnail) in the ledger's ``assets``
   table;
3. rank the folder against all references in one task (one correlation shortlist for
   all of them, then one vectorised structural similarity over every shortlisted pair);
4. record every reference as an item and its ranking as ``matches`` rows (method
   ``ssim``; distance = the SSIM score, higher is closer; rank 1 is ``chosen``),
   with the margin between the best match and the rest (the flow is the ledger's
   only writer);
5. reconcile, write the report and return the summary with the rankings.

The job (a dict, or a YAML file with ``flow: find_my_photo``; its model is
:class:`photo_escape.jobspec.FindJob`, paths taken from the job file's folder)::

    name: find-my-photo
    flow: find_my_photo
    ledger: ledgers/find-my-photo.duckdb # default <home>/ledgers/<name>.duckdb
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

from prefect import flow, get_run_logger, task
from prefect.futures import as_completed
from prefect.task_runners import ThreadPoolTaskRunner

from flows.progress import Progress
from flows.run_record import RunRecord
from photo_escape.outcomes import outcome
from photo_escape.stories import load_job


@task(name="thumbnails", retries=2, retry_delay_seconds=1, cache_policy=None, persist_result=False)
def thumbnail_batch(paths: list[str], processes: int) -> list[dict]:
    """Thumbnail records of a batch of pictures (:func:`tasks.similar.picture_records`),
    computed on a process pool."""
    from tasks.similar import picture_records

    return picture_records(paths, processes=processes)


@task(name="rank", retries=1, cache_policy=None, persist_result=False)
def rank_references(references: list[str], gallery: Any, top: int, shortlist: int) -> dict[str, Any]:
    """Each reference's ranking of the folder and its margin, all references together;
    ``{reference: (ranking, margin) or the reason it could not be read}``."""
    from tasks.similar import Reference, rank

    readable, out = [], {}
    for ref in references:
        try:
            Reference(ref)
            readable.append(ref)
        except Exception as exc:  # noqa: BLE001 - an unreadable reference fails alone
            out[ref] = f"{type(exc).__name__}: {exc}"[:300]
    rankings, margins = rank(readable, gallery, top=top, shortlist_size=shortlist) if readable else ({}, {})
    out.update({ref: (rankings[ref], margins[ref]) for ref in readable})
    return out


def _asset(rec: dict) -> dict:
    """What the ledger keeps of a picture's thumbnail record (its ``assets`` row)."""
    return {"sha256": rec["sha256"], "bytes": rec["bytes"], "width": rec["width"], "height": rec["height"],
            "format": rec["format"], "thumb": rec["thumb"], "hash_version": rec["version"], "status": rec["status"]}


@flow(name="find-my-photo", log_prints=True, task_runner=ThreadPoolTaskRunner(max_workers=2))
def find_my_photo(job: dict | str, dry_run: bool = False, only_failed: bool = False,
                  run_id: str | None = None, fail_on_failed_items: bool = False) -> dict:
    """Rank the harvested folder against each reference crop; returns the summary with
    ``rankings`` ({reference: [{rank, path, score}]}) and ``margins``.

    ``dry_run`` and ``only_failed`` are accepted for the common job interface; ranking
    changes nothing outside the ledger, so both simply rank again. With
    ``fail_on_failed_items`` a run in which a reference could not be ranked ends Failed."""
    from tasks.hashing import image_files
    from tasks.similar import Gallery, ThumbCache, default_cache_path

    log = get_run_logger()
    spec = load_job(job, "find_my_photo")
    settings = hashlib.sha256(json.dumps({"top": spec.top, "shortlist": spec.shortlist}).encode()).hexdigest()[:16]
    pictures = image_files([spec.folder])
    cache = ThumbCache(spec.cache or default_cache_path(spec.folder))
    with RunRecord(spec, flow="find_my_photo", settings=settings, dry_run=dry_run, only_failed=only_failed,
                   run_id=run_id, fail_on_failed_items=fail_on_failed_items, log=log) as run:
        refs = [{"item_id": f"reference:{Path(r).name}", "source_ref": str(r), "name": Path(r).name}
                for r in spec.references]
        run.listed(refs)
        progress = Progress(spec.name, run.run_id, unit="picture", what="Pictures given thumbnails, of those listed")
        try:
            # 2. thumbnails, in batches, only for pictures the cache does not know
            progress.add_listed(len(pictures))
            todo = [p for p in pictures if cache.known(p) is None]
            progress.add_finished(len(pictures) - len(todo))
            futures = [thumbnail_batch.submit(todo[i:i + spec.batch_size], spec.processes)
                       for i in range(0, len(todo), spec.batch_size)]
            failed = {}
            for fut in as_completed(futures):
                recs = fut.result()
                for r in recs:
                    cache.add(r)
                    if r["status"] != "ok":
                        failed[r["path"]] = r["error"]
                run.record("thumbnails", [], assets=[_asset(r) for r in recs if r["status"] == "ok"])
                progress.add_finished(len(recs))
            if cache.changed:
                cache.save()
            gallery = Gallery.from_cache(pictures, cache)
        finally:
            progress.close()
        log.info("%d pictures: %d thumbnails computed, %d from the cache, %d unreadable",
                 len(pictures), len(todo) - len(failed), len(pictures) - len(todo), len(failed))

        # 3.-4. rank against all references at once and record
        ranked = rank_references.submit([r["source_ref"] for r in refs], gallery, spec.top, spec.shortlist).result()
        rankings, margins, events, matches = {}, {}, [], []
        for ref in refs:
            got = ranked[ref["source_ref"]]
            if isinstance(got, str):
                events.append(outcome(ref["item_id"], "match", "failed", "unreadable_reference",
                                      detail={"message": got}))
                continue
            ranking, margin = got
            rankings[ref["source_ref"]], margins[ref["source_ref"]] = ranking, margin
            for row in ranking:
                matches.append({"query": ref["item_id"], "candidate": row["path"], "distance": row["score"],
                                "rank": row["rank"], "chosen": row["rank"] == 1, "method": "ssim",
                                "detail": {"correlation": row["correlation"], **({"margin": margin["margin"]} if row["rank"] == 1 else {})}})
            events.append(outcome(ref["item_id"], "match", "ok" if ranking else "skipped",
                                  None if ranking else "empty_folder", detail=margin, final=bool(ranking)))
        run.record("match", events, matches=matches)
        for ref, m in margins.items():
            log.info("%s: best %s (%s), runner-up %s, margin %s", ref, m["best_score"], m["best"],
                     m["rest_best_score"], m["margin"])

        # 5. reconcile and report
        return run.finish({"pictures": len(pictures), "thumbnails_computed": len(todo) - len(failed),
                           "unreadable": len(failed), "margins": margins}, returned={"rankings": rankings})
