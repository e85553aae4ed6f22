"""A tiny SOP pretraining run on synthetic, index-seeded data, for the trainer tests (resume, 2 processes, NaN).

    python tests/scripts/train_tiny.py OUT_DIR --max_steps 6 [--save_steps 3] [--kill_after_save 3]
        [--resume CHECKPOINT|last|auto] [--grad_accum 2] [--nan_at_step 2]
        [--nan_grad_from_step 2 --max_nonfinite_steps 3] [--monitor 2 [--collapse] [--stop_on_collapse]]
        [--step_delay 0.2] [--export]
    accelerate launch --multi_gpu --num_processes 2 ... tests/scripts/train_tiny.py OUT_DIR --max_steps 4

Writes OUT_DIR/result.pt on the main process: per-step losses, the final state dict, banks and step count; with
--monitor every rank writes its log history (OUT_DIR/log_rank<r>.json) and rank 0 the curves PNG. Every rank writes
its pid (OUT_DIR/pid_rank<r>) at start and its optimizer step after each step (OUT_DIR/step_rank<r>), and after a
preemption the step it stopped at (OUT_DIR/preempted_rank<r>.json) before exiting with status 75. ``--resume auto``
resumes from the newest complete checkpoint when there is one (the same command starts and continues a run);
``--export`` writes the teacher encoder to OUT_DIR/encoder.
"""

import argparse
import json
import os
import sys
import time

import torch
from transformers import TrainerCallback

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from sop_hf import (  # noqa: E402
    SOPConfig,
    SOPForPreTraining,
    SOPImageProcessor,  # noqa: E402
)
from sop_hf.training import (  # noqa: E402
    SOPTrainer,
    SOPTrainingArguments,
    TrainingMonitorCallback,
    TrainingPreempted,  # noqa: E402
    end_process_group,
    plot_training_curves,
)
from sop_hf.training.checkpoints import last_complete_checkpoint  # noqa: E402

TINY = dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            head_hidden_size=32, head_output_size=16, class_memory_size=40, num_anchors=8, num_support=3,
            num_tasks=2, patch_memory_size=24, num_patch_anchors=4, drop_path_rate=0.1)  # fmt: skip


class IndexSeededImages(torch.utils.data.Dataset):
    """Item i is always the same pair of 'crops' and masks (generator seeded by i)."""

    def __len__(self):
        return 64

    def __getitem__(self, index):
        g = torch.Generator().manual_seed(index)
        return {"crops": torch.randn(2, 3, 16, 16, generator=g), "masks": torch.rand(2, 4, generator=g) < 0.4}


def collate(rows):
    crops = torch.stack([r["crops"] for r in rows], dim=1)  # [2, B, 3, 16, 16]
    masks = torch.stack([r["masks"] for r in rows], dim=1)  # [2, B, 4]
    return {"pixel_values": crops.flatten(0, 1), "bool_masked_pos": masks.flatten(0, 1)}


def labelled_images(n: int, seed: int):
    """A datasets.Dataset of 16-px RGB images in two classes: dark or bright templates plus a little noise."""
    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    templates = [np.random.default_rng(c).integers(0, 100, (16, 16, 3)) + 130 * c for c in (0, 1)]
    rows = {"image": [], "label": []}
    for i in range(n):
        label = i % 2
        pixels = np.clip(templates[label] + rng.integers(-10, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
        rows["image"].append(Image.fromarray(pixels))
        rows["label"].append(label)
    return datasets.Dataset.from_dict(rows, features=datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["dark", "bright"])}))  # fmt: skip


