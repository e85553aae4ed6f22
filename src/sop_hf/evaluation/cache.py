"""On-disk cache of extracted features, keyed by everything that determines them, so stale features are never reused.

The key is the SHA-256 of:

- the model weights (every state-dict tensor's name, dtype, shape and bytes: retraining, fine-tuning or loading
  another checkpoint changes it, even in place);
- the model config (``to_dict()`` without the load path and library version) and the processor config;
- the data: ``Dataset._fingerprint`` for a ``datasets.Dataset`` (it changes with every ``map`` / ``select`` /
  ``shuffle``), or, for an image folder, every file's relative path, size and modification time;
- the split name, the feature options (pooling, n_last_blocks, scales, autocast dtype, columns, max_samples).

Entries are ``<cache_dir>/<key>.safetensors`` (``features`` [N, D] float32, ``labels`` [N] int64 if any) with the
key's parts in the file metadata; writes go through a temporary file and ``os.replace``, so a crashed run never
leaves a half-written entry. Streams (``IterableDataset``) have no fingerprint and are not cached.

>>> cache = FeatureCache("/tmp/sop_hf_features")  # doctest: +SKIP
>>> x, y = cached_extract_features(model, dataset, processor, cache=cache, split="train")  # doctest: +SKIP
"""

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import datasets
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .features import extract_features, resolve_dtype

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when the stored layout or the feature code changes meaning
_CONFIG_KEYS_IGNORED = {"_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype"}


