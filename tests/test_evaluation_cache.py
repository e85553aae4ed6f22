"""Tests of ``sop_hf.evaluation.cache``: hits skip the model, and any change of weights, data or options misses."""

import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sop_hf.data.sources import load_image_dataset
from sop_hf.evaluation.cache import (
    FeatureCache,
    cached_extract_features,
    dataset_signature,
    default_cache_dir,
    folder_signature,
    hash_state_dict,
)
from tests.test_evaluation_features import image_dataset, tiny_encoder


class CountingModel:
    """Counts forward calls of a module through a forward pre-hook."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


@pytest.fixture
def encoder():
    torch.manual_seed(0)
    model, processor = tiny_encoder()
    return model, processor, CountingModel(model)


def extract(model, data, processor, cache, **kwargs):
    return cached_extract_features(model, data, processor, cache=cache, split="train", progress=False, **kwargs)


def test_cache__hit_skips_the_model(encoder, tmp_path):
    model, processor, counter = encoder
    cache = FeatureCache(tmp_path)
    data = image_dataset(8)
    first, first_labels = extract(model, data, processor, cache, batch_size=4)
    assert counter.calls == 2 and cache.misses == 1 and len(list(tmp_path.glob("*.safetensors"))) == 1
    again, again_labels = extract(model, image_dataset(8), processor, cache, batch_size=4)  # same content, rebuilt
    assert counter.calls == 2 and cache.hits == 1
    torch.testing.assert_close(again, first)
    assert again_labels.tolist() == first_labels.tolist()
    extract(model, data, processor, FeatureCache(tmp_path), batch_size=8)  # batch size does not change features
    assert counter.calls == 2


def test_cache__changed_weights_miss(encoder, tmp_path):
    model, processor, counter = encoder
    data = image_dataset(4)
    before, _ = extract(model, data, processor, tmp_path)
    with torch.no_grad():
        model.layers[0].mlp.fc1.weight[0, 0] += 1.0  # an in-place edit: same object, same config
    after, _ = extract(model, data, processor, tmp_path)
    assert counter.calls == 2
    assert not torch.equal(before, after)
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


def test_cache__changed_data_split_or_options_miss(encoder, tmp_path):
    model, processor, counter = encoder
    data = image_dataset(6)
    extract(model, data, processor, tmp_path)
    extract(model, image_dataset(6, seed=1), processor, tmp_path)  # other pixels -> other fingerprint
    extract(model, data.select(range(5)), processor, tmp_path)
    cached_extract_features(model, data, processor, cache=tmp_path, split="test", progress=False)
    extract(model, data, processor, tmp_path, pooling="cls_mean_patch")
    extract(model, data, processor, tmp_path, scales=(1.0, 0.5))  # two forwards: one per scale
    extract(model, data, processor, tmp_path, max_samples=3)
    assert counter.calls == 8
    extract(model, data, processor, tmp_path, pooling="cls_mean_patch")
    assert counter.calls == 8


def test_cache__changed_processor_misses(encoder, tmp_path):
    model, processor, counter = encoder
    data = image_dataset(4)
    extract(model, data, processor, tmp_path)
    from sop_hf import SOPImageProcessor

    extract(model, data, SOPImageProcessor(size=28, crop_pct=0.875), tmp_path)
    assert counter.calls == 2


def write_folder(root, count=4):
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / f"{i}.png")


def test_cache__image_folder_keyed_by_files_and_mtimes(encoder, tmp_path):
    model, processor, counter = encoder
    root, cache = tmp_path / "images", tmp_path / "cache"
    write_folder(root)
    data = load_image_dataset(str(root), split="train", cache_dir=str(tmp_path / "hf_datasets"))
    extract(model, data, processor, cache, data_source=str(root))
    extract(model, data, processor, cache, data_source=str(root))
    assert counter.calls == 1
    signature = folder_signature(root)
    touched = root / "train" / "class0" / "0.png"
    later = time.time() + 10
    os.utime(touched, (later, later))  # a re-saved image: same name, new modification time
    assert folder_signature(root) != signature
    extract(model, data, processor, cache, data_source=str(root))
    assert counter.calls == 2


def test_cache__corrupt_entry_is_recomputed(encoder, tmp_path):
    model, processor, counter = encoder
    data = image_dataset(4)
    features, _ = extract(model, data, processor, tmp_path)
    (entry,) = tmp_path.glob("*.safetensors")
    entry.write_bytes(b"not a safetensors file")
    again, _ = extract(model, data, processor, tmp_path)
    assert counter.calls == 2
    torch.testing.assert_close(again, features)


def test_cache__streams_are_not_cached(encoder, tmp_path):
    model, processor, counter = encoder
    stream = image_dataset(4).to_iterable_dataset()
    assert dataset_signature(stream) is None
    extract(model, stream, processor, tmp_path)
    extract(model, stream, processor, tmp_path)
    assert counter.calls == 2 and not list(tmp_path.glob("*"))


def test_hash_state_dict__stable_and_sensitive():
    torch.manual_seed(0)
    a, _ = tiny_encoder()
    torch.manual_seed(0)
    b, _ = tiny_encoder()
    assert hash_state_dict(a) == hash_state_dict(b)
    with torch.no_grad():
        b.layernorm.bias[0] = 1e-7
    assert hash_state_dict(a) != hash_state_dict(b)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("SOP_HF_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "sop_hf" / "features"
    monkeypatch.setenv("SOP_HF_CACHE", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x"


def test_folder_signature__not_a_directory(tmp_path):
    with pytest.raises(ValueError, match="is not a directory"):
        folder_signature(tmp_path / "missing")
