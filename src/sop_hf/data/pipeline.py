"""The one training data pipeline: read -> convert mode -> multi-crop -> masks -> collate, and its sampler.

    rows of a ``datasets`` dataset
      -> ``MultiCropDataset[(epoch, i)]``  decode, repair the mode (``data.images``), replace an unreadable image
      -> ``ViewMaker``                     2 global (+ n local) crops (``data.augmentations``), iBOT masks
      -> ``collate_multicrop``             view-major ``pixel_values`` / ``bool_masked_pos`` / ``local_pixel_values``

Randomness: view ``v`` of sample ``i`` in epoch ``e`` is drawn from a generator seeded by ``(seed, e, i, v)`` (its
mask by ``(seed, e, i, v, MASK_STREAM)``), and ``EpochSampler`` hands the epoch to the dataset *inside each index*
(it yields ``(epoch, i)`` pairs, shuffled by ``(seed, epoch)``). The sampler runs in the main process of every rank,
so the epoch reaches every dataloader worker, persistent or not, and every process, whatever accelerate wraps
around the loader; one process at global batch 8 and two processes at 4 each see the same views of the same
images, and every epoch draws new ones. A resumed run skips the seen batches at the sampler and continues exactly.

Bad images never change a batch's shape: an unreadable image is replaced by another sample chosen
deterministically from its index (streams: by the previous readable image), and every example carries its
``sample_index`` and ``image_status`` (0 read as is, 1 converted, 2 replaced) into the batch, so the trainer can
sum the counts over workers and processes and name the bad files (``MultiCropDataset.describe``).

Streaming (``datasets.IterableDataset``): examples are seeded by (seed, epoch, worker, position); ``set_epoch``
also reshuffles the stream's buffer. Their views depend on the number of dataloader workers.
"""

import logging
from dataclasses import dataclass, field

import datasets
import torch

from ..seeding import stream_seed
from .augmentations import MultiCropAugmentation
from .batched import CROPS_KEY, BatchedMultiCrop
from .images import ImageIssueCounter, to_rgb_image
from .masking import BlockMaskGenerator, MaskingPolicy

logger = logging.getLogger(__name__)

IMAGE_OK, IMAGE_CONVERTED, IMAGE_REPLACED = 0, 1, 2
BOOKKEEPING_KEYS = ("sample_index", "image_status")  # batch keys that are not model inputs (SOPTrainer pops them)
MASK_STREAM = 1_000_003  # keeps a view's mask stream apart from its crop stream
MAX_REPLACEMENT_TRIES = 32
AUGMENT_ON = ("auto", "cpu", "device")
_MAX_LOGGED_BAD = 5


@dataclass
class MultiCropDataArguments:
    """Crops and masks (docs/method.md, views). Defaults are the SOP/iBOT ImageNet recipe."""

    global_crop_size: int = field(default=224, metadata={"help": "Side of the 2 global crops (the encoder's size)."})
    global_crop_scale: list[float] = field(
        default_factory=lambda: [0.14, 1.0],
        metadata={"help": "Area range of global crops; (0.3, 1) for tiny 28-px images."},
    )
    num_local_crops: int = field(
        default=0,
        metadata={"help": "Local crops per image (SOP default 0; 10 as in iBOT/MaSSL costs about 40 percent more)."},
    )
    local_crop_size: int = field(default=96, metadata={"help": "Side of the local crops."})
    local_crop_scale: list[float] = field(
        default_factory=lambda: [0.05, 0.4], metadata={"help": "Area range of local crops."}
    )
    solarize_prob: float = field(
        default=0.2, metadata={"help": "Solarisation of global crop 1 (0 for tiny gray data)."}
    )
    color_jitter_prob: float = field(default=0.8, metadata={"help": "Probability of the colour jitter."})
    blur_sigma: list[float] = field(
        default_factory=lambda: [0.1, 2.0],
        metadata={"help": "Gaussian-blur sigma range in pixels at a 224-px global crop (DINO); scaled by "
                  "global_crop_size / 224 for every crop, so small images are blurred as much relative to their size."},
    )  # fmt: skip
    mask_ratio: list[float] = field(
        default_factory=lambda: [0.3],
        metadata={"help": "iBOT mask ratio(s); several values: one is chosen per crop (e.g. 0 0.3)."},
    )
    mask_ratio_var: list[float] = field(
        default_factory=lambda: [0.0],
        metadata={"help": "Uniform +- variation of each mask ratio (iBOT recipe: 0 0.2)."},
    )
    mask_start_epoch: int = field(default=0, metadata={"help": "Epoch before which nothing is masked."})
    mask_shape: str = field(default="block", metadata={"help": "'block' (iBOT blockwise) or 'rand' (uniform patches)."})
    augment_on: str = field(
        default="auto",
        metadata={"help": "Where the crops' pixel work runs: 'cpu' (dataloader workers make the float views), "
                  "'device' (workers only decode, draw the parameters and cut uint8 crops; resize, flip, colour "
                  "jitter, grayscale, blur, solarize and normalisation run batched on the training device inside the "
                  "step), or 'auto': 'device' when an accelerator (CUDA ...) is available and the data is not "
                  "streamed, else 'cpu' (faster on CPU-only machines). Same views either way (float rounding)."},
    )  # fmt: skip


