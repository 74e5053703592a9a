"""An embedded MongoDB-compatible server (SecantusDB) run as a separate process.

SecantusDB is GPL; the collector only ever talks to it over the MongoDB wire
protocol, from another process, exactly as it talks to a real MongoDB.
"""

from __future__ import annotations

import importlib.util
import socket
import subprocess  # nosec B404
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

from telemetry.errors import StorageRejected, StorageUnavailable, TelemetryError
from telemetry.store.client import MongoProbe, local_server_uri
from telemetry.store.port import StorageProbe

# How long one readiness ping of the starting server may take.
PING_TIMEOUT_MS = 500


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


class SecantusServer:
    """Starts, pings and stops one SecantusDB server process."""

    def __init__(
        self,
        storage_path: str | Path = ":memory:",
        port: int | None = None,
        host: str = "127.0.0.1",
        log_path: Path | None = None,
        extra_args: Sequence[str] = (),
        uri_options: Mapping[str, str] | None = None,
    ) -> None:
        """``extra_args`` go to ``python -m secantus`` (``--auth``, ``--tls-cert-file`` …);
        ``uri_options`` join the URI's query, for what those ask of a client (``tls``,
        ``tlsCAFile``)."""
        self.storage_path = str(storage_path)
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path
        self.extra_args = list(extra_args)
        self.uri_options = dict(uri_options or {})
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        """The URI to connect with (retryable writes off: see :func:`local_server_uri`)."""
        return local_server_uri(self.host, self.port, self.uri_options)

    @property
    def pid(self) -> int | None:
        """The server process's id, once started."""
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until it answers a ping."""
        if importlib.util.find_spec("secantus") is None:
            raise TelemetryError(
                "SecantusDB is not installed; install it with: pip install 'telemetry[embedded]'"
            )
        if self.log_path is not None:
            self._log = self.log_path.open("ab")
        # SecantusDB as a child process: a fixed argument list, no shell (so is the import).
        self._process = subprocess.Popen(  # nosec B603
            [
                sys.executable,
                "-m",
                "secantus",
                "--host",
                self.host,
                "--port",
                str(self.port),
                "--storage-path",
                self.storage_path,
                "--log-level",
                "WARNING",
                *self.extra_args,
            ],
            stdout=self._log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT if self._log else subprocess.DEVNULL,
            # A session of its own: Ctrl-C at the terminal reaches the whole foreground
            # process group, and the database must outlive the demo's own shutdown.
            start_new_session=True,
        )
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        """Ping until the server answers; raise if it exits or the time runs out."""
        deadline = time.monotonic() + timeout_s
        probe: StorageProbe = MongoProbe(self.uri, PING_TIMEOUT_MS, "telemetry-demo")
        try:
            while True:
                if self._process is not None and self._process.poll() is not None:
                    raise StorageUnavailable(
                        f"SecantusDB exited with code {self._process.returncode} on port "
                        f"{self.port}" + (f"; see {self.log_path}" if self.log_path else "")
                    )
                try:
                    probe.ping()
                    return
                except (StorageUnavailable, StorageRejected) as exc:
                    if time.monotonic() > deadline:
                        raise StorageUnavailable(
                            f"SecantusDB did not answer on port {self.port} "
                            f"within {timeout_s:.0f}s: {exc.problem}"
                        ) from exc
                    time.sleep(0.1)
        finally:
            probe.close()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> SecantusServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
