"""A Flickr stand-in: the REST methods and the replace endpoint the hi-res flow calls.

What it copies from the real service, because the flow depends on it:

* ``/services/rest/`` answers ``format=json&nojsoncallback=1`` with Flickr's JSON shapes,
  strings and numbers mixed the way Flickr mixes them (``"total": "250"`` but
  ``"page": 1``; ``"o_width": "1024"`` but ``"width_o": 1024``), ``stat: ok`` or
  ``stat: fail`` with ``code`` and ``message``. Methods: ``people.getPhotos``,
  ``photosets.getPhotos`` (paginated, with ``extras``: dates and their granularity,
  geo, tags, visibility, media, last update, ``url_*`` of every size offered),
  ``photosets.getList``, ``photos.getInfo``, ``photos.setDates``, ``photos.getSizes``
  (videos: ``Video Original`` and ``Site MP4`` streams), ``people.getLimits``,
  ``test.login``.
* Accounts as people have them: a Pro account offering originals, or one offering no
  original and no copy larger than ``max_size`` (1024 pixels: a free account's);
  public and private photos (only the token's owner sees private ones); photos in
  several albums; videos; dates exact, to the month, the year, or "circa".
* ``/services/replace/`` takes a multipart upload and answers XML; like the real
  service it **resets "date taken" from the new file's EXIF DateTimeOriginal**.
* OAuth 1.0a: requests must carry an ``Authorization: OAuth ...`` header (or
  ``oauth_*`` parameters) with a consumer key, a signature, and, for writes, the
  account's token. Signatures are checked for presence, not recomputed.
* Faults can be injected per method: Flickr error codes (105 "Service currently
  unavailable", 106 "Write operation failed") or HTTP statuses (502, 503), every
  n-th call or a number of times, and uploads above a size can stall.
* Images are served over HTTP at ``/<server>/<id>_<secret>[_<size>].<format>`` (smaller
  sizes resized on the fly, never upscaled), videos at
  ``/photos/<nsid>/<id>/play/<orig|site>/<secret>/``. ``latency`` delays every answer
  (a real service's round trip, for the benchmark).

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
    media: str = "photo"  # or "video" (``path`` is then the video file)
    ispublic: int = 1
    isfriend: int = 0
    isfamily: int = 0
    tags: list[str] = field(default_factory=list)
    latitude: float | None = None
    longitude: float | None = None
    accuracy: int = 16  # Flickr's 1 (world) .. 16 (street)


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
    max_size: int | None = None  # None: originals offered; else no original and no copy above this edge
    latency: float = 0.0  # seconds before every answer (REST, images, videos)
    photos: dict[str, Photo] = field(default_factory=dict)
    photosets: dict[str, list[str]] = field(default_factory=dict)
    photoset_titles: dict[str, str] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)
    calls: list[tuple[str, str | None, float]] = field(default_factory=list)
    store: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="flickr-store-")))
    lock: threading.RLock = field(default_factory=threading.RLock)

    def add_photo(self, photo_id: str, image_path: str | Path, *, title: str = "", description: str = "",
                  taken: str = "1935-01-01 00:00:00", granularity: int = 6, photoset: str | None = None,
                  posted: int | None = None, video: tuple[int, int] | None = None, **more: Any) -> Photo:
        """Put a photo in the account (its file is copied into the stand-in's store).

        ``video=(width, height)`` makes it a video (the file is not decoded); ``more``
        sets other :class:`Photo` fields (``ispublic``, ``tags``, ``latitude``...)."""
        src = Path(image_path)
        if video is not None:
            (w, h), fmt = video, src.suffix.lstrip(".").lower() or "mp4"
        else:
            from PIL import Image

            with Image.open(src) as im:
                w, h, fmt = im.width, im.height, _format_name(im.format)
        dest = self.store / f"{photo_id}_0.{fmt}"
        shutil.copyfile(src, dest)
        posted = posted or 1291939201 + len(self.photos)
        p = Photo(id=str(photo_id), title=title, description=description, taken=taken, granularity=granularity,
                  path=dest, width=w, height=h, originalformat=fmt, photoset=photoset, posted=posted,
                  lastupdate=posted, media="video" if video is not None else "photo", **more)
        with self.lock:
            self.photos[p.id] = p
            if photoset:
                self.photosets.setdefault(photoset, []).append(p.id)
        return p

    def add_to_album(self, set_id: str, photo_id: str, title: str | None = None) -> None:
        """Put a photo in an album (a photoset), creating the album with ``title``."""
        with self.lock:
            self.photosets.setdefault(set_id, [])
            if title is not None or set_id not in self.photoset_titles:
                self.photoset_titles[set_id] = title or f"Set {set_id}"
            if photo_id not in self.photosets[set_id]:
                self.photosets[set_id].append(photo_id)

    def edit(self, photo_id: str, **changes: Any) -> Photo:
        """Change a photo's metadata as its owner would on the site (its last update moves on)."""
        with self.lock:
            p = self.photos[photo_id]
            for k, v in changes.items():
                setattr(p, k, v)
            p.lastupdate = max(int(time.time()), p.lastupdate + 1)
            return p

    def delete(self, photo_id: str) -> None:
        """Delete a photo from the account (and from its albums)."""
        with self.lock:
            self.photos.pop(photo_id, None)
            for ids in self.photosets.values():
                if photo_id in ids:
                    ids.remove(photo_id)

    def offers(self, edge: int) -> bool:
        """Whether the account offers copies with this longest edge."""
        return self.max_size is None or edge <= self.max_size

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

#: Flickr's sizes: (extras key, URL suffix, label, longest edge); "sq" and "q" are square crops
SIZES = (
    ("sq", "s", "Square", 75), ("q", "q", "Large Square", 150), ("t", "t", "Thumbnail", 100),
    ("s", "m", "Small", 240), ("n", "n", "Small 320", 320), ("m", "", "Medium", 500),
    ("z", "z", "Medium 640", 640), ("c", "c", "Medium 800", 800), ("l", "b", "Large", 1024),
    ("h", "h", "Large 1600", 1600), ("k", "k", "Large 2048", 2048),
)
_EDGE = {suffix: edge for _, suffix, _, edge in SIZES}
_SQUARE = {"s", "q"}


def _offered(state: FlickrState, p: Photo) -> list[tuple[str, str, str, int, int, int]]:
    """The sizes the account offers of a photo: (key, suffix, label, edge, width, height),
    smallest first; only sizes smaller than the original (Flickr never upscales)."""
    out = []
    longest = max(p.width, p.height)
    for key, suffix, label, edge in SIZES:
        if not state.offers(edge):
            continue
        if suffix in _SQUARE:
            out.append((key, suffix, label, edge, min(edge, longest), min(edge, longest)))
        elif edge < longest:
            scale = edge / longest
            out.append((key, suffix, label, edge, round(p.width * scale), round(p.height * scale)))
    return out


def _visibility(p: Photo) -> dict[str, int]:
    return {"ispublic": p.ispublic, "isfriend": p.isfriend, "isfamily": p.isfamily}


def _photo_list_entry(state: FlickrState, p: Photo, extras: set[str], base: str) -> dict[str, Any]:
    """One ``photo`` element of a people.getPhotos / photosets.getPhotos page."""
    d: dict[str, Any] = {"id": p.id, "owner": state.nsid, "secret": p.secret, "server": p.server, "farm": 66,
                         "title": p.title, **_visibility(p)}
    originals = state.max_size is None
    if "description" in extras:
        d["description"] = {"_content": p.description}
    if "date_upload" in extras:
        d["dateupload"] = str(p.posted)
    if "date_taken" in extras:
        d["datetaken"] = p.taken
        d["datetakengranularity"] = str(p.granularity)  # a string in people.getPhotos
        d["datetakenunknown"] = str(p.takenunknown)
    if "last_update" in extras:
        d["lastupdate"] = str(p.lastupdate)
    if "tags" in extras:
        d["tags"] = " ".join(p.tags)
    if "geo" in extras:
        if p.latitude is not None and p.longitude is not None:
            d.update(latitude=p.latitude, longitude=p.longitude, accuracy=str(p.accuracy), context=0,
                     place_id="", woeid="", geo_is_public=1)
        else:  # Flickr answers zeros for a photo with no place
            d.update(latitude=0, longitude=0, accuracy=0, context=0)
    if "media" in extras:
        d["media"] = p.media
        d["media_status"] = "ready"
    if "original_format" in extras and originals:
        d["originalsecret"] = p.originalsecret
        d["originalformat"] = p.originalformat
    if "o_dims" in extras and originals:
        d["o_width"] = str(p.width)  # strings here...
        d["o_height"] = str(p.height)
    for key, suffix, _, _, w, h in _offered(state, p):
        if f"url_{key}" in extras:
            d[f"url_{key}"] = _url(base, p, suffix)
            d[f"height_{key}"], d[f"width_{key}"] = h, w
    if "url_o" in extras and originals:
        d["url_o"] = _url(base, p, "o")
        d["height_o"] = p.height  # ...numbers there
        d["width_o"] = p.width
    return d


def _url(base: str, p: Photo, size: str) -> str:
    """A static image URL: ``size`` is a URL suffix ("" for Medium 500, "o" for the
    original; a video's "original" image is its poster frame, a JPEG)."""
    secret = p.originalsecret if size == "o" else p.secret
    fmt = p.originalformat if size == "o" and p.media == "photo" else "jpg"
    return f"{base}/{p.server}/{p.id}_{secret}{'_' + size if size else ''}.{fmt}"


def _play_url(base: str, state: FlickrState, p: Photo, kind: str) -> str:
    secret = p.originalsecret if kind == "orig" else p.secret
    return f"{base}/photos/{state.nsid}/{p.id}/play/{kind}/{secret}/"


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
        if state.latency:
            time.sleep(state.latency)
        fmt = request.values.get("format")
        as_xml = fmt == "rest"
        if not as_xml and (fmt != "json" or request.values.get("nojsoncallback") != "1"):
            # the stand-in speaks JSON as the flow asks for it, and the XML flickrapi's etree parser reads
            return fail(111, "Format not found (the sandbox answers format=json&nojsoncallback=1 or format=rest)")
        denied = _check_auth(state, method)
        handler = METHODS.get(method)
        if denied:
            resp = fail(*denied)
        elif (bad := injected(method, photo_id)) is not None:
            resp = bad
        elif handler is None:
            resp = fail(112, f'Method "{method}" not found')
        else:
            resp = handler()
        if as_xml and resp.mimetype == "application/json":
            return Response(_rest_xml(resp.get_json()), mimetype="text/xml")
        return resp

    def test_login() -> Response:
        return jsonify({"user": {"id": state.nsid, "username": {"_content": state.username}, "path_alias": None},
                        "stat": "ok"})

    def owner_asks() -> bool:
        """Whether the request carries the account owner's token (who sees private photos)."""
        return _oauth_params().get("oauth_token") == state.token

    def visible(ids: list[str]) -> list[str]:
        """The photos this caller may see, of the media asked for (``media``: all, photos, videos)."""
        media = request.values.get("media") or "all"
        mine = owner_asks()
        return [i for i in ids if (mine or state.photos[i].ispublic)
                and media in ("all", state.photos[i].media + "s")]

    def people_get_photos() -> Response:
        user = request.values.get("user_id", "me")
        if user not in ("me", state.nsid):
            return fail(2, "Unknown user")
        with state.lock:
            ids = visible(sorted(state.photos, key=lambda i: (-state.photos[i].posted, i)))
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
            ids = visible(list(state.photosets[set_id]))
            chunk, page, pages, per_page = _page(ids)
            extras = _extras()
            photos = [_photo_list_entry(state, state.photos[i], extras, base()) | {"isprimary": "0"} for i in chunk]
        return jsonify({"photoset": {"id": set_id, "primary": ids[0] if ids else "", "owner": state.nsid,
                                     "ownername": state.username, "photo": photos, "page": page,
                                     "per_page": str(per_page), "perpage": str(per_page), "pages": pages,
                                     "title": state.photoset_titles.get(set_id, f"Set {set_id}"),
                                     "total": str(len(ids))}, "stat": "ok"})

    def photosets_get_list() -> Response:
        user = request.values.get("user_id") or state.nsid
        if user not in ("me", state.nsid):
            return fail(1, "User not found")
        with state.lock:
            set_ids = list(state.photosets)
            chunk, page, pages, per_page = _page(set_ids)
            sets = []
            for sid in chunk:
                members = visible(list(state.photosets[sid]))
                videos = sum(1 for i in members if state.photos[i].media == "video")
                sets.append({"id": sid, "primary": members[0] if members else "", "secret": "0f0f0f0f0f",
                             "server": "65535", "farm": 66, "count_views": "0", "count_comments": "0",
                             "count_photos": len(members) - videos, "count_videos": videos,
                             "title": {"_content": state.photoset_titles.get(sid, f"Set {sid}")},
                             "description": {"_content": ""}, "photos": len(members) - videos,
                             "videos": videos, "date_create": "1291939201", "date_update": "1291939201"})
        return jsonify({"photosets": {"page": page, "pages": pages, "perpage": per_page, "total": len(set_ids),
                                      "photoset": sets}, "stat": "ok"})

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
            "visibility": _visibility(p),
            "tags": {"tag": [{"id": f"{p.id}-{t}", "raw": t, "_content": t} for t in p.tags]},
            **({"location": {"latitude": str(p.latitude), "longitude": str(p.longitude),
                             "accuracy": str(p.accuracy)}} if p.latitude is not None else {}),
            "dates": {"posted": str(p.posted), "taken": p.taken, "takengranularity": p.granularity,
                      "takenunknown": str(p.takenunknown), "lastupdate": str(p.lastupdate)},
            "views": "42", "media": p.media,
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
        if p is None or not (p.ispublic or owner_asks()):
            return fail(1)
        sizes: list[dict[str, Any]] = [
            {"label": label, "width": w, "height": h, "source": _url(base(), p, suffix),
             "url": f"{base()}/photos/{state.nsid}/{p.id}/sizes/{suffix or '-'}/", "media": "photo"}
            for _, suffix, label, _, w, h in _offered(state, p)]
        if state.max_size is None:
            sizes.append({"label": "Original", "width": str(p.width), "height": str(p.height),
                          "source": _url(base(), p, "o"), "url": f"{base()}/photos/{state.nsid}/{p.id}/sizes/o/",
                          "media": "photo"})
        if p.media == "video":
            scale = min(1.0, 640 / max(p.width, p.height))
            sizes.append({"label": "Site MP4", "width": round(p.width * scale), "height": round(p.height * scale),
                          "source": _play_url(base(), state, p, "site"),
                          "url": f"{base()}/photos/{state.nsid}/{p.id}/", "media": "video"})
            if state.max_size is None:
                sizes.append({"label": "Video Original", "width": p.width, "height": p.height,
                              "source": _play_url(base(), state, p, "orig"),
                              "url": f"{base()}/photos/{state.nsid}/{p.id}/", "media": "video"})
        return jsonify({"sizes": {"canblog": 0, "canprint": 0, "candownload": int(state.max_size is None),
                                  "size": sizes}, "stat": "ok"})

    def people_get_limits() -> Response:
        return jsonify({"person": {"nsid": state.nsid,
                                   "photos": {"maxdisplaypx": "0", "maxupload": str(state.max_upload)},
                                   "videos": {"maxduration": "180", "maxupload": "1073741824"}}, "stat": "ok"})

    METHODS = {
        "flickr.test.login": test_login,
        "flickr.people.getPhotos": people_get_photos,
        "flickr.photos.search": people_get_photos,  # with user_id: what flickrapi's walk() calls
        "flickr.photosets.getPhotos": photosets_get_photos,
        "flickr.photosets.getList": photosets_get_list,
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
        if state.latency:
            time.sleep(state.latency)
        m = re.fullmatch(r"(\d+)_([0-9a-z]+)(?:_([a-z0-9]+))?\.(\w+)", name)
        if not m:
            abort(404)
        p = photo_or_none(m.group(1))
        if p is None or server != p.server:
            abort(404)
        size = m.group(3) or ""
        if size == "o" and (m.group(2) != p.originalsecret or state.max_size is not None):
            abort(404)  # an old URL after a replace, or an original the account does not offer
        if size != "o" and (m.group(2) != p.secret or size not in _EDGE or not state.offers(_EDGE[size])):
            abort(404)
        bad = injected("image", p.id)
        if bad is not None:
            return bad
        if size == "o" and p.media == "photo":
            return send_file(p.path, mimetype=_MIME.get(p.originalformat, "application/octet-stream"))
        from PIL import Image

        edge = _EDGE.get(size, max(p.width, p.height))
        with _picture(p) as im:
            im = im.convert("RGB")
            if size in _SQUARE:
                side = min(im.size)
                left, top = (im.width - side) // 2, (im.height - side) // 2
                im = im.crop((left, top, left + side, top + side)).resize((min(edge, side),) * 2)
            elif edge < max(im.size):
                im.thumbnail((edge, edge), Image.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85)
        return Response(buf.getvalue(), mimetype="image/jpeg")

    @app.route("/photos/<nsid>/<photo_id>/play/<kind>/<secret>/")
    def video(nsid: str, photo_id: str, kind: str, secret: str) -> Response:
        """A video stream: the original file, or the site's own encoding of it."""
        if state.latency:
            time.sleep(state.latency)
        p = photo_or_none(photo_id)
        if p is None or p.media != "video" or nsid != state.nsid or kind not in ("orig", "site"):
            abort(404)
        if (kind == "orig" and (secret != p.originalsecret or state.max_size is not None)) or \
                (kind == "site" and secret != p.secret):
            abort(404)
        bad = injected("video", p.id)
        if bad is not None:
            return bad
        data = p.path.read_bytes()
        if kind == "site":  # Flickr's encoding is other bytes than the upload: mark ours so
            data += _mp4_box(b"free", b"flickr site encoding " + p.id.encode())
        return Response(data, mimetype="video/mp4")

    return app


_MIME = {"jpg": "image/jpeg", "tiff": "image/tiff", "png": "image/png", "gif": "image/gif"}


def _picture(p: Photo):
    """The photo's pixels (a video's poster frame: a picture drawn from its id)."""
    from PIL import Image

    if p.media == "video":
        from sandbox.photos import picture

        return picture(int(p.id) % 997, (p.width, p.height))
    return Image.open(p.path)


def _mp4_box(kind: bytes, payload: bytes) -> bytes:
    """One ISO base media box: its size, its four-letter type, its payload."""
    import struct

    return struct.pack(">I", 8 + len(payload)) + kind + payload


def _rest_xml(data: dict) -> str:
    """A JSON answer in Flickr's REST (XML) format: scalars are attributes, ``_content`` is
    text, objects are elements and lists repeat their element (the JSON is made from it)."""
    import xml.etree.ElementTree as ET

    if data.get("stat") == "fail":
        err = ET.Element("err", code=str(data.get("code")), msg=str(data.get("message", "")))
        root = ET.Element("rsp", stat="fail")
        root.append(err)
        return '<?xml version="1.0" encoding="utf-8" ?>\n' + ET.tostring(root, encoding="unicode")

    def add(parent: Any, name: str, value: Any) -> None:
        if isinstance(value, list):
            for v in value:
                add(parent, name, v)
            return
        el = ET.SubElement(parent, name)
        if not isinstance(value, dict):
            el.text = str(value)
            return
        for k, v in value.items():
            if k == "_content":
                el.text = str(v)
            elif isinstance(v, (dict, list)):
                add(el, k, v)
            else:
                el.set(k, "" if v is None else str(int(v)) if isinstance(v, bool) else str(v))

    root = ET.Element("rsp", stat="ok")
    for key, value in data.items():
        if key != "stat":
            add(root, key, value)
    return '<?xml version="1.0" encoding="utf-8" ?>\n' + ET.tostring(root, encoding="unicode")


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
