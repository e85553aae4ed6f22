"""Tests of ``sop_hf.evaluation.knn``: separable clusters, chunking invariance, voting and error messages."""

import pytest
import torch

from sop_hf.evaluation.knn import knn_classify, knn_top1


def clusters(per_class: int, num_classes: int = 4, dim: int = 16, spread: float = 0.1, seed: int = 0):
    """[C * per_class, dim] points around C fixed centres of norm 3 (``seed`` draws the noise only), and labels."""
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(1234))  # shared by all seeds
    centres = torch.nn.functional.normalize(centres, dim=1) * 3
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    return centres[labels] + spread * torch.randn(labels.numel(), dim, generator=generator), labels


def test_knn_top1__separable_clusters_are_perfect():
    train, train_y = clusters(50)
    test, test_y = clusters(20, seed=1)
    assert knn_top1(train, train_y, test, test_y, ks=(1, 10, 20, 50)) == {1: 1.0, 10: 1.0, 20: 1.0, 50: 1.0}


def test_knn_classify__chunked_equals_unchunked():
    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(300, 8, generator=generator), torch.randn(70, 8, generator=generator)
    train_y = torch.randint(0, 5, (300,), generator=generator)
    whole = knn_classify(train, train_y, test, ks=(1, 7, 20))
    chunked = knn_classify(train, train_y, test, ks=(1, 7, 20), test_chunk=9, train_chunk=23)  # neither divides
    for k in (1, 7, 20):
        assert torch.equal(whole[k], chunked[k])


def test_knn_classify__k_larger_than_train_set_is_an_error_naming_both():
    train, train_y = clusters(2, num_classes=2)
    assert knn_classify(train, train_y, train[:1], ks=(len(train),))[len(train)].shape == (1,)
    with pytest.raises(ValueError, match=rf"k=200 is larger than the {len(train)} training samples"):
        knn_classify(train, train_y, train[:1], ks=(200,))


def test_knn_classify__weighted_vote_beats_majority():
    # two far neighbours of class 1 against one identical neighbour of class 0: the weights exp(s / 0.07) decide
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.1, 1.0]])
    prediction = knn_classify(train, torch.tensor([0, 1, 1]), torch.tensor([[1.0, 0.0]]), ks=(3,))
    assert prediction[3].tolist() == [0]


def test_knn_classify__errors():
    train, train_y = clusters(3)
    with pytest.raises(ValueError, match=r"train_features \(12\) and train_labels \(11\) differ"):
        knn_classify(train, train_y[:-1], train)
    with pytest.raises(ValueError, match="every k must be >= 1"):
        knn_classify(train, train_y, train, ks=(0, 5))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        knn_classify(train, train_y, train, temperature=0.0)


def test_default_ks__keep_what_the_training_set_serves():
    from sop_hf.evaluation.knn import default_ks

    assert default_ks(40) == ([10, 20], [100, 200])
    assert default_ks(5000) == ([10, 20, 100, 200], [])
    assert default_ks(7) == ([7], [10, 20, 100, 200])  # every default too large: all samples vote
    with pytest.raises(ValueError, match="k-NN needs at least one training sample, got 0"):
        default_ks(0)
