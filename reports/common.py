"""What the report's main part (:mod:`reports.build`) and its story sections
(:mod:`reports.stories`) both use: thumbnails of items beside their best candidates,
JSON text from the ledger as values, and secrets masked in Arrow tables.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from photo_escape.secrets import MASK
from reports import queries as q
from reports import thumbs


def side_by_side(con, items: list[dict], source_label: str = "source") -> list[list[dict]]:
    """For each item: [source, chosen candidate, runner-up] thumbnails with captions.

    Batched: one query for the items' best matches, one for the candidates' content
    hashes, one for the stored thumbnails, whatever the number of rows.
    """
    matches = q.best_matches(con, [i["item_id"] for i in items])
    wanted: list[str] = []
    for ranked in matches.values():
        for m in ranked:
            d = json_value(m.get("detail")) or {}
            d = d if isinstance(d, dict) else {}
            m["_sha"] = d.get("sha256") or d.get("candidate_sha256")
            m["_path"] = d.get("path") or d.get("local_path")
            m["_link"] = thumbs.link(d.get("candidate_url") or d.get("url") or m["_path"] or m["candidate"])
            if not m["_sha"]:
                wanted.append(m["candidate"])
    known = q.shas_of(con, wanted)
    for ranked in matches.values():
        for m in ranked:
            m["_sha"] = m["_sha"] or known.get(m["candidate"])
    assets = q.asset_thumbs(con, [i.get("sha256") for i in items]
                            + [m["_sha"] for ranked in matches.values() for m in ranked])
    out = []
    for item in items:
        detail = item.get("detail") if isinstance(item.get("detail"), dict) else {}
        src = asset_src(assets.get(item.get("sha256"))) or thumbs.from_file(
            detail.get("local_path") or detail.get("path"))
        row = [{"src": src, "caption": source_label, "link": thumbs.link(item.get("source_ref"))}]
        ranked = matches.get(item["item_id"], [])
        for label, m in zip(("chosen", "runner-up"), (ranked + [None, None])[:2]):
            if m is None:
                row.append({"src": None, "caption": f"no {label}", "link": None})
                continue
            name = thumbs.short_name(m["candidate"])
            if label == "chosen" and not m.get("chosen"):
                label = "best (not chosen)"
            row.append({"src": asset_src(assets.get(m["_sha"])) or thumbs.from_file(m["_path"] or m["candidate"]),
                        "link": m["_link"],
                        "caption": f"{label}: {name} · {m['distance']:g}" if m.get("distance") is not None
                        else f"{label}: {name}"})
        out.append(row)
    return out


def asset_src(asset: dict | None) -> str | None:
    """Data URI of an asset's stored thumbnail."""
    if not asset or not asset.get("thumb"):
        return None
    d = json_value(asset.get("detail")) or {}
    shape = d.get("thumb_size") if isinstance(d, dict) else None
    return thumbs.from_blob(asset["thumb"], tuple(shape) if shape else None)


def json_value(value: Any) -> Any:
    """A JSON column's text as a value (None when it is not JSON); other values as they are."""
    if value is None or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return None


def redact_table(table: pa.Table) -> pa.Table:
    """The table with every known secret masked in its string columns (vectorised)."""
    from photo_escape import secrets

    known = sorted(getattr(secrets, "_KNOWN", ()), key=len, reverse=True)
    if not known:
        return table
    cols = []
    for col in table.columns:
        if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            for value in known:
                col = pc.replace_substring(col, pattern=value, replacement=MASK)
        cols.append(col)
    return pa.table(cols, names=table.column_names)