class ViewMaker:
    """One RGB image + its seed parts -> one training example: ``global_crops`` [2, 3, H, W], ``local_crops``
    [n, 3, h, w] when there are local crops, ``masks`` [2, L] when SOP-MIM is on.

    With ``augment_on="device"`` the example holds the views' parameters and uint8 crops instead of the crops
    (``BatchedMultiCrop.cut``); ``collate_multicrop`` packs them and the training step makes the views.

    Args:
        args: the crop and mask settings.
        patch_size: the encoder's patch side (sets the mask grid).
        seed: the run's seed.
        use_masks: make iBOT masks for the global crops (SOP-MIM).
        augment_on: "cpu" or "device" (``resolve_augment_on`` turns "auto" into one of them); None reads
            ``args.augment_on``.
    """

    def __init__(self, args: MultiCropDataArguments, patch_size: int, seed: int, use_masks: bool,
                 augment_on: str | None = None):  # fmt: skip
        blur_scale = args.global_crop_size / 224  # DINO's sigma range is in pixels of 224-px crops
        self.augmentation = MultiCropAugmentation(
            global_crop_size=args.global_crop_size, local_crop_size=args.local_crop_size,
            num_local_crops=args.num_local_crops, global_crop_scale=tuple(args.global_crop_scale),
            local_crop_scale=tuple(args.local_crop_scale), global_solarize_probs=(0.0, args.solarize_prob),
            color_jitter_prob=args.color_jitter_prob, blur_sigma=tuple(s * blur_scale for s in args.blur_sigma),
        )  # fmt: skip
        if args.global_crop_size % patch_size:
            raise ValueError(
                f"global_crop_size ({args.global_crop_size}) must be a multiple of patch_size ({patch_size})"
            )
        grid = args.global_crop_size // patch_size
        self.masks = MaskingPolicy(
            BlockMaskGenerator((grid, grid)), ratios=tuple(args.mask_ratio), ratio_vars=tuple(args.mask_ratio_var),
            start_epoch=args.mask_start_epoch, shape=args.mask_shape,
        ) if use_masks else None  # fmt: skip
        self.seed = int(seed)
        self.augment_on = resolve_augment_on(getattr(args, "augment_on", "auto") if augment_on is None else augment_on)
        self.batched = BatchedMultiCrop(self.augmentation) if self.augment_on == "device" else None

    def __call__(self, image, epoch: int, *stream: int) -> dict:
        augmentation = self.augmentation
        num_views = augmentation.num_global_crops + augmentation.num_local_crops
        generators = [torch.Generator().manual_seed(stream_seed(self.seed, epoch, *stream, view))
                      for view in range(num_views)]  # fmt: skip
        if self.batched is not None:  # device path: parameters + uint8 crops, packed by collate_multicrop
            example = {**self.batched.cut(image, generators), "batched": self.batched}
        else:
            global_crops, local_crops = augmentation(image, generators)
            example = {"global_crops": torch.stack(global_crops)}  # [2, 3, H, W]
            if local_crops:
                example["local_crops"] = torch.stack(local_crops)  # [n, 3, h, w]
        if self.masks is not None:
            masks = []
            for view in range(augmentation.num_global_crops):
                generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, *stream, view, MASK_STREAM))
                masks.append(self.masks(generator, epoch))
            example["masks"] = torch.stack(masks)  # [2, L]
        return example


def resolve_augment_on(value: str, streaming: bool = False) -> str:
    """``--augment_on`` -> "cpu" or "device"; "auto" is "device" when an accelerator is available (and the data is
    not streamed: accelerate splits streamed batches tensor by tensor, which the packed crops do not survive)."""
    if value not in AUGMENT_ON:
        raise ValueError(f"augment_on must be one of {', '.join(AUGMENT_ON)}, got {value!r}")
    if value != "auto":
        return value
    accelerator = getattr(torch, "accelerator", None)
    available = accelerator.is_available() if accelerator is not None else torch.cuda.is_available()
    return "device" if available and not streaming else "cpu"


def undecoded_images(dataset, image_column: str):
    """Read image bytes/paths instead of PIL images, so this pipeline decodes (and can name a bad file)."""
    features = getattr(dataset, "features", None) or {}
    if isinstance(features.get(image_column), datasets.Image) and features[image_column].decode:
        return dataset.cast_column(image_column, datasets.Image(decode=False))
    return dataset


