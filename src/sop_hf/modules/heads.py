"""SOPHead: the projection MLP shared by [CLS] and patch tokens (docs/method.md §2).

Linear(width -> hidden) - GELU - ... - Linear(hidden -> out), biases, no BatchNorm, then L2 normalisation over the
last dim (eps 1e-6). There is no prototype layer: SOP's prototypes come from the memory banks. CARP's ResNet head
adds BatchNorm after each hidden Linear (``batch_norm=True``) and keeps the output un-normalised.

>>> import torch
>>> head = SOPHead(in_size=32, hidden_size=64, out_size=16, num_layers=3)
>>> head(torch.randn(2, 5, 32)).norm(dim=-1).allclose(torch.ones(2, 5))
True
"""

import torch
from torch import nn


class SOPHead(nn.Module):
    """MLP head whose output rows are unit norm.

    Args:
        in_size: Backbone width.
        hidden_size: Hidden width (2048 in SOP). Lower it with tiny backbones to keep the head from dominating.
        out_size: Output width ``d`` that the memory banks store (256).
        num_layers: Number of Linear layers (>= 1).
        normalize: L2-normalise the output (SOP, MaSSL). CARP/CARL keep the raw bottleneck: its norm acts as the
            inverse temperature of the prototype logits.
        batch_norm: BatchNorm1d after every hidden Linear (Linear - BN - GELU), as CARP's ResNet head. Statistics
            are taken over all leading dims together; a batch needs more than one row in training mode.
    """

    def __init__(
        self,
        in_size: int,
        hidden_size: int,
        out_size: int,
        num_layers: int = 3,
        normalize: bool = True,
        batch_norm: bool = False,
    ):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"SOPHead num_layers must be >= 1, got {num_layers}")
        sizes = [in_size] + [hidden_size] * (num_layers - 1) + [out_size]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < num_layers - 1:
                if batch_norm:
                    layers.append(nn.BatchNorm1d(sizes[i + 1]))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.normalize = normalize

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # [..., in_size] -> [..., out_size], unit rows when normalize; BatchNorm1d needs [N, C], so flatten first
        leading = hidden_states.shape[:-1]
        output = self.mlp(hidden_states.reshape(-1, hidden_states.shape[-1])).reshape(*leading, -1)
        return nn.functional.normalize(output, dim=-1, eps=1e-6) if self.normalize else output
