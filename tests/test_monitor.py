"""TrainingMonitorCallback: collapse indicators on known inputs, k-NN and logs on real (tiny) training runs."""

import json
import math
import re
import sys

import pytest
import torch
from PIL import Image

from sop_hf import (
    SOPConfig,
    SOPForPreTraining,
    SOPImageProcessor,
    SOPModel,
)
from sop_hf.indicators import (
    agreement_and_kappa,
    effective_rank,
    feature_spread,
    mean_entropy_ratio,
    neighbour_similarity,
)
from sop_hf.methods import METHODS, uniform_reference
from sop_hf.training import TrainingMonitorCallback
from sop_hf.training.plots import plot_training_curves
from tests.conftest import lineage_model
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


def test_neighbour_similarity__one_for_copies_zero_for_an_orthonormal_basis():
    copies = torch.randn(1, 8).repeat(6, 1) * torch.arange(1, 7)[:, None]  # same direction, other norms
    assert neighbour_similarity(copies, torch.arange(3), 2) == pytest.approx(1.0, abs=1e-6)
    assert neighbour_similarity(torch.eye(8), torch.arange(8), 3) == pytest.approx(0.0, abs=1e-6)


def test_mean_entropy_ratio__one_when_uniform_zero_when_one_hot():
    assert mean_entropy_ratio(torch.full((5, 16), 1 / 16)) == pytest.approx(1.0)
    assert mean_entropy_ratio(torch.eye(16)[:5]) == pytest.approx(0.0, abs=1e-9)


def test_agreement_and_kappa__chance_corrected():
    same = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    assert agreement_and_kappa(same, same, 4) == pytest.approx((1.0, 1.0))
    constant = torch.zeros(8, dtype=torch.long)  # every image on one prototype: full agreement, nothing above chance
    assert agreement_and_kappa(constant, constant, 4) == (1.0, 0.0)
    shifted = (same + 1) % 4
    assert agreement_and_kappa(same, shifted, 4) == pytest.approx((0.0, -1 / 3))


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


TINY_SOP = dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                head_hidden_size=32, head_output_size=16, class_memory_size=64, num_anchors=8, num_support=3,
                num_tasks=1, patch_memory_size=16, num_patch_anchors=4)  # fmt: skip


def test_head_metrics__a_memory_of_copies_is_a_collapse_a_random_one_is_not():
    model = SOPForPreTraining(SOPConfig(**TINY_SOP))
    monitor = _monitor(k=3, head_samples=8)
    healthy = monitor.measure(model)  # the bank still holds its random unit rows
    assert healthy["memory_rank"] > 8 and healthy["support_similarity"] < 0.9
    assert 0.0 <= healthy["image_entropy_ratio"] <= 1.0 and -1.0 <= healthy["view_kappa"] <= 1.0
    assert not [r for r in monitor.collapse_reasons(healthy) if r.startswith(("memory_rank", "support_similarity"))]
    with torch.no_grad():  # what the demo's bank looked like without KoLeo: rows that are copies of a few directions
        directions = torch.nn.functional.normalize(torch.randn(2, 16), dim=1)
        model.class_memory.rows.copy_(directions[torch.arange(64) % 2] + 1e-4 * torch.randn(64, 16))
    collapsed = monitor.measure(model)
    assert collapsed["memory_rank"] < 2.5 and collapsed["support_similarity"] > 0.999
    assert collapsed["image_entropy_ratio"] > 0.45  # the targets can only tell two directions apart (ln 2 / ln 4)
    reasons = monitor.collapse_reasons(collapsed)
    assert any(r.startswith("memory_rank") for r in reasons) and any(
        r.startswith("support_similarity") for r in reasons
    )


LINEAGE_SIZES = {"massl": dict(memory_size=64, block_size=16), "carp": dict(num_prototypes=32, block_size=8),
                 "carl": dict(num_prototypes=32), "dino": dict(num_prototypes=32),
                 "ibot": dict(num_prototypes=32, num_patch_prototypes=32)}  # fmt: skip


@pytest.mark.parametrize("method", [m for m in METHODS if m != "sop"])
def test_head_metrics__lineage_models(method):
    model = lineage_model(method, backbone={"model_type": "sop", **TINY_SOP}, **LINEAGE_SIZES[method])
    metrics = _monitor(k=3, head_samples=8).measure(model)
    assert ("memory_rank" in metrics) == bool(model.logged_banks)  # the methods with a memory
    for key in ("head_rank", "support_similarity", "image_entropy_ratio", "view_agreement", "view_kappa"):
        assert math.isfinite(metrics[key]), key


def test_plot__names_the_method_its_p_and_the_random_init_level(tmp_path):
    history = [{"step": s, "loss": 5.0 - s / 100, "sop_loss": 5.0 - s / 100, "knn_top1@20": 0.5 + s / 1000,
                "head_rank": 10.0, "memory_rank": 12.0, "effective_rank": 20.0, "support_similarity": 0.9}
               for s in (10, 20, 30)]  # fmt: skip
    history[0]["random_init_knn_top1@20"] = 0.46
    config = lineage_model("massl", backbone={"model_type": "sop", **TINY_SOP}, memory_size=64, block_size=16).config
    assert uniform_reference(config) == (16, "N_B") and uniform_reference(SOPConfig(**TINY_SOP)) == (4, "P'")
    path = plot_training_curves(history, tmp_path / "c.png", method="MaSSL", num_prototypes=16,
                                prototype_symbol="N_B")  # fmt: skip
    with Image.open(path) as png:
        assert png.width > 2.5 * png.height  # loss, k-NN and collapse panels


@pytest.mark.parametrize(
    "kwargs, message",
    [({"every_n_steps": 0}, "every_n_steps must be >= 1, got 0"), ({"k": 0}, "k must be >= 1, got 0"),
     ({"which": "ema"}, "which must be 'teacher' or 'student', got 'ema'"),
     ({"num_prototypes": 1}, "num_prototypes must be >= 2 (ln P > 0), got 1"),
     ({"head_samples": 1}, "head_samples must be 0 (off) or >= 2, got 1"),
     ({"label_column": "target"}, "memory_dataset needs a 'target' column (integer labels)")],
)  # fmt: skip
def test_monitor__bad_arguments_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):  # a bare field name such as "k" matched anything
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


# --- the demo's collapse, on the demo itself (minutes: marked slow) ----------------------------------------------


def _demo_run(tmp_path, *flags):
    from tests.test_examples import SCRIPT, run

    return run([sys.executable, SCRIPT, "--max_steps", "100", "--monitor_steps", "50", "--monitor_samples", "500",
                "--knn_eval", "false", "--save_strategy", "no", "--output_dir", str(tmp_path), *flags])  # fmt: skip


@pytest.mark.slow
def test_monitor__warns_on_the_collapsing_demo_and_stays_quiet_on_the_koleo_demo(tmp_path):
    # Without KoLeo and with the calibrated momentum 0.99 the demo's head output collapses within 100 steps.
    collapsed = _demo_run(tmp_path / "plain", "--config_overrides", "koleo_loss_weight=0", "--momentum_teacher", "0.99")
    assert "Collapse indicators at step 100" in collapsed.stderr and "support_similarity" in collapsed.stderr
    healthy = _demo_run(tmp_path / "koleo")  # the demo recipe: KoLeo 0.1, momentum 0.95
    assert "Collapse indicators" not in healthy.stderr
