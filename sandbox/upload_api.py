"""A stand-in for Fluxtream's photo upload API (BodyTrack ``photoUpload``), for the demo and the tests.

    POST /api/bodytrack/photoUpload?connector_name=fluxtream_capture
         basic auth; multipart form: ``photo`` (the file) and ``metadata``
         (JSON: ``{"capture_time_secs_utc": 1400269584.0}``)
         -> 200 {"result": "OK", "id": ...} or {"result": "KO", "message": ...}
    GET  /api/guest      basic auth -> {"id": guest_id, "username": ...}

It behaves as the real one did, which is what makes uploads dangerous: a repeat of
the same picture with the *same* time is ignored, but a repeat with a *different*
time is stored as a second photo, and nothing can ever be deleted. The inspection
endpoints let a test prove we never cause such a duplicate:

    GET  /sandbox/photos   every stored photo (id, user, sha256, capture_time_secs_utc, filename, bytes)
    GET  /sandbox/stats    uploads received, stored, ignored repeats, duplicates (same picture twice)
    POST /sandbox/reset    forget everything
    POST /sandbox/accept_then_fail   {"times": n, "mode": "error"|"reset"}: the next n uploads are
                           stored, then answered with a 500 (or a connection reset), as when the
                           server commits and crashes before answering

Wrapped in :class:`sandbox.faults.FaultInjector`, so 5xx bursts, 429 with
Retry-After, resets and slow answers come from ``server.faults`` / ``/_admin/faults``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path
from typing import Any

from flask import Flask, jsonify, request

from sandbox.faults import AcceptThenFail, FaultInjector, FaultPlan
from sandbox.server import Service

UPLOAD_PATH = "/api/bodytrack/photoUpload"


class PhotoStore:
    """What the upload API keeps: photos by (user, picture, time); repeats counted."""

    def __init__(self, folder: Path | None = None) -> None:
        self.lock = threading.Lock()
        self.photos: list[dict[str, Any]] = []
        self.index: dict[tuple[str, str, int], dict[str, Any]] = {}  # (user, sha256, ms) -> photo
        self.received = 0
        self.ignored = 0
        self.folder = Path(folder) if folder else None

    def add(self, user: str, data: bytes, filename: str, secs: float) -> tuple[dict[str, Any], bool]:
        """Store one upload; returns (the photo, whether it was new). Same picture and same
        time (to the millisecond) is ignored; same picture at another time is a new photo."""
        sha = hashlib.sha256(data).hexdigest()
        key = (user, sha, round(secs * 1000))
        with self.lock:
            self.received += 1
            if key in self.index:
                self.ignored += 1
                return self.index[key], False
            photo = {"id": len(self.photos) + 1, "user": user, "sha256": sha, "capture_time_secs_utc": secs,
                     "filename": filename, "bytes": len(data), "at": time.time()}
            self.photos.append(photo)
            self.index[key] = photo
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / f"{photo['id']:06d}-{sha[:12]}.jpg").write_bytes(data)
        return photo, True

    def stats(self) -> dict[str, Any]:
        with self.lock:
            per_picture: dict[tuple[str, str], int] = {}
            for p in self.photos:
                key = (p["user"], p["sha256"])
                per_picture[key] = per_picture.get(key, 0) + 1
            return {
                "uploads_received": self.received,
                "stored": len(self.photos),
                "ignored_repeats": self.ignored,
                "duplicates": sum(n - 1 for n in per_picture.values()),
                "distinct_pictures": len(per_picture),
            }

    def reset(self) -> None:
        with self.lock:
            self.photos.clear()
            self.index.clear()
            self.received = self.ignored = 0


def create_app(users: dict[str, str] | None = None, *, store: PhotoStore | None = None) -> Flask:
    """The Flask app; ``users`` maps usernames to passwords (default ``anne: s3cret-pw``)."""
    app = Flask("sandbox-upload-api")
    users = dict(users or {"anne": "s3cret-pw"})
    guests = {name: 1000 + i for i, name in enumerate(sorted(users))}
    store = store or PhotoStore()
    app.config["store"] = store
    app.config["accept_then_fail"] = crash = AcceptThenFail()

    def user() -> str | None:
        auth = request.authorization
        if auth and auth.type == "basic" and users.get(auth.username) == auth.password and auth.password:
            return auth.username
        return None

    def denied():
        resp = jsonify({"result": "KO", "message": "Authentication required"})
        resp.status_code = 401
        resp.headers["WWW-Authenticate"] = 'Basic realm="fluxtream"'
        return resp

    @app.get("/api/guest")
    def guest():
        name = user()
        if not name:
            return denied()
        return jsonify({"id": guests[name], "username": name})

    @app.post(UPLOAD_PATH)
    def photo_upload():
        name = user()
        if not name:
            return denied()
        if request.args.get("connector_name", "fluxtream_capture") != "fluxtream_capture":
            return jsonify({"result": "KO", "message": "unknown connector"}), 400
        upload = request.files.get("photo")
        if upload is None:
            return jsonify({"result": "KO", "message": "missing 'photo' file field"}), 400
        try:
            meta = json.loads(request.form.get("metadata", ""))
            secs = float(meta["capture_time_secs_utc"])
        except (ValueError, KeyError, TypeError):
            return jsonify({"result": "KO", "message": "metadata must be JSON with capture_time_secs_utc"}), 400
        if not (0 < secs < 4102444800):  # 1970 .. 2100
            return jsonify({"result": "KO", "message": "capture_time_secs_utc out of range"}), 400
        data = upload.read()
        if not data:
            return jsonify({"result": "KO", "message": "empty photo"}), 400
        photo, new = store.add(name, data, upload.filename or "photo.jpg", secs)
        if crash.strike(request.environ):
            return jsonify({"result": "KO", "message": "internal error after commit"}), 500
        return jsonify({"result": "OK", "id": photo["id"], "new": new})

    @app.get("/sandbox/photos")
    def photos():
        with store.lock:
            return jsonify({"photos": list(store.photos)})

    @app.get("/sandbox/stats")
    def stats():
        return jsonify(store.stats())

    @app.post("/sandbox/reset")
    def reset():
        store.reset()
        return jsonify({"reset": True})

    @app.post("/sandbox/accept_then_fail")
    def accept_then_fail():
        return jsonify(crash.arm_from(request.get_json(silent=True)))

    return app


class UploadAPI(Service):
    """The upload API served on 127.0.0.1 with fault injection: ``with UploadAPI() as api: api.url``."""

    def __init__(self, users: dict[str, str] | None = None, *, folder: Path | None = None,
                 faults: list[dict[str, Any]] | None = None) -> None:
        self.store = PhotoStore(folder)
        self.app = create_app(users, store=self.store)
        self.faults = FaultPlan(faults or ())
        self.wsgi = FaultInjector(self.app, self.faults)

    @property
    def upload_url(self) -> str:
        return f"{self.server.url}{UPLOAD_PATH}?connector_name=fluxtream_capture"

    def accept_then_fail(self, times: int = 1, mode: str = "error") -> None:
        """The next ``times`` uploads are stored, then answered with an error (or a reset)."""
        self.app.config["accept_then_fail"].arm(times, mode)


def main() -> None:  # pragma: no cover - manual use
    """Serve the upload API until interrupted (``python -m sandbox.upload_api``)."""
    api = UploadAPI().start()
    api.serve_until_interrupted(f"upload API on {api.upload_url} (user anne, password s3cret-pw)")


if __name__ == "__main__":  # pragma: no cover
    main()
