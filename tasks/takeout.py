"""Google Photos Takeout exports, read where they lie: the zip parts' directories, one
member at a time, and the sidecar JSON that says what Google knew about each photo.

Plain code (no Prefect): the ``takeout`` source (:mod:`tasks.sources.takeout`), the
demo's export generator and ``bench/takeout.py`` use it.

What an export looks like::

    takeout-20240101T000000Z-001.zip            (any number of parts, each a zip)
      Takeout/archive_browser.html
      Takeout/Google Photos/Photos from 2019/IMG_1234.jpg
      Takeout/Google Photos/Photos from 2019/IMG_1234.jpg.supplemental-metadata.json
      Takeout/Google Photos/Trip to Nepal/IMG_1234.jpg                   (an album: the same bytes again)
      Takeout/Google Photos/Trip to Nepal/metadata.json                  (the album's title)
    takeout-20240101T000000Z-002.zip
      Takeout/Google Photos/Photos from 2019/IMG_1234(1).jpg             (another photo of the same name)
      Takeout/Google Photos/Photos from 2019/IMG_1234.jpg(1).json        (its sidecar, in the other part)

Reading in place. Each part's central directory is read once (:func:`scan`) into a
compact index of names, sizes and CRC-32s, and the part is closed again: the index is
what stays in memory, smaller than the directories themselves. A member is then read by
seeking to its local header and streaming it through :class:`zipfile.ZipExtFile`, which
inflates chunk by chunk and checks the CRC-32 at the end (:func:`open_member`), so an
800 MB video costs no more memory than a JPEG and no part is ever extracted whole. A part
whose directory cannot be read (a download cut short) stops the listing with
:class:`BrokenPart`, which names the part.

Sidecars (:func:`sidecar_candidates`, :func:`match_folder`). Google names a photo's
sidecar after the photo, but not exactly, and every importer gets some of it wrong.
The rules here are deterministic (never a guess by date) and each match records which
rule made it:

- ``json``: ``NAME.json`` (older exports);
- ``supplemental``: ``NAME.supplemental-metadata.json`` (exports since late 2024);
- ``supplemental_clipped``: the name before ``.json`` is cut to 46 characters (UTF-16
  code units), so any prefix of ``supplemental-metadata`` may remain
  (``NAME.supplemental-metada.json``, ``NAME.suppl.json``, ``NAME.s.json``);
- ``name_clipped``: a name of 46 characters or more is cut itself
  (``WhatsApp Image 2019-12-25 at 14.50.00 from the.json``); the photo's own file name
  is cut too (at 47), and the sidecar's ``title`` keeps the whole name;
- ``numbered``: the second photo called ``IMG_1234.jpg`` in a folder is written
  ``IMG_1234(1).jpg``, and its sidecar carries the counter after the (clipped) rest:
  ``IMG_1234.jpg(1).json``, ``IMG_1234.jpg.supplemental-metadata(1).json``;
- ``title``: a sidecar no name rule reaches, whose ``title`` names exactly one photo
  of its folder that has none;
- ``edited``: ``NAME-edited.jpg`` (``-bearbeitet``, ``-modifié``... in the user's
  language) has no sidecar of its own and takes its original's;
- ``motion``: the video half of a motion or live photo (``PXL_….MP`` beside
  ``PXL_….MP.jpg``, ``IMG_1234.MOV`` beside ``IMG_1234.HEIC``) takes its photo's.

Where those facts come from: the 46-character cut, the counter after the clipped
suffix and the direction of the rule (from the photo's name to the sidecar's, never
back) are described in ente's pull request ente-io/ente#4956 and confirmed on a
52,000-file export in TheLastGimbus/GooglePhotosTakeoutHelper#449; the counter swap
(``image(11).jpg`` -> ``image.jpg(11).json``) and the list of "edited" words per
language in GooglePhotosTakeoutHelper ``lib/date_extractors/json_extractor.dart`` and
``lib/extras.dart``; the cut photo names (``…ORIGINA.jpg`` with ``…ORIGIN.json``),
the ``.MP`` video beside its ``.MP.jpg`` and the 46 *UTF-16 units* (an emoji counts two:
the ``😀…😋.json`` case) in simulot/immich-go ``adapters/googlePhotos/matcher_test.go``;
album metadata told apart from photo sidecars by content (an album's JSON has a
``date`` and no ``photoTakenTime``) as immich-go's ``json.go`` does.

Albums. ``Photos from 2019/`` and every album folder hold the same bytes again. Copies
are recognised by content: the CRC-32 and size each zip directory gives (an extracted
tree has them computed for the files whose size another file shares), never by name.
A photo is listed once, from its copy outside any album when it has one, with the
titles (from the album's JSON, not the folder name Google sanitised) of every album a
copy of it sits in. JSON files that describe no photo (``print-subscriptions.json``,
``shared_album_comments.json``, ``user-generated-memory-titles.json``, an album's
``metadata.json``) and ``archive_browser.html`` are never listed.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import struct
import unicodedata
import zipfile
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import IO, Any, Callable, Iterator, NamedTuple

from photo_escape.layout import safe_component, safe_relpath
from photo_escape.outcomes import PermanentError
from photo_escape.plugins import SourceUnreadable
from tasks.files import IMAGE_SUFFIXES

#: Takeout's limit on a sidecar's name before ``(n)`` and ``.json``, in UTF-16 code units
CLIP = 46
SUPPLEMENTAL = ".supplemental-metadata"
#: videos, and the video half of motion photos (``.MP``, ``.MP~2``), by name (compared lower-case)
VIDEO_SUFFIXES = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".3gp", ".3g2", ".avi", ".mkv", ".webm", ".wmv", ".asf", ".mpg",
    ".mpeg", ".mts", ".m2ts", ".ts", ".flv", ".mp", ".mp~2", ".vob", ".divx",
})
#: what Google appends to an edited copy's name, per language (lower-case, NFC); the list
#: GooglePhotosTakeoutHelper keeps (lib/extras.dart), and any other ``-word`` when the
#: original sits beside the copy
EDITED_MARKERS = (
    "-edited", "-effects", "-smile", "-mix", "-edytowane", "-bearbeitet", "-bewerkt", "-編集済み",
    "-modificato", "-modifié", "-ha editado", "-editado", "-editat", "-отредактировано", "-已编辑",
    "-편집됨", "-düzenlendi", "-تم التعديل", "-संपादित", "-đã chỉnh sửa", "-แก้ไขแล้ว", "-diedit",
)
#: the order rules are tried in, and the names the report counts them by
RULES = ("json", "supplemental", "supplemental_clipped", "name_clipped", "numbered", "title", "edited",
         "motion")
SIDECAR_LIMIT = 4 << 20  # a sidecar is a few hundred bytes; anything this large is not one
_COUNTER = re.compile(r"^(?P<base>.*)\((?P<n>\d+)\)$")
# a zip local file header (APPNOTE 4.3.7): signature, versions, flags, method, time, date, crc,
# sizes, then the lengths of the name (field 10) and of the extra field (11) that follow it
_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


class BrokenPart(PermanentError, SourceUnreadable):
    """A Takeout part that cannot be read as a zip (a download cut short, another file
    named like a part). Its message names the part; nothing of the export is listed, and
    the run stops with that one line."""

    def __init__(self, part: str, why: str) -> None:
        super().__init__("broken_part", f"the Takeout part {part} cannot be read ({why}): download that part "
                                        "again; nothing from this export was listed or delivered by this run")
        self.part = part


# -- what a file is, by its name -------------------------------------------------------------------
def nfc(text: str) -> str:
    """``text`` in Unicode NFC: names written on a Mac come decomposed (``é`` as ``e`` + accent)."""
    return unicodedata.normalize("NFC", text)


def is_video(name: str) -> bool:
    return _suffix(name) in VIDEO_SUFFIXES


def is_media(name: str) -> bool:
    """A photo or a video by its name: what the listing takes (JSON, HTML and the rest are not)."""
    suffix = _suffix(name)
    return suffix in IMAGE_SUFFIXES or suffix in VIDEO_SUFFIXES


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _u16(text: str) -> int:
    """Length in UTF-16 code units, as Google's limit counts (an emoji is two)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def clip(text: str, limit: int = CLIP) -> str:
    """``text`` cut to ``limit`` UTF-16 code units, never inside a character."""
    if _u16(text) <= limit:
        return text
    used = 0
    for i, ch in enumerate(text):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > limit:
            return text[:i]
    return text


