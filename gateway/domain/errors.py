"""One error tree for the whole gateway; each edge maps it once (DIMSE status, OperationOutcome)."""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error a caller can act on; `code` says what went wrong."""

    code = "processing"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        """The human-readable diagnostics."""
        return str(self.args[0]) if self.args else self.code


class InvalidInput(GatewayError):
    """The request or data set is malformed (FHIR 400, DICOM C000)."""

    code = "invalid"


class IncompleteAction(GatewayError):
    """A business rule refuses the action: missing rationale, identity, patient or encounter."""

    code = "business-rule"


class NotAuthenticated(GatewayError):
    """No usable bearer token (401)."""

    code = "login"


class Forbidden(GatewayError):
    """Authenticated, but the role, scope or credential does not allow the action (403)."""

    code = "forbidden"


class NotFound(GatewayError):
    """The resource does not exist (404)."""

    code = "not-found"


class VersionConflict(GatewayError):
    """If-Match does not name the current version (412)."""

    code = "conflict"


class PreconditionRequired(GatewayError):
    """An update came without If-Match, which the gateway requires (400, R4 wording)."""

    code = "required"


class IllegalTransition(GatewayError):
    """The requested state change is not in the declared state table (409)."""

    code = "business-rule"


class OutOfResources(GatewayError):
    """Spool or quota exhausted (DICOM A700, HTTP 503/413)."""

    code = "too-costly"


class ModelUnavailable(GatewayError):
    """No governed model can score the study; the study falls back to standard triage."""

    code = "model-unavailable"


class DeliveryFailed(GatewayError):
    """A worklist peer did not acknowledge; the outbox retries."""

    code = "transient"


class DeliveryRefused(GatewayError):
    """A worklist peer refused the message for good (e.g. HL7 AR); dead-lettered."""

    code = "refused"
