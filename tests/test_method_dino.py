"""DINO: analytic loss cases (uniform, one-hot, centring, sharpening), a two-process centre update, the model's
gradients, EMA, centre buffer, save/load and the exported encoder in AutoModel and the pipeline."""

import math
import re

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sop_hf.losses.dino import centered_teacher_probs, dino_cross_entropy, updated_center
from sop_hf.methods import METHODS
from sop_hf.methods.dino import DINOConfig, DINOForPreTraining
from tests.conftest import assert_export_loads, lineage_model

F64 = torch.float64


def dino(**fields):
    return lineage_model("dino", **{"num_prototypes": 64, **fields})


def inputs(batch=4, local=2):
    return dict(
        pixel_values=torch.randn(2 * batch, 3, 32, 32), local_pixel_values=torch.randn(local * batch, 3, 16, 16)
    )


# --- the loss as tensor functions -----------------------------------------------------------------------------


def test_cross_entropy__uniform_student_and_teacher_give_ln_k():
    teacher = centered_teacher_probs(torch.zeros(8, 300, dtype=F64), torch.zeros(1, 300, dtype=F64), 0.04)
    loss = dino_cross_entropy(torch.zeros(16, 300, dtype=F64), teacher, student_temp=0.1)  # 2 global + 2 local views
    assert abs(loss.item() - math.log(300)) < 1e-12


def test_cross_entropy__one_hot_teacher_is_the_students_log_prob_at_that_index():
    batch, k = 3, 10
    student = torch.randn(2 * batch, k, dtype=F64)
    index = torch.tensor([2, 5, 7, 1, 0, 9])  # teacher's argmax per (view, image)
    logits = torch.full((2 * batch, k), -1e3, dtype=F64)
    logits[torch.arange(2 * batch), index] = 0.0
    teacher = centered_teacher_probs(logits, torch.zeros(1, k, dtype=F64), 0.04)  # one-hot up to exp(-25000)
    log_p = (student / 0.1).log_softmax(-1)
    # pairs (student view 0, teacher view 1) and (student view 1, teacher view 0)
    expected = (
        -(log_p[:batch].gather(1, index[batch:, None]).mean() + log_p[batch:].gather(1, index[:batch, None]).mean()) / 2
    )
    torch.testing.assert_close(dino_cross_entropy(student, teacher, 0.1), expected)


def test_cross_entropy__skips_same_view_pairs_and_counts_local_views():
    batch, k = 2, 5
    student, teacher = torch.randn(4 * batch, k, dtype=F64), torch.randn(2 * batch, k, dtype=F64).softmax(-1)
    log_p = (student / 0.1).log_softmax(-1).unflatten(0, (4, batch))
    q = teacher.unflatten(0, (2, batch))
    pairs = [(0, 1), (1, 0), (2, 0), (2, 1), (3, 0), (3, 1)]  # (student view, teacher view): 2 + 2n, n = 2
    expected = sum(-(q[j] * log_p[i]).sum(-1).mean() for i, j in pairs) / len(pairs)
    torch.testing.assert_close(dino_cross_entropy(student, teacher, 0.1), expected)


def test_centered_teacher_probs__centres_then_sharpens():
    logits, center = torch.tensor([[1.0, 2.0, 3.0]], dtype=F64), torch.tensor([[1.0, 1.0, 0.0]], dtype=F64)
    expected = torch.tensor([0.0, 1.0, 3.0], dtype=F64).div(0.5).softmax(-1)
    torch.testing.assert_close(centered_teacher_probs(logits, center, 0.5)[0], expected)
    sharper = centered_teacher_probs(logits, center, 0.05)[0]
    assert sharper.max() > expected.max() and sharper.argmax() == 2  # a lower temperature sharpens


def test_updated_center__is_the_ema_of_the_batch_mean():
    center, logits = torch.randn(1, 6, dtype=F64), torch.randn(10, 6, dtype=F64)
    torch.testing.assert_close(updated_center(center, logits, 0.9), 0.9 * center + 0.1 * logits.mean(0, keepdim=True))
    torch.testing.assert_close(updated_center(center, logits, 1.0), center)