def _source_name(value) -> str | None:
    if isinstance(value, dict) and value.get("path"):
        return str(value["path"])
    return getattr(value, "filename", None) or None


class MultiCropDataset(torch.utils.data.Dataset):
    """Map-style: item ``(epoch, i)`` (or ``i`` at ``self.epoch``) -> the views of image ``i`` for that epoch.

    Args:
        dataset: a ``datasets.Dataset`` or any sequence of row dicts holding ``image_column``.
        view_maker: crops and masks.
        image_column: the column holding images.
    """

    def __init__(self, dataset, view_maker: ViewMaker, image_column: str = "image"):
        self.dataset = undecoded_images(dataset, image_column)
        self.views = view_maker
        self.image_column = image_column
        self.epoch = 0
        self.issues = ImageIssueCounter()  # this process's (or worker's) conversions and skips

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Epoch of plain integer indices; ``EpochSampler`` passes it with every index instead."""
        self.epoch = int(epoch)

    def _read(self, index: int):
        try:
            value = self.dataset[index][self.image_column]
        except Exception as error:  # noqa: BLE001 - an unreadable row must not end a long run
            self.issues.add("unreadable", error)
            return None, None
        before = self.issues.num_converted
        image = to_rgb_image(value, self.issues)
        status = IMAGE_CONVERTED if self.issues.num_converted > before else IMAGE_OK
        return image, (None if image is None else status)

    def describe(self, index: int) -> str:
        """``sample i`` plus the file it came from when the dataset knows it."""
        try:
            name = _source_name(self.dataset[int(index)][self.image_column])
        except Exception:  # noqa: BLE001
            name = None
        return f"sample {index}" + (f" ({name})" if name else "")

    def replacement(self, index: int, attempt: int) -> int:
        """The ``attempt``-th stand-in for sample ``index``: another index, the same in every epoch and process."""
        size = len(self)
        if size < 2:
            return index
        return (index + 1 + stream_seed(self.views.seed, index, attempt, 7) % (size - 1)) % size

    def __getitem__(self, item) -> dict[str, torch.Tensor]:
        epoch, index = (int(item[0]), int(item[1])) if isinstance(item, (tuple, list)) else (self.epoch, int(item))
        image, status = self._read(index)
        if image is None:
            if self.issues.num_skipped <= _MAX_LOGGED_BAD:
                logger.warning("unreadable image %s replaced by another sample (%s)", self.describe(index),
                               self.issues.summary())  # fmt: skip
            for attempt in range(MAX_REPLACEMENT_TRIES):
                image, _ = self._read(self.replacement(index, attempt))
                if image is not None:
                    break
            else:
                raise ValueError(f"{self.describe(index)} and {MAX_REPLACEMENT_TRIES} stand-ins are unreadable; "
                                 f"check the dataset ({self.issues.summary()})")  # fmt: skip
            status = IMAGE_REPLACED
        example = self.views(image, epoch, index)  # the bad sample's own seed: its stand-in gets fresh views
        example["sample_index"] = torch.tensor(index, dtype=torch.long)
        example["image_status"] = torch.tensor(status, dtype=torch.uint8)
        return example

    def issue_summary(self) -> str:
        return self.issues.summary()


class MultiCropIterableDataset(torch.utils.data.IterableDataset):
    """Streaming: examples seeded by (seed, epoch, worker, position); a bad image is replaced by the previous
    readable one (the first readable one when the stream starts with bad images), so no example slot is lost."""

    def __init__(self, dataset, view_maker: ViewMaker, image_column: str = "image"):
        self.dataset = undecoded_images(dataset, image_column)
        self.views = view_maker
        self.image_column = image_column
        self.epoch = 0
        self.issues = ImageIssueCounter()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)  # a shuffled HF stream reshuffles its buffer per epoch

    def describe(self, index: int) -> str:
        return f"stream position {index}"

    def _example(self, image, worker: int, position: int, status: int) -> dict[str, torch.Tensor]:
        example = self.views(image, self.epoch, worker, position)
        example["sample_index"] = torch.tensor(position, dtype=torch.long)
        example["image_status"] = torch.tensor(status, dtype=torch.uint8)
        return example

    def __iter__(self):
        worker_info = torch.utils.data.get_worker_info()
        worker = worker_info.id if worker_info else 0
        last_good, pending = None, []  # positions of bad images waiting for a readable stand-in
        for position, row in enumerate(self.dataset):
            before = self.issues.num_converted
            image = to_rgb_image(row[self.image_column], self.issues)
            if image is None:
                if len(pending) + self.issues.num_skipped <= _MAX_LOGGED_BAD:
                    logger.warning("unreadable image at stream position %d (%s) replaced by a readable one",
                                   position, _source_name(row[self.image_column]) or "no file name")  # fmt: skip
                if last_good is None:
                    pending.append(position)
                else:
                    yield self._example(last_good, worker, position, IMAGE_REPLACED)
                continue
            last_good = image
            status = IMAGE_CONVERTED if self.issues.num_converted > before else IMAGE_OK
            yield self._example(image, worker, position, status)
            for bad in pending:
                yield self._example(image, worker, bad, IMAGE_REPLACED)
            pending = []
        if pending:
            raise ValueError(f"the stream holds no readable image ({self.issues.summary()})")

    def issue_summary(self) -> str:
        return self.issues.summary()


class EpochSampler(torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` pairs: a permutation of ``range(num_samples)`` drawn from ``(seed, epoch)``.

    Every process draws the same permutation (accelerate then gives each its share of every global batch), and the
    epoch travels with each index to the dataset, wherever ``__getitem__`` runs. The trainer calls ``set_epoch``
    before each epoch.

    >>> sampler = EpochSampler(4, seed=0)
    >>> sampler.set_epoch(3)
    >>> sorted(index for _, index in sampler), {epoch for epoch, _ in sampler}
    ([0, 1, 2, 3], {3})
    """

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        epoch = self.epoch
        if self.shuffle:
            generator = torch.Generator().manual_seed(stream_seed(self.seed, epoch, 0x5A3))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = range(self.num_samples)
        for index in order:
            yield (epoch, index)


