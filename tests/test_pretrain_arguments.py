"""The pretraining job's arguments: --config_overrides in update_from_string syntax (plus dotted keys and JSON),
run_mim.py's --image_size / --patch_size, the flags read before parsing, and parsed values that stay as given."""

import logging
import re

import pytest
from PIL import Image

from sop_hf import SOPConfig
from sop_hf.methods import CARPConfig
from sop_hf.pretrain import build_model, parse_arguments
from sop_hf.pretrain.job import monitor_steps_of, trainer_arguments
from sop_hf.pretrain.overrides import encoder_size_overrides, parse_config_overrides, typed_for
from sop_hf.pretrain.recipe_choice import choose_recipe, location_flags


def test_parse_config_overrides__update_from_string_syntax():
    # transformers' own example string of PretrainedConfig.update_from_string
    assert parse_config_overrides("n_embd=10,resid_pdrop=0.2,scale_attn_weights=false,summary_type=cls_index") == {
        "n_embd": 10, "resid_pdrop": 0.2, "scale_attn_weights": False, "summary_type": "cls_index"}  # fmt: skip
    assert parse_config_overrides("use_mask_token=True,flag=FALSE") == {"use_mask_token": True, "flag": False}


def test_parse_config_overrides__dotted_keys_json_values_and_commas_inside_values():
    text = 'a=1,b=true,backbone_config.hidden_size=128,mask_ratio=[0.1, 0.5],backbone_config={"model_type":"resnet"}'
    assert parse_config_overrides(text) == {
        "a": 1,
        "b": True,
        "backbone_config.hidden_size": 128,
        "mask_ratio": [0.1, 0.5],
        "backbone_config": {"model_type": "resnet"},
    }
    assert parse_config_overrides(None) == {} and parse_config_overrides(" ") == {}
    for bad in ("num_anchors", "=3"):
        with pytest.raises(ValueError, match=re.escape(f"--config_overrides entries must be FIELD=VALUE, got {bad!r}")):
            parse_config_overrides(bad)


def test_typed_for__boolean_fields_take_update_from_string_spellings():
    typed = typed_for(SOPConfig, {"use_mask_token": "yes", "qkv_bias": 0, "num_anchors": 1, "backbone_config.x": "n"})
    assert typed == {"use_mask_token": True, "qkv_bias": False, "num_anchors": 1, "backbone_config.x": "n"}
    with pytest.raises(ValueError, match=re.escape("--config_overrides use_mask_token: can't derive true or false "
                                                   "from 'maybe'")):  # fmt: skip
        typed_for(SOPConfig, {"use_mask_token": "maybe"})


def test_encoder_size_overrides__sop_fields_or_the_lineage_encoder():
    assert encoder_size_overrides({"image_size": 28}, 32, None) == {"image_size": 32}
    assert encoder_size_overrides({"backbone_config": {}}, 32, 8) == {
        "backbone_config.image_size": 32,
        "backbone_config.patch_size": 8,
    }
    assert encoder_size_overrides({}, None, None) == {}


def test_image_and_patch_size__reach_the_config_the_crops_and_the_exported_encoder(tmp_path):
    args = parse_arguments(["--image_size", "32", "--patch_size", "8", "--output_dir", str(tmp_path)])
    assert (args.data.global_crop_size, args.data.local_crop_size) == (32, 16)  # the crops follow the encoder
    config, model = build_model(args.model, args.recipe_values)
    assert (config.image_size, config.patch_size) == (32, 8)
    exported = model.export_encoder("student").config
    assert (exported.image_size, exported.patch_size) == (32, 8)
    # an explicit crop flag wins; the lineage's encoder is its backbone_config
    args = parse_arguments(["--method", "carp", "--image_size=32", "--global_crop_size", "24", "--output_dir", "o"])
    assert args.data.global_crop_size == 24
    config, _ = build_model(args.model, args.recipe_values)
    assert isinstance(config, CARPConfig) and config.backbone_config.image_size == 32
    # with --config_overrides beside them, and from a saved config (--config_name)
    config.save_pretrained(tmp_path / "carp")
    args = parse_arguments(["--method", "carp", "--config_name", str(tmp_path / "carp"), "--patch_size", "16",
                            "--config_overrides", "num_prototypes=64", "--output_dir", "o"])  # fmt: skip
    config, _ = build_model(args.model, args.recipe_values)
    assert (config.backbone_config.patch_size, config.backbone_config.image_size, config.num_prototypes) == (16, 32, 64)


