"""SOPModel's transformers conventions, SOPForImageClassification and SOPBackbone (src/sop_hf/modeling_sop.py).

Covers what users load from an exported folder (docs/quickstart.md): output flags from the config and from the call,
``attn_implementation``, gradient checkpointing, ``torch.export``, fine-tuning with the stock ``Trainer``,
``pipeline("image-classification")``, ``AutoBackbone`` feature maps and remote-code loading without sop_hf.
"""

import json
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoBackbone,
    AutoModel,
    AutoModelForImageClassification,
    Trainer,
    TrainingArguments,
    pipeline,
)

from sop_hf import SOPBackbone, SOPConfig, SOPForImageClassification, SOPImageProcessor, SOPModel
from tests.conftest import WITHOUT_SOP_HF, count_forward_calls, tiny_config
from tests.fake_hub import running_fake_hub

LABELS = {0: "cat", 1: "dog", 2: "bird"}


def encoder_config(**overrides) -> SOPConfig:
    """An exported encoder's config: no mask token, no MIM, no stochastic depth (eval parity)."""
    return tiny_config(use_mask_token=False, mim_loss_weight=0.0, drop_path_rate=0.0, **overrides)


def _enable_checkpointing(model) -> None:
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable({"use_reentrant": False})


@pytest.fixture
def exported(tmp_path):
    """An exported SOPModel folder (weights, config with auto_map, remote code, image processor)."""
    model = SOPModel(encoder_config()).eval()
    model.save_pretrained(tmp_path / "enc")
    SOPImageProcessor(size=32).save_pretrained(tmp_path / "enc")
    return tmp_path / "enc", model


# ---------------------------------------------------------------- SOPModel conventions


def test_output_flags__from_pretrained_kwargs_reach_the_forward(exported):
    folder, _ = exported
    images = torch.randn(2, 3, 32, 32)
    out = AutoModel.from_pretrained(folder, output_hidden_states=True)(images)
    assert len(out.hidden_states) == 3 and all(h.shape == (2, 17, 32) for h in out.hidden_states)
    assert out.attentions is None
    model = AutoModel.from_pretrained(folder, output_attentions=True)
    assert model.config._attn_implementation == "eager"
    out = model(images)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 2, 17, 17)
    assert out.hidden_states is None


def test_output_flags__call_arguments_override_the_config(config):
    model = SOPModel(config).eval()
    images = torch.randn(1, 3, 32, 32)
    assert model(images).hidden_states is None
    model.config.output_hidden_states = True
    assert len(model(images).hidden_states) == 3
    assert model(images, output_hidden_states=False).hidden_states is None
    as_tuple = model(images, return_dict=False)
    assert len(as_tuple) == 3 and len(as_tuple[2]) == 3  # tokens, pooled, hidden states


@pytest.mark.parametrize("batch_size", [1, 3])
def test_attn_implementation__sdpa_and_eager_agree(exported, batch_size):
    folder, _ = exported
    sdpa = SOPModel.from_pretrained(folder, attn_implementation="sdpa").eval()
    eager = SOPModel.from_pretrained(folder, attn_implementation="eager").eval()
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    images = torch.randn(batch_size, 3, 32, 48)
    a, b = sdpa(images, output_hidden_states=True), eager(images, output_hidden_states=True)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, atol=1e-5, rtol=1e-5)
    assert len(a.hidden_states) == len(b.hidden_states) == 3
    for x, y in zip(a.hidden_states, b.hidden_states, strict=True):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)
    eager.config.output_attentions = True
    attentions = eager(images).attentions
    assert len(attentions) == 2 and attentions[-1].shape == (batch_size, 2, 25, 25)
    torch.testing.assert_close(attentions[-1].sum(-1), torch.ones(batch_size, 2, 25))


def test_attn_implementation__switch_at_runtime(config):
    model = SOPModel(config).eval()
    images = torch.randn(2, 3, 32, 32)
    reference = model(images).last_hidden_state
    model.set_attn_implementation("eager")
    assert model.config._attn_implementation == "eager"
    torch.testing.assert_close(model(images).last_hidden_state, reference, atol=1e-5, rtol=1e-5)


