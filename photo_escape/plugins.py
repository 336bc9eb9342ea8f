"""Sources and destinations, registered by ``kind``.

Adding a source is adding a file: a module in ``tasks/sources/`` (or
``tasks/destinations/``) defines a pydantic ``Config`` with ``kind: Literal[...]`` and a
subclass of :class:`Source` (or :class:`Destination`) naming it. The module is named
after its kind (``tasks/sources/gallery.py`` for ``kind: gallery``): a job imports only
the modules of its own source and destination, not every plugin and what each imports
(an unknown kind imports them all, to list the kinds there are). The job spec finds
the class by the ``kind`` the user wrote. Modules here must not import Prefect at
import time: the command line and the plain code stay Prefect-free.

Both kinds are built *inside* a task from their config, so they travel to a worker
process as plain config and open their own connections there.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
from pathlib import Path
from typing import Any, ClassVar, Iterator

from pydantic import BaseModel, ConfigDict

_SOURCES: dict[str, type["Source"]] = {}
_DESTINATIONS: dict[str, type["Destination"]] = {}


class KindConfig(BaseModel):
    """Base of every source/destination config: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")
    kind: str


class Source:
    """Lists items page by page and fetches them to local files.

    ``list_pages()`` yields lists of items (hundreds per page), so a million-item
    listing streams into the ledger. ``fetch(items)`` returns one outcome per item
    (stage ``fetch``) carrying the updated item under ``"item"`` with ``local_path``,
    ``sha256`` and ``bytes`` set when it worked.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[KindConfig]]
    #: whether fetch downloads (a local folder is read in place)
    downloads: ClassVar[bool] = True
    #: the per-item stages the escape flow runs for this source's items, in order
    pipeline: ClassVar[tuple[str, ...]] = ("fetch", "hash", "capture_time", "deliver")

    def __init__(self, config: KindConfig, *, workdir: Path, options: Any = None) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.options = options
        self.protected_prefixes: list[str] = []

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if getattr(cls, "kind", None):
            _SOURCES[cls.kind] = cls

    def list_pages(self) -> Iterator[list[dict]]:  # pragma: no cover - interface
        raise NotImplementedError

    def fetch(self, items: list[dict]) -> list[dict]:  # pragma: no cover - interface
        raise NotImplementedError

    def protect(self, prefixes: list[str]) -> None:
        """Never list these places: they are the destination's own output (a folder
        path, or ``s3://bucket/prefix``), so a job never processes what it wrote."""
        self.protected_prefixes = list(prefixes)

    def report_facts(self) -> dict[str, Any]:
        """Facts the report shows for this source (e.g. ``expected_count``)."""
        return {}

    def close(self) -> None:
        pass


class Unreadable(Exception):
    """A source or destination that cannot be read at all (a broken export, permission
    denied, a bucket that is gone): the run stops, recorded as crashed with what it did,
    and says ``str()``, one line for the user, without a traceback."""


class SourceUnreadable(Unreadable):
    """The source cannot be listed or read (a broken archive part, an export it cannot open)."""


class DestinationUnreadable(Unreadable):
    """The destination could not be listed or read back (permission denied, no such
    bucket, not a folder, unreachable). It must never be taken for "everything is
    missing": a run or a check that meets it stops, and ``str()`` is one line for the user."""


