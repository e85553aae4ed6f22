"""Pretrain a vision encoder with SOP (Self-Organizing Visual Prototypes) on transformers' Trainer.

With no arguments it runs the offline ``demo`` recipe: a tiny ViT on the Fashion-MNIST subset that ships with
sop_hf, a few minutes on a 2-core CPU, ending with the k-NN top-1 of the trained encoder next to the same
architecture at random init, the exported encoder in OUTPUT_DIR/encoder and OUTPUT_DIR/training_curves.png.

    accelerate launch examples/pretrain_sop.py                                   # demo (also: python examples/...)
    accelerate launch examples/pretrain_sop.py --dataset_name path/to/images     # a local imagefolder
    accelerate launch --multi_gpu --num_processes 8 examples/pretrain_sop.py \\
        --recipe vit_small_imagenet --dataset_name imagenet-1k --output_dir outputs/sop-vits16
    python examples/pretrain_sop.py config.yaml                                  # every argument from a file

Every flag overrides the chosen ``--recipe`` (demo, vit_small_imagenet, vit_base_imagenet); ``--help`` lists them all.
"""

import copy
import json
import logging
import math
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import torch
from transformers import HfArgumentParser, PretrainedConfig, set_seed

import sop_hf  # noqa: F401 - registers the SOP classes with the Auto* factories
from sop_hf import PRESETS
from sop_hf.cli.common import HelpFormatter
from sop_hf.methods import METHODS, build_config, get_method, recipe_owner
from sop_hf.methods.recipes import recipe_defaults
from sop_hf.data.sources import available_splits, has_labels, load_image_dataset, random_subset
from sop_hf.evaluation import extract_features, knn_top1
from sop_hf.hub import default_image_processor, save_encoder
from sop_hf.hub.run import HubPushCallback, HubTarget
from sop_hf.training import SOPTrainer, SOPTrainingArguments, TrainingMonitorCallback, plot_training_curves
from sop_hf.training.trainer import last_complete_checkpoint
from sop_hf.data.images import to_rgb_image
from sop_hf.data.pipeline import MultiCropDataArguments, build_collator, build_train_dataset, undecoded_images

logger = logging.getLogger("pretrain_sop")


def _recipe_list() -> str:
    return "; ".join(f"{name}: {', '.join(m.recipes)}" for name, m in METHODS.items())


@dataclass
class ModelArguments:
    """The method, its recipe and its config. Config values live in one place, the method's config class and its
    recipes; change single fields with --config_overrides (see docs/configuration.md)."""

    method: str = field(
        default="sop",
        metadata={"help": f"Pretraining method: {', '.join(METHODS)}. 'sop' is SOP with SOP-MIM; 'massl' memory "
                  "blocks, 'carp' random partitions of learnable prototypes, 'carl' one block (docs/lineage.md)."},
    )  # fmt: skip
    recipe: str | None = field(
        default=None,
        metadata={"help": "Named recipe (model, data and training defaults), per method: " + _recipe_list() + ". "
                  "Default: 'demo' on the embedded data; on other data one chosen from the image size (logged)."},
    )  # fmt: skip
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from this pretraining checkpoint of the same method (weights, banks and config), "
                  "instead of a random init."},
    )  # fmt: skip
    config_name: str | None = field(
        default=None, metadata={"help": "A config.json (or its folder) of the method's config, instead of the recipe's."}
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Change config fields: 'num_anchors=2048,koleo_loss_weight=0.1' (lineage encoders: "
                  "'backbone_config.hidden_size=128'). Values are read as JSON where they parse (numbers, true, "
                  "[1,2]), else as strings; an unknown field is an error naming the fields."},
    )  # fmt: skip
    preset: str | None = field(
        default=None, metadata={"help": f"ViT preset of the encoder: {', '.join(sorted(PRESETS))} (patch 16)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow code shipped in --model_name_or_path / --config_name to run."}
    )

    def overrides(self) -> dict:
        """--preset and --config_overrides as ``{field: value}``."""
        values = {}
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ValueError(f"--preset must be one of {', '.join(sorted(PRESETS))}, got {self.preset!r}")
            values["preset"] = self.preset
        entries = re.split(r",(?=\s*[A-Za-z_][\w.]*\s*=)", self.config_overrides or "")  # commas before FIELD=
        for item in filter(None, (s.strip() for s in entries)):
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--config_overrides entries must be FIELD=VALUE, got {item!r}")
            try:
                values[key.strip()] = json.loads(raw)
            except json.JSONDecodeError:
                values[key.strip()] = raw.strip()
        return values


