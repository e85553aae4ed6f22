"""SOPTrainingArguments: ``TrainingArguments`` plus SOP's schedules (docs/method.md §11), with SOP defaults.

The loop is transformers' ``Trainer``; these fields add what self-distillation needs: the teacher's EMA momentum and
temperature schedules, the weight-decay schedule, DINO's learning-rate scaling and per-parameter gradient clipping.

The peak learning rate, as in transformers' ``run_mae.py``: ``--learning_rate`` is the rate itself (as in
``Trainer``); ``--base_learning_rate`` is the rate for a global batch of 256, scaled by global batch / 256. The rule:

- give at most one of them; both, with ``learning_rate != base_learning_rate * global batch / 256``, is a
  ``ValueError`` naming both;
- a value a recipe supplies (a ``RecipeRate``, what ``recipe_defaults`` turns a recipe's rate into) is a default:
  the user's explicit other flag replaces it, so ``--recipe demo --learning_rate 1e-3`` trains at exactly 1e-3;
- neither: ``base_learning_rate`` 5e-4 (SOP / DINO).

After ``__post_init__``, ``learning_rate`` holds the rate at the batch the arguments describe (as ``run_mae.py``
leaves it) and ``base_learning_rate`` stays set when it is the origin; ``SOPTrainer`` logs which at train start.
Changed defaults: ``remove_unused_columns=False`` (the image column must reach the collator),
``ddp_broadcast_buffers=False`` (the banks are identical on every rank already; broadcasting them every step would
cost ~64 MB of traffic), ``max_grad_norm=0`` (SOP clips per parameter, see ``clip_grad_per_param``).
"""

import math
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from ..methods.recipes import RecipeRate
from .schedules import LR_SCHEDULES

DEFAULT_BASE_LEARNING_RATE = 5e-4  # SOP / DINO: 5e-4 x global batch / 256


