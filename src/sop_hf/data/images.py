"""Turning whatever a dataset holds into an RGB PIL image, and counting what had to be fixed or skipped.

``to_rgb_image`` accepts a PIL image (any mode), a numpy array or torch tensor (HxW, HxWxC or CxHxW), encoded bytes,
a file path, or a ``datasets`` ``Image(decode=False)`` dict (``{"bytes": ..., "path": ...}``). It forces a full
decode, so truncated or corrupt files are found here, not deep inside an augmentation, and returns ``None`` for
them. ``ImageIssueCounter`` tallies every conversion and every skip; log its ``summary()`` once in a while.

Mode handling (the choices this library makes):

- ``1``, ``L``, ``P`` (no transparency), ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``: Pillow's own ``convert("RGB")``.
- Alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``, ``La``, ``P`` with a transparency key): **composited on white**.
  Dropping alpha instead would expose whatever colour hides under transparent pixels (often black or noise).
- 16-bit and 32-bit integers (``I;16*``, ``I``) and floats (``F``): rescaled to 8 bits by their value range, since
  ``convert("RGB")`` would just clip them at 255: values within [0, 1] (floats) are multiplied by 255, within
  [0, 255] are kept, within [0, 65535] are divided by 257 (16-bit data), anything else is min-max scaled.

Truncated files: Pillow raises on ``load()`` unless ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is True somewhere in the
process, in which case it silently pads them with grey and they cannot be detected. This module never sets it.

>>> from PIL import Image
>>> issues = ImageIssueCounter()
>>> to_rgb_image(Image.new("LA", (5, 7)), issues).mode
'RGB'
>>> issues.summary()
'image issues: 1 converted (LA: 1)'
"""

import io
import os
from collections import Counter

import numpy as np
from PIL import Image

__all__ = ["ImageIssueCounter", "to_rgb_image"]

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_HIGH_DEPTH_MODES = {"I", "F"}  # plus every "I;16..." variant


