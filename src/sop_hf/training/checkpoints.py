"""Checkpoints that are whole or absent: atomic staging, the completeness marker, verification, the newest good one.

A checkpoint is written into ``OUTPUT_DIR/.staging/checkpoint-N`` (by ``Trainer``'s own saving code), marked complete
with ``checkpoint_complete.json`` (the size of every file) and renamed into place; only then are older ones rotated.
So a folder named ``checkpoint-N`` is always whole, a save cut short (kill, preemption, full disk) leaves at most a
stale staging folder that the next save discards, and rotation never removes the newest good checkpoint.

``verify_checkpoint`` lists what a checkpoint lacks for an exact resume (optimizer, scheduler, RNG and memory-bank
state); ``last_complete_checkpoint`` is what ``resume_from_checkpoint=True`` resumes from.
"""

import json
import logging
import os
import re
import shutil

from safetensors import safe_open
from transformers.trainer_utils import rotate_checkpoints

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"
COMPLETE_MARKER = "checkpoint_complete.json"
BANK_STATE_KEYS = ("step_count",)  # plus every "<bank>.rows" / "<bank>.ptr" of the model
SHARDED_DIR = "sharded_state"  # FSDP2: the DCP folder inside checkpoint-N (model, banks and optimizer, a file per rank)


def checkpoint_step(path: str) -> int:
    """N of a ``checkpoint-N`` folder, -1 for any other name."""
    match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(os.path.normpath(str(path))))
    return int(match.group(1)) if match else -1


def staging_folder(run_dir: str, step: int) -> str:
    """Where ``checkpoint-<step>`` is written before it is complete."""
    return os.path.join(run_dir, STAGING_DIR, f"checkpoint-{step}")


def clear_staging(run_dir: str, step: int) -> None:
    """Remove a stale staging folder of the same step (a save cut short earlier) so no old file is published."""
    shutil.rmtree(staging_folder(run_dir, step), ignore_errors=True)


def publish_checkpoint(run_dir: str, step: int, world_size: int, save_total_limit: int | None,
                       best_model_checkpoint: str | None = None) -> str:  # fmt: skip
    """Mark the staged ``checkpoint-<step>`` complete, rename it into ``run_dir`` and rotate old checkpoints.

    Call on the saving process only, after every process has written its files. Returns the final path.
    """
    staged, final = staging_folder(run_dir, step), os.path.join(run_dir, f"checkpoint-{step}")
    files = {f: os.path.getsize(os.path.join(staged, f)) for f in sorted(os.listdir(staged))}
    record = {"global_step": step, "world_size": world_size, "files": files}
    with open(os.path.join(staged, COMPLETE_MARKER), "w") as handle:
        json.dump(record, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(staged, final)
    shutil.rmtree(os.path.join(run_dir, STAGING_DIR), ignore_errors=True)
    rotate_checkpoints(output_dir=run_dir, save_total_limit=save_total_limit,
                       best_model_checkpoint=best_model_checkpoint, use_mtime=True)  # fmt: skip
    return final


def sharded_state_problems(path: str) -> list[str]:
    """What the DCP folder of checkpoint ``path`` lacks: its metadata, or a storage file the metadata names."""
    folder = os.path.join(path, SHARDED_DIR)
    if not os.path.exists(os.path.join(folder, ".metadata")):
        return [f"{SHARDED_DIR}/.metadata (sharded model and optimizer state)"]
    from torch.distributed.checkpoint import FileSystemReader

    try:
        storage = FileSystemReader(folder).read_metadata().storage_data
    except Exception as error:  # noqa: BLE001 - a truncated metadata file
        return [f"{SHARDED_DIR}/.metadata is unreadable ({type(error).__name__}: {error})"]
    ends: dict[str, int] = {}  # shard file -> the end of its last item: a shorter file was cut short
    for info in storage.values():
        name = getattr(info, "relative_path", None)
        if name is not None:
            ends[name] = max(ends.get(name, 0), int(getattr(info, "offset", 0)) + int(getattr(info, "length", 0)))
    problems = []
    for name, end in sorted(ends.items()):
        file = os.path.join(folder, name)
        if not os.path.exists(file):
            problems.append(f"{SHARDED_DIR}/{name} (a shard)")
        elif os.path.getsize(file) < end:
            problems.append(f"{SHARDED_DIR}/{name} (cut short: {os.path.getsize(file)} of {end} bytes)")
    return problems


def checkpoint_problems(path: str, model=None) -> list[str]:
    """What a checkpoint lacks to resume exactly (empty when it is complete)."""
    problems = []
    if not os.path.isdir(path):
        return [f"{path} is not a folder"]
    files = set(os.listdir(path))
    sharded = SHARDED_DIR in files  # FSDP2: model, banks and optimizer as DCP shards
    for name, what in (("trainer_state.json", "trainer"), ("optimizer.pt", "optimizer"), ("scheduler.pt", "scheduler")):
        if name not in files and not (sharded and name == "optimizer.pt"):
            problems.append(f"{name} ({what} state)")
    if not any(re.fullmatch(r"rng_state(_\d+)?\.pth", f) for f in files):
        problems.append("rng_state*.pth (RNG state)")
    weights = os.path.join(path, "model.safetensors")
    if sharded:
        problems += sharded_state_problems(path)
    elif not os.path.exists(weights):
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
                if sharded and os.path.isdir(os.path.join(path, name)):
                    continue  # the DCP folder: its shards are checked against its metadata above
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
    candidates = sorted((p for p in os.listdir(output_dir) if checkpoint_step(p) >= 0), key=checkpoint_step)
    for name in reversed(candidates):
        path = os.path.join(output_dir, name)
        problems = checkpoint_problems(path)
        if not problems:
            return path
        logger.warning("skipping incomplete checkpoint %s: %s", path, "; ".join(problems))
    return None
