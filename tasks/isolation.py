"""Run a risky reader over many files in worker processes, so one bad file costs only itself.

Decoders and metadata parsers meet hostile files: a loop that never ends, a crash in a
C library, memory that runs out. :func:`isolated_map` calls a plain function on each
item in a worker *process*, with a time limit per item. An item whose call hangs,
ends its worker (a segfault, the OOM killer) or raises gets the caller's error outcome
(``lost``), its worker is replaced, and the items after it go on. Hashing (Pillow
decoding) and capture-time reading (exifread, Pillow, pillow-heif) both use it.

Workers are fresh interpreters (``python -c``) that import only the function's module:
no fork of a threaded flow process, no re-import of the caller's main script. The
module is imported before a worker says it is ready, so an item's clock never counts
the imports. Workers stay up between calls (a flow hands over batch after batch; a
start costs about 0.1 s plus the imports), at most one per core per function at once
whoever asks, and end with their parent: its end of the pipe closes, and they stop.
A caller with time to spare can have them started ahead of the first call (:func:`warm`).
"""

from __future__ import annotations

import atexit
import importlib
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 120.0  # seconds for a worker to start (imports included): load is not an item's fault
MAX_IDLE = 4  # idle workers kept per function
CHUNK = 8  # items sent to a worker at once: answers stream back, one time limit per item

#: what ``lost(item, why, detail)`` is told: the call took longer than the limit, its
#: worker ended (detail: how), or it raised (detail: the exception's type name)
WHY = ("timeout", "crashed", "raised")


# ----------------------------------------------------------------------------------------
# the worker side
# ----------------------------------------------------------------------------------------

def _function(spec: str) -> Callable[..., Any]:
    """The function named ``module:qualname``, its module imported."""
    module, _, name = spec.partition(":")
    fn: Any = importlib.import_module(module)
    for part in name.split("."):
        fn = getattr(fn, part)
    return fn


def serve(spec: str, preload: Sequence[str], read_fd: int, write_fd: int) -> None:
    """Worker entry: import the function and the ``preload`` modules, say ready, then
    answer each request (a list of items and the keyword arguments) with one
    ``("ok", value)`` or ``("raised", type)`` per item, as soon as it is ready; stop on
    None or when the parent is gone."""
    from multiprocessing.connection import Connection

    recv_conn, send_conn = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    fn = _function(spec)
    for module in preload:  # what the function imports on first use: before any item's clock starts
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - the calls will say what is missing
            pass
    send_conn.send("ready")
    while True:
        try:
            request = recv_conn.recv()
        except (EOFError, OSError):
            return
        if request is None:  # told to stop: nothing is left to flush (output goes nowhere), so
            os._exit(0)  # without the interpreter's tear-down, which the caller would wait for
        items, kw = request
        for item in items:
            try:
                answer = ("ok", fn(item, **kw))
            except BaseException as exc:  # never let one item end the worker silently
                answer = ("raised", type(exc).__name__)
            try:
                send_conn.send(answer)
            except (OSError, ValueError):
                return
            except Exception as exc:  # an answer that does not pickle
                send_conn.send(("raised", type(exc).__name__))


def _call_here(fn: Callable[..., Any], item: Any, kw: dict) -> tuple:
    """One call in this process, answered as a worker would answer it."""
    try:
        return ("ok", fn(item, **kw))
    except Exception as exc:  # noqa: BLE001 - the caller's ``lost`` decides what it means
        return ("raised", type(exc).__name__)


# ----------------------------------------------------------------------------------------
# the caller side
# ----------------------------------------------------------------------------------------

class WorkerUnavailable(Exception):
    """A worker process could not be started."""


