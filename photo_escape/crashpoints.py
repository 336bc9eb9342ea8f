"""Named crash points: kill this process (SIGKILL) at a precise moment of a run.

The reliability tests prove that a run killed at any moment loses nothing and
duplicates nothing. Random kills from outside hit random moments; these points hit
the moments that matter exactly, in the real code path:

    PHOTO_ESCAPE_CRASH_AT=deliver:3          # the 3rd time the flow reaches "deliver"
    PHOTO_ESCAPE_CRASH_AT=ledger_write:2,fetch:1

Points (see the ``crash_point(...)`` calls): ``fetch``, ``hash``, ``capture_time``,
``deliver`` (a batch's stage finished, its outcomes not yet in the ledger; in the
escape flow one task hashes, dates and delivers a batch, so at ``hash``,
``capture_time`` and ``deliver`` its photos are already in the destination) and
``ledger_write`` (inside
a ledger transaction, rows inserted, not committed). The process dies with SIGKILL:
no ``finally``, no ``atexit``, no flush, like a power cut or the OOM killer.

With the variable unset (always, outside the tests) a point costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "PHOTO_ESCAPE_CRASH_AT"

_lock = threading.Lock()
_hits: dict[str, int] = {}


def _plan() -> dict[str, int]:
    """``{point: n}`` from the environment (malformed entries are ignored)."""
    plan: dict[str, int] = {}
    for part in os.environ.get(ENV, "").split(","):
        name, _, n = part.strip().partition(":")
        if name:
            try:
                plan[name] = int(n or 1)
            except ValueError:
                continue
    return plan


def crash_point(name: str) -> None:
    """SIGKILL this process if ``$PHOTO_ESCAPE_CRASH_AT`` asks for ``name`` now."""
    if ENV not in os.environ:
        return
    want = _plan().get(name)
    if want is None:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        due = _hits[name] == want
    if due:
        os.kill(os.getpid(), signal.SIGKILL)
