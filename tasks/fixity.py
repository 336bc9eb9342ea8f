"""Fixity: the archive as it is, not as the ledger remembers it.

The ledger remembers what was delivered (:meth:`tasks.ledger.Ledger.delivered`: one
row per photo with its ``target``, ``sha256`` and ``bytes``); a disk can be swapped,
a file deleted or edited, an object expired. These functions look at the destination
itself, through its :meth:`~photo_escape.plugins.Destination.inventory` (one listing),
:meth:`~photo_escape.plugins.Destination.read_back` (a full read, hashed as it
streams) and :meth:`~photo_escape.plugins.Destination.set_aside`:

* :func:`compare` sizes from one listing against the ledger, and :func:`look` the
  rerun's check: the same, plus a full read of the few photos whose version
  (modification time, ETag) changed since delivery;
* :func:`verify` the ``verify`` command's check: the listing for every photo, and a
  full read (sha256) of all of them or of a random sample, several files at once;
* :func:`repair` re-delivers what is missing or changed, from the source, only when
  the source still holds the very content the ledger recorded; a changed copy is
  kept beside the original (``NAME~changed-YYYYMMDD.EXT``), never destroyed.

Each returns outcome records (:func:`photo_escape.outcomes.outcome`) for the flow to
append to the ledger. A ``fixity`` outcome is ``ok`` (reason: the method, ``size``,
``full_read`` or ``stored_sha256``) or ``failed`` with reason ``missing``, ``changed``
or ``unreadable``; its detail says ``method``, ``target``, ``expected_sha256``,
``expected_bytes``, ``found_bytes``, ``found_sha256`` (and ``changed_by``: ``size`` or
``sha256``). An ``ok`` is ``final`` (the photo stays done in the ledger's views) and
every outcome carries the ``settings`` and ``fingerprint`` of the delivery it checks,
so a rerun still finds the photo complete. Plain code: no Prefect.
"""

from __future__ import annotations

import math
import os
import random
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from typing import Any, Iterable

from photo_escape.outcomes import outcome
from photo_escape.plugins import Destination, DestinationUnreadable, Source
from photo_escape.secrets import redact
from tasks.files import inside

__all__ = ["DestinationUnreadable", "FixityUnsupported", "compare", "look", "verify", "repair", "counts"]

#: what a fixity check can find wrong with a delivered photo
PROBLEMS = ("missing", "changed", "unreadable")


class FixityUnsupported(Exception):
    """The destination cannot be listed or read back (an upload API): nothing to verify."""


def fixity_outcome(row: dict, verdict: str, method: str, found: dict | None = None, **extra: Any) -> dict:
    """The ``fixity`` outcome for one delivered photo (``row`` from ``Ledger.delivered``):
    ``verdict`` is ``ok`` or one of :data:`PROBLEMS`; ``found`` what the destination holds."""
    found = found or {}
    detail = {"target": row["target"], "method": method,
              "expected_sha256": row["sha256"], "expected_bytes": row["bytes"],
              "found_bytes": found.get("size"), "found_sha256": found.get("sha256"), **extra}
    if found.get("stored_sha256") is not None:
        detail["stored_sha256"] = found["stored_sha256"]
    if found.get("note"):
        detail["note"] = found["note"]
    if verdict == "ok":
        rec = outcome(row["item_id"], "fixity", "ok", method, detail=detail, sha256=row["sha256"],
                      bytes=found.get("size"), final=True)
    else:
        rec = outcome(row["item_id"], "fixity", "failed", verdict, detail=detail, sha256=row["sha256"],
                      bytes=found.get("size"))
    return _as_delivered(rec, row)


def _as_delivered(rec: dict, row: dict) -> dict:
    """Record ``rec`` under the settings and fingerprint of the delivery it concerns."""
    if row.get("settings") is not None:
        rec["settings"] = row["settings"]
    if row.get("fingerprint") is not None:
        rec["fingerprint"] = row["fingerprint"]
    return rec


def compare(delivered: list[dict], inventory: dict[str, tuple[int, str | None]] | None) -> list[dict]:
    """One ``fixity`` outcome per delivered photo with a target, by size: ``ok`` when the
    listing has it at the size delivered, ``missing`` when it does not have it,
    ``changed`` (``changed_by: size``) when the size differs. Bytes edited in place
    keep their size: only a read sees them (:func:`look` reads those whose version
    changed, :func:`verify` reads all). ``inventory`` is ``destination.inventory(targets)``;
    None (a destination that cannot be listed) gives no outcomes: the ledger is all
    there is to go by."""
    if inventory is None:
        return []
    out = []
    for row in delivered:
        target = row.get("target")
        if not target:
            continue
        size, _version = inventory.get(target, (None, None))
        if size is None:
            out.append(fixity_outcome(row, "missing", "size"))
        elif row.get("bytes") is not None and size != row["bytes"]:
            out.append(fixity_outcome(row, "changed", "size", {"size": size}, changed_by="size"))
        else:
            out.append(fixity_outcome(row, "ok", "size", {"size": size}))
    return out


