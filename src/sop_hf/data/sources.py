"""Where images come from: the embedded Fashion-MNIST subset, Debian's full Fashion-MNIST, local folders, the Hub.

``load_image_dataset(name, ...)`` resolves one name to a ``datasets.Dataset`` (or ``IterableDataset`` when streaming):

- ``"embedded"``: 4,000 train / 1,000 test 28x28 Fashion-MNIST images shipped inside the package (MIT, balanced);
  the offline default of ``examples/pretrain_sop.py``.
- ``"fashion_mnist_debian"``: the full 60k/10k Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package.
- an existing local directory: loaded with the ``imagefolder`` builder (one sub-folder per class gives labels).
- anything else: a Hub dataset name passed to ``datasets.load_dataset``.

Errors are raised before any training: an empty dataset or a missing image column is a ``ValueError`` that names the
columns that exist.

>>> ds = load_image_dataset("embedded", split="test")
>>> len(ds), ds.features["label"].names[0]
(1000, 'T-shirt/top')
"""

import gzip
import os
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


def _to_dataset(images: np.ndarray, labels: np.ndarray) -> datasets.Dataset:
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=FASHION_MNIST_CLASSES)}
    )
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


def load_debian_fashion_mnist(split: str = "train", root: str | os.PathLike = DEBIAN_FASHION_MNIST_DIR):
    """Full Fashion-MNIST (60k train / 10k test) from Debian's ``dataset-fashion-mnist`` (``apt-get install``)."""
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


def load_image_dataset(
    name: str = EMBEDDED_NAME,
    config: str | None = None,
    split: str = "train",
    image_column: str = "image",
    streaming: bool = False,
    cache_dir: str | None = None,
):
    """Resolve ``name`` (see the module docstring) and check that ``image_column`` exists and the split is not empty."""
    if name == EMBEDDED_NAME:
        dataset = load_embedded_fashion_mnist(split)
    elif name == DEBIAN_NAME:
        dataset = load_debian_fashion_mnist(split)
    elif os.path.isdir(name):
        dataset = datasets.load_dataset("imagefolder", data_dir=name, split=split, streaming=streaming,
                                        cache_dir=cache_dir)  # fmt: skip
    else:
        dataset = datasets.load_dataset(name, config, split=split, streaming=streaming, cache_dir=cache_dir)
    if streaming and isinstance(dataset, datasets.Dataset):
        dataset = dataset.to_iterable_dataset()
    columns = list(dataset.column_names or (dataset.features or {}).keys())
    if columns and image_column not in columns:
        raise ValueError(f"image column {image_column!r} not found in {name!r} ({split}); columns are {columns}. "
                         "Pass --image_column.")  # fmt: skip
    if isinstance(dataset, datasets.Dataset) and len(dataset) == 0:
        raise ValueError(f"dataset {name!r} split {split!r} is empty")
    return dataset
