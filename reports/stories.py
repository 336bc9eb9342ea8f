"""Story sections: a part of the report per story, shown only where that story ran.

A story is recognised from what the run recorded: the job spec's source and
destination kinds (``runs.spec``), the source's report facts (``runs.summary``), the
stages and reason codes in the events, and the side tables (``capture_times``,
``matches``). Each builder returns a section dict the HTML template lays out:

    {"id", "title", "facts": [{"label", "value", "shown", "key"?, "note"?}],
     "charts": [{"src", "alt", "caption"}], "table": {"head", "rows", "more", "md"?} | None,
     "gallery": {"head", "rows": [{"label", "link", "verdict", "thumbs"}], "more"} | None}

and may add one-line facts to the ten-second summary.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reports import charts, common, thumbs
from reports import queries as q

CONTACT_SHEET = 12     # photos of what arrived shown in an escape run's contact sheet
PLAN_LIMIT = 2000      # photos shown in the HTML's dry-run plan (plan.csv has them all)
GALLERY_LIMIT = 200    # side-by-side rows in a story's list for a person
HIRES_REASONS = {"matched_direct", "matched_album", "not_in_album", "no_master", "no_larger_version",
                 "too_large_for_flickr", "replaced", "date_restored", "date_verified"}
HIRES_STAGES = {"master", "replace", "restore_date", "verify"}
PROVENANCE_WORDS = {
    "exif:offset": "offset tag in the EXIF (exif:offset)",
    "xmp:offset": "offset in the XMP (xmp:offset)",
    "gps:time": "camera clock vs GPS time (gps:time)",
    "gps:position": "zone of the GPS position (gps:position)",
    "gps:utc": "GPS time only (gps:utc)",
    "sidecar:utc": "the source's UTC instant, e.g. a Takeout sidecar (sidecar:utc)",
    "source:flickr": "Flickr's date taken (source:flickr)",
    "iptc:offset": "IPTC date with its offset (iptc:offset)",
    "makernote": "a date in the camera's maker note (makernote)",
    "exif:datetime": "the file's last-changed date, nothing better (exif:datetime)",
    "filename": "a date in the file name (filename)",
    "rule": "a rule of the job (rule)",
    "previous": "the previous photo's zone (previous)",
    "default": "the job's default zone (default)",
    "unknown": "no zone found: UTC unknown (unknown)",
    "none": "no capture time at all (none)",
}
PLAN_WORDS = {  # what a dry run says the destination would do with a photo
    "upload": "would upload",
    "keep": "already there, would keep",
    "hold_for_review": "would hold for review",
    "already_uploaded": "already uploaded, would not upload again",
    "refuse_time_changed": "would refuse: capture time changed since its upload",
    "no_capture_time": "would skip: no capture time",
}
SIMILARITY_METHODS = ("ssim", "similarity", "correlation", "score")
FIXITY_LIMIT = 1000    # problem photos listed in the fixity section (outcomes.csv has every photo)
REPAIR_HINT = "run photo-escape verify --repair"
METHOD_WORDS = {  # how a fixity check judged a photo (the detail's method)
    "full_read": "read back whole, sha256 compared",
    "size": "size from the listing",
    "stored_sha256": "the sha256 stored with the object (archived: not readable without a restore)",
}
LEFT_ALONE_WORDS = {  # why a repair left a photo alone (the repair event's reason)
    "source_changed": "the source no longer holds the content the ledger recorded",
    "source_unavailable": "the source could not be read",
    "set_aside_failed": "the changed copy could not be set aside",
}


def sections(con, facts: dict) -> tuple[list[dict], list[str]]:
    """(sections for the HTML, one-line facts for the summary) for the stories present."""
    scope = facts["scope"]
    q.prepare_stories(con, scope)
    try:
        ctx = _context(con, facts)
        out, lines = [], []
        for build in (fixity, gallery, find_my_photo, hires, matching, flickr, s3, capture_times):
            section = build(con, facts, ctx)
            if section:
                lines.extend(section.pop("lines", []))
                out.append(section)
        facts["arrived"] = contact_sheet(con, facts, ctx)
        return out, lines
    finally:
        q.release_stories(con)


def _context(con, facts: dict) -> dict:
    """What the story builders test: kinds, stages, reasons, side-table sizes."""
    spec = facts["spec"] or {}
    reasons = q.reason_counts(con)
    return {
        "flow": (facts["scope"].runs[-1].get("flow") if facts["scope"].runs else None),
        "source": (spec.get("source") or {}).get("kind"),
        "destination": (spec.get("destination") or {}).get("kind"),
        "stages": set(facts["stages"]),
        "reasons": reasons,
        "reason_names": {k[2] for k in reasons},
        "captures": q.count(con, "_rep_ct"),
        "matches": q.count(con, "_rep_matches"),
        "methods": q.match_methods(con) if q.count(con, "_rep_matches") else [],
        "fixity": q.count(con, "_rep_fixity"),
    }


def _fact(label: str, value: Any, *, key: str | None = None, note: str | None = None, shown: str | None = None) -> dict:
    f = {"label": label, "value": value, "key": key,
         "shown": shown if shown is not None else (f"{value:,}" if isinstance(value, int) else str(value))}
    if note:
        f["note"] = note
    return f


def _section(id_: str, title: str, **kw: Any) -> dict:
    return {"id": id_, "title": title, "facts": kw.get("facts", []), "charts": kw.get("charts", []),
            "table": kw.get("table"), "gallery": kw.get("gallery"), "lines": kw.get("lines", [])}


def _by_reason(ctx: dict, reason: str, stage: str | None = None, outcome: str | None = None) -> int:
    return sum(n for (s, o, r), n in ctx["reasons"].items()
               if r == reason and (stage is None or s == stage) and (outcome is None or o == outcome))


# -- what arrived: the contact sheet of an escape ----------------------------------------------
def contact_sheet(con, facts: dict, ctx: dict) -> dict | None:
    """A sample of the photos that arrived (a rescue is about photos coming back): a
    dozen spread evenly over the delivered ones in the order they arrived, each as a
    thumbnail with its name and capture date. The picture is the delivered file at a
    local destination, else the source's file on this machine (either only while it
    holds the content the ledger recorded), else the small thumbnail the ledger kept when
    it was hashed. Only files on this machine are read: a report fetches nothing."""
    if ctx["flow"] not in ("escape", None) or not facts["summary"]["done"]:
        return None
    total, sample = q.arrived_sample(con, CONTACT_SHEET)
    if not sample:
        return None
    assets = q.asset_thumbs(con, [r["sha256"] for r in sample])
    roots = _local_roots(facts)
    photos = []
    for r in sample:
        delivered = _inside(roots.get(r["run_id"], roots.get(None)), r["target"])
        src = (thumbs.from_original(delivered, r["sha256"]) or thumbs.from_original(r["local_path"], r["sha256"])
               or thumbs.from_original(_local_path(r["source_ref"]), r["sha256"])
               or common.asset_src(assets.get(r["sha256"])))
        date, iso = _capture_date(r)
        photos.append({"name": r["name"] or thumbs.short_name(r["item_id"]), "src": src, "date": date, "iso": iso,
                       "offset": _offset(r["offset_minutes"]) if r["local"] is not None else "",
                       "link": thumbs.link(str(delivered)) if delivered else thumbs.link(r["source_ref"]),
                       "where": r["target"] or "", "position": int(r["n"]) + 1})
    return {"total": total, "shown": len(photos), "photos": photos}


def _capture_date(r: dict) -> tuple[str, str]:
    """(the capture time as people read it, as an ISO 8601 value) from a capture_times row:
    the camera's local time (its offset beside it), else the UTC time; ("", "") if none."""
    local, utc, minutes = r.get("local"), r.get("utc"), r.get("offset_minutes")
    if local is not None:
        iso = local.strftime("%Y-%m-%dT%H:%M:%S") + (_offset(minutes) if minutes is not None else "")
        return local.strftime("%Y-%m-%d %H:%M"), iso
    if utc is not None:
        return utc.strftime("%Y-%m-%d %H:%M UTC"), utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return "", ""


