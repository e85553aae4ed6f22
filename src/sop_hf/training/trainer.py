"""SOPTrainer: transformers' ``Trainer`` for SOP pretraining (the library's one training loop).

What it adds to ``Trainer``: the scheduled temperatures passed to ``SOPForPreTraining.forward``; AdamW param groups
with weight decay on >= 2-D non-bias tensors only (cosine-scheduled); DINO's learning rate (peak scaled by global
batch / 256, linear warm-up, cosine to ``min_lr``); per-parameter clipping; the teacher EMA after every optimizer
step; logs of ``sop_loss``, ``mim_loss``, momentum, teacher temperature and bank fill. Launch it with
``accelerate launch`` (see ``examples/pretrain_sop.py``).

What it guards (docs/distributed.md):

- **Data.** ``data.pipeline.EpochSampler`` shuffles by (seed, epoch) and carries the epoch to every worker and
  process; the last incomplete batch is dropped; a dataset smaller than one global batch is refused before any
  compute. Replaced and converted images are counted from the batches (``image_status``), summed over processes,
  logged, and the run stops naming the bad files when more than ``max_bad_image_fraction`` of the data (rounded up
  to whole images) is bad.
- **Non-finite steps.** Loss and gradient norm are checked on every process without a host sync: a non-finite
  step is skipped (the fused AdamW default takes a ``found_inf`` flag; other optimizers pay one sync per step) and
  counted; ``max_nonfinite_steps`` in a row stop the run with a message naming the first bad step.
- **Checkpoints.** Nothing non-finite is ever saved (checked before each save); a checkpoint is written into
  ``OUTPUT_DIR/.staging`` and renamed into place when complete, so ``checkpoint-N`` is always whole and rotation
  never removes the newest good one; resume takes the newest complete checkpoint and refuses one that lacks its
  optimizer, scheduler, RNG or memory-bank state, saying what is missing.
- **Strategies.** Single device and DDP (multi-GPU, multi-node) are supported; FSDP and DeepSpeed are refused at
  start (the teacher EMA, the per-parameter clipping and the encoder export need full, unsharded parameters).

Gradient accumulation: every micro-batch runs its own forward, so every micro-batch enqueues its own keys and draws
its own anchors; with ``gradient_accumulation_steps=a`` the bank spans ``K / (a * global micro-batch)`` optimizer
steps, and the loss of micro-batch i already sees the keys of micro-batches < i of the same step.
"""

import json
import logging
import math
import os
import re
import shutil
from collections import defaultdict

import torch
from safetensors import safe_open
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import rotate_checkpoints

from ..data.pipeline import EpochSampler, MultiCropDataset
from .arguments import SOPTrainingArguments
from .cpu_threads import set_cpu_threads
from .lars import LARS
from .callbacks import (
    DECAY_GROUP_KEY,
    PerParameterClipCallback,
    TeacherEMACallback,
    WeightDecayScheduleCallback,
    teacher_momentum,
)
from .schedules import cosine_schedule, lr_multiplier, warmup_constant_schedule

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
COMPLETE_MARKER = "checkpoint_complete.json"
BANK_STATE_KEYS = ("step_count",)  # plus every "<bank>.rows" / "<bank>.ptr" of the model
UNSUPPORTED_SHARDING = (
    "SOPTrainer supports one device and DDP (accelerate launch --multi_gpu, one or many nodes). FSDP and DeepSpeed "
    "are refused: the teacher EMA, the per-parameter gradient clipping and the encoder export need every process "
    "to hold full, unsharded parameters and gradients. Use DDP (with bf16 and gradient checkpointing for large "
    "ViTs)."
)


class NonFiniteLossError(RuntimeError):
    """Raised when too many optimizer steps in a row had a non-finite loss or gradient, or when the model holds
    non-finite values at a save (nothing is written then)."""


class _TrainerHooks(TrainerCallback):
    """Lets SOPTrainer act at callback points it has no method for (epoch start, before the optimizer step)."""

    def __init__(self, trainer: "SOPTrainer"):
        self.trainer = trainer

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.trainer._set_data_epoch(int(math.floor((state.epoch or 0.0) + 1e-9)))

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._check_step_finite()

    def on_train_end(self, args, state, control, **kwargs):
        self.trainer._flush_step_counters()


