"""SOPForPreTraining: student and EMA teacher encoders, projection heads, memory banks and the SOP / SOP-MIM losses.

One training forward (docs/method.md §4): the teacher encodes the unmasked global crops, the student the masked
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
from torch.nn.functional import normalize
from transformers.utils import ModelOutput

from ..configuration_sop import SOPConfig
from ..indicators import MAX_RANK_ROWS, effective_rank
from ..losses.sop import (
    SOPClassLoss,
    SOPPatchLoss,
    build_support_prototypes,
    draw_anchor_indices,
    prototype_assignments,
)
from ..modeling_sop import SOPModel
from ..modules.distributed import get_rank
from ..modules.heads import SOPHead
from ..modules.memory_bank import MemoryBank
from .core import NUM_GLOBAL_VIEWS, Method, StudentTeacherPreTrainedModel, exported_vit
from .recipes import DEMO_DATA, DEMO_HEAD, DEMO_TRAINING, DEMO_VIT, IBOT_MULTICROP, IMAGENET_TRAINING, recipe


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
        loss_terms: the logged terms (``Method.logged_terms``): the losses above that are not None,
            ``teacher_entropy`` and, in training, ``bank_fill`` (class memory) and ``patch_bank_fill`` (SOP-MIM).
    """

    loss: torch.FloatTensor | None = None
    sop_loss: torch.FloatTensor | None = None
    mim_loss: torch.FloatTensor | None = None
    koleo_loss: torch.FloatTensor | None = None
    teacher_entropy: torch.FloatTensor | None = None
    student_embeddings: torch.FloatTensor | None = None
    teacher_embeddings: torch.FloatTensor | None = None
    loss_terms: dict[str, torch.Tensor] | None = None


class SOPForPreTraining(StudentTeacherPreTrainedModel):
    """Student + EMA teacher + heads + class/patch memory banks + SOP and SOP-MIM losses.

    The teacher starts as an exact copy of the student, has no drop path, no mask token and no gradient, and moves
    only through ``update_teacher``. Both banks and the step counter are persistent buffers (saved in checkpoints).
    Anchors are drawn from a generator seeded by ``(anchor_seed, step, stream)``, so every process draws the same
    anchors without communication; set ``model.anchor_seed`` from the run's seed.
    """

    logged_banks = {"bank_fill": "class_memory", "patch_bank_fill": "patch_memory"}
    head_over_all_views = False  # [CLS] / tokens of the global crops, then the local crops: the order of SOP's figures

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

    def build_export_encoder(self) -> SOPModel:
        """A fresh encoder of the exported architecture: an ``SOPModel`` without mask token or SOP-MIM weight."""
        return exported_vit(self.config)

    @torch.no_grad()
    def probe_assignments(self, embeddings, teacher_temp, generator, which="teacher"):
        """Assignments to prototypes built from the class memory as in training (anchors, supports, votes); the
        memory's effective rank and the mean anchor-support vote (``support_similarity``)."""
        config, metrics = self.config, {}
        memory = self.class_memory.read().float()  # [K, d]
        rows = memory
        if rows.shape[0] > MAX_RANK_ROWS:
            rows = rows[torch.randperm(rows.shape[0], generator=generator)[:MAX_RANK_ROWS].to(rows.device)]
        metrics["memory_rank"] = round(effective_rank(rows), 4)
        kept, dropped = draw_anchor_indices(memory.shape[0], config.num_anchors, config.num_kept_anchors, generator,
                                            memory.device)  # fmt: skip
        protos = build_support_prototypes(memory, kept, config.num_support, config.vote_smoothing, exclude_idx=dropped)
        if protos.num_support > 1:
            metrics["support_similarity"] = round(float(protos.votes[:, :-1].mean()), 6)
        z = normalize(embeddings.float(), dim=1).to(memory.device)  # [N, d]
        return prototype_assignments(z, protos, teacher_temp), metrics  # [N, P']

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
        use_mim = self.use_mim and bool_masked_pos is not None

        # 1-3. teacher on the unmasked global crops; student on the masked global crops, then the local crops
        views = self.encode_views(pixel_values, local_pixel_values, bool_masked_pos, patch_tokens=use_mim)
        batch, s_all, t_cls = views.batch, views.student, views.teacher  # [V*B, d], [2B, d]

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
                views.student_patches, views.teacher_patches, bool_masked_pos, patch_memory,
                student_temp, teacher_patch_temp, NUM_GLOBAL_VIEWS, anchors=patch_anchors,
            )  # fmt: skip
            mim_loss = mim_out.loss
            loss = loss + config.mim_loss_weight * mim_loss
        if config.koleo_loss_weight > 0:
            koleo = self.koleo_term(s_all, batch, normalize=False)  # the SOP head's rows are unit norm
            loss = loss + config.koleo_loss_weight * koleo

        # 6. enqueue the teacher's second global view, training only
        terms = {}
        if self.training:
            with torch.no_grad():
                self.class_memory.enqueue(t_cls[batch:])
                if self.patch_memory is not None and views.teacher_patches is not None:
                    patches = views.teacher_patches[batch:]  # [B, L, d]
                    token = torch.randint(patches.shape[1], (batch,), generator=self._generator(2, get_rank()))
                    self.patch_memory.enqueue(patches[torch.arange(batch), token.to(patches.device)])
                self._advance_step()
                terms = self.bank_terms(batch)

        named = {
            "sop_loss": class_out.loss.detach(),
            "mim_loss": None if mim_loss is None else mim_loss.detach(),
            "koleo_loss": None if koleo is None else koleo.detach(),
            "teacher_entropy": class_out.teacher_entropy,
        }
        output = SOPForPreTrainingOutput(
            loss=loss,
            **named,
            student_embeddings=s_all,
            teacher_embeddings=t_cls,
            loss_terms={**{k: v for k, v in named.items() if v is not None}, **terms},
        )
        return output if return_dict else output.to_tuple()


