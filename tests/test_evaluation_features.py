"""Tests of ``sop_hf.evaluation.features``: pooling modes, dataset kinds, multi-scale averaging and error messages."""

import datasets
import numpy as np
import pytest
import torch

from sop_hf import SOPConfig, SOPImageProcessor, SOPModel
from sop_hf.evaluation.features import extract_features, pool_output, resolve_dtype


def tiny_encoder() -> tuple[SOPModel, SOPImageProcessor]:
    config = SOPConfig(image_size=28, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    return SOPModel(config).eval(), SOPImageProcessor(size=28, crop_pct=1.0)


def image_dataset(count: int = 20, seed: int = 0) -> datasets.Dataset:
    rng = np.random.default_rng(seed)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
    images = [rng.integers(0, 256, (28, 28), dtype=np.uint8) for _ in range(count)]
    return datasets.Dataset.from_dict({"image": images, "label": [i % 3 for i in range(count)]}, features=features)


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return tiny_encoder()


def test_extract_features__cls_is_pooler_output(encoder):
    model, processor = encoder
    data = image_dataset(10)
    features, labels = extract_features(model, data, processor, batch_size=4, progress=False)
    pixel_values = processor([im.convert("RGB") for im in data["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixel_values).pooler_output
    torch.testing.assert_close(features, expected)
    assert labels.tolist() == data["label"]


def test_extract_features__cls_last_n_is_normed_cls_of_last_blocks(encoder):
    model, processor = encoder
    data = image_dataset(6)
    features, _ = extract_features(model, data, processor, pooling="cls_last_n", n_last_blocks=2, progress=False)
    pixel_values = processor([im.convert("RGB") for im in data["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
        first = model.layernorm(out.hidden_states[1][:, 0])
    assert features.shape == (6, 64)
    torch.testing.assert_close(features[:, :32], first)
    torch.testing.assert_close(features[:, 32:], out.pooler_output)  # the last block's normed [CLS] is the pooler


def test_extract_features__cls_mean_patch(encoder):
    model, processor = encoder
    data = image_dataset(4)
    features, _ = extract_features(model, data, processor, pooling="cls_mean_patch", progress=False)
    pixel_values = processor([im.convert("RGB") for im in data["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        tokens = model(pixel_values).last_hidden_state
    torch.testing.assert_close(features, torch.cat((tokens[:, 0], tokens[:, 1:].mean(1)), dim=1))


def test_extract_features__iterable_list_and_workers_match_dataset(encoder):
    model, processor = encoder
    data = image_dataset(13)
    reference, ref_labels = extract_features(model, data, processor, batch_size=4, progress=False)
    streamed, stream_labels = extract_features(model, data.to_iterable_dataset(), processor, batch_size=4,
                                               progress=False)  # fmt: skip
    rows, row_labels = extract_features(model, list(data), processor, batch_size=5, progress=False)
    workers, _ = extract_features(model, data, processor, batch_size=4, num_workers=2, progress=False)
    for other in (streamed, rows, workers):
        torch.testing.assert_close(other, reference)
    assert stream_labels.tolist() == row_labels.tolist() == ref_labels.tolist()


def test_extract_features__max_samples_on_every_kind(encoder):
    model, processor = encoder
    data = image_dataset(13)
    for source in (data, data.to_iterable_dataset(), list(data)):
        features, labels = extract_features(model, source, processor, batch_size=4, max_samples=6, progress=False)
        assert features.shape == (6, 32) and labels.shape == (6,)


def test_extract_features__multiscale_is_normalised_mean(encoder):
    model, processor = encoder
    data = image_dataset(5)
    features, _ = extract_features(model, data, processor, scales=(1.0, 0.5), progress=False)
    pixel_values = processor([im.convert("RGB") for im in data["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        full = model(pixel_values).pooler_output
        half = model(torch.nn.functional.interpolate(pixel_values, size=(16, 16), mode="bilinear")).pooler_output
    expected = torch.nn.functional.normalize(
        torch.nn.functional.normalize(full, dim=1) + torch.nn.functional.normalize(half, dim=1), dim=1
    )  # 14 px snaps to 16 = 4 patches of 4 px
    torch.testing.assert_close(features, expected)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(5))


def test_extract_features__restores_training_mode(encoder):
    model, processor = encoder
    model.train()
    extract_features(model, image_dataset(2), processor, progress=False)
    assert model.training
    model.eval()


def test_extract_features__no_label_column(encoder):
    model, processor = encoder
    data = image_dataset(3).remove_columns("label")
    features, labels = extract_features(model, data, processor, progress=False)
    assert features.shape == (3, 32) and labels is None


def test_extract_features__errors(encoder):
    model, processor = encoder
    data = image_dataset(3)
    with pytest.raises(ValueError, match=r"pooling must be one of \('cls', 'cls_last_n', 'cls_mean_patch'\)"):
        extract_features(model, data, processor, pooling="mean", progress=False)
    with pytest.raises(ValueError, match=r"n_last_blocks must be in \[1, 2\]"):
        extract_features(model, data, processor, pooling="cls_last_n", n_last_blocks=3, progress=False)
    with pytest.raises(ValueError, match="column 'picture' not found in the dataset"):
        extract_features(model, data, processor, image_column="picture", progress=False)
    with pytest.raises(ValueError, match="scales must be a non-empty list of positive numbers"):
        extract_features(model, data, processor, scales=(), progress=False)
    text_labels = data.cast_column("label", datasets.Value("int64")).map(lambda r: {"label": str(r["label"])})
    text_labels = text_labels.cast_column("label", datasets.Value("string"))
    with pytest.raises(ValueError, match="label column 'label' must hold integer class ids"):
        extract_features(model, text_labels, processor, progress=False)


def test_resolve_dtype():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("fp16") is torch.float16
    assert resolve_dtype("fp32") is None and resolve_dtype(None) is None
    with pytest.raises(ValueError, match="dtype must be one of"):
        resolve_dtype("int8")


def test_pool_output__cls_last_n_needs_hidden_states(encoder):
    model, _ = encoder
    with torch.no_grad():
        output = model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match="needs output_hidden_states=True"):
        pool_output(output, model, "cls_last_n")
