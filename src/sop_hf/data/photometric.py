"""Batched kernels of the multi-crop augmentation: [N, 3, H, W] float images in [0, 1], one factor per image.

Each op equals its per-image counterpart in ``data.augmentations`` applied image by image (the tests compare them
within float tolerance), but runs as a few vectorised tensor ops over the whole batch, on any device: per-image
factors arrive as tensors of shape [N], never as Python loops over images. The antialiased bicubic resize of
variable-size crops is here too, as two batched matrix products with per-crop weight matrices.

>>> import torch
>>> images = torch.rand(4, 3, 8, 8)
>>> out = adjust_brightness(images, torch.tensor([0.5, 1.0, 1.5, 0.0]))
>>> out.shape, bool(out[3].eq(0).all())
(torch.Size([4, 3, 8, 8]), True)
"""

import torch

__all__ = [
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_weights",
    "gaussian_blur",
    "grayscale",
    "resize_crops",
    "resize_weights",
    "solarize",
]

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as data.augmentations
_CUBIC_A = -0.5  # Keys' cubic, as PyTorch's antialiased bicubic (and PIL)


def _per_image(factor: torch.Tensor) -> torch.Tensor:
    """[N] -> [N, 1, 1, 1], to broadcast over channels and pixels."""
    return factor.reshape(-1, 1, 1, 1)


def grayscale(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] -> [N, 1, H, W] luma."""
    r, g, b = images.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def adjust_brightness(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with black; ``factor`` [N]."""
    return (images * _per_image(factor)).clamp_(0.0, 1.0)