def split_counter(name: str) -> tuple[str, str | None, str]:
    """``IMG_1234(1).jpg`` -> (``IMG_1234``, ``1``, ``.jpg``); no counter -> (stem, None, ext)."""
    stem, ext = os.path.splitext(name)
    m = _COUNTER.match(stem)
    if m:
        return m["base"], m["n"], ext
    return stem, None, ext


# -- a photo's name -> its sidecar's possible names ------------------------------------------------------
def _forms(original: str, counter: str | None, rule: str | None = None) -> list[tuple[str, str]]:
    """The sidecar names Google gives a photo whose real name is ``original`` (``counter``:
    its ``(n)``), most exact first, each with the rule that names it."""
    c = f"({counter})" if counter else ""
    out: list[tuple[str, str]] = []
    if _u16(original) <= CLIP:
        out.append((f"{original}{c}.json", rule or "json"))
        full = original + SUPPLEMENTAL
        if _u16(full) <= CLIP:
            out.append((f"{full}{c}.json", rule or "supplemental"))
        else:
            out.append((f"{clip(full)}{c}.json", rule or "supplemental_clipped"))
        # the suffix cut elsewhere (a tool or a file system with a shorter limit): longest first
        for k in range(len(SUPPLEMENTAL) - 1, 0, -1):
            cut = f"{original}{SUPPLEMENTAL[:k]}{c}.json"
            if all(cut != name for name, _ in out):
                out.append((cut, rule or "supplemental_clipped"))
    else:  # the name itself is cut, in both the old and the new naming
        out.append((f"{clip(original)}{c}.json", rule or "name_clipped"))
    return out


