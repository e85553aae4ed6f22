"""``evaluate`` metric modules that ship inside sop_hf and load without the Hub (``evaluate.load(<local path>)``).

``evaluate.load("accuracy")`` downloads its script from the Hub, which is unavailable offline; these modules are
local folders holding ``<name>/<name>.py`` (an ``evaluate.Metric`` subclass), so ``evaluate.load(metric_path(name))``
works with ``HF_HUB_OFFLINE=1``. The computation is this package's torch code (``knn.py``, ``retrieval.py``).

- ``knn_accuracy``: weighted k-NN top-1; predictions are test embeddings, references their labels; the training
  embeddings and labels are ``compute`` arguments.
- ``retrieval_map``: cosine retrieval mAP with label equality as relevance; predictions are query embeddings.
- ``top1_accuracy``: the fraction of predicted labels equal to the references (the Hub's ``accuracy``, offline).

``evaluate`` is an optional dependency (``pip install sop_hf[eval]``); it copies the script into
``$HF_HOME/modules`` on first load.

>>> knn = load_metric("knn_accuracy")  # doctest: +SKIP
>>> knn.compute(predictions=test_x, references=test_y, train_embeddings=train_x, train_labels=train_y, k=20)
... # doctest: +SKIP
{'accuracy': 0.81}
"""

from pathlib import Path

METRICS_DIR = Path(__file__).resolve().parent
METRIC_NAMES = ("knn_accuracy", "retrieval_map", "top1_accuracy")


def metric_path(name: str) -> str:
    """The folder of metric ``name``, to pass to ``evaluate.load``.

    Raises:
        ValueError: For a name that is not in ``METRIC_NAMES``.
    """
    if name not in METRIC_NAMES:
        raise ValueError(f"unknown sop_hf metric {name!r}; choose one of {METRIC_NAMES}")
    return str(METRICS_DIR / name)


def load_metric(name: str, **kwargs):
    """``evaluate.load(metric_path(name), **kwargs)``: one of this package's metrics, without the Hub.

    Raises:
        ImportError: If ``evaluate`` is not installed.
    """
    try:
        import evaluate
    except ImportError as error:  # optional dependency
        raise ImportError("sop_hf metrics need `evaluate`: pip install 'sop_hf[eval]'") from error
    return evaluate.load(metric_path(name), **kwargs)


__all__ = ["METRICS_DIR", "METRIC_NAMES", "load_metric", "metric_path"]
