"""The web view (/ui/) and the Clash-compatible external-controller API (`api.listen`).

view.py    what is served, made on the loop once a second (app.Snapshot plus flows, outbounds, rules)
clash.py   the endpoints, auth and CORS over it, on the API's thread
server.py  the HTTP and WebSocket server: its own thread, non-blocking, bounded
ui/        the built-in page: HTML, CSS and JS, no CDN

The loop's only costs: one view a second (the flow list only while a client asks for it),
and the closes and log-level changes the API queues for it (loop.call_soon_threadsafe).
"""

from __future__ import annotations

import logging

from ... import __version__
from ...errors import ZtunError
from ...net import endpoint_text, split_host_port
from ..metrics import PublishedSnapshot
from .view import ApiView

log = logging.getLogger("ztun.api")

INTERVAL = 1.0  # seconds between views: /traffic's one object a second


class ApiServer:
    """Serves the API on listen ("host:port"; port 0 picks one) for the appliance of snapshot (app.Snapshot) until close()."""

    def __init__(self, loop, listen: str, snapshot, *, secret: str | None = None, allow_origins=(),
                 interval: float = INTERVAL, **server_options):
        try:
            import wsproto  # noqa: F401
        except ImportError:
            raise ZtunError("api.listen is set but wsproto is not installed: pip install 'ztun[api]' "
                            "(or wsproto), or unset api.listen") from None
        from .clash import ClashApi, LogBuffer
        from .server import ApiHttpServer

        try:
            host, port = split_host_port(str(listen), min_port=0)
        except ValueError as e:
            raise ZtunError(f"api.listen: expected host:port, got {listen!r}: {e}") from None
        self.view = ApiView(snapshot, __version__)
        self.published = PublishedSnapshot(loop, self.view, interval, copy=False)
        self.logs = LogBuffer()
        logging.getLogger().addHandler(self.logs)
        self.api = ClashApi(self.published.get, loop.call_soon_threadsafe, view=self.view, forwarder=snapshot.forwarder,
                            secret=secret, allow_origins=allow_origins, logs=self.logs)
        try:
            self._server = ApiHttpServer(host, port, self.api, **server_options)
        except OSError as e:
            self.published.close()
            logging.getLogger().removeHandler(self.logs)
            raise ZtunError(f"api.listen {listen}: cannot listen: {e.strerror or e}") from None
        self.address = self._server.address
        self.api.server_counters = self._server.counters  # both on the API's thread: /ztun/summary shows them
        log.info("web view on http://%s/ui/ (Clash API on the same address)", endpoint_text(self.address))

    @property
    def counters(self) -> dict:
        return self._server.counters

    def close(self) -> None:
        """Stop serving and publishing. Idempotent."""
        self.published.close()
        self._server.close()
        logging.getLogger().removeHandler(self.logs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
