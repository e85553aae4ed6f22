"""Where images come from: the embedded Fashion-MNIST subset, Debian's full Fashion-MNIST, local folders, the Hub.

``load_image_dataset(name, ...)`` resolves one name to a ``datasets.Dataset`` (or ``IterableDataset`` when streaming):

- ``"embedded"``: 4,000 train / 1,000 test 28x28 Fashion-MNIST images shipped inside the package (MIT, balanced);
  the offline default of ``examples/pretrain_sop.py``.
- ``"fashion_mnist_debian"``: the full 60k/10k Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.
- a local folder, by what it holds (detected, never forced): a ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``
  folder (``load_from_disk``); data files (``*.parquet``, ``*.arrow``, ``*.jsonl``/``*.json``, ``*.csv``, at the top
  or in split sub-folders, whose names give the splits); otherwise an image folder (the ``imagefolder`` builder:
  ``train/`` and ``test/`` or ``validation/`` sub-folders give splits, one sub-folder per class gives labels).
- a single data file (``.parquet``, ``.arrow``, ``.jsonl``, ``.json``, ``.csv``): its one ``train`` split.
- ``data_files`` (a mapping split -> files or globs, as ``datasets.load_dataset`` takes them): the builder is read
  from the files' extension (image files: ``imagefolder``).
- anything else: a Hub dataset name passed to ``datasets.load_dataset``.

Three small rules live here and nowhere else: ``data_files_mapping`` (``--train_dir`` / ``--validation_dir`` /
``--data_files`` as one ``data_files`` mapping), ``evaluation_split`` (which split evaluates when none is named) and
``dataset_identity`` (the Hub id and display name a model card gives the data).

Errors are raised before any training: an empty dataset or a missing image column is a ``ValueError`` that names the
columns that exist.

>>> ds = load_image_dataset("embedded", split="test")
>>> len(ds), ds.features["label"].names[0]
(1000, 'T-shirt/top')
"""

import gzip
import os
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

import datasets
import numpy as np

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
EMBEDDED_NAME = "embedded"
DEBIAN_NAME = "fashion_mnist_debian"
FASHION_MNIST_DIR_ENV = "SOP_HF_FASHION_MNIST_DIR"


def _to_dataset(images: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)})
    # PNG-free: the Image feature stores arrays as encoded images on demand; a list of 2-D uint8 arrays is accepted.
    return datasets.Dataset.from_dict({"image": list(images), "label": labels.astype(np.int64)}, features=features)


