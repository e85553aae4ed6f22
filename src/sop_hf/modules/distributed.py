"""Rank, world size and gathers that are no-ops without an initialised process group.

Every distributed step of the library goes through these functions, so the model code runs unchanged on one CPU
without ``torch.distributed`` and under ``accelerate launch`` with any number of processes.
"""

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a ``torch.distributed`` process group is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """All-gather equally-shaped tensors and concatenate them along dim 0 in rank order (no gradient).

    [B, ...] on each of W processes -> [W*B, ...] on every process; returns ``tensor`` itself without a group.
    """
    if not is_distributed():
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sums the incoming gradients over processes and returns this rank's slice.

    With a loss computed identically on every rank from the gathered tensor, the gradient each rank receives equals
    the gradient of the one-process computation on the global batch, once DDP averages gradients (see CARP's KL).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.batch = tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """[B, ...] -> [W*B, ...] in rank order, differentiable (see ``_GatherWithGrad``); identity without a group."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


@torch.no_grad()
def broadcast_from_rank0(tensor: torch.Tensor) -> torch.Tensor:
    """Overwrite ``tensor`` in place with rank 0's copy (no-op without a group) and return it."""
    if is_distributed():
        dist.broadcast(tensor, src=0)
    return tensor