# -- fixity: the archive as it is -------------------------------------------------------------
def fixity(con, facts: dict, ctx: dict) -> dict | None:
    """What the checks of the archive (a ``verify`` run, a rerun's look at the destination)
    checked, how, and what is wrong: counts, every problem photo with what was found and
    done, and each changed photo as it is at the destination beside its original."""
    if not ctx["fixity"]:
        return None
    c = q.fixity_counts(con)
    summ = facts["run_summary"] or {}
    scope = facts["scope"]
    mode = ("verify" if ctx["flow"] == "verify" else "rerun") if scope.run_id else "job"
    if mode == "rerun":
        items, lines = _rerun_facts(c)
    else:
        items, lines = _check_facts(c, summ, mode)
    problems = q.fixity_problems(con, FIXITY_LIMIT)
    more = max(0, c["checked"] - c["ok"] - len(problems))
    table = {"head": ["photo", "at the destination", "found", "expected (size · sha256)",
                      "found there (size · sha256)", "what was done"],
             "rows": [[r["name"], r["target"] or "", _fixity_found(r), _size_sha(r["expected_bytes"], r["expected_sha256"]),
                       "—" if r["verdict"] == "missing" else _size_sha(r["found_bytes"], r["found_sha256"]),
                       _fixity_done(r)] for r in problems],
             "more": more, "md": True} if problems else None
    title = {"verify": "Fixity: the archive checked", "rerun": "Fixity: the destination as this rerun found it",
             "job": "Fixity: the archive as last checked"}[mode]
    return _section("fixity", title, facts=items, lines=lines, table=table,
                    gallery=_changed_gallery(con, facts, [r for r in problems if r["verdict"] == "changed"]))


def _rerun_facts(c: dict) -> tuple[list[dict], list[str]]:
    """A rerun's look: what was missing (delivered again) and changed (left alone)."""
    again = c["delivered_again"]
    failed = f"; ⚠ {c['delivery_failed']:,} could not be delivered again" if c["delivery_failed"] else ""
    items = [_fact("how", "one listing",
                   note="of the destination: the presence and size of every photo the ledger says was delivered "
                        "there; a full read of those written to since their delivery"),
             _fact("missing at the destination", c["missing"], key="fixity-missing",
                   note=f"{again:,} delivered again{failed}" if c["missing"] else None),
             _fact("delivered again", again, key="fixity-delivered_again"),
             _fact("changed at the destination", c["changed"], key="fixity-changed",
                   note=f"left alone, never overwritten: {REPAIR_HINT}" if c["changed"] else None)]
    if c["unreadable"]:
        items.append(_fact("unreadable at the destination", c["unreadable"], key="fixity-unreadable",
                           note="left alone"))
    parts = []
    if c["missing"]:
        parts.append(f"{c['missing']:,} photos missing at the destination, {again:,} delivered again")
    if c["changed"] + c["unreadable"]:
        parts.append(f"⚠ {c['changed'] + c['unreadable']:,} changed there, left alone ({REPAIR_HINT})")
    return items, ["Fixity: " + "; ".join(parts) + "."] if parts else []


