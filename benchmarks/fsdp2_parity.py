"""FSDP2 against DDP on CPU: the same SOP training under both, a resume from a sharded checkpoint, the full export.

Runs ``sop_hf.training.fsdp2`` with real ``fully_shard`` over gloo processes (started here with
``torch.multiprocessing``; accelerate enables FSDP only on accelerators, so this harness does not go through it):

1. **Parity.** The real ``SOPForPreTraining`` (tiny: 32 px, width 32, 2 blocks, SOP-MIM and 2 local crops on,
   stochastic depth 0.1) trains ``--steps`` steps under DDP and under FSDP2 from the same weights, data and seeds:
   forward, backward, per-parameter clipping (0.5, so it bites), AdamW with a warm-up scheduler, teacher EMA
   (0.9 -> 1, cosine). Figure: ``max_abs_loss_diff_vs_ddp`` over every step and rank (goal <= 1e-3).
2. **Resume.** The FSDP2 run saves a sharded checkpoint (DCP) at ``--resume_at``; a fresh model with other random
   weights loads it and replays the remaining steps. Figure: ``resume_max_abs_diff``, the largest difference of
   any loss or any full parameter / bank value against the uninterrupted FSDP2 run (goal <= 1e-6).
   The same checkpoint is then loaded by a different number of processes (1 for 2): DCP reshards the model and
   optimizer; ``reshard_load_max_abs_diff`` compares the loaded full state with the saved one.
3. **Export.** The teacher is gathered to rank 0 and written with ``save_pretrained``; ``AutoModel.from_pretrained``
   loads it (``export_loads_with_automodel``) and its weights match the gathered ones (``export_max_abs_diff``).
4. **Memory.** A ViT-B/16-sized student (width 768, 12 blocks, heads 2048 -> 256; 32-px images, one step) under
   each strategy. ``peak_memory_ratio_vs_ddp`` is FSDP2's per-process bytes of parameters, gradients, AdamW state
   and buffers (local shards, counted at the end of the step) plus two gathered units (the largest unsharded
   block, gathered and prefetched), over the same bytes under DDP (whose reducer buckets, one more gradient copy,
   are not counted: the ratio is conservative). Activations are left out of both (the same per process).
   ``state_bytes_ratio_vs_ddp`` counts the persistent bytes only; ``rss_peak_mib_*`` are the processes' resident
   peaks (noisy, and FSDP2's includes the full model built before sharding).

    python benchmarks/fsdp2_parity.py --json              # parity, resume, reshard, export, then the ViT-B step
    python benchmarks/fsdp2_parity.py --json --no_memory  # without the ViT-B step (its 184M-parameter pair is slow)

On an idle 2-core machine the parity part takes about 10 s; the ViT-B step a few minutes (one step of each strategy,
the model built twice per strategy). The figures are counts and differences, so machine load does not change them.
"""

import argparse
import json
import os
import resource
import socket
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sop_hf import SOPConfig, SOPForPreTraining
from sop_hf.training.fsdp2 import (
    clip_grad_per_param_,
    export_full_encoder,
    gather_full_state,
    load_sharded_checkpoint,
    save_sharded_checkpoint,
    shard_student_teacher,
    update_teacher_sharded,
)
from sop_hf.training.schedules import cosine_schedule

TINY = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, head_hidden_size=48, head_output_size=16, class_memory_size=64, num_anchors=16,
            num_support=3, num_tasks=2, patch_memory_size=64, num_patch_anchors=8, drop_path_rate=0.1)  # fmt: skip
VIT_B = dict(image_size=32, patch_size=16, drop_path_rate=0.0, class_memory_size=1024, num_anchors=64,
             patch_memory_size=1024, num_patch_anchors=16)  # fmt: skip
