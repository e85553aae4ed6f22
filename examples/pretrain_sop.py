"""Pretrain a vision encoder with SOP (Self-Organizing Visual Prototypes) on transformers' Trainer.

With no arguments it runs the offline ``demo`` recipe: a tiny ViT on the Fashion-MNIST subset that ships with
sop_hf, a few minutes on a 2-core CPU, ending with the k-NN top-1 of the trained encoder next to the same
architecture at random init, the exported encoder in OUTPUT_DIR/encoder and OUTPUT_DIR/training_curves.png.

    accelerate launch examples/pretrain_sop.py                                   # demo (also: python examples/...)
    accelerate launch examples/pretrain_sop.py --dataset_name path/to/images     # a local imagefolder
    accelerate launch --multi_gpu --num_processes 8 examples/pretrain_sop.py \\
        --recipe vit_small_imagenet --dataset_name imagenet-1k --output_dir outputs/sop-vits16
    python examples/pretrain_sop.py config.yaml                                  # every argument from a file

Every flag overrides the chosen ``--recipe`` (demo, vit_small_imagenet, vit_base_imagenet); ``--help`` lists them all.
The job itself is the library's ``sop_hf.pretrain`` (also ``sop-hf pretrain``); this script is its glue, in the shape
of transformers' ``run_mim.py``: the arguments, then the run.
"""

import sys

from sop_hf.pretrain import end_process_group, parse_arguments, run

# The arguments are three dataclasses: sop_hf.pretrain.ModelArguments (--method, --recipe, --config_overrides,
# --image_size, --patch_size ...), sop_hf.pretrain.DataArguments (--dataset_name, --train_dir, crops, k-NN ...) and
# sop_hf.SOPTrainingArguments (transformers' TrainingArguments plus SOP's schedules).


def main(argv: list[str] | None = None) -> dict:
    # 1. Arguments: the recipe is chosen first (--recipe, or from a probe of the training images), its values become
    #    the defaults, and argv (or one JSON/YAML file) is parsed once.
    args = parse_arguments(sys.argv[1:] if argv is None else argv, description=__doc__)

    # 2. The run: data, model, SOPTrainer (resuming from output_dir's newest complete checkpoint), the exported
    #    encoder with its card and curves, the final k-NN against random init, and --push_to_hub.
    return run(args)


if __name__ == "__main__":
    main()
    end_process_group()  # on every process, before the interpreter exits
