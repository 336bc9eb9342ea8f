"""``destination.kind: local``: a folder (a NAS share, an external disk).

    destination: {kind: local, path: /mnt/archive, layout: "{taken:%Y/%m/%d}/{name}"}

Delivery is atomic: the bytes are written to a hidden staging folder inside the
destination (same file system), flushed to disk, and then published under their
final name with a hard link that never replaces an existing file, so nothing
half-written is ever visible under a photo's name and a crash leaves at most a
staging file that the next run clears. A file already there with the same
content is ``already_present``; different content under the same name is never
overwritten: it gets a suffixed name (``on_conflict: suffix``, the default) or
fails with ``key_conflict`` (``on_conflict: fail``).
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from photo_escape.layout import check_template, render, with_suffix
from photo_escape.outcomes import Stopwatch, outcome
from photo_escape.plugins import Destination, KindConfig
from tasks.files import sha256_file

STAGING = ".photo-escape-staging"


class LocalDestinationConfig(KindConfig):
    kind: Literal["local"]
    path: Path = Field(description="the folder to deliver into (created if missing)")
    layout: str = Field("{taken:%Y/%m/%d}/{name}", description="relative path template (see photo_escape.layout)")
    undated: str = Field("undated", description="replaces the {taken:...} field for photos with no capture time")
    on_conflict: Literal["suffix", "fail"] = Field(
        "suffix", description="different content under an existing name: add ~sha8 to the name, or fail"
    )

    @field_validator("layout")
    @classmethod
    def _layout(cls, v: str) -> str:
        return check_template(v)


class LocalDestination(Destination):
    kind = "local"
    Config = LocalDestinationConfig

    def __init__(self, config: LocalDestinationConfig, **kw) -> None:
        super().__init__(config, **kw)
        self.root = config.path.expanduser()

    def protected_prefixes(self) -> list[str]:
        return [str(self.root.resolve())]

    def settings_key(self) -> str:
        from photo_escape.plugins import settings_key

        return settings_key(self.config, root=str(self.root.resolve()))

    def clear_staging(self) -> None:
        """Remove staging files a killed run left behind (never visible under photo names)."""
        shutil.rmtree(self.root / STAGING, ignore_errors=True)

    def deliver(self, items: list[dict], dry_run: bool = False) -> list[dict]:
        out = []
        for item in items:
            sw = Stopwatch()
            rel = render(self.config.layout, item, undated=self.config.undated)
            if dry_run:
                out.append(outcome(item["item_id"], "deliver", "skipped", "dry_run",
                                   detail={"planned": rel}, duration_ms=sw.ms) | {"item": item})
                continue
            try:
                result, reason, rel = self._place(item, rel)
            except OSError as exc:
                out.append(outcome(item["item_id"], "deliver", "failed", "write_failed",
                                   detail={"target": rel, "message": exc.strerror or str(exc)},
                                   duration_ms=sw.ms) | {"item": item})
                continue
            out.append(outcome(item["item_id"], "deliver", result, reason, final=result == "ok",
                               bytes=item.get("bytes"), sha256=item.get("sha256"),
                               detail={"target": rel}, duration_ms=sw.ms) | {"item": dict(item, target=rel)})
        return out

    def _place(self, item: dict, rel: str) -> tuple[str, str, str]:
        sha = item["sha256"]
        candidates = [rel]
        if self.config.on_conflict == "suffix":
            candidates.append(with_suffix(rel, f"~{sha[:8]}"))
        for target_rel in candidates:
            target = self.root / target_rel
            if target.exists():
                if target.stat().st_size == item.get("bytes") and sha256_file(target)[0] == sha:
                    return "ok", "already_present", target_rel
                continue  # taken by other content: try the next candidate
            if self._publish(item, target):
                return "ok", "delivered", target_rel
            if sha256_file(target)[0] == sha:  # someone published the same bytes meanwhile
                return "ok", "already_present", target_rel
        return "failed", "key_conflict", rel

    def _publish(self, item: dict, target: Path) -> bool:
        """Copy into staging, fsync, then link into place without replacing anything."""
        staging = self.root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging / f"{uuid.uuid4().hex}.part"
        src = bytes.fromhex(item["local_path_hex"]) if item.get("local_path_hex") else item["local_path"]
        try:
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            try:
                shutil.copystat(src, tmp)
            except OSError:
                pass
            try:
                os.link(tmp, target)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    return False
                if exc.errno in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP):
                    # no hard links here (some network shares): rename, checking first
                    if target.exists():
                        return False
                    os.replace(tmp, target)
                    return True
                raise
            _fsync_dir(target.parent)
            return True
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
