"""The README and docs examples run as written (shell commands and Python blocks), against an encoder placed where
the demo leaves one (outputs/sop-demo/encoder)."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from sop_hf import SOPConfig, SOPModel
from sop_hf.hub import save_encoder
from sop_hf.hub.stock_vit import stock_image_processor
from sop_hf.methods import SOP

ROOT = Path(__file__).parent.parent
BLOCK = re.compile(r"```(bash|python)\n(.*?)```", re.S)


def blocks(doc: str, language: str) -> list[str]:
    return [body for lang, body in BLOCK.findall((ROOT / doc).read_text()) if lang == language]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A working directory holding a demo-sized encoder at outputs/sop-demo/encoder and docs/assets."""
    work = tmp_path_factory.mktemp("docs")
    model_keys = set(SOPConfig().to_dict())
    sizes = {k: v for k, v in SOP.recipes["demo"]["model"].items() if k in model_keys}
    torch.manual_seed(0)
    encoder = SOPModel(SOPConfig(**{**sizes, "use_mask_token": False}))
    save_encoder(encoder, work / "outputs" / "sop-demo" / "encoder", image_processor=stock_image_processor(28, 1.0))
    shutil.copytree(ROOT / "docs" / "assets", work / "docs" / "assets")
    return work


def run(cmd, cwd, shell=False):
    env = {**os.environ, "HF_HOME": str(cwd / "hf_home"), "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        cmd, cwd=cwd, env=env, shell=shell, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )  # a trust_remote_code prompt must fail, not wait
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def test_evaluation_doc__shell_commands_run_and_print_the_fixed_names(demo_dir):
    commands = [line for body in blocks("docs/evaluation.md", "bash") for line in body.strip().splitlines()]
    assert len(commands) == 5
    outputs = {cmd: run(cmd, demo_dir, shell=True) for cmd in commands}
    knn = outputs[commands[0]]
    assert re.search(r"^knn_top1@10: 0\.\d+$", knn, re.M)
    knn20 = re.search(r"^knn_top1@20: (0\.\d+)$", knn, re.M)
    assert knn20
    assert re.search(r"^linear_top1: 0\.\d+$", outputs[commands[1]], re.M)
    assert re.search(r"^map: 0\.\d+$", outputs[commands[2]], re.M)
    # --update-card: the same k-NN (same encoder and data) printed and written into the card's model-index
    assert "--update-card" in commands[3] and outputs[commands[3]].splitlines() == [f"knn_top1@20: {knn20.group(1)}"]
    card = ModelCard.load(demo_dir / "outputs" / "sop-demo" / "encoder" / "README.md")
    values = [r.metric_value for r in card.data.eval_results if r.metric_name == "k-NN top-1 (k=20)"]
    assert values == [pytest.approx(float(knn20.group(1)), abs=1e-4)]
    with Image.open(demo_dir / "attention.png") as image:
        assert image.format == "PNG" and image.size[0] > 300


# What each Python block must leave behind or print, so a block that runs but does the wrong thing fails.
BLOCK_CHECKS = {
    "README.md": [
        "import numpy as np; from PIL import Image\n"
        'assert type(model).__name__ == "SOPModel"\n'
        'print("pooled", np.array(extractor(Image.new("RGB", (28, 28)), pool=True)).shape)',
    ],
    "docs/evaluation.md": [
        "",
        "",
        "from transformers import TrainerCallback\n"
        "assert isinstance(monitor, TrainerCallback)\n"
        "print('monitor', monitor.every_n_steps, monitor.k, monitor.num_prototypes, len(monitor.memory_dataset),\n"
        "      len(monitor.query_dataset), monitor.memory_dataset[0]['image'].size)",
    ],
}
BLOCK_OUTPUTS = {
    "README.md": [r"pooled \(1, 64\)"],
    "docs/evaluation.md": [
        r"\{10: 0\.\d+, 20: 0\.\d+\}\n0\.\d+",  # k-NN top-1 per k, then the retrieval mAP
        r"\{'accuracy': 1\.0\}",  # the query [1, 0.1] is nearest to [1, 0], whose label 0 is its reference
        r"monitor 100 20 128 1000 1000 \(28, 28\)",
    ],
}


@pytest.mark.parametrize("doc", ["README.md", "docs/evaluation.md"])
def test_python_blocks_run(doc, demo_dir):
    bodies = blocks(doc, "python")
    checks, expected = BLOCK_CHECKS[doc], BLOCK_OUTPUTS[doc]
    assert len(bodies) == len(expected) == len(checks), "update BLOCK_CHECKS / BLOCK_OUTPUTS with the doc"
    for body, check, pattern in zip(bodies, checks, expected, strict=True):
        output = run([sys.executable, "-c", body + "\n" + check], demo_dir)
        assert re.fullmatch(pattern, output.strip()), (body, output)
