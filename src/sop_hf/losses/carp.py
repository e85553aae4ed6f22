"""CARP (NeurIPS 2023, arXiv 2310.12692; docs/method.md §14) and CARL (SAC 2022, arXiv 2112.15421; §15) losses on
prototype logits: consistency of two views' assignments inside random blocks of learnable prototypes, plus a uniform
prior on each block's mean assignment. CARL is the single-block case, so the two stay one implementation.

Reference: github.com/sthalles/carp (modules/carp_loss.py); CARL has no public code (its form is inferred from CARP).
Logits come from ``modules.prototypes.WeightNormalizedPrototypes`` on the un-normalised head output (no temperature).

>>> import torch
>>> from sop_hf.losses.partition import random_partition
>>> partition = random_partition(64, 16, generator=torch.Generator().manual_seed(0))
>>> out = carp_loss(torch.randn(6, 64), torch.randn(4, 64), partition)  # 3 student views, 2 teacher views, B = 2
>>> bool(out.loss == out.consistency + out.uniformity)
True
"""

import math
from dataclasses import dataclass

import torch

from ..modules.distributed import all_gather_with_grad
from .partition import check_partition, views_batch_size
from .views import math_dtype, no_autocast, view_pairs

CARP_EPS = torch.finfo(torch.float32).eps  # eps_32 = 1.19e-7: CARP's clip of <P, Q> and of p-bar, for every dtype.


@dataclass
class CARPLossOutput:
    """CARP / CARL loss terms (scalars).

    Attributes:
        loss: consistency + weight * uniformity (weight 1 for CARP).
        consistency: L_c, the clipped -log <P, Q> averaged over view pairs, blocks and rows.
        uniformity: L_e, the mean over blocks of KL(p-bar_k || uniform), unweighted.
    """

    loss: torch.Tensor
    consistency: torch.Tensor
    uniformity: torch.Tensor


