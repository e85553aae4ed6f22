"""The structured record a model card is rendered from, saved beside the weights as ``training_record.json``.

The card (``README.md``) is written from this record and never read back: tools that add results to a card
(``sop-hf eval --update_card``, ``update_model_card``) load the record, change it and render the card again. The
training values are also in the card's metadata (``sop_hf_training``), so the Hub shows them as data, not only as a
table.
"""

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult

RECORD_NAME = "training_record.json"

EVAL_FIELDS = {
    "task_type", "dataset_type", "dataset_name", "metric_type", "metric_value", "task_name", "dataset_config",
    "dataset_split", "dataset_revision", "dataset_args", "metric_name", "metric_config", "metric_args",
    "verified", "verify_token", "source_name", "source_url",
}  # fmt: skip


def to_eval_result(result: EvalResult | Mapping[str, Any]) -> EvalResult:
    """An ``EvalResult`` from itself or a dict of its fields; ``task_type`` defaults to image classification."""
    if isinstance(result, EvalResult):
        return result
    if not isinstance(result, Mapping):
        raise TypeError(f"eval_results items must be dicts or huggingface_hub.EvalResult, got {type(result).__name__}")
    unknown = sorted(set(result) - EVAL_FIELDS)
    if unknown:
        raise ValueError(f"Unknown eval result keys {unknown}; use huggingface_hub.EvalResult fields")
    fields = {"task_type": "image-classification", **result}
    if "dataset_type" not in fields and "dataset_name" in fields:
        fields["dataset_type"] = fields["dataset_name"]
    missing = sorted({"dataset_name", "metric_type", "metric_value"} - set(fields))
    if missing:
        raise ValueError(f"Eval result {dict(result)} is missing {missing}")
    return EvalResult(**fields)


def eval_result_dict(result: EvalResult | Mapping[str, Any]) -> dict:
    """An ``EvalResult`` (or its field dict, defaults filled in) as a JSON-ready dict without empty fields."""
    return {k: v for k, v in dataclasses.asdict(to_eval_result(result)).items() if v is not None}


@dataclass
class CardRecord:
    """Everything ``build_model_card`` needs besides the encoder's config.

    Attributes:
        method: Registry name of the pretraining method (``"sop"``, ``"massl"`` ...) or ``"sop-mim"``.
        repo_id: Hub id used in the card's snippets and model-index (None: a placeholder).
        license: SPDX-style Hub license id.
        base_model: Hub id of the checkpoint this one continues from.
        training: What the run recorded (dataset, steps, batch, learning rate, temperatures, method sizes ...).
        training_curves: File name of the training-curves PNG in the folder.
        eval_results: ``EvalResult`` field dicts (model-index and the evaluation table).
    """

    method: str = "sop"
    repo_id: str | None = None
    license: str = "apache-2.0"
    base_model: str | None = None
    training: dict[str, Any] | None = None
    training_curves: str | None = None
    eval_results: list[dict] = field(default_factory=list)

    @classmethod
    def from_card_kwargs(cls, **kwargs) -> "CardRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown model card argument(s) {', '.join(unknown)}; expected {', '.join(sorted(names))}")
        results = [eval_result_dict(r) for r in kwargs.pop("eval_results", None) or ()]
        training = kwargs.pop("training", None)
        return cls(**kwargs, training=dict(training) if training else None, eval_results=results)

    def card_kwargs(self) -> dict:
        """Keyword arguments of ``build_model_card``."""
        return {**dataclasses.asdict(self), "eval_results": [EvalResult(**r) for r in self.eval_results] or None}

    def add_results(self, results: list[dict]) -> None:
        """Add ``results``; a new result replaces an old one of the same task, dataset, split and metric."""
        new = [eval_result_dict(r) for r in results]

        def key(r: dict) -> tuple:
            return tuple(
                r.get(k)
                for k in ("task_type", "dataset_type", "dataset_name", "dataset_split", "metric_type", "metric_name")
            )

        fresh = {key(r) for r in new}
        self.eval_results = [r for r in self.eval_results if key(r) not in fresh] + new

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / RECORD_NAME
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, default=str) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "CardRecord | None":
        """The record of ``folder`` (None when it has none: a folder from elsewhere or an older export)."""
        path = Path(folder) / RECORD_NAME
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


__all__ = ["EVAL_FIELDS", "RECORD_NAME", "CardRecord", "eval_result_dict", "to_eval_result"]
