"""The ``sop-hf`` command: one entry point, one module per subcommand.

    sop-hf pretrain [--recipe R] [--dataset_name D] ...    # cli/pretrain.py: the pretraining job (sop_hf.pretrain)
    sop-hf eval {knn,linear,retrieval} --model MODEL ...   # cli/eval.py (alias sop-eval)
    sop-hf visualize --model MODEL --image I --output O    # cli/visualize.py (alias sop-visualize)
    sop-hf export --model FOLDER --output_dir OUT          # cli/export.py (alias sop-export)
    sop-hf convert --checkpoint CKPT --output_dir OUT      # cli/convert.py (alias sop-convert)

Also ``python -m sop_hf.cli ...`` (``accelerate launch -m sop_hf.cli pretrain ...`` for several processes);
``examples/pretrain_sop.py`` runs the same pretraining job. These modules (and ``sop_hf.pretrain.main`` called without
argv) are the only readers of ``sys.argv`` in sop_hf.
"""

import sys

from .common import usage_exit_code
from .convert import convert_main
from .eval import eval_main
from .export import export_main
from .pretrain import pretrain_main
from .visualize import visualize_main

COMMANDS = {"pretrain": pretrain_main, "eval": eval_main, "visualize": visualize_main, "export": export_main,
            "convert": convert_main}  # fmt: skip
USAGE = """usage: sop-hf {pretrain,eval,visualize,export,convert} [options]

  pretrain   pretrain an encoder with SOP or its lineage (the job of examples/pretrain_sop.py)
  eval       k-NN, linear probe or retrieval of a frozen encoder (sop-hf eval knn --help)
  visualize  last-block [CLS] attention maps of a ViT encoder on one image
  export     encoder / pretraining checkpoint folder -> stock transformers ViT or ResNet folder
  convert    original SOP / iBOT / DINO .pth -> SOP encoder folder

Run `sop-hf COMMAND --help` for the options of a command."""


def main(argv: list[str] | None = None) -> int:
    """``sop-hf COMMAND ...``: dispatch to the subcommand; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    code = usage_exit_code(argv, COMMANDS, USAGE)
    return code if code is not None else COMMANDS[argv[0]](argv[1:])


__all__ = ["COMMANDS", "convert_main", "eval_main", "export_main", "main", "pretrain_main", "visualize_main"]
