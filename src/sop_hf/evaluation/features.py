"""Feature extraction of a frozen encoder over a ``datasets`` dataset: batched, with a progress bar.

Images go through the encoder's image processor (or any callable that maps a list of PIL images to a
``{"pixel_values": tensor}`` batch); the [CLS] token after the final norm (``pooler_output``) is returned.
"""

import torch
from tqdm.auto import tqdm


def _to_rgb(image):
    return image if image.mode == "RGB" else image.convert("RGB")


@torch.no_grad()
def extract_features(
    model,
    dataset,
    image_processor,
    batch_size: int = 256,
    image_column: str = "image",
    label_column: str | None = "label",
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return ([N, D] float32 [CLS] features, [N] labels or None) for every row of ``dataset``.

    Args:
        model: an encoder returning ``pooler_output`` (``SOPModel``, ``ViTModel`` without pooler uses token 0).
        dataset: a ``datasets.Dataset`` (or any sequence of dicts) with ``image_column``.
        image_processor: e.g. ``SOPImageProcessor``; called with a list of RGB PIL images.
        dtype: autocast dtype on GPU (``torch.bfloat16`` / ``torch.float16``); features are returned in float32.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    features, labels = [], []
    has_labels = label_column is not None and label_column in getattr(dataset, "column_names", [label_column])
    total = len(dataset)
    for start in tqdm(range(0, total, batch_size), desc="features", disable=not progress, leave=False):
        rows = dataset[start : start + batch_size]
        images = [_to_rgb(image) for image in rows[image_column]]
        pixel_values = image_processor(images, return_tensors="pt")["pixel_values"].to(device)
        autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype is not None and device.type == "cuda")
        with autocast:
            output = model(pixel_values=pixel_values)
        pooled = output.pooler_output if getattr(output, "pooler_output", None) is not None else None
        if pooled is None:
            pooled = output.last_hidden_state[:, 0]
        features.append(pooled.float().cpu())
        if has_labels:
            labels.append(torch.as_tensor(rows[label_column]))
    model.train(was_training)
    return torch.cat(features), (torch.cat(labels) if has_labels else None)