def adjust_contrast(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with each image's mean grey level; ``factor`` [N]."""
    mean = grayscale(images).mean(dim=(1, 2, 3), keepdim=True)  # [N, 1, 1, 1]
    factor = _per_image(factor)
    return (images * factor + (1.0 - factor) * mean).clamp_(0.0, 1.0)


def adjust_saturation(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image; ``factor`` [N]."""
    factor = _per_image(factor)
    return (images * factor + (1.0 - factor) * grayscale(images)).clamp_(0.0, 1.0)


def adjust_hue(images: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of image n by ``factor[n]`` turns (in [-0.5, 0.5]); grey pixels are unchanged."""
    r, g, b = images.unbind(1)  # [N, H, W] each
    maxc = images.amax(1)
    chroma = maxc - images.amin(1)
    is_r = maxc == r  # ties pick R, then G, as torchvision
    is_g = (maxc == g) & ~is_r
    numerator = torch.where(is_r, g - b, torch.where(is_g, (b - r) + 2.0 * chroma, (r - g) + 4.0 * chroma))
    sixths = numerator / torch.where(chroma > 0, chroma, torch.ones_like(chroma))  # hue * 6, in [-1, 5]
    offsets = (5.0 - 2.0 * torch.arange(3, dtype=images.dtype, device=images.device)).view(1, 3, 1, 1)  # 5, 3, 1
    k = torch.remainder(offsets + (sixths + 6.0 * factor.reshape(-1, 1, 1)).unsqueeze(1), 6.0)  # [N, 3, H, W]
    weight = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (maxc.unsqueeze(1) - chroma.unsqueeze(1) * weight).clamp_(0.0, 1.0)


def blur_weights(sigma: torch.Tensor, size: int) -> tuple[torch.Tensor, int]:
    """Gaussian taps for a batch of [size x size] images: ([N, 2R + 1] float32 weights, R).

    Image n uses radius r_n = min(ceil(3 sigma_n), size - 1) (as ``data.augmentations.gaussian_blur``), centred in
    the common 2R + 1 taps, R = max r_n; the taps beyond r_n are 0. Computed in float64 on the CPU (a few numbers).
    """
    sigma = sigma.detach().to("cpu", torch.float64).reshape(-1)
    radius = torch.clamp(torch.ceil(3.0 * sigma), max=size - 1).long()  # [N]
    big = int(radius.max()) if radius.numel() else 0
    x = torch.arange(-big, big + 1, dtype=torch.float64)  # [2R + 1]
    kernel = torch.exp(-0.5 * (x / sigma.clamp_min(1e-12).unsqueeze(1)) ** 2)  # [N, 2R + 1]
    kernel = kernel * (x.abs() <= radius.unsqueeze(1))
    return (kernel / kernel.sum(1, keepdim=True)).float(), big


def gaussian_blur(images: torch.Tensor, weights: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable blur of [N, C, H, W] with per-image taps ``weights`` [N, 2 * radius + 1], reflect padding.

    A weighted sum of 2R + 1 shifted views per axis (a loop over taps, not over images). Get the taps from
    ``blur_weights``; ``radius`` must be below H and W.
    """
    if radius < 1:
        return images
    height, width = images.shape[-2:]
    weights = weights.to(images.device, images.dtype)
    padded = torch.nn.functional.pad(images, (radius, radius, radius, radius), mode="reflect")  # [N, C, H+2R, W+2R]
    rows = padded[..., :width] * _per_image(weights[:, 0])  # [N, C, H+2R, W]
    for offset in range(1, 2 * radius + 1):
        rows.addcmul_(padded[..., offset : offset + width], _per_image(weights[:, offset]))
    out = rows[..., :height, :] * _per_image(weights[:, 0])  # [N, C, H, W]
    for offset in range(1, 2 * radius + 1):
        out.addcmul_(rows[..., offset : offset + height, :], _per_image(weights[:, offset]))
    return out


def solarize(images: torch.Tensor, threshold: float = 128 / 255) -> torch.Tensor:
    """Invert values >= ``threshold``."""
    return torch.where(images >= threshold, 1.0 - images, images)


def _cubic(x: torch.Tensor) -> torch.Tensor:
    x = x.abs()
    near = ((_CUBIC_A + 2.0) * x - (_CUBIC_A + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * _CUBIC_A
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resize_weights(lengths: torch.Tensor, padded: int, size: int, reverse: torch.Tensor | None = None) -> torch.Tensor:
    """Antialiased bicubic resampling matrices: [N, size, padded], row j of crop n maps its ``lengths[n]`` input
    pixels (the rest of ``padded`` is padding and gets weight 0) to output pixel j.

    The weights are PyTorch's ``interpolate(mode="bicubic", antialias=True, align_corners=False)``: Keys' cubic
    (a = -0.5) stretched by the downscaling factor, normalised over the input pixels the filter reaches. ``reverse``
    [N] bool mirrors the output of those crops (a horizontal flip, for free).
    """
    device = lengths.device
    scale = lengths.to(torch.float64).unsqueeze(1) / size  # [N, 1] input pixels per output pixel
    center = scale * (torch.arange(size, device=device, dtype=torch.float64) + 0.5)  # [N, size]
    if reverse is not None:
        center = torch.where(reverse.reshape(-1, 1), center.flip(1), center)
    stretch = scale.clamp_min(1.0).unsqueeze(2)  # [N, 1, 1]: the filter widens when shrinking (antialiasing)
    taps = 4 * max(1, -(-padded // size)) + 2  # the filter reaches < 2 * stretch <= 2 * padded / size pixels each way
    first = torch.floor(center - 2.0 * stretch.squeeze(2) + 0.5).unsqueeze(2)  # [N, size, 1]
    source = first + torch.arange(taps, device=device, dtype=torch.float64)  # [N, size, taps] input pixel indices
    weights = _cubic((source + 0.5 - center.unsqueeze(2)) / stretch)
    weights = weights * ((source >= 0) & (source < lengths.reshape(-1, 1, 1)))  # only the crop's own pixels
    weights = weights / weights.sum(2, keepdim=True)
    dense = torch.zeros(lengths.shape[0], size, padded, device=device, dtype=torch.float64)
    dense.scatter_add_(2, source.clamp(0, padded - 1).long(), weights)  # [N, size, padded]
    return dense.float()


def resize_crops(
    pixels: torch.Tensor, sizes: torch.Tensor, size: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 crops padded into [N, Hp, Wp, 3] (crop n in its top-left ``sizes[n]`` = (h, w) corner) -> float
    [N, 3, size, size] in [0, 1]: the antialiased bicubic resize of each crop, flipped where ``flip`` [N] is True.

    Two batched matrix products per crop (rows, then columns), with the padding weighted 0; equals
    ``F.interpolate(crop, mode="bicubic", antialias=True)`` per crop within float rounding. Cost:
    N * 3 * size * Hp * (Wp + size) multiply-adds, so pad crops of similar sizes together.
    """
    height, width = pixels.shape[1:3]
    images = pixels.permute(0, 3, 1, 2).float()  # [N, 3, Hp, Wp], 0..255
    rows = resize_weights(sizes[:, 0], height, size)  # [N, size, Hp]
    cols = resize_weights(sizes[:, 1], width, size, flip)  # [N, size, Wp]
    out = torch.matmul(rows.unsqueeze(1), images)  # [N, 3, size, Wp]
    out = torch.matmul(out, cols.transpose(1, 2).unsqueeze(1))  # [N, 3, size, size]
    return out.mul_(1.0 / 255.0).clamp_(0.0, 1.0)
