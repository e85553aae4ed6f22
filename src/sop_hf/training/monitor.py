"""Training monitor: k-NN top-1 and collapse indicators every N optimizer steps, with a warning or a stop on collapse.

``TrainingMonitorCallback`` runs the live teacher (or student) over two small labelled datasets, a k-NN memory and a
query set, and logs (through ``Trainer.log``, so the console, ``log_history``, TensorBoard/W&B and the final PNG all
see them):

- ``knn_top1@<k>``: weighted k-NN top-1 (DINO protocol) of the queries against the memory, a fraction in [0, 1];
  ``random_init_knn_top1@<k>`` is the same measure at step 0 (logged once, with the first row), the level a trained
  encoder has to beat;
- ``feature_spread``: ``sqrt(D) * mean_d std_n(z_nd)`` of the L2-normalised backbone [CLS] features z: 1 for features
  spread uniformly over the sphere, 0 when every image maps to the same point (complete collapse);
- ``effective_rank``: ``exp(H(s / sum s))`` of the singular values s of the centred backbone features (Roy & Vetterli,
  2007), in [1, min(N, D)]: 1 when all features lie on one line;
- ``teacher_entropy_ratio``: the last logged entropy of the teacher's *batch-mean* prototype assignment divided by
  ``ln P`` (1 = every prototype used equally), when ``num_prototypes`` is given. It stays near 1 even when every
  image gets the same near-uniform assignment, so it cannot see the collapse below;
- ``nonfinite_features`` and ``nonfinite_params``: NaN/inf counts in the features and the encoder's parameters.

What the losses see is the projection-head output, not the backbone [CLS], and SOP-style methods can collapse there
*dimensionally* while the backbone still looks healthy: the head maps every image to a few directions, the class
memory fills with copies, every prototype's supports are copies of its anchor and every target becomes uniform. On
the first ``head_samples`` memory images (and their horizontal flips) the monitor therefore also logs:

- ``head_rank``: effective rank of the L2-normalised head outputs (1 = one direction, up to the head width);
- ``memory_rank``: effective rank of the rows of the method's memory bank (SOP class memory, MaSSL memory);
- ``support_similarity``: mean cosine between an anchor drawn from that memory and its ``E - 1`` nearest rows, i.e.
  the supports of a SOP prototype (for CARP/CARL/DINO/iBOT, which have no memory: between a head output and its
  nearest outputs); 1 means the supports are copies of their anchor;
- ``image_entropy_ratio``: mean *per-image* entropy of the teacher's assignment to this step's prototypes over
  ``ln P`` (SOP: P' prototypes built from the memory as in training; MaSSL: a memory block; CARP: a prototype block;
  CARL: all prototypes; DINO/iBOT: all K prototypes, centred and sharpened as the loss's targets): near 1 means
  every target is uniform and teaches nothing;
- ``view_agreement`` and ``view_kappa``: how often an image and its flip get the same most-likely prototype, and that
  agreement above chance (Cohen's kappa: 0 when the agreement is what two unrelated images would reach).

Collapse means any non-finite value, or an indicator past its threshold (``collapse_reasons`` names each one). The
monitor then logs a warning naming the indicators and, with ``stop_on_collapse=True``, stops training
(``control.should_training_stop``; the Trainer then saves as its save strategy says). Every process computes the same
numbers from the same data, weights and seeded anchor draws, so every process takes the same decision without
communication; keep both sets small (about 1000 images each).
"""

import logging
import math

import torch
from torch.nn.functional import normalize
from transformers import TrainerCallback

from ..evaluation.features import extract_features, iter_processed_batches
from ..evaluation.knn import knn_top1
from ..indicators import (
    agreement_and_kappa,
    effective_rank,
    feature_spread,
    mean_entropy_ratio,
)

logger = logging.getLogger(__name__)

