"""DINO's loss (arXiv 2104.14294, Algorithm 1; docs/methods/dino.md): a centred, sharpened teacher distribution over
K prototype logits, matched by the student's softmax across views (multi-crop cross-entropy).

- ``centered_teacher_probs``: softmax((t - c) / tau_t), the teacher's targets; centring keeps one prototype from
  dominating, a low tau_t (sharpening) keeps the targets from becoming uniform;
- ``dino_cross_entropy``: mean over (student view i, teacher view j), i != j, of
  mean_b -sum_k q_j log softmax(s_i / tau_s);
- ``updated_center``: the centre EMA c <- m c + (1 - m) mean(t), the batch mean taken over every process (an
  ``all_reduce`` that is a no-op without a process group).

Temperatures and momentum arrive as arguments (the training loop schedules them). Float32 maths, autocast off.
Reference: facebookresearch/dino ``main_dino.py`` (``DINOLoss``, ``update_center``).

>>> import torch
>>> teacher = centered_teacher_probs(torch.zeros(4, 8), torch.zeros(1, 8), 0.04)
>>> loss = dino_cross_entropy(torch.zeros(4, 8), teacher, 0.1, 2)
>>> bool(torch.isclose(loss, torch.log(torch.tensor(8.0))))
True
"""

import torch
import torch.distributed as dist

from ..modules.distributed import get_world_size, is_distributed
from .views import math_dtype, no_autocast, view_pairs


def _check_temperature(name: str, value: float) -> None:
    if not 0 < value < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value}")


def centered_teacher_probs(teacher_logits: torch.Tensor, center: torch.Tensor, teacher_temp: float) -> torch.Tensor:
    """softmax((t - c) / teacher_temp) over the last dim, no gradient: [..., K] logits, [1, K] centre -> [..., K]."""
    _check_temperature("teacher_temp", teacher_temp)
    with no_autocast(teacher_logits), torch.no_grad():
        dtype = math_dtype(teacher_logits)
        return ((teacher_logits.detach().to(dtype) - center.to(dtype)) / teacher_temp).softmax(-1)


def dino_cross_entropy(
    student_logits: torch.Tensor, teacher_probs: torch.Tensor, student_temp: float, num_teacher_views: int = 2
) -> torch.Tensor:
    """Multi-crop cross-entropy: mean over view pairs (i, j), i != j, of ``mean_b -sum_k q_j log softmax(s_i / tau_s)``.

    Args:
        student_logits: [V*B, K] prototype logits of every student view, view-major (global views first).
        teacher_probs: [G*B, K] teacher targets of the G global views (``centered_teacher_probs``), constants.
        student_temp: tau_s (DINO: 0.1).
        num_teacher_views: G, the global views the teacher saw (2).

    Returns:
        Scalar (float32; float64 for float64 inputs). 2 + 2n pairs for 2 global and n local views.
    """
    _check_temperature("student_temp", student_temp)
    if teacher_probs.shape[0] % num_teacher_views or student_logits.shape[-1] != teacher_probs.shape[-1]:
        raise ValueError(f"teacher_probs [{tuple(teacher_probs.shape)}] must hold {num_teacher_views} views of the "
                         f"student's {student_logits.shape[-1]} prototypes")  # fmt: skip
    batch = teacher_probs.shape[0] // num_teacher_views
    if student_logits.shape[0] % batch:
        raise ValueError(f"student_logits rows ({student_logits.shape[0]}) must be a multiple of B={batch}")
    pairs = view_pairs(student_logits.shape[0] // batch, num_teacher_views)
    with no_autocast(student_logits):
        dtype = math_dtype(student_logits)
        log_p = (student_logits.to(dtype) / student_temp).log_softmax(-1).unflatten(0, (-1, batch))  # [V, B, K]
        q = teacher_probs.detach().to(dtype).unflatten(0, (num_teacher_views, batch))  # [G, B, K]
        ce = -torch.einsum("jbk,ibk->ji", q, log_p) / batch  # [G, V]: ce[j, i] = mean_b -sum_k q_j log p_i
        return sum(ce[j, i] for i, j in pairs) / len(pairs)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float) -> torch.Tensor:
    """The next centre ``m * c + (1 - m) * mean(t)``: [1, K] centre, [N, K] teacher logits of this process.

    The mean is over all N rows of every process (sum all-reduced, divided by N * world size): every process holds
    the same centre afterwards. DINO: momentum 0.9. Raises ``ValueError`` for a momentum outside [0, 1].
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"center momentum must be in [0, 1], got {momentum}")
    rows = teacher_logits.detach().float().reshape(-1, teacher_logits.shape[-1])  # [N, K]
    total = rows.sum(0, keepdim=True)  # [1, K]
    if is_distributed():
        dist.all_reduce(total)
    mean = total / (rows.shape[0] * get_world_size())
    return center * momentum + mean.to(center.dtype) * (1 - momentum)


__all__ = ["centered_teacher_probs", "dino_cross_entropy", "updated_center"]
