"""Everything between a trained model and its users: the encoder folder and its model card, the push to the Hub,
the stock-ViT export, loading encoders back from folders and checkpoints, and conversion of original checkpoints.

- ``save``: ``save_encoder`` (weights, remote code, stock image processor, card) and ``default_image_processor``;
- ``push``: ``push_encoder_to_hub``, ``push_run_to_hub``;
- ``model_card``: ``build_model_card``;
- ``stock_vit``: ``export_to_vit`` / ``save_stock_vit`` (a transformers ``ViTModel`` that needs no sop_hf);
- ``convert``: original SOP / iBOT / DINO ``.pth`` checkpoints to SOP encoders.
"""

from .convert import load_original_checkpoint
from .model_card import NOT_RECORDED, build_model_card, count_parameters
from .push import push_encoder_to_hub, push_run_to_hub
from .save import default_image_processor, save_encoder
from .stock_vit import export_to_vit, save_stock_vit, stock_image_processor

__all__ = [
    "NOT_RECORDED",
    "build_model_card",
    "count_parameters",
    "default_image_processor",
    "export_to_vit",
    "load_original_checkpoint",
    "push_encoder_to_hub",
    "push_run_to_hub",
    "save_encoder",
    "save_stock_vit",
    "stock_image_processor",
]
