"""iBOT's masked-patch loss (arXiv 2111.07832, Eq. 2; docs/methods/ibot.md): for every masked patch of a student
global crop, the cross-entropy against the teacher's centred, sharpened distribution of the same patch of the same
(unmasked) crop. The [CLS] part of iBOT is DINO's loss (``losses/dino.py``); the patch centre uses
``losses.dino.updated_center`` on the patch tokens.

Per crop, iBOT averages the patch cross-entropy over that crop's masked patches (a crop without a masked patch counts
0), then over the batch, then over the global views. Reference: bytedance/ibot ``main_ibot.py`` (``iBOTLoss``).

>>> import torch
>>> mask = torch.zeros(4, 3, dtype=torch.bool); mask[:, 0] = True
>>> q = torch.full((4, 3, 8), 1 / 8)
>>> loss = masked_patch_loss(torch.zeros(4, 3, 8), q, mask, 0.1)
>>> bool(torch.isclose(loss, torch.log(torch.tensor(8.0))))
True
"""

import torch

from .views import math_dtype, no_autocast


def masked_patch_loss(
    student_patch_logits: torch.Tensor,
    teacher_patch_probs: torch.Tensor,
    bool_masked_pos: torch.Tensor,
    student_temp: float,
) -> torch.Tensor:
    """Mean over crops of ``sum_{l masked} -sum_k q_l log softmax(s_l / tau_s) / max(1, #masked)``.

    Args:
        student_patch_logits: [N, L, K] prototype logits of the student's patch tokens (N = global views x B).
        teacher_patch_probs: [N, L, K] teacher targets of the same crops' patches (``centered_teacher_probs``).
        bool_masked_pos: [N, L] True where the student saw the mask token.
        student_temp: tau_s (0.1).

    Returns:
        Scalar (float32; float64 for float64 inputs). Equal to iBOT's patch term averaged over its global views when
        every view holds the same B.
    """
    if not 0 < student_temp < float("inf"):
        raise ValueError(f"student_temp must be a finite number > 0, got {student_temp}")
    shapes_agree = bool_masked_pos.shape == student_patch_logits.shape[:2]
    if student_patch_logits.shape != teacher_patch_probs.shape or not shapes_agree:
        raise ValueError(f"student logits {tuple(student_patch_logits.shape)}, teacher probs "
                         f"{tuple(teacher_patch_probs.shape)} and masks {tuple(bool_masked_pos.shape)} must agree "
                         f"as [N, L, K], [N, L, K], [N, L]")  # fmt: skip
    with no_autocast(student_patch_logits):
        dtype = math_dtype(student_patch_logits)
        log_p = (student_patch_logits.to(dtype) / student_temp).log_softmax(-1)  # [N, L, K]
        ce = -(teacher_patch_probs.detach().to(dtype) * log_p).sum(-1)  # [N, L]
        mask = bool_masked_pos.to(dtype)
        per_crop = (ce * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)  # [N]
        return per_crop.mean()


def masked_rows_patch_loss(
    student_rows: torch.Tensor, teacher_rows: torch.Tensor, bool_masked_pos: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """``masked_patch_loss`` from the masked patches' rows only: [M, K] student logits and teacher targets, in the
    order of ``bool_masked_pos.nonzero()`` ([N, L] masks, M = masks.sum()). Same value, without the unmasked rows'
    work (the student head then maps only the masked tokens)."""
    if not 0 < student_temp < float("inf"):
        raise ValueError(f"student_temp must be a finite number > 0, got {student_temp}")
    num_masked = int(bool_masked_pos.sum()) if student_rows.shape[0] else 0
    if student_rows.shape != teacher_rows.shape or student_rows.shape[0] != num_masked:
        raise ValueError(f"student rows {tuple(student_rows.shape)} and teacher rows {tuple(teacher_rows.shape)} must "
                         f"both be [M, K] with M = {num_masked} masked patches")  # fmt: skip
    with no_autocast(student_rows):
        dtype = math_dtype(student_rows)
        log_p = (student_rows.to(dtype) / student_temp).log_softmax(-1)  # [M, K]
        ce = -(teacher_rows.detach().to(dtype) * log_p).sum(-1)  # [M]
        counts = bool_masked_pos.sum(-1).to(dtype).clamp_min(1.0)  # [N]
        crop = bool_masked_pos.nonzero()[:, 0]  # [M]: the crop of each masked row
        return (ce / counts[crop]).sum() / bool_masked_pos.shape[0]


__all__ = ["masked_patch_loss", "masked_rows_patch_loss"]
