"""The main job on the user's own data, as run_mim.py / run_image_classification.py users pass it.

Each run trains a few steps of the demo model on small generated images: a ``save_to_disk`` dataset, a folder of
parquet files, ``--data_files``, ``--train_dir``/``--validation_dir`` (then resumed by default), and an unlabelled
folder with ``train/`` and ``test/``.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).parent.parent
EXAMPLE = str(ROOT / "examples" / "pretrain_sop.py")
QUICK = ["--per_device_train_batch_size", "8", "--logging_steps", "1", "--max_eval_samples", "40",
         "--monitor_steps", "0", "--save_steps", "2", "--disable_tqdm", "true"]  # fmt: skip


def run(*args, check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run([sys.executable, EXAMPLE, *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                            env=env, timeout=600, stdin=subprocess.DEVNULL)  # fmt: skip
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def images(count: int, seed: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.integers(0, 100, (20, 20, 3)) + 120 * (i % 2)).astype(np.uint8)) for i in range(count)]


def labelled(count: int, seed: int) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["dark", "bright"])})
    return datasets.Dataset.from_dict({"image": images(count, seed), "label": [i % 2 for i in range(count)]},
                                      features=features)  # fmt: skip


def write_folder(root: Path, count: int, seed: int, classes: bool = True) -> Path:
    for i, image in enumerate(images(count, seed)):
        folder = root / ("dark" if i % 2 == 0 else "bright") if classes else root
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{i:03d}.png")
    return root


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user_data")
    datasets.DatasetDict({"train": labelled(32, 0), "test": labelled(16, 1)}).save_to_disk(root / "saved")
    (root / "parquet").mkdir()
    labelled(32, 0).to_parquet(root / "parquet" / "train.parquet")
    labelled(16, 1).to_parquet(root / "parquet" / "validation.parquet")
    write_folder(root / "dirs" / "train", 32, 0)
    write_folder(root / "dirs" / "val", 16, 1)
    write_folder(root / "unlabelled" / "train", 32, 0, classes=False)
    write_folder(root / "unlabelled" / "test", 16, 1, classes=False)
    return root


def test_save_to_disk__constant_lr_and_eval_strategy_run_the_monitor(data, tmp_path):
    out = tmp_path / "out"
    result = run("--dataset_name", data / "saved", "--max_steps", 4, "--output_dir", out, "--lr_scheduler_type",
                 "constant", "--eval_strategy", "steps", "--eval_steps", 2, "--monitor_samples", 16, "--knn_k", 5,
                 *QUICK)  # fmt: skip
    assert "k-NN top-1 (k=5) on" in result.stdout and "/test:" in result.stdout
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    rates = {row["learning_rate"] for row in history if "learning_rate" in row}
    assert len(rates) == 1  # constant: no warm-up, no decay
    assert [row["step"] for row in history if any(k.startswith("knn_top1") for k in row)] == [2, 4]


def test_parquet_folder_detected_and_data_files(data, tmp_path):
    run("--dataset_name", data / "parquet", "--max_steps", 2, "--output_dir", tmp_path / "a", *QUICK)
    assert "knn_top1_trained" in results(tmp_path / "a")  # validation.parquet found as the eval split
    parquet = data / "parquet"
    run("--data_files", f"train={parquet}/train.parquet", f"validation={parquet}/validation.parquet",
        "--max_steps", 2, "--output_dir", tmp_path / "b", *QUICK)  # fmt: skip
    assert "knn_top1_trained" in results(tmp_path / "b")


def test_train_and_validation_dirs__then_resumed_by_default(data, tmp_path):
    out = tmp_path / "out"
    args = ["--train_dir", data / "dirs" / "train", "--validation_dir", data / "dirs" / "val", "--output_dir", out]
    run(*args, "--max_steps", 2, *QUICK)
    assert results(out)["global_step"] == 2 and "knn_top1_trained" in results(out)
    result = run(*args, "--max_steps", 4, *QUICK)
    assert "resuming from" in result.stderr and results(out)["global_step"] == 4
    result = run(*args, "--max_steps", 2, "--overwrite_output_dir", "true", *QUICK)
    assert "resuming from" not in result.stderr and results(out)["global_step"] == 2


def test_unlabelled_folder__trains_exports_and_says_knn_was_skipped(data, tmp_path):
    out = tmp_path / "out"
    result = run("--dataset_name", data / "unlabelled", "--max_steps", 2, "--output_dir", out, *QUICK)
    assert "k-NN evaluation skipped: no integer class ids" in result.stderr
    assert (out / "encoder" / "model.safetensors").exists() and "knn_top1_trained" not in results(out)


@pytest.mark.parametrize("flags,message", [
    (["--preset", "vit_huge"], "preset must be one of vit_base, vit_large, vit_small, vit_tiny, got 'vit_huge'"),
    (["--lr_scheduler_type", "polynomial"], "--lr_scheduler_type must be one of cosine, linear"),
    (["--eval_strategy", "epoch"], "--eval_strategy epoch is not supported"),
    (["--monitor_steps", "5", "--monitor_samples", "10"], "--knn_k 20 is larger than the monitor's 10 train images"),
])  # fmt: skip
def test_bad_flags__clear_errors_before_compute(flags, message, tmp_path):
    from sop_hf.pretrain import main

    with pytest.raises(ValueError, match=re.escape(message)):
        main([*flags, "--output_dir", str(tmp_path / "x")])
    assert not (tmp_path / "x" / "encoder").exists()
