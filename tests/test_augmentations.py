"""Tests of sop_hf.data.images and sop_hf.data.augmentations: mode repair, bad files and the multi-crop ops.

Images are made in the test (and taken from ``skimage.data`` when scikit-image is installed); everything runs on CPU.
"""

import ast
import colorsys
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sop_hf.data.augmentations import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropAugmentation,
    adjust_hue,
    gaussian_blur,
    hsv_to_rgb,
    random_resized_crop_params,
    rgb_to_hsv,
    solarize,
)
from sop_hf.data.images import ImageIssueCounter, to_rgb_image

MEAN = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
STD = torch.tensor(IMAGENET_STD).view(3, 1, 1)
NO_COLOUR = dict(color_jitter_prob=0.0, grayscale_prob=0.0, global_solarize_probs=(0.0,))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _noise_image(width: int = 64, height: int = 48, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def _natural_image() -> Image.Image:
    try:
        from skimage import data

        return Image.fromarray(data.astronaut())
    except ImportError:  # a smooth synthetic image with edges and colours
        y, x = np.mgrid[0:375, 0:500]
        rgb = np.stack([x / 500, y / 375, 0.5 + 0.5 * np.sin(x / 20) * np.cos(y / 30)], axis=-1)
        return Image.fromarray((rgb * 255).astype(np.uint8))


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ image loading
def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (5, 7), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 1), 1)
    image.info["transparency"] = 0
    return Image.open(io.BytesIO(_encoded(image, "PNG")))  # a real file with a tRNS chunk


ODD_MODES = {
    "L": lambda: Image.new("L", (5, 7), 90),
    "I;16": lambda: Image.fromarray(np.full((7, 5), 40000, dtype=np.uint16)),
    "I": lambda: Image.fromarray(np.full((7, 5), 300, dtype=np.int32)),
    "F": lambda: Image.fromarray(np.full((7, 5), 0.5, dtype=np.float32)),
    "CMYK": lambda: Image.new("CMYK", (5, 7), (0, 255, 255, 0)),
    "RGBA": lambda: Image.new("RGBA", (5, 7), (10, 20, 30, 255)),
    "LA": lambda: Image.new("LA", (5, 7), (10, 0)),
    "La": lambda: Image.new("La", (5, 7), (10, 0)),
    "PA": lambda: Image.new("PA", (5, 7)),
    "P": _palette_with_transparency,
    "1": lambda: Image.new("1", (5, 7), 1),
    "YCbCr": lambda: Image.new("YCbCr", (5, 7), (100, 128, 128)),
}


@pytest.mark.parametrize("mode", sorted(ODD_MODES))
def test_to_rgb_image__every_odd_mode_converts(mode):
    image = ODD_MODES[mode]()
    issues = ImageIssueCounter()
    rgb = to_rgb_image(image, issues)
    assert rgb is not None and rgb.mode == "RGB" and rgb.size == (5, 7)
    assert issues.counts == {f"converted:{image.mode}": 1} and issues.num_skipped == 0


def test_to_rgb_image__values_of_conversions():
    pixel = lambda mode: to_rgb_image(ODD_MODES[mode]()).getpixel((0, 0))  # noqa: E731
    assert pixel("L") == (90, 90, 90)
    assert pixel("I;16") == (156, 156, 156)  # 40000 / 257: rescaled, not clipped at 255
    assert pixel("I") == (1, 1, 1)  # 300 > 255: 16-bit range, 300 / 257
    assert pixel("F") == (128, 128, 128)  # floats in [0, 1] are scaled by 255
    assert pixel("CMYK") == (255, 0, 0)
    assert pixel("LA") == (255, 255, 255)  # alpha 0: composited on white
    assert pixel("1") == (255, 255, 255)
    palette = to_rgb_image(_palette_with_transparency())
    assert palette.getpixel((0, 0)) == (255, 255, 255) and palette.getpixel((1, 1)) == (0, 0, 255)
    half = to_rgb_image(Image.new("RGBA", (2, 2), (0, 0, 0, 128))).getpixel((0, 0))
    assert all(abs(v - 127) <= 1 for v in half)


def test_to_rgb_image__rgb_is_returned_as_is():
    image, issues = _noise_image(), ImageIssueCounter()
    assert to_rgb_image(image, issues) is image and not issues.counts