def test_torch_export__encoder_classifier_and_backbone_match_eager():
    images = torch.randn(2, 3, 32, 32)
    models = [
        SOPModel(encoder_config()),
        SOPForImageClassification(encoder_config(num_labels=3)),
        SOPBackbone(encoder_config(out_indices=[1, 2])),
    ]
    for model in models:
        model.eval()
        with torch.no_grad():
            expected = model(images)
            exported = torch.export.export(model, (images,)).module()
            got = exported(images)
        key = {"SOPModel": "last_hidden_state", "SOPForImageClassification": "logits"}.get(type(model).__name__)
        if key is None:
            assert len(got["feature_maps"]) == len(expected.feature_maps) == 2
            for x, y in zip(got["feature_maps"], expected.feature_maps, strict=True):
                torch.testing.assert_close(x, y)
        else:
            torch.testing.assert_close(got[key], expected[key])


# ---------------------------------------------------------------- SOPForImageClassification


def test_classifier__loads_the_encoder_and_initialises_only_the_head(exported):
    folder, encoder = exported
    model, info = AutoModelForImageClassification.from_pretrained(
        folder, num_labels=3, id2label=LABELS, output_loading_info=True
    )
    assert isinstance(model, SOPForImageClassification)
    assert sorted(info["missing_keys"]) == ["classifier.bias", "classifier.weight"]
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    for name, tensor in encoder.state_dict().items():
        torch.testing.assert_close(model.sop.state_dict()[name], tensor, msg=name)
    assert model.classifier.weight.shape == (3, 32) and model.classifier.bias.abs().sum() == 0
    images = torch.randn(2, 3, 32, 32)
    model.eval()
    torch.testing.assert_close(
        model(images).logits, model.classifier(encoder(images).pooler_output), atol=1e-6, rtol=1e-6
    )


def test_classifier__mean_patch_concatenation_and_loss():
    model = SOPForImageClassification(encoder_config(num_labels=3, classifier_mean_patch=True)).eval()
    assert model.classifier.in_features == 64
    images, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    out = model(images, labels=labels, output_hidden_states=True)
    tokens = model.sop(images).last_hidden_state
    features = torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], dim=-1)
    torch.testing.assert_close(out.logits, model.classifier(features))
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    assert len(out.hidden_states) == 3
    loss, logits = model(images, labels=labels, return_dict=False)[:2]
    torch.testing.assert_close(loss, out.loss)


def test_classifier__batching_equivalence_and_gradient_checkpointing():
    model = SOPForImageClassification(encoder_config(num_labels=3))
    images, labels = torch.randn(3, 3, 32, 32), torch.tensor([0, 2, 1])
    model.eval()
    with torch.no_grad():
        batched = model(images).logits
        single = torch.cat([model(images[i : i + 1]).logits for i in range(3)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    model.train()
    mlp_calls = count_forward_calls([layer.mlp for layer in model.sop.layers])
    model(images, labels=labels).loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    _enable_checkpointing(model)
    assert all(layer.gradient_checkpointing for layer in model.sop.layers)
    model(images, labels=labels).loss.backward()
    assert mlp_calls == [1 + 2, 1 + 2]  # checkpointed: each block ran again in the backward
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], msg=name)


def _tiny_dataset(num: int = 24):
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(num) % 3
    pixels = torch.randn(num, 3, 32, 32, generator=generator) + labels.view(-1, 1, 1, 1).float()  # separable
    return Dataset.from_dict({"pixel_values": pixels.numpy(), "labels": labels.numpy()}).with_format("torch")


