"""One error currency at the FHIR edge: OperationOutcome, and the one error → HTTP status table.

FHIR R4 operationoutcome.html; `issue.code` comes from the IssueType value set
(http://hl7.org/fhir/issue-type). Our own bugs become 500 with an opaque message and a correlation
id, never a stack trace.
"""

from __future__ import annotations

from typing import Any

from gateway.domain.errors import (
    DeliveryFailed,
    DeliveryRefused,
    Forbidden,
    GatewayError,
    IllegalTransition,
    IncompleteAction,
    InvalidInput,
    ModelUnavailable,
    NotAuthenticated,
    NotFound,
    OutOfResources,
    PreconditionRequired,
    VersionConflict,
)

HTTP_STATUS: dict[type[GatewayError], int] = {
    InvalidInput: 400,
    PreconditionRequired: 400,  # R4 http.html#concurrency: a required If-Match that is missing
    NotAuthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    IllegalTransition: 409,
    VersionConflict: 412,
    IncompleteAction: 422,
    DeliveryFailed: 502,
    DeliveryRefused: 502,
    OutOfResources: 503,
    ModelUnavailable: 503,
    GatewayError: 500,
}

# http://hl7.org/fhir/ValueSet/issue-type (R4)
ISSUE_TYPES: frozenset[str] = frozenset(
    {
        "invalid", "structure", "required", "value", "invariant", "security", "login",
        "unknown", "expired", "forbidden", "suppressed", "processing", "not-supported",
        "duplicate", "multiple-matches", "not-found", "deleted", "too-long", "code-invalid",
        "extension", "too-costly", "business-rule", "conflict", "transient", "lock-error",
        "no-store", "exception", "timeout", "incomplete", "throttled", "informational",
    }
)  # fmt: skip

INTERNAL_ERROR_TEXT = "internal error; quote the correlation id to the operator"


def http_status_for(error: GatewayError) -> int:
    """The HTTP status of an error: the nearest class in the table wins."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def issue_code_for(error: GatewayError | None, status: int) -> str:
    """An IssueType code: the error's own when it is one, else derived from the status."""
    if error is not None and error.code in ISSUE_TYPES:
        return error.code
    if status >= 500:
        return "exception"
    return "processing" if status >= 400 else "informational"


def operation_outcome(
    error: GatewayError | None,
    *,
    status: int,
    diagnostics: str,
    correlation_id: str | None = None,
) -> dict[str, Any]:
    """An R4 OperationOutcome for an HTTP status; a 5xx shows only the correlation id."""
    severity = "error" if status >= 400 else "information"
    text = diagnostics
    if status >= 500 and not isinstance(error, OutOfResources | ModelUnavailable):
        text = INTERNAL_ERROR_TEXT
    issue: dict[str, Any] = {
        "severity": severity,
        "code": issue_code_for(error, status),
        "diagnostics": text,
    }
    if correlation_id:
        issue["diagnostics"] = f"{text} (correlation id {correlation_id})"
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def outcome_for(
    error: GatewayError, correlation_id: str | None = None
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, OperationOutcome) for a domain error."""
    status = http_status_for(error)
    return status, operation_outcome(
        error, status=status, diagnostics=error.message, correlation_id=correlation_id
    )
