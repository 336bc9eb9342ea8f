"""Shared S3 plumbing for the ``s3`` source and destination: connection fields,
a boto3 client, error classification, safe names.

Credentials come from the standard AWS chain (``AWS_ACCESS_KEY_ID``... env vars,
``~/.aws``, instance roles) or from ``credentials: {env: NAME}`` /
``credentials: {block: NAME}`` naming a secret that holds JSON
``{"aws_access_key_id": ..., "aws_secret_access_key": ..., "aws_session_token": ...}``
(resolved with :func:`photo_escape.secrets.resolve`, so the values are redacted
from logs). Never from the job file itself.

Plain code: no Prefect import here.
"""

from __future__ import annotations

import json
import re
import threading
from typing import Any, Literal

from pydantic import BaseModel, Field

from photo_escape.outcomes import PermanentError, TransientError
from photo_escape.secrets import SecretMissing, SecretRef, resolve


class S3Connection(BaseModel):
    """Where a bucket lives and how to reach it (mixed into the kind configs)."""

    bucket: str = Field(description="bucket name")
    endpoint_url: str | None = Field(None, description="S3-compatible endpoint, e.g. http://127.0.0.1:9000; none: AWS")
    region: str | None = Field(None, description="AWS region, e.g. eu-west-1 (default: the AWS chain's, else us-east-1)")
    credentials: SecretRef | None = Field(
        None, description="a secret holding JSON access keys; none: the standard AWS credential chain"
    )
    addressing_style: Literal["auto", "path", "virtual"] = Field(
        "auto", description="auto: path-style for a custom endpoint_url, virtual-hosted on AWS"
    )
    max_attempts: int = Field(4, ge=1, le=20, description="botocore attempts per request (standard retry mode)")
    timeout_seconds: float = Field(60, gt=0, le=3600, description="connect/read timeout per request")


def credentials_from(ref: SecretRef | None) -> dict[str, str]:
    """boto3 session keyword arguments from a secret holding JSON keys ({} for the chain)."""
    if ref is None:
        return {}
    raw = resolve(ref)
    try:
        data = json.loads(raw)
    except ValueError:
        raise PermanentError("bad_credentials", f"secret {ref.describe()} is not JSON with aws_access_key_id") from None
    if not isinstance(data, dict) or not data.get("aws_access_key_id") or not data.get("aws_secret_access_key"):
        raise PermanentError("bad_credentials", f"secret {ref.describe()} lacks aws_access_key_id/aws_secret_access_key")
    out = {"aws_access_key_id": str(data["aws_access_key_id"]), "aws_secret_access_key": str(data["aws_secret_access_key"])}
    if data.get("aws_session_token"):
        out["aws_session_token"] = str(data["aws_session_token"])
    from photo_escape.secrets import remember

    for v in out.values():
        remember(v)
    return out


def make_client(conn: S3Connection, *, pool: int = 10, keys: dict[str, str] | None = None) -> Any:
    """A thread-safe boto3 S3 client for ``conn`` (retries in botocore's standard mode);
    ``keys`` (session keyword arguments) instead of ``conn.credentials``, for :func:`warm_up`."""
    import boto3
    from botocore.config import Config

    style = conn.addressing_style
    if style == "auto":
        style = "path" if conn.endpoint_url else "auto"
    cfg = Config(
        retries={"max_attempts": conn.max_attempts, "mode": "standard"},
        connect_timeout=conn.timeout_seconds,
        read_timeout=conn.timeout_seconds,
        max_pool_connections=max(10, pool),
        s3={"addressing_style": style},
        # third-party stores often reject the newer default checksum trailers
        request_checksum_calculation="when_required" if conn.endpoint_url else "when_supported",
        response_checksum_validation="when_required" if conn.endpoint_url else "when_supported",
    )
    import botocore.session

    core = botocore.session.get_session()
    core.register_component("data_loader", _shared_loader())  # the models read once per process, not per client
    session = boto3.session.Session(region_name=conn.region, botocore_session=core,
                                    **(keys if keys is not None else credentials_from(conn.credentials)))
    region = conn.region or session.region_name or "us-east-1"
    return session.client("s3", endpoint_url=conn.endpoint_url, region_name=region, config=cfg)


