"""SOP and SOP-MIM losses as tensor functions (docs/method.md §6-§9), plus the loss modules of a training step.

View pairing, the float32 helpers and the cross-entropy shared with the lineage live in ``views.py``; KoLeo in
``koleo.py``.

Public functional API (names and signatures are stable):

- ``build_support_prototypes(memory, anchor_idx, num_support, smoothing)`` -> ``SupportPrototypes``
- ``prototype_assignments(embeddings, prototypes, temperature)`` -> probabilities over prototypes
- ``multi_view_cross_entropy(student_probs, teacher_probs)`` -> DINO-paired cross-entropy
- ``masked_patch_cross_entropy(student_probs, teacher_probs, masks)`` -> iBOT-normalised patch cross-entropy

All maths runs in float32 with autocast disabled (float64 inputs stay float64). Cross-entropies use
``-q * log(max(p, LOG_CLAMP))``. Gradients reach only the student embeddings: memory rows, supports, votes and
teacher probabilities are treated as constants.

Paper: Self-Organizing Visual Prototypes, arXiv 2505.21533; reference code github.com/sthalles/sop.

>>> import torch
>>> memory = torch.nn.functional.normalize(torch.randn(256, 16), dim=1)
>>> protos = build_support_prototypes(memory, torch.arange(8), num_support=3, smoothing=0.1)
>>> probs = prototype_assignments(torch.nn.functional.normalize(torch.randn(4, 16), dim=1), protos, 0.1)
>>> tuple(probs.shape), bool(torch.allclose(probs.sum(-1), torch.ones(4)))
((4, 8), True)
"""

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .views import (
    log_clamped,
    math_dtype,
    mean_assignment_entropy,
    multi_view_cross_entropy,
    no_autocast,
)

NEIGHBOUR_CHUNK = 256  # anchors per block of the neighbour search: bounds its memory to chunk x K scores.
ASSIGN_CHUNK = 512  # rows per block of the assignment maths: bounds its transient memory to chunk x P'E values.


@dataclass
class SupportPrototypes:
    """``P'`` self-organizing prototypes of ``E`` support embeddings each (the anchor is the last one).

    Attributes:
        supports: [P', E, d] unit-norm support embeddings.
        votes: [P', E] each support's vote ``sigma`` for its own prototype, in [0, 1]; the remainder ``1 - sigma`` is
            spread uniformly over the other ``P' - 1`` prototypes.
    """

    supports: torch.Tensor
    votes: torch.Tensor

    @property
    def num_prototypes(self) -> int:
        return self.supports.shape[0]

    @property
    def num_support(self) -> int:
        return self.supports.shape[1]

    def dense_votes(self) -> torch.Tensor:
        """The dense vote matrix Y, [P'*E, P'] (row r = i*E + e). For tests and benchmarks only: O(P'^2 E) memory."""
        num_protos, num_support = self.votes.shape
        sigma = self.votes.reshape(-1, 1)  # [P'E, 1]
        owner = torch.arange(num_protos, device=sigma.device).repeat_interleave(num_support)  # [P'E]
        own = nn.functional.one_hot(owner, num_protos).to(sigma.dtype)  # [P'E, P']
        return own * sigma + (1 - own) * (1 - sigma) / (num_protos - 1)


