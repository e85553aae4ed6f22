"""Model cards of exported encoders: ``build_model_card`` writes the README, ``training_from_card`` reads it back.

The card has Hub front matter (``library_name``, ``pipeline_tag``, tags, license, ``model-index`` from evaluation
results) and a body with the method, the architecture (``SOPModel`` ViT or stock ``ResNetModel``), the training
recipe, the evaluation table, usage snippets and citations. ``sop_hf.hub`` saves and pushes it with the weights.

>>> from sop_hf import SOPConfig
>>> config = SOPConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
>>> card = build_model_card(config, training={"dataset": "fashion_mnist", "num_train_epochs": 10})
>>> card.data.pipeline_tag, "sop_hf" in card.data.tags
('image-feature-extraction', True)
>>> training_from_card(str(card))["num_train_epochs"]
10
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import ResNetModel

from .configuration_sop import PRESETS, SOPConfig
from .modeling_sop import SOPModel

NOT_RECORDED = "not recorded"

# Method name -> (display name, one-paragraph summary). "sop" and "sop-mim" cite SOP only.
METHODS: dict[str, tuple[str, str]] = {
    "sop": (
        "SOP",
        "SOP learns without a learnable prototype layer. The EMA teacher's [CLS] embeddings fill a FIFO memory "
        "bank; every step draws random *anchors* from the bank and attaches to each one its k nearest "
        "*support embeddings*. An anchor and its supports form a self-organizing prototype: a view is scored "
        "against all support embeddings, each support votes for its prototype with a soft label (the anchor "
        "votes most strongly), and the student is trained to reproduce the teacher's voted distribution over "
        "prototypes across views. Several independent anchor draws (tasks) are averaged per step.",
    ),
    "sop-mim": (
        "SOP-MIM",
        "SOP with masked image modelling. Besides the [CLS] objective of SOP (anchors drawn from a memory bank "
        "of teacher embeddings, k nearest support embeddings voting with soft labels), the student sees "
        "block-masked global crops and must match, for every masked patch, the teacher's assignment of the "
        "unmasked patch to prototypes drawn from a second memory bank of patch embeddings.",
    ),
    "massl": (
        "MaSSL",
        "MaSSL compares every view with a non-parametric memory of recent teacher embeddings. The memory is cut "
        "into random blocks, and the student's similarity distribution over each block must match the "
        "teacher's for the other view. SOP extends this idea with anchors and voting support embeddings.",
    ),
    "carp": (
        "CARP",
        "CARP learns a large set of prototypes online and splits them into random blocks at every step; the "
        "assignments of two views must agree inside each block, and a uniform prior per block prevents collapse.",
    ),
    "carl": (
        "CARL",
        "CARL learns a set of general prototypes by gradient descent and asks different views of an image to be "
        "assigned consistently to them, with an entropy term that keeps the assignments spread out.",
    ),
}

_SOP_BIBTEX = """@inproceedings{silva2025sop,
  title         = {Self-Organizing Visual Prototypes for Non-Parametric Representation Learning},
  author        = {Silva, Thalles and Pedrini, Helio and Ram{\\'\\i}rez Rivera, Ad{\\'\\i}n},
  booktitle     = {Proceedings of the 42nd International Conference on Machine Learning (ICML)},
  year          = {2025},
  eprint        = {2505.21533},
  archivePrefix = {arXiv}
}"""

_LINEAGE_BIBTEX = {
    "massl": """@inproceedings{silva2024massl,
  title         = {Learning from Memory: Non-Parametric Memory Augmented Self-Supervised Learning of Visual Features},
  author        = {Silva, Thalles and Pedrini, Helio and Ram{\\'\\i}rez Rivera, Ad{\\'\\i}n},
  booktitle     = {Proceedings of the 41st International Conference on Machine Learning (ICML)},
  year          = {2024},
  eprint        = {2407.17486},
  archivePrefix = {arXiv}
}""",
    "carp": """@inproceedings{silva2023carp,
  title         = {Representation Learning via Consistent Assignment of Views over Random Partitions},
  author        = {Silva, Thalles and Ram{\\'\\i}rez Rivera, Ad{\\'\\i}n},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2023},
  eprint        = {2310.12692},
  archivePrefix = {arXiv}
}""",
    "carl": """@inproceedings{silva2022carl,
  title         = {Representation Learning via Consistent Assignment of Views to Clusters},
  author        = {Silva, Thalles and Ram{\\'\\i}rez Rivera, Ad{\\'\\i}n},
  booktitle     = {Proceedings of the 37th ACM/SIGAPP Symposium on Applied Computing (SAC)},
  year          = {2022},
  eprint        = {2112.15421},
  archivePrefix = {arXiv}
}""",
}

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
# SOP sizes; when `training` is given but lacks one, the config value is used (it shaped the banks in training).
_SOP_ROWS: list[tuple[str, str]] = [
    ("Class memory size K", "class_memory_size"),
    ("Anchors per task P", "num_anchors"),
    ("Support embeddings per prototype E", "num_support"),
    ("Tasks per step T", "num_tasks"),
    ("Patch memory size", "patch_memory_size"),
    ("Patch anchors per task", "num_patch_anchors"),
    ("SOP-MIM loss weight", "mim_loss_weight"),
]
_EVAL_FIELDS = {
    "task_type", "dataset_type", "dataset_name", "metric_type", "metric_value", "task_name", "dataset_config",
    "dataset_split", "dataset_revision", "dataset_args", "metric_name", "metric_config", "metric_args",
    "verified", "verify_token", "source_name", "source_url",
}  # fmt: skip


_RECIPE_TABLE = re.compile(r"## Training recipe\n\n(?P<intro>[^\n]*)\n\n\| Setting \| Value \|\n\|---\|---\|\n"
                           r"(?P<rows>(?:\|[^\n]*\|\n?)*)")  # fmt: skip


def _parse_value(text: str):
    text = text.strip().replace("\\|", "|")
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def training_from_card(text: str) -> dict | None:
    """The ``training`` dict of ``build_model_card``, read back from a card's "Training recipe" table."""
    match = _RECIPE_TABLE.search(text)
    if match is None or match.group("intro").startswith("No training information"):
        return None
    keys = {label: names[0] for label, names in _RECIPE_ROWS} | dict(_SOP_ROWS)  # row label -> training key
    training = {}
    for line in match.group("rows").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if len(cells) != 2 or cells[1] == NOT_RECORDED:
            continue
        label, value = cells
        key = label.strip("`") if label.startswith("`") else keys.get(label)
        if key is not None:
            training[key] = _parse_value(value)
    return training or None


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


