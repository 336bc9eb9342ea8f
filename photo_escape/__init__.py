"""photo-escape: get photo collections out of where they are stuck, faithfully."""

__version__ = "0.1.0"
TOOL_VERSION = f"photo-escape {__version__}"
