"""TrainingMonitorCallback: collapse indicators on known inputs, k-NN and logs on real (tiny) training runs."""

import json
import math
import sys

import pytest
import torch
from PIL import Image

from sop_hf import SOPConfig, SOPImageProcessor, SOPModel
from sop_hf.trainer import TrainingMonitorCallback, effective_rank, feature_spread
from tests.scripts.train_tiny import labelled_images
from tests.test_trainer import run_script

TWO_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                 "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip


# --- indicators on inputs with a known answer -----------------------------------------------------------------


def test_feature_spread__zero_when_collapsed_one_when_isotropic():
    assert feature_spread(torch.ones(50, 8) * 3.0) == pytest.approx(0.0, abs=1e-6)
    isotropic = torch.randn(20000, 16, generator=torch.Generator().manual_seed(0))
    assert feature_spread(isotropic) == pytest.approx(1.0, abs=0.02)
    # scaling rows does not change it (features are L2-normalised first)
    scaled = isotropic * torch.rand(20000, 1, generator=torch.Generator().manual_seed(1)).add(0.1)
    assert feature_spread(scaled) == pytest.approx(feature_spread(isotropic), abs=1e-5)


def test_effective_rank__one_for_a_line_d_for_equal_singular_values():
    direction = torch.randn(1, 6)
    line = torch.linspace(-1, 1, 40)[:, None] * direction + 5.0  # [40, 6], one direction after centring
    assert effective_rank(line) == pytest.approx(1.0, abs=1e-4)
    # rows +-e_i: centred singular values all equal -> effective rank = D exactly
    eye = torch.eye(5)
    assert effective_rank(torch.cat((eye, -eye))) == pytest.approx(5.0, abs=1e-4)
    assert effective_rank(torch.zeros(10, 4)) == 1.0


def _monitor(**kwargs):
    return TrainingMonitorCallback(labelled_images(8, 1), labelled_images(4, 2), SOPImageProcessor(size=16), **kwargs)


def test_collapse_reasons__thresholds_and_non_finite():
    monitor = _monitor(num_prototypes=4)
    healthy = {"nonfinite_features": 0, "nonfinite_params": 0, "feature_spread": 0.4, "effective_rank": 5.0,
               "teacher_entropy_ratio": 0.95}  # fmt: skip
    assert monitor.collapse_reasons(healthy) == []
    reasons = monitor.collapse_reasons({**healthy, "feature_spread": 0.001, "teacher_entropy_ratio": 0.1})
    assert reasons == ["feature_spread 0.001 < 0.01", "teacher_entropy_ratio 0.1 < 0.3"]
    assert monitor.collapse_reasons({**healthy, "nonfinite_params": 3})[0].startswith("non-finite values")


def test_measure__a_nan_parameter_is_counted_and_skips_knn():
    config = SOPConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    encoder = SOPModel(config)
    monitor = _monitor(k=3)
    healthy = monitor.measure(encoder)
    assert healthy["nonfinite_features"] == healthy["nonfinite_params"] == 0
    assert 0.0 <= healthy["knn_top1@3"] <= 1.0 and healthy["effective_rank"] >= 1.0
    with torch.no_grad():
        encoder.layernorm.weight[0] = float("nan")
    broken = monitor.measure(encoder)
    assert broken["nonfinite_params"] == 1 and broken["nonfinite_features"] == 12  # one NaN feature per image
    assert "knn_top1@3" not in broken and monitor.collapse_reasons(broken)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"every_n_steps": 0}, "every_n_steps"), ({"k": 0}, "k"), ({"which": "ema"}, "which"),
     ({"num_prototypes": 1}, "num_prototypes"), ({"label_column": "target"}, "target")],
)  # fmt: skip
def test_monitor__bad_arguments_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        _monitor(**kwargs)


# --- on real training runs ------------------------------------------------------------------------------------


def test_monitor__two_processes_log_identical_metrics_and_plot_the_knn_curve(tmp_path):
    run_script(tmp_path, "--max_steps", 4, "--batch", 2, "--monitor", 2, launcher=TWO_PROCESSES)
    logs = [json.loads((tmp_path / f"log_rank{r}.json").read_text())["log_history"] for r in (0, 1)]
    rows = [[row for row in log if "knn_top1@3" in row] for log in logs]
    assert [row["step"] for row in rows[0]] == [2, 4]
    keys = ("knn_top1@3", "feature_spread", "effective_rank", "teacher_entropy_ratio", "collapse")
    assert [[row[k] for k in keys] for row in rows[0]] == [[row[k] for k in keys] for row in rows[1]]
    for row in rows[0]:
        assert row["knn_top1@3"] == 1.0  # near-duplicate templates: the answer is known
        assert row["collapse"] == 0 and row["nonfinite_features"] == 0 and math.isfinite(row["effective_rank"])
        assert "loss" in row  # merged into the training log row, not a separate one
    with Image.open(tmp_path / "curves.png") as png:
        assert png.width > 1.5 * png.height  # the second (k-NN) panel is there


def test_monitor__collapsed_teacher_warns_and_stops_training(tmp_path):
    result = run_script(tmp_path, "--max_steps", 6, "--monitor", 2, "--collapse", "--stop_on_collapse")
    assert "Collapse indicators at step 2: feature_spread 0 < 0.01; effective_rank 1 < 1.5" in result.stderr
    assert "stopping training" in result.stderr
    log = json.loads((tmp_path / "log_rank0.json").read_text())
    assert log["global_step"] == 2
    assert [row["collapse"] for row in log["log_history"] if "collapse" in row] == [1]


def test_monitor__collapse_without_stop_only_warns(tmp_path):
    result = run_script(tmp_path, "--max_steps", 4, "--monitor", 2, "--collapse")
    assert result.stderr.count("Collapse indicators at step") == 2 and "training goes on" in result.stderr
    assert json.loads((tmp_path / "log_rank0.json").read_text())["global_step"] == 4
