"""Command-line entry points: ``sop-export`` and ``sop-convert`` (the only reader of ``sys.argv`` in sop_hf).

``sop-export`` turns a SOP encoder folder, or a pretraining checkpoint folder (teacher or student), into a stock
``transformers`` ViT folder that loads without sop_hf. ``sop-convert`` turns an original SOP / iBOT / DINO ``.pth``
checkpoint into a SOP encoder folder (and optionally a stock ViT folder). Both are also reachable as
``python -m sop_hf.cli export ...`` / ``python -m sop_hf.cli convert ...``; run any of them with ``--help``.

    sop-export --model runs/sop_vits/checkpoint-1000 --output_dir exports/sop_vits_vit --which teacher
    sop-convert --checkpoint checkpoint.pth --output_dir exports/sop_vits --stock_vit also
"""

import logging
import os
import sys
from argparse import ArgumentDefaultsHelpFormatter, RawDescriptionHelpFormatter
from dataclasses import dataclass, field
from typing import Literal

from transformers import HfArgumentParser, ResNetModel

from .configuration_sop import SOPConfig
from .convert import load_original_checkpoint
from .evaluation.eval_cli import load_encoder
from .export import save_stock_vit, stock_image_processor
from .modeling_lineage import LineageConfig
from .image_processing_sop import SOPImageProcessor

logger = logging.getLogger(__name__)

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


class _HelpFormatter(RawDescriptionHelpFormatter, ArgumentDefaultsHelpFormatter):
    """Keeps the description's line breaks and shows the default of every option that has one."""

    def _get_help_string(self, action):
        if action.required or action.default is None:
            return action.help
        return super()._get_help_string(action)


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


def _parse(dataclass_type, description: str, prog: str, argv: list[str] | None):
    parser = HfArgumentParser(dataclass_type, prog=prog, description=description, formatter_class=_HelpFormatter)
    argv = sys.argv[1:] if argv is None else list(argv)
    (args,) = parser.parse_args_into_dataclasses(args=argv, look_for_args_file=False)
    return args


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("sop_hf").setLevel(logging.INFO)


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
    if config_dict.get("model_type") not in (SOPConfig.model_type, LineageConfig.model_type, "resnet"):
        raise ValueError(
            f"{model} is not a SOP model folder (config model_type={config_dict.get('model_type')!r}, expected "
            f"{SOPConfig.model_type!r} or {LineageConfig.model_type!r}); for original .pth checkpoints use sop-convert"
        )
    encoder, _ = load_encoder(model, which, trust_remote_code=trust_remote_code)
    return encoder


def export_main(argv: list[str] | None = None) -> int:
    """``sop-export``: SOP encoder / pretraining checkpoint folder -> stock ViT folder. Returns the exit code."""
    args = _parse(ExportArguments, EXPORT_DESCRIPTION, "sop-export", argv)
    _setup_logging()
    encoder = load_encoder_for_export(args.model, args.which, args.trust_remote_code)
    if isinstance(encoder, ResNetModel):  # already a stock transformers model
        encoder.save_pretrained(args.output_dir)
        stock_image_processor(args.image_size or 224, args.crop_pct).save_pretrained(args.output_dir)
        print(f"Stock ResNet written to {args.output_dir} (load with transformers.AutoModel.from_pretrained)")
        return 0
    save_stock_vit(encoder, args.output_dir, image_size=args.image_size, crop_pct=args.crop_pct)
    print(f"Stock ViT written to {args.output_dir} (load with transformers.AutoModel.from_pretrained)")
    return 0


def convert_main(argv: list[str] | None = None) -> int:
    """``sop-convert``: original ``.pth`` -> SOP encoder folder (and/or stock ViT folder). Returns the exit code."""
    args = _parse(ConvertArguments, CONVERT_DESCRIPTION, "sop-convert", argv)
    _setup_logging()
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


def main(argv: list[str] | None = None) -> int:
    """``python -m sop_hf.cli {export,convert} ...``: dispatch to ``export_main`` / ``convert_main``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = {"export": export_main, "convert": convert_main}
    if not argv or argv[0] not in commands:
        asked_for_help = bool(argv) and argv[0] in ("-h", "--help")
        print(
            "usage: python -m sop_hf.cli {export,convert} [options]\n\n"
            "  export   SOP encoder / pretraining checkpoint folder -> stock transformers ViT (same as sop-export)\n"
            "  convert  original SOP / iBOT / DINO .pth -> SOP encoder folder (same as sop-convert)\n\n"
            "Run `python -m sop_hf.cli export --help` for the options of a command.",
            file=sys.stdout if asked_for_help else sys.stderr,
        )
        return 0 if asked_for_help else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
