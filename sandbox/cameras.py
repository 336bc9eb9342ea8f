"""Files as old cameras wrote them, byte by byte, for the capture-time readers to meet.

Each keeps its capture date where EXIF's DateTimeOriginal is not: in a maker note or
in a container older than EXIF. The layouts follow exiftool's tag documentation
(Image::ExifTool::Reconyx, ::APP12, ::CanonRaw), and the tests check every file with
exiftool itself. All three cameras knew no zone: the dates are wall-clock times.

* :func:`reconyx_jpeg`   a trail camera JPEG whose only date is in its Reconyx maker note
                         (HyperFire ``\\x01\\xf1``, UltraFire ``RECONYXUF``, HF2 ``RECONYXH2``)
* :func:`pentax_jpeg`    a Pentax JPEG with its date and time only in its maker note
* :func:`olympus_app12_jpeg`  a JPEG with an APP12 "Picture Info" block (``TimeDate=`` seconds)
* :func:`iptc_jpeg`      a JPEG dated only by IPTC's DateCreated and TimeCreated (with an offset)
* :func:`canon_crw`      a Canon CIFF raw file (PowerShot A5 era): a heap of records, the
                         capture time a ``TimeStamp`` record of seconds with a zone code
"""

from __future__ import annotations

import io
import struct
from datetime import datetime, timezone
from pathlib import Path

from PIL import Image

from sandbox import photos

SMALL = (64, 48)


def _jpeg(picture: int, size: tuple[int, int], exif: bytes | None = None) -> bytes:
    buf = io.BytesIO()
    kw = {"exif": exif} if exif else {}
    photos.picture(picture, size).save(buf, "JPEG", quality=80, **kw)
    return buf.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload


def wall_seconds(when: datetime) -> int:
    """A wall-clock time as the old cameras counted it: seconds since 1970-01-01 00:00
    *of the camera's clock* (no zone; exiftool shows them through gmtime)."""
    return int(when.replace(tzinfo=timezone.utc).timestamp())


# -- Reconyx ----------------------------------------------------------------------------------

def reconyx_maker_note(when: datetime, kind: str = "hyperfire", *, swapped: bool = False) -> bytes:
    """A Reconyx maker note holding ``when`` (and a serial number and a label), in the
    layout of one of exiftool's three Reconyx tables:

    * ``hyperfire`` (Reconyx::Main, HC500/HC600/PC900): int16u words, little-endian; word 0-1
      MakerNoteVersion (``01 f1 03 00``), words 0x0b-0x10 the date as sec, min, hour,
      month, day, year. ``swapped`` writes those six words big-endian, as some firmware did.
    * ``ultrafire`` (Reconyx::Type2): ``RECONYXUF\\0``; byte 0x3b: sec, min, hour, day,
      month, year (low byte, high byte).
    * ``hf2`` (Reconyx::Type3, HF2 PRO): ``RECONYXH2\\0``; byte 0x3e: int16u sec, min,
      hour, day, month, year.
    """
    if kind == "hyperfire":
        words = [0] * 64
        words[0:2] = [0xF101, 0x0003]
        words[0x07:0x09] = [1, 3]  # Sequence 1 of 3
        words[0x0B:0x11] = [when.second, when.minute, when.hour, when.month, when.day, when.year]
        note = bytearray(struct.pack("<64H", *words))
        if swapped:
            note[0x16:0x22] = struct.pack(">6H", *words[0x0B:0x11])
        note[0x2A:0x2A + 30] = "H500HF01234567".encode("utf-16-le").ljust(30, b"\0")
        return bytes(note)
    if kind == "ultrafire":
        note = bytearray(b"RECONYXUF\0".ljust(0x80, b"\0"))
        note[0x34:0x35] = b"M"
        note[0x3B:0x42] = bytes([when.second, when.minute, when.hour, when.day, when.month,
                                 when.year & 0xFF, when.year >> 8])
        return bytes(note)
    if kind == "hf2":
        note = bytearray(b"RECONYXH2\0".ljust(0xA0, b"\0"))
        note[0x34:0x36] = b"MS"
        note[0x3E:0x4A] = struct.pack("<6H", when.second, when.minute, when.hour, when.day, when.month,
                                      when.year)
        return bytes(note)
    raise ValueError(f"no Reconyx maker note of kind {kind!r}")


def reconyx_jpeg(path: str | Path, when: datetime, kind: str = "hyperfire", *, swapped: bool = False,
                 picture: int = 11, size: tuple[int, int] = SMALL) -> Path:
    """A trail-camera JPEG: Make ``RECONYX``, no DateTimeOriginal, the date in its maker note."""
    exif = Image.Exif()
    exif[0x010F] = "RECONYX"
    exif[0x0110] = {"hyperfire": "HC500", "ultrafire": "UltraFire", "hf2": "HF2 PRO COVERT"}[kind]
    exif.get_ifd(0x8769)[0x927C] = reconyx_maker_note(when, kind, swapped=swapped)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jpeg(picture, size, exif.tobytes()))
    return path


# -- Olympus (and Agfa, Polaroid) APP12 Picture Info --------------------------------------------

