"""Benchmark: images/s per dataloader worker of the training data pipeline, next to JPEG decoding alone.

One process (= one worker, one core) reads JPEG bytes (a 500 x 375 photo-like image, quality 90, as ImageNet's
average) through ``sop_hf.data.pipeline`` exactly as training does (decode, mode repair, crops, photometric ops,
masks) and reports images/s for:

- ``decode_only``: JPEG decoding and RGB conversion alone, the ceiling of any pipeline;
- ``sop_2x224``: SOP's default views, 2 global 224-px crops with iBOT masks;
- ``imagenet_2x224+10x96``: the ImageNet multi-crop recipe, 2 x 224 + 10 x 96 crops.

A GPU step consuming B images/s needs about B / (images/s per worker) workers (``--dataloader_num_workers``).

    python benchmarks/data_pipeline.py [--quick] [--repeats 3]
"""

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from sop_hf.data.images import to_rgb_image
from sop_hf.data.pipeline import MultiCropDataArguments, build_train_dataset

try:
    from repeats import print_runs
except ImportError:  # imported as benchmarks.data_pipeline
    from benchmarks.repeats import print_runs


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


def run(quick: bool = False, device: str | None = None) -> dict:
    torch.set_num_threads(1)  # one worker = one core
    count = 8 if quick else 48
    rows = [{"image": photo_like_jpeg(i)} for i in range(count)]
    results = {"decode_only_img_per_s": images_per_second(lambda i: to_rgb_image(rows[i]["image"]), count)}
    recipes = {"sop_2x224": dict(num_local_crops=0), "imagenet_2x224+10x96": dict(num_local_crops=10)}
    for name, crops in recipes.items():
        dataset = build_train_dataset(rows, MultiCropDataArguments(**crops), patch_size=16, seed=0, use_masks=True)
        results[f"{name}_img_per_s_per_worker"] = images_per_second(lambda i: dataset[(0, i)], count)
    results["imagenet_recipe_share_of_decode_ceiling"] = (
        results["imagenet_2x224+10x96_img_per_s_per_worker"] / results["decode_only_img_per_s"]
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="Independent runs; prints median and range.")
    args = parser.parse_args()
    print_runs([run(args.quick) for _ in range(max(1, args.repeats))], spec="{:.3g}")


if __name__ == "__main__":
    main()
