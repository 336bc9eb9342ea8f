"""``source.kind: local``: a folder on disk (a NAS share, a camera card, an export).

    source: {kind: local, path: /mnt/photos, pattern: "*.jpg", recursive: true}

``pattern`` is a glob matched against file names (case-insensitive), or a list of
them; hidden files and folders are skipped unless ``include_hidden``. Files are
listed in sorted order, streamed in pages, so a folder of millions is never held
in memory. A file's fingerprint is its size and modification time: a rerun redoes
it only if it changed.
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Iterator, Literal

from pydantic import Field, field_validator

from photo_escape.outcomes import Stopwatch, outcome
from photo_escape.plugins import KindConfig, Source
from tasks.files import sha256_file


class LocalSourceConfig(KindConfig):
    kind: Literal["local"]
    path: Path = Field(description="the folder to read")
    pattern: str | list[str] = Field("*", description="glob(s) on file names, case-insensitive")
    recursive: bool = Field(True, description="descend into sub-folders")
    include_hidden: bool = Field(False, description="also list files and folders whose names start with '.'")
    exclude: list[str] = Field(default_factory=list, description="globs on relative paths to leave out")

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path) -> Path:
        v = v.expanduser()
        if not v.is_dir():
            raise ValueError(f"{v} is not a folder that exists")
        return v


def _display(raw: bytes) -> str:
    """A file-system path as text, even when it is not valid UTF-8."""
    return raw.decode("utf-8", "backslashreplace")


class LocalSource(Source):
    kind = "local"
    Config = LocalSourceConfig
    downloads = False

    def __init__(self, config: LocalSourceConfig, **kw) -> None:
        super().__init__(config, **kw)
        pats = config.pattern if isinstance(config.pattern, list) else [config.pattern]
        self.patterns = [p.lower() for p in pats]

    def _wanted(self, name: str) -> bool:
        low = name.lower()
        return any(fnmatch.fnmatchcase(low, p) for p in self.patterns)

    def _walk(self) -> Iterator[bytes]:
        root = os.fsencode(self.config.path.resolve())
        excluded = {os.fsencode(Path(p).resolve()) for p in self.protected_prefixes if "://" not in p}
        stack = [root]
        while stack:
            folder = stack.pop()
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except OSError:
                continue
            subdirs = []
            for e in entries:
                if e.name.startswith(b".") and not self.config.include_hidden:
                    continue
                try:
                    if e.is_dir(follow_symlinks=False):
                        if self.config.recursive and e.path not in excluded:
                            subdirs.append(e.path)
                    elif e.is_file() and self._wanted(_display(e.name)):
                        yield e.path
                except OSError:
                    continue
            stack.extend(reversed(subdirs))

    def list_pages(self, page_size: int = 500) -> Iterator[list[dict]]:
        root = os.fsencode(self.config.path.resolve())
        page: list[dict] = []
        for raw in self._walk():
            rel = _display(os.path.relpath(raw, root))
            if any(fnmatch.fnmatch(rel, x) for x in self.config.exclude):
                continue
            try:
                st = os.stat(raw)
            except OSError:
                continue
            text = _display(raw)
            item = {
                "item_id": f"local:{rel}",
                "source_ref": text,
                "name": _display(os.path.basename(raw)),
                "relpath": rel,
                "size": st.st_size,
                "fingerprint": f"{st.st_size}:{st.st_mtime_ns}",
            }
            if os.fsencode(text) == raw:
                item["path"] = text
            else:  # not valid UTF-8: keep the exact bytes
                item["path_hex"] = raw.hex()
            page.append(item)
            if len(page) >= page_size:
                yield page
                page = []
        if page:
            yield page

    def fetch(self, items: list[dict]) -> list[dict]:
        """Nothing to download: check each file is readable and hash its bytes."""
        max_bytes = getattr(self.options, "max_bytes", None)
        out = []
        for item in items:
            sw = Stopwatch()
            path = bytes.fromhex(item["path_hex"]) if item.get("path_hex") else item["path"]
            try:
                size = os.stat(path).st_size
                if max_bytes and size > max_bytes:
                    out.append(outcome(item["item_id"], "fetch", "failed", "too_large", bytes=size,
                                       detail={"max_bytes": max_bytes}, duration_ms=sw.ms) | {"item": item})
                    continue
                sha256, _ = sha256_file(path)
            except FileNotFoundError:
                out.append(outcome(item["item_id"], "fetch", "failed", "missing",
                                   detail={"message": "the file disappeared after it was listed"},
                                   duration_ms=sw.ms) | {"item": item})
                continue
            except OSError as exc:
                out.append(outcome(item["item_id"], "fetch", "failed", "unreadable",
                                   detail={"message": exc.strerror or str(exc)}, duration_ms=sw.ms) | {"item": item})
                continue
            new = dict(item, local_path=os.fsdecode(path) if isinstance(path, bytes) else path,
                       local_path_hex=item.get("path_hex"), sha256=sha256, bytes=size)
            out.append(outcome(item["item_id"], "fetch", "ok", "local", bytes=size, sha256=new["sha256"],
                               duration_ms=sw.ms) | {"item": new})
        return out
