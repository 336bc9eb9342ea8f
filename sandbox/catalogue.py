"""A library catalogue stand-in, its master store, and a Flickr Commons account made from them.

The library (story 5) has three places that know about one picture:

* the **catalogue** website: an *item page* shows one image (its Digital ID is in
  the image URL, ``/images/a1280001r.jpg``, and in the page text), an *album page*
  shows many (thumbnails linking to their item pages);
* the **master store**: master TIFF/JPEG files named by Digital ID in a nested
  folder structure (``masters/a/a128/a1280001/a1280001u.tif``), and its listing
  file, the output of ``find`` on the store;
* the **Flickr account**: copies uploaded years ago, whose descriptions link to
  the catalogue (sometimes to the item, sometimes to its album), some tinted,
  darkened, cropped or flipped by whoever uploaded them.

:func:`build_library` makes all three on disk from real photographs with every
tricky case of the story, and records the truth for each Flickr photo (which
Digital ID it is, what should happen to it) so tests can check the flow's answers.
:func:`create_app` serves the catalogue over HTTP.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, Response, abort, send_file
from PIL import Image

from sandbox import photos
from sandbox.server import Server, serve

FLICKR_SIZE = (480, 360)  # what Flickr holds
CATALOGUE_SIZE = (320, 240)  # what the catalogue shows
LARGER_MASTER = (720, 540)
SMALLER_MASTER = (380, 285)  # smaller than Flickr's copy by ~100 px, as the story found


@dataclass
class Record:
    """One catalogue item: a picture with a Digital ID and, maybe, an album."""

    record_id: int
    digital_id: str
    picture: int
    album_id: int | None = None
    image_missing: bool = False  # the catalogue page's image 404s


@dataclass
class FlickrCopy:
    """One Flickr photo as the library uploaded it, and what should become of it."""

    photo_id: str
    title: str
    description: str
    taken: str
    granularity: int
    image: str  # path of the file first uploaded
    digital_id: str | None  # the truth: which catalogue picture this is (None: none)
    link: str  # "item", "album", "none", "dead"
    transform: str  # "none", "tint", "dark", "crop", "flip"
    master: str  # "larger", "smaller", "missing", "oversized"
    expect: str  # the outcome the story expects when matching works
    width: int = 0
    height: int = 0


@dataclass
class Library:
    """Everything :func:`build_library` made, with the paths the flow is configured with."""

    root: Path
    records: dict[int, Record] = field(default_factory=dict)
    albums: dict[int, list[int]] = field(default_factory=dict)
    flickr: list[FlickrCopy] = field(default_factory=list)
    masters: dict[str, list[Path]] = field(default_factory=dict)
    oversize_bytes: int = 0  # a limit between normal masters and the oversized ones

    @property
    def store(self) -> Path:
        return self.root / "masters"

    @property
    def listing(self) -> Path:
        return self.root / "masters.txt"

    @property
    def images(self) -> Path:
        return self.root / "catalogue" / "images"

    def record_by_id(self, digital_id: str) -> Record | None:
        return next((r for r in self.records.values() if r.digital_id == digital_id), None)

    def truth(self) -> dict[str, dict[str, Any]]:
        """``{photo_id: FlickrCopy as dict}``: what each Flickr photo is and should become."""
        return {c.photo_id: asdict(c) for c in self.flickr}


def digital_id(n: int) -> str:
    """The library's Digital ID form: a letter and seven digits (``a1280001``)."""
    return f"a{1280000 + n:07d}"


def master_path(store: Path, did: str, suffix: str) -> Path:
    """Where the store keeps a master: nested by prefix, named by Digital ID."""
    return store / did[0] / did[:4] / did / f"{did}{suffix}"


