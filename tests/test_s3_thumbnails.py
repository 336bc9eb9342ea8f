"""Thumbnails: RAW files from the JPEG preview they embed, HEIC through pillow-heif,
ordinary photos upright by their EXIF orientation, and broken input as clear errors."""

from __future__ import annotations

import io
import struct
import time
from datetime import datetime

import numpy as np
import pytest
from PIL import Image

from sandbox import photos
from sandbox.s3 import preview_of, write_raw
from tasks.thumbnails import ThumbnailError, _rawpy_image, make_thumbnail, raw_preview, thumbnail_jpeg


def _gray(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    return np.asarray(img.convert("L").resize(size), dtype=float)


@pytest.mark.parametrize("style,name", [("nef", "IMG_0001.NEF"), ("dng", "IMG_0002.DNG")])
def test_raw_thumbnail_comes_from_the_embedded_preview(tmp_path, style, name):
    path = write_raw(tmp_path / name, 7, taken=datetime(2006, 10, 4, 9, 30), style=style)
    data, orientation = raw_preview(path)
    assert data == preview_of(7) and orientation == 1  # the exact JPEG the camera embedded
    thumb = make_thumbnail(path, 256)
    assert thumb.method == "raw_preview" and (thumb.width, thumb.height) == (256, 192)
    img = Image.open(io.BytesIO(thumb.data))
    assert img.format == "JPEG"
    diff = np.abs(_gray(img, (256, 192)) - _gray(Image.open(io.BytesIO(data)), (256, 192))).mean()
    assert diff < 6, diff


def test_raw_preview_is_turned_upright_by_the_raw_orientation(tmp_path):
    path = write_raw(tmp_path / "IMG_0003.NEF", 8, orientation=6)
    thumb = make_thumbnail(path, 200)
    assert (thumb.width, thumb.height) == (150, 200)  # a portrait: rotated as a viewer shows it
    expected = Image.open(io.BytesIO(preview_of(8))).transpose(Image.Transpose.ROTATE_270)
    diff = np.abs(_gray(Image.open(io.BytesIO(thumb.data)), (150, 200)) - _gray(expected, (150, 200))).mean()
    assert diff < 6, diff


def test_rawpy_reads_the_dng_preview_too(tmp_path):
    """The fallback for RAW layouts the TIFF walk does not know: LibRaw's extract_thumb."""
    path = write_raw(tmp_path / "IMG_0004.DNG", 9, style="dng")
    img, method = _rawpy_image(path)
    assert method == "rawpy_thumb" and img.size == (640, 480)


def test_jpeg_thumbnail_is_upright_and_small(tmp_path):
    path = photos.write_jpeg(tmp_path / "portrait.jpg", 2, orientation=6, size=(640, 480))
    thumb = make_thumbnail(path, 128)
    assert thumb.method == "decode" and (thumb.width, thumb.height) == (128, 96)
    upright = photos.picture(2, (640, 480))
    diff = np.abs(_gray(Image.open(io.BytesIO(thumb.data)), (128, 96)) - _gray(upright, (128, 96))).mean()
    assert diff < 8, diff


def test_heic_and_png_thumbnails(tmp_path):
    pytest.importorskip("pillow_heif").register_heif_opener()
    heic = tmp_path / "IMG_0005.HEIC"
    photos.picture(5, (400, 300)).save(heic)
    png = tmp_path / "screen.png"
    photos.picture(6, (300, 400)).save(png)
    assert Image.open(io.BytesIO(thumbnail_jpeg(heic, 100))).size == (100, 75)
    assert Image.open(io.BytesIO(thumbnail_jpeg(png, 100))).size == (75, 100)


def test_broken_files_are_clear_errors(tmp_path):
    bad = photos.bad_files(tmp_path)
    reasons = {}
    for name, path in bad.items():
        with pytest.raises(ThumbnailError) as err:
            make_thumbnail(path)
        reasons[name] = err.value.reason
    assert reasons == {"truncated": "unreadable", "empty": "empty", "text": "unsupported_format"}


def test_hostile_raw_with_looping_ifds_ends_quickly(tmp_path):
    """IFD0 chains to itself and its SubIFDs point back at it; counts are absurd."""
    ifd = struct.pack("<H", 3)
    ifd += struct.pack("<HHLL", 0x014A, 4, 1, 8)           # SubIFDs: itself
    ifd += struct.pack("<HHLL", 0x0201, 4, 1, 0xFFFFFF00)  # preview far past the end
    ifd += struct.pack("<HHLL", 0x0111, 4, 0x7FFFFFFF, 8)  # absurd strip count
    ifd += struct.pack("<L", 8)                            # next IFD: itself
    path = tmp_path / "LOOP.NEF"
    path.write_bytes(b"II*\x00" + struct.pack("<L", 8) + ifd + b"\x00" * 64)
    start = time.monotonic()
    assert raw_preview(path) is None
    with pytest.raises(ThumbnailError) as err:
        make_thumbnail(path)
    assert err.value.reason == "no_preview" and time.monotonic() - start < 5
