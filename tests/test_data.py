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
from sop_hf.data.pipeline import (
    BOOKKEEPING_KEYS,
    IMAGE_OK,
    IMAGE_REPLACED,
    EpochSampler,
    MultiCropDataArguments,
    build_train_dataset,
    collate_multicrop,
)
from sop_hf.data.sources import load_image_dataset
from tests.conftest import tiny_config


def rgb_image(width=50, height=40, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


# --- datasets and collator ------------------------------------------------------------------------------------


def data_args(**overrides):
    return MultiCropDataArguments(**{"global_crop_size": 32, "local_crop_size": 16, "num_local_crops": 2, **overrides})


def test_dataset__seeded_by_epoch_and_index_and_replaces_bad_images():
    images = [rgb_image(seed=i) for i in range(4)]
    buffer = io.BytesIO()
    rgb_image(64, 64).save(buffer, format="PNG")
    images[2] = buffer.getvalue()[:200]  # truncated PNG bytes
    rows = [{"image": image} for image in images]
    dataset = build_train_dataset(rows, data_args(), patch_size=8, seed=3)
    first = dataset[(0, 1)]
    assert torch.equal(first["global_crops"], dataset[(0, 1)]["global_crops"])  # same (seed, epoch, index)
    assert not torch.equal(first["global_crops"], dataset[(1, 1)]["global_crops"])  # a new epoch, new views
    assert not torch.equal(first["global_crops"][0], first["global_crops"][1])  # each view its own stream
    assert first["masks"].shape == (2, 16) and first["local_crops"].shape == (2, 3, 16, 16)
    assert int(first["image_status"]) == IMAGE_OK and int(first["sample_index"]) == 1
    bad = dataset[(0, 2)]  # replaced by another sample: same shapes, marked, counted
    assert int(bad["image_status"]) == IMAGE_REPLACED and bad["global_crops"].shape == first["global_crops"].shape
    assert int(bad["sample_index"]) == 2 and "1 skipped (truncated: 1" in dataset.issue_summary()
    assert dataset.replacement(2, 0) == dataset.replacement(2, 0) != 2
    dataset.set_epoch(1)  # plain indices use the dataset's epoch
    assert torch.equal(dataset[1]["global_crops"], dataset[(1, 1)]["global_crops"])


def test_dataset__only_bad_images_is_a_clear_error():
    dataset = build_train_dataset([{"image": b"junk"}, {"image": b"more junk"}], data_args(), patch_size=8, seed=0)
    with pytest.raises(ValueError, match=r"sample 0 and 32 stand-ins are unreadable"):
        dataset[0]


def test_epoch_sampler__permutation_per_epoch_carries_the_epoch():
    sampler = EpochSampler(10, seed=5)
    epoch0 = list(sampler)
    assert epoch0 == list(EpochSampler(10, seed=5)) and sorted(i for _, i in epoch0) == list(range(10))
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert {e for e, _ in epoch1} == {1} and [i for _, i in epoch1] != [i for _, i in epoch0]


def test_dataloader__workers_give_the_same_batches():
    rows = [{"image": rgb_image(seed=i)} for i in range(8)]
    dataset = build_train_dataset(rows, data_args(num_local_crops=0), patch_size=8, seed=1)
    sampler = EpochSampler(8, seed=1)
    sampler.set_epoch(2)

    def batches(workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers,
                                             collate_fn=collate_multicrop)  # fmt: skip
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 2  # 8 images, batch 4
    assert torch.cat([b["sample_index"] for b in serial]).tolist() == [i for _, i in sampler]  # the epoch's order
    for a, b in zip(serial, parallel, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_collator__keys_match_forward_and_view_major_order():
    rows = [{"image": rgb_image(seed=i)} for i in range(3)]
    dataset = build_train_dataset(rows, data_args(), patch_size=8, seed=0)
    examples = [dataset[i] for i in range(3)]
    batch = collate_multicrop(examples)
    forward_args = set(inspect.signature(SOPForPreTraining.forward).parameters)
    model_inputs = {k: v for k, v in batch.items() if k not in BOOKKEEPING_KEYS}
    assert set(model_inputs) == {"pixel_values", "bool_masked_pos", "local_pixel_values"} <= forward_args
    assert batch["sample_index"].tolist() == [0, 1, 2] and batch["image_status"].tolist() == [0, 0, 0]
    assert batch["pixel_values"].shape == (6, 3, 32, 32) and batch["local_pixel_values"].shape == (6, 3, 16, 16)
    # row b is view 0 of image b, row B + b is view 1 of image b
    assert torch.equal(batch["pixel_values"][0], examples[0]["global_crops"][0])
    assert torch.equal(batch["pixel_values"][3], examples[0]["global_crops"][1])
    assert torch.equal(batch["local_pixel_values"][3 + 1], examples[1]["local_crops"][1])
    model = SOPForPreTraining(tiny_config())
    out = model(**model_inputs)
    assert torch.isfinite(out.loss)
    with pytest.raises(ValueError, match="empty batch"):
        collate_multicrop([])


def test_streaming_dataset__seeded_examples_and_bad_images_replaced():
    import datasets

    images = [rgb_image(seed=i) for i in range(3)]
    stream = datasets.Dataset.from_dict({"image": images}).to_iterable_dataset()
    wrapped = build_train_dataset(stream, data_args(num_local_crops=0), patch_size=8, seed=0)
    first, second = list(wrapped), list(wrapped)
    assert len(first) == 3 and torch.equal(first[0]["global_crops"], second[0]["global_crops"])
    wrapped.set_epoch(1)
    assert not torch.equal(first[0]["global_crops"], list(wrapped)[0]["global_crops"])
    rows = [{"image": b"junk"}, {"image": images[0]}, {"image": b"junk"}, {"image": images[1]}]
    bad_stream = build_train_dataset(datasets.Dataset.from_list([{"id": i} for i in range(4)]).to_iterable_dataset()
                                     .map(lambda row: rows[row["id"]]), data_args(num_local_crops=0), patch_size=8,
                                     seed=0)  # fmt: skip
    examples = list(bad_stream)
    assert [int(e["image_status"]) for e in examples] == [0, 2, 2, 0]  # one slot per image, bad ones stood in for
    assert sorted(int(e["sample_index"]) for e in examples) == [0, 1, 2, 3]


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