class ImageIssueCounter:
    """Counts of image conversions and skips, by reason, for the logs.

    A reason starting with ``"converted"`` (written ``"converted:<MODE>"``) is a repaired image; every other reason
    (``"truncated"``, ``"corrupt"``, ``"unreadable"``, ``"empty"``, ``"unsupported"`` ...) is a skipped one. The first
    few error messages per reason are kept so the summary says what went wrong.

    Counts live in the process that called ``add``: DataLoader workers each hold their own copy, so log from the
    worker (or use ``num_workers=0``) to see them.

    Args:
        max_examples: error messages kept per reason for ``summary()``.

    >>> counter = ImageIssueCounter()
    >>> counter.add("converted:L"); counter.add("truncated", OSError("image file is truncated"))
    >>> counter.num_converted, counter.num_skipped
    (1, 1)
    """

    def __init__(self, max_examples: int = 3):
        if max_examples < 0:
            raise ValueError(f"max_examples must be >= 0, got {max_examples}")
        self.max_examples = max_examples
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}

    def add(self, reason: str, error: BaseException | str | None = None) -> None:
        """Count one image under ``reason``; ``error`` (exception or text) is kept as an example message."""
        self.counts[reason] += 1
        if error is not None:
            kept = self.examples.setdefault(reason, [])
            if len(kept) < self.max_examples:
                text = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error)
                kept.append(text[:200])

    @property
    def num_converted(self) -> int:
        return sum(n for reason, n in self.counts.items() if reason.startswith("converted"))

    @property
    def num_skipped(self) -> int:
        return sum(n for reason, n in self.counts.items() if not reason.startswith("converted"))

    def merge(self, other: "ImageIssueCounter") -> None:
        """Add ``other``'s counts (e.g. gathered from DataLoader workers) to this counter."""
        self.counts.update(other.counts)
        for reason, messages in other.examples.items():
            kept = self.examples.setdefault(reason, [])
            kept.extend(messages[: max(0, self.max_examples - len(kept))])

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "examples": {k: list(v) for k, v in self.examples.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.counts = Counter(state["counts"])
        self.examples = {k: list(v) for k, v in state["examples"].items()}

    def summary(self) -> str:
        """One log line, e.g. ``image issues: 2 converted (L: 2); 1 skipped (truncated: 1 [OSError: ...])``."""
        if not self.counts:
            return "image issues: none"
        parts = []
        converted = sorted((r.split(":", 1)[-1], n) for r, n in self.counts.items() if r.startswith("converted"))
        if converted:
            parts.append(f"{self.num_converted} converted ({', '.join(f'{m}: {n}' for m, n in converted)})")
        skipped = sorted((r, n) for r, n in self.counts.items() if not r.startswith("converted"))
        if skipped:
            details = []
            for reason, n in skipped:
                example = self.examples.get(reason)
                details.append(f"{reason}: {n}" + (f" [{example[0]}]" if example else ""))
            parts.append(f"{self.num_skipped} skipped ({', '.join(details)})")
        return "image issues: " + "; ".join(parts)

    def __repr__(self) -> str:
        return f"ImageIssueCounter({dict(self.counts)})"


def _rescale_to_uint8(values: np.ndarray) -> np.ndarray:
    """High-depth integer or float values -> uint8 by their range (see the module docstring)."""
    is_float = values.dtype.kind == "f"
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if is_float and low >= 0.0 and high <= 1.0:
        scaled = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        scaled = values
    elif low >= 0.0 and high <= 65535.0:
        scaled = values / 257.0
    else:
        scaled = (values - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _array_to_image(array: np.ndarray) -> Image.Image:
    """HxW, HxWxC (C in 1, 3, 4) or CxHxW arrays of any numeric dtype -> a PIL image (L, RGB or RGBA)."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[-1] not in (1, 3, 4):
        array = np.moveaxis(array, 0, -1)  # CxHxW -> HxWxC
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(f"image array must be HxW, HxWx1/3/4 or 1/3/4xHxW, got shape {tuple(array.shape)}")
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = _rescale_to_uint8(array)
    return Image.fromarray(np.ascontiguousarray(array))  # uint8 HxW -> L, HxWx3 -> RGB, HxWx4 -> RGBA


def _open(source) -> Image.Image:
    """Encoded bytes, a path or a ``{"bytes", "path"}`` dict -> a lazily opened PIL image."""
    if isinstance(source, dict):
        if source.get("bytes") is not None:
            source = source["bytes"]
        elif source.get("path") is not None:
            source = source["path"]
        else:
            raise ValueError("image dict has neither 'bytes' nor 'path'")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(source)))
    return Image.open(os.fspath(source))


def _composite_on_white(image: Image.Image) -> Image.Image:
    if image.mode == "La":  # premultiplied; Pillow has no La -> RGBA conversion
        image = image.convert("LA")
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb_image(image, issues: ImageIssueCounter | None = None) -> Image.Image | None:
    """Any image-like value -> a fully decoded RGB PIL image, or None when it cannot be decoded.

    Args:
        image: a PIL image, numpy array or torch tensor (HxW, HxWxC, CxHxW; uint8, 16-bit, float or bool), encoded
            bytes, a path, or a ``{"bytes": ..., "path": ...}`` dict (``datasets.Image(decode=False)``).
        issues: counter to record the conversion or the reason for skipping; None records nothing.

    Returns:
        An ``RGB`` image (any size, tiny ones included: the crops upsample), or None for a truncated, corrupt,
        unreadable, empty or unsupported image. Never raises for bad image data.
    """

    def skip(reason: str, error=None) -> None:
        if issues is not None:
            issues.add(reason, error)

    try:
        if not isinstance(image, Image.Image):
            if hasattr(image, "detach") and hasattr(image, "numpy"):  # a torch tensor
                image = image.detach().cpu().numpy()
            image = _array_to_image(image) if isinstance(image, np.ndarray) else _open(image)
        image.load()  # a full decode: truncated / corrupt data raises here
    except Exception as error:  # noqa: BLE001 - bad data must never end a run
        skip("truncated" if "truncated" in str(error).lower() else "corrupt", error)
        return None
    if image.width == 0 or image.height == 0:
        skip("empty", f"size {image.size}")
        return None
    mode = image.mode
    if mode == "RGB":
        return image
    try:
        if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
            rgb = _composite_on_white(image)
        elif mode in _HIGH_DEPTH_MODES or mode.startswith("I;16"):
            rgb = Image.fromarray(_rescale_to_uint8(np.asarray(image))).convert("RGB")
        else:
            rgb = image.convert("RGB")
    except Exception as error:  # noqa: BLE001
        skip("unsupported", f"mode {mode}: {error}")
        return None
    if issues is not None:
        issues.add(f"converted:{mode}")
    return rgb
