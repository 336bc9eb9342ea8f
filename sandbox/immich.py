"""A stand-in for an Immich server (its HTTP API under ``/api``), for the demo, the tests and the bench.

Immich's server cannot run here, so this one implements the part of Immich's published
OpenAPI document that an uploader meets, with Immich's names, shapes and status codes:

    GET  /.well-known/immich                 {"api": {"endpoint": "/api"}}   (how clients find the API)
    GET  /api/server/ping                    {"res": "pong"}
    GET  /api/server/version                 {"major", "minor", "patch", "prerelease"}
    GET  /api/server/media-types             {"image": [".jpg", ...], "video": [...], "sidecar": [".xmp"]}
    GET  /api/server/about                   ServerAboutResponseDto (version, versionUrl, licensed)
    GET  /api/users/me                       the API key's user (UserAdminResponseDto)
    GET  /api/api-keys/me                    the API key itself, with its permissions
    POST /api/assets/bulk-upload-check       {"assets": [{"id", "checksum"}]} -> {"results": [{"id", "action":
                                             "accept"|"reject", "reason": "duplicate", "assetId", "isTrashed"}]}
    POST /api/assets                         multipart: assetData (the file), fileCreatedAt, fileModifiedAt,
                                             optional filename, isFavorite, visibility, duration, sidecarData
                                             (an .xmp file), and the older deviceAssetId / deviceId;
                                             -> 201 {"id", "status": "created"} or 200 {"id", "status": "duplicate"}
    GET  /api/assets/{id}                    AssetResponseDto;  GET /api/assets/{id}/original: the bytes
    DELETE /api/assets                       {"ids", "force"}: to the trash, or (force) gone
    GET  /api/assets/statistics              {"images", "videos", "total"}
    GET  /api/albums[?name=&assetId=]        AlbumResponseDto list;  POST /api/albums {"albumName", "assetIds"?}
    GET  /api/albums/{id}                    AlbumResponseDto (with "assets")
    PUT  /api/albums/{id}/assets             {"ids"} -> [{"id", "success", "error": "duplicate"|"no_permission"}]

As the server does, assets belong to the API key's user and are identified by their
content: the SHA-1 of the bytes, unique per user, so a second upload of the same bytes
is answered ``duplicate`` with the first one's id and stores nothing (a checksum is
given as 40 hex digits or 28 characters of base64, and the ``x-immich-checksum`` header
lets the server answer before reading the body). Albums hold asset ids, each once.
Errors are JSON ``{"message", "error", "statusCode"}``: 401 for a missing or unknown key,
400 for an invalid request or an unsupported file type, 413 over ``max_upload_bytes``.

For the tests (never part of Immich): ``GET /sandbox/assets``, ``/sandbox/albums``,
``/sandbox/stats``, ``POST /sandbox/reset``, ``POST /sandbox/accept_then_fail`` (the next
uploads are stored, then answered with a 500 or a connection reset, as a server that
commits and crashes). Wrapped in :class:`sandbox.faults.FaultInjector` for 5xx, 429 and resets.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import threading
import uuid
from datetime import datetime, timezone
from pathlib import PurePosixPath
from typing import Any

from flask import Flask, Response, jsonify, request

from sandbox.faults import AcceptThenFail, FaultInjector, FaultPlan
from sandbox.server import Service

VERSION = (2, 3, 1)  # the server version this stand-in answers with
SANDBOX_KEY = "immich-sandbox-api-key"
SANDBOX_USER = {"email": "anne@example.org", "name": "Anne"}

IMAGE_TYPES = (".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".heic", ".heif", ".avif", ".tif", ".tiff",
               ".bmp", ".jxl", ".dng", ".nef", ".cr2", ".cr3", ".arw", ".orf", ".rw2", ".raf", ".pef", ".srw",
               ".3fr", ".erf", ".kdc", ".mrw", ".nrw", ".raw", ".x3f", ".iiq", ".insp", ".jp2", ".psd", ".svg")
VIDEO_TYPES = (".mp4", ".mov", ".m4v", ".3gp", ".avi", ".mkv", ".mts", ".m2ts", ".mpg", ".mpeg", ".webm",
               ".wmv", ".flv", ".insv", ".mxf", ".vob", ".ts")
SIDECAR_TYPES = (".xmp",)


def _now() -> str:
    return _iso(datetime.now(timezone.utc))


def _iso(when: datetime) -> str:
    """A date as Immich's JSON writes it: UTC, milliseconds, ``Z``."""
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def parse_checksum(text: str) -> bytes | None:
    """A SHA-1 as Immich accepts it: 28 characters of base64 or 40 hex digits (None if neither)."""
    try:
        if len(text) == 28:
            raw = base64.b64decode(text, validate=True)
        elif len(text) == 40:
            raw = bytes.fromhex(text)
        else:
            return None
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == 20 else None


