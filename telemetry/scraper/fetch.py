"""One HTTP GET of a metrics endpoint, bounded in time and size, failing with a reason.

The time-out covers the whole scrape, body included: a server that trickles
its body one byte a second is cut off at the deadline, not kept for ever by
a per-read time-out that each byte resets.
"""

from __future__ import annotations

import enum
import http.client
import socket
import ssl
import time
from urllib.parse import urlsplit

READ_CHUNK_BYTES = 65_536
ACCEPT = "text/plain;version=0.0.4;q=0.9,*/*;q=0.1"


class FailureReason(enum.StrEnum):
    """Why a scrape failed, as a bounded word (a metrics label)."""

    REFUSED = "refused"
    UNKNOWN_HOST = "unknown_host"
    TIMEOUT = "timeout"
    HTTP_STATUS = "http_status"
    NOT_METRICS = "not_metrics"
    TOO_LARGE = "too_large"
    EMPTY = "empty"
    CONNECTION = "connection_error"
    INTERNAL = "internal_error"


class ScrapeFailed(Exception):
    """Raised when a target cannot be scraped; ``reason`` is the kind, the message the detail."""

    def __init__(self, reason: FailureReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def fetch_metrics(url: str, timeout_s: float, max_bytes: int, user_agent: str) -> bytes:
    """The body of ``url``; raises :class:`ScrapeFailed` for anything but usable metrics."""
    deadline = time.monotonic() + timeout_s
    parts = urlsplit(url)
    host = parts.hostname or ""
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(
            host, parts.port, timeout=timeout_s, context=ssl.create_default_context()
        )
    else:
        connection = http.client.HTTPConnection(host, parts.port, timeout=timeout_s)
    response: http.client.HTTPResponse | None = None
    try:
        connection.connect()
        # Kept: once a response says it will close the connection, http.client
        # forgets the socket, and the body's reads still need their deadline.
        sock = connection.sock
        connection.request("GET", path, headers={"Accept": ACCEPT, "User-Agent": user_agent})
        response = connection.getresponse()
        if response.status != 200:
            raise ScrapeFailed(
                FailureReason.HTTP_STATUS, f"HTTP {response.status} {response.reason}".strip()
            )
        content_type = (response.getheader("Content-Type") or "").lower()
        if "html" in content_type:
            raise ScrapeFailed(FailureReason.NOT_METRICS, f"an HTML page ({content_type})")
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise ScrapeFailed(
                FailureReason.TOO_LARGE, f"body of {int(declared):,} bytes over {max_bytes:,}"
            )
        body = _read_body(sock, response, deadline, max_bytes)
    except ScrapeFailed:
        raise
    except ConnectionRefusedError:
        raise ScrapeFailed(FailureReason.REFUSED, "connection refused") from None
    except socket.gaierror as exc:
        raise ScrapeFailed(
            FailureReason.UNKNOWN_HOST, f"unknown host {host!r} ({exc.strerror or exc})"
        ) from None
    except TimeoutError:
        raise ScrapeFailed(FailureReason.TIMEOUT, f"no answer within {timeout_s:g}s") from None
    except (OSError, http.client.HTTPException) as exc:
        detail = str(exc).strip() or type(exc).__name__
        raise ScrapeFailed(FailureReason.CONNECTION, detail) from None
    finally:
        if response is not None:
            response.close()
        connection.close()
    stripped = body.lstrip()
    if not stripped:
        raise ScrapeFailed(FailureReason.EMPTY, "empty body")
    if stripped[:1] == b"<":
        raise ScrapeFailed(FailureReason.NOT_METRICS, "the body is markup, not metrics")
    return body


def _read_body(
    sock: socket.socket,
    response: http.client.HTTPResponse,
    deadline: float,
    max_bytes: int,
) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = response.read1(READ_CHUNK_BYTES)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > max_bytes:
            raise ScrapeFailed(FailureReason.TOO_LARGE, f"body over {max_bytes:,} bytes")
        chunks.append(chunk)
