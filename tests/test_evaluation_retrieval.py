"""Tests of ``sop_hf.evaluation.retrieval`` on a hand-worked example: a shuffled gallery, junk, three protocols.

The query sits at angle 0; six gallery items sit at 10, 20, ..., 60 degrees (named a..f by angle), stored shuffled
as [d, a, f, b, e, c], so the cosine ranking is a, b, c, d, e, f = gallery indices 1, 3, 5, 0, 4, 2.
Positives are b, d, f; c is junk; a and e are negatives. Without c the ranking is a, b, d, e, f, so the positives
sit at ranks 1, 2, 4 (0-based):

- trapezoid AP = [(0/1 + 1/2) + (1/2 + 2/3) + (2/4 + 3/5)] / 2 / 3 = (1/4 + 7/12 + 11/20) / 3 = 83/180
- step AP = (1/2 + 2/3 + 3/5) / 3 = 53/90
- junk counted as a negative (ranks 1, 3, 5): trapezoid (1/4 + 5/12 + 9/20) / 3 = 67/180, step 1/2.
"""

import math

import pytest
import torch

from sop_hf.evaluation.retrieval import (
    average_precision_sorted,
    label_average_precisions,
    label_map,
    mean_average_precision,
    rank_gallery,
    revisited_map,
)

ANGLES = {"a": 10, "b": 20, "c": 30, "d": 40, "e": 50, "f": 60}
ORDER = ["d", "a", "f", "b", "e", "c"]  # gallery storage order (shuffled)
INDEX = {name: i for i, name in enumerate(ORDER)}


def gallery() -> torch.Tensor:
    radians = torch.tensor([math.radians(ANGLES[name]) for name in ORDER])
    return torch.stack((radians.cos(), radians.sin()), dim=1) * torch.arange(1, 7)[:, None]  # norms must not matter


QUERY = torch.tensor([[2.0, 0.0]])


def test_rank_gallery__cosine_order_of_shuffled_gallery():
    assert rank_gallery(QUERY, gallery()).tolist() == [[1, 3, 5, 0, 4, 2]]


def test_mean_average_precision__hand_example_with_junk():
    ranking = rank_gallery(QUERY, gallery())
    positives, junk = [[INDEX["b"], INDEX["d"], INDEX["f"]]], [[INDEX["c"]]]
    assert mean_average_precision(ranking, positives, junk)[0] == pytest.approx(83 / 180)
    assert mean_average_precision(ranking, positives, junk, method="step")[0] == pytest.approx(53 / 90)
    assert mean_average_precision(ranking, positives)[0] == pytest.approx(67 / 180)
    assert mean_average_precision(ranking, positives, method="step")[0] == pytest.approx(1 / 2)


def test_label_map__same_example_from_labels():
    labels = {"a": 0, "b": 1, "c": 1, "d": 1, "e": 2, "f": 1}
    gallery_y = torch.tensor([labels[name] for name in ORDER])
    value = label_map(QUERY, torch.tensor([1]), gallery(), gallery_y, junk=[[INDEX["c"]]])
    assert value == pytest.approx(83 / 180)
    # c counted as a fourth positive: ranks 1, 2, 3, 5 -> step (1/2 + 2/3 + 3/4 + 4/6) / 4
    assert label_map(QUERY, torch.tensor([1]), gallery(), gallery_y, method="step") == pytest.approx(
        (1 / 2 + 2 / 3 + 3 / 4 + 4 / 6) / 4
    )


def test_revisited_map__easy_medium_hard():
    # easy = {b, d}, hard = {f}, junk = {c}
    ground_truth = [{"easy": [INDEX["b"], INDEX["d"]], "hard": [INDEX["f"]], "junk": [INDEX["c"]]}]
    result = revisited_map(rank_gallery(QUERY, gallery()), ground_truth)
    # easy: c, f ignored -> a, b, d, e: positives at 1, 2 -> (1/4 + 7/12) / 2 = 5/12
    # medium: the example above -> 83/180; hard: b, c, d ignored -> a, e, f: f at rank 2 -> (0 + 1/3) / 2 = 1/6
    assert result == pytest.approx({"easy": 5 / 12, "medium": 83 / 180, "hard": 1 / 6})


def test_average_precision_sorted__perfect_worst_and_empty():
    perfect = torch.tensor([[True, True, False, False]])
    worst = torch.tensor([[False, False, True, True]])
    assert average_precision_sorted(perfect).item() == 1.0
    # trapezoid: (0/2 + 1/3)/2 + (1/3 + 2/4)/2 over 2 positives
    assert average_precision_sorted(worst).item() == pytest.approx(((1 / 3) / 2 + (1 / 3 + 1 / 2) / 2) / 2)
    assert math.isnan(average_precision_sorted(torch.zeros(1, 4, dtype=torch.bool)).item())


def test_label_map__exclude_self_and_skipped_queries():
    features = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    aps = label_average_precisions(features, labels, features, labels, exclude_self=True)
    assert aps[:2].tolist() == [1.0, 1.0] and math.isnan(aps[2])  # query 2's only match is itself
    assert label_map(features, labels, features, labels, exclude_self=True) == 1.0


def test_label_map__chunking_does_not_change_the_result():
    generator = torch.Generator().manual_seed(0)
    queries, gallery_x = torch.randn(37, 6, generator=generator), torch.randn(50, 6, generator=generator)
    query_y = torch.randint(0, 4, (37,), generator=generator)
    gallery_y = torch.randint(0, 4, (50,), generator=generator)
    whole = label_average_precisions(queries, query_y, gallery_x, gallery_y, chunk=1000)
    chunked = label_average_precisions(queries, query_y, gallery_x, gallery_y, chunk=5)
    torch.testing.assert_close(whole, chunked)


def test_retrieval__errors():
    with pytest.raises(ValueError, match="no query has a positive in the gallery"):
        label_map(QUERY, torch.tensor([7]), gallery(), torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="exclude_self needs queries == gallery"):
        label_map(QUERY, torch.tensor([0]), gallery(), torch.zeros(6, dtype=torch.long), exclude_self=True)
    with pytest.raises(ValueError, match=r"positives\[0\] has gallery indices outside \[0, 6\)"):
        mean_average_precision(rank_gallery(QUERY, gallery()), [[6]])
    with pytest.raises(ValueError, match="method must be one of"):
        average_precision_sorted(torch.ones(1, 2, dtype=torch.bool), method="interpolated")
