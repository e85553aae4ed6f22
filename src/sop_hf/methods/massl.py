"""MaSSL (ICML 2024, arXiv 2407.17486; docs/method.md §13): a FIFO memory of teacher embeddings, cut at every step
into random blocks; the student's similarity distribution over each block must match the teacher's for the other
view. No anti-collapse term; KoLeo is available (``koleo_loss_weight``).
"""

import torch
from torch.nn.functional import normalize

from ..indicators import MAX_RANK_ROWS, effective_rank, neighbour_similarity
from ..losses.massl import massl_loss
from ..losses.partition import random_partition
from ..modules.memory_bank import MemoryBank
from .core import Method
from .lineage import LineageConfig, LineageForPreTraining
from .recipes import DEMO_DATA, DEMO_HEAD, DEMO_TRAINING, DEMO_VIT, IMAGENET_TRAINING, recipe

SUPPORT_NEIGHBOURS = 8  # neighbours of the monitor's support_similarity (as SOP's k = 8)


class MaSSLConfig(LineageConfig):
    """``LineageConfig`` plus MaSSL's memory.

    Args:
        memory_size: Memory rows (65536; the paper's README recipe uses 131072). It spans ``memory_size / global
            batch`` steps: lower it for small data.
        block_size: Rows per random block N_B (16384 in the README recipe), in [1, memory_size].
    """

    model_type = "massl"

    memory_size: int = 65536
    block_size: int = 16384

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not 1 <= self.block_size <= self.memory_size:
            raise ValueError(f"MaSSLConfig.block_size must be in [1, memory_size={self.memory_size}], got "
                             f"{self.block_size}")  # fmt: skip


class MaSSLForPreTraining(LineageForPreTraining):
    """Student / EMA teacher, L2-normalised heads and the memory of teacher embeddings."""

    config_class = MaSSLConfig
    normalize_head = True
    logged_banks = {"bank_fill": "memory"}

    def __init__(self, config: MaSSLConfig):
        super().__init__(config)
        self.memory = MemoryBank(config.memory_size, config.head_output_size)
        self.ema_pairs = (("student", "teacher"), ("head", "teacher_head"))
        self.post_init()
        self.freeze_and_sync_teacher()

    def method_loss(self, student_embeddings, teacher_embeddings, student_temp, teacher_temp):
        memory = self.memory.read()  # [K, d]
        partition = random_partition(memory.shape[0], self.config.block_size, self._generator(0), memory.device)
        loss = massl_loss(student_embeddings, teacher_embeddings, memory, partition, student_temp, teacher_temp)
        return loss, {}

    def after_step(self, teacher_embeddings, batch):
        self.memory.enqueue(teacher_embeddings[batch:])  # the teacher's second global view

    @torch.no_grad()
    def probe_assignments(self, embeddings, teacher_temp, generator, which="teacher"):
        """Assignments to one random memory block; the memory's rank and its rows' nearest-neighbour cosine."""
        memory = self.memory.read().float()  # [K, d]
        rows = memory
        if rows.shape[0] > MAX_RANK_ROWS:
            rows = rows[torch.randperm(rows.shape[0], generator=generator)[:MAX_RANK_ROWS].to(rows.device)]
        queries = torch.randperm(rows.shape[0], generator=generator)[:256].to(rows.device)
        metrics = {"memory_rank": round(effective_rank(rows), 4),
                   "support_similarity": round(neighbour_similarity(rows, queries, SUPPORT_NEIGHBOURS), 6)}  # fmt: skip
        block = torch.randperm(memory.shape[0], generator=generator)[: self.config.block_size].to(memory.device)
        z = normalize(embeddings.float(), dim=1).to(memory.device)  # [N, d]
        return (z @ memory[block].T / teacher_temp).softmax(-1), metrics  # [N, N_B]


# MaSSL's ImageNet recipes (README): the ViT at 224 px, patch 16, drop path 0.1, a memory of 131072 in blocks of
# 16384; crops 2 x 224 (0.32, 1) + 10 x 96 (0.05, 0.32). Only the preset and the schedule differ between sizes.
def _imagenet_model(preset: str) -> dict:
    backbone = dict(model_type="sop", preset=preset, image_size=224, patch_size=16, drop_path_rate=0.1,
                    use_mask_token=False, mim_loss_weight=0.0)  # fmt: skip
    return dict(backbone_config=backbone, memory_size=131072, block_size=16384)


