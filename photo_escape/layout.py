"""Where a photo lands: key/path templates such as ``{taken:%Y/%m/%d}/{name}``.

Fields a template may use:

``{name}``       the photo's file name (made safe)
``{stem}``       the name without its extension; ``{ext}`` the extension without the dot
``{taken:FMT}``  the local wall-clock capture time, strftime format; photos with no
                 capture time get the ``undated`` word in place of the whole field
``{sha256}``     the content hash (``{sha8}``: its first 8 hex digits)
``{relpath}``    the path relative to the source's root, where the source has one

Whatever a template and a remote name produce, the result is a relative path of
safe components: no ``..``, no absolute path, no control characters.
"""

from __future__ import annotations

import re
import string
from datetime import datetime
from typing import Any

_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")


def safe_component(part: str, fallback: str = "_") -> str:
    """One path component that cannot escape a folder or confuse a file system."""
    part = _UNSAFE.sub("_", part).strip().strip(".")
    part = part[:200]
    return part or fallback


def safe_relpath(path: str) -> str:
    """A relative path made only of safe components (``..`` and empty parts dropped)."""
    parts = [p for p in re.split(r"[/\\]+", path) if p not in ("", ".", "..")]
    return "/".join(safe_component(p) for p in parts) or "_"


class _Formatter(string.Formatter):
    def __init__(self, undated: str) -> None:
        self.undated = undated

    def format_field(self, value: Any, format_spec: str) -> str:
        if value is None:
            return self.undated
        if isinstance(value, datetime):
            return value.strftime(format_spec) if format_spec else value.isoformat()
        return super().format_field(value, format_spec)


def _taken(item: dict) -> datetime | None:
    local = (item.get("capture") or {}).get("local")
    if not local:
        return None
    if isinstance(local, datetime):
        return local
    try:
        return datetime.fromisoformat(str(local))
    except ValueError:
        return None


def render(template: str, item: dict, *, undated: str = "undated") -> str:
    """The relative path for ``item`` under ``template`` (always safe)."""
    name = safe_component(item.get("name") or "photo")
    stem, dot, ext = name.rpartition(".")
    if not dot:
        stem, ext = name, ""
    sha = item.get("sha256") or ""
    fields = {
        "name": name,
        "stem": stem,
        "ext": ext,
        "taken": _taken(item),
        "sha256": sha,
        "sha8": sha[:8],
        "relpath": item.get("relpath") or name,
    }
    try:
        text = _Formatter(undated).vformat(template, (), fields)
    except (KeyError, IndexError) as exc:
        raise ValueError(f"unknown field {exc} in layout {template!r}; known: {', '.join(fields)}") from None
    return safe_relpath(text)


def check_template(template: str) -> str:
    """Validate a template early (for the job spec): unknown fields are errors."""
    sample = {"name": "IMG_0001.JPG", "sha256": "0" * 64, "capture": {"local": "2006-10-04T09:30:00"}}
    render(template, sample)
    return template


def with_suffix(relpath: str, suffix: str) -> str:
    """``a/b/IMG.JPG`` + ``~1a2b3c4d`` -> ``a/b/IMG~1a2b3c4d.JPG`` (for name conflicts)."""
    head, _, tail = relpath.rpartition("/")
    stem, dot, ext = tail.rpartition(".")
    tail = f"{stem}{suffix}.{ext}" if dot and stem else f"{tail}{suffix}"
    return f"{head}/{tail}" if head else tail