def _block_log_probs(logits: torch.Tensor, partition: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    """[N, K] logits -> [N, N_P, N_B] per-block log-softmax; ``partition=None`` is one block of all K columns."""
    logits = logits.to(dtype)
    if partition is None:
        blocks = logits[:, None, :]  # [N, 1, K], no copy
    else:
        blocks = logits[:, partition.to(logits.device)]  # [N, N_P, N_B]
    return blocks.log_softmax(-1)


def _prepare_carp(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    partition: torch.Tensor | None,
    num_global_views: int,
) -> int:
    """Validates shapes; returns B."""
    if student_logits.ndim != 2 or teacher_logits.ndim != 2 or student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(
            f"student and teacher logits must be [V*B, K] and [G*B, K] with the same K, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if partition is not None:
        check_partition(partition, student_logits.shape[1])
    return views_batch_size(student_logits.shape[0], teacher_logits.shape[0], num_global_views)


def _consistency(
    log_p: torch.Tensor, log_q: torch.Tensor, batch: int, num_global_views: int, eps: float, straight_through: bool
) -> torch.Tensor:
    """L_c from [V*B, N_P, N_B] student and [G*B, N_P, N_B] teacher block log-probabilities."""
    floor, ceil = math.log(eps), math.log1p(-eps)
    student_views, teacher_views = log_p.split(batch), log_q.split(batch)
    pairs = view_pairs(len(student_views), num_global_views)
    total = log_p.new_zeros(())
    for i, j in pairs:
        log_inner = torch.logsumexp(student_views[i] + teacher_views[j], dim=-1)  # [B, N_P], log <P, Q>
        clipped = log_inner.clamp(floor, ceil)
        if straight_through:
            # Value of the clipped log; gradient of the unclipped one, so rows with <P, Q> < eps still learn.
            clipped = log_inner + (clipped - log_inner).detach()
        total = total - clipped.mean()
    return total / len(pairs)


def _uniformity(prob_sum: torch.Tensor, num_rows: int, eps: float) -> torch.Tensor:
    """L_e from this rank's [N_P, N_B] sum of block probabilities over its ``num_rows`` rows (all ranks pooled)."""
    count = prob_sum.new_full((1,), float(num_rows))
    pooled = all_gather_with_grad(torch.cat((prob_sum.flatten(), count))[None]).sum(0)  # [N_P*N_B + 1] over ranks
    p_bar = pooled[:-1].view_as(prob_sum) / pooled[-1]  # [N_P, N_B]
    kl = math.log(prob_sum.shape[-1]) + (p_bar * p_bar.clamp(eps, 1.0 - eps).log()).sum(-1)  # [N_P]
    return kl.mean()


def carp_consistency_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    partition: torch.Tensor | None,
    num_global_views: int = 2,
    eps: float = CARP_EPS,
    straight_through_clip: bool = True,
) -> torch.Tensor:
    """CARP consistency L_c (arXiv 2310.12692; docs/method.md §14).

    With P_i[k, n] = softmax(S_i[n, I_k]) and Q_j[k, n] = softmax(T_j[n, I_k]) over the columns I_k of block k,

        L_c = 1/|Pi| sum_{(i,j) in Pi} mean_{k,n} -log clip(<P_i[k,n], Q_j[k,n]>, eps, 1 - eps).

    The inner product is taken in log space, log <p, q> = logsumexp(log p + log q), so it never underflows to 0 and
    the clip acts on log <p, q> in [log eps, log(1 - eps)]. Clip convention (library decision): with
    ``straight_through_clip`` (default) the clip sets the value only and the gradient is that of the unclipped
    -log <p, q>, so a row whose student and teacher disagree completely (<p, q> < eps) still pulls the student
    towards the teacher; the reference's clamp gives such rows (and rows above 1 - eps) zero gradient, which
    ``straight_through_clip=False`` reproduces. Values are identical either way.

    Args:
        student_logits: [V*B, K] view-major student prototype logits (no temperature: ||z|| acts as one).
        teacher_logits: [G*B, K] teacher logits of the global views (constants).
        partition: [N_P, N_B] long blocks shared by every view, student and teacher; None is one block of all K.
        num_global_views: G (2).
        eps: The clip (eps_32 = 1.19e-7, whatever the dtype, as in the reference's float32 maths).
        straight_through_clip: See above.

    Returns:
        Scalar, float32 (float64 for float64 student logits); ln N_B for a uniform teacher, -ln eps = 15.942385 for
        disagreeing one-hots.
    """
    batch = _prepare_carp(student_logits, teacher_logits, partition, num_global_views)
    with no_autocast(student_logits):
        dtype = math_dtype(student_logits)
        log_p = _block_log_probs(student_logits, partition, dtype)  # [V*B, N_P, N_B]
        with torch.no_grad():
            log_q = _block_log_probs(teacher_logits.detach(), partition, dtype)  # [G*B, N_P, N_B]
        return _consistency(log_p, log_q, batch, num_global_views, eps, straight_through_clip)


def carp_uniformity_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    partition: torch.Tensor | None,
    eps: float = CARP_EPS,
) -> torch.Tensor:
    """CARP uniform prior L_e = mean_k [ln N_B + sum_c p-bar_kc ln clip(p-bar_kc, eps, 1 - eps)] (docs/method.md §14).

    p-bar_k averages the block-k softmax over every student row and every teacher row of every rank. Only the
    per-rank sums [N_P, N_B] (and the row count) are all-gathered, through ``modules.distributed.all_gather_with_grad``, so the
    traffic is K floats per rank rather than the rows.

    Distributed convention: every rank returns the same value, equal to the one-process L_e on all W ranks' rows
    pooled. Its gradient on this rank's rows is W times the one-process gradient (the gather's backward sums the W
    ranks' identical gradients), which DDP's averaging over W ranks divides back out; so no rescaling is needed and
    the averaged parameter gradient equals the one-process gradient, just as for the per-rank mean of L_c. Ranks
    may hold different row counts. With a process group the gather is a collective: every rank must call this (and
    run its backward) at the same step. Teacher rows count in p-bar but receive no gradient.

    Args:
        student_logits: [N_s, K] student logits (all views, any order).
        teacher_logits: [N_t, K] teacher logits (constants).
        partition: [N_P, N_B] long blocks; None is one block of all K columns.
        eps: The clip of p-bar (eps_32).

    Returns:
        Scalar >= 0 up to the clip (0 when every p-bar_k is uniform), float32 (float64 for float64 student logits).
    """
    if student_logits.ndim != 2 or teacher_logits.ndim != 2 or student_logits.shape[1] != teacher_logits.shape[1]:
        raise ValueError(
            f"student and teacher logits must be [N_s, K] and [N_t, K] with the same K, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    if partition is not None:
        check_partition(partition, student_logits.shape[1])
    with no_autocast(student_logits):
        dtype = math_dtype(student_logits)
        p_sum = _block_log_probs(student_logits, partition, dtype).exp().sum(0)  # [N_P, N_B]
        with torch.no_grad():
            q_sum = _block_log_probs(teacher_logits.detach(), partition, dtype).exp().sum(0)  # [N_P, N_B]
        return _uniformity(p_sum + q_sum, student_logits.shape[0] + teacher_logits.shape[0], eps)


def carp_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    partition: torch.Tensor | None,
    num_global_views: int = 2,
    uniformity_weight: float = 1.0,
    eps: float = CARP_EPS,
    straight_through_clip: bool = True,
) -> CARPLossOutput:
    """CARP loss L = L_c + L_e (arXiv 2310.12692), sharing one block log-softmax between both terms.

    See ``carp_consistency_loss`` (the clip convention) and ``carp_uniformity_loss`` (the distributed convention).

    Args:
        student_logits: [V*B, K] view-major student prototype logits, global views first.
        teacher_logits: [G*B, K] teacher logits of the global views (constants).
        partition: [N_P, N_B] long blocks from ``random_partition(K, N_B, broadcast=True)``; None is one block.
        num_global_views: G (2).
        uniformity_weight: lambda >= 0 on L_e (1 in CARP).
        eps: The clip (eps_32).
        straight_through_clip: Gradient convention of the consistency clip.

    Returns:
        ``CARPLossOutput`` with loss = consistency + uniformity_weight * uniformity.
    """
    if uniformity_weight < 0:
        raise ValueError(f"uniformity_weight must be >= 0, got {uniformity_weight}")
    batch = _prepare_carp(student_logits, teacher_logits, partition, num_global_views)
    with no_autocast(student_logits):
        dtype = math_dtype(student_logits)
        log_p = _block_log_probs(student_logits, partition, dtype)  # [V*B, N_P, N_B]
        with torch.no_grad():
            log_q = _block_log_probs(teacher_logits.detach(), partition, dtype)  # [G*B, N_P, N_B]
            q_sum = log_q.exp().sum(0)  # [N_P, N_B]
        consistency = _consistency(log_p, log_q, batch, num_global_views, eps, straight_through_clip)
        uniformity = _uniformity(log_p.exp().sum(0) + q_sum, log_p.shape[0] + log_q.shape[0], eps)
    return CARPLossOutput(consistency + uniformity_weight * uniformity, consistency, uniformity)


