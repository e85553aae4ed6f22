"""Training monitor: k-NN top-1 and collapse indicators every N optimizer steps, with a warning or a stop on collapse.

``TrainingMonitorCallback`` runs the live teacher (or student) encoder over two small labelled datasets, a k-NN memory
and a query set, and logs (through ``Trainer.log``, so the console, ``log_history``, TensorBoard/W&B and the final PNG
all see them):

- ``knn_top1@<k>``: weighted k-NN top-1 (DINO protocol) of the queries against the memory, a fraction in [0, 1];
- ``feature_spread``: ``sqrt(D) * mean_d std_n(z_nd)`` of the L2-normalised [CLS] features z: 1 for features spread
  uniformly over the sphere, 0 when every image maps to the same point (complete collapse);
- ``effective_rank``: ``exp(H(s / sum s))`` of the singular values s of the centred features (Roy & Vetterli, 2007),
  in [1, min(N, D)]: 1 when all features lie on one line (dimensional collapse);
- ``teacher_entropy_ratio``: the last logged entropy of the teacher's batch-mean prototype assignment divided by
  ``ln P`` (1 = every prototype used equally, 0 = one prototype takes everything), when ``num_prototypes`` is given;
- ``nonfinite_features`` and ``nonfinite_params``: NaN/inf counts in the features and the encoder's parameters.

Collapse means any non-finite value, or an indicator under its threshold. The monitor then logs a warning naming the
indicator and, with ``stop_on_collapse=True``, stops training (``control.should_training_stop``; the Trainer then
saves as its save strategy says). Every process computes the same numbers from the same data and weights, so every
process takes the same decision without communication; keep both sets small (about 1000 images each).
"""

import logging
import math

import torch
from torch.nn.functional import normalize
from transformers import TrainerCallback

from ..evaluation.features import extract_features
from ..evaluation.knn import knn_top1

logger = logging.getLogger(__name__)


def feature_spread(features: torch.Tensor) -> float:
    """``sqrt(D) * mean_d std_n`` of the L2-normalised [N, D] features: ~1 isotropic, 0 collapsed."""
    z = normalize(features.float(), dim=1)  # [N, D]
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def effective_rank(features: torch.Tensor) -> float:
    """Entropy effective rank of the centred [N, D] features: ``exp(H(p))`` with p the normalised singular values."""
    centred = features.float() - features.float().mean(dim=0, keepdim=True)  # [N, D]
    singular = torch.linalg.svdvals(centred)  # [min(N, D)]
    total = singular.sum()
    if total <= 0:
        return 1.0
    p = singular / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


