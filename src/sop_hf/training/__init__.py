"""SOP pretraining on transformers' Trainer: arguments, schedules, callbacks, the monitor, the trainer and its plots."""

from .arguments import SOPTrainingArguments
from .callbacks import PerParameterClipCallback, TeacherEMACallback, WeightDecayScheduleCallback
from .monitor import TrainingMonitorCallback
from .plots import plot_training_curves
from .preemption import PREEMPTED_EXIT_CODE, PreemptionCallback, TrainingPreempted
from .process_group import end_process_group
from .schedules import cosine_schedule, warmup_constant_schedule
from .trainer import NonFiniteLossError, SOPTrainer

__all__ = [
    "end_process_group",
    "PREEMPTED_EXIT_CODE",
    "NonFiniteLossError",
    "PerParameterClipCallback",
    "PreemptionCallback",
    "SOPTrainer",
    "SOPTrainingArguments",
    "TeacherEMACallback",
    "TrainingMonitorCallback",
    "TrainingPreempted",
    "WeightDecayScheduleCallback",
    "cosine_schedule",
    "plot_training_curves",
    "warmup_constant_schedule",
]
