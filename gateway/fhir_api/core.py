"""Transport-free request, response, route and interaction-hook types of the FHIR facade.

A handler is a plain function `(FhirContext, FhirRequest) -> FhirResponse` named after the FHIR R4
interaction it implements (http.html: read, vread, history-instance, search-type, create, update,
operation). It raises `GatewayError`s; the listener maps them to OperationOutcome and status.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

from sqlalchemy import Engine

from gateway.auth.tokens import Principal
from gateway.settings import Settings

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class FhirRequest:
    """One FHIR interaction as the core sees it (no HTTP objects)."""

    method: str
    path: str
    params: Mapping[str, str]  # path parameters, e.g. {"id": "t1", "vid": "2"}
    query: tuple[tuple[str, str], ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    body: Any = None
    principal: Principal | None = None
    request_id: str = ""
    remote: str = ""
    base: str = ""
    raw_query: str = ""

    def header(self, name: str) -> str | None:
        """A request header by case-insensitive name."""
        return self.headers.get(name.lower())

    def query_values(self, name: str) -> list[str]:
        """All values of a query parameter (repeats AND, commas inside OR)."""
        return [v for k, v in self.query if k == name]


@dataclass(slots=True)
class FhirResponse:
    """A resource (or none) with status and headers; `touched` feeds the interaction hooks."""

    resource: dict[str, Any] | None
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    touched: tuple[str, ...] = ()  # version-specific references the interaction read or wrote
    patients: tuple[str, ...] = ()  # patient ids involved


@dataclass(frozen=True, slots=True)
class SearchParam:
    """A search parameter as CapabilityStatement.rest.resource.searchParam lists it."""

    name: str
    type: str  # number | date | string | token | reference | composite | quantity | uri | special
    documentation: str = ""


@dataclass(frozen=True, slots=True)
class Route:
    """One row of the route table."""

    method: str
    path: str  # relative to the FHIR base, aiohttp style placeholders: /Task/{id}
    resource_type: str
    interaction: str  # restful-interaction code, or "operation"
    scope: str  # SMART v2 letter the interaction needs: c r u d s
    handler: Callable[[FhirContext, FhirRequest], FhirResponse]
    search_params: tuple[SearchParam, ...] = ()
    operation: str = ""  # e.g. "escalate" for $escalate
    public: bool = False
    documentation: str = ""
    scope_type: str = ""  # resource type the scope must name, when not `resource_type`

    @property
    def scope_resource(self) -> str:
        """The resource type the SMART scope is checked against."""
        return self.scope_type or self.resource_type


@dataclass(frozen=True, slots=True)
class InteractionRecord:
    """What one FHIR interaction did, for hooks such as the REST audit (IHE BALP) and metrics."""

    interaction: (
        str  # restful-interaction code (read, vread, search-type, create, ...) or operation
    )
    resource_type: str
    method: str
    path: str
    status: int
    references: tuple[str, ...]  # resources read or written (version-specific when known)
    patients: tuple[str, ...]  # patient ids involved
    query: str  # raw query string of the request
    principal: Principal | None
    request_id: str
    remote: str
    occurred_at: datetime
    outcome_text: str = ""


InteractionHook = Callable[[InteractionRecord], None]


class InteractionHooks:
    """Notification listeners called once per FHIR interaction, after the response is built.

    A failing hook is logged and never changes the response; hooks run in a worker thread and may
    use the database (each in its own transaction).
    """

    def __init__(self, hooks: Sequence[InteractionHook] = ()) -> None:
        self._hooks: list[InteractionHook] = list(hooks)

    def add(self, hook: InteractionHook) -> None:
        """Subscribe a listener."""
        self._hooks.append(hook)

    def notify(self, record: InteractionRecord) -> None:
        """Call every listener with the record."""
        for hook in self._hooks:
            try:
                hook(record)
            except Exception:  # a listener's bug must not turn a served response into an error
                log.exception("interaction hook %r failed (request %s)", hook, record.request_id)


@dataclass(slots=True)
class FhirContext:
    """What handlers need: settings, database, review service and the clock."""

    settings: Settings
    engine: Engine
    review: Any  # gateway.review_service.ReviewService (Any: avoids an import cycle)
    clock: Callable[[], datetime] = _utcnow

    @property
    def base(self) -> str:
        """The FHIR base URL."""
        return self.settings.http.fhir_base()


def version_headers(resource: Mapping[str, Any]) -> dict[str, str]:
    """ETag (weak, = meta.versionId) and Last-Modified (R4 http.html#concurrency)."""
    meta = resource.get("meta", {})
    headers: dict[str, str] = {}
    if meta.get("versionId"):
        headers["ETag"] = f'W/"{meta["versionId"]}"'
    if meta.get("lastUpdated"):
        when = datetime.fromisoformat(str(meta["lastUpdated"]).replace("Z", "+00:00"))
        headers["Last-Modified"] = format_datetime(when.astimezone(UTC), usegmt=True)
    return headers
