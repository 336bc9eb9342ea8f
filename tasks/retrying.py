"""What the HTTP destinations share: a checked endpoint URL, a request retried with backoff
and jitter (tenacity), and the meaning of the answers a retry can or cannot fix.

Plain code, no Prefect: the ``http_upload`` and ``immich`` destinations call it."""

from __future__ import annotations

import random
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

from photo_escape.outcomes import PermanentError, TransientError
from tasks.download import parse_retry_after

T = TypeVar("T")


def check_http_url(url: str, credentials_hint: str) -> str:
    """``url`` when it is an http(s) URL with a host and no credentials in it (ValueError
    otherwise, saying ``credentials_hint``: where the credentials go instead)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL")
    if parts.username or parts.password:
        raise ValueError(f"must not carry credentials; {credentials_hint}")
    return url


def with_retries(send: Callable[[], T], *, retries: int, backoff: float) -> tuple[T, int]:
    """(``send()``'s result, attempts), trying again after a :class:`TransientError` up to
    ``retries`` times: after its Retry-After when it has one, else after an exponential
    backoff from ``backoff`` seconds with jitter (at most 30 s). The error that ends the
    tries is raised with ``.attempts`` set."""
    from tenacity import Retrying, retry_if_exception_type, stop_after_attempt

    tries = {"n": 0}

    def wait(state: Any) -> float:
        exc = state.outcome.exception()
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return exc.retry_after
        return min(30.0, backoff * (2 ** (state.attempt_number - 1)) * (0.5 + random.random()))

    retrying = Retrying(stop=stop_after_attempt(retries + 1), wait=wait,
                        retry=retry_if_exception_type(TransientError), reraise=True)
    try:
        for attempt in retrying:
            with attempt:
                tries["n"] = attempt.retry_state.attempt_number
                return send(), tries["n"]
    except (PermanentError, TransientError) as exc:
        exc.attempts = tries["n"]  # type: ignore[attr-defined]
        raise
    raise TransientError("no_attempt")  # pragma: no cover - tenacity always attempts once


def raise_for_busy_or_broken(resp: Any, message: str, max_retry_after: float) -> None:
    """Raise what an answer means when the server is busy or broken: 429 (a TransientError
    with its Retry-After, or ``rate_limited`` for good when that is over ``max_retry_after``),
    408 and 5xx (transient), 413 (``too_large``, for good). Other answers pass."""
    code = resp.status_code
    if code == 429:
        ra = parse_retry_after(resp.headers.get("Retry-After"))
        if ra is not None and ra > max_retry_after:
            raise PermanentError("rate_limited", f"HTTP 429 with Retry-After {ra:.0f}s (over max_retry_after)")
        raise TransientError("rate_limited", "HTTP 429", retry_after=ra)
    if code == 408:
        raise TransientError("timeout", "HTTP 408")
    if code >= 500:
        raise TransientError("server_error", f"HTTP {code}: {message}")
    if code == 413:
        raise PermanentError("too_large", f"HTTP 413: {message}")
