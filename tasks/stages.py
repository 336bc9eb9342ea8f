"""The escape pipeline's Prefect tasks: each takes a BATCH of items and calls plain code.

A task never writes the ledger: it returns compact per-item outcome records and the
flow appends them. Item-level problems (a corrupt file, a 404) are outcomes, not
exceptions; a task raises only when the whole batch could not be worked (a bug, a
lost worker), and then Prefect retries the batch with backoff and jitter. Every
stage is idempotent per item, so a retried batch does no harm.

Arguments are plain data (configs, item dicts) so a batch can run on a Dask worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.utilities.annotations import BaseAnnotation

from photo_escape.outcomes import Stopwatch, outcome
from photo_escape.plugins import DestinationUnreadable, KindConfig, make_destination, make_source
from photo_escape.secrets import scrubbed_exceptions

BATCH_RETRIES = 2


def _retry_delays(retries: int) -> list[float]:
    return [2.0 * (2**i) for i in range(retries)]


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Whether a failed batch task is tried again: not when the destination refused us or
    cannot be read (:class:`DestinationUnreadable`, e.g. an API key the server refuses):
    another try would only knock on the same door (and could lock the account); the flow
    stops with that one line instead."""
    try:
        state.result()
    except DestinationUnreadable:
        return False
    except BaseException:  # noqa: BLE001 - anything else: the usual retries
        return True
    return True


def _unquoted(batch: Any) -> Any:
    """A batch as the flow passed it: in ``quote()`` (so Prefect does not walk every item
    dict looking for futures) when the tasks run in the flow's process; the task itself
    receives the plain list, but its run name is made from the parameters as given."""
    return batch.unwrap() if isinstance(batch, BaseAnnotation) else batch


def _name(prefix: str):
    def name() -> str:
        from prefect.runtime import task_run

        params = task_run.parameters or {}
        return f"{prefix}-{len(_unquoted(params.get('items') or []))}-items"

    return name


@task(retries=BATCH_RETRIES, retry_delay_seconds=_retry_delays(BATCH_RETRIES), retry_jitter_factor=0.5,
      task_run_name=_name("fetch"), cache_policy=None, persist_result=False,
      retry_condition_fn=_worth_retrying)
def fetch_batch(source_config: KindConfig, items: list[dict], workdir: str, options: Any) -> list[dict]:
    """Download (or, for a local folder, check and hash) a batch of listed items."""
    source = make_source(source_config, workdir=Path(workdir), options=options)
    try:
        with scrubbed_exceptions():  # a failed task's message goes to the Prefect API
            return source.fetch(items)
    finally:
        source.close()


@task(retries=BATCH_RETRIES, retry_delay_seconds=_retry_delays(BATCH_RETRIES), retry_jitter_factor=0.5,
      task_run_name=_name("examine-and-deliver"), cache_policy=None, persist_result=False,
      retry_condition_fn=_worth_retrying)
def examine_and_deliver_batch(items: list[dict], hash_entries: list[dict], cached: dict[str, dict],
                              examine_options: dict, destination_config: KindConfig, workdir: str,
                              options: Any, dry_run: bool) -> dict:
    """Hash a batch of fetched files, restore each photo's capture time and deliver the
    photos that could be read: one task run for three stages (all work on the same local
    files; a task run per stage cost the flow more than the work between them).

    ``items`` are the batch's fetched photos; ``hash_entries`` (``path``, ``sha256``) the
    contents the ledger has not hashed yet; ``cached`` the ledger's hashes of the others
    (sha256 -> ``width``, ``height``, ``format``, ``phash``, ``dhash``);
    ``examine_options`` the keyword arguments of :func:`examine`. Returns each stage's
    outcomes, in the order the flow records them: ``{"hash": [...], "assets": [fresh hash
    records], "capture_time": [...], "capture_rows": [...], "deliver": [...]}``.
    """
    hash_entries = still_pictures(items, hash_entries)
    records, captures = examine(items, hash_entries, **examine_options)
    hashed = hash_outcomes(items, cached, [e["sha256"] for e in hash_entries], records)
    readable = [o["item"] for o in hashed if o["outcome"] == "ok"]
    no_result = {"error": "no_capture_result"}
    dated, capture_rows = capture_outcomes(readable, [captures.get(i["item_id"], no_result) for i in readable])
    going_on = [o["item"] for o in dated if o["outcome"] == "ok"]
    delivered = deliver(destination_config, going_on, workdir, options, dry_run) if going_on else []
    return {"hash": hashed, "assets": records, "capture_time": dated, "capture_rows": capture_rows,
            "deliver": delivered}


@task(retries=BATCH_RETRIES, retry_delay_seconds=_retry_delays(BATCH_RETRIES), retry_jitter_factor=0.5,
      task_run_name=_name("deliver"), cache_policy=None, persist_result=False,
      retry_condition_fn=_worth_retrying)
