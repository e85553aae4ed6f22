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

from sop_hf import SOPConfig, SOPModel
from sop_hf.hub.stock_vit import stock_image_processor
from sop_hf.hub import save_encoder
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
    result = subprocess.run(cmd, cwd=cwd, env=env, shell=shell, capture_output=True, text=True, timeout=600,
                            stdin=subprocess.DEVNULL)  # a trust_remote_code prompt must fail, not wait
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


def test_evaluation_doc__shell_commands_run_and_print_the_fixed_names(demo_dir):
    commands = [line for body in blocks("docs/evaluation.md", "bash") for line in body.strip().splitlines()]
    assert len(commands) == 5
    outputs = {cmd: run(cmd, demo_dir, shell=True) for cmd in commands}
    knn = outputs[commands[0]]
    assert re.search(r"^knn_top1@10: 0\.\d+$", knn, re.M) and re.search(r"^knn_top1@20: 0\.\d+$", knn, re.M)
    assert re.search(r"^linear_top1: 0\.\d+$", outputs[commands[1]], re.M)
    assert re.search(r"^map: 0\.\d+$", outputs[commands[2]], re.M)
    card = (demo_dir / "outputs" / "sop-demo" / "encoder" / "README.md").read_text()
    assert "k-NN top-1 (k=20)" in card  # --update-card
    assert (demo_dir / "attention.png").stat().st_size > 1000


# What each Python block must leave behind or print, so a block that runs but does the wrong thing fails.
BLOCK_CHECKS = {
    "README.md": [
        'import numpy as np; from PIL import Image\n'
        'assert type(model).__name__ == "SOPModel"\n'
        'print("pooled", np.array(extractor(Image.new("RGB", (28, 28)), pool=True)).shape)',
    ],
}
BLOCK_OUTPUTS = {"README.md": [r"pooled \(1, 64\)"],
                 "docs/evaluation.md": [r"\{10: 0\.\d+, 20: 0\.\d+\}", r"accuracy", r""]}  # fmt: skip


@pytest.mark.parametrize("doc", ["README.md", "docs/evaluation.md"])
def test_python_blocks_run(doc, demo_dir):
    bodies = blocks(doc, "python")
    checks = BLOCK_CHECKS.get(doc, [""] * len(bodies))
    expected = BLOCK_OUTPUTS[doc]
    assert len(bodies) == len(expected) == len(checks), "update BLOCK_CHECKS / BLOCK_OUTPUTS with the doc"
    for body, check, pattern in zip(bodies, checks, expected, strict=True):
        output = run([sys.executable, "-c", body + "\n" + check], demo_dir)
        assert re.search(pattern, output), (body, output)
