"""Model cards of exported encoders: ``build_model_card`` renders the README from a structured record.

The card is never read back: ``save_encoder`` saves the record (``record.CardRecord``) as ``training_record.json``
beside the weights, and ``update_model_card`` loads that record, adds results and renders the card again.

The card has Hub front matter (``library_name``, ``pipeline_tag``, tags, license, ``model-index`` from evaluation
results) and a body with the method, the architecture (``SOPModel`` ViT or stock ``ResNetModel``), the training
recipe, the evaluation table, usage snippets and citations. ``sop_hf.hub.save`` saves and pushes it with the weights.

>>> from sop_hf import SOPConfig
>>> config = SOPConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
>>> card = build_model_card(config, training={"dataset": "fashion_mnist", "num_train_epochs": 10})
>>> card.data.pipeline_tag, "sop_hf" in card.data.tags
('image-feature-extraction', True)
>>> card.data.sop_hf_training["num_train_epochs"]
10
"""

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import ResNetConfig, ResNetModel

from ..configuration_sop import PRESETS, SOPConfig
from ..data.sources import dataset_identity
from ..methods import CARD_ALIASES, METHODS, SOP, card_method
from ..modeling_sop import SOPModel
from .record import RECORD_NAME, CardRecord, eval_result_dict, to_eval_result

logger = logging.getLogger(__name__)

NOT_RECORDED = "not recorded"

# Training-recipe rows: (label, keys accepted in `training`, first one wins). Aliases cover the names of
# `SOPTrainingArguments` / `TrainingArguments` and short hand-written ones.
_RECIPE_ROWS: list[tuple[str, tuple[str, ...]]] = [
    ("Dataset", ("dataset", "dataset_name")),
    ("Epochs", ("num_train_epochs", "epochs")),
    ("Optimizer steps", ("max_steps", "steps", "global_step")),
    ("Global batch size", ("global_batch_size", "total_batch_size")),
    ("Peak learning rate", ("learning_rate", "lr")),
    ("Final learning rate", ("min_lr",)),
    ("Warm-up epochs", ("warmup_epochs",)),
    ("Weight decay", ("weight_decay",)),
    ("Optimizer", ("optimizer", "optim")),
    ("Teacher EMA momentum", ("momentum_teacher",)),
    ("Student temperature", ("student_temp",)),
    ("Teacher temperature", ("teacher_temp",)),
    ("Teacher temperature warm-up start", ("warmup_teacher_temp",)),
    ("Teacher patch temperature", ("teacher_patch_temp",)),
    ("Global crops / local crops", ("crops", "num_local_crops", "local_crops_number")),
    ("Hardware", ("hardware",)),
]


# ResNet depth names by (block type, blocks per stage)
_RESNET_NAMES = {
    ("basic", (2, 2, 2, 2)): "ResNet-18", ("basic", (3, 4, 6, 3)): "ResNet-34",
    ("bottleneck", (3, 4, 6, 3)): "ResNet-50", ("bottleneck", (3, 4, 23, 3)): "ResNet-101",
    ("bottleneck", (3, 8, 36, 3)): "ResNet-152",
}  # fmt: skip


def is_resnet_config(config) -> bool:
    """True for a transformers ``ResNetConfig`` (the exported encoder of ResNet lineage runs)."""
    return getattr(config, "model_type", None) == "resnet"


def count_parameters(config) -> int:
    """Parameters of the encoder ``config`` describes (``SOPModel`` or ``ResNetModel``), counted on the meta device."""
    with torch.device("meta"):
        model = ResNetModel(config) if is_resnet_config(config) else SOPModel(config)
    return sum(p.numel() for p in model.parameters())


def _format_count(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f}{unit} ({count:,})"
    return f"{count:,}"


