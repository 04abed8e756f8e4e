"""In-memory worklist updater: records what it was given and fails when told to."""

from __future__ import annotations

from collections import deque

from gateway.domain.errors import DeliveryFailed, DeliveryRefused, GatewayError
from gateway.ports import WorklistMessage


class MemoryWorklistUpdater:
    """A `WorklistUpdater` twin; `attempts` holds every call, `delivered` the acknowledged ones."""

    def __init__(self) -> None:
        self.attempts: list[WorklistMessage] = []
        self.delivered: list[WorklistMessage] = []
        self._outcomes: deque[GatewayError] = deque()

    def fail_next(self, times: int = 1, *, reason: str = "peer busy") -> None:
        """Make the next `times` deliveries raise DeliveryFailed (the outbox retries)."""
        self._outcomes.extend(DeliveryFailed(reason) for _ in range(times))

    def refuse_next(self, *, reason: str = "AR: unknown order") -> None:
        """Make the next delivery raise DeliveryRefused (the outbox dead-letters)."""
        self._outcomes.append(DeliveryRefused(reason))

    async def deliver(self, message: WorklistMessage) -> str:
        """Record the message and acknowledge it unless a failure is queued."""
        self.attempts.append(message)
        if self._outcomes:
            raise self._outcomes.popleft()
        self.delivered.append(message)
        return f"ack-{len(self.delivered)}"
