"""Tests of sop_hf.image_loading and sop_hf.augmentations: mode repair, bad files, multi-crop ops and the collator.

Images are made in the test (and taken from ``skimage.data`` when scikit-image is installed); everything runs on CPU.
"""

import ast
import colorsys
import inspect
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sop_hf import SOPConfig, SOPForPreTraining
from sop_hf.augmentations import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiCropAugmentation,
    SOPCollator,
    adjust_hue,
    gaussian_blur,
    hsv_to_rgb,
    random_resized_crop_params,
    rgb_to_hsv,
    sample_seed,
    solarize,
)
from sop_hf.image_loading import ImageIssueCounter, to_rgb_image
from sop_hf.masking import MaskingPolicy

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
    "array",
    [
        np.full((7, 5), 7, np.uint8),
        np.full((7, 5, 1), 7, np.uint8),
        np.full((7, 5, 3), 7, np.uint8),
        np.dstack([np.full((7, 5, 3), 7, np.uint8), np.full((7, 5), 255, np.uint8)]),  # opaque RGBA
        np.full((3, 7, 5), 7 / 255, np.float32),  # CxHxW floats in [0, 1]
        np.full((7, 5), 7 * 257, np.uint16),
        np.ones((7, 5), bool),
        torch.full((3, 7, 5), 7, dtype=torch.uint8),
    ],
    ids=["HW", "HW1", "HW3", "HW4", "CHW-float", "uint16", "bool", "tensor"],
)
def test_to_rgb_image__arrays(array):
    rgb = to_rgb_image(array)
    assert rgb.mode == "RGB" and rgb.size == (5, 7)
    assert rgb.getpixel((0, 0)) in ((7, 7, 7), (255, 255, 255))


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


@pytest.mark.parametrize("size", [(5, 7), (1, 1), (2, 300)])
def test_multicrop__tiny_and_thin_images_upsample(size):
    augment = MultiCropAugmentation(num_local_crops=2)  # 224 / 96 px crops of a tiny image
    globals_, locals_ = augment(_noise_image(*size), _gen(0))
    assert [tuple(c.shape) for c in globals_] == [(3, 224, 224)] * 2
    assert [tuple(c.shape) for c in locals_] == [(3, 96, 96)] * 2
    assert all(torch.isfinite(c).all() for c in globals_ + locals_)


def test_multicrop__accepts_uint8_arrays_like_pil():
    image = _noise_image()
    augment = MultiCropAugmentation(global_crop_size=32)
    from_pil, from_array = augment(image, _gen(0)), augment(np.asarray(image), _gen(0))
    assert all(torch.equal(a, b) for a, b in zip(from_pil[0], from_array[0], strict=True))


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
    with pytest.raises(ValueError, match=r"image must be RGB \(use image_loading.to_rgb_image first\), got mode 'L'"):
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


# ------------------------------------------------------------------------------------------------------ collator
TINY_MODEL = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    head_hidden_size=32,
    head_output_size=16,
    class_memory_size=64,
    num_anchors=8,
    num_support=3,
    num_tasks=1,
    patch_memory_size=16,
    num_patch_anchors=4,
)


def _collator(num_local_crops: int = 2, masking: bool = True, **kwargs) -> SOPCollator:
    augment = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, num_local_crops=num_local_crops,
                                    **kwargs.pop("augment", {}))  # fmt: skip
    policy = MaskingPolicy.for_crop(32, 8, ratios=0.3) if masking else None
    return SOPCollator(augment, patch_size=8, masking=policy, **kwargs)


def _rows(count: int = 4, **extra) -> list[dict]:
    return [{"image": _noise_image(40 + i, 30 + i, seed=i), "label": i, **extra} for i in range(count)]


def test_collator__keys_are_forward_arguments():
    parameters = set(inspect.signature(SOPForPreTraining.forward).parameters)
    batch = _collator()(_rows())
    assert set(batch) == {"pixel_values", "bool_masked_pos", "local_pixel_values"} and set(batch) <= parameters
    assert batch["pixel_values"].shape == (8, 3, 32, 32) and batch["pixel_values"].dtype == torch.float32
    assert batch["bool_masked_pos"].shape == (8, 16) and batch["bool_masked_pos"].dtype == torch.bool
    assert batch["local_pixel_values"].shape == (8, 3, 16, 16)
    assert set(_collator(num_local_crops=0, masking=False)(_rows())) == {"pixel_values"}


def test_collator__view_major_order():
    """Image 0 is red, the others blue: rows 0 and B (and i*B of the locals) are its views."""
    rows = [{"image": Image.new("RGB", (30, 30), (255, 0, 0) if i == 0 else (0, 0, 255))} for i in range(3)]
    batch = _collator(num_local_crops=2, augment=NO_COLOUR)(rows)
    red = lambda views: [i for i in range(len(views)) if views[i, 0].mean() > 0]  # noqa: E731
    assert red(batch["pixel_values"]) == [0, 3]
    assert red(batch["local_pixel_values"]) == [0, 3]


def test_collator__rows_equal_the_per_image_recipe():
    """Row i and B+i (pixels and masks) are exactly image i's two views from its own seeded generator."""
    collate, rows = _collator(num_local_crops=1, seed=11), _rows(3)
    batch = collate(rows)
    for i, row in enumerate(rows):
        g = _gen(sample_seed(11, 0, 0, 0, i))
        globals_, locals_ = collate.augmentation(row["image"], g)
        masks = [collate.masking(g, 0) for _ in globals_]
        for view in range(2):
            assert torch.equal(batch["pixel_values"][view * 3 + i], globals_[view])
            assert torch.equal(batch["bool_masked_pos"][view * 3 + i], masks[view])
        assert torch.equal(batch["local_pixel_values"][i], locals_[0])


