"""The automatic recipe on a user's small-image folder: patch 4 against patch 8 at 56 px, k-NN gain and time.

    python benchmarks/auto_patch.py                      # 56-px Fashion-MNIST folder, train 6000 / test 2000, 800 steps
    python benchmarks/auto_patch.py --patches 8 --steps 200 --seeds 0

Writes an image folder once (``--folder``; Debian's Fashion-MNIST resized from 28 to 56 px with bicubic filtering, a
seeded stratified 6000 / 2000 draw of its train / test splits, PNG files under ``train/<class>/`` and
``test/<class>/``), then runs the pretraining job on it as a user does (``--dataset_name FOLDER``: the folder's own
splits, no ``--recipe``, so the automatic recipe), once per patch size and seed, with ``--patch_size`` the only
difference.
One run at a time, each using every core. Prints, per run: tokens per global crop, k-NN top-1 (k 20) of random init
and of the trained student on the folder's test split, the gain, the training time and the whole run's time; then
the medians per patch size. ``--json PATH`` also writes the rows.

This is the measurement behind ``pretrain.recipe_choice.recipe_for_images``'s patch rule (docs/training.md,
"Small images: which patch size").
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "pretrain_sop.py"
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def write_folder(folder: Path, side: int, train: int, test: int, seed: int = 0) -> Path:
    """A ``side``-px PNG image folder of Fashion-MNIST (stratified draws of ``train`` / ``test`` images); reused when
    its marker file says it was written with the same sizes."""
    from sop_hf.data.sources import load_debian_fashion_mnist

    marker = folder.with_name(folder.name + ".made_with.json")  # beside the folder: it is not part of the data
    made_with = {"side": side, "train": train, "test": test, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == made_with:
        return folder
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        data = load_debian_fashion_mnist(split)
        labels = np.asarray(data["label"])
        per_class = count // len(CLASSES)
        for label, name in enumerate(CLASSES):
            (folder / split / name).mkdir(parents=True, exist_ok=True)
            for index in rng.choice(np.flatnonzero(labels == label), per_class, replace=False):
                image = data[int(index)]["image"].convert("L").resize((side, side), Image.BICUBIC)
                image.save(folder / split / name / f"{index}.png")
    marker.write_text(json.dumps(made_with))
    return folder


def run_one(folder: Path, patch: int, seed: int, steps: int, output_dir: Path) -> dict:
    cmd = [sys.executable, str(SCRIPT), "--dataset_name", str(folder), "--patch_size", str(patch),
           "--max_steps", str(steps), "--seed", str(seed), "--save_strategy", "no", "--output_dir", str(output_dir)]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"patch {patch} seed {seed} failed:\n{result.stderr[-3000:]}")
    summary = json.loads((output_dir / "results.json").read_text())
    config = json.loads((output_dir / "encoder" / "config.json").read_text())
    side = config.get("image_size", 0)
    return {"patch": patch, "seed": seed, "image_size": side, "tokens_per_crop": (side // patch) ** 2,
            "knn_random": summary["knn_top1_random_init"], "knn_trained": summary["knn_top1_trained"],
            "gain_points": 100 * (summary["knn_top1_trained"] - summary["knn_top1_random_init"]),
            "train_s": summary["train_runtime"], "run_s": wall}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "sop_hf_fmnist56")
    parser.add_argument("--side", type=int, default=56)
    parser.add_argument("--train", type=int, default=6000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--patches", type=int, nargs="+", default=[4, 8])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    folder = write_folder(args.folder, args.side, args.train, args.test)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for seed in args.seeds:
            for patch in args.patches:
                row = run_one(folder, patch, seed, args.steps, Path(work) / f"p{patch}s{seed}")
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{args.side}-px Fashion-MNIST folder, {args.train} train / {args.test} test, {args.steps} steps, "
          f"seeds {args.seeds}")  # fmt: skip
    print("| patch | tokens / crop | random init | trained | gain (points) | train s | run s |")
    print("|---|---|---|---|---|---|---|")
    for patch in args.patches:
        mine = [r for r in rows if r["patch"] == patch]

        def med(key, rows=mine):
            return statistics.median(r[key] for r in rows)

        print(f"| {patch} | {mine[0]['tokens_per_crop']} | {100 * med('knn_random'):.1f} | "
              f"{100 * med('knn_trained'):.1f} | {med('gain_points'):+.1f} | {med('train_s'):.0f} | "
              f"{med('run_s'):.0f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
