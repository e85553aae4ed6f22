"""The job's data rules, each with one owner: data_files_mapping, evaluation_split and dataset_identity
(data/sources.py), and the job's training / k-NN splits (pretrain/data.py), which never change the parsed arguments."""

import dataclasses
import re

import datasets
import pytest
from PIL import Image

from sop_hf.data.sources import data_files_mapping, dataset_identity, evaluation_split
from sop_hf.pretrain import parse_arguments
from sop_hf.pretrain.data import load_training_data


def write_images(folder, count: int, size: int = 12) -> None:
    for i in range(count):
        (folder / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (40 * (i % 2), 0, 0)).save(folder / ("a" if i % 2 else "b") / f"{i}.png")


def test_data_files_mapping__folders_globs_and_splits(tmp_path):
    assert data_files_mapping() is None
    assert data_files_mapping(str(tmp_path), None, ["test=t/*.parquet", "x.parquet"]) == {
        "train": [f"{tmp_path}/**", "x.parquet"], "test": ["t/*.parquet"]}  # fmt: skip
    with pytest.raises(ValueError, match=re.escape("--validation_dir 'nowhere' is not a folder")):
        data_files_mapping(None, "nowhere")


def test_evaluation_split__validation_then_test_else_none(tmp_path):
    assert evaluation_split("embedded") == "test"
    assert evaluation_split("x", data_files={"train": ["a"], "validation": ["b"], "test": ["c"]}) == "validation"
    assert evaluation_split("x", data_files={"train": ["a"]}) is None
    assert evaluation_split(str(tmp_path / "missing")) is None  # an unknown layout: no automatic split
    write_images(tmp_path / "images" / "train", 4)
    write_images(tmp_path / "images" / "val", 4)
    assert evaluation_split(str(tmp_path / "images")) == "validation"  # datasets names a val/ folder 'validation'


def test_dataset_identity__hub_id_and_display_name_never_a_path(tmp_path):
    assert dataset_identity("embedded") == ("fashion_mnist", "Fashion-MNIST (sop_hf embedded 4k/1k subset)")
    assert dataset_identity("fashion_mnist_debian") == ("fashion_mnist", "Fashion-MNIST")
    assert dataset_identity("user/data") == ("user/data", "user/data")
    assert dataset_identity(str(tmp_path)) == (tmp_path.name, tmp_path.name)
    assert dataset_identity("embedded", train_dir=str(tmp_path / "mine")) == ("mine", "mine")
    assert dataset_identity("embedded", data_files=["a.parquet"]) == ("local data files", "local data files")


def test_load_training_data__held_out_split_named_and_arguments_untouched(tmp_path):
    write_images(tmp_path / "only" / "train", 20)
    args = parse_arguments(["--dataset_name", str(tmp_path / "only"), "--train_val_split", "0.25", "--output_dir", "o"])
    before = dataclasses.asdict(args.data)
    data = load_training_data(args.data, seed=0, wants_eval=True)
    assert (len(data.train), len(data.knn[1]), data.eval_split) == (15, 5, "train (held out 0.25)")
    assert data.knn[0] is data.train and isinstance(data.knn[1], datasets.Dataset)
    assert dataclasses.asdict(args.data) == before  # eval_split and the rest stay as parsed
    embedded = parse_arguments(["--max_train_samples", "100", "--output_dir", "o"]).data
    data = load_training_data(embedded, seed=0, wants_eval=True)
    assert (len(data.train), len(data.knn[1]), data.eval_split) == (100, 1000, "test")
    assert load_training_data(embedded, seed=0, wants_eval=False).knn is None


def test_load_training_data__train_val_split_leaves_a_test_split_unseen_and_a_validation_split_wins(tmp_path):
    """run_mim.py's rule: --train_val_split carves the evaluation images out of train unless there is a validation
    split; a test split is then never read (choices made on the k-NN figure do not touch it)."""
    write_images(tmp_path / "tt" / "train", 20)
    write_images(tmp_path / "tt" / "test", 6)
    flags = ["--dataset_name", str(tmp_path / "tt"), "--output_dir", "o"]
    held_out = load_training_data(parse_arguments([*flags, "--train_val_split", "0.25"]).data, seed=0, wants_eval=True)
    assert (len(held_out.train), len(held_out.knn[1]), held_out.eval_split) == (15, 5, "train (held out 0.25)")
    default = load_training_data(parse_arguments(flags).data, seed=0, wants_eval=True)
    assert (len(default.train), len(default.knn[1]), default.eval_split) == (20, 6, "test")
    named = parse_arguments([*flags, "--train_val_split", "0.25", "--eval_split", "test"]).data
    assert load_training_data(named, seed=0, wants_eval=True).eval_split == "test"  # a named split wins
    write_images(tmp_path / "tv" / "train", 20)
    write_images(tmp_path / "tv" / "validation", 4)
    with_validation = parse_arguments(["--dataset_name", str(tmp_path / "tv"), "--train_val_split", "0.25",
                                       "--output_dir", "o"]).data  # fmt: skip
    data = load_training_data(with_validation, seed=0, wants_eval=True)
    assert (len(data.train), len(data.knn[1]), data.eval_split) == (20, 4, "validation")


def test_load_training_data__cache_dir_of_the_flags_holds_the_prepared_dataset(tmp_path):
    """run_mim.py's --cache_dir / --model_revision / --token parse, and --cache_dir is where datasets prepares data."""
    write_images(tmp_path / "imgs" / "train", 8)
    cache = tmp_path / "cache"
    args = parse_arguments(["--dataset_name", str(tmp_path / "imgs"), "--cache_dir", str(cache), "--model_revision",
                            "v1", "--token", "hf_x", "--knn_eval", "false", "--output_dir", "o"])  # fmt: skip
    assert (args.model.cache_dir, args.model.model_revision, args.model.token) == (str(cache), "v1", "hf_x")
    assert not cache.exists()
    data = load_training_data(args.data, seed=0, wants_eval=False, cache_dir=args.model.cache_dir)
    assert len(data.train) == 8
    assert any(path.suffix == ".arrow" for path in cache.rglob("*"))  # the prepared split lives under --cache_dir


def test_detect_local_format__images_with_a_stray_data_file_are_a_clear_error_metadata_belongs_to_them(tmp_path):
    """A folder of images with a notes.json beside them was read as a JSON dataset (a pyarrow parse error about a
    PNG); now it names both and the way out. datasets' metadata.jsonl stays part of an image folder."""
    from sop_hf.data.sources import detect_local_format

    write_images(tmp_path / "imgs" / "train", 4)
    assert detect_local_format(tmp_path / "imgs") == "imagefolder"
    (tmp_path / "imgs" / "notes.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds image files \(train/[ab]/\d\.png\) and data files \(notes\.json\)"):
        detect_local_format(tmp_path / "imgs")
    (tmp_path / "imgs" / "notes.json").unlink()
    (tmp_path / "imgs" / "train" / "metadata.jsonl").write_text("")
    assert detect_local_format(tmp_path / "imgs") == "imagefolder"
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "part.jsonl").write_text('{"x": 1}\n')
    assert detect_local_format(tmp_path / "table") == "json"
