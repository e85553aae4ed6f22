"""FSDP2 (sop_hf.training.fsdp2): real ``fully_shard`` over 2 gloo processes against DDP, resume, reshard, export;
the functions' single-process behaviour; the sharded checkpoint check; the trainer's refusals on CPU."""

import json
import os
import sys
from pathlib import Path

import pytest
import torch

from sop_hf import SOPConfig, SOPForPreTraining
from sop_hf.training import SOPTrainingArguments
from sop_hf.training.callbacks import PerParameterClipCallback
from sop_hf.training.fsdp2 import (
    SHARDED_DIR,
    clip_grad_per_param_,
    encoder_states,
    sharded_checkpoint_problems,
    update_teacher_sharded,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
TINY = dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            head_hidden_size=32, head_output_size=16, class_memory_size=40, num_anchors=8, num_support=3,
            num_tasks=2, patch_memory_size=24, num_patch_anchors=4)  # fmt: skip


def test_parity_harness__fsdp2_matches_ddp_resumes_exactly_reshards_and_exports(tmp_path):
    import fsdp2_parity

    result = fsdp2_parity.run_parity(steps=4, resume_at=2, world=2, work_dir=str(tmp_path))
    assert result["max_abs_loss_diff_vs_ddp"] <= 1e-3, result["max_abs_loss_diff_vs_ddp"]
    assert result["resume_max_abs_diff"] <= 1e-6, result["resume_max_abs_diff"]
    assert result["reshard_world_size"] == 1 and result["reshard_load_max_abs_diff"] == 0.0
    assert result["reshard_optimizer_moments_loaded"] > 0
    assert result["export_loads_with_automodel"] and result["export_class"] == "SOPModel"
    assert result["export_max_abs_diff"] == 0.0
    assert len(result["ddp_losses"]) == 4 and len(result["resumed_losses"]) == 2
    checkpoint = tmp_path / "checkpoint-2"
    assert sharded_checkpoint_problems(str(checkpoint)) == [] and not (tmp_path / ".staging").exists()
    record = json.loads((checkpoint / "checkpoint_complete.json").read_text())
    assert record["sharded"] and record["world_size"] == 2 and record["global_step"] == 2
    assert {f"{SHARDED_DIR}/__0_0.distcp", f"{SHARDED_DIR}/__1_0.distcp", "extra_state_1.pt"} <= set(record["files"])
    shard = checkpoint / SHARDED_DIR / "__1_0.distcp"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # a save cut short
    problems = sharded_checkpoint_problems(str(checkpoint))
    assert problems[0].startswith(f"{SHARDED_DIR}/__1_0.distcp (cut short: ")
    assert problems[1:] == [f"{SHARDED_DIR}/__1_0.distcp (missing or of another size than written)"]
    from sop_hf.training.checkpoints import checkpoint_problems  # what SOPTrainer's resume checks

    assert any(p.startswith(f"{SHARDED_DIR}/__1_0.distcp (cut short: ") for p in checkpoint_problems(str(checkpoint)))
    shard.unlink()
    assert sharded_checkpoint_problems(str(checkpoint))[0] == f"{SHARDED_DIR}/__1_0.distcp (a shard)"


def test_sharded_checkpoint_problems__an_unfinished_save_is_named(tmp_path):
    assert sharded_checkpoint_problems(str(tmp_path / "checkpoint-3")) == [
        f"{SHARDED_DIR}/.metadata (sharded model and optimizer state)",
        "checkpoint_complete.json (the save did not finish)",
    ]


def test_clip_grad_per_param__plain_tensors_match_the_ddp_callback():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(5, 3)) for _ in range(4)]
    for p, scale in zip(params, (0.01, 0.5, 2.0, 10.0)):
        p.grad = torch.randn_like(p) * scale
    expected = [p.grad.clone() for p in params]
    reference = [torch.nn.Parameter(p.detach().clone()) for p in params]
    for r, g in zip(reference, expected):
        r.grad = g

    class Args:
        clip_grad_per_param = 1.0

    PerParameterClipCallback().on_pre_optimizer_step(Args(), None, None, model=torch.nn.ParameterList(reference))
    norms = clip_grad_per_param_(params, max_norm=1.0)
    for p, r in zip(params, reference):
        assert torch.allclose(p.grad, r.grad, atol=1e-7)
    assert float(norms[3]) > 1.0 and float(params[3].grad.norm()) == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match=r"max_norm must be > 0, got 0.0"):
        clip_grad_per_param_(params, max_norm=0.0)