BATCH, NUM_LOCAL = 2, 2  # images per process, local crops per image
CLIP, LR, WEIGHT_DECAY = 0.5, 1e-3, 0.04
GOALS = {"max_abs_loss_diff_vs_ddp": 1e-3, "resume_max_abs_diff": 1e-6}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _init(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def build_model(config: SOPConfig, seed: int) -> SOPForPreTraining:
    torch.manual_seed(seed)
    model = SOPForPreTraining(config).train()
    model.anchor_seed = 0
    return model


def build_optimizer(model) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW, decay on >= 2-D non-bias tensors (as SOPTrainer), 3 warm-up steps."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and not n.endswith(".bias")]
    rest = [p for n, p in named if not (p.ndim >= 2 and not n.endswith(".bias"))]
    groups = [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]
    optimizer = torch.optim.AdamW(groups, lr=LR, foreach=True)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / 3))


def batch(config: SOPConfig, step: int, rank: int) -> dict[str, torch.Tensor]:
    """This rank's batch of step ``step``: seeded by (step, rank), the same under every strategy."""
    g = torch.Generator().manual_seed(1000 * step + rank)
    size, local = config.image_size, config.image_size // 2
    tokens = (size // config.patch_size) ** 2
    return {
        "pixel_values": torch.randn(2 * BATCH, 3, size, size, generator=g),  # [2B, 3, H, W]
        "local_pixel_values": torch.randn(NUM_LOCAL * BATCH, 3, local, local, generator=g),  # [nB, 3, h, w]
        "bool_masked_pos": torch.rand(2 * BATCH, tokens, generator=g) < 0.3,  # [2B, L]
    }


def train_steps(forward, model, optimizer, scheduler, config, steps: range, total: int, sharded: bool,
                on_step_end=None) -> list[list[float]]:  # fmt: skip
    """One SOPTrainer-like step per ``steps`` item; returns [[loss of rank 0, rank 1, ...] per step]."""
    losses = []
    for step in steps:
        loss = forward(**batch(config, step, dist.get_rank())).loss
        loss.backward()
        clip_grad_per_param_(model.parameters(), CLIP)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        momentum = cosine_schedule(step, 0.9, 1.0, total)
        update_teacher_sharded(model, momentum) if sharded else model.update_teacher(momentum)
        gathered = [torch.zeros(()) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, loss.detach().float())
        losses.append([float(v) for v in gathered])
        if on_step_end is not None:
            on_step_end(step + 1)
    return losses


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


def parity_worker(rank: int, world: int, port: int, steps: int, resume_at: int, work_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.nn.parallel import DistributedDataParallel

    _init(rank, world, port)
    config = SOPConfig(**TINY)
    mesh = init_device_mesh("cpu", (world,))
    result = {}
    # DDP
    model = build_model(config, seed=0)
    ddp = DistributedDataParallel(model)
    optimizer, scheduler = build_optimizer(model)
    torch.manual_seed(100 + rank)  # stochastic depth draws
    ddp_losses = train_steps(ddp, model, optimizer, scheduler, config, range(steps), steps, sharded=False)
    ddp_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    del ddp, model, optimizer
    # FSDP2, uninterrupted, saving at resume_at
    model = shard_student_teacher(build_model(config, seed=0), mesh)
    optimizer, scheduler = build_optimizer(model)
    torch.manual_seed(100 + rank)

    def save(step: int) -> None:
        if step == resume_at:
            extra = {"step": step, "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}
            save_sharded_checkpoint(work_dir, step, model, optimizer, extra)
            full = gather_full_state(model)
            if rank == 0:
                torch.save(full, os.path.join(work_dir, "full_at_save.pt"))

    fsdp_losses = train_steps(model, model, optimizer, scheduler, config, range(steps), steps, True, save)
    full_a = gather_full_state(model)
    # FSDP2 resumed: other random weights, then the checkpoint
    model_b = shard_student_teacher(build_model(config, seed=1), mesh)
    optimizer_b, scheduler_b = build_optimizer(model_b)
    extra = load_sharded_checkpoint(os.path.join(work_dir, f"checkpoint-{resume_at}"), model_b, optimizer_b)
    scheduler_b.load_state_dict(extra["scheduler"])
    torch.set_rng_state(extra["rng"])
    resumed = train_steps(model_b, model_b, optimizer_b, scheduler_b, config, range(extra["step"], steps), steps, True)
    full_b = gather_full_state(model_b)
    export_dir = os.path.join(work_dir, "encoder")
    encoder = export_full_encoder(model_b, "teacher", export_dir)
    if rank == 0:
        from transformers import AutoModel

        loaded = AutoModel.from_pretrained(export_dir)
        teacher = {k[len("teacher.") :]: v for k, v in full_b.items() if k.startswith("teacher.")}
        loaded_state = loaded.state_dict()
        result.update(
            steps=steps,
            resume_at=resume_at,
            world_size=world,
            model=f"SOPForPreTraining {TINY}",
            ddp_losses=ddp_losses,
            fsdp2_losses=fsdp_losses,
            resumed_losses=resumed,
            max_abs_loss_diff_vs_ddp=max(abs(a - b) for x, y in zip(ddp_losses, fsdp_losses) for a, b in zip(x, y)),
            max_abs_state_diff_vs_ddp=_max_diff(ddp_state, full_a),
            resume_max_abs_diff=max(
                max(abs(a - b) for x, y in zip(fsdp_losses[resume_at:], resumed) for a, b in zip(x, y)),
                _max_diff(full_a, full_b),
            ),
            resume_state_keys=len(full_b),
            export_loads_with_automodel=type(loaded).__name__ == type(encoder).__name__,
            export_class=type(loaded).__name__,
            export_max_abs_diff=max(float((loaded_state[k] - teacher[k]).abs().max()) for k in loaded_state),
            export_files=sorted(os.listdir(export_dir)),
        )
        with open(os.path.join(work_dir, "parity.json"), "w") as handle:
            json.dump(result, handle)
    dist.barrier()
    dist.destroy_process_group()


def reshard_worker(rank: int, world: int, port: int, resume_at: int, work_dir: str) -> None:
    """Load the checkpoint written by another number of processes (DCP reshards) and compare the full state."""
    from torch.distributed.device_mesh import init_device_mesh

    _init(rank, world, port)
    model = shard_student_teacher(build_model(SOPConfig(**TINY), seed=1), init_device_mesh("cpu", (world,)))
    optimizer, _ = build_optimizer(model)
    load_sharded_checkpoint(os.path.join(work_dir, f"checkpoint-{resume_at}"), model, optimizer)
    full = gather_full_state(model)
    moments = sum(1 for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.ndim)
    if rank == 0:
        saved = torch.load(os.path.join(work_dir, "full_at_save.pt"))
        result = {"reshard_world_size": world, "reshard_load_max_abs_diff": _max_diff(saved, full),
                  "reshard_optimizer_moments_loaded": moments}  # fmt: skip
        with open(os.path.join(work_dir, "reshard.json"), "w") as handle:
            json.dump(result, handle)
    dist.barrier()
    dist.destroy_process_group()


def _bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def memory_worker(rank: int, world: int, port: int, strategy: str, work_dir: str) -> None:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule
    from torch.nn.parallel import DistributedDataParallel

    _init(rank, world, port)
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    config = SOPConfig.from_preset("vit_base", **VIT_B)
    model = build_model(config, seed=0)
    if strategy == "fsdp2":
        model = shard_student_teacher(model, init_device_mesh("cpu", (world,)))
        forward = model
    else:
        forward = DistributedDataParallel(model)
    optimizer, _ = build_optimizer(model)
    start = time.perf_counter()
    loss = forward(**batch(config, 0, rank)).loss
    loss.backward()
    clip_grad_per_param_(model.parameters(), CLIP)
    optimizer.step()
    seconds = time.perf_counter() - start
    update_teacher_sharded(model, 0.99) if strategy == "fsdp2" else model.update_teacher(0.99)
    params = list(model.parameters())
    counts = {
        "param_bytes": _bytes(params),
        "grad_bytes": _bytes(p.grad for p in params if p.grad is not None),
        "optimizer_state_bytes": _bytes(
            v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.ndim > 0
        ),  # fmt: skip
        "buffer_bytes": _bytes(model.buffers()),
    }
    counts["state_bytes"] = sum(counts.values())
    largest_unit = 0
    if strategy == "fsdp2":  # the biggest unit's parameters when gathered (full shapes)
        for module in model.modules():
            if isinstance(module, FSDPModule) and module is not model:
                own = {id(p): p for p in module.parameters()}
                for child in module.modules():
                    if child is not module and isinstance(child, FSDPModule):
                        for p in child.parameters():
                            own.pop(id(p), None)
                largest_unit = max(largest_unit, sum(p.numel() * p.element_size() for p in own.values()))
    counts["gathered_unit_bytes"] = largest_unit
    counts["peak_bytes"] = counts["state_bytes"] + 2 * largest_unit
    counts["parameters"] = sum(p.numel() for p in params)
    counts["step_s"] = round(seconds, 2)
    counts["rss_peak_mib"] = round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_start) / 1024, 1)
    gathered = [None] * world
    dist.all_gather_object(gathered, counts)
    if rank == 0:
        with open(os.path.join(work_dir, f"memory_{strategy}.json"), "w") as handle:
            json.dump(gathered, handle)
    dist.barrier()
    dist.destroy_process_group()


def run_parity(
    steps: int = 8, resume_at: int = 4, world: int = 2, work_dir: str | None = None, reshard: bool = True
) -> dict:
    """Parity, resume and export over ``world`` gloo processes (then, with ``reshard``, the checkpoint loaded by
    another number of processes); returns rank 0's figures."""
    work_dir = work_dir or tempfile.mkdtemp(prefix="fsdp2_parity_")
    mp.spawn(parity_worker, args=(world, _free_port(), steps, resume_at, work_dir), nprocs=world, join=True)
    with open(os.path.join(work_dir, "parity.json")) as handle:
        result = json.load(handle)
    if not reshard:
        return result
    reshard_world = 1 if world > 1 else 2  # resume on another number of processes
    mp.spawn(reshard_worker, args=(reshard_world, _free_port(), resume_at, work_dir), nprocs=reshard_world, join=True)
    with open(os.path.join(work_dir, "reshard.json")) as handle:
        result.update(json.load(handle))
    return result


def run_memory(world: int = 2, work_dir: str | None = None) -> dict:
    """The ViT-B-sized step under DDP and FSDP2 (one process group each); per-process bytes and their ratio."""
    work_dir = work_dir or tempfile.mkdtemp(prefix="fsdp2_memory_")
    out = {}
    for strategy in ("ddp", "fsdp2"):
        mp.spawn(memory_worker, args=(world, _free_port(), strategy, work_dir), nprocs=world, join=True)
        with open(os.path.join(work_dir, f"memory_{strategy}.json")) as handle:
            out[strategy] = json.load(handle)
    peak = {s: max(r["peak_bytes"] for r in out[s]) for s in out}
    state = {s: max(r["state_bytes"] for r in out[s]) for s in out}
    return {
        "memory_model": "ViT-B/16-sized student and teacher (width 768, 12 blocks, heads 2048 -> 256), 32 px",
        "memory_parameters": out["ddp"][0]["parameters"],
        "memory_per_process": out,
        "peak_memory_ratio_vs_ddp": round(peak["fsdp2"] / peak["ddp"], 4),
        "state_bytes_ratio_vs_ddp": round(state["fsdp2"] / state["ddp"], 4),
        "rss_peak_mib_ddp": max(r["rss_peak_mib"] for r in out["ddp"]),
        "rss_peak_mib_fsdp2": max(r["rss_peak_mib"] for r in out["fsdp2"]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print one JSON object (the default prints it indented)")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--resume_at", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--no_memory", action="store_true", help="skip the ViT-B memory step (about 40 s)")
    args = parser.parse_args(argv)
    if not 0 < args.resume_at < args.steps:
        raise ValueError(f"--resume_at must be in (0, --steps={args.steps}), got {args.resume_at}")
    start = time.perf_counter()
    result = run_parity(args.steps, args.resume_at, args.processes)
    if not args.no_memory:
        result.update(run_memory(args.processes))
    result["goals_met"] = all(result[k] <= v for k, v in GOALS.items()) and result["export_loads_with_automodel"]
    result["wall_s"] = round(time.perf_counter() - start, 1)
    result["torch"] = torch.__version__
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    sys.exit(0 if main()["goals_met"] else 1)
