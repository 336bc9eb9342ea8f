"""``photo-escape demo [--story NAME] [--json]``: a story end to end on the embedded sandbox.

Everything runs on this machine: the sandbox services on 127.0.0.1, a temporary
Prefect API (or the one Prefect's settings or ``photo-escape server`` give), a local
DuckDB ledger. The default story is the gallery rescue; the others are ``numbered``,
``s3``, ``upload``, ``hires``, ``local`` (a folder to a folder), ``takeout`` (a Google
Photos Takeout export to a folder), ``immich`` (a camera roll into an Immich server) and
``flickr`` (a Flickr account to S3). Prints the run's summary and the report's path.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from pathlib import Path

from photo_escape.commands.run import print_summary

QUICK_EXIT = True  # the process may end without the interpreter's clean-up (see photo_escape.cli)

STORIES = ("gallery", "numbered", "s3", "upload", "hires", "local", "takeout", "immich", "flickr")


def _available(story: str) -> bool:
    try:
        importlib.import_module(f"sandbox.demos.{story}")
        return True
    except ModuleNotFoundError:
        return False


def default_story() -> str:
    return "gallery" if _available("gallery") else "local"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--story", choices=STORIES, help="which story (default: gallery)")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the demo's collection, ledger and work files go (default .photo-escape/demo/STORY)")
    p.add_argument("--keep", action="store_true", help="keep the previous demo's files (a rerun shows the skip)")


def run(args: argparse.Namespace) -> int:
    from photo_escape.prefect_api import choose, connected

    api = choose()  # a temporary Prefect server comes up while the demo's collection is made
    story = args.story or default_story()
    try:
        module = importlib.import_module(f"sandbox.demos.{story}")
    except ModuleNotFoundError:
        print(f"the {story} demo is not available in this build", file=sys.stderr)
        return 1
    workdir = (args.workdir or Path(".photo-escape") / "demo" / story).resolve()
    if workdir.exists() and not args.keep:
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    with connected(api):
        summary = module.run(workdir, args.json)
    if not isinstance(summary, dict):
        print("the demo did not produce a summary", file=sys.stderr)
        return 1
    print_summary(summary, args.json)
    return 0 if summary.get("status", "finished") == "finished" else 1
