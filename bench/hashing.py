"""Hashing 12-megapixel JPEGs: photo-escape's way against naive imagehash, per core.

Pictures: scikit-image's real photographs upscaled to 4000 x 3000 (12 megapixels),
saved as camera-like JPEGs (quality 92, some with an EXIF orientation).

* photo-escape: ``tasks.hashing.hash_file`` (sha256 of the bytes, a reduced-size
  decode, EXIF orientation, phash, dhash, both mirrored, a 32x32 thumbnail), in one
  process (``processes=1``) so the figure is per core; then ``hash_files`` with a
  process pool on every core for the throughput.
* peer: ``imagehash.phash(img)`` after ``img.draft("L", (256, 256))``, which any
  imagehash user can call (libjpeg then decodes at 1/2 to 1/8 scale, as photo-escape
  does), in one process; the ratio is against this peer.
* for reference, the naive peer: ``imagehash.phash(Image.open(p))`` (a full 12-megapixel
  decode, one hash, no orientation).
* whole commands, start-up included: ``photo-escape hash PATHS --json`` (a process pool
  on every core) against a Python process running the draft peer over the same files.

    .venv/bin/python bench/hashing.py            # quick: 4 pictures
    .venv/bin/python bench/hashing.py --full     # recorded: 12 pictures, 3 rounds
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import imagehash  # noqa: E402
from PIL import Image  # noqa: E402

from bench.peers import default_photo_escape  # noqa: E402
from sandbox import photos  # noqa: E402
from tasks.hashing import hash_file, hash_files  # noqa: E402

SIZE = (4000, 3000)


def make_pictures(folder: Path, count: int) -> list[Path]:
    """``count`` 12-megapixel camera-like JPEGs (reused when already there)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        p = folder / f"IMG_{i:04d}.JPG"
        if not p.exists():
            photos.write_jpeg(p, i % len(photos.BASES), size=SIZE, quality=92, orientation=(1, 6, 1, 8)[i % 4])
        out.append(p)
    return out


def timed(fn, paths) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to run ``fn(paths)``. The CPU time
    is the per-core figure that the other agents sharing this machine disturb least."""
    w, c = time.perf_counter(), time.process_time()
    fn(paths)
    return time.perf_counter() - w, time.process_time() - c


def ours(paths):
    for p in paths:
        rec = hash_file(p)
        assert rec["status"] == "ok", rec


def naive(paths):
    for p in paths:
        imagehash.phash(Image.open(p))


def drafted(paths):
    """The peer as an imagehash user who knows Pillow writes it: a reduced-size decode."""
    for p in paths:
        with Image.open(p) as img:
            img.draft("L", (256, 256))
            imagehash.phash(img)


PEER_SCRIPT = """import sys, imagehash
from PIL import Image
for p in sys.argv[1:]:
    with Image.open(p) as img:
        img.draft("L", (256, 256))
        print(p, imagehash.phash(img))
"""


def whole_commands(paths, photo_escape: list[str]) -> tuple[float, float]:
    """Wall seconds of ``photo-escape hash PATHS --json`` and of a Python process running
    the draft peer over the same files, start-up included."""
    import subprocess

    files = [str(p) for p in paths]
    t = time.perf_counter()
    subprocess.run(photo_escape + ["hash", *files, "--json"], check=True, stdout=subprocess.DEVNULL)
    ours = time.perf_counter() - t
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", PEER_SCRIPT, *files], check=True, stdout=subprocess.DEVNULL)
    return ours, time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--full", action="store_true")
    ap.add_argument("--count", type=int)
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "photo-escape-bench-12mp"))
    ap.add_argument("--photo-escape", help="photo-escape's command for the whole-command line "
                                           "(default: the console script beside this Python)")
    args = ap.parse_args(argv)
    count = args.count or (12 if args.full else 4)
    rounds = args.rounds or (3 if args.full else 1)
    paths = make_pictures(Path(args.dir), count)
    mb = sum(p.stat().st_size for p in paths) / 1e6
    print(f"{count} JPEGs of {SIZE[0]}x{SIZE[1]} ({mb:.1f} MB), {rounds} round(s), {os.cpu_count()} cores")
    ours(paths[:1]), naive(paths[:1]), drafted(paths[:1])  # warm the page cache and the imports
    r_ours, r_peer, r_naive = [], [], []
    for _ in range(rounds):  # interleaved, so a busy moment on the machine hits all three
        r_ours.append(timed(ours, paths))
        r_peer.append(timed(drafted, paths))
        r_naive.append(timed(naive, paths))
    w_ours, c_ours = (statistics.median(x) for x in zip(*r_ours))
    w_peer, c_peer = (statistics.median(x) for x in zip(*r_peer))
    w_naive, c_naive = (statistics.median(x) for x in zip(*r_naive))
    w_pool, _ = timed(lambda ps: hash_files(ps, processes=0), paths)
    ms = lambda t: f"{t / count * 1000:7.1f} ms"  # noqa: E731
    print(f"{'':30}{'CPU':>10}{'wall':>10}   per picture")
    print(f"{'photo-escape, 1 process':30}{ms(c_ours):>10}{ms(w_ours):>10}   (sha256 + phash + dhash + mirrors + thumbnail)")
    print(f"{'imagehash.phash after draft()':30}{ms(c_peer):>10}{ms(w_peer):>10}   (phash only, reduced-size decode)")
    print(f"{'naive imagehash.phash':30}{ms(c_naive):>10}{ms(w_naive):>10}   (phash only, full decode; reference)")
    print(f"ratio per core against the draft() peer: {c_peer / c_ours:.2f}x by CPU time, {w_peer / w_ours:.2f}x by "
          f"wall time (above 1: photo-escape is faster); against the naive one: {c_naive / c_ours:.1f}x CPU")
    print(f"photo-escape on all cores (hash_files, process pool, pool start-up included): {ms(w_pool)} per picture wall")
    pe = shlex.split(args.photo_escape) if args.photo_escape else default_photo_escape()
    cmd_ours, cmd_peer = whole_commands(paths, pe)
    print(f"whole commands, start-up included: photo-escape hash {cmd_ours:.2f} s, a Python process running the "
          f"draft() peer {cmd_peer:.2f} s: ratio {cmd_ours / cmd_peer:.2f} (photo-escape's time / the peer's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
