"""Benchmark: a time-boxed tiny-ViT SOP pretraining on the full Fashion-MNIST, k-NN top-1 vs random init.

Runs the pretraining job of ``examples/pretrain_sop.py`` (``sop_hf.pretrain.main``; its ``demo`` recipe: ViT-T-like,
patch 4, 28 px) on the 60k/10k Fashion-MNIST of Debian's ``dataset-fashion-mnist`` with two additions that stay in
this script:

- ``--data_dir`` points the Debian loader at another folder holding the four ``*-idx?-ubyte.gz`` files (the GPU
  kit carries them in ``benchmarks/.data/fashion-mnist``, see docs/performance.md); without it the Debian path is used;
- ``--time_budget_s`` stops training after that many seconds (a callback handed to the job's ``callbacks``), so the
  run fits a fixed slot whatever the device; the steps done are reported. ``--max_steps`` still sets the schedules.

Every other flag goes to the job unchanged. The last line is ``fmnist_pretrain: {json}`` with the k-NN figures.

    python benchmarks/fmnist_pretrain.py --data_dir benchmarks/.data/fashion-mnist --time_budget_s 140 \\
        --max_steps 1500 --per_device_train_batch_size 256 --dataloader_num_workers 8 --bf16 true
"""

import argparse
import json
import os
import sys
import time

from transformers import TrainerCallback

from sop_hf.pretrain import main as pretrain


def point_debian_loader_at(root: str) -> None:
    """Make ``fashion_mnist_debian`` read the four .gz files in ``root`` (the carried copy)."""
    from sop_hf.data.sources import FASHION_MNIST_DIR_ENV

    os.environ[FASHION_MNIST_DIR_ENV] = str(root)


class TimeBudget(TrainerCallback):
    """Stop training once ``seconds`` have passed since the first step began."""

    def __init__(self, seconds: float):
        self.seconds, self.start = seconds, None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = self.start or time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is not None and time.perf_counter() - self.start > self.seconds:
            control.should_training_stop = True


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="folder of the four Fashion-MNIST .gz files")
    parser.add_argument("--time_budget_s", type=float, default=None, help="stop training after this many seconds")
    args, rest = parser.parse_known_args(argv)
    if args.data_dir:
        point_debian_loader_at(args.data_dir)
    callbacks = [TimeBudget(args.time_budget_s)] if args.time_budget_s is not None else []
    if "--dataset_name" not in rest:
        rest += ["--dataset_name", "fashion_mnist_debian"]
    start = time.perf_counter()
    summary = pretrain(rest, callbacks=callbacks)
    summary["wall_s"] = time.perf_counter() - start
    keys = ("knn_top1_random_init", "knn_top1_trained", "global_step", "train_loss", "wall_s")
    print("fmnist_pretrain: " + json.dumps({k: summary.get(k) for k in keys}))
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