class SOPTrainer(Trainer):
    """``Trainer`` with SOP's schedules and teacher EMA. ``model`` is an ``SOPForPreTraining`` (or a lineage model
    with the same forward arguments and ``update_teacher``)."""

    def __init__(self, model=None, args: SOPTrainingArguments | None = None, **kwargs):
        if args is None or not isinstance(args, SOPTrainingArguments):
            raise ValueError("SOPTrainer needs SOPTrainingArguments (they carry the EMA and temperature schedules)")
        if _sharding_requested(args):
            raise ValueError(UNSUPPORTED_SHARDING)
        train_dataset = kwargs.get("train_dataset")
        _check_dataset_size(train_dataset, args)
        super().__init__(model=model, args=args, **kwargs)
        set_cpu_threads(args.cpu_threads, args.device, args.world_size)
        if getattr(self, "is_fsdp_enabled", False) or getattr(self, "is_deepspeed_enabled", False):
            raise ValueError(UNSUPPORTED_SHARDING)
        for callback in (_TrainerHooks(self), PerParameterClipCallback(), WeightDecayScheduleCallback(),
                         TeacherEMACallback()):  # fmt: skip
            self.add_callback(callback)
        # Every rank draws the same anchors without communication: seed them with the run's seed.
        self.model.anchor_seed = args.seed
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_counts: dict[str, int] = defaultdict(int)
        self._epoch_sampler: EpochSampler | None = None
        self._staging_dir: str | None = None
        # device-side counters (read only at logging / saving, never per step)
        self._loss_bad: torch.Tensor | None = None  # a non-finite loss since the last optimizer step
        self._step_counters: torch.Tensor | None = None  # [skipped total, bad in a row, first bad step of the row]
        self._grad_norm: torch.Tensor | None = None
        self._step_is_bad: torch.Tensor | None = None
        self._image_counts: torch.Tensor | None = None  # [images seen, converted, replaced] on this process
        self._pending_status: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.bad_samples: list[int] = []  # sample indices of replaced images, all processes, first seen first
        self.image_stats = {"images_seen": 0, "images_converted": 0, "image_replacements": 0, "bad_images": 0}
        self.nonfinite_steps_skipped = 0

    # --- optimisation ---------------------------------------------------------------------------------------
    @property
    def global_batch_size(self) -> int:
        args = self.args
        return args.per_device_train_batch_size * args.world_size * args.gradient_accumulation_steps

    @property
    def peak_learning_rate(self) -> float:
        scale = self.global_batch_size / 256 if self.args.scale_lr_with_batch_size else 1.0
        return self.args.learning_rate * scale

    def get_decay_parameter_names(self, model) -> list[str]:
        """Weight decay on tensors with >= 2 dims that are not biases (docs/method.md §11)."""
        return [n for n, p in model.named_parameters() if p.ndim >= 2 and not n.endswith(".bias")]

    def _create_sop_optimizer(self, model=None):
        if self.args.lars:
            self.optimizer_cls_and_kwargs = (LARS, {"lr": self.peak_learning_rate, "momentum": 0.9})
        optimizer = super().create_optimizer(model)
        decay_names = set(self.get_decay_parameter_names(self.model))
        decay_params = {id(p) for n, p in self.model.named_parameters() if n in decay_names}
        for group in optimizer.param_groups:
            group["lr"] = self.peak_learning_rate
            group[DECAY_GROUP_KEY] = bool(group["params"]) and id(group["params"][0]) in decay_params
        return optimizer

    def warmup_steps_for(self, num_training_steps: int) -> int:
        if self.args.warmup_steps and self.args.warmup_steps > 0:
            return self.args.get_warmup_steps(num_training_steps)
        return int(round(self.args.warmup_epochs * self.steps_per_epoch(num_training_steps)))

    def steps_per_epoch(self, num_training_steps: int) -> float:
        epochs = self.state.num_train_epochs if self.state.num_train_epochs else self.args.num_train_epochs
        return num_training_steps / max(epochs, 1e-8)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            optimizer = optimizer if optimizer is not None else self.optimizer
            peak = self.peak_learning_rate
            warmup = self.warmup_steps_for(num_training_steps)
            final = self.args.min_lr / peak if peak > 0 else 0.0

            kind = str(getattr(self.args.lr_scheduler_type, "value", self.args.lr_scheduler_type))

            def multiplier(step: int) -> float:
                return lr_multiplier(kind, step, final, num_training_steps, warmup)

            for group in optimizer.param_groups:
                group["lr"] = peak
                group["initial_lr"] = peak
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    # --- schedules passed to the model ---------------------------------------------------------------------
    def temperatures(self, step: int) -> dict[str, float]:
        args = self.args
        total = max(1, self.state.max_steps)
        warmup = int(round(args.warmup_teacher_temp_epochs * self.steps_per_epoch(total)))
        return {
            "student_temp": args.student_temp,
            "teacher_temp": warmup_constant_schedule(step, args.warmup_teacher_temp, args.teacher_temp, warmup),
            "teacher_patch_temp": warmup_constant_schedule(
                step, args.warmup_teacher_patch_temp, args.teacher_patch_temp, warmup
            ),
        }

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        sample_index = inputs.pop("sample_index", None)
        image_status = inputs.pop("image_status", None)
        outputs = model(**inputs, **self.temperatures(self.state.global_step), return_loss=True)
        loss = outputs.loss
        if model.training:
            bad = ~torch.isfinite(loss.detach())  # device bool: no host sync
            self._loss_bad = bad if self._loss_bad is None else self._loss_bad | bad
            if image_status is not None:
                self._count_images(sample_index, image_status)
            for key, value in (outputs.get("loss_terms") or {}).items():  # the terms the method declares
                value = value.detach().float()
                self._term_sums[key] = self._term_sums[key] + value if key in self._term_sums else value
                self._term_counts[key] += 1
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = {k: v for k, v in inputs.items() if k not in ("sample_index", "image_status")}
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys=ignore_keys)

    # --- data: the epoch reaches the sampler and the dataset; bad images are counted ------------------------------
    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if isinstance(dataset, MultiCropDataset):
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            self._epoch_sampler = EpochSampler(len(dataset), seed)
            return self._epoch_sampler
        return super()._get_train_sampler(train_dataset)

    def _set_data_epoch(self, epoch: int) -> None:
        if self._epoch_sampler is not None:
            self._epoch_sampler.set_epoch(epoch)
        if hasattr(self.train_dataset, "set_epoch"):
            self.train_dataset.set_epoch(epoch)

    def _count_images(self, sample_index: torch.Tensor, image_status: torch.Tensor) -> None:
        status = image_status.long()
        counts = torch.stack([torch.ones_like(status).sum(), (status == 1).sum(), (status == 2).sum()])
        self._image_counts = counts if self._image_counts is None else self._image_counts + counts
        self._pending_status.append((sample_index.detach(), status.detach()))

    def _flush_image_counts(self) -> None:
        """Sum the image counts over processes and check the bad fraction (a host sync: logging steps only)."""
        from accelerate.utils import gather_object

        local = self._image_counts if self._image_counts is not None else torch.zeros(3, dtype=torch.long)
        bad_here = []
        for index, status in self._pending_status:
            bad_here += index[status == 2].tolist()
        self._pending_status, self._image_counts = [], None
        totals = self.accelerator.reduce(local.to(self.args.device), reduction="sum").tolist()
        bad_all = gather_object(bad_here) if self.args.world_size > 1 else bad_here
        known = set(self.bad_samples)
        self.bad_samples += [i for i in dict.fromkeys(bad_all) if i not in known]
        stats = self.image_stats
        stats["images_seen"] += int(totals[0])
        stats["images_converted"] += int(totals[1])
        stats["image_replacements"] += int(totals[2])
        stats["bad_images"] = len(self.bad_samples)
        size = len(self.train_dataset) if hasattr(self.train_dataset, "__len__") else 0
        denominator = max(stats["images_seen"], size, 1)
        limit = self.args.max_bad_image_fraction
        if stats["bad_images"] > math.ceil(limit * denominator):  # whole images: one bad file of 42 is tolerated
            describe = getattr(self.train_dataset, "describe", lambda i: f"sample {i}")
            names = ", ".join(describe(i) for i in self.bad_samples[:5])
            raise ValueError(
                f"{stats['bad_images']} of {denominator} training images are unreadable, more than "
                f"--max_bad_image_fraction {limit}; first ones: {names}. Fix or remove them, or raise the fraction."
            )

    # --- non-finite steps: skipped without a host sync, stopped after max_nonfinite_steps in a row ---------------
    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._grad_norm = grad_norm if isinstance(grad_norm, torch.Tensor) else torch.tensor(float(grad_norm))
        return grad_norm

    def _check_step_finite(self) -> None:
        """Before the optimizer step: was this step's loss or gradient non-finite? (device tensors only)."""
        device = self.args.device
        bad = torch.zeros((), dtype=torch.bool, device=device)
        if self._loss_bad is not None:
            bad = bad | self._loss_bad.to(device)
        if self._grad_norm is not None:
            bad = bad | ~torch.isfinite(self._grad_norm.to(device))
        else:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            if grads:
                bad = bad | ~torch.isfinite(torch.stack(torch._foreach_norm(grads)).to(device)).all()
        self._loss_bad, self._grad_norm = None, None
        counters = self._step_counters
        if counters is None:
            counters = torch.tensor([0, 0, -1], dtype=torch.long, device=device)
        bad_long = bad.long()
        in_a_row = (counters[1] + 1) * bad_long
        first = torch.where(bad & (counters[1] == 0), torch.full_like(counters[2], self.state.global_step), counters[2])
        self._step_counters = torch.stack([counters[0] + bad_long, in_a_row, first])
        self._step_is_bad = bad
        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)
        if getattr(self.accelerator, "scaler", None) is None and _takes_found_inf(optimizer):
            optimizer.found_inf = bad.float()  # the fused kernel skips the whole update when this is 1

    def _flush_step_counters(self) -> None:
        if self._image_counts is not None or self._pending_status:
            self._flush_image_counts()
        if self._step_counters is None:
            return
        skipped, in_a_row, first = (int(v) for v in self._step_counters.tolist())
        self.nonfinite_steps_skipped = skipped
        if in_a_row >= self.args.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{in_a_row} optimizer steps in a row had a non-finite loss or gradient, the first at optimizer "
                f"step {first}; training stopped. Those updates were skipped and nothing non-finite was saved. "
                "Lower the learning rate, raise --warmup_epochs, or use bf16 instead of fp16."
            )

    def create_optimizer(self, model=None):
        optimizer = self._create_sop_optimizer(model)
        if not _takes_found_inf(optimizer):
            _skip_step_when_bad(optimizer, self)
        return optimizer

    # --- checkpoints: finite, atomic, strictly resumable ---------------------------------------------------------
    def _check_finite_state(self) -> None:
        model = self.accelerator.unwrap_model(self.model)
        bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
        if self.optimizer is not None:
            for group in self.optimizer.state_dict().get("state", {}).values():
                bad += [f"optimizer state {k}" for k, t in group.items()
                        if isinstance(t, torch.Tensor) and t.is_floating_point() and not torch.isfinite(t).all()]  # fmt: skip
        if bad:
            last = last_complete_checkpoint(self.args.output_dir)
            raise NonFiniteLossError(
                f"Non-finite values at optimizer step {self.state.global_step} in {', '.join(bad[:5])}"
                f"{' ...' if len(bad) > 5 else ''}: checkpoint-{self.state.global_step} was not written. The newest "
                f"good checkpoint is {last or 'none'}. Lower the learning rate or raise --warmup_epochs."
            )

    def _get_output_dir(self, trial):
        return self._staging_dir if self._staging_dir is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        self._flush_step_counters()
        self._check_finite_state()
        run_dir = self._get_output_dir(trial)
        name = f"checkpoint-{self.state.global_step}"
        self._staging_dir = os.path.join(run_dir, STAGING_DIR)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_dir = None
        self.accelerator.wait_for_everyone()  # every rank has written its RNG state
        if self.args.should_save:
            staged, final = os.path.join(run_dir, STAGING_DIR, name), os.path.join(run_dir, name)
            files = {f: os.path.getsize(os.path.join(staged, f)) for f in sorted(os.listdir(staged))}
            record = {"global_step": self.state.global_step, "world_size": self.args.world_size, "files": files}
            with open(os.path.join(staged, COMPLETE_MARKER), "w") as handle:
                json.dump(record, handle, indent=1)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            shutil.rmtree(os.path.join(run_dir, STAGING_DIR), ignore_errors=True)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)  # fmt: skip
        self.accelerator.wait_for_everyone()

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        """``Trainer.train``; ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint of
        ``output_dir``, and any checkpoint must hold its optimizer, scheduler, RNG and memory-bank state."""
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"resume requested but {self.args.output_dir} holds no complete checkpoint")
        if resume_from_checkpoint:
            verify_checkpoint(resume_from_checkpoint, self.accelerator.unwrap_model(self.model))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial,
                             ignore_keys_for_eval=ignore_keys_for_eval, **kwargs)  # fmt: skip

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for callback in self.callback_handler.callbacks:  # e.g. TrainingMonitorCallback's k-NN / collapse metrics
            if hasattr(callback, "pop_logs"):
                logs.update(callback.pop_logs())
        if "loss" in logs:
            self._flush_step_counters()
            logs["nonfinite_steps_skipped"] = self.nonfinite_steps_skipped
            if self.image_stats["images_seen"]:
                logs["images_replaced"] = self.image_stats["bad_images"]
                logs["images_converted"] = self.image_stats["images_converted"]
        if "loss" in logs and self._term_sums:
            for key, total in self._term_sums.items():
                mean = total / self._term_counts[key]
                logs[key] = round(float(self.accelerator.reduce(mean, reduction="mean")), 6)
            self._term_sums, self._term_counts = {}, defaultdict(int)
            step = max(0, self.state.global_step - 1)
            logs["teacher_momentum"] = round(teacher_momentum(self.args, step, self.state.max_steps), 6)
            logs["teacher_temp"] = self.temperatures(step)["teacher_temp"]
            model = self.accelerator.unwrap_model(self.model)
            if hasattr(model, "class_memory"):
                written = int(model.step_count) * self.args.per_device_train_batch_size * self.args.world_size
                logs["bank_fill"] = round(min(1.0, written / model.class_memory.size), 4)
        super().log(logs, start_time)


