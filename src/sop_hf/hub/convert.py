"""Convert checkpoints of the original SOP / iBOT / DINO ViT code into a ``SOPModel``.

The original code (facebookresearch/dino ``vision_transformer.py``, bytedance/ibot ``models/vision_transformer.py``,
and SOP, which builds on iBOT) names the ViT weights::

    cls_token [1, 1, D]   pos_embed [1, 1 + N, D]   patch_embed.proj.{weight [D, C, p, p], bias [D]}
    blocks.N.norm1.*  blocks.N.attn.qkv.* [3D, D]  blocks.N.attn.proj.*  blocks.N.norm2.*
    blocks.N.mlp.fc1.*  blocks.N.mlp.fc2.*  norm.*  masked_embed [1, D] (iBOT/SOP student)  or  mask_token

Training checkpoints (``checkpoint.pth``) nest them under ``teacher`` / ``student`` with ``backbone.`` and
``module.`` prefixes, next to the projection heads (``head.*``); released weights may nest them under
``state_dict`` or ``model``. ``convert_original_state_dict`` unwraps, strips the prefixes, drops everything that is
not the backbone (logging how many tensors) and renames to ``SOPModel`` names. The fused ``qkv`` keeps its layout
(rows ``[q; k; v]``, heads contiguous), which is also ``SOPAttention``'s. ``infer_config_from_state_dict`` reads the
sizes from the shapes (the head count cannot be read: it defaults to 64-dim heads), and ``load_original_checkpoint``
does all three steps. From the command line: ``sop-convert --checkpoint ckpt.pth --output_dir OUT`` (``sop_hf.cli.convert``).

>>> import torch
>>> from sop_hf.hub.convert import load_original_checkpoint
>>> encoder = load_original_checkpoint("checkpoint.pth", which="teacher")  # doctest: +SKIP
>>> encoder(torch.randn(1, 3, 224, 224)).pooler_output.shape  # doctest: +SKIP
torch.Size([1, 384])
"""

import argparse
import logging
import math
import os
import re

import torch

from ..configuration_sop import SOPConfig
from ..modeling_sop import SOPModel

logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "model")  # containers of released weights, unwrapped after teacher / student
PREFIXES = ("module.", "backbone.")  # DDP and MultiCropWrapper prefixes, stripped in any order and number
_BLOCK_RENAMES = {
    "norm1": "norm1",
    "attn.qkv": "attention.qkv",
    "attn.proj": "attention.proj",
    "norm2": "norm2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$")


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(checkpoint: dict, which: str) -> dict[str, torch.Tensor]:
    """Descend ``teacher`` / ``student`` / ``state_dict`` / ``model`` containers down to the tensor dict."""
    if which not in ("teacher", "student"):
        raise ValueError(f"which must be 'teacher' or 'student', got {which!r}")
    node, path = checkpoint, []
    while not _is_state_dict(node):
        if not isinstance(node, dict):
            raise ValueError(f"Expected a dict of tensors at checkpoint[{']['.join(path)}], got {type(node).__name__}")
        if which in node:
            key = which
        elif ("teacher" in node or "student" in node) and isinstance(node.get(_other(which)), dict):
            raise ValueError(f"The checkpoint has no {which!r} weights (it has {_other(which)!r}); pass which=...")
        else:
            key = next((k for k in WRAPPER_KEYS if isinstance(node.get(k), dict)), None)
            if key is None:
                tensors = {k: v for k, v in node.items() if isinstance(v, torch.Tensor)}
                if tensors:  # a flat dict with a few non-tensor entries (epoch, args, ...)
                    logger.info("Ignoring %d non-tensor entries of the checkpoint", len(node) - len(tensors))
                    node = tensors
                    break
                raise ValueError(
                    f"Found no weights in the checkpoint: expected tensors or one of the keys 'teacher', 'student', "
                    f"{', '.join(repr(k) for k in WRAPPER_KEYS)}; got keys {sorted(map(str, node))[:10]}"
                )
        path.append(repr(key))
        node = node[key]
    if path:
        logger.info("Reading the weights under checkpoint[%s]", "][".join(path))
    return node


def _other(which: str) -> str:
    return "student" if which == "teacher" else "teacher"


