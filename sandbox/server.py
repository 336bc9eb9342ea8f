"""Run a sandbox WSGI app (Flask or plain werkzeug) on 127.0.0.1 in a background thread.

    with serve(app) as server:
        requests.get(server.url + "/ping")

Every sandbox service (gallery site, numbered host, upload API, Flickr stand-in,
library catalogue) is served this way, by the demo and by the tests alike.
"""

from __future__ import annotations

import threading
from typing import Any

from werkzeug.serving import make_server


class Server:
    """A threaded HTTP server for one WSGI app on 127.0.0.1 (port 0: any free port)."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app = app
        self._server = make_server(host, port, app, threaded=True)
        self._server.daemon_threads = True
        self.host = host
        self.port = self._server.server_port
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=f"sandbox-{self.port}", daemon=True)

    def start(self) -> "Server":
        if not self._thread.is_alive():
            self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(app: Any, host: str = "127.0.0.1", port: int = 0) -> Server:
    """Start ``app`` and return its :class:`Server` (also a context manager)."""
    return Server(app, host, port).start()


class Service:
    """A sandbox service (a WSGI app in its fault injector) served on 127.0.0.1 while started:
    a subclass sets ``self.wsgi`` (and may set ``self.port``); ``with Service(...) as s: s.url``."""

    wsgi: Any = None
    port: int = 0
    server: Server | None = None

    @property
    def url(self) -> str:
        return self.server.url

    def start(self):
        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per request
        self.server = serve(self.wsgi, port=self.port)
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def serve_until_interrupted(self, banner: str) -> None:  # pragma: no cover - manual use
        """Print ``banner`` and serve until Ctrl-C (``python -m sandbox.NAME``)."""
        import time

        print(banner, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            self.stop()
