"""Tests of ``sop-eval`` / ``sop-visualize`` (``sop_hf.cli.eval``) with a tiny random SOP encoder.

The encoder (28 px, patch 4, width 32, 2 blocks, 2 heads) and its processor are saved to a temporary folder; the
embedded Fashion-MNIST subset is cut down with ``--max_samples``. Feature caches go to temporary folders.
"""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from sop_hf import SOPConfig, SOPForPreTraining, SOPImageProcessor, SOPModel
from sop_hf.cli import eval_main, visualize_main
from sop_hf.hub import save_encoder
from sop_hf.hub.loading import load_encoder
from sop_hf.hub.model_card import update_model_card
from sop_hf.hub.record import CardRecord
from tests.conftest import tiny_config

FRACTION = r"(0\.\d{4}|1\.0000)"
TRAINING = {"dataset": "fashion_mnist", "num_train_epochs": 10, "learning_rate": 0.0005, "global_batch_size": 256,
            "crops": "2 / 6", "teacher_temp": 0.07, "notes": "tiny run"}  # fmt: skip
OLD_RESULT = {"dataset_name": "imagenet-1k", "dataset_split": "validation", "metric_type": "accuracy",
              "metric_value": 0.75, "metric_name": "k-NN top-1 (k=20)"}  # fmt: skip


