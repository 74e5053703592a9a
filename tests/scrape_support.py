"""A local HTTP server that misbehaves on purpose, for the scraper's bad-input cases."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

GOOD_BODY = (
    b"# HELP DCGM_FI_DEV_GPU_TEMP GPU temperature (in C).\n"
    b"# TYPE DCGM_FI_DEV_GPU_TEMP gauge\n"
    b'DCGM_FI_DEV_GPU_TEMP{gpu="0",UUID="GPU-0000aaaa-0000-0000-0000-000000000001",'
    b'device="nvidia0",modelName="Test GPU",Hostname="bench-node"} 41\n'
)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, GOOD_BODY, "text/plain; version=0.0.4")
        elif path == "/404":
            self._send(404, b"404 page not found\n", "text/plain")
        elif path == "/500":
            self._send(500, b"internal error\n", "text/plain")
        elif path == "/html":
            self._send(200, b"<!doctype html><html><body>login</body></html>", "text/html")
        elif path == "/html-as-text":
            self._send(200, b"<html><body>a proxy page</body></html>\n", "text/plain")
        elif path == "/empty":
            self._send(200, b"", "text/plain")
        elif path == "/blank":
            self._send(200, b"\n \n", "text/plain")
        elif path == "/huge":
            self._send(200, b"x 1\n" * (self.server.huge_bytes // 4 + 1), "text/plain")
        elif path == "/huge-chunked":
            self._trickle(b"x 1\n" * 4096, pause_s=0, chunks=self.server.huge_bytes // 16384 + 2)
        elif path == "/slow":
            self._trickle(b"# ", pause_s=0.2, chunks=100)
        elif path == "/stall":
            time.sleep(self.server.stall_s)
            self._send(200, GOOD_BODY, "text/plain")
        else:
            self._send(404, b"no such path\n", "text/plain")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, piece: bytes, pause_s: float, chunks: int) -> None:
        # No Content-Length: the body ends when the connection closes.
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for _ in range(chunks):
                self.wfile.write(piece)
                self.wfile.flush()
                if pause_s:
                    time.sleep(pause_s)
        except OSError:
            pass  # the scraper hung up at its deadline, as it should

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    huge_bytes = 64 * 1024
    stall_s = 3.0


@contextmanager
def misbehaving_server(huge_bytes: int = 64 * 1024) -> Iterator[str]:
    """Serve the bad cases on a free local port; yields the base URL (``http://127.0.0.1:P``)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.huge_bytes = huge_bytes
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class _StaticHandler(BaseHTTPRequestHandler):
    server: _StaticServer

    def do_GET(self) -> None:
        body = self.server.body
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _StaticServer(ThreadingHTTPServer):
    daemon_threads = True
    body = b""


@contextmanager
def static_exporters(bodies: list[bytes]) -> Iterator[list[str]]:
    """One local server per body, each serving it on every path; yields their /metrics URLs."""
    servers = []
    threads = []
    try:
        for body in bodies:
            server = _StaticServer(("127.0.0.1", 0), _StaticHandler)
            server.body = body
            servers.append(server)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
            thread.start()
            threads.append(thread)
        yield [f"http://127.0.0.1:{server.server_address[1]}/metrics" for server in servers]
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(5)


EXPORTER_FIXTURES = Path(__file__).resolve().parent / "fixtures" / "exporter"
"""The project's own dcgm-exporter fixtures."""
SHARED_CAPTURES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "dcgm-exporter"
"""The public captures in ../shared: read from there, never copied in."""


def shared_text(name: str) -> str:
    """A shared capture; missing, it skips on a laptop and fails under CI."""
    path = SHARED_CAPTURES_DIR / name
    if not path.is_file():
        if os.environ.get("CI") == "true":
            pytest.fail(f"{path} is missing under CI")
        pytest.skip(f"{path} is missing")
    return path.read_text()
