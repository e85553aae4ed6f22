"""Turn whatever a dataset yields into an RGB PIL image, or None for an unusable file, counting every case.

Converted: grayscale (L, 1), 16-bit and 32-bit integer (I;16, I), float (F), CMYK, YCbCr/LAB/HSV, palette (P, with or
without transparency) and alpha (RGBA, LA: composited on white, the usual convention for web images with a
transparent background). Skipped (None): files that fail to decode completely (truncated or corrupt; the full
decode is forced with ``load()`` so a truncated file is caught here, not in the middle of a batch) and empty images.

>>> from PIL import Image
>>> counter = ImageIssueCounter()
>>> to_rgb_image(Image.new("CMYK", (4, 4)), counter).mode, counter.summary()
('RGB', 'converted CMYK: 1')
"""

from collections import Counter

import numpy as np
from PIL import Image


class ImageIssueCounter:
    """Counts conversions and skips by reason; ``summary()`` is one log line."""

    def __init__(self):
        self.counts: Counter = Counter()
        self.examples: dict[str, str] = {}

    def add(self, reason: str, detail: object = None) -> None:
        self.counts[reason] += 1
        if detail is not None and reason not in self.examples:
            self.examples[reason] = str(detail)[:200]

    @property
    def skipped(self) -> int:
        return sum(n for reason, n in self.counts.items() if reason.startswith("skipped"))

    def summary(self) -> str:
        return ", ".join(f"{reason}: {n}" for reason, n in sorted(self.counts.items()))


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float64)
    low, high = float(array.min()), float(array.max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.round((array - low) / (high - low) * 255).astype(np.uint8)


def _on_white(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb_image(image, counter: ImageIssueCounter | None = None) -> Image.Image | None:
    """RGB PIL image, or None (counted as ``skipped ...``) when the input cannot be used."""
    counter = counter if counter is not None else ImageIssueCounter()
    if image is None:
        counter.add("skipped missing")
        return None
    if isinstance(image, np.ndarray):
        array = image
        if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
            array = np.moveaxis(array, 0, -1)  # CHW -> HWC
        if array.dtype != np.uint8:
            counter.add(f"converted array {array.dtype}")
            array = _scale_to_uint8(array)
        if array.ndim == 3 and array.shape[-1] == 1:
            array = array[..., 0]
        image = Image.fromarray(array)
    if not isinstance(image, Image.Image):
        counter.add("skipped not an image", type(image).__name__)
        return None
    try:
        image.load()  # force the full decode: truncated / corrupt files fail here
    except (OSError, SyntaxError, ValueError) as error:
        counter.add("skipped corrupt", error)
        return None
    if image.width == 0 or image.height == 0:
        counter.add("skipped empty")
        return None
    mode = image.mode
    if mode == "RGB":
        return image
    counter.add(f"converted {mode}")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image))).convert("RGB")
    if mode in ("RGBA", "LA", "RGBa", "La", "PA") or (mode == "P" and "transparency" in image.info):
        return _on_white(image)
    return image.convert("RGB")
