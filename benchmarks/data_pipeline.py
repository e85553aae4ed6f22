"""Benchmark: augmented multi-crop samples/s of the training data pipeline, per process (= per worker / core).

Index-seeded examples through ``sop_hf.data.pipeline`` (PIL decode of a 500 x 375 RGB image, crops, photometric ops,
masks), in one process. Compare with the pretraining step's images/s to size ``--dataloader_num_workers``.

    python benchmarks/data_pipeline.py [--quick] [--repeats 3]
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from sop_hf.data.pipeline import MultiCropDataArguments, build_train_dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repeats import print_runs  # noqa: E402


def run(quick: bool = False, device: str | None = None) -> dict:
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8))
    rows = [{"image": image}] * (16 if quick else 64)
    results = {}
    for name, num_local in (("2x224", 0), ("2x224+10x96", 10)):
        dataset = build_train_dataset(rows, MultiCropDataArguments(num_local_crops=num_local), patch_size=16, seed=0)
        dataset[0]
        start = time.perf_counter()
        for index in range(len(rows)):
            dataset[index]
        results[f"samples_per_s_per_worker_{name}"] = len(rows) / (time.perf_counter() - start)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="independent runs; > 1 prints median and range")
    args = parser.parse_args()
    print_runs([run(args.quick) for _ in range(args.repeats)], "{:.1f}")


if __name__ == "__main__":
    main()
