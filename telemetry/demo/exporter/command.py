"""The command line of the stand-in exporter: serve some until SIGINT or SIGTERM.

From a shell::

    python -m telemetry.demo.exporter --port 9400 [--port 9401 ...] --node NAME \
        [--gpus 4] [--no-mig] [--no-pods] [--host 0.0.0.0]
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Sequence
from typing import NoReturn

from telemetry.demo.exporter.payload import StandInExporter
from telemetry.demo.exporter.server import serve_exporters

DEFAULT_PORT = 9400


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (and exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def port_number(text: str) -> int:
    """A TCP port, 0 for any free one."""
    port = int(text) if text.isdigit() else -1
    if not 0 <= port <= 65_535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port (0 to 65535)")
    return port


def gpu_count(text: str) -> int:
    """A number of GPUs, 1 to 64."""
    count = int(text) if text.isdigit() else 0
    if not 1 <= count <= 64:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of GPUs (1 to 64)")
    return count


def parser() -> OneLineParser:
    """The command line of ``python -m telemetry.demo.exporter``."""
    parse = OneLineParser(
        prog="python -m telemetry.demo.exporter",
        description="Serve stand-in dcgm-exporters (made-up GPUs) until SIGINT or SIGTERM.",
    )
    parse.add_argument(
        "--port",
        type=port_number,
        action="append",
        help=f"a port to serve one exporter on, repeatable; 0 picks one (default {DEFAULT_PORT})",
    )
    parse.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parse.add_argument(
        "--node",
        action="append",
        help="the node's name (the Hostname label): once, or once per --port "
        "(default: this host's name); one name for several ports gets -1, -2, … appended",
    )
    parse.add_argument("--gpus", type=gpu_count, default=4, help="GPUs per node (default 4)")
    parse.add_argument(
        "--no-mig", dest="mig", action="store_false", help="no GPU split into MIG instances"
    )
    parse.add_argument("--no-pods", dest="pods", action="store_false", help="no pod labels")
    return parse


def node_names(given: list[str] | None, count: int) -> list[str] | None:
    """One node name per port, or None when the names do not match the ports."""
    names = given or [socket.gethostname()]
    if len(names) == count:
        return names
    if len(names) == 1:
        return [f"{names[0]}-{number}" for number in range(1, count + 1)]
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGINT or SIGTERM; 0 then, 1 when a port cannot be listened on."""
    parse = parser()
    args = parse.parse_args(argv)
    ports: list[int] = args.port or [DEFAULT_PORT]
    taken = [port for port in ports if port]
    if len(taken) != len(set(taken)):
        parse.error(f"a --port is given twice: {taken}")
    nodes = node_names(args.node, len(ports))
    if nodes is None:
        parse.error(f"give --node once or once per --port ({len(ports)}), not {len(args.node)}")
    exporters = [StandInExporter(node, args.gpus, args.mig, args.pods) for node in nodes]
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    # Blocked before the loop's thread starts, so the thread inherits the mask and
    # sigwait below is the one place the signals arrive.
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        try:
            fleet = serve_exporters(exporters, args.host, ports)
        except OSError as exc:
            print(f"{parse.prog}: cannot listen on {args.host}: {exc}", file=sys.stderr)
            return 1
        with fleet:
            print(f"stand-in dcgm-exporter serving {' '.join(fleet.urls)}", flush=True)
            signal.sigwait(stop_signals)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0
