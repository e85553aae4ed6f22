"""Feature extraction of a frozen encoder over a dataset: batched, with a progress bar, autocast and pooling modes.

``extract_features`` walks a ``datasets.Dataset`` (sliced column-wise, optionally decoded and preprocessed by
``num_workers`` DataLoader workers), a ``datasets.IterableDataset`` (streamed with ``.iter(batch_size)``) or any
sequence / iterable of row dicts. Images go through the encoder's image processor (or any callable mapping a list of
RGB PIL images to ``{"pixel_values": [B, C, H, W]}``) and the encoder is called once per batch and scale.

Pooling modes (``pooling``), all taken after the encoder's final LayerNorm:

- ``"cls"``: the final [CLS] token ``last_hidden_state[:, 0]`` (= ``pooler_output`` of ``SOPModel``), [N, D].
- ``"cls_last_n"``: the [CLS] token of each of the last ``n_last_blocks`` blocks, each passed through the final
  LayerNorm, concatenated, [N, n * D] (DINO's linear evaluation, ``get_intermediate_layers`` + ``torch.cat``).
- ``"cls_mean_patch"``: the final [CLS] token and the mean of the final patch tokens concatenated, [N, 2 * D]
  (DINO's ``--avgpool_patchtokens``).

A convolutional encoder (``ResNetModel``, whose ``last_hidden_state`` is a [N, D, h, w] map) supports ``"cls"`` only,
meaning its global average pool, [N, D].

``scales`` other than ``(1.0,)`` resize the processed batch (bilinear, sides snapped to multiples of the patch size),
L2-normalise the features of every scale, average them and L2-normalise again (multi-scale retrieval features).

>>> import torch
>>> from sop_hf import SOPConfig, SOPImageProcessor, SOPModel
>>> from sop_hf.data.sources import load_image_dataset
>>> config = SOPConfig(image_size=28, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
>>> data = load_image_dataset("embedded", split="test").select(range(8))
>>> x, y = extract_features(SOPModel(config), data, SOPImageProcessor(size=28, crop_pct=1.0), pooling="cls_last_n",
...                         n_last_blocks=2, progress=False)
>>> tuple(x.shape), tuple(y.shape)
((8, 64), (8,))
"""

import inspect
import logging
import math
from collections.abc import Iterable, Iterator, Sequence

import datasets
import torch
from torch.nn.functional import interpolate, normalize
from tqdm.auto import tqdm

from ..data.images import to_rgb_image
from ..data.pipeline import undecoded_images

logger = logging.getLogger(__name__)

