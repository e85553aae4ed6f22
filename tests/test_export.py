"""Export to a stock ``transformers.ViTModel``: weight names, parity with SOPModel, processor, use without sop_hf."""

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, ViTModel

from sop_hf import SOPImageProcessor, SOPModel
from sop_hf.hub.stock_vit import export_to_vit, save_stock_vit, stock_image_processor, vit_config_from_sop
from tests.conftest import tiny_config

TOLERANCE = 1e-5


@torch.no_grad()
def randomize_(model: torch.nn.Module) -> torch.nn.Module:
    """Give every parameter a clearly non-default value, so a wrong copy, split or epsilon shows in the outputs."""
    for name, param in model.named_parameters():
        if param.ndim >= 2 and "token" not in name and "position" not in name:
            fan_in = param[0].numel()
            param.normal_(0.0, 1.5 / math.sqrt(fan_in))  # [out, in, ...]
        elif name.endswith("weight"):  # LayerNorm scales
            param.copy_(1.0 + 0.3 * torch.randn_like(param))
        else:  # biases, [CLS], mask token, position table
            param.normal_(0.0, 0.3)
    return model


def max_delta(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@pytest.fixture
def encoder() -> SOPModel:
    return randomize_(SOPModel(tiny_config())).eval()


def test_vit_config__copies_the_architecture_and_epsilon():
    config = tiny_config(layer_norm_eps=1e-6, qkv_bias=False, intermediate_size=80)
    vit_config = vit_config_from_sop(config)
    assert (vit_config.image_size, vit_config.patch_size, vit_config.num_channels) == (32, 8, 3)
    assert (vit_config.hidden_size, vit_config.num_hidden_layers, vit_config.num_attention_heads) == (32, 2, 2)
    assert vit_config.intermediate_size == 80
    assert vit_config.layer_norm_eps == 1e-6  # not ViTConfig's 1e-12
    assert vit_config.hidden_act == "gelu"
    assert vit_config.qkv_bias is False
    assert vit_config.hidden_dropout_prob == 0.0 and vit_config.attention_probs_dropout_prob == 0.0


def test_export_to_vit__state_dict_keys(encoder):
    # ViT parameter names changed inside transformers 5.x: pin the exact list.
    expected = [
        "embeddings.cls_token",
        "embeddings.position_embeddings",
        "embeddings.patch_embeddings.projection.weight",
        "embeddings.patch_embeddings.projection.bias",
    ]
    for i in range(2):
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            expected += [f"layers.{i}.attention.{name}.weight", f"layers.{i}.attention.{name}.bias"]
        for name in ("layernorm_before", "layernorm_after", "mlp.fc1", "mlp.fc2"):
            expected += [f"layers.{i}.{name}.weight", f"layers.{i}.{name}.bias"]
    expected += ["layernorm.weight", "layernorm.bias"]
    vit = export_to_vit(encoder)
    assert isinstance(vit, ViTModel) and type(vit).__module__.startswith("transformers.")
    assert sorted(vit.state_dict()) == sorted(expected)
    assert vit.pooler is None
    with_pooler = export_to_vit(encoder, with_pooler=True)
    assert sorted(with_pooler.state_dict()) == sorted(expected + ["pooler.dense.weight", "pooler.dense.bias"])


def test_export_to_vit__qkv_splits_in_q_k_v_order(encoder):
    vit = export_to_vit(encoder)
    qkv = encoder.layers[1].attention.qkv
    attention = vit.layers[1].attention
    torch.testing.assert_close(attention.q_proj.weight, qkv.weight[:32], rtol=0, atol=0)
    torch.testing.assert_close(attention.k_proj.weight, qkv.weight[32:64], rtol=0, atol=0)
    torch.testing.assert_close(attention.v_proj.bias, qkv.bias[64:], rtol=0, atol=0)


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_export_to_vit__parity_at_native_size(encoder, batch_size, attn_implementation):
    vit = export_to_vit(encoder)
    vit.set_attn_implementation(attn_implementation)
    images = torch.randn(batch_size, 3, 32, 32)
    with torch.no_grad():
        expected = encoder(images)
        actual = vit(images)
    assert actual.last_hidden_state.shape == (batch_size, 17, 32)
    assert max_delta(actual.last_hidden_state, expected.last_hidden_state) <= TOLERANCE
    assert actual.pooler_output is None


@pytest.mark.parametrize("size", [(48, 48), (24, 24), (32, 48), (16, 64)])
def test_export_to_vit__parity_with_interpolated_positions(encoder, size):
    vit = export_to_vit(encoder)
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        expected = encoder(images).last_hidden_state
        actual = vit(images, interpolate_pos_encoding=True).last_hidden_state
    assert max_delta(actual, expected) <= TOLERANCE


def test_export_to_vit__identity_pooler_returns_the_cls_token(encoder):
    vit = export_to_vit(encoder, with_pooler=True)
    assert vit.config.pooler_act == "linear"
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        out = vit(images)
        assert max_delta(out.pooler_output, encoder(images).pooler_output) <= TOLERANCE
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])


