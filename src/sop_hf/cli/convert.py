"""``sop-hf convert`` (alias ``sop-convert``): an original SOP / iBOT / DINO ``.pth`` checkpoint as a SOP encoder
folder (and optionally a stock ViT folder).

    sop-hf convert --checkpoint checkpoint.pth --output_dir exports/sop_vits --stock_vit also
"""

import os
from dataclasses import dataclass, field
from typing import Literal

from ..hub.convert import load_original_checkpoint
from ..hub.stock_vit import save_stock_vit
from ..image_processing_sop import SOPImageProcessor
from .common import parse, setup_logging

CONVERT_DESCRIPTION = """\
Convert an original SOP / iBOT / DINO ViT checkpoint (.pth, or .safetensors) into a SOP encoder folder that
SOPModel / AutoModel load, with a SOPImageProcessor saved beside it.

Both full training checkpoints (teacher / student networks with backbone. / module. prefixes and heads) and
released backbone-only weights are accepted; heads are ignored. The architecture is read from the weight shapes,
except the number of attention heads, which defaults to 64-dim heads (ViT-S: 6, ViT-B: 12). With --stock_vit the
encoder is also (or only) written as a plain transformers ViT folder (see sop-export).

example:
  sop-convert --checkpoint checkpoint.pth --output_dir exports/sop_vits --which teacher --stock_vit also
"""


@dataclass
class ConvertArguments:
    """Options of ``sop-convert``."""

    checkpoint: str = field(metadata={"help": "Original SOP / iBOT / DINO checkpoint file (.pth or .safetensors)."})
    output_dir: str = field(
        metadata={
            "help": "Folder for the SOP encoder (config, safetensors, SOPImageProcessor); with --stock_vit only, "
            "the folder for the stock ViT instead."
        }
    )
    which: Literal["teacher", "student"] = field(
        default="teacher",
        metadata={
            "help": "For training checkpoints holding both networks: which one to convert. Keep 'teacher' (the "
            "evaluated one) unless you need the student. Ignored for backbone-only weights."
        },
    )
    num_attention_heads: int | None = field(
        default=None,
        metadata={
            "help": "Attention heads; cannot be read from the weights. Default: hidden_size // 64, right for the "
            "DINO/iBOT/SOP ViT-S/B/L; set it for other widths (ViT-T of DeiT: 3)."
        },
    )
    stock_vit: Literal["no", "also", "only"] = field(
        default="no",
        metadata={
            "help": "Also write a stock transformers ViT folder (loads without sop_hf): 'also' writes it to "
            "--stock_vit_dir, 'only' writes just the stock ViT to --output_dir."
        },
    )
    stock_vit_dir: str | None = field(
        default=None,
        metadata={"help": "Folder for the stock ViT with --stock_vit also. Default: <output_dir>/stock_vit."},
    )
    crop_pct: float = field(
        default=0.875,
        metadata={"help": "Centre-crop fraction of the saved image processor (0.875: 256 -> 224; 1.0: resize only)."},
    )
    trust_pickle: bool = field(
        default=False,
        metadata={
            "help": "Load the .pth with torch.load(weights_only=False). Needed only for checkpoints that pickle "
            "custom objects; it runs code stored in the file, so use it for files you trust."
        },
    )


def convert_main(argv: list[str] | None = None) -> int:
    """``sop-convert``: original ``.pth`` -> SOP encoder folder (and/or stock ViT folder). Returns the exit code."""
    (args,) = parse((ConvertArguments,), "sop-convert", CONVERT_DESCRIPTION, argv)
    setup_logging()
    overrides = {} if args.num_attention_heads is None else {"num_attention_heads": args.num_attention_heads}
    encoder = load_original_checkpoint(
        args.checkpoint, which=args.which, weights_only=not args.trust_pickle, **overrides
    )
    if args.stock_vit != "only":
        encoder.save_pretrained(args.output_dir)
        SOPImageProcessor(size=encoder.config.image_size, crop_pct=args.crop_pct).save_pretrained(args.output_dir)
        print(f"SOP encoder written to {args.output_dir} (load with sop_hf.SOPModel.from_pretrained)")
    if args.stock_vit != "no":
        vit_dir = (
            args.output_dir
            if args.stock_vit == "only"
            else (args.stock_vit_dir or os.path.join(args.output_dir, "stock_vit"))
        )
        save_stock_vit(encoder, vit_dir, crop_pct=args.crop_pct)
        print(f"Stock ViT written to {vit_dir} (load with transformers.AutoModel.from_pretrained)")
    return 0
