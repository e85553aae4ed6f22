"""The peak learning rate: ``--learning_rate`` is the rate itself (as in ``Trainer``), ``--base_learning_rate`` the
rate for a global batch of 256 (run_mae.py's rule); a recipe's rate yields to the user's flag, two explicit rates that
disagree are an error, and the trainer trains at and logs the rate it derived."""

import dataclasses
import logging

import pytest
from transformers import HfArgumentParser

from sop_hf import SOPConfig, SOPForPreTraining
from sop_hf.methods import get_method
from sop_hf.methods.recipes import RecipeRate, recipe_defaults
from sop_hf.training import SOPTrainer, SOPTrainingArguments
from tests.scripts.train_tiny import TINY, IndexSeededImages, collate


def parse(argv: list[str], recipe: str | None = "demo") -> SOPTrainingArguments:
    """What the main job does: the recipe's training values become the parser's defaults, then the flags."""
    parser = HfArgumentParser(SOPTrainingArguments)
    if recipe is not None:
        training = get_method("sop").recipes[recipe]["training"]
        defaults = recipe_defaults({"data": {}, "training": training})
        fields = {f.name for f in dataclasses.fields(SOPTrainingArguments)}
        parser.set_defaults(**{k: v for k, v in defaults.items() if k in fields})
    (args,) = parser.parse_args_into_dataclasses(argv)
    return args


def tiny_args(tmp_path, *argv: str) -> list[str]:
    return ["--output_dir", str(tmp_path), "--use_cpu", "true", "--report_to", "none", "--save_strategy", "no",
            "--disable_tqdm", "true", "--bf16", "false", *argv]  # fmt: skip


def test_learning_rate__absolute_flag_trains_at_exactly_that_rate(tmp_path, caplog):
    args = parse(tiny_args(tmp_path, "--learning_rate", "0.001", "--lr_scheduler_type", "constant",
                           "--per_device_train_batch_size", "8", "--max_steps", "2", "--warmup_steps", "0",
                           "--logging_steps", "1"))  # fmt: skip
    assert (args.learning_rate, args.base_learning_rate) == (1e-3, None)  # the demo recipe's base 3e-3 yields
    trainer = SOPTrainer(model=SOPForPreTraining(SOPConfig(**TINY)), args=args, train_dataset=IndexSeededImages(),
                         data_collator=collate)  # fmt: skip
    assert trainer.global_batch_size == 8
    with caplog.at_level(logging.INFO, logger="sop_hf.training.trainer"):
        trainer.train()
    assert "learning rate 0.001 (--learning_rate, absolute)" in caplog.text
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert [group["lr"] for group in inner.param_groups] == [1e-3] * len(inner.param_groups)
    logged = [row["learning_rate"] for row in trainer.state.log_history if "learning_rate" in row]
    assert logged and all(rate == 1e-3 for rate in logged)


def test_base_learning_rate__is_scaled_by_the_global_batch(tmp_path, caplog):
    args = parse(tiny_args(tmp_path, "--per_device_train_batch_size", "8", "--gradient_accumulation_steps", "5"))
    assert args.base_learning_rate == 3e-3  # the demo recipe's base rate
    trainer = SOPTrainer(model=SOPForPreTraining(SOPConfig(**TINY)), args=args, train_dataset=IndexSeededImages(),
                         data_collator=collate)  # fmt: skip
    assert trainer.peak_learning_rate == pytest.approx(3e-3 * 40 / 256) == args.learning_rate
    expected = "learning rate 0.00046875 = base 0.003 x global batch 40 / 256 (--base_learning_rate)"
    assert args.describe_learning_rate(40) == expected
    assert SOPTrainingArguments(output_dir=str(tmp_path), base_learning_rate=3e-3).describe_learning_rate(320) == (
        "learning rate 0.00375 = base 0.003 x global batch 320 / 256 (--base_learning_rate)"
    )


def test_base_learning_rate__flag_replaces_the_recipe_and_default_is_sop(tmp_path):
    args = parse(tiny_args(tmp_path, "--base_learning_rate", "0.001", "--per_device_train_batch_size", "128"))
    assert args.base_learning_rate == 1e-3 and args.learning_rate == pytest.approx(1e-3 * 128 / 256)
    plain = SOPTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=64)
    assert plain.base_learning_rate == 5e-4 and plain.learning_rate == pytest.approx(5e-4 * 64 / 256)  # SOP / DINO
    absolute = SOPTrainingArguments(output_dir=str(tmp_path), learning_rate=0.02)  # as Trainer: the default yields
    assert absolute.base_learning_rate is None and absolute.peak_learning_rate(4096) == 0.02


def test_learning_rates__both_explicit_and_different_are_an_error(tmp_path):
    message = (
        r"--learning_rate 0.001 and --base_learning_rate 0.003 both set the peak rate: give one "
        r"\(--learning_rate is absolute; --base_learning_rate is scaled by global batch / 256, here 8\)"
    )
    with pytest.raises(ValueError, match=message):
        parse(tiny_args(tmp_path, "--learning_rate", "0.001", "--base_learning_rate", "0.003",
                        "--per_device_train_batch_size", "8"))  # fmt: skip
    with pytest.raises(ValueError, match=message):
        SOPTrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, learning_rate=1e-3,
                             base_learning_rate=3e-3)  # fmt: skip
    with pytest.raises(ValueError, match="--base_learning_rate must be a finite number >= 0, got -1.0"):
        SOPTrainingArguments(output_dir=str(tmp_path), base_learning_rate=-1.0)


def test_learning_rates__a_recipes_absolute_rate_yields_to_the_users_base_rate(tmp_path):
    args = SOPTrainingArguments(output_dir=str(tmp_path), learning_rate=RecipeRate(0.1), base_learning_rate=2e-3,
                                per_device_train_batch_size=128)  # fmt: skip
    assert args.base_learning_rate == 2e-3 and args.learning_rate == pytest.approx(1e-3)


def test_learning_rates__resolved_arguments_rebuild_unchanged(tmp_path):
    args = SOPTrainingArguments(output_dir=str(tmp_path), base_learning_rate=3e-3, per_device_train_batch_size=8)
    copy = dataclasses.replace(args)  # learning_rate now holds base x batch / 256: consistent, no conflict
    assert (copy.learning_rate, copy.base_learning_rate) == (args.learning_rate, 3e-3)


def test_scale_lr_with_batch_size__removed_with_a_pointer(tmp_path):
    with pytest.raises(ValueError, match="--scale_lr_with_batch_size was removed: .*pass --learning_rate RATE"):
        parse(tiny_args(tmp_path, "--scale_lr_with_batch_size", "false"))
    with pytest.raises(ValueError, match="for --scale_lr_with_batch_size True pass --base_learning_rate RATE"):
        SOPTrainingArguments(output_dir=str(tmp_path), scale_lr_with_batch_size=True)


def test_help__shows_the_recipes_base_rate(tmp_path, capsys):
    parser = HfArgumentParser(SOPTrainingArguments)
    parser.set_defaults(**{k: v for k, v in recipe_defaults(get_method("sop").recipes["demo"]).items()
                           if k == "base_learning_rate"})  # fmt: skip
    parser.print_help()
    text = " ".join(capsys.readouterr().out.split())
    start = text.index("--base_learning_rate BASE_LEARNING_RATE", text.index("options:"))
    assert "(default: 0.003)" in text[start : start + 400]
