"""Command-line evaluation of frozen encoders: ``sop-eval {knn,linear,retrieval}`` and ``sop-visualize``.

Results go to stdout, one ``name: value`` line each (fractions in [0, 1], 4 decimals); logs and progress bars go to
stderr, so ``sop-eval ... | grep knn_top1@20`` works. Also reachable as ``python -m sop_hf.evaluation.eval_cli``::

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
import os
import re
import sys
from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from datasets import ClassLabel
from huggingface_hub import EvalResult, ModelCard
from transformers import AutoImageProcessor, AutoModel, HfArgumentParser, PretrainedConfig, ResNetConfig

from ..configuration_sop import SOPConfig
from ..data.sources import DEBIAN_NAME, EMBEDDED_NAME, available_splits, load_image_dataset, random_subset
from ..model_card import METHODS, build_model_card, training_from_card
from ..data.images import to_rgb_image
from ..image_processing_sop import SOPImageProcessor
from ..export import stock_image_processor
from ..modeling_lineage import LineageForPreTraining
from ..modeling_sop_pretraining import SOPForPreTraining
from .cache import FeatureCache, cached_extract_features, hash_state_dict
from .features import extract_features
from .knn import DEFAULT_KS, knn_top1
from .linear_probe import DEFAULT_LRS, linear_probe
from .retrieval import label_map
from .visualize import denormalize, last_block_attention, save_attention_figure, save_feature_scatter

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

    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS), metadata={"help": "Numbers of neighbours."})
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


@dataclass
class VisualizeArguments:
    """``sop-visualize``: the last block's [CLS]-to-patch attention, one panel per head (DINO-style)."""

    model: str = field(metadata={"help": "Encoder folder or Hub id."})
    image: str = field(metadata={"help": "Image file to look at."})
    output: str = field(metadata={"help": "PNG to write."})
    which: Literal["teacher", "student"] = field(default="teacher", metadata={"help": "For checkpoint folders."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped inside the model folder (only for folders you trust)."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Resize the image to this side first (finer maps); default: the processor's."}
    )
    threshold: float | None = field(
        default=None, metadata={"help": "Show the patches holding this share of attention (DINO: 0.6) as masks."}
    )


PRETRAINING_ARCHITECTURES = {"SOPForPreTraining": SOPForPreTraining, "LineageForPreTraining": LineageForPreTraining}


def load_encoder(
    model: str, which: str = "teacher", attn_implementation: str | None = None, trust_remote_code: bool = False
):
    """Load (encoder, image processor) from a folder or Hub id; see the module docstring.

    Args:
        model: Encoder folder, pretraining checkpoint folder (SOP, MaSSL, CARP, CARL; ViT or ResNet) or Hub id.
        which: ``"teacher"`` or ``"student"`` of a pretraining checkpoint.
        attn_implementation: E.g. ``"eager"`` so that stock ViTs return attention weights (sop-visualize).
        trust_remote_code: Run code shipped in the model folder (only when the user asked for it). Folders this
            library exported load without it: their classes are registered when sop_hf is imported.
    """
    config_dict, _ = PretrainedConfig.get_config_dict(model)
    architectures = config_dict.get("architectures") or []
    pretraining = next((PRETRAINING_ARCHITECTURES[a] for a in architectures if a in PRETRAINING_ARCHITECTURES), None)
    if pretraining is not None:
        logger.info("%s is a %s checkpoint: evaluating its %s", model, pretraining.__name__, which)
        encoder = pretraining.from_pretrained(model).export_encoder(which)
    else:
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        encoder = AutoModel.from_pretrained(model, trust_remote_code=trust_remote_code, **extra)
    try:
        processor = AutoImageProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        size = getattr(encoder.config, "image_size", 224)
        logger.warning("no image processor in %s (%s); using the default evaluation transform (size %d)", model,
                       error, size)  # fmt: skip
        processor = stock_image_processor(size)
    return encoder.eval(), processor


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
            raise ValueError(f"--validation_split_percentage must be in (0, 100), got {data.validation_split_percentage}")
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
    accuracies = knn_top1(train_x.to(device), train_y.to(device), test_x.to(device), test_y.to(device),
                          ks=args.ks, temperature=args.temperature)  # fmt: skip
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


