"""The one data pipeline of sop_hf: sources -> image reading and repair -> multi-crop -> masks -> collate.

- ``sources``: where images come from (the embedded Fashion-MNIST subset shipped here, Debian's Fashion-MNIST,
  local folders, the Hub).
- ``images``: any image-like value -> a decoded RGB image, with counts of what was repaired or skipped.
- ``augmentations``: DINO/iBOT multi-crop on tensors; ``masking``: iBOT block masks.
- ``pipeline``: the dataset wrappers, the epoch-carrying sampler and the collator used by training, the monitor
  and the evaluation tools.

The files ``fashion_mnist_small.npz`` and ``LICENSE_FASHION_MNIST.txt`` (MIT, Zalando SE) are the embedded subset.
"""

from .images import ImageIssueCounter, to_rgb_image
from .pipeline import (
    BOOKKEEPING_KEYS,
    EpochSampler,
    MultiCropDataArguments,
    MultiCropDataset,
    MultiCropIterableDataset,
    build_collator,
    build_train_dataset,
    collate_multicrop,
)
from .sources import load_image_dataset

__all__ = [
    "BOOKKEEPING_KEYS",
    "EpochSampler",
    "ImageIssueCounter",
    "MultiCropDataArguments",
    "MultiCropDataset",
    "MultiCropIterableDataset",
    "build_collator",
    "build_train_dataset",
    "collate_multicrop",
    "load_image_dataset",
    "to_rgb_image",
]
