"""Pure-torch DINO/iBOT multi-crop views and the collator that feeds ``SOPForPreTraining`` through the Trainer.

What lives here:
    - tensor ops on float [3, H, W] images in [0, 1]: ``random_resized_crop_params``, ``adjust_*``, ``rgb_to_hsv``,
      ``hsv_to_rgb``, ``gaussian_blur``, ``solarize``;
    - ``MultiCropAugmentation``: one RGB image -> its global and local crops (docs/method.md §3).

Image decoding and mode repair live in ``data.images``, masks in ``data.masking``, and the dataset wrappers, sampler
and collator that turn these crops into training batches in ``data.pipeline``. Nothing here imports the model code,
and no torchvision or timm is needed.

Recipe (DINO ``DataAugmentationDINO`` / iBOT ``DataAugmentationiBOT``, arXiv 2104.14294 and 2111.07832):
https://github.com/facebookresearch/dino/blob/cc72fe982d650ff28e974d0f5a7c974fecb56209/main_dino.py
every crop: RandomResizedCrop (bicubic) -> flip p 0.5 -> colour jitter (0.4, 0.4, 0.2, 0.1) p 0.8 -> grayscale
p 0.2 -> Gaussian blur sigma ~ U[0.1, 2] (global crop 0: p 1; other global crops: p 0.1; locals: p 0.5) ->
solarize p 0.2 (global crops after the first only) -> ImageNet normalisation. The ops run on float tensors instead of
PIL images, so values are not re-quantised to 8 bits between ops, and the blur is an exact Gaussian (PIL's is a box
approximation); the random stream is a ``torch.Generator``'s, not torchvision's.

>>> import torch
>>> from PIL import Image
>>> augment = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, num_local_crops=2)
>>> globals_, locals_ = augment(Image.new("RGB", (50, 40), "red"), torch.Generator().manual_seed(0))
>>> [tuple(c.shape) for c in globals_], [tuple(c.shape) for c in locals_]
([(3, 32, 32), (3, 32, 32)], [(3, 16, 16), (3, 16, 16)])
"""

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "JITTER_NEUTRAL",
    "MultiCropAugmentation",
    "ViewParams",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "as_rgb_array",
    "gaussian_blur",
    "hsv_to_rgb",
    "random_resized_crop_params",
    "rgb_to_hsv",
    "solarize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as PIL and torchvision


# --------------------------------------------------------------------------------------------------- tensor ops
def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


def random_resized_crop_params(
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``: (top, left, h, w) of a crop of an height x width image.

    Up to 10 tries at an area fraction ~ U[scale] and a log-uniform aspect ratio (w / h) in ``ratio``; then a centre
    crop with the aspect clamped to ``ratio``. Works for any image of at least 1 x 1 pixel.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * _uniform(scale[0], scale[1], generator)
        aspect = math.exp(_uniform(log_ratio[0], log_ratio[1], generator))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - w + 1, (1,), generator=generator))
            return top, left, h, w
    in_ratio = width / height  # fallback: centre crop
    if in_ratio < min(ratio):
        w, h = width, max(1, min(height, int(round(width / min(ratio)))))
    elif in_ratio > max(ratio):
        h, w = height, max(1, min(width, int(round(height * max(ratio)))))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _grayscale(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] -> [1, H, W] luma."""
    r, g, b = image.unbind(0)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(0)


def adjust_brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with black: ``factor`` 0 gives black, 1 the image."""
    return (image * factor).clamp_(0.0, 1.0)


def adjust_contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the mean grey level of the image: ``factor`` 0 gives a flat grey image."""
    mean = _grayscale(image).mean()
    return (image * factor + (1.0 - factor) * mean).clamp_(0.0, 1.0)


def adjust_saturation(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with the grayscale image: ``factor`` 0 gives grey, 1 the image."""
    return (image * factor + (1.0 - factor) * _grayscale(image)).clamp_(0.0, 1.0)


def rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] RGB in [0, 1] -> [3, H, W] HSV, all channels in [0, 1] (hue 0 = red), as torchvision's."""
    r, g, b = image.unbind(0)
    maxc = image.amax(0)
    minc = image.amin(0)
    chroma = maxc - minc
    flat = chroma == 0
    saturation = chroma / torch.where(flat, torch.ones_like(maxc), maxc)
    divisor = torch.where(flat, torch.ones_like(chroma), chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    hue = torch.where(is_r, bc - gc, torch.where(is_g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(flat, torch.zeros_like(hue), hue)
    hue = torch.fmod(hue / 6.0 + 1.0, 1.0)
    return torch.stack((hue, saturation, maxc))


def hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    """[3, H, W] HSV in [0, 1] -> RGB: c_n = v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6, n = 5, 3, 1."""
    hue, saturation, value = image.unbind(0)
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype).view(3, 1, 1)
    k = torch.remainder(offsets + hue.unsqueeze(0) * 6.0, 6.0)  # [3, H, W]
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return value.unsqueeze(0) * (1.0 - saturation.unsqueeze(0) * weight)


def adjust_hue(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Rotate the hue by ``factor`` turns (``factor`` in [-0.5, 0.5]); grey pixels are unchanged.

    Equal to ``hsv_to_rgb`` of the shifted ``rgb_to_hsv`` (torchvision's ``adjust_hue``), computed without building
    the HSV image: with value v = max, chroma c = max - min and hue h in sixths, c_n = v - c*clamp(min(k, 4 - k), 0, 1).
    """
    r, g, b = image.unbind(0)
    maxc = image.amax(0)  # [H, W]
    chroma = maxc - image.amin(0)
    is_r = maxc == r  # ties pick R, then G, as torchvision
    is_g = (maxc == g) & ~is_r
    numerator = torch.where(is_r, g - b, torch.where(is_g, (b - r) + 2.0 * chroma, (r - g) + 4.0 * chroma))
    sixths = numerator / torch.where(chroma > 0, chroma, torch.ones_like(chroma))  # hue * 6, in [-1, 5]
    offsets = torch.tensor([5.0, 3.0, 1.0], dtype=image.dtype).view(3, 1, 1)
    k = torch.remainder(offsets + (sixths + 6.0 * factor).unsqueeze(0), 6.0)  # [3, H, W]
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (maxc.unsqueeze(0) - chroma.unsqueeze(0) * weight).clamp_(0.0, 1.0)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [C, H, W] with kernel radius ceil(3 sigma) (capped by the image), reflect padding.

    Computed as a weighted sum of shifted views (2r + 1 multiply-adds per axis): on CPU this is 2-10x faster than
    ``conv2d`` for these few-channel images.
    """
    height, width = image.shape[-2:]
    radius = min(int(math.ceil(3.0 * sigma)), height - 1, width - 1)
    if radius < 1 or sigma <= 0:
        return image
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    weights = (kernel / kernel.sum()).tolist()
    padded = F.pad(image.unsqueeze(0), (radius, radius, radius, radius), mode="reflect").squeeze(0)  # [C, H+2r, W+2r]
    rows = padded[:, :, :width] * weights[0]  # [C, H+2r, W]
    for offset in range(1, 2 * radius + 1):
        rows.add_(padded[:, :, offset : offset + width], alpha=weights[offset])
    out = rows[:, :height] * weights[0]  # [C, H, W]
    for offset in range(1, 2 * radius + 1):
        out.add_(rows[:, offset : offset + height], alpha=weights[offset])
    return out


def solarize(image: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """Invert values >= ``threshold`` (PIL ``ImageOps.solarize(img, 128)`` on [0, 1] floats)."""
    return torch.where(image >= threshold, 1.0 - image, image)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
JITTER_NEUTRAL = (1.0, 1.0, 1.0, 0.0)  # factors that leave the image unchanged (the op is skipped)


class ViewParams(NamedTuple):
    """Every random choice behind one view: crop box in the source image, target side, and the photometric draws.

    ``jitter_order`` / ``jitter_factors`` are None when the colour jitter is not applied; otherwise the order is a
    permutation of (0 brightness, 1 contrast, 2 saturation, 3 hue) and the factors are indexed by op. ``blur_sigma``
    is None when the view is not blurred. (A named tuple: the worker makes a dozen per image.)
    """

    top: int
    left: int
    height: int
    width: int
    size: int
    flip: bool
    jitter_order: tuple[int, ...] | None
    jitter_factors: tuple[float, float, float, float] | None
    grayscale: bool
    blur_sigma: float | None
    solarize: bool


# ------------------------------------------------------------------------------------------------ multi-crop
def as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """An RGB PIL image or a uint8 HxWx3 array -> a writable uint8 [H, W, 3] array (other modes are rejected)."""
    if isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise ValueError(f"image must be RGB (use data.images.to_rgb_image first), got mode {image.mode!r}")
        array = np.array(image)  # [H, W, 3] uint8, a writable copy
    else:
        array = np.asarray(image)
        if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
            raise ValueError(f"image array must be uint8 HxWx3, got dtype {array.dtype} and shape {tuple(array.shape)}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"image must be at least 1x1 pixel, got {array.shape[1]}x{array.shape[0]}")
    if not array.flags.writeable:
        array = array.copy()
    return np.ascontiguousarray(array)


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(f"{name} must be (min, max) with {low} <= min <= max <= {high}, got {tuple(value)}")
    return float(value[0]), float(value[1])


def _check_prob(name: str, value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value}")
    return float(value)


class MultiCropAugmentation:
    """DINO/iBOT multi-crop: one RGB image -> ``num_global_crops`` global and ``num_local_crops`` local crops.

    Defaults are SOP's ImageNet recipe (docs/method.md §3). Per crop: RandomResizedCrop (the crop is cut from the
    uint8 image, and only it is converted to float and resized, bicubic with antialiasing, clamped to [0, 1]) ->
    flip -> colour jitter (brightness, contrast, saturation, hue in random order) -> grayscale -> Gaussian blur ->
    solarize -> ``(x - mean) / std``. Global crop 0 uses the first entry of ``global_blur_probs`` /
    ``global_solarize_probs``; every further global crop the last entry (as iBOT's ``global_transfo2``).

    Args:
        global_crop_size: side of the global crops = the encoder's image size (224 for ImageNet ViTs). Must be a
            multiple of the patch size. For 28-px images (Fashion-MNIST) use 28 or 32.
        local_crop_size: side of the local crops (96 at 224; keep roughly 0.4 x the global size, e.g. 12-16 at 32).
        num_global_crops: global views; SOPForPreTraining pairs exactly 2.
        num_local_crops: local views; 0 is SOP's default, 10 (iBOT/MaSSL) helps accuracy at ~1.5-2x the step cost.
        global_crop_scale: area fraction range of global crops. (0.14, 1) is SOP/iBOT; (0.32, 1) when local crops
            are used (DINO/MaSSL); (0.3, 1) or larger for tiny images, whose small crops hold almost no content.
        local_crop_scale: area fraction range of local crops; its max should not exceed global_crop_scale's min.
        aspect_ratio: (min, max) width / height of the crops, drawn log-uniformly.
        mean, std: per-channel normalisation; the ImageNet values unless the encoder was trained otherwise.
        flip_prob: horizontal flip probability; 0 for data where left-right matters (text, digits).
        color_jitter_prob: probability of applying the jitter; lower it (or set 0) for data whose colour is the label.
        brightness, contrast, saturation: jitter strength s: factor ~ U[max(0, 1 - s), 1 + s].
        hue: hue jitter: shift ~ U[-hue, hue] turns, hue <= 0.5.
        grayscale_prob: probability of a grayscale copy; irrelevant for grayscale data.
        blur_sigma: Gaussian blur sigma range in pixels of the output crop; scale it down for tiny crops (e.g.
            (0.1, 0.5) at 32 px), where sigma 2 erases most content.
        global_blur_probs: blur probability of global crop 0, then of the others (DINO: 1.0, 0.1).
        local_blur_prob: blur probability of local crops.
        global_solarize_probs: solarisation probability of global crop 0, then of the others (DINO: 0.0, 0.2).

    >>> import torch
    >>> from PIL import Image
    >>> augment = MultiCropAugmentation(global_crop_size=28, global_crop_scale=(0.3, 1.0), blur_sigma=(0.1, 0.5))
    >>> globals_, locals_ = augment(Image.new("RGB", (28, 28)), torch.Generator().manual_seed(0))
    >>> len(globals_), len(locals_), globals_[0].dtype
    (2, 0, torch.float32)
    """

    def __init__(
        self,
        global_crop_size: int = 224,
        local_crop_size: int = 96,
        num_global_crops: int = 2,
        num_local_crops: int = 0,
        global_crop_scale: tuple[float, float] = (0.14, 1.0),
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        flip_prob: float = 0.5,
        color_jitter_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        grayscale_prob: float = 0.2,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        global_blur_probs: Sequence[float] = (1.0, 0.1),
        local_blur_prob: float = 0.5,
        global_solarize_probs: Sequence[float] = (0.0, 0.2),
    ):
        for name, value in (("global_crop_size", global_crop_size), ("local_crop_size", local_crop_size)):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if num_global_crops < 1:
            raise ValueError(f"num_global_crops must be >= 1, got {num_global_crops}")
        if num_local_crops < 0:
            raise ValueError(f"num_local_crops must be >= 0, got {num_local_crops}")
        self.global_crop_scale = _check_range("global_crop_scale", global_crop_scale, 1e-6, 1.0)
        self.local_crop_scale = _check_range("local_crop_scale", local_crop_scale, 1e-6, 1.0)
        self.aspect_ratio = _check_range("aspect_ratio", aspect_ratio, 1e-3, 1e3)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"mean and std must hold 3 values with std > 0, got mean={mean}, std={std}")
        for name, value in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if not 0.0 <= hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {hue}")
        self.blur_sigma = _check_range("blur_sigma", blur_sigma, 0.0, math.inf)
        if not global_blur_probs or not global_solarize_probs:
            raise ValueError("global_blur_probs and global_solarize_probs must hold at least one probability")
        self.global_crop_size = int(global_crop_size)
        self.local_crop_size = int(local_crop_size)
        self.num_global_crops = int(num_global_crops)
        self.num_local_crops = int(num_local_crops)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.flip_prob = _check_prob("flip_prob", flip_prob)
        self.color_jitter_prob = _check_prob("color_jitter_prob", color_jitter_prob)
        self.brightness, self.contrast, self.saturation, self.hue = brightness, contrast, saturation, hue
        self.grayscale_prob = _check_prob("grayscale_prob", grayscale_prob)
        self.global_blur_probs = tuple(_check_prob("global_blur_probs", p) for p in global_blur_probs)
        self.local_blur_prob = _check_prob("local_blur_prob", local_blur_prob)
        self.global_solarize_probs = tuple(_check_prob("global_solarize_probs", p) for p in global_solarize_probs)
        self._mean = torch.tensor(self.mean).view(3, 1, 1)
        self._std = torch.tensor(self.std).view(3, 1, 1)

    def draw_view(self, height: int, width: int, view: int, generator: torch.Generator | None = None) -> ViewParams:
        """Every random choice of view ``view`` (globals first, then locals) of an height x width image.

        The draws come in a fixed order from ``generator``: crop box, flip, jitter (apply; then order and the four
        factors), grayscale, blur (apply; then sigma), solarize. Both the per-image path (``__call__``) and the
        batched one (``data.batched.BatchedMultiCrop``) use this, so a seed gives the same views in both.
        """
        is_global = view < self.num_global_crops
        if is_global:
            size, scale = self.global_crop_size, self.global_crop_scale
            blur_prob = self.global_blur_probs[min(view, len(self.global_blur_probs) - 1)]
            solarize_prob = self.global_solarize_probs[min(view, len(self.global_solarize_probs) - 1)]
        else:
            size, scale, blur_prob, solarize_prob = (
                self.local_crop_size,
                self.local_crop_scale,
                self.local_blur_prob,
                0.0,
            )
        top, left, h, w = random_resized_crop_params(height, width, scale, self.aspect_ratio, generator)
        # Consecutive draws of one dtype come from one call: CPU generators fill small tensors element by element,
        # so rand(2) equals two rand(()) calls (tested); a worker makes ~6 calls per view instead of ~11.
        flip_draw, jitter_draw = torch.rand(2, generator=generator).tolist()
        flip = flip_draw < self.flip_prob
        order = factors = None
        if jitter_draw < self.color_jitter_prob:  # torchvision ColorJitter: a random order, a factor per op
            order = tuple(torch.randperm(4, generator=generator).tolist())
            draws = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
            ranges = ((max(0.0, 1 - self.brightness), 1 + self.brightness),
                      (max(0.0, 1 - self.contrast), 1 + self.contrast),
                      (max(0.0, 1 - self.saturation), 1 + self.saturation), (-self.hue, self.hue))  # fmt: skip
            factors = tuple(low + (high - low) * u for (low, high), u in zip(ranges, draws, strict=True))
        gray_draw, blur_draw = torch.rand(2, generator=generator).tolist()
        gray = gray_draw < self.grayscale_prob
        sigma = _uniform(self.blur_sigma[0], self.blur_sigma[1], generator) if blur_draw < blur_prob else None
        solarize_view = float(torch.rand((), generator=generator)) < solarize_prob
        return ViewParams(top, left, h, w, size, flip, order, factors, gray, sigma, solarize_view)

    def apply_view(self, pixels: torch.Tensor, params: ViewParams) -> torch.Tensor:
        """pixels: [H, W, 3] uint8 -> the view ``params`` describes, [3, size, size] float32, normalised."""
        top, left, h, w, size = params.top, params.left, params.height, params.width, params.size
        region = pixels[top : top + h, left : left + w].permute(2, 0, 1).unsqueeze(0).float()  # [1, 3, h, w], 0..255
        crop = F.interpolate(region, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        crop = crop.squeeze(0).mul_(1.0 / 255.0).clamp_(0.0, 1.0).contiguous()  # [3, size, size]
        if params.flip:
            crop = crop.flip(-1)
        if params.jitter_order is not None:
            for index in params.jitter_order:
                if params.jitter_factors[index] != JITTER_NEUTRAL[index]:
                    crop = _JITTER_OPS[index](crop, params.jitter_factors[index])
        if params.grayscale:
            crop = _grayscale(crop).expand(3, -1, -1).clone()
        if params.blur_sigma is not None:
            crop = gaussian_blur(crop, params.blur_sigma)
        if params.solarize:
            crop = solarize(crop)
        return crop.sub_(self._mean).div_(self._std)

    def draw_views(self, height: int, width: int, generator=None) -> list[ViewParams]:
        """``draw_view`` for every view; ``generator`` as in ``__call__`` (one, a sequence of one per view, None)."""
        num_views = self.num_global_crops + self.num_local_crops
        if isinstance(generator, Sequence):
            if len(generator) != num_views:
                raise ValueError(f"expected one generator per crop ({num_views}), got {len(generator)}")
            generators = list(generator)
        else:
            generators = [generator] * num_views
        return [self.draw_view(height, width, view, gen) for view, gen in enumerate(generators)]

    def __call__(
        self, image: Image.Image | np.ndarray, generator: torch.Generator | Sequence[torch.Generator] | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Crops of one image.

        Args:
            image: an RGB PIL image or a uint8 HxWx3 array, of any size (crops of tiny images upsample). Other modes
                are rejected: repair them with ``data.images.to_rgb_image`` first.
            generator: the source of every random draw; the same seed gives identical crops. None uses torch's
                global generator. A sequence of ``num_global_crops + num_local_crops`` generators gives each crop
                its own stream (globals first), so one crop's draws never depend on another's (the training
                pipeline seeds view v of sample i by (seed, epoch, i, v)).

        Returns:
            (global crops, local crops): lists of float32 [3, S, S] tensors, normalised.
        """
        array = as_rgb_array(image)
        pixels = torch.from_numpy(np.ascontiguousarray(array))  # [H, W, 3] uint8, no float copy of the full image
        crops = [self.apply_view(pixels, params) for params in self.draw_views(*array.shape[:2], generator)]
        global_crops, local_crops = crops[: self.num_global_crops], crops[self.num_global_crops :]
        return global_crops, local_crops

    def __repr__(self) -> str:
        return (
            f"MultiCropAugmentation(global={self.num_global_crops}x{self.global_crop_size} {self.global_crop_scale}, "
            f"local={self.num_local_crops}x{self.local_crop_size} {self.local_crop_scale})"
        )
