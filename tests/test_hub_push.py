"""--push_to_hub from the main job against the fake Hub (tests/fake_hub.py): what reaches the Hub is what users load.

The job runs in a subprocess pointed at the fake Hub; loads run in fresh processes with an empty cache and stdin
closed (a trust_remote_code prompt would fail them), with sop_hf and without it (remote code).
"""

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from tests.conftest import WITHOUT_SOP_HF
from tests.fake_hub import FakeHub, running_fake_hub

ROOT = Path(__file__).parent.parent
EXAMPLE = str(ROOT / "examples" / "pretrain_sop.py")
REPO = "sop-tester/sop-demo-push"

LOAD = """
import json, sys
import numpy as np
from PIL import Image
from transformers import AutoModel, pipeline
model = AutoModel.from_pretrained({repo!r}, trust_remote_code={remote})
extractor = pipeline("image-feature-extraction", model={repo!r}, trust_remote_code={remote})
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8))
pooled = np.array(extractor(image, pool=True))
print(json.dumps({{"class": type(model).__name__, "shape": list(pooled.shape), "finite": bool(np.isfinite(pooled).all())}}))
"""


@pytest.fixture(scope="module")
def pushed(tmp_path_factory) -> Iterator[tuple[FakeHub, Path]]:
    out = tmp_path_factory.mktemp("push") / "run"
    with running_fake_hub() as hub:
        result = subprocess.run(
            [sys.executable, EXAMPLE, "--max_steps", "2", "--save_steps", "2", "--output_dir", str(out),
             "--max_eval_samples", "100", "--monitor_steps", "0", "--disable_tqdm", "true", "--push_to_hub",
             "--hub_model_id", REPO, "--hub_strategy", "checkpoint"],
            cwd=ROOT, env=hub.env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
        yield hub, out


def load(hub: FakeHub, tmp_path: Path, remote: bool) -> dict:
    env = {**hub.env, "HF_HOME": str(tmp_path / "empty_cache")}  # nothing cached: everything comes from the Hub
    script = (WITHOUT_SOP_HF if remote else "import sop_hf\n") + textwrap.dedent(LOAD.format(repo=REPO, remote=remote))
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "[y/N]" not in result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_push__repository_holds_the_encoder_card_results_and_last_checkpoint(pushed):
    hub, out = pushed
    files = hub.files(REPO)
    root = {name for name in files if "/" not in name}
    assert {"model.safetensors", "config.json", "modeling_sop.py", "configuration_sop.py", "preprocessor_config.json",
            "README.md", "training_curves.png", "all_results.json"} <= root  # fmt: skip
    assert "last-checkpoint/model.safetensors" in files and "last-checkpoint/optimizer.pt" in files
    config = json.loads(files["config.json"])
    assert config["model_type"] == "sop" and "class_memory_size" in config  # the encoder config, no banks in weights
    assert json.loads(files["preprocessor_config.json"])["image_processor_type"] == "BitImageProcessor"
    results = json.loads(files["all_results.json"])
    assert "knn_top1@20" in results and results["global_step"] == 2


def test_push__card_metadata(pushed):
    hub, out = pushed
    card = ModelCard(hub.files(REPO)["README.md"].decode())
    meta = card.data.to_dict()
    assert meta["pipeline_tag"] == "image-feature-extraction" and meta["library_name"] == "transformers"
    assert meta["datasets"] == ["fashion_mnist"] and "sop_hf" in meta["tags"]
    assert "![Training curves](training_curves.png)" in card.text and "not recorded" not in card.text
    assert str(out) not in card.content


@pytest.mark.parametrize("remote", [False, True], ids=["with_sop_hf", "remote_code_without_sop_hf"])
def test_push__fresh_download_loads_with_automodel_and_pipeline(pushed, tmp_path, remote):
    hub, _ = pushed
    loaded = load(hub, tmp_path, remote)
    assert loaded == {"class": "SOPModel", "shape": [1, 64], "finite": True}