def test_classifier__fine_tunes_with_the_stock_trainer(exported, tmp_path):
    folder, _ = exported
    model = AutoModelForImageClassification.from_pretrained(folder, num_labels=3, id2label=LABELS)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = TrainingArguments(
        output_dir=str(tmp_path / "ft"), per_device_train_batch_size=8, per_device_eval_batch_size=8, max_steps=6,
        learning_rate=1e-3, use_cpu=True, report_to=[], save_strategy="no", logging_steps=1,
        remove_unused_columns=False, dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    data = _tiny_dataset()
    trainer = Trainer(model=model, args=args, train_dataset=data, eval_dataset=data)
    result = trainer.train()
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert len(losses) == 6 and all(np.isfinite(losses)) and np.isfinite(result.training_loss)
    assert np.mean(losses[-2:]) < np.mean(losses[:2])
    assert np.isfinite(trainer.evaluate()["eval_loss"])
    changed = [n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert "classifier.weight" in changed and "sop.layers.0.attention.qkv.weight" in changed


def test_classifier__image_classification_pipeline_on_a_saved_folder(tmp_path):
    model = SOPForImageClassification(encoder_config(num_labels=3, id2label=LABELS)).eval()
    model.save_pretrained(tmp_path)
    SOPImageProcessor(size=32).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert auto_map["AutoModelForImageClassification"] == "modeling_sop.SOPForImageClassification"
    classifier = pipeline("image-classification", model=str(tmp_path))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    result = classifier(image, top_k=3)
    assert sorted(r["label"] for r in result) == ["bird", "cat", "dog"]
    pixels = SOPImageProcessor(size=32)(image, return_tensors="pt")["pixel_values"]
    probs = model(pixels).logits.softmax(-1)[0]
    expected = {LABELS[i]: probs[i].item() for i in range(3)}
    for r in result:
        assert abs(r["score"] - expected[r["label"]]) < 1e-5


def test_classifier__save_load_round_trip(tmp_path):
    model = SOPForImageClassification(encoder_config(num_labels=3, classifier_mean_patch=True)).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.classifier_mean_patch and loaded.classifier.in_features == 64
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(images).logits, loaded(images).logits)
    with pytest.raises(ValueError, match="classifier.weight: checkpoint"):
        SOPForImageClassification.from_pretrained(tmp_path, num_labels=5)


# ---------------------------------------------------------------- SOPBackbone


@pytest.mark.parametrize(
    "kwargs, stages",
    [
        ({}, ["stage2"]),
        ({"out_indices": [0, 2]}, ["stem", "stage2"]),
        ({"out_features": ["stage1", "stage2"]}, ["stage1", "stage2"]),
        ({"out_indices": [-2, -1]}, ["stage1", "stage2"]),
    ],
)
def test_backbone__feature_maps_of_the_chosen_stages(exported, kwargs, stages):
    folder, encoder = exported
    backbone = SOPBackbone.from_pretrained(folder, **kwargs).eval()
    assert backbone.out_features == stages and backbone.channels == [32] * len(stages)
    images = torch.randn(2, 3, 32, 48)
    out = backbone(images)
    assert [tuple(m.shape) for m in out.feature_maps] == [(2, 32, 4, 6)] * len(stages)
    assert out.hidden_states is None
    # each map is its stage's tokens after the final norm, without [CLS], row-major over the patch grid; the last
    # stage is the encoder's output
    with torch.no_grad():
        encoded = encoder(images, output_hidden_states=True)
    torch.testing.assert_close(encoder.layernorm(encoded.hidden_states[-1]), encoded.last_hidden_state)
    for stage, feature_map in zip(stages, out.feature_maps, strict=True):
        tokens = encoder.layernorm(encoded.hidden_states[["stem", "stage1", "stage2"].index(stage)])[:, 1:]
        torch.testing.assert_close(feature_map.flatten(2).transpose(1, 2), tokens, atol=1e-6, rtol=1e-6, msg=stage)


def test_backbone__auto_backbone_hidden_states_and_round_trip(tmp_path):
    backbone = AutoBackbone.from_config(encoder_config(out_indices=[1, 2])).eval()
    assert isinstance(backbone, SOPBackbone) and backbone.out_indices == [1, 2]
    out = backbone(torch.randn(1, 3, 32, 32), output_hidden_states=True, output_attentions=True)
    assert len(out.hidden_states) == 3 and len(out.attentions) == 2
    backbone.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (
        saved["out_features"] == ["stage1", "stage2"]
        and saved["auto_map"]["AutoBackbone"] == "modeling_sop.SOPBackbone"
    )
    loaded = SOPBackbone.from_pretrained(tmp_path).eval()
    assert loaded.out_features == ["stage1", "stage2"]
    images = torch.randn(2, 3, 32, 32)
    expected, got = backbone(images).feature_maps, loaded(images).feature_maps
    assert len(expected) == len(got) == 2
    for a, b in zip(expected, got, strict=True):
        assert torch.equal(a, b)


def test_backbone__gradient_checkpointing_same_gradients():
    backbone = SOPBackbone(encoder_config(out_indices=[1, 2])).train()
    images = torch.randn(2, 3, 32, 32)
    mlp_calls = count_forward_calls([layer.mlp for layer in backbone.layers])
    sum(m.square().mean() for m in backbone(images).feature_maps).backward()
    grads = {n: p.grad.clone() for n, p in backbone.named_parameters()}
    backbone.zero_grad()
    _enable_checkpointing(backbone)
    sum(m.square().mean() for m in backbone(images).feature_maps).backward()
    assert mlp_calls == [1 + 2, 1 + 2]  # checkpointed: each block ran again in the backward
    for name, param in backbone.named_parameters():
        torch.testing.assert_close(param.grad, grads[name], msg=name)


def test_config__backbone_stages_validated_and_old_configs_load():
    with pytest.raises(ValueError, match="out_features must be a subset of stage_names"):
        tiny_config(out_features=["stage3"])
    with pytest.raises(ValueError, match="classifier_mean_patch must be a bool"):
        tiny_config(classifier_mean_patch="yes")
    old = {k: v for k, v in tiny_config().to_dict().items() if k not in ("out_features", "out_indices", "stage_names")}
    config = SOPConfig.from_dict(old)
    assert config.stage_names == ["stem", "stage1", "stage2"] and config.out_features == ["stage2"]


# ---------------------------------------------------------------- remote code

REMOTE_SCRIPT = (
    WITHOUT_SOP_HF
    + """import torch
from transformers import AutoBackbone, AutoModelForImageClassification

repo, ref_path = {repo!r}, {ref!r}
ref = torch.load(ref_path)
classifier = AutoModelForImageClassification.from_pretrained(repo, trust_remote_code=True, num_labels=3).eval()
backbone = AutoBackbone.from_pretrained(repo, trust_remote_code=True, out_indices=[1, 2]).eval()
for model in (classifier, backbone):
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    tokens = classifier.sop(ref["images"]).last_hidden_state
    maps = backbone(ref["images"]).feature_maps
print("DELTA", (tokens - ref["tokens"]).abs().max().item(), (maps[-1] - ref["map"]).abs().max().item(),
      type(classifier).__name__, type(backbone).__name__, [tuple(m.shape) for m in maps])
"""
)


def test_remote_code__classifier_and_backbone_load_without_sop_hf(exported, tmp_path):
    folder, encoder = exported
    images = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        tokens = encoder(images).last_hidden_state
    grid = tokens[:, 1:].reshape(2, 4, 6, 32).permute(0, 3, 1, 2)
    torch.save({"images": images, "tokens": tokens, "map": grid}, tmp_path / "ref.pt")
    # AutoBackbone.from_pretrained only takes Hub repository ids (transformers 5.24 asks the Hub whether the name
    # exists before anything else), so the folder is served by the fake Hub.
    with running_fake_hub() as hub:
        hub.create_repo("sop-tester/sop-heads")
        files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
        hub.commit("sop-tester/sop-heads", files, [], "upload")
        script = textwrap.dedent(REMOTE_SCRIPT.format(repo="sop-tester/sop-heads", ref=str(tmp_path / "ref.pt")))
        result = hub.run_python(script, cwd=tmp_path)
    line = [row for row in result.stdout.splitlines() if row.startswith("DELTA")][0].split()
    assert float(line[1]) < 1e-5 and float(line[2]) < 1e-5, line
    assert line[3:5] == ["SOPForImageClassification", "SOPBackbone"]
    assert "(2, 32, 4, 6)" in " ".join(line[5:])