def _check_facts(c: dict, summ: dict, mode: str) -> tuple[list[dict], list[str]]:
    """A verify run (or, for a job, each photo's latest check): counts, method, repairs."""
    checked = c["checked"]
    how, how_note = _fixity_method(c, summ if mode == "verify" else {})
    by = ", ".join(f"{n:,} by {k}" for k, n in c["changed_by"].items())
    items = [_fact("photos checked", checked, key="fixity-checked",
                   note="every photo the ledger says was delivered there" if mode == "verify"
                   else "each photo by its latest check"),
             _fact("how", how, key="fixity-method", note=how_note),
             _fact("ok", c["ok"], key="fixity-ok", note=_share(c["ok"], checked)),
             _fact("missing", c["missing"], key="fixity-missing", note=_share(c["missing"], checked)),
             _fact("changed", c["changed"], key="fixity-changed",
                   note="; ".join(x for x in (_share(c["changed"], checked), by) if x)),
             _fact("unreadable", c["unreadable"], key="fixity-unreadable")]
    bad = checked - c["ok"]
    left = sum(c["left_alone"].values())
    repair_asked = bool(summ.get("repair")) if mode == "verify" else bool(c["delivered_again"] or left)
    if repair_asked:
        kept = (f"; {c['changed_copies_kept']:,} changed copies kept beside them as NAME~changed-YYYYMMDD"
                if c["changed_copies_kept"] else "")
        items.append(_fact("delivered again (repaired)", c["delivered_again"], key="fixity-repaired",
                           note=f"from the source, which still held the recorded content{kept}"
                           if c["delivered_again"] else None))
        items.append(_fact("left alone", left, key="fixity-left_alone", note=", ".join(
            f"{LEFT_ALONE_WORDS.get(r, r)} ({r}) × {n:,}" for r, n in c["left_alone"].items()) or None))
    elif bad:
        items.append(_fact("repair", "not asked", note=f"{REPAIR_HINT} to deliver them again from the source"))
    if c["delivery_failed"]:
        items.append(_fact("failed to deliver again", c["delivery_failed"], key="fixity-delivery_failed"))
    head = "Fixity" + (" (latest check of each photo)" if mode == "job" else "")
    text = (f"{head}: {checked:,} photos checked ({how}): {c['ok']:,} ok, {c['missing']:,} missing, "
            f"{c['changed']:,} changed" + (f", {c['unreadable']:,} unreadable" if c["unreadable"] else ""))
    if not bad:
        text = "✔ " + text + "."
    elif repair_asked:
        text = f"⚠ {text}; {c['delivered_again']:,} delivered again, {left:,} left alone."
    else:
        text = f"⚠ {text}; left alone ({REPAIR_HINT})."
    return items, [text]


def _fixity_method(c: dict, summ: dict) -> tuple[str, str]:
    """(how the photos were checked, in a few words; how many by each method)."""
    methods = c["by_method"]
    sample = summ.get("sample_percent")
    if sample is not None:
        how = f"sizes of all, full read of a random {float(sample):g}%"
    elif summ:
        how = "full read of every photo"
    else:
        how = ", ".join(k.replace("_", " ") for k in methods) or "—"
    counts = ", ".join(f"{METHOD_WORDS.get(k, k)} × {n:,}" for k, n in methods.items())
    lead = ("one listing for every photo's presence and size, then a full read of those there at the size "
            "delivered" + (" (a sample of them, and every file written to since its delivery)" if sample is not None
                           else "") + "; by method: ") if summ else "by method: "
    return how, lead + counts


def _fixity_found(r: dict) -> str:
    """What a check found wrong with a photo, in a few words."""
    if r["verdict"] == "missing":
        return "missing"
    if r["verdict"] == "changed":
        return f"changed ({'size' if r.get('changed_by') == 'size' else 'sha256'})" \
            + (", as a verify found" if r.get("found_by") == "verify" else "")
    return r["verdict"] + (f": {r['message']}" if r.get("message") else "")


def _fixity_done(r: dict) -> str:
    """What was done about a problem photo after the check: delivered again, or left alone and why."""
    d = r["then_detail"] if isinstance(r.get("then_detail"), dict) else {}
    if r["then_stage"] == "deliver":
        if r["then_outcome"] != "ok":
            return f"delivering it again failed ({r['then_reason']})"
        kept = (d.get("repair") or {}).get("changed_copy") if isinstance(d.get("repair"), dict) else None
        return "delivered again" + (f"; the changed copy kept at {kept}" if kept else "")
    if r["then_stage"] == "repair":
        return f"left alone because {LEFT_ALONE_WORDS.get(r['then_reason'], r['then_reason'])} ({r['then_reason']})"
    if r["verdict"] == "missing" and r.get("flow") == "escape":
        return "not delivered again (the run ended before)"
    if r["verdict"] == "unreadable":
        return "left alone: it could not be read"
    return f"left alone{', never overwritten' if r['verdict'] == 'changed' else ''}: {REPAIR_HINT}"


def _size_sha(size: Any, sha: Any) -> str:
    return (f"{size:,} B" if size is not None else "—") + (f" · {sha[:12]}…" if sha else " · not read")


