"""CARP / CARL (and MaSSL) on transformers' ResNetModel: the step, BatchNorm head, EMA, save/load, export as a stock
ResNetModel that loads without sop_hf, features, model card and a short run of the training script."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import ResNetModel

from sop_hf import CARPConfig, CARPForPreTraining
from sop_hf.evaluation import extract_features, pool_output
from sop_hf.hub import build_model_card, default_image_processor, save_encoder
from sop_hf.methods import build_config
from tests.conftest import TINY, TINY_RESNET, WITHOUT_SOP_HF, lineage_model

ROOT = Path(__file__).parent.parent
SIZES = {"massl": dict(memory_size=64, block_size=16), "carp": dict(num_prototypes=64, block_size=16),
         "carl": dict(num_prototypes=64)}  # fmt: skip


def resnet_lineage(method="carp", **overrides):
    return lineage_model(method, backbone=dict(TINY_RESNET), **{**SIZES[method], **overrides})


def inputs(batch=4):
    g = torch.Generator().manual_seed(0)
    return dict(pixel_values=torch.randn(2 * batch, 3, 32, 32, generator=g),
                local_pixel_values=torch.randn(2 * batch, 3, 16, 16, generator=g))  # fmt: skip


@pytest.mark.parametrize("method", ["carp", "carl", "massl"])
def test_step__resnet_encoder_bn_head_gradients_only_to_the_student(method):
    model = resnet_lineage(method).train()
    assert isinstance(model.student, ResNetModel) and isinstance(model.teacher, ResNetModel)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.head.modules())  # CARP's ResNet head
    out = model(**inputs())
    assert torch.isfinite(out.loss) and out.student_embeddings.shape == (16, TINY["head_output_size"])
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("teacher"):
            assert param.grad is None, name
        else:
            assert param.grad is not None and torch.isfinite(param.grad).all(), name


def test_config__head_batch_norm_default_follows_the_encoder_and_validation():
    resnet50 = build_config("carp", {"backbone_config": {"model_type": "resnet"}})
    assert resnet50.head_batch_norm is True and resnet50.is_resnet
    assert CARPConfig().head_batch_norm is False  # the default encoder is the SOP ViT
    assert (
        build_config("carp", {"backbone_config": {"model_type": "resnet"}, "head_batch_norm": False}).head_batch_norm
        is False
    )
    assert resnet50.encoder_width == 2048 and list(resnet50.backbone_config.depths) == [3, 4, 6, 3]  # ResNet-50
    with pytest.raises(ValueError, match="backbone_config must be an SOPConfig or a ResNetConfig"):
        build_config("carp", {"backbone_config": {"model_type": "bert"}})
    with pytest.raises(ValueError, match="unknown ResNetConfig field.*resnet_depths"):  # an override: a user typo
        build_config("carp", {"backbone_config": {"model_type": "resnet"}}, {"backbone_config.resnet_depths": [1, 1]})


def test_init__resnet_keeps_its_own_initialisation_and_teacher_is_a_copy():
    model = resnet_lineage()
    conv = model.student.embedder.embedder.convolution.weight.detach()  # 7x7 stem, 8 channels
    # ResNet's kaiming fan_out init, std sqrt(2 / (8 * 7 * 7)) = 0.0714, not the ViT's trunc-normal 0.02
    assert float(conv.std()) == pytest.approx(math.sqrt(2 / (8 * 49)), rel=0.15)
    student, teacher = dict(model.student.named_parameters()), dict(model.teacher.named_parameters())
    assert list(student) == list(teacher)
    for name, value in student.items():
        assert torch.equal(value, teacher[name]), name
    bn = model.head.mlp[1]
    assert torch.equal(bn.running_var, torch.ones_like(bn.running_var)) and int(bn.num_batches_tracked) == 0


def test_ema__moves_resnet_parameters_teacher_bn_statistics_come_from_its_own_forward():
    model = resnet_lineage().train()
    model(**inputs()).loss.backward()
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    before = {name: t.detach().clone() for name, t in model.teacher.named_parameters()}
    student = dict(model.student.named_parameters())
    assert list(before) == list(student)
    model.update_teacher(0.9)
    for name, t in model.teacher.named_parameters():
        assert torch.allclose(t, 0.9 * before[name] + 0.1 * student[name], atol=1e-6), name
    stats = model.teacher.embedder.embedder.normalization.num_batches_tracked
    assert int(stats) == 1  # the teacher forward of the one step


def test_save_load__round_trip_is_exact(tmp_path):
    model = resnet_lineage().train()
    model(**inputs())  # moves BN statistics and the step counter
    model.save_pretrained(tmp_path)
    loaded = CARPForPreTraining.from_pretrained(tmp_path)
    assert isinstance(loaded.student, ResNetModel)
    original, reloaded = model.state_dict(), loaded.state_dict()
    assert list(reloaded) == list(original)
    for key, value in original.items():
        assert torch.equal(value, reloaded[key]), key


def _image(path: Path) -> Path:
    g = torch.Generator().manual_seed(3)
    pixels = (torch.rand(40, 48, 3, generator=g) * 255).to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)
    return path


LOAD_WITHOUT_SOP_HF = (
    WITHOUT_SOP_HF
    + """import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, pipeline

