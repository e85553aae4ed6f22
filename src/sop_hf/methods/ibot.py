"""iBOT (ICLR 2022, arXiv 2111.07832; docs/methods/ibot.md): DINO's [CLS] self-distillation plus masked image
modelling with an online tokenizer.

The student sees block-masked global crops (the data pipeline's masks, ``uses_masks``); its head maps every token.
Besides DINO's [CLS] loss, every masked patch of a student global crop must match the teacher's centred, sharpened
distribution for the same patch of the unmasked crop, over ``num_patch_prototypes`` prototypes (the [CLS] layer
itself with ``shared_head``, iBOT's ViT recipe) and with its own centre. iBOT reuses DINO's model (``dino.py``)
and adds the patch layer, the patch centre and the patch term.

>>> import torch
>>> from sop_hf.methods import build_config
>>> config = build_config("ibot", dict(backbone_config=dict(model_type="sop", image_size=16, patch_size=8,
...     hidden_size=32, num_hidden_layers=1, num_attention_heads=2), head_hidden_size=32, head_output_size=16,
...     num_prototypes=64, num_patch_prototypes=64))
>>> model = IBOTForPreTraining(config)
>>> masks = torch.zeros(4, 4, dtype=torch.bool); masks[:, 0] = True
>>> out = model(pixel_values=torch.randn(4, 3, 16, 16), bool_masked_pos=masks)
>>> bool(torch.isfinite(out.loss)), sorted(out.loss_terms)
(True, ['cls_loss', 'mim_loss', 'teacher_entropy'])
"""

import torch

from ..losses.dino import centered_teacher_probs, updated_center
from ..losses.ibot import masked_rows_patch_loss
from .core import Method
from .dino import DINOConfig, DINOForPreTraining, DINOPrototypes
from .lineage import LineageForPreTrainingOutput
from .recipes import DEMO_DATA, DEMO_HEAD, DEMO_TRAINING, DEMO_VIT, IBOT_MULTICROP, IMAGENET_TRAINING, recipe


class IBOTConfig(DINOConfig):
    """``DINOConfig`` (iBOT's sizes) plus the patch loss.

    Args:
        num_prototypes: [CLS] prototypes K (iBOT's ``out_dim``, 8192).
        num_patch_prototypes: Patch prototypes (iBOT's ``patch_out_dim``, 8192); equal to ``num_prototypes`` when
            ``shared_head``.
        shared_head: One prototype layer for [CLS] and patch tokens (iBOT's ViT-S/B recipes; its code's default is a
            separate patch layer). The projection MLP is always shared.
        mim_loss_weight: Weight of the masked-patch loss (iBOT's lambda2, 1). 0 turns iBOT into DINO (and the data
            pipeline then makes no masks).
        teacher_patch_temp: Default teacher patch temperature when the training loop passes none (0.07 after
            iBOT's warm-up from 0.04).
    """

    model_type = "ibot"

    num_prototypes: int = 8192
    num_patch_prototypes: int = 8192
    shared_head: bool = True
    mim_loss_weight: float = 1.0
    teacher_patch_temp: float = 0.07

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        name = type(self).__name__
        if self.is_resnet:
            raise ValueError(f"{name}.backbone_config must be an SOPConfig (iBOT needs patch tokens), got a "
                             f"ResNetConfig")  # fmt: skip
        if self.shared_head and self.num_patch_prototypes != self.num_prototypes:
            raise ValueError(f"{name}.num_patch_prototypes must equal num_prototypes={self.num_prototypes} with "
                             f"shared_head, got {self.num_patch_prototypes}")  # fmt: skip
        if self.num_patch_prototypes < 2:
            raise ValueError(f"{name}.num_patch_prototypes must be >= 2, got {self.num_patch_prototypes}")
        if not 0 <= self.mim_loss_weight < float("inf"):
            raise ValueError(f"{name}.mim_loss_weight must be finite and >= 0, got {self.mim_loss_weight}")
        if not 0 < self.teacher_patch_temp < float("inf"):
            raise ValueError(f"{name}.teacher_patch_temp must be a finite number > 0, got {self.teacher_patch_temp}")