def _changed_gallery(con, facts: dict, changed: list[dict]) -> dict | None:
    """Each changed photo as it is at the destination now (for a repaired one, the changed
    copy kept beside it) beside its original: the source's file while it still holds the
    recorded content, else the thumbnail the ledger kept when it was hashed. Only files
    on this machine are read: a report fetches nothing over a network."""
    if not changed:
        return None
    shown = changed[:GALLERY_LIMIT]
    assets = q.asset_thumbs(con, [r["expected_sha256"] for r in shown])
    roots = _local_roots(facts)
    rows = []
    for r in shown:
        original = thumbs.from_original(_local_path(r.get("source_ref")), r["expected_sha256"], r["expected_bytes"])
        caption = "original: the source's file"
        if original is None:
            original = common.asset_src(assets.get(r["expected_sha256"]))
            caption = "original, as hashed at delivery" if original else "original: not at hand"
        d = r["then_detail"] if isinstance(r.get("then_detail"), dict) else {}
        kept = (d.get("repair") or {}).get("changed_copy") if isinstance(d.get("repair"), dict) else None
        where = kept if kept and r["then_stage"] == "deliver" and r["then_outcome"] == "ok" else r["target"]
        root = roots.get(r["run_id"], roots.get(None))
        path = _inside(root, where)
        now = thumbs.from_file(path, partial=True) if path else None
        now_caption = ("the changed copy kept: " if where != r["target"] else "at the destination now: ") \
            + thumbs.short_name(where)
        if path is None:
            now_caption = "at the destination now: not fetched (a report reads nothing over a network)"
        elif now is None:
            now_caption += " (not readable as an image)"
        rows.append({"label": r["name"], "link": thumbs.link(r.get("source_ref")), "verdict": _fixity_found(r),
                     "thumbs": [{"src": original, "caption": caption, "link": thumbs.link(r.get("source_ref"))},
                                {"src": now, "caption": now_caption, "link": thumbs.link(str(path)) if path else None}]})
    return {"head": ["photo", "original", "at the destination now"], "rows": rows,
            "more": max(0, len(changed) - len(shown))}


def _local_roots(facts: dict) -> dict[str | None, Path]:
    """{run_id: the folder a run's destination wrote to} for local destinations
    (None: the report's own job spec's)."""
    out: dict[str | None, Path] = {}
    specs = [(r.get("run_id"), common.json_value(r.get("spec"))) for r in facts["scope"].runs]
    for run_id, spec in specs + [(None, facts.get("spec"))]:
        dest = (spec or {}).get("destination") if isinstance(spec, dict) else None
        if isinstance(dest, dict) and dest.get("kind") == "local" and isinstance(dest.get("path"), str):
            out[run_id] = Path(dest["path"]).expanduser()
    return out


def _inside(root: Path | None, target: str | None) -> Path | None:
    """``root/target`` for a relative target that stays inside ``root``; None otherwise."""
    if root is None or not target or target.startswith(("/", "s3://")) or ".." in Path(target).parts:
        return None
    return root / target


def _local_path(ref: Any) -> str | None:
    """A source reference that is a path on this machine (a local source's file)."""
    if not isinstance(ref, str):
        return None
    ref = ref[len("local:"):] if ref.startswith("local:") else ref
    return ref if ref.startswith("/") else None


# -- gallery rescue -------------------------------------------------------------------------
def gallery(con, facts: dict, ctx: dict) -> dict | None:
    """Expected count met or not, from the gallery source's report facts."""
    summ = facts["run_summary"] or {}
    if ctx["source"] != "gallery" and "expected_count" not in summ:
        return None
    s = facts["summary"]
    expected = summ.get("expected_count")
    arrived = s["done"] + _by_reason(ctx, "already_present", "deliver", "skipped")
    items = [_fact("images listed", s["listed"], key="gallery-listed"),
             _fact("images arrived", arrived, key="gallery-arrived")]
    lines = []
    if expected is not None:
        met = s["listed"] == expected and arrived >= expected
        items.insert(0, _fact("images expected", int(expected), key="gallery-expected"))
        items.append(_fact("expected count met", met, key="gallery-met",
                           shown="✔ yes" if met else "⚠ no",
                           note=None if met else f"{int(expected) - arrived:,} short of the {int(expected):,} expected"))
        lines.append(f"Gallery: {int(expected):,} images expected, {s['listed']:,} listed, {arrived:,} arrived — "
                     + ("✔ all there." if met else "⚠ not all there."))
    for key, label in (("pages", "pages read"), ("last_page", "last page"), ("listing_ended", "listing ended"),
                       ("relogins", "logins renewed")):
        if summ.get(key) is not None:
            items.append(_fact(label, summ[key]))
    return _section("gallery", "Gallery rescue", facts=items, lines=lines)


# -- find my photo --------------------------------------------------------------------------
def _higher_is_closer(ctx: dict) -> bool:
    return any(any(w in (m or "").lower() for w in SIMILARITY_METHODS) for m in ctx["methods"])