def load_embedded_fashion_mnist(split: str = "train") -> datasets.Dataset:
    """The Fashion-MNIST subset shipped with the package: ``split`` "train" (4,000) or "test" (1,000)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test' for the embedded dataset, got {split!r}")
    with resources.files("sop_hf.data").joinpath("fashion_mnist_small.npz").open("rb") as handle:
        arrays = np.load(handle)
        return _to_dataset(arrays[f"{split}_images"], arrays[f"{split}_labels"])


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_debian_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None):
    """Full Fashion-MNIST (60k train / 10k test) from Debian's ``dataset-fashion-mnist`` (``apt-get install``).

    ``root`` defaults to ``$SOP_HF_FASHION_MNIST_DIR`` when set (the same four ``.gz`` files copied elsewhere, e.g.
    to a machine without the Debian package), else ``/usr/share/datasets/fashion-mnist``."""
    root = root or os.environ.get(FASHION_MNIST_DIR_ENV) or DEBIAN_FASHION_MNIST_DIR
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test' for Fashion-MNIST, got {split!r}")
    root = Path(root)
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    if not images_path.exists():
        raise FileNotFoundError(
            f"{images_path} not found: install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist)"
        )
    return _to_dataset(_read_idx(images_path), _read_idx(root / f"{prefix}-labels-idx1-ubyte.gz"))


_FILE_BUILDERS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "json", ".json": "json", ".csv": "csv"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _builder_of_files(paths) -> str | None:
    suffixes = {Path(p).suffix.lower() for p in paths}
    builders = {_FILE_BUILDERS[s] for s in suffixes if s in _FILE_BUILDERS}
    if len(builders) > 1:
        raise ValueError(f"data files of several formats ({sorted(builders)}); keep one format per dataset")
    if builders:
        return builders.pop()
    return "imagefolder" if suffixes & _IMAGE_SUFFIXES or any("*" in str(p) for p in paths) else None


def detect_local_format(path: str | os.PathLike) -> str:
    """``"disk"`` (save_to_disk), a ``datasets`` builder name (``parquet``, ``arrow``, ``json``, ``csv``) or
    ``"imagefolder"`` for a local folder or file."""
    path = Path(path)
    if path.is_file():
        builder = _builder_of_files([path])
        if builder in (None, "imagefolder"):
            raise ValueError(f"{path}: a single file must be .parquet, .arrow, .jsonl, .json or .csv")
        return builder
    if (path / "dataset_dict.json").exists() or (
        (path / "state.json").exists() and (path / "dataset_info.json").exists()
    ):
        return "disk"
    files = [p for p in path.glob("*") if p.is_file()] + [p for p in path.glob("*/*") if p.is_file()]
    data_files = [f for f in files if f.suffix.lower() in _FILE_BUILDERS]
    # datasets' imagefolder reads metadata.jsonl / metadata.csv / metadata.parquet beside the images (labels,
    # captions): those belong to the image folder, any other data file makes the layout ambiguous.
    other = [f for f in data_files if f.stem != "metadata"]
    image = _first_image(path) if data_files else None
    if image is not None and other:
        raise ValueError(f"{path} holds image files ({image.relative_to(path)}) and data files "
                         f"({', '.join(str(f.relative_to(path)) for f in other[:3])}): move the data files out, or "
                         "name the images with --train_dir / --validation_dir or the files with --data_files")  # fmt: skip
    if image is not None:
        return "imagefolder"
    return _builder_of_files(data_files) or "imagefolder"


def _first_image(folder: Path, depth: int = 3) -> Path | None:
    """The first image file within ``depth`` levels of ``folder`` (split/class/image), found lazily."""
    for level in range(1, depth + 1):
        for candidate in folder.glob("/".join(["*"] * level)):
            if candidate.suffix.lower() in _IMAGE_SUFFIXES and candidate.is_file():
                return candidate
    return None


def _load_local(path: str, split: str, streaming: bool, cache_dir: str | None):
    kind = detect_local_format(path)
    if kind == "disk":
        loaded = datasets.load_from_disk(path)
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise ValueError(f"split {split!r} not found in {path!r}; it has {sorted(loaded)}")
            loaded = loaded[split]
        elif split not in ("train", None):
            raise ValueError(f"split {split!r} not found in {path!r}: a saved Dataset has one split ('train')")
        return loaded
    if os.path.isfile(path):
        return _load_builder(kind, {"train": path}, split, streaming, cache_dir, path)
    try:
        return datasets.load_dataset(kind, data_dir=path, split=split, streaming=streaming, cache_dir=cache_dir)
    except ValueError as error:
        if "Unknown split" in str(error):
            raise ValueError(f"split {split!r} not found in {path!r} ({error})") from error
        raise


def _load_builder(builder, data_files, split, streaming, cache_dir, name):
    loaded = datasets.load_dataset(builder, data_files=data_files, streaming=streaming, cache_dir=cache_dir)
    if split not in loaded:
        raise ValueError(f"split {split!r} not found in {name!r}; it has {sorted(loaded)}")
    return loaded[split]


def available_splits(name: str, config: str | None = None, data_files: Mapping | None = None) -> list[str]:
    """The split names ``load_image_dataset`` can read from ``name`` (or ``data_files``)."""
    if data_files:
        return sorted(data_files)
    if name in (EMBEDDED_NAME, DEBIAN_NAME):
        return ["test", "train"]
    if os.path.isdir(name):
        kind = detect_local_format(name)
        if kind == "disk":
            loaded = datasets.load_from_disk(name)
            return sorted(loaded) if isinstance(loaded, datasets.DatasetDict) else ["train"]
        return sorted(str(s) for s in datasets.load_dataset_builder(kind, data_dir=name).config.data_files or ["train"])
    if os.path.isfile(name):
        return ["train"]
    return sorted(str(s) for s in datasets.get_dataset_split_names(name, config))


EVALUATION_SPLITS = ("validation", "test", "valid", "val")  # in order of preference, as datasets on the Hub name them


def evaluation_split(name: str, config: str | None = None, data_files: Mapping | None = None) -> str | None:
    """The split that evaluates a run when none is named: the first of ``EVALUATION_SPLITS`` that ``name`` (or
    ``data_files``) has; None when it has none of them or its layout cannot be listed.

    >>> evaluation_split("embedded")
    'test'
    """
    try:
        splits = available_splits(name, config, data_files)
    except Exception:  # noqa: BLE001 - an unknown layout (or an unreachable Hub) has no automatic evaluation split
        return None
    return next((split for split in EVALUATION_SPLITS if split in splits), None)


def data_files_mapping(
    train_dir: str | None = None, validation_dir: str | None = None, data_files: Sequence[str] | None = None
) -> dict[str, list[str]] | None:
    """``--train_dir`` / ``--validation_dir`` (image folders) and ``--data_files`` (``SPLIT=GLOB`` entries, a bare
    ``GLOB`` being the train split) as a ``datasets`` ``data_files`` mapping; None when none is given.

    >>> data_files_mapping(data_files=["train=a/*.parquet", "b/*.parquet", "test=c.parquet"])
    {'train': ['a/*.parquet', 'b/*.parquet'], 'test': ['c.parquet']}
    """
    files: dict[str, list[str]] = {}
    folders = (("train", "--train_dir", train_dir), ("validation", "--validation_dir", validation_dir))
    for split, flag, folder in folders:
        if folder:
            if not os.path.isdir(folder):
                raise ValueError(f"{flag} {folder!r} is not a folder")
            files.setdefault(split, []).append(os.path.join(folder, "**"))
    for entry in data_files or []:
        split, _, pattern = entry.rpartition("=") if "=" in entry else ("train", "", entry)
        files.setdefault(split or "train", []).append(pattern)
    return files or None


def dataset_identity(
    name: str, train_dir: str | None = None, data_files: Sequence[str] | None = None
) -> tuple[str, str]:
    """(Hub id, display name) of the data a run used, as a model card records it: the card's ``datasets`` and
    ``dataset_type`` take the id, its results table the display name. A local path becomes its folder's name (a card
    never shows a path of the machine it was written on).

    >>> dataset_identity("embedded")
    ('fashion_mnist', 'Fashion-MNIST (sop_hf embedded 4k/1k subset)')
    """
    if train_dir:
        base = Path(train_dir).resolve().name
        return base, base
    if data_files:
        return "local data files", "local data files"
    if name == EMBEDDED_NAME:
        return "fashion_mnist", "Fashion-MNIST (sop_hf embedded 4k/1k subset)"
    if name == DEBIAN_NAME:
        return "fashion_mnist", "Fashion-MNIST"
    if os.path.exists(name):
        base = Path(name).resolve().name
        return base, base
    return name, name


def load_image_dataset(
    name: str = EMBEDDED_NAME,
    config: str | None = None,
    split: str = "train",
    image_column: str = "image",
    streaming: bool = False,
    cache_dir: str | None = None,
    data_files: Mapping[str, str | Sequence[str]] | None = None,
    token: str | bool | None = None,
):
    """Resolve ``name`` or ``data_files`` (see the module docstring) and check that ``image_column`` exists and the
    split is not empty. ``token`` authenticates a Hub dataset (None: the stored login)."""
    if data_files:
        files = [f for value in data_files.values() for f in ([value] if isinstance(value, str) else value)]
        builder = _builder_of_files(files) or "imagefolder"
        dataset = _load_builder(builder, dict(data_files), split, streaming, cache_dir, "data_files")
        name = "data_files"
    elif name == EMBEDDED_NAME:
        dataset = load_embedded_fashion_mnist(split)
    elif name == DEBIAN_NAME:
        dataset = load_debian_fashion_mnist(split)
    elif os.path.exists(name):
        dataset = _load_local(name, split, streaming, cache_dir)
    else:
        dataset = datasets.load_dataset(name, config, split=split, streaming=streaming, cache_dir=cache_dir,
                                        token=token)  # fmt: skip
    if streaming and isinstance(dataset, datasets.Dataset):
        dataset = dataset.to_iterable_dataset()
    columns = list(dataset.column_names or (dataset.features or {}).keys())
    if columns and image_column not in columns:
        raise ValueError(f"image column {image_column!r} not found in {name!r} ({split}); columns are {columns}. "
                         "Pass --image_column_name.")  # fmt: skip
    if isinstance(dataset, datasets.Dataset) and len(dataset) == 0:
        raise ValueError(f"dataset {name!r} split {split!r} is empty")
    return dataset


def has_labels(dataset, label_column: str) -> bool:
    """True when ``label_column`` holds integer class ids (a ``ClassLabel`` or an integer ``Value``) with no gaps
    and at least two classes present. (An image folder without class sub-folders gets the split folders' names as
    its only "class" per split; that is no label.)"""
    feature = (getattr(dataset, "features", None) or {}).get(label_column)
    typed = isinstance(feature, datasets.ClassLabel) or (
        isinstance(feature, datasets.Value) and feature.dtype.startswith(("int", "uint"))
    )
    if not typed:
        return False
    if not isinstance(dataset, datasets.Dataset):
        return True  # a stream: trust the type
    values = dataset.unique(label_column)
    return None not in values and len(values) >= 2


def random_subset(dataset, size: int | None, seed: int, label_column: str | None = None):
    """A seeded random subset of ``size`` rows (all rows when ``size`` is None or large enough), stratified by
    ``label_column`` when it holds labels: each class keeps its share, so a class-sorted folder is never cut to
    one class."""
    if size is None or size >= len(dataset):
        return dataset
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    rng = np.random.default_rng(seed)
    if label_column and has_labels(dataset, label_column):
        labels = np.asarray(dataset[label_column])
        classes, counts = np.unique(labels, return_counts=True)
        quota = np.floor(counts * size / len(labels)).astype(int)
        for index in np.argsort(-(counts * size / len(labels) - quota))[: size - quota.sum()]:
            quota[index] += 1  # largest remainders first, so the quotas add up to size
        chosen = [rng.choice(np.flatnonzero(labels == c), q, replace=False) for c, q in zip(classes, quota) if q > 0]
        indices = np.concatenate(chosen)
    else:
        indices = rng.choice(len(dataset), size, replace=False)
    return dataset.select(np.sort(indices).tolist())