def _sharding_requested(args) -> bool:
    env = os.environ
    return bool(
        args.fsdp or getattr(args, "deepspeed", None)
        or env.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")
        or env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() in ("1", "true")
    )  # fmt: skip


def _check_dataset_size(dataset, args) -> None:
    """A dataset smaller than one global batch (or one whose last batch would hold < 2 images per process when
    it is kept) never trains: refuse it before any compute."""
    if dataset is None or not hasattr(dataset, "__len__"):
        return
    size, per_device, world = len(dataset), args.per_device_train_batch_size, args.world_size
    if per_device < 2:
        raise ValueError(f"--per_device_train_batch_size must be >= 2 (pairs of views of B >= 2 images), got {per_device}")
    global_batch = per_device * world
    if size < global_batch:
        raise ValueError(f"the training dataset holds {size} images, fewer than one global batch of {global_batch} "
                         f"({per_device} per device x {world} processes); lower --per_device_train_batch_size")  # fmt: skip
    remainder = size % global_batch
    if not args.dataloader_drop_last and remainder and remainder < 2 * world:
        raise ValueError(f"with --dataloader_drop_last false the last batch holds {remainder} of {size} images, fewer "
                         f"than 2 per process; keep --dataloader_drop_last true (the default)")  # fmt: skip