def test_update_teacher_sharded__unsharded_model_equals_update_teacher():
    a, b = SOPForPreTraining(SOPConfig(**TINY)), SOPForPreTraining(SOPConfig(**TINY))
    b.load_state_dict(a.state_dict())
    with torch.no_grad():
        for model in (a, b):
            for p in model.sop.parameters():
                p.add_(1.0)
    a.update_teacher(0.9)
    update_teacher_sharded(b, 0.9)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        update_teacher_sharded(b, 1.5)


def test_encoder_states__export_encoder_reads_gathered_full_weights():
    model = SOPForPreTraining(SOPConfig(**TINY))
    full = {k: v.clone() for k, v in model.state_dict().items()}
    full["teacher.layernorm.weight"] = torch.full_like(full["teacher.layernorm.weight"], 7.0)
    states = encoder_states(model, full)
    assert not any(k.endswith("mask_token") for k in states["student"]) and "layernorm.weight" in states["teacher"]
    model.__dict__["gathered_encoder_states"] = states  # what Fsdp2Strategy.refresh_export leaves on rank 0
    encoder = model.export_encoder("teacher")
    assert torch.equal(encoder.layernorm.weight, torch.full_like(encoder.layernorm.weight, 7.0))


def test_trainer__fsdp_on_cpu_refused_saying_why(tmp_path, monkeypatch):
    from sop_hf.training import SOPTrainer
    from tests.scripts.train_tiny import IndexSeededImages, collate

    def build(**kwargs):
        args = SOPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], **kwargs)
        return SOPTrainer(model=SOPForPreTraining(SOPConfig(**TINY)), args=args, train_dataset=IndexSeededImages(),
                          data_collator=collate)  # fmt: skip

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp --fsdp_version 2` sets
    monkeypatch.setenv("FSDP_VERSION", "2")
    with pytest.raises(
        ValueError,
        match=r"On CPU, FSDP and DeepSpeed are refused: accelerate enables FSDP only on "
        r"accelerators, so with --use_fsdp on CPU every process would train alone",
    ):
        build()
    monkeypatch.setenv("FSDP_VERSION", "1")
    with pytest.raises(ValueError, match=r"FSDP version 1 and DeepSpeed are refused everywhere"):
        build()


@pytest.mark.slow
def test_memory__fsdp2_halves_the_per_process_state_of_a_vit_b_pair(tmp_path):
    import fsdp2_parity

    result = fsdp2_parity.run_memory(world=2, work_dir=str(tmp_path))
    assert result["memory_parameters"] > 180_000_000
    assert 0.49 < result["state_bytes_ratio_vs_ddp"] < 0.52 and result["peak_memory_ratio_vs_ddp"] < 0.6


def test_harness_cli__refuses_a_resume_step_outside_the_run():
    import fsdp2_parity

    with pytest.raises(ValueError, match=r"--resume_at must be in \(0, --steps=4\), got 4"):
        fsdp2_parity.main(["--steps", "4", "--resume_at", "4"])
    assert os.path.exists(REPO / "benchmarks" / "fsdp2_parity.py")


@pytest.mark.slow
def test_trainer_fsdp2_path__emulated_on_cpu_matches_ddp_and_resumes_exactly(tmp_path):
    """SOPTrainer under accelerate's FSDP2 state on 2 gloo processes (tests/scripts/train_fsdp2_cpu.py lifts only
    the CPU guard): accelerate's prepare of the pre-sharded model, DCP checkpoints through the Trainer, the export."""
    import shutil
    import subprocess

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "tests/scripts/train_fsdp2_cpu.py"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(out, *flags):
        result = subprocess.run(launch + [str(out), "--max_steps", "4", "--save_steps", "2", *flags], cwd=REPO,
                                capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
        assert result.returncode == 0, result.stderr[-4000:]
        return torch.load(out / "result.pt")

    straight = run(tmp_path / "fsdp2")
    ddp = run(tmp_path / "ddp", "--ddp")
    assert straight["sharded"] and not ddp["sharded"]
    checkpoint = tmp_path / "fsdp2" / "checkpoint-2"
    assert (checkpoint / SHARDED_DIR / ".metadata").exists() and not (checkpoint / "optimizer.pt").exists()
    (tmp_path / "resumed").mkdir()
    shutil.copytree(checkpoint, tmp_path / "resumed" / "checkpoint-2")
    resumed = run(tmp_path / "resumed", "--resume", "last")
    assert list(straight["losses"]) == [1, 2, 3, 4]
    for step, loss in straight["losses"].items():
        assert loss == pytest.approx(ddp["losses"][step], abs=1e-5) and loss == resumed["losses"][step]
    for key, value in straight["teacher"].items():
        assert torch.allclose(value, ddp["teacher"][key], atol=1e-5) and torch.equal(value, resumed["teacher"][key])