BAD_CALLS = [
    (
        lambda: centered_teacher_probs(torch.zeros(2, 3), torch.zeros(1, 3), 0.0),
        "teacher_temp must be a finite number > 0",
    ),
    (
        lambda: dino_cross_entropy(torch.zeros(4, 3), torch.zeros(4, 3), -1.0),
        "student_temp must be a finite number > 0",
    ),
    (lambda: updated_center(torch.zeros(1, 3), torch.zeros(2, 3), 1.5), "center momentum must be in [0, 1], got 1.5"),
]


@pytest.mark.parametrize("call, message", BAD_CALLS)
def test_losses__bad_arguments_name_the_value(call, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        call()


def _center_worker(rank, world_size, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        logits = torch.arange(12, dtype=torch.float32).reshape(4, 3) * (1 + 10 * rank)  # different batches
        center = updated_center(torch.ones(1, 3), logits, 0.9)
        everything = torch.cat([torch.arange(12, dtype=torch.float32).reshape(4, 3) * (1 + 10 * r) for r in range(2)])
        torch.testing.assert_close(center, 0.9 * torch.ones(1, 3) + 0.1 * everything.mean(0, keepdim=True))
    finally:
        dist.destroy_process_group()


def test_updated_center__two_gloo_processes_average_both_batches(tmp_path):
    mp.spawn(_center_worker, args=(2, str(tmp_path / "init")), nprocs=2, join=True)


# --- the model ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_step__gradients_reach_every_student_parameter_and_no_teacher_one(norm_last_layer):
    model = dino(norm_last_layer=norm_last_layer).train()
    out = model(**inputs())
    assert torch.isfinite(out.loss) and set(out.loss_terms) == {"teacher_entropy"}
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("teacher"):
            assert param.grad is None and not param.requires_grad, name
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert (model.prototypes.norm is None) == norm_last_layer


def test_step__uniform_start_gives_ln_k_and_the_centre_moves_in_training_only():
    model = dino().eval()
    with torch.no_grad():  # a zero last layer: every logit 0, the teacher uniform, the loss ln K
        model.prototypes.weight.zero_()
        model.teacher_prototypes.weight.zero_()
    out = model(**inputs())
    assert abs(out.loss.item() - math.log(64)) < 1e-5 and abs(out.loss_terms["teacher_entropy"] - math.log(64)) < 1e-5
    assert torch.equal(model.center, torch.zeros(1, 64))  # eval: no update
    model = dino().train()
    batch = inputs()
    with torch.no_grad():
        t_logits = model.teacher_prototypes(model.teacher_head(model.teacher(batch["pixel_values"]).pooler_output))
    model(**batch)
    torch.testing.assert_close(model.center, 0.1 * t_logits.mean(0, keepdim=True))


def test_teacher__ema_covers_the_prototype_layer_and_the_centre_is_saved(tmp_path):
    model = dino()
    assert torch.equal(model.prototypes.weight, model.teacher_prototypes.weight)  # starts as a copy
    with torch.no_grad():
        model.prototypes.weight.add_(1.0)
        model.center.fill_(0.5)
    before = model.teacher_prototypes.weight.clone()
    model.update_teacher(0.9)
    torch.testing.assert_close(model.teacher_prototypes.weight, 0.9 * before + 0.1 * model.prototypes.weight)
    model.save_pretrained(tmp_path)
    loaded = DINOForPreTraining.from_pretrained(tmp_path)
    assert type(loaded.config) is DINOConfig and torch.equal(loaded.center, model.center)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_config__bad_values_name_the_field():
    with pytest.raises(ValueError, match=r"^DINOConfig.center_momentum must be in \[0, 1\], got 1.5"):
        DINOConfig(center_momentum=1.5)
    with pytest.raises(ValueError, match=r"^DINOConfig.num_prototypes must be >= 2, got 1"):
        DINOConfig(num_prototypes=1)


def test_export__loads_with_auto_model_and_the_feature_extraction_pipeline(tmp_path):
    from sop_hf import SOPModel

    model = dino()
    encoder = model.export_encoder("teacher")
    assert isinstance(encoder, SOPModel) and encoder.embeddings.mask_token is None
    assert_export_loads(encoder, model.teacher, tmp_path, width=32)


def test_registry__dino_has_a_demo_recipe_and_declares_its_terms():
    method = METHODS["dino"]
    assert "demo" in method.recipes and method.logged_terms == ("koleo_loss", "teacher_entropy")
    assert method.uniform_reference(DINOConfig(num_prototypes=128)) == (128, "K")
