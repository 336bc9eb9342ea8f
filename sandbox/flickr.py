"""A Flickr stand-in: the REST methods and the replace endpoint the hi-res flow calls.

What it copies from the real service, because the flow depends on it:

* ``/services/rest/`` answers ``format=json&nojsoncallback=1`` with Flickr's JSON shapes,
  strings and numbers mixed the way Flickr mixes them (``"total": "250"`` but
  ``"page": 1``; ``"o_width": "1024"`` but ``"width_o": 1024``), ``stat: ok`` or
  ``stat: fail`` with ``code`` and ``message``. Methods: ``people.getPhotos``,
  ``photosets.getPhotos`` (paginated, with ``extras``), ``photos.getInfo``,
  ``photos.setDates``, ``photos.getSizes``, ``people.getLimits``, ``test.login``.
* ``/services/replace/`` takes a multipart upload and answers XML; like the real
  service it **resets "date taken" from the new file's EXIF DateTimeOriginal**.
* OAuth 1.0a: requests must carry an ``Authorization: OAuth ...`` header (or
  ``oauth_*`` parameters) with a consumer key, a signature, and, for writes, the
  account's token. Signatures are checked for presence, not recomputed.
* Faults can be injected per method: Flickr error codes (105 "Service currently
  unavailable", 106 "Write operation failed") or HTTP statuses (502, 503), every
  n-th call or a number of times, and uploads above a size can stall.
* Images are served over HTTP at ``/<server>/<id>_<secret>_o.<format>``.

Tests and the demo read the ground truth (how many times each photo was replaced,
its current date taken) from :class:`FlickrState` directly.
"""

from __future__ import annotations

import io
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from flask import Flask, Response, abort, jsonify, request, send_file

from sandbox.server import Server, serve

# Flickr's documented error codes (the subset the flow can meet).
ERRORS = {
    1: "Photo not found",
    2: "Invalid date taken",
    3: "General upload failure",
    4: "Filesize was zero",
    5: "Filetype was not recognised",
    6: "User exceeded upload limit",
    95: "SSL is required",
    96: "Invalid signature",
    97: "Missing signature",
    98: "Invalid auth token",
    99: "Insufficient permissions. Method requires write privileges; none granted.",
    100: "Invalid API Key (Key not found)",
    105: "Service currently unavailable",
    106: "Write operation failed",
    112: "Method not found",
}

WRITE_METHODS = {"flickr.photos.setDates", "replace"}
GRANULARITIES = {0, 4, 6, 8}


@dataclass
class Photo:
    """One photo in the account: its current original file and its metadata."""

    id: str
    title: str
    description: str
    taken: str  # "YYYY-MM-DD HH:MM:SS"
    granularity: int
    path: Path  # current original
    width: int
    height: int
    originalformat: str
    secret: str = "a1b2c3d4e5"
    originalsecret: str = "f6e5d4c3b2"
    server: str = "65535"
    posted: int = 1291939201
    lastupdate: int = 1291939201
    takenunknown: int = 0
    replaced: int = 0  # how many times the replace endpoint succeeded on it
    photoset: str | None = None


@dataclass
class Fault:
    """An injected failure: a Flickr error ``code`` or an HTTP ``status`` for ``method``
    (``"replace"`` for the replace endpoint), on every ``every``-th call or the next
    ``times`` calls, optionally only for one ``photo_id``."""

    method: str
    code: int | None = None
    status: int | None = None
    every: int | None = None
    times: int | None = None
    photo_id: str | None = None
    seen: int = 0
    fired: int = 0

    def fires(self, method: str, photo_id: str | None) -> bool:
        if method != self.method or (self.photo_id and photo_id != self.photo_id):
            return False
        self.seen += 1
        if self.every:
            hit = self.seen % self.every == 0
        else:
            hit = self.times is None or self.fired < self.times
        if hit:
            self.fired += 1
        return hit


