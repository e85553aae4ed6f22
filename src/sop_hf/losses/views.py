"""Cross-view cross-entropy shared by every method: DINO view pairing, float32 maths, the clamped log.

Student views are view-major ``[V*B, .]`` with the global views first; teacher views are the G global views. The maths
runs in float32 with autocast disabled (float64 inputs stay float64) and uses ``-q * log(max(p, LOG_CLAMP))``.
"""

import contextlib
import math
from collections.abc import Sequence

import torch

LOG_CLAMP = 1e-12  # delta in -q * log(max(p, delta)); keeps the loss finite when p underflows.


def math_dtype(tensor: torch.Tensor) -> torch.dtype:
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def no_autocast(tensor: torch.Tensor):
    """Context that disables autocast on the tensor's device (the loss maths must not run in bf16/fp16)."""
    if torch.is_autocast_enabled(tensor.device.type):
        return torch.autocast(device_type=tensor.device.type, enabled=False)
    return contextlib.nullcontext()


def log_clamped(probs: torch.Tensor) -> torch.Tensor:
    return probs.to(math_dtype(probs)).clamp_min(LOG_CLAMP).log()


def view_pairs(num_student_views: int, num_teacher_views: int) -> list[tuple[int, int]]:
    """DINO pairing (docs/method.md §8): every (student view i, teacher view j) with i != j.

    Student views are ordered globals first, so each global view is predicted from the other global view and each
    local view from every global view: 2 + 2n pairs for 2 global and n local views. Shared by SOP, MaSSL and CARP.
    """
    pairs = [(i, j) for i in range(num_student_views) for j in range(num_teacher_views) if i != j]
    if not pairs:
        raise ValueError("view pairing needs a pair (i, j) with i != j: give at least 2 views")
    return pairs


def multi_view_cross_entropy(
    student_probs: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor]
) -> torch.Tensor:
    """DINO-paired cross-entropy: mean over pairs (i, j), i != j, of ``mean_b -sum_c q_j log p_i``.

    Args:
        student_probs: V tensors [B, P], global views first, then local views.
        teacher_probs: the teacher's global views, [B, P] each (treated as constants).

    Returns:
        Scalar loss (float32, or float64 for float64 inputs). With V = 2 + n and 2 teacher views there are 2 + 2n pairs.
    """
    if len(student_probs) == 0 or len(teacher_probs) == 0:
        raise ValueError("multi_view_cross_entropy needs at least one student and one teacher view")
    pairs = view_pairs(len(student_probs), len(teacher_probs))
    with no_autocast(student_probs[0]):
        log_p = torch.stack([log_clamped(p) for p in student_probs])  # [V, B, P]
        dtype = log_p.dtype
        q = torch.stack([t.detach().to(dtype) for t in teacher_probs])  # [Vt, B, P]
        # ce[j, i] = mean_b -sum_c q_j log p_i ; one log per student view, all pairs in one contraction.
        ce = -torch.einsum("jbc,ibc->ji", q, log_p) / log_p.shape[1]  # [Vt, V]
        total = sum(ce[j, i] for i, j in pairs)
    return total / len(pairs)


def mean_assignment_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of the batch-mean assignment, [..., P] -> scalar; ln P means the prototypes are used uniformly."""
    mean = probs.detach().reshape(-1, probs.shape[-1]).mean(0)
    return -(mean * mean.clamp_min(LOG_CLAMP).log()).sum()


def uniform_loss_value(num_prototypes: int) -> float:
    """ln P: the loss (and assignment entropy) of a degenerate memory; a collapse reference for monitors."""
    return math.log(num_prototypes)