def tiny_sop_config() -> SOPConfig:
    return SOPConfig(image_size=28, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_encoder")
    torch.manual_seed(0)
    SOPModel(tiny_sop_config()).save_pretrained(folder)
    SOPImageProcessor(size=28, crop_pct=1.0).save_pretrained(folder)
    return str(folder)


def run_eval(argv, capsys) -> list[str]:
    assert eval_main(argv) == 0
    return capsys.readouterr().out.strip().splitlines()


def common(model_dir, tmp_path, samples="200"):
    return ["--model", model_dir, "--max_samples", samples, "--cache_dir", str(tmp_path / "cache"), "--no_progress"]


def test_eval_knn__prints_one_line_per_k_and_plots(model_dir, tmp_path, capsys):
    plot = tmp_path / "scatter.png"
    lines = run_eval(["knn", *common(model_dir, tmp_path), "--plot", str(plot)], capsys)
    assert [line.split(":")[0] for line in lines] == ["knn_top1@10", "knn_top1@20", "knn_top1@100", "knn_top1@200"]
    assert all(re.fullmatch(rf"knn_top1@\d+: {FRACTION}", line) for line in lines)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(plot) as image:
        assert image.size[0] > 300 and image.size[1] > 300
    again = run_eval(["knn", *common(model_dir, tmp_path), "--ks", "20"], capsys)  # from the feature cache
    assert again == [lines[1]]


def test_eval_linear__prints_linear_top1(model_dir, tmp_path, capsys):
    lines = run_eval(["linear", *common(model_dir, tmp_path), "--epochs", "3", "--lrs", "0.01", "0.1"], capsys)
    assert len(lines) == 1 and re.fullmatch(rf"linear_top1: {FRACTION}", lines[0])


def test_eval_retrieval__prints_map(model_dir, tmp_path, capsys):
    lines = run_eval(["retrieval", *common(model_dir, tmp_path, "100"), "--scales", "1", "0.5"], capsys)
    assert len(lines) == 1 and re.fullmatch(rf"map: {FRACTION}", lines[0])
    same_split = run_eval(["retrieval", *common(model_dir, tmp_path, "100"), "--test_split", "train"], capsys)
    assert re.fullmatch(rf"map: {FRACTION}", same_split[0])  # queries = gallery: each query excluded from its list


def test_eval__update_card_round_trip(tmp_path, capsys):
    folder = tmp_path / "exported"
    torch.manual_seed(0)
    save_encoder(SOPModel(tiny_sop_config()), folder, SOPImageProcessor(size=28, crop_pct=1.0), method="sop-mim",
                 repo_id="me/sop-tiny", training=TRAINING, eval_results=[OLD_RESULT])  # fmt: skip
    before = (folder / "README.md").read_text()
    args = [*common(str(folder), tmp_path), "--update-card"]
    knn = run_eval(["knn", *args, "--ks", "20"], capsys)
    linear = run_eval(["linear", *args, "--epochs", "2", "--lrs", "0.1"], capsys)
    run_eval(["knn", *args, "--ks", "20"], capsys)  # the same result again replaces, never duplicates

    card = ModelCard.load(folder / "README.md")
    results = {(r.dataset_name, r.metric_name): r.metric_value for r in card.data.eval_results}
    subset = "Fashion-MNIST (sop_hf embedded 4k/1k subset)"
    assert results == {
        ("imagenet-1k", "k-NN top-1 (k=20)"): 0.75,
        (subset, "k-NN top-1 (k=20)"): pytest.approx(float(knn[0].split(": ")[1]), abs=1e-4),
        (subset, "linear probe top-1 (cls_last_n)"): pytest.approx(float(linear[0].split(": ")[1]), abs=1e-4),
    }
    assert {r.dataset_split for r in card.data.eval_results} == {"validation", "test (random 200)"}
    assert "sop-mim" in card.data.tags
    assert 'AutoModel.from_pretrained("me/sop-tiny"' in card.text
    recipe = lambda text: text[text.index("## Training recipe") : text.index("## Evaluation")]  # noqa: E731
    assert recipe(card.text) in before  # the recipe table survives the rewrite unchanged
    record = CardRecord.load(folder)  # the card is rendered from the record, never parsed back
    assert record.training["notes"] == "tiny run" and record.training["learning_rate"] == 0.0005
    assert card.data.sop_hf_training == record.training and len(record.eval_results) == 3


def test_update_model_card__without_readme_and_errors(model_dir, tmp_path):
    folder = tmp_path / "bare"
    SOPModel(tiny_sop_config()).save_pretrained(folder)
    result = {"task_type": "image-classification", "dataset_type": "x", "dataset_name": "x", "metric_type": "accuracy",
              "metric_value": 0.5, "metric_name": "k-NN top-1 (k=20)"}  # fmt: skip
    card = ModelCard.load(update_model_card(folder, [result]))
    assert [r.metric_value for r in card.data.eval_results] == [0.5]
    assert CardRecord.load(folder).training is None and "No training information" in card.text
    with pytest.raises(ValueError, match="--update-card needs a local model folder"):
        update_model_card(tmp_path / "missing", [result])
    from sop_hf.hub.stock_vit import save_stock_vit

    save_stock_vit(SOPModel(tiny_sop_config()), tmp_path / "vit")
    with pytest.raises(ValueError, match="needs a SOP model folder; .* has model_type='vit'"):
        update_model_card(tmp_path / "vit", [result])


def test_load_encoder__checkpoint_teacher_and_processor_fallback(tmp_path):
    torch.manual_seed(0)
    pretraining = SOPForPreTraining(tiny_config())
    with torch.no_grad():  # the student moves away from the teacher, which starts as its copy
        for param in pretraining.sop.parameters():
            param.add_(torch.randn_like(param))
    pretraining.save_pretrained(tmp_path / "checkpoint")
    encoder, processor = load_encoder(str(tmp_path / "checkpoint"))  # no processor saved: the fallback
    loaded, expected = encoder.state_dict(), pretraining.export_encoder("teacher").state_dict()
    assert list(loaded) == list(expected)
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key
    student, _ = load_encoder(str(tmp_path / "checkpoint"), which="student")
    assert not torch.equal(student.layers[0].mlp.fc1.weight, encoder.layers[0].mlp.fc1.weight)
    # the fallback is the default evaluation transform as a stock processor (same pixels as SOPImageProcessor)
    assert type(processor).__name__.startswith("BitImageProcessor")
    assert processor.crop_size["height"] == tiny_config().image_size


def test_visualize__one_panel_per_head(model_dir, tmp_path, capsys):
    image_path, output = tmp_path / "input.png", tmp_path / "attention.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image_path)
    assert visualize_main(["--model", model_dir, "--image", str(image_path), "--output", str(output)]) == 0
    assert "attention maps (2 heads)" in capsys.readouterr().out
    with Image.open(output) as image:
        assert image.format == "PNG" and image.size[0] == 2 * 240  # two 2.4-inch panels side by side at 100 dpi


def test_visualize__six_heads_threshold_and_image_size(tmp_path, capsys):
    folder, image_path, output = tmp_path / "six", tmp_path / "in.png", tmp_path / "out.png"
    config = SOPConfig(image_size=28, patch_size=4, hidden_size=48, num_hidden_layers=1, num_attention_heads=6)
    SOPModel(config).save_pretrained(folder)
    Image.fromarray(np.zeros((30, 30), dtype=np.uint8)).save(image_path)
    argv = ["--model", str(folder), "--image", str(image_path), "--output", str(output), "--threshold", "0.6",
            "--image_size", "56"]  # fmt: skip
    assert visualize_main(argv) == 0
    assert "(6 heads)" in capsys.readouterr().out
    with Image.open(output) as image:
        assert image.size[0] == 6 * 240


def test_eval_main__usage(capsys):
    assert eval_main([]) == 2
    assert "usage: sop-eval {knn,linear,retrieval}" in capsys.readouterr().err
    assert eval_main(["--help"]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["knn", "--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    assert "--update-card" in help_text and "--max_samples" in help_text and "--plot" in help_text


def test_module_entry_point__image_folder_stdout_is_only_results(model_dir, tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 4)):
        for i in range(count):
            folder = tmp_path / "images" / split / f"class{i % 2}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "sop_hf.cli", "eval", "knn", "--model", model_dir, "--train_data",
               str(tmp_path / "images"), "--ks", "1", "3", "--cache_dir", str(tmp_path / "c")]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and all(re.fullmatch(rf"knn_top1@[13]: {FRACTION}", line) for line in lines)


def test_stock_vit_export__same_numbers_and_attention(model_dir, tmp_path, capsys):
    from sop_hf.evaluation.visualize import last_block_attention
    from sop_hf.hub.stock_vit import save_stock_vit

    vit_dir = str(tmp_path / "stock_vit")
    save_stock_vit(SOPModel.from_pretrained(model_dir), vit_dir, crop_pct=1.0)
    args = ["--max_samples", "100", "--no_cache", "--no_progress", "--scales", "1", "0.5"]  # ViT interpolates too
    sop = run_eval(["retrieval", "--model", model_dir, *args], capsys)
    vit = run_eval(["retrieval", "--model", vit_dir, *args], capsys)
    assert sop == vit
    pixel_values = torch.randn(1, 3, 28, 28)
    sop_model, _ = load_encoder(model_dir)
    vit_model, _ = load_encoder(vit_dir, attn_implementation="eager")
    expected = last_block_attention(sop_model, pixel_values)
    torch.testing.assert_close(last_block_attention(vit_model, pixel_values), expected)


def _image_folder(root, count: int, seed: int, corrupt: bool = False):
    rng = np.random.default_rng(seed)
    for i in range(count):
        folder = root / ("dark" if i % 2 == 0 else "bright")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((rng.integers(0, 100, (28, 28)) + 120 * (i % 2)).astype(np.uint8)).save(folder / f"{i}.png")
    if corrupt:
        (root / "dark" / "broken.png").write_bytes(b"not an image")
    return str(root)


def test_eval__two_folders_one_corrupt_image_skipped_and_k_checked(model_dir, tmp_path, capsys, caplog):
    train = _image_folder(tmp_path / "train", 30, 0)
    test = _image_folder(tmp_path / "test", 10, 1, corrupt=True)
    base = ["knn", "--model", model_dir, "--no_cache", "--no_progress", "--train_data", train, "--test_data", test]
    lines = run_eval([*base, "--ks", "5"], capsys)
    assert lines == ["knn_top1@5: 1.0000"]  # dark vs bright: separable even at random init
    assert "skipped 1 unreadable image(s)" in caplog.text
    with pytest.raises(ValueError, match="k=500 is larger than the 30 training samples"):
        eval_main([*base, "--ks", "500"])


def test_eval_knn__defaults_on_40_training_images_drop_the_large_ks(model_dir, tmp_path, capsys, caplog):
    train, test = _image_folder(tmp_path / "train", 40, 0), _image_folder(tmp_path / "test", 10, 1)
    base = ["knn", "--model", model_dir, "--no_cache", "--no_progress", "--train_data", train, "--test_data", test]
    assert run_eval(base, capsys) == ["knn_top1@10: 1.0000", "knn_top1@20: 1.0000"]  # the defaults the data serves
    assert "k-NN: default k 100, 200 dropped: larger than the 40 training samples (k = 10, 20 kept)" in caplog.text
    with pytest.raises(ValueError, match="k=200 is larger than the 40 training samples"):  # asked for: an error
        eval_main([*base, "--k", "200"])


def test_eval__one_folder_held_out_with_validation_split_percentage(model_dir, tmp_path, capsys):
    data = _image_folder(tmp_path / "all", 40, 0)
    base = ["knn", "--model", model_dir, "--no_cache", "--no_progress", "--train_data", data, "--ks", "5"]
    with pytest.raises(ValueError, match="has only the split 'train': pass --test_data"):
        eval_main(base)
    assert run_eval([*base, "--validation_split_percentage", "25"], capsys) == ["knn_top1@5: 1.0000"]


def test_eval__save_to_disk_named_splits_with_a_corrupt_image(model_dir, tmp_path, capsys, caplog):
    """A ``Dataset.save_to_disk`` folder with train / validation splits, one unreadable image in each: k-NN, linear
    probe and retrieval run on the named splits and skip the bad rows with a count."""
    import datasets

    rng = np.random.default_rng(0)

    def split(count: int) -> datasets.Dataset:
        images = [
            Image.fromarray((rng.integers(0, 100, (28, 28)) + 120 * (i % 2)).astype(np.uint8)) for i in range(count)
        ]
        table = datasets.Dataset.from_dict({"image": images, "label": [i % 2 for i in range(count)]},
                                           features=datasets.Features({"image": datasets.Image(),
                                                                       "label": datasets.ClassLabel(names=["dark", "bright"])}))  # fmt: skip
        bad = datasets.Dataset.from_dict({"image": [{"bytes": b"not an image", "path": None}], "label": [0]},
                                         features=table.features)  # fmt: skip
        return datasets.concatenate_datasets([table, bad])

    datasets.DatasetDict({"train": split(24), "validation": split(10)}).save_to_disk(tmp_path / "saved")
    base = ["--model", model_dir, "--no_cache", "--no_progress", "--train_data", str(tmp_path / "saved"),
            "--test_split", "validation"]  # fmt: skip
    assert run_eval(["knn", *base, "--ks", "5"], capsys) == ["knn_top1@5: 1.0000"]
    assert caplog.text.count("skipped 1 unreadable image(s)") >= 2  # one per split
    linear = run_eval(["linear", *base, "--epochs", "5", "--lrs", "0.1"], capsys)
    assert re.fullmatch(rf"linear_top1: {FRACTION}", linear[0])
    retrieval = run_eval(["retrieval", *base], capsys)
    assert re.fullmatch(rf"map: {FRACTION}", retrieval[0]) and float(retrieval[0].split(": ")[1]) > 0.5
    with pytest.raises(ValueError, match="test"):
        eval_main(["knn", *base[:-2], "--ks", "5"])  # the default test split does not exist: named in the error