def default_cache_dir() -> Path:
    """``$SOP_HF_CACHE``, else ``$HF_HOME/sop_hf/features``, else ``~/.cache/sop_hf/features``."""
    if os.environ.get("SOP_HF_CACHE"):
        return Path(os.environ["SOP_HF_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "sop_hf" / "features"
    return Path.home() / ".cache" / "sop_hf" / "features"


def hash_state_dict(model: torch.nn.Module) -> str:
    """SHA-256 of every state-dict tensor (name, dtype, shape, raw bytes), in sorted name order.

    About 0.3 s per 100 M float32 parameters on one CPU core; the tensors are copied to the CPU one at a time.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def config_signature(model: torch.nn.Module) -> str:
    """The model config as sorted JSON, without the keys that do not shape the features (load path, version)."""
    config = getattr(model, "config", None)
    if config is None:
        return type(model).__name__
    values = {k: v for k, v in config.to_dict().items() if k not in _CONFIG_KEYS_IGNORED}
    return _json({"class": type(model).__name__, **values})


def processor_signature(image_processor) -> str:
    """The image processor's settings as sorted JSON (``to_dict()``), or its ``repr`` for a plain callable."""
    to_dict = getattr(image_processor, "to_dict", None)
    return _json(to_dict()) if callable(to_dict) else repr(image_processor)


def folder_signature(folder: str | os.PathLike) -> str:
    """SHA-256 of every file under ``folder``: relative path, size and modification time (ns), sorted.

    Raises:
        ValueError: If ``folder`` is not a directory.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"{folder} is not a directory")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        stat = path.stat()
        digest.update(f"{path.relative_to(root).as_posix()}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def dataset_signature(dataset, data_source: str | os.PathLike | None = None) -> str | None:
    """Identify the data: a folder's file list (when ``data_source`` is a directory) or ``Dataset._fingerprint``.

    Returns:
        ``None`` when the data cannot be identified (streams, plain lists): such features are not cached.
    """
    if data_source is not None and os.path.isdir(data_source):
        return "folder:" + folder_signature(data_source)
    if isinstance(dataset, datasets.Dataset):
        return "dataset:" + dataset._fingerprint
    return None


def feature_cache_key(
    model: torch.nn.Module,
    image_processor,
    data_signature: str,
    split: str | None = None,
    options: Mapping[str, Any] | None = None,
    weights_hash: str | None = None,
) -> tuple[str, dict[str, str]]:
    """The cache key (hex SHA-256) and the parts it was made of.

    Args:
        model: The encoder whose weights and config are hashed.
        image_processor: Its processor (settings hashed).
        data_signature: From :func:`dataset_signature`.
        split: Split name; part of the key because folders hold several splits.
        options: Feature options (pooling, n_last_blocks, scales, dtype, columns, max_samples, ...).
        weights_hash: A precomputed :func:`hash_state_dict` (saves re-hashing when extracting several splits).
    """
    parts = {
        "version": str(CACHE_VERSION),
        "weights": weights_hash or hash_state_dict(model),
        "config": config_signature(model),
        "processor": processor_signature(image_processor),
        "data": data_signature,
        "split": str(split),
        "options": _json(dict(options or {})),
    }
    return hashlib.sha256(_json(parts).encode()).hexdigest(), parts


class FeatureCache:
    """A folder of feature entries (see the module docstring).

    Args:
        cache_dir: Where entries live; default :func:`default_cache_dir`. Delete the folder to free space; entries
            are never overwritten in place, only added.
    """

    def __init__(self, cache_dir: str | os.PathLike | None = None):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.cache_dir / f"{key}.safetensors"

    def load(self, key: str, parts: Mapping[str, str] | None = None) -> tuple[torch.Tensor, torch.Tensor | None] | None:
        """The cached (features, labels) of ``key``, or ``None`` if absent, unreadable or made of other parts."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as handle:
                stored = json.loads((handle.metadata() or {}).get("parts", "null"))
            tensors = load_file(str(path))
        except (OSError, ValueError, RuntimeError, SafetensorError) as error:  # corrupt: a miss, then rewritten
            logger.warning("ignoring unreadable feature cache entry %s: %s", path, error)
            return None
        if parts is not None and stored != dict(parts):
            logger.warning("feature cache entry %s was made from other inputs; recomputing", path)
            return None
        return tensors["features"], tensors.get("labels")

    def save(self, key: str, features: torch.Tensor, labels: torch.Tensor | None, parts: Mapping[str, str]) -> Path:
        """Write an entry atomically (temporary file in the same folder, then ``os.replace``)."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tensors = {"features": features.float().contiguous()}
        if labels is not None:
            tensors["labels"] = labels.long().contiguous()
        handle, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
        os.close(handle)
        try:
            save_file(tensors, tmp, metadata={"parts": _json(dict(parts))})
            os.replace(tmp, self.path(key))
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return self.path(key)


def cached_extract_features(
    model: torch.nn.Module,
    dataset,
    image_processor,
    cache: FeatureCache | str | os.PathLike | None = None,
    split: str | None = None,
    data_source: str | os.PathLike | None = None,
    weights_hash: str | None = None,
    key_extra: Mapping[str, Any] | None = None,
    **extract_kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`~sop_hf.evaluation.features.extract_features` through a :class:`FeatureCache`.

    Args:
        model: The encoder, as for ``extract_features``.
        dataset: The rows, as for ``extract_features``; a ``datasets.Dataset`` (or a folder's) to be cached.
        image_processor: As for ``extract_features``.
        cache: A ``FeatureCache``, a folder, or ``None`` for the default folder.
        split: Split name (part of the key).
        data_source: The image folder ``dataset`` was loaded from, if any: the key then uses its file list and
            modification times instead of the dataset fingerprint, so edited files invalidate the entry.
        weights_hash: A precomputed :func:`hash_state_dict` of ``model``.
        key_extra: Anything else that shaped ``dataset`` and must be in the key, e.g. how a subset was drawn when
            ``data_source`` (a folder) identifies the data instead of the fingerprint.
        **extract_kwargs: ``extract_features`` options; those that change the features are part of the key.

    Returns:
        ([N, D] float32 features, [N] labels or None), from the cache when an entry with the same key exists.
    """
    cache = cache if isinstance(cache, FeatureCache) else FeatureCache(cache)
    data = dataset_signature(dataset, data_source)
    if data is None:
        logger.info("features of a %s are not cached (no fingerprint)", type(dataset).__name__)
        return extract_features(model, dataset, image_processor, **extract_kwargs)
    options = {
        "pooling": extract_kwargs.get("pooling", "cls"),
        "n_last_blocks": extract_kwargs.get("n_last_blocks", 4) if extract_kwargs.get("pooling") == "cls_last_n"
        else None,
        "scales": [float(s) for s in extract_kwargs.get("scales", (1.0,))],
        "dtype": str(resolve_dtype(extract_kwargs.get("dtype"))),
        "image_column": extract_kwargs.get("image_column", "image"),
        "label_column": extract_kwargs.get("label_column", "label"),
        "max_samples": extract_kwargs.get("max_samples"),
        **dict(key_extra or {}),
    }  # fmt: skip
    key, parts = feature_cache_key(model, image_processor, data, split, options, weights_hash)
    cached = cache.load(key, parts)
    if cached is not None:
        cache.hits += 1
        logger.info("feature cache hit %s (%s, %d rows)", key[:12], split, cached[0].shape[0])
        return cached
    cache.misses += 1
    features, labels = extract_features(model, dataset, image_processor, **extract_kwargs)
    cache.save(key, features, labels, parts)
    logger.info("feature cache stored %s (%s, %d rows)", key[:12], split, features.shape[0])
    return features, labels
