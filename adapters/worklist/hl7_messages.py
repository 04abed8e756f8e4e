"""HL7 v2 messages for worklist write-back: OMI^O23 (v2.5.1, IHE RAD-13), ORM^O01 (v2.3), ACK.

Strict when encoding: every value is escaped (HL7 v2.5.1 §2.7) and identifiers that cannot be
sent as they are raise `InvalidInput` instead of producing a message the RIS would misread.
Tolerant when decoding: `parse_ack` reads any separator set, CR or LF segment ends.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from gateway.domain.errors import InvalidInput
from gateway.domain.priority import Priority, codes_for

MESSAGE_TYPE = "OMI^O23^OMI_O23"
VERSION = "2.5.1"
LEGACY_MESSAGE_TYPE = "ORM^O01"
LEGACY_VERSION = "2.3"
SEGMENT_END = "\r"
MAX_CONTROL_ID = 20  # MSH-10 is ST(20) in v2.5.1

# Table 0485 display texts for the codes the priority table uses (TQ1-9 is CWE: code^text^system).
TABLE_0485_TEXT = {
    "S": "Stat",
    "A": "ASAP",
    "R": "Routine",
    "P": "Preop",
    "C": "Callback",
    "T": "Timing critical",
    "PRN": "As needed",
}

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def new_control_id() -> str:
    """A fresh MSH-10 message control id (20 hex digits)."""
    return secrets.token_hex(MAX_CONTROL_ID // 2)


def escape(value: str) -> str:
    """Escape HL7 delimiters in a value (v2.5.1 §2.7.4); control characters are refused."""
    if any(ord(ch) < 0x20 for ch in value):
        raise InvalidInput(f"control character in HL7 value {value!r}")
    for raw, escaped in _ESCAPES:
        value = value.replace(raw, escaped)
    return value


def unescape(value: str) -> str:
    """Undo the delimiter escapes of `escape`; other escape sequences are kept as they are."""
    for raw, escaped in reversed(_ESCAPES):
        value = value.replace(escaped, raw)
    return value


def person_name(dicom_pn: str) -> str:
    """XPN from a DICOM PN (PS3.5 6.2.1): prefix and suffix swap; other groups are dropped."""
    alphabetic = dicom_pn.split("=", 1)[0]
    parts = [p.strip() for p in alphabetic.split("^")] + [""] * 5
    family, given, middle, prefix, suffix = parts[:5]
    return "^".join(escape(p) for p in (family, given, middle, suffix, prefix)).rstrip("^")


def hl7_timestamp(when: datetime) -> str:
    """TS/DTM with seconds and UTC offset, e.g. 20240102030405+0000; naive times are refused."""
    if when.tzinfo is None:
        raise InvalidInput("HL7 timestamps need a timezone-aware datetime")
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def _required(name: str, value: str) -> str:
    if not value.strip():
        raise InvalidInput(f"{name} is required for OMI^O23")
    return escape(value.strip())


def build_omi_o23(
    *,
    control_id: str,
    sending_app: str,
    sending_facility: str,
    receiving_app: str,
    receiving_facility: str,
    patient_id: str,
    patient_name: str,
    accession_number: str,
    placer_order: str,
    filler_order: str,
    study_instance_uid: str,
    priority: Priority,
    when: datetime,
    requested_procedure_id: str = "",
    scheduled_procedure_step_id: str = "",
    procedure_code: str = "IMG",
    procedure_text: str = "Imaging procedure",
    procedure_coding_system: str = "L",
    priority_code: str = "",
) -> str:
    """An OMI^O23 order-change (ORC-1 XO) carrying the new priority in TQ1-9 (HL7 table 0485).

    IPC-2 and IPC-4 default to the accession number when the RIS's requested procedure and
    scheduled procedure step ids are not known, as IHE SWF allows for one step per procedure.
    """
    if not 0 < len(control_id) <= MAX_CONTROL_ID:
        raise InvalidInput(f"MSH-10 control id must be 1..{MAX_CONTROL_ID} characters")
    code = priority_code or codes_for(priority).hl7_0485
    ts = hl7_timestamp(when)
    accession = _required("accession number (IPC-1)", accession_number)
    placer = escape(placer_order)
    filler = escape(filler_order)
    segments = [
        "|".join(
            [
                "MSH",
                "^~\\&",
                escape(sending_app),
                escape(sending_facility),
                escape(receiving_app),
                escape(receiving_facility),
                ts,
                "",
                MESSAGE_TYPE,
                escape(control_id),
                "P",
                VERSION,
                # MSH-15/16 empty: original acknowledgment mode, so the ACK says the RIS
                # processed the change (AA), not merely stored it (CA).
                "",
                "",
                "",
                "",
                "",
                "UNICODE UTF-8",  # MSH-18: the frame is sent as UTF-8
            ]
        ),
        f"PID|||{_required('patient id (PID-3)', patient_id)}||{person_name(patient_name)}",
        f"ORC|XO|{placer}|{filler}||||||{ts}",
        f"TQ1|||||||||{code}^{TABLE_0485_TEXT[code]}^HL70485",
        f"OBR||{placer}|{filler}|"
        f"{_required('procedure code (OBR-4)', procedure_code)}^{escape(procedure_text)}"
        f"^{escape(procedure_coding_system)}",
        "|".join(
            [
                "IPC",
                accession,
                escape(requested_procedure_id) or accession,
                _required("Study Instance UID (IPC-3)", study_instance_uid),
                escape(scheduled_procedure_step_id) or accession,
            ]
        ),
    ]
    return SEGMENT_END.join(segments)


def build_orm_o01(
    *,
    control_id: str,
    sending_app: str,
    sending_facility: str,
    receiving_app: str,
    receiving_facility: str,
    patient_id: str,
    patient_name: str,
    accession_number: str,
    placer_order: str,
    filler_order: str,
    priority: Priority,
    when: datetime,
    requested_procedure_id: str = "",
    scheduled_procedure_step_id: str = "",
    procedure_code: str = "IMG",
    procedure_text: str = "Imaging procedure",
    procedure_coding_system: str = "L",
    priority_code: str = "",
) -> str:
    """A v2.3 ORM^O01 order change (ORC-1 XO) with the priority in ORC-7.6 and OBR-27.6 (0027).

    As in IHE SWF's v2.3 profile, OBR-18 carries the accession number and OBR-19/OBR-20 the
    requested procedure and scheduled step ids (the accession when the RIS's ids are unknown).
    """
    if not 0 < len(control_id) <= MAX_CONTROL_ID:
        raise InvalidInput(f"MSH-10 control id must be 1..{MAX_CONTROL_ID} characters")
    timing = f"^^^^^{priority_code or codes_for(priority).hl7_0027}"  # TQ component 6
    ts = hl7_timestamp(when)
    accession = _required("accession number (OBR-18)", accession_number)
    placer = escape(placer_order)
    filler = escape(filler_order)
    msh = [
        "MSH",
        "^~\\&",
        escape(sending_app),
        escape(sending_facility),
        escape(receiving_app),
        escape(receiving_facility),
        ts,
        "",
        LEGACY_MESSAGE_TYPE,
        escape(control_id),
        "P",
        LEGACY_VERSION,
    ]
    obr = ["OBR", "1", placer, filler]
    obr.append(
        f"{_required('procedure code (OBR-4)', procedure_code)}^{escape(procedure_text)}"
        f"^{escape(procedure_coding_system)}"
    )
    obr.extend([""] * 13)  # OBR-5 .. OBR-17
    obr.extend(
        [
            accession,
            escape(requested_procedure_id) or accession,
            escape(scheduled_procedure_step_id) or accession,
        ]
    )
    obr.extend([""] * 6)  # OBR-21 .. OBR-26
    obr.append(timing)  # OBR-27
    segments = [
        "|".join(msh),
        f"PID|||{_required('patient id (PID-3)', patient_id)}||{person_name(patient_name)}",
        f"ORC|XO|{placer}|{filler}||||{timing}||{ts}",
        "|".join(obr),
    ]
    return SEGMENT_END.join(segments)


def segment_fields(message: str, segment_id: str) -> list[str] | None:
    """The fields of the first segment with this id, numbered as in HL7 (index 1 is field 1)."""
    lines = [s for s in message.replace("\r\n", "\r").replace("\n", "\r").split("\r") if s]
    if not lines or not lines[0].startswith("MSH") or len(lines[0]) < 4:
        raise InvalidInput("not an HL7 v2 message: no MSH segment")
    separator = lines[0][3]
    for line in lines:
        fields = line.split(separator)
        if fields[0] != segment_id:
            continue
        if segment_id == "MSH":
            # MSH-1 is the field separator itself, so MSH fields are shifted by one.
            return ["MSH", separator, *fields[1:]]
        return fields
    return None


def _field(fields: list[str], number: int) -> str:
    return fields[number] if len(fields) > number else ""


def control_id_of(message: str) -> str:
    """MSH-10 of a message."""
    msh = segment_fields(message, "MSH")
    control_id = unescape(_field(msh or [], 10))
    if not control_id:
        raise InvalidInput("message has no MSH-10 control id")
    return control_id


def parse_ack(text: str) -> tuple[str, str, str]:
    """(MSA-1 acknowledgment code, MSA-2 acknowledged control id, MSA-3 or ERR text) of an ACK."""
    msa = segment_fields(text, "MSA")
    if msa is None:
        raise InvalidInput("acknowledgement has no MSA segment")
    code = _field(msa, 1).strip().upper()
    if not code:
        raise InvalidInput("acknowledgement has no MSA-1 code")
    detail = _field(msa, 3)
    if not detail:
        err = segment_fields(text, "ERR")
        # ERR-8 user message, else ERR-7 diagnostics, else ERR-3 HL7 error code (v2.5 ERR).
        detail = next((f for f in (_field(err or [], n) for n in (8, 7, 3)) if f), "")
    return code, unescape(_field(msa, 2)), unescape(detail)
