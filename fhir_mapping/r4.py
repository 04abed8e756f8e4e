"""The one module through which FHIR resource models are imported.

Our wire format is FHIR R4 (4.0.1). The root package of `fhir.resources` is R5, so the models come
from its `R4B` (4.3.0) sub-package, whose shapes equal R4 for every resource the gateway emits or
accepts (Task, Provenance, AuditEvent, Device, Observation, ImagingStudy, ...). Elements that exist
only in R4B must not be emitted. The models check structure and data types, not value-set bindings
or invariants; the mappings enforce the bindings they rely on (e.g. `Task.status`, AuditEvent
sev-1).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from fhir.resources.R4B.auditevent import AuditEvent
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.devicedefinition import DeviceDefinition
from fhir.resources.R4B.documentreference import DocumentReference
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.fhirresourcemodel import FHIRResourceModel
from fhir.resources.R4B.imagingstudy import ImagingStudy
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.parameters import Parameters
from fhir.resources.R4B.patient import Patient
from fhir.resources.R4B.practitioner import Practitioner
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.servicerequest import ServiceRequest
from fhir.resources.R4B.subscription import Subscription
from fhir.resources.R4B.task import Task
from fhir.resources.R4B.valueset import ValueSet

__all__ = [
    "FHIR_VERSION",
    "MODELS",
    "AuditEvent",
    "Bundle",
    "CapabilityStatement",
    "CodeSystem",
    "Device",
    "DeviceDefinition",
    "DocumentReference",
    "Encounter",
    "FHIRResourceModel",
    "ImagingStudy",
    "Observation",
    "OperationOutcome",
    "Parameters",
    "Patient",
    "Practitioner",
    "Provenance",
    "ServiceRequest",
    "Subscription",
    "Task",
    "ValueSet",
    "to_json",
    "validate",
    "validated",
]

FHIR_VERSION = "4.0.1"  # CapabilityStatement.fhirVersion and the version our JSON conforms to

ModelT = TypeVar("ModelT", bound=FHIRResourceModel)

MODELS: Mapping[str, type[FHIRResourceModel]] = {
    m.get_resource_type(): m
    for m in (
        AuditEvent,
        Bundle,
        CapabilityStatement,
        CodeSystem,
        Device,
        DeviceDefinition,
        DocumentReference,
        Encounter,
        ImagingStudy,
        Observation,
        OperationOutcome,
        Parameters,
        Patient,
        Practitioner,
        Provenance,
        ServiceRequest,
        Subscription,
        Task,
        ValueSet,
    )
}


def to_json(model: FHIRResourceModel) -> dict[str, Any]:
    """The R4 JSON form of a model: aliases as element names, no empty elements."""
    return model.model_dump(mode="json", exclude_none=True)


def validate(model_cls: type[ModelT], document: Mapping[str, Any]) -> ModelT:
    """Build a model from JSON; raises `pydantic.ValidationError` when it is not valid."""
    return model_cls.model_validate(dict(document))


def validated(document: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a resource against the model named by its `resourceType`; return its R4 JSON."""
    resource_type = document.get("resourceType")
    if not isinstance(resource_type, str) or resource_type not in MODELS:
        raise ValueError(f"unsupported resourceType: {resource_type!r}")
    return to_json(validate(MODELS[resource_type], document))
