"""Weighted k-NN classification (DINO protocol), computed in chunks so memory stays bounded.

Features are L2-normalised; similarity is the cosine; each of the k nearest training samples votes for its label
with weight ``exp(s / T)``, T = 0.07. Test samples are processed ``test_chunk`` at a time and the training set
``train_chunk`` rows at a time (a running top-k merge, each chunk normalised as it is read), so the transient memory
is O(test_chunk x (train_chunk + k) + train_chunk x D) rather than N_test x N_train (benchmarks/knn_memory.py).

>>> import torch
>>> train = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
>>> knn_top1(train, torch.tensor([0, 0, 1, 1]), torch.tensor([[1.0, 0.05]]), torch.tensor([0]), ks=(1,))
{1: 1.0}
"""

import torch
from torch.nn.functional import normalize

DEFAULT_KS = (10, 20, 100, 200)


def default_ks(num_train: int, ks=DEFAULT_KS) -> tuple[list[int], list[int]]:
    """(kept, dropped): the default ``ks`` that a training set of ``num_train`` samples can serve, and the others.

    Only for defaults: a k the user asked for that exceeds the training set stays an error (``knn_classify``). When
    every default is too large, ``num_train`` itself is kept (every training sample votes)."""
    if num_train < 1:
        raise ValueError(f"k-NN needs at least one training sample, got {num_train}")
    kept = [k for k in ks if k <= num_train]
    dropped = [k for k in ks if k > num_train]
    return (kept or [num_train]), dropped


@torch.no_grad()
def knn_classify(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    ks=DEFAULT_KS,
    temperature: float = 0.07,
    num_classes: int | None = None,
    test_chunk: int = 1024,
    train_chunk: int = 8192,
) -> dict[int, torch.Tensor]:
    """Predicted labels of every test row for each k. Args: train [N, D], labels [N] long, test [M, D]."""
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError(
            f"train_features ({train_features.shape[0]}) and train_labels ({train_labels.shape[0]}) differ"
        )
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("k-NN needs at least one train and one test sample")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    ks = sorted({int(k) for k in ks})
    if ks[0] < 1:
        raise ValueError(f"every k must be >= 1, got {ks}")
    if ks[-1] > train_features.shape[0]:
        raise ValueError(f"k={ks[-1]} is larger than the {train_features.shape[0]} training samples; lower k or use "
                         "more training images")  # fmt: skip
    max_k = ks[-1]
    num_classes = int(num_classes or int(train_labels.max()) + 1)
    train = train_features  # normalised chunk by chunk below: no full-size copy of the training features
    test = normalize(test_features.float(), dim=1)
    train_labels = train_labels.long()
    predictions = {k: [] for k in ks}
    for start in range(0, test.shape[0], test_chunk):
        queries = test[start : start + test_chunk]  # [q, D]
        best_sim = queries.new_full((queries.shape[0], 0), float("-inf"))
        best_idx = torch.empty((queries.shape[0], 0), dtype=torch.long, device=queries.device)
        for t_start in range(0, train.shape[0], train_chunk):
            rows = normalize(train[t_start : t_start + train_chunk].to(queries.device, torch.float32), dim=1)  # [c, D]
            sim = queries @ rows.T  # [q, c]
            top = sim.topk(min(max_k, sim.shape[1]), dim=1)
            merged_sim = torch.cat((best_sim, top.values), dim=1)
            merged_idx = torch.cat((best_idx, top.indices + t_start), dim=1)
            keep = merged_sim.topk(min(max_k, merged_sim.shape[1]), dim=1)
            best_sim, best_idx = keep.values, merged_idx.gather(1, keep.indices)
        weights = (best_sim / temperature).exp()  # [q, k_max], sorted by similarity
        one_hot = torch.nn.functional.one_hot(train_labels[best_idx], num_classes).float()  # [q, k_max, C]
        for k in ks:
            kk = min(k, best_idx.shape[1])
            scores = (one_hot[:, :kk] * weights[:, :kk, None]).sum(1)  # [q, C]
            predictions[k].append(scores.argmax(1))
    return {k: torch.cat(v) for k, v in predictions.items()}


def knn_top1(train_features, train_labels, test_features, test_labels, ks=DEFAULT_KS, **kwargs) -> dict[int, float]:
    """Top-1 accuracy (a fraction in [0, 1]) of weighted k-NN for each k."""
    predictions = knn_classify(train_features, train_labels, test_features, ks=ks, **kwargs)
    test_labels = test_labels.long()
    return {k: float((pred == test_labels).float().mean()) for k, pred in predictions.items()}
