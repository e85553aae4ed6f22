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
"""

import argparse
import json
import logging
import math
import os
import sys
from dataclasses import asdict, dataclass, field

import torch
from transformers import HfArgumentParser, set_seed

import sop_hf
from sop_hf import PRESETS, LineageConfig, LineageForPreTraining, SOPConfig, SOPForPreTraining
from sop_hf.data_sources import load_image_dataset
from sop_hf.evaluation import extract_features, knn_top1
from sop_hf.hub import build_model_card, default_image_processor, save_encoder
from sop_hf.trainer import SOPTrainer, SOPTrainingArguments, TrainingMonitorCallback, plot_training_curves
from sop_hf.trainer.data import MultiCropDataArguments, build_train_dataset, build_collator
from sop_hf.trainer.plots import uniform_reference
from sop_hf.trainer.recipes import RECIPES, pop_recipe, recipe_argv

logger = logging.getLogger("pretrain_sop")


@dataclass
class ModelArguments:
    """The encoder and the SOP losses (see docs/configuration.md)."""

    method: str = field(
        default="sop",
        metadata={"help": "Pretraining method: 'sop' (SOP + SOP-MIM), 'massl' (memory blocks), 'carp' (random "
                  "partitions of learnable prototypes) or 'carl' (one block). Each starts from its published "
                  "defaults; see docs/lineage.md for how to choose."},
    )  # fmt: skip
    preset: str | None = field(
        default=None, metadata={"help": "ViT preset: vit_tiny, vit_small, vit_base, vit_large (patch 16)."}
    )
    image_size: int = field(default=224, metadata={"help": "Global-crop resolution the encoder is built for."})
    patch_size: int = field(default=16, metadata={"help": "Patch side; 4-8 for tiny images."})
    hidden_size: int | None = field(default=None, metadata={"help": "Width (overrides the preset)."})
    num_hidden_layers: int | None = field(default=None, metadata={"help": "Depth (overrides the preset)."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Heads (overrides the preset)."})
    intermediate_size: int | None = field(default=None, metadata={"help": "MLP width (default 4 x width)."})
    drop_path_rate: float = field(default=0.1, metadata={"help": "Student stochastic depth (0.1; 0.2-0.4 for ViT-L)."})
    head_hidden_size: int = field(default=2048, metadata={"help": "Projection-head hidden width."})
    head_output_size: int = field(default=256, metadata={"help": "Embedding width stored in the memory banks."})
    class_memory_size: int = field(
        default=65536, metadata={"help": "Class memory rows. It spans K / global batch steps: lower it for small data."}
    )
    num_anchors: int = field(default=4096, metadata={"help": "Anchors drawn per task (half are kept)."})
    num_support: int = field(default=9, metadata={"help": "Supports per prototype (anchor + k neighbours)."})
    num_tasks: int = field(default=4, metadata={"help": "Independent anchor draws per step."})
    vote_smoothing: float = field(default=0.1, metadata={"help": "Anchor vote 1 - smoothing."})
    mim_loss_weight: float = field(default=1.0, metadata={"help": "SOP-MIM weight; 0 turns masking off."})
    use_mask_token: bool = field(default=True, metadata={"help": "Must be true when mim_loss_weight > 0."})
    patch_memory_size: int = field(default=8192, metadata={"help": "Patch memory rows."})
    num_patch_anchors: int = field(default=512, metadata={"help": "Patch anchors per step."})
    koleo_loss_weight: float = field(default=0.0, metadata={"help": "KoLeo weight on the student [CLS] (0 = off)."})
    memory_size: int | None = field(default=None, metadata={"help": "MaSSL memory rows (default 65536)."})
    block_size: int | None = field(
        default=None, metadata={"help": "MaSSL memory block (16384) / CARP prototype block (512)."}
    )
    num_prototypes: int | None = field(default=None, metadata={"help": "CARP/CARL learnable prototypes."})
    uniformity_weight: float | None = field(default=None, metadata={"help": "CARP/CARL uniform-prior weight."})
    encoder_type: str = field(
        default="vit", metadata={"help": "'vit', or 'resnet' (transformers' ResNetModel, ResNet-50 by default) for "
                                 "massl/carp/carl; CARP's paper uses ResNet-50."},
    )  # fmt: skip
    resnet_depths: list[int] | None = field(default=None, metadata={"help": "ResNet blocks per stage (3 4 6 3)."})
    resnet_hidden_sizes: list[int] | None = field(
        default=None, metadata={"help": "ResNet stage widths (256 512 1024 2048)."}
    )
    resnet_embedding_size: int | None = field(default=None, metadata={"help": "ResNet stem width (64)."})
    resnet_layer_type: str | None = field(default=None, metadata={"help": "'bottleneck' (ResNet-50) or 'basic'."})
    head_batch_norm: bool | None = field(
        default=None, metadata={"help": "BatchNorm in the head's hidden layers (default: on for ResNet, off for ViT)."}
    )
    neighbour_search_dtype: str = field(
        default="auto", metadata={"help": "auto (bf16 on CUDA), float32, bfloat16 (fast on AVX512-BF16 CPUs)."}
    )

    def to_config(self, num_channels: int = 3) -> SOPConfig:
        lineage = ("memory_size", "block_size", "num_prototypes", "uniformity_weight", "encoder_type",
                   "resnet_depths", "resnet_hidden_sizes", "resnet_embedding_size", "resnet_layer_type",
                   "head_batch_norm")  # fmt: skip
        values = {k: v for k, v in asdict(self).items() if k not in ("method", "preset") and v is not None}
        values["num_channels"] = num_channels
        if self.preset:
            values = {**PRESETS[self.preset], **values}
        if self.method == "sop":
            if self.encoder_type != "vit":
                raise ValueError(f"--encoder_type {self.encoder_type!r} needs --method massl, carp or carl; SOP (with "
                                 "SOP-MIM on patch tokens) runs on the ViT")  # fmt: skip
            return SOPConfig(**{k: v for k, v in values.items() if k not in lineage})
        values.update(mim_loss_weight=0.0, use_mask_token=False)
        return LineageConfig.for_method(self.method, **values)


@dataclass
class DataArguments(MultiCropDataArguments):
    """Where images come from and how they are evaluated (crops and masks: see MultiCropDataArguments)."""

    dataset_name: str = field(
        default="embedded",
        metadata={"help": "'embedded' (offline Fashion-MNIST subset), 'fashion_mnist_debian', a local image folder, "
                  "or a Hub dataset name."},
    )  # fmt: skip
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    split: str = field(default="train", metadata={"help": "Training split."})
    image_column: str = field(default="image", metadata={"help": "Column holding the images."})
    label_column: str = field(default="label", metadata={"help": "Labels for the k-NN evaluation (optional)."})
    streaming: bool = field(default=False, metadata={"help": "Stream the dataset (IterableDataset); needs max_steps."})
    eval_split: str = field(default="test", metadata={"help": "Split for the final k-NN evaluation."})
    knn_eval: bool = field(default=True, metadata={"help": "k-NN top-1 of the encoder vs random init at the end."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours of the final k-NN evaluation."})
    max_eval_samples: int = field(default=10000, metadata={"help": "Cap on train/test images of the k-NN check."})
    monitor_steps: int = field(
        default=0, metadata={"help": "k-NN top-1 and collapse indicators every N optimizer steps (0 = off)."}
    )
    monitor_samples: int = field(
        default=1000, metadata={"help": "Images of the monitor's k-NN memory (train split) and queries (eval split)."}
    )
    stop_on_collapse: bool = field(
        default=False, metadata={"help": "Stop training when the monitor sees collapse (else it only warns)."}
    )
    eval_resize_ratio: float = field(
        default=0.875, metadata={"help": "crop_pct of the exported image processor (0.875: 256 -> 224; 1.0 tiny)."}
    )


def knn_of(encoder, train, test, data_args, processor) -> float:
    train_x, train_y = extract_features(encoder, train, processor, image_column=data_args.image_column,
                                        label_column=data_args.label_column)  # fmt: skip
    test_x, test_y = extract_features(encoder, test, processor, image_column=data_args.image_column,
                                      label_column=data_args.label_column)  # fmt: skip
    return knn_top1(train_x, train_y, test_x, test_y, ks=(data_args.knn_k,))[data_args.knn_k]


def prototype_count(config, method: str) -> int | None:
    """P of the teacher-entropy indicator: kept anchors (SOP), learnable prototypes (CARP/CARL), none (MaSSL)."""
    if method == "sop":
        return config.num_kept_anchors
    return config.num_prototypes if method in ("carp", "carl") else None


def load_eval_splits(data_args) -> tuple | None:
    """(train, eval) datasets of the k-NN checks, or None (with a warning) when the dataset has no such split."""
    try:
        train = load_image_dataset(data_args.dataset_name, data_args.dataset_config, data_args.split,
                                   data_args.image_column)  # fmt: skip
        test = load_image_dataset(data_args.dataset_name, data_args.dataset_config, data_args.eval_split,
                                  data_args.image_column)  # fmt: skip
    except (ValueError, FileNotFoundError) as error:
        logger.warning("k-NN evaluation and monitor skipped: %s", error)
        return None
    return train, test


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser((ModelArguments, DataArguments, SOPTrainingArguments), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        loader = parser.parse_json_file if argv[0].endswith(".json") else parser.parse_yaml_file
        model_args, data_args, training_args = loader(os.path.abspath(argv[0]))
        recipe = "file"
    else:
        recipe, argv = pop_recipe(argv)
        if "--output_dir" not in " ".join(argv):
            argv += ["--output_dir", f"outputs/sop-{recipe.replace('_', '-')}"]
        model_args, data_args, training_args = parser.parse_args_into_dataclasses(recipe_argv(recipe) + argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if model_args.method not in ("sop", "massl", "carp", "carl"):
        raise ValueError(f"--method must be one of sop, massl, carp, carl; got {model_args.method!r}")
    set_seed(training_args.seed)

    # Data: fail before any compute on a missing column or an empty dataset.
    train_raw = load_image_dataset(data_args.dataset_name, data_args.dataset_config, data_args.split,
                                   data_args.image_column, data_args.streaming)  # fmt: skip
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps > 0 (a stream has no length)")
    config = model_args.to_config()
    use_masks = model_args.method == "sop" and config.mim_loss_weight > 0
    train_dataset = build_train_dataset(train_raw, data_args, patch_size=config.patch_size, seed=training_args.seed,
                                        use_masks=use_masks)  # fmt: skip
    collator = build_collator(data_args)

    model = SOPForPreTraining(config) if model_args.method == "sop" else LineageForPreTraining(config)
    random_encoder = model.export_encoder("student") if training_args.process_index == 0 else None
    logger.info("%s (%s recipe): %.2fM encoder parameters", model_args.method, recipe,
                sum(p.numel() for p in model.sop.parameters()) / 1e6)  # fmt: skip
    if getattr(config, "encoder_type", "vit") == "resnet" and training_args.world_size > 1 and torch.cuda.is_available():
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over all GPUs, as CARP
    processor = default_image_processor(config, data_args.eval_resize_ratio)  # k-NN checks and the export
    num_prototypes = prototype_count(config, model_args.method)
    wants_knn = data_args.label_column and (data_args.knn_eval or data_args.monitor_steps > 0)
    eval_splits = load_eval_splits(data_args) if wants_knn else None
    callbacks = []
    if data_args.monitor_steps > 0 and eval_splits is not None:
        n = data_args.monitor_samples
        callbacks.append(TrainingMonitorCallback(
            eval_splits[0].select(range(min(n, len(eval_splits[0])))),
            eval_splits[1].select(range(min(n, len(eval_splits[1])))),
            processor, every_n_steps=data_args.monitor_steps, k=data_args.knn_k, which=training_args.export_encoder,
            num_prototypes=num_prototypes, stop_on_collapse=data_args.stop_on_collapse,
            image_column=data_args.image_column, label_column=data_args.label_column,
        ))  # fmt: skip
    trainer = SOPTrainer(model=model, args=training_args, train_dataset=train_dataset, data_collator=collator,
                         callbacks=callbacks)  # fmt: skip
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    train_dataset_stats = getattr(train_dataset, "issue_summary", lambda: "")()
    if train_dataset_stats:
        logger.info("skipped or converted images: %s", train_dataset_stats)

    summary = {"train_loss": result.training_loss, "global_step": result.global_step,
               "train_runtime": result.metrics.get("train_runtime")}
    if not trainer.is_world_process_zero():
        return summary
    output_dir = training_args.output_dir
    encoder = model.export_encoder(training_args.export_encoder)
    eval_results = []
    if data_args.knn_eval and eval_splits is not None:
        eval_train, eval_test = eval_splits
        eval_train = eval_train.select(range(min(len(eval_train), data_args.max_eval_samples)))
        eval_test = eval_test.select(range(min(len(eval_test), data_args.max_eval_samples)))
        trained = knn_of(encoder, eval_train, eval_test, data_args, processor)
        baseline = knn_of(random_encoder, eval_train, eval_test, data_args, processor)
        summary.update(knn_top1_trained=trained, knn_top1_random_init=baseline)
        verdict = "better than" if trained > baseline else "NOT better than"
        print(f"k-NN top-1 (k={data_args.knn_k}) on {data_args.dataset_name}/{data_args.eval_split}: "
              f"random init {100 * baseline:.1f}%  ->  trained ({training_args.export_encoder}) "
              f"{100 * trained:.1f}%: {verdict} a random encoder")  # fmt: skip
        eval_results.append({"task_type": "image-classification", "dataset_name": data_args.dataset_name,
                             "dataset_type": data_args.dataset_name, "metric_type": "accuracy",
                             "metric_name": f"k-NN top-1 (k={data_args.knn_k})", "metric_value": trained})  # fmt: skip
    uniform_p, uniform_symbol = uniform_reference(config)
    plot_path = plot_training_curves(trainer.state.log_history, os.path.join(output_dir, "training_curves.png"),
                                     method=model_args.method, num_prototypes=uniform_p,
                                     prototype_symbol=uniform_symbol)  # fmt: skip
    training_info = {
        "dataset": data_args.dataset_name, "steps": result.global_step, "epochs": round(trainer.state.epoch or 0, 2),
        "global_batch_size": trainer.global_batch_size, "learning_rate": trainer.peak_learning_rate,
        "recipe": recipe, "exported": training_args.export_encoder,
    }  # fmt: skip
    card = build_model_card(encoder.config, method=model_args.method, training=training_info,
                            eval_results=eval_results or None)  # fmt: skip
    encoder_dir = save_encoder(encoder, os.path.join(output_dir, "encoder"), image_processor=processor,
                               model_card=card)  # fmt: skip
    print(f"encoder: {encoder_dir}  (AutoModel / pipeline('image-feature-extraction') load it)")
    print(f"curves:  {plot_path}")
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    # Entropy of the teacher's mean assignment over the second half of training. Early values dip (measured 0.65 ln P'
    # in the first window, while the bank still holds random-init keys) and recover within ~150 steps: not a collapse.
    entropies = [row["teacher_entropy"] for row in trainer.state.log_history if "teacher_entropy" in row]
    entropies = entropies[len(entropies) // 2 :]
    summary.update(encoder_dir=str(encoder_dir), plot=str(plot_path), method=model_args.method,
                   ln_num_prototypes=math.log(config.num_kept_anchors),
                   first_losses=losses[:5], last_losses=losses[-5:], max_loss=max(losses, default=None),
                   min_teacher_entropy_second_half=min(entropies, default=None))
    with open(os.path.join(output_dir, "results.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary


if __name__ == "__main__":
    main()