def test_image_size__refused_with_a_checkpoint_that_brings_its_config(tmp_path):
    args = parse_arguments(["--model_name_or_path", str(tmp_path), "--image_size", "32", "--output_dir", "o"])
    with pytest.raises(ValueError, match="--model_name_or_path brings its own config: drop --config_name / "
                                         "--config_overrides / --image_size"):  # fmt: skip
        build_model(args.model, args.recipe_values)


def test_location_flags__every_spelling_and_nothing_else():
    argv = ["--max_steps", "3", "--train-dir", "a", "--data_files", "x", "train=y", "--recipe=demo", "--image_size",
            "32", "--bf16", "--split", "s"]  # fmt: skip
    flags = location_flags(argv)
    assert (flags["train_dir"], flags["data_files"], flags["recipe"], flags["image_size"], flags["split"]) == (
        "a",
        ["x", "train=y"],
        "demo",
        32,
        "s",
    )
    assert flags["method"] is None and "max_steps" not in flags


def test_parsed_arguments__stay_as_given(tmp_path):
    argv = ["--eval_strategy", "steps", "--eval_steps", "5", "--monitor_steps", "0", "--output_dir", str(tmp_path)]
    args = parse_arguments(argv)
    assert monitor_steps_of(args.data, args.training) == 5
    for_trainer = trainer_arguments(args.training)
    assert str(getattr(for_trainer.eval_strategy, "value", for_trainer.eval_strategy)) == "no"
    assert args.training.eval_strategy.value == "steps" and args.data.monitor_steps == 0  # the parsed values
    with pytest.raises(ValueError, match=re.escape("--eval_strategy epoch is not supported")):
        monitor_steps_of(args.data, parse_arguments(["--eval_strategy", "epoch", "--output_dir", "o"]).training)


def test_data_arguments__counts_checked_when_parsed():
    with pytest.raises(ValueError, match=re.escape("--knn_k, --monitor_samples must be >= 1, got 0, 0")):
        parse_arguments(["--knn_k", "0", "--monitor_samples", "0", "--output_dir", "o"])


def test_automatic_recipe__from_a_probe_of_the_first_readable_image(tmp_path):
    folder = tmp_path / "images" / "train" / "cats"
    folder.mkdir(parents=True)
    (folder / "0_broken.png").write_bytes(b"not an image")
    Image.new("RGB", (100, 90)).save(folder / "1.png")
    choice = choose_recipe(location_flags(["--train_dir", str(tmp_path / "images" / "train")]))
    assert (choice.name, choice.automatic) == ("demo model at 88 px, patch 8", True)
    assert choice.values["data"]["global_crop_size"] == 88 and "dataset_name" not in choice.values["data"]
    assert choose_recipe(location_flags(["--dataset_name", str(tmp_path / "images")]), probe=False).name == "demo"
    args = parse_arguments(["--dataset_name", str(tmp_path / "images"), "--output_dir", "o"])
    assert (args.recipe, args.data.global_crop_size, args.training.max_steps) == (
        "demo model at 88 px, patch 8",
        88,
        500,
    )


def test_automatic_recipe__small_images_keep_the_demo_grid_and_the_log_says_why(tmp_path, caplog):
    folder = tmp_path / "images" / "train" / "shoes"
    folder.mkdir(parents=True)
    Image.new("L", (56, 56)).save(folder / "0.png")
    with caplog.at_level(logging.INFO, logger="sop_hf.pretrain.recipe_choice"):
        choice = choose_recipe(location_flags(["--train_dir", str(tmp_path / "images" / "train")]))
    assert choice.name == "demo model at 56 px, patch 8"
    assert choice.values["model"]["patch_size"] == 8 and choice.values["data"]["global_crop_size"] == 56
    assert ("the training images are 56 px, so the run uses demo model at 56 px, patch 8 (49 tokens per crop, the "
            "demo's model sees 49; patch 4 would give 196, 4x the tokens per image)") in caplog.text  # fmt: skip
    forced = choose_recipe(location_flags(["--train_dir", str(tmp_path / "images" / "train"), "--patch_size", "4"]))
    assert forced.values["model"]["patch_size"] == 4 and forced.values["model"]["image_size"] == 56


def test_parse_arguments__run_mim_config_name_or_path_is_config_name(tmp_path):
    args = parse_arguments(["--config_name_or_path", str(tmp_path / "config.json"), "--output_dir", "o"])
    assert args.model.config_name == str(tmp_path / "config.json")
