"""Broker connections for the ``telemetry`` commands, and broker errors in one line.

Every command that talks to RabbitMQ (stream, stats, dlq, the demo) turns a
failure to connect into one :class:`BrokerUnavailable` line that says which
broker (password masked) and what went wrong in words: refused, login
refused, unknown virtual host, unknown host name, timed out.
"""

from __future__ import annotations

import socket
from typing import Any

from amqp.exceptions import AccessRefused, NotAllowed
from kombu import Connection
from kombu.exceptions import OperationalError

from telemetry.config import broker_urls, masked
from telemetry.errors import BrokerUnavailable


def failover_connection(broker_url: str, **options: Any) -> Connection:
    """A kombu connection to the broker, or to the first of several that answers.

    ``broker_url`` may list several URLs separated by ``;`` (kombu's failover
    list, as Celery takes it): on a lost connection the next one is tried.
    """
    urls = broker_urls(broker_url)
    return Connection(urls[0] if len(urls) == 1 else urls, **options)


def broker_errors(connection: Connection) -> tuple[type[BaseException], ...]:
    """Everything that means "the broker cannot be used right now" for this connection."""
    return (
        OperationalError,
        OSError,
        *connection.connection_errors,
        *connection.channel_errors,
    )


def describe(exc: BaseException) -> str:
    """What went wrong, in words an operator can act on."""
    cause: BaseException = exc
    while isinstance(cause, OperationalError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, AccessRefused):
        return "login refused: check the user name and password in CELERY_BROKER_URL"
    if isinstance(cause, NotAllowed):
        return "access to the virtual host refused: check that it exists and the user may use it"
    if isinstance(cause, socket.gaierror):
        return f"unknown host name ({cause.strerror or cause})"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused: is RabbitMQ running there?"
    if isinstance(cause, TimeoutError | socket.timeout):
        return "timed out"
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return text


def unavailable(broker_url: str, exc: BaseException) -> BrokerUnavailable:
    """The one-line error for a broker that cannot be used."""
    return BrokerUnavailable(f"cannot use the broker at {masked(broker_url)}: {describe(exc)}")


def connect(broker_url: str, retries: int = 1, **options: Any) -> Connection:
    """A connected kombu connection; raises :class:`BrokerUnavailable` in one line."""
    connection = failover_connection(broker_url, **options)
    try:
        connection.ensure_connection(max_retries=retries, interval_start=0.5, interval_step=1)
    except broker_errors(connection) as exc:
        connection.release()
        raise unavailable(broker_url, exc) from exc
    return connection


def login_refused(broker_url: str, timeout_s: float = 5.0) -> str | None:
    """Why the broker refuses this login (user, password, virtual host), or None.

    None too when the broker merely cannot be reached now: a worker keeps
    retrying that, while a refused login would only be refused again.
    """
    connection = failover_connection(broker_url, connect_timeout=timeout_s)
    try:
        connection.connect()
    except (AccessRefused, NotAllowed) as exc:
        return str(unavailable(broker_url, exc))
    except broker_errors(connection):
        return None
    finally:
        connection.release()
    return None
