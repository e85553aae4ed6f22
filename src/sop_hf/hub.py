"""Share trained encoders on the Hugging Face Hub: a self-contained export folder and a push.

* ``save_encoder`` writes everything a user needs into one folder: ``model.safetensors``, ``config.json`` (with
  ``auto_map``), the remote-code files, ``preprocessor_config.json`` and ``README.md`` (the card of
  ``sop_hf.model_card``). It accepts only an encoder (an ``SOPModel``, or the stock ``ResNetModel`` of ResNet lineage
  runs, which needs no remote code), so memory banks, heads and the teacher of a pretraining model never leave the
  training run.
* ``push_encoder_to_hub`` saves into a temporary folder and uploads it in one commit, so the README on the Hub is
  this library's card (``PreTrainedModel.push_to_hub`` writes a generic card of its own).

This module is not shipped as remote code (it imports ``huggingface_hub`` and the installed package).

Push an encoder exported from a pretraining run (needs a token with write access)::

    encoder = SOPForPreTraining.from_pretrained("runs/sop-vit-small").export_encoder("teacher")
    push_encoder_to_hub(encoder, "me/sop-vit-small", training={"dataset": "imagenet-1k", "num_train_epochs": 100})
"""

import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard
from transformers import ResNetModel

from .export import stock_image_processor
from .image_processing_sop import SOPImageProcessor
from .model_card import METHODS, NOT_RECORDED, build_model_card, count_parameters
from .modeling_sop import SOPModel

ENCODER_CLASSES = (SOPModel, ResNetModel)


def _check_encoder(encoder: Any, caller: str) -> None:
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
    _check_encoder(encoder, "save_encoder")
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
        model_card = build_model_card(encoder.config, **card_kwargs)
    elif isinstance(model_card, str):
        model_card = ModelCard(model_card)
    model_card.save(save_directory / "README.md")
    return save_directory


def push_encoder_to_hub(
    encoder: SOPModel,
    repo_id: str,
    image_processor: SOPImageProcessor | None = None,
    model_card: ModelCard | str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload SOP encoder with sop_hf",
    **card_kwargs: Any,
) -> str:
    """Save the encoder folder (see :func:`save_encoder`) to a temporary directory and upload it in one commit.

    The repository is created if needed. The uploaded README is this package's card, never the generic one of
    ``PreTrainedModel.push_to_hub``; an existing README in the repository is replaced.

    Args:
        encoder: The ``SOPModel`` to push.
        repo_id: ``"namespace/name"`` (or ``"name"`` for the token's user).
        image_processor: As in :func:`save_encoder`.
        model_card: As in :func:`save_encoder`.
        private: Visibility of a newly created repository (``None``: the Hub's default).
        token: Hub token; ``None`` uses ``HF_TOKEN`` or the saved login.
        commit_message: Message of the upload commit.
        **card_kwargs: Arguments of :func:`build_model_card`; ``repo_id`` defaults to the target repository.

    Returns:
        The commit URL (the repository URL if the Hub returned none).

    Raises:
        ValueError: As :func:`save_encoder`, before anything is created on the Hub.
    """
    _check_encoder(encoder, "push_encoder_to_hub")  # before creating a repository
    if model_card is not None and card_kwargs:
        raise ValueError(f"Pass either model_card or card arguments, not both (got {sorted(card_kwargs)})")
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    if model_card is None:
        card_kwargs.setdefault("repo_id", repo_url.repo_id)
    with tempfile.TemporaryDirectory(prefix="sop_hf_push_") as tmp:
        folder = save_encoder(encoder, tmp, image_processor=image_processor, model_card=model_card, **card_kwargs)
        commit = api.upload_folder(
            repo_id=repo_url.repo_id, folder_path=folder, commit_message=commit_message, token=token
        )
    url = getattr(commit, "commit_url", None)
    return str(url) if url else str(repo_url)


def push_run_to_hub(
    output_dir: str | Path,
    repo_id: str,
    checkpoints: Mapping[str, str | Path] | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str = "Upload SOP encoder with sop_hf",
) -> str:
    """Publish a training run's result in one commit: what users load at the repository root, checkpoints in
    sub-folders.

    Root: everything in ``OUTPUT_DIR/encoder`` (``model.safetensors``, ``config.json`` with its remote code, the
    stock image processor, ``README.md`` with the curves PNG) plus ``OUTPUT_DIR/all_results.json`` when it exists.
    ``checkpoints``: {sub-folder name: training checkpoint folder} (``{"last-checkpoint": ...}`` for
    ``hub_strategy="checkpoint"``), e.g. to resume elsewhere; None publishes only the encoder.

    Returns:
        The commit URL (the repository URL if the Hub returned none).
    """
    output_dir = Path(output_dir)
    encoder_dir = output_dir / "encoder"
    if not (encoder_dir / "config.json").exists():
        raise ValueError(f"{encoder_dir} holds no exported encoder; write it with save_encoder first")
    api = HfApi(token=token)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(encoder_dir).as_posix(), path_or_fileobj=str(p))
        for p in sorted(encoder_dir.rglob("*")) if p.is_file()
    ]  # fmt: skip
    results = output_dir / "all_results.json"
    if results.exists():
        operations.append(CommitOperationAdd(path_in_repo="all_results.json", path_or_fileobj=str(results)))
    for name, checkpoint in (checkpoints or {}).items():
        checkpoint = Path(checkpoint)
        operations += [
            CommitOperationAdd(path_in_repo=f"{name}/{p.relative_to(checkpoint).as_posix()}", path_or_fileobj=str(p))
            for p in sorted(checkpoint.rglob("*")) if p.is_file()
        ]  # fmt: skip
    commit = api.create_commit(repo_id=repo_url.repo_id, operations=operations, commit_message=commit_message,
                               token=token)  # fmt: skip
    url = getattr(commit, "commit_url", None)
    return str(url) if url else str(repo_url)


# METHODS, NOT_RECORDED, build_model_card and count_parameters are re-exported: this was their first home.
__all__ = [
    "ENCODER_CLASSES",
    "METHODS",
    "NOT_RECORDED",
    "build_model_card",
    "count_parameters",
    "default_image_processor",
    "push_encoder_to_hub",
    "push_run_to_hub",
    "save_encoder",
]
