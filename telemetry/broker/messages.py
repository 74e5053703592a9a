"""The ``telemetry.ingest`` task message, in Celery's message protocol version 2.

Producers need no Celery app to send a task: protocol 2 is a documented
wire format (headers carry the task name and id; the body is
``[args, kwargs, embed]`` in JSON). Building it here keeps the streamer and
the dead-letter tools below the worker, and skips Celery's per-message
machinery, which a producer of plain JSON messages does not need
(docs/performance.md).
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from telemetry.broker.topology import TASK_NAME

# The embed part of the body: no callbacks, errbacks, chain or chord.
_NO_WORKFLOW: dict[str, None] = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@dataclass(frozen=True)
class TaskMessage:
    """A task message ready to publish: protocol-2 headers, AMQP properties and a JSON body."""

    task_id: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: Any
    # What picks the work-queue shard: the point's gpu_uuid, so a GPU stays in one shard.
    shard_key: str = ""


# Asked once: the host name does not change while a producer runs, and asking costs a
# system call per message.
_HOSTNAME = socket.gethostname()


def _origin() -> str:
    """Who sent the task, as Celery writes it: ``pid@host``."""
    return f"{os.getpid()}@{_HOSTNAME}"


def build_task_message(
    point: Mapping[str, Any], metadata: Mapping[str, Any] | None, task_id: str | None = None
) -> TaskMessage:
    """The ``telemetry.ingest`` message for one point.

    Headers that would only repeat what Celery assumes when one is missing
    (``lang``, ``retries`` 0, ``argsrepr``, ``ignore_result`` false,
    ``replaced_task_nesting`` 0) or say "not set" (eta, expires, group, time
    limits, parent) are left out: py-amqp writes each table entry in Python,
    so every entry that says nothing costs every message something
    (docs/performance.md).
    ``kwargsrepr`` is a short summary, which is what Flower shows.
    """
    task_id = task_id or new_task_id()
    kwargs: dict[str, Any] = {"point": dict(point)}
    if metadata:
        kwargs["metadata"] = dict(metadata)
    described = f"{point.get('gpu_uuid')} {point.get('metric_name')} @ {point.get('timestamp')}"
    headers: dict[str, Any] = {
        "task": TASK_NAME,
        "id": task_id,
        "root_id": task_id,
        "kwargsrepr": f"{{'point': '{described}'}}",
        "origin": _origin(),
    }
    properties = {"correlation_id": task_id}
    return TaskMessage(
        task_id, headers, properties, [[], kwargs, _NO_WORKFLOW], str(point.get("gpu_uuid", ""))
    )


class _RandomIds:
    """Random (version 4) UUIDs as text, like ``str(uuid.uuid4())`` but cheaper per id.

    ``uuid4()`` asks the kernel for 16 bytes per id and builds a UUID object
    only to print it. Here the random bytes come 4 KiB at a time and are
    formatted directly, so a producer sending a point per message spends
    less on its ids (docs/performance.md).
    """

    _IDS_PER_REFILL = 256

    def __init__(self) -> None:
        self._hex = ""
        self._used = self._IDS_PER_REFILL
        self._lock = threading.Lock()
        # A forked child must not hand out its parent's remaining ids again.
        os.register_at_fork(after_in_child=self._forget)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._hex, self._used = "", self._IDS_PER_REFILL

    def __call__(self) -> str:
        with self._lock:
            if self._used == self._IDS_PER_REFILL:
                self._hex, self._used = os.urandom(16 * self._IDS_PER_REFILL).hex(), 0
            start = 32 * self._used
            self._used += 1
            h = self._hex[start : start + 32]
        # Version 4 in the 13th digit; the variant (binary 10xx) in the 17th.
        return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT_DIGITS[h[16]]}{h[17:20]}-{h[20:]}"


# Each hex digit with its top two bits set to the RFC 4122 variant, binary 10.
_VARIANT_DIGITS = {digit: "89ab"[int(digit, 16) % 4] for digit in "0123456789abcdef"}

new_task_id = _RandomIds()
"""A new task id: a random UUID (version 4) as text."""
