"""The device-side multi-crop (sop_hf.data.batched, sop_hf.data.photometric) against the per-image path.

Every batched op is compared with its per-image counterpart in ``data.augmentations`` (odd sizes, grey images), the
whole ``BatchedMultiCrop`` with ``MultiCropAugmentation`` view by view for the same generators, and the training
pipeline's device path (dataset -> collate -> ``views_on_device``) with the CPU path, through dataloader workers
and a real ``SOPTrainer`` run. Everything runs on CPU; the GPU kit (benchmarks/gpu_check.py) times it on a GPU.
"""

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sop_hf.data import BatchedMultiCrop
from sop_hf.data import augmentations as single
from sop_hf.data import photometric as batched
from sop_hf.data.batched import CROPS_KEY, views_on_device
from sop_hf.data.pipeline import (
    IMAGE_CONVERTED,
    IMAGE_REPLACED,
    EpochSampler,
    MultiCropDataArguments,
    build_train_dataset,
    collate_multicrop,
    resolve_augment_on,
)
from sop_hf.seeding import stream_seed

ATOL = 2e-5  # float rounding on [0, 1] images (and after normalisation by std ~0.22)
SIZES = [(7, 5), (1, 1), (2, 9), (33, 17), (16, 16)]


def _images(count: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    images = torch.rand(count, 3, height, width, generator=torch.Generator().manual_seed(seed))
    images[0, :, : max(1, height // 2)] = 0.4  # grey pixels
    return images


def _per_image(op, images: torch.Tensor, factors) -> torch.Tensor:
    return torch.stack([op(image.clone(), float(f)) for image, f in zip(images, factors, strict=True)])


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "name, factors",
    [
        ("brightness", [0.0, 0.6, 1.0, 1.4]),
        ("contrast", [0.0, 0.6, 1.0, 1.4]),
        ("saturation", [0.0, 0.8, 1.0, 1.2]),
        ("hue", [-0.5, -0.1, 0.0, 0.37]),
    ],
)
def test_jitter_ops__equal_the_per_image_ops(name, factors, size):
    images = _images(4, *size)
    expected = _per_image(getattr(single, f"adjust_{name}"), images, factors)
    out = getattr(batched, f"adjust_{name}")(images.clone(), torch.tensor(factors))
    assert out.shape == images.shape and torch.allclose(out, expected, atol=ATOL)


@pytest.mark.parametrize("size", SIZES)
def test_grayscale_and_solarize__equal_the_per_image_ops(size):
    images = _images(3, *size)
    images[1].view(-1)[0] = 128 / 255  # exactly at the solarisation threshold
    assert torch.equal(batched.grayscale(images)[:, 0], torch.stack([single._grayscale(i)[0] for i in images]))
    assert torch.equal(batched.solarize(images), torch.stack([single.solarize(i) for i in images]))


@pytest.mark.parametrize("side", [2, 5, 16, 31])
def test_gaussian_blur__per_image_sigmas_equal_the_per_image_blur(side):
    sigmas = [0.1, 0.3, 0.8, 2.0, 7.5]  # radii 1 .. capped by the image
    images = _images(len(sigmas), side, side)
    expected = torch.stack([single.gaussian_blur(image, s) for image, s in zip(images, sigmas, strict=True)])
    weights, radius = batched.blur_weights(torch.tensor(sigmas), side)
    assert radius == min(23, side - 1) and weights.shape == (len(sigmas), 2 * radius + 1)
    assert torch.allclose(weights.sum(1), torch.ones(len(sigmas)))
    assert torch.allclose(batched.gaussian_blur(images, weights, radius), expected, atol=ATOL)


@pytest.mark.parametrize("extent", [(375, 500), (50, 40), (7, 5), (1, 1), (2, 300), (32, 32), (300, 2)])
@pytest.mark.parametrize("size", [16, 33])
def test_resize_crops__equal_torch_antialiased_bicubic_and_flip(extent, size):
    height, width = extent
    crop = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    region = crop.permute(2, 0, 1).unsqueeze(0).float()
    expected = F.interpolate(region, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    expected = expected[0].mul(1 / 255).clamp(0, 1)
    padded = torch.zeros(2, height + 3, width + 4, 3, dtype=torch.uint8)  # padding must get weight 0
    padded[:, :height, :width] = crop
    padded[:, height:] = 255
    out = batched.resize_crops(padded, torch.tensor([[height, width]] * 2), size, torch.tensor([False, True]))
    assert torch.allclose(out[0], expected, atol=ATOL) and torch.allclose(out[1], expected.flip(-1), atol=ATOL)


# ----------------------------------------------------------------------------------------------- whole multi-crop
def _reference_views(augment, images, seed):
    """Per-image path, stacked view-major like the batched path: ([G*B, 3, S, S], [L*B, 3, s, s])."""
    num_views = augment.num_global_crops + augment.num_local_crops
    views = [augment(image, [torch.Generator().manual_seed(stream_seed(seed, i, v)) for v in range(num_views)])
             for i, image in enumerate(images)]  # fmt: skip
    globals_ = torch.stack([views[i][0][v] for v in range(augment.num_global_crops) for i in range(len(images))])
    locals_ = [views[i][1][v] for v in range(augment.num_local_crops) for i in range(len(images))]
    return globals_, (torch.stack(locals_) if locals_ else None)


def _mixed_images():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in SIZES * 4]
    y, x = np.mgrid[0:60, 0:80]
    images.append(Image.fromarray((255 * np.stack([x / 80, y / 60, 0.5 + 0 * x], -1)).astype(np.uint8)))  # smooth
    images.append(Image.fromarray(rng.integers(0, 256, (45, 37), dtype=np.uint8), "L").convert("RGB"))  # grey source
    return images


@pytest.mark.parametrize(
    "recipe",
    [
        dict(),  # the default probabilities
        dict(color_jitter_prob=1.0, grayscale_prob=0.5, global_blur_probs=(1.0,), local_blur_prob=1.0,
             global_solarize_probs=(0.5,), blur_sigma=(0.1, 3.0)),  # every op on most views
        dict(flip_prob=0.0, color_jitter_prob=0.0, grayscale_prob=0.0, global_blur_probs=(0.0,), local_blur_prob=0.0,
             global_solarize_probs=(0.0,)),  # crops only
    ],
    ids=["default", "every_op", "crops_only"],
)  # fmt: skip
def test_batched_multicrop__same_views_as_the_per_image_path(recipe):
    augment = single.MultiCropAugmentation(global_crop_size=32, local_crop_size=13, num_local_crops=3, **recipe)
    images = _mixed_images()
    views = BatchedMultiCrop(augment, max_groups=3)(images, seed=7)
    expected_globals, expected_locals = _reference_views(augment, images, seed=7)
    assert views["pixel_values"].shape == (2 * len(images), 3, 32, 32)
    assert views["local_pixel_values"].shape == (3 * len(images), 3, 13, 13)
    for out, expected in ((views["pixel_values"], expected_globals), (views["local_pixel_values"], expected_locals)):
        difference = (out - expected).abs()
        # solarisation is a step at 128/255: a pixel within rounding of it may land on the other side (rare)
        assert (difference > ATOL).float().mean() < 1e-4, difference.max()


def test_batched_multicrop__seeded_and_independent_of_the_batch():
    augment = BatchedMultiCrop(global_crop_size=16, local_crop_size=8, num_local_crops=2)
    images = _mixed_images()[:6]
    first, again, other = augment(images, seed=1), augment(images, seed=1), augment(images, seed=2)
    assert torch.equal(first["pixel_values"], again["pixel_values"])
    assert not torch.allclose(first["pixel_values"], other["pixel_values"])
    alone = augment(images[:1], seed=1)["pixel_values"]  # image 0 alone: rows 0 (view 0) and 1 (view 1)
    assert torch.allclose(alone, first["pixel_values"][[0, 6]], atol=ATOL)


def test_batched_multicrop__errors():
    with pytest.raises(ValueError, match="max_groups must be >= 1, got 0"):
        BatchedMultiCrop(max_groups=0)
    with pytest.raises(ValueError, match=r"pass either augmentation or MultiCropAugmentation arguments, not both"):
        BatchedMultiCrop(single.MultiCropAugmentation(), global_crop_size=32)
    with pytest.raises(ValueError, match="BatchedMultiCrop.collate got an empty batch"):
        BatchedMultiCrop().collate([])
    with pytest.raises(ValueError, match=r"got mode 'L'"):
        BatchedMultiCrop().cut(Image.new("L", (8, 8)), None)
    with pytest.raises(ValueError, match="augment_on must be one of auto, cpu, device, got 'gpu'"):
        resolve_augment_on("gpu")


def test_resolve_augment_on__auto_is_device_on_an_accelerator_only():
    assert MultiCropDataArguments().augment_on == "auto"
    assert resolve_augment_on("auto") == ("device" if torch.cuda.is_available() else "cpu")
    assert resolve_augment_on("auto", streaming=True) == "cpu"
    assert resolve_augment_on("device", streaming=True) == "device" and resolve_augment_on("cpu") == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batched_multicrop__on_cuda_equals_the_cpu_views():
    augment = BatchedMultiCrop(global_crop_size=32, local_crop_size=16, num_local_crops=2)
    images = _mixed_images()
    on_cpu, on_cuda = augment(images, seed=0), augment(images, seed=0, device="cuda")
    for key in on_cpu:
        assert on_cuda[key].device.type == "cuda" and torch.allclose(on_cuda[key].cpu(), on_cpu[key], atol=1e-4)


# -------------------------------------------------------------------------------------------- training pipeline
def _rows(count: int = 8):
    rng = np.random.default_rng(0)
    rows = [{"image": Image.fromarray(rng.integers(0, 256, (40 + i, 50 - i, 3), dtype=np.uint8))} for i in range(count)]
    rows[3] = {"image": Image.new("L", (30, 20), 90)}  # converted to RGB
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    rows[5] = {"image": buffer.getvalue()[:100]}  # truncated: replaced by another sample
    return rows


def _datasets(**overrides):
    args = {"global_crop_size": 32, "local_crop_size": 16, "num_local_crops": 2, **overrides}
    return [build_train_dataset(_rows(), MultiCropDataArguments(augment_on=where, **args), patch_size=8, seed=3)
            for where in ("cpu", "device")]  # fmt: skip


def test_pipeline__device_path_gives_the_cpu_path_views_masks_and_counts():
    cpu, device = _datasets()
    assert cpu.views.augment_on == "cpu" and device.views.augment_on == "device"
    items = [(1, i) for i in range(8)]
    expected = collate_multicrop([cpu[item] for item in items])
    batch = collate_multicrop([device[item] for item in items])
    assert CROPS_KEY in batch and "pixel_values" not in batch
    assert batch[CROPS_KEY]["pixels"].dtype == torch.uint8  # uint8 across the boundary
    views = views_on_device(batch)
    assert set(views) == set(expected)
    for key in ("bool_masked_pos", "sample_index", "image_status"):
        assert torch.equal(views[key], expected[key]), key
    assert views["image_status"].tolist() == [0, 0, 0, IMAGE_CONVERTED, 0, IMAGE_REPLACED, 0, 0]
    for key in ("pixel_values", "local_pixel_values"):
        assert torch.allclose(views[key], expected[key], atol=ATOL), key
    assert views_on_device(expected) is expected  # ready views pass through


def test_pipeline__device_path_with_workers_and_a_new_epoch():
    _, dataset = _datasets(num_local_crops=0)
    sampler = EpochSampler(8, seed=1)

    def batches(workers, epoch):
        sampler.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, sampler=sampler, num_workers=workers,
                                             collate_fn=collate_multicrop)  # fmt: skip
        return [views_on_device(batch) for batch in loader]

    serial, parallel, next_epoch = batches(0, 2), batches(2, 2), batches(0, 3)
    for a, b in zip(serial, parallel, strict=True):
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["sample_index"], b["sample_index"])
    first = {int(i): v for b in serial for i, v in zip(b["sample_index"], b["pixel_values"][: len(b["sample_index"])])}
    later = {
        int(i): v for b in next_epoch for i, v in zip(b["sample_index"], b["pixel_values"][: len(b["sample_index"])])
    }
    assert all(not torch.allclose(first[i], later[i]) for i in first)  # every epoch draws new views


