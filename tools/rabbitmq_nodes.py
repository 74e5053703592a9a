"""Private RabbitMQ nodes and a local cluster on this machine, for tests and for people.

Every node is a real RabbitMQ started from the installed package's own ``rabbitmq-server``
script (not the wrapper on ``PATH``, which switches users and drops the environment). It runs
as the ``rabbitmq`` user, so all nodes share that user's Erlang cookie and ``rabbitmqctl`` can
talk to them. Each node gets its own node name, listener, distribution port, data, log,
plugins and pid files, all under one base directory, so the shared broker at 127.0.0.1:5672
is never touched.

Library use::

    with LocalCluster(size=3) as cluster:      # started, joined; stopped and deleted on exit
        url = cluster.failover_url()           # amqp://guest:guest@127.0.0.1:P1//;...
        cluster.queue_leader("telemetry").kill()

    with LocalNode.create() as node:           # one private node
        node.amqp_url

    tls = NodeTls(ca_file, cert_file, key_file)  # PEM files, copied into the node's directory
    with LocalNode.create(tls=tls) as node:    # also a TLS listener on 127.0.0.1 and 127.0.0.2
        node.amqps_url()                       # amqps://guest:guest@127.0.0.1:TLS_PORT//

Command line (state is kept in the base directory, so ``stop`` finds the nodes)::

    python -m tools.rabbitmq_nodes cluster start|stop|status [--base DIR] [--size 3]
    python -m tools.rabbitmq_nodes node start|stop|status [--base DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import logging
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

log = logging.getLogger("tools.rabbitmq_nodes")

RABBITMQ_USER = "rabbitmq"
HOST = "localhost"
STATE_FILE = "state.json"
DEFAULT_START_TIMEOUT_S = 90.0
DEFAULT_STOP_TIMEOUT_S = 60.0
# Ports the shared broker and rabbitmqctl may use (AMQP, management, distribution, epmd, and
# the CLI tools' own distribution range 35672-35682); private ports are never chosen there.
RESERVED_PORTS = frozenset({4369, 5671, 5672, 15672, 25672, *range(35672, 35683)})
# Below Linux's ephemeral range (32768+), so an outgoing connection cannot take a node's port
# while the node is down for a restart.
PORT_RANGE = (20000, 32000)
_port_lock = threading.Lock()
_ports_handed_out: set[int] = set()


MAX_MESSAGE_SIZE = 1_048_576
"""The largest message a private node accepts, the value docs/security.md recommends."""


class NodeError(RuntimeError):
    """A private node could not be started, stopped or queried; the message is one line."""


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# The installed RabbitMQ and the rabbitmq user


def find_sbin() -> Path:
    """The package's own script directory (``rabbitmq_server-X.Y.Z/sbin``).

    ``RABBITMQ_SBIN`` overrides the search.
    """
    override = os.environ.get("RABBITMQ_SBIN")
    candidates = [override] if override else []
    candidates += sorted(
        glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/sbin"), key=_version_key, reverse=True
    )
    candidates += ["/usr/lib/rabbitmq/bin", "/opt/rabbitmq/sbin", "/usr/local/opt/rabbitmq/sbin"]
    for candidate in candidates:
        path = Path(candidate)
        if (path / "rabbitmq-server").is_file() and (path / "rabbitmqctl").is_file():
            return path
    raise NodeError(
        "RabbitMQ's own sbin directory was not found (looked in /usr/lib/rabbitmq/lib/"
        "rabbitmq_server-*/sbin); install rabbitmq-server or set RABBITMQ_SBIN"
    )


def _version_key(path: str) -> tuple[int, ...]:
    match = re.search(r"rabbitmq_server-([\d.]+)", path)
    if not match:
        return (0,)
    return tuple(int(part) for part in match.group(1).split(".") if part.isdigit())


@dataclass(frozen=True)
class _RabbitUser:
    uid: int
    gid: int
    home: str


def _rabbit_user() -> _RabbitUser:
    try:
        entry = pwd.getpwnam(RABBITMQ_USER)
    except KeyError:
        raise NodeError(f"there is no {RABBITMQ_USER!r} user; install rabbitmq-server") from None
    return _RabbitUser(entry.pw_uid, entry.pw_gid, entry.pw_dir)


def _as_rabbitmq(argv: Sequence[str], env: dict[str, str]) -> list[str]:
    """``argv`` run as the rabbitmq user with exactly ``env`` set (the cookie is in its home)."""
    user = _rabbit_user()
    full_env = {"HOME": user.home, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    full_env.update(env)
    assignments = [f"{key}={value}" for key, value in full_env.items()]
    if os.geteuid() == user.uid:
        return ["env", "-i", *assignments, *argv]
    if os.geteuid() == 0:
        return ["runuser", "-u", RABBITMQ_USER, "--", "env", "-i", *assignments, *argv]
    return ["sudo", "-n", "-u", RABBITMQ_USER, "env", "-i", *assignments, *argv]


def _chown_to_rabbitmq(path: Path) -> None:
    user = _rabbit_user()
    if os.geteuid() == user.uid:
        return
    if os.geteuid() != 0:
        raise NodeError(
            f"{path} must be writable by the {RABBITMQ_USER} user; run as root or {RABBITMQ_USER}"
        )
    for root, dirs, files in os.walk(path):
        os.chown(root, user.uid, user.gid)
        for name in dirs + files:
            os.chown(os.path.join(root, name), user.uid, user.gid, follow_symlinks=False)


def _check_reachable(path: Path) -> None:
    """Fail clearly when the rabbitmq user cannot write ``path`` (say, a base under /root)."""
    argv = _as_rabbitmq(["test", "-w", str(path), "-a", "-x", str(path)], {})
    if subprocess.run(argv, capture_output=True, check=False).returncode != 0:
        raise NodeError(
            f"the {RABBITMQ_USER} user cannot write {path}; choose a --base it can reach "
            "(every parent directory must be searchable, e.g. under /tmp)"
        )


# --------------------------------------------------------------------------------------------
# Ports and processes


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1, never a reserved one, never one handed out."""
    chosen: list[int] = []
    with _port_lock:
        for _ in range(2000):
            port = random.randrange(*PORT_RANGE)
            if port in RESERVED_PORTS or port in _ports_handed_out or port in chosen:
                continue
            if _bindable(port):
                chosen.append(port)
                if len(chosen) == count:
                    _ports_handed_out.update(chosen)
                    return chosen
    raise NodeError(f"could not find {count} free ports in {PORT_RANGE}")


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _process_env(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {key.decode(errors="replace"): value.decode(errors="replace") for key, value in pairs}


def _is_beam(pid: int) -> bool:
    try:
        exe = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0", 1)[0]
    except OSError:
        return False
    return exe.endswith(b"beam.smp") or exe.endswith(b"beam")


def beam_pids(nodename: str) -> list[int]:
    """The beam processes running as node ``nodename`` (found by their environment)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if not _is_beam(pid):
            continue
        env = _process_env(pid)
        if env is not None and env.get("RABBITMQ_NODENAME") == nodename:
            found.append(pid)
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def wait_until(predicate: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout_s`` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


# --------------------------------------------------------------------------------------------
# One node


@dataclass(frozen=True)
class NodeTls:
    """PEM files for a node's TLS listener: the CA it checks client certificates against,
    its certificate and its key (not encrypted). The node reads copies in its own directory,
    so the originals may live where the rabbitmq user cannot read."""

    ca_file: Path
    cert_file: Path
    key_file: Path


# The TLS listener's addresses: a second loopback address lets a test reach the same
# listener by a name its certificate does not list.
TLS_HOSTS = ("127.0.0.1", "127.0.0.2")


class LocalNode:
    """One private RabbitMQ node under ``<base>/<short_name>``, listening on 127.0.0.1:``port``.

    ``start`` boots it (fresh or on its existing data), ``stop`` shuts it down gracefully,
    ``kill`` SIGKILLs its beam process, ``restart`` is stop + start on the same data and ports.
    """

    def __init__(
        self,
        short_name: str,
        base_dir: Path,
        port: int | None = None,
        dist_port: int | None = None,
        owns_base: bool = False,
        tls: NodeTls | None = None,
        tls_port: int | None = None,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", short_name):
            raise NodeError(f"invalid node name {short_name!r}")
        self.short_name = short_name
        self.base_dir = Path(base_dir)
        self.port: int | None = port
        self.dist_port: int | None = dist_port
        self._owns_base = owns_base
        self.tls = tls
        self.tls_port: int | None = tls_port
        self._sbin = find_sbin()
        self._launched_at = time.monotonic()

    @classmethod
    def create(
        cls, base_dir: Path | str | None = None, prefix: str = "tmq", tls: NodeTls | None = None
    ) -> LocalNode:
        """A node with a fresh unique name; in a new temporary base directory if none given.

        With ``tls`` it also listens for AMQP over TLS (:meth:`amqps_url`).
        """
        owns = base_dir is None
        base = make_base_dir(base_dir)
        return cls(f"{prefix}{secrets.token_hex(3)}", base, owns_base=owns, tls=tls)

    # -- names and paths --------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The Erlang node name, e.g. ``tmq1a2b3c-1@localhost``."""
        return f"{self.short_name}@{HOST}"

    @property
    def dir(self) -> Path:
        return self.base_dir / self.short_name

    @property
    def log_file(self) -> Path:
        return self.dir / "log" / f"{self.name}.log"

    @property
    def pid_file(self) -> Path:
        return self.dir / "beam.pid"

    @property
    def amqp_url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:PORT//`` (guest is allowed: the node is loopback-only)."""
        return f"amqp://guest:guest@127.0.0.1:{self._port()}//"

    def amqps_url(self, host: str = TLS_HOSTS[0], user: str = "guest:guest@") -> str:
        """``amqps://guest:guest@HOST:TLS_PORT//``: the TLS listener, by ``host``.

        ``user`` is the URL's credentials part; ``""`` leaves them out (certificate login).
        """
        if self.tls is None or self.tls_port is None:
            raise NodeError(f"node {self.name} has no TLS listener; create it with tls=")
        return f"amqps://{user}{host}:{self.tls_port}//"

    def _port(self) -> int:
        if self.port is None:
            raise NodeError(f"node {self.name} has no port yet; start it first")
        return self.port

    def to_state(self) -> dict[str, Any]:
        return {"short_name": self.short_name, "port": self.port, "dist_port": self.dist_port}

    @classmethod
    def from_state(cls, base_dir: Path, state: dict[str, Any]) -> LocalNode:
        return cls(str(state["short_name"]), base_dir, int(state["port"]), int(state["dist_port"]))

    def __repr__(self) -> str:
        return f"LocalNode({self.name}, port={self.port})"

    # -- process --------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The running beam process of this node, or None."""
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().strip())
            env = _process_env(pid)
            if _alive(pid) and _is_beam(pid) and (env or {}).get("RABBITMQ_NODENAME") == self.name:
                return pid
        pids = [pid for pid in beam_pids(self.name) if _alive(pid)]
        return pids[0] if pids else None

    def is_running(self) -> bool:
        return self.pid() is not None

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) the node's beam process has used so far."""
        pid = self.pid()
        if pid is None:
            raise NodeError(f"node {self.name} is not running")
        return cpu_seconds(pid)

    def _server_env(self) -> dict[str, str]:
        return {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.pid_file),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "ERL_FLAGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def _write_files(self) -> None:
        for sub in ("mnesia", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        # Its own config: the system-wide rabbitmq.conf pins the listener to 127.0.0.1:5672.
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self._port()}\n"
            "loopback_users.guest = true\n"
            "log.file.level = info\n"
            "log.console = false\n"
            # As docs/security.md asks of a deployment, so tests meet the same broker.
            f"max_message_size = {MAX_MESSAGE_SIZE}\n" + self._tls_config()
        )
        (self.dir / "advanced.config").write_text("[].\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        # An env file of its own, so the system one (NODENAME=rabbit@localhost) is not read.
        (self.dir / "rabbitmq-env.conf").write_text("# private node: settings come from env\n")
        _chown_to_rabbitmq(self.dir)

    def _tls_config(self) -> str:
        """The TLS listener's lines of rabbitmq.conf, its PEM files copied beside it."""
        if self.tls is None:
            return ""
        if self.tls_port is None:
            raise NodeError(f"node {self.name} has a TLS config but no TLS port")
        tls_dir = self.dir / "tls"
        tls_dir.mkdir(parents=True, exist_ok=True)
        copies = {}
        for name, source in (
            ("ca", self.tls.ca_file),
            ("cert", self.tls.cert_file),
            ("key", self.tls.key_file),
        ):
            copies[name] = tls_dir / f"{name}.pem"
            shutil.copyfile(source, copies[name])
            copies[name].chmod(0o600)
        listeners = "".join(
            f"listeners.ssl.{index} = {host}:{self.tls_port}\n"
            for index, host in enumerate(TLS_HOSTS, start=1)
        )
        # verify_peer without fail_if_no_peer_cert: a client certificate is checked when
        # one is shown, and clients without one log in with a password.
        return (
            listeners + f"ssl_options.cacertfile = {copies['ca']}\n"
            f"ssl_options.certfile = {copies['cert']}\n"
            f"ssl_options.keyfile = {copies['key']}\n"
            "ssl_options.verify = verify_peer\n"
            "ssl_options.fail_if_no_peer_cert = false\n"
        )

    def start(
        self, timeout_s: float = DEFAULT_START_TIMEOUT_S, enable_feature_flags: bool = True
    ) -> Self:
        """Boot the node and wait until it accepts AMQP; on failure no beam process remains.

        A fresh node gets every feature flag (quorum_queue, stream_queue, ...) enabled.
        """
        if self.is_running():
            log.info("node %s is already running on port %s", self.name, self.port)
            return self
        fresh = not (self.dir / "mnesia" / self.name).exists()
        auto_ports = self.port is None or self.dist_port is None
        attempts = 3 if auto_ports else 1
        for attempt in range(1, attempts + 1):
            if auto_ports:
                self.port, self.dist_port, *tls_port = pick_ports(3 if self.tls else 2)
                self.tls_port = tls_port[0] if tls_port else None
            try:
                self.launch()
                self.wait_ready(timeout_s)
            except NodeError as exc:
                self._kill_quietly()
                if attempt < attempts and "eaddrinuse" in str(exc):
                    log.warning("node %s: port taken (%s); retrying on new ports", self.name, exc)
                    continue
                raise
            break
        if fresh and enable_feature_flags:
            self.enable_all_feature_flags()
        return self

    def launch(self) -> None:
        """Run ``rabbitmq-server -detached`` for this node and return at once (see wait_ready)."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._write_files()
        with contextlib.suppress(FileNotFoundError):
            self.pid_file.unlink()
        self._launched_at = time.monotonic()
        log.info(
            "starting node %s on 127.0.0.1:%s (dist %s), data in %s",
            self.name,
            self.port,
            self.dist_port,
            self.dir,
        )
        argv = _as_rabbitmq([str(self._sbin / "rabbitmq-server"), "-detached"], self._server_env())
        result = subprocess.run(
            argv, cwd=self.dir, capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise NodeError(
                f"rabbitmq-server -detached for {self.name} exited {result.returncode}: "
                + _one_line(result.stderr or result.stdout)
            )

    def wait_ready(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> Self:
        """Block until the node completes an AMQP login as guest; fail fast if its beam dies."""
        started = self._launched_at
        deadline = time.monotonic() + timeout_s
        seen_pid = False
        while True:
            pid = self.pid()
            if pid is not None:
                seen_pid = True
            elif seen_pid or time.monotonic() - started > 15:
                raise NodeError(f"node {self.name} exited while starting: {self.last_error()}")
            if self._port_open_and_login():
                log.info("node %s ready in %.1fs", self.name, time.monotonic() - started)
                return self
            if time.monotonic() > deadline:
                raise NodeError(
                    f"node {self.name} not ready after {timeout_s:.0f}s: {self.last_error()}"
                )
            time.sleep(0.25)

    def _port_open_and_login(self) -> bool:
        if self.port is None or not _port_open(self.port):
            return False
        from kombu import Connection

        try:
            with Connection(self.amqp_url, connect_timeout=2) as connection:
                connection.connect()
                return bool(connection.connected)
        except Exception:
            return False

    def last_error(self) -> str:
        """The most telling line of the node's log, for a one-line error."""
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return f"no log at {self.log_file}"
        for line in lines:
            if "eaddrinuse" in line or "already in use" in line:
                return _one_line(line) + " (eaddrinuse)"
        errors = [line for line in lines if "[error]" in line or "[critical]" in line]
        picked = errors[0] if errors else (lines[-1] if lines else "empty log")
        return _one_line(picked) + f" (log: {self.log_file})"

    def ctl(self, *args: str, timeout_s: float = 120, tool: str = "rabbitmqctl") -> str:
        """Run ``rabbitmqctl -n NODE ARGS`` (or another CLI tool) and return its stdout."""
        argv = _as_rabbitmq([str(self._sbin / tool), "-n", self.name, *args], {})
        try:
            result = subprocess.run(
                argv,
                cwd=_rabbit_user().home,
                capture_output=True,
                text=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise NodeError(f"{tool} {' '.join(args)} on {self.name} timed out") from None
        if result.returncode != 0:
            raise NodeError(
                f"{tool} {' '.join(args)} on {self.name} failed: "
                + _one_line(result.stderr or result.stdout)
            )
        return result.stdout

    def enable_all_feature_flags(self) -> None:
        """quorum_queue and stream_queue (and the rest) on; a fresh node usually has them."""
        self.ctl("enable_feature_flag", "all")

    def stop(self, timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
        """Shut the node down gracefully (``rabbitmqctl stop``); SIGKILL if that fails."""
        pid = self.pid()
        if pid is None:
            return
        log.info("stopping node %s", self.name)
        try:
            self.ctl("stop", timeout_s=timeout_s)
        except NodeError as exc:
            log.warning("graceful stop of %s failed (%s); killing it", self.name, exc)
        if not wait_until(lambda: not _alive(pid), timeout_s):
            log.warning("node %s still running after stop; killing it", self.name)
        self._kill_quietly()

    def kill(self) -> None:
        """SIGKILL the node's beam process (a crash: no clean shutdown) and wait for it to end."""
        pid = self.pid()
        if pid is None:
            raise NodeError(f"node {self.name} is not running; nothing to kill")
        log.info("killing node %s (beam pid %d) with SIGKILL", self.name, pid)
        self._kill_quietly()

    def _kill_quietly(self) -> None:
        pids = set(beam_pids(self.name))
        from_file = self._pid_from_file()
        if from_file is not None:
            pids.add(from_file)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not any(_alive(pid) for pid in pids), 10, 0.05)

    def _pid_from_file(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pid_file.read_text().strip())
            if _is_beam(pid) and (_process_env(pid) or {}).get("RABBITMQ_NODENAME") == self.name:
                return pid
        return None

    def restart(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> Self:
        """Stop (if running) and start again on the same data and ports."""
        self.stop()
        return self.start(timeout_s)

    def delete_data(self) -> None:
        """Remove this node's directory (the node must be stopped)."""
        if self.is_running():
            raise NodeError(f"node {self.name} is running; stop it before deleting its data")
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        """Stop the node and delete its data (and the base directory if this node made it)."""
        try:
            self.stop()
        finally:
            self._kill_quietly()
            self.delete_data()
            if self._owns_base:
                shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        if not self.is_running():
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def make_base_dir(base_dir: Path | str | None) -> Path:
    """The base directory, created, searchable and owned by the rabbitmq user."""
    if base_dir is None:
        base = Path(tempfile.mkdtemp(prefix="rabbitmq-nodes-", dir="/tmp"))
    else:
        base = Path(base_dir).resolve()
        base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    _chown_to_rabbitmq(base)
    _check_reachable(base)
    return base


# --------------------------------------------------------------------------------------------
# A cluster


class LocalCluster:
    """``size`` private nodes joined into one cluster (node 1 is the seed)."""

    def __init__(
        self,
        size: int = 3,
        base_dir: Path | str | None = None,
        prefix: str | None = None,
        nodes: list[LocalNode] | None = None,
    ) -> None:
        if size < 1:
            raise NodeError("a cluster needs at least one node")
        self._owns_base = base_dir is None
        self.base_dir = make_base_dir(base_dir)
        token = prefix or f"tmq{secrets.token_hex(3)}"
        self.nodes: list[LocalNode] = nodes or [
            LocalNode(f"{token}-{index}", self.base_dir) for index in range(1, size + 1)
        ]

    @property
    def size(self) -> int:
        return len(self.nodes)

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> Self:
        """Boot all nodes at once, then join nodes 2..N to node 1. Any failure stops them all."""
        began = time.monotonic()
        try:
            with ThreadPoolExecutor(max_workers=self.size) as pool:
                list(pool.map(lambda node: node.start(timeout_s, False), self.nodes))
            log.info("%d nodes up in %.1fs", self.size, time.monotonic() - began)
            self.join()
            # Cluster-wide once joined: quorum_queue and stream_queue (fresh nodes have them).
            self.nodes[0].enable_all_feature_flags()
        except BaseException:
            self.stop()
            raise
        self.save_state()
        return self

    def join(self) -> None:
        """``stop_app`` / ``join_cluster`` / ``start_app`` on every node not yet in the cluster."""
        began = time.monotonic()
        seed = self.nodes[0]
        members = self.running_members(seed)
        for node in self.nodes[1:]:
            if node.name in members:
                continue
            log.info("joining %s to %s", node.name, seed.name)
            node.ctl("stop_app")
            node.ctl("join_cluster", seed.name)
            node.ctl("start_app")
            node._launched_at = time.monotonic()
            node.wait_ready()
        members = self.running_members(seed)
        missing = [node.name for node in self.nodes if node.name not in members]
        if missing:
            raise NodeError(f"cluster formed without {', '.join(missing)}; members: {members}")
        log.info("cluster of %d joined in %.1fs", self.size, time.monotonic() - began)

    @staticmethod
    def running_members(node: LocalNode) -> list[str]:
        """The running nodes of ``node``'s cluster, as ``node`` sees them."""
        out = node.ctl("cluster_status", "--formatter", "json")
        status: dict[str, Any] = json.loads(out[out.index("{") :])
        return [str(name) for name in status.get("running_nodes", [])]

    def urls(self) -> list[str]:
        return [node.amqp_url for node in self.nodes]

    def failover_url(self, first: LocalNode | None = None) -> str:
        """kombu's failover list, ``amqp://guest:guest@127.0.0.1:P1//;...``; ``first`` leads."""
        ordered = sorted(self.nodes, key=lambda node: node is not first)
        return ";".join(node.amqp_url for node in ordered)

    def node_named(self, name: str) -> LocalNode:
        for node in self.nodes:
            if name in (node.name, node.short_name):
                return node
        raise NodeError(f"{name} is not a node of this cluster ({self.names()})")

    def names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def running(self) -> list[LocalNode]:
        return [node for node in self.nodes if node.is_running()]

    def queue_leader(self, queue: str, vhost: str = "/") -> LocalNode:
        """The node leading quorum queue ``queue`` (asked of a running node)."""
        return self.node_named(self.queue_info(queue, vhost)["leader"])

    def queue_info(self, queue: str, vhost: str = "/") -> dict[str, str]:
        """``name``, ``type``, ``leader`` and ``members`` of one queue, from rabbitmqctl."""
        errors = []
        for node in self.running():
            try:
                out = node.ctl(
                    "list_queues", "-p", vhost, "name", "type", "leader", "members",
                    "--formatter", "json", "--quiet",
                )  # fmt: skip
            except NodeError as exc:
                errors.append(str(exc))
                continue
            for row in json.loads(out[out.index("[") :]):
                if row.get("name") == queue:
                    members = row.get("members", [])
                    return {
                        "name": str(row["name"]),
                        "type": str(row.get("type", "")),
                        "leader": str(row.get("leader", "")),
                        "members": ",".join(str(m) for m in members)
                        if isinstance(members, list)
                        else str(members),
                    }
            raise NodeError(f"queue {queue!r} not found in vhost {vhost!r}")
        raise NodeError(f"no running node answered list_queues: {'; '.join(errors) or 'none up'}")

    def ensure_running(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> Self:
        """Start any node that is down (it rejoins from its data) and wait for all members."""
        down = [node for node in self.nodes if not node.is_running()]
        if down:
            with ThreadPoolExecutor(max_workers=len(down)) as pool:
                list(pool.map(lambda node: node.start(timeout_s, False), down))
        names = set(self.names())

        def all_members() -> bool:
            try:
                return names <= set(self.running_members(self.nodes[0]))
            except NodeError:
                return False

        if down and not wait_until(all_members, timeout_s, 1.0):
            raise NodeError(f"nodes {[node.name for node in down]} did not rejoin the cluster")
        return self

    def stop(self) -> None:
        """Stop every node (in parallel, gracefully; SIGKILL as the fallback)."""
        with ThreadPoolExecutor(max_workers=max(1, self.size)) as pool:
            list(pool.map(LocalNode.stop, self.nodes))
        for node in self.nodes:
            node._kill_quietly()

    def delete_data(self) -> None:
        for node in self.nodes:
            node.delete_data()
        with contextlib.suppress(FileNotFoundError):
            (self.base_dir / STATE_FILE).unlink()
        if self._owns_base:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def close(self) -> None:
        """Stop all nodes and delete their data."""
        try:
            self.stop()
        finally:
            self.delete_data()

    def save_state(self) -> None:
        save_state(self.base_dir, "cluster", self.nodes)

    @classmethod
    def load(cls, base_dir: Path | str) -> LocalCluster:
        """The cluster whose state ``start`` saved in ``base_dir``."""
        base = Path(base_dir)
        nodes = load_state(base, "cluster")
        return cls(len(nodes), base, nodes=nodes)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def save_state(base: Path, kind: str, nodes: list[LocalNode]) -> None:
    state = {"kind": kind, "nodes": [node.to_state() for node in nodes]}
    (base / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")


def load_state(base: Path, kind: str) -> list[LocalNode]:
    path = base / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        raise NodeError(f"no {kind} recorded in {base} (no {STATE_FILE})") from None
    if state.get("kind") != kind:
        raise NodeError(f"{base} holds a {state.get('kind')}, not a {kind}")
    return [LocalNode.from_state(base, node) for node in state["nodes"]]


# --------------------------------------------------------------------------------------------
# Command line


def default_base(kind: str) -> Path:
    return Path(tempfile.gettempdir()) / f"telemetry-rabbitmq-{os.getuid()}" / kind


def _print_urls(nodes: list[LocalNode]) -> None:
    for node in nodes:
        state = "running" if node.is_running() else "down"
        print(f"{node.name}\t{state}\t{node.amqp_url}")
    if len(nodes) > 1:
        print("failover URL (CELERY_BROKER_URL):")
    print(";".join(node.amqp_url for node in nodes))


def _cli_cluster(action: str, base: Path, size: int) -> int:
    if action == "start":
        if (base / STATE_FILE).exists():
            existing = LocalCluster.load(base)
            if all(node.is_running() for node in existing.nodes):
                log.info("cluster already running (state in %s)", base)
                _print_urls(existing.nodes)
                return 0
            log.info("clearing a stale cluster in %s", base)
            existing.close()
        cluster = LocalCluster(size, base)
        cluster.start()
        _print_urls(cluster.nodes)
        return 0
    if action == "stop":
        if not (base / STATE_FILE).exists():
            log.info("no cluster recorded in %s; nothing to stop", base)
            return 0
        cluster = LocalCluster.load(base)
        cluster.close()
        log.info("cluster stopped and its data deleted")
        return 0
    cluster = LocalCluster.load(base)
    _print_urls(cluster.nodes)
    running = cluster.running()
    if running:
        print("cluster members:", " ".join(LocalCluster.running_members(running[0])))
    return 0 if len(running) == cluster.size else 3


def _cli_node(action: str, base: Path) -> int:
    if action == "start":
        if (base / STATE_FILE).exists():
            (existing,) = load_state(base, "node")
            if existing.is_running():
                _print_urls([existing])
                return 0
            existing.close()
        make_base_dir(base)
        node = LocalNode(f"tmq{secrets.token_hex(3)}", base)
        node.start()
        save_state(base, "node", [node])
        _print_urls([node])
        return 0
    if action == "stop":
        if not (base / STATE_FILE).exists():
            log.info("no node recorded in %s; nothing to stop", base)
            return 0
        (node,) = load_state(base, "node")
        node.close()
        (base / STATE_FILE).unlink(missing_ok=True)
        log.info("node stopped and its data deleted")
        return 0
    (node,) = load_state(base, "node")
    _print_urls([node])
    return 0 if node.is_running() else 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.rabbitmq_nodes",
        description="Private RabbitMQ nodes on 127.0.0.1 (never the shared broker at 5672).",
    )
    parser.add_argument("what", choices=["cluster", "node"])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--base", type=Path, help="state directory (default: %(default)s)")
    parser.add_argument("--size", type=int, default=3, help="cluster nodes (default 3)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="rabbitmq_nodes: %(message)s",
        stream=sys.stderr,
    )
    base: Path = args.base or default_base(args.what)
    try:
        if args.what == "cluster":
            return _cli_cluster(args.action, base, args.size)
        return _cli_node(args.action, base)
    except NodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted (nodes may still be running; run the stop command)")
        return 130


if __name__ == "__main__":
    sys.exit(main())
