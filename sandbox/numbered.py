"""A stand-in for an old event site's media host: ``/gallery/full/{n}.jpg``, many missing.

Submissions were numbered 1..``count``; some numbers were never filled or were
taken down (``missing``: an explicit set, or a deterministic share ``missing_rate``
drawn per number), and everything past ``count`` is gone too: each of those answers
404. The present ones are real JPEGs with EXIF (:func:`sandbox.photos.write_jpeg`),
made on first request and cached. Wrapped in :class:`sandbox.faults.FaultInjector`
(``host.faults`` is its plan).

``latency_ms`` makes every answer wait first, as a server far away does.

``python -m sandbox.numbered --count 500 [--latency-ms 30] [--warm]`` serves one on its
own and prints its URL (``GET /_admin/requests`` and ``/_admin/faults`` tell what it saw).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import tempfile
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable

from sandbox import photos
from sandbox.faults import FaultInjector, FaultPlan
from sandbox.server import Server, serve

PATH_RE = re.compile(r"^/gallery/full/(\d+)\.jpg$")


class NumberedHost:
    """Numbered pictures 1..count with gaps; a WSGI app with a fault plan."""

    def __init__(
        self,
        count: int = 20000,
        *,
        missing: set[int] | None = None,
        missing_rate: float = 0.25,
        cache_dir: str | Path | None = None,
        size: tuple[int, int] = (320, 240),
        faults: list[dict[str, Any]] | None = None,
        seed: int = 2009,
        start: datetime = datetime(2009, 11, 23, 18, 0),
        latency_ms: float = 0.0,
    ) -> None:
        self.count = count
        #: every answer (404s included) waits this long first, as a distant server's round trip does
        self.latency_ms = latency_ms
        self.size = size
        self.seed = seed
        self.start_time = start
        self.cache_dir = Path(cache_dir or tempfile.mkdtemp(prefix="pe-numbered-cache-"))
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        if missing is None:
            missing = {n for n in range(1, count + 1) if random.Random(seed * 7919 + n).random() < missing_rate}
        self.missing = set(missing)
        self.faults = FaultPlan(faults or ())
        self.app = FaultInjector(self._app, self.faults)

    def present(self, n: int) -> bool:
        """Whether picture ``n`` exists on the host."""
        return 1 <= n <= self.count and n not in self.missing

    def present_numbers(self, start: int = 1, stop: int | None = None) -> list[int]:
        stop = self.count if stop is None else stop
        return [n for n in range(start, stop + 1) if self.present(n)]

    def picture_file(self, n: int) -> Path:
        """The JPEG of submission ``n`` (made on first use, then cached)."""
        path = self.cache_dir / f"{n}-{self.size[0]}x{self.size[1]}.jpg"
        if not path.exists():
            tmp = path.with_name(f".{path.name}.{threading.get_ident()}.tmp")
            photos.write_jpeg(tmp, self.seed + n, size=self.size,
                              taken=self.start_time + timedelta(minutes=37 * n),
                              description=f"submission {n}")
            os.replace(tmp, path)
        return path

    def _app(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000.0)
        m = PATH_RE.match(environ.get("PATH_INFO", ""))
        if not m or not self.present(int(m.group(1))):
            body = b"<html><body><h1>404 Not Found</h1></body></html>"
            start_response("404 Not Found", [("Content-Type", "text/html"), ("Content-Length", str(len(body)))])
            return [body]
        data = self.picture_file(int(m.group(1))).read_bytes()
        start_response("200 OK", [("Content-Type", "image/jpeg"), ("Content-Length", str(len(data)))])
        return [data]

    def start(self, port: int = 0) -> "NumberedHost":
        self.server: Server = serve(self.app, port=port)
        self.url = self.server.url
        return self

    def stop(self) -> None:
        if getattr(self, "server", None) is not None:
            self.server.stop()

    def __enter__(self) -> "NumberedHost":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def job_source(self, start: int = 1, stop: int | None = None, stop_after_missing: int | None = 50) -> dict:
        """The ``source:`` block of a job spec for this host."""
        src: dict[str, Any] = {"kind": "numbered", "url": f"{self.url}/gallery/full/{{n}}.jpg", "start": start,
                               "stop": self.count + 100 if stop is None else stop}
        if stop_after_missing:
            src["stop_after_missing"] = stop_after_missing
        return src


def main(argv: list[str] | None = None) -> None:
    import logging

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=20000)
    ap.add_argument("--missing-rate", type=float, default=0.25)
    ap.add_argument("--port", type=int, default=0, help="default: any free port")
    ap.add_argument("--cache-dir", help="where the pictures are made and kept (default: a new temporary folder)")
    ap.add_argument("--size", default="320x240", help="the pictures' size, WxH")
    ap.add_argument("--latency-ms", type=float, default=0.0,
                    help="wait this long before every answer, as a distant server does (default: none)")
    ap.add_argument("--warm", action="store_true", help="make every picture before serving")
    args = ap.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    w, h = (int(v) for v in args.size.split("x"))
    host = NumberedHost(args.count, missing_rate=args.missing_rate, cache_dir=args.cache_dir, size=(w, h),
                        latency_ms=args.latency_ms)
    if args.warm:
        for n in host.present_numbers():
            host.picture_file(n)
    host.start(args.port)
    try:
        print(json.dumps({"url": host.url, "count": host.count}), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        host.stop()


if __name__ == "__main__":
    main()
