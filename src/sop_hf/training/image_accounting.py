"""Image accounting: images seen, converted and replaced, summed over every process, and the bad-fraction stop.

Each batch carries ``sample_index`` and ``image_status`` (0 read as is, 1 converted to RGB, 2 replaced because it
could not be read; ``data.pipeline``). ``count`` adds a batch's counts on the device (no host sync); ``flush`` (at
logging steps and before each save) sums the counts over processes with one all-reduce and gathers the indices of the
replaced images, so every number logged and written to ``results.json`` is the run's total, whatever the number of
processes (tested with 1 and 8). A replaced image is counted once however often it is drawn (``bad_images``);
``image_replacements`` counts every replacement.
"""

import math

import torch


class ImageAccounting:
    """Counts of one run; ``stats`` and ``bad_samples`` hold the totals over processes after ``flush``.

    Args:
        max_bad_image_fraction: stop when more than this fraction of the images (rounded up to whole images) is bad.
        describe: sample index -> a name for messages (the dataset's ``describe``).

    >>> accounting = ImageAccounting(0.5)
    >>> accounting.count(torch.tensor([0, 1]), torch.tensor([0, 1]))
    >>> accounting.flush(None, dataset_size=2)["images_converted"]
    1
    """

    def __init__(self, max_bad_image_fraction: float, describe=None):
        self.max_bad_image_fraction = max_bad_image_fraction
        self.describe = describe or (lambda i: f"sample {i}")
        self._counts: torch.Tensor | None = None  # [images seen, converted, replaced] on this process
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.bad_samples: list[int] = []  # sample indices of replaced images, all processes, first seen first
        self.stats = {"images_seen": 0, "images_converted": 0, "image_replacements": 0, "bad_images": 0}

    @property
    def pending(self) -> bool:
        return self._counts is not None or bool(self._pending)

    def count(self, sample_index: torch.Tensor, image_status: torch.Tensor) -> None:
        """Add one micro-batch ([B] indices and statuses) on this process (device tensors, no host sync)."""
        status = image_status.long()
        counts = torch.stack([torch.ones_like(status).sum(), (status == 1).sum(), (status == 2).sum()])
        self._counts = counts if self._counts is None else self._counts + counts
        self._pending.append((sample_index.detach(), status.detach()))

    def flush(self, accelerator, dataset_size: int = 0, device: torch.device | None = None) -> dict[str, int]:
        """Sum the counts over processes (a host sync: logging and saving steps only) and check the bad fraction.

        Every process must call it at the same step (it all-reduces). ``accelerator`` None means one process.
        """
        local = self._counts if self._counts is not None else torch.zeros(3, dtype=torch.long)
        bad_here = []
        for index, status in self._pending:
            bad_here += index[status == 2].tolist()
        self._pending, self._counts = [], None
        if accelerator is not None and accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            totals = accelerator.reduce(local.to(device or accelerator.device), reduction="sum").tolist()
            bad_all = gather_object(bad_here)
        else:
            totals, bad_all = local.tolist(), bad_here
        known = set(self.bad_samples)
        self.bad_samples += [i for i in dict.fromkeys(bad_all) if i not in known]
        stats = self.stats
        stats["images_seen"] += int(totals[0])
        stats["images_converted"] += int(totals[1])
        stats["image_replacements"] += int(totals[2])
        stats["bad_images"] = len(self.bad_samples)
        denominator = max(stats["images_seen"], dataset_size, 1)
        limit = self.max_bad_image_fraction
        if stats["bad_images"] > math.ceil(limit * denominator):  # whole images: one bad file of 42 is tolerated
            names = ", ".join(self.describe(i) for i in self.bad_samples[:5])
            raise ValueError(
                f"{stats['bad_images']} of {denominator} training images are unreadable, more than "
                f"--max_bad_image_fraction {limit}; first ones: {names}. Fix or remove them, or raise the fraction."
            )
        return stats
