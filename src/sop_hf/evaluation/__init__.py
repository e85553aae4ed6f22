"""Evaluation protocols for frozen encoders: feature extraction and weighted k-NN."""

from .features import extract_features
from .knn import knn_classify, knn_top1

__all__ = ["extract_features", "knn_classify", "knn_top1"]
