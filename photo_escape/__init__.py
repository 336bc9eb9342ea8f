"""photo-escape: get photo collections out of where they are stuck, faithfully."""

import os
from pathlib import Path

__version__ = "0.1.0"
TOOL_VERSION = f"photo-escape {__version__}"


def home() -> Path:
    """Where ledgers and working files go by default (``$PHOTO_ESCAPE_HOME`` or ``./.photo-escape``)."""
    return Path(os.environ.get("PHOTO_ESCAPE_HOME", ".photo-escape"))
