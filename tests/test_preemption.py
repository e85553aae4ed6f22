"""Preemption: a signal ends the run after a whole optimizer step with one complete checkpoint; the rerun is exact.

Fast (default run): the signal path in-process on a tiny model (a signal at step 3, a second one during the save,
the same exit status and checkpoint, the resume equal to an uninterrupted run), the signal names, and a run with
preemption handling off. Slow: tests/scripts/train_tiny.py as a subprocess sent SIGTERM after step 12 of 40 and run
again with the same command (bit-identical encoder), and 2 gloo processes of which only one gets the signal.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from sop_hf import SOPConfig, SOPForPreTraining
from sop_hf.training import PREEMPTED_EXIT_CODE, SOPTrainer, SOPTrainingArguments, TrainingPreempted
from sop_hf.training.checkpoints import COMPLETE_MARKER, checkpoint_problems, last_complete_checkpoint
from sop_hf.training.preemption import PREEMPTION_RECORD, parse_signals
from tests.scripts.train_tiny import TINY, IndexSeededImages, collate

ROOT = Path(__file__).parent.parent
SCRIPT = str(ROOT / "tests" / "scripts" / "train_tiny.py")
LAUNCH_2 = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


# --- in-process: the signal path ------------------------------------------------------------------------------


class SendSignal(TrainerCallback):
    """Sends ``sig`` to this process at the start of optimizer step ``step`` (0-based: during the step+1-th step)."""

    def __init__(self, step, sig=signal.SIGUSR1):
        self.step, self.sig = step, sig

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), self.sig)


class SignalDuringSave(SOPTrainer):
    """Sends SIGTERM in the middle of every checkpoint write (after the weights, before the optimizer state)."""

    def save_model(self, output_dir=None, _internal_call=False):
        super().save_model(output_dir, _internal_call=_internal_call)
        if _internal_call:
            os.kill(os.getpid(), signal.SIGTERM)


def tiny_trainer(out: Path, max_steps: int, callbacks=(), trainer_class=SOPTrainer, **overrides) -> SOPTrainer:
    torch.manual_seed(0)
    args = SOPTrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-3, warmup_steps=2,
        logging_steps=1, save_strategy="no", use_cpu=True, seed=7, report_to=[], disable_tqdm=True,
        momentum_teacher=0.9, **overrides,
    )  # fmt: skip
    return trainer_class(model=SOPForPreTraining(SOPConfig(**TINY)), args=args, train_dataset=IndexSeededImages(),
                         data_collator=collate, callbacks=list(callbacks))  # fmt: skip


def test_signal__step_finished_one_checkpoint_exit_75_second_signal_harmless_resume_exact(tmp_path):
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)
    straight = tiny_trainer(tmp_path / "straight", 5)
    straight.train()
    out = tmp_path / "preempted"
    trainer = tiny_trainer(out, 5, [SendSignal(2)], trainer_class=SignalDuringSave)
    with pytest.raises(TrainingPreempted) as stop:
        trainer.train()
    assert stop.value.code == PREEMPTED_EXIT_CODE == 75 and stop.value.global_step == 3  # step 3 was finished
    assert "every process stopped after optimizer step 3" in str(stop.value)
    assert trainer.preemption.received == signal.SIGUSR1 and trainer.preemption.signal_count == 2  # + one in the save
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGUSR1)) == before  # handlers restored
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("checkpoint", "."))) == ["checkpoint-3"]
    assert (out / "checkpoint-3" / COMPLETE_MARKER).exists() and checkpoint_problems(str(out / "checkpoint-3")) == []
    record = json.loads((out / PREEMPTION_RECORD).read_text())
    assert record == {"global_step": 3, "checkpoint": str(out / "checkpoint-3"), "signal": "SIGUSR1", "exit_code": 75}
    resumed = tiny_trainer(out, 5)
    resumed.train(resume_from_checkpoint=True)
    assert not (out / PREEMPTION_RECORD).exists()  # a new attempt clears the record
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert list(a) == list(b)
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_signal__handling_off_installs_no_handler(tmp_path):
    seen = []

    class Probe(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            seen.append(signal.getsignal(signal.SIGTERM))

    before = signal.getsignal(signal.SIGTERM)
    trainer = tiny_trainer(tmp_path, 1, [Probe()], preemption_signals="")
    trainer.train()
    assert seen == [before] and trainer.preemption.signals == ()


def test_signal__after_the_last_step_is_passed_on_to_the_process_handler(tmp_path):
    class SignalAtEnd(TrainerCallback):
        def on_train_end(self, args, state, control, **kwargs):
            os.kill(os.getpid(), signal.SIGUSR1)

    caught = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: caught.append(signum))
    try:
        trainer = tiny_trainer(tmp_path, 1, [SignalAtEnd()])
        trainer.train()  # returns: every step was done and no checkpoint was asked for
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert caught == [signal.SIGUSR1] and trainer.preemption.stop_step is None
    assert not (tmp_path / PREEMPTION_RECORD).exists()


def test_parse_signals__names_and_errors():
    assert parse_signals("SIGTERM,SIGUSR1") == (signal.SIGTERM, signal.SIGUSR1)
    assert parse_signals(" usr1 , TERM,SIGUSR1") == (signal.SIGUSR1, signal.SIGTERM)
    assert parse_signals("") == ()
    with pytest.raises(ValueError, match=r"--preemption_signals: SIGKILL cannot be handled; use names like SIGTERM"):
        parse_signals("SIGTERM,SIGKILL")
    with pytest.raises(ValueError, match=r"--preemption_signals: SIGBOGUS cannot be handled"):
        tiny_trainer(Path("unused"), 1, preemption_signals="BOGUS")


# --- subprocesses: a real signal from outside -----------------------------------------------------------------


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _wait_for_step(path: Path, step: int, process, timeout=300.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip() and int(path.read_text()) >= step:
            return int(path.read_text())
        assert process.poll() is None, process.communicate()[1][-3000:]
        time.sleep(0.05)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(a), load_file(b)
    assert sorted(x) == sorted(y) and x
    for key in x:
        assert torch.equal(x[key], y[key]), key


@pytest.mark.slow
def test_sigterm_after_step_12_of_40__checkpoint_within_60s_then_same_command_ends_bit_identical(tmp_path):
    command = ["--max_steps", "40", "--resume", "auto", "--export", "--step_delay", "0.05"]
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    subprocess.run([sys.executable, SCRIPT, straight, *command], check=True, cwd=ROOT, env=_env(), timeout=600,
                   capture_output=True)  # fmt: skip
    process = subprocess.Popen([sys.executable, SCRIPT, preempted, *command], cwd=ROOT, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_step(preempted / "step_rank0", 12, process)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    elapsed = time.monotonic() - sent
    assert process.returncode == PREEMPTED_EXIT_CODE, stderr[-3000:]
    assert elapsed < 60
    step = json.loads((preempted / "preempted_rank0.json").read_text())["global_step"]
    assert 12 <= step < 40 and f"stopping after optimizer step {step}" in stderr
    assert last_complete_checkpoint(str(preempted)) == str(preempted / f"checkpoint-{step}")
    assert not (preempted / "encoder").exists() and not (preempted / ".staging").exists()
    subprocess.run([sys.executable, SCRIPT, preempted, *command], check=True, cwd=ROOT, env=_env(), timeout=600,
                   capture_output=True)  # fmt: skip
    _same_tensors(straight / "encoder" / "model.safetensors", preempted / "encoder" / "model.safetensors")
    a, b = torch.load(straight / "result.pt"), torch.load(preempted / "result.pt")
    assert list(a["state"]) == list(b["state"])
    for key, value in a["state"].items():  # student, teacher, heads, banks, pointers
        assert torch.equal(value, b["state"][key]), key


@pytest.mark.slow
def test_two_processes__signal_to_one_rank_stops_both_at_the_same_step_and_resumes_exactly(tmp_path):
    command = ["--max_steps", "12", "--batch", "2", "--resume", "auto", "--step_delay", "0.1"]
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    subprocess.run([*LAUNCH_2, SCRIPT, straight, *command], check=True, cwd=ROOT, env=_env(), timeout=600,
                   capture_output=True)  # fmt: skip
    launcher = subprocess.Popen([*LAUNCH_2, SCRIPT, preempted, *command], cwd=ROOT, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_step(preempted / "step_rank1", 4, launcher)
    os.kill(int((preempted / "pid_rank1").read_text()), signal.SIGTERM)  # rank 1 only
    _, stderr = launcher.communicate(timeout=300)
    assert launcher.returncode != 0  # torchrun reports a failed worker (status 75) as 1
    steps = [json.loads((preempted / f"preempted_rank{r}.json").read_text())["global_step"] for r in (0, 1)]
    assert steps[0] == steps[1] and 4 <= steps[0] < 12, stderr[-3000:]
    checkpoint = preempted / f"checkpoint-{steps[0]}"
    assert last_complete_checkpoint(str(preempted)) == str(checkpoint)
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= {p.name for p in checkpoint.iterdir()}
    subprocess.run([*LAUNCH_2, SCRIPT, preempted, *command], check=True, cwd=ROOT, env=_env(), timeout=600,
                   capture_output=True)  # fmt: skip
    a, b = torch.load(straight / "result.pt"), torch.load(preempted / "result.pt")
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key
