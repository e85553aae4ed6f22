"""SOPModel (the encoder): shapes, equivalences, masking, interpolation, checkpointing, save/load, Auto*, pipeline."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, pipeline

from sop_hf import SOPConfig, SOPImageProcessor, SOPModel
from tests.conftest import count_forward_calls, tiny_config


def test_forward__shapes_square_and_non_square(config):
    model = SOPModel(config).eval()
    out = model(torch.randn(3, 3, 32, 32))
    assert out.last_hidden_state.shape == (3, 1 + 16, 32)
    assert torch.equal(out.pooler_output, out.last_hidden_state[:, 0])
    out = model(torch.randn(1, 3, 16, 40))
    assert out.last_hidden_state.shape == (1, 1 + 2 * 5, 32)


def test_forward__bad_inputs_raise(config):
    model = SOPModel(config).eval()
    with pytest.raises(ValueError, match=r"multiples of patch_size \(8\)"):
        model(torch.randn(1, 3, 30, 32))
    with pytest.raises(ValueError, match="has 1 channels; the model expects 3"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match=r"bool_masked_pos must have shape \[batch, num_patches\] = \[1, 16\]"):
        model(torch.randn(1, 3, 32, 32), bool_masked_pos=torch.zeros(1, 15, dtype=torch.bool))
    with pytest.raises(TypeError, match="unexpected arguments"):
        model(torch.randn(1, 3, 32, 32), labels=torch.zeros(1))


def test_forward__batch_equivalence_and_eval_determinism(config):
    model = SOPModel(config).eval()
    images = torch.randn(4, 3, 32, 32)
    batched = model(images).last_hidden_state
    single = torch.cat([model(images[i : i + 1]).last_hidden_state for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert torch.equal(model(images).last_hidden_state, batched)


def test_forward__drop_path_only_in_training():
    model = SOPModel(tiny_config(drop_path_rate=0.5))
    images = torch.randn(8, 3, 32, 32)
    model.train()
    assert not torch.equal(model(images).last_hidden_state, model(images).last_hidden_state)
    model.eval()
    assert torch.equal(model(images).last_hidden_state, model(images).last_hidden_state)
    rates = [layer.drop_path_rate for layer in model.layers]
    assert rates == [0.0, 0.5]  # linear ramp over depth


def test_masking__replaces_exactly_the_masked_patch_embeddings(config):
    model = SOPModel(config).eval()
    with torch.no_grad():
        model.embeddings.mask_token.normal_()
    images = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, [1, 5]] = True
    mask[1, 15] = True
    plain = model.embeddings(images)
    masked = model.embeddings(images, mask)
    changed = (plain != masked).any(-1)  # [B, 1 + L]
    assert torch.equal(changed[:, 1:], mask) and not changed[:, 0].any()
    pos = model.embeddings.position_embeddings[0, 1:]
    torch.testing.assert_close(masked[0, 2] - pos[1], model.embeddings.mask_token[0, 0])


def test_masking__all_false_mask_is_identity(config):
    model = SOPModel(config).eval()
    images = torch.randn(2, 3, 32, 32)
    no_mask = torch.zeros(2, 16, dtype=torch.bool)
    assert torch.equal(model(images).last_hidden_state, model(images, bool_masked_pos=no_mask).last_hidden_state)


def test_masking__model_without_mask_token_refuses_masks():
    model = SOPModel(tiny_config(use_mask_token=False, mim_loss_weight=0.0))
    assert model.embeddings.mask_token is None
    with pytest.raises(ValueError, match="no mask token"):
        model(torch.randn(1, 3, 32, 32), bool_masked_pos=torch.ones(1, 16, dtype=torch.bool))


def test_position_embeddings__interpolation(config):
    emb = SOPModel(config).embeddings
    assert emb.interpolate_pos_encoding(4, 4) is emb.position_embeddings  # native grid: untouched
    table = emb.interpolate_pos_encoding(2, 6)
    assert table.shape == (1, 1 + 12, 32)
    assert torch.equal(table[:, 0], emb.position_embeddings[:, 0])  # [CLS] position kept
    # A constant table stays constant under bicubic interpolation.
    with torch.no_grad():
        emb.position_embeddings.fill_(0.25)
    torch.testing.assert_close(emb.interpolate_pos_encoding(7, 3), torch.full((1, 22, 32), 0.25))


def test_gradient_checkpointing__same_outputs_and_gradients(config):
    model = SOPModel(tiny_config(drop_path_rate=0.0))
    images = torch.randn(2, 3, 32, 32)
    model.train()
    mlp_calls = count_forward_calls([layer.mlp for layer in model.layers])
    out = model(images).last_hidden_state
    out.square().mean().backward()
    assert mlp_calls == [1, 1]
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(grads) == {n for n, _ in model.named_parameters()} - {"embeddings.mask_token"}  # no mask given
    model.zero_grad()
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})
    assert all(layer.gradient_checkpointing for layer in model.layers)
    out_ckpt = model(images).last_hidden_state
    out_ckpt.square().mean().backward()
    assert mlp_calls == [3, 3]  # each block ran again in the backward: its activations were not kept
    torch.testing.assert_close(out_ckpt, out)
    for name, grad in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)


def test_backward__every_parameter_gets_a_finite_gradient(config):
    model = SOPModel(config).train()
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[:, :4] = True
    model(torch.randn(2, 3, 32, 32), bool_masked_pos=mask).last_hidden_state.sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_outputs__hidden_states_attentions_and_tuple(config):
    model = SOPModel(config).eval()
    images = torch.randn(2, 3, 32, 32)
    out = model(images, output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    assert out.attentions[0].shape == (2, 2, 17, 17)
    torch.testing.assert_close(out.attentions[0].sum(-1), torch.ones(2, 2, 17))
    # The explicit attention path equals SDPA.
    torch.testing.assert_close(out.last_hidden_state, model(images).last_hidden_state, atol=1e-5, rtol=1e-5)
    as_tuple = model(images, return_dict=False)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], model(images).last_hidden_state)


def test_outputs__hidden_states_recorded_before_the_final_norm_and_by_index(config):
    import transformers.utils.output_capturing as capturing

    model = SOPModel(config).eval()
    images = torch.randn(2, 3, 32, 32)
    full = model(images, output_hidden_states=True).hidden_states  # embeddings, block 1, block 2
    torch.testing.assert_close(model.layernorm(full[-1]), model(images).last_hidden_state)  # untied: before the norm
    if hasattr(capturing, "selected_hidden_states"):  # transformers' index selection (newer than the 5.20 floor)
        picked = model(images, output_hidden_states=[0, -1]).hidden_states
        assert picked[1] is None and torch.equal(picked[0], full[0]) and torch.equal(picked[2], full[2])


def test_attention__a_registered_backend_runs_without_code_here(config):
    from transformers import AttentionInterface

    from sop_hf.modeling_sop import eager_attention_forward

    calls = []

    def counting_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(tuple(query.shape))  # [B, H, N, Dh]
        return eager_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("sop_test_counting", counting_attention)
    model = SOPModel(config).eval()
    images = torch.randn(2, 3, 32, 32)
    expected = model(images).last_hidden_state
    model.set_attn_implementation("sop_test_counting")
    torch.testing.assert_close(model(images).last_hidden_state, expected, atol=1e-5, rtol=1e-5)
    assert calls == [(2, 2, 17, 16)] * config.num_hidden_layers


def test_init__all_parameters_and_buffers_initialised(config):
    model = SOPModel(config)
    for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
        assert torch.isfinite(tensor).all(), name
    assert model.embeddings.mask_token.abs().sum() == 0
    assert abs(model.layers[0].mlp.fc1.weight.std().item() - 0.02) < 0.005
    torch.testing.assert_close(model.layers[0].norm1.weight, torch.ones(32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load__round_trip(tmp_path, config, dtype):
    model = SOPModel(config).eval().to(dtype)
    model.save_pretrained(tmp_path)
    loaded = SOPModel.from_pretrained(tmp_path)
    assert loaded.dtype == dtype and not loaded.training
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert list(original) == list(reloaded)
    for name, value in original.items():
        assert torch.equal(value, reloaded[name]), name
    images = torch.randn(2, 3, 32, 32, dtype=dtype)
    assert torch.equal(model(images).last_hidden_state, loaded(images).last_hidden_state)
    assert (tmp_path / "model.safetensors").exists()


def test_save_load__mismatched_shapes_raise(tmp_path, config):
    SOPModel(config).save_pretrained(tmp_path)
    bigger = tiny_config(hidden_size=64)
    with pytest.raises(
        ValueError, match=r"shapes do not match.*embeddings.cls_token: checkpoint \(1, 1, 32\) vs model \(1, 1, 64\)"
    ):
        SOPModel.from_pretrained(tmp_path, config=bigger)


def test_auto_classes__registered(tmp_path, config):
    model = SOPModel(config).eval()
    model.save_pretrained(tmp_path)
    SOPImageProcessor(size=32).save_pretrained(tmp_path)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), SOPConfig)
    assert isinstance(AutoModel.from_pretrained(tmp_path), SOPModel)
    assert isinstance(AutoImageProcessor.from_pretrained(tmp_path), SOPImageProcessor)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["auto_map"]["AutoModel"] == "modeling_sop.SOPModel"


def test_pipeline__per_token_and_pooled_features(tmp_path, config):
    model = SOPModel(config).eval()
    model.save_pretrained(tmp_path)
    SOPImageProcessor(size=32).save_pretrained(tmp_path)
    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    tokens = np.array(extractor(image))
    pooled = np.array(extractor(image, pool=True))
    assert tokens.shape == (1, 17, 32) and pooled.shape == (1, 32)
    pixels = SOPImageProcessor(size=32)(image, return_tensors="pt")["pixel_values"]
    expected = model(pixels).last_hidden_state
    np.testing.assert_allclose(tokens[0], expected[0].detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(pooled, tokens[:, 0], atol=1e-6)


def test_remote_code__loads_without_sop_hf_installed(tmp_path, config):
    model = SOPModel(config).eval()
    model.save_pretrained(tmp_path / "enc")
    SOPImageProcessor(size=32).save_pretrained(tmp_path / "enc")
    image = torch.randn(2, 3, 32, 32)
    torch.save({"image": image, "features": model(image).last_hidden_state.detach()}, tmp_path / "ref.pt")
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path = [p for p in sys.path if p and not os.path.isdir(os.path.join(p, "sop_hf"))]
        try:
            import sop_hf
            raise SystemExit("sop_hf is still importable")
        except ImportError:
            pass
        import torch
        from transformers import AutoImageProcessor, AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "enc")!r}, trust_remote_code=True)
        assert "sop_hf" not in type(model).__module__, type(model).__module__
        ref = torch.load({str(tmp_path / "ref.pt")!r})
        delta = (model(ref["image"]).last_hidden_state - ref["features"]).abs().max().item()
        processor = AutoImageProcessor.from_pretrained({str(tmp_path / "enc")!r}, trust_remote_code=True)
        print("DELTA", delta, type(processor).__name__)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = [row for row in result.stdout.splitlines() if row.startswith("DELTA")][0]
    assert float(line.split()[1]) == 0.0 and line.split()[2] == "SOPImageProcessor"