def sidecar_candidates(name: str) -> list[tuple[str, str]]:
    """The names the sidecar of the photo called ``name`` may have, in the order they are
    tried, with the rule each follows. The photo's own full name first (a photo really
    called ``Scan(1).jpg`` has ``Scan(1).jpg.json``), then the numbered forms, where the
    counter moves after the rest of the sidecar's name."""
    base, counter, ext = split_counter(name)
    out = []
    if counter is None:
        out += _forms(name, None)
    else:
        # the whole name's forms only while it is not cut: the cut form of ``LONG…(1).jpg`` is
        # the sidecar of ``LONG….jpg``, the other photo
        if _u16(name) <= CLIP:
            out += _forms(name, None)
        out += _forms(base + ext, counter, "numbered")
        out += _forms(name, counter, "numbered")  # ``img(18).jpg`` -> ``img(18).jpg.supple(18).json``
    seen: set[str] = set()
    return [(n, r) for n, r in out if not (n in seen or seen.add(n))]


def edited_original(name: str, beside: set[str] | None = None) -> str | None:
    """The original's name for an edited copy (``IMG_1-edited(1).jpg`` -> ``IMG_1(1).jpg``),
    or None. A known marker is enough; any other ``-word`` (a language not in the list)
    counts only when the original is ``beside`` it (the names of its folder)."""
    base, counter, ext = split_counter(name)
    low = nfc(base).lower()
    c = f"({counter})" if counter else ""
    for marker in EDITED_MARKERS:
        if low.endswith(marker):
            return f"{nfc(base)[:-len(marker)]}{c}{ext}"
    if _u16(base) >= CLIP + 1:  # a cut name may have lost part of its marker: "-ha edit", "-e"
        head, dash, tail = nfc(base).rpartition("-")
        if dash and head and any(m.startswith("-" + tail.lower()) for m in EDITED_MARKERS):
            return f"{head}{c}{ext}"
    head, dash, tail = nfc(base).rpartition("-")
    if dash and head and tail and all(ch.isalpha() or ch == " " for ch in tail):
        original = f"{head}{c}{ext}"
        if beside is not None and original in beside:
            return original
    return None


def motion_partners(video: str, photos: list[str]) -> list[str]:
    """The photos a video is the moving half of: ``PXL_1.MP`` of ``PXL_1.MP.jpg``,
    ``IMG_1.MOV`` of ``IMG_1.HEIC`` (same stem), in name order."""
    stem = os.path.splitext(video)[0]
    return sorted(p for p in photos if not is_video(p) and os.path.splitext(p)[0] in (video, stem))


def title_fits(title: str | None, name: str) -> bool:
    """Whether a sidecar's ``title`` can be the real name of the photo file ``name``: the
    same name (the counter aside; the extension Google may have added to a title that
    had none), or, for a file name Google cut, a title that begins with it."""
    if not title:
        return False
    base, _, ext = split_counter(nfc(name))
    title = nfc(title)
    t_stem, t_ext = os.path.splitext(title)
    if title.lower() == (base + ext).lower() or title == base:
        return True
    if t_stem == base and t_ext.lower() == ext.lower():
        return True
    return _u16(base) > CLIP and title.startswith(base)


def real_name(name: str, title: str | None, rule: str | None) -> str:
    """The name to deliver a photo under: its file name, but where Google cut the file name
    (``…ORIGINA.jpg``), the sidecar's title, with the file's counter, edited marker and
    extension kept (they tell copies of one name apart)."""
    if not title or rule in ("motion", None):
        return name
    base, counter, ext = split_counter(name)
    original = edited_original(name) if rule == "edited" else None
    marker = ""
    if original:
        o_base = split_counter(original)[0]
        marker = base[len(o_base):] if base.startswith(o_base) else ""
        base = o_base
    t_stem = nfc(title)
    if t_stem.lower().endswith(ext.lower()) and ext:
        t_stem = t_stem[: -len(ext)]
    if _u16(base) <= CLIP or not t_stem.startswith(nfc(base)) or t_stem == nfc(base):
        return name
    return f"{t_stem}{marker}{f'({counter})' if counter else ''}{ext}"


