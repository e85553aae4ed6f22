"""SOPForPreTraining: a full step on a tiny config, teacher EMA, bank discipline, checkpoints, export."""

import math

import pytest
import torch

from sop_hf import SOPForPreTraining, SOPModel
from tests.conftest import tiny_config

BATCH = 4


def batch_inputs(num_local: int = 2, mask_first: int = 5):
    masks = torch.zeros(2 * BATCH, 16, dtype=torch.bool)
    masks[:, :mask_first] = True
    return dict(
        pixel_values=torch.randn(2 * BATCH, 3, 32, 32),
        bool_masked_pos=masks,
        local_pixel_values=torch.randn(num_local * BATCH, 3, 16, 16) if num_local else None,
    )


def test_init__teacher_is_a_copy_without_grad_or_mask_token(config):
    model = SOPForPreTraining(config)
    student = {k: v for k, v in model.sop.state_dict().items() if "mask_token" not in k}
    assert student.keys() == model.teacher.state_dict().keys()
    for key, value in student.items():
        assert torch.equal(value, model.teacher.state_dict()[key]), key
    assert all(not p.requires_grad for p in model.teacher_parameters())
    assert model.teacher.embeddings.mask_token is None
    assert all(layer.drop_path_rate == 0 for layer in model.teacher.layers)


def test_step__finite_loss_every_student_parameter_gets_gradient(config):
    model = SOPForPreTraining(config).train()
    out = model(**batch_inputs())
    assert torch.isfinite(out.loss) and out.loss.dtype == torch.float32
    torch.testing.assert_close(out.loss.detach(), out.sop_loss + out.mim_loss)
    assert out.koleo_loss is None and out.student_embeddings.shape == (4 * BATCH, 16)
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith(("teacher.", "teacher_head.")):
            assert param.grad is None, name
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0, name


def test_step__banks_advance_by_the_batch_and_read_before_enqueue(config):
    model = SOPForPreTraining(config).train()
    class_before, patch_before = model.class_memory.rows.clone(), model.patch_memory.rows.clone()
    out = model(**batch_inputs())
    assert int(model.class_memory.ptr) == BATCH and int(model.patch_memory.ptr) == BATCH
    assert int(model.step_count) == 1
    # class bank <- teacher [CLS] of global view 1 (rows B..2B-1)
    torch.testing.assert_close(model.class_memory.rows[:BATCH], out.teacher_embeddings[BATCH:])
    assert torch.equal(model.class_memory.rows[BATCH:], class_before[BATCH:])
    assert not torch.equal(model.patch_memory.rows[:BATCH], patch_before[:BATCH])
    torch.testing.assert_close(model.patch_memory.rows[:BATCH].norm(dim=1), torch.ones(BATCH))


def batch_inputs_seeded():
    torch.manual_seed(1)
    return batch_inputs()


def test_step__loss_reads_pre_enqueue_bank(config):
    # A training forward (which enqueues) and an eval forward from the same state give the same loss.
    model = SOPForPreTraining(tiny_config(drop_path_rate=0.0))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = batch_inputs_seeded()
    model.train()
    train_out = model(**inputs)
    model.load_state_dict(state)
    model.eval()
    eval_out = model(**inputs)
    torch.testing.assert_close(train_out.loss, eval_out.loss)


def test_eval__never_touches_banks(config):
    model = SOPForPreTraining(config).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "memory" in k or k == "step_count"}
    with torch.no_grad():
        model(**batch_inputs())
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key