@pytest.mark.parametrize(
    "array, pixel",
    [
        (np.full((7, 5), 7, np.uint8), (7, 7, 7)),
        (np.full((7, 5, 1), 7, np.uint8), (7, 7, 7)),
        (np.full((7, 5, 3), 7, np.uint8), (7, 7, 7)),
        (np.dstack([np.full((7, 5, 3), 7, np.uint8), np.full((7, 5), 255, np.uint8)]), (7, 7, 7)),  # opaque RGBA
        (np.full((3, 7, 5), 7 / 255, np.float32), (7, 7, 7)),  # CxHxW floats in [0, 1]
        (np.full((7, 5), 7 * 257, np.uint16), (7, 7, 7)),
        (np.ones((7, 5), bool), (255, 255, 255)),
        (torch.full((3, 7, 5), 7, dtype=torch.uint8), (7, 7, 7)),
    ],
    ids=["HW", "HW1", "HW3", "HW4", "CHW-float", "uint16", "bool", "tensor"],
)
def test_to_rgb_image__arrays(array, pixel):
    rgb = to_rgb_image(array)
    assert rgb.mode == "RGB" and rgb.size == (5, 7)
    assert rgb.getpixel((0, 0)) == pixel


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_to_rgb_image__truncated_file_is_skipped_and_counted(fmt, tmp_path):
    data = _encoded(_noise_image(), fmt)
    truncated = data[: len(data) // 2]
    path = tmp_path / f"broken.{fmt.lower()}"
    path.write_bytes(truncated)
    issues = ImageIssueCounter()
    assert to_rgb_image(truncated, issues) is None  # bytes
    assert to_rgb_image(str(path), issues) is None  # a path
    assert to_rgb_image({"bytes": None, "path": str(path)}, issues) is None  # datasets Image(decode=False)
    if fmt != "WEBP":  # Pillow's WebP plugin already fails in Image.open
        assert to_rgb_image(Image.open(io.BytesIO(truncated)), issues) is None  # a lazily opened PIL image
    assert issues.num_skipped == (3 if fmt == "WEBP" else 4) and issues.num_converted == 0
    assert "skipped" in issues.summary()
    assert to_rgb_image(data, issues).mode == "RGB"  # the whole file decodes


def test_to_rgb_image__garbage_and_missing_files():
    issues = ImageIssueCounter()
    assert to_rgb_image(b"not an image at all", issues) is None
    assert to_rgb_image("/nonexistent/file.png", issues) is None
    assert to_rgb_image({"bytes": None, "path": None}, issues) is None
    assert to_rgb_image(np.zeros((2, 3, 7)), issues) is None  # 7 channels
    assert issues.counts["corrupt"] == 4


def test_to_rgb_image__empty_image():
    issues = ImageIssueCounter()
    assert to_rgb_image(Image.new("RGB", (0, 4)), issues) is None
    assert issues.counts == {"empty": 1}


def test_image_issue_counter__summary_merge_and_state():
    counter = ImageIssueCounter(max_examples=1)
    assert counter.summary() == "image issues: none"
    counter.add("converted:L")
    counter.add("converted:L")
    counter.add("truncated", OSError("image file is truncated"))
    counter.add("truncated", OSError("second"))
    assert counter.summary() == (
        "image issues: 2 converted (L: 2); 2 skipped (truncated: 2 [OSError: image file is truncated])"
    )
    other = ImageIssueCounter()
    other.add("corrupt", "bad header")
    counter.merge(other)
    assert counter.num_skipped == 3 and counter.examples["corrupt"] == ["bad header"]
    restored = ImageIssueCounter()
    restored.load_state_dict(counter.state_dict())
    assert restored.summary() == counter.summary()
    with pytest.raises(ValueError, match="max_examples must be >= 0, got -1"):
        ImageIssueCounter(max_examples=-1)


# ---------------------------------------------------------------------------------------------------- tensor ops
def test_rgb_to_hsv__matches_colorsys_and_round_trips():
    image = torch.rand(3, 16, 16, dtype=torch.float64)
    image[:, 0, :4] = 0.5  # grey pixels
    image[1, 1, :] = image[0, 1, :]  # ties of the maximum
    hsv = rgb_to_hsv(image)
    for y, x in [(0, 0), (1, 3), (5, 7), (15, 15)]:
        expected = colorsys.rgb_to_hsv(*image[:, y, x].tolist())
        assert torch.allclose(hsv[:, y, x], torch.tensor(expected, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(hsv_to_rgb(hsv), image, atol=1e-9)


@pytest.mark.parametrize("factor", [-0.5, -0.1, 0.0, 0.07, 0.25, 0.5])
def test_adjust_hue__equals_the_hsv_route(factor):
    image = torch.rand(3, 20, 20)
    image[:, :3, :3] = 0.3
    hsv = rgb_to_hsv(image)
    hsv[0] = torch.remainder(hsv[0] + factor, 1.0)
    assert torch.allclose(adjust_hue(image, factor), hsv_to_rgb(hsv), atol=1e-5)
    assert torch.equal(adjust_hue(image, factor)[:, :3, :3], image[:, :3, :3])  # grey is unchanged


def test_adjust_hue__half_turn_of_red_is_cyan():
    red = torch.zeros(3, 2, 2)
    red[0] = 1.0
    assert torch.allclose(adjust_hue(red, 0.5), torch.tensor([0.0, 1.0, 1.0]).view(3, 1, 1).expand(3, 2, 2))


def test_gaussian_blur__keeps_constants_and_mean():
    constant = torch.full((3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(constant, 2.0), constant, atol=1e-6)
    noise = torch.rand(3, 64, 64)
    blurred = gaussian_blur(noise, 1.5)
    assert blurred.shape == noise.shape and blurred.std() < 0.5 * noise.std()
    assert abs(blurred.mean() - noise.mean()) < 0.01
    assert gaussian_blur(torch.rand(3, 1, 5), 2.0).shape == (3, 1, 5)
    assert gaussian_blur(torch.rand(3, 2, 2), 2.0).shape == (3, 2, 2)  # radius capped by a tiny image


def test_solarize__inverts_from_128():
    x = torch.tensor([0.0, 127 / 255, 128 / 255, 1.0]).view(1, 1, 4)
    assert torch.allclose(solarize(x), torch.tensor([0.0, 127 / 255, 127 / 255, 0.0]).view(1, 1, 4))


@pytest.mark.parametrize("size", [(375, 500), (7, 5), (1, 1), (1, 300), (300, 2)])
def test_random_resized_crop_params__inside_the_image(size):
    height, width = size
    g = _gen(0)
    for scale in [(0.14, 1.0), (0.05, 0.4), (1.0, 1.0)]:
        for _ in range(100):
            top, left, h, w = random_resized_crop_params(height, width, scale, generator=g)
            assert h >= 1 and w >= 1 and 0 <= top <= height - h and 0 <= left <= width - w


def test_random_resized_crop_params__area_and_aspect():
    g = _gen(0)
    params = [random_resized_crop_params(1000, 1000, (0.14, 1.0), generator=g) for _ in range(500)]
    areas = torch.tensor([h * w / 1e6 for _, _, h, w in params])
    aspects = torch.tensor([w / h for _, _, h, w in params])
    # U[0.14, 1] has mean 0.57; large non-square draws do not fit and are redrawn, so the kept mean is lower (~0.51)
    assert areas.min() >= 0.135 and areas.max() <= 1.0 and 0.45 < areas.mean() < 0.57
    assert aspects.min() >= 0.74 and aspects.max() <= 1.34


def test_random_resized_crop_params__centre_fallback():
    """A 1 x 100 strip cannot hold a 3:4..4:3 crop of 14%+ area: the centre crop with clamped aspect is used."""
    assert random_resized_crop_params(100, 1, (0.5, 1.0), generator=_gen(0)) == (49, 0, 1, 1)
    assert random_resized_crop_params(10, 10, (1.0, 1.0), ratio=(2.0, 3.0), generator=_gen(0)) == (2, 0, 5, 10)


# ---------------------------------------------------------------------------------------------------- multi-crop
def test_multicrop__shapes_dtypes_and_range():
    augment = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, num_local_crops=3)
    globals_, locals_ = augment(_natural_image(), _gen(0))
    assert [tuple(c.shape) for c in globals_] == [(3, 32, 32)] * 2
    assert [tuple(c.shape) for c in locals_] == [(3, 16, 16)] * 3
    low, high = (0 - MEAN) / STD, (1 - MEAN) / STD
    for crop in globals_ + locals_:
        assert crop.dtype == torch.float32 and torch.isfinite(crop).all()
        assert (crop >= low - 1e-4).all() and (crop <= high + 1e-4).all()


def test_multicrop__default_sizes_on_a_natural_image():
    globals_, locals_ = MultiCropAugmentation()(_natural_image(), _gen(0))
    assert [tuple(c.shape) for c in globals_] == [(3, 224, 224)] * 2 and locals_ == []
    assert all(c.std() > 0.05 for c in globals_)


def test_multicrop__normalisation_of_a_constant_image():
    colour = (200, 100, 50)
    augment = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, num_local_crops=2, **NO_COLOUR)
    globals_, locals_ = augment(Image.new("RGB", (60, 45), colour), _gen(0))
    assert len(globals_) == 2 and len(locals_) == 2
    expected = (torch.tensor(colour).view(3, 1, 1) / 255 - MEAN) / STD
    for crop in globals_ + locals_:
        assert torch.allclose(crop, expected.expand_as(crop), atol=1e-4)
    mean_image = Image.new("RGB", (40, 40), tuple(round(255 * m) for m in IMAGENET_MEAN))
    crop = augment(mean_image, _gen(1))[0][0]
    assert crop.abs().max() < 0.01 and abs(float(crop.mean())) < 0.01


def test_multicrop__reproducible_with_the_same_seed():
    augment = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, num_local_crops=2)
    image = _noise_image()
    first, second, other = augment(image, _gen(5)), augment(image, _gen(5)), augment(image, _gen(6))
    for a, b in zip(first[0] + first[1], second[0] + second[1], strict=True):
        assert torch.equal(a, b)
    assert not any(torch.equal(a, c) for a, c in zip(first[0] + first[1], other[0] + other[1], strict=True))


def test_multicrop__random_streams_are_unchanged():
    """Golden values (sums of each view) of the views as first drawn: a change of the draws' order or number (which
    would change every trained run's views) fails here. data.batched reuses these draws."""
    augment = MultiCropAugmentation(global_crop_size=16, local_crop_size=8, num_local_crops=2, color_jitter_prob=1.0,
                                    grayscale_prob=0.5, local_blur_prob=1.0, global_solarize_probs=(0.5,))  # fmt: skip
    image = _noise_image()
    per_view = augment(image, [_gen(v) for v in range(4)])
    shared = augment(image, _gen(0))
    assert [float(c.sum()) for c in per_view[0] + per_view[1]] == pytest.approx([-300.915, -300.405, -33.782, -7.797],
                                                                                abs=2e-3)  # fmt: skip
    assert [float(c.sum()) for c in shared[0] + shared[1]] == pytest.approx(
        [-300.915, -523.903, 85.924, -8.241], abs=2e-3
    )


@pytest.mark.parametrize("size", [(5, 7), (1, 1), (2, 300)])
def test_multicrop__tiny_and_thin_images_upsample(size):
    augment = MultiCropAugmentation(num_local_crops=2)  # 224 / 96 px crops of a tiny image
    globals_, locals_ = augment(_noise_image(*size), _gen(0))
    assert [tuple(c.shape) for c in globals_] == [(3, 224, 224)] * 2
    assert [tuple(c.shape) for c in locals_] == [(3, 96, 96)] * 2
    assert all(torch.isfinite(c).all() for c in globals_ + locals_)


def test_multicrop__accepts_uint8_arrays_like_pil():
    image = _noise_image()
    augment = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, num_local_crops=2)
    from_pil, from_array = augment(image, _gen(0)), augment(np.asarray(image), _gen(0))
    crops_pil, crops_array = from_pil[0] + from_pil[1], from_array[0] + from_array[1]
    assert len(crops_pil) == 4
    assert all(torch.equal(a, b) for a, b in zip(crops_pil, crops_array, strict=True))