def find_my_photo(con, facts: dict, ctx: dict) -> dict | None:
    """The numbered harvest (found, missing, where the numbers ended) and the margin
    between the best matches and everything else (similarity scores)."""
    numbered = ctx["source"] == "numbered"
    if not (numbered or (ctx["matches"] and _higher_is_closer(ctx))):
        return None
    s, summ = facts["summary"], facts["run_summary"] or {}
    items, lines, table, gallery = [], [], None, None
    if numbered:
        items += [_fact("numbers tried", s["listed"], key="find-tried",
                        note=f"numbers {summ['numbers']}" if summ.get("numbers") else None),
                  _fact("images found", s["done"] + _by_reason(ctx, "already_present", "deliver", "skipped"),
                        key="find-found"),
                  _fact("numbers missing at the source (404)", _by_reason(ctx, "not_found", "fetch"), key="find-missing")]
        stopped = _by_reason(ctx, "stopped_after_missing", "fetch")
        if stopped or summ.get("stop_after_missing"):
            items.append(_fact("not tried after a long run of missing numbers", stopped, key="find-stopped",
                               note=(f"stopped after {summ['stop_after_missing']} missing in a row"
                                     + (f", the last number found being {summ['ended_at']}" if summ.get("ended_at") else ""))
                               if summ.get("stop_after_missing") else None))
    if ctx["matches"]:
        higher = _higher_is_closer(ctx)
        totals, per = q.query_margins(con, higher)
        items.append(_fact("references searched for", int(totals["queries"]), key="find-queries"))
        if totals["chosen"] and totals["best_other"] is not None:
            lo, hi = totals["chosen_min"], totals["chosen_max"]
            best_other = totals["best_other"]
            word = "below" if higher else "above"
            chosen_text = f"{lo:.2f}" if lo == hi else f"{lo:.2f} to {hi:.2f}"
            margin = (lo - best_other) if higher else (best_other - hi)
            items.append(_fact("best matches scored", chosen_text))
            items.append(_fact(f"everything else scored {word}", f"{best_other:.2f}"))
            items.append(_fact("margin", round(margin, 4), key="find-margin", shown=f"{margin:+.2f}",
                               note="clear: the matches stand apart" if margin > 0 else "⚠ no clear margin: review"))
            lines.append(f"Find my photo: the matches scored {chosen_text}; everything else {word} "
                         f"{best_other:.2f} (margin {margin:+.2f}).")
        table = {"head": ["reference", "best candidate", "score", "runner-up", "runner-up score", "margin"],
                 "rows": [[r["name"], _base(r["best"]), _num(r["best_distance"]), _base(r["runner_up"]),
                           _num(r["runner_up_distance"]), _num(r["margin"])] for r in per],
                 "more": max(0, int(totals["queries"]) - len(per))}
        gallery = _references_beside_candidates(con, per[:GALLERY_LIMIT], higher)
        if gallery:
            gallery["more"] = max(0, int(totals["queries"]) - len(gallery["rows"]))
    return _section("find", "Find my photo", facts=items, table=table, lines=lines, gallery=gallery)


FIND_CANDIDATES = 3    # best candidates shown beside each reference


def _references_beside_candidates(con, per: list[dict], higher: bool) -> dict | None:
    """Rows of [reference, its picture, its best candidates with their scores] and the
    margin (the best's score minus the runner-up's), for a person to see each find."""
    if not per:
        return None
    top = q.top_candidates(con, [r["query"] for r in per], higher, FIND_CANDIDATES)
    wanted = [c["candidate"] for ranked in top.values() for c in ranked]
    known = q.shas_of(con, [c for c in wanted if not Path(str(c)).is_absolute()])
    assets = q.asset_thumbs(con, list(known.values()))
    rows = []
    for r in per:
        ranked = top.get(r["query"], [])
        ref = ranked[0]["query_ref"] if ranked else None
        cells = [{"src": thumbs.from_file(_local_path(ref)), "caption": "reference", "link": thumbs.link(ref)}]
        for place, c in enumerate((ranked + [None] * FIND_CANDIDATES)[:FIND_CANDIDATES], start=1):
            if c is None:
                cells.append({"src": None, "caption": "no candidate", "link": None})
                continue
            src = thumbs.from_file(_local_path(c["candidate"])) or common.asset_src(assets.get(known.get(c["candidate"])))
            label = "best" if place == 1 else f"#{place}"
            cells.append({"src": src, "link": thumbs.link(c["candidate"]), "score": f"{c['distance']:.3f}" if isinstance(c["distance"], float) else _num(c["distance"]),
                          "caption": f"{label}{' (chosen)' if c.get('chosen') and place == 1 else ''}: "
                                     f"{thumbs.short_name(c['candidate'])}"})
        margin = r.get("margin")
        rows.append({"label": r["name"], "link": thumbs.link(ref),
                     "verdict": "no runner-up" if margin is None else f"margin {margin:+.2f}",
                     "margin": None if margin is None else float(margin), "thumbs": cells})
    return {"head": ["reference", "its picture", "best candidate", "second", "third"], "rows": rows, "more": 0}