def _architecture_name(config) -> str:
    """``ViT-S/16`` / ``ResNet-50`` for the standard sizes, else ``ViT (width 32, depth 2, patch 8)`` and so on."""
    if is_resnet_config(config):
        name = _RESNET_NAMES.get((config.layer_type, tuple(config.depths)))
        if name and config.hidden_sizes[-1] == (2048 if config.layer_type == "bottleneck" else 512):
            return name
        return f"ResNet ({config.layer_type} blocks, depths {_format_value(config.depths)})"
    for name, dims in PRESETS.items():
        if all(getattr(config, key) == value for key, value in dims.items()):
            return f"ViT-{name.split('_')[1][0].upper()}/{config.patch_size}"
    return f"ViT (width {config.hidden_size}, depth {config.num_hidden_layers}, patch {config.patch_size})"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return " / ".join(_format_value(v) for v in value)
    return str(value).replace("|", "\\|")  # a bare pipe would split the Markdown table cell


def _global_batch_size(training: Mapping[str, Any]) -> Any:
    for key in ("global_batch_size", "total_batch_size"):
        if training.get(key) is not None:
            return training[key]
    per_device = training.get("per_device_train_batch_size")
    if per_device is None:
        return None
    return per_device * training.get("world_size", 1) * training.get("gradient_accumulation_steps", 1)


def _architecture_section(config) -> str:
    if is_resnet_config(config):
        rows = [
            ("Backbone", f"transformers `ResNetModel`, {config.layer_type} blocks"),
            ("Blocks per stage", config.depths),
            ("Stage widths", config.hidden_sizes),
            ("Stem width", config.embedding_size),
            ("Input channels", config.num_channels),
            ("Parameters", _format_count(count_parameters(config))),
            ("Features", "`pooler_output`: global average pool of the last stage, [B, width, 1, 1]"),
        ]
    else:
        rows = [
            ("Backbone", "pre-norm ViT (DINO/iBOT style), no layer-scale"),
            ("Image size", f"{config.image_size} px (position embeddings interpolate to other sizes)"),
            ("Patch size", f"{config.patch_size} px"),
            ("Width", config.hidden_size),
            ("Depth", config.num_hidden_layers),
            ("Attention heads", config.num_attention_heads),
            ("MLP width", config.intermediate_size),
            ("Input channels", config.num_channels),
            ("Parameters", _format_count(count_parameters(config))),
            ("Features", "`pooler_output`: final [CLS] token after the last LayerNorm"),
        ]
    table = "\n".join(f"| {name} | {_format_value(value)} |" for name, value in rows)
    return f"## Architecture\n\n| | |\n|---|---|\n{table}\n"


def _recipe_section(
    config: SOPConfig, card_rows: tuple[tuple[str, str], ...], training: Mapping[str, Any] | None
) -> str:
    if not training:
        intro = (
            "No training information was recorded with this export; every value below is a placeholder. Pass "
            "`training={...}` to `build_model_card` / `save_encoder` to fill them in."
        )
    else:
        intro = "Values recorded by the training run."
        if any(hasattr(config, key) for _, key in card_rows):
            intro += " Method sizes missing from the record are read from the encoder config."
    training = dict(training or {})
    used = {"per_device_train_batch_size", "world_size", "gradient_accumulation_steps"}  # -> global batch size
    rows = []
    for label, keys in _RECIPE_ROWS:
        used.update(keys)
        if label == "Global batch size":
            value = _global_batch_size(training)
        else:
            value = next((training[key] for key in keys if training.get(key) is not None), None)
        rows.append((label, NOT_RECORDED if value is None else value))
    for label, key in card_rows:
        used.add(key)
        value = training.get(key)
        if value is None and training and key != "mim_loss_weight":  # the export sets mim_loss_weight to 0
            value = getattr(config, key, None)
        rows.append((label, NOT_RECORDED if value is None else value))
    others = {k: v for k, v in training.items() if k not in used and isinstance(v, (int, float, str, bool))}
    rows.extend((f"`{key}`", value) for key, value in sorted(others.items()))
    table = "\n".join(f"| {label} | {_format_value(value)} |" for label, value in rows)
    return f"## Training recipe\n\n{intro}\n\n| Setting | Value |\n|---|---|\n{table}\n"


def _recorded_mim_weight(method: str, training: Mapping[str, Any] | None) -> float | None:
    """The SOP-MIM weight the run used: the record's ``mim_loss_weight`` (the exported config always says 0), or
    None when unrecorded. A card named ``"sop-mim"`` whose record says 0 would claim what the run did not do."""
    value = (training or {}).get("mim_loss_weight")
    if value is None:
        return None
    weight = float(value)
    if method == "sop-mim" and weight <= 0:
        raise ValueError(f"method 'sop-mim' but the training record says mim_loss_weight={value}: the run trained "
                         "without SOP-MIM; save it as method 'sop'")  # fmt: skip
    return weight


