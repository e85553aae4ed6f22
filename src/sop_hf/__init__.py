"""sop_hf: Self-Organizing Visual Prototypes (SOP, SOP-MIM) and their lineage as Hugging Face models.

Importing the package registers ``SOPConfig`` / ``SOPModel`` / ``SOPImageProcessor`` with the ``Auto*`` classes, so
``AutoModel.from_pretrained`` and ``pipeline("image-feature-extraction", ...)`` load SOP encoders.
"""

from transformers import AutoBackbone, AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

from .configuration_sop import PRESETS, SOPConfig
from .convert import load_original_checkpoint
from .export import export_to_vit, save_stock_vit
from .heads import SOPHead
from .hub import build_model_card, push_encoder_to_hub, save_encoder
from .image_processing_sop import SOPImageProcessor
from .memory_bank import MemoryBank
from .modeling_lineage import LineageConfig, LineageForPreTraining
from .modeling_sop import SOPBackbone, SOPForImageClassification, SOPModel, SOPPreTrainedModel
from .modeling_sop_pretraining import SOPForPreTraining, SOPForPreTrainingOutput

__version__ = "0.1.0"

AutoConfig.register(SOPConfig.model_type, SOPConfig, exist_ok=True)
AutoConfig.register(LineageConfig.model_type, LineageConfig, exist_ok=True)
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
    "LineageConfig",
    "LineageForPreTraining",
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