def carl_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    uniformity_weight: float,
    num_global_views: int = 2,
    eps: float = CARP_EPS,
    straight_through_clip: bool = True,
) -> CARPLossOutput:
    """CARL loss (arXiv 2112.15421; docs/method.md §15), **inferred**: no CARL code is public.

    Reconstructed as the single-block case of CARP (one block of all K prototypes, no permutation):
    L = L_c + lambda * KL(p-bar || U_K), with L_c = mean -log <p, q> over the view pairs and p-bar the mean softmax
    over all student and teacher rows of all ranks. It calls ``carp_loss`` with ``partition=None``, so the clip and
    distributed conventions are CARP's. Whether CARL used a teacher, which K, and how lambda was scheduled
    ("high early in training") are unknown; for a symmetric setup pass the other branch's logits as the teacher
    (they are treated as constants).

    Args:
        student_logits: [V*B, K] view-major logits over the K prototypes.
        teacher_logits: [G*B, K] target logits (constants).
        uniformity_weight: lambda_e >= 0 on the KL term.
        num_global_views: G (2).
        eps: The clip (eps_32).
        straight_through_clip: Gradient convention of the consistency clip (see ``carp_consistency_loss``).

    Returns:
        ``CARPLossOutput``; ``uniformity`` is the unweighted KL(p-bar || U_K).
    """
    return carp_loss(
        student_logits, teacher_logits, None, num_global_views, uniformity_weight, eps, straight_through_clip
    )
