"""MaSSL / CARP / CARL pretraining models on the SOP encoder: steps, gradients, EMA, banks, export, configs."""

import math

import pytest
import torch

from sop_hf import CARLConfig, CARPConfig, CARPForPreTraining, MaSSLConfig, SOPModel
from sop_hf.methods import METHODS, LineageForPreTraining, build_config
from tests.conftest import TINY, lineage_model

SIZES = {"massl": dict(memory_size=64, block_size=16), "carp": dict(num_prototypes=64, block_size=16),
         "carl": dict(num_prototypes=64), "dino": dict(num_prototypes=64),
         "ibot": dict(num_prototypes=64, num_patch_prototypes=64)}  # fmt: skip
LINEAGE = [name for name, m in METHODS.items() if issubclass(m.model_class, LineageForPreTraining)]


def lineage(method, **overrides):
    return lineage_model(method, **{**SIZES[method], **overrides})


def inputs(batch=4, local=2):
    return dict(
        pixel_values=torch.randn(2 * batch, 3, 32, 32), local_pixel_values=torch.randn(local * batch, 3, 16, 16)
    )


@pytest.mark.parametrize("method", LINEAGE)
def test_step__finite_loss_gradients_only_to_the_student(method):
    model = lineage(method).train()
    out = model(**inputs())
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith(("teacher", "teacher_head", "teacher_prototypes")):
            assert param.grad is None, name
        elif name.endswith("mask_token"):  # iBOT's, used only with masks (tests/test_method_ibot.py)
            assert param.grad is None, name
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert int(model.step_count) == 1


@pytest.mark.parametrize("method", LINEAGE)
def test_teacher__starts_as_copy_and_moves_by_ema(method):
    model = lineage(method)
    pairs = list(zip(*model._shared_pairs()))
    assert pairs and all(torch.equal(t, s) for t, s in pairs)
    with torch.no_grad():
        for _, s in pairs:
            s.add_(1.0)
    model.update_teacher(0.75)
    for t, s in pairs:
        torch.testing.assert_close(t, s - 0.75)
    if method != "massl":
        assert any(t is model.teacher_prototypes.weight for t, _ in pairs)


def test_massl__memory_enqueues_teacher_view_one_and_initial_loss_values():
    model = lineage("massl").train()
    batch = inputs()
    out = model(**batch)
    assert int(model.memory.ptr) == 4
    torch.testing.assert_close(model.memory.rows[:4], out.teacher_embeddings[4:])
    model.eval()
    with torch.no_grad():
        model.memory.rows.copy_(torch.nn.functional.normalize(torch.ones(64, 16), dim=1))
        assert abs(model(**batch).loss.item() - math.log(16)) < 1e-5  # equal memory rows -> ln N_B
    assert int(model.memory.ptr) == 4  # eval never enqueues


def test_carp_carl__initial_consistency_near_ln_block():
    # Freshly initialised prototypes (std 0.02) give nearly uniform block distributions.
    carp, carl = lineage("carp").eval(), lineage("carl").eval()
    with torch.no_grad():
        assert abs(carp(**inputs()).loss.item() - math.log(16)) < 0.05
        assert abs(carl(**inputs()).loss.item() - math.log(64)) < 0.05
    assert carl.config.block_size == 64  # CARL: one block of all prototypes
    assert not carp.head.normalize and lineage("massl").head.normalize


def test_config__defaults_hold_only_their_fields_and_validate():
    carp, massl, carl = CARPConfig(), MaSSLConfig(), CARLConfig()
    assert (carp.num_prototypes, carp.block_size, carp.uniformity_weight) == (65536, 512, 1.0)
    assert (massl.memory_size, massl.block_size) == (65536, 16384)
    assert carl.block_size == carl.num_prototypes == 4096  # CARL: one block
    assert not hasattr(carp, "class_memory_size") and not hasattr(massl, "num_prototypes")  # no SOP fields
    assert carp.backbone_config.model_type == "sop" and carp.encoder_width == 768  # default encoder: ViT-B/16
    with pytest.raises(ValueError, match=r"CARPConfig.block_size must be in \[1, num_prototypes=64\]"):
        CARPConfig(num_prototypes=64, block_size=65)
    with pytest.raises(ValueError, match=f"method must be one of {', '.join(METHODS)}, got 'byol'"):
        build_config("byol", {})
    with pytest.raises(ValueError, match="unknown CARPConfig field.*class_memory_size"):  # an override: a user typo
        build_config("carp", {}, {"class_memory_size": 64})
    with pytest.raises(ValueError, match="unknown SOPConfig field.*hiden_size"):
        build_config("carp", {"backbone_config": {"model_type": "sop"}}, {"backbone_config.hiden_size": 64})
    assert build_config("carp", {"newer_field": 1}).newer_field == 1  # a saved config's unknown key is kept


def test_config__round_trip_through_save_and_auto_config(tmp_path):
    from transformers import AutoConfig

    model = lineage("carp")
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is CARPConfig
    loaded = CARPForPreTraining.from_pretrained(tmp_path)
    assert loaded.config.backbone_config.hidden_size == TINY["hidden_size"] and loaded.config.block_size == 16
    assert list(loaded.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.parametrize("method", ["massl", "carl"])
def test_export__a_plain_sop_encoder(method, tmp_path):
    model = lineage(method)
    with torch.no_grad():  # the student moves away from the teacher, which starts as its copy
        for param in model.student.parameters():
            param.add_(torch.randn_like(param))
    encoder = model.export_encoder("teacher")
    assert isinstance(encoder, SOPModel) and encoder.config.model_type == "sop"
    encoder.save_pretrained(tmp_path)
    images = torch.randn(2, 3, 32, 32)
    exported = SOPModel.from_pretrained(tmp_path)(images).last_hidden_state
    torch.testing.assert_close(exported, model.teacher.eval()(images).last_hidden_state)
    assert not torch.allclose(exported, model.student.eval()(images).last_hidden_state, atol=1e-3)
