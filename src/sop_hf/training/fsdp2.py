"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for large encoders: what differs from DDP, as library functions.

Under DDP every process holds the whole student, teacher, heads, gradients and AdamW state. Under FSDP2 each
parameter is a ``DTensor`` sharded on dim 0 over the processes (``Shard(0)``), gathered block by block for the
forward and backward and re-sharded after; gradients are reduce-scattered, so each process keeps 1/W of the
parameters, gradients and optimizer state. Five things change for SOP, and each is one function here:

1. ``shard_student_teacher``: ``fully_shard`` on every transformer block of the student and the teacher, on both
   encoders, on both heads and on the root, all on one mesh. A teacher parameter and its student parameter have the
   same shape and placement, so their local shards hold the same slice. Memory banks, bank pointers, the step
   counter (and prototypes of other methods) are buffers: FSDP2 leaves buffers unsharded, and they stay replicated
   on purpose. Every rank's loss reads the whole bank (anchors and supports are drawn from all K rows), and the
   bank update is already an all-gather of the new keys in rank order, so sharding the bank would add a gather per
   read and save only K x d floats (65536 x 256 x 4 B = 64 MiB at paper scale).
2. ``update_teacher_sharded``: the teacher EMA on the local shards, with no communication.
3. ``clip_grad_per_param_``: docs/method.md's per-parameter clipping with each parameter's *full* norm (local
   squared sums, one all-reduce for all parameters).
4. ``save_sharded_checkpoint`` / ``load_sharded_checkpoint``: torch distributed checkpoint (DCP) of the model
   (banks included) and optimizer, written into ``.staging`` and renamed whole with a completeness marker, as
   ``SOPTrainer`` does for DDP checkpoints. DCP reshards on load, so a run saved by W processes resumes on another
   number of processes (the RNG files of ranks that did not exist are missing; see docs/distributed.md).
5. ``gather_full_state`` / ``export_full_encoder``: the full unsharded state on rank 0 (CPU), and the exported
   encoder written as a normal ``save_pretrained`` folder that ``AutoModel.from_pretrained`` loads.

``Fsdp2Strategy`` bundles them for ``SOPTrainer`` under ``accelerate launch --use_fsdp --fsdp_version 2`` (on an
accelerator; accelerate enables FSDP only there). ``benchmarks/fsdp2_parity.py`` runs the same functions on CPU
with gloo processes against DDP.

>>> import torch
>>> from sop_hf.training.fsdp2 import clip_grad_per_param_
>>> w = torch.nn.Parameter(torch.ones(4)); w.grad = torch.full((4,), 3.0)
>>> float(clip_grad_per_param_([w], max_norm=1.0)[0]), round(float(w.grad.norm()), 4)
(6.0, 1.0)
"""

import json
import os
import shutil

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from .checkpoints import COMPLETE_MARKER, SHARDED_DIR, STAGING_DIR, sharded_state_problems

EXTRA_STATE = "extra_state_{rank}.pt"  # what the harness keeps per rank besides DCP (its RNG, its step)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a ``DTensor`` (a view, writes go to the parameter); a plain tensor as is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# --- 1. sharding ------------------------------------------------------------------------------------------------------
def shard_student_teacher(model: torch.nn.Module, mesh=None, mp_policy=None, reshard_after_forward: bool = True):
    """``fully_shard`` the student/teacher pair of ``model`` in place and return it.

    Units, innermost first: every block of each encoder's ``layers`` (a ResNet-style encoder without ``layers`` is
    one unit), each encoder, each head (the modules of ``model.ema_pairs``), then the root, which keeps whatever
    parameters are left. Buffers (memory banks, pointers, ``step_count``) are not sharded.

    Args:
        model: A ``StudentTeacherPreTrainedModel`` (``SOPForPreTraining``, ...), on CPU or already on the device.
        mesh: A 1-D ``DeviceMesh`` over all processes (``init_device_mesh("cuda", (world,))``); None takes
            ``fully_shard``'s default (all processes, the current device type).
        mp_policy: ``MixedPrecisionPolicy`` (bf16 compute keeps float32 sharded parameters, so the EMA stays
            float32); None computes in the parameters' dtype.
        reshard_after_forward: Free gathered parameters after each forward (less memory, one more all-gather in
            the backward). False keeps them until the backward: faster, more memory.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
              "mp_policy": mp_policy if mp_policy is not None else MixedPrecisionPolicy()}  # fmt: skip
    pairs = getattr(model, "ema_pairs", None)
    if not pairs:
        raise ValueError(f"{type(model).__name__} has no ema_pairs (student, teacher) to shard")
    for names in pairs:
        for name in names:
            module = getattr(model, name)
            for block in getattr(module, "layers", ()):
                fully_shard(block, **kwargs)
            fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


