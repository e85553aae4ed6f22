"""Image retrieval: cosine ranking and mean average precision, with revisited Oxford/Paris easy/hard/junk handling.

Queries rank the gallery by cosine similarity (L2-normalised features, ties broken by gallery index). For every
query, *junk* gallery items are removed from its ranking (they neither help nor hurt), then the average precision of
its *positives* is computed at their ranks among the remaining items. Queries without positives are skipped (their
AP is NaN and they are left out of the mean), as in the revisited benchmark code.

Two AP conventions (``method``):

- ``"trapezoid"`` (default; revisited Oxford/Paris ``compute_ap``): the area under the precision-recall curve with the
  trapezoid rule; positive j (0-based) at 0-based rank r adds ``(p0 + p1) / 2 / n_pos`` with ``p0 = j / r`` (1 if
  ``r = 0``) and ``p1 = (j + 1) / (r + 1)``.
- ``"step"``: the usual non-interpolated AP, the mean over positives of the precision at their rank, ``(j + 1) /
  (r + 1)``.

Ground truth comes either from labels (gallery items with the query's label are positive; ``exclude_self`` makes the
query itself junk when queries are the gallery) or from per-query index sets (``positives``, ``junk``);
:func:`revisited_map` builds the easy / medium / hard protocols of Radenovic et al. 2018 (arXiv:1803.11285) from
``{"easy", "hard", "junk"}`` sets, following
https://github.com/filipradenovic/revisitop/blob/master/python/evaluate.py.

Multi-scale features: ``extract_features(..., scales=DEFAULT_SCALES)`` L2-normalises the features of every scale and
averages them.

>>> import torch
>>> gallery = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
>>> label_map(torch.tensor([[1.0, 0.1]]), torch.tensor([0]), gallery, torch.tensor([0, 1, 0]), method="step")
1.0
"""

import math
from collections.abc import Mapping, Sequence

import torch
from torch.nn.functional import normalize

DEFAULT_SCALES = (1.0, 2**-0.5, 0.5)
METHODS = ("trapezoid", "step")


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


def average_precision_sorted(relevant: torch.Tensor, junk: torch.Tensor | None = None, method: str = "trapezoid"):
    """AP of rankings given as boolean masks in ranked order.

    Args:
        relevant: [Q, G] bool, ``relevant[q, r]``: the item at rank r of query q is a positive.
        junk: [Q, G] bool, items to drop from the ranking (a junk flag wins over a relevant one).
        method: ``"trapezoid"`` or ``"step"`` (see the module docstring).

    Returns:
        [Q] float64 average precisions; NaN for queries with no (non-junk) positive.
    """
    _check_method(method)
    relevant = relevant.bool()
    keep = torch.ones_like(relevant) if junk is None else ~junk.bool()
    relevant = relevant & keep
    rank_all = keep.cumsum(1) - 1  # [Q, G] 0-based rank among non-junk items
    index_all = relevant.cumsum(1) - 1  # [Q, G] j: positives ranked before (at positive slots)
    query, slot = relevant.nonzero(as_tuple=True)  # only positive slots contribute: ~G/C per query, not G
    rank, index = rank_all[query, slot].double(), index_all[query, slot].double()
    p1 = (index + 1) / (rank + 1)
    if method == "step":
        contrib = p1
    else:
        p0 = torch.where(rank == 0, torch.ones_like(rank), index / rank.clamp_min(1))
        contrib = (p0 + p1) / 2
    num_pos = relevant.sum(1).double()  # [Q]
    ap = torch.zeros_like(num_pos).index_add_(0, query, contrib) / num_pos
    return torch.where(num_pos > 0, ap, torch.full_like(ap, math.nan))


