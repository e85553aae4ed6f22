"""The end of a distributed run: the process group torn down so that every process exits cleanly.

Any script that trains with ``SOPTrainer`` under ``accelerate launch`` / ``torchrun`` calls ``end_process_group()``
last, on every process (``sop_hf.pretrain.main`` and ``examples/pretrain_sop.py`` do).
"""

import gc

import torch


def end_process_group() -> None:
    """Destroy the default process group, as ``Accelerator.end_training`` does at the end of a script.

    A process whose gloo worker threads outlive the interpreter can abort in its shutdown ("terminate called without
    an active exception", exit status -6: a thread freeing a finished all-gather needs the GIL while Python is being
    torn down) and fail an otherwise finished run. Destroying the group joins those threads, but only once nothing
    holds the group: the finished trainer's reference cycles (its DDP model keeps the group) are collected first.
    ``sop_hf.pretrain.main`` calls this when the job ends, on every process; ``sop_hf.pretrain.run`` leaves the group
    to its caller.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        gc.collect()
        torch.distributed.destroy_process_group()


__all__ = ["end_process_group"]