# -- one folder's photos and sidecars ----------------------------------------------------------------------
@dataclass(slots=True)
class Match:
    sidecar: str | None  # the sidecar's file name in the folder
    rule: str | None  # which rule found it (RULES), None when none did
    note: str | None = None  # why none did, when it was ambiguous


def match_folder(media: list[str], jsons: dict[str, str], title_of: Callable[[str], str | None],
                 unclaimed: Callable[[list[str]], None] | None = None) -> dict[str, Match]:
    """Find each photo's sidecar among a folder's JSON files.

    ``media`` are the folder's photo and video names; ``jsons`` maps each JSON file's name
    in NFC to its name as stored; ``title_of(json_name)`` reads a sidecar's ``title``
    (only called where names leave a doubt). Two photos may point at one sidecar only
    through a cut name; the sidecar's title then says whose it is (none of them, if it
    fits none or several). ``unclaimed``, if given, is told the JSON names no photo claims
    by name, before their titles are read (the caller reads them anyway: album metadata)."""
    names = sorted(media)
    beside = {nfc(m) for m in names}
    cands = {m: [(jsons[nfc(j)], r) for j, r in sidecar_candidates(m) if nfc(j) in jsons] for m in names}
    cursor = dict.fromkeys(names, 0)
    out: dict[str, Match] = {}
    taken: set[str] = set()
    notes: dict[str, str] = {}
    pending = [m for m in names if cands[m]]
    while pending:  # each photo claims its first candidate left; a contested one goes to the title
        claims: dict[str, list[str]] = defaultdict(list)
        for m in pending:
            if cursor[m] < len(cands[m]):
                claims[cands[m][cursor[m]][0]].append(m)
        pending = []
        for j, claimants in claims.items():
            if len(claimants) == 1 and j not in taken:
                m = claimants[0]
                out[m] = Match(j, cands[m][cursor[m]][1])
                taken.add(j)
                continue
            title = title_of(j)
            fits = [m for m in claimants if title_fits(title, m)]
            for m in claimants:
                if len(fits) == 1 and m == fits[0] and j not in taken:
                    out[m] = Match(j, cands[m][cursor[m]][1])
                    taken.add(j)
                else:
                    notes[m] = "ambiguous"
                    cursor[m] += 1
                    pending.append(m)
    free = sorted(j for j in jsons.values() if j not in taken)
    if unclaimed is not None:
        unclaimed(free)
    # a sidecar no name rule reached: its title names one photo left without one
    left = [m for m in names if m not in out]
    if left and free:
        for m, j in _by_title(left, {j: title_of(j) for j in free}).items():
            out[m] = Match(j, "title")
    # an edited copy takes its original's sidecar
    for m in names:
        if m in out:
            continue
        original = edited_original(m, beside)
        if original is None:
            continue
        own = out.get(original) or next(
            (Match(jsons[nfc(j)], "edited") for j, _ in sidecar_candidates(original) if nfc(j) in jsons), None)
        if own is not None and own.sidecar:
            out[m] = Match(own.sidecar, "edited")
    # the video half of a motion photo takes its photo's
    for m in names:
        if m in out or not is_video(m):
            continue
        partner = next((p for p in motion_partners(m, names) if p in out), None)
        if partner is not None:
            out[m] = Match(out[partner].sidecar, "motion")
    for m in names:
        out.setdefault(m, Match(None, None, notes.get(m)))
    return out


def _by_title(left: list[str], titles: dict[str, str | None]) -> dict[str, str]:
    """Photos and the one sidecar whose title fits each (:func:`title_fits`), where that
    sidecar fits no other photo: looked up by name, not tried pair by pair."""
    exact: dict[str, list[str]] = defaultdict(list)
    for j, title in titles.items():
        if title:
            exact[nfc(title).lower()].append(j)
            exact[nfc(title)].append(j)
    cut = [j for j, t in titles.items() if t]
    fits: dict[str, list[str]] = {}
    for m in left:
        base, _, ext = split_counter(nfc(m))
        near = set(exact.get((base + ext).lower(), ())) | set(exact.get(base, ()))
        if _u16(base) > CLIP:  # a cut file name: its title begins with it
            near.update(j for j in cut if nfc(titles[j]).startswith(base))
        fits[m] = sorted(j for j in near if title_fits(titles[j], m))
    claims: dict[str, int] = defaultdict(int)
    for js in fits.values():
        for j in js:
            claims[j] += 1
    return {m: js[0] for m, js in fits.items() if len(js) == 1 and claims[js[0]] == 1}