@torch.no_grad()
def build_support_prototypes(
    memory: torch.Tensor,
    anchor_idx: torch.Tensor,
    num_support: int,
    smoothing: float,
    exclude_idx: torch.Tensor | None = None,
    search_dtype: torch.dtype | None = None,
) -> SupportPrototypes:
    """Build one prototype per anchor from the anchor and its ``num_support - 1`` nearest memory rows.

    Neighbours are searched among the rows not in ``anchor_idx`` (nor in ``exclude_idx``), so an anchor is never its
    own or another anchor's neighbour; prototypes may share neighbours. Each support's vote is its cosine to the
    anchor (the anchor's own vote is ``1 - smoothing``), clamped to [0, 1]. ``num_support=1`` is plain label
    smoothing and runs no neighbour search.

    Args:
        memory: [K, d] unit-norm rows (a detached bank read).
        anchor_idx: [P] long, distinct row indices; P >= 2.
        num_support: E >= 1, supports per prototype (anchor included).
        smoothing: epsilon in [0, 1].
        exclude_idx: Optional extra rows kept out of the neighbour pool (the anchors drawn but not kept).
        search_dtype: dtype of the similarity search (e.g. ``torch.bfloat16`` on GPU); the chosen neighbours' votes
            are recomputed in the memory's dtype. Near-ties may then pick other neighbours than a float32 search.

    Returns:
        ``SupportPrototypes`` with supports [P, E, d] and votes [P, E].
    """
    if memory.ndim != 2:
        raise ValueError(f"memory must be [K, d], got shape {tuple(memory.shape)}")
    if anchor_idx.ndim != 1 or anchor_idx.dtype != torch.long:
        raise ValueError(
            f"anchor_idx must be a 1-D long tensor, got shape {tuple(anchor_idx.shape)}, {anchor_idx.dtype}"
        )
    num_rows = memory.shape[0]
    num_anchors = anchor_idx.shape[0]
    if num_anchors < 2:
        raise ValueError(f"anchor_idx must hold at least 2 anchors (P' >= 2), got {num_anchors}")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
    num_excluded = num_anchors + (0 if exclude_idx is None else exclude_idx.numel())
    if num_support < 1 or num_support - 1 > num_rows - num_excluded:
        raise ValueError(
            f"num_support must be in [1, {num_rows - num_excluded + 1}] (1 + rows left after removing anchors), "
            f"got {num_support}"
        )
    memory = memory.detach()
    anchors = memory[anchor_idx]  # [P, d]
    own_vote = anchors.new_full((num_anchors, 1), 1.0 - smoothing)  # [P, 1]
    if num_support == 1:
        return SupportPrototypes(supports=anchors[:, None], votes=own_vote.clamp(0.0, 1.0))

    excluded = anchor_idx if exclude_idx is None else torch.cat((anchor_idx, exclude_idx.to(anchor_idx.device)))
    bank = memory if search_dtype is None else memory.to(search_dtype)
    neighbour_idx = []
    for chunk in anchors.split(NEIGHBOUR_CHUNK):
        scores = chunk.to(bank.dtype) @ bank.T  # [c, K]
        scores.index_fill_(1, excluded, float("-inf"))
        neighbour_idx.append(scores.topk(num_support - 1, dim=1).indices)  # [c, E-1]
    neighbour_idx = torch.cat(neighbour_idx)  # [P, E-1]
    neighbours = memory[neighbour_idx]  # [P, E-1, d]
    sigma = torch.einsum("pkd,pd->pk", neighbours, anchors)  # [P, E-1], recomputed in the memory's dtype
    supports = torch.cat((neighbours, anchors[:, None]), dim=1)  # [P, E, d], anchor last
    votes = torch.cat((sigma, own_vote), dim=1).clamp(0.0, 1.0)  # [P, E]
    return SupportPrototypes(supports=supports, votes=votes)


def _aggregate_votes(probs: torch.Tensor, votes: torch.Tensor) -> torch.Tensor:
    """Structured identity (docs/method.md §7): [N, P', E] support probabilities -> [N, P'] prototype probabilities.

    alpha = sum_e s*sigma, beta = sum_e s*(1-sigma), p = alpha + max(0, sum_c beta_c - beta) / (P' - 1).
    """
    num_protos = probs.shape[1]
    alpha = (probs * votes).sum(-1)  # [N, P']
    beta = probs.sum(-1) - alpha  # [N, P']
    return alpha + (beta.sum(-1, keepdim=True) - beta).clamp_min(0.0) / (num_protos - 1)