MONITOR_SEED = 20250521  # anchor draws of the monitor: a fixed stream, the same on every process


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
        min_effective_rank: Collapse below this effective rank of the backbone features (1 = all on a line).
        min_entropy_ratio: Collapse below this fraction of ``ln P``. The first log window of a run can dip to
            ~0.65 while the bank still holds its random initial keys; healthy runs then stay near 1.
        min_memory_rank: Collapse below this effective rank of the memory rows (SOP, MaSSL). Demo, 100 steps
            without KoLeo: 7.0 at step 50, 4.8 at step 100 (3.5 and then 2.3 in a 500-step run); the demo recipe
            (KoLeo 0.1): 8.8-9.4 from step 100 to 500. 0 disables the check.
        min_head_rank: For CARP/CARL, which have no memory: collapse below this effective rank of the head outputs
            of the monitor images (it depends on how varied those images are, so it only decides when there is no
            memory). Demo without KoLeo: 2.2; with it: 6.9-9.4. 0 disables the check.
        max_support_similarity: Collapse above this mean anchor-support cosine. Demo without KoLeo: 0.9989 at step
            50, 0.9996 at step 100; with KoLeo 0.98 at step 100, then 0.95. 1 disables the check.
        head_samples: Memory images whose head outputs (and flips) feed the head indicators; 0 turns them off.
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
        min_memory_rank: float = 5.0,
        min_head_rank: float = 3.0,
        max_support_similarity: float = 0.999,
        head_samples: int = 256,
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
        if head_samples < 0 or head_samples == 1:
            raise ValueError(f"head_samples must be 0 (off) or >= 2, got {head_samples}")
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
        self.min_memory_rank, self.min_head_rank = min_memory_rank, min_head_rank
        self.max_support_similarity = max_support_similarity
        self.head_samples = min(head_samples, len(memory_dataset))
        self.stop_on_collapse = stop_on_collapse
        self.extract_kwargs = {"batch_size": batch_size, "image_column": image_column, "label_column": label_column}
        self.last_teacher_entropy: float | None = None
        self.collapsed_at: int | None = None  # first step a collapse was seen
        self.random_init_knn: float | None = None  # k-NN top-1 at step 0
        self._pending: dict[str, float] = {}
        self._head_pixels: torch.Tensor | None = None  # [2 * head_samples, C, H, W]: images, then their flips

    # --- measurement ---------------------------------------------------------------------------------------------
    def _encoder(self, model) -> torch.nn.Module:
        return model.backbone(self.which) if hasattr(model, "backbone") else model

    def _head_inputs(self) -> torch.Tensor:
        if self._head_pixels is None:
            subset = self.memory_dataset.select(range(self.head_samples))
            batches, _ = iter_processed_batches(subset, self.image_processor, self.extract_kwargs["batch_size"],
                                                self.extract_kwargs["image_column"], label_column=None)  # fmt: skip
            pixels = torch.cat([batch["pixel_values"] for batch in batches])  # [n, C, H, W]
            self._head_pixels = torch.cat((pixels, pixels.flip(-1)))
        return self._head_pixels

    def _head_outputs(self, model) -> torch.Tensor:
        """[2n, d] L2-normalised head outputs of the monitor images and their flips (teacher or student)."""
        encoder = self._encoder(model)
        head = model.teacher_head if self.which == "teacher" else model.head
        modules = (encoder, head)
        modes = [m.training for m in modules]
        for module in modules:
            module.eval()
        try:
            device = next(encoder.parameters()).device
            outputs = []
            for pixels in self._head_inputs().split(self.extract_kwargs["batch_size"]):
                pooled = encoder(pixels.to(device)).pooler_output.flatten(1)  # [b, D] ([CLS] or average pool)
                outputs.append(head(pooled).float())  # [b, d]
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)
        return torch.cat(outputs)

    @torch.no_grad()
    def head_metrics(self, model, teacher_temp: float = 0.04, step: int = 0) -> dict[str, float]:
        """Head-output indicators of a pretraining model (empty for a bare encoder or ``head_samples=0``)."""
        if self.head_samples < 2 or not hasattr(model, "teacher_head"):
            return {}
        raw = self._head_outputs(model)  # [2n, d]
        z = normalize(raw, dim=1)
        n = z.shape[0] // 2
        metrics = {"head_rank": round(effective_rank(z[:n]), 4)}
        generator = torch.Generator().manual_seed(MONITOR_SEED + step)
        probs, memory_metrics = model.probe_assignments(raw, teacher_temp, generator, self.which)  # [2n, P]
        metrics.update(memory_metrics)
        metrics["image_entropy_ratio"] = round(mean_entropy_ratio(probs[:n].double()), 6)
        labels = probs.argmax(dim=1).cpu()
        agreement, kappa = agreement_and_kappa(labels[:n], labels[n:], probs.shape[1])
        metrics["view_agreement"], metrics["view_kappa"] = round(agreement, 6), round(kappa, 6)
        return metrics

    @torch.no_grad()
    def measure(self, model, teacher_temp: float = 0.04, step: int = 0) -> dict[str, float]:
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
            metrics.update(self.head_metrics(model, teacher_temp, step))
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
        minimums = (
            ("feature_spread", self.min_feature_spread),
            ("effective_rank", self.min_effective_rank),
            ("teacher_entropy_ratio", self.min_entropy_ratio),
            ("memory_rank", self.min_memory_rank),
        )
        if "memory_rank" not in metrics:  # no memory (CARP, CARL, DINO, iBOT): the monitor images' head outputs decide
            minimums += (("head_rank", self.min_head_rank),)
        for key, threshold in minimums:
            if key in metrics and metrics[key] < threshold:
                reasons.append(f"{key} {metrics[key]:.4g} < {threshold:g}")
        if metrics.get("support_similarity", 0.0) > self.max_support_similarity:
            reasons.append(f"support_similarity {metrics['support_similarity']:.6g} > {self.max_support_similarity:g}")
        return reasons

    # --- Trainer events ------------------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None or state.global_step != 0:  # a resumed run has no random-init level to measure
            return control
        encoder = self._encoder(model)
        memory_x, memory_y = extract_features(encoder, self.memory_dataset, self.image_processor, progress=False,
                                              **self.extract_kwargs)  # fmt: skip
        query_x, query_y = extract_features(encoder, self.query_dataset, self.image_processor, progress=False,
                                            **self.extract_kwargs)  # fmt: skip
        if torch.isfinite(memory_x).all() and torch.isfinite(query_x).all():
            self.random_init_knn = knn_top1(memory_x, memory_y, query_x, query_y, ks=(self.k,))[self.k]
            self._pending[f"random_init_knn_top1@{self.k}"] = round(self.random_init_knn, 6)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if model is None or not (step % self.every_n_steps == 0 or step == state.max_steps):
            return control
        metrics = self.measure(model, getattr(args, "teacher_temp", 0.04), step)
        reasons = self.collapse_reasons(metrics)
        metrics["collapse"] = int(bool(reasons))
        self._pending.update(metrics)
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
