"""DINO/iBOT multi-crop augmentation in PIL + torch (no torchvision), with an explicit generator per image.

METHOD.md section 3. Global crops: RandomResizedCrop (scale (0.14, 1), aspect (3/4, 4/3), bicubic), flip p 0.5,
colour jitter p 0.8 (brightness 0.4, contrast 0.4, saturation 0.2, hue 0.1, random order), grayscale p 0.2;
crop 0 always blurred (sigma in [0.1, 2]), crop 1 blurred p 0.1 and solarised p 0.2. Local crops: 96 px, scale
(0.05, 0.4), the same flip/jitter/grayscale, blur p 0.5. Then ImageNet normalisation. The crop and resize run on the
8-bit PIL image (fast, antialiased); the photometric ops run on the small float crop.

>>> import torch
>>> from PIL import Image
>>> augment = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, num_local_crops=2)
>>> globals_, locals_ = augment(Image.new("RGB", (50, 40)), torch.Generator().manual_seed(0))
>>> [tuple(t.shape) for t in globals_ + locals_]
[(3, 32, 32), (3, 32, 32), (3, 16, 16), (3, 16, 16)]
"""

import math

import numpy as np
import torch
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY = torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)


def _rand(generator) -> float:
    return float(torch.rand((), generator=generator))


def _uniform(generator, low, high) -> float:
    return low + (high - low) * _rand(generator)


def random_resized_crop_box(width, height, scale, ratio, generator) -> tuple[int, int, int, int]:
    """(left, top, w, h) as torchvision's RandomResizedCrop: 10 tries, then a centre crop with clamped ratio."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return left, top, w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, max(w, 1), max(h, 1)


def _gray(image: torch.Tensor) -> torch.Tensor:
    return (image * _GRAY).sum(0, keepdim=True)  # [1, H, W]


def _rgb_to_hsv(image: torch.Tensor) -> torch.Tensor:
    r, g, b = image
    maxc, _ = image.max(0)
    minc, _ = image.min(0)
    delta = maxc - minc
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    hue = torch.where(maxc == r, ((g - b) / safe) % 6, torch.where(maxc == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(delta > 0, hue / 6, torch.zeros_like(hue))
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, torch.ones_like(maxc)), torch.zeros_like(maxc))
    return torch.stack((hue, sat, maxc))


def _hsv_to_rgb(image: torch.Tensor) -> torch.Tensor:
    h, s, v = image
    k = (5.0 - 2.0 * torch.arange(3, dtype=image.dtype).view(3, 1, 1) + h * 6) % 6  # n = 5, 3, 1 for R, G, B
    return v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1)


def adjust_hue(image: torch.Tensor, shift: float) -> torch.Tensor:
    hsv = _rgb_to_hsv(image)
    hsv[0] = (hsv[0] + shift) % 1.0
    return _hsv_to_rgb(hsv)


def color_jitter(image, generator, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1) -> torch.Tensor:
    """torchvision-style ColorJitter on a [3, H, W] float image in [0, 1], ops in random order."""
    for op in torch.randperm(4, generator=generator).tolist():
        if op == 0 and brightness > 0:
            image = (image * _uniform(generator, 1 - brightness, 1 + brightness)).clamp(0, 1)
        elif op == 1 and contrast > 0:
            factor = _uniform(generator, 1 - contrast, 1 + contrast)
            image = (factor * image + (1 - factor) * _gray(image).mean()).clamp(0, 1)
        elif op == 2 and saturation > 0:
            factor = _uniform(generator, 1 - saturation, 1 + saturation)
            image = (factor * image + (1 - factor) * _gray(image)).clamp(0, 1)
        elif op == 3 and hue > 0:
            image = adjust_hue(image, _uniform(generator, -hue, hue))
    return image


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a [3, H, W] image (kernel radius ceil(3 sigma), reflect padding)."""
    if min(image.shape[1:]) < 2 or sigma < 0.05:  # a sub-0.05 px kernel changes nothing
        return image
    radius = max(1, min(int(math.ceil(3 * sigma)), (min(image.shape[1:]) - 1)))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    batch = image[:, None]  # [3, 1, H, W]
    batch = torch.nn.functional.pad(batch, (radius, radius, 0, 0), mode="reflect")
    batch = torch.nn.functional.conv2d(batch, kernel.view(1, 1, 1, -1))
    batch = torch.nn.functional.pad(batch, (0, 0, radius, radius), mode="reflect")
    batch = torch.nn.functional.conv2d(batch, kernel.view(1, 1, -1, 1))
    return batch[:, 0]


