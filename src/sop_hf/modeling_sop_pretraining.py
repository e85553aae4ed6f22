"""SOPForPreTraining: student and EMA teacher encoders, projection heads, memory banks and the SOP / SOP-MIM losses.

One training forward (METHOD.md section 4): the teacher encodes the unmasked global crops, the student the masked
global crops and the local crops; both banks are read (detached copies), the SOP [CLS] loss and the SOP-MIM patch
loss are computed, then the teacher's second-view [CLS] embeddings and one random teacher patch per image of that
view are enqueued. ``update_teacher(momentum)`` applies the EMA after the optimizer step.

Which encoder to export: ``export_encoder(which="teacher")`` (the default, as DINO/iBOT/SOP evaluate the teacher) or
``which="student"`` (slightly better in short runs whose momentum reaches 1 early). ``SOPModel.from_pretrained`` on a
pretraining checkpoint loads the *student* (it is stored under the base-model prefix ``sop``).

>>> import torch
>>> from sop_hf import SOPConfig, SOPForPreTraining
>>> config = SOPConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
...     head_hidden_size=32, head_output_size=16, class_memory_size=64, num_anchors=8, num_support=3, num_tasks=1,
...     patch_memory_size=16, num_patch_anchors=4)
>>> model = SOPForPreTraining(config)
>>> masks = torch.zeros(4, 4, dtype=torch.bool); masks[:, 0] = True
>>> out = model(pixel_values=torch.randn(4, 3, 16, 16), bool_masked_pos=masks)
>>> bool(torch.isfinite(out.loss)), int(model.class_memory.ptr)
(True, 2)
"""

from dataclasses import dataclass

import torch
from transformers import initialization as init
from transformers.utils import ModelOutput

from ._dist import get_rank
from .configuration_sop import SOPConfig
from .heads import SOPHead
from .losses import SOPClassLoss, SOPPatchLoss, koleo_loss
from .memory_bank import MemoryBank
from .modeling_sop import SOPModel, SOPPreTrainedModel

NUM_GLOBAL_VIEWS = 2  # SOP, like DINO/iBOT, pairs two global views; the teacher sees only these.


@dataclass
class SOPForPreTrainingOutput(ModelOutput):
    """Output of ``SOPForPreTraining``.

    Attributes:
        loss: total ``sop_loss + mim_loss_weight * mim_loss + koleo_loss_weight * koleo_loss`` (scalar, float32).
        sop_loss: SOP [CLS] loss averaged over tasks.
        mim_loss: SOP-MIM patch loss (None when SOP-MIM is off or no mask was given).
        koleo_loss: KoLeo of the student [CLS] (None when its weight is 0).
        teacher_entropy: entropy of the teacher's batch-mean [CLS] prototype assignment; ln P' when prototypes are used
            uniformly, much lower on collapse.
        student_embeddings: [V*B, d] student [CLS] embeddings, view-major (globals then locals).
        teacher_embeddings: [2*B, d] teacher [CLS] embeddings.
    """

    loss: torch.FloatTensor | None = None
    sop_loss: torch.FloatTensor | None = None
    mim_loss: torch.FloatTensor | None = None
    koleo_loss: torch.FloatTensor | None = None
    teacher_entropy: torch.FloatTensor | None = None
    student_embeddings: torch.FloatTensor | None = None
    teacher_embeddings: torch.FloatTensor | None = None