class Destination:
    """Delivers fetched items; one outcome per item (stage ``deliver``).

    ``settings_key()`` names where things go: a rerun redoes an item only when its
    content (sha256) or this key changed. ``deliver(items, dry_run)`` must be
    idempotent per content: delivering the same sha256 to the same place twice is
    an ``ok`` with reason ``already_present``, never a second copy. An item carrying
    ``redeliver_to`` (a target an earlier delivery recorded) goes exactly there: no
    layout is rendered and no suffixed name is chosen (fixity repair uses it).

    Fixity (see :mod:`tasks.fixity`): ``inventory``, ``read_back`` and ``set_aside``
    let a run check the destination itself instead of trusting the ledger. A
    destination that cannot be listed keeps the defaults: ``inventory`` returns None
    (callers then trust the ledger) and the others raise ``NotImplementedError``.
    """

    kind: ClassVar[str]
    Config: ClassVar[type[KindConfig]]

    def __init__(self, config: KindConfig, *, workdir: Path, options: Any = None) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self.options = options

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        if getattr(cls, "kind", None):
            _DESTINATIONS[cls.kind] = cls

    def settings_key(self) -> str:
        return settings_key(self.config)

    def deliver(self, items: list[dict], dry_run: bool = False) -> list[dict]:  # pragma: no cover
        raise NotImplementedError

    def protected_prefixes(self) -> list[str]:
        """Places the source must never list (our own output): avoids recursion."""
        return []

    #: whether :meth:`survey` does anything (the flow runs it in a task of its own only then)
    surveys: ClassVar[bool] = False

    def survey(self) -> None:
        """Look at the destination once, at the start of a run, where that spares a request
        per photo later (S3: one listing of the bucket's prefixes, left in the run's work
        folder for every batch's deliveries and for :meth:`inventory`). Nothing by default."""

    def survey_early(self) -> None:
        """Take :meth:`survey`'s look now, in this process, for the run about to start here
        to use (``photo-escape run`` calls it while a temporary Prefect server starts, time
        the command would otherwise spend waiting). Nothing by default; never raises."""

    def inventory(self, targets: list[str]) -> dict[str, tuple[int, str | None]] | None:
        """What of ``targets`` is at the destination now: ``{target: (size in bytes, version)}``,
        the version being what the destination changes on every write (a file's
        modification time, an object's ETag), as the ``deliver`` outcome's
        ``detail.version`` recorded it, or None where there is none.

        ``targets`` are the strings delivery recorded (``item["target"]``: a path
        relative to a folder, ``s3://bucket/key``...); one found is in the answer
        under the very string given, one missing is not. It takes ONE listing of the
        part of the destination the targets live in (a folder walk, a paginated
        bucket listing), never a request per photo. Raises
        :class:`DestinationUnreadable` when that part cannot be listed, so that an
        unreadable destination never reads as an empty one. None: this kind of
        destination cannot be listed at all (callers trust the ledger).
        """
        return None

    def read_back(self, target: str) -> dict[str, Any] | None:
        """Read what is at ``target`` whole and hash it as it streams:
        ``{"size", "sha256", "stored_sha256"}`` (``stored_sha256``: the hash the
        destination keeps beside the bytes, where it keeps one, else None; ``sha256``
        None when the bytes cannot be read without a restore, said in ``note``).
        None when nothing is there. Raises :class:`DestinationUnreadable` when it
        cannot be read (permission denied)."""
        raise NotImplementedError(f"a {self.kind} destination cannot be read back")

    def set_aside(self, target: str, suffix: str) -> str:
        """Keep what is at ``target`` under the same name with ``suffix`` added before
        the extension (``IMG.JPG`` -> ``IMG~changed-20240501.JPG``), never replacing
        anything, and free ``target`` for a new delivery. Returns the new target."""
        raise NotImplementedError(f"a {self.kind} destination cannot set files aside")

    def close(self) -> None:
        pass


def existing_path(v: Path) -> Path:
    """A config's path with ``~`` expanded, refused (a field error) when nothing is there:
    an export or archive that is not where the job says is a typo, not an empty source."""
    v = Path(v).expanduser()
    if not v.exists():
        raise ValueError(f"{v} does not exist")
    return v


def settings_key(config: BaseModel, *, exclude: set[str] | None = None, **extra: Any) -> str:
    """A short stable hash of a config (secret references included, never values);
    ``exclude``: fields left out (a new field at its default, so that adding it does
    not make every delivered photo look delivered with other settings)."""
    blob = json.dumps([config.model_dump(mode="json", exclude=exclude), extra], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_PACKAGES = {"source": "tasks.sources", "destination": "tasks.destinations"}
_REGISTRIES: dict[str, dict[str, type]] = {"source": _SOURCES, "destination": _DESTINATIONS}


def _modules(pkg_name: str) -> list[str]:
    pkg = importlib.import_module(pkg_name)
    return [m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_")]


def _load(what: str, kind: str | None = None) -> None:
    """Import the module of one ``kind`` of source or destination (named after it), or,
    when there is none of that name (or no kind is given), every module of them."""
    pkg_name = _PACKAGES[what]
    names = _modules(pkg_name)
    for name in [kind] if kind in names else names:
        importlib.import_module(f"{pkg_name}.{name}")


def find_kind(what: str, kind: Any) -> type | None:
    """The class of ``kind`` of ``what`` ("source" or "destination"), None when there is
    none; imports only that kind's module."""
    if not isinstance(kind, str):
        return None
    registry = _REGISTRIES[what]
    if kind not in registry:
        _load(what, kind)
    return registry.get(kind)


def all_kinds(what: str) -> dict[str, type]:
    """Every kind of ``what`` ("source" or "destination"); imports every module of them."""
    _load(what)
    return dict(_REGISTRIES[what])


def source_kinds() -> dict[str, type[Source]]:
    return all_kinds("source")


def destination_kinds() -> dict[str, type[Destination]]:
    return all_kinds("destination")


def _make(what: str, config: KindConfig, **kw: Any) -> Any:
    cls = find_kind(what, config.kind)
    if cls is None:
        raise KeyError(config.kind)
    return cls(config, **kw)


def make_source(config: KindConfig, **kw: Any) -> Source:
    return _make("source", config, **kw)


def make_destination(config: KindConfig, **kw: Any) -> Destination:
    return _make("destination", config, **kw)
