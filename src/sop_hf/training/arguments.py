"""SOPTrainingArguments: ``TrainingArguments`` plus SOP's schedules (docs/method.md §11), with SOP defaults.

The loop is transformers' ``Trainer``; these fields add what self-distillation needs: the teacher's EMA momentum and
temperature schedules, the weight-decay schedule, DINO's learning-rate scaling and per-parameter gradient clipping.
Changed defaults: ``remove_unused_columns=False`` (the image column must reach the collator),
``ddp_broadcast_buffers=False`` (the banks are identical on every rank already; broadcasting them every step would
cost ~64 MB of traffic), ``max_grad_norm=0`` (SOP clips per parameter, see ``clip_grad_per_param``).
"""

from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from .schedules import LR_SCHEDULES


@dataclass
class SOPTrainingArguments(TrainingArguments):
    learning_rate: float = field(
        default=5e-4,
        metadata={"help": "Peak learning rate for a global batch of 256 (scaled by global batch / 256 unless "
                  "--scale_lr_with_batch_size false). SOP/DINO use 5e-4; tiny CPU models like 3x that."},
    )  # fmt: skip
    scale_lr_with_batch_size: bool = field(
        default=True,
        metadata={"help": "Multiply learning_rate by global_batch / 256 (DINO's linear scaling rule)."},
    )
    min_lr: float = field(default=1e-6, metadata={"help": "Final learning rate of the cosine decay."})
    warmup_epochs: float = field(
        default=10.0,
        metadata={"help": "Linear learning-rate warm-up length in epochs (clamped to the run). Ignored when "
                  "--warmup_steps is set > 0."},
    )  # fmt: skip
    weight_decay: float = field(default=0.04, metadata={"help": "Initial weight decay (cosine to weight_decay_end)."})
    weight_decay_end: float = field(
        default=0.4, metadata={"help": "Final weight decay. Applied to weights with >= 2 dims only, never biases/norms."}
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
        kind = str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type))
        if kind not in LR_SCHEDULES:
            raise ValueError(f"--lr_scheduler_type must be one of {', '.join(LR_SCHEDULES)} (SOPTrainer's schedules), "
                             f"got {kind!r}")  # fmt: skip
        super().__post_init__()
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

    # --- preemption (docs/distributed.md, "Preemption"); validated by SOPTrainer ---------------------------------
    preemption_signals: str = field(
        default="SIGTERM,SIGUSR1",
        metadata={"help": "Signals that mean 'preempted' (comma-separated; empty turns it off): every process "
                  "finishes its optimizer step, the run writes one complete checkpoint of that step and exits with "
                  "status 75; the same command resumes from it. SLURM sends SIGTERM on preemption and SIGUSR1 with "
                  "--signal=USR1@120; Kubernetes sends SIGTERM."},
    )  # fmt: skip
