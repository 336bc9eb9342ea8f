"""Printing results: one JSON object per line with ``--json``, a readable line otherwise."""

from __future__ import annotations

import json
import sys
from typing import Any


def redact(line: str) -> str:
    """``line`` with every secret this process has read hidden. Secrets are only ever
    read through :mod:`photo_escape.secrets`: if it was never imported there is nothing
    to hide, and a command that reads none (hash, find-similar) starts without it
    and pydantic."""
    secrets = sys.modules.get("photo_escape.secrets")
    return secrets.redact(line) if secrets is not None else line


def emit(record: dict[str, Any], as_json: bool, text: str | None = None) -> None:
    """Print one result: JSON when asked, else ``text`` (or a compact key=value line)."""
    if as_json:
        line = json.dumps(record, default=str)
    else:
        line = text if text is not None else "  ".join(f"{k}={v}" for k, v in record.items() if v is not None)
    sys.stdout.write(redact(line) + "\n")
    sys.stdout.flush()