# -- hi-res replacement ---------------------------------------------------------------------
def hires(con, facts: dict, ctx: dict) -> dict | None:
    """Listed, matched (directly / through an album), not matched, no larger version,
    too large, replaced, dates restored and verified, failed; the person's list."""
    if not (ctx["flow"] == "replace_hires" or ctx["stages"] & HIRES_STAGES
            or len(ctx["reason_names"] & HIRES_REASONS) >= 2):
        return None
    s = facts["summary"]
    direct, album = _by_reason(ctx, "matched_direct"), _by_reason(ctx, "matched_album")
    matched = direct + album
    unmatched = {r: n for (st, o, r), n in ctx["reasons"].items() if st == "match" and o == "needs_review"}
    counts = [
        ("listed", "listed", s["listed"]),
        ("matched", "matched", matched),
        ("matched_direct", "matched directly (the link was the image)", direct),
        ("matched_album", "matched through an album", album),
        ("not_matched", "not matched (a person decides)", sum(unmatched.values())),
        ("no_master", "no master file found", _by_reason(ctx, "no_master")),
        ("no_larger_version", "no larger version", _by_reason(ctx, "no_larger_version")),
        ("too_large", "too large for Flickr", _by_reason(ctx, "too_large_for_flickr")),
        ("replaced", "replaced", _by_reason(ctx, "replaced", "replace") + _by_reason(ctx, "already_replaced", "replace")),
        ("date_restored", "dates restored", _by_reason(ctx, "date_restored")),
        ("date_verified", "dates verified", _by_reason(ctx, "date_verified")),
        ("failed", "failed", s["failed"]),
    ]
    by_count = sorted(unmatched.items(), key=lambda x: (-x[1], x[0]))  # ties by name: the same text every time
    notes = {"not_matched": ", ".join(f"{r} × {n:,}" for r, n in by_count),
             "replaced": (f"{_by_reason(ctx, 'already_replaced', 'replace'):,} by an earlier attempt"
                          if _by_reason(ctx, "already_replaced", "replace") else "")}
    items = [_fact(label, n, key=f"hires-{key}",
                   note="; ".join(x for x in (_share(n, s["listed"]), notes.get(key)) if x) if key != "listed" else None)
             for key, label, n in counts]
    lines = [f"Hi-res: {s['listed']:,} listed, {matched:,} matched ({_share(matched, s['listed'])}), "
             f"{_by_reason(ctx, 'no_larger_version'):,} with no larger version, "
             f"{counts[8][2]:,} replaced; {sum(unmatched.values()):,} not matched wait for a person."]
    ids = q.rows(con, f"""SELECT DISTINCT item_id FROM _rep_stage_latest
                          WHERE reason IN ('not_in_album', 'ambiguous', 'no_master') OR outcome IN ('failed', 'needs_review')
                          ORDER BY item_id LIMIT {GALLERY_LIMIT + 1}""")
    return _section("hires", "Hi-res replacement", facts=items, lines=lines,
                    gallery=_person_list(con, [r["item_id"] for r in ids], "Flickr image"))


def _person_list(con, item_ids: list[str], source_label: str) -> dict | None:
    """Rows of [item, source thumbnail, best candidate, runner-up] for a person to decide."""
    if not item_ids:
        return None
    more = max(0, len(item_ids) - GALLERY_LIMIT)
    item_ids = item_ids[:GALLERY_LIMIT]
    info = {r["item_id"]: r for r in q.rows(con, f"""
        SELECT i.item_id, any_value(i.name) AS name, any_value(i.source_ref) AS source_ref,
               arg_max(l.sha256, l.seq) FILTER (WHERE l.sha256 IS NOT NULL) AS sha256,
               arg_max(l.reason, l.seq) FILTER (WHERE l.reason IS NOT NULL) AS reason,
               any_value(i.last_seq) AS last_seq
        FROM _rep_items i LEFT JOIN _rep_stage_latest l USING (item_id)
        WHERE i.item_id IN ({', '.join('?' for _ in item_ids)}) GROUP BY i.item_id""", item_ids)}
    details = {r["seq"]: r["detail"] for r in q.rows(con, f"""
        SELECT seq, detail FROM events WHERE seq IN ({', '.join('?' for _ in info) or 'NULL'})""",
        [r["last_seq"] for r in info.values()])} if info else {}
    for r in info.values():
        r["detail"] = details.get(r.get("last_seq"))
    ordered = [info.get(i, {"item_id": i}) for i in item_ids]
    for r in ordered:
        r["detail"] = common.json_value(r.get("detail"))
    rows = [{"label": r.get("name") or r["item_id"], "link": thumbs.link(r.get("source_ref")),
             "verdict": r.get("reason") or "", "thumbs": t}
            for r, t in zip(ordered, common.side_by_side(con, ordered, source_label))]
    return {"head": ["item", source_label, "best candidate", "runner-up"], "rows": rows, "more": more}


# -- matching (any story that compared pictures) ----------------------------------------------
def matching(con, facts: dict, ctx: dict) -> dict | None:
    """The distance distribution of best candidates vs the rest, with the threshold marked."""
    if not ctx["matches"]:
        return None
    higher = _higher_is_closer(ctx)
    hist = q.distance_histogram(con)
    best = [(r["distance"], r["count"]) for r in hist if r["best"]]
    rest = [(r["distance"], r["count"]) for r in hist if not r["best"]]
    threshold = q.match_threshold(con) or _spec_threshold(facts.get("spec") or {}, ctx)
    method = ", ".join(m for m in ctx["methods"] if m) or "distance"
    chart = charts.distances(best, rest, threshold, xlabel=f"{method} {'score' if higher else 'distance'}",
                             higher_is_closer=higher)
    totals, per = q.query_margins(con, higher, limit=0)
    items = [_fact("pictures compared", int(totals["queries"]), key="match-queries"),
             _fact("with a chosen candidate", int(totals["chosen"]), key="match-chosen"),
             _fact("comparisons recorded", ctx["matches"])]
    if threshold is not None:
        items.append(_fact("threshold", f"{threshold:g}", note=(
            "within it (and clear of the runner-up) the hashes decide alone; beyond it a finer comparison decides"
            if set(ctx["methods"]) <= {"direct", "album"} else "a best candidate beyond it is not taken")))
    caption = (f"Distribution of {method} values: best candidate per picture (green) and the rest (grey)"
               + (f"; the dashed line is the threshold {threshold:g}." if threshold is not None else "."))
    return _section("matching", "Matching", facts=items,
                    charts=[{"src": chart, "alt": "distance distribution", "caption": caption}] if chart else [])