# SOP paper scale (docs/method.md §12; arXiv 2505.21533, Table 10): 4096 anchors per task, 9 supports, 4 tasks.
_SOP_PAPER_BANK = dict(class_memory_size=65536, num_anchors=4096, num_support=9, num_tasks=4)
# SOP reference code (sthalles/sop main script defaults; docs/method.md §12): 64 anchors per task, no local crops,
# mask ratio 0.3.
_SOP_CODE_DATA = dict(global_crop_size=224, global_crop_scale=(0.14, 1.0), num_local_crops=0, mask_ratio=(0.3,))

# The demo's anchors and supports (256 anchors -> 128 kept, 5 supports, 2 tasks), its patch bank for SOP-MIM, and KoLeo
# 0.1 against the head-output collapse of short runs (docs/method.md §20); the recipes add their class memory size.
_DEMO_BANK = dict(num_anchors=256, num_support=5, num_tasks=2, patch_memory_size=1024, num_patch_anchors=128,
                  koleo_loss_weight=0.1)  # fmt: skip
SMALL_IMAGES_STEPS = 3200  # about 28 minutes of training on an idle 2-core CPU (0.53 s per step of 128 images)

RECIPES: dict[str, dict[str, dict]] = {
    # The demo's ViT with a bank of the demo's scale (1024 rows: the 4,000-image set needs a fresh bank), no SOP-MIM
    # (28-px images have 49 patches).
    "demo": recipe(
        dict(**DEMO_VIT, **DEMO_HEAD, **_DEMO_BANK, class_memory_size=1024),
        DEMO_DATA,
        DEMO_TRAINING,
    ),  # fmt: skip
    # 28-px images (Fashion-MNIST, MNIST-like; docs/training.md "Beyond raw pixels"): patch 7 (a 4 x 4 grid) lets a
    # wider, deeper ViT (width 128, depth 6) train on 2 CPU cores in about 30 minutes; milder global crops (0.5, 1);
    # the demo's bank at the gate's 4096 rows. Chosen one lever at a time on 6,000 training images held out
    # (--train_val_split 0.1), never the test split. For other sizes keep the 4 x 4 grid: --image_size 56
    # --patch_size 14.
    "small_images": recipe(
        dict(
            **{
                **DEMO_VIT,
                "patch_size": 7,
                "hidden_size": 128,
                "num_hidden_layers": 6,
                "num_attention_heads": 4,
                "intermediate_size": 512,
            },
            **DEMO_HEAD,
            **_DEMO_BANK,
            class_memory_size=4096,
        ),
        {
            **{k: v for k, v in DEMO_DATA.items() if k != "dataset_name"},
            "global_crop_scale": (0.5, 1.0),
            "monitor_steps": 500,
        },
        {
            **DEMO_TRAINING,
            "max_steps": SMALL_IMAGES_STEPS,
            "warmup_steps": SMALL_IMAGES_STEPS // 10,
            "save_steps": 1000,
        },
    ),  # fmt: skip
    "vit_small_imagenet": recipe(
        dict(preset="vit_small", image_size=224, patch_size=16, drop_path_rate=0.1, num_anchors=64),
        _SOP_CODE_DATA,
        IMAGENET_TRAINING,
    ),  # fmt: skip
    "vit_base_imagenet": recipe(
        dict(preset="vit_base", image_size=224, patch_size=16, drop_path_rate=0.1, num_anchors=64),
        _SOP_CODE_DATA,
        IMAGENET_TRAINING,
    ),  # fmt: skip
    # SOP paper scale + iBOT multi-crop: ViT-S/16 (iBOT: 64 images per GPU x 16 GPUs, teacher temperature 0.04 as in
    # SOP's code; the SOP repository publishes no per-architecture epochs, so 100 as its code).
    "vit_small_imagenet_multicrop": recipe(
        dict(preset="vit_small", image_size=224, patch_size=16, drop_path_rate=0.1, **_SOP_PAPER_BANK),
        IBOT_MULTICROP,
        {**IMAGENET_TRAINING, "per_device_train_batch_size": 64},
    ),  # fmt: skip
    # ViT-B/16: as ViT-S (iBOT trains ViT-B with the same crops and masks).
    "vit_base_imagenet_multicrop": recipe(
        dict(preset="vit_base", image_size=224, patch_size=16, drop_path_rate=0.1, **_SOP_PAPER_BANK),
        IBOT_MULTICROP,
        {**IMAGENET_TRAINING, "per_device_train_batch_size": 64},
    ),  # fmt: skip
    # ViT-L/16: stochastic depth 0.3 (library choice inside the 0.2-0.4 range large ViTs use; the SOP repository
    # gives none), smaller per-GPU batch to fit 10 local crops.
    "vit_large_imagenet_multicrop": recipe(
        dict(preset="vit_large", image_size=224, patch_size=16, drop_path_rate=0.3, **_SOP_PAPER_BANK),
        IBOT_MULTICROP,
        {**IMAGENET_TRAINING, "per_device_train_batch_size": 32},
    ),  # fmt: skip
}

