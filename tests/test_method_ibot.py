"""iBOT: the masked-patch loss (uniform, one-hot, per-crop averaging, the masked-rows form), the model's two terms,
gradients, patch centre, shared or separate patch head, masks from the data pipeline's rule, save/load and export."""

import math
import re

import pytest
import torch

from sop_hf.losses.ibot import masked_patch_loss, masked_rows_patch_loss
from sop_hf.methods import METHODS
from sop_hf.methods.ibot import IBOTConfig, IBOTForPreTraining
from tests.conftest import TINY, assert_export_loads, lineage_model

F64 = torch.float64
PATCHES = (TINY["image_size"] // TINY["patch_size"]) ** 2  # 16


def ibot(**fields):
    return lineage_model("ibot", **{"num_prototypes": 64, "num_patch_prototypes": 64, **fields})


def masks(batch=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(2 * batch, PATCHES, generator=generator) < 0.3
    mask[0] = False  # a crop without a masked patch counts 0, as iBOT's
    mask[1, :3] = True
    return mask


def inputs(batch=4, local=2):
    pixels, local_pixels = torch.randn(2 * batch, 3, 32, 32), torch.randn(local * batch, 3, 16, 16)
    return dict(pixel_values=pixels, local_pixel_values=local_pixels, bool_masked_pos=masks(batch))


# --- the loss -------------------------------------------------------------------------------------------------


def test_masked_patch_loss__uniform_targets_and_student_give_ln_k():
    mask = masks()
    loss = masked_patch_loss(torch.zeros(8, PATCHES, 50, dtype=F64), torch.full((8, PATCHES, 50), 1 / 50, dtype=F64),
                             mask, 0.1)  # fmt: skip
    expected = math.log(50) * (mask.sum(1) > 0).double().mean()  # crops without a masked patch add 0
    torch.testing.assert_close(loss, expected)


def test_masked_patch_loss__one_hot_targets_average_per_crop_then_over_crops():
    student = torch.randn(3, 4, 6, dtype=F64)
    index = torch.randint(6, (3, 4))
    teacher = torch.nn.functional.one_hot(index, 6).to(F64)
    mask = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    nll = -(student / 0.1).log_softmax(-1).gather(-1, index[..., None])[..., 0]  # [3, 4]
    expected = (nll[0, [0, 2]].mean() + 0.0 + nll[2].mean()) / 3
    torch.testing.assert_close(masked_patch_loss(student, teacher, mask, 0.1), expected)


def test_masked_rows_patch_loss__equals_the_dense_form():
    student, teacher, mask = (
        torch.randn(8, PATCHES, 7, dtype=F64),
        torch.randn(8, PATCHES, 7, dtype=F64).softmax(-1),
        masks(),
    )
    dense = masked_patch_loss(student, teacher, mask, 0.1)
    torch.testing.assert_close(masked_rows_patch_loss(student[mask], teacher[mask], mask, 0.1), dense)


def test_masked_patch_loss__shapes_must_agree():
    with pytest.raises(ValueError, match=r"^student logits \(2, 3, 4\), teacher probs \(2, 3, 4\) and masks \(2, 4\)"):
        masked_patch_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.bool), 0.1)


# --- the model ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shared_head", [True, False])
def test_step__both_terms_gradients_to_every_student_parameter_and_no_teacher_one(shared_head):
    model = ibot(shared_head=shared_head).train()
    out = model(**inputs())
    assert set(out.loss_terms) == {"cls_loss", "mim_loss", "teacher_entropy"}
    torch.testing.assert_close(out.loss.detach(), out.loss_terms["cls_loss"] + out.loss_terms["mim_loss"])
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("teacher"):
            assert param.grad is None and not param.requires_grad, name
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert hasattr(model, "patch_prototypes") != shared_head
    assert model.teacher.embeddings.mask_token is None and model.student.embeddings.mask_token is not None


def test_step__uniform_start_gives_ln_k_for_both_terms_and_the_patch_centre_moves_in_training():
    model = ibot().eval()
    with torch.no_grad():
        model.prototypes.weight.zero_()
        model.teacher_prototypes.weight.zero_()
    out = model(**inputs())
    mask = inputs()["bool_masked_pos"]
    assert abs(out.loss_terms["cls_loss"].item() - math.log(64)) < 1e-5
    assert abs(out.loss_terms["mim_loss"].item() - math.log(64) * (mask.sum(1) > 0).float().mean().item()) < 1e-5
    assert torch.equal(model.patch_center, torch.zeros(1, 64))
    model = ibot().train()
    batch = inputs()
    with torch.no_grad():
        tokens = model.teacher_head(model.teacher(batch["pixel_values"]).last_hidden_state)  # [2B, 1+L, d]
        patch_logits = model.teacher_prototypes(tokens[:, 1:])
    model(**batch)
    torch.testing.assert_close(model.patch_center, 0.1 * patch_logits.reshape(-1, 64).mean(0, keepdim=True))


def test_step__without_masks_or_with_weight_zero_is_dino():
    model = ibot().train()
    out = model(**{k: v for k, v in inputs().items() if k != "bool_masked_pos"})
    assert "mim_loss" not in out.loss_terms and torch.equal(model.patch_center, torch.zeros(1, 64))
    config = ibot(mim_loss_weight=0.0).config
    assert not METHODS["ibot"].uses_masks(config) and METHODS["ibot"].uses_masks(ibot().config)


def test_config__defaults_and_bad_values():
    config = IBOTConfig()
    assert (config.num_prototypes, config.num_patch_prototypes, config.shared_head) == (8192, 8192, True)
    with pytest.raises(
        ValueError, match=r"^IBOTConfig.num_patch_prototypes must equal num_prototypes=64 with shared_head"
    ):
        IBOTConfig(num_prototypes=64, num_patch_prototypes=32)
    with pytest.raises(
        ValueError, match=re.escape("IBOTConfig.backbone_config must be an SOPConfig (iBOT needs patch")
    ):
        IBOTConfig(backbone_config={"model_type": "resnet"})


def test_save_load__round_trip_with_both_centres(tmp_path):
    model = ibot(shared_head=False)
    with torch.no_grad():
        model.center.fill_(0.25)
        model.patch_center.fill_(-0.5)
    model.save_pretrained(tmp_path)
    loaded = IBOTForPreTraining.from_pretrained(tmp_path)
    assert list(loaded.state_dict()) == list(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_export__loads_with_auto_model_and_the_feature_extraction_pipeline(tmp_path):
    from sop_hf import SOPModel

    model = ibot()
    encoder = model.export_encoder("student")
    assert isinstance(encoder, SOPModel) and encoder.embeddings.mask_token is None  # the mask token stays behind
    assert_export_loads(encoder, model.student, tmp_path, width=32)


def test_registry__ibot_declares_its_terms_and_demo_recipe():
    method = METHODS["ibot"]
    assert "demo" in method.recipes and set(method.loss_labels) <= set(method.logged_terms)
    assert method.recipes["demo"]["data"]["mask_ratio"] == (0.0, 0.3)
