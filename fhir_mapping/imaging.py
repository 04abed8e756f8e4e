"""Received studies, AI results and model versions as FHIR R4 ImagingStudy, Observation, Device.

ImagingStudy (R4 imagingstudy.html): id = Study Instance UID, `identifier` urn:dicom:uid, series
and instances with DICOM modality and SOP Class codes. Observation: the AI score as
`valueQuantity` (UCUM "1"), `device` = the model Device, `derivedFrom` the ImagingStudy, labelled
AI-asserted. Device: one governed model version, `version.value` = registry version, identifiers
for the ONNX SHA-256 and the registry name:version (standards.md §2.1).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from fhir_mapping import codesystems as cs
from fhir_mapping.r4 import Device, ImagingStudy, Observation, validate
from fhir_mapping.task import AIAST_LABEL, fhir_instant, model_device_reference
from gateway.domain.model import ModelIdentity

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ONNX_SHA256_SYSTEM = "urn:hitl-gateway:onnx-sha256"
REGISTRY_SYSTEM = "urn:hitl-gateway:model-registry"
UCUM = "http://unitsofmeasure.org"
GATEWAY_DEVICE_ID = "hitl-gateway"


def imaging_study(
    study: Mapping[str, Any], instances: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """An R4 ImagingStudy of a received study and its stored instances."""
    uid = str(study["study_instance_uid"])
    series: dict[str, dict[str, Any]] = {}
    for inst in instances:
        entry = series.setdefault(
            str(inst["series_instance_uid"]),
            {
                "uid": str(inst["series_instance_uid"]),
                "modality": {
                    "system": DCM,
                    "code": str(inst["modality"] or study["modality"] or "OT"),
                },
                "instance": [],
            },
        )
        entry["instance"].append(
            {
                "uid": str(inst["sop_instance_uid"]),
                "sopClass": {"system": "urn:ietf:rfc:3986",
                             "code": f"urn:oid:{inst['sop_class_uid']}"},
            }
        )  # fmt: skip
    subject: dict[str, Any] = {"display": "unknown patient"}
    if study.get("patient_id"):
        subject = {"reference": f"Patient/{study['patient_id']}", "type": "Patient"}
    resource: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "id": uid,
        "identifier": [{"system": cs.DICOM_UID_SYSTEM, "value": f"urn:oid:{uid}"}],
        "status": "available",
        "subject": subject,
        "started": fhir_instant(study["first_received_at"]),
        "numberOfSeries": len(series),
        "numberOfInstances": sum(len(s["instance"]) for s in series.values()),
    }
    if study.get("modality"):
        resource["modality"] = [{"system": DCM, "code": str(study["modality"])}]
    if study.get("encounter_id"):
        resource["encounter"] = {"reference": f"Encounter/{study['encounter_id']}"}
    if study.get("accession_number"):
        resource["identifier"].append(
            {
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                     "code": "ACSN"}]},
                "value": str(study["accession_number"]),
            }
        )  # fmt: skip
    if series:
        resource["series"] = list(series.values())
    validate(ImagingStudy, resource)
    return resource


def observation_id(score_id: int) -> str:
    """The Observation id of one stored score."""
    return f"score-{score_id}"


def score_observation(row: Mapping[str, Any], patient_id: str) -> dict[str, Any]:
    """The AI result of one scoring as an R4 Observation (AI-asserted)."""
    model = ModelIdentity(
        name=str(row["model_name"]), version=str(row["model_version"]),
        sha256=str(row["model_sha256"]), use_case=str(row["use_case"]),
    )  # fmt: skip
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": observation_id(int(row["id"])),
        "meta": {"security": [dict(AIAST_LABEL)]},
        "status": "final",
        "code": {
            "coding": [cs.coding(cs.INPUT_TYPE_SYSTEM, "ai-score", "AI score")],
            "text": f"{row['use_case']}: {row['label']}",
        },
        "effectiveDateTime": fhir_instant(row["created_at"]),
        "issued": fhir_instant(row["created_at"]),
        "valueQuantity": {"value": float(row["score"]), "unit": "1", "system": UCUM, "code": "1"},
        "device": {"reference": model_device_reference(model)},
        "derivedFrom": [{"reference": f"ImagingStudy/{row['study_instance_uid']}"}],
    }
    if patient_id:
        resource["subject"] = {"reference": f"Patient/{patient_id}", "type": "Patient"}
    validate(Observation, resource)
    return resource


def model_device(model: ModelIdentity, created: datetime | None = None) -> dict[str, Any]:
    """One governed model version as an R4 Device (AI Transparency IG AIDevice shape)."""
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": model_device_reference(model).removeprefix("Device/"),
        "identifier": [
            {"system": ONNX_SHA256_SYSTEM, "value": model.sha256},
            {"system": REGISTRY_SYSTEM, "value": f"{model.name}:{model.version}"},
        ],
        "status": "active",
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "modelNumber": model.name,
        "type": {"text": "Artificial Intelligence"},
        "version": [{"value": model.version}],
        "parent": {"reference": f"Device/{GATEWAY_DEVICE_ID}"},
        "property": [{"type": {"text": "use-case"}, "valueCode": [{"text": model.use_case}]}],
    }
    if created is not None:
        resource["manufactureDate"] = fhir_instant(created)
    validate(Device, resource)
    return resource


def gateway_device(version: str) -> dict[str, Any]:
    """The gateway itself as an R4 Device (requester, custodian, audit observer)."""
    resource: dict[str, Any] = {
        "resourceType": "Device",
        "id": GATEWAY_DEVICE_ID,
        "status": "active",
        "deviceName": [{"name": "hitl-gateway", "type": "manufacturer-name"}],
        "version": [{"value": version}],
    }
    validate(Device, resource)
    return resource