def _mim_sentence(mim_weight: float | None) -> str:
    """What the card says about SOP-MIM, from the run's record only."""
    if mim_weight is None:
        return (" SOP-MIM, an optional masked-patch loss, is not described here: this run did not record "
                "`mim_loss_weight`.")  # fmt: skip
    if mim_weight > 0:
        return (f" This encoder was trained with SOP-MIM (patch loss weight {mim_weight:g}): the student also saw "
                "block-masked global crops and matched, for every masked patch, the teacher's assignment of the "
                "unmasked patch to prototypes drawn from a second memory of patch embeddings.")  # fmt: skip
    return " This run trained the [CLS] loss only: SOP-MIM, the optional masked-patch loss, was off."


def _evaluation_section(results: list[EvalResult]) -> str:
    if not results:
        return (
            "## Evaluation\n\nNo evaluation recorded yet — run "
            "`sop-eval ... --update-card` to add k-NN / linear-probe results here.\n"
        )
    rows = "\n".join(
        f"| {r.task_name or r.task_type} | {r.dataset_name} | {r.dataset_split or '—'} | "
        f"{r.metric_name or r.metric_type} | {_format_value(r.metric_value)} |"
        for r in results
    )
    return (
        "## Evaluation\n\n| Task | Dataset | Split | Metric | Value |\n|---|---|---|---|---|\n"
        f"{rows}\n\nThe same numbers are in the card's `model-index` metadata.\n"
    )


def _resnet_usage_section(repo: str) -> str:
    return f"""## How to use

The encoder is a stock transformers `ResNetModel` with a stock image processor: no extra package and no remote code.

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("{repo}")
model = AutoModel.from_pretrained("{repo}").eval()
inputs = processor(images=Image.open("image.jpg"), return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
features = outputs.pooler_output.flatten(1)  # [1, width]: the global embedding, for k-NN / linear probes
feature_map = outputs.last_hidden_state  # [1, width, h, w]
```

With the feature-extraction pipeline (`pool=True` returns the pooled embedding):

```python
from transformers import pipeline

extractor = pipeline("image-feature-extraction", model="{repo}")
features = extractor("image.jpg", pool=True)
```
"""


def _usage_section(repo: str) -> str:
    return f"""## How to use

The repository carries its own code, so only `transformers` is needed (hence `trust_remote_code=True`):

```python
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModel

processor = AutoImageProcessor.from_pretrained("{repo}", trust_remote_code=True)
model = AutoModel.from_pretrained("{repo}", trust_remote_code=True).eval()
inputs = processor(images=Image.open("image.jpg"), return_tensors="pt")
with torch.no_grad():
    outputs = model(**inputs)
features = outputs.pooler_output  # [1, width]: the [CLS] embedding, for k-NN / linear probes
patch_tokens = outputs.last_hidden_state[:, 1:]  # [1, num_patches, width]
```

With the feature-extraction pipeline (`pool=True` returns the [CLS] embedding):

```python
from transformers import pipeline

extractor = pipeline("image-feature-extraction", model="{repo}", trust_remote_code=True)
features = extractor("image.jpg", pool=True)
```

With `sop_hf` installed, importing it registers the classes, so the installed code is used and nothing from the
repository is executed:

```python
import sop_hf  # registers SOPConfig / SOPModel / SOPImageProcessor with the Auto classes
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("{repo}")
processor = AutoImageProcessor.from_pretrained("{repo}")
```
"""


