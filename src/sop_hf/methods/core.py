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
from ..modeling_sop import SOPModel, SOPPreTrainedModel
from ..modules.memory_bank import MemoryBank
from ..seeding import stream_seed

NUM_GLOBAL_VIEWS = 2  # SOP, like DINO/iBOT, pairs two global views; the teacher sees only these.


def exported_vit(config: SOPConfig) -> SOPModel:
    """A fresh ``SOPModel`` of ``config``'s architecture without mask token or SOP-MIM weight: the exported encoder,
    to receive the trained weights (``config`` may be a pretraining config: only ``SOPConfig``'s fields are read)."""
    fields = set(SOPConfig.__dataclass_fields__) - {"model_type", "architectures", "auto_map"}
    values = {k: v for k, v in config.to_dict().items() if k in fields}
    return SOPModel(SOPConfig(**{**values, "use_mask_token": False, "mim_loss_weight": 0.0}))


class StudentTeacherPreTrainedModel(SOPPreTrainedModel):
    """What every self-distillation method here shares: an EMA teacher of the student, seeded random streams and
    encoder export.

    Subclasses hold the student encoder under ``base_model_prefix`` (``sop`` for SOP, ``student`` for the lineage),
    the teacher encoder as ``teacher``, a persistent ``step_count`` buffer, and define ``ema_pairs`` ((student module,
    teacher module) attribute names), ``build_export_encoder`` and ``probe_assignments`` (what the training monitor
    measures).
    """

    ema_pairs: tuple[tuple[str, str], ...] = (("sop", "teacher"), ("head", "teacher_head"))

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

    def backbone(self, which: str = "teacher") -> torch.nn.Module:
        """The live teacher or student encoder (no copy): what evaluation during training runs on."""
        if which not in ("teacher", "student"):
            raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
        return self.teacher if which == "teacher" else self._student_encoder()

    def build_export_encoder(self) -> torch.nn.Module:
        """A fresh encoder of the exported architecture (no mask token, no heads), to receive the trained weights."""
        raise NotImplementedError

    def probe_assignments(self, embeddings: torch.Tensor, teacher_temp: float, generator: torch.Generator,
                          which: str = "teacher") -> tuple[torch.Tensor, dict[str, float]]:
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
    entropy_prototypes: Callable[[PreTrainedConfig], int | None] = lambda config: None
    uses_masks: Callable[[PreTrainedConfig], bool] = lambda config: False
    card_rows: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    card_title: Callable[[PreTrainedConfig], str] | None = None

    def title_for(self, config: PreTrainedConfig | None) -> str:
        return self.card_title(config) if self.card_title is not None and config is not None else self.title
