"""The ``photo-escape`` command line.

Each subcommand lives in :mod:`photo_escape.commands` and is imported only when used,
so ``photo-escape hash`` starts without importing Prefect. With ``--json`` every
subcommand prints one JSON object per line; ``run`` and ``demo`` end with the run's
summary line.
"""

from __future__ import annotations

import argparse
import importlib
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
}


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
    parser = build_parser()
    args = parser.parse_args(argv)
    mod = _command(args._module)
    if mod is None:
        parser.error(f"{args.command} is not available in this build")
    try:
        return int(mod.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
