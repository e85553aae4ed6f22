"""``sop-export`` / ``sop-convert``: help text, in-process runs and one run of the installed console scripts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, ViTModel

from sop_hf import SOPForPreTraining, SOPImageProcessor, SOPModel
from sop_hf.cli import convert_main, export_main, main
from tests.conftest import tiny_config
from tests.test_convert import HEADS, IMAGE, STUDENT, TEACHER, TRAINING_CHECKPOINT, reference_forward
from tests.test_export import TOLERANCE, max_delta, randomize_


def _features(model, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(images).last_hidden_state


@pytest.mark.parametrize(
    "entry, options",
    [
        (export_main, ["--model", "--output_dir", "--which", "--image_size", "--crop_pct", "example:", "sop-export"]),
        (
            convert_main,
            [
                "--checkpoint",
                "--output_dir",
                "--which",
                "--num_attention_heads",
                "--stock_vit",
                "--stock_vit_dir",
                "--trust_pickle",
                "example:",
                "sop-convert",
            ],
        ),
    ],  # fmt: skip
)
def test_help__exits_0_and_describes_the_options(capsys, entry, options):
    with pytest.raises(SystemExit) as exit_info:
        entry(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in options:
        assert option in text
    assert "(default: None)" not in text


def test_main__dispatches_and_explains_usage(capsys):
    assert main([]) == 2 and main(["nope"]) == 2
    assert "usage: sop-hf {pretrain,eval,visualize,export,convert}" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert "Run `sop-hf COMMAND --help`" in capsys.readouterr().out
    for command in ("eval", "visualize", "export", "convert"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "knn", "--help"] if command == "eval" else [command, "--help"])
        assert exit_info.value.code == 0
        assert "--model" in capsys.readouterr().out or command == "convert"


def test_pretrain__help_shows_the_jobs_flags_with_the_recipes_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: sop-hf pretrain") and "accelerate launch -m sop_hf.cli pretrain" in text
    for flag in ("--recipe", "--config_overrides", "--image_size IMAGE_SIZE", "--patch_size PATCH_SIZE", "--train_dir"):
        assert flag in text
    assert "--max_steps MAX_STEPS" in text and "(default: 500)" in text  # the demo recipe's values are the defaults


def test_export__missing_required_option_fails(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_main(["--model", "somewhere"])
    assert exit_info.value.code == 2
    assert "--output_dir" in capsys.readouterr().err


def test_export__encoder_folder(tmp_path):
    encoder = randomize_(SOPModel(tiny_config())).eval()
    encoder.save_pretrained(tmp_path / "encoder")
    assert export_main(["--model", str(tmp_path / "encoder"), "--output_dir", str(tmp_path / "vit")]) == 0
    vit = AutoModel.from_pretrained(tmp_path / "vit")
    assert type(vit) is ViTModel
    images = torch.randn(2, 3, 32, 32)
    assert max_delta(_features(vit, images), _features(encoder, images)) <= TOLERANCE
    assert AutoImageProcessor.from_pretrained(tmp_path / "vit").crop_size == {"height": 32, "width": 32}


@pytest.mark.parametrize("which", ["teacher", "student"])
def test_export__pretraining_checkpoint_teacher_or_student(tmp_path, which):
    model = SOPForPreTraining(tiny_config())
    randomize_(model.sop)  # the student now differs from the teacher
    model.save_pretrained(tmp_path / "checkpoint")
    argv = ["--model", str(tmp_path / "checkpoint"), "--output_dir", str(tmp_path / "vit"), "--which", which]
    assert export_main(argv) == 0
    vit = ViTModel.from_pretrained(tmp_path / "vit")
    images = torch.randn(2, 3, 32, 32)
    expected = _features(model.export_encoder(which), images)
    other = _features(model.export_encoder("student" if which == "teacher" else "teacher"), images)
    assert max_delta(_features(vit, images), expected) <= TOLERANCE
    assert max_delta(_features(vit, images), other) > 1e-2


def test_export__rejects_folders_of_other_models(tmp_path):
    ViTModel(ViTModel.config_class(hidden_size=32, num_hidden_layers=1, num_attention_heads=2)).save_pretrained(
        tmp_path / "vit"
    )
    with pytest.raises(ValueError, match="is not a SOP model folder \\(config model_type='vit', expected 'sop'"):
        export_main(["--model", str(tmp_path / "vit"), "--output_dir", str(tmp_path / "out")])


def test_convert__sop_encoder_folder(tmp_path):
    torch.save(TRAINING_CHECKPOINT, tmp_path / "checkpoint.pth")
    argv = ["--checkpoint", str(tmp_path / "checkpoint.pth"), "--output_dir", str(tmp_path / "sop")]
    assert convert_main(argv + ["--num_attention_heads", str(HEADS)]) == 0
    assert not (tmp_path / "sop" / "stock_vit").exists()
    model = SOPModel.from_pretrained(tmp_path / "sop")
    processor = AutoImageProcessor.from_pretrained(tmp_path / "sop")
    assert isinstance(processor, SOPImageProcessor) and processor.crop_size == {"height": IMAGE, "width": IMAGE}
    images = torch.randn(2, 3, IMAGE, IMAGE)
    assert max_delta(_features(model, images), reference_forward(TEACHER, images, HEADS)) <= TOLERANCE


@pytest.mark.parametrize("mode", ["also", "only"])
def test_convert__stock_vit(tmp_path, mode):
    torch.save(TEACHER, tmp_path / "weights.pth")
    argv = ["--checkpoint", str(tmp_path / "weights.pth"), "--output_dir", str(tmp_path / "out"),
            "--num_attention_heads", str(HEADS), "--stock_vit", mode]  # fmt: skip
    assert convert_main(argv) == 0
    vit_dir = tmp_path / "out" / "stock_vit" if mode == "also" else tmp_path / "out"
    vit = AutoModel.from_pretrained(vit_dir)
    assert type(vit) is ViTModel
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert (AutoModel.from_pretrained(tmp_path / "out").config.model_type == "sop") == (mode == "also")
    images = torch.randn(1, 3, IMAGE, IMAGE)
    assert max_delta(_features(vit, images), reference_forward(TEACHER, images, HEADS)) <= TOLERANCE


def test_console_scripts__convert_then_export_in_subprocesses(tmp_path):
    torch.save(TRAINING_CHECKPOINT, tmp_path / "checkpoint.pth")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    script = Path(sys.executable).parent / "sop-hf"  # the one command; sop-convert is its alias
    convert = [str(script), "convert", "--checkpoint", str(tmp_path / "checkpoint.pth"), "--output_dir", str(tmp_path / "sop"),
               "--which", "student", "--num_attention_heads", str(HEADS)]  # fmt: skip
    export = [str(Path(sys.executable).parent / "sop-export"), "--model", str(tmp_path / "sop"),
              "--output_dir", str(tmp_path / "vit")]  # fmt: skip
    for command in (convert, export):
        result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "written to" in result.stdout
    images = torch.randn(2, 3, IMAGE, IMAGE)
    expected = reference_forward(STUDENT, images, HEADS)
    assert max_delta(_features(ViTModel.from_pretrained(tmp_path / "vit"), images), expected) <= TOLERANCE


# --- every method's checkpoint through every command; no code from a model folder unless asked ----------------------


@pytest.fixture(scope="module")
def lineage_checkpoints(tmp_path_factory):
    from tests.conftest import TINY_RESNET, lineage_model

    root = tmp_path_factory.mktemp("lineage")
    folders = {}
    models = {
        "massl_vit": lineage_model("massl", memory_size=64, block_size=16),
        "carp_resnet": lineage_model("carp", backbone=dict(TINY_RESNET), num_prototypes=64, block_size=16),
    }
    for name, model in models.items():
        model.save_pretrained(root / name)
        folders[name] = str(root / name)
    return folders


@pytest.mark.parametrize("name", ["massl_vit", "carp_resnet"])
def test_lineage_checkpoints__eval_export_visualize(lineage_checkpoints, name, tmp_path, capsys):
    from transformers import AutoModel

    from sop_hf.cli import eval_main, visualize_main

    folder = lineage_checkpoints[name]
    assert eval_main(["knn", "--model", folder, "--max_samples", "30", "--ks", "5", "--no_cache", "--no_progress"]) == 0
    assert capsys.readouterr().out.strip().startswith("knn_top1@5: ")
    assert export_main(["--model", folder, "--output_dir", str(tmp_path / "export")]) == 0
    exported = AutoModel.from_pretrained(tmp_path / "export")  # stock transformers: ViTModel or ResNetModel
    assert type(exported).__name__ == ("ViTModel" if name.endswith("vit") else "ResNetModel")
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    argv = ["--model", folder, "--image", str(image), "--output", str(tmp_path / "attention.png")]
    if name.endswith("vit"):
        assert visualize_main(argv) == 0 and (tmp_path / "attention.png").exists()
    else:
        with pytest.raises(ValueError, match="convolutional encoder .* no attention maps"):
            visualize_main(argv)


def test_model_folder_with_its_own_code__refused_by_every_command_unless_asked(tmp_path):
    from sop_hf.cli import eval_main, visualize_main
    from sop_hf.hub.loading import load_encoder

    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "code_ran"
    (folder / "custom_code.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PretrainedConfig, PreTrainedModel\n"
        "class CustomConfig(PretrainedConfig):\n    model_type = 'custom_remote'\n"
        "class CustomModel(PreTrainedModel):\n    config_class = CustomConfig\n"
    )  # fmt: skip
    (folder / "config.json").write_text(json.dumps({
        "model_type": "custom_remote", "architectures": ["CustomModel"],
        "auto_map": {"AutoConfig": "custom_code.CustomConfig", "AutoModel": "custom_code.CustomModel"},
    }))  # fmt: skip
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8)).save(image)
    for command in (
        lambda: eval_main(["knn", "--model", str(folder), "--no_cache", "--no_progress"]),
        lambda: visualize_main(["--model", str(folder), "--image", str(image), "--output", str(tmp_path / "a.png")]),
        lambda: export_main(["--model", str(folder), "--output_dir", str(tmp_path / "out")]),
        lambda: load_encoder(str(folder)),
    ):
        with pytest.raises(ValueError, match="trust_remote_code|not a SOP model folder"):
            command()
    assert not marker.exists()  # no code from the folder ran