def look(destination: Destination, delivered: list[dict], *, workers: int = 8) -> list[dict]:
    """A rerun's look at the destination: ONE listing (:func:`compare`), then a full read
    of just the photos whose version (modification time, ETag) is no longer the one
    recorded at delivery, since something wrote there: the bytes decide (``changed``,
    ``changed_by: sha256``, or ``ok`` when someone only touched the file). Photos
    delivered before versions were recorded are judged by size alone. Returns the
    ``fixity`` outcomes; an empty list when this kind of destination cannot be listed;
    raises :class:`DestinationUnreadable` when it cannot be listed now."""
    rows = [r for r in delivered if r.get("target")]
    inventory = destination.inventory([r["target"] for r in rows])
    results = compare(rows, inventory)
    if not results:
        return []
    _read_back(destination, rows, results, _touched(rows, results, inventory), workers)
    return results


def _touched(rows: list[dict], results: list[dict], inventory: dict) -> list[int]:
    """Indices of the photos listed at the right size whose version is no longer the one
    recorded at delivery (something wrote there since)."""
    return [i for i, (row, rec) in enumerate(zip(rows, results)) if rec["outcome"] == "ok"
            and row.get("version") and inventory[row["target"]][1] not in (None, row["version"])]


def _read_back(destination: Destination, rows: list[dict], results: list[dict], indices: list[int],
               workers: int) -> None:
    """Replace ``results[i]`` by the outcome of reading ``rows[i]`` back whole, for each
    index, ``workers`` files at once."""
    if not indices:
        return
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(indices))), thread_name_prefix="fixity") as pool:
        for i, rec in zip(indices, pool.map(lambda i: read_and_check(destination, rows[i]), indices)):
            results[i] = rec


def verify(destination: Destination, delivered: list[dict], sample_percent: float | None = None, *,
           workers: int = 8, seed: int | None = None) -> list[dict]:
    """Check the delivered photos at the destination: one listing gives every photo's
    presence and size (:func:`compare`), then the photos of the right size are read
    back whole and hashed (``full_read``), ``workers`` at a time: all of them, or with
    ``sample_percent`` a random share of them (``seed`` makes the draw repeatable).
    An archived object that cannot be read without a restore is checked by the sha256
    stored with it (``stored_sha256``). Returns one ``fixity`` outcome per photo with a
    target, in ``delivered``'s order.

    Raises :class:`DestinationUnreadable` when the destination cannot be listed and
    :class:`FixityUnsupported` when its kind cannot be listed at all.
    """
    if sample_percent is not None and not 0 <= sample_percent <= 100:
        raise ValueError(f"sample_percent must be between 0 and 100, not {sample_percent}")
    rows = [r for r in delivered if r.get("target")]
    inventory = destination.inventory([r["target"] for r in rows])
    if inventory is None:
        raise FixityUnsupported(f"a {destination.kind} destination cannot be listed or read back: "
                                "nothing there can be verified")
    results = compare(rows, inventory)
    present = [i for i, rec in enumerate(results) if rec["outcome"] == "ok"]
    if sample_percent is not None:  # a random share, and always those something wrote to since
        share = math.ceil(len(present) * sample_percent / 100)
        present = sorted(set(random.Random(seed).sample(present, share)) | set(_touched(rows, results, inventory)))
    _read_back(destination, rows, results, present, workers)
    return results


def read_and_check(destination: Destination, row: dict) -> dict:
    """The ``fixity`` outcome of reading one delivered photo back whole."""
    try:
        found = destination.read_back(row["target"])
    except DestinationUnreadable as exc:
        return fixity_outcome(row, "unreadable", "full_read", message=str(exc)[:300])
    if found is None:
        return fixity_outcome(row, "missing", "full_read")
    method, got = ("full_read", found["sha256"]) if found.get("sha256") else ("stored_sha256", found.get("stored_sha256"))
    if row.get("bytes") is not None and found.get("size") != row["bytes"]:
        return fixity_outcome(row, "changed", method, found, changed_by="size")
    if got != row["sha256"]:
        return fixity_outcome(row, "changed", method, found, changed_by="sha256")
    return fixity_outcome(row, "ok", method, found)


def counts(outcomes: Iterable[dict]) -> dict[str, int]:
    """``{"checked", "ok", "missing", "changed", "unreadable"}`` of ``fixity`` outcomes."""
    out = {"checked": 0, "ok": 0, **{p: 0 for p in PROBLEMS}}
    for rec in outcomes:
        if rec.get("stage") != "fixity":
            continue
        out["checked"] += 1
        key = "ok" if rec["outcome"] == "ok" else rec.get("reason")
        if key in out:
            out[key] += 1
    return out


