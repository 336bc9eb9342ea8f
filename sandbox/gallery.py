"""A stand-in for a Kodak-Pulse-like photo-frame web service, with its CDN.

Two servers, as the real service had:

* the **site**: a login form (``GET /`` shows it, ``POST /`` with ``username`` and
  ``password`` sets a session cookie and redirects to ``/Frame/AllPictures``), and the
  album, ``/Frame/AllPictures?p=N``: a 6 x 8 table of 48 thumbnails per page. Without
  a valid session every page redirects back to the login form. A session can be made
  to expire after a number of page views (``session_pages``) or by the
  ``expire_session`` fault.
* the **CDN** (another port, no cookies needed): ``/26~t~<uuid>~<ticks>.jpg`` is a
  thumbnail and the same URL with ``~a~`` the original, a real JPEG with EXIF
  (capture time, offset, GPS for some) made by :func:`sandbox.photos.write_jpeg`
  when first asked for and cached on disk.

Both are wrapped in :class:`sandbox.faults.FaultInjector`; ``gallery.site_faults``
and ``gallery.cdn_faults`` are their plans (rules can also be given to the
constructor, or posted to ``/_admin/faults`` on either server). Past the last page the site shows an empty
table (``past_end="empty"``), the last page again (``"repeat"``) or a 404
(``"not_found"``). ``csrf=True`` makes the login form carry a one-time hidden token
that the POST must send back, as ASP.NET sites do. ``thumbs="relative"`` serves thumbnails from the site itself under
relative URLs (``../media/...``); ``lazy=True`` puts the URL in ``data-src``.

Run it on its own with ``python -m sandbox.gallery --count 300`` (prints its URLs).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import random
import re
import secrets
import tempfile
import threading
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

from werkzeug.wrappers import Request, Response

from sandbox import photos
from sandbox.faults import FaultInjector, FaultPlan
from sandbox.server import Server, serve

PREFIX = "26"
KEY_RE = re.compile(r"^(\d+)~([ta])~([0-9a-f-]{36})~(\d+)\.jpg$")
SPACER_GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


class Gallery:
    """The photo-frame service's data and its two WSGI apps (site and CDN)."""

    def __init__(
        self,
        count: int = 1374,
        *,
        per_page: int = 48,
        columns: int = 6,
        username: str = "alice",
        password: str = "pulse-frame-2011",
        cache_dir: str | Path | None = None,
        size: tuple[int, int] = (640, 480),
        thumb_size: tuple[int, int] = (120, 90),
        past_end: str = "empty",
        session_pages: int | None = None,
        thumbs: str = "cdn",
        lazy: bool = False,
        csrf: bool = False,
        site_faults: list[dict[str, Any]] | None = None,
        cdn_faults: list[dict[str, Any]] | None = None,
        seed: int = 2011,
        start: datetime = datetime(2011, 6, 4, 10, 15),
    ) -> None:
        self.count = count
        self.per_page = per_page
        self.columns = columns
        self.username = username
        self.password = password
        self.cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="pe-gallery-cache-"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self.size = size
        self.thumb_size = thumb_size
        self.past_end = past_end
        self.session_pages = session_pages
        self.thumbs = thumbs
        self.lazy = lazy
        self.csrf = csrf
        self.csrf_tokens: set[str] = set()
        self.seed = seed
        self.first_taken = start
        self.cdn_url = ""  # set when the CDN server starts
        self.sessions: dict[str, int] = {}  # token -> page views left (-1: unlimited)
        self.logins = 0
        self.failed_logins = 0
        self._lock = threading.Lock()
        self.keys = [self._key(i) for i in range(count)]
        self.index = {KEY_RE.match(k.replace("~t~", "~a~")).group(3): i for i, k in enumerate(self.keys)}  # type: ignore[union-attr]
        self.site_faults = FaultPlan(site_faults or ())
        self.cdn_faults = FaultPlan(cdn_faults or ())
        self.site_app = FaultInjector(self._site, self.site_faults)
        self.cdn_app = FaultInjector(self._cdn, self.cdn_faults)

    # -- pictures -----------------------------------------------------------------------
    def _key(self, i: int) -> str:
        """The thumbnail's file name of picture ``i``: ``26~t~<uuid>~<ticks>.jpg``."""
        rng = random.Random(self.seed * 1_000_003 + i)
        pid = uuid.UUID(int=rng.getrandbits(128), version=4)
        ticks = 636155450392171000 + i * 36_000_000_000 + rng.randrange(10_000_000)
        return f"{PREFIX}~t~{pid}~{ticks}.jpg"

    def original_key(self, i: int) -> str:
        return self.keys[i].replace("~t~", "~a~")

    def original_url(self, i: int) -> str:
        return f"{self.cdn_url}/{self.original_key(i)}"

    def taken(self, i: int) -> datetime:
        """Capture time of picture ``i``: a few hours apart, as a family album grows."""
        return self.first_taken + timedelta(hours=5 * i, minutes=7 * (i % 9))

    def picture_file(self, i: int, thumbnail: bool) -> Path:
        """The JPEG for picture ``i`` (made on first use, then cached on disk)."""
        path = self.cache_dir / (f"t{i}.jpg" if thumbnail else f"a{i}-{self.size[0]}x{self.size[1]}.jpg")
        if path.exists():
            return path
        tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
        if thumbnail:
            photos.picture(i, self.thumb_size).save(tmp, "JPEG", quality=70)
        else:
            gps = (48.8584 + i * 0.001, 2.2945 - i * 0.001) if i % 3 == 0 else None
            photos.write_jpeg(tmp, i, size=self.size, taken=self.taken(i),
                              offset="+02:00" if i % 2 == 0 else None, gps=gps,
                              description=f"Kodak Pulse picture {i + 1}")
        os.replace(tmp, path)
        return path

    def warm(self, thumbnails: bool = False) -> None:
        """Make every original (and thumbnail) now, so timing runs measure transfer only."""
        for i in range(self.count):
            self.picture_file(i, False)
            if thumbnails:
                self.picture_file(i, True)

    # -- the CDN ------------------------------------------------------------------------
    def _cdn(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        return self._serve_picture(environ.get("PATH_INFO", "").lstrip("/"), environ, start_response)

    def _serve_picture(self, key: str, environ: dict, start_response: Callable) -> Iterable[bytes]:
        m = KEY_RE.match(key)
        i = self.index.get(m.group(3)) if m else None
        if i is None or self.keys[i] != f"{m.group(1)}~t~{m.group(3)}~{m.group(4)}.jpg":  # type: ignore[union-attr]
            return Response("not found\n", status=404, mimetype="text/plain")(environ, start_response)
        data = self.picture_file(i, thumbnail=m.group(2) == "t").read_bytes()  # type: ignore[union-attr]
        start_response("200 OK", [("Content-Type", "image/jpeg"), ("Content-Length", str(len(data))),
                                  ("Cache-Control", "max-age=31536000")])
        return [data]

    # -- the site -----------------------------------------------------------------------
    def _site(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        req = Request(environ)
        path = req.path
        if path == "/" and req.method == "POST":
            resp = self._login(req)
        elif path == "/":
            resp = self._login_page()
        elif path.rstrip("/") == "/Frame/AllPictures":
            resp = self._album_page(req, environ)
        elif path.startswith("/media/"):
            return self._serve_picture(path[len("/media/"):], environ, start_response)
        elif path == "/Content/spacer.gif":
            resp = Response(SPACER_GIF, mimetype="image/gif")
        elif path == "/Frame/Logout":
            with self._lock:
                self.sessions.pop(req.cookies.get("PulseSession", ""), None)
            resp = _redirect("/")
        else:
            resp = Response("not found\n", status=404, mimetype="text/plain")
        return resp(environ, start_response)

    def _login_page(self, error: str = "") -> Response:
        msg = f'<p class="error">{html.escape(error)}</p>' if error else ""
        hidden = ""
        if self.csrf:
            token = secrets.token_hex(8)
            with self._lock:
                self.csrf_tokens.add(token)
            hidden = f'<input type="hidden" name="__RequestVerificationToken" value="{token}"/>'
        body = f"""<!DOCTYPE html><html><head><title>KODAK Pulse - Sign in</title></head><body>
<img src="/Content/spacer.gif" alt="" class="logo"/>
<h1>Sign in to your frame</h1>{msg}
<form method="get" action="/search"><input type="hidden" name="scope" value="help"/><input name="q"/></form>
<form method="post" action="/" id="loginForm">{hidden}
  <label>Email <input type="text" name="username"/></label>
  <label>Password <input type="password" name="password"/></label>
  <input type="submit" value="Sign in"/>
</form></body></html>"""
        return Response(body, mimetype="text/html")

    def _login(self, req: Request) -> Response:
        if self.csrf:
            with self._lock:
                fresh = req.form.get("__RequestVerificationToken", "") in self.csrf_tokens
                self.csrf_tokens.discard(req.form.get("__RequestVerificationToken", ""))
            if not fresh:
                with self._lock:
                    self.failed_logins += 1
                return self._login_page("Your session has timed out. Please sign in again.")
        if req.form.get("username") != self.username or req.form.get("password") != self.password:
            with self._lock:
                self.failed_logins += 1
            return self._login_page("The email or password you entered is incorrect.")
        token = secrets.token_hex(16)
        with self._lock:
            self.sessions[token] = self.session_pages if self.session_pages is not None else -1
            self.logins += 1
        resp = _redirect("/Frame/AllPictures")
        resp.set_cookie("PulseSession", token, httponly=True)
        return resp

    def _use_session(self, req: Request, environ: dict) -> bool:
        """Whether the visitor's session is valid for one more page view (and count it)."""
        token = req.cookies.get("PulseSession", "")
        with self._lock:
            left = self.sessions.get(token)
            if left is None:
                return False
            if environ.get("sandbox.expire_session") or left == 0:
                del self.sessions[token]
                return False
            if left > 0:
                self.sessions[token] = left - 1
            return True

    def pages(self) -> int:
        return max(1, -(-self.count // self.per_page))

    def _album_page(self, req: Request, environ: dict) -> Response:
        if not self._use_session(req, environ):
            return _redirect("/?ReturnUrl=%2fFrame%2fAllPictures")
        try:
            page = max(1, int(req.args.get("p", "1")))
        except ValueError:
            page = 1
        if page > self.pages():
            if self.past_end == "not_found":
                return Response("no such page\n", status=404, mimetype="text/plain")
            if self.past_end == "repeat":
                page = self.pages()
            else:
                page = -1
        first = (page - 1) * self.per_page
        indices = range(first, min(first + self.per_page, self.count)) if page > 0 else range(0)
        return Response(self._album_html(list(indices), page), mimetype="text/html")

    def _thumb_src(self, i: int) -> str:
        if self.thumbs == "relative":
            return f"../media/{self.keys[i]}"
        return f"{self.cdn_url}/{self.keys[i]}"

    def _album_html(self, indices: list[int], page: int) -> str:
        rows = []
        for r in range(0, len(indices), self.columns):
            cells = []
            for i in indices[r:r + self.columns]:
                pid = self.keys[i].split("~")[2]
                src = self._thumb_src(i)
                attrs = f'src="/Content/spacer.gif" data-src="{src}"' if self.lazy else f'src="{src}"'
                cells.append(
                    f'<td align="center" valign="middle">\n  <img {attrs} alt="{i}" id="picture_{pid}" '
                    f'rot="RotateNone" style="display: inline;" />\n'
                    f'  <canvas id="canvas_{i}" style="display:none;"></canvas>\n</td>'
                )
            rows.append("<tr>" + "".join(cells) + "</tr>")
        nav = f'<a href="/Frame/AllPictures?p={page + 1}">Next</a>' if page > 0 else ""
        return f"""<!DOCTYPE html><html><head><title>KODAK Pulse - All pictures</title></head><body>
<div id="header"><img src="/Content/spacer.gif" alt="KODAK Pulse" class="logo"/>
<a href="/Frame/Logout">Sign out</a></div>
<table id="pictures">{''.join(rows)}</table>
<div class="pager">{nav}</div></body></html>"""

    # -- running ------------------------------------------------------------------------
    def start(self, port: int = 0, cdn_port: int = 0) -> "Gallery":
        """Serve the site and the CDN on 127.0.0.1 (port 0: any free port)."""
        self.cdn_server: Server = serve(self.cdn_app, port=cdn_port)
        self.cdn_url = self.cdn_server.url
        self.site_server: Server = serve(self.site_app, port=port)
        self.site_url = self.site_server.url
        return self

    def stop(self) -> None:
        for name in ("site_server", "cdn_server"):
            server = getattr(self, name, None)
            if server is not None:
                server.stop()

    def __enter__(self) -> "Gallery":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def job_source(self, password_env: str = "KODAK_PASSWORD") -> dict[str, Any]:
        """The ``source:`` block of a job spec for this gallery (the issue's fields)."""
        return {
            "kind": "gallery",
            "login": {"url": f"{self.site_url}/", "fields": {"username": self.username},
                      "secret_fields": {"password": {"env": password_env}}},
            "pages": {"url": f"{self.site_url}/Frame/AllPictures?p={{page}}", "first": 1,
                      "last_when_fewer_than": self.per_page},
            "images": {"css": "img", "attribute": "data-src" if self.lazy else "src", "contains": "~t~",
                       "rewrite": [{"from": "~t~", "to": "~a~"}]},
            "expected_count": self.count,
        }


def _redirect(location: str) -> Response:
    return Response("", status=302, headers={"Location": location})


def main(argv: list[str] | None = None) -> None:
    """Serve a gallery until interrupted; print its URLs as one JSON line."""
    import time

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=1374)
    ap.add_argument("--size", default="640x480")
    ap.add_argument("--cache-dir")
    ap.add_argument("--warm", action="store_true", help="make every original before serving")
    ap.add_argument("--port", type=int, default=0, help="the site's port (default: any free one)")
    ap.add_argument("--cdn-port", type=int, default=0, help="the CDN's port (default: any free one)")
    ap.add_argument("--faults", help="a JSON list of fault rules for the CDN (see sandbox.faults)")
    args = ap.parse_args(argv)
    w, h = (int(v) for v in args.size.split("x"))
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    gallery = Gallery(args.count, size=(w, h), cache_dir=args.cache_dir)
    if args.warm:
        gallery.warm()
    for rule in json.loads(args.faults or "[]"):
        gallery.cdn_faults.add(**rule)
    gallery.start(args.port, args.cdn_port)
    try:
        print(json.dumps({"site": gallery.site_url, "cdn": gallery.cdn_url, "username": gallery.username,
                          "password": gallery.password, "count": gallery.count}), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        gallery.stop()


if __name__ == "__main__":
    main()
