"""Shared test setup: one Prefect test harness and one set of sandbox servers per session.

Fixture modules live in ``tests/fixtures/`` (one per area: prefect, web, s3, flickr...)
and are loaded here as pytest plugins, so each area adds its own file.
"""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# before anything imports prefect
_home = tempfile.mkdtemp(prefix="pe-prefect-home-")
os.environ.setdefault("PREFECT_HOME", _home)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("PHOTO_ESCAPE_HOME", tempfile.mkdtemp(prefix="pe-home-"))

pytest_plugins = sorted(
    f"tests.fixtures.{p.stem}" for p in (ROOT / "tests" / "fixtures").glob("*.py") if not p.stem.startswith("_")
)
