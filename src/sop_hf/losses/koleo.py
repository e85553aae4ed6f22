"""KoLeo: the Kozachenko-Leonenko entropy estimator as a regulariser that spreads a batch of embeddings apart.

Any method can add it to the student's global-view embeddings (docs/method.md §10, and §20 for when to use it).
"""

import torch

from .views import math_dtype, no_autocast


def koleo_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """Kozachenko-Leonenko entropy estimator: ``-mean_n log(||z_n - z_nn(n)|| + 1e-8)``.

    The nearest neighbour excludes the point itself (its similarity is set to -inf). Args: embeddings [B, d] unit
    rows, B >= 2. Returns a scalar in float32 (float64 for float64 input).
    """
    if embeddings.ndim != 2 or embeddings.shape[0] < 2:
        raise ValueError(f"koleo_loss needs embeddings of shape [B >= 2, d], got {tuple(embeddings.shape)}")
    with no_autocast(embeddings):
        z = embeddings.to(math_dtype(embeddings))
        with torch.no_grad():
            sim = z @ z.T  # [B, B]
            sim.fill_diagonal_(float("-inf"))
            nearest = sim.argmax(dim=1)  # [B]
        distance = (z - z[nearest]).norm(dim=-1)  # [B]
        return -(distance + 1e-8).log().mean()
