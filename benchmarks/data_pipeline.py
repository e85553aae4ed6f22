"""Benchmark: what one dataloader worker delivers per second, all-CPU augmentation next to device-side augmentation.

One process (= one worker, one thread) reads JPEG bytes (500 x 375 photo-like images, quality 90, about ImageNet's
average) through ``sop_hf.data.pipeline`` exactly as training does and reports, median over ``--repeats`` runs:

- ``decode_only_img_per_s``: JPEG decoding and RGB conversion alone, the ceiling of any pipeline;
- ``cpu_only_img_per_s_per_worker``: the ImageNet multi-crop (2 x 224 + 10 x 96, colour jitter, blur, solarize, iBOT
  masks) made in the worker (``--augment_on cpu``), collate included;
- ``cpu_side_img_per_s_per_worker``: all a worker does for the same recipe with ``--augment_on device`` (decode,
  repair, every view's parameters, uint8 crops, masks, collate into padded uint8 groups);
- ``device_side_ms_per_256_img``: the rest of the device path (``BatchedMultiCrop.apply``: resize, flip, jitter,
  grayscale, blur, solarize, normalisation) timed here on the CPU with one thread, per 256 images;
- ``sop_2x224_*``: the same for SOP's default views (2 x 224, masks);
- ``demo_*_ms_per_batch``: the demo recipe (28-px Fashion-MNIST, 2 x 28 crops, batch 128), worker + augmentation
  on this CPU, for both settings (what ``--augment_on auto`` chooses on CPU-only machines);
- ``*_bytes_per_img``: what crosses the worker -> device boundary per image (float32 views vs uint8 crops);
- ``max_abs_diff_device_vs_cpu``: the largest difference of the two paths' views (normalised units).

``--profile`` adds the top functions of one device-path worker (cProfile). ``--json`` prints one JSON object.

    python benchmarks/data_pipeline.py --json [--quick] [--repeats 3] [--profile]
"""

import argparse
import cProfile
import io
import json
import pstats
import time

import numpy as np
import torch
from PIL import Image

from sop_hf.data.batched import CROPS_KEY, BatchedMultiCrop
from sop_hf.data.images import to_rgb_image
from sop_hf.data.pipeline import (
    MultiCropDataArguments,
    build_train_dataset,
    collate_multicrop,
)

try:
    from repeats import print_runs, summarize
except ImportError:  # imported as benchmarks.data_pipeline
    from benchmarks.repeats import print_runs, summarize

IMAGENET_MULTICROP = dict(num_local_crops=10)
BATCH = 16  # images per collate in the worker measurements