def test_export_to_vit__other_native_size_needs_no_interpolation_flag(encoder):
    vit = export_to_vit(encoder, image_size=48)
    assert vit.config.image_size == 48
    assert vit.embeddings.position_embeddings.shape == (1, 1 + 36, 32)
    images = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        assert max_delta(vit(images).last_hidden_state, encoder(images).last_hidden_state) <= TOLERANCE
    with pytest.raises(ValueError, match=r"image_size \(50\) must be a multiple of patch_size \(8\)"):
        export_to_vit(encoder, image_size=50)


def test_export_to_vit__no_qkv_bias_mask_token_dropped_train_mode_ignored():
    encoder = randomize_(SOPModel(tiny_config(qkv_bias=False, drop_path_rate=0.5)))  # training mode, mask token
    vit = export_to_vit(encoder)
    assert not vit.training
    assert vit.layers[0].attention.q_proj.bias is None
    assert not any("mask" in name for name in vit.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert max_delta(vit(images).last_hidden_state, encoder.eval()(images).last_hidden_state) <= TOLERANCE


def test_export_to_vit__keeps_dtype(encoder):
    vit = export_to_vit(encoder.to(torch.bfloat16))
    assert vit.dtype == torch.bfloat16


def test_export_to_vit__rejects_other_models():
    with pytest.raises(ValueError, match="export_to_vit expects a SOPModel, got Linear"):
        export_to_vit(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("crop_pct", [0.875, 1.0])
def test_stock_image_processor__same_pixels_as_sop_processor(crop_pct):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(50, 70), (90, 40)]]
    images.append(Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)))  # greyscale -> RGB
    stock = stock_image_processor(32, crop_pct)(images, return_tensors="pt")["pixel_values"]
    ours = SOPImageProcessor(size=32, crop_pct=crop_pct)(images, return_tensors="pt")["pixel_values"]
    assert stock.shape == (3, 3, 32, 32)
    torch.testing.assert_close(stock, ours, rtol=0, atol=0)


def test_stock_image_processor__bad_arguments():
    with pytest.raises(ValueError, match="image_size must be an integer >= 1, got 0"):
        stock_image_processor(0)
    with pytest.raises(ValueError, match=r"crop_pct must be in \(0, 1\], got 1.5"):
        stock_image_processor(32, crop_pct=1.5)


def test_save_stock_vit__folder_has_no_custom_code_and_reloads(tmp_path, encoder):
    save_stock_vit(encoder, tmp_path / "vit")
    assert sorted(os.listdir(tmp_path / "vit")) == ["config.json", "model.safetensors", "preprocessor_config.json"]
    config = json.loads((tmp_path / "vit" / "config.json").read_text())
    processor_config = json.loads((tmp_path / "vit" / "preprocessor_config.json").read_text())
    assert config["model_type"] == "vit" and config["architectures"] == ["ViTModel"]
    assert config["layer_norm_eps"] == 1e-6
    assert "auto_map" not in config and "auto_map" not in processor_config
    assert processor_config["image_processor_type"] == "BitImageProcessor"
    assert processor_config["crop_size"] == {"height": 32, "width": 32}

    model, info = AutoModel.from_pretrained(tmp_path / "vit", output_loading_info=True)
    assert type(model) is ViTModel
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out, expected = model.eval()(images), encoder(images)
    assert max_delta(out.last_hidden_state, expected.last_hidden_state) <= TOLERANCE
    assert max_delta(out.pooler_output, expected.pooler_output) <= TOLERANCE
    processor = AutoImageProcessor.from_pretrained(tmp_path / "vit")
    assert type(processor).__module__.startswith("transformers.")


def test_save_stock_vit__loads_and_runs_in_a_pipeline_without_sop_hf(tmp_path, encoder):
    save_stock_vit(encoder, tmp_path / "vit")
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (45, 60, 3), dtype=np.uint8))
    image.save(tmp_path / "image.png")
    pixels = SOPImageProcessor(size=32)(image, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        features = encoder(pixels).last_hidden_state  # [1, 17, 32]
    torch.save(features, tmp_path / "features.pt")
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path = [p for p in sys.path if not os.path.isdir(os.path.join(p or ".", "sop_hf"))]
        try:
            import sop_hf
            raise SystemExit("sop_hf is still importable")
        except ImportError:
            pass
        import torch
        from PIL import Image
        from transformers import AutoImageProcessor, AutoModel, pipeline
        folder = {str(tmp_path / "vit")!r}
        model = AutoModel.from_pretrained(folder)
        processor = AutoImageProcessor.from_pretrained(folder)
        extractor = pipeline("image-feature-extraction", model=folder)
        image = Image.open({str(tmp_path / "image.png")!r})
        expected = torch.load({str(tmp_path / "features.pt")!r})
        tokens = torch.tensor(extractor(image))  # [1, 17, 32]
        pooled = torch.tensor(extractor(image, pool=True))  # [1, 32]
        print("TYPES", type(model).__name__, type(processor).__name__)
        print("DELTA", (tokens - expected).abs().max().item(), (pooled - expected[:, 0]).abs().max().item())
        print("MODULES", sorted(m for m in sys.modules if m.startswith("sop_hf") or m.startswith("torchvision")))
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.strip()}
    assert lines["TYPES"] == ["ViTModel", "BitImageProcessorPil"]
    assert max(float(v) for v in lines["DELTA"]) <= TOLERANCE
    assert lines["MODULES"] == ["[]"]
    assert not os.path.exists(tmp_path / "modules") or not os.listdir(tmp_path / "modules")