def transformed(img: Image.Image, how: str, rng: random.Random) -> Image.Image:
    """A copy as a Flickr uploader might have 'improved' it."""
    if how == "tint":
        arr = np.asarray(img.convert("RGB")).astype(np.float32)
        arr *= np.array([1.0, rng.uniform(0.78, 0.86), rng.uniform(0.55, 0.65)], dtype=np.float32)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if how == "dark":
        arr = np.asarray(img.convert("RGB")).astype(np.float32) * rng.uniform(0.4, 0.5)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if how == "crop":
        w, h = img.size
        f = rng.uniform(0.05, 0.09)
        return img.crop((int(w * f), int(h * f), int(w * (1 - f)), int(h * (1 - f))))
    if how == "flip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def _plan(n: int, rng: random.Random) -> list[dict[str, str]]:
    """The mix of cases for ``n`` Flickr photos: mostly plain, every tricky case present."""
    tricky = [
        {"link": "item", "transform": "tint"}, {"link": "item", "transform": "dark"},
        {"link": "item", "transform": "crop"}, {"link": "item", "transform": "flip"},
        {"link": "album", "transform": "tint"}, {"link": "album", "transform": "flip"},
        {"link": "album", "transform": "crop"}, {"link": "album", "transform": "dark"},
        {"link": "album_without", "transform": "none"}, {"link": "album_without", "transform": "none"},
        {"link": "missing_image", "transform": "none"}, {"link": "dead", "transform": "none"},
        {"link": "none", "transform": "none"},
        {"link": "item", "transform": "none", "master": "missing"},
        {"link": "item", "transform": "none", "master": "oversized"},
        {"link": "album", "transform": "none", "master": "oversized"},
    ]
    plan = [dict(t) for t in tricky]
    # larger accounts get more of the uploader's "improvements" (tints, crops...)
    plan += [dict(t) for _ in range(n // 100 - 1) for t in tricky[:8]]
    while len(plan) < n:
        link = "album" if rng.random() < 0.3 else "item"
        plan.append({"link": link, "transform": "none"})
    plan = plan[:n]
    for p in plan:
        if "master" not in p:
            p["master"] = "smaller" if rng.random() < 0.28 else "larger"
    rng.shuffle(plan)
    return plan


def build_library(root: str | Path, photos_count: int = 300, *, seed: int = 5, album_size: int = 10,
                  tiff_share: float = 0.15, noise_lines: int = 200) -> Library:
    """Make the catalogue images, master store, listing file and Flickr copies on disk.

    Pictures are distinct crops of scikit-image's photographs; masters carry the
    digitisation date in EXIF (which the Flickr replace will wrongly adopt), the
    Flickr copies carry the true historical date in their metadata.
    """
    rng = random.Random(seed)
    lib = Library(Path(root))
    lib.images.mkdir(parents=True, exist_ok=True)
    lib.store.mkdir(parents=True, exist_ok=True)
    (lib.root / "flickr").mkdir(parents=True, exist_ok=True)
    plan = _plan(photos_count, rng)

    next_picture = [100]

    def new_record(album_id: int | None = None) -> Record:
        rid = 442600 + len(lib.records) + 1
        rec = Record(record_id=rid, digital_id=digital_id(len(lib.records) + 1), picture=next_picture[0],
                     album_id=album_id)
        next_picture[0] += 1
        lib.records[rid] = rec
        if album_id is not None:
            lib.albums.setdefault(album_id, []).append(rid)
        return rec

    def new_album(size: int) -> int:
        aid = 9000 + len(lib.albums) + 1
        lib.albums[aid] = []
        for _ in range(size):
            new_record(aid)
        return aid

    # albums several Flickr photos point to (as the story's screenshot showed)
    album_ids = [new_album(album_size + rng.randint(-3, 4)) for _ in range(max(2, photos_count // 30))]
    unused_in_album: dict[int, list[int]] = {a: list(lib.albums[a]) for a in album_ids}

    for i, p in enumerate(plan):
        link = p["link"]
        if link in ("album", "album_without"):
            aid = rng.choice([a for a in album_ids if len(unused_in_album[a]) > 1] or album_ids)
            if not unused_in_album[aid]:
                aid = new_album(album_size)
                album_ids.append(aid)
                unused_in_album[aid] = list(lib.albums[aid])
            rid = unused_in_album[aid].pop(rng.randrange(len(unused_in_album[aid])))
            rec = lib.records[rid]
            if link == "album_without":  # the album does not hold this picture
                lib.albums[aid].remove(rid)
                rec.album_id = None
        else:
            rec = new_record()
            aid = None
        if link == "missing_image":
            rec.image_missing = True
        photo_id = str(5251000000 + i * 7919)
        year = rng.randint(1870, 1960)
        gran = rng.choice([0, 4, 6, 6])
        taken = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d} 00:00:00" if gran == 0 else \
            (f"{year}-{rng.randint(1, 12):02d}-01 00:00:00" if gran == 4 else f"{year}-01-01 00:00:00")
        base_url = "{catalogue}"
        if link in ("item", "missing_image"):
            url = f"{base_url}/item/itemDetailPaged.aspx?itemID={rec.record_id}"
        elif link in ("album", "album_without"):
            url = f"{base_url}/album/albumView.aspx?acmsID={aid}"
        elif link == "dead":
            url = f"{base_url}/item/itemDetailPaged.aspx?itemID=99{rec.record_id}"
        else:
            url = ""
        desc = (f"From the collection of the Library. Call number PXA {rng.randint(100, 999)}. "
                + (f'<a href="{url}" rel="nofollow">{url}</a>' if url else "Digitised by the Library."))
        img = transformed(photos.picture(rec.picture, FLICKR_SIZE), p["transform"], rng)
        fpath = lib.root / "flickr" / f"{photo_id}.jpg"
        img.save(fpath, "JPEG", quality=88)
        expect = _expected(link, p["master"], p["transform"])
        lib.flickr.append(FlickrCopy(
            photo_id=photo_id, title=f"Street scene {i + 1}, c. {year}", description=desc, taken=taken,
            granularity=gran, image=str(fpath), digital_id=None if link in ("album_without", "dead", "none",
                                                                            "missing_image") else rec.digital_id,
            link=link, transform=p["transform"], master=p["master"], expect=expect,
            width=img.width, height=img.height))
        rec._master_kind = p["master"]  # type: ignore[attr-defined]

    # catalogue images and masters for every record
    normal_max = 0
    oversized: list[Path] = []
    for rec in lib.records.values():
        pic = photos.picture(rec.picture, CATALOGUE_SIZE)
        if not rec.image_missing:
            pic.save(lib.images / f"{rec.digital_id}r.jpg", "JPEG", quality=85)
        kind = getattr(rec, "_master_kind", "larger")
        if kind == "missing":
            continue
        size = {"larger": LARGER_MASTER, "smaller": SMALLER_MASTER, "oversized": (1200, 900)}[kind]
        digitised = datetime(2009, 1, 5, 10, 0) + timedelta(days=rng.randint(0, 2500), minutes=rng.randint(0, 600))
        tiff = kind == "oversized" or rng.random() < tiff_share
        path = master_path(lib.store, rec.digital_id, "u.tif" if tiff else "h.jpg")
        path.parent.mkdir(parents=True, exist_ok=True)
        img = photos.picture(rec.picture, size)
        exif = photos.exif_bytes(digitised, make="Phase One", model="IQ180 digitisation")
        if tiff:
            img.save(path, "TIFF", exif=exif)
        else:
            img.save(path, "JPEG", quality=90, exif=exif)
        lib.masters.setdefault(rec.digital_id, []).append(path)
        if kind == "oversized":
            oversized.append(path)
        else:
            normal_max = max(normal_max, path.stat().st_size)
        if rng.random() < 0.1:  # a second, smaller access copy beside some masters
            small = master_path(lib.store, rec.digital_id, "r.jpg")
            photos.picture(rec.picture, CATALOGUE_SIZE).save(small, "JPEG", quality=80)
            lib.masters[rec.digital_id].append(small)
    smallest_oversized = min((p.stat().st_size for p in oversized), default=normal_max * 2)
    lib.oversize_bytes = (normal_max + smallest_oversized) // 2
    write_listing(lib.store, lib.listing, noise_lines=noise_lines, seed=seed)
    return lib


def _expected(link: str, master: str, transform: str) -> str:
    """The reason the story expects to end with for a photo, when matching works."""
    if link in ("album_without",):
        return "not_in_album"
    if link == "missing_image":
        return "catalogue_image_missing"
    if link == "dead":
        return "catalogue_not_found"
    if link == "none":
        return "no_catalogue_link"
    if master == "missing":
        return "no_master"
    if master == "smaller":
        return "no_larger_version"
    if master == "oversized":
        return "too_large_for_flickr"
    return "date_verified"


def write_listing(store: Path, listing: Path, *, noise_lines: int = 0, seed: int = 0) -> Path:
    """The store's listing as ``find STORE`` prints it (directories too), plus the
    odd files a real store has (Thumbs.db, notes)."""
    rng = random.Random(seed)
    lines = [str(store)]
    for p in sorted(store.rglob("*")):
        lines.append(str(p))
    for i in range(noise_lines):
        d = store / "z" / f"z{rng.randint(100, 999)}"
        lines.append(str(d / rng.choice(["Thumbs.db", ".DS_Store", f"notes_{i}.txt", f"scan log {i}.csv"])))
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return listing


# -- the catalogue website ------------------------------------------------------------------

_PAGE = """<!doctype html><html><head><title>{title}</title></head><body>
<header><a href="/">Library catalogue</a></header><main>{body}</main>
<footer>Copyright the Library</footer></body></html>"""


@dataclass
class CatalogueFaults:
    """Every ``every``-th request answers ``status`` (a flaky catalogue)."""

    every: int | None = None
    status: int = 503
    seen: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fire(self) -> bool:
        if not self.every:
            return False
        with self.lock:
            self.seen += 1
            return self.seen % self.every == 0


def create_app(lib: Library, faults: CatalogueFaults | None = None) -> Flask:
    """The catalogue website for ``lib``: item pages, album pages, images."""
    app = Flask("catalogue-sandbox")
    faults = faults or CatalogueFaults()
    app.config["faults"] = faults

    @app.before_request
    def flaky() -> Response | None:
        if faults.fire():
            return Response("Service Unavailable", status=faults.status, headers={"Retry-After": "0"})
        return None

    @app.route("/item/itemDetailPaged.aspx")
    def item() -> str:
        from flask import request

        rec = lib.records.get(int(request.args.get("itemID", "0") or 0))
        if rec is None:
            abort(404)
        body = (f'<h1>Item {rec.record_id}</h1><div class="viewer">'
                f'<img class="record-image" src="/images/{rec.digital_id}r.jpg" alt="Digital image"></div>'
                f'<dl><dt>Digital ID</dt><dd>{rec.digital_id}</dd><dt>Call number</dt><dd>PXA 0{rec.record_id}</dd></dl>')
        return _PAGE.format(title=f"Item {rec.record_id}", body=body)

    @app.route("/album/albumView.aspx")
    def album() -> str:
        from flask import request

        aid = int(request.args.get("acmsID", "0") or 0)
        if aid not in lib.albums:
            abort(404)
        cells = "".join(
            f'<li><a href="/item/itemDetailPaged.aspx?itemID={rid}">'
            f'<img class="thumb" src="/images/{lib.records[rid].digital_id}r.jpg" alt=""></a></li>'
            for rid in lib.albums[aid])
        body = f'<h1>Album {aid}</h1><ul class="album">{cells}</ul>'
        return _PAGE.format(title=f"Album {aid}", body=body)

    @app.route("/images/<name>")
    def image(name: str) -> Response:
        path = lib.images / name
        if "/" in name or not path.is_file():
            abort(404)
        return send_file(path, mimetype="image/jpeg")

    return app


def serve_catalogue(lib: Library, faults: CatalogueFaults | None = None) -> Server:
    return serve(create_app(lib, faults))


def load_into_flickr(lib: Library, state: Any, catalogue_url: str) -> None:
    """Upload the library's Flickr copies into a :class:`sandbox.flickr.FlickrState`,
    with their descriptions pointing at the catalogue served at ``catalogue_url``."""
    for c in lib.flickr:
        desc = c.description.replace("{catalogue}", catalogue_url)
        state.add_photo(c.photo_id, c.image, title=c.title, description=desc, taken=c.taken,
                        granularity=c.granularity)
