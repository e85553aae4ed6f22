"""CARP (NeurIPS 2023, arXiv 2310.12692; docs/method.md §14): learnable, weight-normalised prototypes (student and
EMA teacher copies), cut at every step into random blocks shared by every view and process; the two views'
assignments must agree inside each block, and a uniform prior on each block's mean assignment prevents collapse.
"""

import torch
from torch.nn.functional import normalize

from ..indicators import neighbour_similarity
from ..losses.carp import carp_loss
from ..losses.partition import random_partition
from ..losses.views import mean_assignment_entropy
from ..modules.prototypes import WeightNormalizedPrototypes
from .core import Method
from .lineage import LineageConfig, LineageForPreTraining
from .recipes import DEMO_DATA, DEMO_HEAD, DEMO_TRAINING, DEMO_VIT, IMAGENET_TRAINING, recipe

SUPPORT_NEIGHBOURS = 8  # neighbours of the monitor's support_similarity (as SOP's k = 8)


class CARPConfig(LineageConfig):
    """``LineageConfig`` plus CARP's prototypes.

    Args:
        num_prototypes: Learnable prototypes K (65536).
        block_size: Prototypes per random block N_B (512), in [1, num_prototypes].
        uniformity_weight: Weight of the uniform prior (1 in CARP).
    """

    model_type = "carp"

    num_prototypes: int = 65536
    block_size: int = 512
    uniformity_weight: float = 1.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        name = type(self).__name__
        if self.num_prototypes < 1:
            raise ValueError(f"{name}.num_prototypes must be >= 1, got {self.num_prototypes}")
        if not 1 <= self.block_size <= self.num_prototypes:
            raise ValueError(f"{name}.block_size must be in [1, num_prototypes={self.num_prototypes}], got "
                             f"{self.block_size}")  # fmt: skip
        if not 0 <= self.uniformity_weight < float("inf"):
            raise ValueError(f"{name}.uniformity_weight must be finite and >= 0, got {self.uniformity_weight}")


