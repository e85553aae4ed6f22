"""MemoryBank: a fixed-size FIFO ring buffer of unit-norm embeddings (SOP's class and patch memories, MaSSL's memory).

docs/method.md §5: rows start as random unit vectors; ``enqueue`` all-gathers keys in rank order and writes them at
the pointer, wrapping around, so any bank size works with any global batch; reads are detached copies taken before
the step's enqueue. The rows and the pointer are persistent buffers: they live in pretraining checkpoints (and are
restored exactly on resume) but never in an exported encoder.

>>> import torch
>>> bank = MemoryBank(size=10, dim=4)
>>> bank.enqueue(torch.nn.functional.normalize(torch.randn(4, 4), dim=1))
>>> int(bank.ptr)
4
"""

import torch
from torch import nn

from .distributed import concat_all_gather


class MemoryBank(nn.Module):
    """Ring buffer of ``size`` embeddings of width ``dim``.

    Args:
        size: Number of rows ``K``. The bank spans the last ``K / global_batch`` steps: lower it for tiny datasets.
        dim: Embedding width ``d``.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 1:
            raise ValueError(f"MemoryBank size must be >= 1, got {size}")
        if dim < 1:
            raise ValueError(f"MemoryBank dim must be >= 1, got {dim}")
        self.size = size
        self.dim = dim
        self.register_buffer("rows", torch.empty(size, dim), persistent=True)  # [K, d]
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long), persistent=True)
        self.reset()

    @torch.no_grad()
    def reset(self, generator: torch.Generator | None = None) -> None:
        """Rows iid N(0, I) then L2-normalised; pointer 0."""
        if self.rows.is_meta:
            return
        noise = torch.randn(self.size, self.dim, generator=generator, device=self.rows.device)
        self.rows.copy_(nn.functional.normalize(noise, dim=1))
        self.ptr.zero_()

    def read(self) -> torch.Tensor:
        """A detached copy of the rows, [K, d]; later enqueues do not change it."""
        return self.rows.detach().clone()

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Gather ``keys`` [B, d] from every process (rank order) and write the [G, d] result at the pointer.

        Writes wrap around; when G > K only the newest K keys survive. The pointer advances by G modulo K.
        """
        if keys.ndim != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"MemoryBank.enqueue expects keys of shape [batch, {self.dim}], got {tuple(keys.shape)}")
        keys = concat_all_gather(keys.detach().to(self.rows.dtype))  # [G, d]
        num_keys = keys.shape[0]
        if num_keys == 0:
            return
        # The pointer stays a device tensor (no host sync in the step, no torch.compile graph break). When G >= K
        # only the last K keys survive; key j lands at row (ptr + j) mod K either way.
        first = max(0, num_keys - self.size)
        offsets = first + torch.arange(num_keys - first, device=self.rows.device)  # [min(G, K)]
        index = (self.ptr + offsets) % self.size
        self.rows.index_copy_(0, index, keys[first:].to(self.rows.device))
        self.ptr.copy_((self.ptr + num_keys) % self.size)

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}"