def deliver_batch(destination_config: KindConfig, items: list[dict], workdir: str, options: Any,
                  dry_run: bool) -> list[dict]:
    """Deliver a batch of fetched photos, for a source whose pipeline has no hashing
    (``("fetch", "deliver")``); see :func:`deliver`."""
    return deliver(destination_config, items, workdir, options, dry_run)


def examine(items: list[dict], hash_entries: list[dict], *, processes: int, max_pixels: int, max_bytes: int,
            rules: list[Any], default_tz: str | None) -> tuple[list[dict], dict[str, dict]]:
    """Hash the ``hash_entries`` (``path``, ``sha256``) and restore the capture time of
    every item whose content did not fail to hash. Returns (one hash record per hash
    entry, in order; {item_id: capture-time record}); see
    :func:`tasks.hashing.hash_file` and :func:`tasks.capture_time.capture_times`."""
    from tasks.capture_time import capture_times
    from tasks.hashing import hash_files

    records = hash_files([e["path"] for e in hash_entries], processes=processes,
                         max_pixels=max_pixels, max_bytes=max_bytes)
    unreadable = {e.get("sha256") for e, r in zip(hash_entries, records) if r.get("status") != "ok"}
    readable = [{"path": i["local_path"], "item_id": i["item_id"], "sha256": i.get("sha256"),
                 "name": i.get("name"), "folder": _folder(i), "meta": i.get("meta")}
                for i in items if i.get("sha256") not in unreadable]
    times = capture_times(readable, rules=rules, default_tz=default_tz)
    return records, {e["item_id"]: t for e, t in zip(readable, times)}


def warm_examine(options: Any, count: int = 1) -> None:
    """Begin starting the worker processes :func:`examine` will use for a batch of
    ``count`` photos (its hashers and its tag readers, at once rather than one after the
    other), for a caller with time to spare before that batch: ``photo-escape run``
    waiting for its temporary Prefect server, the flow while its first batch downloads.
    None with the job's ``options`` saying Dask (its workers examine) or ``processes: 1``
    (examined in the calling process)."""
    if options.task_runner != "threads" or options.processes == 1:
        return
    from tasks.capture_time.read import READER_IMPORTS, read_tags, readers_for
    from tasks.hashing import hash_file, hashers_for
    from tasks.isolation import warm

    warm(hash_file, n=hashers_for(count, options.processes))
    warm(read_tags, n=readers_for(count), preload=READER_IMPORTS)


def still_pictures(items: list[dict], hash_entries: list[dict]) -> list[dict]:
    """The hash entries (``path``, ``sha256``) left once the videos are taken out: an item
    its source calls a video (``media: "video"``, a Takeout movie or the moving half of a
    motion photo) is delivered as a file, never decoded as a picture."""
    videos = {i.get("sha256") for i in items if _is_video(i)}
    return [e for e in hash_entries if e.get("sha256") not in videos] if videos else hash_entries


def hash_outcomes(items: list[dict], cached: dict[str, dict], hashing: list[str],
                  records: list[dict]) -> list[dict]:
    """The ``hash`` outcome of each item: its content's hashes from the ledger
    (``cached``, reason ``cached``) or from this batch's ``records`` (one per sha256 in
    ``hashing``). An item that goes on carries them as ``item["asset"]``. A video
    (``media: "video"``) is not a picture to hash: ``ok`` with reason ``video``, so its
    capture time (from what its source knows) is restored and it is delivered."""
    fresh = dict(zip(hashing, records))
    out = []
    for item in items:
        sha = item.get("sha256")
        if _is_video(item):  # its content is known by its sha256; it has no pixels to hash
            asset = {"width": item.get("width"), "height": item.get("height"), "format": "video",
                     "phash": None, "dhash": None}
            out.append(outcome(item["item_id"], "hash", "ok", "video", detail={"format": "video"}, sha256=sha)
                       | {"item": dict(item, asset=asset)})
            continue
        rec, reason = (cached[sha], "cached") if sha in cached else (fresh.get(sha) or {}, None)
        if sha in cached or rec.get("status") == "ok":
            asset = {k: rec.get(k) for k in ("width", "height", "format", "phash", "dhash")}
            out.append(outcome(item["item_id"], "hash", "ok", reason, detail=asset,
                               sha256=sha) | {"item": dict(item, asset=asset)})
        else:
            out.append(outcome(item["item_id"], "hash", "failed", rec.get("error") or "unreadable",
                               detail={"message": rec.get("message")}, sha256=sha)
                       | {"item": item})
    return out


def capture_outcomes(items: list[dict], records: list[dict]) -> tuple[list[dict], list[dict]]:
    """The ``capture_time`` outcome of each item and the ledger's capture-time rows. An
    item that goes on carries its capture time as ``item["capture"]``."""
    rows, out = [], []
    for item, rec in zip(items, records):
        capture = {k: rec.get(k) for k in ("local", "utc", "offset_minutes", "tz", "provenance", "conflicts")}
        for extra in ("granularity", "source"):  # a coarse date's precision; which tag, where the zone came from
            if rec.get(extra):
                capture[extra] = rec[extra]
        rows.append(dict(capture, item_id=item["item_id"], sha256=item.get("sha256")))
        reason = rec.get("provenance") or rec.get("error") or "unknown"
        out.append(outcome(item["item_id"], "capture_time", "ok", reason, detail=capture,
                           sha256=item.get("sha256")) | {"item": dict(item, capture=capture)})
    return out, rows


