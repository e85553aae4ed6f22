"""``--config_overrides`` and run_mim.py's ``--image_size`` / ``--patch_size``: the one reader of both.

The syntax is transformers' ``PretrainedConfig.update_from_string``
("n_embd=10,resid_pdrop=0.2,scale_attn_weights=false,summary_type=cls_index": numbers and strings as they are,
booleans as true/false) with two additions that a pretraining config needs:

- a dotted key reaches the encoder of a lineage method: ``backbone_config.hidden_size=128``;
- a value that parses as JSON is read as JSON, so lists and objects work: ``mask_ratio=[0.1,0.5]``,
  ``backbone_config={"model_type":"resnet"}`` (a comma inside a value is kept: entries split only at a comma that
  starts the next ``FIELD=``).

A boolean field also takes update_from_string's other spellings (yes/no, y/n, 1/0). Field names and values are checked
where the config is built (``sop_hf.methods.build_config``: an unknown field is a ``ValueError`` naming the fields).

>>> parse_config_overrides("num_anchors=128,use_mask_token=True,backbone_config.patch_size=4,name=a,b")
{'num_anchors': 128, 'use_mask_token': True, 'backbone_config.patch_size': 4, 'name': 'a,b'}
"""

import dataclasses
import json
import re

_ENTRY_START = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")  # a comma followed by FIELD=
_TRUE, _FALSE = ("true", "1", "y", "yes"), ("false", "0", "n", "no")  # update_from_string's boolean spellings


def _value(raw: str):
    raw = raw.strip()
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        pass
    if raw.lower() in ("true", "false"):  # Python's True / False, as update_from_string reads them
        return raw.lower() == "true"
    return raw


def parse_config_overrides(text: str | None) -> dict:
    """``"FIELD=VALUE,..."`` as ``{field: value}`` (the module docstring gives the syntax).

    Raises:
        ValueError: An entry without ``=`` or without a field name.
    """
    values = {}
    for entry in filter(None, (s.strip() for s in _ENTRY_START.split(text or ""))):
        key, sep, raw = entry.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--config_overrides entries must be FIELD=VALUE, got {entry!r}")
        values[key.strip()] = _value(raw)
    return values


_BOOLEAN_TYPES = (bool, "bool", bool | None, "bool | None")  # an optional flag (None: follows another field)


def typed_for(config_class: type, values: dict) -> dict:
    """``values`` with update_from_string's boolean spellings (``yes``, ``0`` ...) turned into booleans for the fields
    of ``config_class`` declared ``bool`` (a new dict; dotted keys are left to the encoder's config).

    Raises:
        ValueError: A boolean field given a value that names neither true nor false.
    """
    booleans = {f.name for f in dataclasses.fields(config_class) if f.type in _BOOLEAN_TYPES}
    typed = dict(values)
    for key, value in values.items():
        if key not in booleans or isinstance(value, bool):
            continue
        spelled = str(value).lower()
        if spelled not in _TRUE + _FALSE:
            raise ValueError(f"--config_overrides {key}: can't derive true or false from {value!r}")
        typed[key] = spelled in _TRUE
    return typed


def encoder_size_overrides(model_values: dict, image_size: int | None, patch_size: int | None) -> dict:
    """run_mim.py's ``--image_size`` / ``--patch_size`` as config overrides of the encoder: the config's own fields
    (SOP) or its ``backbone_config``'s (the lineage methods), per the model section ``model_values``."""
    prefix = "backbone_config." if isinstance(model_values.get("backbone_config"), dict) else ""
    sizes = {"image_size": image_size, "patch_size": patch_size}
    return {prefix + name: value for name, value in sizes.items() if value is not None}


__all__ = ["encoder_size_overrides", "parse_config_overrides", "typed_for"]