def _dataset_identity(name: str) -> tuple[str, str]:
    """(dataset_type, dataset_name) recorded in the model card for a --*_data value."""
    if name == EMBEDDED_NAME:
        return "fashion_mnist", "Fashion-MNIST (sop_hf embedded 4k/1k subset)"
    if name == DEBIAN_NAME:
        return "fashion_mnist", "Fashion-MNIST"
    if os.path.isdir(name):
        base = Path(name).resolve().name
        return base, base
    return name, name


def card_results(command: str, results: dict[str, float], data: DataArguments, extra: str = "") -> list[dict]:
    """Model-index entries (``EvalResult`` field dicts) for the printed results.

    Classification entries carry no ``task_name``: the model-index groups results by task type and dataset and keeps
    one task name per group, so k-NN and linear results are told apart by ``metric_name`` instead.
    """
    dataset_type, dataset_name = _dataset_identity(data.test_data or data.train_data)
    split = data.test_split + (f" (random {data.max_samples})" if data.max_samples else "")
    entries = []
    for key, value in results.items():
        if command == "retrieval":
            task = {"task_type": "image-feature-extraction", "task_name": "Image retrieval",
                    "metric_type": "map", "metric_name": f"mAP ({extra})"}  # fmt: skip
        elif command == "linear":
            task = {"task_type": "image-classification",
                    "metric_type": "accuracy", "metric_name": f"linear probe top-1 ({extra})"}  # fmt: skip
        else:
            k = key.split("@")[1]
            task = {"task_type": "image-classification",
                    "metric_type": "accuracy", "metric_name": f"k-NN top-1 (k={k})"}  # fmt: skip
        entries.append({**task, "dataset_type": dataset_type, "dataset_name": dataset_name, "dataset_split": split,
                        "metric_value": round(float(value), 6)})  # fmt: skip
    return entries


def _same_result(a: EvalResult, b: EvalResult) -> bool:
    fields = ("task_type", "dataset_type", "dataset_name", "dataset_split", "metric_type", "metric_name")
    return all(getattr(a, f) == getattr(b, f) for f in fields)


def update_model_card(model_dir: str | os.PathLike, results: list[dict]) -> Path:
    """Rewrite ``<model_dir>/README.md`` with ``build_model_card``: new results replace same-named ones, others stay.

    The method (tag), license, base model, Hub id, training recipe and training-curves image of an existing card are
    kept. Raises ``ValueError`` if ``model_dir`` is not a local encoder folder that sop_hf exported: an ``SOPModel``,
    or a stock ``ResNetModel`` whose card carries the ``sop_hf`` tag (ResNet lineage runs).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"--update-card needs a local model folder, got {str(model_dir)!r}")
    readme = model_dir / "README.md"
    card = ModelCard.load(readme) if readme.is_file() else None
    config_dict, _ = SOPConfig.get_config_dict(str(model_dir))
    model_type = config_dict.get("model_type")
    ours = "sop_hf" in ((card.data.tags or []) if card is not None else [])
    if not (model_type == SOPConfig.model_type or (model_type == ResNetConfig.model_type and ours)):
        raise ValueError(
            f"--update-card writes sop_hf model cards and needs a SOP model folder; {str(model_dir)!r} has "
            f"model_type={model_type!r} (a ResNet folder qualifies when sop_hf exported it: its card has the sop_hf tag)"
        )
    config = (SOPConfig if model_type == SOPConfig.model_type else ResNetConfig).from_pretrained(model_dir)
    kwargs, existing = {}, []
    if card is not None:
        existing = list(card.data.eval_results or [])
        methods = [tag for tag in (card.data.tags or []) if tag in METHODS]
        repo = re.search(r'AutoModel\.from_pretrained\("([^"<>]+)"', card.text)
        curves = re.search(r"!\[Training curves\]\(([^)]+)\)", card.text)
        kwargs = {
            "method": methods[0] if methods else "sop",
            "repo_id": repo.group(1) if repo else None,
            "license": card.data.license or "apache-2.0",
            "base_model": card.data.base_model,
            "training": training_from_card(card.text),
            "training_curves": curves.group(1) if curves else None,
        }
    new = [EvalResult(**r) for r in results]
    merged = [old for old in existing if not any(_same_result(old, r) for r in new)] + new
    build_model_card(config, eval_results=merged, **kwargs).save(readme)
    return readme


class _HelpFormatter(RawDescriptionHelpFormatter, ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows the default of every option that has one (as ``sop-export``)."""

    def _get_help_string(self, action):
        if action.required or action.default is None:
            return action.help
        return super()._get_help_string(action)


