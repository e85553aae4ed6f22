"""Collapse indicators of a set of embeddings or of their assignments to prototypes (docs/training.md, Monitoring).

Each is a plain function of tensors, so the training monitor, the pretraining models' probes and tests share them.
"""

import math

import torch
from torch.nn.functional import normalize

MAX_RANK_ROWS = 4096  # memory rows used for memory_rank / support_similarity (a seeded subset of larger banks)


def feature_spread(features: torch.Tensor) -> float:
    """``sqrt(D) * mean_d std_n`` of the L2-normalised [N, D] features: ~1 isotropic, 0 collapsed."""
    z = normalize(features.float(), dim=1)  # [N, D]
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def effective_rank(features: torch.Tensor) -> float:
    """Entropy effective rank of the centred [N, D] features: ``exp(H(p))`` with p the normalised singular values."""
    centred = features.float() - features.float().mean(dim=0, keepdim=True)  # [N, D]
    singular = torch.linalg.svdvals(centred)  # [min(N, D)]
    total = singular.sum()
    if total <= 0:
        return 1.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def neighbour_similarity(rows: torch.Tensor, queries: torch.Tensor, num_neighbours: int) -> float:
    """Mean cosine between each query row of ``rows`` (indices [Q]) and its ``num_neighbours`` nearest other rows."""
    z = normalize(rows.float(), dim=1)  # [N, d]
    scores = z[queries] @ z.T  # [Q, N]
    scores[torch.arange(len(queries)), queries] = float("-inf")  # a row is not its own neighbour
    k = max(1, min(num_neighbours, z.shape[0] - 1))
    return float(scores.topk(k, dim=1).values.mean())


def mean_entropy_ratio(probs: torch.Tensor) -> float:
    """Mean over rows of ``H(p_n) / ln P`` for [N, P] probabilities: 1 when every row is uniform."""
    entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)  # [N]
    return float(entropy.mean() / math.log(probs.shape[1]))


def agreement_and_kappa(first: torch.Tensor, second: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """Fraction of equal labels in two [N] label vectors, and Cohen's kappa (agreement above chance; 0 if no room)."""
    agreement = float((first == second).float().mean())
    chance = float((torch.bincount(first, minlength=num_classes).float() / len(first))
                   @ (torch.bincount(second, minlength=num_classes).float() / len(second)))  # fmt: skip
    kappa = 0.0 if chance >= 1.0 - 1e-9 else (agreement - chance) / (1.0 - chance)
    return agreement, kappa
