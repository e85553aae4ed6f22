"""Quality gate on real data: SOP pretraining must beat a random encoder on Fashion-MNIST k-NN.

Marked ``quality`` (about 13 minutes on 2 idle CPU cores); CI runs it after the default suite with
``python -m pytest -m quality``. Needs Debian's ``dataset-fashion-mnist`` (``.ci/run`` installs it); without it the
test fails with the install command, on every machine (it only runs when selected with ``-m quality``).
``python benchmarks/quality.py --setting gate`` runs the same command for 3 seeds and reports mean and spread.

Recipe: the demo recipe (ViT patch 4, width 64, depth 4; 256 anchors -> 128, E 5, T 2; KoLeo 0.1, teacher momentum
0.95) with a 4096-row class memory on the full 60k training set, 1450 steps of batch 128, then weighted k-NN (k = 20)
of the student on the first 10k training and the first 10k test images. The monitor runs every 290 steps and must
not see a collapse.

History: before KoLeo and momentum 0.95 joined the demo recipe, this run gained +7.3 points (seed 0, 50.1 -> 57.5 %)
and 1000-step runs +3.0 to +8.7 depending on the seed, with the head output collapsed onto a few directions; the
gate was +3 points. With the demo recipe, seed 0 gains +18.1 points (50.4 -> 68.6 %, measured 2026-11-29 with this
exact command; the run is deterministic for a given machine type and versions), so the gate is +15 points again.
Last 5 losses 3.20 against a 4.17 peak; second-half teacher entropy 4.70 >= 0.9 ln P' = 4.37; no collapse warning.
Over three seeds (``python benchmarks/quality.py --setting gate``, idle 2-core machine, 2026-11-29): 50.4 -> 68.6,
49.6 -> 67.9, 50.8 -> 68.7 %, gain +18.1 +- 0.2 points (min +17.9, max +18.3); each run trains for 690-700 s and
takes 12-13 minutes with the evaluations.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from sop_hf.data.sources import DEBIAN_FASHION_MNIST_DIR

ROOT = Path(__file__).parent.parent
STEPS = 1450
MARGIN = 0.15


@pytest.mark.quality
def test_sop_beats_random_init_on_fashion_mnist(tmp_path):
    if not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        # Selected explicitly (-m quality): a gate without its data must not pass as a skip.
        pytest.fail("the quality gate needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist")
    cmd = [sys.executable, str(ROOT / "examples" / "pretrain_sop.py"), "--dataset_name", "fashion_mnist_debian",
           "--config_overrides", "class_memory_size=4096",
           "--max_steps", str(STEPS), "--warmup_steps", str(STEPS // 10), "--save_strategy", "no", "--seed", "0",
           "--max_eval_samples", "10000", "--output_dir", str(tmp_path), "--disable_tqdm", "true",
           "--monitor_steps", "290"]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3600)
    assert result.returncode == 0, result.stderr[-5000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    trained, random_init = summary["knn_top1_trained"], summary["knn_top1_random_init"]
    print(f"k-NN top-1: random init {random_init:.4f}, trained {trained:.4f}")
    assert trained >= random_init + MARGIN, summary
    assert "Collapse indicators" not in result.stderr, result.stderr[-5000:]
    assert len(summary["first_losses"]) == len(summary["last_losses"]) == 5
    losses = summary["first_losses"] + summary["last_losses"]
    assert all(math.isfinite(v) for v in losses)
    # The loss rises while the bank fills with real embeddings, then falls: the last 5 logged values must sit
    # clearly below the peak (measured 0.3 below).
    assert sum(summary["last_losses"]) / 5 <= summary["max_loss"] - 0.15, summary
    # No collapse: in the second half the teacher keeps using the prototypes (batch-mean assignment entropy near ln P';
    # measured 0.996 ln P'). The first logged window dips to 0.65 ln P' while the bank still holds random keys.
    assert summary["min_teacher_entropy_second_half"] >= 0.9 * summary["ln_num_prototypes"], summary


@pytest.mark.long
@pytest.mark.parametrize("setting", ["long", "small_images"])
def test_long_run__reports_the_gap_to_raw_pixels(setting, tmp_path):
    """The optional long runs (about 60 CPU-minutes each; docs/training.md, "How close to raw pixels" and "Beyond raw
    pixels"): figures for the docs, not gates. Each must still learn (the gate's margin) and report the raw-pixel
    reference on the same split."""
    if not (DEBIAN_FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("the long run needs Debian's dataset-fashion-mnist: apt-get install dataset-fashion-mnist")
    out = tmp_path / "long.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "quality.py"), "--setting", setting, "--seeds", "0",
           "--json", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=3 * 3600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-5000:]
    print(result.stdout)
    summary = json.loads(out.read_text())
    row = summary["rows"][0]
    assert row["trained"] >= row["random_init"] + MARGIN, summary
    assert 0.8 < summary["raw_pixels"] < 0.9, summary  # 84.6 % (docs/training.md)