def _spec_threshold(spec: dict, ctx: dict) -> float | None:
    """The album resolver's 'sure' distance: the job's ``matching.sure`` or the resolver's default."""
    matching = spec.get("matching") if isinstance(spec.get("matching"), dict) else {}
    for key in ("threshold", "sure"):
        if isinstance(matching.get(key), (int, float)):
            return float(matching[key])
    if ctx["methods"] and set(ctx["methods"]) <= {"direct", "album"}:
        try:
            from tasks.resolve import SURE_DISTANCE
        except ImportError:
            return None
        return float(SURE_DISTANCE)
    return None


# -- a Flickr account escaped ----------------------------------------------------------------
FLICKR_SOURCES = ("flickr", "flickr_export")
GRANULARITY_WORDS = {"exact": "exact date and time", "month": "to the month", "year": "to the year",
                     "circa": "circa (approximate)", "unknown": "no date"}


def flickr(con, facts: dict, ctx: dict) -> dict | None:
    """A Flickr account (by API or its export): photos, originals and size-limited copies,
    albums, dates by granularity, what the export lacked, and photos gone from Flickr
    since an earlier run (named, never deleted at the destination)."""
    if ctx["source"] not in FLICKR_SOURCES:
        return None
    summ = facts["run_summary"] or {}
    f = summ.get("flickr") or summ.get("flickr_export") or {}
    originals = _by_reason(ctx, "original", "fetch", "ok")
    limited = _by_reason(ctx, "size_limited", "fetch", "ok")
    copies = _by_reason(ctx, "largest_copy", "fetch", "ok")
    items = [_fact("photos listed", int(f.get("photos") or 0), key="flickr-photos"),
             _fact("videos listed", int(f.get("videos") or 0), key="flickr-videos")]
    if ctx["source"] == "flickr":
        items += [_fact("originals downloaded", originals, key="flickr-originals"),
                  _fact("size-limited (not the original)", limited, key="flickr-size-limited",
                        note="the account offered no original: the largest copy offered came" if limited else None)]
        if copies:
            items.append(_fact("largest copies (size: largest)", copies, key="flickr-largest-copies"))
        if f.get("private") is not None:
            items.append(_fact("private or friends-only", int(f["private"]), key="flickr-private"))
        if f.get("listing_api_calls") is not None:
            items.append(_fact("API calls to list", int(f["listing_api_calls"]), key="flickr-listing-calls"))
    else:
        items += [_fact("matched to their JSON", int(f.get("matched") or 0), key="flickr-export-matched"),
                  _fact("originals without JSON", int(f.get("originals_without_json") or 0),
                        key="flickr-export-no-json", note="delivered with no metadata"),
                  _fact("JSON without original", int(f.get("json_without_original") or 0),
                        key="flickr-export-no-original", note="listed as failed: original_not_in_export")]
    items.append(_fact("albums", int(f.get("albums") or 0), key="flickr-albums"))
    for name, n in (f.get("dates_by_granularity") or {}).items():
        items.append(_fact(f"dates {GRANULARITY_WORDS.get(name, name)}", int(n), key=f"flickr-dates-{name}"))
    gone_total, gone = (q.gone_from_source(con, facts["scope"]) if summ.get("listing_complete")
                        else (0, []))
    if summ.get("listing_complete"):
        items.append(_fact("gone from Flickr since an earlier run", gone_total, key="flickr-gone",
                           note="kept at the destination" if gone_total else None))
    rows = [[g["name"] or g["item_id"], "gone from Flickr", f"last listed {_when(g['last_listed'])}"] for g in gone]
    for r in q.fetch_details(con, ("size_limited", "largest_copy", "no_metadata")):
        d = common.json_value(r["detail"]) or {}
        got = f"{d.get('size_label') or ''} {d.get('width') or ''}×{d.get('height') or ''}".strip(" ×") \
            if r["reason"] != "no_metadata" else (d.get("member") or "")
        rows.append([r["name"] or r["item_id"], r["reason"].replace("_", " "), got])
    lines = [f"Flickr: {int(f.get('photos') or 0):,} photos and {int(f.get('videos') or 0):,} videos"
             + (f", {originals:,} originals, {limited:,} size-limited" if ctx["source"] == "flickr" else "")
             + f", {int(f.get('albums') or 0):,} albums."]
    if gone_total:
        lines.append(f"Flickr: ⚠ {gone_total:,} photos listed by an earlier run are gone from Flickr "
                     "(their copies stay at the destination).")
    table = {"head": ["photo", "what", "detail"], "rows": rows, "more": max(0, gone_total - len(gone))} if rows else None
    return _section("flickr", "A Flickr account" if ctx["source"] == "flickr" else "A Flickr export",
                    facts=items, table=table, lines=lines)


