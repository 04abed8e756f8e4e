"""Search-parameter parsing shared by every resource: date prefixes, tokens, references, paging.

FHIR R4 search.html: repeated parameters AND, commas OR; date prefixes eq ne gt lt ge le sa eb;
`_count` and page links in the searchset Bundle. Unknown parameters are refused (400), as under
`Prefer: handling=strict`, so the CapabilityStatement lists exactly what works.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.sql.elements import ColumnElement as Col

from gateway.domain.errors import InvalidInput
from gateway.fhir_api.core import FhirRequest, SearchParam

DEFAULT_COUNT = 50
MAX_COUNT = 200
RESULT_PARAMS = frozenset({"_count", "_offset", "_sort", "_revinclude", "_total", "_format"})
_PREFIX = re.compile(r"^(eq|ne|gt|lt|ge|le|sa|eb)?(.+)$")
_PARTIAL = {4: "year", 7: "month", 10: "day"}


@dataclass(frozen=True, slots=True)
class Page:
    """Paging: how many to return and from where."""

    count: int
    offset: int


def check_params(request: FhirRequest, params: Sequence[SearchParam]) -> None:
    """Refuse parameters this resource does not support (listed in the CapabilityStatement)."""
    known = {p.name for p in params} | RESULT_PARAMS
    for name, _ in request.query:
        base = name.split(":", 1)[0]
        if base not in known:
            raise InvalidInput(
                f"search parameter '{name}' is not supported here", code="not-supported"
            )


def page(request: FhirRequest) -> Page:
    """`_count` (default 50, at most 200) and `_offset` (from a page link)."""
    return Page(
        _int(request, "_count", DEFAULT_COUNT, MAX_COUNT), _int(request, "_offset", 0, None)
    )


def _int(request: FhirRequest, name: str, default: int, ceiling: int | None) -> int:
    values = request.query_values(name)
    if not values:
        return default
    try:
        value = int(values[-1])
    except ValueError:
        raise InvalidInput(f"{name} {values[-1]!r} is not a number", code="value") from None
    if value < 0:
        raise InvalidInput(f"{name} must not be negative", code="value")
    return min(value, ceiling) if ceiling is not None else value


def or_values(request: FhirRequest, name: str) -> list[list[str]]:
    """Each occurrence of a parameter (AND) as its comma-separated alternatives (OR)."""
    return [[v for v in value.split(",") if v] for value in request.query_values(name)]


def token_code(value: str) -> tuple[str | None, str]:
    """(system or None, code) of a token `[system|]code`."""
    if "|" in value:
        system, code = value.split("|", 1)
        return system, code
    return None, value


def reference_value(value: str, resource_type: str) -> str:
    """A reference search value as `Type/id` (accepts `id`, `Type/id` and absolute URLs)."""
    value = value.rstrip("/")
    if "/_history/" in value:
        value = value.split("/_history/", 1)[0]
    parts = value.split("/")
    if len(parts) >= 2:
        return f"{parts[-2]}/{parts[-1]}"
    return f"{resource_type}/{value}" if resource_type else value


def reference_id(value: str, resource_type: str) -> str:
    """The id of a reference search value that must point to `resource_type`."""
    ref = reference_value(value, resource_type)
    kind, _, ident = ref.partition("/")
    if kind != resource_type:
        raise InvalidInput(f"expected a reference to {resource_type}, got {value!r}", code="value")
    return ident


def date_clause(column: Any, raw: str) -> ColumnElement[bool]:
    """A SQL condition for a FHIR date search value with optional prefix (R4 search.html#prefix)."""
    match = _PREFIX.match(raw)
    if match is None:
        raise InvalidInput(f"not a date search value: {raw!r}", code="value")
    prefix, text = match.group(1) or "eq", match.group(2)
    low, high = _date_range(text)
    clauses: dict[str, ColumnElement[bool]] = {
        "eq": and_(column >= low, column < high),
        "ne": or_(column < low, column >= high),
        "gt": column >= high,
        "sa": column >= high,
        "lt": column < low,
        "eb": column < low,
        "ge": column >= low,
        "le": column < high,
    }
    return clauses[prefix]


def _date_range(text: str) -> tuple[datetime, datetime]:
    try:
        if len(text) in _PARTIAL:
            unit = _PARTIAL[len(text)]
            start = datetime.fromisoformat(
                {"year": text + "-01-01", "month": text + "-01", "day": text}[unit]
            ).replace(tzinfo=UTC)
            if unit == "year":
                return start, start.replace(year=start.year + 1)
            if unit == "month":
                nxt = start.replace(day=28) + timedelta(days=4)
                return start, nxt.replace(day=1)
            return start, start + timedelta(days=1)
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"not a FHIR date: {text!r}", code="value") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    precision = timedelta(milliseconds=1) if "." in text else timedelta(seconds=1)
    return when.astimezone(UTC), when.astimezone(UTC) + precision


def any_of(clauses: Iterable[Col[bool]]) -> ColumnElement[bool]:
    """OR of the clauses."""
    return or_(*clauses)


def searchset(
    request: FhirRequest,
    resource_type: str,
    matches: Sequence[Mapping[str, Any]],
    total: int,
    paging: Page,
    included: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """A searchset Bundle with self/first/next/previous links (R4 http.html#paging)."""
    base = request.base
    kept = [(k, v) for k, v in request.query if k != "_offset"]

    def link(relation: str, offset: int) -> dict[str, str]:
        query = urlencode([*kept, ("_offset", str(offset))]) if offset else urlencode(kept)
        return {"relation": relation, "url": f"{base}/{resource_type}?{query}".rstrip("?")}

    links = [link("self", paging.offset), link("first", 0)]
    if paging.count and paging.offset + paging.count < total:
        links.append(link("next", paging.offset + paging.count))
    if paging.offset > 0:
        links.append(link("previous", max(0, paging.offset - paging.count)))
    if paging.count:
        last = ((max(total, 1) - 1) // paging.count) * paging.count
        links.append(link("last", last))
    entries = [
        {
            "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
            "resource": dict(r),
            "search": {"mode": "match"},
        }
        for r in matches
    ]
    entries += [
        {
            "fullUrl": f"{base}/{r['resourceType']}/{r['id']}",
            "resource": dict(r),
            "search": {"mode": "include"},
        }
        for r in included
    ]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": uuid.uuid4().hex,
        "type": "searchset",
        "total": total,
        "link": links,
    }
    if entries:
        bundle["entry"] = entries
    return bundle


def sort_keys(request: FhirRequest, allowed: Mapping[str, Any]) -> list[Any]:
    """ORDER BY terms from `_sort` (comma list, `-` descending); unknown keys are refused."""
    terms: list[Any] = []
    for value in request.query_values("_sort"):
        for key in (k for k in value.split(",") if k):
            descending = key.startswith("-")
            name = key.removeprefix("-")
            if name not in allowed:
                raise InvalidInput(f"_sort by '{name}' is not supported", code="not-supported")
            column = allowed[name]
            terms.append(column.desc() if descending else column.asc())
    return terms
