"""The pretraining job: ``main(argv)`` parses, loads the data, builds the model, trains, exports and evaluates.

``examples/pretrain_sop.py`` and ``sop-hf pretrain`` both run it. The steps, in order:

1. parse the arguments once, with the recipe's values as defaults (``arguments.parse_arguments``);
2. build the config (a bad ``--preset`` / ``--config_overrides`` fails here, before any data is read), then load the
   data (``data.load_training_data``: a missing column or split fails before any compute);
3. train with ``SOPTrainer`` (resuming from the newest complete checkpoint of ``output_dir`` unless
   ``--overwrite_output_dir``), or, with ``--do_train false``, load a checkpoint's weights;
4. write the encoder, its card, the curves and ``results.json`` (before anything that can fail), then run the final
   k-NN against the same architecture at random init, print the verdict (``verdict.knn_verdict``) and publish.

It returns the run's summary (the content of ``results.json``) on the main process.
"""

import copy
import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import torch
from transformers import set_seed

from ..data.pipeline import build_collator, build_train_dataset
from ..evaluation import extract_features, knn_top1
from ..hub import default_image_processor, save_encoder
from ..hub.run import HubPushCallback, HubTarget
from ..methods import get_method
from ..training import SOPTrainer, TrainingMonitorCallback, plot_training_curves
from ..training.checkpoints import last_complete_checkpoint
from ..training.process_group import end_process_group
from .arguments import ParsedArguments, parse_arguments
from .data import knn_subsets, load_training_data
from .model import build_model, load_checkpoint
from .record import knn_eval_result, training_record
from .verdict import knn_verdict

logger = logging.getLogger(__name__)


def monitor_steps_of(data_args, training_args) -> int:
    """Steps between k-NN monitor checks: ``--monitor_steps``, or transformers' ``--eval_strategy steps`` /
    ``--eval_steps`` (pretraining has no eval loss to compute: its evaluation is the k-NN monitor)."""
    strategy = str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy))
    if strategy == "no":
        return data_args.monitor_steps
    if strategy != "steps":
        raise ValueError(f"--eval_strategy {strategy} is not supported: use 'steps' with --eval_steps (it runs the "
                         "k-NN monitor) or --monitor_steps")  # fmt: skip
    steps = training_args.eval_steps or training_args.logging_steps
    return int(steps) if steps >= 1 else max(1, int(steps * max(1, training_args.max_steps)))


def trainer_arguments(training_args):
    """A copy of the parsed training arguments for the Trainer: its evaluation loop off (the k-NN monitor stands in
    for it, see ``monitor_steps_of``); the parsed arguments stay as given."""
    arguments = copy.copy(training_args)
    arguments.eval_strategy = "no"
    return arguments


def resume_point(training_args) -> str | bool | None:
    """--resume_from_checkpoint (a path, or true/last for the newest complete one); by default the newest complete
    checkpoint of output_dir, unless --overwrite_output_dir."""
    value = training_args.resume_from_checkpoint
    if isinstance(value, str) and value.lower() in ("true", "last"):
        return True
    if value:
        return value
    if training_args.overwrite_output_dir:
        return None
    last = last_complete_checkpoint(training_args.output_dir)
    if last:
        logger.info("resuming from %s (pass --overwrite_output_dir to start over)", last)
    return last


def knn_of(encoder, train, test, data_args, processor, progress: bool = True) -> float:
    """Weighted k-NN top-1 (k = --knn_k) of ``encoder``'s features, ``train`` -> ``test``."""
    columns = dict(image_column=data_args.image_column_name, label_column=data_args.label_column_name,
                   progress=progress, skip_unreadable=True)  # fmt: skip
    train_x, train_y = extract_features(encoder, train, processor, **columns)
    test_x, test_y = extract_features(encoder, test, processor, **columns)
    return knn_top1(train_x, train_y, test_x, test_y, ks=(data_args.knn_k,))[data_args.knn_k]


def publish(hub: "HubTarget | None", output_dir: str, summary: dict) -> dict:
    """Copy all_results.json beside the encoder and, with --push_to_hub, publish the run (the last step)."""
    results = Path(output_dir) / "all_results.json"
    if results.exists():
        shutil.copy(results, Path(output_dir) / "encoder" / "all_results.json")
    if hub is not None:
        hub.push(output_dir, "End of training")
        summary["hub_repo"] = hub.repo_id
    return summary


def setup_logging(is_main: bool) -> None:
    """INFO logs on the main process, warnings only on the others (the first call wins, as ``logging.basicConfig``)."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if is_main else logging.WARNING)  # fmt: skip


def main(argv: list[str] | None = None, *, trainer_class: type = SOPTrainer, callbacks=(),
         description: str | None = None, prog: str | None = None) -> dict:  # fmt: skip
    """Run the pretraining job on ``argv`` (``sys.argv[1:]`` when None) and return its summary.

    Args:
        argv: Flags, or one JSON/YAML file holding them (``--help`` lists them).
        trainer_class: The Trainer to run, ``SOPTrainer`` or a subclass of it.
        callbacks: Extra ``TrainerCallback`` objects (e.g. a time budget, as ``benchmarks/fmnist_pretrain.py`` adds).
        description, prog: What ``--help`` shows.

    The process group (if any) is destroyed when the job ends (``end_process_group``).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging(is_main=os.environ.get("RANK", "0") == "0")  # before parsing: the recipe choice logs its probe
    try:
        return run(parse_arguments(argv, description, prog), trainer_class=trainer_class, callbacks=callbacks)
    finally:
        end_process_group()


