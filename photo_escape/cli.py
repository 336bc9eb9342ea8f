"""The ``photo-escape`` command line.

Each subcommand lives in :mod:`photo_escape.commands` and is imported only when used,
so ``photo-escape hash`` starts without importing Prefect. With ``--json`` every
subcommand prints one JSON object per line; ``run`` and ``demo`` end with the run's
summary line.
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import os
import sys

# subcommand -> (module in photo_escape.commands, one-line help)
COMMANDS = {
    "demo": ("demo", "run a story end to end on the embedded sandbox and print the report's path"),
    "run": ("run", "run a job spec (YAML)"),
    "hash": ("hash", "sha256 and perceptual hashes of image files"),
    "capture-time": ("capture_time", "the true capture time (UTC) of photos, with its provenance"),
    "resolve": ("resolve", "which album image is the same picture as each query"),
    "find-similar": ("find_similar", "rank a folder by similarity to small reference crops"),
    "verify": ("verify", "check that a job's destination still holds what it delivered (and --repair it)"),
    "report": ("report", "regenerate a report from a ledger"),
    "master-index": ("master_index", "build or query the master-file index from a directory listing"),
    "server": ("server", "start, stop or check a local Prefect server (with its UI) that runs report to"),
}


FLOW_COMMANDS = ("run", "demo")  # commands that run Prefect flows
_exit_status: int | None = None  # set when the process may end without the interpreter's clean-up


@atexit.register  # registered first, so it runs last: after every other exit handler
def _end_without_finalization() -> None:
    """End a ``run`` or ``demo`` process once its exit handlers are done, skipping the
    interpreter's final clean-up.

    Everything that matters is done by then: the run recorded, closed and reported, the
    summary printed, Prefect's queued logs and events sent (its handlers run before
    these), worker processes and the temporary server stopped. What is left is freeing
    the memory of a process that is ending anyway, object by object after repeated
    collections over everything Prefect and the flow imported: seconds on a loaded
    machine. Only the standard streams still need flushing."""
    if _exit_status is None:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - a closed pipe: nothing more can be said
            pass
    os._exit(_exit_status)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="photo-escape",
        description="Get photo collections out of where they are stuck and into where they belong.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print one JSON object per line")
        p.set_defaults(_module=module)
        mod = _command(module)
        if mod is not None:
            mod.add_arguments(p)
    return parser


def _command(module: str):
    try:
        return importlib.import_module(f"photo_escape.commands.{module}")
    except ModuleNotFoundError as exc:
        if exc.name == f"photo_escape.commands.{module}":
            return None  # not built yet
        raise


def main(argv: list[str] | None = None) -> int:
    global _exit_status
    words = sys.argv[1:] if argv is None else argv
    if argv is None and words[:1] == ["run"] and not {"-h", "--help"} & set(words):
        from photo_escape.runner import run_in_runner

        status = run_in_runner(words)  # the warm runner of `photo-escape server start`, when it is up
        if status is not None:
            _exit_status = status
            return status
    if argv is None and words[:1] and words[0] in FLOW_COMMANDS and not {"-h", "--help"} & set(words):
        from photo_escape.prefect_api import choose

        choose()  # before anything else: a temporary Prefect server starts while the rest is read and imported
    parser = build_parser()
    args = parser.parse_args(argv)
    mod = _command(args._module)
    if mod is None:
        parser.error(f"{args.command} is not available in this build")
    args.program = argv is None  # the command is the whole process (not a call from Python)
    try:
        status = int(mod.run(args) or 0)
        if args.program and getattr(mod, "QUICK_EXIT", False):
            _exit_status = status
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
