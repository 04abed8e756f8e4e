"""The DICOMweb index of a stored instance: QIDO-RS matching keys and its DICOM JSON metadata.

Built from the header parsed at ingest (no second read of the file), written in the same
transaction as the instance row. Bulk data (pixels, large binary values) is left out of the
metadata; WADO-RS serves the instance itself for those.
"""

from __future__ import annotations

import functools
import json
import re
import struct
from typing import Any

import pydicom
from pydicom import config as pydicom_config
from pydicom.charset import default_encoding
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

# Binary values above this size are not part of the metadata (PS3.18 F.2.7 bulk data).
BULK_DATA_THRESHOLD = 1024
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}

# Column → DICOM keyword, with the column's length limit.
TEXT_KEYS: dict[str, tuple[str, int]] = {
    "study_date": ("StudyDate", 8),
    "study_time": ("StudyTime", 16),
    "accession_number": ("AccessionNumber", 64),
    "patient_id": ("PatientID", 64),
    "patient_name": ("PatientName", 200),
    "study_id": ("StudyID", 16),
    "study_description": ("StudyDescription", 64),
    "referring_physician_name": ("ReferringPhysicianName", 200),
    "modality": ("Modality", 16),
    "series_description": ("SeriesDescription", 64),
}
NUMBER_KEYS: dict[str, str] = {
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
}


def _number(value: object) -> int | None:
    try:
        return int(str(value).strip()) if value not in (None, "") else None
    except ValueError:
        return None


def _drop_bulk(document: dict[str, Any]) -> dict[str, Any]:
    kept: dict[str, Any] = {}
    for tag, element in document.items():
        inline = str(element.get("InlineBinary", ""))
        bulky = "BulkDataURI" in element or len(inline) * 3 // 4 > BULK_DATA_THRESHOLD
        if tag == "7FE00010" or (element.get("vr") in _BINARY_VRS and bulky):
            continue
        if element.get("vr") == "SQ":
            element = {
                **element,
                "Value": [_drop_bulk(item) for item in element.get("Value", [])],
            }
        kept[tag] = element
    return kept


# The raw values decoded here without pydicom's element conversion, which costs far more than the
# decoding itself: each gives exactly what pydicom's conversion and DICOM JSON would give, and
# any other element, or any value outside these plain forms, is left to pydicom.
_STRINGS = frozenset({"AS", "CS", "UI"})  # split after the padding is removed (multi_string)
_DATES = frozenset({"DA", "DT", "TM"})  # as _STRINGS unless pydicom converts them to dates
_TEXTS = frozenset({"LO", "SH", "UC"})  # character-set text, each value's padding removed
_SINGLE_TEXTS = frozenset({"LT", "ST", "UT"})  # character-set text, one value
_NUMBERS = {"US": "H", "SS": "h", "UL": "L", "SL": "l", "UV": "Q", "SV": "q", "FL": "f", "FD": "d"}
_FLOATS = frozenset({"FL", "FD", "DS"})
# Character sets whose text is plain single-byte or UTF-8 decoding (no code extensions).
_PLAIN_ENCODINGS = frozenset({default_encoding, "latin_1", "UTF8"})
_IS = re.compile(r"\s*[+-]?[0-9]+\s*")
_DS = re.compile(r"\s*[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")
_ESC = 0x1B


def _dictionary_vr(tag: BaseTag) -> str | None:
    if tag.is_private:
        return None
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return None


_tag_of = functools.cache(tag_for_keyword)


def _text_encoding(ds: pydicom.Dataset) -> str | None:
    encodings = getattr(ds, "_character_set", None)
    if isinstance(encodings, str):
        encodings = [encodings]
    if isinstance(encodings, list) and len(encodings) == 1 and encodings[0] in _PLAIN_ENCODINGS:
        return str(encodings[0])
    return None


