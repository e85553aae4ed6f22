"""The GPU kit's CPU dry run: ``bash benchmarks/gpu_check.sh --dry-run`` prints its table with every section."""

import gzip
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from sop_hf.data.sources import load_embedded_fashion_mnist

REPO = Path(__file__).resolve().parent.parent
SECTIONS = ("CUDA tests", "SOP loss", "sop_loss_speedup_vs_dense", "sop_loss_memory_ratio_vs_dense",
            "sop_step_overhead_pct", "feature_extraction_ratio_vs_vit", "mfu_pct", "Fashion-MNIST k-NN",
            "mfu_compiled_pct", "FSDP2 CPU harness")  # fmt: skip


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX (the Fashion-MNIST file format): zero bytes, type 0x08 (uint8), ndim, big-endian dims, then the data."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def tiny_fashion_mnist(root: Path, num_train: int = 48, num_test: int = 32) -> Path:
    """A few images of the embedded subset written as Debian's four .gz files."""
    for split, prefix, count in (("train", "train", num_train), ("test", "t10k", num_test)):
        dataset = load_embedded_fashion_mnist(split).select(range(count))
        images = np.stack([np.asarray(image) for image in dataset["image"]])
        _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.asarray(dataset["label"]))
    return root


def test_gpu_check_dry_run__prints_one_row_per_section_without_errors(tmp_path):
    data_dir = tiny_fashion_mnist(tmp_path)
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--data_dir", str(data_dir)], cwd=REPO,
                            capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHON": sys.executable})  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    table = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    for section in SECTIONS:
        assert any(section in line for line in table), (section, result.stdout)
    assert not [line for line in table if re.search(r"\| (ERROR|TIMEOUT|FAIL) +\|$", line)], result.stdout


def test_fmnist_pretrain__reads_the_folder_given_by_data_dir(tmp_path, monkeypatch):
    sys.path.insert(0, str(REPO / "benchmarks"))
    import fmnist_pretrain

    from sop_hf.data.sources import FASHION_MNIST_DIR_ENV, load_image_dataset

    monkeypatch.setenv(FASHION_MNIST_DIR_ENV, "")
    fmnist_pretrain.point_debian_loader_at(str(tiny_fashion_mnist(tmp_path, 8, 4)))
    assert len(load_image_dataset("fashion_mnist_debian", split="test")) == 4