def parse_date(text: str | None) -> datetime | None:
    """An ISO 8601 date as the server reads a form field; one without an offset is UTC
    (the server's own zone, as Immich's container runs it)."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


class ImmichStore:
    """What the server keeps: users (by API key), assets by id and by (owner, SHA-1), albums."""

    def __init__(self, keys: dict[str, dict[str, str]]) -> None:
        self.lock = threading.RLock()
        self.users: dict[str, dict[str, Any]] = {}  # api key -> user
        for key, who in keys.items():
            self.users[key] = {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, who["email"])), "email": who["email"],
                               "name": who.get("name", who["email"].split("@")[0]), "key_id": str(uuid.uuid4())}
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.assets: dict[str, dict[str, Any]] = {}
            self.by_checksum: dict[tuple[str, bytes], str] = {}
            self.albums: dict[str, dict[str, Any]] = {}
            self.counts = {"uploads_received": 0, "created": 0, "duplicates_answered": 0, "bulk_checks": 0,
                           "checked_checksums": 0, "albums_created": 0, "album_asset_calls": 0,
                           "refused": 0}

    def stats(self) -> dict[str, Any]:
        with self.lock:
            per_content: dict[tuple[str, bytes], int] = {}
            for a in self.assets.values():
                key = (a["ownerId"], a["checksum_raw"])
                per_content[key] = per_content.get(key, 0) + 1
            return {**self.counts, "assets": len(self.assets), "albums": len(self.albums),
                    "same_content_twice": sum(n - 1 for n in per_content.values())}


# -- the JSON shapes of Immich's DTOs ---------------------------------------------------------------------

def _user_dto(user: dict[str, Any]) -> dict[str, Any]:
    return {"id": user["id"], "email": user["email"], "name": user["name"], "avatarColor": "primary",
            "profileImagePath": "", "profileChangedAt": "2024-01-01T00:00:00.000Z"}


def _user_admin_dto(user: dict[str, Any]) -> dict[str, Any]:
    return {**_user_dto(user), "createdAt": "2024-01-01T00:00:00.000Z", "updatedAt": "2024-01-01T00:00:00.000Z",
            "deletedAt": None, "isAdmin": True, "oauthId": "", "shouldChangePassword": False,
            "storageLabel": "admin", "quotaSizeInBytes": None, "quotaUsageInBytes": 0, "status": "active",
            "license": None}


def _asset_dto(a: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": a["id"], "ownerId": a["ownerId"], "owner": _user_dto(owner), "type": a["type"],
        "originalFileName": a["originalFileName"], "originalPath": a["originalPath"],
        "originalMimeType": a["originalMimeType"], "checksum": a["checksum"],
        "fileCreatedAt": a["fileCreatedAt"], "fileModifiedAt": a["fileModifiedAt"],
        "localDateTime": a["localDateTime"], "createdAt": a["createdAt"], "updatedAt": a["updatedAt"],
        "isFavorite": a["isFavorite"], "isArchived": False, "isTrashed": a["isTrashed"], "isOffline": False,
        "isEdited": False, "visibility": a["visibility"], "hasMetadata": True, "duration": None,
        "width": None, "height": None, "thumbhash": None, "livePhotoVideoId": None, "libraryId": None,
        "duplicateId": None, "resized": False, "people": [], "tags": [], "stack": None,
        "exifInfo": {"fileSizeInByte": a["fileSizeInByte"]},
    }


def _album_dto(al: dict[str, Any], owner: dict[str, Any], assets: dict[str, dict], *, with_assets: bool) -> dict:
    members = [assets[i] for i in al["assetIds"] if i in assets]
    times = sorted(m["fileCreatedAt"] for m in members)
    dto = {
        "id": al["id"], "albumName": al["albumName"], "description": al["description"],
        "albumThumbnailAssetId": al["assetIds"][0] if al["assetIds"] else None, "ownerId": owner["id"],
        "owner": _user_dto(owner), "albumUsers": [], "assetCount": len(members), "createdAt": al["createdAt"],
        "updatedAt": al["updatedAt"], "shared": False, "hasSharedLink": False, "isActivityEnabled": True,
        "order": "desc", "startDate": times[0] if times else None, "endDate": times[-1] if times else None,
        "lastModifiedAssetTimestamp": al["updatedAt"] if members else None,
    }
    if with_assets:
        dto["assets"] = [_asset_dto(m, owner) for m in members]
    return dto


def _error(status: int, message: Any, error: str) -> Response:
    resp = jsonify({"message": message, "error": error, "statusCode": status,
                    "correlationId": uuid.uuid4().hex[:8]})
    resp.status_code = status
    return resp


def create_app(keys: dict[str, dict[str, str]] | None = None, *, store: ImmichStore | None = None,
               max_upload_bytes: int | None = None) -> Flask:
    """The Flask app; ``keys`` maps API keys to users ``{"email", "name"}``."""
    app = Flask("sandbox-immich")
    store = store or ImmichStore(keys or {SANDBOX_KEY: SANDBOX_USER})
    app.config["store"] = store
    app.config["accept_then_fail"] = crash = AcceptThenFail()
    app.config["max_upload_bytes"] = max_upload_bytes

    def user() -> dict[str, Any] | None:
        key = request.headers.get("x-api-key")
        return store.users.get(key) if key else None

    def unauthorized() -> Response:
        if request.headers.get("x-api-key"):
            return _error(401, "Invalid API key", "Unauthorized")
        return _error(401, "Authentication required", "Unauthorized")

    def json_body() -> dict[str, Any] | None:
        body = request.get_json(silent=True)
        return body if isinstance(body, dict) else None

    # -- discovery and server ------------------------------------------------------------------------------
    @app.get("/.well-known/immich")
    def well_known():
        return jsonify({"api": {"endpoint": "/api"}})

    @app.get("/api/server/ping")
    def ping():
        return jsonify({"res": "pong"})

    @app.get("/api/server/version")
    def version():
        major, minor, patch = VERSION
        return jsonify({"major": major, "minor": minor, "patch": patch, "prerelease": None})

    @app.get("/api/server/media-types")
    def media_types():
        return jsonify({"image": list(IMAGE_TYPES), "video": list(VIDEO_TYPES), "sidecar": list(SIDECAR_TYPES)})

    @app.get("/api/server/about")
    def about():
        if not user():
            return unauthorized()
        v = "v{}.{}.{}".format(*VERSION)
        return jsonify({"version": v, "versionUrl": f"https://github.com/immich-app/immich/releases/tag/{v}",
                        "licensed": False, "build": "photo-escape-sandbox"})

    @app.get("/api/users/me")
    def users_me():
        who = user()
        return jsonify(_user_admin_dto(who)) if who else unauthorized()

    @app.get("/api/api-keys/me")
    def api_key_me():
        who = user()
        if not who:
            return unauthorized()
        return jsonify({"id": who["key_id"], "name": "sandbox", "createdAt": "2024-01-01T00:00:00.000Z",
                        "updatedAt": "2024-01-01T00:00:00.000Z", "permissions": ["all"]})

    # -- assets --------------------------------------------------------------------------------------------
    @app.post("/api/assets/bulk-upload-check")
    def bulk_upload_check():
        who = user()
        if not who:
            return unauthorized()
        body = json_body()
        assets = body.get("assets") if body else None
        if not isinstance(assets, list) or not all(isinstance(a, dict) for a in assets):
            return _error(400, ["assets must be an array"], "Bad Request")
        results = []
        with store.lock:
            store.counts["bulk_checks"] += 1
            store.counts["checked_checksums"] += len(assets)
            for a in assets:
                raw = parse_checksum(str(a.get("checksum", "")))
                if raw is None or not isinstance(a.get("id"), str):
                    return _error(400, ["each asset needs an id and a base64 or hex SHA-1 checksum"], "Bad Request")
                found = store.by_checksum.get((who["id"], raw))
                if found:
                    results.append({"id": a["id"], "action": "reject", "reason": "duplicate", "assetId": found,
                                    "isTrashed": store.assets[found]["isTrashed"]})
                else:
                    results.append({"id": a["id"], "action": "accept"})
        return jsonify({"results": results})

    @app.post("/api/assets")
    def upload_asset():
        who = user()
        if not who:
            return unauthorized()
        with store.lock:
            store.counts["uploads_received"] += 1
        header = request.headers.get("x-immich-checksum")
        if header:
            raw = parse_checksum(header)
            with store.lock:
                found = store.by_checksum.get((who["id"], raw)) if raw else None
                if found:
                    store.counts["duplicates_answered"] += 1
                    return jsonify({"id": found, "status": "duplicate"})
        limit = app.config["max_upload_bytes"]
        if limit is not None and (request.content_length or 0) > limit:
            with store.lock:
                store.counts["refused"] += 1
            return _error(413, "Payload Too Large", "Payload Too Large")
        upload = request.files.get("assetData")
        form = request.form
        problems = []
        if upload is None:
            problems.append("assetData must be a file")
        created, modified = parse_date(form.get("fileCreatedAt")), parse_date(form.get("fileModifiedAt"))
        if created is None:
            problems.append("fileCreatedAt must be a Date instance")
        if modified is None:
            problems.append("fileModifiedAt must be a Date instance")
        if form.get("isFavorite", "false") not in ("true", "false"):
            problems.append("isFavorite must be a boolean value")
        if problems:
            return _error(400, problems, "Bad Request")
        name = form.get("filename") or upload.filename or "upload"
        ext = PurePosixPath(name).suffix.lower()
        if ext not in IMAGE_TYPES + VIDEO_TYPES:
            with store.lock:
                store.counts["refused"] += 1
            return _error(400, f"Unsupported file type {name}", "Bad Request")
        sidecar = request.files.get("sidecarData")
        if sidecar is not None and PurePosixPath(sidecar.filename or "").suffix.lower() not in SIDECAR_TYPES:
            return _error(400, f"Unsupported file type {sidecar.filename}", "Bad Request")
        data = upload.read()
        raw = hashlib.sha1(data).digest()
        sent = form.get("fileCreatedAt")
        with store.lock:
            found = store.by_checksum.get((who["id"], raw))
            if found:
                store.counts["duplicates_answered"] += 1
                return jsonify({"id": found, "status": "duplicate"})
            asset_id = str(uuid.uuid4())
            now = _now()
            store.assets[asset_id] = {
                "id": asset_id, "ownerId": who["id"], "type": "VIDEO" if ext in VIDEO_TYPES else "IMAGE",
                "originalFileName": name, "originalPath": f"upload/library/{who['id']}/{asset_id}{ext}",
                "originalMimeType": upload.mimetype or "application/octet-stream",
                "checksum": base64.b64encode(raw).decode(), "checksum_raw": raw, "data": data,
                "fileSizeInByte": len(data), "fileCreatedAt": _iso(created), "fileModifiedAt": _iso(modified),
                # the wall clock where it was taken, written as if UTC (Immich's localDateTime)
                "localDateTime": _iso(created.replace(tzinfo=timezone.utc)),
                "fileCreatedAtSent": sent, "createdAt": now, "updatedAt": now,
                "isFavorite": form.get("isFavorite") == "true", "isTrashed": False,
                "visibility": form.get("visibility", "timeline"),
                "deviceAssetId": form.get("deviceAssetId"), "deviceId": form.get("deviceId"),
                "sidecar": sidecar.read() if sidecar is not None else None,
                "sidecarName": sidecar.filename if sidecar is not None else None,
            }
            store.by_checksum[(who["id"], raw)] = asset_id
            store.counts["created"] += 1
        if crash.strike(request.environ):
            return _error(500, "Internal server error", "Internal Server Error")
        resp = jsonify({"id": asset_id, "status": "created"})
        resp.status_code = 201
        return resp

    @app.delete("/api/assets")
    def delete_assets():
        who = user()
        if not who:
            return unauthorized()
        body = json_body() or {}
        with store.lock:
            for asset_id in body.get("ids") or []:
                a = store.assets.get(asset_id)
                if not a or a["ownerId"] != who["id"]:
                    continue
                if body.get("force"):
                    del store.assets[asset_id]
                    store.by_checksum.pop((who["id"], a["checksum_raw"]), None)
                    for al in store.albums.values():
                        if asset_id in al["assetIds"]:
                            al["assetIds"].remove(asset_id)
                else:
                    a["isTrashed"] = True
        return Response(status=204)

    @app.get("/api/assets/statistics")
    def asset_statistics():
        who = user()
        if not who:
            return unauthorized()
        with store.lock:
            mine = [a for a in store.assets.values() if a["ownerId"] == who["id"] and not a["isTrashed"]]
        images = sum(a["type"] == "IMAGE" for a in mine)
        return jsonify({"images": images, "videos": len(mine) - images, "total": len(mine)})

    def owned_asset(asset_id: str) -> tuple[dict | None, Response | None]:
        who = user()
        if not who:
            return None, unauthorized()
        with store.lock:
            a = store.assets.get(asset_id)
        if not a or a["ownerId"] != who["id"]:
            return None, _error(400, "Not found or no asset.read access", "Bad Request")
        return a, None

    @app.get("/api/assets/<asset_id>")
    def asset_info(asset_id: str):
        a, err = owned_asset(asset_id)
        return err or jsonify(_asset_dto(a, user()))

    @app.get("/api/assets/<asset_id>/original")
    def asset_original(asset_id: str):
        a, err = owned_asset(asset_id)
        return err or Response(a["data"], mimetype=a["originalMimeType"])

    # -- albums --------------------------------------------------------------------------------------------
    @app.get("/api/albums")
    def albums_list():
        who = user()
        if not who:
            return unauthorized()
        name, asset_id = request.args.get("name"), request.args.get("assetId")
        with store.lock:
            out = [_album_dto(al, who, store.assets, with_assets=False) for al in store.albums.values()
                   if al["ownerId"] == who["id"] and (name is None or al["albumName"] == name)
                   and (asset_id is None or asset_id in al["assetIds"])]
        return jsonify(out)

    @app.post("/api/albums")
    def albums_create():
        who = user()
        if not who:
            return unauthorized()
        body = json_body()
        if not body or not isinstance(body.get("albumName"), str):
            return _error(400, ["albumName must be a string"], "Bad Request")
        ids = body.get("assetIds") or []
        now = _now()
        with store.lock:
            album = {"id": str(uuid.uuid4()), "albumName": body["albumName"], "ownerId": who["id"],
                     "description": body.get("description") or "", "createdAt": now, "updatedAt": now,
                     "assetIds": []}
            for asset_id in ids:
                a = store.assets.get(asset_id)
                if a and a["ownerId"] == who["id"] and asset_id not in album["assetIds"]:
                    album["assetIds"].append(asset_id)
            store.albums[album["id"]] = album
            store.counts["albums_created"] += 1
            dto = _album_dto(album, who, store.assets, with_assets=False)
        resp = jsonify(dto)
        resp.status_code = 201
        return resp

    def owned_album(album_id: str) -> tuple[dict | None, dict | None, Response | None]:
        who = user()
        if not who:
            return None, None, unauthorized()
        al = store.albums.get(album_id)
        if not al or al["ownerId"] != who["id"]:
            return who, None, _error(400, "Not found or no album.read access", "Bad Request")
        return who, al, None

    @app.get("/api/albums/<album_id>")
    def album_info(album_id: str):
        with store.lock:
            who, al, err = owned_album(album_id)
            return err or jsonify(_album_dto(al, who, store.assets, with_assets=True))

    @app.put("/api/albums/<album_id>/assets")
    def album_add_assets(album_id: str):
        body = json_body()
        with store.lock:
            who, al, err = owned_album(album_id)
            if err:
                return err
            if not body or not isinstance(body.get("ids"), list):
                return _error(400, ["ids must be an array"], "Bad Request")
            store.counts["album_asset_calls"] += 1
            results = []
            for asset_id in body["ids"]:
                a = store.assets.get(asset_id)
                if not a or a["ownerId"] != who["id"]:
                    results.append({"id": asset_id, "success": False, "error": "no_permission"})
                elif asset_id in al["assetIds"]:
                    results.append({"id": asset_id, "success": False, "error": "duplicate"})
                else:
                    al["assetIds"].append(asset_id)
                    results.append({"id": asset_id, "success": True})
            if any(r["success"] for r in results):
                al["updatedAt"] = _now()
        return jsonify(results)

    # -- for the tests ---------------------------------------------------------------------------------------
    @app.get("/sandbox/assets")
    def sandbox_assets():
        with store.lock:
            out = [{k: v for k, v in a.items() if k not in ("data", "checksum_raw", "sidecar")}
                   | {"sha1": a["checksum_raw"].hex(), "sha256": hashlib.sha256(a["data"]).hexdigest(),
                      "sidecar": a["sidecar"].decode("utf-8", "replace") if a["sidecar"] else None}
                   for a in store.assets.values()]
        return jsonify({"assets": out})

    @app.get("/sandbox/albums")
    def sandbox_albums():
        with store.lock:
            return jsonify({"albums": [{"id": al["id"], "albumName": al["albumName"],
                                        "assetIds": list(al["assetIds"])} for al in store.albums.values()]})

    @app.get("/sandbox/stats")
    def sandbox_stats():
        return jsonify(store.stats())

    @app.post("/sandbox/reset")
    def sandbox_reset():
        store.reset()
        return jsonify({"reset": True})

    @app.post("/sandbox/accept_then_fail")
    def sandbox_accept_then_fail():
        return jsonify(crash.arm_from(json_body()))

    return app


class ImmichServer(Service):
    """The stand-in served on 127.0.0.1 with fault injection:
    ``with ImmichServer() as immich: immich.url, immich.api_url, immich.key``."""

    def __init__(self, keys: dict[str, dict[str, str]] | None = None, *, faults: list[dict[str, Any]] | None = None,
                 max_upload_bytes: int | None = None, port: int = 0) -> None:
        self.keys = dict(keys or {SANDBOX_KEY: SANDBOX_USER})
        self.store = ImmichStore(self.keys)
        self.app = create_app(store=self.store, max_upload_bytes=max_upload_bytes)
        self.faults = FaultPlan(faults or ())
        self.wsgi = FaultInjector(self.app, self.faults)
        self.port = port

    @property
    def key(self) -> str:
        """The first API key (the sandbox user's)."""
        return next(iter(self.keys))

    @property
    def api_url(self) -> str:
        return f"{self.server.url}/api"

    def accept_then_fail(self, times: int = 1, mode: str = "error") -> None:
        """The next ``times`` uploads are stored, then answered with a 500 (or a reset)."""
        self.app.config["accept_then_fail"].arm(times, mode)

    def assets(self) -> list[dict[str, Any]]:
        """Every stored asset as ``/sandbox/assets`` shows it (no bytes)."""
        with self.app.test_client() as c:
            return c.get("/sandbox/assets").get_json()["assets"]

    def albums(self) -> dict[str, list[str]]:
        """Album name -> the original file names of its assets (in the order they were added)."""
        with self.store.lock:
            return {al["albumName"]: [self.store.assets[i]["originalFileName"] for i in al["assetIds"]
                                      if i in self.store.assets] for al in self.store.albums.values()}


def main() -> None:  # pragma: no cover - manual use
    """Serve the stand-in until interrupted (``python -m sandbox.immich [PORT]``)."""
    import sys

    immich = ImmichServer(port=int(sys.argv[1]) if len(sys.argv) > 1 else 2283).start()
    immich.serve_until_interrupted(f"Immich stand-in on {immich.api_url} (API key {immich.key})")


if __name__ == "__main__":  # pragma: no cover
    main()