@dataclass
class SOPTrainingArguments(TrainingArguments):
    learning_rate: float | None = field(
        default=None,
        metadata={"help": "Peak learning rate, absolute (as in Trainer): not scaled by the batch. Give this or "
                  "--base_learning_rate; it replaces a recipe's base rate. Use it to reproduce a run's exact rate."},
    )  # fmt: skip
    base_learning_rate: float | None = field(
        default=RecipeRate(DEFAULT_BASE_LEARNING_RATE),
        metadata={"help": "Peak learning rate for a global batch of 256: the rate is base_learning_rate x global "
                  "batch / 256 (DINO's linear scaling rule, run_mae.py's flag). SOP/DINO use 5e-4; tiny CPU models "
                  "like 3x that. Replaced by an explicit --learning_rate."},
    )  # fmt: skip
    scale_lr_with_batch_size: bool | None = field(
        default=None,
        metadata={"help": "Removed: --learning_rate is now the absolute rate and --base_learning_rate the one "
                  "scaled by global batch / 256. Giving this flag is an error saying which to use."},
    )  # fmt: skip
    min_lr: float = field(default=1e-6, metadata={"help": "Final learning rate of the cosine decay."})
    warmup_epochs: float = field(
        default=10.0,
        metadata={"help": "Linear learning-rate warm-up length in epochs (clamped to the run). Ignored when "
                  "--warmup_steps is set > 0."},
    )  # fmt: skip
    weight_decay: float = field(default=0.04, metadata={"help": "Initial weight decay (cosine to weight_decay_end)."})
    weight_decay_end: float = field(
        default=0.4,
        metadata={"help": "Final weight decay. Applied to weights with >= 2 dims only, never biases/norms."},
    )
    momentum_teacher: float = field(
        default=0.996,
        metadata={"help": "Base EMA momentum of the teacher, raised to momentum_teacher_end by a cosine. Lower "
                  "(0.99) for short runs or small batches so the teacher keeps up."},
    )  # fmt: skip
    momentum_teacher_end: float = field(default=1.0, metadata={"help": "Final EMA momentum."})
    student_temp: float = field(default=0.1, metadata={"help": "Student temperature tau_s."})
    teacher_temp: float = field(default=0.04, metadata={"help": "Teacher [CLS] temperature after warm-up."})
    warmup_teacher_temp: float = field(
        default=0.04, metadata={"help": "Teacher temperature at step 0 (SOP: equal to teacher_temp, i.e. constant)."}
    )
    warmup_teacher_temp_epochs: float = field(
        default=30.0, metadata={"help": "Epochs of the linear teacher-temperature warm-up."}
    )
    teacher_patch_temp: float | None = field(
        default=None, metadata={"help": "Teacher patch temperature after warm-up (default: teacher_temp)."}
    )
    warmup_teacher_patch_temp: float | None = field(
        default=None, metadata={"help": "Teacher patch temperature at step 0 (default: warmup_teacher_temp)."}
    )
    clip_grad_per_param: float = field(
        default=3.0,
        metadata={"help": "Clip each parameter's gradient to this norm separately (SOP/DINO); 0 disables. Use "
                  "--max_grad_norm for transformers' global clipping instead (then set this to 0). With fp16 use "
                  "the global mode: per-parameter clipping sees scaled gradients."},
    )  # fmt: skip
    export_encoder: str = field(
        default="teacher",
        metadata={"help": "Encoder written to OUTPUT_DIR/encoder at the end: 'teacher' (EMA, as DINO/iBOT/SOP "
                  "evaluate) or 'student' (better in very short runs whose momentum reaches 1 early)."},
    )  # fmt: skip
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep False: the image column must reach the collator."}
    )
    ddp_broadcast_buffers: bool = field(
        default=False, metadata={"help": "Keep False: memory banks are kept identical by all-gather already."}
    )
    ddp_find_unused_parameters: bool = field(
        default=False,
        metadata={"help": "Keep False: every trainable parameter gets a gradient each step (the mask token only "
                  "exists when SOP-MIM uses it), so DDP's extra graph traversal and its warning are not needed."},
    )  # fmt: skip
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Global gradient clipping (transformers); SOP uses --clip_grad_per_param."}
    )

    lars: bool = field(
        default=False,
        metadata={"help": "Train with LARS (SGD, momentum 0.9, layer-wise trust ratio; biases and norms excluded) "
                  "instead of --optim, as CARP's ResNet-50 recipe does; learning_rate is then LARS's base rate."},
    )  # fmt: skip
    cpu_threads: int | None = field(
        default=None,
        metadata={"help": "Threads per process of a CPU-only run. Default: under accelerate launch, at least the usable "
                  "cores divided by the processes on this machine (accelerate launch alone sets OMP_NUM_THREADS=1, "
                  "which leaves the other cores of a one-process CPU run idle); with plain python, what "
                  "OMP_NUM_THREADS / torch chose. Runs on an accelerator ignore it."},
    )  # fmt: skip
    do_train: bool = field(default=True, metadata={"help": "Train (false: evaluate and export a checkpoint)."})
    do_eval: bool = field(default=True, metadata={"help": "Run the final k-NN evaluation of the encoder."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Start from scratch even when output_dir holds checkpoints (by default the main job "
                  "resumes from the newest complete one)."},
    )  # fmt: skip
    lr_scheduler_type: str = field(
        default="cosine",
        metadata={"help": "Learning-rate schedule after the warm-up: cosine (SOP/DINO, to min_lr), linear (to "
                  "min_lr), constant_with_warmup, constant (no warm-up)."},
    )  # fmt: skip
    dataloader_drop_last: bool = field(
        default=True,
        metadata={"help": "Drop the last incomplete batch (default true: every step pairs views of full batches, and "
                  "every process holds the same number of images)."},
    )  # fmt: skip
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "Keep False: transformers' filter reads the loss on the host every step; SOPTrainer "
                  "skips and counts non-finite steps itself (logged as nonfinite_steps_skipped)."},
    )  # fmt: skip
    max_nonfinite_steps: int = field(
        default=5,
        metadata={"help": "Stop after this many optimizer steps in a row with a non-finite loss or gradient (each "
                  "is skipped and counted). Checked at logging steps and before every save."},
    )  # fmt: skip
    max_bad_image_fraction: float = field(
        default=0.01,
        metadata={"help": "Stop, naming the first bad files, when more than this fraction of the training images "
                  "(rounded up to whole images) cannot be read; each is replaced by another sample and counted."},
    )  # fmt: skip

    def __post_init__(self):
        if self.scale_lr_with_batch_size is not None:
            use = "--base_learning_rate RATE" if self.scale_lr_with_batch_size else "--learning_rate RATE"
            raise ValueError(f"--scale_lr_with_batch_size was removed: --learning_rate is now the absolute peak rate "
                             f"(as in Trainer) and --base_learning_rate the rate scaled by global batch / 256; for "
                             f"--scale_lr_with_batch_size {self.scale_lr_with_batch_size} pass {use}")  # fmt: skip
        kind = str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type))
        if kind not in LR_SCHEDULES:
            raise ValueError(f"--lr_scheduler_type must be one of {', '.join(LR_SCHEDULES)} (SOPTrainer's schedules), "
                             f"got {kind!r}")  # fmt: skip
        super().__post_init__()
        self._choose_learning_rate()  # after the device setup: the rule compares rates at the global batch
        if self.dataloader_pin_memory and not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # pinned memory only helps host-to-GPU copies (and warns without one)
        checks = {
            "student_temp": self.student_temp > 0,
            "teacher_temp": self.teacher_temp > 0,
            "warmup_teacher_temp": self.warmup_teacher_temp > 0,
            "momentum_teacher": 0.0 <= self.momentum_teacher <= 1.0,
            "momentum_teacher_end": 0.0 <= self.momentum_teacher_end <= 1.0,
            "clip_grad_per_param": self.clip_grad_per_param >= 0,
            "cpu_threads": self.cpu_threads is None or self.cpu_threads >= 1,
            "min_lr": self.min_lr >= 0,
            "warmup_epochs": self.warmup_epochs >= 0,
            "warmup_teacher_temp_epochs": self.warmup_teacher_temp_epochs >= 0,
            "max_nonfinite_steps": self.max_nonfinite_steps >= 1,
            "max_bad_image_fraction": 0.0 <= self.max_bad_image_fraction <= 1.0,
        }
        allowed = {
            "student_temp": "> 0", "teacher_temp": "> 0", "warmup_teacher_temp": "> 0",
            "momentum_teacher": "in [0, 1]", "momentum_teacher_end": "in [0, 1]", "clip_grad_per_param": ">= 0",
            "cpu_threads": ">= 1 (or unset)",
            "min_lr": ">= 0", "warmup_epochs": ">= 0", "warmup_teacher_temp_epochs": ">= 0",
            "max_nonfinite_steps": ">= 1", "max_bad_image_fraction": "in [0, 1]",
        }  # fmt: skip
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"--{name} must be {allowed[name]}, got {getattr(self, name)!r}")
        if self.export_encoder not in ("teacher", "student"):
            raise ValueError(f"--export_encoder must be 'teacher' or 'student', got {self.export_encoder!r}")
        if self.teacher_patch_temp is None:
            self.teacher_patch_temp = self.teacher_temp
        if self.warmup_teacher_patch_temp is None:
            self.warmup_teacher_patch_temp = self.warmup_teacher_temp
        if self.clip_grad_per_param > 0 and self.max_grad_norm > 0:
            raise ValueError("Use one gradient clipping: --clip_grad_per_param 0 with --max_grad_norm, or vice versa")
        if self.base_learning_rate is not None:  # run_mae.py's rule; the trainer recomputes it from its own batch
            self.learning_rate = self.peak_learning_rate(self.global_batch_size)

    def _choose_learning_rate(self) -> None:
        """Keep one origin of the peak rate (the rule in the module docstring), before any other check."""
        lr, base = self.learning_rate, self.base_learning_rate
        for name, value in (("learning_rate", lr), ("base_learning_rate", base)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"--{name} must be a finite number >= 0, got {value!r}")
        if lr is not None and base is not None:
            if isinstance(base, RecipeRate) and not isinstance(lr, RecipeRate):
                base = None  # the user's absolute rate replaces the recipe's (or the default) base rate
            elif isinstance(lr, RecipeRate) and not isinstance(base, RecipeRate):
                lr = None  # the user's base rate replaces a recipe's absolute rate
            elif not math.isclose(lr, base * self.global_batch_size / 256, rel_tol=1e-9, abs_tol=0.0):
                raise ValueError(
                    f"--learning_rate {lr:g} and --base_learning_rate {base:g} both set the peak rate: give one "
                    f"(--learning_rate is absolute; --base_learning_rate is scaled by global batch / 256, here "
                    f"{self.global_batch_size})"
                )
        if lr is None and base is None:
            base = RecipeRate(DEFAULT_BASE_LEARNING_RATE)
        self.learning_rate = None if lr is None else float(lr)
        self.base_learning_rate = None if base is None else float(base)

    @property
    def global_batch_size(self) -> int:
        """Images per optimizer step over all processes: per-device batch x processes x accumulation steps."""
        return self.per_device_train_batch_size * self.world_size * self.gradient_accumulation_steps

    def peak_learning_rate(self, global_batch_size: int) -> float:
        """The peak rate at ``global_batch_size``: base x batch / 256 when the base rate is the origin, else
        ``learning_rate`` as given."""
        if self.base_learning_rate is not None:
            return self.base_learning_rate * global_batch_size / 256
        return self.learning_rate

    def describe_learning_rate(self, global_batch_size: int) -> str:
        """How the peak rate was derived, for the log at train start."""
        rate = self.peak_learning_rate(global_batch_size)
        if self.base_learning_rate is not None:
            return (f"learning rate {rate:.6g} = base {self.base_learning_rate:g} x global batch {global_batch_size} "
                    "/ 256 (--base_learning_rate)")  # fmt: skip
        return f"learning rate {rate:g} (--learning_rate, absolute)"

    # --- preemption (docs/distributed.md, "Preemption"); validated by SOPTrainer ---------------------------------
    preemption_signals: str = field(
        default="SIGTERM,SIGUSR1",
        metadata={"help": "Signals that mean 'preempted' (comma-separated; empty turns it off): every process "
                  "finishes its optimizer step, the run writes one complete checkpoint of that step and exits with "
                  "status 75; the same command resumes from it. SLURM sends SIGTERM on preemption and SIGUSR1 with "
                  "--signal=USR1@120; Kubernetes sends SIGTERM."},
    )  # fmt: skip
