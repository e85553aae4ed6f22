"""What MaSSL, CARP and CARL share: a composite config around an encoder ``backbone_config`` and a student / EMA
teacher pair with projection heads whose embeddings feed the method's loss (docs/method.md §13-§16).

The encoder is the SOP ViT (``backbone_config`` an ``SOPConfig``, the default) or transformers' own ``ResNetModel``
(a ``ResNetConfig``; ResNet-50 in CARP's paper), whose globally pooled output feeds the head. The exported ResNet
encoder is a stock ``ResNetModel``: ``AutoModel`` loads it without sop_hf or remote code. Only the loss differs
between the three methods; each module (``massl.py``, ``carp.py``, ``carl.py``) adds its own fields and loss.
"""

from dataclasses import dataclass

import torch
from transformers import AutoConfig, PreTrainedConfig, ResNetConfig, ResNetModel
from transformers.configuration_utils import SubConfigSpec
from transformers.utils import ModelOutput

from ..configuration_sop import SOPConfig, unknown_fields
from ..modeling_sop import SOPModel
from ..modules.heads import SOPHead
from .core import StudentTeacherPreTrainedModel, ViewEmbeddings, exported_vit


class LineageConfig(PreTrainedConfig):
    """Fields every lineage method has: the encoder, the projection head, temperatures and KoLeo.

    Args:
        backbone_config: The encoder: an ``SOPConfig`` (or its dict; the default is a ViT-B/16 ``SOPConfig``) or a
            ``ResNetConfig`` (or a dict with ``"model_type": "resnet"``).
        image_size: Side of the global crops the encoder is trained on (the ViT's own ``image_size`` when the
            backbone is the SOP ViT; 224 for a ResNet unless given).
        head_hidden_size, head_output_size, head_num_layers: Projection-head MLP sizes (2048, 256, 3).
        head_batch_norm: BatchNorm1d after each hidden Linear of the head (CARP's ResNet head). ``None``: on for a
            ResNet backbone, off for the ViT (DINO-style ViT heads have none).
        student_temp, teacher_temp: Default temperatures when the training loop passes none.
        koleo_loss_weight: KoLeo on the student's global-view embeddings (0 = off; docs/method.md §20 says when).
        initializer_range: Std of the head's truncated-normal initialisation.
        zero_init_residual: ResNet backbones only: start the last BatchNorm of every residual branch at weight 0, so
            each block starts as the identity (the torchvision option CARP's ResNet-50 recipe uses). Ignored for the ViT.
    """

    sub_configs_defaults = {"backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="sop")}

    backbone_config: dict | PreTrainedConfig | None = None
    image_size: int | None = None
    head_hidden_size: int = 2048
    head_output_size: int = 256
    head_num_layers: int = 3
    head_batch_norm: bool | None = None
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    koleo_loss_weight: float = 0.0
    initializer_range: float = 0.02
    zero_init_residual: bool = False

    def __post_init__(self, **kwargs):
        unknown_fields(self, kwargs)  # kept as attributes (as PreTrainedConfig does); a near-typo is logged
        super().__post_init__(**kwargs)
        if not isinstance(self.backbone_config, (SOPConfig, ResNetConfig)):
            raise ValueError(f"{type(self).__name__}.backbone_config must be an SOPConfig or a ResNetConfig, got "
                             f"{type(self.backbone_config).__name__}")  # fmt: skip
        if self.image_size is None:
            self.image_size = getattr(self.backbone_config, "image_size", 224)
        if self.head_batch_norm is None:
            self.head_batch_norm = self.is_resnet
        for name in ("head_hidden_size", "head_output_size", "head_num_layers", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{type(self).__name__}.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("student_temp", "teacher_temp"):
            if not 0 < getattr(self, name) < float("inf"):
                raise ValueError(f"{type(self).__name__}.{name} must be a finite number > 0, got {getattr(self, name)}")
        if not 0 <= self.koleo_loss_weight < float("inf"):
            raise ValueError(f"{type(self).__name__}.koleo_loss_weight must be finite and >= 0, got "
                             f"{self.koleo_loss_weight}")  # fmt: skip

    @property
    def is_resnet(self) -> bool:
        return isinstance(self.backbone_config, ResNetConfig)

    @property
    def num_channels(self) -> int:
        return self.backbone_config.num_channels

    @property
    def encoder_width(self) -> int:
        """Width of the pooled encoder feature that enters the head."""
        return self.backbone_config.hidden_sizes[-1] if self.is_resnet else self.backbone_config.hidden_size


@dataclass
class LineageForPreTrainingOutput(ModelOutput):
    """Output of the lineage pretraining models.

    Attributes:
        loss: the method's loss, plus ``koleo_loss_weight * koleo_loss`` (scalar).
        uniformity_loss: CARP / CARL's uniform-prior term (unweighted; None for MaSSL).
        koleo_loss: KoLeo of the student's global views (None when its weight is 0).
        teacher_entropy: entropy of the teacher's batch-mean prototype assignment (CARP / CARL; None for MaSSL).
        student_embeddings: [V*B, d] student head outputs, view-major (globals then locals).
        teacher_embeddings: [2*B, d] teacher head outputs.
        loss_terms: every logged term of the step, ``{name: detached scalar}`` (any name: the three above when set,
            a new method's own terms, ``bank_fill``); what the trainer logs.
    """

    loss: torch.FloatTensor | None = None
    uniformity_loss: torch.FloatTensor | None = None
    koleo_loss: torch.FloatTensor | None = None
    teacher_entropy: torch.FloatTensor | None = None
    student_embeddings: torch.FloatTensor | None = None
    teacher_embeddings: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None


def zero_init_residual_batch_norm(resnet: ResNetModel) -> None:
    """Set the weight of the last BatchNorm in every residual branch of a transformers ResNet to 0."""
    from transformers.models.resnet.modeling_resnet import ResNetBasicLayer, ResNetBottleNeckLayer

    with torch.no_grad():
        for module in resnet.modules():
            if isinstance(module, (ResNetBasicLayer, ResNetBottleNeckLayer)):
                module.layer[-1].normalization.weight.zero_()


def build_encoder(config: LineageConfig, teacher: bool = False, mask_token: bool = False) -> SOPModel | ResNetModel:
    """The student (or teacher: no drop path, no mask token) encoder of ``config.backbone_config``; ``mask_token``
    gives the student ViT a mask token (iBOT's masked global crops)."""
    if config.is_resnet:
        return ResNetModel(config.backbone_config)
    options = {"drop_path_rate": 0.0} if teacher else {}
    return SOPModel(config.backbone_config, use_mask_token=mask_token and not teacher, **options)


class LineageForPreTraining(StudentTeacherPreTrainedModel):
    """Student and EMA teacher encoders with projection heads; a method subclass adds its memory or prototypes and
    implements ``method_loss``. Same forward arguments as ``SOPForPreTraining``, so ``SOPTrainer``, the monitor and
    the export work unchanged."""

    base_model_prefix = "student"
    normalize_head = False  # MaSSL's head ends with an L2 normalisation; CARP feeds the raw bottleneck
    student_mask_token = False  # iBOT: the student ViT replaces masked patches by a learnt token

    def __init__(self, config: LineageConfig):
        super().__init__(config)
        self.student = build_encoder(config, mask_token=self.student_mask_token)
        self.teacher = build_encoder(config, teacher=True)
        head_sizes = (config.encoder_width, config.head_hidden_size, config.head_output_size, config.head_num_layers)
        head_options = {"normalize": self.normalize_head, "batch_norm": config.head_batch_norm}
        self.head = SOPHead(*head_sizes, **head_options)
        self.teacher_head = SOPHead(*head_sizes, **head_options)
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long), persistent=True)
        self.anchor_seed = 0

    def post_init(self):
        super().post_init()
        if self.config.is_resnet and self.config.zero_init_residual:
            zero_init_residual_batch_norm(self.student)  # the teacher copies it in freeze_and_sync_teacher

    def build_export_encoder(self) -> SOPModel | ResNetModel:
        if self.config.is_resnet:
            return ResNetModel(self.config.backbone_config)
        return exported_vit(self.config.backbone_config)

    def method_loss(
        self,
        student_embeddings: torch.Tensor,
        teacher_embeddings: torch.Tensor,
        student_temp: float,
        teacher_temp: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(loss, logged extra terms) of the method for [V*B, d] student and [2*B, d] teacher head outputs."""
        raise NotImplementedError

    def after_step(self, teacher_embeddings: torch.Tensor, batch: int) -> None:
        """Bank updates after a training forward (MaSSL enqueues the teacher's second view)."""

    def finish_step(
        self, loss: torch.Tensor, terms: dict[str, torch.Tensor | None], views: ViewEmbeddings
    ) -> LineageForPreTrainingOutput:
        """What follows a method's loss: KoLeo, the bank updates and step count (training only), the output."""
        if self.config.koleo_loss_weight > 0:
            terms["koleo_loss"] = self.koleo_term(views.student, views.batch)
            loss = loss + self.config.koleo_loss_weight * terms["koleo_loss"]
        if self.training:
            with torch.no_grad():
                self.after_step(views.teacher, views.batch)
                self._advance_step()
                terms.update(self.bank_terms(views.batch))
        terms = {k: v.detach() for k, v in terms.items() if v is not None}
        named = {k: terms.get(k) for k in ("uniformity_loss", "koleo_loss", "teacher_entropy")}
        return LineageForPreTrainingOutput(loss=loss, student_embeddings=views.student,
                                           teacher_embeddings=views.teacher, loss_terms=terms, **named)  # fmt: skip

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
    ) -> LineageForPreTrainingOutput | tuple:
        """One step. Args as ``SOPForPreTraining.forward``; ``bool_masked_pos`` and ``teacher_patch_temp`` are
        accepted (a collator may send masks) and ignored: these methods have no patch loss."""
        config = self.config
        student_temp = config.student_temp if student_temp is None else student_temp
        teacher_temp = config.teacher_temp if teacher_temp is None else teacher_temp
        return_dict = return_dict if return_dict is not None else config.return_dict
        views = self.encode_views(pixel_values, local_pixel_values)  # [V*B, d] student, [2B, d] teacher
        loss, terms = self.method_loss(views.student, views.teacher, student_temp, teacher_temp)
        output = self.finish_step(loss, terms, views)
        return output if return_dict else output.to_tuple()


__all__ = ["LineageConfig", "LineageForPreTraining", "LineageForPreTrainingOutput", "build_encoder"]
