"""The interfaces the core depends on; the composition root (`gateway.app`) wires peers in."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.domain.model import ModelIdentity


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """What a governed model said about one study."""

    score: float
    model: ModelIdentity
    input_hash: str  # SHA-256 of the exact tensor the model received
    label: str


class StudyScorer(Protocol):
    """Scores a study with the model under the registry alias; raises ModelUnavailable."""

    def score(self, instance_paths: Sequence[str]) -> ModelOutput:
        """Score the instances of one study (called off the event loop)."""
        ...

    def describe(self) -> dict[str, str]:
        """Readiness facts: model name, version, SHA-256, or the reason it is unavailable."""
        ...


@dataclass(frozen=True, slots=True)
class WorklistMessage:
    """One queued priority change, as the outbox hands it to an updater."""

    outbox_id: int
    idempotency_key: str
    destination: str
    kind: str
    payload: str


class WorklistUpdater(Protocol):
    """Delivers a priority change; raises DeliveryFailed (retry) or DeliveryRefused (dead)."""

    async def deliver(self, message: WorklistMessage) -> str:
        """Send and wait for the acknowledgement; returns the peer's acknowledgement id."""
        ...


class EncounterLookup(Protocol):
    """Finds the encounter of an order in the EHR (raises DeliveryFailed when unreachable)."""

    async def encounter_for_accession(self, accession_number: str) -> str:
        """The Encounter id for this accession number, or '' when the EHR has none."""
        ...
