"""The non-finite guard: a step whose loss or gradient is not finite is skipped and counted, without a host sync.

Every micro-batch's loss flag and, before the optimizer step, the gradients' norms are combined into one device bool
per optimizer step. The step is then skipped:

- fused Adam / AdamW / SGD (the ``adamw_torch_fused`` default) read ``optimizer.found_inf`` (the flag GradScaler
  uses) and skip the whole update inside the kernel: no host sync;
- any other optimizer gets a public step pre-hook (``Optimizer.register_step_pre_hook``) that drops every gradient
  of a bad step, so ``step()`` updates no parameter and no optimizer state (one host sync per step).

In data-parallel runs the gradients are all-reduced before the check, so every process takes the same decision.
The counters stay on the device; ``read`` (at logging steps and before each save) copies them to the host and stops
the run after ``max_nonfinite_steps`` bad steps in a row. ``check_finite_state`` refuses to save non-finite tensors.
"""

import torch

from .checkpoints import last_complete_checkpoint


class NonFiniteLossError(RuntimeError):
    """Raised when too many optimizer steps in a row had a non-finite loss or gradient, or when the model holds
    non-finite values at a save (nothing is written then)."""


def takes_found_inf(optimizer) -> bool:
    """Fused Adam/AdamW/SGD read ``optimizer.found_inf`` and skip the update on the device (no host sync)."""
    return bool(getattr(optimizer, "defaults", {}).get("fused")) and type(optimizer).__name__ in (
        "Adam",
        "AdamW",
        "SGD",
    )


class NonFiniteGuard:
    """Per-step non-finite flags and the counters of skipped steps (device tensors until ``read``).

    Args:
        max_nonfinite_steps: bad steps in a row that stop the run (``SOPTrainingArguments.max_nonfinite_steps``).

    >>> guard = NonFiniteGuard(max_nonfinite_steps=3)
    >>> guard.record_loss(torch.tensor(float("nan")))
    >>> guard.check_step([torch.ones(2)], global_step=0, device=torch.device("cpu"))
    >>> guard.read()
    1
    """

    def __init__(self, max_nonfinite_steps: int):
        self.max_nonfinite_steps = max_nonfinite_steps
        self._loss_bad: torch.Tensor | None = None  # a non-finite loss since the last optimizer step
        self._counters: torch.Tensor | None = None  # [skipped total, bad in a row, first bad step of the row]
        self.step_is_bad: torch.Tensor | None = None  # the last checked step (device bool)
        self.skipped = 0  # host copy, updated by read()

    def record_loss(self, loss: torch.Tensor) -> None:
        """Note a micro-batch's loss (no host sync)."""
        bad = ~torch.isfinite(loss.detach())
        self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad

    def check_step(self, grads: list[torch.Tensor], global_step: int, device: torch.device, optimizer=None,
                   sharding=None) -> None:  # fmt: skip
        """Before the optimizer step: flag the step when its loss or any gradient is non-finite.

        Args:
            grads: the gradients about to be applied (after DDP's all-reduce).
            global_step: the optimizer step being taken (named in the stop message).
            device: where the counters live.
            optimizer: the unwrapped optimizer; a fused one receives the flag as ``found_inf``.
            sharding: under FSDP2, the ``Fsdp2Strategy``: ``grads`` are local shards, and its ``any_nonfinite``
                (one all-reduce) gives every rank the same decision.
        """
        bad = torch.zeros((), dtype=torch.bool, device=device)
        if self._loss_bad is not None:
            bad = bad | self._loss_bad.to(device)
        if sharding is not None:  # local shards, one all-reduce: every rank takes the same decision
            bad = bad | sharding.any_nonfinite(grads).to(device)
        elif grads:
            bad = bad | ~torch.isfinite(torch.stack(torch._foreach_norm(grads)).to(device)).all()
        self._loss_bad = None
        counters = self._counters
        if counters is None:
            counters = torch.tensor([0, 0, -1], dtype=torch.long, device=device)
        bad_long = bad.long()
        in_a_row = (counters[1] + 1) * bad_long
        first = torch.where(bad & (counters[1] == 0), torch.full_like(counters[2], global_step), counters[2])
        self._counters = torch.stack([counters[0] + bad_long, in_a_row, first])
        self.step_is_bad = bad
        if optimizer is not None and takes_found_inf(optimizer):
            optimizer.found_inf = bad.float()  # the fused kernel skips the whole update when this is 1

    def skip_bad_steps_of(self, optimizer) -> None:
        """For optimizers without ``found_inf``: drop the gradients of a bad step before ``step()`` (public hook)."""

        def drop_gradients_when_bad(opt, args, kwargs):
            if self.step_is_bad is not None and bool(self.step_is_bad):  # one host sync per step
                for group in opt.param_groups:
                    for param in group["params"]:
                        param.grad = None  # optimizers update neither a parameter nor its state without a gradient

        optimizer.register_step_pre_hook(drop_gradients_when_bad)

    def read(self) -> int:
        """Copy the counters to the host (a sync); raise ``NonFiniteLossError`` after too many bad steps in a row."""
        if self._counters is None:
            return self.skipped
        skipped, in_a_row, first = (int(v) for v in self._counters.tolist())
        self.skipped = skipped
        if in_a_row >= self.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{in_a_row} optimizer steps in a row had a non-finite loss or gradient, the first at optimizer "
                f"step {first}; training stopped. Those updates were skipped and nothing non-finite was saved. "
                "Lower the learning rate, raise --warmup_epochs, or use bf16 instead of fp16."
            )
        return skipped


def nonfinite_tensor_names(model, optimizer=None) -> list[str]:
    """Names of the model's and the optimizer state's floating tensors that hold a NaN or an infinity."""
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if optimizer is not None:
        for group in optimizer.state_dict().get("state", {}).values():
            bad += [f"optimizer state {k}" for k, t in group.items()
                    if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()]  # fmt: skip
    return bad


def check_finite_state(model, optimizer, step: int, output_dir: str, sharding=None) -> None:
    """Raise ``NonFiniteLossError`` (nothing is saved) when the model or optimizer state is not finite, naming the
    tensors, the step and the newest good checkpoint of ``output_dir`` (under FSDP2, ``sharding`` checks every
    rank's shards)."""
    bad = (
        sharding.nonfinite_state(model, optimizer) if sharding is not None else nonfinite_tensor_names(model, optimizer)
    )
    if bad:
        newest_good = last_complete_checkpoint(output_dir)
        raise NonFiniteLossError(
            f"Non-finite values at optimizer step {step} in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: "
            f"checkpoint-{step} was not written. The newest good checkpoint is {newest_good or 'none'}. Lower the "
            "learning rate or raise --warmup_epochs."
        )
