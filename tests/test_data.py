"""Data pipeline: image conversion, multi-crop, iBOT masks, index-seeded datasets, the collator, data sources."""

import inspect
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sop_hf import SOPForPreTraining
from sop_hf.block_masks import BlockMaskGenerator, MaskingPolicy
from sop_hf.data_sources import load_image_dataset
from sop_hf.image_conversion import ImageIssueCounter, to_rgb_image
from sop_hf.multicrop import MultiCropAugmentation, adjust_hue, gaussian_blur
from sop_hf.trainer.data import MultiCropDataArguments, build_train_dataset, collate_multicrop
from tests.conftest import tiny_config


def rgb_image(width=50, height=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


# --- image conversion -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "image",
    [
        Image.new("L", (9, 7), 100),
        Image.new("1", (9, 7), 1),
        Image.fromarray(np.arange(63, dtype=np.uint16).reshape(7, 9) * 1000),  # I;16
        Image.fromarray(np.arange(63, dtype=np.int32).reshape(7, 9) * 70000),  # I
        Image.fromarray(np.linspace(-1, 1, 63, dtype=np.float32).reshape(7, 9)),  # F
        Image.new("CMYK", (9, 7), (0, 255, 0, 0)),
        Image.new("RGBA", (9, 7), (10, 20, 30, 0)),
        Image.new("LA", (9, 7), (10, 128)),
        Image.new("YCbCr", (9, 7)),
    ],
)
def test_to_rgb__every_odd_mode_converts(image):
    counter = ImageIssueCounter()
    rgb = to_rgb_image(image, counter)
    assert rgb.mode == "RGB" and rgb.size == (9, 7)
    assert counter.summary().startswith("converted")


