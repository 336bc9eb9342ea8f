"""The job spec: a YAML file saying what to move, from where, to where.

    name: family-archive
    ledger: ledgers/family-archive.duckdb      # optional
    source:      {kind: local, path: ~/Pictures, pattern: "*.jpg", recursive: true}
    destination: {kind: local, path: /mnt/backup, layout: "{taken:%Y/%m/%d}/{name}"}
    options:     {batch_size: 200, concurrency: 8}

``source`` and ``destination`` are validated by the config model of their ``kind``
(see :mod:`photo_escape.plugins`). Errors name the field and say what is expected.
"""

from __future__ import annotations

import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from photo_escape import home
from photo_escape.plugins import KindConfig, all_kinds, find_kind


class Options(BaseModel):
    """How the work is cut up and run."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int = Field(200, ge=1, le=100_000, description="items per task run")
    concurrency: int = Field(8, ge=1, le=256, description="threads per batch for I/O")
    processes: int = Field(0, ge=0, le=64, description="processes per batch for CPU work (0: one per core)")
    retries: int = Field(3, ge=0, le=20, description="attempts after the first for transient errors")
    backoff_seconds: float = Field(0.5, ge=0, le=600, description="first retry delay; doubles with jitter")
    max_pixels: int = Field(250_000_000, ge=1, description="larger images are refused as too_large")
    max_bytes: int = Field(2_000_000_000, ge=1, description="larger files are refused as too_large")
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = Field(None, description="scheduler address; none starts a local cluster")
    dask_workers: int = Field(2, ge=1, le=256)


class TimeZoneRule(BaseModel):
    """A user rule for photos with no zone of their own: first match wins."""

    model_config = ConfigDict(extra="forbid")
    tz: str
    folder: str | None = None
    pattern: str | None = None
    start: date | None = None
    end: date | None = None

    @field_validator("tz")
    @classmethod
    def _zone(cls, v: str) -> str:
        return _check_zone(v)


def _check_zone(v: str) -> str:
    from zoneinfo import ZoneInfo

    try:
        ZoneInfo(v)
    except Exception:
        raise ValueError(f"{v!r} is not an IANA time zone name (for example Europe/Paris, America/New_York)") from None
    return v


class JobBase(BaseModel):
    """What every story's job has: a name, a ledger, a work folder, reports and options."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="a short name: letters, digits, '-', '_' and '.'")
    ledger: Path | None = Field(None, description="DuckDB ledger file; default <home>/ledgers/<name>.duckdb")
    work_dir: Path | None = Field(None, description="where downloads are staged; default <home>/work/<name>")
    reports_dir: Path = Field(Path("reports/out"), description="reports go to <reports_dir>/<name>/<run_id>/")
    options: Options = Field(default_factory=Options)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}", v):
            raise ValueError("use letters, digits, '.', '-' and '_' (it names files and folders)")
        return v

    @property
    def ledger_path(self) -> Path:
        return self.ledger or home() / "ledgers" / f"{self.name}.duckdb"

    @property
    def work_path(self) -> Path:
        return self.work_dir or home() / "work" / self.name

    @classmethod
    def from_file_data(cls, data: dict[str, Any], folder: Path) -> dict[str, Any]:
        """A job file's data as this story reads it; ``folder`` is the file's own folder
        (a story whose paths are relative to its job file makes them absolute here)."""
        return data

    def dump(self) -> dict[str, Any]:
        """The job as plain data (secret references, never secret values): what a flow run takes."""
        return self.model_dump(mode="json")


class JobSpec(JobBase):
    """A job of the escape flow: a source, a destination, and the capture-time rules."""

    flow: Literal["escape"] = Field("escape", description="which flow runs this job")
    source: KindConfig
    destination: KindConfig
    default_tz: str | None = None
    time_zones: list[TimeZoneRule] = Field(default_factory=list)

    @field_validator("default_tz")
    @classmethod
    def _default_tz(cls, v: str | None) -> str | None:
        return None if v is None else _check_zone(v)

    @field_validator("source", mode="before")
    @classmethod
    def _source(cls, v: Any) -> KindConfig:
        return _by_kind(v, "source")

    @field_validator("destination", mode="before")
    @classmethod
    def _destination(cls, v: Any) -> KindConfig:
        return _by_kind(v, "destination")

    def dump(self) -> dict[str, Any]:
        """The spec as plain data (secret references, never secret values); the source and
        destination by their kind's own model."""
        d = self.model_dump(mode="json", exclude={"source", "destination"})
        d["source"] = self.source.model_dump(mode="json")
        d["destination"] = self.destination.model_dump(mode="json")
        return d


