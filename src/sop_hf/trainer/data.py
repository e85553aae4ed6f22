"""The training data pipeline: index-seeded multi-crop views and masks, and the collator of SOPForPreTraining.

Every example's randomness comes from a generator seeded by (seed, epoch, index) — or (seed, epoch, rank, position)
for streams — so a run is reproducible, DataLoader workers need no shared state, and a resumed run (which skips the
already-seen batches at the sampler) produces exactly the crops and masks the uninterrupted run would have.

Bad images never crash a run: undecodable or truncated files are skipped (the example is dropped from its batch)
and every conversion (grayscale, CMYK, RGBA, palette, 16-bit) or skip is counted; ``issue_summary()`` gives the
counts for the logs. An empty dataset or a missing image column is rejected before training (``data_sources``).
"""

from dataclasses import dataclass, field

import torch

from ..augmentations import MultiCropAugmentation
from ..image_loading import ImageIssueCounter, to_rgb_image
from ..masking import BlockMaskGenerator, MaskingPolicy
from ..modeling_sop_pretraining import _stream_seed


@dataclass
class MultiCropDataArguments:
    """Crops and masks (METHOD.md section 3). Defaults are the SOP/iBOT ImageNet recipe."""

    global_crop_size: int = field(default=224, metadata={"help": "Side of the 2 global crops (the encoder's size)."})
    global_crop_scale: list[float] = field(
        default_factory=lambda: [0.14, 1.0], metadata={"help": "Area range of global crops; (0.3, 1) for tiny 28-px images."}
    )
    num_local_crops: int = field(
        default=0, metadata={"help": "Local crops per image (SOP default 0; 10 as in iBOT/MaSSL costs about 40 percent more)."}
    )
    local_crop_size: int = field(default=96, metadata={"help": "Side of the local crops."})
    local_crop_scale: list[float] = field(
        default_factory=lambda: [0.05, 0.4], metadata={"help": "Area range of local crops."}
    )
    solarize_prob: float = field(default=0.2, metadata={"help": "Solarisation of global crop 1 (0 for tiny gray data)."})
    color_jitter_prob: float = field(default=0.8, metadata={"help": "Probability of the colour jitter."})
    blur_sigma: list[float] = field(
        default_factory=lambda: [0.1, 2.0],
        metadata={"help": "Gaussian-blur sigma range in pixels at a 224-px global crop (DINO); scaled by "
                  "global_crop_size / 224 for every crop, so small images are blurred as much relative to their size."},
    )  # fmt: skip
    mask_ratio: list[float] = field(
        default_factory=lambda: [0.3], metadata={"help": "iBOT mask ratio(s); several values: one is chosen per crop (e.g. 0 0.3)."}
    )
    mask_ratio_var: list[float] = field(
        default_factory=lambda: [0.0], metadata={"help": "Uniform +- variation of each mask ratio (iBOT recipe: 0 0.2)."}
    )
    mask_start_epoch: int = field(default=0, metadata={"help": "Epoch before which nothing is masked."})
    mask_shape: str = field(default="block", metadata={"help": "'block' (iBOT blockwise) or 'rand' (uniform patches)."})