# --- 2. teacher EMA -----------------------------------------------------------------------------------------------
@torch.no_grad()
def update_teacher_sharded(model: torch.nn.Module, momentum: float) -> None:
    """theta_t <- m * theta_t + (1 - m) * theta_s on each process's shards (no communication).

    Same result as ``model.update_teacher(m)`` on full tensors: teacher and student parameters of a pair share shape,
    mesh and placement, so the local shards hold the same elements (checked; a mismatch raises ``ValueError``).
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if momentum == 1.0:
        return
    teachers, students = model._shared_pairs()
    for t, s in zip(teachers, students):
        if isinstance(t, DTensor) != isinstance(s, DTensor) or (
            isinstance(t, DTensor) and (t.placements != s.placements or t.shape != s.shape)
        ):
            raise ValueError("teacher and student parameters are sharded differently: shard both with "
                             "shard_student_teacher on one mesh")  # fmt: skip
    local_t = [_local(t) for t in teachers]
    torch._foreach_lerp_(local_t, [_local(s).to(t.dtype) for t, s in zip(local_t, students)], 1.0 - momentum)


# --- 3. per-parameter clipping ------------------------------------------------------------------------------------
@torch.no_grad()
def clip_grad_per_param_(parameters, max_norm: float, eps: float = 1e-6) -> list[torch.Tensor]:
    """g <- g * min(1, max_norm / (||g|| + eps)) per parameter, ||g|| the norm of the *whole* gradient.

    A sharded gradient's norm is the square root of its local squared sums summed over the mesh: one all-reduce
    for all parameters (no full gradient is gathered). Returns the full norms (before clipping), a list of scalars.

    Args:
        parameters: The model's parameters (plain or ``DTensor``), the same list on every process; frozen ones are
            skipped, and a trainable one without a gradient here (its shard is empty on this process) counts as 0.
        max_norm: Per-parameter bound (``--clip_grad_per_param``, 3.0 in DINO/SOP); must be > 0.
        eps: Added to the norm before dividing (1e-6 as DINO).
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    # Every rank walks the same parameter list (a rank whose shard of a parameter is empty may hold no gradient for
    # it), so the all-reduced vector lines up; a missing gradient counts as zero.
    params = [p for p in parameters if p.requires_grad]
    if not params or all(p.grad is None for p in params) and not any(_is_sharded(p) for p in params):
        return []
    device = _local(params[0]).device
    zero = torch.zeros((), device=device)
    squares = torch.stack([_local(p.grad).float().pow(2).sum() if p.grad is not None else zero for p in params])
    sharded = [_is_sharded(p) for p in params]
    if any(sharded):
        mesh = next(p.device_mesh for p, s in zip(params, sharded) if s)
        summed = squares.clone()
        dist.all_reduce(summed, group=mesh.get_group())
        squares = torch.where(torch.tensor(sharded, device=device), summed, squares)
    norms = squares.sqrt()  # [n] full norms
    factors = (max_norm / (norms + eps)).clamp(max=1.0)
    with_grad = [i for i, p in enumerate(params) if p.grad is not None]
    if with_grad:
        grads = [_local(params[i].grad) for i in with_grad]
        torch._foreach_mul_(grads, [factors[i].to(g.dtype) for i, g in zip(with_grad, grads)])
    return [norms[i] for i in with_grad]