class CARPForPreTraining(LineageForPreTraining):
    """Student / EMA teacher, heads (un-normalised bottleneck) and student / teacher prototype layers."""

    config_class = CARPConfig

    def __init__(self, config: CARPConfig):
        super().__init__(config)
        self.prototypes = WeightNormalizedPrototypes(config.head_output_size, config.num_prototypes)
        self.teacher_prototypes = WeightNormalizedPrototypes(config.head_output_size, config.num_prototypes)
        self.ema_pairs = (("student", "teacher"), ("head", "teacher_head"), ("prototypes", "teacher_prototypes"))
        self.post_init()
        self.freeze_and_sync_teacher()

    def _init_weights(self, module) -> None:
        super()._init_weights(module)
        if isinstance(module, WeightNormalizedPrototypes) and not module.weight.is_meta:
            torch.nn.init.normal_(module.weight, std=0.02)

    def partition(self, device: torch.device) -> torch.Tensor | None:
        """This step's prototype blocks [N_P, N_B] (CARL overrides it: None, one block of all prototypes)."""
        return random_partition(self.config.num_prototypes, self.config.block_size, self._generator(0), device)

    def method_loss(self, student_embeddings, teacher_embeddings, student_temp, teacher_temp):
        s_logits = self.prototypes(student_embeddings)  # [V*B, K]
        with torch.no_grad():
            t_logits = self.teacher_prototypes(teacher_embeddings)  # [2B, K]
            entropy = mean_assignment_entropy(t_logits.float().softmax(-1))
        out = carp_loss(s_logits, t_logits, self.partition(s_logits.device),
                        uniformity_weight=self.config.uniformity_weight)  # fmt: skip
        return out.loss, {"uniformity_loss": out.uniformity, "teacher_entropy": entropy}

    @torch.no_grad()
    def probe_assignments(self, embeddings, teacher_temp, generator, which="teacher"):
        """Assignments to one random prototype block (CARL: all prototypes; no temperature); the head outputs'
        nearest-neighbour cosine (there is no memory)."""
        z = normalize(embeddings.float(), dim=1)
        queries = torch.arange(z.shape[0] // 2, device=z.device)
        metrics = {"support_similarity": round(neighbour_similarity(z, queries, SUPPORT_NEIGHBOURS), 6)}
        layer = self.teacher_prototypes if which == "teacher" else self.prototypes
        logits = layer(embeddings.to(layer.weight.device)).float()  # [N, K]
        if self.config.block_size < logits.shape[1]:
            block = torch.randperm(logits.shape[1], generator=generator)[: self.config.block_size].to(logits.device)
            logits = logits[:, block]
        return logits.softmax(-1), metrics


RECIPES: dict[str, dict[str, dict]] = {
    # The demo's ViT and data; 1024 prototypes (the paper's 65536 would not even be visited in 500 steps of 128
    # images) in blocks of 32, and BatchNorm in the head's hidden layers as CARP's own head. With blocks of 256 (larger
    # than the batch) the uniform prior is met by near-uniform soft assignments and the head output collapses to an
    # effective rank of ~2 (47.9 -> 44.8 % k-NN); blocks of 32 alone: +5.5 points; with the BatchNorm head +15.2 / +13.5
    # (seeds 0 / 1; docs/lineage.md).
    "demo": recipe(
        dict(
            backbone_config=dict(model_type="sop", **DEMO_VIT),
            image_size=DEMO_VIT["image_size"],
            **DEMO_HEAD,
            num_prototypes=1024,
            block_size=32,
            head_batch_norm=True,
        ),
        DEMO_DATA,
        DEMO_TRAINING,
    ),  # fmt: skip
    # CARP repository defaults (docs/methods/carp.md): ResNet-50, head 2048-2048-2048-256 with BatchNorm, 65536
    # prototypes in blocks of 512, 32 images per GPU, 100 epochs, EMA 0.99 -> 1, crops 2 x 224 (0.2, 1) + 6 x 96
    # (0.05, 0.2), zero-initialised last BatchNorm of each residual branch; LARS, base lr 0.45 x batch/256 down to
    # 0.0048, weight decay 1e-6, no warm-up.
    "carp_resnet50_imagenet": recipe(
        dict(
            backbone_config=dict(model_type="resnet"),
            image_size=224,
            head_hidden_size=2048,
            head_output_size=256,
            num_prototypes=65536,
            block_size=512,
            uniformity_weight=1.0,
            zero_init_residual=True,
        ),
        dict(
            global_crop_size=224,
            global_crop_scale=(0.2, 1.0),
            num_local_crops=6,
            local_crop_size=96,
            local_crop_scale=(0.05, 0.2),
            solarize_prob=0.2,
        ),
        {
            **IMAGENET_TRAINING,
            "per_device_train_batch_size": 32,
            "momentum_teacher": 0.99,
            "warmup_epochs": 0,
            "weight_decay": 1e-6,
            "weight_decay_end": 1e-6,
            "lars": True,
            "base_learning_rate": 0.45,
            "min_lr": 0.0048,
        },
    ),  # fmt: skip
}

CARP = Method(
    name="carp",
    title="CARP",
    summary=(
        "CARP learns a large set of prototypes online and splits them into random blocks at every step; the "
        "assignments of two views must agree inside each block, and a uniform prior per block prevents collapse."
    ),
    citation="""@inproceedings{silva2023carp,
  title         = {Representation Learning via Consistent Assignment of Views over Random Partitions},
  author        = {Silva, Thalles and Ram{\\'\\i}rez Rivera, Ad{\\'\\i}n},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2023},
  eprint        = {2310.12692},
  archivePrefix = {arXiv}
}""",
    config_class=CARPConfig,
    model_class=CARPForPreTraining,
    recipes=RECIPES,
    loss_labels={"uniformity_loss": "uniform prior (unweighted)", "koleo_loss": "KoLeo"},
    logged_terms=("uniformity_loss", "koleo_loss", "teacher_entropy"),
    uniform_reference=lambda config: (config.block_size, "N_B"),
    entropy_prototypes=lambda config: config.num_prototypes,
    card_rows=(
        ("Prototypes K", "num_prototypes"),
        ("Prototype block N_B", "block_size"),
        ("Uniform-prior weight", "uniformity_weight"),
    ),  # fmt: skip
)

__all__ = ["CARP", "CARPConfig", "CARPForPreTraining"]
