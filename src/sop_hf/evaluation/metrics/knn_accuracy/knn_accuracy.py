"""Weighted k-NN top-1 accuracy (DINO protocol) as an ``evaluate`` metric, computed by ``sop_hf.evaluation.knn``.

Load it offline with ``evaluate.load(sop_hf.evaluation.metrics.metric_path("knn_accuracy"))``.
"""

import datasets
import evaluate
import torch

from sop_hf.evaluation.knn import knn_top1

_DESCRIPTION = """\
Weighted k-nearest-neighbour classification of frozen embeddings (Wu et al. 2018; DINO, arXiv:2104.14294): cosine
similarity, each of the k nearest training embeddings votes for its label with weight exp(s / T).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): test embeddings, one [D] vector per test sample.
    references (`list` of `int`): test labels.
    train_embeddings (array-like [N, D]): embeddings of the labelled training set.
    train_labels (array-like [N]): their integer labels.
    k (`int` or `list` of `int`, default 20): neighbours; a list returns one accuracy per k.
    temperature (`float`, default 0.07): vote temperature T; keep 0.07 to compare with published numbers.
Returns:
    accuracy (`float`): top-1 accuracy in [0, 1] for an int k, or `accuracy@<k>` keys for a list of k.
Examples:
    >>> import evaluate
    >>> from sop_hf.evaluation.metrics import metric_path
    >>> knn = evaluate.load(metric_path("knn_accuracy"))
    >>> knn.compute(predictions=[[1.0, 0.1]], references=[0], train_embeddings=[[1.0, 0.0], [0.0, 1.0]],
    ...             train_labels=[0, 1], k=1)
    {'accuracy': 1.0}
"""

_CITATION = """\
@inproceedings{caron2021dino,
  title     = {Emerging Properties in Self-Supervised Vision Transformers},
  author    = {Caron, Mathilde and Touvron, Hugo and Misra, Ishan and J{\\'e}gou, Herv{\\'e} and Mairal, Julien and
               Bojanowski, Piotr and Joulin, Armand},
  booktitle = {ICCV},
  year      = {2021}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class KnnAccuracy(evaluate.Metric):
    """Weighted k-NN top-1 accuracy of test embeddings against a labelled training set."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, train_embeddings=None, train_labels=None, k=20, temperature=0.07):
        if train_embeddings is None or train_labels is None:
            raise ValueError("knn_accuracy needs train_embeddings and train_labels")
        ks = [k] if isinstance(k, int) else [int(v) for v in k]
        accuracies = knn_top1(
            torch.as_tensor(train_embeddings, dtype=torch.float32),
            torch.as_tensor(train_labels, dtype=torch.long),
            torch.as_tensor(predictions, dtype=torch.float32),
            torch.as_tensor(references, dtype=torch.long),
            ks=ks,
            temperature=temperature,
        )
        if isinstance(k, int):
            return {"accuracy": accuracies[k]}
        return {f"accuracy@{v}": accuracies[v] for v in ks}
