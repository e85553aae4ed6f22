"""Named recipes: each one's values pinned against its source table, and each one parses into valid arguments."""

import importlib.util
from pathlib import Path

import pytest
from transformers import HfArgumentParser

from sop_hf import LineageConfig, SOPConfig
from sop_hf.trainer import SOPTrainingArguments
from sop_hf.trainer.recipes import RECIPES, recipe_argv

ROOT = Path(__file__).parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("pretrain_sop_for_recipes", ROOT / "examples" / "pretrain_sop.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse(name: str, tmp_path):
    script = _script()
    parser = HfArgumentParser((script.ModelArguments, script.DataArguments, SOPTrainingArguments))
    return parser.parse_args_into_dataclasses(recipe_argv(name) + ["--output_dir", str(tmp_path), "--bf16", "false"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe__parses_and_builds_its_config(name, tmp_path):
    model_args, data_args, _ = parse(name, tmp_path)
    config = model_args.to_config()
    # exact types: a LineageConfig is also an SOPConfig
    assert type(config) is (LineageConfig if model_args.method != "sop" else SOPConfig)
    assert model_args.method == "sop" or config.method == model_args.method
    assert data_args.global_crop_size == config.image_size


# Each row: the recipe, then (section, field, value) as its source states it (see the comment above each recipe).
PINNED = {
    "demo": [("model", "koleo_loss_weight", 0.1), ("training", "momentum_teacher", 0.95),
             ("training", "learning_rate", 3e-3), ("training", "max_steps", 500), ("model", "class_memory_size", 1024),
             ("model", "num_anchors", 256), ("model", "num_support", 5), ("data", "num_local_crops", 0),
             ("model", "memory_size", 1024), ("model", "block_size", 256), ("model", "num_prototypes", 1024)],
    "vit_small_imagenet": [("model", "preset", "vit_small"), ("data", "global_crop_scale", (0.14, 1.0)),
                           ("data", "num_local_crops", 0), ("training", "learning_rate", 5e-4),
                           ("training", "momentum_teacher", 0.996), ("training", "weight_decay_end", 0.4),
                           ("training", "teacher_temp", 0.04), ("training", "warmup_epochs", 10)],
    "vit_small_imagenet_multicrop": [("model", "num_anchors", 4096), ("model", "num_support", 9),
                                     ("model", "class_memory_size", 65536), ("data", "num_local_crops", 10),
                                     ("data", "global_crop_scale", (0.25, 1.0)),
                                     ("data", "local_crop_scale", (0.05, 0.25)), ("data", "mask_ratio", (0.0, 0.3)),
                                     ("data", "mask_ratio_var", (0.0, 0.2)),
                                     ("training", "per_device_train_batch_size", 64)],
    "vit_large_imagenet_multicrop": [("model", "preset", "vit_large"), ("data", "num_local_crops", 10),
                                     ("model", "num_anchors", 4096)],
    "massl_vit_small_imagenet": [("model", "method", "massl"), ("model", "memory_size", 131072),
                                 ("model", "block_size", 16384), ("data", "global_crop_scale", (0.32, 1.0)),
                                 ("data", "local_crop_scale", (0.05, 0.32)), ("data", "num_local_crops", 10),
                                 ("training", "num_train_epochs", 800), ("training", "learning_rate", 5e-4),
                                 ("training", "warmup_epochs", 0), ("training", "momentum_teacher", 0.992)],
    "massl_vit_base_imagenet": [("training", "num_train_epochs", 400), ("training", "learning_rate", 7.5e-4),
                                ("training", "warmup_epochs", 10), ("training", "momentum_teacher", 0.996),
                                ("training", "warmup_teacher_temp_epochs", 50)],
    "carp_resnet50_imagenet": [("model", "method", "carp"), ("model", "encoder_type", "resnet"),
                               ("model", "num_prototypes", 65536), ("model", "block_size", 512),
                               ("data", "num_local_crops", 6), ("data", "global_crop_scale", (0.2, 1.0)),
                               ("data", "local_crop_scale", (0.05, 0.2)), ("training", "per_device_train_batch_size", 32),
                               ("training", "momentum_teacher", 0.99), ("training", "weight_decay", 1e-6)],
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(PINNED))
def test_recipe__values_match_their_source(name):
    for section, field, value in PINNED[name]:
        assert RECIPES[name][section][field] == value, (name, section, field)


def test_recipe__imagenet_multicrop_recipes_share_the_sop_paper_bank_and_ibot_crops():
    names = [n for n in RECIPES if n.endswith("_imagenet_multicrop")]
    assert sorted(names) == ["vit_base_imagenet_multicrop", "vit_large_imagenet_multicrop", "vit_small_imagenet_multicrop"]
    assert len({tuple(sorted(RECIPES[n]["data"].items())) for n in names}) == 1