def build_train_dataset(dataset, args, patch_size: int, seed: int, use_masks: bool = True, image_column=None):
    """Wrap a ``datasets`` dataset (map-style or streaming) or a list of rows into SOP training examples."""
    image_column = image_column or getattr(args, "image_column", "image")
    streaming = isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__")
    augment_on = resolve_augment_on(getattr(args, "augment_on", "auto"), streaming)
    maker = ViewMaker(args, patch_size, seed, use_masks, augment_on)
    if streaming:
        return MultiCropIterableDataset(dataset, maker, image_column)
    return MultiCropDataset(dataset, maker, image_column)


def collate_multicrop(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack examples view-major; the keys are ``SOPForPreTraining.forward``'s arguments plus ``BOOKKEEPING_KEYS``.

    ``pixel_values`` [2B, 3, H, W] (all images of global view 0, then view 1), ``bool_masked_pos`` [2B, L] when
    masks are made, ``local_pixel_values`` [nB, 3, h, w] when there are local crops, ``sample_index`` [B] and
    ``image_status`` [B]. Examples of the device path (``augment_on="device"``) give ``CROPS_KEY`` (the packed uint8
    crops and parameters, ``BatchedMultiCrop.collate``) instead of the two pixel keys; the training step turns it
    into them (``data.batched.views_on_device``).
    """
    if not examples:
        raise ValueError("collate_multicrop got an empty batch")
    bookkeeping = {key: torch.stack([e[key] for e in examples]) for key in BOOKKEEPING_KEYS if key in examples[0]}
    if "batched" in examples[0]:  # bookkeeping first: accelerate reads the batch size from the first tensor
        batch = {**bookkeeping, CROPS_KEY: examples[0]["batched"].collate(examples)}
    else:
        batch = {"pixel_values": torch.stack([e["global_crops"] for e in examples], dim=1).flatten(0, 1)}
    if "masks" in examples[0]:
        batch["bool_masked_pos"] = torch.stack([e["masks"] for e in examples], dim=1).flatten(0, 1)
    if "local_crops" in examples[0]:
        batch["local_pixel_values"] = torch.stack([e["local_crops"] for e in examples], dim=1).flatten(0, 1)
    return {**batch, **bookkeeping}


def views_digest(pixel_values: torch.Tensor, sample_index: torch.Tensor) -> dict[int, float]:
    """{sample index: a number that changes when its views change}, for checks of the seeding across runs."""
    batch = sample_index.shape[0]
    views = pixel_values.detach().float().reshape(-1, batch, *pixel_values.shape[1:])  # [2, B, 3, H, W]
    weights = torch.linspace(1.0, 2.0, views[:, 0].numel(), dtype=torch.float64)
    return {
        int(index): round(float((views[:, b].double().flatten() * weights).sum()), 4)
        for b, index in enumerate(sample_index.tolist())
    }


def build_collator(args=None):
    return collate_multicrop


__all__ = [
    "BOOKKEEPING_KEYS",
    "EpochSampler",
    "IMAGE_CONVERTED",
    "IMAGE_OK",
    "IMAGE_REPLACED",
    "MultiCropDataArguments",
    "MultiCropDataset",
    "MultiCropIterableDataset",
    "ViewMaker",
    "build_collator",
    "build_train_dataset",
    "collate_multicrop",
    "resolve_augment_on",
    "views_digest",
]