class IBOTForPreTraining(DINOForPreTraining):
    """DINO's model with a mask token in the student, a patch prototype layer (or the shared one) and a patch
    centre (persistent [1, K_p] buffer)."""

    config_class = IBOTConfig
    student_mask_token = True

    def build_prototypes(self, config: IBOTConfig) -> None:
        super().build_prototypes(config)
        if not config.shared_head:
            learn_norm = not config.norm_last_layer
            self.patch_prototypes = DINOPrototypes(config.head_output_size, config.num_patch_prototypes, learn_norm)
            self.teacher_patch_prototypes = DINOPrototypes(config.head_output_size, config.num_patch_prototypes,
                                                           learn_norm)  # fmt: skip
            self.ema_pairs = (*self.ema_pairs, ("patch_prototypes", "teacher_patch_prototypes"))
        self.register_buffer("patch_center", torch.zeros(1, config.num_patch_prototypes), persistent=True)  # [1, K_p]

    def patch_layers(self) -> tuple[DINOPrototypes, DINOPrototypes]:
        """(student, teacher) prototype layers of the patch tokens."""
        if self.config.shared_head:
            return self.prototypes, self.teacher_prototypes
        return self.patch_prototypes, self.teacher_patch_prototypes

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
        """One iBOT step. Args as ``SOPForPreTraining.forward``: ``bool_masked_pos`` [2B, L] masks the student's
        global crops (None: no patch loss, the step is DINO's)."""
        config = self.config
        student_temp = config.student_temp if student_temp is None else student_temp
        teacher_temp = config.teacher_temp if teacher_temp is None else teacher_temp
        teacher_patch_temp = config.teacher_patch_temp if teacher_patch_temp is None else teacher_patch_temp
        return_dict = return_dict if return_dict is not None else config.return_dict
        use_mim = bool_masked_pos is not None and config.mim_loss_weight > 0
        views = self.encode_views(
            pixel_values, local_pixel_values, bool_masked_pos, patch_tokens=use_mim, masked_patches_only=True
        )  # student patches: [M, d], the masked ones only
        cls_loss, terms = self.method_loss(views.student, views.teacher, student_temp, teacher_temp)
        terms["cls_loss"], loss = cls_loss.detach(), cls_loss
        if use_mim:
            student_layer, teacher_layer = self.patch_layers()
            s_logits = student_layer(views.student_patches)  # [M, K_p]
            with torch.no_grad():
                t_logits = teacher_layer(views.teacher_patches)  # [2B, L, K_p]: every patch feeds the centre
            masked_logits = t_logits[bool_masked_pos]  # [M, K_p]
            targets = centered_teacher_probs(masked_logits, self.patch_center, teacher_patch_temp)  # [M, K_p]
            terms["mim_loss"] = masked_rows_patch_loss(s_logits, targets, bool_masked_pos, student_temp)
            loss = loss + config.mim_loss_weight * terms["mim_loss"]
            if self.training:
                self.patch_center.copy_(updated_center(self.patch_center, t_logits, config.center_momentum))
        output = self.finish_step(loss, terms, views)
        return output if return_dict else output.to_tuple()


# iBOT's ViT-S/16 recipe (bytedance/ibot README, 800 epochs, 16 GPUs x 64 images): K = K_p = 8192 with a shared
# head, last layer not normalised, teacher temperature 0.04 -> 0.07 and patch temperature 0.04 -> 0.07 over 30
# epochs, momentum 0.996 -> 1, AdamW lr 5e-4 x batch/256, 10 warm-up epochs, weight decay 0.04 -> 0.4, clip 3,
# drop path 0.1; crops and masks as IBOT_MULTICROP (2 x 224 (0.25, 1) + 10 x 96 (0.05, 0.25); mask ratio 0 or
# 0.3 +- 0.2 per crop, i.e. half the crops unmasked, the others U[0.1, 0.5] in blocks). 75.2 % k-NN / 77.9 % linear.
_IBOT_VIT_SMALL = dict(backbone_config=dict(model_type="sop", preset="vit_small", image_size=224, patch_size=16,
                                            drop_path_rate=0.1, use_mask_token=False, mim_loss_weight=0.0),
                       image_size=224, head_hidden_size=2048, head_output_size=256, head_num_layers=3,
                       num_prototypes=8192, num_patch_prototypes=8192, shared_head=True,
                       norm_last_layer=False)  # fmt: skip

