"""The core every pretraining method shares: a student and its EMA teacher, seeded random streams, encoder export.

A method module (``sop.py``, ``massl.py``, ``carp.py``, ``carl.py``) adds its heads, banks or prototypes and its loss
on top of ``StudentTeacherPreTrainedModel`` (docs/method.md §2, §4 and §11).
"""

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import PreTrainedConfig
from transformers import initialization as init

from ..configuration_sop import SOPConfig
from ..losses.koleo import koleo_loss
from ..modeling_sop import SOPModel, SOPPreTrainedModel
from ..modules.distributed import get_world_size
from ..modules.memory_bank import MemoryBank
from ..seeding import stream_seed

NUM_GLOBAL_VIEWS = 2  # SOP, like DINO/iBOT, pairs two global views; the teacher sees only these.


def exported_vit(config: SOPConfig) -> SOPModel:
    """A fresh ``SOPModel`` of ``config``'s architecture without mask token or SOP-MIM weight: the exported encoder,
    to receive the trained weights (``config`` may be a pretraining config: only ``SOPConfig``'s fields are read)."""
    fields = set(SOPConfig.__dataclass_fields__) - {"model_type", "architectures", "auto_map"}
    values = {k: v for k, v in config.to_dict().items() if k in fields}
    return SOPModel(SOPConfig(**{**values, "use_mask_token": False, "mim_loss_weight": 0.0}))


@dataclass
class ViewEmbeddings:
    """Head outputs of one step's views (the forward prologue every method shares).

    Attributes:
        student: [V*B, d] student head outputs of the [CLS] (or pooled) feature, view-major (globals, then locals).
        teacher: [2*B, d] teacher head outputs of the global views (no gradient).
        student_patches: [2*B, L, d] student head outputs of the (masked) global crops' patch tokens ([M, d], the
            masked ones only, with ``masked_patches_only``), or None.
        teacher_patches: [2*B, L, d] teacher head outputs of the unmasked global crops' patch tokens, or None.
        batch: B, images per view.
    """

    student: torch.Tensor
    teacher: torch.Tensor
    student_patches: torch.Tensor | None
    teacher_patches: torch.Tensor | None
    batch: int


def check_views(pixel_values: torch.Tensor, local_pixel_values: torch.Tensor | None) -> int:
    """B, the images per view, after checking the view-major layout (a ``ValueError`` before any compute)."""
    num_images = pixel_values.shape[0]
    if num_images % NUM_GLOBAL_VIEWS or num_images < 2 * NUM_GLOBAL_VIEWS:
        raise ValueError(
            f"pixel_values must hold {NUM_GLOBAL_VIEWS} global views of B >= 2 images (view-major), got "
            f"{num_images} images"
        )
    batch = num_images // NUM_GLOBAL_VIEWS
    if local_pixel_values is not None and local_pixel_values.shape[0] % batch:
        raise ValueError(f"local_pixel_values rows ({local_pixel_values.shape[0]}) must be a multiple of B={batch}")
    return batch