# -- what a sidecar says ------------------------------------------------------------------------------------
def _place(geo: Any) -> tuple[float, float] | None:
    if not isinstance(geo, dict):
        return None
    try:
        lat, lon = float(geo.get("latitude", 0.0)), float(geo.get("longitude", 0.0))
    except (TypeError, ValueError):
        return None
    if lat == 0.0 and lon == 0.0:  # Google's way of saying "no place"
        return None
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return None
    return lat, lon


def sidecar_meta(doc: Any) -> dict[str, Any]:
    """The :class:`photo_escape.outcomes.ItemMeta` fields a photo sidecar gives:
    ``time_utc`` (``photoTakenTime.timestamp``, a UTC instant; never ``creationTime``,
    the upload), ``time_provenance`` ``sidecar:utc``, the place from ``geoData`` (or
    ``geoDataExif``) unless it is 0,0, ``title``, ``description``, ``favourite``."""
    if not isinstance(doc, dict):
        return {}
    meta: dict[str, Any] = {}
    taken = doc.get("photoTakenTime")
    try:
        stamp = int(str((taken or {}).get("timestamp", "")).strip()) if isinstance(taken, dict) else 0
    except ValueError:
        stamp = 0
    if stamp > 0:
        meta["time_utc"] = datetime.fromtimestamp(stamp, timezone.utc).isoformat()
        meta["time_provenance"] = "sidecar:utc"
    place = _place(doc.get("geoData")) or _place(doc.get("geoDataExif"))
    if place:
        meta["latitude"], meta["longitude"] = place
    for key in ("title", "description"):
        value = doc.get(key)
        if isinstance(value, str) and value.strip():
            meta[key] = value
    if doc.get("favorited") is True:
        meta["favourite"] = True
    return meta


def is_photo_sidecar(doc: Any) -> bool:
    return isinstance(doc, dict) and isinstance(doc.get("photoTakenTime"), dict)


def album_title(doc: Any) -> str | None:
    """An album's title from its JSON (``metadata.json``, named in the user's language in
    some exports, and in old ones wrapped in ``albumData``), or None for any other JSON."""
    if not isinstance(doc, dict) or "photoTakenTime" in doc:
        return None
    block = doc.get("albumData") or doc.get("albumdata")
    if isinstance(block, dict):
        doc = block
    title = doc.get("title")
    if isinstance(title, str) and ("date" in doc or "access" in doc or block is not None):
        return title.strip() or None
    return None


def parse_json(data: bytes | None) -> Any:
    if data is None:
        return None
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError):
        return None


# -- the index of an export ---------------------------------------------------------------------------------
class Member(NamedTuple):
    """Where one file's bytes are: a zip member (``part`` is the index of its zip; the
    rest from the zip's directory) or a file of an extracted tree (``part`` -1, ``crc``
    None unless another file has its size). Its name is the folder's and the file's the
    index keeps it under: a name is not stored twice."""

    part: int
    offset: int  # the local header's offset in the part
    csize: int
    method: int
    flags: int
    crc: int | None
    size: int


@dataclass
class Folder:
    media: dict[str, list[Member]] = field(default_factory=dict)  # file name -> copies (a name in two parts)
    jsons: dict[str, tuple[str, Member]] = field(default_factory=dict)  # NFC name -> (name, member)


@dataclass
class Index:
    """An export's files by folder, as the directories list them."""

    root: Path
    parts: list[str]  # the zip parts' file names below root, or [] for an extracted tree
    folders: dict[str, Folder] = field(default_factory=dict)
    other_files: int = 0  # neither photo, video nor JSON (archive_browser.html...)
    other_examples: list[str] = field(default_factory=list)

    def ref(self, folder: str, name: str, member: Member) -> str:
        """Where a file is, for people: ``takeout-001.zip:Takeout/Google Photos/...``."""
        full = f"{folder}/{name}" if folder else name
        return f"{self.parts[member.part]}:{full}" if member.part >= 0 else str(self.root / full)

    def read_small(self, folder: str, name: str, member: Member, limit: int = SIDECAR_LIMIT) -> bytes | None:
        """A small file's bytes (a sidecar), or None when it is larger than ``limit`` or
        cannot be read."""
        if member.size > limit:
            return None
        try:
            with open_member(self.root, self.parts, member, f"{folder}/{name}" if folder else name) as fh:
                return fh.read(limit + 1)
        except (OSError, EOFError, zipfile.BadZipFile, zlib.error, PermanentError, NotImplementedError):
            return None