def test_trainer__trains_on_device_made_views(tmp_path):
    from sop_hf import SOPForPreTraining
    from sop_hf.training import SOPTrainer, SOPTrainingArguments
    from tests.conftest import tiny_config

    _, dataset = _datasets(num_local_crops=2)
    args = SOPTrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True,
                                learning_rate=1e-3, warmup_steps=1, logging_steps=1, report_to=[], save_strategy="no",
                                disable_tqdm=True, seed=3, max_bad_image_fraction=0.2)  # fmt: skip
    trainer = SOPTrainer(model=SOPForPreTraining(tiny_config()), args=args, train_dataset=dataset,
                         data_collator=collate_multicrop)  # fmt: skip
    trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert trainer.image_stats["images_seen"] == 8


@pytest.mark.slow
def test_processes__device_path_one_process_at_8_equals_two_at_4_with_workers(tmp_path):
    """tests/scripts/train_views.py with --augment_on device: the guarantees of docs/distributed.md hold."""
    import json
    import sys

    from tests.test_pipeline_processes import LAUNCH_2, VIEWS_SCRIPT, run, write_folder

    data = write_folder(tmp_path / "data", 40, corrupt="broken.png")
    one, two = tmp_path / "one", tmp_path / "two"
    run([sys.executable, VIEWS_SCRIPT, one, data, "--batch", 8, "--workers", 0, "--augment_on", "device"])
    run(LAUNCH_2 + [VIEWS_SCRIPT, two, data, "--batch", 4, "--workers", 2, "--augment_on", "device"])
    single_run = json.loads((one / "views_rank0.json").read_text())
    ranks = [json.loads((two / f"views_rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in ("0", "1"):
        merged = {**ranks[0]["views"][epoch], **ranks[1]["views"][epoch]}
        assert merged.keys() == single_run["views"][epoch].keys() and len(merged) == 40
        for index, digest in merged.items():  # digests of the views, rounded to 1e-4: float rounding may show
            assert digest == pytest.approx(single_run["views"][epoch][index], abs=2e-3), (epoch, index)
    for record in ranks:
        first, second = record["views"]["0"], record["views"]["1"]
        assert all(abs(first[i] - second[i]) > 1e-2 for i in set(first) & set(second))  # new views every epoch
    for record in (single_run, *ranks):
        assert record["image_stats"]["bad_images"] == 1 and record["bad_files"][0].endswith("broken.png)")
