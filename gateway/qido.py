"""QIDO-RS Search (PS3.18 10.6) over the DICOMweb index: matching, paging and the result sets.

Matching follows PS3.4 C.2.2.2: single value, wildcard (`*`, `?`) on text keys, ranges on dates
and times, lists of UIDs. Fuzzy semantic matching of person names is not offered. Only the latest
version of each instance is searched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.datadict import keyword_for_tag
from sqlalchemy import ColumnElement, Connection, and_, func, select

from gateway.domain.errors import InvalidInput
from gateway.persistence.tables import instance_attributes as ia

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100

# Keyword → (column, matching kind, level it belongs to).
MATCHING_KEYS: dict[str, tuple[str, str, str]] = {
    "StudyDate": ("study_date", "range", "study"),
    "StudyTime": ("study_time", "range", "study"),
    "AccessionNumber": ("accession_number", "text", "study"),
    "ModalitiesInStudy": ("modality", "text", "study"),
    "ReferringPhysicianName": ("referring_physician_name", "text", "study"),
    "PatientName": ("patient_name", "text", "study"),
    "PatientID": ("patient_id", "text", "study"),
    "StudyInstanceUID": ("study_instance_uid", "uid", "study"),
    "StudyID": ("study_id", "text", "study"),
    "Modality": ("modality", "text", "series"),
    "SeriesInstanceUID": ("series_instance_uid", "uid", "series"),
    "SeriesNumber": ("series_number", "number", "series"),
    "SOPClassUID": ("sop_class_uid", "uid", "instance"),
    "SOPInstanceUID": ("sop_instance_uid", "uid", "instance"),
    "InstanceNumber": ("instance_number", "number", "instance"),
}
CONTROL_PARAMETERS = {"limit", "offset", "fuzzymatching", "includefield"}


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed QIDO-RS query."""

    level: str  # "study" | "series" | "instance"
    conditions: tuple[ColumnElement[bool], ...]
    limit: int
    offset: int


def _keyword(name: str) -> str:
    text = name.replace(",", "").strip()
    if len(text) == 8 and all(c in "0123456789abcdefABCDEF" for c in text):
        return str(keyword_for_tag(int(text, 16)))
    return name


def _wildcard(column: Any, value: str) -> ColumnElement[bool]:
    if "*" not in value and "?" not in value:
        return column == value  # type: ignore[no-any-return]
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return column.like(escaped.replace("*", "%").replace("?", "_"), escape="\\")  # type: ignore[no-any-return]


def _condition(keyword: str, value: str) -> ColumnElement[bool]:
    column_name, kind, _level = MATCHING_KEYS[keyword]
    column = ia.c[column_name]
    if kind == "uid":
        uids = [u.strip() for u in value.replace("\\", ",").split(",") if u.strip()]
        return column.in_(uids)
    if kind == "number":
        try:
            return column == int(value)
        except ValueError as exc:
            raise InvalidInput(f"{keyword} must be a number") from exc
    if kind == "range" and "-" in value:
        low, _, high = value.partition("-")
        parts = [column >= low] if low else []
        parts += [column <= high] if high else []
        return and_(*parts)
    return _wildcard(column, value)


def _bounded(params: Mapping[str, str], name: str, default: int, ceiling: int | None) -> int:
    raw = params.get(name, "")
    if raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise InvalidInput(f"{name} must be a non-negative integer") from exc
    if value < 0:
        raise InvalidInput(f"{name} must be a non-negative integer")
    return min(value, ceiling) if ceiling else value


def parse_query(
    level: str, params: Mapping[str, str], scope: Mapping[str, str]
) -> tuple[Query, list[str]]:
    """The query for `level` from URL parameters and path scope; also the warnings to send."""
    warnings: list[str] = []
    conditions = [_condition(k, v) for k, v in scope.items()]
    for name, value in params.items():
        if name in CONTROL_PARAMETERS:
            continue
        keyword = _keyword(name)
        if keyword not in MATCHING_KEYS:
            raise InvalidInput(f"{name} is not a supported matching key")
        if value != "":
            conditions.append(_condition(keyword, value))
    if params.get("fuzzymatching", "false").lower() == "true":
        warnings.append('299 hitl-gateway "fuzzymatching not supported; exact matching used"')
    limit = _bounded(params, "limit", DEFAULT_LIMIT, MAX_LIMIT)
    offset = _bounded(params, "offset", 0, None)
    return Query(level, tuple(conditions), limit or MAX_LIMIT, offset), warnings