def test_multicrop__flip_and_grayscale_probabilities():
    half = np.zeros((40, 40, 3), np.uint8)
    half[:, :20, 0] = 255  # red left half, black right half
    augment = MultiCropAugmentation(
        global_crop_size=16, num_global_crops=1, global_crop_scale=(1.0, 1.0), aspect_ratio=(1.0, 1.0),
        color_jitter_prob=0.0, grayscale_prob=0.3, global_blur_probs=(0.0,), global_solarize_probs=(0.0,),
    )  # fmt: skip
    g = _gen(0)
    crops = [augment(half, g)[0][0] * STD + MEAN for _ in range(600)]
    flipped = torch.tensor([float(c[:, :, -1].mean() > c[:, :, 0].mean()) for c in crops])
    gray = torch.tensor([float(torch.allclose(c[0], c[1], atol=1e-4)) for c in crops])
    assert abs(flipped.mean() - 0.5) < 0.07 and abs(gray.mean() - 0.3) < 0.07


def test_multicrop__blur_and_solarize_per_global_crop():
    """Crop 0 gets the first probability, every later global crop the last one; locals are never solarised."""
    dark = Image.new("RGB", (32, 32), (20, 40, 60))
    augment = MultiCropAugmentation(
        global_crop_size=16, local_crop_size=8, num_global_crops=3, num_local_crops=1, color_jitter_prob=0.0,
        grayscale_prob=0.0, global_solarize_probs=(0.0, 1.0),
    )  # fmt: skip
    globals_, locals_ = augment(dark, _gen(0))
    values = [float((c * STD + MEAN)[0].mean()) * 255 for c in globals_ + locals_]
    assert values[0] == pytest.approx(20, abs=0.1)  # crop 0: not solarised
    assert values[1] == pytest.approx(20, abs=0.1)  # below 128: unchanged by solarize either way
    bright = Image.new("RGB", (32, 32), (230, 200, 150))
    globals_, locals_ = augment(bright, _gen(0))
    values = [float((c * STD + MEAN)[0].mean()) * 255 for c in globals_ + locals_]
    assert values[0] == pytest.approx(230, abs=0.1) and values[3] == pytest.approx(230, abs=0.1)
    assert values[1] == pytest.approx(25, abs=0.1) and values[2] == pytest.approx(25, abs=0.1)