_SOP_BIBTEX = """@inproceedings{silva2025sop,
  title         = {Self-Organizing Visual Prototypes for Non-Parametric Representation Learning},
  author        = {Silva, Thalles and Pedrini, Helio and Ram{\\'\\i}rez Rivera, Ad{\\'\\i}n},
  booktitle     = {Proceedings of the 42nd International Conference on Machine Learning (ICML)},
  year          = {2025},
  eprint        = {2505.21533},
  archivePrefix = {arXiv}
}"""

SOP = Method(
    name="sop",
    title="SOP",
    summary=(
        "SOP learns without a learnable prototype layer. The EMA teacher's [CLS] embeddings fill a FIFO memory "
        "bank; every step draws random *anchors* from the bank and attaches to each one its k nearest "
        "*support embeddings*. An anchor and its supports form a self-organizing prototype: a view is scored "
        "against all support embeddings, each support votes for its prototype with a soft label (the anchor "
        "votes most strongly), and the student is trained to reproduce the teacher's voted distribution over "
        "prototypes across views. Several independent anchor draws (tasks) are averaged per step."
    ),
    citation=_SOP_BIBTEX,
    config_class=SOPConfig,
    model_class=SOPForPreTraining,
    recipes=RECIPES,
    loss_labels={"sop_loss": "SOP [CLS] loss", "mim_loss": "SOP-MIM patch loss", "koleo_loss": "KoLeo"},
    logged_terms=("sop_loss", "mim_loss", "koleo_loss", "teacher_entropy", "bank_fill", "patch_bank_fill"),
    uniform_reference=lambda config: (config.num_kept_anchors, "P'"),
    entropy_prototypes=lambda config: config.num_kept_anchors,
    uses_masks=lambda config: config.mim_loss_weight > 0,
    card_rows=(
        ("Class memory size K", "class_memory_size"),
        ("Anchors per task P", "num_anchors"),
        ("Support embeddings per prototype E", "num_support"),
        ("Tasks per step T", "num_tasks"),
        ("Patch memory size", "patch_memory_size"),
        ("Patch anchors per task", "num_patch_anchors"),
        ("SOP-MIM loss weight", "mim_loss_weight"),
    ),
    card_title=lambda config: "SOP-MIM" if getattr(config, "mim_loss_weight", 0) > 0 else "SOP",
)

__all__ = ["SOP", "SOPForPreTraining", "SOPForPreTrainingOutput"]
