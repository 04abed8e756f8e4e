"""The routing table: which use case, if any, scores a study, chosen on DICOM attributes.

One table, read top to bottom; the first rule whose Modality, Body Part Examined and SOP Class
match the study's instances wins and names the instances to score. A study no rule matches is
recorded as unrouted and not scored. Headers only are read (no pixel data).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydicom import dcmread
from pydicom.dataset import Dataset

from scoring.ct import CT_IMAGE_STORAGE, select_series

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"

Headers = Sequence[tuple[str, Dataset]]


@dataclass(frozen=True, slots=True)
class Route:
    """The use case chosen for a study and the instances it scores."""

    use_case: str
    instance_paths: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class RoutingRule:
    """Instances matching all attribute sets belong to `use_case`; `select` picks what to score."""

    use_case: str
    modalities: frozenset[str]
    body_parts: frozenset[str]
    sop_classes: frozenset[str]
    select: Callable[[Headers], tuple[tuple[str, ...], str] | None]

    def matches(self, ds: Dataset) -> bool:
        """True when one instance's header satisfies the rule."""
        return (
            str(ds.get("Modality", "")).upper() in self.modalities
            and str(ds.get("BodyPartExamined", "")).upper() in self.body_parts
            and str(ds.get("SOPClassUID", "")) in self.sop_classes
        )


def _chest_radiograph(headers: Headers) -> tuple[tuple[str, ...], str] | None:
    # Frontal views only: a lateral chest is not what the pneumothorax models were built for.
    frontal = [p for p, ds in headers if str(ds.get("ViewPosition", "PA")).upper() in {"PA", "AP"}]
    return (tuple(frontal), f"{len(frontal)} frontal chest radiograph(s)") if frontal else None


def _head_ct(headers: Headers) -> tuple[tuple[str, ...], str] | None:
    choice = select_series(headers)
    return None if choice is None else (choice.paths, choice.reason)


ROUTING_TABLE: tuple[RoutingRule, ...] = (
    RoutingRule(
        "cxr-pneumothorax",
        frozenset({"CR", "DX"}),
        frozenset({"CHEST"}),
        frozenset({CR_IMAGE_STORAGE, DX_FOR_PRESENTATION, DX_FOR_PROCESSING}),
        _chest_radiograph,
    ),
    RoutingRule(
        "ct-haemorrhage",
        frozenset({"CT"}),
        frozenset({"HEAD", "BRAIN"}),
        frozenset({CT_IMAGE_STORAGE}),
        _head_ct,
    ),
)


def route_headers(headers: Headers, table: Sequence[RoutingRule] = ROUTING_TABLE) -> Route | None:
    """The first rule with matching instances that yields something to score, or None."""
    for rule in table:
        matching = [(p, ds) for p, ds in headers if rule.matches(ds)]
        if not matching:
            continue
        selected = rule.select(matching)
        if selected is not None:
            return Route(rule.use_case, selected[0], selected[1])
    return None


def route_study(
    instance_paths: Sequence[str], table: Sequence[RoutingRule] = ROUTING_TABLE
) -> Route | None:
    """Read the instances' headers and route the study."""
    headers = [(p, dcmread(p, stop_before_pixels=True)) for p in instance_paths]
    return route_headers(headers, table)
