"""sop_hf: Self-Organizing Visual Prototypes (SOP, SOP-MIM) and their lineage as Hugging Face models.

Importing the package registers ``SOPConfig`` / ``SOPModel`` / ``SOPImageProcessor`` with the ``Auto*`` classes, so
``AutoModel.from_pretrained`` and ``pipeline("image-feature-extraction", ...)`` load SOP encoders.
"""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .configuration_sop import PRESETS, SOPConfig
from .hub import (
    build_model_card,
    export_to_vit,
    load_original_checkpoint,
    push_encoder_to_hub,
    save_encoder,
    save_stock_vit,
)
from .image_processing_sop import SOPImageProcessor
from .methods import (
    METHODS,
    CARLConfig,
    CARLForPreTraining,
    CARPConfig,
    CARPForPreTraining,
    MaSSLConfig,
    MaSSLForPreTraining,
    SOPForPreTraining,
    SOPForPreTrainingOutput,
)
from .modeling_sop import SOPBackbone, SOPForImageClassification, SOPModel, SOPPreTrainedModel
from .modules import MemoryBank, SOPHead

__version__ = "0.1.0"

AutoConfig.register(SOPConfig.model_type, SOPConfig, exist_ok=True)
for _method in METHODS.values():  # pretraining checkpoints of every method load with AutoConfig
    if _method.config_class is not SOPConfig:
        AutoConfig.register(_method.config_class.model_type, _method.config_class, exist_ok=True)
AutoModel.register(SOPConfig, SOPModel, exist_ok=True)
AutoModelForImageClassification.register(SOPConfig, SOPForImageClassification, exist_ok=True)
AutoBackbone.register(SOPConfig, SOPBackbone, exist_ok=True)
AutoImageProcessor.register(SOPConfig, slow_image_processor_class=SOPImageProcessor, exist_ok=True)

# Exported encoders carry their code (relative imports only), so they load where sop_hf is not installed.
SOPConfig.register_for_auto_class()
SOPModel.register_for_auto_class("AutoModel")
SOPForImageClassification.register_for_auto_class("AutoModelForImageClassification")
SOPBackbone.register_for_auto_class("AutoBackbone")
SOPImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "PRESETS",
    "CARLConfig",
    "CARLForPreTraining",
    "CARPConfig",
    "CARPForPreTraining",
    "METHODS",
    "MaSSLConfig",
    "MaSSLForPreTraining",
    "MemoryBank",
    "SOPBackbone",
    "SOPConfig",
    "SOPForImageClassification",
    "SOPForPreTraining",
    "SOPForPreTrainingOutput",
    "SOPHead",
    "SOPImageProcessor",
    "SOPModel",
    "SOPPreTrainedModel",
    "__version__",
    "build_model_card",
    "export_to_vit",
    "load_original_checkpoint",
    "push_encoder_to_hub",
    "save_encoder",
    "save_stock_vit",
]
