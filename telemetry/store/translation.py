"""The one translation of pymongo's errors into the collector's own.

Every read and write of the store runs inside :func:`translated_errors`, so
the worker, the read API, the readiness probe and the demo all see the same
tree (:mod:`telemetry.errors`): :class:`StorageUnavailable` (worth a retry;
:class:`StorageLoginRefused` and :class:`StorageTimeout` say more) or
:class:`StorageRejected` (permanent), each with the cause in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pymongo.errors import (
    ConnectionFailure,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WTimeoutError,
)

from telemetry.errors import (
    StorageLoginRefused,
    StorageRejected,
    StorageTimeout,
    StorageUnavailable,
    database_problem,
    login_refused,
)

# Server error codes that mean "not now" rather than "never": shutdowns,
# elections, interrupted operations and time-outs; and a refused login (18) or a
# missing role (13): settings to fix, never the message's fault, so never dead-lettered
# at once.
TRANSIENT_CODES = frozenset(
    {6, 7, 13, 18, 50, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436}
)


def is_transient(exc: PyMongoError) -> bool:
    """Whether retrying the same operation later can succeed."""
    if isinstance(exc, ConnectionFailure | ExecutionTimeout | WTimeoutError):
        return True
    if exc.has_error_label("RetryableWriteError"):
        return True
    return isinstance(exc, OperationFailure) and exc.code in TRANSIENT_CODES


def translate(exc: PyMongoError, action: str) -> StorageUnavailable | StorageRejected:
    """The collector's error for a pymongo one: ``"<action>: <cause in one line>"``."""
    code = getattr(exc, "code", None)
    problem = database_problem(str(exc), code)
    message = f"{action}: {problem}"
    if isinstance(exc, ExecutionTimeout):
        return StorageTimeout(message, problem)
    if login_refused(str(exc), code):
        return StorageLoginRefused(message, problem)
    if is_transient(exc):
        return StorageUnavailable(message, problem)
    return StorageRejected(message, problem)


@contextmanager
def translated_errors(action: str) -> Iterator[None]:
    """Raise the collector's error for any pymongo error inside, keeping the cause."""
    try:
        yield
    except PyMongoError as exc:
        raise translate(exc, action) from exc