class _Worker:
    """One worker subprocess and the pipes to it."""

    def __init__(self, spec: str, preload: Sequence[str] = ()) -> None:
        self.spec, self.preload = spec, tuple(preload)
        self.proc: Any = None
        self.send_conn: Any = None
        self.recv_conn: Any = None
        self._starting: threading.Thread | None = None  # a start begun ahead of use (:func:`warm`)

    def start_ahead(self) -> None:
        """Begin starting the worker in a thread of its own; the first use waits for it."""
        def start() -> None:
            try:
                self._start()
            except (WorkerUnavailable, OSError):
                pass  # its first use starts it again, or calls in this process

        self._starting = threading.Thread(target=start, name=f"start-{self.spec}", daemon=True)
        self._starting.start()

    def settle(self) -> None:
        """Wait for a start begun ahead of use to end (at once when there is none)."""
        starting, self._starting = self._starting, None
        if starting is not None:
            starting.join()

    def _start(self) -> None:
        from multiprocessing.connection import Connection

        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from {__name__} import serve; "
                f"serve({self.spec!r}, {self.preload!r}, {to_child_r}, {from_child_w})")
        try:
            proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(to_child_r, from_child_w),
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, close_fds=True)
        except OSError:
            for fd in (to_child_w, from_child_r):
                os.close(fd)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self.proc = proc
        self.send_conn = Connection(to_child_w, readable=False)
        self.recv_conn = Connection(from_child_r, writable=False)
        try:
            ready = self.recv_conn.poll(STARTUP_TIMEOUT) and self.recv_conn.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            self.kill()
            raise WorkerUnavailable(f"no worker process for {self.spec}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run(self, items: list, kw: dict, timeout: float) -> list[tuple | None]:
        """The answer for each item, in order: ``("ok", value)``, ``("raised", type)``,
        ``("timeout", "")`` (the worker is killed) or ``("crashed", how)``; the items after
        a timeout or a crash come back as None, to be tried again in a fresh worker.
        Without a worker process, the calls run in this process (unguarded)."""
        out: list[tuple | None] = [None] * len(items)
        for attempt in (1, 2):  # a worker kept from an earlier call may have died meanwhile
            if not self.alive():
                try:
                    self._start()
                except (WorkerUnavailable, OSError):
                    fn = _function(self.spec)
                    return [_call_here(fn, item, kw) for item in items]
            try:
                self.send_conn.send((list(items), kw))
                break
            except (OSError, ValueError):
                self.kill()
                if attempt == 2:
                    out[0] = ("crashed", "the worker took no work")
                    return out
        for k in range(len(items)):
            try:
                if not self.recv_conn.poll(timeout):
                    self.kill()
                    out[k] = ("timeout", "")
                    return out
                out[k] = self.recv_conn.recv()
            except (EOFError, OSError, ValueError):
                out[k] = ("crashed", self.kill(grace=1.0))  # its pipe closed: it is ending
                return out
        return out

    def kill(self, grace: float = 0.0) -> str:
        """Stop the worker (after ``grace`` seconds to end by itself); say how it had
        ended by itself, if it had (a signal, an exit status), else ""."""
        proc, self.proc = self.proc, None
        for conn in (self.send_conn, self.recv_conn):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self.send_conn = self.recv_conn = None
        if proc is None:
            return ""
        try:
            code = proc.wait(timeout=grace) if grace else proc.poll()
        except subprocess.TimeoutExpired:
            code = None
        try:
            proc.kill()
            proc.wait(timeout=5)
        except Exception:  # pragma: no cover - best effort
            pass
        if code is None:
            return ""
        return f"killed by signal {-code}" if code < 0 else f"exit status {code}"

    def ask_to_stop(self) -> None:
        """Tell the worker to stop (it ends at once); :meth:`close` then waits for it."""
        self.settle()
        if self.alive():
            try:
                self.send_conn.send(None)
            except Exception:  # noqa: BLE001 - its pipe is gone: close() kills it
                pass

    def close(self) -> None:
        """Ask the worker to stop, then make sure it did."""
        self.ask_to_stop()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=2)
            except Exception:  # noqa: BLE001 - it did not stop: killed below
                pass
        self.kill()


class _Crew:
    """The worker processes of one function in this process: the idle ones kept for the
    next call, and a bound on how many work at once, whichever calls want them."""

    def __init__(self, spec: str, preload: Sequence[str]) -> None:
        self.spec, self.preload = spec, preload
        self.idle: list[_Worker] = []
        self.busy = 0
        self.turn = threading.Condition()

    def take(self, most: int) -> _Worker:
        """A worker (an idle one, else a new one started on first use), once fewer than
        ``most`` are busy."""
        with self.turn:
            while self.busy >= most:
                self.turn.wait()
            self.busy += 1
        while True:
            with self.turn:
                if not self.idle:
                    return _Worker(self.spec, self.preload)
                worker = self.idle.pop()
            worker.settle()  # a worker started ahead of use may still be importing: wait for it, unlocked
            if worker.alive():
                return worker
            worker.kill()  # it died while idle (or never started): close its pipes

    def warm(self, n: int) -> None:
        """Begin starting workers until ``n`` wait idle (started or starting)."""
        import multiprocessing.connection  # noqa: F401 - what a start imports: here, not in its thread

        with self.turn:
            for _ in range(min(n, MAX_IDLE) - len(self.idle)):
                worker = _Worker(self.spec, self.preload)
                worker.start_ahead()
                self.idle.append(worker)

    def give_back(self, worker: _Worker) -> None:
        """Keep a healthy worker for the next call; stop the rest."""
        with self.turn:
            self.busy -= 1
            self.turn.notify()
            if worker.alive() and len(self.idle) < MAX_IDLE:
                self.idle.append(worker)
                return
        worker.close()


