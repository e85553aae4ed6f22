"""The data pipeline under real launches: views per (seed, epoch, sample) across processes, workers and epochs,
bad images replaced and counted, short last batches, and the main job's end-of-run order.

Runs (each a few seconds on CPU): tests/scripts/train_views.py with 1 process at batch 8 and no workers, and with
2 gloo processes (``accelerate launch``) at batch 4 each and 2 workers; examples/pretrain_sop.py on image folders.
Slow: 8 gloo processes at batch 2 against 1 process at batch 16 (views, summed counts, threads per process).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).parent.parent
VIEWS_SCRIPT = str(ROOT / "tests" / "scripts" / "train_views.py")
EXAMPLE = str(ROOT / "examples" / "pretrain_sop.py")
LAUNCH_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


LAUNCH_8 = [*LAUNCH_2[:5], "8", *LAUNCH_2[6:]]


def run(cmd, check=True, **env_overrides):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **env_overrides}
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def write_folder(root: Path, count: int, corrupt: str | None = None, seed: int = 0) -> Path:
    """``count`` 16-px RGB PNGs in two class folders; ``corrupt`` adds a file of that name that is not an image."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / ("dark" if i % 2 == 0 else "bright")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 120, (16, 16, 3)) + (0 if i % 2 == 0 else 120)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    if corrupt:
        (root / "dark" / corrupt).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return root


@pytest.fixture(scope="module")
def view_runs(tmp_path_factory):
    """41 files (40 images + 1 corrupt) trained 2 epochs: 1 process x batch 8, 2 processes x batch 4 + 2 workers."""
    root = tmp_path_factory.mktemp("views")
    data = write_folder(root / "data", 40, corrupt="broken.png")
    one, two = root / "one", root / "two"
    run([sys.executable, VIEWS_SCRIPT, one, data, "--batch", 8, "--workers", 0])
    run(LAUNCH_2 + [VIEWS_SCRIPT, two, data, "--batch", 4, "--workers", 2])
    ranks = [json.loads((two / f"views_rank{r}.json").read_text()) for r in (0, 1)]
    return json.loads((one / "views_rank0.json").read_text()), ranks


def test_views__one_process_equals_two_processes_with_workers(view_runs):
    one, ranks = view_runs
    merged = {epoch: {**ranks[0]["views"][epoch], **ranks[1]["views"][epoch]} for epoch in ("0", "1")}
    assert set(ranks[0]["views"]["0"]).isdisjoint(ranks[1]["views"]["0"])  # each rank its share of every batch
    assert merged == one["views"]  # same images in the same steps, same crops and masks
    assert len(one["views"]["0"]) == 40 and one["global_step"] == ranks[0]["global_step"] == 10  # 41 // 8 x 2 epochs


def test_views__redrawn_every_epoch_in_every_process(view_runs):
    _, ranks = view_runs
    for record in ranks:
        first, second = record["views"]["0"], record["views"]["1"]
        common = set(first) & set(second)
        assert common and all(first[i] != second[i] for i in common)


def test_bad_image__replaced_and_counted_once_over_processes_and_epochs(view_runs):
    one, ranks = view_runs
    for record in (one, *ranks):
        assert record["image_stats"]["bad_images"] == 1
        assert len(record["bad_files"]) == 1 and record["bad_files"][0].endswith("broken.png)")


