"""Top-1 accuracy of predicted labels as an ``evaluate`` metric: the Hub's ``accuracy`` without the Hub.

Load it offline with ``evaluate.load(sop_hf.evaluation.metrics.metric_path("top1_accuracy"))``.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "The fraction of predicted class ids equal to the reference class ids (e.g. of a linear probe)."

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): true labels.
Returns:
    accuracy (`float`): in [0, 1].
Examples:
    >>> import evaluate
    >>> from sop_hf.evaluation.metrics import metric_path
    >>> evaluate.load(metric_path("top1_accuracy")).compute(predictions=[0, 1, 1], references=[0, 1, 0])
    {'accuracy': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Top1Accuracy(evaluate.Metric):
    """Plain top-1 accuracy of label predictions."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        predictions, references = np.asarray(predictions), np.asarray(references)
        if predictions.size == 0:
            raise ValueError("top1_accuracy needs at least one prediction")
        return {"accuracy": float((predictions == references).mean())}
