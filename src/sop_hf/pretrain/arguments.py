"""The pretraining job's arguments (model and data; training: ``SOPTrainingArguments``) and their one parse.

``parse_arguments(argv)`` picks the recipe first (``recipe_choice``: ``--recipe``, or a probe of the data), makes its
values the parser's defaults, so ``--help`` shows what a run will use and every flag or config-file entry overrides
them, then parses argv (or one JSON/YAML file) once. Nothing here changes a parsed value afterwards.
"""

import os
from dataclasses import dataclass, field
from typing import NamedTuple

from transformers import HfArgumentParser

from ..configuration_sop import PRESETS
from ..data.pipeline import MultiCropDataArguments
from ..help_formatter import HelpFormatter
from ..methods import METHODS
from ..training import SOPTrainingArguments
from .overrides import parse_config_overrides
from .recipe_choice import (
    LOCATION_FLAGS,
    choose_recipe,
    is_config_file,
    location_flags,
    parser_defaults,
    read_config_file,
)


def _recipe_list() -> str:
    return "; ".join(f"{name}: {', '.join(m.recipes)}" for name, m in METHODS.items())


@dataclass
class ModelArguments:
    """The method, its recipe and its config. Config values live in one place, the method's config class and its
    recipes; change single fields with --config_overrides (see docs/configuration.md)."""

    method: str = field(
        default="sop",
        metadata={"help": f"Pretraining method: {', '.join(METHODS)} (docs/lineage.md compares them; SOP's patch "
                  "loss, SOP-MIM, is on when mim_loss_weight > 0)."},
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
        default=None,
        metadata={
            "help": "A config.json (or its folder) of the method's config, instead of the recipe's.",
            "aliases": ["--config_name_or_path"],  # run_mim.py's name for it
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Change config fields: 'num_anchors=2048,koleo_loss_weight=0.1' (transformers' "
                  "update_from_string syntax; lineage encoders: 'backbone_config.hidden_size=128'). Values are read "
                  "as JSON where they parse (numbers, true, [1,2]), else as strings; an unknown field is an error "
                  "naming the fields."},
    )  # fmt: skip
    image_size: int | None = field(
        default=None,
        metadata={"help": "The encoder's input size, as run_mim.py's --image_size; the global crops follow it (local "
                  "crops: about half) unless --global_crop_size / --local_crop_size say otherwise. Default: the "
                  "recipe's."},
    )  # fmt: skip
    patch_size: int | None = field(
        default=None,
        metadata={"help": "The encoder's patch size, as run_mim.py's --patch_size. Default: the recipe's."},
    )
    preset: str | None = field(
        default=None, metadata={"help": f"ViT preset of the encoder: {', '.join(sorted(PRESETS))} (patch 16)."}
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow code shipped in --model_name_or_path / --config_name to run."}
    )
    cache_dir: str | None = field(
        default=None, metadata={"help": "Where Hub datasets and models are cached (as in run_mim.py / run_mae.py)."}
    )
    model_revision: str = field(
        default="main", metadata={"help": "Branch, tag or commit of --model_name_or_path on the Hub."}
    )
    token: str | None = field(
        default=None,
        metadata={"help": "Hub token for private datasets and models (default: the one `hf auth login` stored)."},
    )

    def overrides(self) -> dict:
        """--preset and --config_overrides as ``{field: value}`` (checked where the config is built)."""
        preset = {"preset": self.preset} if self.preset is not None else {}
        return {**preset, **parse_config_overrides(self.config_overrides)}


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
        metadata={"help": "When the dataset has no validation split: hold out this fraction of the training split "
                  "(seeded, stratified) for the k-NN evaluation, instead of a test split (run_mim.py's rule); it "
                  "is then not trained on."},
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

    def __post_init__(self):
        counts = {"--knn_k": self.knn_k, "--max_eval_samples": self.max_eval_samples,
                  "--monitor_samples": self.monitor_samples}  # fmt: skip
        bad = {flag: value for flag, value in counts.items() if value < 1}
        if bad:
            raise ValueError(f"{', '.join(bad)} must be >= 1, got {', '.join(str(v) for v in bad.values())}")
        if not 0.0 <= self.train_val_split < 1.0:
            raise ValueError(f"--train_val_split must be in [0, 1), got {self.train_val_split}")


class ParsedArguments(NamedTuple):
    """What ``parse_arguments`` returns (unpacks as a 6-tuple)."""

    model: ModelArguments
    data: DataArguments
    training: SOPTrainingArguments
    recipe: str
    recipe_values: dict
    automatic: bool


DESCRIPTION = """Pretrain a vision encoder with SOP (or a method of its lineage) on transformers' Trainer.

Every flag overrides the chosen --recipe; --help lists them all (docs/training.md)."""


def parse_arguments(argv: list[str], description: str | None = None, prog: str | None = None) -> ParsedArguments:
    """Choose the recipe, then parse ``argv`` (flags, or one JSON/YAML config file) once with its values as defaults.

    ``description`` and ``prog`` are what ``--help`` shows (default: this job's).
    """
    argv = list(argv)
    from_file = is_config_file(argv)
    given = read_config_file(os.path.abspath(argv[0])) if from_file else {}
    location = {k: given.get(k) for k in LOCATION_FLAGS} if from_file else location_flags(argv)
    asks_help = not from_file and any(token in ("-h", "--help") for token in argv)
    choice = choose_recipe(location, probe=not asks_help)
    parser = HfArgumentParser((ModelArguments, DataArguments, SOPTrainingArguments), prog=prog,
                              description=(description or DESCRIPTION).replace("``", "`"),
                              formatter_class=HelpFormatter)  # fmt: skip
    defaults = parser_defaults(choice)
    if from_file:
        model_args, data_args, training_args = parser.parse_dict({**defaults, **given})
    else:
        parser.set_defaults(**defaults)
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(argv, look_for_args_file=False)
    return ParsedArguments(model_args, data_args, training_args, choice.name, choice.values, choice.automatic)


__all__ = ["DataArguments", "ModelArguments", "ParsedArguments", "parse_arguments"]
