"""Learnable prototypes with unit-norm rows: CARP's and CARL's prototype layer."""

import torch
from torch import nn


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