RECIPES: dict[str, dict[str, dict]] = {
    # The demo's ViT, data and optimisation (as SOP's demo), K = K_p = 1024 with a shared head (as DINO's demo),
    # last layer normalised; iBOT's masks (0 or 0.3 +- 0.2 per crop: on 7 x 7 patch grids about 5-25 patches of half
    # the crops); teacher temperatures at iBOT's warm-up start 0.04 throughout (500 steps are ~16 epochs); KoLeo 0.1
    # as DINO's demo (trial 1 without it, stopped at step 60: the batch-mean teacher entropy went 5.6 -> 1.3 nats of
    # ln 1024 = 6.9 by step 50, 4.6 at step 60).
    "demo": recipe(
        dict(
            backbone_config=dict(model_type="sop", **DEMO_VIT),
            image_size=DEMO_VIT["image_size"],
            **DEMO_HEAD,
            num_prototypes=1024,
            num_patch_prototypes=1024,
            shared_head=True,
            norm_last_layer=True,
            koleo_loss_weight=0.1,
        ),
        {**DEMO_DATA, "mask_ratio": (0.0, 0.3), "mask_ratio_var": (0.0, 0.2)},
        DEMO_TRAINING,
    ),  # fmt: skip
    "ibot_vit_small_imagenet": recipe(
        _IBOT_VIT_SMALL,
        IBOT_MULTICROP,
        {
            **IMAGENET_TRAINING,
            "num_train_epochs": 800,
            "per_device_train_batch_size": 64,
            "base_learning_rate": 5e-4,
            "min_lr": 1e-6,
            "teacher_temp": 0.07,
            "warmup_teacher_temp": 0.04,
            "teacher_patch_temp": 0.07,
            "warmup_teacher_patch_temp": 0.04,
            "warmup_teacher_temp_epochs": 30,
        },
    ),  # fmt: skip
}

IBOT = Method(
    name="ibot",
    title="iBOT",
    summary=(
        "iBOT adds masked image modelling to DINO's self-distillation: the student sees block-masked global crops and "
        "must predict, for every masked patch, the EMA teacher's centred and sharpened distribution over learnable "
        "prototypes for that patch of the unmasked crop (the teacher acts as an online tokenizer), while its [CLS] "
        "token is trained with DINO's cross-view loss."
    ),
    citation="""@inproceedings{zhou2022ibot,
  title         = {{iBOT}: Image {BERT} Pre-Training with Online Tokenizer},
  author        = {Zhou, Jinghao and Wei, Chen and Wang, Huiyu and Shen, Wei and Xie, Cihang and Yuille, Alan and
                   Kong, Tao},
  booktitle     = {International Conference on Learning Representations (ICLR)},
  year          = {2022},
  eprint        = {2111.07832},
  archivePrefix = {arXiv}
}""",
    config_class=IBOTConfig,
    model_class=IBOTForPreTraining,
    recipes=RECIPES,
    loss_labels={"cls_loss": "[CLS] loss (DINO)", "mim_loss": "masked-patch loss", "koleo_loss": "KoLeo"},
    logged_terms=("cls_loss", "mim_loss", "koleo_loss", "teacher_entropy"),
    uniform_reference=lambda config: (config.num_prototypes, "K"),
    entropy_prototypes=lambda config: config.num_prototypes,
    uses_masks=lambda config: config.mim_loss_weight > 0,
    card_rows=(
        ("Prototypes K", "num_prototypes"),
        ("Patch prototypes", "num_patch_prototypes"),
        ("Shared head", "shared_head"),
        ("Masked-patch loss weight", "mim_loss_weight"),
    ),  # fmt: skip
)

__all__ = ["IBOT", "IBOTConfig", "IBOTForPreTraining"]