def _raw_values(raw: RawDataElement, vr: str, encoding: str | None) -> list[Any] | None:
    """The values of `raw` as pydicom's DICOM JSON holds them, or None to leave it to pydicom."""
    value = raw.value
    if not isinstance(value, bytes):
        return None
    if vr in _NUMBERS:
        size = struct.calcsize("<" + _NUMBERS[vr])
        if len(value) % size:
            return None
        numbers = struct.unpack(f"<{len(value) // size}{_NUMBERS[vr]}", value)
        return [float(n) if vr in _FLOATS else int(n) for n in numbers]
    if vr in _STRINGS or (vr in _DATES and not pydicom_config.datetime_conversion):
        items = value.decode(default_encoding).rstrip(" \x00").split("\\")
    elif vr == "AE":
        items = [item.strip() for item in value.decode(default_encoding).split("\\")]
    elif vr == "IS" and not pydicom_config.use_IS_numpy:
        items = value.decode(default_encoding).rstrip(" \x00").split("\\")
        if items == [""]:
            return []
        return [int(i) for i in items] if all(_IS.fullmatch(i) for i in items) else None
    elif vr == "DS" and not pydicom_config.use_DS_numpy:
        items = value.decode(default_encoding).strip().rstrip(" \x00").split("\\")
        if items == [""]:
            return []
        return [float(i) for i in items] if all(_DS.fullmatch(i) for i in items) else None
    elif vr in _TEXTS or vr in _SINGLE_TEXTS or vr == "PN":
        if encoding is None or _ESC in value:
            return None
        try:
            text = (value.rstrip(b"\x00 ") if vr == "PN" else value).decode(encoding)
        except UnicodeDecodeError:
            return None
        if vr in _SINGLE_TEXTS:
            items = [text.rstrip("\x00 ")]
        elif vr == "PN":
            if not text or "=" in text:
                return None  # empty names and component groups: pydicom's PersonName decides
            items = text.split("\\")
        else:
            items = [item.rstrip("\x00 ") for item in text.split("\\")]
    else:
        return None
    if items == [""]:
        return []
    return None if "" in items else items


class DecodedDataSet:
    """A data set's DICOM JSON and the values of its plain elements, each decoded once."""

    __slots__ = ("_ds", "_plain", "document")

    def __init__(self, ds: pydicom.Dataset) -> None:
        self._ds = ds
        self._plain: dict[int, Any] = {}
        self.document: dict[str, Any] = {}
        encoding = _text_encoding(ds)
        tags = ds.keys()  # in file order, as Dataset.to_json_dict; raw elements stay raw
        for tag in tags:
            key = f"{tag:08X}"
            raw: object = ds.get_item(tag)
            vr, values, data = "", None, b""
            if isinstance(raw, RawDataElement) and raw.is_little_endian:
                # Implicit VR: the dictionary's VR, as pydicom takes it for a public element.
                vr = raw.VR or _dictionary_vr(tag) or ""
                values = _raw_values(raw, vr, encoding) if vr else None
                data = raw.value or b""
            if values is None:
                self.document[key] = ds[tag].to_json_dict(None, BULK_DATA_THRESHOLD)
                continue
            if vr == "PN":
                self.document[key] = {"vr": vr, "Value": [{"Alphabetic": v} for v in values]}
            elif values:
                self.document[key] = {"vr": vr, "Value": values}
            else:
                self.document[key] = {"vr": vr}
            if vr == "IS" and len(values) == 1:
                # As pydicom's IS keeps it: the text as sent, a sign or leading spaces included.
                self._plain[tag] = data.decode(default_encoding).rstrip(" \x00")
            elif len(values) == 1 and vr not in _FLOATS:
                self._plain[tag] = values[0]
            elif not values and vr not in _NUMBERS:
                self._plain[tag] = ""

    def get(self, keyword: str) -> Any:
        """The value of the element named `keyword`, or None when the data set has none."""
        tag = _tag_of(keyword)
        if tag is not None and tag in self._plain:
            return self._plain[tag]
        return self._ds.get(keyword)


def index_attributes(ds: pydicom.Dataset, decoded: DecodedDataSet | None = None) -> dict[str, Any]:
    """The index columns and the metadata JSON of a data set read without its pixels."""
    decoded = decoded or DecodedDataSet(ds)
    row: dict[str, Any] = {}
    for column, (keyword, limit) in TEXT_KEYS.items():
        value = decoded.get(keyword)
        row[column] = "" if value is None else str(value).strip()[:limit]
    for column, keyword in NUMBER_KEYS.items():
        row[column] = _number(decoded.get(keyword))
    row["dicom_json"] = json.dumps(_drop_bulk(decoded.document), separators=(",", ":"))
    return row
