"""Pure per-iteration schedules (docs/method.md §11): linear warm-up then cosine, and linear warm-up then constant.

Every scheduled value of SOP (learning rate, weight decay, EMA momentum, teacher temperatures) is a function of the
optimizer step only, so a resumed run recomputes exactly the same values.

>>> round(cosine_schedule(0, base=1.0, final=0.0, total_steps=10, warmup_steps=0), 6)
1.0
>>> round(cosine_schedule(5, base=1.0, final=0.0, total_steps=10, warmup_steps=0), 6)
0.5
"""

import math


def cosine_schedule(
    step: int, base: float, final: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> float:
    """Value at ``step`` of: linear warm-up ``warmup_start -> base`` over ``warmup_steps``, then cosine ``base -> final``.

    Warm-up: ``v_i = warmup_start + (base - warmup_start) * i / (warmup_steps - 1)`` for ``i < warmup_steps``; then with
    ``j = i - warmup_steps``: ``v = final + (base - final) * (1 + cos(pi * j / (total_steps - warmup_steps))) / 2``.
    The warm-up is clamped to the run length (the reference asserts instead); steps past the end return ``final``.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    warmup_steps = max(0, min(int(warmup_steps), total_steps))
    step = max(0, int(step))
    if step < warmup_steps:
        if warmup_steps == 1:
            return base
        return warmup_start + (base - warmup_start) * step / (warmup_steps - 1)
    decay_steps = total_steps - warmup_steps
    if decay_steps <= 0 or step >= total_steps:
        return final if decay_steps > 0 else base
    progress = (step - warmup_steps) / decay_steps
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def warmup_constant_schedule(step: int, start: float, value: float, warmup_steps: int) -> float:
    """Linear ``start -> value`` over ``warmup_steps`` (DINO's teacher-temperature warm-up), then ``value``."""
    if step >= warmup_steps or warmup_steps <= 1:
        return value
    return start + (value - start) * max(0, step) / (warmup_steps - 1)


LR_SCHEDULES = ("cosine", "linear", "constant_with_warmup", "constant")


def lr_multiplier(kind: str, step: int, final: float, total_steps: int, warmup_steps: int) -> float:
    """The learning-rate factor (of the peak) at ``step`` for ``--lr_scheduler_type`` ``kind``.

    ``cosine`` (SOP/DINO): linear warm-up then cosine to ``final``; ``linear``: warm-up then linear to ``final``;
    ``constant_with_warmup``: warm-up then 1; ``constant``: 1 throughout (no warm-up).
    """
    if kind == "cosine":
        return cosine_schedule(step, 1.0, final, total_steps, warmup_steps)
    if kind == "constant":
        return 1.0
    warm = cosine_schedule(step, 1.0, 1.0, total_steps, warmup_steps)  # the warm-up ramp, then 1
    if kind == "constant_with_warmup" or step < min(warmup_steps, total_steps):
        return warm
    if kind == "linear":
        decay = max(1, total_steps - warmup_steps)
        return 1.0 + (final - 1.0) * min(1.0, (step - warmup_steps) / decay)
    raise ValueError(f"--lr_scheduler_type must be one of {LR_SCHEDULES}, got {kind!r}")