POOLINGS = ("cls", "cls_last_n", "cls_mean_patch")
_DTYPES = {"float32": None, "fp32": None, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}  # fmt: skip


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``"bf16"`` / ``"bfloat16"`` / ``"fp16"`` / ``"float16"`` / ``"fp32"`` / a ``torch.dtype`` -> autocast dtype.

    ``None`` and float32 mean "no autocast".

    Raises:
        ValueError: For any other name or dtype.
    """
    if dtype is None or dtype == torch.float32:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(f"autocast dtype must be bfloat16 or float16, got {dtype}")
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The encoder's final LayerNorm (``layernorm`` of SOPModel / ViTModel / Dinov2Model, or ``norm``).

    Raises:
        ValueError: If the model has neither attribute.
    """
    for name in ("layernorm", "norm", "post_layernorm"):
        module = getattr(model, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    raise ValueError(
        f"{type(model).__name__} has no final norm (layernorm / norm / post_layernorm); "
        "pooling='cls_last_n' needs one. Use pooling='cls' instead."
    )


def patch_size_of(model: torch.nn.Module) -> int:
    """The encoder's patch side from ``model.config.patch_size`` (an int or a pair); 1 if it has none."""
    patch = getattr(getattr(model, "config", None), "patch_size", 1)
    return int(patch[0] if isinstance(patch, (tuple, list)) else patch)


def pool_output(output, model: torch.nn.Module, pooling: str = "cls", n_last_blocks: int = 4) -> torch.Tensor:
    """Pool an encoder output (see the module docstring) into [B, D'] features (D' = D, n * D or 2 * D).

    Args:
        output: The ``BaseModelOutput*`` of ``model``; ``hidden_states`` are needed for ``"cls_last_n"``.
        model: The encoder (its final norm is applied to intermediate [CLS] tokens).
        pooling: One of ``POOLINGS``.
        n_last_blocks: Blocks concatenated by ``"cls_last_n"``; DINO uses 4 for ViT-S and 1 (+ mean patch) for
            ViT-B. Raise it for a richer (wider) probe input.

    Raises:
        ValueError: For an unknown pooling, a missing ``hidden_states`` or too few blocks.
    """
    tokens = output.last_hidden_state  # [B, 1 + L, D], after the final norm; [B, D, h, w] for a CNN
    if tokens.ndim == 4:  # a convolutional encoder (ResNetModel): its global average pool is the image feature
        if pooling != "cls":
            raise ValueError(f"pooling={pooling!r} needs a transformer's tokens; use 'cls' (the global average pool) "
                             f"for {type(model).__name__}")  # fmt: skip
        return tokens.mean(dim=(2, 3))  # [B, D]
    if pooling == "cls":
        # Token 0, not pooler_output: a ViTModel's pooler is a tanh dense layer (random when the export has none).
        return tokens[:, 0]
    if pooling == "cls_mean_patch":
        return torch.cat((tokens[:, 0], tokens[:, 1:].mean(dim=1)), dim=-1)  # [B, 2 * D]
    if pooling == "cls_last_n":
        hidden = getattr(output, "hidden_states", None)
        if hidden is None:
            raise ValueError("pooling='cls_last_n' needs output_hidden_states=True outputs")
        if not 1 <= n_last_blocks <= len(hidden) - 1:
            raise ValueError(f"n_last_blocks must be in [1, {len(hidden) - 1}] (the block count), got {n_last_blocks}")
        norm = final_norm(model)
        return torch.cat([norm(h[:, 0]) for h in hidden[-n_last_blocks:]], dim=-1)  # [B, n * D]
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def _rgb(image, index: int, skip: bool = False):
    rgb = to_rgb_image(image)
    if rgb is None and not skip:
        raise ValueError(f"row {index}: the image could not be decoded (corrupt or truncated file)")
    return rgb


def _labels_tensor(values: Sequence, label_column: str) -> torch.Tensor:
    try:
        labels = torch.as_tensor(list(values))
    except (TypeError, ValueError, RuntimeError):
        labels = None
    if labels is None or labels.is_floating_point() or labels.is_complex() or labels.ndim != 1:
        example = next(iter(values), None)
        raise ValueError(
            f"label column {label_column!r} must hold integer class ids, got {type(example).__name__} "
            f"({example!r}); cast it to a datasets.ClassLabel first"
        )
    return labels.long()


class _ProcessedBatches(torch.utils.data.Dataset):
    """Batch i of a map-style ``datasets.Dataset``: decoded, converted to RGB and run through the processor."""

    def __init__(self, dataset, image_processor, batch_size, image_column, label_column, total, skip=False):
        self.dataset = undecoded_images(dataset, image_column) if skip else dataset  # decode here, to skip bad files
        self.processor, self.batch_size, self.skip = image_processor, batch_size, skip
        self.image_column, self.label_column, self.total = image_column, label_column, total

    def __len__(self) -> int:
        return math.ceil(self.total / self.batch_size)

    def __getitem__(self, index: int) -> dict:
        start = index * self.batch_size
        rows = self.dataset[start : min(start + self.batch_size, self.total)]
        return _process_rows(rows, self.processor, self.image_column, self.label_column, start, self.skip)


def _process_rows(
    columns: dict, processor, image_column: str, label_column: str | None, start: int, skip: bool = False
) -> dict:
    """Rows -> ``pixel_values`` [B', C, H, W] (and ``labels`` [B']); with ``skip`` unreadable images are dropped
    (B' <= B) and counted in ``num_skipped``."""
    images = [_rgb(image, start + i, skip) for i, image in enumerate(columns[image_column])]
    keep = [i for i, image in enumerate(images) if image is not None]
    batch = {"num_skipped": len(images) - len(keep)}
    if keep:
        batch["pixel_values"] = processor([images[i] for i in keep], return_tensors="pt")["pixel_values"]
    if label_column is not None:
        batch["labels"] = _labels_tensor([columns[label_column][i] for i in keep], label_column) if keep else (
            torch.empty(0, dtype=torch.long))  # fmt: skip
    return batch


def _column_batches(rows: Iterable[dict], batch_size: int) -> Iterator[dict]:
    """Group an iterable of row dicts into dicts of columns of at most ``batch_size`` rows."""
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == batch_size:
            yield {key: [r[key] for r in batch] for key in batch[0]}
            batch = []
    if batch:
        yield {key: [r[key] for r in batch] for key in batch[0]}


def iter_processed_batches(
    dataset,
    image_processor,
    batch_size: int = 256,
    image_column: str = "image",
    label_column: str | None = "label",
    max_samples: int | None = None,
    num_workers: int = 0,
    skip_unreadable: bool = False,
) -> tuple[Iterator[dict], int | None]:
    """Yield ``{"pixel_values": [B, C, H, W], "labels": [B]}`` batches (labels only when ``label_column`` is set).

    Returns:
        The batch iterator and the number of rows when it is known (``None`` for an unbounded stream).

    Raises:
        ValueError: For ``batch_size < 1`` or a missing image / label column.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    columns = getattr(dataset, "column_names", None)
    if columns is None and isinstance(getattr(dataset, "features", None), datasets.Features):
        columns = list(dataset.features)
    for column in (image_column, label_column):
        if column is not None and columns is not None and column not in columns:
            raise ValueError(f"column {column!r} not found in the dataset; columns are {list(columns)}")
    if isinstance(dataset, datasets.Dataset):
        total = len(dataset) if max_samples is None else min(len(dataset), max_samples)
        batches = _ProcessedBatches(dataset, image_processor, batch_size, image_column, label_column, total,
                                    skip_unreadable)  # fmt: skip
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers)
        return iter(loader), total
    if isinstance(dataset, datasets.IterableDataset):
        stream = dataset.take(max_samples) if max_samples is not None else dataset
        column_batches = stream.iter(batch_size=batch_size)
    else:
        rows = iter(dataset)
        if max_samples is not None:
            rows = (row for i, row in zip(range(max_samples), rows))
        column_batches = _column_batches(rows, batch_size)
    try:
        total = min(len(dataset), max_samples) if max_samples is not None else len(dataset)
    except TypeError:  # IterableDataset and generators have no len()
        total = max_samples

    def generate() -> Iterator[dict]:
        start = 0
        for cols in column_batches:
            yield _process_rows(cols, image_processor, image_column, label_column, start, skip_unreadable)
            start += len(cols[image_column])

    return generate(), total


def _resize_to_scale(pixel_values: torch.Tensor, scale: float, patch: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, C, h, w] with h, w = round(scale * side) snapped to a multiple of ``patch`` (>= patch)."""
    height, width = pixel_values.shape[-2:]
    size = tuple(max(patch, round(side * scale / patch) * patch) for side in (height, width))
    if size == (height, width):
        return pixel_values
    return interpolate(pixel_values, size=size, mode="bilinear", align_corners=False)


@torch.no_grad()
def encode_batch(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    pooling: str = "cls",
    n_last_blocks: int = 4,
    scales: Sequence[float] = (1.0,),
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Float32 [B, D'] features of one processed batch (already on the model's device); see ``extract_features``."""
    device = pixel_values.device
    use_autocast = dtype is not None and device.type == "cuda"
    kwargs = {"output_hidden_states": True} if pooling == "cls_last_n" else {}
    # ViTModel needs the flag for other sizes; SOPModel always interpolates (and accepts it), others may reject it.
    interpolate = "interpolate_pos_encoding" in inspect.signature(model.forward).parameters
    per_scale = []
    for scale in scales:
        inputs = pixel_values if scale == 1.0 else _resize_to_scale(pixel_values, scale, patch_size_of(model))
        if scale != 1.0 and interpolate:
            kwargs["interpolate_pos_encoding"] = True
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=use_autocast):
            output = model(pixel_values=inputs, **kwargs)
            pooled = pool_output(output, model, pooling, n_last_blocks)
        per_scale.append(pooled.float())
    if len(per_scale) == 1:
        return per_scale[0]
    return normalize(torch.stack([normalize(f, dim=-1) for f in per_scale]).mean(0), dim=-1)  # [B, D']


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset,
    image_processor,
    batch_size: int = 256,
    image_column: str = "image",
    label_column: str | None = "label",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    progress: bool = True,
    pooling: str = "cls",
    n_last_blocks: int = 4,
    scales: Sequence[float] = (1.0,),
    max_samples: int | None = None,
    num_workers: int = 0,
    skip_unreadable: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ([N, D'] float32 features, [N] long labels or None) for the rows of ``dataset``, in order.

    Args:
        model: An encoder returning ``last_hidden_state`` (``SOPModel``, ``ViTModel``, ``Dinov2Model``). It is
            put in eval mode for the call (and restored) and moved to ``device``.
        dataset: A ``datasets.Dataset``, ``datasets.IterableDataset`` or an iterable of row dicts.
        image_processor: E.g. ``SOPImageProcessor``; called with a list of RGB PIL images.
        batch_size: Images per forward pass. Lower it if the GPU runs out of memory; raise it for throughput.
        image_column: Column holding images (PIL, arrays, paths or bytes).
        label_column: Column of integer labels; ``None`` (or absent from the dataset) returns no labels.
        device: Where the encoder runs; default: where its parameters are.
        dtype: Autocast dtype on CUDA (``"bf16"``, ``"fp16"`` or a ``torch.dtype``); ignored on CPU. Use bf16 on
            recent GPUs for about 2x throughput; features are returned in float32 either way.
        progress: Show a tqdm bar.
        pooling: ``"cls"``, ``"cls_last_n"`` or ``"cls_mean_patch"`` (see the module docstring). Keep ``"cls"`` for
            k-NN and retrieval; use ``"cls_last_n"`` (ViT-S) or ``"cls_mean_patch"`` (ViT-B) for linear probes.
        n_last_blocks: Blocks concatenated by ``"cls_last_n"``.
        scales: Input scales whose L2-normalised features are averaged; ``(1, 2**-0.5, 0.5)`` is the multi-scale
            retrieval setting. Keep ``(1.0,)`` for classification.
        max_samples: Use only the first ``max_samples`` rows (quick runs).
        num_workers: DataLoader workers decoding and preprocessing a map-style ``Dataset``; raise it when the GPU
            waits for the CPU. Ignored for streams.
        skip_unreadable: Drop rows whose image cannot be decoded (their labels too) and log how many; by default
            such a row is an error.

    Raises:
        ValueError: For an unknown pooling, an empty scale list, a non-integer label or an undecodable image.
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be a non-empty list of positive numbers, got {scales}")
    dtype = resolve_dtype(dtype)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if dtype is not None and device.type != "cuda":
        logger.info("autocast dtype %s ignored on %s: features are computed in float32", dtype, device)
    columns = getattr(dataset, "column_names", None)
    if label_column is not None and columns is not None and label_column not in columns:
        label_column = None
    batches, total = iter_processed_batches(
        dataset, image_processor, batch_size, image_column, label_column, max_samples, num_workers, skip_unreadable
    )
    skipped = 0
    was_training = model.training
    model.eval().to(device)
    features, labels = [], []
    try:
        with tqdm(total=total, desc="features", unit="img", disable=not progress, leave=False) as bar:
            for batch in batches:
                skipped += batch["num_skipped"]
                bar.update(batch["num_skipped"])
                if "pixel_values" not in batch:
                    continue
                pixel_values = batch["pixel_values"].to(device, non_blocking=True)
                features.append(encode_batch(model, pixel_values, pooling, n_last_blocks, scales, dtype).cpu())
                if "labels" in batch:
                    labels.append(batch["labels"])
                bar.update(pixel_values.shape[0])
    finally:
        model.train(was_training)
    if skipped:
        logger.warning("skipped %d unreadable image(s) of %s rows", skipped, total if total is not None else "the")
    if not features:
        raise ValueError("the dataset yielded no rows" + (f" ({skipped} unreadable images skipped)" if skipped else ""))
    return torch.cat(features), (torch.cat(labels) if label_column is not None else None)
