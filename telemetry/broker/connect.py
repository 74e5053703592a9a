"""Broker connections for the ``telemetry`` commands and the worker, and broker errors in one line.

:class:`Broker` is where the broker is and how to reach it: the URL (or a
failover list) and, for ``amqps://``, the TLS options, built here and only
here from the ``BROKER_TLS_*`` settings. Every connection, the Celery app's
included (``broker_use_ssl``), is a :class:`BrokerConnection` made from it,
so none connects without them.

Every command that talks to RabbitMQ (stream, scrape, stats, dlq, the demo)
turns a failure to connect into one :class:`BrokerUnavailable` line that
says which broker (password masked) and what went wrong in words: refused,
login refused, unknown virtual host, unknown host name, timed out, a
certificate that is not accepted.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from amqp.exceptions import AccessRefused, NotAllowed
from kombu import Connection
from kombu.exceptions import OperationalError

from telemetry.config import Settings, broker_urls, masked, scheme_of
from telemetry.errors import BrokerUnavailable

# Handshake alerts by which a broker refuses our client certificate (or its absence):
# settings to fix, not an outage to wait out.
CLIENT_CERT_REFUSED = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "TLSV1_ALERT_ACCESS_DENIED",
    }
)

# OpenSSL's verify codes (x509_vfy.h) that have advice of their own.
X509_V_ERR_CERT_HAS_EXPIRED = 10
X509_V_ERR_HOSTNAME_MISMATCH = 62
X509_V_ERR_IP_ADDRESS_MISMATCH = 64


@dataclass(frozen=True)
class BrokerTls:
    """How a connection checks the broker and, with a client certificate, proves who it is."""

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    verify_hostname: bool = True

    def options(self, hostname: str | None) -> TlsOptions:
        """py-amqp's ``ssl`` options for a connection to ``hostname``, in a dict of its own.

        The chain is always checked (against ``ca_file``, else the system's CAs);
        py-amqp checks the name only when ``server_hostname`` is given.
        """
        options = TlsOptions(self, cert_reqs=ssl.CERT_REQUIRED)
        if self.ca_file is not None:
            options["ca_certs"] = str(self.ca_file)
        if self.cert_file is not None and self.key_file is not None:
            options["certfile"] = str(self.cert_file)
            options["keyfile"] = str(self.key_file)
        if self.verify_hostname and hostname:
            options["server_hostname"] = hostname
        return options


class TlsOptions(dict[str, Any]):
    """py-amqp's ``ssl`` options for one host, carrying the :class:`BrokerTls` they came from,
    so a copy of a connection (kombu's ``clone``) can build them again for another host."""

    def __init__(self, tls: BrokerTls, **options: Any) -> None:
        super().__init__(**options)
        self.tls = tls


class BrokerConnection(Connection):  # type: ignore[misc]
    """kombu's connection, with the TLS options built for whichever host it is on now.

    kombu keeps one ``ssl`` value for every host of a failover list (its
    documented ``server_hostname: None`` fills in the first host's name in
    place), so after a failover the next host would be checked against
    another host's name. Here the options are built afresh from the
    :class:`BrokerTls` for the current host each time kombu reads them.
    """

    @property
    def ssl(self) -> Any:
        """The ``ssl`` options for the current host (``False`` for plain AMQP)."""
        value = self.__dict__.get("_tls", False)
        if isinstance(value, BrokerTls):
            return value.options(self.hostname)
        return value

    @ssl.setter
    def ssl(self, value: Any) -> None:
        self.__dict__["_tls"] = value.tls if isinstance(value, TlsOptions) else value


@dataclass(frozen=True)
class Broker:
    """Where the broker is and how to reach it: the URL (or a ``;`` failover list) and TLS."""

    url: str
    tls: BrokerTls | None = None

    @classmethod
    def of(cls, settings: Settings) -> Broker:
        """The broker the settings name; TLS for ``amqps://`` URLs (the settings allow no mix)."""
        urls = broker_urls(settings.broker_url)
        if not urls or scheme_of(urls[0]) != "amqps":
            return cls(settings.broker_url)
        tls = BrokerTls(
            ca_file=settings.broker_tls_ca_file,
            cert_file=settings.broker_tls_cert_file,
            key_file=settings.broker_tls_key_file,
            verify_hostname=settings.broker_tls_verify_hostname,
        )
        return cls(settings.broker_url, tls)

    @property
    def in_memory(self) -> bool:
        """Whether this is kombu's in-process transport (the demo's), which has no server."""
        return self.url.startswith("memory")

    @property
    def shown(self) -> str:
        """The URL as it may be printed: passwords masked."""
        return masked(self.url)

    def ssl_option(self) -> TlsOptions | bool:
        """The value for kombu's ``ssl`` argument and Celery's ``broker_use_ssl``."""
        if self.tls is None:
            return False
        return self.tls.options(None)

    def login_method(self) -> str | None:
        """EXTERNAL (the client certificate names the user) when there is a certificate and
        no URL of the list has a password; otherwise kombu's default."""
        if self.tls is None or self.tls.cert_file is None:
            return None
        if any(urlsplit(url).password for url in broker_urls(self.url)):
            return None
        return "EXTERNAL"

    def connection(self, **options: Any) -> BrokerConnection:
        """A kombu connection to the broker, or to the first of several that answers.

        A ``;`` list is kombu's failover list, as Celery takes it: on a lost
        connection the next URL is tried, with TLS options of its own.
        """
        urls = broker_urls(self.url)
        login = self.login_method()
        if login is not None:
            options.setdefault("login_method", login)
        return BrokerConnection(
            urls[0] if len(urls) == 1 else urls, ssl=self.ssl_option(), **options
        )


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
    if isinstance(cause, ssl.SSLCertVerificationError):
        return certificate_refused(cause)
    if isinstance(cause, ssl.SSLError) and getattr(cause, "reason", None) in CLIENT_CERT_REFUSED:
        return (
            f"the broker refused our client certificate ({cause.reason}): check "
            "BROKER_TLS_CERT_FILE and BROKER_TLS_KEY_FILE"
        )
    text = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
    return text


def certificate_refused(exc: ssl.SSLCertVerificationError) -> str:
    """Why the broker's certificate was not accepted, and what to check."""
    reason = (exc.verify_message or "certificate verify failed").rstrip(".")
    if exc.verify_code == X509_V_ERR_CERT_HAS_EXPIRED:
        advice = "the broker needs a renewed certificate"
    elif exc.verify_code in (X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH):
        advice = "connect by a name the certificate lists (CELERY_BROKER_URL)"
    else:
        advice = "check BROKER_TLS_CA_FILE: it must hold the CA that signed it"
    return f"the broker's TLS certificate is not accepted ({reason}): {advice}"


def is_refusal(exc: BaseException) -> bool:
    """Whether the broker refused us for good: the login, the virtual host or TLS.

    Asking again changes nothing until a setting or a certificate does.
    """
    cause: BaseException = exc
    while isinstance(cause, OperationalError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, AccessRefused | NotAllowed | ssl.SSLCertVerificationError):
        return True
    return isinstance(cause, ssl.SSLError) and getattr(cause, "reason", None) in CLIENT_CERT_REFUSED


def unavailable(broker: Broker | str, exc: BaseException) -> BrokerUnavailable:
    """The one-line error for a broker (or a broker URL) that cannot be used."""
    shown = broker.shown if isinstance(broker, Broker) else masked(broker)
    return BrokerUnavailable(f"cannot use the broker at {shown}: {describe(exc)}")


def connect(broker: Broker, retries: int = 1, **options: Any) -> Connection:
    """A connected kombu connection; raises :class:`BrokerUnavailable` in one line."""
    connection = broker.connection(**options)
    try:
        connection.ensure_connection(max_retries=retries, interval_start=0.5, interval_step=1)
    except broker_errors(connection) as exc:
        connection.release()
        raise unavailable(broker, exc) from exc
    return connection


def login_refused(broker: Broker, timeout_s: float = 5.0) -> str | None:
    """Why the broker refuses us (login, virtual host, certificate), or None.

    None too when the broker merely cannot be reached now: a worker keeps
    retrying that, while a refusal would only be repeated.
    """
    connection = broker.connection(connect_timeout=timeout_s)
    try:
        connection.connect()
    except (AccessRefused, NotAllowed, *broker_errors(connection)) as exc:
        return str(unavailable(broker, exc)) if is_refusal(exc) else None
    finally:
        connection.release()
    return None