def repair(destination: Destination, source: Source, delivered: list[dict], findings: Iterable[dict], *,
           today: date | None = None, batch_size: int = 100) -> list[dict]:
    """Deliver again the photos ``findings`` (``fixity`` outcomes from :func:`verify` or
    :func:`compare`) found ``missing`` or ``changed``, from the source, to the target
    the ledger recorded.

    Each photo is fetched again from the source (``source.fetch`` on the item as its
    listing recorded it: a local folder is read in place, other sources download it to
    their work folder, removed afterwards). Only when that content still has the
    recorded sha256 is anything done; otherwise a ``repair`` outcome ``failed`` with
    reason ``source_changed`` (or ``source_unavailable`` when the fetch failed) says so
    and leaves the source and the destination alone. A changed copy is first set aside
    beside the original as ``NAME~changed-YYYYMMDD.EXT`` (``today``'s date), never
    destroyed (``set_aside_failed`` if that fails, and nothing is delivered).

    Returns the destination's own outcomes for the deliveries (``deliver``, and for S3
    the ``fixity`` of the upload), each ``deliver`` with reason
    ``missing_at_destination`` or ``changed_at_destination`` and in its detail
    ``delivered_as`` (the destination's reason: ``delivered``, ``uploaded``,
    ``already_present``) and ``repair: {"found", "changed_copy"}``; plus the ``repair``
    outcomes of the photos left alone.
    """
    rows = {r["item_id"]: r for r in delivered if r.get("target")}
    todo = [(rows[f["item_id"]], f["reason"]) for f in findings
            if f.get("stage") == "fixity" and f.get("outcome") == "failed"
            and f.get("reason") in ("missing", "changed") and f["item_id"] in rows]
    suffix = f"~changed-{(today or date.today()):%Y%m%d}"
    out: list[dict] = []
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        fetched = {o["item_id"]: o for o in source.fetch([dict(row["item"]) for row, _ in chunk])}
        try:
            going = []
            for row, problem in chunk:
                item, kept, left_alone = _ready(destination, row, problem, fetched.get(row["item_id"]), suffix)
                if left_alone is not None:
                    out.append(left_alone)
                else:
                    going.append((row, problem, item, kept))
            if going:
                out.extend(_redelivered(destination, going))
        finally:
            if source.downloads:
                _remove_downloads(fetched.values(), source.workdir)
    return out


def _ready(destination: Destination, row: dict, problem: str, fetched: dict | None,
           suffix: str) -> tuple[dict | None, str | None, dict | None]:
    """(the item to deliver again, where its changed copy was set aside, None) for one
    photo, or (None, None, the ``repair`` outcome that says why it is left alone)."""
    base = {"target": row["target"], "found": problem, "expected_sha256": row["sha256"]}
    if fetched is None or fetched.get("outcome") != "ok":
        reason = (fetched or {}).get("reason") or "no_result"
        return None, None, _left_alone(row, "source_unavailable", dict(
            base, fetch_reason=reason, message=((fetched or {}).get("detail") or {}).get("message")))
    item = fetched["item"]
    if item.get("sha256") != row["sha256"]:
        return None, None, _left_alone(row, "source_changed", dict(base, source_sha256=item.get("sha256"),
                                                                   source_bytes=item.get("bytes")))
    kept = None
    if problem == "changed":
        try:
            kept = destination.set_aside(row["target"], suffix)
        except FileNotFoundError:
            pass  # gone meanwhile: delivered as a missing one
        except Exception as exc:  # noqa: BLE001 - one photo's problem is its outcome
            return None, None, _left_alone(row, "set_aside_failed",
                                           dict(base, message=redact(f"{type(exc).__name__}: {exc}")[:300]))
    return dict(item, capture=row.get("capture") or item.get("capture"), redeliver_to=row["target"]), kept, None


def _left_alone(row: dict, reason: str, detail: dict) -> dict:
    return _as_delivered(outcome(row["item_id"], "repair", "failed", reason, detail=detail, sha256=row["sha256"]), row)


def _redelivered(destination: Destination, going: list[tuple[dict, str, dict, str | None]]) -> list[dict]:
    """Deliver the ready items; mark each ``deliver`` outcome as a repair."""
    about = {row["item_id"]: (row, problem, kept) for row, problem, _, kept in going}
    results = destination.deliver([item for _, _, item, _ in going])
    for rec in results:
        row, problem, kept = about[rec["item_id"]]
        _as_delivered(rec, row)
        if rec["stage"] != "deliver":
            continue
        rec["detail"] = dict(rec.get("detail") or {}, delivered_as=rec["reason"],
                             repair={"found": problem, "changed_copy": kept})
        if rec["outcome"] == "ok":
            rec["reason"] = f"{problem}_at_destination"
    return results


def _remove_downloads(fetched: Iterable[dict], workdir: os.PathLike | str) -> None:
    """Delete what the source downloaded for a repair, only ever inside its work folder."""
    for rec in fetched:
        path = (rec.get("item") or {}).get("local_path")
        if path and inside(path, workdir):
            try:
                os.unlink(path)
            except OSError:
                pass
