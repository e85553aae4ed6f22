"""Threads of a CPU-only run: accelerate launch's one-thread default is raised to the process's share of the cores."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sop_hf.training.cpu_threads import cpu_thread_count, local_process_count, set_cpu_threads, usable_cores

ROOT = Path(__file__).parent.parent


@pytest.fixture
def keep_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_thread_count__share_of_the_cores_never_fewer_than_set():
    assert cpu_thread_count(None, current=1, cores=8, local_processes=1) == 8
    assert cpu_thread_count(None, current=1, cores=8, local_processes=2) == 4
    assert cpu_thread_count(None, current=1, cores=2, local_processes=4) == 1  # more processes than cores
    assert cpu_thread_count(None, current=2, cores=2, local_processes=8) == 1  # OMP_NUM_THREADS=2 passed on: never 2
    assert cpu_thread_count(None, current=6, cores=8, local_processes=2) == 4  # several processes: exactly the share
    assert cpu_thread_count(None, current=6, cores=4, local_processes=1) == 6  # a larger count set on purpose
    assert cpu_thread_count(None, current=1, cores=8, local_processes=1, auto=False) == 1  # plain python: kept
    assert cpu_thread_count(3, current=1, cores=8, local_processes=1) == 3  # --cpu_threads wins
    assert cpu_thread_count(1, current=8, cores=8, local_processes=1, auto=True) == 1
    with pytest.raises(ValueError, match="--cpu_threads must be >= 1, got 0"):
        cpu_thread_count(0, current=1, cores=8, local_processes=1)


def test_local_process_count__launcher_env_then_world_size(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert local_process_count(3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert local_process_count(8) == 2  # 8 processes over 4 machines


def test_set_cpu_threads__raises_accelerates_default_only_on_cpu(monkeypatch, keep_threads):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "NO")  # what accelerate launch puts in its processes
    torch.set_num_threads(1)
    assert set_cpu_threads(None, torch.device("cuda"), world_size=1) is None  # an accelerator: untouched
    assert torch.get_num_threads() == 1
    assert set_cpu_threads(None, torch.device("cpu"), world_size=1) == usable_cores()
    assert torch.get_num_threads() == usable_cores()
    assert set_cpu_threads(1, torch.device("cpu"), world_size=1) == 1 and torch.get_num_threads() == 1
    monkeypatch.delenv("ACCELERATE_DYNAMO_BACKEND")  # plain python: the environment's choice stays
    assert set_cpu_threads(None, torch.device("cpu"), world_size=1) == 1 and torch.get_num_threads() == 1


@pytest.mark.skipif(usable_cores() < 2, reason="needs 2 usable cores to see the thread count raised")
def test_accelerate_launch__the_trainer_runs_on_every_core(tmp_path):
    """The user's path: `accelerate launch` of one CPU process, whose launcher sets OMP_NUM_THREADS=1."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, torch\n"
        "from sop_hf import SOPConfig, SOPForPreTraining\n"
        "from sop_hf.training import SOPTrainer, SOPTrainingArguments\n"
        "from tests.scripts.train_tiny import TINY, IndexSeededImages, collate\n"
        "before = torch.get_num_threads()\n"
        f"args = SOPTrainingArguments(output_dir={str(tmp_path / 'out')!r}, max_steps=1, report_to=[], use_cpu=True)\n"
        "SOPTrainer(model=SOPForPreTraining(SOPConfig(**TINY)), args=args, train_dataset=IndexSeededImages(),\n"
        "           data_collator=collate)\n"
        "print('threads', os.environ['OMP_NUM_THREADS'], before, torch.get_num_threads())\n"
    )
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(probe)]  # fmt: skip
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]),
        "HOME": str(tmp_path),
    }
    result = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("threads"))
    assert line.split()[1:] == ["1", "1", str(usable_cores())]  # launcher said 1; the trainer raised it
