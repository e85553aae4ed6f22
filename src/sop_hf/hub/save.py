"""Save a trained encoder as a self-contained folder that ``AutoModel`` and ``pipeline`` load.

* ``save_encoder`` writes everything a user needs into one folder: ``model.safetensors``, ``config.json`` (with
  ``auto_map``), the remote-code files, ``preprocessor_config.json`` and ``README.md`` (the card of
  ``sop_hf.hub.model_card``). It accepts only an encoder (an ``SOPModel``, or the stock ``ResNetModel`` of ResNet lineage
  runs, which needs no remote code), so memory banks, heads and the teacher of a pretraining model never leave the
  training run.
* ``hub.push`` uploads such a folder (or a whole run) in one commit.

This module is not shipped as remote code (it imports ``huggingface_hub`` and the installed package).

"""

import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard
from transformers import ResNetModel

from ..image_processing_sop import SOPImageProcessor
from ..modeling_sop import SOPModel
from .model_card import build_model_card
from .record import CardRecord
from .stock_vit import stock_image_processor

ENCODER_CLASSES = (SOPModel, ResNetModel)


def check_encoder(encoder: Any, caller: str) -> None:
    if not isinstance(encoder, ENCODER_CLASSES):
        hint = (
            " Call `model.export_encoder('teacher')` (or 'student') first, so heads and memory banks stay out of "
            "the export."
            if hasattr(encoder, "export_encoder")
            else ""
        )
        raise ValueError(f"{caller} expects an SOPModel or ResNetModel encoder, got {type(encoder).__name__}.{hint}")


def default_image_processor(config, crop_pct: float = 0.875):
    """The evaluation transform of an encoder as a stock transformers processor (``export.stock_image_processor``:
    resize the shorter side to size / crop_pct, bicubic, centre crop, ImageNet mean/std), for the ViT and the ResNet.

    A stock class reproduces ``SOPImageProcessor`` exactly (same pixel values) and carries no ``auto_map``, so
    ``pipeline(...)`` and ``AutoImageProcessor`` never ask to run custom code for it. ``config`` is the encoder's
    (``SOPConfig`` / ``ResNetConfig``, which has no size: 224 px) or the pretraining model's. Saved beside every
    encoder that ``save_encoder`` gets without a processor.
    """
    return stock_image_processor(getattr(config, "image_size", 224), crop_pct)


def save_encoder(
    encoder: SOPModel,
    save_directory: str | Path,
    image_processor: SOPImageProcessor | None = None,
    model_card: ModelCard | str | None = None,
    **card_kwargs: Any,
) -> Path:
    """Write a self-contained encoder folder: weights, config, remote code, image processor and model card.

    Args:
        encoder: The ``SOPModel`` to export (e.g. ``SOPForPreTraining.export_encoder("teacher")``).
        save_directory: Target folder (created if needed).
        image_processor: Saved beside the model; default ``SOPImageProcessor(size=config.image_size)``.
        model_card: A ready ``ModelCard`` (or README text); default ``build_model_card(encoder.config,
            **card_kwargs)``.
        **card_kwargs: Arguments of :func:`build_model_card`. If ``training_curves`` names an existing file,
            the file is copied into the folder and the card refers to it by name.

    Returns:
        The folder, as a ``Path``.

    Raises:
        ValueError: If ``encoder`` is not an ``SOPModel`` (a pretraining model would ship its heads and memory
            banks), or if both ``model_card`` and ``card_kwargs`` are given.
    """
    check_encoder(encoder, "save_encoder")
    if model_card is not None and card_kwargs:
        raise ValueError(f"Pass either model_card or card arguments, not both (got {sorted(card_kwargs)})")
    save_directory = Path(save_directory)
    save_directory.mkdir(parents=True, exist_ok=True)
    curves = card_kwargs.get("training_curves")
    if curves and Path(curves).is_file():
        shutil.copyfile(curves, save_directory / Path(curves).name)
        card_kwargs["training_curves"] = Path(curves).name
    encoder.save_pretrained(save_directory)
    if image_processor is None:
        image_processor = default_image_processor(encoder.config)
    image_processor.save_pretrained(save_directory)
    if model_card is None:
        record = CardRecord.from_card_kwargs(**card_kwargs)
        record.save(save_directory)  # what the card is rendered from; tools that update the card read this
        model_card = build_model_card(encoder.config, **record.card_kwargs())
    elif isinstance(model_card, str):
        model_card = ModelCard(model_card)
    model_card.save(save_directory / "README.md")
    return save_directory


__all__ = ["ENCODER_CLASSES", "check_encoder", "default_image_processor", "save_encoder"]
