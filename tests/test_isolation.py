"""The worker processes that hashing and capture-time reading share: an item that crashes,
hangs or raises costs only itself an error outcome; the others come back, in order."""

from __future__ import annotations

import os
import signal
import time

from tasks.isolation import idle_workers, isolated_map, warm


def risky(item: str) -> tuple[str, int]:
    """A reader that misbehaves on demand (runs in the worker process)."""
    if item == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)  # as a decoder's segfault would
    if item == "hang":
        time.sleep(600)
    if item == "raise":
        raise ValueError(item)
    return item, os.getpid()


def lost(item: str, why: str, detail: str) -> tuple[str, str, str]:
    return item, why, detail


def test_a_crash_a_hang_and_an_exception_each_cost_only_their_own_item():
    items = ["a", "crash", "b", "hang", "c", "raise", "d", "e", "f"]
    out = isolated_map(risky, items, lost=lost, timeout=3.0, workers=2, chunk=3)
    assert [o[0] for o in out] == items
    by = {o[0]: o for o in out}
    assert by["crash"] == ("crash", "crashed", f"killed by signal {int(signal.SIGSEGV)}")
    assert by["hang"] == ("hang", "timeout", "")
    assert by["raise"] == ("raise", "raised", "ValueError")
    good = [by[k] for k in "abcdef"]
    assert all(len(o) == 2 and o[1] != os.getpid() for o in good), good  # read in worker processes


def test_a_worker_that_died_while_idle_is_replaced():
    assert [o[0] for o in isolated_map(risky, ["a"], lost=lost, timeout=30.0)] == ["a"]
    mine = [w for w in idle_workers() if w.spec.endswith(":risky")]
    assert mine
    for worker in mine:
        os.kill(worker.proc.pid, signal.SIGKILL)
        worker.proc.wait(timeout=10)
    out = isolated_map(risky, ["b", "c"], lost=lost, timeout=30.0)
    assert [o[0] for o in out] == ["b", "c"] and all(len(o) == 2 for o in out), out


def whose(item: str) -> tuple[str, int]:
    """The item and the pid of the worker process that saw it."""
    return item, os.getpid()


def test_workers_started_ahead_are_the_ones_the_first_call_uses():
    warm(whose, n=2)
    ahead = [w for w in idle_workers() if w.spec.endswith(":whose")]
    assert len(ahead) == 2  # parked at once, still starting
    for worker in ahead:
        worker.settle()
    assert all(w.alive() for w in ahead)
    pids = {w.proc.pid for w in ahead}
    out = isolated_map(whose, list("abcdef"), lost=lost, timeout=30.0, workers=2, chunk=1)
    assert [o[0] for o in out] == list("abcdef")
    assert {o[1] for o in out} <= pids  # no other worker was started
    warm(whose, n=2)  # both idle again: nothing more starts
    assert {w.proc.pid for w in idle_workers() if w.spec.endswith(":whose")} == pids
