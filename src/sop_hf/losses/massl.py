"""MaSSL loss (ICML 2024, arXiv 2407.17486; docs/method.md §13): block-wise cross-entropy of two views' similarity
distributions over random blocks of a memory of teacher embeddings.

Reference: github.com/sthalles/MaSSL (criterion.py). Inputs follow ``views.py``: student ``[V*B, d]`` global views
first, teacher ``[G*B, d]``; memory rows and partitions are constants.
"""

import torch

from .koleo import koleo_loss
from .partition import check_partition, check_temperature, views_batch_size
from .views import math_dtype, no_autocast, view_pairs


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
    """MaSSL loss (arXiv 2407.17486; docs/method.md §13): block-wise cross-entropy against memory rows.

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
    check_temperature("student_temp", student_temp)
    check_temperature("teacher_temp", teacher_temp)
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
    check_partition(partition, memory.shape[0])
    batch = views_batch_size(student_embeddings.shape[0], teacher_embeddings.shape[0], num_global_views)
    num_views = student_embeddings.shape[0] // batch
    pairs = view_pairs(num_views, num_global_views)
    num_blocks, block_size = partition.shape

    with no_autocast(student_embeddings):
        dtype = math_dtype(student_embeddings)
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
