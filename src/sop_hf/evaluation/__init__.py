"""Evaluation protocols for frozen encoders: features (with a cache), k-NN, linear probe, retrieval, pictures.

- ``features``: batched extraction over ``Dataset`` / ``IterableDataset`` with pooling modes and multi-scale averaging;
- ``cache``: features on disk keyed by weights, configs, data fingerprint, split and options;
- ``knn``: chunked weighted k-NN (DINO);
- ``linear_probe``: a learning-rate x weight-decay grid of linear heads trained at once, chosen on held-out TRAIN;
- ``retrieval``: cosine ranking, mAP with junk handling, revisited Oxford/Paris protocols;
- ``visualize``: last-block [CLS] attention maps and 2-D feature scatters;
- ``metrics/``: ``evaluate`` modules loadable offline (``load_metric("knn_accuracy")``);
- ``indicators``: collapse indicators (effective rank, spread, neighbour similarity, assignment entropy).
"""

from .cache import FeatureCache, cached_extract_features, feature_cache_key, hash_state_dict
from .features import POOLINGS, extract_features, pool_output
from .knn import knn_classify, knn_top1
from .linear_probe import LinearProbeResult, linear_probe, train_linear_heads
from .retrieval import DEFAULT_SCALES, label_map, mean_average_precision, rank_gallery, revisited_map

__all__ = [
    "DEFAULT_SCALES",
    "POOLINGS",
    "FeatureCache",
    "LinearProbeResult",
    "cached_extract_features",
    "extract_features",
    "feature_cache_key",
    "hash_state_dict",
    "knn_classify",
    "knn_top1",
    "label_map",
    "linear_probe",
    "mean_average_precision",
    "pool_output",
    "rank_gallery",
    "revisited_map",
    "train_linear_heads",
]