def build_model_card(
    config: SOPConfig,
    *,
    method: str = "sop",
    repo_id: str | None = None,
    license: str = "apache-2.0",
    training: Mapping[str, Any] | None = None,
    eval_results: Sequence[EvalResult | Mapping[str, Any]] | None = None,
    base_model: str | None = None,
    training_curves: str | None = None,
) -> ModelCard:
    """Build the README (model card) of an exported SOP encoder.

    Args:
        config: The encoder's config (architecture table; SOP sizes of the recipe when ``training`` is given).
        method: Pretraining method: ``"sop"``, ``"sop-mim"``, ``"massl"``, ``"carp"`` or ``"carl"``. It becomes a
            tag, picks the summary and adds the method's paper to the citations.
        repo_id: Hub id used in the snippets and as the ``model-index`` name; ``None`` writes ``<repo_id>``.
        license: SPDX-style Hub license id.
        training: What the run recorded: ``dataset``, ``num_train_epochs``, ``max_steps``, ``global_batch_size``
            (or ``per_device_train_batch_size`` [+ ``world_size``, ``gradient_accumulation_steps``]),
            ``learning_rate``, temperatures, SOP sizes, ... Missing values are written as "not recorded"; other
            scalar keys are listed as they are.
        eval_results: ``huggingface_hub.EvalResult`` objects, or dicts of their fields (``task_type`` defaults
            to ``"image-classification"``, ``dataset_type`` to ``dataset_name``). They fill ``model-index`` and
            the evaluation table.
        base_model: Hub id of the checkpoint this one continues from, if any.
        training_curves: File name (relative to the repository) of a training-curves PNG to show.

    Returns:
        A ``huggingface_hub.ModelCard``; ``card.save(path)`` writes it, ``str(card)`` is the README text.

    Raises:
        ValueError: For an unknown ``method`` or a malformed evaluation result.
    """
    spec, display = card_method(method)
    mim_weight = _recorded_mim_weight(method, training)
    if spec is SOP and mim_weight is not None:
        display = "SOP-MIM" if mim_weight > 0 else "SOP"  # what the run trained, whatever name it was saved under
    repo = repo_id or "<repo_id>"
    results = [to_eval_result(r) for r in eval_results or ()]
    card_data = ModelCardData(
        # library_name "transformers" makes the Hub show the AutoModel snippet and route the widget through
        # transformers (with remote code); the `sop_hf` tag still marks the library that produced the model.
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        license=license,
        tags=["sop_hf", "self-supervised-learning", "vision", "image-feature-extraction", method]
        + (["sop-mim"] if display == "SOP-MIM" and method != "sop-mim" else []),
        base_model=base_model,
        datasets=[training["dataset"]] if training and isinstance(training.get("dataset"), str) else None,
        model_name=(repo_id or f"{method}-{'resnet' if is_resnet_config(config) else 'vit'}") if results else None,
        eval_results=results or None,
        sop_hf_training=dict(training) if training else None,  # the recorded values as data, not only a table
    )
    if spec is SOP:
        context = (
            "Paper: *Self-Organizing Visual Prototypes for Non-Parametric Representation Learning* (ICML 2025, "
            "[arXiv:2505.21533](https://arxiv.org/abs/2505.21533))."
        )
    else:
        context = (
            f"`sop_hf` is built around SOP (*Self-Organizing Visual Prototypes for Non-Parametric Representation "
            "Learning*, ICML 2025, [arXiv:2505.21533](https://arxiv.org/abs/2505.21533)), which draws prototypes "
            "from a memory bank of teacher embeddings as anchors plus k nearest support embeddings voting with "
            f"soft labels; {display} is one of its predecessors and shares its training loop and export format."
        )
    if is_resnet_config(config):
        network, outputs = "convolutional network (ResNet)", "the average-pooled last feature map) and the feature map"
    else:
        network, outputs = "vision transformer", "the [CLS] token) and per-patch tokens"
    parts = [
        f"# {display} {_architecture_name(config)} image encoder\n",
        f"A self-supervised {network} pretrained with **{display}** and exported with `sop_hf`. It maps an image "
        f"to a global embedding ({outputs}, for k-NN classification, linear probing, retrieval or fine-tuning. "
        "Only the encoder is included: projection heads, the EMA teacher and the memory banks or prototypes stay "
        "with the training checkpoint.\n",
        f"## Method\n\n{spec.summary}{_mim_sentence(mim_weight) if spec is SOP else ''}\n\n{context}\n",
        _architecture_section(config),
        _recipe_section(config, spec.card_rows, training),
    ]
    if training_curves:
        parts.append(f"## Training curves\n\n![Training curves]({training_curves})\n")
    parts += [
        _evaluation_section(results),
        (_resnet_usage_section if is_resnet_config(config) else _usage_section)(repo),
    ]
    citations = [SOP.citation] + ([spec.citation] if spec is not SOP else [])
    parts.append("## Citation\n\n" + "\n\n".join(f"```bibtex\n{c}\n```" for c in citations) + "\n")
    body = "\n".join(parts)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


