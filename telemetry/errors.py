"""The exceptions raised by the collector, one tree under :class:`TelemetryError`.

::

    TelemetryError
    ├── ConfigError          bad setting; start-up stops with one line
    ├── InvalidMessage       permanent: the message itself is wrong, never retried
    ├── StorageRejected      permanent: MongoDB refused the write, dead-lettered at once
    ├── StorageUnavailable   transient: MongoDB unreachable or not ready, retried
    └── BrokerUnavailable    the broker cannot be reached (streamer, CLI)

Exceptions from pymongo and pydantic are translated into these where they
enter (``storage`` and ``models``), so the retry decision in ``tasks`` only
ever looks at this tree.
"""

from __future__ import annotations


class TelemetryError(Exception):
    """Raised for every error the collector itself knows how to describe."""


class ConfigError(TelemetryError):
    """Raised when a setting, flag or environment variable has a bad value."""


class InvalidMessage(TelemetryError):
    """Raised when a message cannot become a telemetry point; retrying will not help."""


class StorageRejected(TelemetryError):
    """Raised when MongoDB refuses a write for a reason that retrying will not fix."""


class StorageUnavailable(TelemetryError):
    """Raised when MongoDB cannot be reached or cannot accept writes right now."""


class BrokerUnavailable(TelemetryError):
    """Raised when the message broker cannot be reached or refuses a publish."""
