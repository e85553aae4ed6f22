"""The benchmark scripts run and print the names external checks parse (no timing is asserted)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def run(*args, timeout=900):
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_mfu_quick__counts_flops_and_reports_a_fraction_of_the_measured_peak():
    out = run(BENCHMARKS / "mfu.py", "--quick", "--steps", "2")
    value = float(re.search(r"^mfu_pct: ([0-9.]+)$", out, re.M).group(1))
    flops = float(re.search(r"([0-9.]+) GFLOP/step", out).group(1))
    assert 0 < value < 100 and flops > 0


def test_knn_benchmark_quick__prints_time_and_memory():
    out = run(BENCHMARKS / "knn_eval.py", "--quick")
    assert re.search(r"^fmnist_size_seconds: [0-9.]+$", out, re.M)


@pytest.mark.slow
def test_run_quick__prints_the_table_and_the_four_fixed_names():
    out = run(BENCHMARKS / "run.py", "--quick", timeout=1800)
    for name in ("sop_loss_speedup_vs_dense", "sop_loss_memory_ratio_vs_dense", "sop_step_overhead_pct",
                 "feature_extraction_ratio_vs_vit"):  # fmt: skip
        assert re.search(rf"^{name}: -?[0-9.]+$", out, re.M), name
    assert "| MFU" in out


@pytest.mark.slow
def test_cpu_threads_quick__prints_the_table_and_the_speedup():
    out = run(BENCHMARKS / "cpu_threads.py", "--steps", "2", "--repeats", "1", timeout=900)
    assert "| accelerate launch, trainer default (usable cores) |" in out
    assert re.search(r"^cpu_threads_speedup_vs_one_thread: [0-9.]+$", out, re.M)
