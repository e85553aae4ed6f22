"""``BatchedMultiCrop``: the DINO/iBOT multi-crop split after decoding, its pixel work batched on the training device.

    worker (CPU, per image)             ``cut``: draw every view's parameters (``MultiCropAugmentation.draw_view``,
                                        the same draws in the same order as the per-image path), crop boxes included
    worker (CPU, per batch)             ``collate``: the decoded images in one flat uint8 buffer, the per-view
                                        parameters as tensors and index lists
    -- uint8 across the boundary (pinned memory, non-blocking copies on CUDA) --
    training device (inside the step)   ``apply``: cut the crops (one gather per size group), resize (+ flip) as
                                        batched matrix products, colour jitter in each view's own order, grayscale,
                                        Gaussian blur, solarisation, normalisation

Each image crosses the boundary once, as decoded uint8 pixels: for the ImageNet multi-crop (2 x 224 + 10 x 96 of a
500 x 375 image) that is 0.56 MB, against about 1.9 MB for its overlapping uint8 crops and 2.3 MB for today's
float32 views; the worker copies each image once and cuts nothing.

The photometric ops are ``data.photometric``'s vectorised kernels: each op runs once per batch on the rows that
need it (their indices are computed in the worker, so the device never waits for the host). For the same
generators the views equal ``MultiCropAugmentation``'s within float rounding (tests/test_batched_augmentation.py).

Standalone use, DALI/kornia style (seeded: view v of image i is drawn from ``stream_seed(seed, i, v)``):

>>> import numpy as np
>>> images = [np.full((40, 50, 3), 128, np.uint8), np.zeros((31, 17, 3), np.uint8)]
>>> augment = BatchedMultiCrop(global_crop_size=32, local_crop_size=16, num_local_crops=2)
>>> views = augment(images, seed=0)
>>> tuple(views["pixel_values"].shape), tuple(views["local_pixel_values"].shape)
((4, 3, 32, 32), (4, 3, 16, 16))
"""

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from ..seeding import stream_seed
from . import photometric
from .augmentations import (
    JITTER_NEUTRAL,
    MultiCropAugmentation,
    ViewParams,
    as_rgb_array,
)

__all__ = ["CROPS_KEY", "BatchedMultiCrop", "views_on_device"]

CROPS_KEY = "multicrop"  # the batch key holding the packed crops and parameters (popped by ``views_on_device``)
_JITTER_KERNELS = (photometric.adjust_brightness, photometric.adjust_contrast, photometric.adjust_saturation,
                   photometric.adjust_hue)  # fmt: skip
_OUTPUT_KEYS = {"global": "pixel_values", "local": "local_pixel_values"}