def warm_up() -> None:
    """Make one client, talking to no one, so that this process's shared loader holds S3's
    models (the warm runner does this once for every run it forks)."""
    make_client(S3Connection(bucket="warm-up", endpoint_url="http://127.0.0.1:9", region="us-east-1"),
                keys={"aws_access_key_id": "warm-up", "aws_secret_access_key": "warm-up"})


_LOADER: list[Any] = []
_LOADER_LOCK = threading.Lock()


def _shared_loader() -> Any:
    """botocore's data loader, one per process: it caches the service models it reads,
    which is most of the ~0.1 s a new session takes to make its first client (each
    batch's source or destination makes one). Credentials stay per session."""
    with _LOADER_LOCK:
        if not _LOADER:
            from botocore.loaders import create_loader

            _LOADER.append(create_loader())
        return _LOADER[0]


_PERMANENT = {
    "NoSuchKey": "not_found",
    "404": "not_found",
    "NotFound": "not_found",
    "NoSuchBucket": "no_such_bucket",
    "AccessDenied": "access_denied",
    "403": "access_denied",
    "InvalidAccessKeyId": "bad_credentials",
    "SignatureDoesNotMatch": "bad_credentials",
    "InvalidObjectState": "archived_not_readable",
    "InvalidStorageClass": "invalid_storage_class",
    "EntityTooLarge": "too_large",
    "InvalidArgument": "invalid_argument",
    "PreconditionFailed": "changed",
    "412": "changed",
}


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ClientError ('' for anything else)."""
    resp = getattr(exc, "response", None) or {}
    return str((resp.get("Error") or {}).get("Code") or "")


def classify(exc: BaseException) -> Exception:
    """A :class:`PermanentError` or :class:`TransientError` for a boto3/network failure."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (PermanentError, TransientError)):
        return exc
    if isinstance(exc, SecretMissing):
        return PermanentError("secret_missing", str(exc))
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return PermanentError("no_credentials", "no AWS credentials found (environment, ~/.aws, or credentials:)")
    if isinstance(exc, ClientError):
        code = error_code(exc)
        if code in _PERMANENT:
            return PermanentError(_PERMANENT[code], f"S3 said {code}")
        if code in ("BadDigest", "XAmzContentSHA256Mismatch", "IncompleteBody"):
            return TransientError("corrupted_in_transit", f"S3 said {code}")
        if code in ("SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "503", "500",
                    "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"):
            return TransientError("throttled" if code in ("SlowDown", "Throttling", "ThrottlingException") else "server_error",
                                  f"S3 said {code}")
        status = (getattr(exc, "response", {}) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status >= 500:
            return TransientError("server_error", f"S3 said {code or status}")
        return PermanentError("s3_error", f"S3 said {code or status}")
    if isinstance(exc, BotoCoreError) or isinstance(exc, (ConnectionError, TimeoutError, OSError)):
        return TransientError("connection", type(exc).__name__)
    # s3transfer wraps the last failure of a multipart upload
    cause = exc.__cause__ or exc.__context__
    if cause is not None and cause is not exc:
        return classify(cause)
    return TransientError("upload_failed", type(exc).__name__)


_UNSAFE = re.compile(r"[^A-Za-z0-9._\-+=@,() ~]")


def safe_name(name: str, fallback: str = "object") -> str:
    """A file name safe for any file system: no path separators, no control or
    shell-hostile characters, not '.'/'..', at most 200 characters."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    base = _UNSAFE.sub("_", base).strip(" .")
    if not base:
        base = fallback
    if len(base) > 200:
        stem, dot, ext = base.rpartition(".")
        base = (stem[: 200 - len(ext) - 1] + dot + ext) if dot and len(ext) <= 10 else base[:200]
    return base


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def split_uri(value: str, bucket: str) -> str | None:
    """The key prefix of ``value`` if it concerns ``bucket``: ``s3://bucket/p`` → ``p``,
    ``s3://other/p`` → None, a bare ``p`` → ``p``."""
    if value.startswith("s3://"):
        b, _, rest = value[5:].partition("/")
        return rest if b == bucket else None
    return value.lstrip("/")
