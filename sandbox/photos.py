"""Real photographs for the sandbox, the demo and the tests, with EXIF we write ourselves.

scikit-image ships a handful of real photographs (astronaut, coffee, the cat Chelsea,
a rocket launch, a retina, the Hubble deep field, a stereo pair of a motorcycle...).
:func:`picture` turns them into as many *distinct* pictures as a collection needs:
picture ``i`` is a crop of one of those photographs at its own position and scale,
resized to the requested size. :func:`write_jpeg` saves one with a capture time,
time-zone offset, GPS position/time and orientation in its EXIF, as a camera would.
"""

from __future__ import annotations

import functools
import io
import random
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

BASES = (
    "astronaut", "coffee", "chelsea", "rocket", "retina", "hubble_deep_field",
    "immunohistochemistry", "motorcycle_left", "motorcycle_right", "camera", "coins", "moon",
)


@functools.lru_cache(maxsize=None)
def base(name: str) -> np.ndarray:
    """One of scikit-image's photographs as an RGB uint8 array."""
    import skimage.data as data

    if name.startswith("motorcycle"):
        left, right, _ = data.stereo_motorcycle()
        img = left if name.endswith("left") else right
    else:
        img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.shape[-1] == 4:
        img = img[..., :3]
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).astype(np.uint8) if img.dtype.kind == "f" else img.astype(np.uint8)
    return np.ascontiguousarray(img)


def picture(index: int | str, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A distinct real picture. ``index`` 0..11 are the whole base photographs;
    larger numbers are crops of them at positions and scales drawn from ``index``."""
    if isinstance(index, str):
        return Image.fromarray(base(index)).resize(size, Image.LANCZOS)
    name = BASES[index % len(BASES)]
    img = base(name)
    h, w = img.shape[:2]
    if index >= len(BASES):
        rng = random.Random(index)
        aspect = size[0] / size[1]
        frac = rng.uniform(0.35, 0.7)
        ch = int(h * frac)
        cw = min(w, int(ch * aspect))
        ch = min(h, int(cw / aspect))
        y = rng.randint(0, h - ch)
        x = rng.randint(0, w - cw)
        img = img[y:y + ch, x:x + cw]
    return Image.fromarray(img).resize(size, Image.LANCZOS)


def _r(num: int, den: int = 1):
    from PIL.TiffImagePlugin import IFDRational

    return IFDRational(num, den)


def _dms(deg: float) -> tuple:
    centi = int(round(abs(deg) * 360000))  # hundredths of an arc second
    d, rest = divmod(centi, 360000)
    m, cs = divmod(rest, 6000)
    return (_r(d), _r(m), _r(cs, 100))


def exif_bytes(
    taken: datetime | None = None,
    *,
    offset: str | None = None,
    subsec: str | None = None,
    orientation: int | None = None,
    gps: tuple[float, float] | None = None,
    gps_utc: datetime | None = None,
    make: str = "photo-escape sandbox",
    model: str = "SkImage 1",
    description: str | None = None,
) -> bytes:
    """EXIF as a camera writes it: DateTimeOriginal (local wall clock), optional
    OffsetTimeOriginal, GPS position and GPS UTC date/time, Orientation."""
    exif = Image.Exif()
    exif[0x010F] = make
    exif[0x0110] = model
    if description:
        exif[0x010E] = description
    if orientation:
        exif[0x0112] = orientation
    ifd = exif.get_ifd(0x8769)
    if taken is not None:
        stamp = taken.strftime("%Y:%m:%d %H:%M:%S")
        exif[0x0132] = stamp  # DateTime
        ifd[0x9003] = stamp  # DateTimeOriginal
        ifd[0x9004] = stamp  # DateTimeDigitized
        if subsec:
            ifd[0x9291] = subsec  # SubSecTimeOriginal
        if offset:
            ifd[0x9011] = offset  # OffsetTimeOriginal
            ifd[0x9010] = offset  # OffsetTime
    if gps is not None or gps_utc is not None:
        g = exif.get_ifd(0x8825)
        g[0x0000] = b"\x02\x03\x00\x00"
        if gps is not None:
            lat, lon = gps
            g[0x0001] = "N" if lat >= 0 else "S"
            g[0x0002] = _dms(lat)
            g[0x0003] = "E" if lon >= 0 else "W"
            g[0x0004] = _dms(lon)
        if gps_utc is not None:
            g[0x0007] = (_r(gps_utc.hour), _r(gps_utc.minute), _r(gps_utc.second))
            g[0x001D] = gps_utc.strftime("%Y:%m:%d")
    return exif.tobytes()


def write_jpeg(
    path: str | Path,
    picture_id: int | str = 0,
    *,
    picture: int | str | None = None,
    size: tuple[int, int] = (640, 480),
    quality: int = 88,
    image: Image.Image | None = None,
    **exif: Any,
) -> Path:
    """Save a real picture as a JPEG with the given EXIF (see :func:`exif_bytes`).

    ``orientation`` (1..8) stores the pixels *as a camera would*, rotated so that a
    viewer applying the tag shows the upright picture.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pid = picture if picture is not None else picture_id
    img = image if image is not None else globals()["picture"](pid, size)
    orientation = exif.get("orientation")
    if orientation and orientation != 1:
        img = stored_for_orientation(img, orientation)
    taken = exif.pop("taken", None)
    img.convert("RGB").save(path, "JPEG", quality=quality, exif=exif_bytes(taken, **exif))
    return path


# The stored pixels for each orientation tag are the inverse of what a viewer does.
_INVERSE = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_90],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_270],
}


def stored_for_orientation(upright: Image.Image, orientation: int) -> Image.Image:
    """The pixels a camera stores so that ``ImageOps.exif_transpose`` shows ``upright``."""
    img = upright
    for op in _INVERSE.get(orientation, []):
        img = img.transpose(op)
    return img


def bad_files(root: str | Path) -> dict[str, Path]:
    """The classic broken inputs: truncated JPEG, zero-byte file, text named .jpg."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    picture(3).save(good, "JPEG", quality=85)
    data = good.getvalue()
    out = {
        "truncated": root / "truncated.jpg",
        "empty": root / "empty.jpg",
        "text": root / "notes.jpg",
    }
    out["truncated"].write_bytes(data[: len(data) // 3])
    out["empty"].write_bytes(b"")
    out["text"].write_text("<html><body>This is not a photo.</body></html>\n")
    return out


def make_collection(root: str | Path, count: int = 24, *, bad: bool = True,
                    start: datetime = datetime(2006, 10, 4, 9, 30), size: tuple[int, int] = (640, 480)) -> dict[str, Path]:
    """A folder of ``count`` real pictures with capture times a few hours apart in
    dated sub-folders (as a camera import makes them), plus the bad files."""
    root = Path(root)
    out: dict[str, Path] = {}
    for i in range(count):
        taken = start + timedelta(hours=7 * i, minutes=13 * i)
        p = root / taken.strftime("%Y-%m-%d") / f"IMG_{i + 1:05d}.JPG"
        out[f"photo{i}"] = write_jpeg(p, i, taken=taken, size=size)
    if bad:
        out.update(bad_files(root / "broken"))
    return out