_IMAGENET_DATA = dict(global_crop_size=224, global_crop_scale=(0.32, 1.0), num_local_crops=10, local_crop_size=96,
                     local_crop_scale=(0.05, 0.32))  # fmt: skip

RECIPES: dict[str, dict[str, dict]] = {
    # The demo's ViT and data; a 1024-row memory in blocks of 256 (the paper's 65536 rows would not even fill in 500
    # steps of 128 images) and KoLeo 0.1 as SOP's demo.
    "demo": recipe(
        dict(
            backbone_config=dict(model_type="sop", **DEMO_VIT),
            image_size=DEMO_VIT["image_size"],
            **DEMO_HEAD,
            memory_size=1024,
            block_size=256,
            koleo_loss_weight=0.1,
        ),
        DEMO_DATA,
        DEMO_TRAINING,
    ),  # fmt: skip
    # MaSSL README recipe, ViT-S/16 (docs/methods/massl.md): memory 131072 in blocks of 16384, crops 2 x 224 (0.32, 1)
    # + 10 x 96 (0.05, 0.32), AdamW lr 5e-4, no warm-up, wd 0.04 -> 0.4, clip 3, EMA 0.992, 800 epochs; teacher
    # temperature 0.04 -> 0.07 over 30 epochs (its code default).
    "massl_vit_small_imagenet": recipe(
        _imagenet_model("vit_small"),
        _IMAGENET_DATA,
        {
            **IMAGENET_TRAINING,
            "num_train_epochs": 800,
            "warmup_epochs": 0,
            "momentum_teacher": 0.992,
            "warmup_teacher_temp": 0.04,
            "teacher_temp": 0.07,
            "warmup_teacher_temp_epochs": 30,
        },
    ),  # fmt: skip
    # MaSSL README recipe, ViT-B/16: 400 epochs, lr 7.5e-4, 10 warm-up epochs, EMA 0.996, teacher temperature
    # warm-up over 50 epochs; memory and crops as ViT-S.
    "massl_vit_base_imagenet": recipe(
        _imagenet_model("vit_base"),
        _IMAGENET_DATA,
        {
            **IMAGENET_TRAINING,
            "num_train_epochs": 400,
            "base_learning_rate": 7.5e-4,
            "warmup_epochs": 10,
            "momentum_teacher": 0.996,
            "warmup_teacher_temp": 0.04,
            "teacher_temp": 0.07,
            "warmup_teacher_temp_epochs": 50,
        },
    ),  # fmt: skip
}

MASSL = Method(
    name="massl",
    title="MaSSL",
    summary=(
        "MaSSL compares every view with a non-parametric memory of recent teacher embeddings. The memory is cut "
        "into random blocks, and the student's similarity distribution over each block must match the "
        "teacher's for the other view. SOP extends this idea with anchors and voting support embeddings."
    ),
    citation="""@inproceedings{silva2024massl,
  title         = {Learning from Memory: Non-Parametric Memory Augmented Self-Supervised Learning of Visual Features},
  author        = {Silva, Thalles and Pedrini, Helio and Ram{\\'\\i}rez Rivera, Ad{\\'\\i}n},
  booktitle     = {Proceedings of the 41st International Conference on Machine Learning (ICML)},
  year          = {2024},
  eprint        = {2407.17486},
  archivePrefix = {arXiv}
}""",
    config_class=MaSSLConfig,
    model_class=MaSSLForPreTraining,
    recipes=RECIPES,
    loss_labels={"koleo_loss": "KoLeo"},
    logged_terms=("koleo_loss", "bank_fill"),
    uniform_reference=lambda config: (config.block_size, "N_B"),
    card_rows=(("Memory size", "memory_size"), ("Memory block N_B", "block_size")),
)

__all__ = ["MASSL", "MaSSLConfig", "MaSSLForPreTraining"]
