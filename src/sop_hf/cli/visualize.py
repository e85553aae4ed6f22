"""``sop-hf visualize`` (alias ``sop-visualize``): last-block [CLS] attention maps of a ViT encoder on one image.

sop-hf visualize --model exports/sop_vits --image cat.jpg --output attention.png
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from ..data.images import to_rgb_image
from ..evaluation.visualize import denormalize, last_block_attention, save_attention_figure
from ..hub.loading import load_encoder
from ..image_processing_sop import SOPImageProcessor
from .common import parse, setup_logging


@dataclass
class VisualizeArguments:
    """``sop-visualize``: the last block's [CLS]-to-patch attention, one panel per head (DINO-style)."""

    model: str = field(metadata={"help": "Encoder folder or Hub id."})
    image: str = field(metadata={"help": "Image file to look at."})
    output: str = field(metadata={"help": "PNG to write."})
    which: Literal["teacher", "student"] = field(default="teacher", metadata={"help": "For checkpoint folders."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code shipped inside the model folder (only for folders you trust)."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Resize the image to this side first (finer maps); default: the processor's."}
    )
    threshold: float | None = field(
        default=None, metadata={"help": "Show the patches holding this share of attention (DINO: 0.6) as masks."}
    )


def visualize_main(argv: list[str] | None = None) -> int:
    """``sop-visualize --model M --image I --output O``: one attention panel per head of the last block."""
    argv = sys.argv[1:] if argv is None else list(argv)
    (args,) = parse((VisualizeArguments,), "sop-visualize", VisualizeArguments.__doc__, argv)
    setup_logging()
    model, processor = load_encoder(args.model, args.which, attn_implementation="eager",
                                    trust_remote_code=args.trust_remote_code)  # fmt: skip
    if getattr(model.config, "model_type", None) == "resnet":
        raise ValueError(f"{args.model} holds a convolutional encoder ({type(model).__name__}): it has no attention "
                         "maps to show; sop-visualize needs a ViT encoder")  # fmt: skip
    if args.image_size is not None:
        processor = SOPImageProcessor(size=args.image_size, crop_pct=1.0, image_mean=processor.image_mean,
                                      image_std=processor.image_std)  # fmt: skip
    image = to_rgb_image(args.image)
    if image is None:
        raise ValueError(f"could not read the image {args.image!r}")
    pixel_values = processor([image], return_tensors="pt")["pixel_values"]  # [1, 3, H, W]
    attention = last_block_attention(model, pixel_values, threshold=args.threshold)  # [heads, h, w]
    panels = save_attention_figure(denormalize(pixel_values, processor), attention, args.output,
                                   title=f"{Path(args.model).name}: last-block [CLS] attention")  # fmt: skip
    print(f"attention maps ({panels} heads) written to {args.output}")
    return 0
