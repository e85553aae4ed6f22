"""Recipes: each one's values pinned against its source, each one builds its method's config, and a recipe means
the same from flags, from a config file and in ``--help``; on the user's data without --recipe the choice follows the
image size."""

import json

import pytest
import yaml

from sop_hf import SOPConfig, pretrain
from sop_hf.methods import METHODS, build_config, get_method, recipe_owner

ALL = [(method, name) for method, spec in METHODS.items() for name in spec.recipes]


@pytest.fixture(scope="module")
def script():
    return pretrain  # the job the example script runs


@pytest.mark.parametrize("method, name", ALL)
def test_recipe__builds_its_methods_config_and_parses(method, name, script, tmp_path):
    values = METHODS[method].recipes[name]
    config = build_config(method, values["model"])
    assert isinstance(config, METHODS[method].config_class)
    crop = values["data"]["global_crop_size"]
    assert crop == config.image_size  # the crops are what the encoder is built for
    argv = ["--method", method, "--recipe", name, "--output_dir", str(tmp_path), "--bf16", "false"]
    model_args, data_args, training_args, recipe, _, automatic = script.parse_arguments(argv)
    assert (model_args.method, model_args.recipe, recipe, automatic) == (method, name, name, False)
    assert data_args.global_crop_size == crop
    assert training_args.base_learning_rate == values["training"]["base_learning_rate"]  # the recipe's base rate


