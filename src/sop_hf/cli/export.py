"""``sop-hf export`` (alias ``sop-export``): an encoder folder, or a pretraining checkpoint folder of any method
(teacher or student), as a stock transformers ViT (or ResNet) folder that loads without sop_hf.

    sop-hf export --model runs/sop_vits/checkpoint-1000 --output_dir exports/sop_vits_vit --which teacher
"""

from dataclasses import dataclass, field
from typing import Literal

from transformers import ResNetModel

from ..hub.loading import load_encoder_for_export
from ..hub.stock_vit import save_stock_vit, stock_image_processor
from .common import parse, setup_logging

EXPORT_DESCRIPTION = """\
Export a SOP encoder as a plain transformers ViT that anyone can load with AutoModel, ViTModel or
pipeline("image-feature-extraction") -- no sop_hf, no custom code, no trust_remote_code.

--model is either a SOP encoder folder (saved by SOPModel.save_pretrained or sop-convert) or a pretraining
checkpoint folder (saved by SOPForPreTraining.save_pretrained, e.g. a Trainer checkpoint-N folder); for the latter
--which picks the teacher (default) or the student encoder. The output folder holds config.json, model.safetensors
and a stock BitImageProcessor preprocessor_config.json (resize shorter side, centre crop, ImageNet mean/std).

example:
  sop-export --model runs/sop_vits/checkpoint-1000 --output_dir exports/sop_vits_vit --which teacher
"""


@dataclass
class ExportArguments:
    """Options of ``sop-export``."""

    model: str = field(
        metadata={
            "help": "SOP encoder folder or pretraining checkpoint folder (its config.json lists "
            "architectures=['SOPForPreTraining']) to export."
        }
    )
    output_dir: str = field(metadata={"help": "Folder to write the stock ViT into (created if missing)."})
    which: Literal["teacher", "student"] = field(
        default="teacher",
        metadata={
            "help": "For pretraining checkpoints: which encoder to export. Keep 'teacher' (what DINO/iBOT/SOP "
            "evaluate); try 'student' for short runs whose EMA momentum reached 1 early. Ignored for encoder folders."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped inside the model folder (only for folders you trust)."}
    )
    image_size: int | None = field(
        default=None,
        metadata={
            "help": "Resolution of the exported model and its processor's crop. Default: the training image_size. "
            "Set it to extract features at another size (the position table is resampled once)."
        },
    )
    crop_pct: float = field(
        default=0.875,
        metadata={
            "help": "Fraction of the resized shorter side kept by the centre crop (0.875: 256 -> 224). Use 1.0 for "
            "tiny images (e.g. 28-px) that should only be resized."
        },
    )


def export_main(argv: list[str] | None = None) -> int:
    """``sop-export``: SOP encoder / pretraining checkpoint folder -> stock ViT folder. Returns the exit code."""
    (args,) = parse((ExportArguments,), "sop-export", EXPORT_DESCRIPTION, argv)
    setup_logging()
    encoder = load_encoder_for_export(args.model, args.which, args.trust_remote_code)
    if isinstance(encoder, ResNetModel):  # already a stock transformers model
        encoder.save_pretrained(args.output_dir)
        stock_image_processor(args.image_size or 224, args.crop_pct).save_pretrained(args.output_dir)
        print(f"Stock ResNet written to {args.output_dir} (load with transformers.AutoModel.from_pretrained)")
        return 0
    save_stock_vit(encoder, args.output_dir, image_size=args.image_size, crop_pct=args.crop_pct)
    print(f"Stock ViT written to {args.output_dir} (load with transformers.AutoModel.from_pretrained)")
    return 0
