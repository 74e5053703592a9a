"""Real processes for tests, benchmarks and tools: a worker, Flower, a ``telemetry`` command.

One launcher serves ``tests/``, ``benchmarks/`` and ``tools/``: each starts
``celery -A telemetry worker`` (or Flower) the same way, from the repository
root with it importable, logging into a file that ``wait_ready`` watches.
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from telemetry.config import ALL_ENV_NAMES
from telemetry.demo.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
FLOWER_USER = ("operator", "s3cret")


class LaunchError(AssertionError):
    """A process did not start, or a condition never held; a test fails with it."""


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    state: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate`` until it holds; raise naming ``what`` and ``state()`` if it never does."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            seen = f"; last seen: {state()}" if state is not None else ""
            raise LaunchError(f"timed out after {timeout_s:.0f}s waiting for {what}{seen}")
        time.sleep(0.1)


def wait_for_count(
    count: Callable[[], int], target: int, what: str, stall_s: float = 60, poll_s: float = 1.0
) -> None:
    """Poll ``count()`` until it equals ``target``, for as long as it keeps changing.

    For drains whose pace is the machine's: a slow machine gets as long as it
    makes progress, and a count that stops short (points lost) or overshoots
    (points stored twice) still fails, once it has not moved for ``stall_s``.
    """
    last, moved_at = count(), time.monotonic()
    while last != target:
        time.sleep(poll_s)
        now = count()
        if now != last:
            last, moved_at = now, time.monotonic()
        elif time.monotonic() - moved_at > stall_s:
            raise LaunchError(f"waiting for {what}: stuck at {last} of {target} for {stall_s:.0f}s")


def clean_env(**settings: str) -> dict[str, str]:
    """This process's environment without the package's variables, ``settings`` set,
    and the repository importable: what every launched process starts from."""
    env = {key: value for key, value in os.environ.items() if key not in ALL_ENV_NAMES}
    env["PYTHONPATH"] = str(REPO)
    env.update(settings)
    return env


def end_process(process: subprocess.Popen[bytes], sig: int, timeout_s: float) -> int:
    """Send ``sig`` unless it has ended; SIGKILL after ``timeout_s``; return its exit code."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def telemetry_command(
    *args: str, env: Mapping[str, str], timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``telemetry ARGS`` as a user would, and return what it printed and its exit code."""
    return subprocess.run(
        [sys.executable, "-m", "telemetry.cli", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd=REPO,
    )


def spawn_celery(
    app: str,
    args: Sequence[str],
    env: Mapping[str, str],
    log: IO[bytes],
    cwd: Path = REPO,
) -> subprocess.Popen[bytes]:
    """``celery -A APP ARGS`` started in ``cwd`` (the repository unless given, so its
    ``celeryconfig.py`` is the one loaded), everything it prints in ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", app, *args],
        cwd=cwd,
        env=dict(env),
        stdout=log,
        stderr=subprocess.STDOUT,
    )


class WorkerProcess:
    """A real ``celery -A telemetry worker`` process and its log."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        concurrency: int = 10,
        app: str = "telemetry",
        extra_args: tuple[str, ...] = (),
        cwd: Path = REPO,
    ) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = spawn_celery(
            app,
            [
                "worker",
                f"--concurrency={concurrency}",
                "--loglevel=INFO",
                "--without-mingle",
                "--without-gossip",
                *extra_args,
            ],
            env,
            self._log,
            cwd,
        )

    def log(self) -> str:
        """Everything the worker printed so far."""
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Block until the worker logs that it is consuming."""
        wait_for(
            lambda: " ready." in self.log() or self.process.poll() is not None,
            timeout_s,
            "the worker to start",
        )
        if self.process.poll() is not None:
            raise LaunchError(f"worker exited with {self.process.returncode}:\n{self.log()}")

    def last_stats(self) -> dict[str, Any]:
        """The statistics line the worker logged last (the final one, once stopped)."""
        lines = [line for line in self.log().splitlines() if '"Collector statistics"' in line]
        assert lines, "the worker logged no statistics line"
        stats: dict[str, Any] = json.loads(lines[-1])
        return stats

    def rss_kb(self) -> int:
        """The worker's resident memory now, in KiB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS line")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 60) -> int:
        """Send ``sig`` and wait for the process to end; return its exit code."""
        code = end_process(self.process, sig, timeout_s)
        self._log.close()
        return code


class FlowerProcess:
    """A real ``celery -A telemetry flower`` process, asked through its HTTP API.

    With ``user`` (the default) Flower wants basic auth, as docker-compose sets
    it up; with None its API answers without a login (Flower bound to 127.0.0.1).
    """

    def __init__(
        self, env: dict[str, str], log_path: Path, user: tuple[str, str] | None = FLOWER_USER
    ) -> None:
        self.port = free_port()
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = spawn_celery(
            "telemetry",
            ["flower", "--address=127.0.0.1", f"--port={self.port}"],
            (
                {**env, "FLOWER_BASIC_AUTH": ":".join(user)}
                if user
                else {**env, "FLOWER_UNAUTHENTICATED_API": "true"}
            ),
            self._log,
        )
        self._headers: dict[str, str] = {}
        if user:
            token = base64.b64encode(":".join(user).encode()).decode()
            self._headers["Authorization"] = f"Basic {token}"

    def get(self, path: str, **query: str) -> str:
        """The body of ``GET path?query``, authenticated like an operator."""
        url = f"http://127.0.0.1:{self.port}{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        request = urllib.request.Request(url, headers=self._headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            body: bytes = response.read()
        return body.decode()

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise LaunchError(f"Flower exited with {self.process.returncode}:\n{self.log()}")
        try:
            return self.get("/healthcheck") == "OK"
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Block until Flower answers HTTP."""
        wait_for(self._answers, timeout_s, "Flower to answer", self.log)

    def log(self) -> str:
        """Everything Flower printed so far."""
        return self.log_path.read_text(errors="replace")

    def tasks(self, **query: str) -> dict[str, dict[str, Any]]:
        """``/api/tasks`` with these filters (``workername``, ``state``, ``search``…)."""
        found: dict[str, dict[str, Any]] = json.loads(self.get("/api/tasks", **query))
        return found

    def event_counts(self, node: str) -> dict[str, float]:
        """Flower's ``flower_events_total`` for one worker from ``/metrics``, by event type."""
        pattern = re.compile(
            r'^flower_events_total\{task="telemetry\.ingest",type="([^"]+)",'
            rf'worker="{re.escape(node)}"\}} (\S+)$'
        )
        counts = {}
        for line in self.get("/metrics").splitlines():
            matched = pattern.match(line)
            if matched:
                counts[matched[1]] = float(matched[2])
        return counts

    def sees_online(self, node: str) -> bool:
        """Whether Flower has had an online event or heartbeat from ``node``."""
        return f'flower_worker_online{{worker="{node}"}} 1.0' in self.get("/metrics")

    def stop(self) -> None:
        """Stop Flower."""
        end_process(self.process, signal.SIGTERM, timeout_s=30)
        self._log.close()