def _takes_found_inf(optimizer) -> bool:
    """Fused Adam/AdamW/SGD read ``optimizer.found_inf`` and skip the update on the device (no host sync)."""
    return bool(getattr(optimizer, "defaults", {}).get("fused")) and type(optimizer).__name__ in ("Adam", "AdamW", "SGD")


def _skip_step_when_bad(optimizer, trainer: SOPTrainer) -> None:
    """Other optimizers: skip ``step()`` after a non-finite step (one host sync per step)."""
    step = optimizer.step

    def guarded_step(*args, **kwargs):
        bad = getattr(trainer, "_step_is_bad", None)
        if bad is not None and bool(bad):
            return None
        return step(*args, **kwargs)

    optimizer.step = guarded_step


def _checkpoint_step(path: str) -> int:
    match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(os.path.normpath(path)))
    return int(match.group(1)) if match else -1


def checkpoint_problems(path: str, model=None) -> list[str]:
    """What a checkpoint lacks to resume exactly (empty when it is complete)."""
    problems = []
    if not os.path.isdir(path):
        return [f"{path} is not a folder"]
    files = set(os.listdir(path))
    for name, what in (("trainer_state.json", "trainer"), ("optimizer.pt", "optimizer"), ("scheduler.pt", "scheduler")):
        if name not in files:
            problems.append(f"{name} ({what} state)")
    if not any(re.fullmatch(r"rng_state(_\d+)?\.pth", f) for f in files):
        problems.append("rng_state*.pth (RNG state)")
    weights = os.path.join(path, "model.safetensors")
    if not os.path.exists(weights):
        problems.append("model.safetensors (weights and memory banks)")
    else:
        try:
            with safe_open(weights, framework="pt") as handle:
                keys = set(handle.keys())
        except Exception as error:  # noqa: BLE001 - a truncated file
            problems.append(f"model.safetensors is unreadable ({type(error).__name__}: {error})")
            keys = None
        if keys is not None and model is not None:
            wanted = [k for k in model.state_dict() if k.endswith((".rows", ".ptr")) or k in BANK_STATE_KEYS]
            missing = [k for k in wanted if k not in keys]
            if missing:
                problems.append(f"memory-bank state {missing}")
    marker = os.path.join(path, COMPLETE_MARKER)
    if os.path.exists(marker):
        try:
            with open(marker) as handle:
                record = json.load(handle)
            for name, size in record.get("files", {}).items():
                if not os.path.exists(os.path.join(path, name)) or os.path.getsize(os.path.join(path, name)) != size:
                    problems.append(f"{name} (missing or of another size than written)")
        except (OSError, ValueError) as error:
            problems.append(f"{COMPLETE_MARKER} is unreadable ({error})")
    return problems


