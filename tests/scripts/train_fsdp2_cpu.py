"""SOPTrainer's FSDP2 path on CPU processes standing in for GPUs (accelerate enables FSDP only on accelerators).

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no \\
        tests/scripts/train_fsdp2_cpu.py OUT_DIR --max_steps 4 [--save_steps 2] [--resume last] [--ddp]

Without --ddp the script sets accelerate's state to FSDP with an FSDP2 plugin before the trainer is built, and lifts
the trainer's CPU guard (``_on_accelerator``): everything else is the real code path (accelerate's prepare of the
pre-sharded model, the Trainer's checkpoint calls, the strategy's DCP save/load, the export). Writes OUT_DIR/result.pt
on the main process: per-step losses and the exported teacher's state dict.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from sop_hf import SOPConfig, SOPForPreTraining  # noqa: E402
from sop_hf.training import SOPTrainer, SOPTrainingArguments, end_process_group  # noqa: E402
from sop_hf.training import trainer as trainer_module  # noqa: E402
from tests.scripts.train_tiny import TINY, IndexSeededImages, collate  # noqa: E402


def emulate_fsdp2_on_cpu() -> None:
    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = Accelerator(cpu=True).state  # shared by the trainer's Accelerator
    state.fsdp_plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    state.distributed_type = DistributedType.FSDP
    os.environ["ACCELERATE_USE_FSDP"], os.environ["FSDP_VERSION"] = "true", "2"
    trainer_module._on_accelerator = lambda args: True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("--max_steps", type=int, default=4)
    parser.add_argument("--save_steps", type=int, default=0)
    parser.add_argument("--resume", default=None)
    parser.add_argument("--ddp", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = SOPForPreTraining(SOPConfig(**{**TINY, "drop_path_rate": 0.0}))
    training_args = SOPTrainingArguments(
        output_dir=args.out_dir, max_steps=args.max_steps, per_device_train_batch_size=4, learning_rate=1e-3,
        warmup_steps=2, logging_steps=1, save_strategy="steps" if args.save_steps else "no",
        save_steps=args.save_steps or 500, use_cpu=True, seed=7, report_to=[], dataloader_num_workers=0,
        disable_tqdm=True, momentum_teacher=0.9, momentum_teacher_end=1.0, clip_grad_per_param=0.5,
        optim="adamw_torch",
    )  # fmt: skip
    training_args.device  # noqa: B018 - the process group and accelerate's state exist from here
    if not args.ddp:
        emulate_fsdp2_on_cpu()
    trainer = SOPTrainer(model=model, args=training_args, train_dataset=IndexSeededImages(), data_collator=collate)
    if not args.ddp:  # the trainer's Accelerator re-read the process state: FSDP again
        from accelerate.state import PartialState
        from accelerate.utils import DistributedType

        trainer.accelerator.state.distributed_type = PartialState().distributed_type = DistributedType.FSDP
    trainer.train(resume_from_checkpoint=True if args.resume == "last" else args.resume)
    encoder = model.export_encoder("teacher") if trainer.is_world_process_zero() else None
    if trainer.is_world_process_zero():
        losses = {row["step"]: row["loss"] for row in trainer.state.log_history if "loss" in row}
        torch.save({"losses": losses, "teacher": encoder.state_dict(), "sharded": trainer.sharding is not None},
                   os.path.join(args.out_dir, "result.pt"))  # fmt: skip


if __name__ == "__main__":
    main()
    end_process_group()  # on every process, before the interpreter exits
