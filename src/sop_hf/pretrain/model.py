"""The pretraining model of a run, and the weights of a checkpoint to evaluate without training (``--do_train false``).

The config comes from one of three places: ``--model_name_or_path`` (a pretraining checkpoint, with its own config),
``--config_name`` (a config file or folder) or the recipe's model section; the last two then take ``--preset``,
``--config_overrides`` and ``--image_size`` / ``--patch_size``, checked by ``methods.build_config``.
"""

import os

from safetensors.torch import load_file
from transformers import PretrainedConfig, TrainerState

from ..methods import build_config, get_method
from .overrides import encoder_size_overrides, typed_for


def build_model(model_args, recipe_values: dict):
    """(config, model): from --model_name_or_path, or a fresh model of the recipe's (or --config_name's) config with
    --preset / --config_overrides / --image_size / --patch_size applied."""
    spec = get_method(model_args.method)
    overrides = model_args.overrides()
    sizes = {"--image_size": model_args.image_size, "--patch_size": model_args.patch_size}
    if model_args.model_name_or_path:
        given = [flag for flag, value in sizes.items() if value is not None]
        if overrides or model_args.config_name or given:
            raise ValueError("--model_name_or_path brings its own config: drop --config_name / --config_overrides"
                             + "".join(f" / {flag}" for flag in given))  # fmt: skip
        model = spec.model_class.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir,
                                                 revision=model_args.model_revision, token=model_args.token,
                                                 trust_remote_code=model_args.trust_remote_code)  # fmt: skip
        return model.config, model
    values = recipe_values["model"]
    if model_args.config_name:
        values, _ = PretrainedConfig.get_config_dict(model_args.config_name)  # a file or folder: read, never run
        if values.get("model_type", spec.config_class.model_type) != spec.config_class.model_type:
            raise ValueError(f"--config_name {model_args.config_name} holds a {values['model_type']!r} config, not the "
                             f"{spec.config_class.model_type!r} config of --method {model_args.method}")  # fmt: skip
    overrides = {**typed_for(spec.config_class, overrides),
                 **encoder_size_overrides(values, model_args.image_size, model_args.patch_size)}  # fmt: skip
    config = build_config(model_args.method, values, overrides)
    return config, spec.model_class(config)


def load_checkpoint(model, checkpoint: str) -> TrainerState:
    """Load a Trainer checkpoint's weights (memory banks included) into ``model`` and return its ``TrainerState``
    (global step, epoch, log history), with public functions only: safetensors and ``TrainerState.load_from_json``.

    Raises:
        ValueError: The checkpoint lacks its weights or state, or its weights do not fit ``model``.
    """
    weights, state = os.path.join(checkpoint, "model.safetensors"), os.path.join(checkpoint, "trainer_state.json")
    missing = [os.path.basename(p) for p in (weights, state) if not os.path.exists(p)]
    if missing:
        raise ValueError(f"{checkpoint} is not a complete checkpoint: {', '.join(missing)} missing")
    result = model.load_state_dict(load_file(weights), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(f"{weights} does not fit the {type(model).__name__} of this run: missing "
                         f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]}")  # fmt: skip
    return TrainerState.load_from_json(state)


__all__ = ["build_model", "load_checkpoint"]