class MultiCropAugmentation:
    """Global and local crops of one RGB PIL image.

    Args:
        global_crop_size: side of the global crops (the encoder's ``image_size``).
        local_crop_size: side of the local crops (96; 16 for 28-px images).
        num_global_crops: 2 (SOP pairs two global views).
        num_local_crops: 0 by default (SOP); 6-10 in the iBOT / MaSSL recipes (each costs a student forward).
        global_crop_scale: area range; (0.14, 1) for ImageNet, (0.32, 1) in the MaSSL recipe, (0.3, 1) for 28 px.
        local_crop_scale: area range of local crops.
        mean, std: normalisation (ImageNet).
        blur_sigma: Gaussian-blur sigma range in pixels *at 224 px*; it is scaled by ``crop_size / 224`` so that
            small images are blurred as much, relative to their size, as ImageNet crops (DINO: 0.1-2 px at 224).
        solarize_prob: probability of solarising global crop 1 (0.2); 0 for low-resolution grayscale data.
        color_jitter_prob: probability of the colour jitter (0.8).
    """

    def __init__(self, global_crop_size: int = 224, local_crop_size: int = 96, num_global_crops: int = 2,
                 num_local_crops: int = 0, global_crop_scale=(0.14, 1.0), local_crop_scale=(0.05, 0.4),
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, blur_sigma=(0.1, 2.0), solarize_prob: float = 0.2,
                 color_jitter_prob: float = 0.8):  # fmt: skip
        for name, scale in (("global_crop_scale", global_crop_scale), ("local_crop_scale", local_crop_scale)):
            if not 0 < scale[0] <= scale[1] <= 1:
                raise ValueError(f"{name} must satisfy 0 < low <= high <= 1, got {tuple(scale)}")
        if global_crop_size < 1 or local_crop_size < 1:
            raise ValueError(f"crop sizes must be >= 1, got {global_crop_size} and {local_crop_size}")
        if num_global_crops != 2:
            raise ValueError(f"num_global_crops must be 2 (SOP pairs two global views), got {num_global_crops}")
        if num_local_crops < 0:
            raise ValueError(f"num_local_crops must be >= 0, got {num_local_crops}")
        self.global_crop_size, self.local_crop_size = global_crop_size, local_crop_size
        self.num_local_crops = num_local_crops
        self.global_crop_scale, self.local_crop_scale = tuple(global_crop_scale), tuple(local_crop_scale)
        for name, p in (("solarize_prob", solarize_prob), ("color_jitter_prob", color_jitter_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        self.blur_sigma, self.solarize_prob, self.color_jitter_prob = tuple(blur_sigma), solarize_prob, color_jitter_prob
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def _crop(self, image: Image.Image, size: int, scale, generator) -> torch.Tensor:
        left, top, w, h = random_resized_crop_box(image.width, image.height, scale, (3 / 4, 4 / 3), generator)
        crop = image.crop((left, top, left + w, top + h)).resize((size, size), Image.BICUBIC)
        return torch.from_numpy(np.asarray(crop, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255)

    def _photometric(self, crop, generator, blur_p: float, solarize_p: float) -> torch.Tensor:
        if _rand(generator) < 0.5:
            crop = crop.flip(-1)
        if _rand(generator) < self.color_jitter_prob:
            crop = color_jitter(crop, generator)
        if _rand(generator) < 0.2:
            crop = _gray(crop).expand(3, -1, -1).contiguous()
        if _rand(generator) < blur_p:
            scale = crop.shape[-1] / 224
            crop = gaussian_blur(crop, _uniform(generator, *self.blur_sigma) * scale)
        if _rand(generator) < solarize_p:
            crop = torch.where(crop >= 0.5, 1.0 - crop, crop)
        return (crop - self.mean) / self.std

    def __call__(self, image: Image.Image, generator: torch.Generator):
        """Returns (list of 2 global [3, G, G] tensors, list of n local [3, l, l] tensors), normalised float32."""
        if image.mode != "RGB":
            image = image.convert("RGB")
        g0 = self._photometric(self._crop(image, self.global_crop_size, self.global_crop_scale, generator),
                               generator, blur_p=1.0, solarize_p=0.0)  # fmt: skip
        g1 = self._photometric(self._crop(image, self.global_crop_size, self.global_crop_scale, generator),
                               generator, blur_p=0.1, solarize_p=self.solarize_prob)  # fmt: skip
        locals_ = [
            self._photometric(self._crop(image, self.local_crop_size, self.local_crop_scale, generator),
                              generator, blur_p=0.5, solarize_p=0.0)  # fmt: skip
            for _ in range(self.num_local_crops)
        ]
        return [g0, g1], locals_