def test_collator__reproducible_and_resumable():
    rows = _rows(3)
    first = _collator(seed=3)
    first.set_epoch(1)
    batches = [first(rows) for _ in range(3)]
    assert not torch.equal(batches[0]["pixel_values"], batches[1]["pixel_values"])  # the counter moves
    again = _collator(seed=3)
    again.set_epoch(1)
    assert all(torch.equal(a, b) for a, b in zip(again(rows).values(), batches[0].values(), strict=True))
    resumed = _collator(seed=3)
    resumed.load_state_dict({"seed": 3, "epoch": 1, "next_batch": 2})
    assert all(torch.equal(a, b) for a, b in zip(resumed(rows).values(), batches[2].values(), strict=True))
    assert first.state_dict() == {"seed": 3, "epoch": 1, "next_batch": 3}
    other_seed = _collator(seed=4)
    other_seed.set_epoch(1)
    assert not torch.equal(other_seed(rows)["pixel_values"], batches[0]["pixel_values"])
    next_epoch = _collator(seed=3)
    next_epoch.set_epoch(2)
    assert not torch.equal(next_epoch(rows)["pixel_values"], batches[0]["pixel_values"])


def test_collator__index_column_seeds_by_example():
    rows = [{**row, "idx": i} for i, row in enumerate(_rows(3))]
    collate = _collator(index_column="idx")
    forward, backward = collate(rows), collate(rows[::-1])  # another batch number and other positions
    assert torch.equal(forward["pixel_values"][0], backward["pixel_values"][2])
    assert torch.equal(forward["bool_masked_pos"][3], backward["bool_masked_pos"][5])


def test_collator__dataloader_workers_give_the_same_batches():
    rows = _rows(8)
    collate = _collator(num_local_crops=0)
    serial = [b["pixel_values"] for b in torch.utils.data.DataLoader(rows, batch_size=2, collate_fn=collate)]
    collate.set_epoch(0)
    loader = torch.utils.data.DataLoader(rows, batch_size=2, collate_fn=collate, num_workers=2)
    parallel = [b["pixel_values"] for b in loader]
    assert len(serial) == len(parallel) == 4
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    assert len({float(b.sum()) for b in serial}) == 4


def test_collator__bad_images_are_replaced_or_dropped_and_counted():
    rows = _rows(3)
    rows[1] = {"image": b"\xff\xd8\xff broken jpeg"}
    replace = _collator()
    batch = replace(rows)
    assert batch["pixel_values"].shape[0] == 6 and batch["bool_masked_pos"].shape[0] == 6
    assert replace.issues.num_skipped == 1
    dropped = _collator(on_bad_image="drop")(rows)
    assert dropped["pixel_values"].shape[0] == 4 and dropped["local_pixel_values"].shape[0] == 4
    with pytest.raises(ValueError, match="none of the 2 images of this batch could be decoded"):
        _collator()([{"image": b"bad"}, {"image": b"worse"}])


def test_collator__converts_odd_modes_and_arrays():
    rows = [{"image": Image.new("LA", (9, 9))}, {"image": np.zeros((9, 9), np.uint16)}, {"image": _noise_image()}]
    collate = _collator()
    assert collate(rows)["pixel_values"].shape == (6, 3, 32, 32)
    assert collate.issues.num_converted == 2


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: SOPCollator(MultiCropAugmentation(global_crop_size=30), patch_size=8),
         "patch_size must divide global_crop_size=30, got 8"),
        (lambda: SOPCollator(MultiCropAugmentation(global_crop_size=32), patch_size=8,
                             masking=MaskingPolicy.for_crop(32, 16)),
         "masking makes masks of 4 patches but global crops have (32 / 8)^2 = 16"),
        (lambda: _collator(on_bad_image="skip"), "on_bad_image must be 'replace' or 'drop', got 'skip'"),
        (lambda: _collator()([{"img": 1}]), "row 0 has no image column 'image'; keys: ['img']"),
        (lambda: _collator()([]), "examples must hold at least one row"),
        (lambda: _collator().set_epoch(-1), "epoch and start_batch must be >= 0, got epoch=-1, start_batch=0"),
    ],
)  # fmt: skip
def test_collator__errors(build, message):
    with pytest.raises(ValueError) as error:
        build()
    assert message in str(error.value)


def test_collator__batch_runs_through_sop_for_pretraining():
    model = SOPForPreTraining(SOPConfig(**TINY_MODEL))
    batch = _collator(num_local_crops=2)(_rows(4))
    output = model(**batch)
    assert torch.isfinite(output.loss) and output.mim_loss is not None
    output.loss.backward()
    assert output.student_embeddings.shape == (16, 16)  # (2 + 2) views x B=4


def test_modules_do_not_import_model_code():
    """augmentations / masking / image_loading sit below the model: no modeling_* (or torchvision/timm) import."""
    root = Path(__file__).resolve().parents[1] / "src" / "sop_hf"
    for name in ("augmentations.py", "masking.py", "image_loading.py"):
        tree = ast.parse((root / name).read_text())
        imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [m for m in imported if "modeling" in m or m.split(".")[0] in ("torchvision", "timm")], name


def test_collator__single_thread_restores_the_thread_count():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        serial = _collator(num_local_crops=0, single_thread=True)(_rows(2))
        threaded = _collator(num_local_crops=0)(_rows(2))
        assert torch.get_num_threads() == 2
        assert torch.allclose(serial["pixel_values"], threaded["pixel_values"], atol=1e-5)
    finally:
        torch.set_num_threads(threads)
