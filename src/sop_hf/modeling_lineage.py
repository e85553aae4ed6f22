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

Differences from the references: CARP's head here has no BatchNorm and its backbone is the ViT (a ResNet-50
backbone is not provided in this version); temperatures come from the training loop like SOP's.
"""

import torch

from .configuration_sop import SOPConfig
from .heads import SOPHead
from .losses import mean_assignment_entropy
from .losses_lineage import WeightNormalizedPrototypes, carl_loss, carp_loss, massl_loss, random_partition
from .memory_bank import MemoryBank
from .modeling_sop import SOPModel
from .modeling_sop_pretraining import NUM_GLOBAL_VIEWS, SOPForPreTrainingOutput, StudentTeacherPreTrainedModel

METHODS = ("massl", "carp", "carl")
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
    """

    model_type = "sop_lineage"

    method: str = "massl"
    memory_size: int = 65536
    block_size: int = 16384
    num_prototypes: int = 65536
    uniformity_weight: float = 1.0
    mim_loss_weight: float = 0.0
    use_mask_token: bool = False

    def __post_init__(self, **kwargs):
        if self.method not in METHODS:
            raise ValueError(f"LineageConfig.method must be one of {METHODS}, got {self.method!r}")
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


class LineageForPreTraining(StudentTeacherPreTrainedModel):
    """MaSSL / CARP / CARL pretraining with the SOP encoder; same forward arguments and outputs as SOP's model
    (``sop_loss`` holds the method's loss), so ``SOPTrainer`` and the export path work unchanged."""

    config_class = LineageConfig

    def __init__(self, config: LineageConfig):
        super().__init__(config)
        self.method = config.method
        self.sop = SOPModel(config, use_mask_token=False)
        self.teacher = SOPModel(config, drop_path_rate=0.0, use_mask_token=False)
        head_sizes = (config.hidden_size, config.head_hidden_size, config.head_output_size, config.head_num_layers)
        normalize = config.method == "massl"
        self.head = SOPHead(*head_sizes, normalize=normalize)
        self.teacher_head = SOPHead(*head_sizes, normalize=normalize)
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
            t_emb = self.teacher_head(self.teacher(pixel_values).pooler_output)  # [2B, d]
        s_emb = self.head(self.sop(pixel_values).pooler_output)  # [2B, d]
        if local_pixel_values is not None and local_pixel_values.shape[0] > 0:
            s_emb = torch.cat((s_emb, self.head(self.sop(local_pixel_values).pooler_output)))  # [V*B, d]
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
                self.step_count += 1
        output = SOPForPreTrainingOutput(loss=loss, sop_loss=loss.detach(), teacher_entropy=entropy,
                                         student_embeddings=s_emb, teacher_embeddings=t_emb)  # fmt: skip
        return output if return_dict else output.to_tuple()


__all__ = ["LineageConfig", "LineageForPreTraining", "METHODS", "METHOD_DEFAULTS"]
