"""Load an encoder back: from an encoder folder or Hub id (``AutoModel``), or the teacher / student of a pretraining
checkpoint of any method (the methods registry knows their configs). Code shipped in a model folder runs only when the
caller passes ``trust_remote_code=True``; folders this library exported load without it.
"""

import logging

from transformers import AutoImageProcessor, AutoModel, PretrainedConfig

from ..configuration_sop import SOPConfig
from ..methods import method_of
from .stock_vit import stock_image_processor

logger = logging.getLogger(__name__)


def load_encoder(
    model: str, which: str = "teacher", attn_implementation: str | None = None, trust_remote_code: bool = False
):
    """Load (encoder, image processor) from a folder or Hub id; see the module docstring.

    Args:
        model: Encoder folder, pretraining checkpoint folder (SOP, MaSSL, CARP, CARL; ViT or ResNet) or Hub id.
        which: ``"teacher"`` or ``"student"`` of a pretraining checkpoint.
        attn_implementation: E.g. ``"eager"`` so that stock ViTs return attention weights (sop-visualize).
        trust_remote_code: Run code shipped in the model folder (only when the user asked for it). Folders this
            library exported load without it: their classes are registered when sop_hf is imported.
    """
    config_dict, _ = PretrainedConfig.get_config_dict(model)
    architectures = config_dict.get("architectures") or []
    method = method_of(config_dict.get("model_type"))
    pretraining = None
    if method is not None and method.model_class.__name__ in architectures:
        pretraining = method.model_class
    if pretraining is not None:
        logger.info("%s is a %s checkpoint: evaluating its %s", model, pretraining.__name__, which)
        encoder = pretraining.from_pretrained(model).export_encoder(which)
    else:
        extra = {"attn_implementation": attn_implementation} if attn_implementation else {}
        encoder = AutoModel.from_pretrained(model, trust_remote_code=trust_remote_code, **extra)
    try:
        processor = AutoImageProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        size = getattr(encoder.config, "image_size", 224)
        logger.warning("no image processor in %s (%s); using the default evaluation transform (size %d)", model,
                       error, size)  # fmt: skip
        processor = stock_image_processor(size)
    return encoder.eval(), processor


def load_encoder_for_export(model: str, which: str = "teacher", trust_remote_code: bool = False):
    """The encoder in an encoder folder, or the teacher / student of a pretraining checkpoint folder of any method
    (an ``SOPModel``, or a ``ResNetModel`` for ResNet lineage runs).

    Args:
        model: Local folder (or Hub id) saved by an encoder or a ``…ForPreTraining.save_pretrained``.
        which: ``"teacher"`` or ``"student"``; used for pretraining checkpoints only.
        trust_remote_code: Run code shipped in the folder (only when asked for with ``--trust_remote_code``).

    Raises:
        ValueError: The folder holds neither a SOP encoder, a ResNet nor a pretraining checkpoint.
    """
    config_dict, _ = SOPConfig.get_config_dict(model)
    model_type = config_dict.get("model_type")
    if model_type not in (SOPConfig.model_type, "resnet") and method_of(model_type) is None:
        raise ValueError(
            f"{model} is not a SOP model folder (config model_type={model_type!r}, expected {SOPConfig.model_type!r}, "
            "'resnet' or a pretraining method's); for original .pth checkpoints use sop-convert"
        )
    encoder, _ = load_encoder(model, which, trust_remote_code=trust_remote_code)
    return encoder
