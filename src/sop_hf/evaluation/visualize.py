"""Pictures of a frozen encoder: DINO-style [CLS] attention maps and 2-D scatter plots of features.

- :func:`last_block_attention` reads the last block's attention from ``model(..., output_attentions=True)`` and keeps
  the [CLS] query's weights on the patch tokens, one [h, w] map per head (DINO ``visualize_attention.py``,
  https://github.com/facebookresearch/dino/blob/7c446df5b9f45747937fb0d72314eb9f7b66930a/visualize_attention.py).
- :func:`save_attention_figure` draws one panel per head: the (processed) image with the head's map over it.
- :func:`save_feature_scatter` projects features to 2-D (PCA, or t-SNE with scikit-learn) coloured by label.

Figures are built with ``matplotlib.figure.Figure`` (the Agg canvas; no pyplot state, no display needed).

>>> import torch
>>> from sop_hf import SOPConfig, SOPModel
>>> config = SOPConfig(image_size=28, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
>>> last_block_attention(SOPModel(config), torch.randn(1, 3, 28, 28)).shape
torch.Size([2, 7, 7])
"""

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure

from .features import patch_size_of


@torch.no_grad()
def last_block_attention(
    model: torch.nn.Module, pixel_values: torch.Tensor, threshold: float | None = None
) -> torch.Tensor:
    """[heads, h, w] attention of the [CLS] token on the patches in the last block, for ONE image.

    Args:
        model: An encoder that returns ``attentions`` for ``output_attentions=True`` (``SOPModel``; a
            ``ViTModel`` loaded with ``attn_implementation="eager"``).
        pixel_values: [1, C, H, W] processed image, H and W multiples of the patch size.
        threshold: If set (DINO uses 0.6), each head's map becomes a 0/1 mask of the smallest set of patches that
            holds this fraction of its attention mass. Leave ``None`` for the raw weights.

    Raises:
        ValueError: For a batch of more than one image, or a model that returns no attentions.
    """
    if pixel_values.ndim != 4 or pixel_values.shape[0] != 1:
        raise ValueError(f"pixel_values must be [1, C, H, W], got {list(pixel_values.shape)}")
    if threshold is not None and not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        output = model(pixel_values=pixel_values.to(device), output_attentions=True)
    finally:
        model.train(was_training)
    attentions = getattr(output, "attentions", None)
    if not attentions or attentions[-1] is None:
        raise ValueError(
            f"{type(model).__name__} returned no attentions; load it with attn_implementation='eager' if it uses SDPA"
        )
    patch = patch_size_of(model)
    grid_h, grid_w = pixel_values.shape[-2] // patch, pixel_values.shape[-1] // patch
    last = attentions[-1][0].float()  # [heads, 1 + L (+ registers), 1 + L]
    cls_to_patches = last[:, 0, -grid_h * grid_w :]  # [heads, L]; register tokens, if any, sit before the patches
    if threshold is not None:
        values, order = cls_to_patches.sort(dim=1)  # ascending
        mass = values.cumsum(1) / values.sum(1, keepdim=True)
        keep = (mass > 1 - threshold).float()
        cls_to_patches = torch.zeros_like(keep).scatter_(1, order, keep)
    return cls_to_patches.reshape(-1, grid_h, grid_w).cpu()


def denormalize(pixel_values: torch.Tensor, image_processor=None) -> np.ndarray:
    """[1, C, H, W] processed tensor -> [H, W, 3] float image in [0, 1] (undoes the processor's mean/std)."""
    image = pixel_values[0].float().cpu()
    mean = getattr(image_processor, "image_mean", None)
    std = getattr(image_processor, "image_std", None)
    if mean is not None and std is not None and getattr(image_processor, "do_normalize", True):
        image = image * torch.tensor(std)[:, None, None] + torch.tensor(mean)[:, None, None]
    else:
        image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-8)
    image = image.clamp(0, 1).permute(1, 2, 0).numpy()
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[..., :3]


def _grid(count: int, max_columns: int) -> tuple[int, int]:
    columns = min(count, max_columns)
    return math.ceil(count / columns), columns