def _latest() -> Any:
    newest = (
        select(ia.c.sop_instance_uid, func.max(ia.c.version).label("newest"))
        .group_by(ia.c.sop_instance_uid)
        .subquery()
    )
    return and_(
        ia.c.sop_instance_uid == newest.c.sop_instance_uid, ia.c.version == newest.c.newest
    ), newest


_LEVEL_KEY = {"study": "study_instance_uid", "series": "series_instance_uid"}


def search(conn: Connection, query: Query) -> list[dict[str, Any]]:
    """The rows of the matching studies, series or instances (latest versions), in UID order."""
    join, newest = _latest()
    base = select(ia).join(newest, join)
    if query.level == "instance":
        rows = conn.execute(
            base.where(*query.conditions)
            .order_by(ia.c.study_instance_uid, ia.c.series_instance_uid, ia.c.instance_number)
            .limit(query.limit)
            .offset(query.offset)
        ).mappings()
        return [dict(r) for r in rows]
    key = ia.c[_LEVEL_KEY[query.level]]
    picked = list(
        conn.execute(
            select(key)
            .join(newest, join)
            .where(*query.conditions)
            .group_by(key)
            .order_by(key)
            .limit(query.limit)
            .offset(query.offset)
        ).scalars()
    )
    if not picked:
        return []
    members = conn.execute(base.where(key.in_(picked)).order_by(ia.c.instance_number)).mappings()
    grouped: dict[str, list[Mapping[str, Any]]] = {uid: [] for uid in picked}
    for row in members:
        grouped[row[_LEVEL_KEY[query.level]]].append(dict(row))
    return [_summary(rows) for rows in grouped.values() if rows]


def _summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    first = dict(rows[0])
    first["modalities"] = sorted({r["modality"] for r in rows if r["modality"]})
    first["series_count"] = len({r["series_instance_uid"] for r in rows})
    first["instance_count"] = len(rows)
    return first


def _element(vr: str, value: Any) -> dict[str, Any]:
    if value in (None, "", []):
        return {"vr": vr}
    values = value if isinstance(value, list) else [value]
    if vr == "PN":
        values = [{"Alphabetic": v} for v in values]
    return {"vr": vr, "Value": values}


def study_attributes(row: Mapping[str, Any], base: str) -> dict[str, Any]:
    """Study-level attributes of a result (PS3.18 Table 10.6.3-3)."""
    return {
        "00080020": _element("DA", row["study_date"]),
        "00080030": _element("TM", row["study_time"]),
        "00080050": _element("SH", row["accession_number"]),
        "00080090": _element("PN", row["referring_physician_name"]),
        "00081030": _element("LO", row["study_description"]),
        "00100010": _element("PN", row["patient_name"]),
        "00100020": _element("LO", row["patient_id"]),
        "0020000D": _element("UI", row["study_instance_uid"]),
        "00200010": _element("SH", row["study_id"]),
        "00081190": _element("UR", f"{base}/studies/{row['study_instance_uid']}"),
    }


def result(level: str, row: Mapping[str, Any], base: str) -> dict[str, Any]:
    """One QIDO-RS result in DICOM JSON."""
    document = study_attributes(row, base)
    study_url = f"{base}/studies/{row['study_instance_uid']}"
    if level == "study":
        document["00080061"] = _element("CS", row["modalities"])
        document["00201206"] = _element("IS", row["series_count"])
        document["00201208"] = _element("IS", row["instance_count"])
        return document
    series_url = f"{study_url}/series/{row['series_instance_uid']}"
    document |= {
        "00080060": _element("CS", row["modality"]),
        "0008103E": _element("LO", row["series_description"]),
        "0020000E": _element("UI", row["series_instance_uid"]),
        "00200011": _element("IS", row["series_number"]),
        "00081190": _element("UR", series_url),
    }
    if level == "series":
        document["00201209"] = _element("IS", row["instance_count"])
        return document
    document |= {
        "00080016": _element("UI", row["sop_class_uid"]),
        "00080018": _element("UI", row["sop_instance_uid"]),
        "00200013": _element("IS", row["instance_number"]),
        "00081190": _element("UR", f"{series_url}/instances/{row['sop_instance_uid']}"),
    }
    return document
