"""Stand-ins for the broker side of a source, shared by the streamer's and the scraper's tests."""

from __future__ import annotations

from telemetry.broker.messages import TaskMessage
from telemetry.store.gpucache import GpuCache
from telemetry.store.mongo import GpuUpdate


class FakePublisher:
    """Confirms everything on flush, and remembers what was sent."""

    def __init__(self) -> None:
        self.sent: list[TaskMessage] = []
        self.confirmed = 0

    def send(self, message: TaskMessage) -> None:
        self.sent.append(message)

    def flush(self, timeout_s: float = 30.0) -> None:
        self.confirmed = len(self.sent)


class UncachedGpus(GpuCache):
    """A GPU cache that knows nothing: every GPU update is written, as with no cache."""

    def __init__(self) -> None:
        super().__init__(lag_s=0.0)

    def needs_write(self, update: GpuUpdate) -> bool:
        return True

    def remember(self, update: GpuUpdate) -> None:
        return None
