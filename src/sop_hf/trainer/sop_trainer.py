"""SOPTrainer: transformers' ``Trainer`` for SOP pretraining (the library's one training loop).

What it adds to ``Trainer``: the scheduled temperatures passed to ``SOPForPreTraining.forward``; AdamW param groups
with weight decay on >= 2-D non-bias tensors only (cosine-scheduled); DINO's learning rate (peak scaled by global
batch / 256, linear warm-up, cosine to ``min_lr``); per-parameter clipping; the teacher EMA after every optimizer
step; a hard stop on a non-finite loss that names the step and the loss terms (before any optimizer step or
checkpoint, so the last good checkpoint stays intact); and logs of ``sop_loss``, ``mim_loss``, momentum, teacher
temperature and bank fill. Launch it with ``accelerate launch`` (see ``examples/pretrain_sop.py``).

Gradient accumulation: every micro-batch runs its own forward, so every micro-batch enqueues its own keys and draws
its own anchors; with ``gradient_accumulation_steps=a`` the bank spans ``K / (a * global micro-batch)`` optimizer
steps, and the loss of micro-batch i already sees the keys of micro-batches < i of the same step.
"""

from collections import defaultdict

import torch
from transformers import Trainer

from .arguments import SOPTrainingArguments
from .callbacks import (
    DECAY_GROUP_KEY,
    PerParameterClipCallback,
    TeacherEMACallback,
    WeightDecayScheduleCallback,
    teacher_momentum,
)
from .schedules import cosine_schedule, warmup_constant_schedule

LOGGED_TERMS = ("sop_loss", "mim_loss", "koleo_loss", "teacher_entropy")


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss is NaN or infinite; training stops before the optimizer step."""


class SOPTrainer(Trainer):
    """``Trainer`` with SOP's schedules and teacher EMA. ``model`` is an ``SOPForPreTraining`` (or a lineage model
    with the same forward arguments and ``update_teacher``)."""

    def __init__(self, model=None, args: SOPTrainingArguments | None = None, **kwargs):
        if args is None or not isinstance(args, SOPTrainingArguments):
            raise ValueError("SOPTrainer needs SOPTrainingArguments (they carry the EMA and temperature schedules)")
        super().__init__(model=model, args=args, **kwargs)
        for callback in (PerParameterClipCallback(), WeightDecayScheduleCallback(), TeacherEMACallback()):
            self.add_callback(callback)
        # Every rank draws the same anchors without communication: seed them with the run's seed.
        self.model.anchor_seed = args.seed
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_counts: dict[str, int] = defaultdict(int)

    # --- optimisation ---------------------------------------------------------------------------------------
    @property
    def global_batch_size(self) -> int:
        args = self.args
        return args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps

    @property
    def peak_learning_rate(self) -> float:
        scale = self.global_batch_size / 256 if self.args.scale_lr_with_batch_size else 1.0
        return self.args.learning_rate * scale

    def get_decay_parameter_names(self, model) -> list[str]:
        """Weight decay on tensors with >= 2 dims that are not biases (METHOD.md section 11)."""
        return [n for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith(".bias")]

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        decay_names = set(self.get_decay_parameter_names(self.model))
        decay_params = {id(p) for n, p in self.model.named_parameters() if n in decay_names}
        for group in optimizer.param_groups:
            group["lr"] = self.peak_learning_rate
            group[DECAY_GROUP_KEY] = bool(group["params"]) and id(group["params"][0]) in decay_params
        return optimizer

    def warmup_steps_for(self, num_training_steps: int) -> int:
        if self.args.warmup_steps and self.args.warmup_steps > 0:
            return self.args.get_warmup_steps(num_training_steps)
        return int(round(self.args.warmup_epochs * self.steps_per_epoch(num_training_steps)))

    def steps_per_epoch(self, num_training_steps: int) -> float:
        epochs = self.state.num_train_epochs if self.state.num_train_epochs else self.args.num_train_epochs
        return num_training_steps / max(epochs, 1e-8)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            peak = self.peak_learning_rate
            warmup = self.warmup_steps_for(num_training_steps)
            final = self.args.min_lr / peak if peak > 0 else 0.0

            def multiplier(step: int) -> float:
                return cosine_schedule(step, 1.0, final, num_training_steps, warmup)

            for group in optimizer.param_groups:
                group["lr"] = peak
                group["initial_lr"] = peak
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # --- schedules passed to the model ---------------------------------------------------------------------
    def temperatures(self, step: int) -> dict[str, float]:
        args = self.args
        total = max(1, self.state.max_steps)
        warmup = int(round(args.warmup_teacher_temp_epochs * self.steps_per_epoch(total)))
        return {
            "student_temp": args.student_temp,
            "teacher_temp": warmup_constant_schedule(step, args.warmup_teacher_temp, args.teacher_temp, warmup),
            "teacher_patch_temp": warmup_constant_schedule(
                step, args.warmup_teacher_patch_temp, args.teacher_patch_temp, warmup
            ),
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs, **self.temperatures(self.state.global_step), return_loss=True)
        loss = outputs.loss
        if model.training:
            if not torch.isfinite(loss):
                terms = {k: (None if outputs.get(k) is None else float(outputs[k])) for k in LOGGED_TERMS}
                raise NonFiniteLossError(
                    f"Non-finite training loss {float(loss)} at optimizer step {self.state.global_step} "
                    f"(terms: {terms}). Training stopped before the optimizer step; the last saved checkpoint is "
                    "intact. Lower the learning rate, raise --warmup_epochs, or use bf16 instead of fp16."
                )
            for key in LOGGED_TERMS:
                value = outputs.get(key)
                if value is not None:
                    value = value.detach().float()
                    self._term_sums[key] = self._term_sums[key] + value if key in self._term_sums else value
                    self._term_counts[key] += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for callback in self.callback_handler.callbacks:  # e.g. TrainingMonitorCallback's k-NN / collapse metrics
            if hasattr(callback, "pop_logs"):
                logs.update(callback.pop_logs())
        if "loss" in logs and self._term_sums:
            for key, total in self._term_sums.items():
                mean = total / self._term_counts[key]
                logs[key] = round(float(self.accelerator.reduce(mean, reduction="mean")), 6)
            self._term_sums, self._term_counts = {}, defaultdict(int)
            step = max(0, self.state.global_step - 1)
            logs["teacher_momentum"] = round(teacher_momentum(self.args, step, self.state.max_steps), 6)
            logs["teacher_temp"] = self.temperatures(step)["teacher_temp"]
            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "class_memory"):
                written = int(model.step_count) * self.args.per_device_train_batch_size * self.args.world_size
                logs["bank_fill"] = round(min(1.0, written / model.class_memory.size), 4)
        super().log(logs, start_time)


def lr_at(step: int, peak: float, min_lr: float, total: int, warmup: int) -> float:
    """The learning rate SOPTrainer applies at ``step`` (for docs and tests)."""
    return peak * cosine_schedule(step, 1.0, min_lr / peak if peak else 0.0, total, warmup)


__all__ = ["SOPTrainer", "NonFiniteLossError", "lr_at"]
