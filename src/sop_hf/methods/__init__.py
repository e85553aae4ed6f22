"""Pretraining methods: a small shared core and one module per method, reached through one registry.

- ``core``: the student / EMA-teacher pair, seeded streams, encoder export, and ``Method`` (a registry entry);
- ``sop``: SOP and SOP-MIM on ``SOPConfig`` (``SOPForPreTraining``);
- ``lineage``: what MaSSL, CARP and CARL share (a config around an encoder ``backbone_config``, heads, forward);
- ``massl``, ``carp``, ``carl``: each method's config, ``...ForPreTraining``, loss wiring and published recipes.

Everything else in the library asks this registry (``get_method``, ``method_of``) instead of comparing method names;
adding a method means adding a module (its config, ``...ForPreTraining``, recipes with a ``demo`` one, and its
``Method``, which declares the logged terms), its loss file and one entry in ``METHODS``.
"""

import dataclasses

from transformers import PreTrainedConfig

from ..configuration_sop import PRESETS
from .carl import CARL, CARLConfig, CARLForPreTraining
from .carp import CARP, CARPConfig, CARPForPreTraining
from .core import Method, StudentTeacherPreTrainedModel
from .dino import DINO
from .ibot import IBOT
from .lineage import LineageConfig, LineageForPreTraining
from .massl import MASSL, MaSSLConfig, MaSSLForPreTraining
from .sop import SOP, SOPForPreTraining, SOPForPreTrainingOutput


def registry(*methods: Method) -> dict[str, Method]:
    """``{name: method}``; every method needs a ``demo`` recipe (the demo, the tests and the method table run it)
    and a unique name, else a ``ValueError`` naming it."""
    table: dict[str, Method] = {}
    for method in methods:
        if "demo" not in method.recipes:
            raise ValueError(f"method {method.name!r} has no 'demo' recipe (recipes: {', '.join(method.recipes)}); "
                             f"every method needs one: the demo, the tests and the method table run it")  # fmt: skip
        if method.name in table:
            raise ValueError(f"method {method.name!r} is registered twice")
        table[method.name] = method
    return table


METHODS: dict[str, Method] = registry(SOP, MASSL, CARP, CARL, DINO, IBOT)


def get_method(name: str) -> Method:
    """The registry entry of ``--method NAME``; a ``ValueError`` lists the choices."""
    if name not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
    return METHODS[name]


def method_of(config_or_model_type) -> Method | None:
    """The method whose pretraining config is ``config_or_model_type`` (a config, or its ``model_type``); None for
    anything else (an encoder config such as a ``ResNetConfig``)."""
    model_type = getattr(config_or_model_type, "model_type", config_or_model_type)
    return next((m for m in METHODS.values() if m.config_class.model_type == model_type), None)


def recipe_owner(name: str, method: str | None = None) -> tuple[str, dict[str, dict]]:
    """(method, recipe) for ``--recipe NAME``: the given method's recipe, or, without a method, the one method that
    has a recipe of that name (``demo`` exists for every method: SOP's when no method is given)."""
    if method is not None:
        recipes = get_method(method).recipes
        if name not in recipes:
            raise ValueError(f"--recipe {name!r} is not a {method} recipe; {method} has {', '.join(recipes)}")
        return method, recipes[name]
    owners = [m for m in METHODS.values() if name in m.recipes]
    if not owners:
        known = sorted({r for m in METHODS.values() for r in m.recipes})
        raise ValueError(f"--recipe must be one of {', '.join(known)}, got {name!r}")
    return owners[0].name, owners[0].recipes[name]