def rank_gallery(query_features: torch.Tensor, gallery_features: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """[Q, G] gallery indices of every query, most similar first (cosine; ties keep gallery order)."""
    if query_features.shape[1] != gallery_features.shape[1]:
        raise ValueError(f"query and gallery feature sizes differ: {query_features.shape[1]} vs "
                         f"{gallery_features.shape[1]}")  # fmt: skip
    queries, gallery = normalize(query_features.float(), dim=1), normalize(gallery_features.float(), dim=1)
    return torch.cat([
        (queries[start : start + chunk] @ gallery.T).sort(dim=1, descending=True, stable=True).indices
        for start in range(0, queries.shape[0], chunk)
    ])  # fmt: skip


def _masks(sets: Sequence[Sequence[int]] | None, num_queries: int, num_gallery: int, name: str) -> torch.Tensor:
    """Per-query index sets -> [Q, G] bool mask (in gallery order)."""
    mask = torch.zeros(num_queries, num_gallery, dtype=torch.bool)
    if sets is None:
        return mask
    if len(sets) != num_queries:
        raise ValueError(f"{name} has {len(sets)} entries for {num_queries} queries")
    for q, indices in enumerate(sets):
        indices = torch.as_tensor(list(indices), dtype=torch.long)
        if indices.numel() and (indices.min() < 0 or indices.max() >= num_gallery):
            raise ValueError(f"{name}[{q}] has gallery indices outside [0, {num_gallery})")
        mask[q, indices] = True
    return mask


def mean_average_precision(
    ranking: torch.Tensor,
    positives: Sequence[Sequence[int]],
    junk: Sequence[Sequence[int]] | None = None,
    method: str = "trapezoid",
) -> tuple[float, torch.Tensor]:
    """mAP of rankings against per-query gallery index sets.

    Args:
        ranking: [Q, G] gallery indices, best first (e.g. from :func:`rank_gallery`).
        positives: For each query, the gallery indices that are correct answers.
        junk: For each query, gallery indices removed from its ranking before scoring (neither right nor wrong).
        method: ``"trapezoid"`` or ``"step"``.

    Returns:
        (mAP over queries with positives, [Q] per-query APs with NaN for skipped queries).

    Raises:
        ValueError: If no query has a positive, or sizes disagree.
    """
    num_queries, num_gallery = ranking.shape
    positive_mask = _masks(positives, num_queries, num_gallery, "positives")
    junk_mask = _masks(junk, num_queries, num_gallery, "junk")
    aps = average_precision_sorted(positive_mask.gather(1, ranking), junk_mask.gather(1, ranking), method)
    return _mean(aps), aps


def _mean(aps: torch.Tensor) -> float:
    valid = ~aps.isnan()
    if not valid.any():
        raise ValueError("no query has a positive in the gallery; mAP is undefined")
    return float(aps[valid].mean())


def revisited_map(
    ranking: torch.Tensor, ground_truth: Sequence[Mapping[str, Sequence[int]]], method: str = "trapezoid"
) -> dict[str, float]:
    """Revisited Oxford/Paris mAP for the three protocols.

    Args:
        ranking: [Q, G] gallery indices, best first.
        ground_truth: Per query ``{"easy": [...], "hard": [...], "junk": [...]}`` gallery indices.
        method: AP convention; the benchmark uses ``"trapezoid"``.

    Returns:
        ``{"easy": mAP, "medium": mAP, "hard": mAP}``: easy counts easy images and ignores hard ones, medium counts
        both, hard counts hard ones and ignores easy ones; junk is always ignored.
    """
    sets = {key: [list(g.get(key, ())) for g in ground_truth] for key in ("easy", "hard", "junk")}
    both = lambda a, b: [x + y for x, y in zip(sets[a], sets[b])]  # noqa: E731
    protocols = {
        "easy": (sets["easy"], both("junk", "hard")),
        "medium": (both("easy", "hard"), sets["junk"]),
        "hard": (sets["hard"], both("junk", "easy")),
    }
    return {name: mean_average_precision(ranking, pos, junk, method)[0] for name, (pos, junk) in protocols.items()}


def label_average_precisions(
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_features: torch.Tensor,
    gallery_labels: torch.Tensor,
    exclude_self: bool = False,
    junk: Sequence[Sequence[int]] | None = None,
    method: str = "trapezoid",
    chunk: int | None = None,
) -> torch.Tensor:
    """[Q] APs with label equality as relevance (see :func:`label_map`); NaN for queries without positives."""
    _check_method(method)
    if query_features.shape[0] != query_labels.shape[0] or gallery_features.shape[0] != gallery_labels.shape[0]:
        raise ValueError("features and labels must have the same number of rows (queries and gallery)")
    num_queries, num_gallery = query_features.shape[0], gallery_features.shape[0]
    if exclude_self and num_queries != num_gallery:
        raise ValueError(f"exclude_self needs queries == gallery, got {num_queries} queries and {num_gallery} items")
    junk_mask = _masks(junk, num_queries, num_gallery, "junk") if junk is not None else None
    chunk = chunk or max(1, 2**22 // max(num_gallery, 1))  # keeps a few [chunk, G] tensors at ~16-32 MB each
    aps = []
    for start in range(0, num_queries, chunk):
        stop = min(start + chunk, num_queries)
        ranking = rank_gallery(query_features[start:stop], gallery_features)  # [q, G]
        relevant = gallery_labels[ranking] == query_labels[start:stop, None]  # [q, G] in ranked order
        skip = junk_mask[start:stop].gather(1, ranking) if junk_mask is not None else torch.zeros_like(relevant)
        if exclude_self:
            skip = skip | (ranking == torch.arange(start, stop)[:, None])
        aps.append(average_precision_sorted(relevant, skip, method))
    return torch.cat(aps)


def label_map(
    query_features: torch.Tensor,
    query_labels: torch.Tensor,
    gallery_features: torch.Tensor,
    gallery_labels: torch.Tensor,
    exclude_self: bool = False,
    junk: Sequence[Sequence[int]] | None = None,
    method: str = "trapezoid",
    chunk: int | None = None,
) -> float:
    """mAP of cosine retrieval where a gallery item is positive iff its label equals the query's.

    Args:
        query_features: [Q, D] query features.
        query_labels: [Q] integer labels.
        gallery_features: [G, D] gallery features.
        gallery_labels: [G] integer labels; a gallery item is a positive of every query with the same label.
        exclude_self: Queries are the gallery (same rows, same order): ignore each query's own entry. Set it when
            one split serves as both, or every query finds itself at rank 0.
        junk: Optional per-query gallery indices to ignore (e.g. near-duplicates).
        method: ``"trapezoid"`` (revisited Oxford/Paris) or ``"step"`` (standard AP).
        chunk: Queries ranked at once; default keeps memory near 32 MB per tensor.

    Raises:
        ValueError: On mismatched sizes, or if no query has a positive.
    """
    aps = label_average_precisions(query_features, query_labels, gallery_features, gallery_labels,
                                   exclude_self, junk, method, chunk)  # fmt: skip
    return _mean(aps)