folder, image_path, out_path = sys.argv[1:4]
model = AutoModel.from_pretrained(folder).eval()  # no trust_remote_code: a stock ResNetModel
processor = AutoImageProcessor.from_pretrained(folder)
assert type(model).__name__ == "ResNetModel", type(model)
with torch.no_grad():
    out = model(**processor(images=Image.open(image_path), return_tensors="pt"))
pooled = torch.tensor(pipeline("image-feature-extraction", model=folder)(Image.open(image_path), pool=True))
torch.save({"pooled": out.pooler_output, "pipeline": pooled}, out_path)
"""
)


def test_export__stock_resnet_folder_loads_without_sop_hf_with_identical_features(tmp_path):
    model = resnet_lineage(image_size=32).train()
    model(**inputs())
    encoder = model.export_encoder("teacher")
    assert type(encoder) is ResNetModel and not encoder.training
    exported = encoder.state_dict()
    assert list(exported) == list(model.teacher.state_dict())
    for key, value in model.teacher.state_dict().items():
        assert torch.equal(value, exported[key]), key  # weights and BN statistics
    folder = save_encoder(encoder, tmp_path / "encoder", image_processor=default_image_processor(encoder.config),
                          method="carp")  # fmt: skip
    assert not list(folder.glob("*.py"))  # no remote code needed
    image = _image(tmp_path / "image.png")
    processor = default_image_processor(encoder.config)
    with torch.no_grad():
        expected = encoder(**processor(images=Image.open(image), return_tensors="pt")).pooler_output
    out = tmp_path / "out.pt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_SOP_HF, str(folder), str(image), str(out)],
                            capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(out)
    torch.testing.assert_close(loaded["pooled"], expected, rtol=0, atol=0)
    torch.testing.assert_close(loaded["pipeline"].reshape(-1), expected.reshape(-1), rtol=1e-6, atol=1e-6)


def test_features__global_average_pool_and_token_poolings_refused():
    encoder = resnet_lineage().export_encoder("student")
    pixels = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        output = encoder(pixel_values=pixels)
    torch.testing.assert_close(pool_output(output, encoder, "cls"), output.pooler_output.flatten(1))
    with pytest.raises(ValueError, match="cls_mean_patch"):
        pool_output(output, encoder, "cls_mean_patch")
    import datasets

    images = [Image.fromarray((torch.rand(32, 32, 3) * 255).to(torch.uint8).numpy()) for _ in range(5)]
    data = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1, 0]})
    x, y = extract_features(encoder, data, default_image_processor(encoder.config), batch_size=2, progress=False)
    assert x.shape == (5, 32) and y.tolist() == [0, 1, 0, 1, 0]


def test_model_card__resnet50_name_table_and_snippets_without_remote_code():
    config = CARPConfig(backbone_config={"model_type": "resnet"}).backbone_config
    text = str(build_model_card(config, method="carp", repo_id="org/carp-rn50"))
    assert "# CARP ResNet-50 image encoder" in text and "convolutional network (ResNet)" in text
    assert "| Stage widths | 256 / 512 / 1024 / 2048 |" in text
    assert "| Parameters | 23.5M (23,508,032) |" in text  # torchvision's ResNet-50, 25,557,032, minus its fc layer
    assert "trust_remote_code" not in text and 'AutoModel.from_pretrained("org/carp-rn50")' in text


def test_script__carp_resnet_short_run_exports_a_stock_resnet(tmp_path):
    backbone = json.dumps(TINY_RESNET, separators=(",", ":"))
    overrides = f"backbone_config={backbone},num_prototypes=256,block_size=64,head_hidden_size=64,head_output_size=32"
    cmd = [sys.executable, str(ROOT / "examples" / "pretrain_sop.py"), "--method", "carp", "--config_overrides",
           overrides, "--max_steps", "4", "--logging_steps", "2", "--monitor_steps", "2",
           "--monitor_samples", "100", "--max_eval_samples", "200", "--save_strategy", "no", "--disable_tqdm", "true",
           "--output_dir", str(tmp_path)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    summary = json.loads((tmp_path / "results.json").read_text())
    assert len(summary["last_losses"]) == 2 and all(math.isfinite(v) for v in summary["last_losses"])  # steps 2, 4
    assert 0 < summary["knn_top1_trained"] <= 1
    config = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert config["model_type"] == "resnet" and "auto_map" not in config
    assert json.loads((tmp_path / "encoder" / "preprocessor_config.json").read_text())["crop_size"]["height"] == 28


def test_script__sop_refuses_the_resnet_encoder(tmp_path):
    from sop_hf.pretrain import main

    with pytest.raises(ValueError, match="unknown SOPConfig field.*backbone_config"):
        main(
            [
                "--config_overrides",
                'backbone_config={"model_type":"resnet"}',
                "--max_steps",
                "1",
                "--output_dir",
                str(tmp_path),
            ]
        )


def test_update_model_card__adds_results_to_a_resnet_export_but_not_to_a_foreign_resnet(tmp_path):
    from huggingface_hub import ModelCard

    from sop_hf.hub.model_card import update_model_card

    encoder = resnet_lineage().export_encoder("teacher")
    folder = save_encoder(encoder, tmp_path / "ours", method="carp", training={"dataset": "embedded", "max_steps": 4})
    result = {"task_type": "image-classification", "dataset_type": "embedded", "dataset_name": "embedded",
              "metric_type": "accuracy", "metric_value": 0.5, "metric_name": "k-NN top-1 (k=20)"}  # fmt: skip
    card = ModelCard.load(update_model_card(folder, [result]))
    assert [r.metric_value for r in card.data.eval_results] == [0.5]
    assert "carp" in card.data.tags and "# CARP ResNet (basic blocks, depths 1 / 1) image encoder" in card.text
    assert "| Optimizer steps | 4 |" in card.text  # the recipe survives
    encoder.save_pretrained(tmp_path / "foreign")  # a ResNet without an sop_hf card
    with pytest.raises(ValueError, match="has model_type='resnet'"):
        update_model_card(tmp_path / "foreign", [result])


def test_zero_init_residual__last_branch_batch_norm_starts_at_zero_and_the_teacher_copies_it():
    model = resnet_lineage(zero_init_residual=True)
    branches = [m for m in model.student.modules() if type(m).__name__ in ("ResNetBasicLayer", "ResNetBottleNeckLayer")]
    assert len(branches) == 2  # two stages of one basic block
    for block in branches:
        assert torch.count_nonzero(block.layer[-1].normalization.weight) == 0
        assert torch.count_nonzero(block.layer[0].normalization.weight) > 0  # only the last one of the branch
    teacher = dict(model.teacher.named_parameters())
    for name, value in model.student.named_parameters():
        assert torch.equal(value, teacher[name]), name
    plain = resnet_lineage()
    assert all(torch.count_nonzero(m.layer[-1].normalization.weight) > 0 for m in plain.student.modules()
               if type(m).__name__ == "ResNetBasicLayer")  # fmt: skip
    from sop_hf.methods import METHODS

    assert METHODS["carp"].recipes["carp_resnet50_imagenet"]["model"]["zero_init_residual"] is True


def test_head__batch_norm_sees_global_and_local_views_in_one_batch():
    model = resnet_lineage().train()
    calls = []
    handle = model.head.mlp[0].register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    model(**inputs(batch=4))  # 2 global + 2 local views of 4 images
    handle.remove()
    assert calls == [16]  # one head call over all V * B = 16 rows: BatchNorm statistics over every view together
