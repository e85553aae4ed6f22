"""Quality over seeds: k-NN gain of a trained encoder over the same architecture at random init, mean and spread.

    python benchmarks/quality.py                                   # the demo (embedded set), seeds 0 1 2
    python benchmarks/quality.py --setting gate                    # the CI gate's run (full Fashion-MNIST)
    python benchmarks/quality.py --setting long --seeds 0          # ~60 CPU-minutes; against the raw pixels
    python benchmarks/quality.py --setting small_images --seeds 0  # ~60 CPU-minutes; the recipe above raw pixels
    python benchmarks/quality.py --setting small_images --validation 0.1 -- --max_steps 950   # choosing on held-out rows
    python benchmarks/quality.py --method massl --seeds 0          # a lineage method at the demo budget
    python benchmarks/quality.py -- --config_overrides koleo_loss_weight=0   # anything after -- goes to the script

Runs ``examples/pretrain_sop.py`` once per seed, one run at a time (each run uses every core), reads each run's
``results.json`` and prints a table (seed, random init, trained, gain, training time) with the mean and the spread
(sample standard deviation, and min-max) of the gain; ``--json PATH`` also writes them. The gate setting is exactly
the run of ``tests/test_quality.py``.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # sibling benchmarks (method_table's raw pixels)

from sop_hf.methods import METHODS  # noqa: E402

SCRIPT = ROOT / "examples" / "pretrain_sop.py"

SETTINGS = {
    # README command 1: the demo recipe, embedded 4,000-image train split, k-NN on its test split.
    "demo": [],
    # tests/test_quality.py: full Fashion-MNIST, first 10k train / 10k test images for the k-NN.
    "gate": ["--dataset_name", "fashion_mnist_debian", "--config_overrides", "class_memory_size=4096", "--max_steps", "1450",
             "--warmup_steps", "145", "--save_strategy", "no", "--max_eval_samples", "10000"],
    # The optional long run (docs/training.md, "How close to raw pixels"): the gate's recipe for 4000 steps (8.5
    # epochs, about 60 CPU-minutes), k-NN of all 10k test images against all 60k training images, as the raw-pixel
    # reference.
    "long": ["--dataset_name", "fashion_mnist_debian", "--config_overrides", "class_memory_size=4096", "--max_steps", "4000",
             "--warmup_steps", "400", "--save_strategy", "no", "--max_eval_samples", "60000", "--monitor_steps", "500"],
    # SOP's small_images recipe (docs/training.md, "Beyond raw pixels"): a ViT of patch 7, width 128, depth 6 for
    # about 28 minutes (56 CPU-minutes) of training, scored as the long run.
    "small_images": ["--recipe", "small_images", "--dataset_name", "fashion_mnist_debian", "--save_strategy", "no",
                     "--max_eval_samples", "60000"],
}  # fmt: skip
# Settings whose k-NN uses the whole Fashion-MNIST splits, so the raw pixels give a reference on the same split.
FULL_SPLITS = ("long", "small_images")


def raw_pixel_knn(k: int = 20, validation: float = 0.0, seed: int = 0) -> float:
    """Weighted k-NN top-1 (k 20, cosine, temperature 0.07) of the raw pixels: 60k train vs 10k test images, or with
    ``validation`` > 0 the rest of the training images vs the rows the job holds out for that seed
    (``--train_val_split``, the same split function)."""
    from method_table import raw_pixels

    from sop_hf.data.sources import load_debian_fashion_mnist
    from sop_hf.evaluation.knn import knn_top1
    from sop_hf.pretrain.data import hold_out

    def load(split):
        if not validation:
            return load_debian_fashion_mnist(split)
        rest, held = hold_out(load_debian_fashion_mnist("train"), validation, seed, "label")
        return rest if split == "train" else held

    return knn_top1(*raw_pixels(load), ks=(k,))[k]


def run_seed(setting: str, method: str, seed: int, extra: list[str], output_dir: Path) -> dict:
    base, extra = list(SETTINGS[setting]), list(extra)
    if "--config_overrides" in base and "--config_overrides" in extra:  # one flag holding both sets of fields
        k, j = base.index("--config_overrides") + 1, extra.index("--config_overrides") + 1
        base[k] = f"{base[k]},{extra[j]}"
        del extra[j - 1 : j + 1]
    cmd = [sys.executable, str(SCRIPT), *base, "--method", method, "--seed", str(seed),
           "--output_dir", str(output_dir), "--disable_tqdm", "true", "--save_strategy", "no", *extra]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"seed {seed} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((output_dir / "results.json").read_text())
    return {"seed": seed, "random_init": summary["knn_top1_random_init"], "trained": summary["knn_top1_trained"],
            "gain": summary["knn_top1_trained"] - summary["knn_top1_random_init"],
            "train_runtime_s": summary.get("train_runtime"), "wall_s": wall}  # fmt: skip


def describe(rows: list[dict]) -> dict:
    gains = [100 * r["gain"] for r in rows]
    return {"mean_gain_points": statistics.fmean(gains), "std_gain_points": statistics.stdev(gains) if len(gains) > 1
            else 0.0, "min_gain_points": min(gains), "max_gain_points": max(gains),
            "median_gain_points": statistics.median(gains)}  # fmt: skip


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", choices=sorted(SETTINGS), default="demo")
    parser.add_argument("--method", default="sop", choices=sorted(METHODS))
    parser.add_argument("--validation", type=float, default=0.0,
                        help="Hold out this fraction of the training images (--train_val_split) and score on it, not "
                             "on the test split: for choosing a recipe. Full-split settings then compare raw pixels "
                             "on the same held-out rows.")  # fmt: skip
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--output_dir", default=None, help="Keep each run under OUTPUT_DIR/seed<N> (default: temp).")
    parser.add_argument("--json", default=None, help="Also write the rows and the summary to this file.")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(args.output_dir or scratch)
        for seed in args.seeds:
            held_out = ["--train_val_split", str(args.validation)] if args.validation else []
            row = run_seed(args.setting, args.method, seed, [*held_out, *extra], base / f"seed{seed}")
            rows.append(row)
            print(f"seed {seed}: random init {100 * row['random_init']:.1f}%  trained {100 * row['trained']:.1f}%  "
                  f"gain {100 * row['gain']:+.1f} points  (training {row['train_runtime_s'] or 0:.0f} s, run "
                  f"{row['wall_s']:.0f} s)", flush=True)  # fmt: skip
    summary = {"setting": args.setting, "method": args.method, "extra": extra, "rows": rows, **describe(rows)}
    print(f"{args.method} / {args.setting}, {len(rows)} seeds: gain {summary['mean_gain_points']:+.1f} "
          f"+- {summary['std_gain_points']:.1f} points (min {summary['min_gain_points']:+.1f}, "
          f"max {summary['max_gain_points']:+.1f}; median {summary['median_gain_points']:+.1f})")  # fmt: skip
    if args.setting in FULL_SPLITS:
        for row in rows:  # the held-out rows differ by seed; the test split does not
            row["raw_pixels"] = raw_pixel_knn(validation=args.validation, seed=row["seed"] if args.validation else 0)
        summary["raw_pixels"] = statistics.median(row["raw_pixels"] for row in rows)
        summary["median_trained"] = statistics.median(row["trained"] for row in rows)
        summary["median_random_init"] = statistics.median(row["random_init"] for row in rows)
        split = f"{args.validation:g} of the training images held out" if args.validation else "60k train / 10k test"
        margin = 100 * (summary["median_trained"] - summary["raw_pixels"])
        print(f"k-NN top-1 (k 20), {split}, medians over {len(rows)} seed(s): random init "
              f"{100 * summary['median_random_init']:.1f}%, trained {100 * summary['median_trained']:.1f}%, raw "
              f"pixels {100 * summary['raw_pixels']:.1f}%: {margin:+.1f} points against the raw pixels")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