def run(args: ParsedArguments, *, trainer_class: type = SOPTrainer, callbacks=()) -> dict:
    """Run the pretraining job on parsed arguments (see ``main``)."""
    model_args, data_args, recipe = args.model, args.data, args.recipe
    is_main = args.training.process_index == 0
    setup_logging(is_main)  # a no-op when main() set it up already
    spec = get_method(model_args.method)
    monitor_steps = monitor_steps_of(data_args, args.training)
    training_args = trainer_arguments(args.training)
    if monitor_steps != data_args.monitor_steps:
        logger.info("--eval_strategy steps: the k-NN monitor runs every %d steps", monitor_steps)
    knn_eval = data_args.knn_eval and training_args.do_eval
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and training_args.world_size == 1:  # each process would train alone, into the same output_dir
        raise ValueError(f"{launched} processes were launched but the Trainer sees 1 (accelerate's --multi_gpu "
                         "found no GPU): add --use_cpu to train on CPU processes (gloo), or launch one "
                         "process")  # fmt: skip
    if data_args.streaming and training_args.max_steps <= 0:
        raise ValueError("--streaming needs --max_steps > 0 (a stream has no length)")
    set_seed(training_args.seed)
    config, model = build_model(model_args, args.recipe_values)  # a bad override fails before any data is read
    logger.info("%s, recipe %s; config (values other than the defaults): %s", spec.title, recipe,
                json.dumps(config.to_diff_dict(), sort_keys=True, default=str))  # fmt: skip

    # Data: fail before any compute on a missing column, an unknown split or an empty dataset.
    data = load_training_data(data_args, training_args.seed, wants_eval=knn_eval or monitor_steps > 0,
                              cache_dir=model_args.cache_dir, token=model_args.token)  # fmt: skip
    patch_size = getattr(getattr(config, "backbone_config", config), "patch_size", 1)  # a ResNet has no patches
    train_dataset = build_train_dataset(data.train, data_args, patch_size=patch_size, seed=training_args.seed,
                                        use_masks=spec.uses_masks(config),
                                        image_column=data_args.image_column_name)  # fmt: skip
    collator = build_collator(data_args)

    random_encoder = model.export_encoder("student") if is_main else None
    logger.info("%s (%s recipe): %.2fM encoder parameters", spec.title, recipe,
                sum(p.numel() for p in model.backbone("student").parameters()) / 1e6)  # fmt: skip
    if getattr(config, "is_resnet", False) and training_args.world_size > 1 and torch.cuda.is_available():
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # batch statistics over all GPUs, as CARP
    processor = default_image_processor(config, data_args.eval_resize_ratio)  # k-NN checks and the export
    card_state: dict = {"training": None, "eval_results": None}
    output_dir = training_args.output_dir

    def write_card(encoder, curves=None) -> Path:
        """The encoder folder: weights, stock processor, card (record, results, curves)."""
        return save_encoder(encoder, os.path.join(output_dir, "encoder"), image_processor=processor,
                            method=model_args.method, training=card_state["training"],
                            eval_results=card_state["eval_results"] or None, training_curves=curves)  # fmt: skip

    callbacks = list(callbacks)
    seed, label = training_args.seed, data_args.label_column_name
    if monitor_steps > 0 and data.knn is not None:
        memory, queries = knn_subsets(data.knn, data_args.monitor_samples, seed, label)
        if data_args.knn_k > len(memory):
            raise ValueError(f"--knn_k {data_args.knn_k} is larger than the monitor's {len(memory)} train images; "
                             "raise --monitor_samples or lower --knn_k")  # fmt: skip
        callbacks.append(TrainingMonitorCallback(
            memory, queries, processor, every_n_steps=monitor_steps, k=data_args.knn_k,
            which=training_args.export_encoder, num_prototypes=spec.entropy_prototypes(config),
            stop_on_collapse=data_args.stop_on_collapse, image_column=data_args.image_column_name, label_column=label,
        ))  # fmt: skip
    hub = HubTarget.take_from(training_args)  # the Trainer would push the pretraining model: publish the encoder
    if hub is not None and hub.strategy in ("every_save", "checkpoint", "all_checkpoints"):
        callbacks.append(HubPushCallback(hub, lambda: write_card(model.export_encoder(training_args.export_encoder))))

    # Train, or load the checkpoint to evaluate.
    checkpoint = resume_point(training_args)
    if not training_args.do_train:
        checkpoint = last_complete_checkpoint(output_dir) if checkpoint is True else checkpoint
        if not checkpoint:
            raise ValueError("--do_train false needs a checkpoint to evaluate (--resume_from_checkpoint PATH or one in "
                             "--output_dir)")  # fmt: skip
        state = load_checkpoint(model, checkpoint)
    trainer = trainer_class(model=model, args=training_args, train_dataset=train_dataset, data_collator=collator,
                            processing_class=processor, callbacks=callbacks)  # fmt: skip
    if training_args.do_train:
        result = trainer.train(resume_from_checkpoint=checkpoint)
        train_metrics = {**result.metrics, "global_step": result.global_step}
    else:
        trainer.state = state
        train_metrics = {"global_step": state.global_step}
    trainer.save_model()  # the pretraining model (student, teacher, heads, banks) and its processor
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()
    stats = {**trainer.image_stats, "nonfinite_steps_skipped": trainer.nonfinite_steps_skipped}
    describe = getattr(train_dataset, "describe", lambda i: f"sample {i}")
    bad_files = [describe(i) for i in trainer.bad_samples[:20]]
    if stats["bad_images"]:
        logger.warning("%d unreadable training images, each replaced by another sample: %s", stats["bad_images"],
                       ", ".join(bad_files[:5]))  # fmt: skip
    if stats["images_converted"]:
        logger.info("%d training images converted to RGB (grayscale, palette, alpha ...)", stats["images_converted"])

    summary = {"train_loss": train_metrics.get("train_loss"), "global_step": trainer.state.global_step,
               "train_runtime": train_metrics.get("train_runtime"), **stats, "bad_files": bad_files}  # fmt: skip
    if not trainer.is_world_process_zero():
        return summary

    # Write what the run produced (encoder, card, curves, results) before anything that can fail.
    encoder = model.export_encoder(training_args.export_encoder)
    uniform_p, uniform_symbol = spec.uniform_reference(config)
    plot_path = plot_training_curves(trainer.state.log_history, os.path.join(output_dir, "training_curves.png"),
                                     method=spec.title_for(config), num_prototypes=uniform_p,
                                     prototype_symbol=uniform_symbol, loss_labels=spec.loss_labels)  # fmt: skip
    card_state["training"] = training_record(data_args, training_args, trainer, recipe)

    def write_outputs(eval_results=None) -> Path:
        card_state["eval_results"] = eval_results
        folder = write_card(encoder, plot_path)
        with open(os.path.join(output_dir, "results.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        return folder

    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    # Entropy of the teacher's mean assignment over the second half of training. Early values dip (measured 0.65 ln P'
    # in the first window, while the bank still holds random-init keys) and recover within ~150 steps: not a collapse.
    entropies = [row["teacher_entropy"] for row in trainer.state.log_history if "teacher_entropy" in row]
    entropies = entropies[len(entropies) // 2 :]
    summary.update(plot=str(plot_path), method=model_args.method, ln_num_prototypes=math.log(uniform_p),
                   first_losses=losses[:5], last_losses=losses[-5:], max_loss=max(losses, default=None),
                   min_teacher_entropy_second_half=min(entropies, default=None))  # fmt: skip
    encoder_dir = write_outputs()
    summary["encoder_dir"] = str(encoder_dir)
    print(f"encoder: {encoder_dir}  (AutoModel / pipeline('image-feature-extraction') load it)")
    print(f"curves:  {plot_path}")

    # Evaluate; an error here is reported (log and results.json) and loses nothing written above.
    if knn_eval and data.knn is not None:
        try:
            eval_train, eval_test = knn_subsets(data.knn, data_args.max_eval_samples, seed, label)
            progress = not training_args.disable_tqdm
            trained = knn_of(encoder, eval_train, eval_test, data_args, processor, progress)
            baseline = knn_of(random_encoder, eval_train, eval_test, data_args, processor, progress)
        except Exception as error:  # noqa: BLE001 - the trained encoder is already on disk
            summary["eval_error"] = f"{type(error).__name__}: {error}"
            logger.error("final k-NN evaluation failed (%s); the encoder, curves and results are saved in %s",
                         summary["eval_error"], output_dir)  # fmt: skip
            write_outputs()
            return publish(hub, output_dir, summary)
        summary.update(knn_top1_trained=trained, knn_top1_random_init=baseline)
        k = data_args.knn_k
        trainer.save_metrics("eval", {f"knn_top1@{k}": trained, f"knn_top1@{k}_random_init": baseline})
        print(
            f"k-NN top-1 (k={k}) on {data_args.dataset_name}/{data.eval_split}: random init {100 * baseline:.1f}%  "
            f"->  trained ({training_args.export_encoder}) {100 * trained:.1f}%: {knn_verdict(trained, baseline)}"
        )
        write_outputs([knn_eval_result(data_args, data.eval_split, k, trained)])
    return publish(hub, output_dir, summary)


__all__ = ["main", "monitor_steps_of", "resume_point", "run", "trainer_arguments"]