def test_multicrop__rejects_non_rgb_input():
    augment = MultiCropAugmentation(global_crop_size=16)
    with pytest.raises(ValueError, match=r"image must be RGB \(use data.images.to_rgb_image first\), got mode 'L'"):
        augment(Image.new("L", (8, 8)))
    with pytest.raises(ValueError, match=r"image array must be uint8 HxWx3, got dtype float64 and shape \(8, 8, 3\)"):
        augment(np.zeros((8, 8, 3)))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(global_crop_size=0), "global_crop_size must be a positive integer, got 0"),
        (dict(num_global_crops=0), "num_global_crops must be >= 1, got 0"),
        (dict(num_local_crops=-1), "num_local_crops must be >= 0, got -1"),
        (dict(global_crop_scale=(0.5, 0.2)), "global_crop_scale must be (min, max) with 1e-06 <= min <= max <= 1.0"),
        (dict(local_crop_scale=(0.05, 1.5)), "local_crop_scale must be (min, max) with 1e-06 <= min <= max <= 1.0"),
        (dict(hue=0.7), "hue must be in [0, 0.5], got 0.7"),
        (dict(brightness=-0.1), "brightness must be >= 0, got -0.1"),
        (dict(flip_prob=1.5), "flip_prob must be a probability in [0, 1], got 1.5"),
        (dict(global_blur_probs=(1.0, 2.0)), "global_blur_probs must be a probability in [0, 1], got 2.0"),
        (dict(std=(0.2, 0.2, 0.0)), "mean and std must hold 3 values with std > 0"),
        (dict(blur_sigma=(2.0, 0.1)), "blur_sigma must be (min, max) with 0.0 <= min <= max <= inf"),
    ],
)
def test_multicrop__errors(kwargs, message):
    with pytest.raises(ValueError) as error:
        MultiCropAugmentation(**kwargs)
    assert message in str(error.value)


def test_modules_do_not_import_model_code():
    """data.augmentations / masking / images sit below the model: no modeling_* (or torchvision/timm) import."""
    root = Path(__file__).resolve().parents[1] / "src" / "sop_hf"
    for name in ("data/augmentations.py", "data/masking.py", "data/images.py"):
        tree = ast.parse((root / name).read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if "modeling" in m or m.split(".")[0] in ("torchvision", "timm")], name
