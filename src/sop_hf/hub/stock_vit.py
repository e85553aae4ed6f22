"""Export a SOP encoder as a stock ``transformers.ViTModel`` that anyone can load without sop_hf or custom code.

``SOPModel`` is a pre-norm DINO/iBOT ViT, which is exactly the architecture of ``ViTModel``; only the parameter names
differ and the query/key/value projection is fused. ``export_to_vit`` builds the ``ViTConfig`` and copies the weights
(the fused ``qkv`` splits into ``q_proj``, ``k_proj``, ``v_proj`` in that order); ``save_stock_vit`` writes that
model as safetensors together with a stock ``BitImageProcessor`` config (resize the shorter side, centre crop,
ImageNet mean/std) that ``AutoImageProcessor`` resolves with plain transformers and without torchvision. The
resulting folder works with ``AutoModel``, ``ViTModel`` and ``pipeline("image-feature-extraction", model=dir)``.

From the command line the same export is ``sop-export --model DIR --output_dir OUT`` (see ``sop_hf.cli.export``).

>>> import torch
>>> from sop_hf import SOPConfig, SOPModel
>>> from sop_hf.hub.stock_vit import export_to_vit
>>> encoder = SOPModel(SOPConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
...     num_attention_heads=2)).eval()
>>> vit = export_to_vit(encoder)
>>> images = torch.randn(2, 3, 32, 32)
>>> delta = (vit(images).last_hidden_state - encoder(images).last_hidden_state).abs().max()
>>> bool(delta < 1e-5)
True
"""

import logging
import os

import torch
from transformers import BitImageProcessorPil, ViTConfig, ViTModel
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PILImageResampling

from ..configuration_sop import SOPConfig
from ..modeling_sop import SOPModel

logger = logging.getLogger(__name__)


def vit_config_from_sop(config: SOPConfig, image_size: int | None = None) -> ViTConfig:
    """The ``ViTConfig`` of the same architecture as ``config``.

    Args:
        config: Architecture of the SOP encoder.
        image_size: Native resolution of the exported model; ``None`` keeps ``config.image_size``.

    Returns:
        A ``ViTConfig`` with the SOP sizes, activation, qkv bias and LayerNorm epsilon (``ViTConfig`` defaults to
        1e-12, SOP/DINO use 1e-6) and no dropout.
    """
    image_size = config.image_size if image_size is None else image_size
    return ViTConfig(
        image_size=image_size,
        patch_size=config.patch_size,
        num_channels=config.num_channels,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_act=config.hidden_act,
        qkv_bias=config.qkv_bias,
        layer_norm_eps=config.layer_norm_eps,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=config.initializer_range,
        encoder_stride=config.patch_size,
    )


def vit_state_dict_from_sop(encoder: SOPModel, image_size: int | None = None) -> dict[str, torch.Tensor]:
    """The encoder's weights renamed to ``ViTModel`` (transformers >= 5.17) parameter names.

    Args:
        encoder: The SOP encoder. Its mask token (pretraining only) is left out.
        image_size: Native resolution of the exported model. When it differs from ``encoder.config.image_size``,
            the position table is resampled with the encoder's own bicubic interpolation, so the exported model at
            ``image_size`` computes what the encoder computes at that size.

    Returns:
        ``{vit_name: tensor}`` without a pooler (detached copies).
    """
    config = encoder.config
    image_size = config.image_size if image_size is None else image_size
    if image_size % config.patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({config.patch_size})")
    grid = image_size // config.patch_size
    dim = config.hidden_size
    source = encoder.state_dict()
    with torch.no_grad():
        positions = encoder.embeddings.interpolate_pos_encoding(grid, grid)  # [1, 1 + grid*grid, D]
    state = {
        "embeddings.cls_token": source["embeddings.cls_token"],
        "embeddings.position_embeddings": positions,
        "embeddings.patch_embeddings.projection.weight": source["embeddings.projection.weight"],
        "embeddings.patch_embeddings.projection.bias": source["embeddings.projection.bias"],
        "layernorm.weight": source["layernorm.weight"],
        "layernorm.bias": source["layernorm.bias"],
    }
    for i in range(config.num_hidden_layers):
        prefix = f"layers.{i}."  # the same block prefix in both models
        # The fused projection's output rows are [q; k; v], each [D, D] (the reshape in SOPAttention.forward).
        for part in ("weight", "bias"):
            if part == "bias" and not config.qkv_bias:
                continue
            query, key, value = source[f"{prefix}attention.qkv.{part}"].split(dim, dim=0)
            state[f"{prefix}attention.q_proj.{part}"] = query
            state[f"{prefix}attention.k_proj.{part}"] = key
            state[f"{prefix}attention.v_proj.{part}"] = value
        renames = {
            "attention.proj": "attention.o_proj",
            "norm1": "layernorm_before",
            "norm2": "layernorm_after",
            "mlp.fc1": "mlp.fc1",
            "mlp.fc2": "mlp.fc2",
        }
        for old, new in renames.items():
            for part in ("weight", "bias"):
                state[f"{prefix}{new}.{part}"] = source[f"{prefix}{old}.{part}"]
    return {name: tensor.detach().clone() for name, tensor in state.items()}