# -- personal archive to S3 -------------------------------------------------------------------
def s3(con, facts: dict, ctx: dict) -> dict | None:
    """Storage classes of what was delivered and the fixity checks' results."""
    fixity = q.upload_checks(con, facts["scope"])  # the archive's own checks are the fixity section's
    if "s3" not in (ctx["source"], ctx["destination"]) and not fixity:
        return None
    classes = [r for r in q.detail_counts(con, "deliver", "storage_class") if r["value"] != "(none)"]
    items = [_fact(f"stored as {r['value']}", int(r["count"])) for r in classes]
    ok = sum(n for (o, _), n in fixity.items() if o == "ok")
    bad = sum(n for (o, _), n in fixity.items() if o != "ok")
    if fixity:
        items.append(_fact("fixity verified", ok, key="s3-fixity-ok",
                           note=", ".join(f"{r or 'checked'} × {n:,}" for (o, r), n in fixity.items() if o == "ok")))
        items.append(_fact("fixity failed", bad, key="s3-fixity-failed",
                           note=", ".join(f"{r} × {n:,}" for (o, r), n in fixity.items() if o != "ok") or None))
    summ = facts["run_summary"] or {}
    if summ.get("excluded_prefixes"):
        items.append(_fact("never read (our own output)", ", ".join(map(str, summ["excluded_prefixes"]))))
    lines = [f"S3: {ok:,} objects verified after upload" + (f", ⚠ {bad:,} failed their fixity check." if bad else ".")] \
        if fixity else []
    chart = charts.counts([r["value"] for r in classes], [int(r["count"]) for r in classes]) if classes else None
    return _section("s3", "Archive to S3", facts=items, lines=lines,
                    charts=[{"src": chart, "alt": "storage classes", "caption": "Delivered originals by storage class."}]
                    if chart else [])


# -- capture times (timezone-correct upload) ------------------------------------------------
def capture_times(con, facts: dict, ctx: dict) -> dict | None:
    """Where each capture time's zone came from; for a dry run, the whole plan to review."""
    if not ctx["captures"]:
        return None
    prov = q.provenance(con)
    total = sum(int(r["count"]) for r in prov)
    items = [_fact(PROVENANCE_WORDS.get(r["provenance"], f"from {r['provenance']}"), int(r["count"]),
                   key=f"prov-{r['provenance'].replace(':', '-')}",
                   note=_share(r["count"], total) + (f"; {r['conflicts']:,} with conflicting clues" if r["conflicts"] else ""))
             for r in prov]
    chart = charts.counts([r["provenance"] for r in prov], [int(r["count"]) for r in prov])
    dry = bool(facts["summary"].get("dry_run"))
    table = None
    lines = []
    by = {r["provenance"]: int(r["count"]) for r in prov}
    guessed = by.get("previous", 0) + by.get("default", 0)
    if guessed:
        lines.append(f"Capture times: {guessed:,} of {total:,} photos took their zone from the previous photo "
                     "or the job's default: worth a look before uploading.")
    if by.get("unknown"):
        lines.append(f"Capture times: {by['unknown']:,} of {total:,} photos have a local time but no zone, so no "
                     "UTC time (add a rule or a default_tz).")
    if by.get("none"):
        lines.append(f"Capture times: {by['none']:,} photos carry no capture time at all.")
    if dry:
        plan = q.capture_plan(con, PLAN_LIMIT)
        would = q.plan_counts(con)
        items += [_fact(PLAN_WORDS.get(w["would"], f"would: {w['would']}"), int(w["count"]),
                        key=f"plan-{w['would']}") for w in would]
        head = ["photo", "local time (camera)", "UTC", "offset", "zone", "provenance", "conflicts"]
        table = {"head": head + (["the run would"] if would else []),
                 "rows": [[p["name"], _when(p["local"]), _when(p["utc"]), _offset(p["offset_minutes"]),
                           p["tz"] or "", p["provenance"] or "", _conflicts(p["conflicts"])]
                          + ([(p["would"] or "").replace("_", " ")] if would else []) for p in plan],
                 "more": max(0, total - len(plan))}
        if facts.get("out_dir") and not facts.get("plan_given"):
            facts.setdefault("extra_files", {})["plan_csv"] = str(write_plan_csv(con, facts["out_dir"]))
        lines.append("Dry run: the plan below gives every photo's UTC time and where its zone came from; "
                     "review it, then run without --dry-run.")
    title = "Upload plan (dry run): capture times to review" if dry else "Capture times restored"
    return _section("capture", title, facts=items, table=table, lines=lines,
                    charts=[{"src": chart, "alt": "capture-time provenance",
                             "caption": "Where each photo's time zone came from."}] if chart else [])


def write_plan_csv(con, out: Path) -> Path:
    """Every photo of a dry run with its UTC time, provenance and what the run would do
    (all rows, not just the HTML's), written from Arrow with secrets masked."""
    import pyarrow.csv as pacsv

    path = out / "plan.csv"
    pacsv.write_csv(common.redact_table(q.capture_plan_table(con)), path)
    return path


# -- small formatting helpers -------------------------------------------------------------------
def _share(n: Any, whole: Any) -> str:
    return f"{100.0 * float(n or 0) / float(whole):.1f}%" if whole else "—"


def _num(x: Any) -> str:
    return "" if x is None else f"{x:g}" if isinstance(x, float) else str(x)


def _base(ref: Any) -> str:
    if not ref:
        return ""
    return str(ref).rstrip("/").rsplit("/", 1)[-1]


def _when(d: Any) -> str:
    return "" if d is None else d.strftime("%Y-%m-%d %H:%M:%S") + (" UTC" if getattr(d, "tzinfo", None) else "")


def _offset(minutes: Any) -> str:
    if minutes is None:
        return ""
    sign = "+" if minutes >= 0 else "-"
    h, m = divmod(abs(int(minutes)), 60)
    return f"{sign}{h:02d}:{m:02d}"


def _conflicts(value: Any) -> str:
    if not value or value in ("[]", "null"):
        return ""
    return str(value)[:120]
