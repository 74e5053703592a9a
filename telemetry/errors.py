"""The exceptions raised by the collector, one tree under :class:`TelemetryError`.

::

    TelemetryError
    ├── PermanentError            retrying the same thing will fail the same way
    │   ├── ConfigError           bad setting, flag or environment variable
    │   ├── InvalidMessage        the message itself is wrong: recorded, never retried
    │   ├── CsvFormatError        a file is not DCGM CSV at all
    │   └── StorageRejected       MongoDB refused the write: dead-lettered at once
    └── TransientError            the same thing may work later
        ├── StorageUnavailable    MongoDB unreachable or not ready: retried with backoff
        │   ├── StorageLoginRefused   MongoDB refused the login (user, password, mechanism)
        │   └── StorageTimeout        a query ran past its server-side time limit
        └── BrokerUnavailable     RabbitMQ unreachable or refusing (auth, vhost, DNS)

Exceptions from pymongo, kombu and pydantic are translated into these where
they enter (``store/translation.py``, ``broker``, ``models``), so the retry decision in the
worker and the one-line errors of the ``telemetry`` command only ever look at
this tree.
"""

from __future__ import annotations

import enum


class TelemetryError(Exception):
    """Raised for every error the collector itself knows how to describe."""


class PermanentError(TelemetryError):
    """Raised when retrying the same operation cannot succeed."""


class TransientError(TelemetryError):
    """Raised when the same operation may succeed later, once a server is back."""


class ConfigError(PermanentError):
    """Raised when a setting, flag or environment variable has a bad value."""


class RejectionKind(enum.StrEnum):
    """Why a message was rejected, as a bounded, machine-readable word (a metrics label)."""

    INVALID_POINT = "invalid_point"
    INVALID_METADATA = "invalid_metadata"
    INVALID_ARGUMENTS = "invalid_arguments"
    UNDECODABLE = "undecodable"
    INVALID_TASK = "invalid_task"
    BAD_SHAPE = "bad_shape"
    NOT_A_TASK = "not_a_task"
    OVERSIZE = "oversize"
    UNKNOWN_TASK = "unknown_task"


class InvalidMessage(PermanentError):
    """Raised when a message cannot become a telemetry point; retrying will not help."""

    def __init__(self, reason: str, kind: RejectionKind) -> None:
        super().__init__(reason)
        self.reason = reason
        self.kind = kind


class CsvFormatError(PermanentError):
    """Raised when a file is not DCGM CSV at all: no header, or required columns missing."""


class _StorageFailure(TelemetryError):
    """A storage error that also keeps its cause apart from the action that met it."""

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        # The cause in one line, for callers that word the action themselves.
        self.problem = message if problem is None else problem


class StorageRejected(PermanentError, _StorageFailure):
    """Raised when MongoDB refuses a write for a reason that retrying will not fix."""


class StorageUnavailable(TransientError, _StorageFailure):
    """Raised when MongoDB cannot be reached or cannot accept writes right now."""


class StorageLoginRefused(StorageUnavailable):
    """Raised when MongoDB refuses the collector's login: a setting to fix, not the message."""


class StorageTimeout(StorageUnavailable):
    """Raised when a query runs past its server-side time limit (``maxTimeMS``)."""


class BrokerUnavailable(TransientError):
    """Raised when the message broker cannot be reached, refuses the login or a publish."""


# MongoDB's AuthenticationFailed: a wrong user name or password, or the wrong mechanism.
AUTHENTICATION_FAILED = 18
# pymongo appends the server's whole reply, its time-outs and the topology to a message;
# the cause comes first.
_PYMONGO_TAILS = (", full error: ", ", Timeout: ", " (configured timeouts")


def database_problem(text: str, code: object = None) -> str:
    """A pymongo error's message in one short line, with what to check for a refused login
    or certificate. pymongo never puts the URI's password in a message."""
    for tail in _PYMONGO_TAILS:
        text = text.split(tail, 1)[0]
    if login_refused(text, code):
        return f"login refused ({text}): check the user name and password in MONGODB_URI"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return f"{text}: check tls=true and tlsCAFile in MONGODB_URI"
    return text


def login_refused(text: str, code: object = None) -> bool:
    """Whether a pymongo error's message and code say the server refused the login."""
    return code == AUTHENTICATION_FAILED or "authentication failed" in text.lower()