@pytest.mark.slow
def test_eight_processes__same_views_counts_summed_one_thread_each(tmp_path):
    """8 gloo processes at batch 2 against 1 process at batch 16: the same views, and every count the logs and
    results.json report (converted, replaced, bad files, non-finite steps) is the run's total on every rank; the
    launcher passes OMP_NUM_THREADS=2 on, and each of the 8 processes on this machine runs on cores // 8 threads."""
    from sop_hf.training.cpu_threads import usable_cores

    data = write_folder(tmp_path / "data", 40, corrupt="broken.png")
    for i in range(8):  # grayscale files: converted to RGB when read
        Image.fromarray(np.full((16, 16), 20 * i, dtype=np.uint8), mode="L").save(data / "dark" / f"gray_{i}.png")
    one, eight = tmp_path / "one", tmp_path / "eight"
    run([sys.executable, VIEWS_SCRIPT, one, data, "--batch", 16, "--workers", 0])
    run(LAUNCH_8 + [VIEWS_SCRIPT, eight, data, "--batch", 2, "--workers", 0], OMP_NUM_THREADS="2")
    single = json.loads((one / "views_rank0.json").read_text())
    ranks = [json.loads((eight / f"views_rank{r}.json").read_text()) for r in range(8)]
    assert single["global_step"] == 6 and single["image_stats"]["images_seen"] == 96  # 49 // 16 x 2 epochs
    assert single["image_stats"]["images_converted"] > 0 and single["image_stats"]["bad_images"] == 1
    for epoch in ("0", "1"):
        merged = {}
        for record in ranks:
            assert set(merged).isdisjoint(record["views"][epoch])
            merged.update(record["views"][epoch])
        assert merged == single["views"][epoch]
    for record in ranks:
        for key in ("image_stats", "bad_files", "nonfinite_steps_skipped", "logged", "global_step"):
            assert record[key] == single[key], key  # sums over the 8 processes, not one process's share
        assert record["threads"] == max(1, usable_cores() // 8)


def test_short_last_batch__41_images_at_batch_4_two_epochs(tmp_path):
    data = write_folder(tmp_path / "data", 41)
    run([sys.executable, VIEWS_SCRIPT, tmp_path / "out", data, "--batch", 4, "--epochs", 2])
    record = json.loads((tmp_path / "out" / "views_rank0.json").read_text())
    assert record["global_step"] == 20 and len(record["views"]["1"]) == 40  # the 41st image waits for a later epoch


def test_main_job__two_processes_corrupt_image_two_epochs_exports(tmp_path):
    data = write_folder(tmp_path / "data", 100, corrupt="broken.png")  # 1 bad of 101: under 1 %
    out = tmp_path / "out"
    result = run(LAUNCH_2 + [EXAMPLE, "--use_cpu", "--dataset_name", data, "--num_train_epochs", 2, "--max_steps", -1,
                    "--per_device_train_batch_size", 16, "--knn_eval", "false", "--monitor_steps", 0,
                    "--output_dir", out, "--save_strategy", "epoch", "--logging_steps", 1])  # fmt: skip
    summary = json.loads((out / "results.json").read_text())
    assert (
        summary["global_step"] == 6 and summary["bad_images"] == 1 and summary["bad_files"][0].endswith("broken.png)")
    )
    assert (out / "encoder" / "model.safetensors").exists() and (
        out / "checkpoint-6" / "checkpoint_complete.json"
    ).exists()
    assert not (out / ".staging").exists()
    assert "find_unused_parameters" not in result.stderr  # every trainable parameter is used: no DDP warning


def test_main_job__failed_final_evaluation_keeps_encoder_curves_and_results(tmp_path):
    data = tmp_path / "data"
    write_folder(data / "train", 40)
    write_folder(data / "test", 10, corrupt="broken.png", seed=1)
    out = tmp_path / "out"
    result = run([sys.executable, EXAMPLE, "--dataset_name", data, "--max_steps", 2, "--knn_k", 50,
                  "--per_device_train_batch_size", 8, "--monitor_steps", 0, "--save_strategy", "no",
                  "--output_dir", out])  # fmt: skip
    assert "final k-NN evaluation failed" in result.stderr
    assert "skipped 1 unreadable image(s)" in result.stderr  # the corrupt test image is skipped, not fatal
    summary = json.loads((out / "results.json").read_text())
    assert "k=50 is larger than the 40 training samples" in summary["eval_error"] and summary["global_step"] == 2
    assert (out / "encoder" / "model.safetensors").exists() and (out / "training_curves.png").exists()


def test_bad_image_fraction__one_bad_file_tolerated_two_of_ten_stop_naming_them(tmp_path):
    from sop_hf.pretrain import main

    data = write_folder(tmp_path / "data", 8, corrupt="broken.png")
    (data / "bright" / "also_broken.png").write_bytes(b"not an image either")
    with pytest.raises(ValueError, match=r"2 of 10 training images are unreadable.*broken.png"):
        main(
            [
                "--dataset_name",
                str(data),
                "--max_steps",
                "2",
                "--per_device_train_batch_size",
                "4",
                "--knn_eval",
                "false",
                "--monitor_steps",
                "0",
                "--logging_steps",
                "1",
                "--save_strategy",
                "no",
                "--disable_tqdm",
                "true",
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )
