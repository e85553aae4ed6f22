"""Threads of a CPU-only training process.

``accelerate launch`` without ``--num_cpu_threads_per_process`` (and without ``--cpu``) sets ``OMP_NUM_THREADS=1``
in the processes it starts, so a single-process CPU run used one core of the machine: 60 demo steps took 40.5 s
on one thread against 29.0 s on two (2-core machine, medians of 3; docs/performance.md, "Threads of a CPU run").
``SOPTrainer`` therefore gives each process of a CPU-only ``accelerate launch`` run its share of the cores it may
use (cores // processes on this machine, at least 1: 8 processes on 2 cores get 1 thread each); ``--cpu_threads N``
chooses exactly, in any run. Runs on an accelerator are left as they are.
"""

import logging
import os

import torch

logger = logging.getLogger(__name__)


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the platform reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def local_process_count(world_size: int) -> int:
    """Training processes on this machine: torch's ``LOCAL_WORLD_SIZE`` when a launcher sets it, else the world size."""
    value = os.environ.get("LOCAL_WORLD_SIZE")
    return max(1, int(value) if value and value.isdigit() else int(world_size))


def launched_by_accelerate() -> bool:
    """True in a process started by ``accelerate launch`` (its launcher always sets ``ACCELERATE_DYNAMO_BACKEND``)."""
    return "ACCELERATE_DYNAMO_BACKEND" in os.environ


def cpu_thread_count(requested: int | None, current: int, cores: int, local_processes: int, auto: bool = True) -> int:
    """Threads for one process.

    ``requested`` when given. Else, when ``auto`` (a process of ``accelerate launch``): with several processes on
    this machine, exactly their share, ``cores // local_processes`` (at least 1; a count the launcher passed on, such
    as ``OMP_NUM_THREADS=2`` for 8 processes on 2 cores, would oversubscribe the cores); with one process, at least
    all the cores (a larger count set on purpose is kept). Else ``current``.
    """
    if requested is not None:
        if requested < 1:
            raise ValueError(f"--cpu_threads must be >= 1, got {requested}")
        return requested
    if not auto:
        return current
    share = max(1, cores // max(1, local_processes))
    return share if local_processes > 1 else max(current, share)


def set_cpu_threads(requested: int | None, device: torch.device, world_size: int) -> int | None:
    """Apply ``cpu_thread_count`` to torch on a CPU-only run; returns the thread count, or None on an accelerator.

    Without ``requested`` only a process of ``accelerate launch`` is raised: a plain ``python`` run keeps the threads
    its environment chose (``OMP_NUM_THREADS`` set by the user is theirs to keep).
    """
    if device.type != "cpu":
        return None
    current = torch.get_num_threads()
    threads = cpu_thread_count(requested, current, usable_cores(), local_process_count(world_size),
                               auto=launched_by_accelerate())  # fmt: skip
    if threads != current:
        torch.set_num_threads(threads)
        logger.info("CPU run: %d threads per process (was %d; accelerate launch sets OMP_NUM_THREADS=1 unless "
                    "given --num_cpu_threads_per_process; --cpu_threads N chooses)", threads, current)  # fmt: skip
    return threads
