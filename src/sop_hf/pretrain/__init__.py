"""The pretraining job as a library: ``main(argv)`` runs what ``examples/pretrain_sop.py`` and ``sop-hf pretrain`` run.

    >>> from sop_hf.pretrain import main
    >>> summary = main(["--max_steps", "20", "--output_dir", "outputs/short"])  # doctest: +SKIP

One concept per module:

- ``arguments``: ``ModelArguments``, ``DataArguments`` and ``parse_arguments`` (the one parse, recipe values as
  defaults);
- ``recipe_choice``: ``--recipe``, or the recipe chosen from a cheap probe of the training images before parsing;
- ``overrides``: ``--config_overrides`` (transformers' ``update_from_string`` syntax, plus dotted encoder keys and JSON
  values) and ``--image_size`` / ``--patch_size``;
- ``model``: the pretraining model of a run, and a checkpoint's weights for ``--do_train false``;
- ``data``: the training split and the labelled (train, eval) pair of the k-NN checks;
- ``record``: the training record of the model card; ``verdict``: the last line, the gain judged against noise;
- ``job``: ``main`` / ``run``, the steps in order.

It sits above ``hub/`` in the import order (it imports methods, data, training, evaluation and hub); only ``cli``
imports it.
"""

from ..training.process_group import end_process_group
from .arguments import DataArguments, ModelArguments, ParsedArguments, parse_arguments
from .job import main, run
from .model import build_model, load_checkpoint
from .recipe_choice import choose_recipe, recipe_for_images
from .verdict import RANDOM_INIT_SPREAD_POINTS, knn_verdict

__all__ = [
    "DataArguments",
    "ModelArguments",
    "ParsedArguments",
    "RANDOM_INIT_SPREAD_POINTS",
    "build_model",
    "choose_recipe",
    "end_process_group",
    "knn_verdict",
    "load_checkpoint",
    "main",
    "parse_arguments",
    "recipe_for_images",
    "run",
]
