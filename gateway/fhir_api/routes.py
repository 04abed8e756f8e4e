"""The whole FHIR API in one table: method, path, resource type, interaction, SMART scope letter.

SMART App Launch 2.2 scope letters: c = create; r = read, vread, history-instance; u = update;
d = delete; s = search-type. `$escalate` creates a review Task, so it needs `c` on Task.
"""

from __future__ import annotations

from gateway.fhir_api import audit_handlers as audit
from gateway.fhir_api import imaging_handlers as imaging
from gateway.fhir_api import subscription_handlers as subscription
from gateway.fhir_api import task_handlers as task
from gateway.fhir_api import terminology_handlers as terminology
from gateway.fhir_api.core import Route
from gateway.fhir_api.operations import ESCALATE_DOC, escalate_imaging_study
from gateway.fhir_api.task_search import TASK_SEARCH_PARAMS

ROUTES: tuple[Route, ...] = (
    Route("GET", "/Task", "Task", "search-type", "s", task.search_task, TASK_SEARCH_PARAMS),
    Route("POST", "/Task", "Task", "create", "c", task.create_task),
    Route("GET", "/Task/{id}", "Task", "read", "r", task.read_task),
    Route("PUT", "/Task/{id}", "Task", "update", "u", task.update_task),
    Route("GET", "/Task/{id}/_history", "Task", "history-instance", "r", task.history_task),
    Route("GET", "/Task/{id}/_history/{vid}", "Task", "vread", "r", task.vread_task),
    Route("GET", "/Provenance", "Provenance", "search-type", "s", audit.search_provenance,
          audit.PROVENANCE_SEARCH_PARAMS),
    Route("GET", "/Provenance/{id}", "Provenance", "read", "r", audit.read_provenance),
    Route("GET", "/AuditEvent", "AuditEvent", "search-type", "s", audit.search_audit_event,
          audit.AUDIT_EVENT_SEARCH_PARAMS),
    Route("GET", "/AuditEvent/{id}", "AuditEvent", "read", "r", audit.read_audit_event),
    Route("GET", "/ImagingStudy", "ImagingStudy", "search-type", "s",
          imaging.search_imaging_study, imaging.IMAGING_STUDY_SEARCH_PARAMS),
    Route("GET", "/ImagingStudy/{id}", "ImagingStudy", "read", "r", imaging.read_imaging_study),
    Route("POST", "/ImagingStudy/{id}/$escalate", "ImagingStudy", "operation", "c",
          escalate_imaging_study, operation="escalate", documentation=ESCALATE_DOC,
          scope_type="Task"),
    Route("GET", "/Observation", "Observation", "search-type", "s", imaging.search_observation,
          imaging.OBSERVATION_SEARCH_PARAMS),
    Route("GET", "/Observation/{id}", "Observation", "read", "r", imaging.read_observation),
    Route("GET", "/Device", "Device", "search-type", "s", imaging.search_device,
          imaging.DEVICE_SEARCH_PARAMS),
    Route("GET", "/Device/{id}", "Device", "read", "r", imaging.read_device),
    Route("GET", "/CodeSystem", "CodeSystem", "search-type", "s", terminology.search_code_system,
          terminology.TERMINOLOGY_SEARCH_PARAMS),
    Route("GET", "/CodeSystem/{id}", "CodeSystem", "read", "r", terminology.read_code_system),
    Route("GET", "/ValueSet", "ValueSet", "search-type", "s", terminology.search_value_set,
          terminology.TERMINOLOGY_SEARCH_PARAMS),
    Route("GET", "/ValueSet/{id}", "ValueSet", "read", "r", terminology.read_value_set),
    Route("GET", "/Subscription", "Subscription", "search-type", "s",
          subscription.search_subscription, subscription.SUBSCRIPTION_SEARCH_PARAMS),
    Route("POST", "/Subscription", "Subscription", "create", "c",
          subscription.create_subscription),
    Route("GET", "/Subscription/{id}", "Subscription", "read", "r",
          subscription.read_subscription),
    Route("DELETE", "/Subscription/{id}", "Subscription", "delete", "d",
          subscription.delete_subscription),
    Route("GET", "/Subscription/{id}/$status", "Subscription", "operation", "r",
          subscription.status_subscription, operation="status",
          documentation="Current status of a subscription (backport-subscription-status-r4)."),
)  # fmt: skip

# Types whose records are append-only: every write interaction is refused with 405.
IMMUTABLE_TYPES: tuple[str, ...] = ("Provenance", "AuditEvent")
