"""Pretrain a tiny SOP model through the real data pipeline on an image folder and record every view it trains on.

    python tests/scripts/train_views.py OUT_DIR DATA_DIR --batch 8 --workers 0 --epochs 2
    accelerate launch --multi_gpu --num_processes 2 ... tests/scripts/train_views.py OUT_DIR DATA_DIR --batch 4

Every rank writes OUT_DIR/views_rank<r>.json: {epoch: {sample index: digest of its two global views}}, plus the
trainer's image counts (as results.json gets them and as the last log row shows them), its skipped non-finite steps,
its global step and its torch thread count, so tests can compare runs with other process and worker counts.
"""

import argparse
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from sop_hf import SOPConfig, SOPForPreTraining  # noqa: E402
from sop_hf.data import MultiCropDataArguments, build_train_dataset, collate_multicrop, load_image_dataset  # noqa: E402
from sop_hf.data.batched import views_on_device  # noqa: E402
from sop_hf.data.pipeline import views_digest  # noqa: E402
from sop_hf.training import SOPTrainer, SOPTrainingArguments, end_process_group  # noqa: E402

TINY = dict(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            head_hidden_size=32, head_output_size=16, class_memory_size=32, num_anchors=8, num_support=3,
            num_tasks=1, patch_memory_size=16, num_patch_anchors=4)  # fmt: skip


class RecordingTrainer(SOPTrainer):
    """Records a digest of each sample's views per epoch (before the model sees the batch)."""

    views: dict[int, dict[int, float]] = {}

    def compute_loss(self, model, inputs, *args, **kwargs):
        inputs = views_on_device(inputs)  # --augment_on device: the views the model will see
        if model.training:
            epoch = int(math.floor(self.state.epoch + 1e-9))
            self.views.setdefault(epoch, {}).update(views_digest(inputs["pixel_values"], inputs["sample_index"]))
        return super().compute_loss(model, inputs, *args, **kwargs)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out_dir")
    parser.add_argument("data_dir")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--augment_on", default="auto")
    args = parser.parse_args()
    crops = MultiCropDataArguments(global_crop_size=16, global_crop_scale=[0.5, 1.0], augment_on=args.augment_on)
    data = build_train_dataset(load_image_dataset(args.data_dir), crops, patch_size=8, seed=11, use_masks=True)
    training_args = SOPTrainingArguments(
        output_dir=args.out_dir, num_train_epochs=args.epochs, per_device_train_batch_size=args.batch,
        dataloader_num_workers=args.workers, base_learning_rate=1e-3, warmup_steps=1, logging_steps=1, use_cpu=True,
        seed=11, report_to=[], save_strategy="no", disable_tqdm=True, max_bad_image_fraction=0.05,
    )  # fmt: skip
    trainer = RecordingTrainer(model=SOPForPreTraining(SOPConfig(**TINY)), args=training_args, train_dataset=data,
                               data_collator=collate_multicrop)  # fmt: skip
    trainer.train()
    logged = [row for row in trainer.state.log_history if "images_converted" in row]
    record = {"views": trainer.views, "image_stats": trainer.image_stats, "global_step": trainer.state.global_step,
              "bad_files": [data.describe(i) for i in trainer.bad_samples], "threads": torch.get_num_threads(),
              "nonfinite_steps_skipped": trainer.nonfinite_steps_skipped,
              "logged": {k: logged[-1][k] for k in ("images_converted", "images_replaced", "nonfinite_steps_skipped")}}  # fmt: skip
    with open(os.path.join(args.out_dir, f"views_rank{training_args.process_index}.json"), "w") as handle:
        json.dump(record, handle)
    trainer.accelerator.end_training()  # tear the process group down before the interpreter exits


if __name__ == "__main__":
    main()
    end_process_group()  # on every process, before the interpreter exits
