"""The method API every registered method follows: a ``demo`` recipe (a tested rule), declared logged terms that the
model's open ``loss_terms`` mapping keeps to, ``bank_fill`` for every memory, and a trainer that logs whatever a
method returns (a new term name needs no change outside the method)."""

import dataclasses

import pytest
import torch

from sop_hf.methods import METHODS, LineageForPreTraining, registry
from tests.conftest import TINY, lineage_model, tiny_config

# Small sizes of each lineage method's own fields (the tiny ViT and heads come from conftest).
SIZES = {"massl": dict(memory_size=64, block_size=16), "carp": dict(num_prototypes=64, block_size=16),
         "carl": dict(num_prototypes=64), "dino": dict(num_prototypes=64),
         "ibot": dict(num_prototypes=64, num_patch_prototypes=64)}  # fmt: skip


def tiny_model(name: str):
    method = METHODS[name]
    if issubclass(method.model_class, LineageForPreTraining):
        return lineage_model(name, **SIZES[name])
    return method.model_class(tiny_config())


def batch(size=4):
    masks = torch.zeros(2 * size, (TINY["image_size"] // TINY["patch_size"]) ** 2, dtype=torch.bool)
    masks[:, :3] = True
    return dict(pixel_values=torch.randn(2 * size, 3, 32, 32), local_pixel_values=torch.randn(2 * size, 3, 16, 16),
                bool_masked_pos=masks)  # fmt: skip


def test_registry__a_method_without_a_demo_recipe_is_refused():
    sop = METHODS["sop"]
    no_demo = dataclasses.replace(sop, name="nodemo", recipes={"other": sop.recipes["demo"]})
    with pytest.raises(ValueError, match=r"^method 'nodemo' has no 'demo' recipe \(recipes: other\); every method"):
        registry(sop, no_demo)
    with pytest.raises(ValueError, match=r"^method 'sop' is registered twice"):
        registry(sop, sop)


def test_method__loss_labels_must_be_logged_terms():
    with pytest.raises(ValueError, match=r"^method 'sop': loss_labels name terms missing from logged_terms: sop_loss"):
        dataclasses.replace(METHODS["sop"], logged_terms=("mim_loss", "koleo_loss"))


@pytest.mark.parametrize("name", list(METHODS))
def test_forward__loss_terms_are_declared_scalars_and_every_memory_reports_its_fill(name):
    model = tiny_model(name).train()
    out = model(**batch())
    terms = out.loss_terms
    assert terms and set(terms) <= set(METHODS[name].logged_terms), sorted(terms)
    assert all(t.ndim == 0 and not t.requires_grad and torch.isfinite(t) for t in terms.values())
    banks = {k for k, bank in model.logged_banks.items() if getattr(model, bank, None) is not None}
    assert banks == {k for k in terms if k.endswith("bank_fill")}
    for key in banks:  # one step of B = 4 rows (one process) in a bank of 64 (SOP's patch bank: 32)
        assert terms[key].item() == pytest.approx(4 / getattr(model, model.logged_banks[key]).size)
    assert "bank_fill" in terms or name not in ("sop", "massl")  # both memories are reported, MaSSL's included
    model.eval()
    assert not any(k.endswith("bank_fill") for k in model(**batch()).loss_terms)  # no enqueue outside training


def test_trainer__logs_a_term_name_it_has_never_seen(tmp_path):
    from sop_hf.methods.lineage import LineageForPreTrainingOutput
    from sop_hf.training import SOPTrainer, SOPTrainingArguments

    class NewTermModel(type(tiny_model("dino"))):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            terms = {**out.loss_terms, "brand_new_term": torch.tensor(2.5)}
            return LineageForPreTrainingOutput(loss=out.loss, loss_terms=terms)

    model = NewTermModel(tiny_model("dino").config).train()
    args = SOPTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=1)
    trainer = SOPTrainer(model=model, args=args)
    trainer.compute_loss(model, batch())
    trainer.log({"loss": 1.0})
    row = trainer.state.log_history[-1]
    assert row["brand_new_term"] == 2.5 and "teacher_entropy" in row
