"""MaSSL, CARP and CARL on the SOP encoder: ``LineageConfig`` and ``LineageForPreTraining``.

The same student / EMA-teacher ViT, projection head, training loop and export as SOP; only the loss changes
(METHOD.md sections 13-15, ``losses_lineage.py``):

- **MaSSL** (arXiv 2407.17486): a FIFO memory of teacher embeddings; per step a random partition of the memory
  into blocks of ``block_size``; per-block cross-entropy between teacher and student similarity distributions, DINO
  view pairing; optional KoLeo.
- **CARP** (arXiv 2310.12692): ``num_prototypes`` learnable, weight-normalised prototypes (student and EMA teacher
  copies); a random partition into blocks of ``block_size`` shared by every view and process; consistency
  -log<p, q> in log space plus the uniform prior on the block-mean assignment. The head output is not normalised.
- **CARL** (arXiv 2112.15421, form inferred from CARP: no public code): one block of all prototypes, the
  consistency term plus ``uniformity_weight`` x KL(p-bar || uniform).

Encoders: the SOP ViT for every method, or (``encoder_type="resnet"``) transformers' own ``ResNetModel`` (ResNet-50
by default, as in the CARP paper), whose globally pooled 2048-d output feeds the head. With a ResNet the head gets
BatchNorm in its hidden layers (CARP's head: 2048-2048-2048-256 with BN and GELU) unless ``head_batch_norm`` says
otherwise. The exported ResNet encoder is a stock ``ResNetModel``: ``AutoModel`` loads it without ``sop_hf`` or
remote code. Temperatures come from the training loop like SOP's.
"""

import torch
from transformers import ResNetConfig, ResNetModel

from .configuration_sop import SOPConfig
from .heads import SOPHead
from .losses import mean_assignment_entropy
from .losses_lineage import WeightNormalizedPrototypes, carl_loss, carp_loss, massl_loss, random_partition
from .memory_bank import MemoryBank
from .modeling_sop import SOPModel
from .modeling_sop_pretraining import NUM_GLOBAL_VIEWS, SOPForPreTrainingOutput, StudentTeacherPreTrainedModel

METHODS = ("massl", "carp", "carl")
ENCODER_TYPES = ("vit", "resnet")
# Published defaults (METHOD.md): MaSSL README recipe blocks (16384) over the code's 65536-row memory; CARP 65536
# prototypes in blocks of 512; CARL one block (its K is not published; 4096 here).
METHOD_DEFAULTS = {
    "massl": {"memory_size": 65536, "block_size": 16384, "uniformity_weight": 0.0},
    "carp": {"num_prototypes": 65536, "block_size": 512, "uniformity_weight": 1.0},
    "carl": {"num_prototypes": 4096, "block_size": 4096, "uniformity_weight": 1.0},
}