def find_parts(path: Path) -> list[Path]:
    """The zip parts to read: ``path`` itself if it is a zip, else the zips directly in it."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".zip")


def _add(index: Index, name: str, member: Member | None) -> None:
    """File one member under its folder: a photo or video, a JSON file, or (counted,
    with a few examples, never listed) anything else: ``archive_browser.html``, a name
    no export has (``member`` None), a Mac's resource forks of a re-zipped export."""
    folder, _, base = name.rpartition("/")
    if not base:
        return
    low = base.lower()
    junk = member is None or base.startswith("._") or "__MACOSX" in folder.split("/")
    if not junk and low.endswith(".json"):
        index.folders.setdefault(folder, Folder()).jsons.setdefault(nfc(base), (base, member))
    elif not junk and is_media(base):
        index.folders.setdefault(folder, Folder()).media.setdefault(base, []).append(member)
    else:
        index.other_files += 1
        if len(index.other_examples) < 5 and low != "archive_browser.html" and "__MACOSX" not in name:
            index.other_examples.append(name)


def scan(path: str | os.PathLike) -> Index:
    """The index of a Takeout export: its zip parts (a folder of them, or one), or an
    extracted tree. Each part's directory is read and let go before the next; a part
    that cannot be read raises :class:`BrokenPart` naming it."""
    path = Path(path).expanduser()
    parts = find_parts(path)
    if not parts and path.is_dir() and any(p.suffix.lower() in (".tgz", ".gz") for p in path.iterdir()):
        raise PermanentError("unsupported_format", f"{path} holds Takeout parts in .tgz form, which cannot be read "
                                                   "in place: ask Takeout for .zip parts (or extract them here)")
    if parts:
        root = path if path.is_dir() else path.parent
        index = Index(root=root, parts=[p.name for p in parts])
        for i, part in enumerate(parts):
            try:
                with zipfile.ZipFile(part) as zf:
                    for info in zf.infolist():
                        if info.is_dir():
                            continue
                        if info.orig_filename != info.filename:  # a NUL in the name: not a file Google wrote
                            _add(index, f"{info.orig_filename!r}", None)
                            continue
                        _add(index, info.filename, Member(i, info.header_offset, info.compress_size,
                                                          info.compress_type, info.flag_bits, info.CRC,
                                                          info.file_size))
            except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as exc:
                raise BrokenPart(part.name, str(exc) or type(exc).__name__) from None
        return index
    return _scan_tree(path)


def _scan_tree(path: Path) -> Index:
    """An extracted export: names relative to the folder above ``Takeout/`` when the path
    is ``Takeout/`` itself, so ids agree with the zips'. CRC-32s only where sizes repeat."""
    base = path.parent if path.name == "Takeout" else path
    index = Index(root=base, parts=[])
    by_size: dict[int, list[tuple[str, Member]]] = defaultdict(list)
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for fname in sorted(filenames):
            full = os.path.join(dirpath, fname)
            rel = Path(os.path.relpath(full, base)).as_posix()
            try:
                size = os.stat(full).st_size
            except OSError:
                continue
            member = Member(-1, 0, size, zipfile.ZIP_STORED, 0, None, size)
            if is_media(fname):
                by_size[size].append((rel, member))
            else:
                _add(index, rel, member)
    for size, files in by_size.items():
        for rel, member in files:
            if len(files) > 1 and size > 0:  # copies can only be among files of one size
                member = member._replace(crc=_crc_of(base / rel))
            _add(index, rel, member)
    return index


def _crc_of(path: Path) -> int | None:
    crc = 0
    try:
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                crc = zlib.crc32(block, crc)
    except OSError:
        return None
    return crc


# -- reading one member ---------------------------------------------------------------------------------------
def open_member(index_root: Path, parts: list[str], member: Member, name: str) -> IO[bytes]:
    """A stream of the bytes of the file called ``name``: a zip member inflated as it is
    read (its CRC-32 checked at the end: :class:`zipfile.BadZipFile` if it does not
    match), or the file of an extracted tree. Only the member's own bytes are read: the
    part's directory is not parsed again."""
    if member.part < 0:
        return open(index_root / name, "rb")
    fh = open(index_root / parts[member.part], "rb")
    try:
        fh.seek(member.offset)
        head = fh.read(_LOCAL_HEADER.size)
        if len(head) != _LOCAL_HEADER.size:
            raise EOFError("the part ends before this member's header")
        fields = _LOCAL_HEADER.unpack(head)
        if fields[0] != b"PK\x03\x04":
            raise zipfile.BadZipFile("no member header where the directory says (the part changed since it was listed)")
        stored = fh.read(fields[10])
        encoding = "utf-8" if member.flags & 0x800 else "cp437"
        if stored != name.encode(encoding, "surrogateescape"):
            raise zipfile.BadZipFile("another member's header where the directory says (the part changed)")
        fh.seek(fields[11], os.SEEK_CUR)
        if member.flags & 0x1:
            raise PermanentError("encrypted", "the member is encrypted")
        info = zipfile.ZipInfo(name)
        info.compress_type, info.compress_size, info.file_size = member.method, member.csize, member.size
        info.CRC, info.flag_bits = member.crc, member.flags
        return zipfile.ZipExtFile(fh, "rb", info, None, close_fileobj=True)
    except BaseException:
        fh.close()
        raise


