"""The worker's HTTP endpoints on ``METRICS_PORT``: ``/metrics``, ``/healthz`` and ``/readyz``.

* ``/metrics``: the collector's Prometheus metrics (:mod:`telemetry.observe.metrics`),
  summed over the pool's processes when the pool forks;
* ``/healthz``: liveness, 200 whenever the process can answer at all; it
  never looks at the broker or the database, so an outage of either does
  not get workers restarted;
* ``/readyz``: readiness, 200 when this worker's broker connection is up and
  MongoDB answers a ping within :data:`READY_TIMEOUT_S`, else 503 with a JSON
  body giving each reason.

A small threaded ``http.server`` in the worker's main process serves them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
import threading
import weakref
from collections.abc import Callable, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry

from telemetry.config import Settings
from telemetry.errors import (
    BrokerUnavailable,
    StorageLoginRefused,
    StorageRejected,
    StorageUnavailable,
    TelemetryError,
)
from telemetry.observe import metrics
from telemetry.store.client import MongoProbe
from telemetry.store.port import StorageProbe

logger = logging.getLogger("telemetry.observe.health")

READY_TIMEOUT_S = 1.0
"""How long the database may take to answer the readiness ping."""
# Every interface on purpose: Prometheus and the orchestrator's probes reach the worker
# from outside its container; the endpoints only read counters and health.
BIND_HOST = "0.0.0.0"  # nosec B104
REASON_MAX_CHARS = 300

ReadinessCheck = Callable[[], None]
"""Returns when its dependency is usable; raises a TelemetryError saying why not."""
Scrape = Callable[[str | None], tuple[bytes, str]]
"""Given the request's Accept header, the metrics body and its content type."""


class DatabaseCheck:
    """MongoDB is reachable: a ping through the storage port's probe, with short time-outs.

    The probe has a client of its own (:class:`telemetry.store.client.MongoProbe`),
    so it neither waits behind the workers' writes nor takes ``MONGO_TIMEOUT_MS``
    to give up; its time-outs override any the URI sets.
    """

    def __init__(self, uri: str, timeout_s: float = READY_TIMEOUT_S) -> None:
        self._uri = uri
        self._timeout_ms = int(timeout_s * 1000)
        self._probe: StorageProbe | None = None
        self._lock = threading.Lock()

    def __call__(self) -> None:
        """Raise :class:`StorageUnavailable` unless the server answers a ping."""
        with self._lock:
            if self._probe is None:
                self._probe = MongoProbe(self._uri, self._timeout_ms, "telemetry-readiness")
            probe = self._probe
        try:
            probe.ping()
        except StorageLoginRefused as exc:
            raise StorageUnavailable(f"database {exc.problem}", exc.problem) from exc
        except (StorageUnavailable, StorageRejected) as exc:
            raise StorageUnavailable(f"database unreachable: {exc.problem}", exc.problem) from exc

    def close(self) -> None:
        """Close the probe's client, if one was made."""
        with self._lock:
            if self._probe is not None:
                self._probe.close()
                self._probe = None


def check_consumer_connection(consumer: Any) -> None:
    """Raise :class:`BrokerUnavailable` unless a Celery consumer's broker connection is up.

    ``consumer`` is the worker's consumer (None until it is ready); while it
    reconnects after a broker failure, its ``connection`` is None or closed.
    """
    if consumer is None:
        raise BrokerUnavailable("broker not connected: the worker is still starting")
    connection = getattr(consumer, "connection", None)
    if connection is None or not connection.connected:
        raise BrokerUnavailable("broker connection lost: the worker is reconnecting")


class _Handler(BaseHTTPRequestHandler):
    """Answers the three paths from the :class:`HealthServer` that owns the server."""

    server: _Server

    def do_GET(self) -> None:
        owner = self.server.owner
        path = urlsplit(self.path).path
        if path == "/metrics":
            body, content_type = owner.scrape(self.headers.get("Accept"))
            self._send(200, body, content_type)
        elif path == "/healthz":
            self._send_json(200, {"status": "ok"})
        elif path == "/readyz":
            reasons = owner.readiness()
            if reasons:
                self._send_json(503, {"status": "not ready", "reasons": reasons})
            else:
                self._send_json(200, {"status": "ready"})
        else:
            self._send_json(404, {"error": f"no such path: {path}"})

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        self._send(status, json.dumps(body).encode() + b"\n", "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Probes every few seconds would flood the worker log at INFO.
        logger.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: HealthServer) -> None:
        self.owner = owner
        super().__init__(address, _Handler)


