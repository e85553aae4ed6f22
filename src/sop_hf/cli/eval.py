"""Command-line evaluation of frozen encoders: ``sop-hf eval {knn,linear,retrieval}`` (alias ``sop-eval``).

Results go to stdout, one ``name: value`` line each (fractions in [0, 1], 4 decimals); logs and progress bars go to
stderr, so ``sop-eval ... | grep knn_top1@20`` works. Also reachable as ``python -m sop_hf.cli eval``::

    sop-eval knn --model exports/sop_vits --train_data embedded --test_data embedded --max_samples 1000
    sop-eval linear --model exports/sop_vits --train_data fashion_mnist_debian --device cuda --dtype bf16
    sop-eval retrieval --model exports/sop_vits --train_data images/ --train_split train --test_split test \
        --scales 1 0.7071 0.5
    sop-visualize --model exports/sop_vits --image cat.jpg --output attention.png

Models load with ``AutoModel.from_pretrained(model)`` (a pretraining checkpoint folder of any method gives its
teacher, or ``--which student``); code shipped in a model folder runs only with ``--trust_remote_code``. The
processor loads with ``AutoImageProcessor``, falling back to the default evaluation transform. Features are cached (see ``cache.py``) unless ``--no_cache``.
"""

import logging
import sys
from dataclasses import dataclass, field
from typing import Literal

import torch
from datasets import ClassLabel

from ..data.sources import EMBEDDED_NAME, available_splits, load_image_dataset, random_subset
from ..evaluation.cache import FeatureCache, cached_extract_features, hash_state_dict
from ..evaluation.features import extract_features
from ..evaluation.knn import DEFAULT_KS, default_ks, knn_top1
from ..evaluation.linear_probe import DEFAULT_LRS, linear_probe
from ..evaluation.retrieval import label_map
from ..evaluation.visualize import save_feature_scatter
from ..hub.loading import load_encoder
from ..hub.model_card import card_results, update_model_card
from .common import parse, setup_logging, usage_exit_code

logger = logging.getLogger(__name__)
SUBSET_SEED = 0  # --max_samples keeps a seeded random subset (class-sorted folders would otherwise give one class)


