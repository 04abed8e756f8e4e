"""Input contract: canonical JSON round trip, validation in the constructor."""

from __future__ import annotations

import json

import pytest

from gateway.domain.errors import InvalidInput
from scoring.contract import InputContract

CONTRACT = InputContract(
    use_case="cxr-pneumothorax",
    input_name="image",
    height=224,
    width=192,
    label="pneumothorax",
    window_center=40.0,
    window_width=400.0,
)


def test_json_round_trip_is_exact() -> None:
    text = CONTRACT.to_json()
    assert InputContract.from_json(text) == CONTRACT
    assert json.loads(text)["shape"] == [1, 1, 224, 192]
    assert text == InputContract.from_json(text).to_json()


@pytest.mark.parametrize(
    "changes",
    [
        {"intensity": "gamma"},
        {"window_width": None},
        {"height": 0},
        {"channels": 3},
        {"output_transform": "relu"},
        {"scale_min": 1.0, "scale_max": 0.0},
    ],
)
def test_invalid_contracts_are_refused(changes: dict[str, object]) -> None:
    fields = json.loads(CONTRACT.to_json())
    fields.pop("shape")
    fields.update(changes)
    with pytest.raises(InvalidInput, match="invalid input contract"):
        InputContract(**fields)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"use_case": "x"}',
        CONTRACT.to_json().replace("[1,1,224,192]", "[1,1,2,2]"),
    ],
)
def test_bad_json_is_refused(text: str) -> None:
    with pytest.raises(InvalidInput):
        InputContract.from_json(text)
