"""LARS: SGD with momentum and a layer-wise trust ratio (You et al., 2017), as CARP's ResNet-50 recipe trains.

For every weight tensor (two or more dimensions) the update ``g + wd * w`` is rescaled by the trust ratio
``eta * ||w|| / ||g + wd * w||`` (1 when either norm is 0) before the momentum buffer; biases and normalisation
weights (one dimension) get plain SGD with momentum and no weight decay, the usual LARS exclusion. Select it with
``--lars true`` (``SOPTrainingArguments``); the Trainer's learning-rate and weight-decay schedules drive it as they
drive AdamW.

>>> import torch
>>> w = torch.nn.Parameter(torch.ones(2, 2)); w.grad = torch.full((2, 2), 0.5)
>>> opt = LARS([w], lr=1.0, momentum=0.0, weight_decay=0.0, trust_coefficient=0.001)
>>> opt.step(); round(float(w.detach()[0, 0]), 6)  # trust ratio 0.001 * 2 / 1 = 0.002: 1 - 0.002 * 0.5
0.999
"""

import torch


class LARS(torch.optim.Optimizer):
    """Args: params; lr; momentum (0.9); weight_decay (CARP: 1e-6); trust_coefficient eta (0.001); eps."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                 trust_coefficient: float = 0.001, eps: float = 1e-8):  # fmt: skip
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay),
                            ("trust_coefficient", trust_coefficient)):  # fmt: skip
            if not 0.0 <= value < float("inf"):
                raise ValueError(f"LARS {name} must be a finite number >= 0, got {value}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        eps=eps)  # fmt: skip
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                update = param.grad
                if param.ndim > 1:  # weights: decay and trust ratio; biases and norms: neither
                    if group["weight_decay"]:
                        update = update.add(param, alpha=group["weight_decay"])
                    param_norm, update_norm = torch.linalg.vector_norm(param), torch.linalg.vector_norm(update)
                    ratio = group["trust_coefficient"] * param_norm / (update_norm + group["eps"])
                    ratio = torch.where((param_norm > 0) & (update_norm > 0), ratio, torch.ones_like(ratio))
                    update = update * ratio
                if group["momentum"]:
                    state = self.state[param]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = update.clone()
                    else:
                        state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                    update = state["momentum_buffer"]
                param.add_(update, alpha=-group["lr"])
        return loss


__all__ = ["LARS"]
