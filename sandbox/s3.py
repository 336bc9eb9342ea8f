"""The S3 sandbox: moto's server mode on 127.0.0.1, a fault-injecting TCP proxy in
front of it, and a RAW file maker (a NEF-like/DNG-like TIFF with a JPEG preview).

    with MotoS3() as s3:                      # a real HTTP S3 endpoint
        client = s3.client()                  # boto3, unmodified, endpoint_url=s3.url
        with FaultProxy(s3.port) as proxy:    # the same endpoint, behind a proxy
            proxy.drop_uploads(1)             # the next upload request is reset mid-body

``python -m sandbox.s3 [--bucket NAME]`` serves one on its own and prints its URL.

moto keeps its buckets in process-wide state: two servers in one process see the
same buckets, so callers use their own bucket names.
"""

from __future__ import annotations

import io
import os
import socket
import struct
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

SANDBOX_KEYS = {"aws_access_key_id": "sandbox-access-key", "aws_secret_access_key": "sandbox-secret-key"}


class MotoS3:
    """moto's ``ThreadedMotoServer`` on 127.0.0.1 (any free port), quiet."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        from moto.moto_server.werkzeug_app import MotoRequestHandler
        from moto.server import ThreadedMotoServer

        class _Quiet(MotoRequestHandler):
            def log_request(self, *a: Any, **kw: Any) -> None:  # no access log on stderr
                pass

        class _Server(ThreadedMotoServer):
            def _server_entry(self) -> None:  # as moto's, with the quiet handler
                from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
                from werkzeug.serving import make_server

                app = DomainDispatcherApplication(create_backend_app)
                self._server = make_server(self._ip_address, self._port, app, True, request_handler=_Quiet)
                self._server_ready_event.set()
                self._server.serve_forever()

        self._moto = _Server(ip_address=host, port=port, verbose=False)
        self.host = host
        self.port = 0
        self.url = ""

    def start(self) -> "MotoS3":
        self._moto.start()
        self.host, self.port = self._moto.get_host_and_port()
        self.url = f"http://{self.host}:{self.port}"
        return self

    def stop(self) -> None:
        self._moto.stop()

    def __enter__(self) -> "MotoS3":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def client(self, url: str | None = None, **config: Any) -> Any:
        """A boto3 S3 client for this endpoint (or ``url``, e.g. a proxy in front of it)."""
        import boto3
        from botocore.config import Config

        cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3, "mode": "standard"}, **config)
        return boto3.client("s3", endpoint_url=url or self.url, region_name="us-east-1", config=cfg, **SANDBOX_KEYS)

    def make_bucket(self, name: str) -> str:
        """Create ``name`` (if missing) and return it."""
        c = self.client()
        try:
            c.create_bucket(Bucket=name)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name


def start_s3() -> MotoS3:
    return MotoS3().start()


# --- a TCP proxy that resets chosen upload connections -----------------------------------


class FaultProxy:
    """A TCP proxy on 127.0.0.1 in front of an HTTP server, reading just enough of each
    request (head and Content-Length) to know where requests start. Armed with
    :meth:`drop_uploads`, it forwards part of the body of the next upload requests
    (PUT with a body: PutObject, UploadPart) and then resets both connections, as a
    network failure mid-upload does."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1", latency: float = 0.0) -> None:
        self.target = (target_host, target_port)
        #: seconds each request waits before it is forwarded (a WAN's round trip)
        self.latency = latency
        self._listen = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listen.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listen.bind(("127.0.0.1", 0))
        self._listen.listen(64)
        self.port = self._listen.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._skip = 0
        self._drops = 0
        self._min_body = 1
        self._corrupt = 0
        self._cut_downloads = 0
        self._cut_after = 0
        self._refuse: dict[bytes, tuple[int, str, str, str]] = {}
        self.requests: list[tuple[str, str]] = []
        #: access key ids seen in the requests' signatures (never the secret keys)
        self.access_keys: set[str] = set()
        self.resets: list[dict[str, Any]] = []
        self.corrupted: list[str] = []
        self._refused: list[tuple[str, str]] = []
        self._socks: set[socket.socket] = set()
        self._running = True
        self._thread = threading.Thread(target=self._accept, name=f"s3-proxy-{self.port}", daemon=True)

    def start(self) -> "FaultProxy":
        self._thread.start()
        return self

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        self._running = False
        try:
            self._listen.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            _close(s)

    def drop_uploads(self, count: int = 1, *, skip: int = 0, min_body: int = 1) -> None:
        """Reset the connection of ``count`` upload requests (bodies of at least
        ``min_body`` bytes), after letting ``skip`` of them through."""
        with self._lock:
            self._skip, self._drops, self._min_body = skip, count, min_body

    def corrupt_uploads(self, count: int = 1) -> None:
        """Flip one byte in the body of the next ``count`` upload requests (same length),
        as a faulty link or NIC would: only a full read-back can tell."""
        with self._lock:
            self._corrupt = count

    def _should_corrupt(self, method: str, length: int) -> bool:
        with self._lock:
            if method != "PUT" or length < 2 or self._corrupt <= 0:
                return False
            self._corrupt -= 1
            return True

    def cut_downloads(self, count: int = 1, *, after_bytes: int = 4096) -> None:
        """Reset the connection of the next ``count`` object downloads (GET of a key)
        after ``after_bytes`` of the response, as a network failure mid-download does."""
        with self._lock:
            self._cut_downloads, self._cut_after = count, after_bytes

    def refuse_header(self, header: str, status: int = 501, code: str = "NotImplemented",
                      message: str = "A header you provided implies functionality that is not implemented") -> None:
        """Answer every request carrying ``header`` with an S3 error instead of forwarding it,
        as a store that predates the header does (e.g. ``If-None-Match`` on a PUT, or
        ``x-amz-checksum-sha256``). The error is sent before the body is read (the client
        waits for ``100 Continue`` before it sends one) and the connection is then closed."""
        with self._lock:
            self._refuse[header.lower().encode("latin-1")] = (status, code, message, header)

    def refused(self) -> list[tuple[str, str]]:
        """The requests answered by :meth:`refuse_header`'s error."""
        with self._lock:
            return list(self._refused)

    def _refusal(self, headers: dict[bytes, bytes]) -> tuple[int, str, str, str] | None:
        with self._lock:
            return next((r for h, r in self._refuse.items() if h in headers), None)

    def uploads(self) -> list[tuple[str, str]]:
        """The upload requests (PUT with a body) seen so far, reset ones included."""
        with self._lock:
            return [r for r in self.requests if r[0] == "PUT"]

    def _accept(self) -> None:
        while self._running:
            try:
                client, _ = self._listen.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=30)
            except OSError:
                _close(client, reset=True)
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks.update((client, upstream))
            state: dict[str, Any] = {"cut_after": None}
            threading.Thread(target=self._responses, args=(upstream, client, state), daemon=True).start()
            threading.Thread(target=self._requests, args=(client, upstream, state), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            _close(dst)
            _close(src)

    def _responses(self, upstream: socket.socket, client: socket.socket, state: dict[str, Any]) -> None:
        """Server to client; a response marked by :meth:`_requests` is cut short and reset."""
        sent = 0
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                limit = state["cut_after"]
                if limit is not None:
                    if sent + len(data) >= limit:
                        client.sendall(data[: max(0, limit - sent)])
                        with self._lock:
                            self.resets.append({"method": "GET", "path": state.get("path"), "sent": limit})
                        _close(client, reset=True)
                        _close(upstream, reset=True)
                        return
                    sent += len(data)
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)

    def _should_cut(self, method: str, path: str) -> bool:
        with self._lock:
            if method != "GET" or "?" in path or path.count("/") < 2 or self._cut_downloads <= 0:
                return False
            self._cut_downloads -= 1
            return True

    def _should_drop(self, method: str, length: int) -> bool:
        with self._lock:
            if method != "PUT" or length < self._min_body or self._drops <= 0:
                return False
            if self._skip > 0:
                self._skip -= 1
                return False
            self._drops -= 1
            return True

    def _requests(self, client: socket.socket, upstream: socket.socket, state: dict[str, Any]) -> None:
        """Forward requests one by one; reset the connection inside a chosen upload."""
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    data = client.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                method, path = (lines[0].split(b" ") + [b"", b""])[:2]
                headers = {}
                for line in lines[1:]:
                    k, _, v = line.partition(b":")
                    headers[k.strip().lower()] = v.strip()
                m, p = method.decode("latin-1"), path.decode("latin-1")
                cred = headers.get(b"authorization", b"").partition(b"Credential=")[2].split(b"/", 1)[0]
                with self._lock:
                    self.requests.append((m, p))
                    if cred:
                        self.access_keys.add(cred.decode("latin-1"))
                if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
                    upstream.sendall(head + b"\r\n\r\n" + buf)
                    self._pipe(client, upstream)  # cannot follow chunked bodies: plain pipe
                    return
                length = int(headers.get(b"content-length", b"0") or 0)
                refusal = self._refusal(headers)
                if refusal is not None:
                    status, code, message, header = refusal  # S3 names the header it does not implement
                    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                            f"<Message>{message}</Message><Header>{header}</Header></Error>").encode()
                    client.sendall(f"HTTP/1.1 {status} {code}\r\nContent-Type: application/xml\r\n"
                                   f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
                    with self._lock:
                        self._refused.append((m, p))
                    return
                if self.latency:
                    time.sleep(self.latency)
                if self._should_cut(m, p):
                    state.update(cut_after=self._cut_after, path=p)
                upstream.sendall(head + b"\r\n\r\n")
                drop = self._should_drop(m, length)
                flip = None if drop else (length // 2 if self._should_corrupt(m, length) else None)
                limit = length // 2 if drop else length
                sent = 0
                while sent < limit:
                    if not buf:
                        buf = client.recv(65536)
                        if not buf:
                            return
                    piece, buf = buf[: limit - sent], buf[limit - sent:]
                    if flip is not None and sent <= flip < sent + len(piece):
                        at = flip - sent
                        piece = piece[:at] + bytes([piece[at] ^ 0xFF]) + piece[at + 1:]
                        with self._lock:
                            self.corrupted.append(p)
                    upstream.sendall(piece)
                    sent += len(piece)
                if drop:
                    with self._lock:
                        self.resets.append({"method": m, "path": p, "length": length, "sent": sent})
                    _close(upstream, reset=True)
                    _close(client, reset=True)
                    return
        except OSError:
            pass
        finally:
            _close(upstream)
            _close(client)


def _close(sock: socket.socket, reset: bool = False) -> None:
    """Close a socket; ``reset`` aborts it (RST). shutdown() first, so a thread blocked
    reading it wakes up and the peer sees the connection go at once."""
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# --- RAW files: a TIFF with an embedded JPEG preview, laid out as cameras do ---------------


def _ifd(entries: list[tuple[int, int, Any]], at: int, bo: str = "<") -> bytes:
    """One IFD at offset ``at``: entries (tag, type, values) sorted by tag, with values
    longer than 4 bytes stored right after the IFD. Types: 2 ASCII, 3 SHORT, 4 LONG,
    5 RATIONAL (pairs), 7 UNDEFINED (bytes), 13 IFD (offsets)."""
    entries = sorted(entries, key=lambda e: e[0])
    n = len(entries)
    extra_at = at + 2 + 12 * n + 4
    table, extra = b"", b""
    for tag, typ, vals in entries:
        if typ == 2:
            payload, count = (vals.encode("ascii") + b"\x00"), len(vals) + 1
        elif typ == 7:
            payload, count = bytes(vals), len(vals)
        elif typ == 5:
            payload = b"".join(struct.pack(bo + "LL", a, b) for a, b in vals)
            count = len(vals)
        else:
            vals = list(vals) if isinstance(vals, (list, tuple)) else [vals]
            fmt = "H" if typ == 3 else "L"
            payload, count = struct.pack(f"{bo}{len(vals)}{fmt}", *vals), len(vals)
        if len(payload) <= 4:
            table += struct.pack(bo + "HHL", tag, typ, count) + payload.ljust(4, b"\x00")
        else:
            table += struct.pack(bo + "HHLL", tag, typ, count, extra_at + len(extra))
            extra += payload + (b"\x00" if len(payload) % 2 else b"")
    return struct.pack(bo + "H", n) + table + struct.pack(bo + "L", 0) + extra


def _ifd_size(entries: list[tuple[int, int, Any]]) -> int:
    return len(_ifd(entries, 0))


def write_raw(path: str | Path, picture_id: int | str = 0, *, taken: datetime | None = None,
              offset: str | None = None, orientation: int = 1, style: str = "nef",
              preview_size: tuple[int, int] = (640, 480), make: str = "NIKON CORPORATION",
              model: str = "D70 (photo-escape sandbox)") -> Path:
    """A small RAW file as a camera lays it out: a TIFF whose IFD0 holds a tiny RGB
    thumbnail, the make/model and orientation, with SubIFDs for a full JPEG preview
    (``style='nef'``: JPEGInterchangeFormat/Length; ``'dng'``: a JPEG-compressed
    strip) and the CFA sensor data, and an EXIF IFD with DateTimeOriginal.
    Returns the path; :func:`preview_of` gives the embedded preview's bytes."""
    from sandbox import photos

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pic = photos.picture(picture_id, preview_size)
    jpeg = io.BytesIO()
    pic.save(jpeg, "JPEG", quality=90)
    preview = jpeg.getvalue()
    tiny = pic.resize((160, 120)).convert("RGB").tobytes()
    rng = __import__("random").Random(str(picture_id))
    sensor = bytes(rng.getrandbits(8) for _ in range(64 * 48 * 2))
    stamp = (taken or datetime(2006, 10, 4, 9, 30)).strftime("%Y:%m:%d %H:%M:%S")

    def ifd0(sub: list[int], exif: int, tiny_at: int) -> list:
        e = [(0x00FE, 4, 1), (0x0100, 4, 160), (0x0101, 4, 120), (0x0102, 3, [8, 8, 8]), (0x0103, 3, 1),
             (0x0106, 3, 2), (0x010F, 2, make), (0x0110, 2, model), (0x0111, 4, tiny_at), (0x0112, 3, orientation),
             (0x0115, 3, 3), (0x0116, 4, 120), (0x0117, 4, len(tiny)), (0x0132, 2, stamp), (0x014A, 4, sub),
             (0x8769, 4, exif)]
        if style == "dng":
            e += [(0xC612, 7, [1, 4, 0, 0]), (0xC614, 2, model)]
        return e

    def preview_ifd(at: int) -> list:
        w, h = preview_size
        if style == "dng":
            return [(0x00FE, 4, 1), (0x0100, 4, w), (0x0101, 4, h), (0x0102, 3, [8, 8, 8]), (0x0103, 3, 7),
                    (0x0106, 3, 6), (0x0111, 4, at), (0x0115, 3, 3), (0x0116, 4, h), (0x0117, 4, len(preview))]
        return [(0x00FE, 4, 1), (0x0103, 3, 6), (0x0201, 4, at), (0x0202, 4, len(preview))]

    def sensor_ifd(at: int) -> list:
        return [(0x00FE, 4, 0), (0x0100, 4, 64), (0x0101, 4, 48), (0x0102, 3, 16), (0x0103, 3, 1),
                (0x0106, 3, 32803), (0x0111, 4, at), (0x0115, 3, 1), (0x0116, 4, 48), (0x0117, 4, len(sensor)),
                (0x828D, 3, [2, 2]), (0x828E, 7, [0, 1, 1, 2])]

    def exif_ifd() -> list:
        e = [(0x9003, 2, stamp), (0x9004, 2, stamp)]
        if offset:
            e += [(0x9011, 2, offset), (0x9010, 2, offset)]
        return e

    # lay out: header, IFD0, preview IFD, sensor IFD, EXIF IFD, then the image data
    o0 = 8
    o1 = o0 + _ifd_size(ifd0([0, 0], 0, 0))
    o2 = o1 + _ifd_size(preview_ifd(0))
    o3 = o2 + _ifd_size(sensor_ifd(0))
    o_data = o3 + _ifd_size(exif_ifd())
    o_data += o_data % 2
    tiny_at, preview_at = o_data, o_data + len(tiny)
    sensor_at = preview_at + len(preview)
    out = bytearray(b"II*\x00" + struct.pack("<L", o0))
    out += _ifd(ifd0([o1, o2], o3, tiny_at), o0)
    out += _ifd(preview_ifd(preview_at), o1)
    out += _ifd(sensor_ifd(sensor_at), o2)
    out += _ifd(exif_ifd(), o3)
    out += b"\x00" * (o_data - len(out))
    out += tiny + preview + sensor
    path.write_bytes(bytes(out))
    return path


def preview_of(picture_id: int | str = 0, preview_size: tuple[int, int] = (640, 480)) -> bytes:
    """The JPEG preview :func:`write_raw` embeds for ``picture_id`` (same bytes)."""
    from sandbox import photos

    buf = io.BytesIO()
    photos.picture(picture_id, preview_size).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def sandbox_credentials_env(var: str = "PHOTO_ESCAPE_SANDBOX_S3") -> str:
    """Put the sandbox's (dummy) access keys, as JSON, into env var ``var``; returns ``var``.
    A job then says ``credentials: {env: <var>}``."""
    import json

    os.environ[var] = json.dumps(SANDBOX_KEYS)
    return var


def main(argv: list[str] | None = None) -> None:
    """Serve moto's S3 on its own until interrupted; print its URL and keys as one JSON line."""
    import argparse
    import json

    ap = argparse.ArgumentParser(description="moto's S3 server on 127.0.0.1 (the sandbox's S3)")
    ap.add_argument("--port", type=int, default=0, help="default: any free port")
    ap.add_argument("--bucket", action="append", default=[], help="create this bucket (repeatable)")
    args = ap.parse_args(argv)
    server = MotoS3(port=args.port).start()
    try:
        for name in args.bucket:
            server.make_bucket(name)
        print(json.dumps({"url": server.url, **SANDBOX_KEYS}), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
