"""Trainer callbacks of SOP pretraining: per-parameter gradient clipping, weight-decay schedule, teacher EMA.

All three read only the optimizer step (``state.global_step``) and ``SOPTrainingArguments``, so a resumed run
applies exactly the same values. ``model`` in callbacks is the unwrapped model (not the DDP wrapper).
"""

import torch
from transformers import TrainerCallback

from .schedules import cosine_schedule

DECAY_GROUP_KEY = "sop_weight_decay_schedule"  # marks optimizer param groups whose weight decay follows the schedule


class PerParameterClipCallback(TrainerCallback):
    """Before each optimizer step, scale each parameter's gradient to norm <= ``args.clip_grad_per_param``.

    g <- g * min(1, c / (||g|| + 1e-6)) per tensor (DINO/SOP), unlike transformers' global ``max_grad_norm``.
    """

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        max_norm = getattr(args, "clip_grad_per_param", 0.0)
        if max_norm <= 0 or model is None:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        if not grads:
            return
        norms = torch._foreach_norm(grads)
        factors = [(max_norm / (n + 1e-6)).clamp(max=1.0) for n in norms]
        torch._foreach_mul_(grads, factors)


class WeightDecayScheduleCallback(TrainerCallback):
    """Cosine weight decay ``weight_decay -> weight_decay_end`` on the decayed group(s), set before each step."""

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if optimizer is None:
            return
        value = cosine_schedule(state.global_step, args.weight_decay, args.weight_decay_end, max(1, state.max_steps))
        for group in optimizer.param_groups:
            if group.get(DECAY_GROUP_KEY, False):
                group["weight_decay"] = value


class TeacherEMACallback(TrainerCallback):
    """After each optimizer step, ``model.update_teacher(m)`` with m cosine from momentum_teacher to the end value."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is None or not hasattr(model, "update_teacher"):
            return
        model.update_teacher(teacher_momentum(args, state.global_step - 1, state.max_steps))


def teacher_momentum(args, step: int, total_steps: int) -> float:
    return cosine_schedule(step, args.momentum_teacher, args.momentum_teacher_end, max(1, total_steps))
