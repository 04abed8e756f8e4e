"""The input contract stored with each model version: how pixels become the model's input tensor.

Any single-input ONNX image classifier can be served when its contract says what it expects, so
the contract travels with the version (MLflow tag `input_contract` and artifact
`input_contract.json`) and the runner never guesses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from gateway.domain.errors import InvalidInput

CONTRACT_TAG = "input_contract"
CONTRACT_ARTIFACT = "input_contract.json"

INTENSITY_MAPPINGS = ("window", "minmax")
AGGREGATIONS = ("none", "max", "mean")
OUTPUT_TRANSFORMS = ("none", "sigmoid", "softmax")


@dataclass(frozen=True, slots=True)
class InputContract:
    """What one model version expects as input and which output is the finding's probability.

    `intensity` is "window" (DICOM linear VOI, PS3.3 C.11.2.1.2: the contract's centre/width when
    both are set, otherwise the instance's first WindowCenter/WindowWidth, otherwise min-max) or
    "minmax" (min-max of the modality values). Either way the result is scaled to [0, 1], with
    MONOCHROME1 inverted so that bright always means attenuating.
    """

    use_case: str
    input_name: str
    height: int
    width: int
    label: str
    intensity: str = "window"
    window_center: float | None = None
    window_width: float | None = None
    output_index: int = 0
    output_transform: str = "none"
    layout: str = "NCHW"
    channels: int = 1
    scale_min: float = 0.0
    scale_max: float = 1.0
    # "none": one image per study; "max"/"mean": every slice of the selected series is scored
    # (sorted along the slice normal) and the per-slice probabilities are aggregated.
    aggregation: str = "none"

    def __post_init__(self) -> None:
        problems: list[str] = []
        if not self.use_case or not self.input_name or not self.label:
            problems.append("use_case, input_name and label are required")
        if self.height <= 0 or self.width <= 0:
            problems.append(f"input size must be positive, got {self.height}x{self.width}")
        if self.intensity not in INTENSITY_MAPPINGS:
            problems.append(
                f"intensity must be one of {INTENSITY_MAPPINGS}, got {self.intensity!r}"
            )
        if (self.window_center is None) != (self.window_width is None):
            problems.append("window_center and window_width are set together or not at all")
        if self.window_width is not None and self.window_width < 1:
            problems.append("window_width must be >= 1 (PS3.3 C.11.2.1.2)")
        if self.output_index < 0:
            problems.append("output_index must be >= 0")
        if self.output_transform not in OUTPUT_TRANSFORMS:
            problems.append(f"output_transform must be one of {OUTPUT_TRANSFORMS}")
        if self.layout != "NCHW" or self.channels != 1:
            problems.append("only single-channel NCHW inputs are supported")
        if self.aggregation not in AGGREGATIONS:
            problems.append(f"aggregation must be one of {AGGREGATIONS}")
        if not self.scale_min < self.scale_max:
            problems.append("scale_min must be below scale_max")
        if problems:
            raise InvalidInput("invalid input contract: " + "; ".join(problems))

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The input tensor shape [N, C, H, W]."""
        return (1, self.channels, self.height, self.width)

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace) so equal contracts give equal bytes."""
        data: dict[str, Any] = asdict(self)
        data["shape"] = list(self.shape)
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> InputContract:
        """Parse and validate a contract written by `to_json`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"input contract is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise InvalidInput("input contract must be a JSON object")
        shape = data.pop("shape", None)
        try:
            contract = cls(**data)
        except TypeError as exc:
            raise InvalidInput(f"input contract has unknown or missing fields: {exc}") from exc
        if shape is not None and tuple(shape) != contract.shape:
            raise InvalidInput(f"input contract shape {shape} disagrees with its height/width")
        return contract