def save_attention_figure(
    image: np.ndarray,
    attention: torch.Tensor,
    output: str | Path,
    alpha: float = 0.6,
    max_columns: int = 6,
    title: str | None = None,
) -> int:
    """Write one panel per head -- the image with that head's attention over it -- to ``output`` (PNG).

    Args:
        image: [H, W, 3] floats in [0, 1] (see :func:`denormalize`).
        attention: [heads, h, w] maps (from :func:`last_block_attention`), upsampled to the image (nearest).
        output: PNG path (parent folders are created).
        alpha: Opacity of the map over the image; lower it to see more of the image.
        max_columns: Panels per row.
        title: Figure title.

    Returns:
        The number of panels drawn (= heads).
    """
    heads = attention.shape[0]
    height, width = image.shape[:2]
    maps = torch.nn.functional.interpolate(attention[None].float(), size=(height, width), mode="nearest")[0]
    rows, columns = _grid(heads, max_columns)
    figure = Figure(figsize=(2.4 * columns, 2.4 * rows + (0.4 if title else 0)))
    for head in range(heads):
        axis = figure.add_subplot(rows, columns, head + 1)
        axis.imshow(image)
        axis.imshow(maps[head].numpy(), cmap="inferno", alpha=alpha)
        axis.set_title(f"head {head}", fontsize=9)
        axis.set_axis_off()
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    return heads


def project_2d(features: torch.Tensor, method: str = "pca", seed: int = 0) -> np.ndarray:
    """[N, D] -> [N, 2]: PCA (top-2 principal components, torch SVD) or t-SNE (scikit-learn, slow beyond ~5k).

    Raises:
        ValueError: For an unknown method or fewer than 2 rows.
        ImportError: For t-SNE without scikit-learn.
    """
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows to project, got {features.shape[0]}")
    features = features.float()
    if method == "pca":
        centred = features - features.mean(0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: [min(N, D), D]
        components = vh[:2].T  # [D, <=2]
        points = centred @ components
        if points.shape[1] < 2:
            points = torch.cat((points, torch.zeros_like(points)), dim=1)
        return points.numpy()
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError as error:
            raise ImportError("t-SNE needs scikit-learn: pip install 'sop_hf[eval]'") from error
        perplexity = float(min(30, max(2, (features.shape[0] - 1) // 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(
            features.numpy()
        )
    raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")


def save_feature_scatter(
    features: torch.Tensor,
    labels: torch.Tensor | None,
    output: str | Path,
    method: str = "pca",
    class_names: Sequence[str] | None = None,
    max_points: int = 5000,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Write a 2-D scatter of ``features`` coloured by ``labels`` to ``output`` (PNG).

    Args:
        features: [N, D] features.
        labels: [N] integer labels (or ``None`` for one colour).
        output: PNG path.
        method: ``"pca"`` (fast, linear) or ``"tsne"`` (shows clusters better; minutes for large N).
        class_names: Legend entries by label id (e.g. ``dataset.features["label"].names``).
        max_points: A random subset of this many rows is drawn; lower it for t-SNE.
        seed: Seeds the subset and t-SNE.
        title: Axes title; default names the method.
    """
    if labels is not None and labels.shape[0] != features.shape[0]:
        raise ValueError(f"features ({features.shape[0]}) and labels ({labels.shape[0]}) differ in length")
    if features.shape[0] > max_points:
        keep = torch.randperm(features.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        features = features[keep]
        labels = labels[keep] if labels is not None else None
    points = project_2d(features, method, seed)
    figure = Figure(figsize=(7, 6))
    axis = figure.add_subplot(1, 1, 1)
    if labels is None:
        axis.scatter(points[:, 0], points[:, 1], s=4, alpha=0.7)
    else:
        classes = sorted(int(c) for c in labels.unique())
        palette = colormaps["tab10" if len(classes) <= 10 else "tab20"]  # a legend, not a colorbar, names classes
        for i, label in enumerate(classes):
            mask = (labels == label).numpy()
            name = class_names[label] if class_names is not None and label < len(class_names) else str(label)
            axis.scatter(points[mask, 0], points[mask, 1], s=4, alpha=0.7, color=palette(i % palette.N), label=name)
        if len(classes) <= 20:
            axis.legend(fontsize=7, markerscale=3, loc="best")
    axis.set_title(title or f"{method.upper()} of {features.shape[0]} features")
    axis.set_xticks([])
    axis.set_yticks([])
    figure.tight_layout()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=110)
    return output
