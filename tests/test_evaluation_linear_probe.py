"""Tests of ``sop_hf.evaluation.linear_probe``: accuracy on separable data, head independence, TRAIN-only selection."""

import pytest
import torch

from sop_hf.evaluation.linear_probe import (
    FeatureNormalizer,
    linear_probe,
    stratified_split,
    train_linear_heads,
)
from tests.test_evaluation_knn import clusters


@pytest.mark.parametrize("optimizer,lrs", [("sgd", (0.01, 0.1, 1.0)), ("adamw", (1e-3, 1e-2, 1e-1))])
@pytest.mark.parametrize("normalization", ["standardize", "l2", "none"])
def test_linear_probe__separable_clusters_are_perfect(optimizer, lrs, normalization):
    train, train_y = clusters(60, num_classes=5, dim=12, spread=0.3)
    test, test_y = clusters(30, num_classes=5, dim=12, spread=0.3, seed=1)
    result = linear_probe(train, train_y, test, test_y, lrs=lrs, epochs=15, batch_size=128, optimizer=optimizer,
                          normalization=normalization)  # fmt: skip
    assert result.test_top1 == 1.0
    assert result.weight.shape == (12, 5) and result.bias.shape == (5,)
    assert (result.predict(test) == test_y).all()


def test_train_linear_heads__heads_are_independent():
    features, labels = clusters(40, num_classes=3, dim=6, spread=1.0)
    lrs, wds = torch.tensor([0.01, 0.3, 100.0]), torch.tensor([0.0, 1e-3, 0.0])  # the last head diverges
    weight, bias = train_linear_heads(features, labels, 3, lrs, wds, epochs=4, batch_size=16)
    for h in range(2):
        alone_w, alone_b = train_linear_heads(features, labels, 3, lrs[h : h + 1], wds[h : h + 1], epochs=4,
                                              batch_size=16)  # fmt: skip
        torch.testing.assert_close(weight[h], alone_w[0])
        torch.testing.assert_close(bias[h], alone_b[0])


def test_linear_probe__selection_never_looks_at_test():
    train, train_y = clusters(40, num_classes=3, dim=8, spread=2.0)
    test, test_y = clusters(20, num_classes=3, dim=8, spread=2.0, seed=1)
    options = dict(lrs=(0.001, 0.1, 10.0), weight_decays=(0.0, 0.1), epochs=5, batch_size=32)
    honest = linear_probe(train, train_y, test, test_y, **options)
    shuffled = linear_probe(train, train_y, test, test_y[torch.randperm(test_y.numel())], **options)
    no_test = linear_probe(train, train_y, **options)
    assert honest.best_lr == shuffled.best_lr == no_test.best_lr
    assert honest.val_top1 == shuffled.val_top1 == no_test.val_top1
    assert no_test.test_top1 is None
    assert set(honest.val_top1) == {(lr, wd) for lr in options["lrs"] for wd in options["weight_decays"]}


def test_linear_probe__refit_uses_all_training_rows():
    train, train_y = clusters(30, num_classes=2, dim=4, spread=1.0)
    kept = linear_probe(train, train_y, lrs=(0.1,), weight_decays=(0.0,), epochs=3, refit=False)
    refit = linear_probe(train, train_y, lrs=(0.1,), weight_decays=(0.0,), epochs=3, refit=True)
    torch.testing.assert_close(refit.normalizer.mean, train.mean(0))
    assert not torch.allclose(kept.normalizer.mean, train.mean(0))


def test_stratified_split__every_class_in_both_parts():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 2)
    fit, val = stratified_split(labels, 0.2, seed=0)
    assert sorted(torch.cat((fit, val)).tolist()) == list(range(15))
    assert set(labels[val].tolist()) == {0, 1, 2} and set(labels[fit].tolist()) == {0, 1, 2}
    assert (labels[val] == 0).sum() == 2
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\), got 1.0"):
        stratified_split(labels, 1.0)
    with pytest.raises(ValueError, match="every class has a single training sample"):
        stratified_split(torch.tensor([0, 1, 2]), 0.5)


def test_feature_normalizer__modes():
    features = torch.tensor([[1.0, 10.0], [3.0, 10.0]])
    standard = FeatureNormalizer("standardize").fit(features)
    torch.testing.assert_close(standard(features)[:, 1], torch.zeros(2))  # a constant dimension stays finite
    torch.testing.assert_close(FeatureNormalizer("l2").fit(features)(features).norm(dim=1), torch.ones(2))
    with pytest.raises(ValueError, match="normalization must be one of"):
        FeatureNormalizer("whiten").fit(features)


def test_linear_probe__errors():
    train, train_y = clusters(5, num_classes=2, dim=3)
    with pytest.raises(ValueError, match="pass both test_features and test_labels, or neither"):
        linear_probe(train, train_y, train)
    with pytest.raises(ValueError, match="learning rates must be > 0"):
        linear_probe(train, train_y, lrs=(0.0,))
    with pytest.raises(ValueError, match="optimizer must be one of"):
        linear_probe(train, train_y, optimizer="lbfgs")
    with pytest.raises(ValueError, match=r"train_features must be \[N, D\] with N = len\(train_labels\)"):
        linear_probe(train, train_y[:-1])


def test_linear_probe__diverged_heads_are_never_selected():
    train, train_y = clusters(30, num_classes=3, dim=6, spread=0.5)
    result = linear_probe(train, train_y, train, train_y, lrs=(1e38, 0.1), weight_decays=(0.0,), epochs=3,
                          batch_size=16)  # fmt: skip  # lr 1e38 overflows float32: NaN weights
    assert result.val_top1[(1e38, 0.0)] == 0.0  # NaN logits count as wrong, not as class 0
    assert result.best_lr == 0.1 and result.test_top1 == 1.0