def export_to_vit(encoder: SOPModel, image_size: int | None = None, with_pooler: bool = False) -> ViTModel:
    """A plain ``transformers.ViTModel`` with the encoder's weights, in eval mode.

    Its ``last_hidden_state`` equals the encoder's (fp32: max abs difference ~1e-6). At other input sizes pass
    ``interpolate_pos_encoding=True`` to the ViT, whose bicubic interpolation is the encoder's.

    Args:
        encoder: A ``SOPModel`` (e.g. ``SOPForPreTraining.export_encoder("teacher")``).
        image_size: Native resolution of the exported model (``None``: the encoder's). See
            ``vit_state_dict_from_sop``.
        with_pooler: ``False`` builds the ViT with ``add_pooling_layer=False`` (``pooler_output`` is ``None``).
            ``True`` adds an *identity* pooler (dense = I, zero bias, ``pooler_act="linear"``), so ``pooler_output``
            is the final [CLS] token as in ``SOPModel`` and a reloaded checkpoint has no newly initialised
            (random) pooler weights. ``save_stock_vit`` uses ``True``.

    Returns:
        The ``ViTModel`` on the encoder's device and dtype.
    """
    if not isinstance(encoder, SOPModel):
        raise ValueError(f"export_to_vit expects a SOPModel, got {type(encoder).__name__}")
    vit_config = vit_config_from_sop(encoder.config, image_size)
    state = vit_state_dict_from_sop(encoder, image_size)
    if with_pooler:
        vit_config.pooler_act = "linear"
        dim = encoder.config.hidden_size
        reference = state["layernorm.weight"]
        state["pooler.dense.weight"] = torch.eye(dim, dtype=reference.dtype, device=reference.device)
        state["pooler.dense.bias"] = torch.zeros(dim, dtype=reference.dtype, device=reference.device)
    vit = ViTModel(vit_config, add_pooling_layer=with_pooler)
    vit.load_state_dict(state, strict=True)
    reference = next(encoder.parameters())
    return vit.to(device=reference.device, dtype=reference.dtype).eval()


def stock_image_processor(image_size: int, crop_pct: float = 0.875) -> BitImageProcessorPil:
    """The SOP evaluation transform as a stock transformers processor (no custom code, no torchvision).

    Shorter side to ``round(image_size / crop_pct)`` (bicubic), centre crop ``image_size``, rescale to [0, 1],
    ImageNet mean/std: the same numbers as ``SOPImageProcessor(size=image_size, crop_pct=crop_pct)``. Saved, its
    ``image_processor_type`` is ``BitImageProcessor``; ``AutoImageProcessor`` loads the PIL backend when torchvision
    is absent and the torchvision backend (same settings) when it is installed.

    Args:
        image_size: Output side in pixels (the encoder's native ``image_size`` unless you export another).
        crop_pct: Fraction of the resized shorter side kept by the crop; 1.0 resizes straight to ``image_size``.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be an integer >= 1, got {image_size!r}")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return BitImageProcessorPil(
        size={"shortest_edge": max(image_size, round(image_size / crop_pct))},
        crop_size={"height": image_size, "width": image_size},
        resample=PILImageResampling.BICUBIC,
        image_mean=list(IMAGENET_DEFAULT_MEAN),
        image_std=list(IMAGENET_DEFAULT_STD),
        do_resize=True,
        do_center_crop=True,
        do_rescale=True,
        do_normalize=True,
        do_convert_rgb=True,
    )


def save_stock_vit(
    encoder: SOPModel,
    save_directory: str | os.PathLike,
    image_size: int | None = None,
    crop_pct: float = 0.875,
) -> ViTModel:
    """Write the encoder as a stock ViT folder: ``config.json``, ``model.safetensors``, ``preprocessor_config.json``.

    Nothing in the folder refers to sop_hf: ``AutoModel.from_pretrained(save_directory)`` returns a ``ViTModel``,
    ``AutoImageProcessor.from_pretrained(save_directory)`` a ``BitImageProcessor`` and
    ``pipeline("image-feature-extraction", model=save_directory)`` works. The saved ViT has an identity pooler
    (``pooler_output`` = final [CLS], see ``export_to_vit``).

    Args:
        encoder: The SOP encoder to export.
        save_directory: Output folder (created if missing; existing files of the same names are overwritten).
        image_size: Resolution of the processor's crop and the model's native size; ``None`` uses the encoder's
            ``image_size``. Another value resamples the position table once (bicubic, as the encoder would at
            that size), so feature extraction at that size needs no ``interpolate_pos_encoding``.
        crop_pct: Fraction of the resized shorter side kept by the centre crop (0.875: 256 -> 224).

    Returns:
        The exported ``ViTModel``.
    """
    image_size = encoder.config.image_size if image_size is None else image_size
    processor = stock_image_processor(image_size, crop_pct)
    vit = export_to_vit(encoder, image_size=image_size, with_pooler=True)
    os.makedirs(save_directory, exist_ok=True)
    vit.save_pretrained(save_directory, safe_serialization=True)
    processor.save_pretrained(save_directory)
    logger.info("Saved a stock ViTModel + BitImageProcessor (image_size=%d) to %s", image_size, save_directory)
    return vit


__all__ = ["export_to_vit", "save_stock_vit", "stock_image_processor", "vit_config_from_sop", "vit_state_dict_from_sop"]
