"""The main job as a user runs it: examples/pretrain_sop.py with plain python and with accelerate (2 CPU processes)."""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).parent.parent
SCRIPT = str(ROOT / "examples" / "pretrain_sop.py")


def run(cmd, timeout=900):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def test_demo__short_run_exports_a_loadable_encoder_card_plot_and_knn(tmp_path):
    out = tmp_path / "demo"
    result = run([sys.executable, SCRIPT, "--max_steps", "6", "--logging_steps", "2", "--max_eval_samples", "300",
                  "--output_dir", str(out), "--save_strategy", "no"])  # fmt: skip
    assert "k-NN top-1 (k=20) on embedded/test: random init" in result.stdout
    summary = json.loads((out / "results.json").read_text())
    assert summary["global_step"] == 6
    trained, baseline = summary["knn_top1_trained"], summary["knn_top1_random_init"]
    assert f"random init {100 * baseline:.1f}%  ->  trained (student) {100 * trained:.1f}%: " in result.stdout
    assert re.search(r"%: [+-]\d+\.\d points(: within noise| over random init: learned|: worse)", result.stdout)
    assert 0.1 < baseline < 1 and 0.1 < trained < 1  # 10 balanced classes: chance is 0.1
    encoder = out / "encoder"
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "modeling_sop.py", "README.md"):
        assert (encoder / name).exists(), name
    png = (out / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    card = (encoder / "README.md").read_text()
    assert "pipeline_tag: image-feature-extraction" in card and "k-NN top-1 (k=20)" in card

    from transformers import AutoModel, pipeline

    model = AutoModel.from_pretrained(encoder).eval()
    assert model.config.image_size == 28 and model.embeddings.mask_token is None
    extractor = pipeline("image-feature-extraction", model=str(encoder))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
    pooled = np.array(extractor(image, pool=True))
    assert pooled.shape == (1, 64) and np.isfinite(pooled).all()


def test_demo__two_cpu_processes_with_accelerate_launch(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", SCRIPT, "--use_cpu",
           "--max_steps", "4", "--per_device_train_batch_size", "32", "--knn_eval", "false", "--save_steps", "2",
           "--output_dir", str(out), "--logging_steps", "1"]  # fmt: skip
    run(cmd)
    summary = json.loads((out / "results.json").read_text())
    assert summary["global_step"] == 4
    from safetensors.torch import load_file

    state = load_file(out / "checkpoint-4" / "model.safetensors")
    # the bank advanced by the global batch (2 processes x 32) per step
    assert int(state["class_memory.ptr"]) == 4 * 64 and int(state["step_count"]) == 4
    assert torch.isfinite(state["class_memory.rows"]).all()


def test_help__explains_the_knobs():
    result = run([sys.executable, SCRIPT, "--help"], timeout=120)
    for flag in (
        "--dataset_name",
        "--config_overrides",
        "--recipe",
        "--momentum_teacher",
        "--clip_grad_per_param",
        "--max_steps",
    ):
        assert flag in result.stdout
    text = " ".join(result.stdout.split())
    assert (
        "sop: demo, small_images, vit_small_imagenet, vit_base_imagenet" in text
        and "carp: demo, carp_resnet50_imagenet" in text
    )
    assert "'num_anchors=2048,koleo_loss_weight=0.1'" in text  # how to change a config field
    assert "--max_steps MAX_STEPS" in text and "(default: 500)" in text  # the demo recipe's values are the defaults


import pytest  # noqa: E402


def test_script__is_glue_that_imports_the_library():
    source = Path(SCRIPT).read_text()
    assert sum(1 for line in source.splitlines() if line.strip()) <= 200  # run_mim.py-sized: the example is glue
    assert "from sop_hf.pretrain import" in source and "_load_from_checkpoint" not in source


SIZES = {
    "massl": "memory_size=2048,block_size=256",
    "carp": "num_prototypes=1024,block_size=256",
    "carl": "num_prototypes=1024",
}


@pytest.mark.parametrize(
    "method", [pytest.param("massl", marks=pytest.mark.slow), "carp", pytest.param("carl", marks=pytest.mark.slow)]
)  # carp in the default run
def test_lineage_methods__short_end_to_end_run_exports_a_loadable_encoder(method, tmp_path):
    out = tmp_path / method
    run([sys.executable, SCRIPT, "--method", method, "--max_steps", "3", "--logging_steps", "1", "--knn_eval", "false",
         "--config_overrides", SIZES[method], "--save_strategy", "no",
         "--output_dir", str(out)])  # fmt: skip
    summary = json.loads((out / "results.json").read_text())
    assert summary["method"] == method and summary["global_step"] == 3
    assert len(summary["last_losses"]) == 3 and all(math.isfinite(v) for v in summary["last_losses"])  # one per step
    from transformers import AutoModel

    model = AutoModel.from_pretrained(out / "encoder")
    assert type(model).__name__ == "SOPModel"
    assert f"- {method}" in (out / "encoder" / "README.md").read_text()
