"""Cosine retrieval mAP with label equality as relevance, as an ``evaluate`` metric (``sop_hf.evaluation.retrieval``).

Load it offline with ``evaluate.load(sop_hf.evaluation.metrics.metric_path("retrieval_map"))``.
"""

import datasets
import evaluate
import torch

from sop_hf.evaluation.retrieval import label_map

_DESCRIPTION = """\
Mean average precision of cosine-similarity retrieval: every query embedding ranks the gallery, gallery items with
the query's label are positives; junk items are removed from the ranking (revisited Oxford/Paris convention,
arXiv:1803.11285), and queries without positives are skipped.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `list` of `float`): query embeddings.
    references (`list` of `int`): query labels.
    gallery_embeddings (array-like [G, D]): gallery embeddings; default: the queries themselves.
    gallery_labels (array-like [G]): gallery labels; default: the query labels.
    exclude_self (`bool`): ignore each query's own entry; default True when the gallery is the queries.
    method (`str`, default "trapezoid"): "trapezoid" (revisited Oxford/Paris AP) or "step" (standard AP).
Returns:
    map (`float`): mean average precision in [0, 1].
Examples:
    >>> import evaluate
    >>> from sop_hf.evaluation.metrics import metric_path
    >>> retrieval = evaluate.load(metric_path("retrieval_map"))
    >>> retrieval.compute(predictions=[[1.0, 0.1]], references=[0], gallery_embeddings=[[1.0, 0.0], [0.0, 1.0]],
    ...                   gallery_labels=[0, 1])
    {'map': 1.0}
"""

_CITATION = """\
@inproceedings{radenovic2018revisiting,
  title     = {Revisiting Oxford and Paris: Large-Scale Image Retrieval Benchmarking},
  author    = {Radenovi{\\'c}, Filip and Iscen, Ahmet and Tolias, Giorgos and Avrithis, Yannis and Chum, Ond{\\v{r}}ej},
  booktitle = {CVPR},
  year      = {2018}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RetrievalMap(evaluate.Metric):
    """Cosine retrieval mAP of query embeddings against a labelled gallery."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references, gallery_embeddings=None, gallery_labels=None, exclude_self=None,
                 method="trapezoid"):  # fmt: skip
        queries = torch.as_tensor(predictions, dtype=torch.float32)
        query_labels = torch.as_tensor(references, dtype=torch.long)
        if (gallery_embeddings is None) != (gallery_labels is None):
            raise ValueError("pass both gallery_embeddings and gallery_labels, or neither")
        same = gallery_embeddings is None
        gallery = queries if same else torch.as_tensor(gallery_embeddings, dtype=torch.float32)
        gallery_y = query_labels if same else torch.as_tensor(gallery_labels, dtype=torch.long)
        exclude_self = same if exclude_self is None else exclude_self
        return {"map": label_map(queries, query_labels, gallery, gallery_y, exclude_self=exclude_self, method=method)}
