"""The compliance summary of an audit package, computed from the AuditEvents it contains.

Decisions are `decision-recorded` events carrying a `decision` detail (status-only updates such
as claims carry none). A rationale is complete when the coded `rationale` detail is present.
Time to decision runs from the Task's `review-requested` record (first version) to its decision.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from fhir_mapping.audit_event import DETAIL_EVENT, DETAIL_RATIONALE, details_of


def _task_id(audit_event: Mapping[str, Any]) -> str:
    for entity in audit_event.get("entity", ()):
        reference = str(entity.get("what", {}).get("reference", ""))
        if reference.startswith("Task/"):
            return reference.split("/")[1]
    return ""


class ComplianceTally:
    """Accumulates AuditEvents one at a time (an export streams them) into the summary."""

    def __init__(self) -> None:
        self.kinds: Counter[str] = Counter()
        self.decisions: Counter[str] = Counter()
        self.reasons: dict[str, Counter[str]] = {}
        self.complete = 0
        self.requested: dict[str, datetime] = {}
        self.waits: list[float] = []
        self.fallback_reasons: Counter[str] = Counter()

    def add(self, event: Mapping[str, Any]) -> None:
        """Count one AuditEvent (events that are not pipeline events are ignored)."""
        details = details_of(event)
        kind = details.get(DETAIL_EVENT, "")
        if not kind:
            return
        self.kinds[kind] += 1
        when = datetime.fromisoformat(str(event["recorded"]))
        task = _task_id(event)
        if kind == "review-requested" and task and task not in self.requested:
            self.requested[task] = when
        elif kind == "standard-triage":
            why = str(event.get("outcomeDesc") or details.get("fallback-reason", ""))
            self.fallback_reasons[why] += 1
        elif kind == "decision-recorded" and details.get("decision"):
            decision = details["decision"]
            self.decisions[decision] += 1
            rationale = details.get(DETAIL_RATIONALE, "")
            if rationale:
                self.complete += 1
                code = rationale.split(":", 1)[0]
                self.reasons.setdefault(decision, Counter())[code] += 1
            if task in self.requested:
                self.waits.append((when - self.requested[task]).total_seconds())

    def summary(self) -> dict[str, Any]:
        """Rates and counts an auditor asks for."""
        total = sum(self.decisions.values())
        kinds = self.kinds
        return {
            "decisions": total,
            "completeRationaleShare": round(self.complete / total, 4) if total else None,
            "decisionRates": {k: round(v / total, 4) for k, v in sorted(self.decisions.items())},
            "decisionCounts": dict(sorted(self.decisions.items())),
            "rationaleCodes": {k: dict(v.most_common()) for k, v in sorted(self.reasons.items())},
            "timeToDecisionSeconds": _distribution(self.waits),
            "fallbacks": kinds["standard-triage"],
            "fallbackReasons": dict(self.fallback_reasons.most_common()),
            "deadLetters": kinds["worklist-dead-lettered"],
            "worklistDelivered": kinds["worklist-delivered"],
            "reviewsRequested": kinds["review-requested"],
            "refusedReviewActions": kinds["review-refused"],
            "authenticationFailures": kinds["authentication-failed"],
            "events": dict(sorted(kinds.items())),
        }


def compliance_summary(audit_events: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The summary over the given AuditEvents."""
    tally = ComplianceTally()
    for event in audit_events:
        tally.add(event)
    return tally.summary()


def _distribution(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "count": len(ordered),
        "median": round(statistics.median(ordered), 3),
        "p90": round(ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))], 3),
        "max": round(ordered[-1], 3),
    }
