"""Pure-torch DINO/iBOT multi-crop views and the collator that feeds ``SOPForPreTraining`` through the Trainer.

What lives here:
    - tensor ops on float [3, H, W] images in [0, 1]: ``random_resized_crop_params``, ``adjust_*``, ``rgb_to_hsv``,
      ``hsv_to_rgb``, ``gaussian_blur``, ``solarize``;
    - ``MultiCropAugmentation``: one RGB image -> its global and local crops (METHOD.md section 3);
    - ``SOPCollator``: a list of dataset rows -> ``pixel_values`` / ``bool_masked_pos`` / ``local_pixel_values``.

Image decoding and mode repair live in ``image_loading``, masks in ``masking``. Nothing here imports the model code
(``augmentations`` sits below ``trainer/`` and ``cli``), and no torchvision or timm is needed.

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
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .image_loading import ImageIssueCounter, to_rgb_image
from .masking import MaskingPolicy

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MultiCropAugmentation",
    "SOPCollator",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "gaussian_blur",
    "hsv_to_rgb",
    "random_resized_crop_params",
    "rgb_to_hsv",
    "sample_seed",
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


# ------------------------------------------------------------------------------------------------ multi-crop
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

    Defaults are SOP's ImageNet recipe (METHOD.md section 3). Per crop: RandomResizedCrop (the crop is cut from the
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

    def _color_jitter(self, image: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """torchvision ``ColorJitter``: a random order of the four ops, each with its own random factor."""
        order = torch.randperm(4, generator=generator).tolist()
        factors = [
            _uniform(max(0.0, 1 - self.brightness), 1 + self.brightness, generator),
            _uniform(max(0.0, 1 - self.contrast), 1 + self.contrast, generator),
            _uniform(max(0.0, 1 - self.saturation), 1 + self.saturation, generator),
            _uniform(-self.hue, self.hue, generator),
        ]
        ops = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)
        neutral = (1.0, 1.0, 1.0, 0.0)
        for index in order:
            if factors[index] != neutral[index]:
                image = ops[index](image, factors[index])
        return image

    def _crop(
        self,
        pixels: torch.Tensor,
        size: int,
        scale: tuple[float, float],
        blur_prob: float,
        solarize_prob: float,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """pixels: [H, W, 3] uint8 -> one augmented, normalised crop [3, size, size] float32."""
        top, left, h, w = random_resized_crop_params(pixels.shape[0], pixels.shape[1], scale, self.aspect_ratio,
                                                     generator)  # fmt: skip
        region = pixels[top : top + h, left : left + w].permute(2, 0, 1).unsqueeze(0).float()  # [1, 3, h, w], 0..255
        crop = F.interpolate(region, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
        crop = crop.squeeze(0).mul_(1.0 / 255.0).clamp_(0.0, 1.0).contiguous()  # [3, size, size]
        rand = lambda: float(torch.rand((), generator=generator))  # noqa: E731
        if rand() < self.flip_prob:
            crop = crop.flip(-1)
        if rand() < self.color_jitter_prob:
            crop = self._color_jitter(crop, generator)
        if rand() < self.grayscale_prob:
            crop = _grayscale(crop).expand(3, -1, -1).clone()
        if rand() < blur_prob:
            crop = gaussian_blur(crop, _uniform(self.blur_sigma[0], self.blur_sigma[1], generator))
        if rand() < solarize_prob:
            crop = solarize(crop)
        return crop.sub_(self._mean).div_(self._std)

    def __call__(
        self, image: Image.Image | np.ndarray, generator: torch.Generator | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Crops of one image.

        Args:
            image: an RGB PIL image or a uint8 HxWx3 array, of any size (crops of tiny images upsample). Other modes
                are rejected: repair them with ``image_loading.to_rgb_image`` first.
            generator: the source of every random draw; the same seed gives identical crops. None uses torch's
                global generator.

        Returns:
            (global crops, local crops): lists of float32 [3, S, S] tensors, normalised.
        """
        if isinstance(image, Image.Image):
            if image.mode != "RGB":
                raise ValueError(f"image must be RGB (use image_loading.to_rgb_image first), got mode {image.mode!r}")
            array = np.array(image)  # [H, W, 3] uint8, a writable copy
        else:
            array = np.asarray(image)
            if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
                raise ValueError(
                    f"image array must be uint8 HxWx3, got dtype {array.dtype} and shape {tuple(array.shape)}"
                )
        if array.shape[0] < 1 or array.shape[1] < 1:
            raise ValueError(f"image must be at least 1x1 pixel, got {array.shape[1]}x{array.shape[0]}")
        if not array.flags.writeable:
            array = array.copy()
        pixels = torch.from_numpy(np.ascontiguousarray(array))  # [H, W, 3] uint8, no float copy of the full image
        global_crops = []
        for index in range(self.num_global_crops):
            blur = self.global_blur_probs[min(index, len(self.global_blur_probs) - 1)]
            sol = self.global_solarize_probs[min(index, len(self.global_solarize_probs) - 1)]
            global_crops.append(self._crop(pixels, self.global_crop_size, self.global_crop_scale, blur, sol, generator))
        local_crops = [
            self._crop(pixels, self.local_crop_size, self.local_crop_scale, self.local_blur_prob, 0.0, generator)
            for _ in range(self.num_local_crops)
        ]
        return global_crops, local_crops

    def __repr__(self) -> str:
        return (
            f"MultiCropAugmentation(global={self.num_global_crops}x{self.global_crop_size} {self.global_crop_scale}, "
            f"local={self.num_local_crops}x{self.local_crop_size} {self.local_crop_scale})"
        )