# Each row: (method, recipe, section, field, value) as its source states it (see the comment above each recipe).
PINNED = [
    ("sop", "demo", "model", "koleo_loss_weight", 0.1), ("sop", "demo", "training", "momentum_teacher", 0.95),
    ("sop", "demo", "training", "base_learning_rate", 3e-3), ("sop", "demo", "training", "max_steps", 500),
    ("sop", "demo", "model", "class_memory_size", 1024), ("sop", "demo", "model", "num_anchors", 256),
    ("sop", "demo", "model", "num_support", 5), ("sop", "demo", "data", "num_local_crops", 0),
    # SOP small_images (docs/training.md "Beyond raw pixels": chosen on held-out training images)
    ("sop", "small_images", "model", "patch_size", 7), ("sop", "small_images", "model", "hidden_size", 128),
    ("sop", "small_images", "model", "num_hidden_layers", 6), ("sop", "small_images", "model", "num_attention_heads", 4),
    ("sop", "small_images", "model", "class_memory_size", 4096), ("sop", "small_images", "model", "image_size", 28),
    ("sop", "small_images", "data", "global_crop_scale", (0.5, 1.0)),
    ("sop", "small_images", "training", "max_steps", 3200), ("sop", "small_images", "training", "warmup_steps", 320),
    ("massl", "demo", "model", "memory_size", 1024), ("massl", "demo", "model", "block_size", 256),
    ("carp", "demo", "model", "num_prototypes", 1024), ("carp", "demo", "model", "block_size", 32),
    ("carp", "demo", "model", "head_batch_norm", True), ("carl", "demo", "model", "num_prototypes", 32),
    ("carl", "demo", "model", "head_batch_norm", True), ("carl", "demo", "model", "uniformity_weight", 2.0),
    ("sop", "vit_small_imagenet", "model", "preset", "vit_small"), ("sop", "vit_small_imagenet", "model", "num_anchors", 64),
    ("sop", "vit_small_imagenet", "data", "global_crop_scale", (0.14, 1.0)),
    ("sop", "vit_small_imagenet", "data", "num_local_crops", 0), ("sop", "vit_small_imagenet", "training", "base_learning_rate", 5e-4),
    ("sop", "vit_small_imagenet", "training", "momentum_teacher", 0.996),
    ("sop", "vit_small_imagenet", "training", "weight_decay_end", 0.4),
    ("sop", "vit_small_imagenet", "training", "teacher_temp", 0.04), ("sop", "vit_small_imagenet", "training", "warmup_epochs", 10),
    ("sop", "vit_small_imagenet_multicrop", "model", "num_anchors", 4096),
    ("sop", "vit_small_imagenet_multicrop", "model", "num_support", 9),
    ("sop", "vit_small_imagenet_multicrop", "model", "class_memory_size", 65536),
    ("sop", "vit_small_imagenet_multicrop", "data", "num_local_crops", 10),
    ("sop", "vit_small_imagenet_multicrop", "data", "global_crop_scale", (0.25, 1.0)),
    ("sop", "vit_small_imagenet_multicrop", "data", "local_crop_scale", (0.05, 0.25)),
    ("sop", "vit_small_imagenet_multicrop", "data", "mask_ratio", (0.0, 0.3)),
    ("sop", "vit_small_imagenet_multicrop", "data", "mask_ratio_var", (0.0, 0.2)),
    ("sop", "vit_small_imagenet_multicrop", "training", "per_device_train_batch_size", 64),
    ("sop", "vit_large_imagenet_multicrop", "model", "preset", "vit_large"),
    ("sop", "vit_large_imagenet_multicrop", "data", "num_local_crops", 10),
    ("massl", "massl_vit_small_imagenet", "model", "memory_size", 131072),
    ("massl", "massl_vit_small_imagenet", "model", "block_size", 16384),
    ("massl", "massl_vit_small_imagenet", "data", "global_crop_scale", (0.32, 1.0)),
    ("massl", "massl_vit_small_imagenet", "data", "local_crop_scale", (0.05, 0.32)),
    ("massl", "massl_vit_small_imagenet", "data", "num_local_crops", 10),
    ("massl", "massl_vit_small_imagenet", "training", "num_train_epochs", 800),
    ("massl", "massl_vit_small_imagenet", "training", "base_learning_rate", 5e-4),
    ("massl", "massl_vit_small_imagenet", "training", "warmup_epochs", 0),
    ("massl", "massl_vit_small_imagenet", "training", "momentum_teacher", 0.992),
    ("massl", "massl_vit_base_imagenet", "training", "num_train_epochs", 400),
    ("massl", "massl_vit_base_imagenet", "training", "base_learning_rate", 7.5e-4),
    ("massl", "massl_vit_base_imagenet", "training", "warmup_epochs", 10),
    ("massl", "massl_vit_base_imagenet", "training", "momentum_teacher", 0.996),
    ("massl", "massl_vit_base_imagenet", "training", "warmup_teacher_temp_epochs", 50),
    ("carp", "carp_resnet50_imagenet", "model", "num_prototypes", 65536),
    ("carp", "carp_resnet50_imagenet", "model", "block_size", 512),
    ("carp", "carp_resnet50_imagenet", "data", "num_local_crops", 6),
    ("carp", "carp_resnet50_imagenet", "data", "global_crop_scale", (0.2, 1.0)),
    ("carp", "carp_resnet50_imagenet", "data", "local_crop_scale", (0.05, 0.2)),
    ("carp", "carp_resnet50_imagenet", "training", "per_device_train_batch_size", 32),
    ("carp", "carp_resnet50_imagenet", "training", "momentum_teacher", 0.99),
    ("carp", "carp_resnet50_imagenet", "training", "weight_decay", 1e-6),
    ("carp", "carp_resnet50_imagenet", "training", "lars", True),
    ("carp", "carp_resnet50_imagenet", "training", "base_learning_rate", 0.45),
    ("carp", "carp_resnet50_imagenet", "training", "min_lr", 0.0048),
    ("carp", "carp_resnet50_imagenet", "model", "zero_init_residual", True),
    # DINO (facebookresearch/dino README and main_dino.py defaults) and iBOT (bytedance/ibot README, ViT-S/16)
    ("dino", "demo", "model", "num_prototypes", 1024), ("dino", "demo", "training", "max_steps", 500),
    ("dino", "dino_vit_small_imagenet_100ep", "model", "num_prototypes", 65536),
    ("dino", "dino_vit_small_imagenet_100ep", "training", "base_learning_rate", 5e-4),
    ("dino", "dino_vit_small_imagenet_100ep", "training", "teacher_temp", 0.04),
    ("dino", "dino_vit_small_imagenet_100ep", "data", "global_crop_scale", (0.4, 1.0)),
    ("dino", "dino_vit_small_imagenet_100ep", "data", "num_local_crops", 8),
    ("dino", "dino_vit_small_imagenet_300ep", "training", "teacher_temp", 0.07),
    ("dino", "dino_vit_small_imagenet_300ep", "training", "warmup_teacher_temp_epochs", 30),
    ("dino", "dino_vit_small_imagenet_300ep", "model", "norm_last_layer", False),
    ("ibot", "demo", "data", "mask_ratio", (0.0, 0.3)), ("ibot", "demo", "training", "max_steps", 500),
    ("ibot", "ibot_vit_small_imagenet", "model", "num_prototypes", 8192),
    ("ibot", "ibot_vit_small_imagenet", "model", "num_patch_prototypes", 8192),
    ("ibot", "ibot_vit_small_imagenet", "model", "shared_head", True),
    ("ibot", "ibot_vit_small_imagenet", "training", "teacher_patch_temp", 0.07),
    ("ibot", "ibot_vit_small_imagenet", "training", "num_train_epochs", 800),
    ("ibot", "ibot_vit_small_imagenet", "data", "mask_ratio_var", (0.0, 0.2)),
]  # fmt: skip