class _SupportAssignment(torch.autograd.Function):
    """p = votes-aggregated softmax(z @ D.T / tau) with a recomputing, row-chunked backward.

    Forward keeps only z, D, the votes and the per-row log-sum-exp (O(N d + P'E d) saved memory); backward
    recomputes the support probabilities s = exp(z D^T / tau - lse) (one extra matmul) instead of holding the
    [N, P'E] softmax of every task until the backward of the step. Rows are processed ``ASSIGN_CHUNK`` at a time, so
    the transient memory is O(ASSIGN_CHUNK x P'E). For upstream g = dL/dp [N, P'] and h = (sum_c g_c - g) / (P' - 1):
    dL/ds[c, e] = sigma[c, e] * (g_c - h_c) + h_c; dL/da = s * (dL/ds - <s, dL/ds>); dL/dz = dL/da @ D / tau.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, supports: torch.Tensor, votes: torch.Tensor, temperature: float):
        num_protos, num_support = votes.shape
        outputs, lses = [], []
        for chunk in z.split(ASSIGN_CHUNK):
            logits = chunk @ supports.T / temperature  # [n, P'E]
            lse = logits.logsumexp(dim=-1, keepdim=True)  # [n, 1]
            probs = logits.sub_(lse).exp_().view(-1, num_protos, num_support)  # [n, P', E]
            outputs.append(_aggregate_votes(probs, votes))
            lses.append(lse)
        ctx.save_for_backward(z, supports, votes, torch.cat(lses))
        ctx.temperature = temperature
        return torch.cat(outputs)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        z, supports, votes, lse = ctx.saved_tensors
        num_protos, num_support = votes.shape
        grads = []
        for start in range(0, z.shape[0], ASSIGN_CHUNK):
            rows = slice(start, start + ASSIGN_CHUNK)
            logits = z[rows] @ supports.T / ctx.temperature  # [n, P'E]
            probs = logits.sub_(lse[rows]).exp_().view(-1, num_protos, num_support)  # [n, P', E]
            g = grad[rows]  # [n, P']
            other = (g.sum(-1, keepdim=True) - g) / (num_protos - 1)  # [n, P']
            grad_probs = votes * (g - other)[..., None] + other[..., None]  # [n, P', E]
            inner = (probs * grad_probs).sum(dim=(1, 2), keepdim=True)  # [n, 1, 1]
            grad_logits = grad_probs.sub_(inner).mul_(probs).view(probs.shape[0], -1)  # [n, P'E]
            grads.append(grad_logits @ supports / ctx.temperature)
        return torch.cat(grads), None, None, None


def prototype_assignments(embeddings: torch.Tensor, prototypes: SupportPrototypes, temperature: float) -> torch.Tensor:
    """Soft assignments of embeddings to prototypes.

    Softmax of ``embeddings @ supports.T / temperature`` over all ``P' * E`` supports jointly, then each support's
    mass is split by its votes (the structured identity of docs/method.md §7; the dense (P'E) x P' vote matrix is
    never built). Rows sum to 1.

    Args:
        embeddings: [..., d]; unit-norm head outputs.
        prototypes: From ``build_support_prototypes``; treated as constants.
        temperature: > 0. Lower is sharper (student 0.1, teacher 0.04).

    Returns:
        [..., P'] probabilities in float32 (float64 for float64 embeddings).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    num_protos, num_support, dim = prototypes.supports.shape
    if embeddings.shape[-1] != dim:
        raise ValueError(f"embeddings have width {embeddings.shape[-1]}, prototypes {dim}")
    if num_protos < 2:
        raise ValueError(f"at least 2 prototypes are needed, got {num_protos}")
    dtype = math_dtype(embeddings)
    lead_shape = embeddings.shape[:-1]
    with no_autocast(embeddings):
        flat = embeddings.reshape(-1, dim).to(dtype)  # [N, d]
        supports = prototypes.supports.detach().to(device=flat.device, dtype=dtype).reshape(-1, dim)  # [P'E, d]
        votes = prototypes.votes.detach().to(device=flat.device, dtype=dtype)  # [P', E]
        probs = _SupportAssignment.apply(flat, supports, votes, float(temperature))  # [N, P']
    return probs.reshape(*lead_shape, num_protos)


def masked_patch_cross_entropy(
    student_probs: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Same-view patch cross-entropy over masked tokens, iBOT normalisation.

    For each view: per image, the sum over masked tokens of ``-sum_c q log p`` divided by ``max(1, #masked)``; the
    mean over images (an image with no masked token adds 0 but still counts), then the mean over views.

    Args:
        student_probs: views of [B, L, P] (from the masked crops).
        teacher_probs: the same views of [B, L, P] (from the unmasked crops; constants).
        masks: the same views of [B, L] bool.
    """
    if not (len(student_probs) == len(teacher_probs) == len(masks)) or len(masks) == 0:
        raise ValueError(
            "masked_patch_cross_entropy needs the same non-zero number of student, teacher and mask views, got "
            f"{len(student_probs)}, {len(teacher_probs)}, {len(masks)}"
        )
    terms = []
    with no_autocast(student_probs[0]):
        for p, q, m in zip(student_probs, teacher_probs, masks):
            if p.shape != q.shape or p.shape[:2] != m.shape:
                raise ValueError(
                    f"shape mismatch: student {tuple(p.shape)}, teacher {tuple(q.shape)}, mask {tuple(m.shape)}"
                )
            log_p = log_clamped(p)  # [B, L, P]
            token_ce = -(q.detach().to(log_p.dtype) * log_p).sum(-1)  # [B, L]
            m = m.to(log_p.dtype)
            per_image = (token_ce * m).sum(-1) / m.sum(-1).clamp_min(1.0)  # [B]
            terms.append(per_image.mean())
    return torch.stack(terms).mean()


SEARCH_DTYPES = {"auto": None, "float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_search_dtype(search_dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """``"auto"`` -> bfloat16 on CUDA, None (the memory's float32) elsewhere; names -> dtypes."""
    if search_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if isinstance(search_dtype, str):
        return SEARCH_DTYPES[search_dtype]
    return search_dtype


def draw_anchor_indices(
    memory_size: int, num_anchors: int, num_kept: int, generator: torch.Generator | None, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform anchors for one task: the ``num_kept`` prototypes (random order) and the drawn-but-dropped rest.

    Both come from one permutation, so keeping a uniformly random subset of the drawn anchors (library decision
    17a) costs nothing. Returns ``(kept [num_kept], dropped [num_anchors - num_kept])`` on ``device``.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(memory_size, generator=generator, device=gen_device)[:num_anchors].to(device)
    return perm[:num_kept], perm[num_kept:]


@dataclass
class SOPLossOutput:
    """A loss and the entropy of the teacher's batch-mean assignment (collapse monitor; compare with ln P')."""

    loss: torch.Tensor
    teacher_entropy: torch.Tensor


class SOPClassLoss(nn.Module):
    """SOP [CLS] loss (docs/method.md §8): T tasks, each with fresh anchors, averaged.

    Args:
        num_anchors: P anchors drawn per task.
        num_support: E supports per prototype (anchor + E-1 neighbours).
        num_tasks: T independent tasks per step.
        smoothing: epsilon; the anchor's own vote is 1 - epsilon.
        keep_fraction: fraction of the drawn anchors kept as prototypes when E > 1 (all are kept when E = 1).
        search_dtype: dtype of the neighbour search: "auto" (bfloat16 on CUDA, float32 elsewhere), "float32",
            "bfloat16" (fast on GPUs and on CPUs with AVX512-BF16/AMX) or a ``torch.dtype``. Votes are recomputed in
            float32 from the chosen rows either way.
    """

    def __init__(
        self,
        num_anchors: int,
        num_support: int,
        num_tasks: int,
        smoothing: float,
        keep_fraction: float = 0.5,
        search_dtype: str | torch.dtype | None = "auto",
    ):
        super().__init__()
        self.num_anchors = num_anchors
        self.num_support = num_support
        self.num_tasks = num_tasks
        self.smoothing = smoothing
        self.num_kept = num_anchors if num_support == 1 else int(keep_fraction * num_anchors)
        if isinstance(search_dtype, str) and search_dtype not in SEARCH_DTYPES:
            raise ValueError(f"search_dtype must be one of {sorted(SEARCH_DTYPES)}, got {search_dtype!r}")
        self.search_dtype = search_dtype
        if self.num_kept < 2:
            raise ValueError(f"keep_fraction * num_anchors must keep at least 2 prototypes, got {self.num_kept}")

    def forward(
        self,
        student_embeddings: torch.Tensor,
        teacher_embeddings: torch.Tensor,
        memory: torch.Tensor,
        student_temp: float,
        teacher_temp: float,
        num_global_views: int = 2,
        generator: torch.Generator | None = None,
        anchors: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> SOPLossOutput:
        """Args: student_embeddings [V*B, d] view-major (globals first), teacher_embeddings [G*B, d] for the G global
        views, memory [K, d] (a detached bank read), the two temperatures and the anchor generator; or ``anchors``
        from ``draw_anchors`` (then no generator runs inside: the loss compiles without graph breaks)."""
        batch = teacher_embeddings.shape[0] // num_global_views
        if batch * num_global_views != teacher_embeddings.shape[0] or student_embeddings.shape[0] % batch:
            raise ValueError(
                f"teacher rows ({teacher_embeddings.shape[0]}) must be {num_global_views} views of B and student rows "
                f"({student_embeddings.shape[0]}) a multiple of B"
            )
        if anchors is None:
            anchors = self.draw_anchors(memory.shape[0], generator, memory.device)
        losses, entropies = [], []
        for kept, dropped in anchors:
            protos = build_support_prototypes(
                memory, kept, self.num_support, self.smoothing, exclude_idx=dropped,
                search_dtype=resolve_search_dtype(self.search_dtype, memory.device),
            )  # fmt: skip
            p_student = prototype_assignments(student_embeddings, protos, student_temp)  # [V*B, P']
            with torch.no_grad():
                p_teacher = prototype_assignments(teacher_embeddings, protos, teacher_temp)  # [G*B, P']
            losses.append(multi_view_cross_entropy(p_student.split(batch), p_teacher.split(batch)))
            entropies.append(mean_assignment_entropy(p_teacher))
        return SOPLossOutput(torch.stack(losses).mean(), torch.stack(entropies).mean())

    def draw_anchors(
        self, memory_size: int, generator: torch.Generator | None, device: torch.device
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The (kept [P'], dropped [P - P']) anchor indices of each of the T tasks of one step."""
        return [
            draw_anchor_indices(memory_size, self.num_anchors, self.num_kept, generator, device)
            for _ in range(self.num_tasks)
        ]


class SOPPatchLoss(nn.Module):
    """SOP-MIM patch loss (docs/method.md §9): single-support prototypes from the patch memory, same-view pairs.

    Args:
        num_anchors: patch anchors per task (512).
        num_tasks: tasks per step (1).
        smoothing: epsilon of the label smoothing.
    """

    def __init__(self, num_anchors: int, num_tasks: int, smoothing: float):
        super().__init__()
        self.num_anchors = num_anchors
        self.num_tasks = num_tasks
        self.smoothing = smoothing

    def forward(
        self,
        student_patches: torch.Tensor,
        teacher_patches: torch.Tensor,
        masks: torch.Tensor,
        memory: torch.Tensor,
        student_temp: float,
        teacher_temp: float,
        num_views: int = 2,
        generator: torch.Generator | None = None,
        anchors: list[torch.Tensor] | None = None,
    ) -> SOPLossOutput:
        """Args: student_patches / teacher_patches [G*B, L, d] view-major, masks [G*B, L] bool, memory [K_p, d], and
        the anchor generator or ``anchors`` from ``draw_anchors`` (no generator inside: no graph break)."""
        if anchors is None:
            anchors = self.draw_anchors(memory.shape[0], generator, memory.device)
        losses, entropies = [], []
        for kept in anchors:
            protos = build_support_prototypes(memory, kept, 1, self.smoothing)
            p_student = prototype_assignments(student_patches, protos, student_temp)  # [G*B, L, P]
            with torch.no_grad():
                p_teacher = prototype_assignments(teacher_patches, protos, teacher_temp)
            losses.append(
                masked_patch_cross_entropy(
                    p_student.chunk(num_views), p_teacher.chunk(num_views), masks.chunk(num_views)
                )
            )
            entropies.append(mean_assignment_entropy(p_teacher))
        return SOPLossOutput(torch.stack(losses).mean(), torch.stack(entropies).mean())

    def draw_anchors(self, memory_size: int, generator: torch.Generator | None, device: torch.device) -> list:
        """The anchor indices [P] of each task of one step."""
        return [
            draw_anchor_indices(memory_size, self.num_anchors, self.num_anchors, generator, device)[0]
            for _ in range(self.num_tasks)
        ]
