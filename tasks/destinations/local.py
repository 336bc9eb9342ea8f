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

With ``sidecars: [xmp]`` each photo gets ``NAME.EXT.xmp`` beside it (:mod:`tasks.xmp`:
the restored capture time with its offset, place, title, description, albums, the
provenance), written atomically and rewritten only when what it says changed; a
sidecar another application wrote there is left alone. The outcome's ``detail.xmp``
says what happened to it.

Fixity (:mod:`tasks.fixity`): ``inventory`` lists the folders the delivered photos
live in (one ``scandir`` each), ``read_back`` reads a file whole and hashes it, and
``set_aside`` renames a changed file to ``NAME~changed-YYYYMMDD.EXT`` (never over
another file) so the original can be delivered again to its recorded place.
"""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from photo_escape.layout import check_template, render, safe_relpath, with_suffix
from photo_escape.outcomes import Stopwatch, outcome
from photo_escape.plugins import Destination, DestinationUnreadable, KindConfig
from tasks.files import inside, sha256_file

STAGING = ".photo-escape-staging"


class LocalDestinationConfig(KindConfig):
    kind: Literal["local"]
    path: Path = Field(description="the folder to deliver into (created if missing)")
    layout: str = Field("{taken:%Y/%m/%d}/{name}", description="relative path template (see photo_escape.layout)")
    undated: str = Field("undated", description="replaces the {taken:...} field for photos with no capture time")
    on_conflict: Literal["suffix", "fail"] = Field(
        "suffix", description="different content under an existing name: add ~sha8 to the name, or fail"
    )
    sidecars: list[Literal["xmp"]] = Field(
        default_factory=list, description="files written beside each photo: xmp (NAME.EXT.xmp: capture time "
                                          "with offset, place, title, description, albums, provenance)")

    @field_validator("layout")
    @classmethod
    def _layout(cls, v: str) -> str:
        return check_template(v)

    @field_validator("sidecars", mode="before")
    @classmethod
    def _sidecars(cls, v: object) -> list[str]:
        from tasks.xmp import sidecar_kinds

        return sidecar_kinds(v)


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

        # no sidecars: the settings of a job written before they existed
        return settings_key(self.config, root=str(self.root.resolve()),
                            exclude=None if self.config.sidecars else {"sidecars"})

    def clear_staging(self) -> None:
        """Remove staging files a killed run left behind (never visible under photo names)."""
        shutil.rmtree(self.root / STAGING, ignore_errors=True)

    def deliver(self, items: list[dict], dry_run: bool = False) -> list[dict]:
        out = []
        for item in items:
            sw = Stopwatch()
            pinned = item.get("redeliver_to")
            rel = safe_relpath(pinned) if pinned else render(self.config.layout, item, undated=self.config.undated)
            if dry_run:
                planned = {"planned": rel} | ({"xmp": rel + ".xmp"} if "xmp" in self.config.sidecars else {})
                out.append(outcome(item["item_id"], "deliver", "skipped", "dry_run",
                                   detail=planned, duration_ms=sw.ms) | {"item": item})
                continue
            try:
                result, reason, rel = self._place(item, rel)
            except OSError as exc:
                out.append(outcome(item["item_id"], "deliver", "failed", "write_failed",
                                   detail={"target": rel, "message": exc.strerror or str(exc)},
                                   duration_ms=sw.ms) | {"item": item})
                continue
            detail = {"target": rel}
            if result == "ok":  # what a listing will show if nobody touches the file (see inventory)
                detail["version"] = _version(self.root / rel)
            if result == "ok" and "xmp" in self.config.sidecars:
                try:
                    detail["xmp"] = self._xmp_sidecar(item, rel)
                except OSError as exc:  # the photo is there; a rerun writes the sidecar
                    out.append(outcome(item["item_id"], "deliver", "failed", "sidecar_write_failed",
                                       detail=dict(detail, message=exc.strerror or str(exc)),
                                       sha256=item.get("sha256"), duration_ms=sw.ms) | {"item": item})
                    continue
            out.append(outcome(item["item_id"], "deliver", result, reason, final=result == "ok",
                               bytes=item.get("bytes"), sha256=item.get("sha256"),
                               detail=detail, duration_ms=sw.ms) | {"item": dict(item, target=rel)})
        return out

    def _xmp_sidecar(self, item: dict, rel: str) -> dict:
        """Write ``NAME.EXT.xmp`` beside the photo at ``rel`` unless the same is there:
        ``{"path", "result" (written, updated, already_present, foreign_kept), "sha256"}``."""
        from tasks.xmp import SUFFIX, digest, is_ours, xmp_sidecar

        body = xmp_sidecar(item.get("capture"), item.get("meta"), sha256=item.get("sha256"))
        side_rel = rel + SUFFIX
        path = self.root / side_rel
        try:
            existing = path.read_bytes()
        except FileNotFoundError:
            existing = None
        answer = {"path": side_rel, "sha256": digest(body)}
        if existing == body:
            return dict(answer, result="already_present")
        if existing is not None and not is_ours(existing):
            return dict(answer, result="foreign_kept")  # digiKam's or darktable's: never replaced
        staging = self.root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f"{uuid.uuid4().hex}.xmp.part"
        try:
            with open(tmp, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)  # our own sidecar: replaced whole, never half-written
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)
        return dict(answer, result="written" if existing is None else "updated")

    # -- fixity: the folder as it is ----------------------------------------------------
    def inventory(self, targets: list[str]) -> dict[str, tuple[int, str]]:
        """Size and version (the modification time in ns, which a write changes) of the
        ``targets`` (paths relative to the folder) that are there: one listing of each
        folder the targets live in, never a look per photo. A missing folder means its
        photos are missing (the destination's own folder too: a new, empty disk in place
        of the old one, or an archive deleted whole); a destination that is not a folder
        or cannot be read raises :class:`DestinationUnreadable`."""
        if not targets:
            return {}
        if self.root.exists() and not self.root.is_dir():
            raise DestinationUnreadable(f"the destination {self.root} is not a folder")
        wanted: dict[str, dict[str, str]] = {}  # folder -> {file name: target}
        for target in targets:
            folder, _, name = safe_relpath(target).rpartition("/")
            wanted.setdefault(folder, {})[name] = target
        found: dict[str, tuple[int, str]] = {}
        for folder, names in wanted.items():
            path = self.root / folder if folder else self.root
            try:
                with os.scandir(path) as entries:
                    for entry in entries:
                        if entry.name in names and entry.is_file():
                            st = entry.stat()
                            found[names[entry.name]] = (st.st_size, str(st.st_mtime_ns))
            except FileNotFoundError:
                continue  # the whole folder is gone: its photos are missing
            except OSError as exc:
                raise DestinationUnreadable(f"cannot list the destination folder {path}: "
                                            f"{exc.strerror or exc}") from None
        return found

    def read_back(self, target: str) -> dict | None:
        """The size and sha256 of the file at ``target``, read whole (None if there is none)."""
        path = self.root / safe_relpath(target)
        try:
            sha, size = sha256_file(str(path))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise DestinationUnreadable(f"cannot read {path}: {exc.strerror or exc}") from None
        return {"size": size, "sha256": sha, "stored_sha256": None}

    def set_aside(self, target: str, suffix: str) -> str:
        """Rename the file at ``target`` to the same name with ``suffix`` (``-2``, ``-3``...
        added when that name is taken), never replacing a file. Returns the new target."""
        rel = safe_relpath(target)
        src = self.root / rel
        for n in range(1, 1000):
            new_rel = with_suffix(rel, suffix if n == 1 else f"{suffix}-{n}")
            if _link_or_rename(src, self.root / new_rel):
                _fsync_dir(src.parent)
                return new_rel
        raise FileExistsError(f"no free name to set {src} aside")

    def _place(self, item: dict, rel: str) -> tuple[str, str, str]:
        sha = item["sha256"]
        candidates = [rel]
        if self.config.on_conflict == "suffix" and not item.get("redeliver_to"):
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
        """Copy into staging, fsync, then link into place without replacing anything. A
        file this run downloaded into its work folder is not copied: it is fsynced and
        linked into place itself (see :meth:`_give`)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        src = bytes.fromhex(item["local_path_hex"]) if item.get("local_path_hex") else item["local_path"]
        given = self._give(src, target)
        if given is not None:
            return given
        staging = self.root / STAGING
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f"{uuid.uuid4().hex}.part"
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

    def _give(self, src: str | bytes, target: Path) -> bool | None:
        """Link a download of this run (a file in its work folder, no other name) into
        place after an fsync: the bytes that were hashed become the photo, with no second
        write and no staging file. A copy costs a new file and, once the download is
        removed, a deleted one, for every photo (on a filesystem without a journal ext4
        then looks at each recently deleted inode before it reuses one: a third of a
        1,000-photo harvest's CPU). True: linked; False: ``target`` exists; None: not
        ours, or no hard links here (the caller copies)."""
        path = os.fsdecode(src)
        if not inside(path, self.workdir) or os.path.islink(path):
            return None  # the user's own file (a local source): always copied, never shared
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return None
        try:
            if os.fstat(fd).st_nlink != 1:  # already given to another name: copy
                return None
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(path, target)
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
                return None
            raise
        _fsync_dir(target.parent)
        return True


def _link_or_rename(src: Path, dst: Path) -> bool:
    """Give ``src`` the name ``dst`` unless ``dst`` exists (False then): a hard link and
    an unlink, or where links are not supported a checked rename."""
    try:
        os.link(src, dst)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EXDEV, errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        if dst.exists():
            return False
        os.rename(src, dst)
        return True
    os.unlink(src)
    return True


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


def _version(path: Path) -> str | None:
    """A delivered file's version as :meth:`LocalDestination.inventory` lists it."""
    try:
        return str(os.stat(path).st_mtime_ns)
    except OSError:
        return None