_listening: weakref.WeakSet[HealthServer] = weakref.WeakSet()
_fork_hook_registered = False


def _close_in_child() -> None:
    # A forked pool process must not keep the port open after the main process is gone.
    for server in list(_listening):
        server.close_socket()


class HealthServer:
    """Serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``port`` from a background thread."""

    def __init__(
        self,
        port: int,
        checks: Sequence[ReadinessCheck],
        scrape: Scrape,
        host: str = BIND_HOST,
    ) -> None:
        self.checks = list(checks)
        self.scrape = scrape
        self._address = (host, port)
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (the one asked for, or the one the system gave for 0)."""
        if self._httpd is None:
            return self._address[1]
        port: int = self._httpd.server_address[1]
        return port

    def url(self, path: str = "/metrics") -> str:
        """The full URL of ``path``, with this machine's host name."""
        return f"http://{socket.gethostname()}:{self.port}{path}"

    def start(self) -> None:
        """Listen and serve in a daemon thread; raises OSError if the port is taken."""
        global _fork_hook_registered
        self._httpd = _Server(self._address, self)
        if not _fork_hook_registered:
            os.register_at_fork(after_in_child=_close_in_child)
            _fork_hook_registered = True
        _listening.add(self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="health-server",
            daemon=True,
        )
        self._thread.start()

    def readiness(self) -> list[str]:
        """Why this worker is not ready, one reason per failed check; empty when it is."""
        reasons = []
        for check in self.checks:
            try:
                check()
            except TelemetryError as exc:
                reasons.append(str(exc)[:REASON_MAX_CHARS])
        return reasons

    def close_socket(self) -> None:
        """Close the listening socket without stopping the thread (in a forked child)."""
        if self._httpd is not None:
            self._httpd.socket.close()

    def stop(self) -> None:
        """Stop serving, free the port and close what the checks opened."""
        _listening.discard(self)
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for check in self.checks:
            if isinstance(check, DatabaseCheck):
                check.close()


def start_worker_endpoints(
    settings: Settings,
    forks: bool,
    broker_check: ReadinessCheck,
    registry: Callable[[], CollectorRegistry],
) -> HealthServer | None:
    """Serve a worker's metrics (from ``registry()``) and probes as its settings say; log where.

    Returns None when ``METRICS_PORT`` is 0, or when the port is taken: that
    is one error line and the worker goes on without the endpoints. With a
    pool that ``forks``, metrics switch to multiprocess mode in a fresh
    directory, before the pool starts.
    """
    if settings.metrics_port == 0:
        logger.info("Metrics and health endpoints off (METRICS_PORT=0)")
        return None
    checks: list[ReadinessCheck] = [broker_check, DatabaseCheck(settings.mongodb_uri)]
    server = HealthServer(
        settings.metrics_port, checks, lambda accept: metrics.exposition(registry(), accept)
    )
    try:
        server.start()
    except OSError as exc:
        logger.error(
            "Metrics and health endpoints off: cannot listen on port %d (%s); "
            "each worker on a host needs a METRICS_PORT of its own",
            settings.metrics_port,
            exc,
        )
        return None
    if forks:
        directory = Path(tempfile.mkdtemp(prefix="telemetry-metrics-"))
        metrics.enable_multiprocess(directory)
        logger.info("Pool processes keep their metrics in %s, summed on each scrape", directory)
    logger.info("Metrics and health on %s (/healthz, /readyz)", server.url("/metrics"))
    return server


def stop_worker_endpoints(server: HealthServer | None) -> None:
    """Stop the endpoints, and delete the multiprocess files if there were any."""
    if server is not None:
        server.stop()
    metrics.disable_multiprocess()