def picture_info(when: datetime | int, *, camera: str = "SR45") -> bytes:
    """An APP12 "Picture Info" block as Olympus D-series cameras wrote it: a maker's name,
    then ``[picture info]`` lines ``Tag=value`` (CR/LF), ``TimeDate`` a count of seconds of
    the camera's wall clock."""
    seconds = when if isinstance(when, int) else wall_seconds(when)
    lines = [b"[picture info]", b"TimeDate=%d" % seconds, b"Shutter=8000", b"Flash=0", b"Resolution=2",
             b"Protect=0", b"ConTake=0", b"ImageSize=1280-960", b"ColorMode=0", b"Zoom=0",
             b"[camera info]", b"Type=" + camera.encode(), b"Serial#=100101", b"[end]"]
    return b"OLYMPUS OPTICAL CO.,LTD.\0" + b"\r\n".join(lines) + b"\r\n\0"


def olympus_app12_jpeg(path: str | Path, when: datetime | int, *, camera: str = "SR45",
                       picture: int = 12, size: tuple[int, int] = SMALL) -> Path:
    """A JPEG with no EXIF at all, its capture date only in an APP12 Picture Info block
    right after SOI (where the D-340L and its kin put it)."""
    data = _jpeg(picture, size)
    app12 = _segment(0xEC, picture_info(when, camera=camera))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:2] + app12 + data[2:])
    return path


# -- IPTC (scanners, news desks) ------------------------------------------------------------------

def iptc_jpeg(path: str | Path, when: datetime, offset: str = "+0000", *, picture: int = 15,
              size: tuple[int, int] = SMALL) -> Path:
    """A JPEG whose only date is IPTC's (an APP13 ``Photoshop 3.0`` block, resource 0x0404
    holding IIM records): DateCreated (2:55, ``CCYYMMDD``) and TimeCreated (2:60,
    ``HHMMSS+HHMM``), as scanning and news software write them, no EXIF at all."""
    def record(number: int, value: bytes) -> bytes:
        return b"\x1c\x02" + bytes([number]) + struct.pack(">H", len(value)) + value

    iim = record(0, b"\x00\x04") + record(55, when.strftime("%Y%m%d").encode()) \
        + record(60, when.strftime("%H%M%S").encode() + offset.encode())
    if len(iim) % 2:
        iim += b"\0"
    block = b"Photoshop 3.0\0" + b"8BIM" + struct.pack(">H", 0x0404) + b"\0\0" + struct.pack(">I", len(iim)) + iim
    data = _jpeg(picture, size)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[:2] + _segment(0xED, block) + data[2:])
    return path


# -- Pentax ------------------------------------------------------------------------------------

def pentax_jpeg(path: str | Path, when: datetime, *, picture: int = 14, size: tuple[int, int] = SMALL) -> Path:
    """A Pentax JPEG whose date and time are only in its maker note (Pentax::Main, ``AOC\\0``
    then ``MM`` and an IFD): ``Date`` (0x0006, 4 bytes: year big-endian, month, day) and
    ``Time`` (0x0007, 3 bytes: hour, minute, second), both short enough to sit in the entry."""
    date = struct.pack(">HBB", when.year, when.month, when.day)
    clock = bytes([when.hour, when.minute, when.second, 0])
    ifd = struct.pack(">H", 2) + struct.pack(">HHI", 0x0006, 7, 4) + date + struct.pack(">HHI", 0x0007, 7, 3) + clock
    note = b"AOC\0MM" + ifd + struct.pack(">I", 0)
    exif = Image.Exif()
    exif[0x010F] = "PENTAX Corporation"
    exif[0x0110] = "PENTAX K10D"
    exif.get_ifd(0x8769)[0x927C] = note
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_jpeg(picture, size, exif.tobytes()))
    return path


# -- Canon CIFF (CRW) ----------------------------------------------------------------------------

def _ciff_block(entries: list[tuple[int, bytes]]) -> bytes:
    """One CIFF heap: the values, then the directory (count, then per entry tag, size and
    offset, all relative to the block's start), then the directory's offset."""
    data = bytearray()
    directory = [struct.pack("<H", len(entries))]
    for tag, value in entries:
        directory.append(struct.pack("<HII", tag, len(value), len(data)))
        data += value
        if len(data) % 2:
            data += b"\0"
    offset = len(data)
    return bytes(data) + b"".join(directory) + struct.pack("<I", offset)


def canon_crw(path: str | Path, when: datetime, *, model: str = "Canon PowerShot A5", jpeg: bool = True) -> Path:
    """A Canon CRW (CIFF, ``HEAPCCDR``): the header, then the root heap holding the
    ``ImageProps`` heap (0x300a), which holds ``TimeStamp`` (0x180e: int32u seconds of the
    wall clock, int32s zone code, int32u 0x80000000 when that code is valid: not on the
    PowerShot A5), ``ImageInfo`` (0x1810) and the ``CameraObject`` heap (0x2807) with
    ``MakeModel`` (0x080a). With ``jpeg`` the root also holds a small ``JpgFromRaw`` (0x2007)."""
    time_stamp = struct.pack("<IiI", wall_seconds(when), 0, 0)
    image_info = struct.pack("<IIfiiIi", 1024, 768, 1.0, 0, 8, 0, 0)
    camera = _ciff_block([(0x080A, b"Canon\0" + model.encode() + b"\0")])
    props = _ciff_block([(0x180E, time_stamp), (0x1810, image_info), (0x2807, camera)])
    root_entries = [(0x300A, props)]
    if jpeg:
        root_entries.append((0x2007, _jpeg(13, SMALL)))
    header = b"II" + struct.pack("<I", 26) + b"HEAPCCDR" + struct.pack("<I", 0x00010002) + b"\0" * 8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(header + _ciff_block(root_entries))
    return path