class LineageConfig(SOPConfig):
    """``SOPConfig`` plus the lineage method and its sizes.

    Args:
        method: "massl", "carp" or "carl".
        memory_size: MaSSL memory rows (65536; the paper recipe uses 131072).
        block_size: MaSSL memory block / CARP prototype block N_B (ignored by CARL: one block).
        num_prototypes: CARP / CARL learnable prototypes.
        uniformity_weight: weight of CARP/CARL's uniform prior (CARP 1; CARL's lambda).
        encoder_type: "vit" (the SOP ViT; every ViT field applies) or "resnet" (transformers' ``ResNetModel`` built
            from the ``resnet_*`` fields; ``image_size`` still sets the crops, the ViT fields are unused).
        resnet_embedding_size, resnet_hidden_sizes, resnet_depths, resnet_layer_type: ``ResNetConfig``'s
            ``embedding_size``, ``hidden_sizes``, ``depths``, ``layer_type``; the defaults are ResNet-50 (2048-d
            features). Shrink them (e.g. basic blocks, depths [1, 1]) only for tests and tiny images.
        head_batch_norm: BatchNorm1d after each hidden Linear of the head (CARP's ResNet head). ``None`` means on
            for ``encoder_type="resnet"``, off for the ViT (DINO-style ViT heads have none).
    """

    model_type = "sop_lineage"

    method: str = "massl"
    memory_size: int = 65536
    block_size: int = 16384
    num_prototypes: int = 65536
    uniformity_weight: float = 1.0
    mim_loss_weight: float = 0.0
    use_mask_token: bool = False
    encoder_type: str = "vit"
    resnet_embedding_size: int = 64
    resnet_hidden_sizes: list[int] | tuple[int, ...] = (256, 512, 1024, 2048)
    resnet_depths: list[int] | tuple[int, ...] = (3, 4, 6, 3)
    resnet_layer_type: str = "bottleneck"
    head_batch_norm: bool | None = None

    def __post_init__(self, **kwargs):
        if self.method not in METHODS:
            raise ValueError(f"LineageConfig.method must be one of {METHODS}, got {self.method!r}")
        if self.encoder_type not in ENCODER_TYPES:
            raise ValueError(f"LineageConfig.encoder_type must be one of {ENCODER_TYPES}, got {self.encoder_type!r}")
        self.resnet_hidden_sizes, self.resnet_depths = list(self.resnet_hidden_sizes), list(self.resnet_depths)
        if not self.resnet_depths or len(self.resnet_hidden_sizes) != len(self.resnet_depths):
            raise ValueError(
                "LineageConfig.resnet_hidden_sizes and resnet_depths must be non-empty and of equal length (one "
                f"entry per stage), got {self.resnet_hidden_sizes} and {self.resnet_depths}"
            )
        if min(self.resnet_hidden_sizes + self.resnet_depths + [self.resnet_embedding_size]) < 1:
            raise ValueError("LineageConfig.resnet_embedding_size, resnet_hidden_sizes and resnet_depths must be >= 1")
        if self.resnet_layer_type not in ("basic", "bottleneck"):
            raise ValueError(
                f"LineageConfig.resnet_layer_type must be 'basic' or 'bottleneck', got {self.resnet_layer_type!r}"
            )
        if self.head_batch_norm is None:
            self.head_batch_norm = self.encoder_type == "resnet"
        columns = self.memory_size if self.method == "massl" else self.num_prototypes
        if self.method == "carl":
            self.block_size = self.num_prototypes
        if not 1 <= self.block_size <= columns:
            raise ValueError(f"LineageConfig.block_size must be in [1, {columns}], got {self.block_size}")
        if self.uniformity_weight < 0:
            raise ValueError(f"LineageConfig.uniformity_weight must be >= 0, got {self.uniformity_weight}")
        super().__post_init__(**kwargs)

    @classmethod
    def for_method(cls, method: str, **overrides) -> "LineageConfig":
        """The method's published defaults, then ``overrides`` (architecture fields, sizes)."""
        if method not in METHOD_DEFAULTS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        return cls(**{"method": method, **METHOD_DEFAULTS[method], **overrides})

    @property
    def encoder_width(self) -> int:
        """Width of the pooled encoder feature that enters the head."""
        return self.resnet_hidden_sizes[-1] if self.encoder_type == "resnet" else self.hidden_size

    def resnet_config(self) -> ResNetConfig:
        """The ``ResNetConfig`` of the encoder when ``encoder_type="resnet"``."""
        return ResNetConfig(
            num_channels=self.num_channels, embedding_size=self.resnet_embedding_size,
            hidden_sizes=list(self.resnet_hidden_sizes), depths=list(self.resnet_depths),
            layer_type=self.resnet_layer_type, hidden_act="relu",
        )  # fmt: skip


