"""SOPTrainer: schedules, optimizer groups, clipping, EMA, exact resume after a kill, NaN stop, two CPU processes."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sop_hf.training import PerParameterClipCallback, SOPTrainingArguments, cosine_schedule, warmup_constant_schedule

SCRIPT = str(Path(__file__).parent / "scripts" / "train_tiny.py")
# What a saved state must hold (student, teacher, head, both banks and pointers, step count), among the rest.
STATE_KEYS = ("sop.layernorm.weight", "teacher.layernorm.weight", "teacher_head.mlp.0.weight", "class_memory.rows",
              "class_memory.ptr", "patch_memory.rows", "patch_memory.ptr", "step_count")  # fmt: skip
ROOT = str(Path(__file__).parent.parent)


def run_script(*args, launcher=None, check=True):
    cmd = (launcher or [sys.executable]) + [SCRIPT, *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    if check:
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


# --- pure schedules -------------------------------------------------------------------------------------------


def test_cosine_schedule__warmup_then_cosine_to_final():
    values = [
        cosine_schedule(i, base=1.0, final=0.1, total_steps=10, warmup_steps=4, warmup_start=0.0) for i in range(10)
    ]
    assert values[:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert values[4] == pytest.approx(1.0)
    assert values[7] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 6)))
    assert cosine_schedule(10, 1.0, 0.1, 10, 4) == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_cosine_schedule__warmup_clamped_to_run_and_validation():
    assert cosine_schedule(2, 1.0, 0.0, total_steps=3, warmup_steps=100) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="total_steps must be >= 1"):
        cosine_schedule(0, 1.0, 0.0, total_steps=0)


def test_teacher_temperature_warmup_is_linear_then_constant():
    assert [warmup_constant_schedule(i, 0.04, 0.07, 4) for i in range(6)] == pytest.approx(
        [0.04, 0.05, 0.06, 0.07, 0.07, 0.07]
    )
    assert warmup_constant_schedule(0, 0.04, 0.04, 30) == 0.04  # SOP: constant


def test_training_arguments__defaults_and_validation(tmp_path):
    args = SOPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    assert args.remove_unused_columns is False and args.ddp_broadcast_buffers is False
    assert (args.weight_decay, args.weight_decay_end, args.clip_grad_per_param, args.max_grad_norm) == (
        0.04,
        0.4,
        3.0,
        0.0,
    )
    assert args.teacher_patch_temp == args.teacher_temp == 0.04
    with pytest.raises(ValueError, match=r"--momentum_teacher must be in \[0, 1\], got 1.5"):
        SOPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, momentum_teacher=1.5)
    with pytest.raises(ValueError, match="--export_encoder must be 'teacher' or 'student'"):
        SOPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, export_encoder="ema")
    with pytest.raises(ValueError, match="Use one gradient clipping"):
        SOPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_grad_norm=1.0)


def test_per_parameter_clip__each_tensor_separately():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.tensor([30.0, 40.0, 0.0]), torch.tensor([0.3, 0.4])
    module = torch.nn.Module()
    module.a, module.b = a, b
    args = type("Args", (), {"clip_grad_per_param": 3.0})()
    PerParameterClipCallback().on_pre_optimizer_step(args, None, None, model=module)
    torch.testing.assert_close(a.grad.norm(), torch.tensor(3.0), atol=1e-5, rtol=0)  # clipped 50 -> 3
    torch.testing.assert_close(b.grad, torch.tensor([0.3, 0.4]))  # norm 0.5 untouched


# --- the trainer on a tiny model ------------------------------------------------------------------------------


def test_trainer__optimizer_groups_lr_scaling_and_ema(tmp_path):
    from sop_hf import SOPConfig, SOPForPreTraining
    from sop_hf.training import SOPTrainer
    from tests.scripts.train_tiny import TINY, IndexSeededImages, collate

    model = SOPForPreTraining(SOPConfig(**TINY))
    args = SOPTrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4,
                                base_learning_rate=0.1, warmup_steps=1, use_cpu=True, report_to=[],
                                save_strategy="no", disable_tqdm=True, momentum_teacher=0.5, logging_steps=1)  # fmt: skip
    trainer = SOPTrainer(model=model, args=args, train_dataset=IndexSeededImages(), data_collator=collate)
    assert trainer.peak_learning_rate == pytest.approx(0.1 * 4 / 256)
    decay = set(trainer.get_decay_parameter_names(model))
    assert "sop.layers.0.mlp.fc1.weight" in decay and "sop.embeddings.position_embeddings" in decay
    assert "sop.layers.0.mlp.fc1.bias" not in decay and "sop.layers.0.norm1.weight" not in decay
    teacher_before = model.teacher.layers[0].mlp.fc1.weight.detach().clone()
    trainer.train()
    optimizer_params = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimizer_params for p in model.teacher_parameters())
    decay_groups = [g for g in trainer.optimizer.param_groups if g.get("sop_weight_decay_schedule")]
    assert len(decay_groups) == 1 and decay_groups[0]["weight_decay"] > 0.04  # cosine 0.04 -> 0.4 moved up
    assert not torch.equal(model.teacher.layers[0].mlp.fc1.weight, teacher_before)  # EMA applied
    assert int(model.step_count) == 3 and int(model.class_memory.ptr) == 12
    logged = [row for row in trainer.state.log_history if "sop_loss" in row]
    assert logged and all(k in logged[0] for k in ("mim_loss", "teacher_momentum", "teacher_temp", "bank_fill"))


def test_resume__killed_run_continues_exactly(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_script(straight, "--max_steps", 6)
    result = run_script(killed, "--max_steps", 6, "--save_steps", 3, "--kill_after_save", 3, check=False)
    assert result.returncode == 17 and (killed / "checkpoint-3").exists() and not (killed / "result.pt").exists()
    run_script(killed, "--max_steps", 6, "--save_steps", 3, "--resume", killed / "checkpoint-3")
    a, b = torch.load(straight / "result.pt"), torch.load(killed / "result.pt")
    assert a["losses"] == b["losses"] and len(a["losses"]) == 6
    assert list(a["state"]) == list(b["state"]) and set(STATE_KEYS) <= set(a["state"])
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key  # student, teacher, both banks, pointers, step count
    checkpoint = load_file(killed / "checkpoint-3" / "model.safetensors")
    assert {"class_memory.rows", "class_memory.ptr", "patch_memory.rows", "step_count"} <= set(checkpoint)


def test_resume__incomplete_checkpoint_skipped_missing_state_named(tmp_path):
    from sop_hf.training.trainer import last_complete_checkpoint, verify_checkpoint

    straight, broken = tmp_path / "straight", tmp_path / "broken"
    run_script(straight, "--max_steps", 6)
    result = run_script(broken, "--max_steps", 6, "--save_steps", 2, "--kill_after_save", 4, check=False)
    assert result.returncode == 17
    assert (broken / "checkpoint-4" / "checkpoint_complete.json").exists() and not (broken / ".staging").exists()
    weights = broken / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a save cut short (disk full)
    assert last_complete_checkpoint(str(broken)) == str(broken / "checkpoint-2")
    with pytest.raises(ValueError, match=r"missing or broken: model.safetensors is unreadable"):
        verify_checkpoint(broken / "checkpoint-4")
    stripped = tmp_path / "stripped"
    shutil.copytree(broken / "checkpoint-2", stripped)
    (stripped / "optimizer.pt").unlink()
    (stripped / "rng_state.pth").unlink()
    with pytest.raises(ValueError, match=r"optimizer.pt \(optimizer state\); rng_state\*.pth \(RNG state\)"):
        verify_checkpoint(stripped)
    result = run_script(broken, "--max_steps", 6, "--save_steps", 2, "--resume", "last")
    assert "skipping incomplete checkpoint" in result.stderr
    a, b = torch.load(straight / "result.pt"), torch.load(broken / "result.pt")
    assert [a["losses"][s] for s in (3, 4, 5, 6)] == [b["losses"][s] for s in (3, 4, 5, 6)]  # continued from step 2
    assert list(a["state"]) == list(b["state"]) and set(STATE_KEYS) <= set(a["state"])
    for key, value in a["state"].items():
        assert torch.equal(value, b["state"][key]), key


def test_sharded_strategies__refused_with_what_works(tmp_path, monkeypatch):
    from sop_hf import SOPConfig, SOPForPreTraining
    from sop_hf.training import SOPTrainer
    from tests.scripts.train_tiny import TINY, IndexSeededImages, collate

    def build(**kwargs):
        args = SOPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], **kwargs)
        return SOPTrainer(model=SOPForPreTraining(SOPConfig(**TINY)), args=args, train_dataset=IndexSeededImages(),
                          data_collator=collate)  # fmt: skip

    with pytest.raises(ValueError, match=r"supports one device and DDP .* FSDP and DeepSpeed are refused"):
        build(fsdp=True)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    with pytest.raises(ValueError, match=r"FSDP and DeepSpeed are refused"):
        build()


def test_small_data__refused_before_compute_naming_both_sizes(tmp_path):
    from sop_hf import SOPConfig, SOPForPreTraining
    from sop_hf.training import SOPTrainer
    from tests.scripts.train_tiny import TINY, IndexSeededImages, collate

    args = SOPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], per_device_train_batch_size=128)
    with pytest.raises(ValueError, match=r"holds 64 images, fewer than one global batch of 128"):
        SOPTrainer(model=SOPForPreTraining(SOPConfig(**TINY)), args=args, train_dataset=IndexSeededImages(),
                   data_collator=collate)  # fmt: skip


def test_gradient_accumulation__every_micro_batch_enqueues(tmp_path):
    run_script(tmp_path, "--max_steps", 2, "--grad_accum", 2, "--batch", 2)
    state = torch.load(tmp_path / "result.pt")["state"]
    assert int(state["step_count"]) == 4 and int(state["class_memory.ptr"]) == 8


def _all_saved_tensors_finite(folder: Path) -> bool:
    checkpoints = list(folder.glob("checkpoint-*"))
    assert checkpoints, f"no checkpoint in {folder}"  # nothing to check must not count as all finite
    for checkpoint in checkpoints:
        tensors = list(load_file(checkpoint / "model.safetensors").values())
        optimizer = torch.load(checkpoint / "optimizer.pt", weights_only=False)
        tensors += [t for state in optimizer["state"].values() for t in state.values() if isinstance(t, torch.Tensor)]
        if not all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
            return False
    return True


def test_non_finite_weights__save_refused_naming_step_checkpoints_intact(tmp_path):
    result = run_script(tmp_path, "--max_steps", 6, "--save_steps", 1, "--nan_at_step", 2, check=False)
    assert result.returncode != 0
    assert "Non-finite values at optimizer step 3 in sop.layernorm.weight" in result.stderr
    assert "checkpoint-3 was not written. The newest good checkpoint is" in result.stderr
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert _all_saved_tensors_finite(tmp_path)


def test_non_finite_gradient_at_finite_loss__skipped_then_stopped_naming_step(tmp_path):
    once = tmp_path / "once"  # one bad step (the last): skipped and counted, the run finishes
    run_script(once, "--max_steps", 4, "--save_steps", 1, "--nan_grad_from_step", 3)
    assert _all_saved_tensors_finite(once) and len(list(once.glob("checkpoint-*"))) == 4
    history = json.loads((once / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    assert [row["nonfinite_steps_skipped"] for row in history if "loss" in row] == [0, 0, 0, 1]
    persistent = tmp_path / "persistent"  # every step from step 2 on is bad: stop after 3 in a row
    result = run_script(persistent, "--max_steps", 8, "--save_steps", 1, "--nan_grad_from_step", 2,
                        "--max_nonfinite_steps", 3, check=False)  # fmt: skip
    assert result.returncode != 0
    assert (
        "3 optimizer steps in a row had a non-finite loss or gradient, the first at optimizer step 2" in result.stderr
    )
    assert _all_saved_tensors_finite(persistent)


def test_two_processes__accelerate_launch_gloo_identical_banks(tmp_path):
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
    run_script(tmp_path, "--max_steps", 3, "--batch", 2, launcher=launcher)
    rank0, rank1 = torch.load(tmp_path / "bank_rank0.pt"), torch.load(tmp_path / "bank_rank1.pt")
    result = torch.load(tmp_path / "result.pt")
    assert result["world_size"] == 2
    assert torch.equal(rank0["rows"], rank1["rows"]) and int(rank0["ptr"]) == int(rank1["ptr"]) == 3 * 2 * 2
    assert sorted(result["losses"]) == [1, 2, 3] and all(math.isfinite(v) for v in result["losses"].values())


# --- the private Trainer methods still overridden (docs/training.md) -------------------------------------------


def test_private_overrides__transformers_signatures_unchanged():
    import inspect

    from transformers import Trainer

    from sop_hf.training import SOPTrainer
    from sop_hf.training.trainer import PRIVATE_ATTRIBUTES, PRIVATE_OVERRIDES

    own_private = sorted(n for n in vars(SOPTrainer) if n.startswith("_") and not n.startswith("__")
                         and hasattr(Trainer, n))  # fmt: skip
    assert own_private == sorted(PRIVATE_OVERRIDES), "list every private Trainer override in PRIVATE_OVERRIDES"
    for name, recorded in PRIVATE_OVERRIDES.items():
        current = tuple(inspect.signature(getattr(Trainer, name)).parameters)
        assert current == recorded, (
            f"transformers changed Trainer.{name}{current} (SOPTrainer overrides it as {name}{recorded} for the "
            "atomic checkpoint; docs/training.md): check what it now does and update SOPTrainer"
        )
    # the staging folder reaches Trainer's saving code through _get_output_dir: it must still be read there
    assert "self._get_output_dir(" in inspect.getsource(Trainer._save_checkpoint)
    source = inspect.getsource(Trainer)
    for name in PRIVATE_ATTRIBUTES:
        assert f"self.{name}" in source, f"transformers no longer reads Trainer.{name}, which SOPTrainer sets"


def test_non_fused_optimizer__bad_step_skipped_through_the_step_hook(tmp_path):
    from transformers import TrainerCallback

    from sop_hf import SOPConfig, SOPForPreTraining
    from sop_hf.training import SOPTrainer
    from tests.scripts.train_tiny import TINY, IndexSeededImages, InjectNaNGradient, collate

    class Snapshot(TrainerCallback):
        def __init__(self):
            self.weights: dict[int, torch.Tensor] = {}

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.weights[state.global_step] = model.sop.layers[0].mlp.fc1.weight.detach().clone()

    torch.manual_seed(0)
    model = SOPForPreTraining(SOPConfig(**TINY))
    args = SOPTrainingArguments(output_dir=str(tmp_path), max_steps=3, per_device_train_batch_size=4, use_cpu=True,
                                optim="adamw_torch", learning_rate=1e-2, warmup_steps=0, report_to=[],
                                save_strategy="no", disable_tqdm=True, logging_steps=1)  # fmt: skip
    snapshot = Snapshot()
    trainer = SOPTrainer(model=model, args=args, train_dataset=IndexSeededImages(), data_collator=collate,
                         callbacks=[InjectNaNGradient(model, 2), snapshot])  # fmt: skip
    trainer.train()
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert not inner.defaults.get("fused")
    assert not torch.equal(snapshot.weights[1], snapshot.weights[2])  # step 2 (finite) moved the weights
    assert torch.equal(snapshot.weights[2], snapshot.weights[3])  # step 3 (NaN gradient) changed nothing
    assert all(int(s["step"]) == 2 for s in inner.state.values())  # nor the optimizer state
    assert trainer.nonfinite_steps_skipped == 1 and all(torch.isfinite(p).all() for p in model.parameters())
