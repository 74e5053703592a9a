"""The message-body checks the consumer makes before any task handler sees a message."""

from __future__ import annotations

import json
from typing import Protocol

from kombu.exceptions import ContentDisallowed, DecodeError

from telemetry.worker.celery.message import ReceivedMessage

# kombu's JSON envelope for types JSON lacks (datetime, UUID, Decimal, bytes).
KOMBU_TYPE_MARKER = '"__type__"'
KOMBU_TYPE_MARKER_BYTES = KOMBU_TYPE_MARKER.encode()


class KombuMessage(ReceivedMessage, Protocol):
    """kombu's message with the field where ``decode()`` keeps the decoded body."""

    _decoded_cache: object


def decode_plain_json(message: KombuMessage) -> None:
    """Decode a plain JSON body with the C decoder alone, caching it where kombu looks.

    kombu decodes JSON with a Python ``object_hook`` called for every object and
    a new decoder per message, so every message pays for Python code run per
    object (docs/performance.md has the cost). A body that holds no kombu
    type envelope decodes to the same value without the hook. Anything else
    (another content type or encoding, an envelope, a body that is not JSON)
    is left to kombu, which decodes or reports it as it always does.
    """
    body = message.body  # py-amqp hands a utf-8 body over as text already
    if isinstance(body, bytes):
        enveloped = KOMBU_TYPE_MARKER_BYTES in body
    elif isinstance(body, str):
        enveloped = KOMBU_TYPE_MARKER in body
    else:
        return
    if (
        enveloped
        or message.content_type != "application/json"
        or (message.content_encoding or "utf-8").lower() != "utf-8"
        or (message.accept is not None and "application/json" not in message.accept)
    ):
        return
    try:
        message._decoded_cache = json.loads(body)
    except ValueError:
        return


def body_shape_problem(message: ReceivedMessage) -> str | None:
    """Why a protocol-2 task body is not ``[args, kwargs, embed]``, or None if it is.

    Bodies that cannot be decoded at all are left to Celery, which reports
    them through :meth:`.intake.GuardedConsumer.on_decode_error`.
    """
    if not isinstance(message.headers, dict) or "task" not in message.headers:
        return None
    if "id" not in message.headers:
        # Celery reads such a message as protocol 1 and, for an unknown task name, raises
        # out of its own handler (a TypeError, or a DecodeError that stops the consumer).
        return "a task message needs an id header"
    try:
        body = message.decode()
    except (ValueError, DecodeError, ContentDisallowed):
        return None
    if not isinstance(body, list | tuple) or len(body) != 3:
        return "body must be [args, kwargs, embed]"
    args, kwargs, embed = body
    if not isinstance(args, list | tuple):
        return "args must be a list"
    if not isinstance(kwargs, dict):
        return "kwargs must be an object"
    if embed is not None and not isinstance(embed, dict):
        return "embed must be an object"
    return None