@dataclass
class DataArguments(MultiCropDataArguments):
    """Where images come from and how they are evaluated (crops and masks: see MultiCropDataArguments)."""

    dataset_name: str = field(
        default="embedded",
        metadata={"help": "'embedded' (offline Fashion-MNIST subset), 'fashion_mnist_debian', a local image folder, "
                  "or a Hub dataset name."},
    )  # fmt: skip
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    train_dir: str | None = field(default=None, metadata={"help": "A folder of training images (imagefolder)."})
    validation_dir: str | None = field(
        default=None, metadata={"help": "A folder of evaluation images (imagefolder); labels from class sub-folders."}
    )
    data_files: list[str] | None = field(
        default=None,
        metadata={"help": "Data files as SPLIT=GLOB entries (a bare GLOB is the train split), e.g. "
                  "train=data/train-*.parquet validation=data/val-*.parquet; the format comes from the extension."},
    )  # fmt: skip
    split: str = field(default="train", metadata={"help": "Training split."})
    image_column_name: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column_name: str = field(
        default="label", metadata={"help": "Integer class ids for the k-NN evaluation (optional: without them the "
                                   "run trains and exports, and says that k-NN was skipped)."}
    )  # fmt: skip
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Train on a seeded random subset of this many images (stratified by label)."}
    )
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (IterableDataset); needs max_steps."})
    eval_split: str | None = field(
        default=None, metadata={"help": "Split of the final k-NN evaluation; default: validation, else test."}
    )
    train_val_split: float = field(
        default=0.0,
        metadata={"help": "When the dataset has no validation/test split: hold out this fraction of the training "
                  "split (seeded, stratified) for the k-NN evaluation; it is then not trained on."},
    )  # fmt: skip
    knn_eval: bool = field(default=True, metadata={"help": "k-NN top-1 of the encoder vs random init at the end."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours of the final k-NN evaluation."})
    max_eval_samples: int = field(
        default=10000, metadata={"help": "Seeded random subsets (stratified) of at most this many train and eval "
                                 "images for the final k-NN (its memory grows with the train subset)."}
    )  # fmt: skip
    monitor_steps: int = field(
        default=0, metadata={"help": "k-NN top-1 and collapse indicators every N optimizer steps (0 = off)."}
    )
    monitor_samples: int = field(
        default=1000, metadata={"help": "Images of the monitor's k-NN memory (train split) and queries (eval split)."}
    )
    stop_on_collapse: bool = field(
        default=False, metadata={"help": "Stop training when the monitor sees collapse (else it only warns)."}
    )
    eval_resize_ratio: float = field(
        default=0.875, metadata={"help": "crop_pct of the exported image processor (0.875: 256 -> 224; 1.0 tiny)."}
    )


def knn_of(encoder, train, test, data_args, processor, progress: bool = True) -> float:
    columns = dict(image_column=data_args.image_column_name, label_column=data_args.label_column_name,
                   progress=progress, skip_unreadable=True)  # fmt: skip
    train_x, train_y = extract_features(encoder, train, processor, **columns)
    test_x, test_y = extract_features(encoder, test, processor, **columns)
    return knn_top1(train_x, train_y, test_x, test_y, ks=(data_args.knn_k,))[data_args.knn_k]


def first_image_side(dataset, image_column: str) -> int:
    """The shorter side of the first readable training image (for the automatic recipe)."""
    rows = undecoded_images(dataset, image_column).take(8)  # bytes / paths: an unreadable file is skipped here
    for row in rows:
        image = to_rgb_image(row[image_column])
        if image is not None:
            return min(image.size)
    raise ValueError(f"none of the first 8 training images in column {image_column!r} could be read")


def data_files_of(data_args) -> dict[str, list[str]] | None:
    """--train_dir / --validation_dir / --data_files as a ``datasets`` data_files mapping (None when unused)."""
    files: dict[str, list[str]] = {}
    for split, folder in (("train", data_args.train_dir), ("validation", data_args.validation_dir)):
        if folder:
            if not os.path.isdir(folder):
                raise ValueError(f"--{'train' if split == 'train' else 'validation'}_dir {folder!r} is not a folder")
            files.setdefault(split, []).append(os.path.join(folder, "**"))
    for entry in data_args.data_files or []:
        split, _, pattern = entry.rpartition("=") if "=" in entry else ("train", "", entry)
        files.setdefault(split or "train", []).append(pattern)
    return files or None


def load_training_data(data_args, seed: int):
    """(train, eval) raw datasets: eval is None when there is nothing to evaluate on (with the reason logged)."""
    data_files = data_files_of(data_args)
    load = dict(config=data_args.dataset_config_name, image_column=data_args.image_column_name, data_files=data_files)
    train = load_image_dataset(data_args.dataset_name, split=data_args.split, streaming=data_args.streaming, **load)
    label = data_args.label_column_name
    if data_args.max_train_samples:
        train = (train.take(data_args.max_train_samples) if data_args.streaming
                 else random_subset(train, data_args.max_train_samples, seed, label))  # fmt: skip
    wants_eval = data_args.knn_eval or data_args.monitor_steps > 0
    if not wants_eval:
        return train, None
    eval_split = data_args.eval_split
    if eval_split is None:
        try:
            splits = available_splits(data_args.dataset_name, data_args.dataset_config_name, data_files)
        except Exception:  # noqa: BLE001 - an unknown layout: no automatic evaluation split
            splits = []
        eval_split = next((s for s in ("validation", "test", "valid", "val") if s in splits), None)
    evaluation = None
    if eval_split is not None:
        evaluation = load_image_dataset(data_args.dataset_name, split=eval_split, **load)
        data_args.eval_split = eval_split
    elif data_args.train_val_split > 0 and not data_args.streaming:
        parts = train.train_test_split(test_size=data_args.train_val_split, seed=seed,
                                       stratify_by_column=label if has_labels(train, label) and
                                       isinstance(train.features[label], datasets.ClassLabel) else None)  # fmt: skip
        train, evaluation = parts["train"], parts["test"]
        data_args.eval_split = f"{data_args.split} (held out {data_args.train_val_split:g})"
        logger.info("held out %d of the training images for the k-NN evaluation (--train_val_split)", len(evaluation))
    if evaluation is None:
        logger.warning("k-NN evaluation skipped: %s has no validation or test split (pass --eval_split, "
                       "--validation_dir or --train_val_split)", data_args.dataset_name)  # fmt: skip
        return train, None
    knn_train = train
    if data_args.streaming:
        knn_train = load_image_dataset(data_args.dataset_name, split=data_args.split, **load)
    if not (has_labels(knn_train, label) and has_labels(evaluation, label)):
        logger.warning("k-NN evaluation skipped: no integer class ids in column %r (the run still trains and "
                       "exports; pass --label_column_name if labels live elsewhere)", label)  # fmt: skip
        return train, None
    return train, (knn_train, evaluation)


def dataset_card_name(data_args) -> str:
    """The dataset as the card names it: a Hub id or a plain name, never a local path."""
    if data_args.train_dir:
        return Path(data_args.train_dir).resolve().name
    if data_args.data_files:
        return "local data files"
    name = data_args.dataset_name
    if name in ("embedded", "fashion_mnist_debian"):
        return "fashion_mnist"
    return Path(name).resolve().name if os.path.exists(name) else name


def training_record(model_args, data_args, training_args, trainer, recipe: str) -> dict:
    """Every recipe row of the model card, from the values this run used."""
    crops = f"2 x {data_args.global_crop_size} px + {data_args.num_local_crops} x {data_args.local_crop_size} px"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not training_args.use_cpu else "CPU"
    precision = "bf16" if training_args.bf16 else ("fp16" if training_args.fp16 else "fp32")
    warmup = (f"{training_args.warmup_steps:g} steps" if training_args.warmup_steps else
              f"{training_args.warmup_epochs:g} epochs")  # fmt: skip
    return {
        "dataset": dataset_card_name(data_args), "num_train_epochs": round(trainer.state.epoch or 0, 2),
        "max_steps": trainer.state.global_step, "global_batch_size": trainer.global_batch_size,
        "learning_rate": trainer.peak_learning_rate, "min_lr": training_args.min_lr, "warmup_epochs": warmup,
        "weight_decay": f"{training_args.weight_decay:g} -> {training_args.weight_decay_end:g} (cosine)",
        "optimizer": str(getattr(training_args.optim, "value", training_args.optim)),
        "momentum_teacher": f"{training_args.momentum_teacher:g} -> {training_args.momentum_teacher_end:g} (cosine)",
        "student_temp": training_args.student_temp, "teacher_temp": training_args.teacher_temp,
        "warmup_teacher_temp": training_args.warmup_teacher_temp, "teacher_patch_temp": training_args.teacher_patch_temp,
        "crops": crops, "hardware": f"{training_args.world_size} x {device}, {precision}", "recipe": recipe,
        "mim_loss_weight": getattr(trainer.model.config, "mim_loss_weight", 0.0),
        "exported": training_args.export_encoder,
    }  # fmt: skip


def export_outputs(model, training_args, write_card) -> Path:
    return write_card(model.export_encoder(training_args.export_encoder))


def resume_point(training_args) -> str | bool | None:
    """--resume_from_checkpoint (a path, or true/last for the newest complete one); by default the newest complete
    checkpoint of output_dir, unless --overwrite_output_dir."""
    value = training_args.resume_from_checkpoint
    if isinstance(value, str) and value.lower() in ("true", "last"):
        return True
    if value:
        return value
    if training_args.overwrite_output_dir:
        return None
    last = last_complete_checkpoint(training_args.output_dir)
    if last:
        logger.info("resuming from %s (pass --overwrite_output_dir to start over)", last)
    return last


def evaluation_as_monitor(training_args, data_args) -> None:
    """transformers' --eval_strategy/--eval_steps run the k-NN monitor (pretraining has no eval loss to compute)."""
    strategy = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy))
    if strategy == "no":
        return
    if strategy != "steps":
        raise ValueError(f"--eval_strategy {strategy} is not supported: use 'steps' with --eval_steps (it runs the "
                         "k-NN monitor) or --monitor_steps")  # fmt: skip
    steps = training_args.eval_steps or training_args.logging_steps
    data_args.monitor_steps = int(steps) if steps >= 1 else max(1, int(steps * max(1, training_args.max_steps)))
    training_args.eval_strategy = "no"
    logger.info("--eval_strategy steps: the k-NN monitor runs every %d steps", data_args.monitor_steps)


