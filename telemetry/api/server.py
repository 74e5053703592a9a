"""Running the API: :func:`serve` in the foreground, :class:`ApiServer` in a thread.

Both bind the listening socket themselves before uvicorn starts, so the URL
they log or report is the real one, port 0 included, and is known before the
first request can arrive.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from types import TracebackType

import uvicorn

from telemetry.api.app import create_app
from telemetry.config import Settings
from telemetry.errors import ConfigError

logger = logging.getLogger("telemetry.api")


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host``:``port``; :class:`ConfigError` when it cannot be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Handed a socket, uvicorn's connections otherwise
    # keep Nagle on, and every response waits ~40 ms for the client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://host:port`` of a bound socket, IPv6 hosts in brackets."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _server(settings: Settings) -> uvicorn.Server:
    # log_config=None: uvicorn keeps its hands off logging, which the CLI set up already.
    config = uvicorn.Config(
        create_app(settings), log_config=None, access_log=False, server_header=False
    )
    return uvicorn.Server(config)


def serve(settings: Settings, host: str | None = None, port: int | None = None) -> None:
    """Serve the API and dashboard until interrupted; ``host``/``port`` default to the settings."""
    sock = bind(host or settings.api_host, settings.api_port if port is None else port)
    url = url_of(sock)
    logger.info(
        "Telemetry API listening on %s (dashboard %s/, OpenAPI %s/docs)",
        url,
        url,
        url,
        extra={"url": url, "database": settings.mongodb_db},
    )
    try:
        _server(settings).run(sockets=[sock])
    finally:
        sock.close()


class ApiServer:
    """The API on a thread of this process, e.g. for ``telemetry demo --serve`` and tests.

    ``with ApiServer(settings) as server: server.url`` starts it and waits until it
    accepts requests; leaving the block stops it.
    """

    def __init__(self, settings: Settings, host: str | None = None, port: int = 0) -> None:
        self._sock = bind(host or settings.api_host, port)
        self.url = url_of(self._sock)
        self._server = _server(settings)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="telemetry-api"
        )

    def start(self, timeout_s: float = 30.0) -> None:
        """Start serving; return once uvicorn has started (lifespan included)."""
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError("the API server stopped while starting")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start within {timeout_s:.0f}s")
            time.sleep(0.02)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Ask uvicorn to finish its requests and stop; wait for the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self._sock.close()

    def __enter__(self) -> ApiServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