__all__ = ["NOT_RECORDED", "build_model_card", "count_parameters", "is_resnet_config", "update_model_card"]


def card_results(command: str, results: dict[str, float], data, extra: str = "") -> list[dict]:
    """Model-index entries (``EvalResult`` field dicts) for the printed results.

    Classification entries carry no ``task_name``: the model-index groups results by task type and dataset and keeps
    one task name per group, so k-NN and linear results are told apart by ``metric_name`` instead.
    """
    dataset_type, dataset_name = dataset_identity(data.test_data or data.train_data)
    split = data.test_split + (f" (random {data.max_samples})" if data.max_samples else "")
    entries = []
    for key, value in results.items():
        if command == "retrieval":
            task = {"task_type": "image-feature-extraction", "task_name": "Image retrieval",
                    "metric_type": "map", "metric_name": f"mAP ({extra})"}  # fmt: skip
        elif command == "linear":
            task = {"task_type": "image-classification",
                    "metric_type": "accuracy", "metric_name": f"linear probe top-1 ({extra})"}  # fmt: skip
        else:
            k = key.split("@")[1]
            task = {"task_type": "image-classification",
                    "metric_type": "accuracy", "metric_name": f"k-NN top-1 (k={k})"}  # fmt: skip
        entries.append({**task, "dataset_type": dataset_type, "dataset_name": dataset_name, "dataset_split": split,
                        "metric_value": round(float(value), 6)})  # fmt: skip
    return entries


def update_model_card(model_dir: str | os.PathLike, results: list[dict]) -> Path:
    """Add ``results`` to the card of an encoder folder: new results replace same-named ones, others stay.

    The folder's ``training_record.json`` (written by ``save_encoder``) holds what the card is rendered from; it is
    updated and the README rendered again. A folder without a record (exported elsewhere or by an older version) gets
    one from its card's metadata (method tag, license, base model, results); its training table cannot be carried over.
    Raises ``ValueError`` if ``model_dir`` is not a local encoder folder that sop_hf exported: an ``SOPModel``, or a
    stock ``ResNetModel`` whose card carries the ``sop_hf`` tag (ResNet lineage runs).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise ValueError(f"--update-card needs a local model folder, got {str(model_dir)!r}")
    readme = model_dir / "README.md"
    card = ModelCard.load(readme) if readme.is_file() else None
    config_dict, _ = SOPConfig.get_config_dict(str(model_dir))
    model_type = config_dict.get("model_type")
    record = CardRecord.load(model_dir)
    ours = record is not None or "sop_hf" in ((card.data.tags or []) if card is not None else [])
    if not (model_type == SOPConfig.model_type or (model_type == ResNetConfig.model_type and ours)):
        raise ValueError(
            f"--update-card writes sop_hf model cards and needs a SOP model folder; {str(model_dir)!r} has "
            f"model_type={model_type!r} (a ResNet folder qualifies when sop_hf exported it: its card has the sop_hf tag)"
        )
    config = (SOPConfig if model_type == SOPConfig.model_type else ResNetConfig).from_pretrained(model_dir)
    if record is None:
        record = CardRecord()
        if card is not None:
            names = [tag for tag in (card.data.tags or []) if tag in METHODS or tag in CARD_ALIASES]
            record = CardRecord(method=names[0] if names else "sop", license=card.data.license or "apache-2.0",
                                base_model=card.data.base_model, training=card.data.get("sop_hf_training"),
                                eval_results=[eval_result_dict(r) for r in card.data.eval_results or []])  # fmt: skip
            logger.warning("%s has no %s: the card is rebuilt from its metadata", model_dir, RECORD_NAME)
    record.add_results(results)
    record.save(model_dir)
    build_model_card(config, **record.card_kwargs()).save(readme)
    return readme
