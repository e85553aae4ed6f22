"""The one data pipeline of sop_hf: sources -> image reading and repair -> multi-crop -> masks -> collate.

- ``sources``: where images come from (the embedded Fashion-MNIST subset shipped here, Debian's Fashion-MNIST,
  local folders, the Hub).
- ``images``: any image-like value -> a decoded RGB image, with counts of what was repaired or skipped.
- ``augmentations``: DINO/iBOT multi-crop on tensors, one image at a time; ``masking``: iBOT block masks.
- ``batched`` / ``photometric``: ``BatchedMultiCrop``, the same multi-crop split after decoding: workers draw the
  parameters and cut uint8 crops, the training device resizes and augments whole batches (``--augment_on``).
- ``pipeline``: the dataset wrappers, the epoch-carrying sampler and the collator used by training, the monitor
  and the evaluation tools.

The files ``fashion_mnist_small.npz`` and ``LICENSE_FASHION_MNIST.txt`` (MIT, Zalando SE) are the embedded subset.
"""

from .batched import BatchedMultiCrop
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
    "BatchedMultiCrop",
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