@dataclass
class FlickrState:
    """The account behind the stand-in: credentials, photos, limits, faults, a call log."""

    api_key: str = "sandbox-key"
    api_secret: str = "sandbox-secret"
    token: str = "sandbox-token"
    token_secret: str = "sandbox-token-secret"
    nsid: str = "12345678@N00"
    username: str = "library-commons"
    max_upload: int = 209_715_200  # people.getLimits photos.maxupload (200 MB)
    stall_uploads_over: int | None = None  # uploads larger than this stall...
    stall_seconds: float = 5.0  # ...for this long before failing
    photos: dict[str, Photo] = field(default_factory=dict)
    photosets: dict[str, list[str]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: list[tuple[str, str | None, float]] = field(default_factory=list)
    store: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flickr-store-")))
    lock: threading.RLock = field(default_factory=threading.RLock)

    def add_photo(self, photo_id: str, image_path: str | Path, *, title: str = "", description: str = "",
                  taken: str = "1935-01-01 00:00:00", granularity: int = 6, photoset: str | None = None,
                  posted: int | None = None) -> Photo:
        """Put a photo in the account (its file is copied into the stand-in's store)."""
        from PIL import Image

        src = Path(image_path)
        with Image.open(src) as im:
            w, h, fmt = im.width, im.height, _format_name(im.format)
        dest = self.store / f"{photo_id}_0.{fmt}"
        shutil.copyfile(src, dest)
        p = Photo(id=str(photo_id), title=title, description=description, taken=taken, granularity=granularity,
                  path=dest, width=w, height=h, originalformat=fmt, photoset=photoset,
                  posted=posted or 1291939201 + len(self.photos))
        with self.lock:
            self.photos[p.id] = p
            if photoset:
                self.photosets.setdefault(photoset, []).append(p.id)
        return p

    def inject(self, method: str, *, code: int | None = None, status: int | None = None, every: int | None = None,
               times: int | None = None, photo_id: str | None = None) -> Fault:
        """Add a fault (see :class:`Fault`); returns it so a test can read ``fired``."""
        f = Fault(method, code=code, status=status, every=every, times=times, photo_id=photo_id)
        with self.lock:
            self.faults.append(f)
        return f

    def calls_to(self, method: str) -> int:
        with self.lock:
            return sum(1 for m, _, _ in self.calls if m == method)


def _format_name(pil_format: str | None) -> str:
    return {"JPEG": "jpg", "TIFF": "tiff", "PNG": "png", "GIF": "gif"}.get(pil_format or "", "jpg")


# -- OAuth ----------------------------------------------------------------------------------

_OAUTH_PARAM = re.compile(r'(oauth_[a-z_]+)="([^"]*)"')


def _oauth_params() -> dict[str, str]:
    """The OAuth 1.0a parameters of the current request (header first, then form/query)."""
    header = request.headers.get("Authorization", "")
    params: dict[str, str] = {}
    if header.startswith("OAuth "):
        params = {k: unquote(v) for k, v in _OAUTH_PARAM.findall(header)}
    for k, v in request.values.items():
        if k.startswith("oauth_"):
            params.setdefault(k, v)
    return params


def _check_auth(state: FlickrState, method: str) -> tuple[int, str] | None:
    """``None`` when the request may proceed, else the Flickr error (code, message)."""
    oauth = _oauth_params()
    key = oauth.get("oauth_consumer_key") or request.values.get("api_key")
    if not key:
        return 100, ERRORS[100]
    if key != state.api_key:
        return 100, ERRORS[100]
    if oauth:
        if not oauth.get("oauth_signature"):
            return 97, ERRORS[97]
        if oauth.get("oauth_signature_method") not in ("HMAC-SHA1", "PLAINTEXT", None):
            return 96, ERRORS[96]
    token = oauth.get("oauth_token")
    if token is not None and token != state.token:
        return 98, ERRORS[98]
    if method in WRITE_METHODS or request.values.get("user_id") == "me" or method == "flickr.people.getLimits":
        if token != state.token:
            return 99, ERRORS[99]
    return None


# -- JSON shapes -----------------------------------------------------------------------------

def _photo_list_entry(state: FlickrState, p: Photo, extras: set[str], base: str) -> dict[str, Any]:
    """One ``photo`` element of a people.getPhotos / photosets.getPhotos page."""
    d: dict[str, Any] = {"id": p.id, "owner": state.nsid, "secret": p.secret, "server": p.server, "farm": 66,
                         "title": p.title, "ispublic": 1, "isfriend": 0, "isfamily": 0}
    if "description" in extras:
        d["description"] = {"_content": p.description}
    if "date_taken" in extras:
        d["datetaken"] = p.taken
        d["datetakengranularity"] = str(p.granularity)  # a string in people.getPhotos
        d["datetakenunknown"] = str(p.takenunknown)
    if "original_format" in extras:
        d["originalsecret"] = p.originalsecret
        d["originalformat"] = p.originalformat
    if "o_dims" in extras:
        d["o_width"] = str(p.width)  # strings here...
        d["o_height"] = str(p.height)
    if "url_o" in extras:
        d["url_o"] = _url(base, p, "o")
        d["height_o"] = p.height  # ...numbers there
        d["width_o"] = p.width
    return d


def _url(base: str, p: Photo, size: str) -> str:
    secret = p.originalsecret if size == "o" else p.secret
    fmt = p.originalformat if size == "o" else "jpg"
    return f"{base}/{p.server}/{p.id}_{secret}_{size}.{fmt}"


def _page(ids: list[str]) -> tuple[list[str], int, int, int]:
    per_page = max(1, min(500, int(request.values.get("per_page") or 100)))
    page = max(1, int(request.values.get("page") or 1))
    pages = max(1, -(-len(ids) // per_page))
    return ids[(page - 1) * per_page: page * per_page], page, pages, per_page


def _extras() -> set[str]:
    return {e.strip() for e in (request.values.get("extras") or "").split(",") if e.strip()}


def create_app(state: FlickrState) -> Flask:
    """The stand-in as a Flask app bound to ``state``."""
    app = Flask("flickr-sandbox")
    app.config["state"] = state

    def base() -> str:
        return request.host_url.rstrip("/")

    def fail(code: int, message: str | None = None) -> Response:
        return jsonify({"stat": "fail", "code": code, "message": message or ERRORS.get(code, "Error")})

    def injected(method: str, photo_id: str | None) -> Response | None:
        with state.lock:
            fault = next((f for f in state.faults if f.fires(method, photo_id)), None)
        if fault is None:
            return None
        if fault.status:
            return Response(f"<html><body><h1>{fault.status}</h1>upstream trouble</body></html>",
                            status=fault.status, mimetype="text/html")
        if method == "replace":
            return _xml_fail(fault.code or 105)
        return fail(fault.code or 105)

    def photo_or_none(photo_id: str | None) -> Photo | None:
        with state.lock:
            return state.photos.get(str(photo_id)) if photo_id else None

    @app.route("/services/rest/", methods=["GET", "POST"])
    def rest() -> Response:
        method = request.values.get("method", "")
        photo_id = request.values.get("photo_id")
        with state.lock:
            state.calls.append((method, photo_id, time.time()))
        if request.values.get("format") != "json" or request.values.get("nojsoncallback") != "1":
            # the stand-in only speaks the JSON the flow asks for
            return fail(111, "Format not found (the sandbox answers format=json&nojsoncallback=1)")
        denied = _check_auth(state, method)
        if denied:
            return fail(*denied)
        bad = injected(method, photo_id)
        if bad is not None:
            return bad
        handler = METHODS.get(method)
        if handler is None:
            return fail(112, f'Method "{method}" not found')
        return handler()

    def test_login() -> Response:
        return jsonify({"user": {"id": state.nsid, "username": {"_content": state.username}, "path_alias": None},
                        "stat": "ok"})

    def people_get_photos() -> Response:
        user = request.values.get("user_id", "me")
        if user not in ("me", state.nsid):
            return fail(2, "Unknown user")
        with state.lock:
            ids = sorted(state.photos, key=lambda i: (-state.photos[i].posted, i))
            chunk, page, pages, per_page = _page(ids)
            extras = _extras()
            photos = [_photo_list_entry(state, state.photos[i], extras, base()) for i in chunk]
        return jsonify({"photos": {"page": page, "pages": pages, "perpage": per_page, "total": str(len(ids)),
                                   "photo": photos}, "stat": "ok"})

    def photosets_get_photos() -> Response:
        set_id = request.values.get("photoset_id", "")
        with state.lock:
            if set_id not in state.photosets:
                return fail(1, "Photoset not found")
            ids = list(state.photosets[set_id])
            chunk, page, pages, per_page = _page(ids)
            extras = _extras()
            photos = [_photo_list_entry(state, state.photos[i], extras, base()) | {"isprimary": "0"} for i in chunk]
        return jsonify({"photoset": {"id": set_id, "primary": ids[0] if ids else "", "owner": state.nsid,
                                     "ownername": state.username, "photo": photos, "page": page,
                                     "per_page": str(per_page), "perpage": str(per_page), "pages": pages,
                                     "title": f"Set {set_id}", "total": str(len(ids))}, "stat": "ok"})

    def photos_get_info() -> Response:
        p = photo_or_none(request.values.get("photo_id"))
        if p is None:
            return fail(1)
        return jsonify({"photo": {
            "id": p.id, "secret": p.secret, "server": p.server, "farm": 66, "dateuploaded": str(p.posted),
            "isfavorite": 0, "license": "7", "safety_level": "0", "rotation": 0,
            "originalsecret": p.originalsecret, "originalformat": p.originalformat,
            "owner": {"nsid": state.nsid, "username": state.username, "realname": "", "location": ""},
            "title": {"_content": p.title}, "description": {"_content": p.description},
            "visibility": {"ispublic": 1, "isfriend": 0, "isfamily": 0},
            "dates": {"posted": str(p.posted), "taken": p.taken, "takengranularity": p.granularity,
                      "takenunknown": str(p.takenunknown), "lastupdate": str(p.lastupdate)},
            "views": "42", "media": "photo",
            "urls": {"url": [{"type": "photopage", "_content": f"{base()}/photos/{state.nsid}/{p.id}/"}]},
        }, "stat": "ok"})

    def photos_set_dates() -> Response:
        p = photo_or_none(request.values.get("photo_id"))
        if p is None:
            return fail(1)
        taken = request.values.get("date_taken")
        gran = request.values.get("date_taken_granularity")
        if taken is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}( \d{2}:\d{2}:\d{2})?", taken):
            return fail(2, "Invalid date taken")
        if gran is not None and (not gran.isdigit() or int(gran) not in GRANULARITIES):
            return fail(3, "Invalid granularity")
        with state.lock:
            if taken is not None:
                p.taken = taken if " " in taken else taken + " 00:00:00"
                p.takenunknown = 0
            if gran is not None:
                p.granularity = int(gran)
            p.lastupdate = int(time.time())
        return jsonify({"stat": "ok"})

    def photos_get_sizes() -> Response:
        p = photo_or_none(request.values.get("photo_id"))
        if p is None:
            return fail(1)
        sizes = []
        for label, edge, code in (("Square", 75, "s"), ("Small", 240, "m"), ("Medium", 500, "z")):
            scale = min(1.0, edge / max(p.width, p.height))
            w, h = (edge, edge) if code == "s" else (round(p.width * scale), round(p.height * scale))
            sizes.append({"label": label, "width": w, "height": h, "source": _url(base(), p, code),
                          "url": f"{base()}/photos/{state.nsid}/{p.id}/sizes/{code}/", "media": "photo"})
        sizes.append({"label": "Original", "width": str(p.width), "height": str(p.height),
                      "source": _url(base(), p, "o"), "url": f"{base()}/photos/{state.nsid}/{p.id}/sizes/o/",
                      "media": "photo"})
        return jsonify({"sizes": {"canblog": 0, "canprint": 0, "candownload": 1, "size": sizes}, "stat": "ok"})

    def people_get_limits() -> Response:
        return jsonify({"person": {"nsid": state.nsid,
                                   "photos": {"maxdisplaypx": "0", "maxupload": str(state.max_upload)},
                                   "videos": {"maxduration": "180", "maxupload": "1073741824"}}, "stat": "ok"})

    METHODS = {
        "flickr.test.login": test_login,
        "flickr.people.getPhotos": people_get_photos,
        "flickr.photosets.getPhotos": photosets_get_photos,
        "flickr.photos.getInfo": photos_get_info,
        "flickr.photos.setDates": photos_set_dates,
        "flickr.photos.getSizes": photos_get_sizes,
        "flickr.people.getLimits": people_get_limits,
    }

    @app.route("/services/replace/", methods=["POST"])
    def replace() -> Response:
        photo_id = request.form.get("photo_id")
        with state.lock:
            state.calls.append(("replace", photo_id, time.time()))
        denied = _check_auth(state, "replace")
        if denied:
            return _xml_fail(*denied)
        bad = injected("replace", photo_id)
        if bad is not None:
            return bad
        p = photo_or_none(photo_id)
        if p is None:
            return _xml_fail(7, "Photo not found")
        upload = request.files.get("photo")
        if upload is None:
            return _xml_fail(2, "No photo specified")
        tmp = state.store / f".incoming-{photo_id}-{threading.get_ident()}"
        upload.save(tmp)  # streamed to disk, never held whole in memory
        size = tmp.stat().st_size
        if size == 0:
            tmp.unlink()
            return _xml_fail(4)
        if state.stall_uploads_over is not None and size > state.stall_uploads_over:
            time.sleep(state.stall_seconds)  # what the real service did with files over 200 MB
            tmp.unlink()
            return _xml_fail(3)
        if size > state.max_upload:
            tmp.unlink()
            return _xml_fail(6)
        try:
            width, height, fmt, exif_taken = _read_upload(tmp)
        except Exception:
            tmp.unlink()
            return _xml_fail(5)
        with state.lock:
            dest = state.store / f"{p.id}_{p.replaced + 1}.{fmt}"
            tmp.replace(dest)
            p.path, p.width, p.height, p.originalformat = dest, width, height, fmt
            p.replaced += 1
            p.secret = f"{p.replaced:02d}" + p.secret[2:]
            p.originalsecret = f"{p.replaced:02d}" + p.originalsecret[2:]
            p.lastupdate = int(time.time())
            if exif_taken:  # the real service resets date taken from the new file's EXIF
                p.taken, p.granularity, p.takenunknown = exif_taken, 0, 0
            secret, osecret = p.secret, p.originalsecret
        xml = (f'<?xml version="1.0" encoding="utf-8" ?>\n<rsp stat="ok">\n'
               f'<photoid secret="{secret}" originalsecret="{osecret}">{p.id}</photoid>\n</rsp>\n')
        return Response(xml, mimetype="text/xml")

    @app.route("/<server>/<name>")
    def image(server: str, name: str) -> Response:
        m = re.fullmatch(r"(\d+)_([0-9a-z]+)_([a-z])\.(\w+)", name)
        if not m:
            abort(404)
        p = photo_or_none(m.group(1))
        if p is None or server != p.server:
            abort(404)
        size = m.group(3)
        if (size == "o" and m.group(2) != p.originalsecret) or (size != "o" and m.group(2) != p.secret):
            abort(404)  # an old URL after a replace, as on the real service
        bad = injected("image", p.id)
        if bad is not None:
            return bad
        if size == "o":
            return send_file(p.path, mimetype=_MIME.get(p.originalformat, "application/octet-stream"))
        from PIL import Image

        edge = {"s": 75, "m": 240, "z": 500}.get(size, 500)
        with Image.open(p.path) as im:
            im = im.convert("RGB")
            im.thumbnail((edge, edge))
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
        return Response(buf.getvalue(), mimetype="image/jpeg")

    return app


_MIME = {"jpg": "image/jpeg", "tiff": "image/tiff", "png": "image/png", "gif": "image/gif"}


def _xml_fail(code: int, message: str | None = None) -> Response:
    msg = message or ERRORS.get(code, "Error")
    xml = f'<?xml version="1.0" encoding="utf-8" ?>\n<rsp stat="fail">\n<err code="{code}" msg="{msg}" />\n</rsp>\n'
    return Response(xml, mimetype="text/xml")


def _read_upload(path: Path) -> tuple[int, int, str, str | None]:
    """Width, height, format and EXIF DateTimeOriginal ("YYYY-MM-DD HH:MM:SS") of an upload."""
    from PIL import Image

    with Image.open(path) as im:
        w, h, fmt = im.width, im.height, _format_name(im.format)
        exif = im.getexif()
        raw = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
    taken = None
    if raw:
        m = re.match(r"(\d{4}):(\d{2}):(\d{2}) (\d{2}):(\d{2}):(\d{2})", str(raw))
        if m:
            taken = "{}-{}-{} {}:{}:{}".format(*m.groups())
    return w, h, fmt, taken


def serve_flickr(state: FlickrState) -> Server:
    """Serve the stand-in for ``state`` on 127.0.0.1; ``server.url`` is its base URL."""
    return serve(create_app(state))


def endpoints(base_url: str) -> dict[str, str]:
    """The REST and replace URLs of a stand-in served at ``base_url``."""
    return {"rest_url": f"{base_url}/services/rest/", "replace_url": f"{base_url}/services/replace/"}