# -- the listing ------------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Copy:
    """One copy of a photo: where it is, and the sidecar found for it (its name and
    member) by which rule."""

    folder: str
    name: str
    member: Member
    rule: str | None
    sidecar: tuple[str, Member] | None


@dataclass
class Listing:
    """What listing an export found, for the report: counts by kind and by sidecar rule."""

    parts: int = 0
    photos: int = 0
    videos: int = 0
    copies_merged: int = 0  # album copies (and repeated names) listed once with their original
    albums: int = 0
    in_albums: int = 0
    rules: dict[str, int] = field(default_factory=dict)
    no_sidecar: int = 0
    not_photos: int = 0  # JSON files that describe no photo, and archive_browser.html and the like
    other_files: int = 0  # files neither photo, video nor JSON: counted and shown, never listed
    other_examples: list[str] = field(default_factory=list)

    def facts(self) -> dict[str, Any]:
        return {"takeout_parts": self.parts, "takeout_photos": self.photos, "takeout_videos": self.videos,
                "takeout_album_copies_merged": self.copies_merged, "takeout_albums": self.albums,
                "takeout_in_albums": self.in_albums, "takeout_no_sidecar": self.no_sidecar,
                "takeout_sidecar_rules": dict(sorted(self.rules.items())),
                "takeout_not_photos": self.not_photos, "takeout_other_files": self.other_files,
                **({"takeout_other_examples": self.other_examples} if self.other_examples else {})}


def photos_path(name: str) -> str:
    """A file's path inside the export's Google Photos folder, made safe: what is left
    after ``…/Takeout/<product>/`` (the product folder's name is in the user's language),
    without ``..`` or anything that could leave a folder."""
    parts = name.split("/")
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "Takeout" and i + 2 < len(parts):
            parts = parts[i + 2:]
            break
    return safe_relpath("/".join(parts))


def _content_key(member: Member, folder: str, name: str) -> tuple:
    """Copies share this: CRC-32 and size; a file whose CRC is unknown (its size is
    unique in an extracted tree) or that is empty is its own."""
    if member.crc is None or member.size == 0:
        return ("file", folder, name, member.part)
    return (member.crc, member.size)


def plan(index: Index, listing: Listing | None = None) -> tuple[list[list[Copy]], dict[str, str]]:
    """Every photo of the export once: groups of copies with the same content, the copy
    to read first (outside any album, then by folder and name), in a stable order; and
    the album folders with their titles. The index is consumed folder by folder (what
    matters of it moves into the groups), so memory does not hold both at once."""
    listing = listing if listing is not None else Listing()
    listing.parts = len(index.parts)
    listing.other_files, listing.other_examples = index.other_files, list(index.other_examples)
    groups: dict[tuple, list[Copy]] = defaultdict(list)
    albums_of: dict[str, str] = {}
    not_photos = index.other_files
    for folder_name in sorted(index.folders):
        folder = index.folders.pop(folder_name)
        titles: dict[str, Any] = {}

        def doc_of(json_name: str, folder: Folder = folder, docs: dict = titles, at: str = folder_name) -> Any:
            if json_name not in docs:
                docs[json_name] = parse_json(index.read_small(at, json_name, folder.jsons[nfc(json_name)][1]))
            return docs[json_name]

        def title_of(json_name: str) -> str | None:
            doc = doc_of(json_name)
            return doc.get("title") if is_photo_sidecar(doc) else None

        free: list[str] = []
        matches = match_folder(list(folder.media), {k: v[0] for k, v in folder.jsons.items()}, title_of,
                               unclaimed=free.extend)
        claimed = {m.sidecar for m in matches.values() if m.sidecar}
        for json_name in free:  # what no photo claims: the album's title, or no photo at all
            if json_name in claimed:
                continue
            title = album_title(doc_of(json_name))
            if title and folder_name not in albums_of:
                albums_of[folder_name] = title
            not_photos += 1
        for name, copies in folder.media.items():
            match = matches[name]
            sidecar = (match.sidecar, folder.jsons[nfc(match.sidecar)][1]) if match.sidecar else None
            for member in copies:
                groups[_content_key(member, folder_name, name)].append(
                    Copy(folder_name, name, member, match.rule, sidecar))
    listing.not_photos = not_photos
    listing.albums = len(albums_of)
    ordered = []
    for copies in groups.values():
        copies.sort(key=lambda c: (c.folder in albums_of, c.folder, c.name, c.member.part))
        ordered.append(copies)
    ordered.sort(key=lambda cs: (cs[0].folder in albums_of, cs[0].folder, cs[0].name, cs[0].member.part))
    return ordered, albums_of


