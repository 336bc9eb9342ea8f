"""A fork server for the crash test: load photo-escape once, then run the CLI in forked children.

Importing Prefect and the flow takes seconds on a loaded machine; a crash test with
dozens of killed runs would spend most of its time importing. This driver imports
once and forks one child per run; the child runs exactly what ``photo-escape run
JOB --json`` runs (``photo_escape.cli.main``), the real flow code against the Prefect
API in ``PREFECT_API_URL``, and may be SIGKILLed at any moment (by the test, or by
itself at a ``PHOTO_ESCAPE_CRASH_AT`` point).

Protocol, one JSON object per line. In (stdin): ``{"args": [...], "env": {...},
"out": PATH, "err": PATH, "leave_helpers": bool}`` or ``{"quit": true}``. Out (stdout): ``{"ready": true}``
once loaded; per run ``{"started": PID}`` then ``{"pid": PID, "rc": N, "signal": S}``.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import photo_escape.cli  # noqa: E402
import photo_escape.commands.run  # noqa: E402,F401
import flows.escape  # noqa: E402,F401
import tasks.capture_time  # noqa: E402,F401
import tasks.hashing  # noqa: E402,F401
from photo_escape.plugins import destination_kinds, source_kinds  # noqa: E402

source_kinds()  # import every source and destination module now
destination_kinds()


def child(cmd: dict) -> None:
    """In the forked child: become the CLI and exit with its status (never returns)."""
    os.setsid()
    for k, v in (cmd.get("env") or {}).items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    out = os.open(cmd["out"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(cmd["err"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(out, 1)
    os.dup2(err, 2)
    try:
        rc = photo_escape.cli.main(cmd["args"])
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        rc = 99
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(rc)


def main() -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        pid = os.fork()
        if pid == 0:
            child(cmd)
        print(json.dumps({"started": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        if not cmd.get("leave_helpers"):
            try:  # helpers the child started (metadata readers, hash workers) die with it
                os.killpg(pid, 9)
            except (ProcessLookupError, PermissionError):
                pass
        sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        print(json.dumps({"pid": pid, "rc": rc, "signal": sig}), flush=True)


if __name__ == "__main__":
    main()