_CREWS: dict[str, _Crew] = {}
_CREWS_LOCK = threading.Lock()


def _crew(spec: str, preload: Sequence[str]) -> _Crew:
    with _CREWS_LOCK:
        if spec not in _CREWS:
            _CREWS[spec] = _Crew(spec, preload)
        return _CREWS[spec]


def warm(fn: Callable[..., Any], n: int = 1, preload: Sequence[str] = ()) -> None:
    """Begin starting ``n`` worker processes for ``fn`` now, in the background, so that
    :func:`isolated_map`'s first call finds them ready (a start is an interpreter and its
    imports: 0.1-0.3 s). For a caller that waits for something else meanwhile (the run
    waiting for its temporary Prefect server); ``preload`` as :func:`isolated_map` is
    given it. Workers nobody uses end with the process, as idle ones do."""
    _crew(f"{fn.__module__}:{fn.__qualname__}", preload).warm(n)


def idle_workers() -> list[_Worker]:
    """The worker processes waiting for work (for tests and diagnostics)."""
    with _CREWS_LOCK:
        return [w for crew in _CREWS.values() for w in crew.idle]


def _forget_parents_workers() -> None:
    """In a forked child the workers belong to the parent: forget them, touch nothing."""
    global _CREWS_LOCK
    _CREWS_LOCK = threading.Lock()
    _CREWS.clear()


os.register_at_fork(after_in_child=_forget_parents_workers)


@atexit.register
def close_workers() -> None:
    """Stop the idle worker processes (at exit, or when a caller wants them gone)."""
    with _CREWS_LOCK:
        crews = list(_CREWS.values())
    idle: list[_Worker] = []
    for crew in crews:
        with crew.turn:
            idle, crew.idle = idle + crew.idle, []
    for worker in idle:  # all told first, so they end together, not one after the other
        worker.ask_to_stop()
    for worker in idle:
        worker.close()


def isolated_map(fn: Callable[..., Any], items: Sequence[Any], *, lost: Callable[[Any, str, str], Any],
                 timeout: float, workers: int = 1, chunk: int = CHUNK, kw: dict | None = None,
                 preload: Sequence[str] = (), progress: Callable[[int], None] | None = None) -> list[Any]:
    """``fn(item, **kw)`` for each item, in order, each call in a worker process and
    limited to ``timeout`` seconds; an item whose call times out, crashes its worker or
    raises gets ``lost(item, why, detail)`` instead (``why`` in :data:`WHY`).

    ``fn`` is a module-level function; items, ``kw`` and answers are picklable.
    ``workers`` processes share the items, ``chunk`` at a time; all calls together use at
    most the larger of ``workers`` and the number of cores of one function's workers.
    ``preload``: modules ``fn`` imports on first use, imported when a worker starts.
    ``progress(n)``, if given, is told after each chunk how many more items are done
    (from the threads that drive the workers: it must be thread-safe).
    """
    items = list(items)
    if not items:
        return []
    spec = f"{fn.__module__}:{fn.__qualname__}"
    kw = kw or {}
    crew = _crew(spec, preload)
    most = max(workers, os.cpu_count() or 1)
    answers: list[tuple | None] = [None] * len(items)
    todo: queue.Queue[int] = queue.Queue()
    for i in range(len(items)):
        todo.put(i)

    def drive() -> None:
        worker = crew.take(most)
        try:
            while True:
                batch = []
                while len(batch) < chunk:
                    try:
                        batch.append(todo.get_nowait())
                    except queue.Empty:
                        break
                if not batch:
                    return
                done = 0
                for i, answer in zip(batch, worker.run([items[i] for i in batch], kw, timeout)):
                    if answer is None:
                        todo.put(i)  # not reached because an earlier item hung or crashed: again
                    else:
                        answers[i] = answer
                        done += 1
                if progress is not None and done:
                    progress(done)
        finally:
            crew.give_back(worker)

    n = max(1, min(workers, len(items)))
    if n == 1:
        drive()
    else:
        threads = [threading.Thread(target=drive, name=f"isolated-{fn.__name__}-{k}") for k in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    out = []
    for item, answer in zip(items, answers):
        why, value = answer if answer is not None else ("crashed", "")
        out.append(value if why == "ok" else lost(item, why, value))
    return out
