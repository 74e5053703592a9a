"""Serving stand-in exporters over HTTP, each on a port of its own.

One thread with one asyncio loop serves any number of exporters
(:func:`serve_exporters`, :class:`ExporterFleet`); idle, it sleeps in the
kernel, so 200 of them cost no measurable CPU. Each port answers
``/metrics``, ``/health`` and ``/`` as dcgm-exporter does.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

from telemetry.demo.exporter.payload import CONTENT_TYPE, StandInExporter

# A scraper sends no request body; a larger one than this is refused.
MAX_REQUEST_BODY_BYTES = 1 << 20

T = TypeVar("T")


LANDING_PAGE = (
    b"<html><head><title>GPU Exporter</title></head><body><h1>GPU Exporter</h1>"
    b'<p><a href="./metrics">Metrics</a></p></body></html>'
)
REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found"}


class Endpoint:
    """One exporter's port, its listening server and its open connections."""

    def __init__(self, exporter: StandInExporter, port: int) -> None:
        self.exporter = exporter
        self.port = port
        self.server: asyncio.Server | None = None
        self.connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self.resumed = asyncio.Event()
        self.resumed.set()
        self.scrapes = 0


def accepts_gzip(header: str) -> bool:
    """Whether an ``Accept-Encoding`` header takes gzip (and does not refuse it with q=0)."""
    for item in header.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() in ("gzip", "*"):
            quality = params.strip().removeprefix("q=").strip()
            try:
                return not quality or float(quality) > 0
            except ValueError:
                return False
    return False


