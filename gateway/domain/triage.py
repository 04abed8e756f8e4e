"""Triage rules: what a score proposes, before any human has looked at it."""

from __future__ import annotations

from gateway.domain.model import ScoreResult
from gateway.domain.priority import Priority


def proposed_priority(result: ScoreResult) -> Priority:
    """The worklist priority the AI flag proposes; only a recorded human approval applies it."""
    if result.score is None or result.score < result.thresholds.review:
        return Priority.ROUTINE
    if result.score >= result.thresholds.secondary_review:
        return Priority.ASAP
    return Priority.URGENT