class LineageForPreTraining(StudentTeacherPreTrainedModel):
    """MaSSL / CARP / CARL pretraining with the SOP encoder; same forward arguments and outputs as SOP's model
    (``sop_loss`` holds the method's loss), so ``SOPTrainer`` and the export path work unchanged."""

    config_class = LineageConfig

    def __init__(self, config: LineageConfig):
        super().__init__(config)
        self.method = config.method
        if config.encoder_type == "resnet":
            self.sop, self.teacher = ResNetModel(config.resnet_config()), ResNetModel(config.resnet_config())
        else:
            self.sop = SOPModel(config, use_mask_token=False)
            self.teacher = SOPModel(config, drop_path_rate=0.0, use_mask_token=False)
        head_sizes = (config.encoder_width, config.head_hidden_size, config.head_output_size, config.head_num_layers)
        head_options = {"normalize": config.method == "massl", "batch_norm": config.head_batch_norm}
        self.head = SOPHead(*head_sizes, **head_options)
        self.teacher_head = SOPHead(*head_sizes, **head_options)
        if config.method == "massl":
            self.memory = MemoryBank(config.memory_size, config.head_output_size)
            self.ema_pairs = (("sop", "teacher"), ("head", "teacher_head"))
        else:
            self.prototypes = WeightNormalizedPrototypes(config.head_output_size, config.num_prototypes)
            self.teacher_prototypes = WeightNormalizedPrototypes(config.head_output_size, config.num_prototypes)
            self.ema_pairs = (("sop", "teacher"), ("head", "teacher_head"), ("prototypes", "teacher_prototypes"))
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long), persistent=True)
        self.anchor_seed = 0
        self.post_init()
        self.freeze_and_sync_teacher()

    def build_export_encoder(self) -> SOPModel | ResNetModel:
        if self.config.encoder_type == "resnet":
            return ResNetModel(self.config.resnet_config())
        return super().build_export_encoder()

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, WeightNormalizedPrototypes):
            torch.nn.init.normal_(module.weight, std=0.02) if not module.weight.is_meta else None

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
        """One step. Args as ``SOPForPreTraining.forward``; ``bool_masked_pos`` and ``teacher_patch_temp`` are
        accepted (the collator may send masks) and ignored: these methods have no patch loss."""
        config = self.config
        student_temp = config.student_temp if student_temp is None else student_temp
        teacher_temp = config.teacher_temp if teacher_temp is None else teacher_temp
        return_dict = return_dict if return_dict is not None else config.return_dict
        batch = pixel_values.shape[0] // NUM_GLOBAL_VIEWS
        if batch * NUM_GLOBAL_VIEWS != pixel_values.shape[0] or batch < 2:
            raise ValueError(f"pixel_values must hold {NUM_GLOBAL_VIEWS} global views of B >= 2 images (view-major)")
        with torch.no_grad():
            t_emb = self.teacher_head(self.teacher(pixel_values).pooler_output.flatten(1))  # [2B, d]
        # pooler_output: [B, D] ([CLS]) for the ViT, [B, D, 1, 1] (global average pool) for the ResNet
        s_emb = self.head(self.sop(pixel_values).pooler_output.flatten(1))  # [2B, d]
        if local_pixel_values is not None and local_pixel_values.shape[0] > 0:
            s_local = self.head(self.sop(local_pixel_values).pooler_output.flatten(1))  # [nB, d]
            s_emb = torch.cat((s_emb, s_local))  # [V*B, d]
        generator = self._generator(0)
        entropy = None
        if self.method == "massl":
            memory = self.memory.read()
            partition = random_partition(memory.shape[0], config.block_size, generator, memory.device)
            loss = massl_loss(s_emb, t_emb, memory, partition, student_temp, teacher_temp,
                              koleo_weight=config.koleo_loss_weight)  # fmt: skip
        else:
            s_logits = self.prototypes(s_emb)  # [V*B, K]
            with torch.no_grad():
                t_logits = self.teacher_prototypes(t_emb)  # [2B, K]
                entropy = mean_assignment_entropy(t_logits.float().softmax(-1))
            if self.method == "carp":
                partition = random_partition(config.num_prototypes, config.block_size, generator, s_logits.device)
                loss = carp_loss(s_logits, t_logits, partition, uniformity_weight=config.uniformity_weight).loss
            else:
                loss = carl_loss(s_logits, t_logits, config.uniformity_weight).loss
        if self.training:
            with torch.no_grad():
                if self.method == "massl":
                    self.memory.enqueue(t_emb[batch:])
                self._advance_step()
        output = SOPForPreTrainingOutput(loss=loss, sop_loss=loss.detach(), teacher_entropy=entropy,
                                         student_embeddings=s_emb, teacher_embeddings=t_emb)  # fmt: skip
        return output if return_dict else output.to_tuple()


__all__ = ["ENCODER_TYPES", "LineageConfig", "LineageForPreTraining", "METHODS", "METHOD_DEFAULTS"]