def photo_like_jpeg(seed: int, width: int = 500, height: int = 375) -> bytes:
    """Smooth colour gradients plus texture noise, JPEG-encoded (decodes like a photograph, unlike pure noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([np.sin(x / rng.uniform(20, 80) + c) * np.cos(y / rng.uniform(20, 80) - c) for c in (0, 1, 2)], -1)
    pixels = np.clip(127 + 90 * base + rng.normal(0, 12, (height, width, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def images_per_second(fn, count: int) -> float:
    fn(0)  # warm-up (allocations, first-call costs)
    start = time.perf_counter()
    for index in range(count):
        fn(index)
    return count / (time.perf_counter() - start)


def worker_batches(dataset, count: int):
    """All a worker does for ``count`` images: items, then one collate per ``BATCH``."""

    def run_batch(start: int):
        return collate_multicrop([dataset[(0, i)] for i in range(start, min(count, start + BATCH))])

    def rate() -> float:
        run_batch(0)  # warm-up
        begin = time.perf_counter()
        for start in range(0, count, BATCH):
            run_batch(start)
        return count / (time.perf_counter() - begin)

    return run_batch, rate


def batch_bytes(batch: dict) -> int:
    total = 0
    stack = [batch]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)  # one worker = one core
    count = BATCH if quick else 3 * BATCH
    rows = [{"image": photo_like_jpeg(i)} for i in range(count)]
    results = {"decode_only_img_per_s": images_per_second(lambda i: to_rgb_image(rows[i]["image"]), count)}
    recipes = {"imagenet": IMAGENET_MULTICROP, "sop_2x224": dict(num_local_crops=0)}
    for name, crops in recipes.items():
        paths = {}
        for where in ("cpu", "device"):
            args = MultiCropDataArguments(augment_on=where, **crops)
            dataset = build_train_dataset(rows, args, patch_size=16, seed=0, use_masks=True)
            paths[where] = worker_batches(dataset, count)
        prefix = "" if name == "imagenet" else f"{name}_"
        results[f"{prefix}cpu_only_img_per_s_per_worker"] = paths["cpu"][1]()
        results[f"{prefix}cpu_side_img_per_s_per_worker"] = paths["device"][1]()
        cpu_batch, device_batch = paths["cpu"][0](0), paths["device"][0](0)
        results[f"{prefix}cpu_path_bytes_per_img"] = batch_bytes(cpu_batch) / BATCH
        results[f"{prefix}device_path_bytes_per_img"] = batch_bytes(device_batch) / BATCH
        results[f"{prefix}device_side_resize_gflop_per_img"] = resize_flop(device_batch[CROPS_KEY]) / BATCH / 1e9
        start = time.perf_counter()
        views = BatchedMultiCrop.apply(device_batch[CROPS_KEY])
        results[f"{prefix}device_side_ms_per_256_img"] = (time.perf_counter() - start) * 1000 * 256 / BATCH
        results[f"{prefix}max_abs_diff_device_vs_cpu"] = max(
            float((views[key] - cpu_batch[key]).abs().max()) for key in views
        )
    results["cpu_side_share_of_decode"] = results["cpu_side_img_per_s_per_worker"] / results["decode_only_img_per_s"]
    results["cpu_only_share_of_decode"] = results["cpu_only_img_per_s_per_worker"] / results["decode_only_img_per_s"]
    results.update(demo_costs())
    return results


def resize_flop(packed: dict) -> int:
    """Floating-point operations of the device-side resize of a packed batch (2 per multiply-add): per size group,
    rows then columns, n * 3 * S * Hc * (Wc + S) multiply-adds."""
    total = 0
    for side in ("global", "local"):
        if side in packed:
            size = packed[side]["size"]
            for rows, (height, width) in zip(packed[side]["rows"], packed[side]["extent"], strict=True):
                total += 2 * len(rows) * 3 * size * height * (width + size)
    return total


def demo_costs() -> dict:
    """The demo recipe on this CPU: ms per batch of 128, worker + augmentation, for both settings."""
    from sop_hf.data.sources import load_image_dataset

    rows = load_image_dataset("embedded", split="train").select(range(128))
    out = {}
    for where in ("cpu", "device"):
        args = MultiCropDataArguments(augment_on=where, global_crop_size=28, global_crop_scale=[0.3, 1.0],
                                      solarize_prob=0.0)  # fmt: skip
        dataset = build_train_dataset(rows, args, patch_size=4, seed=0, use_masks=True)
        collate_multicrop([dataset[(0, i)] for i in range(8)])  # warm-up
        start = time.perf_counter()
        batch = collate_multicrop([dataset[(0, i)] for i in range(128)])
        if CROPS_KEY in batch:
            BatchedMultiCrop.apply(batch[CROPS_KEY])
        out[f"demo_{where}_path_ms_per_batch"] = (time.perf_counter() - start) * 1000
    return out


def profile_worker(top: int = 15) -> str:
    """cProfile of one device-path worker making ImageNet multi-crop batches: where its time goes."""
    torch.set_num_threads(1)
    rows = [{"image": photo_like_jpeg(i)} for i in range(2 * BATCH)]
    dataset = build_train_dataset(rows, MultiCropDataArguments(augment_on="device", **IMAGENET_MULTICROP),
                                  patch_size=16, seed=0, use_masks=True)  # fmt: skip
    run_batch, _ = worker_batches(dataset, 2 * BATCH)
    run_batch(0)
    profiler = cProfile.Profile()
    profiler.enable()
    run_batch(0)
    run_batch(BATCH)
    profiler.disable()
    stream = io.StringIO()
    pstats.Stats(profiler, stream=stream).sort_stats("tottime").print_stats(top)
    return stream.getvalue()


def gpu_feed(device: str = "cuda", dry: bool = False, workers: int = 16, steps: int = 20) -> dict:
    """The GPU kit's data section (benchmarks/gpu_check.py): batched augmentation img/s on ``device``, and the share
    of a ViT-S/16 multi-crop training step (2 x 224 + 10 x 96, batch 64, bf16) spent waiting for the dataloader with
    ``workers`` workers, for ``--augment_on device`` and ``cpu``. ``dry``: tiny sizes on CPU (seconds)."""
    from sop_hf import SOPConfig, SOPForPreTraining
    from sop_hf.data.batched import views_on_device

    device = torch.device(device)
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if dry:
        config = SOPConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           head_hidden_size=48, head_output_size=16, class_memory_size=256, num_anchors=16,
                           patch_memory_size=64, num_patch_anchors=8)  # fmt: skip
        crops, batch, aug_batch, workers, steps = (
            dict(global_crop_size=32, local_crop_size=16, num_local_crops=2),
            4,
            8,
            0,
            1,
        )
    else:
        config = SOPConfig.from_preset("vit_small")
        crops, batch, aug_batch = IMAGENET_MULTICROP, 64, 256
    rows = [{"image": photo_like_jpeg(i, *((64, 48) if dry else (500, 375)))} for i in range(aug_batch)]
    result = {"workers": workers, "batch": batch}
    # 1. batched augmentation alone: a packed batch of aug_batch images, pinned, copied and augmented on the device
    dataset = build_train_dataset(rows, MultiCropDataArguments(augment_on="device", **crops),
                                  patch_size=config.patch_size, seed=0, use_masks=True)  # fmt: skip
    packed = collate_multicrop([dataset[(0, i)] for i in range(aug_batch)])
    if cuda:
        packed = torch.utils.data._utils.pin_memory.pin_memory(packed)
    times = []
    for _ in range(2 if dry else 6):
        sync()
        start = time.perf_counter()
        views_on_device({key: value for key, value in packed.items()}, device)
        sync()
        times.append(time.perf_counter() - start)
    aug_s = sorted(times[1:])[len(times[1:]) // 2]
    result["batched_augmentation_img_per_s"] = aug_batch / aug_s
    result["device_side_ms_per_256_img"] = aug_s * 1000 * 256 / aug_batch
    # 2. the training step fed by a DataLoader: time in next(loader) over the whole step
    model = SOPForPreTraining(config).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=cuda)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)
    for where in ("device", "cpu"):
        dataset = build_train_dataset(rows, MultiCropDataArguments(augment_on=where, **crops),
                                      patch_size=config.patch_size, seed=0, use_masks=True)  # fmt: skip
        sampler = torch.utils.data.RandomSampler(dataset, replacement=True, num_samples=batch * (steps + 3))  # fmt: skip
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch, sampler=sampler, num_workers=workers,
                                             collate_fn=collate_multicrop, pin_memory=cuda, drop_last=True)  # fmt: skip
        iterator, waited, total = iter(loader), 0.0, 0.0
        warmup = 1 if dry else 3  # the first batches include the workers' start
        for step in range(steps + warmup):
            start = time.perf_counter()
            inputs = next(iterator)
            got = time.perf_counter()
            inputs = {k: v for k, v in inputs.items() if k not in ("sample_index", "image_status")}
            inputs = torch.utils.data._utils.collate.default_convert(inputs)
            inputs = _to_device(inputs, device)
            with autocast:
                loss = model(**views_on_device(inputs, device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sync()
            if step >= warmup:
                waited += got - start
                total += time.perf_counter() - start
        result[f"data_wait_fraction_{where}_path"] = waited / total
        result[f"step_s_{where}_path"] = total / steps
    step_s = result["step_s_device_path"] * (1 - result["data_wait_fraction_device_path"])
    result["device_augmentation_pct_of_step"] = 100 * aug_s * batch / aug_batch / step_s
    return result


def _to_device(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_device(v, device) for v in value]
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="Independent runs; prints median and range.")
    parser.add_argument("--json", action="store_true", help="One JSON object: medians, plus 'range' [min, max].")
    parser.add_argument("--profile", action="store_true", help="Also profile one device-path worker (cProfile).")
    args = parser.parse_args()
    runs = [run(args.quick) for _ in range(max(1, args.repeats))]
    if args.json:
        keys = list(runs[0])
        summaries = {key: summarize([r[key] for r in runs]) for key in keys}
        record = {key: float(f"{s['median']:.4g}") for key, s in summaries.items()}
        record["range"] = {key: [float(f"{s['min']:.4g}"), float(f"{s['max']:.4g}")] for key, s in summaries.items()}
        record["runs"] = len(runs)
        record["threads"] = 1
        record["image"] = "500x375 photo-like JPEG, quality 90"
        if args.profile:
            record["profile_device_path_worker"] = profile_worker()
        print(json.dumps(record, indent=1))
    else:
        print_runs(runs, spec="{:.4g}")
        if args.profile:
            print(profile_worker())


if __name__ == "__main__":
    main()