class StudentTeacherPreTrainedModel(SOPPreTrainedModel):
    """What every self-distillation method here shares: an EMA teacher of the student, seeded random streams and
    encoder export.

    Subclasses hold the student encoder under ``base_model_prefix`` (``sop`` for SOP, ``student`` for the lineage),
    the teacher encoder as ``teacher``, a persistent ``step_count`` buffer, and define ``ema_pairs`` ((student module,
    teacher module) attribute names), ``build_export_encoder`` and ``probe_assignments`` (what the training monitor
    measures).
    """

    ema_pairs: tuple[tuple[str, str], ...] = (("sop", "teacher"), ("head", "teacher_head"))
    # Memory indicators the model reports: {logged name: MemoryBank attribute}; ``bank_fill`` is the fraction of the
    # bank's rows written so far (1 once every random initial row is replaced).
    logged_banks: dict[str, str] = {}
    # The student head runs once over all views' pooled features (a BatchNorm head normalises them together) or
    # per group (global [CLS] / tokens, then locals: SOP's order, kept so its reference figures stay bit-identical).
    head_over_all_views: bool = True

    def _student_encoder(self) -> torch.nn.Module:
        return self._modules[self.base_model_prefix]

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, MemoryBank):
            rows = torch.nn.functional.normalize(torch.randn(module.size, module.dim, device=module.rows.device), dim=1)
            init.copy_(module.rows, rows)
            init.zeros_(module.ptr)
        elif module is self and hasattr(self, "step_count"):
            init.zeros_(self.step_count)
            self.__dict__["_cached_step"] = None

    def teacher_parameters(self) -> list[torch.nn.Parameter]:
        return [p for _, teacher in self.ema_pairs for p in getattr(self, teacher).parameters()]

    def _shared_pairs(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(teacher, student) parameters shared by name; student-only ones (the mask token) are left out."""
        teachers, students = [], []
        for student_name, teacher_name in self.ema_pairs:
            student = dict(getattr(self, student_name).named_parameters())
            for name, param in getattr(self, teacher_name).named_parameters():
                if name in student:
                    teachers.append(param)
                    students.append(student[name])
        return teachers, students

    def freeze_and_sync_teacher(self) -> None:
        """Call at the end of ``__init__``: no gradient for the teacher, which starts as a copy of the student."""
        for param in self.teacher_parameters():
            param.requires_grad_(False)
        if not next(self._student_encoder().parameters()).is_meta:
            self.copy_student_to_teacher()

    @torch.no_grad()
    def copy_student_to_teacher(self) -> None:
        teacher, student = self._shared_pairs()
        torch._foreach_copy_(teacher, [s.detach() for s in student])

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA over the shared parameters: theta_t <- m * theta_t + (1 - m) * theta_s. Call after the optimizer step."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        if momentum == 1.0:
            return
        teacher, student = self._shared_pairs()
        torch._foreach_lerp_(teacher, [s.detach().to(t.dtype) for t, s in zip(teacher, student)], 1.0 - momentum)

    def _host_step(self) -> int:
        """``step_count`` as a Python int, read from the buffer once after construction or a load (one host sync)
        and counted on the host afterwards, so the training step never waits on the device."""
        cached = self.__dict__.get("_cached_step")
        if cached is None:
            cached = int(self.step_count)
            self.__dict__["_cached_step"] = cached
        return cached

    def _advance_step(self) -> None:
        """Count one training forward (the anchor streams' step) on the device buffer and the host mirror."""
        step = self._host_step()
        self.step_count += 1
        self.__dict__["_cached_step"] = step + 1

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self.__dict__["_cached_step"] = None  # the buffer may change: read it again at the next step
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _generator(self, stream: int, rank: int = 0) -> torch.Generator:
        generator = torch.Generator(device="cpu")
        generator.manual_seed(stream_seed(self.anchor_seed, self._host_step(), stream, rank))
        return generator

    def encode_views(
        self,
        pixel_values: torch.Tensor,
        local_pixel_values: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        patch_tokens: bool = False,
        masked_patches_only: bool = False,
    ) -> ViewEmbeddings:
        """The forward prologue: the teacher encodes the unmasked global crops, the student the (masked) global crops
        and the local crops; the heads map [CLS] (pooled) features and, with ``patch_tokens``, the global crops'
        patch tokens. Shapes in ``ViewEmbeddings``; the encoders' ``pooler_output`` is flattened (a ResNet's
        [B, D, 1, 1] global pool). ``masked_patches_only`` (with ``patch_tokens`` and masks): the student head maps
        only the M masked patch tokens, ``student_patches`` is [M, d] in ``bool_masked_pos`` order (iBOT: a loss on
        masked patches only needs no more; the teacher still maps every patch)."""
        batch = check_views(pixel_values, local_pixel_values)
        student = self._student_encoder()
        has_locals = local_pixel_values is not None and local_pixel_values.shape[0] > 0
        with torch.no_grad():
            t_out = self.teacher(pixel_values)
            if patch_tokens:
                t_emb = self.teacher_head(t_out.last_hidden_state)  # [2B, 1+L, d]
                t_cls, t_patches = t_emb[:, 0], t_emb[:, 1:]
            else:
                t_cls, t_patches = self.teacher_head(t_out.pooler_output.flatten(1)), None  # [2B, d]
        masks = bool_masked_pos if patch_tokens else None
        s_out = student(pixel_values, bool_masked_pos=masks) if masks is not None else student(pixel_values)
        s_patches = None
        if patch_tokens and masked_patches_only and masks is not None:
            tokens = s_out.last_hidden_state  # [2B, 1+L, D]
            rows = self.head(torch.cat((tokens[:, 0], tokens[:, 1:][masks])))  # [2B + M, d]
            s_cls, s_patches = rows[: tokens.shape[0]], rows[tokens.shape[0] :]  # [2B, d], [M, d]
        elif patch_tokens:
            s_emb = self.head(s_out.last_hidden_state)  # [2B, 1+L, d]
            s_cls, s_patches = s_emb[:, 0], s_emb[:, 1:]
        elif not self.head_over_all_views:
            s_cls = self.head(s_out.pooler_output.flatten(1)[:, None])[:, 0]  # [2B, d]
        if patch_tokens or not self.head_over_all_views:
            if has_locals:
                s_local = self.head(student(local_pixel_values).pooler_output.flatten(1))  # [nB, d]
                s_cls = torch.cat((s_cls, s_local))  # [V*B, d]
        else:
            s_feat = s_out.pooler_output.flatten(1)  # [2B, D]
            if has_locals:
                s_feat = torch.cat((s_feat, student(local_pixel_values).pooler_output.flatten(1)))  # [V*B, D]
            s_cls = self.head(s_feat)  # [V*B, d]
        return ViewEmbeddings(s_cls, t_cls, s_patches, t_patches, batch)

    def koleo_term(self, student: torch.Tensor, batch: int, normalize: bool = True) -> torch.Tensor:
        """KoLeo of the student's global-view head outputs [V*B, d] (unit rows; ``normalize=False`` when the head
        already normalises), averaged over the global views."""
        globals_ = student[: NUM_GLOBAL_VIEWS * batch]  # [2B, d]
        if normalize:
            globals_ = torch.nn.functional.normalize(globals_, dim=1)
        return torch.stack([koleo_loss(view) for view in globals_.chunk(NUM_GLOBAL_VIEWS)]).mean()

    def bank_terms(self, batch: int) -> dict[str, torch.Tensor]:
        """``{name: fill}`` of the banks in ``logged_banks`` after this step's enqueue: min(1, rows written / size),
        rows written = training forwards x B x processes (host arithmetic: no device sync)."""
        written = self._host_step() * batch * get_world_size()
        return {name: torch.full((), min(1.0, written / getattr(self, bank).size), device=self.step_count.device)
                for name, bank in self.logged_banks.items() if getattr(self, bank, None) is not None}  # fmt: skip

    def backbone(self, which: str = "teacher") -> torch.nn.Module:
        """The live teacher or student encoder (no copy): what evaluation during training runs on."""
        if which not in ("teacher", "student"):
            raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
        return self.teacher if which == "teacher" else self._student_encoder()

    def build_export_encoder(self) -> torch.nn.Module:
        """A fresh encoder of the exported architecture (no mask token, no heads), to receive the trained weights."""
        raise NotImplementedError

    def probe_assignments(
        self, embeddings: torch.Tensor, teacher_temp: float, generator: torch.Generator, which: str = "teacher"
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """[N, P] assignments of head outputs ``embeddings`` [N, d] to this step's prototypes, as the loss builds
        them, and indicators of the method's memory (``memory_rank``, ``support_similarity``); for the monitor."""
        raise NotImplementedError

    def export_encoder(self, which: str = "teacher") -> torch.nn.Module:
        """A standalone encoder (no banks, no heads, no mask token) holding the teacher's or student's weights (and
        BatchNorm statistics, for a ResNet): an ``SOPModel``, or a ``ResNetModel`` for ResNet lineage models."""
        source = self.backbone(which)
        encoder = self.build_export_encoder()
        gathered = self.__dict__.get("gathered_encoder_states")  # FSDP2: full weights gathered by training.fsdp2
        state = gathered[which] if gathered else source.state_dict()
        state = {k: v for k, v in state.items() if not k.endswith("mask_token")}
        encoder.load_state_dict(state, strict=True)
        return encoder.to(next(source.parameters()).dtype).eval()


@dataclass(frozen=True)
class Method:
    """A pretraining method as the rest of the library sees it: the registry's entry (``methods/__init__.py``).

    Attributes:
        name: The ``--method`` value.
        title: Display name (curves, card).
        summary: One paragraph for the model card.
        citation: BibTeX of the method's paper.
        config_class, model_class: Its ``PreTrainedConfig`` and ``...ForPreTraining`` classes.
        recipes: Named recipes (``{"model": config fields, "data": ..., "training": ...}``), each with its source.
        loss_labels: Logged loss terms besides ``loss`` and their curve labels.
        logged_terms: Every name the model's ``loss_terms`` may hold (loss components, ``teacher_entropy``,
            ``bank_fill``): what the trainer logs; ``loss_labels``' names must be among them.
        uniform_reference: ``config -> (P, symbol)``: the loss of uniform targets is ``ln P`` (the curves' reference).
        entropy_prototypes: ``config -> P`` of the logged ``teacher_entropy`` (None when the method logs none).
        uses_masks: ``config -> bool``: the data pipeline must make block masks (SOP-MIM).
        card_rows: (label, config field) rows of the model card's recipe table.
        card_title: ``config -> str``: the name on the card (e.g. "SOP-MIM" when the patch loss is on).
    """

    name: str
    title: str
    summary: str
    citation: str
    config_class: type[PreTrainedConfig]
    model_class: type[StudentTeacherPreTrainedModel]
    recipes: dict[str, dict[str, dict]]
    loss_labels: dict[str, str]
    uniform_reference: Callable[[PreTrainedConfig], tuple[int, str]]
    logged_terms: tuple[str, ...] = ()
    entropy_prototypes: Callable[[PreTrainedConfig], int | None] = lambda config: None
    uses_masks: Callable[[PreTrainedConfig], bool] = lambda config: False
    card_rows: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    card_title: Callable[[PreTrainedConfig], str] | None = None

    def __post_init__(self):
        missing = [name for name in self.loss_labels if name not in self.logged_terms]
        if missing:
            raise ValueError(f"method {self.name!r}: loss_labels name terms missing from logged_terms: "
                             f"{', '.join(missing)}")  # fmt: skip

    def title_for(self, config: PreTrainedConfig | None) -> str:
        return self.card_title(config) if self.card_title is not None and config is not None else self.title