def _teacher_student_pairs(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every teacher parameter with the student parameter of the same name (backbone and projection head)."""
    pairs = {}
    for student_name, teacher_name in (("sop", "teacher"), ("head", "teacher_head")):
        student = dict(getattr(model, student_name).named_parameters())
        for name, param in getattr(model, teacher_name).named_parameters():
            pairs[f"{teacher_name}.{name}"] = (param, student[name])
    return pairs


def test_teacher__moves_only_through_update_teacher(config):
    model = SOPForPreTraining(config).train()
    pairs = _teacher_student_pairs(model)
    assert {id(t) for t, _ in pairs.values()} == {id(p) for p in model.teacher_parameters()}
    assert {name.split(".")[0] for name in pairs} == {"teacher", "teacher_head"}
    teacher_before = {name: t.detach().clone() for name, (t, _) in pairs.items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**batch_inputs()).loss.backward()
    optimizer.step()
    for name, (teacher, student) in pairs.items():
        assert torch.equal(teacher, teacher_before[name]), name  # the optimizer step left the teacher alone
        assert not torch.equal(teacher, student), name  # ... and moved every student parameter away from it
    expected = {name: 0.9 * t.detach() + 0.1 * s.detach() for name, (t, s) in pairs.items()}
    model.update_teacher(0.9)
    for name, (teacher, _) in pairs.items():  # every parameter of the backbone and of the head follows the EMA
        torch.testing.assert_close(teacher, expected[name], msg=name)
    frozen = {name: t.detach().clone() for name, (t, _) in pairs.items()}
    with torch.no_grad():
        for _, student in pairs.values():
            student.add_(1.0)  # the student moves; with momentum 1 the teacher must not follow
    model.update_teacher(1.0)  # momentum 1: frozen
    for name, (teacher, _) in pairs.items():
        assert torch.equal(teacher, frozen[name]), name
    model.update_teacher(0.0)  # momentum 0: a copy of the student
    for name, (teacher, student) in pairs.items():
        torch.testing.assert_close(teacher, student, msg=name)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        model.update_teacher(1.5)


def test_koleo__added_when_weighted():
    model = SOPForPreTraining(tiny_config(koleo_loss_weight=0.1)).train()
    out = model(**batch_inputs())
    torch.testing.assert_close(out.loss.detach(), out.sop_loss + out.mim_loss + 0.1 * out.koleo_loss)


def test_without_mim__no_patch_bank_no_mask_token_needed():
    config = tiny_config(mim_loss_weight=0.0, use_mask_token=False)
    model = SOPForPreTraining(config).train()
    assert model.patch_memory is None and model.sop.embeddings.mask_token is None
    out = model(**batch_inputs(num_local=0))
    assert out.mim_loss is None and torch.isfinite(out.loss)
    out.loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_degenerate_banks__losses_are_ln_p(config):
    model = SOPForPreTraining(config).eval()
    constant = torch.nn.functional.normalize(torch.ones(16), dim=0)
    model.class_memory.rows.copy_(constant.expand_as(model.class_memory.rows))
    model.patch_memory.rows.copy_(constant.expand_as(model.patch_memory.rows))
    inputs = batch_inputs(mask_first=0)
    inputs["bool_masked_pos"][[0, 1, 5], 3] = True  # view 0: 2 of 4 images masked, view 1: 1 of 4
    out = model(**inputs)
    assert abs(out.sop_loss.item() - math.log(config.num_kept_anchors)) < 1e-5
    expected_mim = math.log(config.num_patch_anchors) * (2 / 4 + 1 / 4) / 2
    assert abs(out.mim_loss.item() - expected_mim) < 1e-5


def test_anchors__same_seed_and_step_give_same_loss_across_instances(config):
    a, b = SOPForPreTraining(config).eval(), SOPForPreTraining(config).eval()
    b.load_state_dict(a.state_dict())
    inputs = batch_inputs()
    assert torch.equal(a(**inputs).loss, b(**inputs).loss)
    b.anchor_seed = 1
    assert not torch.equal(a(**inputs).loss, b(**inputs).loss)


def test_input_validation(config):
    model = SOPForPreTraining(config)
    with pytest.raises(ValueError, match="2 global views of B >= 2 images"):
        model(pixel_values=torch.randn(3, 3, 32, 32))
    with pytest.raises(ValueError, match="must be a multiple of B=4"):
        model(pixel_values=torch.randn(8, 3, 32, 32), local_pixel_values=torch.randn(6, 3, 16, 16))


def test_checkpoint__banks_pointer_and_step_restored(tmp_path, config):
    model = SOPForPreTraining(config).train()
    model(**batch_inputs())
    model.save_pretrained(tmp_path)
    loaded = SOPForPreTraining.from_pretrained(tmp_path)
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert list(reloaded) == list(original)
    for key, value in original.items():
        assert torch.equal(reloaded[key], value), key
    assert int(loaded.class_memory.ptr) == BATCH and int(loaded.step_count) == 1


def test_export__encoder_has_no_banks_and_matches_teacher_or_student(tmp_path, config):
    model = SOPForPreTraining(config).train()
    out = model(**batch_inputs())
    out.loss.backward()
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0).step()
    images = torch.randn(2, 3, 32, 32)
    teacher_enc, student_enc = model.export_encoder("teacher"), model.export_encoder("student")
    assert isinstance(teacher_enc, SOPModel) and not teacher_enc.training
    assert not any("memory" in k for k in teacher_enc.state_dict())
    assert teacher_enc.embeddings.mask_token is None and teacher_enc.config.use_mask_token is False
    model.eval()
    torch.testing.assert_close(teacher_enc(images).last_hidden_state, model.teacher(images).last_hidden_state)
    torch.testing.assert_close(student_enc(images).last_hidden_state, model.sop(images).last_hidden_state)
    with pytest.raises(ValueError, match="which must be 'teacher' or 'student'"):
        model.export_encoder("ema")
    # SOPModel.from_pretrained on a pretraining checkpoint gives the student (base-model prefix "sop").
    model.save_pretrained(tmp_path)
    loaded = SOPModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(images).last_hidden_state, model.sop(images).last_hidden_state)


def test_bf16_autocast__loss_float32_and_finite(config):
    model = SOPForPreTraining(config).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch_inputs())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