@pytest.mark.parametrize("method, name, section, field, value", PINNED)
def test_recipe__values_match_their_source(method, name, section, field, value):
    assert METHODS[method].recipes[name][section][field] == value


def test_recipe__carp_resnet50_is_a_resnet_50():
    config = build_config("carp", METHODS["carp"].recipes["carp_resnet50_imagenet"]["model"])
    assert config.is_resnet and list(config.backbone_config.depths) == [3, 4, 6, 3] and config.encoder_width == 2048


def test_recipe__imagenet_multicrop_recipes_share_the_sop_paper_bank_and_ibot_crops():
    names = [n for n in METHODS["sop"].recipes if n.endswith("_imagenet_multicrop")]
    assert sorted(names) == [
        "vit_base_imagenet_multicrop",
        "vit_large_imagenet_multicrop",
        "vit_small_imagenet_multicrop",
    ]
    assert len({tuple(sorted(METHODS["sop"].recipes[n]["data"].items())) for n in names}) == 1


def test_recipe__small_images_has_no_dataset_of_its_own():
    """--recipe small_images trains on what --dataset_name / --train_dir name (the embedded set when nothing is)."""
    assert "dataset_name" not in METHODS["sop"].recipes["small_images"]["data"]
    assert "dataset_name" in METHODS["sop"].recipes["demo"]["data"]  # the demo's own data is unchanged


def test_recipe_owner__finds_the_method_and_names_the_choices():
    assert recipe_owner("massl_vit_small_imagenet")[0] == "massl"
    assert recipe_owner("demo")[0] == "sop" and recipe_owner("demo", "carl")[0] == "carl"
    with pytest.raises(ValueError, match="--recipe must be one of .*vit_small_imagenet"):
        recipe_owner("nope")
    with pytest.raises(ValueError, match="'vit_small_imagenet' is not a carp recipe; carp has demo, carp_resnet50"):
        recipe_owner("vit_small_imagenet", "carp")


def test_flags__override_the_recipe_and_config_overrides_change_single_fields(script, tmp_path):
    argv = [
        "--recipe",
        "demo",
        "--max_steps",
        "7",
        "--global_crop_size",
        "32",
        "--output_dir",
        str(tmp_path),
        "--config_overrides",
        "num_anchors=128,koleo_loss_weight=0.2,image_size=32",
    ]
    model_args, data_args, training_args, _, values, _ = script.parse_arguments(argv)
    assert (
        training_args.max_steps == 7 and training_args.base_learning_rate == 3e-3
    )  # flag wins, the rest is the recipe
    assert data_args.global_crop_size == 32
    config, _ = script.build_model(model_args, values)
    assert (config.num_anchors, config.koleo_loss_weight, config.image_size) == (128, 0.2, 32)
    assert config.num_support == 5  # from the recipe
    model_args.config_overrides = "num_anchor=3"
    with pytest.raises(ValueError, match="unknown SOPConfig field.*num_anchor"):
        script.build_model(model_args, values)
    model_args.config_overrides = "num_anchors"
    with pytest.raises(ValueError, match="entries must be FIELD=VALUE"):
        model_args.overrides()


