"""What recipes share: the demo's data and optimisation, the ImageNet training values, iBOT's multi-crop settings.

A recipe is ``{"model": config fields, "data": data arguments, "training": training arguments}``. Each method module
(``sop_hf/methods/``) owns its recipes and states the source of every value in a comment beside it;
``tests/test_recipes.py`` pins them. The main job applies a recipe as the *defaults* of its arguments (so ``--help``
shows the values a run will use, and every flag or config-file entry overrides them); its model section builds the
method's config, which ``--config_overrides`` then changes field by field.
"""

# Recipes give base_learning_rate, the rate for a global batch of 256 (scaled by global batch / 256: 3e-3 -> 1.5e-3 at
# 128); a user's --learning_rate is the absolute rate and replaces it.

# The demo: the embedded 28-px Fashion-MNIST subset, 500 steps of 128 images, a few minutes on a 2-core CPU. The base
# rate is 3x the DINO rule (tiny models on tiny images tolerate and need it); teacher momentum 0.95 instead of
# 0.99 lets a 500-step teacher keep up with the student (docs/training.md, "Why the demo recipe is what it is").
DEMO_DATA = dict(
    dataset_name="embedded", global_crop_size=28, global_crop_scale=(0.3, 1.0), num_local_crops=0,
    local_crop_size=16, eval_resize_ratio=1.0, knn_eval=True, solarize_prob=0.0, monitor_steps=100,
)  # fmt: skip
DEMO_TRAINING = dict(
    max_steps=500, per_device_train_batch_size=128, base_learning_rate=3e-3, warmup_steps=50,
    momentum_teacher=0.95, weight_decay=0.04, weight_decay_end=0.04, logging_steps=10, save_steps=250,
    save_total_limit=1, dataloader_num_workers=0, export_encoder="student",
)  # fmt: skip
# The demo's encoder: a tiny ViT (patch 4, width 64, depth 4) from a CPU calibration on Fashion-MNIST.
DEMO_VIT = dict(
    image_size=28, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=256,
    drop_path_rate=0.0, mim_loss_weight=0.0,
)  # fmt: skip
DEMO_HEAD = dict(head_hidden_size=512, head_output_size=128)

# SOP reference code defaults shared by the ImageNet recipes (docs/method.md §11-§12): AdamW, lr 5e-4 x batch/256,
# 10 warm-up epochs, weight decay 0.04 -> 0.4, per-parameter clip 3, EMA 0.996 -> 1, teacher temperature 0.04,
# student 0.1, bf16.
IMAGENET_TRAINING = dict(
    num_train_epochs=100, per_device_train_batch_size=128, base_learning_rate=5e-4, warmup_epochs=10, weight_decay=0.04,
    weight_decay_end=0.4, momentum_teacher=0.996, teacher_temp=0.04, warmup_teacher_temp=0.04, bf16=True,
    dataloader_num_workers=10, logging_steps=50, save_steps=5000,
)  # fmt: skip
# iBOT's ImageNet ViT recipe (bytedance/ibot README, ViT-S/16 800 epochs): 10 local crops, global crops (0.25, 1),
# local crops (0.05, 0.25), mask ratio 0 or 0.3 +- 0.2 per crop (about half the crops unmasked).
IBOT_MULTICROP = dict(
    global_crop_size=224, global_crop_scale=(0.25, 1.0), num_local_crops=10, local_crop_size=96,
    local_crop_scale=(0.05, 0.25), mask_ratio=(0.0, 0.3), mask_ratio_var=(0.0, 0.2),
)  # fmt: skip


class RecipeRate(float):
    """A learning rate a recipe supplies as a default (``recipe_defaults`` wraps the recipe's ``base_learning_rate``
    or ``learning_rate`` in it): ``SOPTrainingArguments`` lets the user's explicit other rate flag replace it instead
    of calling the pair a conflict. It prints and computes as the float it is."""

    __slots__ = ()


RATE_KEYS = ("learning_rate", "base_learning_rate")


def recipe(model: dict, data: dict, training: dict) -> dict[str, dict]:
    """A recipe from its three sections (copies, so recipes never share a mutable dict)."""
    return {"model": dict(model), "data": dict(data), "training": dict(training)}


def recipe_defaults(values: dict[str, dict]) -> dict:
    """The data and training sections as one ``{argument: value}`` mapping (tuples become lists, as argparse's; the
    learning rate a ``RecipeRate``, so that an explicit ``--learning_rate`` replaces a recipe's base rate)."""
    flat = {**values["data"], **values["training"]}
    return {k: list(v) if isinstance(v, tuple) else RecipeRate(v) if k in RATE_KEYS else v for k, v in flat.items()}