def _parse(dataclass_types, prog: str, description: str, argv: list[str]):
    description = description.replace("``", "`")  # docstrings use reST literals
    parser = HfArgumentParser(dataclass_types, prog=prog, description=description, formatter_class=_HelpFormatter)
    return parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)


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


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("sop_hf").setLevel(logging.INFO)


def eval_main(argv: list[str] | None = None) -> int:
    """``sop-eval {knn,linear,retrieval} ...``: print the results, optionally record them in the model card."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in _COMMANDS:
        asked_for_help = bool(argv) and argv[0] in ("-h", "--help")
        print(_USAGE, file=sys.stdout if asked_for_help else sys.stderr)
        return 0 if asked_for_help else 2
    command, rest = argv[0], argv[1:]
    command_type, run, describe = _COMMANDS[command]
    model_args, data_args, command_args = _parse((ModelArguments, DataArguments, command_type),
                                                 f"sop-eval {command}", command_type.__doc__, rest)  # fmt: skip
    _setup_logging()
    session = _Session(model_args, data_args)
    results = run(session, command_args)
    for name, value in results.items():
        print(f"{name}: {value:.4f}")
    if model_args.update_card:
        readme = update_model_card(model_args.model, card_results(command, results, data_args, describe(command_args)))
        logger.info("model card updated: %s", readme)
    return 0


def visualize_main(argv: list[str] | None = None) -> int:
    """``sop-visualize --model M --image I --output O``: one attention panel per head of the last block."""
    argv = sys.argv[1:] if argv is None else list(argv)
    (args,) = _parse((VisualizeArguments,), "sop-visualize", VisualizeArguments.__doc__, argv)
    _setup_logging()
    model, processor = load_encoder(args.model, args.which, attn_implementation="eager",
                                    trust_remote_code=args.trust_remote_code)  # fmt: skip
    if getattr(model.config, "model_type", None) == "resnet":
        raise ValueError(f"{args.model} holds a convolutional encoder ({type(model).__name__}): it has no attention "
                         "maps to show; sop-visualize needs a ViT encoder")  # fmt: skip
    if args.image_size is not None:
        processor = SOPImageProcessor(size=args.image_size, crop_pct=1.0, image_mean=processor.image_mean,
                                      image_std=processor.image_std)  # fmt: skip
    image = to_rgb_image(args.image)
    if image is None:
        raise ValueError(f"could not read the image {args.image!r}")
    pixel_values = processor([image], return_tensors="pt")["pixel_values"]  # [1, 3, H, W]
    attention = last_block_attention(model, pixel_values, threshold=args.threshold)  # [heads, h, w]
    panels = save_attention_figure(denormalize(pixel_values, processor), attention, args.output,
                                   title=f"{Path(args.model).name}: last-block [CLS] attention")  # fmt: skip
    print(f"attention maps ({panels} heads) written to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sop_hf.evaluation.eval_cli {knn,linear,retrieval,visualize} ...``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "visualize":
        return visualize_main(argv[1:])
    return eval_main(argv)


if __name__ == "__main__":
    sys.exit(main())