class ExporterFleet:
    """Serves many stand-in exporters, each on its own port, from one thread and one loop.

    ``ports`` default to 0 each, which picks free ports; :attr:`urls` then names
    them. A stopped exporter refuses connections until it is started again on
    the same port; a paused one takes requests and leaves them unanswered.
    """

    def __init__(
        self,
        exporters: Sequence[StandInExporter],
        host: str = "127.0.0.1",
        ports: Sequence[int] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        compress: bool = True,
    ) -> None:
        ports = [0] * len(exporters) if ports is None else list(ports)
        if len(ports) != len(exporters):
            raise ValueError(f"{len(exporters)} exporters but {len(ports)} ports")
        taken = [port for port in ports if port]
        if len(taken) != len(set(taken)):
            raise ValueError(f"a port is given twice: {taken}")
        self.exporters = tuple(exporters)
        self.host = host
        self.clock = clock
        self.compress = compress
        self._endpoints = [Endpoint(e, port) for e, port in zip(self.exporters, ports, strict=True)]
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def ports(self) -> list[int]:
        """Each exporter's port (the chosen one once started, when asked for 0)."""
        return [endpoint.port for endpoint in self._endpoints]

    @property
    def urls(self) -> list[str]:
        """Each exporter's ``/metrics`` URL."""
        return [f"{self._base(port)}/metrics" for port in self.ports]

    @property
    def health_urls(self) -> list[str]:
        """Each exporter's ``/health`` URL."""
        return [f"{self._base(port)}/health" for port in self.ports]

    def scrapes(self, index: int) -> int:
        """How many ``/metrics`` requests exporter ``index`` has answered or holds (paused)."""
        return self._endpoints[index].scrapes

    def is_serving(self, index: int) -> bool:
        """Whether exporter ``index`` listens (it may still be paused)."""
        return self._endpoints[index].server is not None

    def start(self) -> ExporterFleet:
        """Listen on every port; an ``OSError`` (a port in use) stops what had started."""
        if self._loop is not None:
            raise RuntimeError("the fleet is already serving")
        for endpoint in self._endpoints:
            # An asyncio.Event belongs to the first loop that waits on it; each start makes a loop.
            paused = not endpoint.resumed.is_set()
            endpoint.resumed = asyncio.Event()
            if not paused:
                endpoint.resumed.set()
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="stand-in-exporters", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            for endpoint in self._endpoints:
                self._call(self._open(endpoint))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Close every port and connection, and end the loop's thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        try:
            self._call(self._close_all())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join()
            loop.close()
            self._loop = self._thread = None

    def stop_exporter(self, index: int) -> None:
        """Close exporter ``index``'s port and its connections: it refuses connections."""
        self._call(self._close(self._endpoints[index]))

    def start_exporter(self, index: int) -> None:
        """Listen again for exporter ``index``, on the port it had."""
        endpoint = self._endpoints[index]
        if endpoint.server is None:
            self._call(self._open(endpoint))

    def pause(self, index: int) -> None:
        """Hold exporter ``index``'s requests unanswered, like a hung exporter."""
        self._call(self._set_paused(self._endpoints[index], True))

    def resume(self, index: int) -> None:
        """Answer exporter ``index``'s requests again, held ones first."""
        self._call(self._set_paused(self._endpoints[index], False))

    def __enter__(self) -> ExporterFleet:
        return self if self._loop is not None else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _base(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the fleet is not serving")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _open(self, endpoint: Endpoint) -> None:
        server = await asyncio.start_server(
            functools.partial(self._serve, endpoint),
            self.host,
            endpoint.port,
            reuse_address=True,
        )
        endpoint.port = server.sockets[0].getsockname()[1]
        endpoint.server = server

    async def _close(self, endpoint: Endpoint) -> None:
        server, endpoint.server = endpoint.server, None
        if server is not None:
            server.close()
        tasks = list(endpoint.connections)
        for task, writer in endpoint.connections.items():
            writer.transport.abort()
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            await server.wait_closed()

    async def _close_all(self) -> None:
        for endpoint in self._endpoints:
            await self._close(endpoint)
        # Connections accepted as the ports closed may not have started their task yet.
        current = asyncio.current_task()
        rest = [task for task in asyncio.all_tasks() if task is not current]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    async def _set_paused(self, endpoint: Endpoint, paused: bool) -> None:
        if paused:
            endpoint.resumed.clear()
        else:
            endpoint.resumed.set()

    async def _serve(
        self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if endpoint.server is None or task is None:
            writer.transport.abort()
            return
        endpoint.connections[task] = writer
        try:
            while await self._answer(endpoint, reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            del endpoint.connections[task]
            writer.transport.abort()

    async def _answer(
        self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read one request and answer it; whether the connection stays open."""
        lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        request = lines[0].split()
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length", "0")
        if (
            len(request) != 3
            or not request[2].startswith("HTTP/1.")
            or "transfer-encoding" in headers
            or not length.isdigit()
            or int(length) > MAX_REQUEST_BODY_BYTES
        ):
            await self._respond(writer, 400, b"Bad Request\n", "text/plain", {}, False, True)
            return False
        method, target, version = request
        if int(length):
            await reader.readexactly(int(length))
        connection = headers.get("connection", "").lower()
        keep_alive = (
            "close" not in connection if version == "HTTP/1.1" else ("keep-alive" in connection)
        )
        path = target.split("?", 1)[0]
        if path == "/metrics":
            endpoint.scrapes += 1
        await endpoint.resumed.wait()
        extra: dict[str, str] = {}
        status, content_type = 200, "text/plain; charset=utf-8"
        if path == "/metrics":
            body = endpoint.exporter.payload(self.clock()).encode()
            content_type = CONTENT_TYPE
            if self.compress and accepts_gzip(headers.get("accept-encoding", "")):
                body = gzip.compress(body, compresslevel=1, mtime=0)
                extra["Content-Encoding"] = "gzip"
        elif path == "/health":
            body = b"OK"
        elif path == "/":
            body, content_type = LANDING_PAGE, "text/html; charset=utf-8"
        else:
            status, body = 404, b"404 page not found\n"
        await self._respond(writer, status, body, content_type, extra, keep_alive, method != "HEAD")
        return keep_alive

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str,
        extra: dict[str, str],
        keep_alive: bool,
        with_body: bool,
    ) -> None:
        head = [
            f"HTTP/1.1 {status} {REASONS[status]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            *(f"{name}: {value}" for name, value in extra.items()),
        ]
        if not keep_alive:
            head.append("Connection: close")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        if with_body:
            writer.write(body)
        await writer.drain()


def serve_exporters(
    exporters: Sequence[StandInExporter],
    host: str = "127.0.0.1",
    ports: Sequence[int] | None = None,
    *,
    clock: Callable[[], float] = time.time,
    compress: bool = True,
) -> ExporterFleet:
    """Start serving ``exporters`` (ports 0 or None: free ones); stop it, or use ``with``."""
    return ExporterFleet(exporters, host, ports, clock=clock, compress=compress).start()
