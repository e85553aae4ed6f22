"""``sop-hf pretrain``: the pretraining job (``sop_hf.pretrain.main``), the same run as ``examples/pretrain_sop.py``.

    sop-hf pretrain                                         # the offline demo (one process)
    sop-hf pretrain --train_dir my_images/train --validation_dir my_images/val
    accelerate launch -m sop_hf.cli pretrain --max_steps 100   # under accelerate (several processes, GPUs)

Every flag of the job is accepted (``sop-hf pretrain --help`` lists them with the chosen recipe's values as defaults).
"""

import sys


def pretrain_main(argv: list[str] | None = None) -> int:
    """Run the job on ``argv`` (``sys.argv[1:]`` when None); returns the exit code (0: the run finished)."""
    from ..pretrain import main  # imported here: `sop-hf eval` need not load the Trainer

    main(sys.argv[1:] if argv is None else list(argv), description=__doc__, prog="sop-hf pretrain")  # ends the group
    return 0


__all__ = ["pretrain_main"]