def _strip_prefixes(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _convert_with_sources(state_dict: dict, which: str = "teacher") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Like ``convert_original_state_dict``, also returning ``{sop_key: original_key}`` for error messages."""
    tensors = _unwrap(state_dict, which)
    converted, sources, ignored = {}, {}, []
    for original, tensor in tensors.items():
        key = _strip_prefixes(original)
        block = _BLOCK_KEY.match(key)
        if key == "cls_token":
            new = "embeddings.cls_token"
            if tensor.ndim != 3 or tensor.shape[:2] != (1, 1):
                raise ValueError(f"{original}: expected shape [1, 1, D], got {list(tensor.shape)}")
        elif key == "pos_embed":
            new = "embeddings.position_embeddings"
            if tensor.ndim != 3 or tensor.shape[0] != 1:
                raise ValueError(f"{original}: expected shape [1, 1 + N, D], got {list(tensor.shape)}")
        elif key in ("masked_embed", "mask_token"):
            new = "embeddings.mask_token"
            if tensor.shape[-1] != tensor.numel():  # [1, D] (iBOT) or [1, 1, D] or [D]
                raise ValueError(f"{original}: expected shape [1, D] or [1, 1, D], got {list(tensor.shape)}")
            tensor = tensor.reshape(1, 1, -1)
        elif key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
            new = "embeddings.projection." + key.rsplit(".", 1)[1]
        elif key in ("norm.weight", "norm.bias"):
            new = "layernorm." + key.rsplit(".", 1)[1]
        elif block is not None and block.group(2) in _BLOCK_RENAMES:
            index, module, part = block.groups()
            new = f"layers.{index}.{_BLOCK_RENAMES[module]}.{part}"
        elif key.startswith("blocks."):
            raise ValueError(
                f"Unsupported backbone weight {original!r}: only the DINO/iBOT block (norm1, attn.qkv, attn.proj, "
                "norm2, mlp.fc1, mlp.fc2) converts; layer scale, relative position bias and the like have no "
                "SOPModel counterpart"
            )
        else:
            ignored.append(original)
            continue
        if new in converted:
            raise ValueError(f"Two checkpoint keys map to {new}: {sources[new]!r} and {original!r}")
        converted[new], sources[new] = tensor, original
    if ignored:
        logger.info("Ignored %d non-backbone tensors (heads, optimizer state, ...), e.g. %s", len(ignored), ignored[:3])
    if "embeddings.projection.weight" not in converted:
        raise ValueError(
            "No ViT backbone found in the checkpoint (no 'patch_embed.proj.weight' after stripping "
            f"{'/'.join(PREFIXES)} prefixes); keys look like {sorted(tensors)[:5]}"
        )
    return converted, sources


def convert_original_state_dict(state_dict: dict, which: str = "teacher") -> dict[str, torch.Tensor]:
    """Rename an original SOP / iBOT / DINO ViT state dict to ``SOPModel`` parameter names.

    Args:
        state_dict: The loaded checkpoint: a flat tensor dict, or one nested under ``teacher`` / ``student`` /
            ``state_dict`` / ``model`` keys, with optional ``module.`` / ``backbone.`` key prefixes.
        which: Which network of a training checkpoint to read when it holds both (``"teacher"``, the one
            DINO/iBOT/SOP evaluate, or ``"student"``). Ignored for a flat state dict.

    Returns:
        ``{sop_name: tensor}``; ``masked_embed`` [1, D] becomes ``embeddings.mask_token`` [1, 1, D]. Heads and
        everything else that is not the backbone are dropped (their count is logged at INFO level).

    Raises:
        ValueError: No backbone found, an unsupported block weight, or a malformed token / position table.
    """
    return _convert_with_sources(state_dict, which)[0]


def infer_config_from_state_dict(state_dict: dict[str, torch.Tensor], **overrides) -> SOPConfig:
    """The ``SOPConfig`` whose ``SOPModel`` has the shapes of ``state_dict``.

    Read from the shapes: ``hidden_size``, ``num_channels`` and ``patch_size`` (patch conv), ``image_size`` (the
    position table's square grid times the patch size), ``num_hidden_layers``, ``intermediate_size``, ``qkv_bias``
    and ``use_mask_token``. Fixed: ``layer_norm_eps=1e-6`` and exact GELU (DINO/iBOT), ``drop_path_rate=0``
    (inference). ``num_attention_heads`` cannot be read from shapes; it defaults to 64-dim heads
    (``hidden_size // 64``: 6 for ViT-S, 12 for ViT-B), which is right for the DINO/iBOT/SOP models but must be
    passed for other widths.

    Args:
        state_dict: In ``SOPModel`` names, or in the original layout (it is converted with ``which="teacher"``).
        **overrides: Any ``SOPConfig`` field, taking precedence over the inferred value.

    Raises:
        ValueError: The heads cannot be inferred and were not given, or the patch kernel / position grid is not square.
    """
    if "embeddings.projection.weight" not in state_dict:
        state_dict = convert_original_state_dict(state_dict)
    weight = state_dict["embeddings.projection.weight"]  # [D, C, p, p]
    hidden_size, num_channels, patch_h, patch_w = weight.shape
    if patch_h != patch_w:
        raise ValueError(f"embeddings.projection.weight: non-square patch kernel {patch_h}x{patch_w} is not supported")
    num_positions = state_dict["embeddings.position_embeddings"].shape[1] - 1
    grid = math.isqrt(num_positions)
    if grid * grid != num_positions:
        raise ValueError(
            f"embeddings.position_embeddings: {num_positions} patch positions are not a square grid; pass image_size"
        )
    layer_ids = {int(k.split(".")[1]) for k in state_dict if k.startswith("layers.")}
    if layer_ids != set(range(len(layer_ids))):
        raise ValueError(f"Block indices are not contiguous from 0: {sorted(layer_ids)}")
    inferred = {
        "image_size": grid * patch_h,
        "patch_size": patch_h,
        "num_channels": num_channels,
        "hidden_size": hidden_size,
        "num_hidden_layers": len(layer_ids),
        "intermediate_size": state_dict["layers.0.mlp.fc1.weight"].shape[0] if layer_ids else 4 * hidden_size,
        "qkv_bias": "layers.0.attention.qkv.bias" in state_dict,
        "use_mask_token": "embeddings.mask_token" in state_dict,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-6,
        "drop_path_rate": 0.0,
    }
    settings = {**inferred, **overrides}
    if "num_attention_heads" not in settings:
        if hidden_size % 64:
            raise ValueError(
                f"Cannot infer num_attention_heads for hidden_size={hidden_size} (not a multiple of the usual 64-dim "
                "heads); pass num_attention_heads"
            )
        settings["num_attention_heads"] = hidden_size // 64
    if not settings["use_mask_token"]:
        settings.setdefault("mim_loss_weight", 0.0)  # SOPConfig requires a mask token for SOP-MIM
    return SOPConfig(**settings)


def _load_file(path: str | os.PathLike, weights_only: bool) -> dict:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ValueError(f"Checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        # DINO/iBOT training checkpoints also pickle their argparse.Namespace of arguments.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as error:  # pickle.UnpicklingError and the errors of unknown globals
        if not weights_only:
            raise
        raise ValueError(
            f"Could not load {path} with torch.load(weights_only=True): {error}. If you trust the file, pass "
            "weights_only=False (CLI: --trust_pickle), which may run code stored in it."
        ) from error


def load_original_checkpoint(
    path_or_state_dict: str | os.PathLike | dict,
    which: str = "teacher",
    config: SOPConfig | None = None,
    weights_only: bool = True,
    **config_overrides,
) -> SOPModel:
    """Build a ``SOPModel`` from an original SOP / iBOT / DINO checkpoint, in eval mode.

    Args:
        path_or_state_dict: A ``.pth`` / ``.pt`` (``torch.load``) or ``.safetensors`` file, or an already loaded
            checkpoint dict (see ``convert_original_state_dict`` for the accepted nestings).
        which: ``"teacher"`` (default, as DINO/iBOT/SOP evaluate it) or ``"student"`` for training checkpoints.
        config: Use this architecture instead of inferring one; its shapes must match the checkpoint.
        weights_only: Passed to ``torch.load``. Keep ``True`` unless the file needs other pickled objects and you
            trust it.
        **config_overrides: ``SOPConfig`` fields for ``infer_config_from_state_dict`` (e.g.
            ``num_attention_heads=3`` for ViT-T-like widths); not allowed together with ``config``.

    Raises:
        ValueError: A tensor's shape does not match the config (the message names the checkpoint key, the
            ``SOPModel`` key and both shapes), a weight is missing, or the file cannot be read.
    """
    if config is not None and config_overrides:
        raise ValueError(f"Pass either config or config overrides, not both (got {sorted(config_overrides)})")
    if isinstance(path_or_state_dict, dict):
        checkpoint = path_or_state_dict
    else:
        checkpoint = _load_file(path_or_state_dict, weights_only)
    state, sources = _convert_with_sources(checkpoint, which)
    if config is None:
        config = infer_config_from_state_dict(state, **config_overrides)
    model = SOPModel(config)
    expected = model.state_dict()
    if "embeddings.mask_token" in state and "embeddings.mask_token" not in expected:
        logger.info("Dropping %s: the config has use_mask_token=False", sources.pop("embeddings.mask_token"))
        del state["embeddings.mask_token"]
    for key, tensor in state.items():
        if key not in expected:
            raise ValueError(f"{sources[key]} (-> {key}) has no counterpart in a SOPModel of this config")
        if tensor.shape != expected[key].shape:
            raise ValueError(
                f"Shape mismatch for {sources[key]} (-> {key}): checkpoint {list(tensor.shape)} vs model "
                f"{list(expected[key].shape)}; check the config (image_size, patch_size, hidden_size, ...)"
            )
    missing = sorted(set(expected) - set(state))
    if missing == ["embeddings.mask_token"]:  # e.g. a teacher (no MIM masking) loaded with use_mask_token=True
        logger.warning("The checkpoint has no mask token; embeddings.mask_token keeps its initial value (zeros)")
        state["embeddings.mask_token"] = expected["embeddings.mask_token"]
    elif missing:
        raise ValueError(f"The checkpoint lacks {len(missing)} SOPModel weights: {missing[:8]}")
    model.load_state_dict(state, strict=True)
    return model.eval()


__all__ = ["convert_original_state_dict", "infer_config_from_state_dict", "load_original_checkpoint"]
