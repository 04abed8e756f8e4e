"""Rendered and thumbnail images of an instance (PS3.18 8.3.5 and 9.5.1.2.2) as PNG or JPEG.

The modality LUT (rescale) is applied, then the VOI window: the `window` query parameter, else
the first Window Center/Width of the header, else the pixel range. MONOCHROME1 is inverted so
that the image looks as a reviewer expects. Pixel codecs load lazily, on first use.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.domain.errors import InvalidInput

MEDIA_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}
THUMBNAIL_SIZE = (128, 128)


@dataclass(frozen=True, slots=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): center, width and a LINEAR or SIGMOID function."""

    center: float
    width: float
    function: str = "LINEAR"

    @classmethod
    def parse(cls, text: str) -> Window:
        """From `center,width[,function]` (PS3.18 8.3.5.1.4)."""
        parts = [p.strip() for p in text.split(",")]
        try:
            center, width = float(parts[0]), float(parts[1])
        except (IndexError, ValueError) as exc:
            raise InvalidInput("window must be center,width[,linear|sigmoid]") from exc
        function = (parts[2] if len(parts) > 2 else "linear").upper()
        if width <= 0 or function not in {"LINEAR", "SIGMOID"}:
            raise InvalidInput("window width must be positive; function linear or sigmoid")
        return cls(center, width, function)


def parse_viewport(text: str) -> tuple[int, int]:
    """From `columns,rows` (PS3.18 8.3.5.1.3)."""
    try:
        columns, rows = (int(p) for p in text.split(",")[:2])
    except ValueError as exc:
        raise InvalidInput("viewport must be columns,rows") from exc
    if not (0 < columns <= 4096 and 0 < rows <= 4096):
        raise InvalidInput("viewport must be between 1 and 4096 pixels each way")
    return columns, rows


def render(
    path: Path,
    media_type: str,
    window: Window | None = None,
    viewport: tuple[int, int] | None = None,
) -> bytes:
    """The first frame of the instance at `path` as an 8-bit image of `media_type`."""
    import numpy as np
    import pydicom
    from PIL import Image
    from pydicom.pixels.processing import apply_modality_lut

    ds = pydicom.dcmread(path)
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        # No pixel data or no codec for the transfer syntax: nothing to render.
        raise InvalidInput(f"the instance cannot be rendered: {type(exc).__name__}") from exc
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]
    if ds.get("SamplesPerPixel", 1) == 1:
        values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
        chosen = (
            window
            or _header_window(ds)
            or Window(
                (float(values.min()) + float(values.max())) / 2,
                max(float(values.max()) - float(values.min()), 1.0),
            )
        )
        scaled = _apply_window(values, chosen)
        if str(ds.get("PhotometricInterpretation", "")) == "MONOCHROME1":
            scaled = 255 - scaled
        image = Image.fromarray(scaled.astype(np.uint8), mode="L")
    else:
        image = Image.fromarray(np.asarray(pixels, dtype=np.uint8)).convert("RGB")
    if viewport is not None:
        image.thumbnail(viewport)
    out = io.BytesIO()
    image.save(out, format=MEDIA_TYPES[media_type])
    return out.getvalue()


def _header_window(ds: object) -> Window | None:
    center, width = getattr(ds, "WindowCenter", None), getattr(ds, "WindowWidth", None)
    if center is None or width is None:
        return None
    first = [
        v[0] if hasattr(v, "__len__") and not isinstance(v, str) else v for v in (center, width)
    ]
    try:
        return Window(float(first[0]), max(float(first[1]), 1.0))
    except (TypeError, ValueError):
        return None


def _apply_window(values: Any, window: Window) -> Any:
    import numpy as np

    array = np.asarray(values, dtype=np.float64)
    if window.function == "SIGMOID":
        return 255.0 / (1.0 + np.exp(-4.0 * (array - window.center) / window.width))
    # PS3.3 C.11.2.1.2.1: linear ramp between center - 0.5 - (width-1)/2 and the upper bound.
    low = window.center - 0.5 - (window.width - 1) / 2
    return np.clip((array - low) / max(window.width - 1, 1.0) * 255.0, 0, 255)
