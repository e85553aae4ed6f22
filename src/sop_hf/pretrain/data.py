"""The job's data: the training split, the labelled pair (train, eval) its k-NN checks use, and their subsets.

The evaluation split is ``--eval_split``; else a ``validation`` split; else, with ``--train_val_split`` > 0, a seeded,
stratified hold-out of the training split (run_mim.py's rule: a test split then stays unseen, so choices made on the
k-NN figure never touch it); else the one ``data.sources.evaluation_split`` finds (test, ...). Without one of them, or
without integer labels, the k-NN checks are skipped and the log says why. Errors (a missing column, an unknown split, an empty dataset) are
raised here, before any compute.
"""

import logging
from typing import NamedTuple

import datasets

from ..data.sources import data_files_mapping, evaluation_split, has_labels, load_image_dataset, random_subset

logger = logging.getLogger(__name__)


class TrainingData(NamedTuple):
    """``train``: what the run trains on; ``knn``: (train, eval) datasets with labels for the k-NN checks, or None;
    ``eval_split``: the name of the evaluation split as the results name it (None without evaluation)."""

    train: object
    knn: tuple | None
    eval_split: str | None


def load_training_data(data_args, seed: int, wants_eval: bool, cache_dir: str | None = None,
                       token: str | None = None) -> TrainingData:  # fmt: skip
    """The training split (a seeded ``--max_train_samples`` subset when asked) and, when ``wants_eval``, the labelled
    pair the k-NN monitor and the final k-NN read. ``cache_dir`` and ``token`` (``--cache_dir``, ``--token``) reach
    ``datasets``."""
    data_files = data_files_mapping(data_args.train_dir, data_args.validation_dir, data_args.data_files)
    load = dict(config=data_args.dataset_config_name, image_column=data_args.image_column_name, data_files=data_files,
                cache_dir=cache_dir, token=token)  # fmt: skip
    train = load_image_dataset(data_args.dataset_name, split=data_args.split, streaming=data_args.streaming, **load)
    label = data_args.label_column_name
    if data_args.max_train_samples:
        train = (train.take(data_args.max_train_samples) if data_args.streaming
                 else random_subset(train, data_args.max_train_samples, seed, label))  # fmt: skip
    if not wants_eval:
        return TrainingData(train, None, None)
    split = data_args.eval_split
    if split is None:
        split = evaluation_split(data_args.dataset_name, data_args.dataset_config_name, data_files)
        if split != "validation" and data_args.train_val_split > 0 and not data_args.streaming:
            split = None  # run_mim.py's rule: a validation split wins, else --train_val_split carves one (test unseen)
    evaluation = None
    if split is not None:
        evaluation = load_image_dataset(data_args.dataset_name, split=split, **load)
    elif data_args.train_val_split > 0 and not data_args.streaming:
        train, evaluation = hold_out(train, data_args.train_val_split, seed, label)
        split = f"{data_args.split} (held out {data_args.train_val_split:g})"
        logger.info("held out %d of the training images for the k-NN evaluation (--train_val_split)", len(evaluation))
    if evaluation is None:
        logger.warning("k-NN evaluation skipped: %s has no validation or test split (pass --eval_split, "
                       "--validation_dir or --train_val_split)", data_args.dataset_name)  # fmt: skip
        return TrainingData(train, None, None)
    knn_train = train
    if data_args.streaming:
        knn_train = load_image_dataset(data_args.dataset_name, split=data_args.split, **load)
    if not (has_labels(knn_train, label) and has_labels(evaluation, label)):
        logger.warning("k-NN evaluation skipped: no integer class ids in column %r (the run still trains and "
                       "exports; pass --label_column_name if labels live elsewhere)", label)  # fmt: skip
        return TrainingData(train, None, None)
    return TrainingData(train, (knn_train, evaluation), split)


def hold_out(train: datasets.Dataset, fraction: float, seed: int, label_column: str) -> tuple:
    """(rest, held out): a seeded split of ``fraction`` of the training rows, stratified by a ``ClassLabel`` column
    (``--train_val_split``; ``benchmarks/quality.py`` scores raw pixels on the same rows)."""
    labelled = has_labels(train, label_column) and isinstance(train.features[label_column], datasets.ClassLabel)
    parts = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column=label_column if labelled else None)
    return parts["train"], parts["test"]


def knn_subsets(knn: tuple, size: int, seed: int, label_column: str) -> tuple:
    """Seeded, stratified random subsets of at most ``size`` rows of both datasets of the labelled pair."""
    return tuple(random_subset(dataset, size, seed, label_column) for dataset in knn)


__all__ = ["TrainingData", "knn_subsets", "load_training_data"]