class _KindError(ValueError):
    pass


def _by_kind(v: Any, what: str) -> KindConfig:
    """The config of the ``what`` (source or destination) kind ``v`` names: only that
    kind's module is imported; every kind's, to list them, when ``v`` names none."""
    if isinstance(v, KindConfig):
        return v
    if not isinstance(v, dict):
        raise ValueError(f"expected a mapping with a 'kind' (one of: {', '.join(sorted(all_kinds(what)))})")
    kind = v.get("kind")
    cls = find_kind(what, kind)
    if cls is None:
        raise ValueError(f"kind {kind!r} is not known; expected one of: {', '.join(sorted(all_kinds(what)))}")
    try:
        return cls.Config.model_validate(v)
    except ValidationError as exc:
        raise _KindError(_format(exc, prefix=what)) from None


# never echo what was written under a field that may hold a credential
_SECRETISH = re.compile(r"secret|password|passwd|token|key|credential|auth", re.I)


class JobSpecError(Exception):
    """A job spec that does not validate; the message lists each bad field."""


def _format(exc: ValidationError, prefix: str = "") -> str:
    return _format_errors(exc.errors(), prefix)


def _format_errors(errors: list[Any], prefix: str = "") -> str:
    lines = []
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-"))
        loc = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            msg = "is required but missing"
        elif err["type"] == "extra_forbidden":
            msg = "is not a known field (check its spelling and indentation)"
        inp = err.get("input")
        hide = err["type"] in ("missing", "extra_forbidden") or isinstance(inp, dict) or _SECRETISH.search(loc)
        got = "" if hide else f" (got {inp!r})"
        lines.append(f"{loc}: {msg}{got}")
    return "\n".join(lines)


def parse_job(data: Any, origin: str = "job spec") -> JobSpec:
    """Validate a job spec given as plain data."""
    if not isinstance(data, dict):
        raise JobSpecError(f"{origin}: expected a mapping of fields (name, source, destination, ...)")
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise JobSpecError(f"{origin} is not valid:\n  " + "\n  ".join(format_errors(exc).splitlines())) from None


def format_errors(exc: ValidationError) -> str:
    """One line per bad field of a job; errors raised inside a kind's own model come
    through already formatted (prefixed ``source.`` / ``destination.``)."""
    lines = []
    for err in exc.errors():
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, _KindError):
            lines.append(str(ctx_err))
        else:
            lines.append(_format_errors([err]))
    return "\n".join(lines)


def read_job_data(path: str | Path) -> dict[str, Any]:
    """A job file's plain data (a mapping), or a :class:`JobSpecError` saying why not."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise JobSpecError(f"cannot read job file {p}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise JobSpecError(f"{p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise JobSpecError(f"{p}: expected a mapping of fields (name, source, destination, ...)")
    return data


def load_job(path: str | Path) -> JobSpec:
    """Read and validate an escape job's YAML file (any story's: :func:`photo_escape.stories.load_job`)."""
    return parse_job(read_job_data(path), origin=str(path))


class FindJob(JobBase):
    """A find-my-photo job (``flow: find_my_photo``): where the pictures are and what to look for.

    Paths in its job file are taken from the file's own folder."""

    name: str = Field("find-my-photo", description="a short name: letters, digits, '-', '_' and '.'")
    flow: Literal["find_my_photo"] = "find_my_photo"
    folder: Path = Field(description="the folder of harvested pictures (searched recursively)")
    references: list[Path] = Field(min_length=1, description="the small reference crops (72 x 62 tiles of the mosaic)")
    top: int = Field(5, ge=1, description="best candidates listed per reference")
    shortlist: int = Field(200, ge=1, description="best-correlating thumbnails scored by structural similarity")
    batch_size: int = Field(500, ge=1, description="pictures per thumbnail task")
    processes: int = Field(0, ge=0, description="thumbnail processes per task (0: one per core)")
    cache: Path | None = Field(None, description="the thumbnail cache file; default beside the folder")

    @classmethod
    def from_file_data(cls, data: dict[str, Any], folder: Path) -> dict[str, Any]:
        def rel(p: Any) -> Any:
            return p if p is None or Path(p).is_absolute() else str(folder / p)

        data = dict(data)
        for key in ("folder", "ledger", "cache", "reports_dir", "work_dir"):
            if data.get(key):
                data[key] = rel(data[key])
        data["references"] = [rel(r) for r in data.get("references") or []]
        return data