class TrainingMonitorCallback(TrainerCallback):
    """Every ``every_n_steps`` optimizer steps (and at the last step), k-NN top-1 and collapse indicators.

    Args:
        memory_dataset: Labelled ``datasets.Dataset`` whose features are the k-NN memory (e.g. 1000 training images).
        query_dataset: Labelled ``datasets.Dataset`` classified against the memory (e.g. 1000 test images).
        image_processor: Turns the images into ``pixel_values`` (``SOPImageProcessor`` at the training size).
        every_n_steps: Monitor period in optimizer steps. Each check costs one forward pass over both sets; pick a
            period that keeps that under a few percent of the training time.
        k: Neighbours of the weighted k-NN.
        which: ``"teacher"`` (what is exported by default, DINO's choice) or ``"student"``.
        num_prototypes: Prototypes per task ``P`` of the entropy indicator (``config.num_kept_anchors`` for SOP);
            ``None`` leaves ``teacher_entropy_ratio`` out.
        min_feature_spread: Collapse below this spread. A random-init ViT already sits near 0.1-0.3 (its [CLS]
            features are similar for all images), a collapsed one under 0.01.
        min_effective_rank: Collapse below this effective rank (1 = all features on a line).
        min_entropy_ratio: Collapse below this fraction of ``ln P``. The first log window of a run can dip to
            ~0.65 while the bank still holds its random initial keys; healthy runs then stay near 1.
        stop_on_collapse: Stop training at the first collapse instead of only warning.
        batch_size, image_column, label_column: Passed to ``extract_features``.
    """

    def __init__(
        self,
        memory_dataset,
        query_dataset,
        image_processor,
        every_n_steps: int = 500,
        k: int = 20,
        which: str = "teacher",
        num_prototypes: int | None = None,
        min_feature_spread: float = 0.01,
        min_effective_rank: float = 1.5,
        min_entropy_ratio: float = 0.3,
        stop_on_collapse: bool = False,
        batch_size: int = 256,
        image_column: str = "image",
        label_column: str = "label",
    ):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if which not in ("teacher", "student"):
            raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
        if num_prototypes is not None and num_prototypes < 2:
            raise ValueError(f"num_prototypes must be >= 2 (ln P > 0), got {num_prototypes}")
        for name, dataset in (("memory_dataset", memory_dataset), ("query_dataset", query_dataset)):
            if label_column not in getattr(dataset, "column_names", ()):
                raise ValueError(f"{name} needs a {label_column!r} column (integer labels) for the k-NN monitor")
            if len(dataset) == 0:
                raise ValueError(f"{name} is empty")
        self.memory_dataset, self.query_dataset = memory_dataset, query_dataset
        self.image_processor = image_processor
        self.every_n_steps, self.k, self.which = every_n_steps, k, which
        self.num_prototypes = num_prototypes
        self.min_feature_spread, self.min_effective_rank = min_feature_spread, min_effective_rank
        self.min_entropy_ratio = min_entropy_ratio
        self.stop_on_collapse = stop_on_collapse
        self.extract_kwargs = {"batch_size": batch_size, "image_column": image_column, "label_column": label_column}
        self.last_teacher_entropy: float | None = None
        self.collapsed_at: int | None = None  # first step a collapse was seen
        self._pending: dict[str, float] = {}

    # --- measurement ---------------------------------------------------------------------------------------------
    def _encoder(self, model) -> torch.nn.Module:
        return model.backbone(self.which) if hasattr(model, "backbone") else model

    @torch.no_grad()
    def measure(self, model) -> dict[str, float]:
        """The monitor's metrics for ``model`` (a pretraining model or a bare encoder) now."""
        encoder = self._encoder(model)
        memory_x, memory_y = extract_features(encoder, self.memory_dataset, self.image_processor, progress=False,
                                              **self.extract_kwargs)  # fmt: skip
        query_x, query_y = extract_features(encoder, self.query_dataset, self.image_processor, progress=False,
                                            **self.extract_kwargs)  # fmt: skip
        features = torch.cat((memory_x, query_x))  # [N, D]
        finite = torch.isfinite(features)
        metrics = {
            "nonfinite_features": int((~finite).sum()),
            "nonfinite_params": int(sum(int((~torch.isfinite(p)).sum()) for p in encoder.parameters())),
        }
        if metrics["nonfinite_features"] == 0:
            accuracy = knn_top1(memory_x, memory_y, query_x, query_y, ks=(self.k,))[self.k]
            metrics[f"knn_top1@{self.k}"] = round(accuracy, 6)
            metrics["feature_spread"] = round(feature_spread(features), 6)
            metrics["effective_rank"] = round(effective_rank(features), 4)
        if self.num_prototypes is not None and self.last_teacher_entropy is not None:
            ratio = self.last_teacher_entropy / math.log(self.num_prototypes)
            metrics["teacher_entropy_ratio"] = round(ratio, 6)
        return metrics

    def collapse_reasons(self, metrics: dict[str, float]) -> list[str]:
        """Which indicators of ``metrics`` say collapse (empty: healthy)."""
        reasons = []
        if metrics.get("nonfinite_features", 0) or metrics.get("nonfinite_params", 0):
            reasons.append(
                f"non-finite values (features {metrics['nonfinite_features']}, params {metrics['nonfinite_params']})"
            )
        checks = (
            ("feature_spread", self.min_feature_spread),
            ("effective_rank", self.min_effective_rank),
            ("teacher_entropy_ratio", self.min_entropy_ratio),
        )
        for key, threshold in checks:
            if key in metrics and metrics[key] < threshold:
                reasons.append(f"{key} {metrics[key]:.4g} < {threshold:g}")
        return reasons

    # --- Trainer events ------------------------------------------------------------------------------------------
    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if model is None or not (step % self.every_n_steps == 0 or step == state.max_steps):
            return control
        metrics = self.measure(model)
        reasons = self.collapse_reasons(metrics)
        metrics["collapse"] = int(bool(reasons))
        self._pending = metrics
        control.should_log = True
        if reasons:
            self.collapsed_at = step if self.collapsed_at is None else self.collapsed_at
            action = "stopping training" if self.stop_on_collapse else "training goes on (stop_on_collapse=False)"
            if state.is_world_process_zero:
                logger.warning("Collapse indicators at step %d: %s; %s.", step, "; ".join(reasons), action)
            if self.stop_on_collapse:
                control.should_training_stop = True
        return control

    def pop_logs(self) -> dict[str, float]:
        """Metrics measured since the last log (``SOPTrainer.log`` merges them into the row it logs)."""
        pending, self._pending = self._pending, {}
        return pending

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "teacher_entropy" in logs:
            self.last_teacher_entropy = float(logs["teacher_entropy"])
        if self._pending and logs is not None:  # a plain Trainer did not merge them: add them to this log row
            pending = self.pop_logs()
            logs.update(pending)
            if state.log_history:
                state.log_history[-1].update(pending)
        return control