def verify_checkpoint(path: str, model=None) -> None:
    """Raise a ``ValueError`` that lists what ``path`` lacks for an exact resume."""
    problems = checkpoint_problems(str(path), model)
    if problems:
        raise ValueError(f"cannot resume exactly from {path}: missing or broken: {'; '.join(problems)}")


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest ``checkpoint-N`` of ``output_dir`` that is complete; incomplete ones are skipped with a warning."""
    if not output_dir or not os.path.isdir(output_dir):
        return None
    candidates = sorted((p for p in os.listdir(output_dir) if _checkpoint_step(p) >= 0), key=_checkpoint_step)
    for name in reversed(candidates):
        path = os.path.join(output_dir, name)
        problems = checkpoint_problems(path)
        if not problems:
            return path
        logger.warning("skipping incomplete checkpoint %s: %s", path, "; ".join(problems))
    return None


def lr_at(step: int, peak: float, min_lr: float, total: int, warmup: int) -> float:
    """The learning rate SOPTrainer applies at ``step`` (for docs and tests)."""
    return peak * cosine_schedule(step, 1.0, min_lr / peak if peak else 0.0, total, warmup)


__all__ = ["NonFiniteLossError", "SOPTrainer", "last_complete_checkpoint", "lr_at", "verify_checkpoint"]
