"""Publish on the Hugging Face Hub: an encoder folder, or a whole run (encoder at the root, results, checkpoints), in
one commit each, so the README on the Hub is this library's card.

Push an encoder exported from a pretraining run (needs a token with write access)::

    encoder = SOPForPreTraining.from_pretrained("runs/sop-vit-small").export_encoder("teacher")
    push_encoder_to_hub(encoder, "me/sop-vit-small", training={"dataset": "imagenet-1k", "num_train_epochs": 100})
"""

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import CommitOperationAdd, HfApi, ModelCard

from ..image_processing_sop import SOPImageProcessor
from ..modeling_sop import SOPModel
from .save import check_encoder, save_encoder


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
    check_encoder(encoder, "push_encoder_to_hub")  # before creating a repository
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