def items(index: Index, *, videos: str = "deliver", page_size: int = 500,
          listing: Listing | None = None) -> Iterator[list[dict]]:
    """The export's photos as items, page by page (see :func:`plan`). Each item carries
    where its bytes are (``part``, ``member``, ``zip``), its album titles and what its
    sidecar says in ``meta`` (:class:`photo_escape.outcomes.ItemMeta`), and, for a video,
    ``media: "video"`` (delivered as a file, never decoded as a picture)."""
    listing = listing if listing is not None else Listing()
    photos = _each_item(index, listing, videos)
    while page := list(islice(photos, page_size)):
        yield page


def _each_item(index: Index, listing: Listing, videos: str) -> Iterator[dict]:
    groups, albums_of = plan(index, listing)
    used_ids: set[str] = set()
    for copies in groups:
        item = _item(index, copies, albums_of, videos, used_ids)
        meta = item["meta"]
        listing.videos += item.get("media") == "video"
        listing.photos += item.get("media") != "video"
        listing.copies_merged += len(copies) - 1
        listing.in_albums += bool(meta.get("albums"))
        if meta.get("sidecar_rule"):
            listing.rules[meta["sidecar_rule"]] = listing.rules.get(meta["sidecar_rule"], 0) + 1
        else:
            listing.no_sidecar += 1
        yield item


def _item(index: Index, copies: list[Copy], albums_of: dict[str, str], videos: str, used_ids: set[str]) -> dict:
    first = copies[0]
    source = next((c for c in copies if c.sidecar), None)
    meta: dict[str, Any] = {}
    title = None
    if source is not None:
        json_name, sidecar_member = source.sidecar
        doc = parse_json(index.read_small(source.folder, json_name, sidecar_member))
        meta = sidecar_meta(doc)
        title = meta.get("title")
        meta["sidecar"] = index.ref(source.folder, json_name, sidecar_member)
        meta["sidecar_rule"] = source.rule
        if doc is None:
            meta["sidecar_unreadable"] = True
    albums = sorted({albums_of[c.folder] for c in copies if c.folder in albums_of})
    if albums:
        meta["albums"] = albums
    relpath = photos_path(f"{first.folder}/{first.name}" if first.folder else first.name)
    item_id = f"takeout:{relpath}"
    if item_id in used_ids:  # the same path with other bytes (in two parts): told apart by content
        item_id = f"{item_id}#{(first.member.crc or 0):08x}-{first.member.size}"
    used_ids.add(item_id)
    video = is_video(first.name)
    m = first.member
    content = f"{m.crc:08x}-{m.size}" if m.crc is not None else f"size-{m.size}"
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:12]
    item: dict[str, Any] = {
        "item_id": item_id,
        "source_ref": index.ref(first.folder, first.name, m),
        "name": safe_component(real_name(nfc(first.name), title, source.rule if source else None)),
        "relpath": relpath,
        "size": m.size,
        # what a rerun compares: the content, what the sidecar and albums say, and for a video the choice made
        "fingerprint": f"{content}:{digest}" + (f":video-{videos}" if video else ""),
        "member": f"{first.folder}/{first.name}" if first.folder else first.name,
        "meta": meta,
    }
    if m.part >= 0:
        item["part"] = index.parts[m.part]
        item["zip"] = [m.offset, m.csize, m.method, m.flags, m.crc]
    if video:
        item["media"] = "video"
    if len(copies) > 1:
        item["copies"] = [index.ref(c.folder, c.name, c.member) for c in copies[1:]]
    return item


def open_item(path: str | os.PathLike, item: dict) -> IO[bytes]:
    """A stream of an item's bytes (as :func:`items` described them) in the export at
    ``path`` (the folder of parts, a part, or the extracted tree the job names)."""
    path = Path(path).expanduser()
    if item.get("part"):
        offset, csize, method, flags, crc = item["zip"]
        member = Member(0, offset, csize, method, flags, crc, item["size"])
        return open_member(path.parent if path.is_file() else path, [item["part"]], member, item["member"])
    base = path.parent if path.name == "Takeout" else path
    return open(base / item["member"], "rb")


def staged_name(item: dict) -> str:
    """A file name for an item in the work folder: never a path the member's name could steer."""
    return safe_component(posixpath.basename(item.get("name") or "photo"))
