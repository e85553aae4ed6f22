"""The training record of a run: every recipe row of the model card, from the values the run used."""

import torch

from ..data.sources import dataset_identity


def precision_name(training_args) -> str:
    """``"bf16"``, ``"fp16"`` or ``"fp32"``: the mixed precision of a run, named as the dtype flags of ``sop-hf eval``
    and ``evaluation.features.resolve_dtype`` name it."""
    return "bf16" if training_args.bf16 else ("fp16" if training_args.fp16 else "fp32")


def training_record(data_args, training_args, trainer, recipe: str) -> dict:
    """The card's training rows: data, optimisation, schedules, crops, hardware, what was exported."""
    crops = f"2 x {data_args.global_crop_size} px + {data_args.num_local_crops} x {data_args.local_crop_size} px"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not training_args.use_cpu else "CPU"
    warmup = (f"{training_args.warmup_steps:g} steps" if training_args.warmup_steps else
              f"{training_args.warmup_epochs:g} epochs")  # fmt: skip
    dataset, _ = dataset_identity(data_args.dataset_name, data_args.train_dir, data_args.data_files)
    return {
        "dataset": dataset, "num_train_epochs": round(trainer.state.epoch or 0, 2),
        "max_steps": trainer.state.global_step, "global_batch_size": trainer.global_batch_size,
        "learning_rate": trainer.peak_learning_rate, "min_lr": training_args.min_lr, "warmup_epochs": warmup,
        "weight_decay": f"{training_args.weight_decay:g} -> {training_args.weight_decay_end:g} (cosine)",
        "optimizer": str(getattr(training_args.optim, "value", training_args.optim)),
        "momentum_teacher": f"{training_args.momentum_teacher:g} -> {training_args.momentum_teacher_end:g} (cosine)",
        "student_temp": training_args.student_temp, "teacher_temp": training_args.teacher_temp,
        "warmup_teacher_temp": training_args.warmup_teacher_temp,
        "teacher_patch_temp": training_args.teacher_patch_temp,
        "crops": crops, "hardware": f"{training_args.world_size} x {device}, {precision_name(training_args)}",
        "recipe": recipe, "mim_loss_weight": getattr(trainer.model.config, "mim_loss_weight", 0.0),
        "exported": training_args.export_encoder,
    }  # fmt: skip


def knn_eval_result(data_args, eval_split: str, k: int, accuracy: float) -> dict:
    """The final k-NN top-1 as a model-index entry (``EvalResult`` fields), named as ``sop-hf eval knn`` names it."""
    dataset_type, dataset_name = dataset_identity(data_args.dataset_name, data_args.train_dir, data_args.data_files)
    return {"task_type": "image-classification", "dataset_name": dataset_name, "dataset_type": dataset_type,
            "dataset_split": eval_split, "metric_type": "accuracy", "metric_name": f"k-NN top-1 (k={k})",
            "metric_value": accuracy}  # fmt: skip


__all__ = ["knn_eval_result", "precision_name", "training_record"]
