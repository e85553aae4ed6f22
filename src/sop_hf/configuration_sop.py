"""SOPConfig: the architecture of the SOP encoder and every size that shapes a weight or buffer of pretraining.

Field names follow transformers' ``ViTConfig`` (``hidden_size``, ``num_hidden_layers``, ...). Training-only values
(learning rate, schedules) live in the training arguments; the temperatures here are only the defaults a forward
uses when the training loop passes no scheduled value.

>>> from sop_hf import SOPConfig
>>> config = SOPConfig.from_preset("vit_small", drop_path_rate=0.0)
>>> (config.hidden_size, config.num_hidden_layers, config.num_attention_heads)
(384, 12, 6)
"""

import math
from difflib import get_close_matches

from transformers import PreTrainedConfig
from transformers.activations import ACT2FN
from transformers.utils import logging

try:  # transformers >= 5 keeps the backbone helpers at the top level
    from transformers.backbone_utils import BackboneConfigMixin
except ImportError:  # pragma: no cover - older layout
    from transformers.utils.backbone_utils import BackboneConfigMixin

# Widths / depths / heads of the standard ViTs (patch 16, MLP ratio 4), as in DINO/iBOT/SOP.
PRESETS: dict[str, dict] = {
    "vit_tiny": {"hidden_size": 192, "num_hidden_layers": 12, "num_attention_heads": 3},
    "vit_small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    "vit_base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "vit_large": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
}


logger = logging.get_logger(__name__)

# Keyword arguments every transformers config takes besides its dataclass fields (older names, Hub metadata).
_BASE_KEYS = set(PreTrainedConfig.__dataclass_fields__) | {
    "torch_dtype", "num_labels", "attn_implementation", "model_type", "transformers_version", "auto_map",
    "name_or_path", "use_return_dict",
}  # fmt: skip


def unknown_fields(config: PreTrainedConfig, kwargs: dict) -> dict[str, str | None]:
    """``{key: closest field or None}`` for the keys of ``kwargs`` that are no field of ``config``'s class.

    Such keys are kept as attributes, as ``PreTrainedConfig`` does: transformers passes its own (``rms_norm_eps``,
    ``tie_word_embeddings``, ...) to every config, and a ``config.json`` written by a newer version may carry a field
    this one does not know. A key within a typo of a field is logged as a warning naming that field.
    """
    fields = sorted(f for f in type(config).__dataclass_fields__ if not f.startswith("_"))
    unknown = sorted(k for k in kwargs if not k.startswith("_") and k not in _BASE_KEYS
                     and not hasattr(PreTrainedConfig, k) and k not in fields)  # fmt: skip
    found = {k: next(iter(get_close_matches(k, fields, 1)), None) for k in unknown}
    typos = [f"{k!r} (did you mean {close!r}?)" for k, close in found.items() if close is not None]
    if typos:
        logger.warning(f"{type(config).__name__} got unknown field(s) {', '.join(typos)}; kept as attributes, "
                       "unused by the model")  # fmt: skip
    return found


class SOPConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""Configuration of [`SOPModel`] (the ViT encoder) and [`SOPForPreTraining`] (heads, memory banks, SOP losses).

    Architecture (as ``ViTConfig``; a pre-norm DINO/iBOT ViT):
        image_size: Side of the (square) training resolution; position embeddings are learned for this grid and
            bicubically interpolated for other input sizes. Change it only when pretraining at another resolution.
        patch_size: Side of a patch. 16 for the standard presets; smaller (4-8) for tiny images such as 28-px.
        num_channels: Input channels (3 for RGB).
        hidden_size: Token width. 192/384/768/1024 for ViT-T/S/B/L.
        num_hidden_layers: Number of transformer blocks.
        num_attention_heads: Attention heads; must divide ``hidden_size``.
        intermediate_size: MLP hidden width; ``None`` means 4 x ``hidden_size`` (the MLP ratio of all presets).
        hidden_act: MLP activation; ``"gelu"`` is the exact (erf) GELU of DINO/iBOT.
        qkv_bias: Bias in the fused query/key/value projection.
        layer_norm_eps: LayerNorm epsilon; 1e-6 as in DINO-style ViTs (``ViTConfig`` uses 1e-12).
        drop_path_rate: Stochastic depth of the *student*, rising linearly from 0 at the first block to this value at
            the last. Raise to 0.2-0.4 for ViT-L; the teacher never drops paths.
        initializer_range: Std of the truncated-normal initialisation of weights and embeddings.
        use_mask_token: Create the learnable mask token that replaces masked patch embeddings (iBOT / SOP-MIM).
            ``None`` (the default) follows ``mim_loss_weight``: a token exactly when SOP-MIM is on, so that one
            switch turns SOP-MIM on and DDP never sees an unused parameter. ``True`` keeps a token without SOP-MIM
            (masked inputs for other uses); ``False`` with ``mim_loss_weight > 0`` is an error.

    Downstream heads (``SOPForImageClassification``, ``SOPBackbone``; none of them shapes an encoder weight):
        classifier_mean_patch: Feed the classifier [CLS] concatenated with the mean patch token (2 x ``hidden_size``
            inputs, as ``Dinov2ForImageClassification``) instead of [CLS] alone. Turn on for dense or fine-grained
            labels where patch statistics help; a checkpoint's head only loads with the same setting.
        out_features / out_indices: Stages whose feature maps ``SOPBackbone`` returns, by name (``"stem"`` is the
            embedding output, ``"stageN"`` the output of block N) or by index into ``stage_names``; either one sets
            the other. ``None`` (both) means the last block only. Passed as keyword arguments, read as properties.

    Projection head (one head for [CLS] and patch tokens):
        head_hidden_size: Hidden width of the MLP head (2048 in SOP/iBOT).
        head_output_size: Output width ``d`` of the L2-normalised embedding that the memory banks store (256).
        head_num_layers: Linear layers of the head (3).

    SOP [CLS] loss (docs/method.md §5-§8):
        class_memory_size: Rows ``K`` of the class memory bank (65536). Lower for small datasets, so that the bank
            holds recent embeddings (the bank spans ``K / global_batch`` steps).
        num_anchors: Anchors ``P`` drawn per task (4096 at paper scale).
        anchor_keep_fraction: Fraction of the anchors kept as prototypes (0.5: ``P' = P/2``) when ``num_support > 1``;
            all are kept for single-support banks.
        num_support: Support embeddings per prototype ``E``: the anchor plus ``E - 1`` nearest neighbours (9: k = 8).
        num_tasks: Independent anchor draws per step ``T``, averaged (4).
        vote_smoothing: ``epsilon``; the anchor's own vote is ``1 - epsilon`` (0.1).
        neighbour_search_dtype: Precision of the anchor-to-memory similarity search: ``"auto"`` (bfloat16 on CUDA,
            float32 on CPU), ``"float32"``, ``"bfloat16"`` (about 4x faster on CPUs with AVX512-BF16/AMX) or
            ``"float16"``. The chosen neighbours' votes are recomputed in float32; near-ties may pick other
            neighbours than a float32 search.

    SOP-MIM patch loss:
        patch_memory_size: Rows of the patch memory bank (8192).
        num_patch_anchors: Patch anchors per task (512); single support, so plain label smoothing.
        num_patch_tasks: Patch tasks per step (1).
        mim_loss_weight: Weight of the SOP-MIM term; 0 turns SOP-MIM off (no patch bank read, no mask token). A
            positive weight alone turns SOP-MIM on (the mask token follows, see ``use_mask_token``).

    Other keyword arguments are kept as attributes, as ``PreTrainedConfig`` does (transformers passes its own, and a
    newer ``config.json`` may carry more fields); one within a typo of a field above is logged as a warning naming it.

    Other loss settings:
        koleo_loss_weight: Weight of the KoLeo regulariser on the student [CLS] (0 = off, as in the reference).
        student_temp: Student temperature (0.1).
        teacher_temp: Teacher [CLS] temperature used when the loop passes none (0.04).
        teacher_patch_temp: Teacher patch temperature used when the loop passes none; ``None`` = ``teacher_temp``.
    """

    model_type = "sop"

    image_size: int = 224
    patch_size: int = 16
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int | None = None
    hidden_act: str = "gelu"
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    drop_path_rate: float = 0.1
    initializer_range: float = 0.02
    use_mask_token: bool | None = None

    head_hidden_size: int = 2048
    head_output_size: int = 256
    head_num_layers: int = 3

    class_memory_size: int = 65536
    num_anchors: int = 4096
    anchor_keep_fraction: float = 0.5
    num_support: int = 9
    num_tasks: int = 4
    vote_smoothing: float = 0.1
    neighbour_search_dtype: str = "auto"

    patch_memory_size: int = 8192
    num_patch_anchors: int = 512
    num_patch_tasks: int = 1
    mim_loss_weight: float = 1.0

    koleo_loss_weight: float = 0.0
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    teacher_patch_temp: float | None = None

    classifier_mean_patch: bool = False
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        kwargs.pop("stage_names", None)  # recomputed below from num_hidden_layers, never read back from a file
        out_features, out_indices = kwargs.pop("out_features", None), kwargs.pop("out_indices", None)
        unknown_fields(self, kwargs)  # kept as attributes by PreTrainedConfig; a near-typo is logged
        if self.use_mask_token is not None and not isinstance(self.use_mask_token, bool):
            raise ValueError(f"SOPConfig.use_mask_token must be True, False or None, got {self.use_mask_token!r}")
        if self.intermediate_size is None:
            self.intermediate_size = 4 * self.hidden_size
        if self.teacher_patch_temp is None:
            self.teacher_patch_temp = self.teacher_temp
        self.validate_sizes()
        if self.use_mask_token is None:  # one switch: SOP-MIM brings its mask token
            self.use_mask_token = self.mim_loss_weight > 0
        if not isinstance(self.classifier_mean_patch, bool):
            raise ValueError(f"SOPConfig.classifier_mean_patch must be a bool, got {self.classifier_mean_patch!r}")
        # Backbone stages: the embeddings, then every block.
        self.stage_names = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        self.set_output_features_output_indices(
            out_features=list(out_features) if out_features is not None else self._out_features,
            out_indices=list(out_indices) if out_indices is not None else self._out_indices,
        )
        super().__post_init__(**kwargs)

    def validate_sizes(self) -> None:
        """Raise ``ValueError`` naming the first field outside its allowed range."""
        ints_at_least = {
            "image_size": 1, "patch_size": 1, "num_channels": 1, "hidden_size": 1, "num_hidden_layers": 1,
            "num_attention_heads": 1, "intermediate_size": 1, "head_hidden_size": 1, "head_output_size": 1,
            "head_num_layers": 1, "class_memory_size": 2, "num_anchors": 2, "num_support": 1, "num_tasks": 1,
            "patch_memory_size": 2, "num_patch_anchors": 2, "num_patch_tasks": 1,
        }  # fmt: skip
        for name, low in ints_at_least.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"SOPConfig.{name} must be an integer >= {low}, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"SOPConfig.hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                f"({self.num_attention_heads})"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"SOPConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if not isinstance(self.hidden_act, str) or self.hidden_act not in ACT2FN:
            raise ValueError(f"SOPConfig.hidden_act must be one of transformers' activations "
                             f"({', '.join(sorted(ACT2FN))}), got {self.hidden_act!r}")  # fmt: skip
        in_range = {
            "drop_path_rate": (0.0, 1.0, True), "vote_smoothing": (0.0, 1.0, True),
            "anchor_keep_fraction": (0.0, 1.0, False), "layer_norm_eps": (0.0, 1.0, False),
            "initializer_range": (0.0, 1.0, False),
        }  # fmt: skip
        for name, (low, high, low_inclusive) in in_range.items():
            value = getattr(self, name)
            ok = _is_number(value) and (low <= value if low_inclusive else low < value) and value <= high
            if not ok:
                bracket = "[" if low_inclusive else "("
                raise ValueError(f"SOPConfig.{name} must be in {bracket}{low}, {high}], got {value!r}")
        for name in ("student_temp", "teacher_temp", "teacher_patch_temp"):
            value = getattr(self, name)
            if not _is_number(value) or value <= 0:
                raise ValueError(f"SOPConfig.{name} must be a finite number > 0, got {value!r}")
        for name in ("mim_loss_weight", "koleo_loss_weight"):
            value = getattr(self, name)
            if not _is_number(value) or value < 0:
                raise ValueError(f"SOPConfig.{name} must be a finite number >= 0, got {value!r}")
        if self.neighbour_search_dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ValueError(
                "SOPConfig.neighbour_search_dtype must be one of 'auto', 'float32', 'bfloat16', 'float16', got "
                f"{self.neighbour_search_dtype!r}"
            )
        if self.num_anchors >= self.class_memory_size:
            raise ValueError(
                f"SOPConfig.num_anchors must be in [2, class_memory_size - 1] = [2, {self.class_memory_size - 1}], "
                f"got {self.num_anchors}"
            )
        if self.class_memory_size - self.num_anchors < self.num_support - 1:
            raise ValueError(
                f"SOPConfig.num_support must be in [1, class_memory_size - num_anchors + 1] = "
                f"[1, {self.class_memory_size - self.num_anchors + 1}], got {self.num_support}"
            )
        kept = self.num_kept_anchors
        if kept < 2:
            raise ValueError(
                f"SOPConfig.anchor_keep_fraction keeps {kept} of num_anchors={self.num_anchors} anchors; at least 2 "
                "prototypes are needed (raise num_anchors or anchor_keep_fraction)"
            )
        if self.num_patch_anchors > self.patch_memory_size:
            raise ValueError(
                f"SOPConfig.num_patch_anchors must be in [2, patch_memory_size] = [2, {self.patch_memory_size}], "
                f"got {self.num_patch_anchors}"
            )
        if self.mim_loss_weight > 0 and self.use_mask_token is False:
            raise ValueError(
                f"SOPConfig.use_mask_token must be True (or None) when mim_loss_weight > 0 (SOP-MIM masks "
                f"patches), got use_mask_token=False with mim_loss_weight={self.mim_loss_weight}"
            )

    @property
    def num_kept_anchors(self) -> int:
        """``P'``: prototypes kept per task (all anchors for single-support banks)."""
        return self.num_anchors if self.num_support == 1 else int(self.anchor_keep_fraction * self.num_anchors)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "SOPConfig":
        """Build a config from a named ViT preset (``vit_tiny``, ``vit_small``, ``vit_base``, ``vit_large``).

        Any field can be overridden by keyword, e.g. ``SOPConfig.from_preset("vit_small", class_memory_size=16384)``.
        """
        if name not in PRESETS:
            raise ValueError(f"Unknown SOP preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


def _is_number(value) -> bool:
    """A finite int or float (not a bool): NaN and infinities fail every range check."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


__all__ = ["SOPConfig", "PRESETS", "unknown_fields"]