class KillAfterSave(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os._exit(17)  # a hard kill: no cleanup, no final save


class InjectNaN(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.sop.layernorm.weight.fill_(float("nan"))


class InjectNaNGradient(TrainerCallback):
    """From optimizer step ``step`` on, one parameter's gradient becomes NaN while the loss stays finite."""

    def __init__(self, model, step):
        self.step, self.active = step, False
        model.sop.layernorm.weight.register_hook(lambda grad: grad * float("nan") if self.active else grad)

    def on_step_begin(self, args, state, control, **kwargs):
        self.active = state.global_step >= self.step


class StepFile(TrainerCallback):
    """Writes the optimizer step after each step (a test polls it), optionally sleeping so a signal lands mid-run."""

    def __init__(self, path, delay):
        self.path, self.delay = path, delay

    def on_step_end(self, args, state, control, **kwargs):
        with open(self.path + ".tmp", "w") as handle:
            handle.write(str(state.global_step))
        os.replace(self.path + ".tmp", self.path)
        if self.delay:
            time.sleep(self.delay)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--max_steps", type=int, default=6)
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--kill_after_save", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--grad_accum", type=int, default=1)
    parser.add_argument("--nan_at_step", type=int, default=-1)
    parser.add_argument("--nan_grad_from_step", type=int, default=-1)
    parser.add_argument("--max_nonfinite_steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--monitor", type=int, default=0, help="TrainingMonitorCallback every N steps")
    parser.add_argument("--collapse", action="store_true", help="collapse the teacher (zero final norm, no EMA)")
    parser.add_argument("--stop_on_collapse", action="store_true")
    parser.add_argument("--step_delay", type=float, default=0.0, help="seconds to sleep after each step")
    parser.add_argument("--preemption_signals", default="SIGTERM,SIGUSR1")
    parser.add_argument("--export", action="store_true", help="write the teacher encoder to OUT_DIR/encoder")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = SOPForPreTraining(SOPConfig(**TINY))
    training_args = SOPTrainingArguments(
        output_dir=args.out_dir, max_steps=args.max_steps, per_device_train_batch_size=args.batch,
        gradient_accumulation_steps=args.grad_accum, base_learning_rate=1e-3, warmup_steps=2, logging_steps=1,
        save_strategy="steps" if args.save_steps else "no", save_steps=args.save_steps or 500, use_cpu=True,
        seed=7, report_to=[], dataloader_num_workers=0, disable_tqdm=True,
        momentum_teacher=1.0 if args.collapse else 0.9, momentum_teacher_end=1.0,
        full_determinism=False, max_nonfinite_steps=args.max_nonfinite_steps,
        preemption_signals=args.preemption_signals,
    )  # fmt: skip
    rank = training_args.process_index
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, f"pid_rank{rank}"), "w") as handle:
        handle.write(str(os.getpid()))
    callbacks = [StepFile(os.path.join(args.out_dir, f"step_rank{rank}"), args.step_delay)]
    if args.kill_after_save:
        callbacks.append(KillAfterSave(args.kill_after_save))
    if args.nan_at_step >= 0:
        callbacks.append(InjectNaN(args.nan_at_step))
    if args.nan_grad_from_step >= 0:
        callbacks.append(InjectNaNGradient(model, args.nan_grad_from_step))
    if args.collapse:
        with torch.no_grad():
            model.teacher.layernorm.weight.zero_()
            model.teacher.layernorm.bias.zero_()
    if args.monitor:
        monitor = TrainingMonitorCallback(labelled_images(16, 1), labelled_images(8, 2), SOPImageProcessor(size=16),
                                          every_n_steps=args.monitor, k=3,
                                          num_prototypes=model.config.num_kept_anchors,
                                          stop_on_collapse=args.stop_on_collapse)  # fmt: skip
        callbacks.append(monitor)
    trainer = SOPTrainer(model=model, args=training_args, train_dataset=IndexSeededImages(), data_collator=collate,
                         callbacks=callbacks)  # fmt: skip
    resume = args.resume
    if resume == "auto":
        resume = True if last_complete_checkpoint(args.out_dir) else None
    try:
        trainer.train(resume_from_checkpoint=True if resume == "last" else resume)
    except TrainingPreempted as stop:
        with open(os.path.join(args.out_dir, f"preempted_rank{rank}.json"), "w") as handle:
            json.dump({"global_step": stop.global_step, "checkpoint": stop.checkpoint, "code": stop.code}, handle)
        raise
    if args.export and trainer.is_world_process_zero():
        model.export_encoder("teacher").save_pretrained(os.path.join(args.out_dir, "encoder"))
    if trainer.is_world_process_zero():
        losses = {row["step"]: row["loss"] for row in trainer.state.log_history if "loss" in row}
        terms = {row["step"]: row.get("sop_loss") for row in trainer.state.log_history if "loss" in row}
        torch.save({"losses": losses, "sop_losses": terms, "state": model.state_dict(),
                    "world_size": training_args.world_size}, os.path.join(args.out_dir, "result.pt"))  # fmt: skip
    if args.monitor:
        with open(os.path.join(args.out_dir, f"log_rank{training_args.process_index}.json"), "w") as handle:
            json.dump({"log_history": trainer.state.log_history, "global_step": trainer.state.global_step}, handle)
        if trainer.is_world_process_zero():
            plot_training_curves(trainer.state.log_history, os.path.join(args.out_dir, "curves.png"))
    # every rank writes its bank so the test can compare ranks
    torch.save(
        model.class_memory.state_dict(), os.path.join(args.out_dir, f"bank_rank{training_args.process_index}.pt")
    )
    trainer.accelerator.end_training()  # tear the process group down before the interpreter exits


if __name__ == "__main__":
    main()
    end_process_group()  # on every process, before the interpreter exits