def _stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers (seed, step, stream, rank ...), so each random stream is reproducible."""
    value = 0x5DEECE66D
    for part in parts:
        value = (value * 6364136223846793005 + int(part) + 1442695040888963407) % (1 << 63)
    return value


class StudentTeacherPreTrainedModel(SOPPreTrainedModel):
    """What every self-distillation method here shares: an EMA teacher of the student, seeded random streams and
    encoder export. Subclasses define ``ema_pairs`` ((student module, teacher module) attribute names), ``sop``,
    ``teacher`` and a persistent ``step_count`` buffer."""

    ema_pairs: tuple[tuple[str, str], ...] = (("sop", "teacher"), ("head", "teacher_head"))

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
        if not next(self.sop.parameters()).is_meta:
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
        generator.manual_seed(_stream_seed(self.anchor_seed, self._host_step(), stream, rank))
        return generator

    def backbone(self, which: str = "teacher") -> torch.nn.Module:
        """The live teacher or student encoder (no copy): what evaluation during training runs on."""
        if which not in ("teacher", "student"):
            raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
        return self.teacher if which == "teacher" else self.sop

    def build_export_encoder(self) -> SOPModel:
        """A fresh encoder of the exported architecture: an ``SOPModel`` without mask token or SOP-MIM weight."""
        fields = set(SOPConfig.__dataclass_fields__) - {"model_type", "architectures", "auto_map"}
        values = {k: v for k, v in self.config.to_dict().items() if k in fields}
        return SOPModel(SOPConfig(**{**values, "use_mask_token": False, "mim_loss_weight": 0.0}))

    def export_encoder(self, which: str = "teacher") -> torch.nn.Module:
        """A standalone encoder (no banks, no heads, no mask token) holding the teacher's or student's weights (and
        BatchNorm statistics, for a ResNet): an ``SOPModel``, or a ``ResNetModel`` for ResNet lineage models."""
        source = self.backbone(which)
        encoder = self.build_export_encoder()
        state = {k: v for k, v in source.state_dict().items() if not k.endswith("mask_token")}
        encoder.load_state_dict(state, strict=True)
        return encoder.to(next(source.parameters()).dtype).eval()


class SOPForPreTraining(StudentTeacherPreTrainedModel):
    """Student + EMA teacher + heads + class/patch memory banks + SOP and SOP-MIM losses.

    The teacher starts as an exact copy of the student, has no drop path, no mask token and no gradient, and moves
    only through ``update_teacher``. Both banks and the step counter are persistent buffers (saved in checkpoints).
    Anchors are drawn from a generator seeded by ``(anchor_seed, step, stream)``, so every process draws the same
    anchors without communication; set ``model.anchor_seed`` from the run's seed.
    """

    def __init__(self, config: SOPConfig):
        super().__init__(config)
        self.sop = SOPModel(config)
        self.teacher = SOPModel(config, drop_path_rate=0.0, use_mask_token=False)
        head_sizes = (config.hidden_size, config.head_hidden_size, config.head_output_size, config.head_num_layers)
        self.head = SOPHead(*head_sizes)
        self.teacher_head = SOPHead(*head_sizes)
        self.class_memory = MemoryBank(config.class_memory_size, config.head_output_size)
        self.use_mim = config.mim_loss_weight > 0
        self.patch_memory = MemoryBank(config.patch_memory_size, config.head_output_size) if self.use_mim else None
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long), persistent=True)
        self.class_loss = SOPClassLoss(
            config.num_anchors, config.num_support, config.num_tasks, config.vote_smoothing,
            config.anchor_keep_fraction, config.neighbour_search_dtype,
        )  # fmt: skip
        self.patch_loss = SOPPatchLoss(config.num_patch_anchors, config.num_patch_tasks, config.vote_smoothing)
        self.anchor_seed = 0
        self.post_init()
        self.freeze_and_sync_teacher()

    def forward(
        self,
        pixel_values: torch.Tensor,
        bool_masked_pos: torch.Tensor | None = None,
        local_pixel_values: torch.Tensor | None = None,
        student_temp: float | None = None,
        teacher_temp: float | None = None,
        teacher_patch_temp: float | None = None,
        return_loss: bool = True,
        return_dict: bool | None = None,
    ) -> SOPForPreTrainingOutput | tuple:
        """One SOP step.

        Args:
            pixel_values: [2*B, C, H, W] the two global crops, view-major (all images of view 0, then view 1).
            bool_masked_pos: [2*B, L] masks of the student's global crops (SOP-MIM); None masks nothing.
            local_pixel_values: [n*B, C, h, w] local crops, view-major, or None.
            student_temp, teacher_temp, teacher_patch_temp: this step's temperatures (scheduled by the training
                loop); None uses the config's values.
            return_loss: kept for Trainer compatibility; the loss is always computed.
            return_dict: return a ``SOPForPreTrainingOutput`` (default) or a tuple.
        """
        config = self.config
        student_temp = config.student_temp if student_temp is None else student_temp
        teacher_temp = config.teacher_temp if teacher_temp is None else teacher_temp
        teacher_patch_temp = config.teacher_patch_temp if teacher_patch_temp is None else teacher_patch_temp
        return_dict = return_dict if return_dict is not None else config.return_dict
        num_images = pixel_values.shape[0]
        if num_images % NUM_GLOBAL_VIEWS or num_images < 2 * NUM_GLOBAL_VIEWS:
            raise ValueError(
                f"pixel_values must hold {NUM_GLOBAL_VIEWS} global views of B >= 2 images (view-major), got "
                f"{num_images} images"
            )
        batch = num_images // NUM_GLOBAL_VIEWS
        if local_pixel_values is not None and local_pixel_values.shape[0] % batch:
            raise ValueError(f"local_pixel_values rows ({local_pixel_values.shape[0]}) must be a multiple of B={batch}")
        use_mim = self.use_mim and bool_masked_pos is not None

        # 1. teacher on the unmasked global crops
        with torch.no_grad():
            t_tokens = self.teacher(pixel_values).last_hidden_state  # [2B, 1+L, D]
            t_emb = self.teacher_head(t_tokens if use_mim else t_tokens[:, :1])  # [2B, 1+L or 1, d]
            t_cls = t_emb[:, 0]  # [2B, d]
        # 2-3. student on the masked global crops, then on the local crops ([CLS] only)
        s_tokens = self.sop(pixel_values, bool_masked_pos=bool_masked_pos if use_mim else None).last_hidden_state
        s_emb = self.head(s_tokens if use_mim else s_tokens[:, :1])  # [2B, 1+L or 1, d]
        s_cls = s_emb[:, 0]  # [2B, d]
        if local_pixel_values is not None and local_pixel_values.shape[0] > 0:
            s_local = self.head(self.sop(local_pixel_values).pooler_output)  # [nB, d]
            s_all = torch.cat((s_cls, s_local))  # [V*B, d]
        else:
            s_all = s_cls

        # 4-5. losses against detached bank reads
        memory = self.class_memory.read()  # [K, d]
        anchors = self.class_loss.draw_anchors(memory.shape[0], self._generator(0), memory.device)
        class_out = self.class_loss(s_all, t_cls, memory, student_temp, teacher_temp, NUM_GLOBAL_VIEWS, anchors=anchors)
        loss = class_out.loss
        mim_loss = koleo = None
        if use_mim:
            patch_memory = self.patch_memory.read()  # [K_p, d]
            patch_anchors = self.patch_loss.draw_anchors(patch_memory.shape[0], self._generator(1), patch_memory.device)
            mim_out = self.patch_loss(
                s_emb[:, 1:], t_emb[:, 1:], bool_masked_pos, patch_memory,
                student_temp, teacher_patch_temp, NUM_GLOBAL_VIEWS, anchors=patch_anchors,
            )  # fmt: skip
            mim_loss = mim_out.loss
            loss = loss + config.mim_loss_weight * mim_loss
        if config.koleo_loss_weight > 0:
            koleo = torch.stack([koleo_loss(view) for view in s_cls.chunk(NUM_GLOBAL_VIEWS)]).mean()
            loss = loss + config.koleo_loss_weight * koleo

        # 6. enqueue the teacher's second global view, training only
        if self.training:
            with torch.no_grad():
                self.class_memory.enqueue(t_cls[batch:])
                if self.patch_memory is not None and t_emb.shape[1] > 1:
                    patches = t_emb[batch:, 1:]  # [B, L, d]
                    token = torch.randint(patches.shape[1], (batch,), generator=self._generator(2, get_rank()))
                    self.patch_memory.enqueue(patches[torch.arange(batch), token.to(patches.device)])
                self._advance_step()

        output = SOPForPreTrainingOutput(
            loss=loss,
            sop_loss=class_out.loss.detach(),
            mim_loss=None if mim_loss is None else mim_loss.detach(),
            koleo_loss=None if koleo is None else koleo.detach(),
            teacher_entropy=class_out.teacher_entropy,
            student_embeddings=s_all,
            teacher_embeddings=t_cls,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["SOPForPreTraining", "SOPForPreTrainingOutput", "StudentTeacherPreTrainedModel"]
