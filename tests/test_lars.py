"""LARS: the update against a hand computation, the bias / norm exclusion, and the trainer's --lars switch."""

import math

import pytest
import torch

from sop_hf.training import SOPTrainingArguments
from sop_hf.training.lars import LARS


def test_lars__two_steps_match_the_hand_computation():
    weight = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    bias = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([weight, bias], lr=0.1, momentum=0.9, weight_decay=0.5, trust_coefficient=0.01)
    grads = [(torch.tensor([[1.0, 0.0]]), torch.tensor([2.0])), (torch.tensor([[0.0, 1.0]]), torch.tensor([-1.0]))]
    w, b, buf_w, buf_b = weight.detach().clone(), bias.detach().clone(), None, None
    for gw, gb in grads:
        weight.grad, bias.grad = gw.clone(), gb.clone()
        update = gw + 0.5 * w  # decay on weights only
        update = update * (0.01 * w.norm() / update.norm())  # trust ratio
        buf_w = update if buf_w is None else 0.9 * buf_w + update
        buf_b = gb if buf_b is None else 0.9 * buf_b + gb  # a bias: plain momentum SGD, no decay, no ratio
        w, b = w - 0.1 * buf_w, b - 0.1 * buf_b
        opt.step()
        torch.testing.assert_close(weight.detach(), w)
        torch.testing.assert_close(bias.detach(), b)


def test_lars__zero_weight_or_gradient_uses_ratio_one_and_bad_values_are_named():
    weight = torch.nn.Parameter(torch.zeros(2, 2))
    weight.grad = torch.ones(2, 2)
    LARS([weight], lr=1.0, momentum=0.0).step()
    assert torch.equal(weight.detach(), -torch.ones(2, 2))  # ||w|| = 0: plain SGD step
    with pytest.raises(ValueError, match="LARS lr must be a finite number >= 0, got nan"):
        LARS([weight], lr=math.nan)


def test_trainer__lars_flag_builds_lars_at_the_peak_rate(tmp_path):
    from sop_hf import SOPConfig, SOPForPreTraining
    from sop_hf.training import SOPTrainer
    from tests.scripts.train_tiny import TINY, IndexSeededImages, collate

    model = SOPForPreTraining(SOPConfig(**TINY))
    args = SOPTrainingArguments(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, lars=True,
                                base_learning_rate=0.45, weight_decay=1e-6, weight_decay_end=1e-6, warmup_steps=0,
                                use_cpu=True, report_to=[], save_strategy="no", disable_tqdm=True)  # fmt: skip
    trainer = SOPTrainer(model=model, args=args, train_dataset=IndexSeededImages(), data_collator=collate)
    before = model.sop.layers[0].mlp.fc1.weight.detach().clone()
    trainer.train()
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert isinstance(inner, LARS) and inner.defaults["momentum"] == 0.9
    assert not torch.equal(before, model.sop.layers[0].mlp.fc1.weight)
    assert all(math.isfinite(row["loss"]) for row in trainer.state.log_history if "loss" in row)