def _to_eval_result(result: EvalResult | Mapping[str, Any]) -> EvalResult:
    """An ``EvalResult`` from itself or a dict of its fields; ``task_type`` defaults to image classification."""
    if isinstance(result, EvalResult):
        return result
    if not isinstance(result, Mapping):
        raise TypeError(f"eval_results items must be dicts or huggingface_hub.EvalResult, got {type(result).__name__}")
    unknown = sorted(set(result) - _EVAL_FIELDS)
    if unknown:
        raise ValueError(f"Unknown eval result keys {unknown}; use huggingface_hub.EvalResult fields")
    fields = {"task_type": "image-classification", **result}
    if "dataset_type" not in fields and "dataset_name" in fields:
        fields["dataset_type"] = fields["dataset_name"]
    missing = sorted({"dataset_name", "metric_type", "metric_value"} - set(fields))
    if missing:
        raise ValueError(f"Eval result {dict(result)} is missing {missing}")
    return EvalResult(**fields)


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


def _recipe_section(config: SOPConfig, method: str, training: Mapping[str, Any] | None) -> str:
    if not training:
        intro = (
            "No training information was recorded with this export; every value below is a placeholder. Pass "
            "`training={...}` to `build_model_card` / `save_encoder` to fill them in."
        )
    else:
        intro = "Values recorded by the training run."
        if method in ("sop", "sop-mim"):
            intro += " SOP sizes missing from the record are read from the encoder config."
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
    if method in ("sop", "sop-mim"):
        for label, key in _SOP_ROWS:
            used.add(key)
            value = training.get(key)
            if value is None and training and key != "mim_loss_weight":  # the export sets mim_loss_weight to 0
                value = getattr(config, key)
            rows.append((label, NOT_RECORDED if value is None else value))
    others = {k: v for k, v in training.items() if k not in used and isinstance(v, (int, float, str, bool))}
    rows.extend((f"`{key}`", value) for key, value in sorted(others.items()))
    table = "\n".join(f"| {label} | {_format_value(value)} |" for label, value in rows)
    return f"## Training recipe\n\n{intro}\n\n| Setting | Value |\n|---|---|\n{table}\n"


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
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {sorted(METHODS)}")
    display, summary = METHODS[method]
    repo = repo_id or "<repo_id>"
    results = [_to_eval_result(r) for r in eval_results or ()]
    card_data = ModelCardData(
        # library_name "transformers" makes the Hub show the AutoModel snippet and route the widget through
        # transformers (with remote code); the `sop_hf` tag still marks the library that produced the model.
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        license=license,
        tags=["sop_hf", "self-supervised-learning", "vision", "image-feature-extraction", method],
        base_model=base_model,
        datasets=[training["dataset"]] if training and isinstance(training.get("dataset"), str) else None,
        model_name=(repo_id or f"{method}-{'resnet' if is_resnet_config(config) else 'vit'}") if results else None,
        eval_results=results or None,
    )
    if method in ("sop", "sop-mim"):
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
        f"## Method\n\n{summary}\n\n{context}\n",
        _architecture_section(config),
        _recipe_section(config, method, training),
    ]
    if training_curves:
        parts.append(f"## Training curves\n\n![Training curves]({training_curves})\n")
    parts += [_evaluation_section(results), (_resnet_usage_section if is_resnet_config(config) else _usage_section)(repo)]
    citations = [_SOP_BIBTEX] + ([_LINEAGE_BIBTEX[method]] if method in _LINEAGE_BIBTEX else [])
    parts.append("## Citation\n\n" + "\n\n".join(f"```bibtex\n{c}\n```" for c in citations) + "\n")
    body = "\n".join(parts)
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")


__all__ = ["METHODS", "NOT_RECORDED", "build_model_card", "count_parameters", "is_resnet_config", "training_from_card"]