def deliver(destination_config: KindConfig, items: list[dict], workdir: str, options: Any,
            dry_run: bool) -> list[dict]:
    """Deliver fetched, hashed and dated photos to the destination: one outcome per item."""
    dest = make_destination(destination_config, workdir=Path(workdir), options=options)
    try:
        with scrubbed_exceptions():  # a failed task's message goes to the Prefect API
            results = dest.deliver(items, dry_run=dry_run)
    finally:
        dest.close()
    # a destination that raised for one item must not lose the others
    seen = {r["item_id"] for r in results}
    sw = Stopwatch()
    for item in items:
        if item["item_id"] not in seen:
            results.append(outcome(item["item_id"], "deliver", "failed", "no_result",
                                   detail={"message": "the destination returned no outcome"},
                                   duration_ms=sw.ms) | {"item": item})
    return results


def _is_video(item: dict) -> bool:
    """Whether the source says an item is a video (``media: video``, a Takeout movie, the
    moving half of a motion photo, a Flickr video): delivered as a file, never decoded."""
    return item.get("media") == "video"


def _folder(item: dict) -> str:
    rel = item.get("relpath") or item.get("source_ref") or ""
    return rel.rsplit("/", 1)[0] if "/" in rel else ""


# -- fixity: the destination as it is -------------------------------------------------------------
@task(task_run_name="look-at-destination", cache_policy=None, persist_result=False)
def look_at_destination(destination_config: KindConfig, items: list[dict], workdir: str,
                        options: Any) -> dict[str, Any]:
    """A run's first look at its destination: its survey (:meth:`Destination.survey`, S3:
    one listing the run's deliveries then use instead of a request per photo) and, for
    what the ledger says was delivered (``Ledger.delivered`` rows), one listing and a
    full read of the few files written to since: ``{"findings": [one fixity outcome
    each], "unreadable": None}`` (:func:`tasks.fixity.look`). A destination that cannot be
    listed is not retried: ``{"unreadable": its one-line reason}``, for the flow to stop on."""
    from tasks import fixity

    destination = make_destination(destination_config, workdir=Path(workdir), options=options)
    items = _unquoted(items)
    try:
        with scrubbed_exceptions():
            destination.survey()
            return {"findings": fixity.look(destination, items, workers=options.concurrency) if items else [],
                    "unreadable": None}
    except DestinationUnreadable as exc:
        return {"findings": [], "unreadable": str(exc)}
    finally:
        destination.close()


@task(retries=BATCH_RETRIES, retry_delay_seconds=_retry_delays(BATCH_RETRIES), retry_jitter_factor=0.5,
      task_run_name=_name("verify"), cache_policy=None, persist_result=False)
def verify_batch(destination_config: KindConfig, items: list[dict], workdir: str, options: Any,
                 sample_percent: float | None) -> dict[str, Any]:
    """Check delivered photos (``Ledger.delivered`` rows) at the destination: one listing,
    then full reads ``options.concurrency`` at a time (all, or a random sample);
    ``{"findings": [one fixity outcome each], "unreadable": None}`` (:func:`tasks.fixity.verify`),
    or ``{"unreadable": why}`` when the destination cannot be listed."""
    from tasks import fixity

    destination = make_destination(destination_config, workdir=Path(workdir), options=options)
    try:
        with scrubbed_exceptions():
            return {"findings": fixity.verify(destination, _unquoted(items), sample_percent,
                                              workers=options.concurrency), "unreadable": None}
    except (DestinationUnreadable, fixity.FixityUnsupported) as exc:
        return {"findings": [], "unreadable": str(exc)}
    finally:
        destination.close()


@task(retries=BATCH_RETRIES, retry_delay_seconds=_retry_delays(BATCH_RETRIES), retry_jitter_factor=0.5,
      task_run_name=_name("repair"), cache_policy=None, persist_result=False,
      retry_condition_fn=_worth_retrying)
def repair_batch(source_config: KindConfig, destination_config: KindConfig, items: list[dict],
                 findings: list[dict], workdir: str, options: Any) -> list[dict]:
    """Deliver again, from the source, the delivered photos (``items``) that ``findings``
    found missing or changed, only where the source still has the recorded content; a
    changed copy is kept beside (:func:`tasks.fixity.repair`)."""
    from tasks import fixity

    source = make_source(source_config, workdir=Path(workdir), options=options)
    destination = make_destination(destination_config, workdir=Path(workdir), options=options)
    try:
        with scrubbed_exceptions():
            return fixity.repair(destination, source, _unquoted(items), _unquoted(findings),
                                 batch_size=options.batch_size)
    finally:
        source.close()
        destination.close()