# --------------------------------------------------------------------------------------------------- collator
def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, epoch, batch, rank, position ...): splitmix64 over the parts."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (int(part) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        value = (value ^ (value >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
        value ^= value >> 29
    return value & 0x7FFFFFFFFFFFFFFF


def _rank() -> int:
    """This process's rank; in DataLoader workers (no process group) the ``RANK`` set by the launcher."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


class SOPCollator:
    """Dataset rows -> the keyword arguments of ``SOPForPreTraining.forward`` (augmenting in the collator).

    Output keys (view-major: all images of view 0, then view 1, ...):
        - ``pixel_values``: [2B, 3, S, S] global crops;
        - ``bool_masked_pos``: [2B, L] masks of the global crops, L = (S / patch_size)^2; only when ``masking`` is
          given (all-False before its ``start_epoch``, so the keys never change during a run);
        - ``local_pixel_values``: [nB, 3, s, s] local crops, only when the augmentation makes local crops.

    Randomness: each image gets its own generator seeded by ``sample_seed(seed, epoch, index)`` when the row holds
    ``index_column`` (robust to workers, shuffling, resumption and DDP: prefer this), else by
    ``sample_seed(seed, epoch, rank, batch, position)`` with ``batch`` counted since ``set_epoch``. The batch count is
    worker-aware (DataLoader workers take batches round-robin), so it reproduces with any fixed ``num_workers`` as
    long as workers are not persistent. Call ``set_epoch(epoch)`` at every epoch start (a Trainer callback's
    ``on_epoch_begin`` runs before the DataLoader iterator is created): DataLoader workers are fresh copies of this
    object, so without it every epoch would repeat the same stream per batch position. To resume mid-epoch without
    ``index_column`` call ``set_epoch(epoch, start_batch=batches_already_seen)``.

    Bad images: every row goes through ``to_rgb_image``; repaired modes and skips are counted in ``issues``. With
    ``on_bad_image="replace"`` (default) a skipped row is replaced by the next good image of the batch, augmented with
    the skipped row's own generator (so its views differ), and the batch size stays B (needed under DDP, where every
    rank must enqueue the same number of keys); ``"drop"`` shrinks the batch instead. A batch with no decodable image
    raises ``ValueError``: filter such data in the dataset (e.g. ``datasets.Dataset.filter`` with ``to_rgb_image``).

    Args:
        augmentation: the multi-crop transform; its ``global_crop_size`` must be a multiple of ``patch_size``.
        patch_size: the encoder's patch size (16 for SOP ViTs), which sets L.
        masking: the SOP-MIM mask policy for the global crops, or None for no ``bool_masked_pos`` (SOP without MIM).
        image_column: the row key holding the image (PIL, array, bytes, path or ``{"bytes", "path"}``).
        index_column: the row key holding a unique integer per example (e.g. ``dataset.add_column("idx",
            range(len(dataset)))``), or None to seed by batch position.
        seed: the run's seed.
        on_bad_image: ``"replace"`` or ``"drop"`` (see above).
        single_thread: run the augmentation with one intra-op torch thread when collating in the main process
            (``num_workers=0``; workers always use one). Leave False on an idle machine (2 threads are ~1.8x faster);
            set True when processes share few cores (e.g. 2 CPU training processes on 2 cores), where these small
            multi-threaded ops can be 10-100x slower. The thread count is restored after each batch.

    >>> import torch
    >>> from PIL import Image
    >>> from sop_hf.masking import MaskingPolicy
    >>> collate = SOPCollator(MultiCropAugmentation(global_crop_size=32, local_crop_size=16, num_local_crops=1),
    ...     patch_size=8, masking=MaskingPolicy.for_crop(32, 8, ratios=0.3))
    >>> batch = collate([{"image": Image.new("RGB", (40, 30))} for _ in range(2)])
    >>> {k: tuple(v.shape) for k, v in batch.items()}
    {'pixel_values': (4, 3, 32, 32), 'bool_masked_pos': (4, 16), 'local_pixel_values': (2, 3, 16, 16)}
    """

    def __init__(
        self,
        augmentation: MultiCropAugmentation,
        patch_size: int = 16,
        masking: MaskingPolicy | None = None,
        image_column: str = "image",
        index_column: str | None = None,
        seed: int = 0,
        on_bad_image: str = "replace",
        single_thread: bool = False,
    ):
        size = augmentation.global_crop_size
        if patch_size < 1 or size % patch_size:
            raise ValueError(f"patch_size must divide global_crop_size={size}, got {patch_size}")
        num_patches = (size // patch_size) ** 2
        if masking is not None and masking.num_patches != num_patches:
            raise ValueError(
                f"masking makes masks of {masking.num_patches} patches but global crops have "
                f"({size} / {patch_size})^2 = {num_patches}; build it with MaskingPolicy.for_crop({size}, {patch_size})"
            )
        if on_bad_image not in ("replace", "drop"):
            raise ValueError(f"on_bad_image must be 'replace' or 'drop', got {on_bad_image!r}")
        self.augmentation = augmentation
        self.patch_size = int(patch_size)
        self.masking = masking
        self.image_column = image_column
        self.index_column = index_column
        self.seed = int(seed)
        self.on_bad_image = on_bad_image
        self.single_thread = single_thread
        self.issues = ImageIssueCounter()
        self.epoch = 0
        self.start_batch = 0
        self._calls = 0  # batches collated by this process (or worker) since set_epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Start of an epoch (``start_batch`` > 0 when resuming after that many batches of it)."""
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"epoch and start_batch must be >= 0, got epoch={epoch}, start_batch={start_batch}")
        self.epoch, self.start_batch, self._calls = int(epoch), int(start_batch), 0

    def state_dict(self) -> dict:
        """Position of the random stream: seed, epoch and the next batch number of the epoch (this process)."""
        return {"seed": self.seed, "epoch": self.epoch, "next_batch": self.start_batch + self._calls}

    def load_state_dict(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self.set_epoch(state["epoch"], state["next_batch"])

    def _batch_number(self) -> int:
        worker = torch.utils.data.get_worker_info()
        calls, self._calls = self._calls, self._calls + 1
        if worker is None:
            return self.start_batch + calls
        return self.start_batch + calls * worker.num_workers + worker.id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """B dataset rows -> ``pixel_values`` [2B, 3, S, S], ``bool_masked_pos`` [2B, L], ``local_pixel_values``."""
        if not examples:
            raise ValueError("examples must hold at least one row")
        threads = torch.get_num_threads()
        if not self.single_thread or threads == 1:
            return self._collate(examples)
        torch.set_num_threads(1)
        try:
            return self._collate(examples)
        finally:
            torch.set_num_threads(threads)

    def _collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch_number = self._batch_number()
        rank = _rank()
        images, generators = [], []
        for position, row in enumerate(examples):
            if self.image_column not in row:
                raise ValueError(f"row {position} has no image column {self.image_column!r}; keys: {sorted(row)}")
            image = to_rgb_image(row[self.image_column], self.issues)
            if self.index_column is not None and self.index_column in row:
                seed = sample_seed(self.seed, self.epoch, int(row[self.index_column]))
            else:
                seed = sample_seed(self.seed, self.epoch, rank, batch_number, position)
            images.append(image)
            generators.append(torch.Generator().manual_seed(seed))
        good = [i for i, image in enumerate(images) if image is not None]
        if not good:
            raise ValueError(
                f"none of the {len(examples)} images of this batch could be decoded ({self.issues.summary()}); "
                "filter the dataset with sop_hf.image_loading.to_rgb_image"
            )
        if self.on_bad_image == "drop":
            images, generators = [images[i] for i in good], [generators[i] for i in good]
        else:  # each bad image -> the next good one of the batch (wrapping), with the bad row's own generator
            for i, image in enumerate(images):
                if image is None:
                    images[i] = images[next((j for j in good if j > i), good[0])]

        global_views, local_views, masks = [], [], []
        for image, generator in zip(images, generators, strict=True):
            global_crops, local_crops = self.augmentation(image, generator)
            global_views.append(torch.stack(global_crops))  # [2, 3, S, S]
            if local_crops:
                local_views.append(torch.stack(local_crops))  # [n, 3, s, s]
            if self.masking is not None:
                masks.append(torch.stack([self.masking(generator, self.epoch) for _ in global_crops]))  # [2, L]

        # [B, V, ...] -> view-major [V*B, ...]
        batch = {"pixel_values": torch.stack(global_views, dim=1).flatten(0, 1)}
        if self.masking is not None:
            batch["bool_masked_pos"] = torch.stack(masks, dim=1).flatten(0, 1)
        if local_views:
            batch["local_pixel_values"] = torch.stack(local_views, dim=1).flatten(0, 1)
        return batch

    def __repr__(self) -> str:
        return (
            f"SOPCollator({self.augmentation!r}, patch_size={self.patch_size}, masking={self.masking!r}, "
            f"image_column={self.image_column!r}, index_column={self.index_column!r}, seed={self.seed})"
        )