@dataclass
class ModelArguments:
    """Which encoder, where it runs, and the feature cache (all subcommands)."""

    model: str = field(metadata={"help": "Encoder folder or Hub id (SOP export, stock ViT, or SOP checkpoint)."})
    which: Literal["teacher", "student"] = field(
        default="teacher", metadata={"help": "For pretraining checkpoint folders: the encoder to evaluate."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped inside the model folder (only for folders you trust)."}
    )
    device: str | None = field(default=None, metadata={"help": "Default: cuda if available, else cpu."})
    dtype: Literal["fp32", "bf16", "fp16"] = field(
        default="fp32", metadata={"help": "Autocast dtype on CUDA (ignored on CPU); bf16 is ~2x faster on A100/H100."}
    )
    batch_size: int = field(default=256, metadata={"help": "Images per forward; lower it on out-of-memory."})
    num_workers: int = field(default=0, metadata={"help": "Decoding/preprocessing workers; raise it if the GPU idles."})
    cache: bool = field(default=True, metadata={"help": "Reuse cached features (keyed by weights, data, options)."})
    cache_dir: str | None = field(
        default=None, metadata={"help": "Feature cache folder. Default: $HF_HOME/sop_hf/features or ~/.cache/..."}
    )
    update_card: bool = field(
        default=False, metadata={"help": "Add the results to the model-index of <model>/README.md (local folder)."}
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars (on stderr)."})


@dataclass
class DataArguments:
    """Datasets: ``embedded``, ``fashion_mnist_debian``, an image folder, or a Hub name (all subcommands)."""

    train_data: str = field(default=EMBEDDED_NAME, metadata={"help": "Labelled training set (retrieval: gallery)."})
    test_data: str | None = field(default=None, metadata={"help": "Test set (retrieval: queries). Default: train."})
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_split: str = field(default="train", metadata={"help": "Split of --train_data."})
    test_split: str = field(default="test", metadata={"help": "Split of --test_data."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Column holding integer (ClassLabel) labels."})
    max_samples: int | None = field(
        default=None, metadata={"help": "Keep a seeded random subset (stratified) of this many rows per split."}
    )
    validation_split_percentage: float | None = field(
        default=None,
        metadata={"help": "With one split only (e.g. one image folder): hold out this percentage (seeded, stratified "
                  "by label) as the test set and use the rest as train."},
    )  # fmt: skip


@dataclass
class KnnArguments:
    """``sop-eval knn``: weighted k-NN (DINO: cosine, T = 0.07) on the final [CLS] features."""

    ks: list[int] | None = field(
        default=None,
        metadata={"aliases": ["--k"], "help": "Numbers of neighbours (also --k). Default "
                  f"{' '.join(map(str, DEFAULT_KS))}, less those larger than the training set (a note names them); a k you give that is larger than "
                  "the training set is an error."},
    )  # fmt: skip
    temperature: float = field(default=0.07, metadata={"help": "Vote temperature; keep 0.07 to compare with papers."})
    plot: str | None = field(default=None, metadata={"help": "Write a 2-D scatter of the test features to this PNG."})
    plot_method: Literal["pca", "tsne"] = field(default="pca", metadata={"help": "Projection of --plot."})


@dataclass
class LinearArguments:
    """``sop-eval linear``: a grid of linear heads, chosen on held-out TRAIN rows, scored on test."""

    pooling: Literal["cls", "cls_last_n", "cls_mean_patch"] = field(
        default="cls_last_n", metadata={"help": "Probe input: DINO uses cls_last_n for ViT-S, cls_mean_patch for B."}
    )
    n_last_blocks: int | None = field(default=None, metadata={"help": "Blocks for cls_last_n; default min(4, depth)."})
    lrs: list[float] = field(default_factory=lambda: list(DEFAULT_LRS), metadata={"help": "Learning-rate grid."})
    weight_decays: list[float] = field(default_factory=lambda: [0.0, 1e-4], metadata={"help": "Weight-decay grid."})
    epochs: int = field(default=30, metadata={"help": "Probe epochs; raise it if the best lr is the largest one."})
    probe_batch_size: int = field(default=1024, metadata={"help": "Probe minibatch size."})
    optimizer: Literal["sgd", "adamw"] = field(default="sgd", metadata={"help": "Probe optimizer."})
    normalization: Literal["standardize", "l2", "none"] = field(default="standardize", metadata={"help": "Inputs."})
    val_fraction: float = field(default=0.1, metadata={"help": "Share of TRAIN held out to pick the grid point."})
    refit: bool = field(default=True, metadata={"help": "Retrain the chosen setting on all of TRAIN before testing."})
    seed: int = field(default=0, metadata={"help": "Seeds the held-out split and the minibatch order."})


@dataclass
class RetrievalArguments:
    """``sop-eval retrieval``: cosine ranking of the gallery (train) for every query (test); same label = positive."""

    pooling: Literal["cls", "cls_last_n", "cls_mean_patch"] = field(default="cls", metadata={"help": "Features."})
    scales: list[float] = field(
        default_factory=lambda: [1.0], metadata={"help": "Multi-scale averaging, e.g. 1 0.7071 0.5 (revisitop)."}
    )
    ap_method: Literal["trapezoid", "step"] = field(
        default="trapezoid", metadata={"help": "AP convention: trapezoid (revisited Oxford/Paris) or step."}
    )


class _Session:
    """The loaded encoder plus what every split's feature extraction shares (device, weight hash, cache)."""

    def __init__(self, args: ModelArguments, data: DataArguments):
        self.args, self.data = args, data
        self.model, self.processor = load_encoder(args.model, args.which, trust_remote_code=args.trust_remote_code)
        self.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        self.cache = FeatureCache(args.cache_dir) if args.cache else None
        self.weights_hash = hash_state_dict(self.model) if args.cache else None

    def depth(self) -> int:
        return int(getattr(self.model.config, "num_hidden_layers", 1))

    def dataset(self, name: str, split: str):
        data = self.data
        try:
            splits = available_splits(name, data.dataset_config)
        except Exception:  # noqa: BLE001 - an unknown layout: ask for the split as given
            splits = None
        role = "test" if split == data.test_split and name == self.test_name() else "train"
        if splits is not None and split not in splits and len(splits) == 1:
            if data.validation_split_percentage:
                dataset = self._held_out(name, splits[0], role)
            elif data.test_data and data.test_data != data.train_data:
                logger.info("%s has one split (%s): using it as the %s set", name, splits[0], role)
                dataset = load_image_dataset(name, data.dataset_config, splits[0], data.image_column)
            else:
                raise ValueError(f"{name!r} has only the split {splits[0]!r}: pass --test_data (another folder or "
                                 "dataset) or --validation_split_percentage to hold out part of it")  # fmt: skip
        elif data.validation_split_percentage and splits is not None and data.test_split not in splits:
            dataset = self._held_out(name, split, role)
        else:
            dataset = load_image_dataset(name, data.dataset_config, split, data.image_column)
        if data.max_samples is not None and data.max_samples < 1:
            raise ValueError(f"--max_samples must be >= 1, got {data.max_samples}")
        return random_subset(dataset, data.max_samples, SUBSET_SEED, data.label_column)

    def _held_out(self, name: str, split: str, role: str):
        """The train or test part of a seeded, stratified split of one split (--validation_split_percentage)."""
        data = self.data
        if not 0 < data.validation_split_percentage < 100:
            raise ValueError(
                f"--validation_split_percentage must be in (0, 100), got {data.validation_split_percentage}"
            )
        whole = load_image_dataset(name, data.dataset_config, split, data.image_column)
        stratify = data.label_column if isinstance(whole.features.get(data.label_column), ClassLabel) else None
        parts = whole.train_test_split(test_size=data.validation_split_percentage / 100, seed=SUBSET_SEED,
                                       stratify_by_column=stratify)  # fmt: skip
        return parts["test" if role == "test" else "train"]

    def features(self, name: str, split: str, **options) -> tuple[torch.Tensor, torch.Tensor, object]:
        dataset = self.dataset(name, split)
        kwargs = dict(batch_size=self.args.batch_size, image_column=self.data.image_column,
                      label_column=self.data.label_column, device=self.device, dtype=self.args.dtype,
                      progress=self.args.progress, num_workers=self.args.num_workers, skip_unreadable=True,
                      **options)  # fmt: skip
        if self.cache is not None:  # data without a fingerprint (streams) is extracted without the cache
            features, labels = cached_extract_features(
                self.model, dataset, self.processor, cache=self.cache, split=split, data_source=name,
                weights_hash=self.weights_hash, key_extra={"max_samples": self.data.max_samples,
                                                           "subset_seed": SUBSET_SEED}, **kwargs)  # fmt: skip
        else:
            features, labels = extract_features(self.model, dataset, self.processor, **kwargs)
        if labels is None:
            raise ValueError(f"{name!r} ({split}) has no label column {self.data.label_column!r}; pass --label_column")
        return features, labels, dataset

    def test_name(self) -> str:
        return self.data.test_data or self.data.train_data


def run_knn(session: _Session, args: KnnArguments) -> dict[str, float]:
    """``{"knn_top1@<k>": accuracy}`` of weighted k-NN, train -> test."""
    data = session.data
    train_x, train_y, _ = session.features(data.train_data, data.train_split)
    test_x, test_y, test_set = session.features(session.test_name(), data.test_split)
    device = session.device
    ks = args.ks
    if ks is None:  # the defaults adapt to small data; a k the user gave is checked by knn_top1
        ks, dropped = default_ks(len(train_y))
        if dropped:
            logger.info("k-NN: default k %s dropped: larger than the %d training samples (k = %s kept)",
                        ", ".join(map(str, dropped)), len(train_y), ", ".join(map(str, ks)))  # fmt: skip
    accuracies = knn_top1(train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device),
                          ks=ks, temperature=args.temperature)  # fmt: skip
    if args.plot:
        label_feature = getattr(test_set, "features", {}).get(data.label_column)
        names = getattr(label_feature, "names", None)
        title = f"{args.plot_method.upper()} of {session.test_name()} ({data.test_split}) features"
        save_feature_scatter(test_x, test_y, args.plot, method=args.plot_method, class_names=names, title=title)
        logger.info("feature scatter written to %s", args.plot)
    return {f"knn_top1@{k}": accuracies[k] for k in sorted(accuracies)}


def run_linear(session: _Session, args: LinearArguments) -> dict[str, float]:
    """``{"linear_top1": accuracy}`` of the grid-selected linear probe, train -> test."""
    data = session.data
    n_last = args.n_last_blocks if args.n_last_blocks is not None else min(4, session.depth())
    options = {"pooling": args.pooling, "n_last_blocks": n_last}
    train_x, train_y, _ = session.features(data.train_data, data.train_split, **options)
    test_x, test_y, _ = session.features(session.test_name(), data.test_split, **options)
    result = linear_probe(train_x, train_y, test_x, test_y, lrs=args.lrs, weight_decays=args.weight_decays,
                          epochs=args.epochs, batch_size=args.probe_batch_size, optimizer=args.optimizer,
                          normalization=args.normalization, val_fraction=args.val_fraction, refit=args.refit,
                          seed=args.seed, progress=session.args.progress, device=session.device)  # fmt: skip
    logger.info("linear probe: lr %g, weight decay %g (validation top-1 %.4f)", result.best_lr,
                result.best_weight_decay, result.val_top1[(result.best_lr, result.best_weight_decay)])  # fmt: skip
    return {"linear_top1": result.test_top1}


def run_retrieval(session: _Session, args: RetrievalArguments) -> dict[str, float]:
    """``{"map": mAP}``: test rows query the train rows; one split serving as both excludes each query itself."""
    data = session.data
    options = {"pooling": args.pooling, "scales": tuple(args.scales), "n_last_blocks": min(4, session.depth())}
    gallery_x, gallery_y, _ = session.features(data.train_data, data.train_split, **options)
    same = session.test_name() == data.train_data and data.test_split == data.train_split
    query_x, query_y = (gallery_x, gallery_y) if same else session.features(
        session.test_name(), data.test_split, **options)[:2]  # fmt: skip
    return {"map": label_map(query_x, query_y, gallery_x, gallery_y, exclude_self=same, method=args.ap_method)}


_COMMANDS = {
    "knn": (KnnArguments, run_knn, lambda a: ""),
    "linear": (LinearArguments, run_linear, lambda a: a.pooling),
    "retrieval": (RetrievalArguments, run_retrieval, lambda a: f"{a.ap_method}, scales {a.scales}"),
}
_USAGE = """usage: sop-eval {knn,linear,retrieval} --model MODEL [options]

  knn        weighted k-NN top-1, prints `knn_top1@<k>: <fraction>` for each k
  linear     linear probe (lr grid chosen on held-out train rows), prints `linear_top1: <fraction>`
  retrieval  cosine retrieval mAP (same label = positive), prints `map: <fraction>`

Run `sop-eval knn --help` for the options of a command."""


def eval_main(argv: list[str] | None = None) -> int:
    """``sop-eval {knn,linear,retrieval} ...``: print the results, optionally record them in the model card."""
    argv = sys.argv[1:] if argv is None else list(argv)
    code = usage_exit_code(argv, _COMMANDS, _USAGE)
    if code is not None:
        return code
    command, rest = argv[0], argv[1:]
    command_type, run, describe = _COMMANDS[command]
    model_args, data_args, command_args = parse((ModelArguments, DataArguments, command_type),
                                                 f"sop-eval {command}", command_type.__doc__, rest)  # fmt: skip
    setup_logging()
    session = _Session(model_args, data_args)
    results = run(session, command_args)
    for name, value in results.items():
        print(f"{name}: {value:.4f}")
    if model_args.update_card:
        readme = update_model_card(model_args.model, card_results(command, results, data_args, describe(command_args)))
        logger.info("model card updated: %s", readme)
    return 0
