"""The one error → HTTP status table and OperationOutcome shape."""

from __future__ import annotations

import pytest

from fhir_mapping.outcome import ISSUE_TYPES, http_status_for, operation_outcome, outcome_for
from fhir_mapping.r4 import OperationOutcome, validate
from gateway.domain import errors
from gateway.domain.errors import GatewayError


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (errors.InvalidInput("x"), 400),
        (errors.PreconditionRequired("x"), 400),
        (errors.NotAuthenticated("x"), 401),
        (errors.Forbidden("x"), 403),
        (errors.NotFound("x"), 404),
        (errors.IllegalTransition("x"), 409),
        (errors.VersionConflict("x"), 412),
        (errors.IncompleteAction("x"), 422),
        (errors.OutOfResources("x"), 503),
        (GatewayError("x"), 500),
    ],
)
def test_status_table(error: GatewayError, status: int) -> None:
    assert http_status_for(error) == status
    code, document = outcome_for(error)
    assert code == status
    validate(OperationOutcome, document)
    assert document["issue"][0]["code"] in ISSUE_TYPES


def test_internal_error_is_opaque_with_correlation_id() -> None:
    document = operation_outcome(
        None, status=500, diagnostics="KeyError: 'secret'", correlation_id="corr-1"
    )
    validate(OperationOutcome, document)
    text = document["issue"][0]["diagnostics"]
    assert "corr-1" in text
    assert "secret" not in text
    assert document["issue"][0]["code"] == "exception"


def test_codes_outside_issue_type_are_replaced() -> None:
    _, client = outcome_for(errors.InvalidInput("x", code="not-an-issue-type"))
    assert client["issue"][0]["code"] == "processing"
    _, server = outcome_for(errors.DeliveryRefused("RIS said no"))
    assert server["issue"][0]["code"] == "exception"