DEMO_DATASETS = ("embedded", "fashion_mnist_debian")


def _flag_value(argv: list[str], name: str) -> str | None:
    """The last value of ``--name VALUE`` / ``--name=VALUE`` in argv (None when absent)."""
    value = None
    for k, token in enumerate(argv):
        if token == f"--{name}" and k + 1 < len(argv):
            value = argv[k + 1]
        elif token.startswith(f"--{name}="):
            value = token.split("=", 1)[1]
    return value


def _read_config_file(path: str) -> dict:
    import yaml

    with open(path) as handle:
        values = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    if not isinstance(values, dict):
        raise ValueError(f"{path} must hold a mapping of argument names to values")
    return values


def uses_own_data(values: dict) -> bool:
    return bool(values.get("train_dir") or values.get("data_files")) or values.get(
        "dataset_name", "embedded") not in DEMO_DATASETS  # fmt: skip


def recipe_for_images(method: str, side: int) -> tuple[str, dict]:
    """(name, recipe) chosen from the training images' side when no --recipe is given on the user's data: small
    images (<= 160 px) get the demo's small-patch model at their own resolution (patch 4 up to 64 px, else 8); larger
    ones SOP's ViT-S/16 ImageNet recipe (other methods: their demo model at 224 px, patch 16)."""
    spec = get_method(method)
    if side > 160 and "vit_small_imagenet" in spec.recipes:
        return "vit_small_imagenet", spec.recipes["vit_small_imagenet"]
    values = copy.deepcopy(spec.recipes["demo"])
    patch = 4 if side <= 64 else (8 if side <= 160 else 16)
    crop = 224 if side > 160 else max(4 * patch, side // patch * patch)
    encoder = values["model"].get("backbone_config", values["model"])  # SOP: the config itself; lineage: its encoder
    encoder.update(image_size=crop, patch_size=patch)
    values["data"].pop("dataset_name", None)
    values["data"].update(global_crop_size=crop, local_crop_size=max(patch * 2, crop // 2 // patch * patch))
    return f"demo model at {crop} px, patch {patch}", values


def parse_arguments(argv: list[str], chosen: tuple[str, dict] | None = None):
    """(model, data, training arguments, recipe name, recipe, recipe chosen automatically?).

    The recipe's data and training values become the parser's defaults, so ``--help`` shows what a run will use and
    every flag or config-file entry overrides them; the same happens for flags and for a JSON/YAML config file."""
    parser = HfArgumentParser((ModelArguments, DataArguments, SOPTrainingArguments), description=__doc__,
                              formatter_class=HelpFormatter)  # fmt: skip
    from_file = len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml"))
    given = _read_config_file(os.path.abspath(argv[0])) if from_file else {}
    method = given.get("method") if from_file else _flag_value(argv, "method")
    name = given.get("recipe") if from_file else _flag_value(argv, "recipe")
    automatic = name is None
    if chosen is not None:
        name, values = chosen
        method = method or "sop"
    elif name is not None:
        method, values = recipe_owner(name, method)
    else:
        method = method or "sop"
        name, values = "demo", get_method(method).recipes["demo"]
    defaults = {**recipe_defaults(values), "method": method, "recipe": name,
                "output_dir": f"outputs/{method}-{name.split(' ')[0].removeprefix(method + '_').replace('_', '-')}"}  # fmt: skip
    if from_file:
        model_args, data_args, training_args = parser.parse_dict({**defaults, **given})
    else:
        parser.set_defaults(**defaults)
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv)
    return model_args, data_args, training_args, name, values, automatic


def build_model(model_args, recipe_values: dict):
    """The pretraining model: from --model_name_or_path, or a fresh one of the recipe's (or --config_name's) config
    with --preset / --config_overrides applied."""
    spec = get_method(model_args.method)
    overrides = model_args.overrides()
    if model_args.model_name_or_path:
        if overrides or model_args.config_name:
            raise ValueError("--model_name_or_path brings its own config: drop --config_name / --config_overrides")
        model = spec.model_class.from_pretrained(model_args.model_name_or_path,
                                                 trust_remote_code=model_args.trust_remote_code)  # fmt: skip
        return model.config, model
    values = recipe_values["model"]
    if model_args.config_name:
        values, _ = PretrainedConfig.get_config_dict(model_args.config_name)  # a file or folder: read, never run
        if values.get("model_type", spec.config_class.model_type) != spec.config_class.model_type:
            raise ValueError(f"--config_name {model_args.config_name} holds a {values['model_type']!r} config, not the "
                             f"{spec.config_class.model_type!r} config of --method {model_args.method}")  # fmt: skip
    config = build_config(model_args.method, values, overrides)
    return config, spec.model_class(config)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    model_args, data_args, training_args, recipe, recipe_values, automatic = parse_arguments(argv)
    is_main = training_args.process_index == 0
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if is_main else logging.WARNING)  # fmt: skip
    spec = get_method(model_args.method)
    if data_args.knn_k < 1 or data_args.max_eval_samples < 1 or data_args.monitor_samples < 1:
        raise ValueError("--knn_k, --max_eval_samples and --monitor_samples must be >= 1, got "
                         f"{data_args.knn_k}, {data_args.max_eval_samples}, {data_args.monitor_samples}")  # fmt: skip
    model_args.overrides()  # a bad --preset / --config_overrides fails before any data is read
    set_seed(training_args.seed)

    # Data: fail before any compute on a missing column, an unknown split or an empty dataset.
    train_raw, eval_splits = load_training_data(data_args, training_args.seed)
    if automatic and uses_own_data(vars(data_args)) and not model_args.model_name_or_path and not model_args.config_name:
        side = first_image_side(train_raw, data_args.image_column_name)
        chosen = recipe_for_images(model_args.method, side)
        logger.info("no --recipe given: the training images are %d px, so the run uses %s (pass --recipe to "
                    "choose; --help lists them)", side, chosen[0])  # fmt: skip
        wanted_eval, eval_split = data_args.knn_eval or data_args.monitor_steps > 0, data_args.eval_split
        model_args, data_args, training_args, recipe, recipe_values, _ = parse_arguments(argv, chosen)
        if (data_args.knn_eval or data_args.monitor_steps > 0) == wanted_eval:
            data_args.eval_split = eval_split  # the recipe changes crops and training, not the data: keep what was read
        else:
            train_raw, eval_splits = load_training_data(data_args, training_args.seed)
    evaluation_as_monitor(training_args, data_args)
    if not training_args.do_eval:
        data_args.knn_eval = False
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps > 0 (a stream has no length)")
    config, model = build_model(model_args, recipe_values)
    logger.info("%s, recipe %s; config (values other than the defaults): %s", spec.title, recipe,
                json.dumps(config.to_diff_dict(), sort_keys=True, default=str))  # fmt: skip
    use_masks = spec.uses_masks(config)
    patch_size = getattr(getattr(config, "backbone_config", config), "patch_size", 1)  # a ResNet has no patches
    train_dataset = build_train_dataset(train_raw, data_args, patch_size=patch_size, seed=training_args.seed,
                                        use_masks=use_masks, image_column=data_args.image_column_name)  # fmt: skip
    collator = build_collator(data_args)

    random_encoder = model.export_encoder("student") if training_args.process_index == 0 else None
    logger.info("%s (%s recipe): %.2fM encoder parameters", spec.title, recipe,
                sum(p.numel() for p in model.backbone("student").parameters()) / 1e6)  # fmt: skip
    if getattr(config, "is_resnet", False) and training_args.world_size > 1 and torch.cuda.is_available():
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over all GPUs, as CARP
    processor = default_image_processor(config, data_args.eval_resize_ratio)  # k-NN checks and the export
    num_prototypes = spec.entropy_prototypes(config)
    card_state: dict = {"training": None, "eval_results": None}

    def write_card(encoder, curves=None) -> Path:
        """The encoder folder: weights, stock processor, card (record, results, curves)."""
        return save_encoder(encoder, os.path.join(training_args.output_dir, "encoder"), image_processor=processor,
                            method=model_args.method, training=card_state["training"],
                            eval_results=card_state["eval_results"] or None, training_curves=curves)  # fmt: skip

    callbacks = []
    seed, label = training_args.seed, data_args.label_column_name
    if data_args.monitor_steps > 0 and eval_splits is not None:
        n = data_args.monitor_samples
        memory = random_subset(eval_splits[0], n, seed, label)
        if data_args.knn_k > len(memory):
            raise ValueError(f"--knn_k {data_args.knn_k} is larger than the monitor's {len(memory)} train images; "
                             "raise --monitor_samples or lower --knn_k")  # fmt: skip
        callbacks.append(TrainingMonitorCallback(
            memory, random_subset(eval_splits[1], n, seed, label),
            processor, every_n_steps=data_args.monitor_steps, k=data_args.knn_k, which=training_args.export_encoder,
            num_prototypes=num_prototypes, stop_on_collapse=data_args.stop_on_collapse,
            image_column=data_args.image_column_name, label_column=label,
        ))  # fmt: skip
    hub = HubTarget.take_from(training_args)  # the Trainer would push the pretraining model: publish the encoder
    if hub is not None and hub.strategy in ("every_save", "checkpoint", "all_checkpoints"):
        callbacks.append(HubPushCallback(hub, lambda: export_outputs(model, training_args, write_card)))
    trainer = SOPTrainer(model=model, args=training_args, train_dataset=train_dataset, data_collator=collator,
                         processing_class=processor, callbacks=callbacks)  # fmt: skip
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=resume_point(training_args))
        train_metrics = {**result.metrics, "global_step": result.global_step}
    else:
        checkpoint = resume_point(training_args)
        if not checkpoint:
            raise ValueError("--do_train false needs a checkpoint to evaluate (--resume_from_checkpoint PATH or one in "
                             "--output_dir)")  # fmt: skip
        trainer._load_from_checkpoint(checkpoint)
        train_metrics = {"global_step": trainer.state.global_step}
    trainer.save_model()  # the pretraining model (student, teacher, heads, banks) and its processor
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()
    stats = {**trainer.image_stats, "nonfinite_steps_skipped": trainer.nonfinite_steps_skipped}
    describe = getattr(train_dataset, "describe", lambda i: f"sample {i}")
    bad_files = [describe(i) for i in trainer.bad_samples[:20]]
    if stats["bad_images"]:
        logger.warning("%d unreadable training images, each replaced by another sample: %s", stats["bad_images"],
                       ", ".join(bad_files[:5]))  # fmt: skip
    if stats["images_converted"]:
        logger.info("%d training images converted to RGB (grayscale, palette, alpha ...)", stats["images_converted"])

    summary = {"train_loss": train_metrics.get("train_loss"), "global_step": trainer.state.global_step,
               "train_runtime": train_metrics.get("train_runtime"), **stats,
               "bad_files": bad_files}  # fmt: skip
    if not trainer.is_world_process_zero():
        return summary

    # 1. Write what the run produced (encoder, card, curves, results) before anything that can fail.
    output_dir = training_args.output_dir
    encoder = model.export_encoder(training_args.export_encoder)
    uniform_p, uniform_symbol = spec.uniform_reference(config)
    plot_path = plot_training_curves(trainer.state.log_history, os.path.join(output_dir, "training_curves.png"),
                                     method=spec.title_for(config), num_prototypes=uniform_p,
                                     prototype_symbol=uniform_symbol, loss_labels=spec.loss_labels)  # fmt: skip
    card_state["training"] = training_record(model_args, data_args, training_args, trainer, recipe)

    def write_outputs(eval_results=None) -> Path:
        card_state["eval_results"] = eval_results
        folder = write_card(encoder, plot_path)
        with open(os.path.join(output_dir, "results.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        return folder

    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    # Entropy of the teacher's mean assignment over the second half of training. Early values dip (measured 0.65 ln P'
    # in the first window, while the bank still holds random-init keys) and recover within ~150 steps: not a collapse.
    entropies = [row["teacher_entropy"] for row in trainer.state.log_history if "teacher_entropy" in row]
    entropies = entropies[len(entropies) // 2 :]
    summary.update(plot=str(plot_path), method=model_args.method, ln_num_prototypes=math.log(uniform_p),
                   first_losses=losses[:5], last_losses=losses[-5:], max_loss=max(losses, default=None),
                   min_teacher_entropy_second_half=min(entropies, default=None))  # fmt: skip
    encoder_dir = write_outputs()
    summary["encoder_dir"] = str(encoder_dir)
    print(f"encoder: {encoder_dir}  (AutoModel / pipeline('image-feature-extraction') load it)")
    print(f"curves:  {plot_path}")

    # 2. Evaluate; an error here is reported (log and results.json) and loses nothing written above.
    if data_args.knn_eval and eval_splits is not None:
        try:
            eval_train, eval_test = (random_subset(d, data_args.max_eval_samples, seed, label) for d in eval_splits)
            progress = not training_args.disable_tqdm
            trained = knn_of(encoder, eval_train, eval_test, data_args, processor, progress)
            baseline = knn_of(random_encoder, eval_train, eval_test, data_args, processor, progress)
        except Exception as error:  # noqa: BLE001 - the trained encoder is already on disk
            summary["eval_error"] = f"{type(error).__name__}: {error}"
            logger.error("final k-NN evaluation failed (%s); the encoder, curves and results are saved in %s",
                         summary["eval_error"], output_dir)  # fmt: skip
            write_outputs()
            return publish(hub, output_dir, summary)
        summary.update(knn_top1_trained=trained, knn_top1_random_init=baseline)
        trainer.save_metrics("eval", {f"knn_top1@{data_args.knn_k}": trained,
                                      f"knn_top1@{data_args.knn_k}_random_init": baseline})  # fmt: skip
        verdict = "better than" if trained > baseline else "NOT better than"
        print(f"k-NN top-1 (k={data_args.knn_k}) on {data_args.dataset_name}/{data_args.eval_split}: "
              f"random init {100 * baseline:.1f}%  ->  trained ({training_args.export_encoder}) "
              f"{100 * trained:.1f}%: {verdict} a random encoder")  # fmt: skip
        card_dataset = dataset_card_name(data_args)
        write_outputs([{"task_type": "image-classification", "dataset_name": card_dataset,
                        "dataset_type": card_dataset, "dataset_split": data_args.eval_split, "metric_type": "accuracy",
                        "metric_name": f"k-NN top-1 (k={data_args.knn_k})", "metric_value": trained}])  # fmt: skip
    return publish(hub, output_dir, summary)


def publish(hub: "HubTarget | None", output_dir: str, summary: dict) -> dict:
    """Copy all_results.json beside the encoder and, with --push_to_hub, publish the run (the last step)."""
    results = Path(output_dir) / "all_results.json"
    if results.exists():
        shutil.copy(results, Path(output_dir) / "encoder" / "all_results.json")
    if hub is not None:
        hub.push(output_dir, "End of training")
        summary["hub_repo"] = hub.repo_id
    return summary


if __name__ == "__main__":
    main()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()  # before the interpreter exits, on every process
