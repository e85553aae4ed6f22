"""Tests of the ``evaluate`` metric modules shipped in ``sop_hf/evaluation/metrics``: offline loading and parity.

``evaluate.load`` runs in a subprocess with ``HF_HUB_OFFLINE=1`` and a temporary ``HF_HOME`` (evaluate reads both at
import and copies the scripts under ``$HF_HOME/modules``), so nothing reaches the network or ``~/.cache``.
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

from sop_hf.evaluation.metrics import METRIC_NAMES, metric_path

SCRIPT = textwrap.dedent(
    """
    import json
    import evaluate
    import torch
    from sop_hf.evaluation.knn import knn_top1
    from sop_hf.evaluation.metrics import load_metric, metric_path
    from sop_hf.evaluation.retrieval import label_map

    generator = torch.Generator().manual_seed(0)
    train, test = torch.randn(60, 5, generator=generator), torch.randn(20, 5, generator=generator)
    train_y, test_y = torch.randint(0, 3, (60,), generator=generator), torch.randint(0, 3, (20,), generator=generator)
    out = {}
    knn = evaluate.load(metric_path("knn_accuracy"))
    out["knn"] = knn.compute(predictions=test.tolist(), references=test_y.tolist(), train_embeddings=train.tolist(),
                             train_labels=train_y.tolist(), k=[5, 20])
    out["knn_direct"] = {f"accuracy@{k}": v for k, v in knn_top1(train, train_y, test, test_y, ks=(5, 20)).items()}
    retrieval = load_metric("retrieval_map")
    for start in range(0, 20, 8):  # batches accumulate like any evaluate metric
        retrieval.add_batch(predictions=test[start:start + 8].tolist(), references=test_y[start:start + 8].tolist())
    out["map"] = retrieval.compute(gallery_embeddings=train.tolist(), gallery_labels=train_y.tolist())
    out["map_direct"] = label_map(test, test_y, train, train_y)
    out["top1"] = load_metric("top1_accuracy").compute(predictions=[0, 1, 2, 2], references=[0, 1, 1, 2])
    out["module"] = type(knn).__module__
    print(json.dumps(out))
    """
)


def test_metrics__load_offline_and_match_direct_computation(tmp_path):
    if importlib.util.find_spec("evaluate") is None:  # a dev requirement: its absence must not pass as a skip
        pytest.fail("the metric modules need `evaluate` to be tested: pip install -e '.[dev]'")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1"}
    env.pop("HF_ENDPOINT", None)
    done = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["knn"] == pytest.approx(out["knn_direct"])
    assert out["map"]["map"] == pytest.approx(out["map_direct"])
    assert out["top1"] == {"accuracy": 0.75}
    assert out["module"].startswith("evaluate_modules.metrics.knn_accuracy")
    assert (tmp_path / "hf" / "modules").is_dir()  # evaluate's copies went to the temporary HF_HOME


def test_metric_path__known_and_unknown_names():
    assert METRIC_NAMES == ("knn_accuracy", "retrieval_map", "top1_accuracy")
    for name in METRIC_NAMES:
        assert os.path.isfile(os.path.join(metric_path(name), f"{name}.py"))
    with pytest.raises(ValueError, match="unknown sop_hf metric 'accuracy'"):
        metric_path("accuracy")