class _ViewMaker:
    """Shared by the map-style and the streaming datasets: image + generator -> one training example or None."""

    def __init__(self, args: MultiCropDataArguments, patch_size: int, image_column: str, seed: int, use_masks: bool):
        blur_scale = args.global_crop_size / 224  # DINO's sigma range is in pixels of 224-px crops
        self.augmentation = MultiCropAugmentation(
            global_crop_size=args.global_crop_size, local_crop_size=args.local_crop_size,
            num_local_crops=args.num_local_crops, global_crop_scale=tuple(args.global_crop_scale),
            local_crop_scale=tuple(args.local_crop_scale), global_solarize_probs=(0.0, args.solarize_prob),
            color_jitter_prob=args.color_jitter_prob, blur_sigma=tuple(s * blur_scale for s in args.blur_sigma),
        )  # fmt: skip
        grid = args.global_crop_size // patch_size
        self.masks = MaskingPolicy(
            BlockMaskGenerator((grid, grid)), ratios=tuple(args.mask_ratio), ratio_vars=tuple(args.mask_ratio_var),
            start_epoch=args.mask_start_epoch, shape=args.mask_shape,
        ) if use_masks else None  # fmt: skip
        self.image_column = image_column
        self.seed = seed
        self.epoch = 0
        self.issues = ImageIssueCounter()

    def make(self, image, *stream) -> dict | None:
        image = to_rgb_image(image, self.issues)
        if image is None:
            return None
        generator = torch.Generator().manual_seed(_stream_seed(self.seed, self.epoch, *stream))
        global_crops, local_crops = self.augmentation(image, generator)
        example = {"global_crops": torch.stack(global_crops)}  # [2, 3, H, W]
        if local_crops:
            example["local_crops"] = torch.stack(local_crops)  # [n, 3, h, w]
        if self.masks is not None:
            example["masks"] = torch.stack([self.masks(generator, self.epoch) for _ in global_crops])  # [2, L]
        return example


class MultiCropDataset(torch.utils.data.Dataset):
    """Map-style wrapper: item ``i`` of ``dataset`` -> its crops (and masks), seeded by (seed, epoch, i)."""

    def __init__(self, dataset, view_maker: _ViewMaker):
        self.dataset = dataset
        self.views = view_maker

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.views.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict | None:
        try:
            image = self.dataset[int(index)][self.views.image_column]
        except Exception as error:  # noqa: BLE001 - an undecodable file must not end a long run
            self.views.issues.add("unreadable", error)
            return None
        return self.views.make(image, int(index))

    def issue_summary(self) -> str:
        return self.views.issues.summary()


class MultiCropIterableDataset(torch.utils.data.IterableDataset):
    """Streaming wrapper (``datasets.IterableDataset``): examples seeded by (seed, epoch, worker, position)."""

    def __init__(self, dataset, view_maker: _ViewMaker):
        self.dataset = dataset
        self.views = view_maker

    def set_epoch(self, epoch: int) -> None:
        self.views.epoch = int(epoch)
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id = worker.id if worker else 0
        for position, row in enumerate(self.dataset):
            example = self.views.make(row[self.views.image_column], worker_id, position)
            if example is not None:
                yield example

    def issue_summary(self) -> str:
        return self.views.issues.summary()


def build_train_dataset(dataset, args, patch_size: int, seed: int, use_masks: bool = True):
    """Wrap a ``datasets`` dataset (map-style or streaming) into SOP training examples."""
    maker = _ViewMaker(args, patch_size, getattr(args, "image_column", "image"), seed, use_masks)
    if isinstance(dataset, torch.utils.data.IterableDataset) or not hasattr(dataset, "__len__"):
        return MultiCropIterableDataset(dataset, maker)
    return MultiCropDataset(dataset, maker)


def collate_multicrop(examples: list[dict | None]) -> dict[str, torch.Tensor]:
    """Stack examples view-major; keys are exactly ``SOPForPreTraining.forward``'s arguments.

    ``pixel_values`` [2B, 3, H, W] (all images of global view 0, then view 1), ``bool_masked_pos`` [2B, L] when
    masks are made, ``local_pixel_values`` [nB, 3, h, w] when there are local crops. Skipped examples (None) are
    dropped; a batch with no valid image raises a ``ValueError`` (the data is unusable).
    """
    examples = [e for e in examples if e is not None]
    if not examples:
        raise ValueError("every image of this batch failed to decode; check the dataset (see the skipped-image log)")
    batch = {"pixel_values": torch.stack([e["global_crops"] for e in examples], dim=1).flatten(0, 1)}
    if "masks" in examples[0]:
        batch["bool_masked_pos"] = torch.stack([e["masks"] for e in examples], dim=1).flatten(0, 1)
    if "local_crops" in examples[0]:
        batch["local_pixel_values"] = torch.stack([e["local_crops"] for e in examples], dim=1).flatten(0, 1)
    return batch


def build_collator(args=None):
    return collate_multicrop
