"""Training data pipeline: index-seeded datasets, the view-major collator, data sources.

The image conversion, multi-crop and mask modules have their own tests (test_augmentations.py, test_masking.py).
"""

import inspect
import io

import numpy as np
import pytest
import torch
from PIL import Image

from sop_hf import SOPForPreTraining
from sop_hf.data.sources import load_image_dataset
from sop_hf.data.pipeline import MultiCropDataArguments, build_train_dataset, collate_multicrop
from tests.conftest import tiny_config


def rgb_image(width=50, height=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


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
    assert dataset[2] is None and "1 skipped (truncated: 1" in dataset.issue_summary()
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
