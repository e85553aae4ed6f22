"""SOP's lineage as tensor functions: MaSSL (METHOD.md section 13), CARP (section 14) and CARL (section 15).

Public API:

- ``random_partition(num_columns, block_size, generator, device, broadcast)`` -> [N_P, N_B] column blocks, the one
  partition utility of MaSSL (memory blocks) and CARP/CARL (prototype blocks);
- ``massl_loss(student_embeddings, teacher_embeddings, memory, partition, student_temp, teacher_temp)``;
- ``carp_consistency_loss``, ``carp_uniformity_loss`` and ``carp_loss`` (both terms) on prototype logits;
- ``carl_loss``: the single-block case of CARP plus a weighted KL to the uniform prior (inferred);
- ``WeightNormalizedPrototypes``: CARP's bias-free prototype layer with unit-norm rows.

Conventions shared with ``losses.py``: student inputs are view-major ``[V*B, .]`` with the global views first, teacher
inputs ``[G*B, .]`` hold the G global views; view pairs come from ``losses.view_pairs`` (every (i, j) with i != j);
the maths runs in float32 with autocast disabled (float64 inputs stay float64); teacher outputs, memory rows and
partitions are constants (no gradient reaches them).

Papers: MaSSL arXiv 2407.17486 (github.com/sthalles/MaSSL/blob/0fa1456/criterion.py), CARP arXiv 2310.12692
(github.com/sthalles/carp/blob/c9b068b/modules/carp_loss.py), CARL arXiv 2112.15421 (no public code).

>>> import torch
>>> partition = random_partition(64, 16, generator=torch.Generator().manual_seed(0))
>>> tuple(partition.shape)
(4, 16)
>>> out = carp_loss(torch.randn(6, 64), torch.randn(4, 64), partition)  # 3 student views, 2 teacher views, B = 2
>>> bool(out.loss == out.consistency + out.uniformity)
True
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

from ._dist import all_gather_with_grad, broadcast_from_rank0
from .losses import _math_dtype, _no_autocast, koleo_loss, view_pairs

CARP_EPS = torch.finfo(torch.float32).eps  # eps_32 = 1.19e-7: CARP's clip of <P, Q> and of p-bar, for every dtype.


def random_partition(
    num_columns: int,
    block_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    broadcast: bool = False,
) -> torch.Tensor:
    """A uniform permutation of ``num_columns`` columns cut into ``floor(K / N_B)`` blocks of ``block_size``.

    The ``K mod N_B`` leftover columns are left out of this draw (a fresh draw leaves out others). MaSSL partitions
    its memory rows, CARP and CARL their prototypes.

    Ranks: CARP draws one partition per step on rank 0 and broadcasts it (``broadcast=True``); MaSSL's reference
    draws one per rank (``broadcast=False``). Giving every rank a generator with the same seed (e.g. seeded by
    (seed, step)) also shares the partition, without communication.

    Args:
        num_columns: K >= 1, the columns to partition (memory rows or prototypes).
        block_size: N_B in [1, K], the columns per block.
        generator: Source of the permutation (drawn on the generator's device; the CPU default generator if None).
        device: Device of the result (NCCL broadcasts need the CUDA device); the generator's device if None.
        broadcast: Overwrite the result with rank 0's draw (a no-op without a process group; with one it is a
            collective, so every rank must call it).

    Returns:
        [N_P, N_B] long tensor of distinct column indices, N_P = K // N_B.
    """
    if num_columns < 1:
        raise ValueError(f"num_columns must be >= 1, got {num_columns}")
    if not 1 <= block_size <= num_columns:
        raise ValueError(
            f"block_size must be in [1, {num_columns}] (at least one block of K columns), got {block_size}"
        )
    num_blocks = num_columns // block_size
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(num_columns, generator=generator, device=gen_device)[: num_blocks * block_size]  # [N_P*N_B]
    if device is not None:
        perm = perm.to(device)
    partition = perm.view(num_blocks, block_size).contiguous()  # [N_P, N_B]
    return broadcast_from_rank0(partition) if broadcast else partition


def _batch_size(num_student_rows: int, num_teacher_rows: int, num_global_views: int) -> int:
    """B from [V*B] student and [G*B] teacher rows; raises unless both are whole views of the same B."""
    if num_global_views < 1:
        raise ValueError(f"num_global_views must be >= 1, got {num_global_views}")
    batch = num_teacher_rows // num_global_views
    if batch < 1 or batch * num_global_views != num_teacher_rows or num_student_rows % batch:
        raise ValueError(
            f"teacher rows ({num_teacher_rows}) must be {num_global_views} views of B >= 1 rows and student rows "
            f"({num_student_rows}) a multiple of B"
        )
    return batch


def _check_temperature(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_partition(partition: torch.Tensor, num_columns: int) -> None:
    if partition.ndim != 2 or partition.dtype != torch.long or partition.numel() == 0:
        raise ValueError(
            f"partition must be a non-empty [N_P, N_B] long tensor, got shape {tuple(partition.shape)}, "
            f"{partition.dtype}"
        )
    if partition.numel() > num_columns:
        raise ValueError(f"partition must hold at most K = {num_columns} columns, got {tuple(partition.shape)}")


# ----------------------------------------------------------------------------------------------------------------------
# MaSSL
# ----------------------------------------------------------------------------------------------------------------------


def massl_loss(
    student_embeddings: torch.Tensor,
    teacher_embeddings: torch.Tensor,
    memory: torch.Tensor,
    partition: torch.Tensor,
    student_temp: float,
    teacher_temp: float,
    num_global_views: int = 2,
    koleo_weight: float = 0.0,
) -> torch.Tensor:
    """MaSSL loss (arXiv 2407.17486; METHOD.md section 13): block-wise cross-entropy against memory rows.

    With S = Z_s M^T / tau_s and T = Z_t M^T / tau_t restricted to the columns of each block k,

        L = 1/|Pi| sum_{(i,j) in Pi} 1/(N_P B) sum_{k,n} -sum_c softmax(T_j[k,n])_c log_softmax(S_i[k,n])_c,

    with Pi = ``view_pairs(V, G)``. Only the partitioned rows are read: ``memory[partition]`` is gathered once per
    call ([N_P, N_B, d]) and each view's logits are [B, N_P, N_B] (the reference's [N_P, B, N_B], transposed). As the
    cross-entropy is linear in the target, each student view is scored once against the sum of its paired teacher
    views. The gradient with respect to the student logits of pair (i, j) is
    (softmax(S_i) - softmax(T_j)) / (|Pi| N_P B).

    Args:
        student_embeddings: [V*B, d] view-major unit-norm student outputs, the G global views first.
        teacher_embeddings: [G*B, d] teacher outputs of the global views (constants).
        memory: [K, d] memory rows (a detached bank read taken before this step's enqueue; constants).
        partition: [N_P, N_B] long column blocks from ``random_partition(K, N_B)``.
        student_temp: tau_s > 0 (0.1).
        teacher_temp: tau_t > 0 (0.04 -> 0.07).
        num_global_views: G, the teacher views (2).
        koleo_weight: lambda_ko >= 0; when > 0 adds lambda_ko times ``koleo_loss`` averaged over the student's global
            views (the reference's optional KoLeo). Skipped at 0.

    Returns:
        Scalar loss, float32 (float64 for float64 student embeddings).
    """
    _check_temperature("student_temp", student_temp)
    _check_temperature("teacher_temp", teacher_temp)
    if koleo_weight < 0:
        raise ValueError(f"koleo_weight must be >= 0, got {koleo_weight}")
    if student_embeddings.ndim != 2 or teacher_embeddings.ndim != 2 or memory.ndim != 2:
        raise ValueError(
            f"massl_loss needs [V*B, d], [G*B, d] and [K, d] inputs, got {tuple(student_embeddings.shape)}, "
            f"{tuple(teacher_embeddings.shape)}, {tuple(memory.shape)}"
        )
    dim = memory.shape[1]
    if student_embeddings.shape[1] != dim or teacher_embeddings.shape[1] != dim:
        raise ValueError(
            f"embedding widths must equal the memory width {dim}, got {student_embeddings.shape[1]} (student) and "
            f"{teacher_embeddings.shape[1]} (teacher)"
        )
    _check_partition(partition, memory.shape[0])
    batch = _batch_size(student_embeddings.shape[0], teacher_embeddings.shape[0], num_global_views)
    num_views = student_embeddings.shape[0] // batch
    pairs = view_pairs(num_views, num_global_views)
    num_blocks, block_size = partition.shape

    with _no_autocast(student_embeddings):
        dtype = _math_dtype(student_embeddings)
        z_student = student_embeddings.to(dtype)
        blocks = memory.detach()[partition.to(memory.device)].to(dtype)  # [N_P, N_B, d], gathered once
        columns = blocks.view(num_blocks * block_size, dim)  # [N_P*N_B, d]
        with torch.no_grad():
            t_logits = teacher_embeddings.detach().to(dtype) @ columns.T / teacher_temp  # [G*B, N_P*N_B]
            targets = t_logits.view(num_global_views, batch, num_blocks, block_size).softmax(-1)  # [G, B, N_P, N_B]
        total = z_student.new_zeros(())
        for i, view in enumerate(z_student.split(batch)):
            paired = [j for s, j in pairs if s == i]
            if not paired:
                continue
            target = targets[paired].sum(0)  # [B, N_P, N_B], sum of the paired teacher views
            log_p = (view @ columns.T / student_temp).view(batch, num_blocks, block_size).log_softmax(-1)
            total = total - (target * log_p).sum()
        loss = total / (len(pairs) * num_blocks * batch)
        if koleo_weight > 0:
            globals_ = z_student[: num_global_views * batch].split(batch)
            loss = loss + koleo_weight * torch.stack([koleo_loss(v) for v in globals_]).mean().to(dtype)
    return loss


# ----------------------------------------------------------------------------------------------------------------------
# CARP and CARL
# ----------------------------------------------------------------------------------------------------------------------


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
        _check_partition(partition, student_logits.shape[1])
    return _batch_size(student_logits.shape[0], teacher_logits.shape[0], num_global_views)


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
    """CARP consistency L_c (arXiv 2310.12692; METHOD.md section 14).

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
    with _no_autocast(student_logits):
        dtype = _math_dtype(student_logits)
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
    """CARP uniform prior L_e = mean_k [ln N_B + sum_c p-bar_kc ln clip(p-bar_kc, eps, 1 - eps)] (METHOD.md s. 14).

    p-bar_k averages the block-k softmax over every student row and every teacher row of every rank. Only the
    per-rank sums [N_P, N_B] (and the row count) are all-gathered, through ``_dist.all_gather_with_grad``, so the
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
        _check_partition(partition, student_logits.shape[1])
    with _no_autocast(student_logits):
        dtype = _math_dtype(student_logits)
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
    with _no_autocast(student_logits):
        dtype = _math_dtype(student_logits)
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
    """CARL loss (arXiv 2112.15421; METHOD.md section 15), **inferred**: no CARL code is public.

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


class WeightNormalizedPrototypes(nn.Module):
    """CARP's prototype layer: a bias-free ``Linear(dim -> num_prototypes)`` whose weight rows are unit norm.

    This is weight normalisation with the gain g frozen at 1: the forward normalises each stored row v_k,
    logits = z @ (v / ||v||)^T, so gradients see the normalisation exactly as ``torch.nn.utils.weight_norm`` does.
    CARP feeds it the **un-normalised** head bottleneck and uses no temperature (||z|| acts as the inverse
    temperature); do not normalise z when porting. Reference checkpoints store ``weight_v`` (-> ``weight``) and
    ``weight_g`` (all ones, dropped).

    Args:
        dim: Input width d (256).
        num_prototypes: K prototypes (65536).

    >>> layer = WeightNormalizedPrototypes(8, 32)
    >>> tuple(layer(torch.randn(4, 8)).shape)
    (4, 32)
    """

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if num_prototypes < 1:
            raise ValueError(f"num_prototypes must be >= 1, got {num_prototypes}")
        self.dim = dim
        self.num_prototypes = num_prototypes
        self.weight = nn.Parameter(torch.empty(num_prototypes, dim))  # [K, d], rows normalised in forward
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Isotropic random directions (only a row's direction matters)."""
        if not self.weight.is_meta:
            nn.init.normal_(self.weight, std=0.02)

    def normalized_weight(self) -> torch.Tensor:
        """[K, d] unit-norm prototype rows."""
        return nn.functional.normalize(self.weight, dim=1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """[..., d] -> [..., K] logits."""
        return nn.functional.linear(embeddings, self.normalized_weight())

    def extra_repr(self) -> str:
        """Sizes shown by ``repr``."""
        return f"dim={self.dim}, num_prototypes={self.num_prototypes}"
