"""A received file's header read from where its data set starts is the header read whole.

The DIMSE receiver writes the file meta itself and passes the data set's offset and the
negotiated transfer syntax; `parse_header` must then give exactly what reading the whole file
gives, for every transfer syntax, character set and broken data set.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

from gateway.dicom_header import data_set_offset, parse_header
from gateway.domain.errors import InvalidInput

TEST_FILES = Path(pydicom.__file__).parent / "data" / "test_files"


def _part10_files() -> Iterator[Path]:
    for path in sorted(TEST_FILES.rglob("*.dcm")):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                meta = pydicom.filereader.read_file_meta_info(path)
            except Exception:  # noqa: S112 - not a Part 10 file: not what DIMSE writes
                continue
        if meta.get("TransferSyntaxUID") and data_set_offset(path):
            yield path


FILES = list(_part10_files())


def _outcome(path: Path, **kwargs: object) -> object:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return parse_header(path, **kwargs)  # type: ignore[arg-type]
        except InvalidInput as exc:
            return ("InvalidInput", exc.message)


def test_the_test_files_cover_the_transfer_syntaxes() -> None:
    syntaxes = {str(pydicom.filereader.read_file_meta_info(p).TransferSyntaxUID) for p in FILES}
    assert {
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.1.99",  # deflated (read whole)
        "1.2.840.10008.1.2.2",  # explicit VR big endian (read whole)
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.5",  # RLE
    } <= syntaxes
    assert len(FILES) > 40


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_reading_from_the_data_set_offset_gives_the_whole_files_header(path: Path) -> None:
    syntax = str(pydicom.filereader.read_file_meta_info(path).TransferSyntaxUID)
    whole = _outcome(path)
    assert _outcome(path, data_set_at=data_set_offset(path), transfer_syntax=syntax) == whole


def test_a_truncated_data_set_is_judged_alike(tmp_path: Path) -> None:
    source = TEST_FILES / "CT_small.dcm"
    data = source.read_bytes()
    offset = data_set_offset(source)
    for cut in (offset + 3, offset + 200, len(data) // 2):
        path = tmp_path / f"cut-{cut}.dcm"
        path.write_bytes(data[:cut])
        whole = _outcome(path)
        assert _outcome(path, data_set_at=offset, transfer_syntax="1.2.840.10008.1.2.1") == whole