def _is_sharded(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, DTensor) and any(not placement.is_replicate() for placement in tensor.placements)


# --- 4. sharded checkpoints ---------------------------------------------------------------------------------------
def save_sharded_state(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """DCP-save the model (parameters as shards, buffers once) and the optimizer into ``folder``; collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
    else:
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
    dcp.save(state, checkpoint_id=folder)


def load_sharded_state(folder: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load what ``save_sharded_state`` wrote into a model sharded on any number of processes; collective."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    if optimizer is None:
        state = {"model": get_model_state_dict(model)}
        dcp.load(state, checkpoint_id=folder)
        set_model_state_dict(model, state["model"])
    else:
        model_state, optim_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optim_state}
        dcp.load(state, checkpoint_id=folder)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    if hasattr(model, "_cached_step"):
        model.__dict__["_cached_step"] = None


def finish_staged_checkpoint(run_dir: str, name: str, record: dict) -> str:
    """Rank 0: write the completeness marker (every file's size) into ``run_dir/.staging/name`` and rename the
    folder to ``run_dir/name``; the same scheme as ``SOPTrainer._save_checkpoint``. Returns the final path."""
    staged, final = os.path.join(run_dir, STAGING_DIR, name), os.path.join(run_dir, name)
    files = {}
    for root, _, names in os.walk(staged):
        for file in names:
            path = os.path.join(root, file)
            files[os.path.relpath(path, staged)] = os.path.getsize(path)
    with open(os.path.join(staged, COMPLETE_MARKER), "w") as handle:
        json.dump({**record, "sharded": True, "files": dict(sorted(files.items()))}, handle, indent=1)
    if os.path.exists(final):
        shutil.rmtree(final)
    os.replace(staged, final)
    shutil.rmtree(os.path.join(run_dir, STAGING_DIR), ignore_errors=True)
    return final


def save_sharded_checkpoint(run_dir: str, step: int, model, optimizer=None, extra: dict | None = None) -> str:
    """Write ``run_dir/checkpoint-<step>`` atomically: DCP shards of model and optimizer, ``extra`` per rank
    (``extra_state_<rank>.pt``: RNG, data position), then the marker and the rename on rank 0; collective."""
    name = f"checkpoint-{step}"
    staged = os.path.join(run_dir, STAGING_DIR, name)
    if _rank() == 0 and os.path.exists(staged):
        shutil.rmtree(staged)  # a save cut short before
    _barrier()
    save_sharded_state(os.path.join(staged, SHARDED_DIR), model, optimizer)
    if extra is not None:
        torch.save(extra, os.path.join(staged, EXTRA_STATE.format(rank=_rank())))
    _barrier()  # every rank has written its shard
    world = dist.get_world_size() if dist.is_initialized() else 1
    final = os.path.join(run_dir, name)
    if _rank() == 0:
        finish_staged_checkpoint(run_dir, name, {"global_step": step, "world_size": world})
    _barrier()
    return final


def sharded_checkpoint_problems(path: str) -> list[str]:
    """What a sharded checkpoint lacks (empty when complete): DCP metadata and shards, and every file the marker
    lists, at the size it was written."""
    problems = sharded_state_problems(path)
    marker = os.path.join(path, COMPLETE_MARKER)
    if not os.path.exists(marker):
        return problems + [f"{COMPLETE_MARKER} (the save did not finish)"]
    try:
        with open(marker) as handle:
            record = json.load(handle)
    except (OSError, ValueError) as error:
        return problems + [f"{COMPLETE_MARKER} is unreadable ({error})"]
    for name, size in record.get("files", {}).items():
        file = os.path.join(path, name)
        if not os.path.exists(file) or os.path.getsize(file) != size:
            problems.append(f"{name} (missing or of another size than written)")
    return problems


def is_sharded_checkpoint(path: str) -> bool:
    return os.path.isdir(os.path.join(str(path), SHARDED_DIR))


def load_sharded_checkpoint(path: str, model, optimizer=None) -> dict | None:
    """Check ``path`` is complete (``ValueError`` listing what is missing), load model and optimizer, and return
    this rank's ``extra`` (None when the checkpoint has none for this rank, e.g. after a change of process count)."""
    problems = sharded_checkpoint_problems(str(path))
    if problems:
        raise ValueError(f"cannot resume exactly from {path}: missing or broken: {'; '.join(problems)}")
    load_sharded_state(os.path.join(path, SHARDED_DIR), model, optimizer)
    extra = os.path.join(path, EXTRA_STATE.format(rank=_rank()))
    return torch.load(extra, weights_only=False) if os.path.exists(extra) else None


# --- 5. full-state export -----------------------------------------------------------------------------------------
def gather_full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full unsharded state dict on rank 0, on CPU (other ranks get ``{}``); collective. Peak host memory on
    rank 0 is one full copy of the model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def encoder_states(model: torch.nn.Module, full_state: dict[str, torch.Tensor]) -> dict[str, dict]:
    """{"teacher": ..., "student": ...}: each encoder's part of a full state dict, as ``export_encoder`` loads it
    (prefix stripped, no mask token)."""
    names = {"teacher": "teacher", "student": model.base_model_prefix}
    states = {}
    for which, name in names.items():
        prefix = name + "."
        states[which] = {k[len(prefix):]: v for k, v in full_state.items()
                         if k.startswith(prefix) and not k.endswith("mask_token")}  # fmt: skip
    return states


def export_full_encoder(model: torch.nn.Module, which: str = "teacher", output_dir: str | None = None):
    """Gather the full state (collective) and, on rank 0, build the exported encoder (``build_export_encoder``)
    holding the ``which`` encoder's full weights; with ``output_dir``, ``save_pretrained`` it there.

    Returns the encoder on rank 0 and None elsewhere.
    """
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    full = gather_full_state(model)
    if _rank() != 0:
        return None
    encoder = model.build_export_encoder()
    state = encoder_states(model, full)[which]
    encoder.load_state_dict(state, strict=True)
    encoder = encoder.to(next(iter(state.values())).dtype).eval()
    if output_dir is not None:
        encoder.save_pretrained(output_dir)
    return encoder


# --- the trainer's side -------------------------------------------------------------------------------------------
class Fsdp2Strategy:
    """What ``SOPTrainer`` calls under accelerate's FSDP2 instead of its DDP code (sharding, EMA, clipping,
    checkpoint model/optimizer state, export). Built by the trainer when accelerate's FSDP plugin has
    ``fsdp_version == 2``; the trainer keeps ``self.sharding = None`` for one device and DDP.

    Args:
        mesh: The 1-D device mesh of all processes.
        mp_policy: accelerate's ``MixedPrecisionPolicy`` (``fsdp_plugin.mixed_precision_policy``) or None.
        reshard_after_forward: accelerate's ``fsdp_plugin.reshard_after_forward``.
    """

    def __init__(self, mesh=None, mp_policy=None, reshard_after_forward: bool = True):
        self.mesh, self.mp_policy, self.reshard_after_forward = mesh, mp_policy, reshard_after_forward
        self.gathered_encoders: dict[str, dict] | None = None

    @classmethod
    def from_accelerator(cls, accelerator) -> "Fsdp2Strategy":
        from torch.distributed.device_mesh import init_device_mesh

        plugin = accelerator.state.fsdp_plugin
        mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
        policy = getattr(plugin, "mixed_precision_policy", None)
        return cls(mesh, policy, getattr(plugin, "reshard_after_forward", True))

    def shard(self, model):
        """Shard before the optimizer is built: accelerate's prepare leaves an ``FSDPModule`` as it is."""
        return shard_student_teacher(model, self.mesh, self.mp_policy, self.reshard_after_forward)

    def update_teacher(self, model, momentum: float) -> None:
        update_teacher_sharded(model, momentum)

    def clip(self, model, max_norm: float) -> None:
        if max_norm > 0:
            clip_grad_per_param_(model.parameters(), max_norm)

    def callbacks(self) -> list:
        """The per-parameter clipping and teacher EMA callbacks, for sharded parameters."""
        from transformers import TrainerCallback

        from .callbacks import teacher_momentum

        strategy = self

        class ShardedClipCallback(TrainerCallback):
            def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
                if model is not None:
                    strategy.clip(model, getattr(args, "clip_grad_per_param", 0.0))

        class ShardedTeacherEMACallback(TrainerCallback):
            def on_step_end(self, args, state, control, model=None, **kwargs):
                if model is not None and hasattr(model, "_shared_pairs"):
                    strategy.update_teacher(model, teacher_momentum(args, state.global_step - 1, state.max_steps))

        return [ShardedClipCallback(), ShardedTeacherEMACallback()]

    def any_nonfinite(self, tensors) -> torch.Tensor:
        """A device bool, the same on every rank: is any local shard of ``tensors`` non-finite? (one all-reduce)."""
        tensors = [_local(t) for t in tensors if t is not None]
        bad = torch.zeros((), dtype=torch.float32, device=tensors[0].device if tensors else "cpu")
        if tensors:
            bad = (~torch.isfinite(torch.stack(torch._foreach_norm(tensors)))).any().float()
        dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bad > 0

    def nonfinite_state(self, model, optimizer) -> list[str]:
        """Names of model / optimizer tensors with a non-finite value on any rank (before a save; one host sync and
        one gather of names: ranks may hold different optimizer states, e.g. none for a parameter whose shard is
        empty there)."""
        named = [(n, t) for n, t in model.state_dict().items() if t.is_floating_point()]
        if optimizer is not None:
            named += [(f"optimizer state {k}", t) for state in optimizer.state.values() for k, t in state.items()
                      if isinstance(t, torch.Tensor) and t.is_floating_point()]  # fmt: skip
        local = []
        if named:
            flags = torch.stack([(~torch.isfinite(_local(t))).any() for _, t in named]).tolist()
            local = [name for (name, _), bad in zip(named, flags) if bad]
        gathered = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        return list(dict.fromkeys(name for names in gathered for name in names))

    def save_state(self, output_dir: str, model, optimizer) -> None:
        """Model (banks included) and optimizer as DCP shards into ``output_dir/sharded_state``; and, on rank 0,
        the encoders' full weights for ``export_encoder`` (the main job exports at saves and at the end)."""
        save_sharded_state(os.path.join(output_dir, SHARDED_DIR), model, optimizer)
        self.refresh_export(model)

    def load_state(self, checkpoint: str, model, optimizer=None) -> None:
        problems = sharded_checkpoint_problems(str(checkpoint))
        if problems:
            raise ValueError(f"cannot resume exactly from {checkpoint}: missing or broken: {'; '.join(problems)}")
        load_sharded_state(os.path.join(checkpoint, SHARDED_DIR), model, optimizer)

    def refresh_export(self, model) -> None:
        """Gather the full state (collective) and keep, on rank 0, both encoders' full weights on the model, where
        ``export_encoder`` reads them (``gathered_encoder_states``)."""
        full = gather_full_state(model)
        if _rank() == 0:
            model.__dict__["gathered_encoder_states"] = encoder_states(model, full)


__all__ = [
    "Fsdp2Strategy",
    "clip_grad_per_param_",
    "export_full_encoder",
    "gather_full_state",
    "is_sharded_checkpoint",
    "load_sharded_checkpoint",
    "save_sharded_checkpoint",
    "shard_student_teacher",
    "sharded_checkpoint_problems",
    "sharded_state_problems",
    "update_teacher_sharded",
]