def test_config_file__with_a_recipe_equals_the_same_flags(script, tmp_path):
    flags = [
        "--method",
        "massl",
        "--recipe",
        "demo",
        "--max_steps",
        "9",
        "--config_overrides",
        "block_size=128",
        "--output_dir",
        str(tmp_path),
    ]
    file = tmp_path / "run.yaml"
    file.write_text(
        yaml.safe_dump(
            {
                "method": "massl",
                "recipe": "demo",
                "max_steps": 9,
                "config_overrides": "block_size=128",
                "output_dir": str(tmp_path),
            }
        )
    )
    from_flags, from_file = script.parse_arguments(flags), script.parse_arguments([str(file)])
    for a, b in zip(from_flags[:3], from_file[:3], strict=True):
        assert a.to_dict() == b.to_dict() if hasattr(a, "to_dict") else vars(a) == vars(b)
    config_a, _ = script.build_model(from_flags[0], from_flags[4])
    config_b, _ = script.build_model(from_file[0], from_file[4])
    assert config_a.to_dict() == config_b.to_dict() and config_a.block_size == 128
    json_file = tmp_path / "run.json"
    json_file.write_text(json.dumps({"recipe": "massl_vit_small_imagenet", "output_dir": str(tmp_path), "bf16": False}))
    model_args, data_args, _, _, _, _ = script.parse_arguments([str(json_file)])
    assert model_args.method == "massl" and data_args.num_local_crops == 10  # the recipe names its method


def test_help__shows_the_values_of_the_chosen_recipe(script, capsys):
    for argv, expected in (
        (["--help"], "(default: 0.003)"),
        (["--recipe", "vit_small_imagenet", "--help"], "(default: 0.0005)"),
    ):
        with pytest.raises(SystemExit):
            script.parse_arguments(argv)
        text = " ".join(capsys.readouterr().out.split())
        assert "--config_overrides" in text and "sop: demo, small_images, vit_small_imagenet" in text
        start = text.index("--base_learning_rate BASE_LEARNING_RATE", text.index("options:"))
        lr_help = text[start : start + 400]
        assert expected in lr_help, lr_help


def test_auto_recipe__follows_the_image_size():
    for side, patch, crop in (
        (28, 4, 28),
        (33, 4, 32),
        (47, 4, 44),
        (48, 8, 48),
        (56, 8, 56),
        (95, 8, 88),
        (96, 16, 96),
        (150, 16, 144),
    ):  # at least 6 x 6 tokens, the largest such patch
        label, values = pretrain.recipe_for_images("sop", side)
        assert (values["model"]["patch_size"], values["model"]["image_size"], values["data"]["global_crop_size"]) == (
            patch,
            crop,
            crop,
        ), side
        assert "dataset_name" not in values["data"]  # the user's data, never the embedded demo set
        SOPConfig(**{k: v for k, v in values["model"].items() if k != "preset"})
    assert pretrain.recipe_for_images("sop", 500)[0] == "vit_small_imagenet"
    label, values = pretrain.recipe_for_images("carp", 500)
    assert values["model"]["backbone_config"]["image_size"] == 224
    assert get_method("sop").recipes["demo"]["model"]["image_size"] == 28  # the recipes themselves are not changed


def test_config_name_and_preset__a_saved_config_round_trips_and_a_preset_replaces_the_recipe_sizes(script, tmp_path):
    model_args, _, _, _, values, _ = script.parse_arguments(["--method", "carp", "--preset", "vit_tiny",
                                                             "--output_dir", str(tmp_path)])  # fmt: skip
    config, _ = script.build_model(model_args, values)
    assert (config.backbone_config.hidden_size, config.backbone_config.intermediate_size) == (192, 768)
    assert config.backbone_config.patch_size == 4 and config.num_prototypes == 1024  # the rest stays the recipe's
    config.save_pretrained(tmp_path / "carp")  # transformers' own file, with its extra keys
    model_args.preset, model_args.config_name = None, str(tmp_path / "carp")
    assert script.build_model(model_args, values)[0].to_dict() == config.to_dict()
    model_args.method = "sop"
    with pytest.raises(ValueError, match="holds a 'carp' config, not the 'sop' config of --method sop"):
        script.build_model(model_args, values)