def _expand_preset(values: dict) -> dict:
    values = dict(values)
    preset = values.pop("preset", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
        values = {**PRESETS[preset], **values}
    return values


# Keys a saved config.json carries besides the fields (transformers' own, and the backbone stages SOPConfig derives).
_BASE_FIELDS = {f.name for f in dataclasses.fields(PreTrainedConfig)}
_SAVED_KEYS = _BASE_FIELDS | {"model_type", "auto_map", "out_features", "out_indices", "stage_names"}


def _check_fields(config_class: type[PreTrainedConfig], keys, where: str) -> None:
    """A ``ValueError`` naming the keys that are no field of ``config_class`` (and its fields), for the overrides a
    user types: a config built from a file or a recipe keeps unknown keys as attributes instead (as
    ``PreTrainedConfig`` does), but a typo on the command line must fail."""
    own = {f.name for f in dataclasses.fields(config_class)} - _BASE_FIELDS
    unknown = sorted(
        k for k in set(keys) - own - _SAVED_KEYS if not k.startswith("_") and not hasattr(PreTrainedConfig, k)
    )
    if unknown:
        raise ValueError(f"{where}: unknown {config_class.__name__} field(s) {', '.join(unknown)}; its fields are "
                         f"{', '.join(sorted(f for f in own if not f.startswith('_')))}")  # fmt: skip


def build_config(method: str, values: dict, overrides: dict | None = None) -> PreTrainedConfig:
    """The method's config from a recipe's model section or a saved config (``preset`` expanded, a
    ``backbone_config`` dict with its ``model_type``), then ``overrides`` (``{"field": value}``,
    ``"backbone_config.field"`` for the encoder; a ``"preset"`` override replaces the recipe's encoder sizes).

    An override naming no field is a ``ValueError`` naming it; unknown keys of ``values`` are kept as attributes (a
    ``config.json`` written by a newer version), as ``PreTrainedConfig`` does. An override of ``mim_loss_weight``
    alone also decides the mask token (``use_mask_token`` follows it unless overridden too)."""
    spec = get_method(method)
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    overrides = dict(overrides or {})
    preset = overrides.pop("preset", None)
    _check_fields(spec.config_class, [k for k in overrides if not k.startswith("backbone_config.")],
                  f"--method {method}")  # fmt: skip
    if preset is not None:  # a preset given as an override replaces the sizes the recipe names
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(sorted(PRESETS))}, got {preset!r}")
        target = values["backbone_config"] if isinstance(values.get("backbone_config"), dict) else values
        target.pop("preset", None)
        target.update({**PRESETS[preset], "intermediate_size": 4 * PRESETS[preset]["hidden_size"]})
    for key, value in overrides.items():
        if key.startswith("backbone_config."):
            if not isinstance(values.get("backbone_config"), dict):
                raise ValueError(f"{key}: {spec.config_class.__name__} has no backbone_config to override")
            values["backbone_config"][key.split(".", 1)[1]] = value
        else:
            values[key] = value
    if "mim_loss_weight" in overrides and "use_mask_token" not in overrides:
        values.pop("use_mask_token", None)  # one switch: the mask token follows SOP-MIM
    values = _expand_preset(values)
    backbone = values.get("backbone_config")
    if isinstance(backbone, dict):
        from transformers import AutoConfig

        backbone = _expand_preset(backbone)
        backbone_class = type(AutoConfig.for_model(backbone.pop("model_type", "sop")))
        _check_fields(backbone_class, [k.split(".", 1)[1] for k in overrides if k.startswith("backbone_config.")],
                      f"--method {method} backbone_config")  # fmt: skip
        values["backbone_config"] = backbone_class(**backbone)
    return spec.config_class(**values)


__all__ = [
    "CARD_ALIASES",
    "CARL",
    "CARLConfig",
    "CARLForPreTraining",
    "CARP",
    "CARPConfig",
    "CARPForPreTraining",
    "LineageConfig",
    "LineageForPreTraining",
    "MASSL",
    "METHODS",
    "MaSSLConfig",
    "MaSSLForPreTraining",
    "Method",
    "SOP",
    "SOPForPreTraining",
    "SOPForPreTrainingOutput",
    "StudentTeacherPreTrainedModel",
    "build_config",
    "card_method",
    "get_method",
    "method_of",
    "recipe_owner",
    "registry",
    "uniform_reference",
]


CARD_ALIASES = {"sop-mim": ("sop", "SOP-MIM")}  # model cards of SOP runs with the patch loss


def card_method(name: str) -> tuple[Method, str]:
    """(registry entry, display name) of a model card's ``method``: a registry name or ``"sop-mim"``."""
    if name in CARD_ALIASES:
        method, title = CARD_ALIASES[name]
        return METHODS[method], title
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; choose one of {sorted([*METHODS, *CARD_ALIASES])}")
    return METHODS[name], METHODS[name].title


def uniform_reference(config: PreTrainedConfig) -> tuple[int, str]:
    """(P, symbol) of a pretraining config's uniform-target loss ``ln P`` (the curves' no-learning line)."""
    method = method_of(config) or SOP
    return method.uniform_reference(config)