class BatchedMultiCrop:
    """Multi-crop views of a batch of images, with per-view random parameters, computed as batched tensor ops.

    Takes ``MultiCropAugmentation``'s arguments (or one ``MultiCropAugmentation`` as ``augmentation``); the recipe,
    its defaults and its validation are that class's.

    Args:
        augmentation: the recipe; None builds one from ``kwargs``.
        max_groups: the crops of one side are cut and resized in at most this many size groups (sorted by area, at
            least 16 crops each); more groups multiply less padding, fewer launch fewer kernels.
        **kwargs: ``MultiCropAugmentation`` arguments.

    >>> import numpy as np
    >>> augment = BatchedMultiCrop(global_crop_size=16)
    >>> example = augment.cut(np.zeros((20, 30, 3), np.uint8), None)
    >>> views = augment.apply(augment.collate([example, example]))
    >>> tuple(views["pixel_values"].shape)
    (4, 3, 16, 16)
    """

    def __init__(self, augmentation: MultiCropAugmentation | None = None, max_groups: int = 4, **kwargs):
        if augmentation is not None and kwargs:
            raise ValueError(f"pass either augmentation or MultiCropAugmentation arguments, not both: {sorted(kwargs)}")
        if max_groups < 1:
            raise ValueError(f"max_groups must be >= 1, got {max_groups}")
        self.augmentation = augmentation if augmentation is not None else MultiCropAugmentation(**kwargs)
        self.max_groups = int(max_groups)

    @property
    def num_views(self) -> int:
        return self.augmentation.num_global_crops + self.augmentation.num_local_crops

    # --- worker side -----------------------------------------------------------------------------------------------
    def cut(self, image, generator: torch.Generator | Sequence[torch.Generator] | None) -> dict:
        """One image -> its views' parameters (crop boxes included) and its uint8 pixels.

        The crops themselves are cut on the device from the image (one copy of each image crosses the boundary,
        fewer bytes than its overlapping crops), so the worker copies no pixel here.

        Args:
            image: an RGB PIL image or a uint8 HxWx3 array.
            generator: as ``MultiCropAugmentation.__call__``: one generator, one per view, or None.

        Returns:
            ``{"image": the RGB image or uint8 [H, W, 3] array, "shape": (H, W), "params": [ViewParams]}``,
            views globals first.
        """
        if isinstance(image, Image.Image) and image.mode == "RGB" and min(image.size) >= 1:
            height, width = image.height, image.width  # kept as is: collate reads its bytes once
        else:
            image = as_rgb_array(image)  # validates (a clear error for other modes and dtypes)
            height, width = image.shape[:2]
        return {"image": image, "shape": (height, width),
                "params": self.augmentation.draw_views(height, width, generator)}  # fmt: skip

    def collate(self, examples: Sequence[dict]) -> dict:
        """Examples of ``cut`` -> the packed batch ``apply`` takes: the images' pixels in one flat uint8 tensor,
        and per crop side the crop boxes (grouped by size) and every parameter as tensors, rows in view-major order
        (view 0 of every image, then view 1 ...)."""
        if not examples:
            raise ValueError("BatchedMultiCrop.collate got an empty batch")
        shapes = [e["shape"] for e in examples]
        sizes = [height * width for height, width in shapes]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).tolist()  # first pixel of each image in the buffer
        packed = {"pixels": _flat_pixels(examples, 3 * sum(sizes)),  # [P, 3] uint8
                  "mean": self.augmentation.mean, "std": self.augmentation.std}  # fmt: skip
        num_global = self.augmentation.num_global_crops
        sides = {"global": range(num_global), "local": range(num_global, self.num_views)}
        for side, views in sides.items():
            if len(views):
                params = [e["params"][v] for v in views for e in examples]  # view-major
                source = [(starts[i], shapes[i][1]) for _ in views for i in range(len(examples))]
                packed[side] = self._pack(params, source)
        return packed

    def _pack(self, params: list[ViewParams], source: list[tuple[int, int]]) -> dict:
        count, size = len(params), params[0].size
        none = (-1, -1, -1, -1)
        table = torch.from_numpy(
            np.array(
                [
                    (
                        *p[:4],
                        p.flip,
                        p.grayscale,
                        p.solarize,
                        p.blur_sigma or 0.0,
                        *(p.jitter_order or none),
                        *(p.jitter_factors or JITTER_NEUTRAL),
                    )
                    for p in params
                ],
                dtype=np.float64,
            )
        )  # [N, 16], one row a view
        boxes = table[:, :4].long()  # [N, 4]: top, left, height, width
        where = torch.tensor(source, dtype=torch.long)  # [N, 2]: first pixel and width of the crop's image
        order = torch.argsort(boxes[:, 2] * boxes[:, 3], stable=True)
        num_groups = max(1, min(self.max_groups, count // 16))
        groups = {"rows": [], "boxes": [], "source": [], "extent": []}
        for rows in torch.tensor_split(order, num_groups):
            groups["rows"].append(rows)
            groups["boxes"].append(boxes[rows])
            groups["source"].append(where[rows])
            groups["extent"].append(tuple(int(v) for v in boxes[rows, 2:].amax(0)))  # (Hc, Wc), host ints
        orders, factors = table[:, 8:12].long(), table[:, 12:16]  # [N, 4] each; order -1: no jitter
        active = factors != torch.tensor(JITTER_NEUTRAL, dtype=torch.float64)  # neutral factors are skipped
        jitter = []  # (rows, op, factors) in application order: step t of every view's own order
        for step in range(4):
            for op in range(4):
                rows = ((orders[:, step] == op) & active[:, op]).nonzero().squeeze(1)
                if rows.numel():
                    jitter.append({"rows": rows, "op": op, "factor": factors[rows, op].float()})
        sigma = table[:, 7]
        blurred = (sigma > 0).nonzero().squeeze(1) if size > 1 else torch.zeros(0, dtype=torch.long)
        weights, radius = photometric.blur_weights(sigma[blurred], size)
        return {
            "size": size,
            "count": count,
            "flip": table[:, 4] > 0,
            **groups,
            "jitter": jitter,
            "grayscale": (table[:, 5] > 0).nonzero().squeeze(1),
            "blur": {"rows": blurred, "weights": weights, "radius": radius},
            "solarize": (table[:, 6] > 0).nonzero().squeeze(1),
        }

    # --- device side -----------------------------------------------------------------------------------------------
    @staticmethod
    def apply(packed: dict, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The packed batch (on ``device`` or moved there, uint8) -> ``pixel_values`` [G*B, 3, S, S] and, with local
        crops, ``local_pixel_values`` [L*B, 3, s, s]: float32, normalised, view-major. No host sync."""
        out = {}
        for side, key in _OUTPUT_KEYS.items():
            if side in packed:
                out[key] = _apply_side(packed[side], packed["pixels"], packed["mean"], packed["std"], device)
        return out

    def __call__(self, images: Sequence, seed: int = 0, device: torch.device | str | None = None) -> dict:
        """Views of a list of images (RGB PIL or uint8 HxWx3), view v of image i drawn from ``stream_seed(seed, i,
        v)``, computed on ``device`` (default: the CPU)."""
        examples = [
            self.cut(image, [torch.Generator().manual_seed(stream_seed(seed, i, v)) for v in range(self.num_views)])
            for i, image in enumerate(images)
        ]
        return self.apply(self.collate(examples), device)

    def __repr__(self) -> str:
        return f"BatchedMultiCrop({self.augmentation!r}, max_groups={self.max_groups})"


def _flat_pixels(examples: Sequence[dict], total: int) -> torch.Tensor:
    """The images' RGB bytes one after the other -> [P, 3] uint8; in a dataloader worker the buffer is allocated in
    shared memory (as ``default_collate`` does), so handing the batch to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is not None:
        flat = torch.empty(0, dtype=torch.uint8).set_(torch.UntypedStorage._new_shared(total), 0, (total,), (1,))
    else:
        flat = torch.empty(total, dtype=torch.uint8)
    array, offset = flat.numpy(), 0
    for example in examples:
        data = np.frombuffer(example["image"].tobytes(), np.uint8)
        array[offset : offset + data.size] = data
        offset += data.size
    return flat.view(-1, 3)


def _cut_crops(pixels: torch.Tensor, boxes: torch.Tensor, source: torch.Tensor, extent: tuple[int, int]):
    """Crops out of the flat image buffer ``pixels`` [P, 3] -> [n, Hc, Wc, 3] uint8, crop i in the top-left
    ``boxes[i, 2:]`` corner (the rest repeats a pixel of its image and is weighted 0 by the resize): one gather."""
    device = pixels.device
    top, left, height, width = (boxes[:, i].view(-1, 1, 1) for i in range(4))  # [n, 1, 1] each
    start, stride = source[:, 0].view(-1, 1, 1), source[:, 1].view(-1, 1, 1)
    y = torch.arange(extent[0], device=device).view(1, -1, 1)
    x = torch.arange(extent[1], device=device).view(1, 1, -1)
    inside = (y < height) & (x < width)  # [n, Hc, Wc]
    index = torch.where(inside, start + (top + y) * stride + left + x, start)
    return pixels[index]  # [n, Hc, Wc, 3]


def _apply_side(side: dict, pixels: torch.Tensor, mean, std, device) -> torch.Tensor:
    """One crop side of a packed batch -> [N, 3, S, S] normalised views."""
    device = torch.device(device) if device is not None else pixels.device

    def to(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(device, non_blocking=True)

    size, count = side["size"], side["count"]
    pixels, flip = to(pixels), to(side["flip"])
    views = torch.empty(count, 3, size, size, device=device)
    for rows, boxes, source, extent in zip(side["rows"], side["boxes"], side["source"], side["extent"], strict=True):
        rows, boxes = to(rows), to(boxes)
        crops = _cut_crops(pixels, boxes, to(source), extent)  # [n, Hc, Wc, 3] uint8
        views.index_copy_(0, rows, photometric.resize_crops(crops, boxes[:, 2:], size, flip[rows]))
    for step in side["jitter"]:
        rows = to(step["rows"])
        kernel = _JITTER_KERNELS[step["op"]]
        views.index_copy_(0, rows, kernel(views.index_select(0, rows), to(step["factor"])))
    rows = to(side["grayscale"])
    if rows.numel():
        views.index_copy_(0, rows, photometric.grayscale(views.index_select(0, rows)).expand(-1, 3, -1, -1))
    blur = side["blur"]
    rows = to(blur["rows"])
    if rows.numel():
        blurred = photometric.gaussian_blur(views.index_select(0, rows), to(blur["weights"]), blur["radius"])
        views.index_copy_(0, rows, blurred)
    rows = to(side["solarize"])
    if rows.numel():
        views.index_copy_(0, rows, photometric.solarize(views.index_select(0, rows)))
    for channel in range(3):  # Python scalars: no host-to-device copy
        views[:, channel].sub_(mean[channel]).div_(std[channel])
    return views


def views_on_device(inputs: dict, device: torch.device | str | None = None) -> dict:
    """The training step's hook: a batch holding ``CROPS_KEY`` (packed uint8 crops and parameters) -> the same batch
    with ``pixel_values`` / ``local_pixel_values`` computed on ``device`` (default: where the crops are); any other
    batch is returned as is."""
    if CROPS_KEY not in inputs:
        return inputs
    inputs = dict(inputs)
    inputs.update(BatchedMultiCrop.apply(inputs.pop(CROPS_KEY), device))
    return inputs
