"""Secrets come from the environment or a Prefect Secret block, never from job files.

A job file names where a secret lives (``{env: KODAK_PASSWORD}`` or
``{block: kodak-password}``); :func:`resolve` reads it at the moment it is needed,
inside the task, and registers the value so :func:`redact` can scrub it from any
text that is about to be logged, stored in the ledger or written to a report.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, model_validator

_KNOWN: set[str] = set()
_LOCK = threading.Lock()
MASK = "***"


class SecretRef(BaseModel):
    """Where a secret lives: exactly one of ``env`` (a variable) or ``block``."""

    model_config = ConfigDict(extra="forbid")
    env: str | None = None
    block: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> "SecretRef":
        if bool(self.env) == bool(self.block):
            raise ValueError(
                "a secret is given as {env: VARIABLE_NAME} or {block: prefect-secret-block-name}, "
                "never as the value itself"
            )
        return self

    def describe(self) -> str:
        return f"env:{self.env}" if self.env else f"block:{self.block}"


class SecretMissing(Exception):
    reason = "secret_missing"


def resolve(ref: SecretRef | dict[str, Any]) -> str:
    """The secret's value; raises :class:`SecretMissing` (with no value in the message)."""
    if isinstance(ref, dict):
        ref = SecretRef.model_validate(ref)
    if ref.env:
        value = os.environ.get(ref.env)
        if value is None:
            raise SecretMissing(f"environment variable {ref.env} is not set")
    else:
        try:
            from prefect.blocks.system import Secret

            # the stored value as saved: Secret.get() would json.loads a string ('{"k": ...}' -> dict, 'true' -> True)
            value = Secret.load(ref.block).value.get_secret_value()
        except Exception as exc:  # the block API raises ValueError and friends
            raise SecretMissing(f"Prefect Secret block {ref.block!r} could not be loaded: {type(exc).__name__}") from None
        if not isinstance(value, str):  # a block saved with a dict/list value: hand it on as JSON
            import json

            value = json.dumps(value)
    remember(value)
    return value


def remember(value: str) -> None:
    """Register a value so :func:`redact` hides it."""
    if value and len(value) >= 3:
        with _LOCK:
            _KNOWN.add(value)
        _install_log_filter()


def redact(text: Any) -> Any:
    """``text`` with every known secret replaced by ``***`` (non-strings pass through)."""
    if not isinstance(text, str) or not _KNOWN:
        return text
    for value in sorted(_KNOWN, key=len, reverse=True):
        if value in text:
            text = text.replace(value, MASK)
    return text


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        try:
            msg = record.getMessage()
        except Exception:
            return True
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, ()
        return True


_FILTER_INSTALLED = False


def _install_log_filter() -> None:
    global _FILTER_INSTALLED
    if _FILTER_INSTALLED:
        return
    _FILTER_INSTALLED = True
    f = _RedactFilter()
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(f)
    for name in ("prefect", "urllib3", "requests", "botocore", "flickrapi"):
        logging.getLogger(name).addFilter(f)
    _install_record_factory()


def _install_record_factory() -> None:
    """Redact every log record as it is made, whichever logger and handler it goes to
    (filters on a logger miss records that propagate from its children, and handlers
    added later, such as Prefect's API log handler, have no filter). A record carrying
    an exception gets its traceback text formatted and redacted now, so no handler
    prints the exception's message with a secret in it."""
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        if _KNOWN:
            _RedactFilter().filter(record)
            if record.exc_info and not record.exc_text:
                try:
                    record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                except Exception:  # noqa: BLE001 - never lose a log line over this
                    pass
        return record

    logging.setLogRecordFactory(factory)


def scrub_exception(exc: BaseException) -> BaseException:
    """Redact, in place, the message arguments of ``exc`` and of the exceptions it chains to,
    so its text (a Prefect state message, a traceback) carries no secret. Returns ``exc``."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        try:
            e.args = tuple(redact(a) for a in e.args)
        except Exception:  # noqa: BLE001 - some exceptions refuse new args
            pass
        todo += [e.__cause__, e.__context__]
    return exc


@contextmanager
def scrubbed_exceptions() -> Iterator[None]:
    """Re-raise any exception from the block with secrets redacted from its message."""
    try:
        yield
    except BaseException as exc:
        if _KNOWN:
            scrub_exception(exc)
        raise