def test_to_rgb__alpha_composited_on_white_and_palette_transparency():
    transparent = to_rgb_image(Image.new("RGBA", (2, 2), (10, 20, 30, 0)))
    assert np.asarray(transparent)[0, 0].tolist() == [255, 255, 255]
    palette = Image.new("P", (3, 3), 0)
    palette.putpalette([200, 0, 0] * 256)
    palette.info["transparency"] = 0
    assert np.asarray(to_rgb_image(palette))[0, 0].tolist() == [255, 255, 255]
    sixteen = to_rgb_image(Image.fromarray(np.array([[0, 65535]], dtype=np.uint16)))
    assert np.asarray(sixteen)[0, :, 0].tolist() == [0, 255]


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_to_rgb__truncated_file_is_skipped_and_counted(fmt):
    buffer = io.BytesIO()
    rgb_image(64, 64).save(buffer, format=fmt)
    truncated = Image.open(io.BytesIO(buffer.getvalue()[: len(buffer.getvalue()) // 2]))
    counter = ImageIssueCounter()
    assert to_rgb_image(truncated, counter) is None
    assert counter.skipped == 1 and "skipped corrupt" in counter.summary()


def test_to_rgb__arrays_and_non_images():
    counter = ImageIssueCounter()
    assert to_rgb_image(np.zeros((3, 5, 6), dtype=np.uint8), counter).size == (6, 5)  # CHW
    assert to_rgb_image(np.ones((5, 4), dtype=np.float64), counter).mode == "RGB"
    assert to_rgb_image("not an image", counter) is None and to_rgb_image(None, counter) is None
    assert counter.skipped == 2


# --- multi-crop -----------------------------------------------------------------------------------------------


def test_multicrop__shapes_dtype_and_reproducibility():
    augment = MultiCropAugmentation(global_crop_size=32, local_crop_size=16, num_local_crops=3)
    image = rgb_image()
    g1, l1 = augment(image, torch.Generator().manual_seed(1))
    g2, l2 = augment(image, torch.Generator().manual_seed(1))
    g3, _ = augment(image, torch.Generator().manual_seed(2))
    assert [t.shape for t in g1] == [(3, 32, 32)] * 2 and [t.shape for t in l1] == [(3, 16, 16)] * 3
    assert g1[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(g1 + l1, g2 + l2))
    assert not torch.equal(g1[0], g3[0])


def test_multicrop__tiny_images_and_normalisation():
    augment = MultiCropAugmentation(global_crop_size=24, local_crop_size=8, num_local_crops=1)
    globals_, locals_ = augment(rgb_image(5, 7), torch.Generator().manual_seed(0))
    assert globals_[0].shape == (3, 24, 24) and locals_[0].shape == (3, 8, 8)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    white = Image.new("RGB", (40, 40), (255, 255, 255))
    plain = MultiCropAugmentation(global_crop_size=16)
    values = plain._crop(white, 16, (0.5, 1.0), torch.Generator())
    torch.testing.assert_close(((values - mean.view(3, 1, 1)) / std.view(3, 1, 1)).mean((1, 2)), (1 - mean) / std)


def test_multicrop__photometric_ops():
    red = torch.zeros(3, 4, 4)
    red[0] = 1
    torch.testing.assert_close(adjust_hue(red, 1 / 3)[:, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6, rtol=0)
    constant = torch.full((3, 9, 9), 0.3)
    torch.testing.assert_close(gaussian_blur(constant, 1.5), constant)
    impulse = torch.zeros(3, 9, 9)
    impulse[:, 4, 4] = 1
    blurred = gaussian_blur(impulse, 1.0)
    assert abs(blurred.sum().item() - 3.0) < 1e-4 and blurred[:, 4, 4].max() < 1


def test_multicrop__bad_arguments():
    with pytest.raises(ValueError, match="global_crop_scale must satisfy"):
        MultiCropAugmentation(global_crop_scale=(0.5, 0.2))
    with pytest.raises(ValueError, match="num_global_crops must be 2"):
        MultiCropAugmentation(num_global_crops=3)


# --- masks ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5])
def test_block_masks__never_exceed_the_budget_and_are_reproducible(ratio):
    policy = MaskingPolicy(BlockMaskGenerator((14, 14)), ratios=(ratio,))
    counts = []
    for seed in range(50):
        mask = policy(torch.Generator().manual_seed(seed))
        assert mask.shape == (196,) and mask.dtype == torch.bool
        counts.append(int(mask.sum()))
        assert torch.equal(mask, policy(torch.Generator().manual_seed(seed)))
    assert max(counts) <= int(ratio * 196) and np.mean(counts) > 0.6 * ratio * 196


def test_rand_masks__exact_count_and_start_epoch():
    policy = MaskingPolicy(BlockMaskGenerator((7, 7)), ratios=(0.3,), shape="rand", start_epoch=2)
    assert int(policy(torch.Generator().manual_seed(0), epoch=2).sum()) == math.floor(0.3 * 49)
    assert int(policy(torch.Generator().manual_seed(0), epoch=1).sum()) == 0


def test_masks__ratio_variance_and_per_crop_choice():
    policy = MaskingPolicy(BlockMaskGenerator((14, 14)), ratios=(0.0, 0.3), ratio_vars=(0.0, 0.2))
    g = torch.Generator().manual_seed(0)
    ratios = [policy.draw_ratio(g, 0) for _ in range(400)]
    zeros = sum(r == 0.0 for r in ratios)
    assert 150 < zeros < 250  # about half the crops unmasked
    others = [r for r in ratios if r != 0.0]
    assert min(others) >= 0.1 and max(others) <= 0.5
    with pytest.raises(ValueError, match="must stay in"):
        MaskingPolicy(BlockMaskGenerator((4, 4)), ratios=(0.1,), ratio_vars=(0.2,))


# --- datasets and collator ------------------------------------------------------------------------------------


def data_args(**overrides):
    return MultiCropDataArguments(**{"global_crop_size": 32, "local_crop_size": 16, "num_local_crops": 2, **overrides})


def test_dataset__index_seeded_epoch_dependent_and_skips_bad_images():
    images = [rgb_image(seed=i) for i in range(4)]
    buffer = io.BytesIO()
    rgb_image(64, 64).save(buffer, format="PNG")
    images[2] = Image.open(io.BytesIO(buffer.getvalue()[:200]))  # truncated
    rows = [{"image": image} for image in images]
    dataset = build_train_dataset(rows, data_args(), patch_size=8, seed=3)
    first = dataset[1]
    assert torch.equal(first["global_crops"], dataset[1]["global_crops"])  # same (seed, epoch, index)
    assert dataset[2] is None and "skipped corrupt: 1" in dataset.issue_summary()
    dataset.set_epoch(1)
    assert not torch.equal(first["global_crops"], dataset[1]["global_crops"])
    assert first["masks"].shape == (2, 16) and first["local_crops"].shape == (2, 3, 16, 16)


def test_collator__keys_match_forward_and_view_major_order():
    rows = [{"image": rgb_image(seed=i)} for i in range(3)]
    dataset = build_train_dataset(rows, data_args(), patch_size=8, seed=0)
    examples = [dataset[i] for i in range(3)] + [None]
    batch = collate_multicrop(examples)
    forward_args = set(inspect.signature(SOPForPreTraining.forward).parameters)
    assert set(batch) <= forward_args and set(batch) == {"pixel_values", "bool_masked_pos", "local_pixel_values"}
    assert batch["pixel_values"].shape == (6, 3, 32, 32) and batch["local_pixel_values"].shape == (6, 3, 16, 16)
    # row b is view 0 of image b, row B + b is view 1 of image b
    assert torch.equal(batch["pixel_values"][0], examples[0]["global_crops"][0])
    assert torch.equal(batch["pixel_values"][3], examples[0]["global_crops"][1])
    assert torch.equal(batch["local_pixel_values"][3 + 1], examples[1]["local_crops"][1])
    model = SOPForPreTraining(tiny_config())
    out = model(**batch)
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="every image of this batch failed"):
        collate_multicrop([None, None])


def test_streaming_dataset__yields_seeded_examples():
    import datasets

    stream = datasets.Dataset.from_dict({"image": [rgb_image(seed=i) for i in range(3)]}).to_iterable_dataset()
    wrapped = build_train_dataset(stream, data_args(num_local_crops=0), patch_size=8, seed=0)
    first = list(wrapped)
    second = list(wrapped)
    assert len(first) == 3 and torch.equal(first[0]["global_crops"], second[0]["global_crops"])


def test_data_sources__embedded_and_clear_errors(tmp_path):
    train = load_image_dataset("embedded", split="train")
    assert len(train) == 4000 and np.bincount(train["label"]).tolist() == [400] * 10
    with pytest.raises(ValueError, match=r"image column 'img' not found .* columns are \['image', 'label'\]"):
        load_image_dataset("embedded", image_column="img")
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    rgb_image().save(folder / "a.png")
    rgb_image(seed=1).save(folder / "b.png")
    local = load_image_dataset(str(tmp_path / "images"))
    assert len(local) == 2 and "image" in local.column_names
