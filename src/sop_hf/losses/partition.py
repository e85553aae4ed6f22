"""Random partitions of columns into blocks (MaSSL memory blocks, CARP prototype blocks) and the input checks the
partition-based losses share (docs/method.md §13-§15).

>>> import torch
>>> partition = random_partition(64, 16, generator=torch.Generator().manual_seed(0))
>>> tuple(partition.shape)
(4, 16)
"""

import torch

from ..modules.distributed import broadcast_from_rank0


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


def views_batch_size(num_student_rows: int, num_teacher_rows: int, num_global_views: int) -> int:
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


def check_temperature(name: str, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_partition(partition: torch.Tensor, num_columns: int) -> None:
    if partition.ndim != 2 or partition.dtype != torch.long or partition.numel() == 0:
        raise ValueError(
            f"partition must be a non-empty [N_P, N_B] long tensor, got shape {tuple(partition.shape)}, "
            f"{partition.dtype}"
        )
    if partition.numel() > num_columns:
        raise ValueError(f"partition must hold at most K = {num_columns} columns, got {tuple(partition.shape)}")
