"""Named training recipes: consistent defaults for model, data and optimisation, overridable flag by flag.

``demo`` is the offline default of ``examples/pretrain_sop.py``: a tiny ViT (patch 4, width 64, depth 4) on the
embedded 28-px Fashion-MNIST subset, a few minutes on a 2-core CPU. Its values come from a CPU calibration (tiny ViT
on Fashion-MNIST: +10 k-NN points over random init in 10 minutes); the learning rate is 3x the DINO rule because
tiny models on tiny images tolerate and need it.

``vit_small_imagenet`` / ``vit_base_imagenet`` follow the SOP reference defaults (METHOD.md sections 11-12): AdamW,
lr 5e-4 x batch/256, 10 warm-up epochs, weight decay 0.04 -> 0.4, per-parameter clip 3, EMA 0.996 -> 1, teacher
temperature 0.04, student 0.1, 2 x 224 global crops (0.14, 1), SOP-MIM with iBOT block masks (ratio 0.3), class
memory 65536 with 4096 anchors (2048 kept), 9 supports, 4 tasks; patch memory 8192 with 512 anchors; bf16.
"""

RECIPES: dict[str, dict[str, dict]] = {
    "demo": {
        "model": dict(
            image_size=28, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
            intermediate_size=256, drop_path_rate=0.0, head_hidden_size=512, head_output_size=128,
            class_memory_size=1024, num_anchors=256, num_support=5, num_tasks=2, mim_loss_weight=0.0,
            use_mask_token=False, patch_memory_size=1024, num_patch_anchors=128,
        ),  # fmt: skip
        "data": dict(
            dataset_name="embedded", global_crop_size=28, global_crop_scale=(0.3, 1.0), num_local_crops=0,
            local_crop_size=16, eval_resize_ratio=1.0, knn_eval=True, solarize_prob=0.0, monitor_steps=100,
        ),  # fmt: skip
        "training": dict(
            max_steps=500, per_device_train_batch_size=128, learning_rate=3e-3, warmup_steps=50,
            momentum_teacher=0.99, weight_decay=0.04, weight_decay_end=0.04, logging_steps=10, save_steps=250,
            save_total_limit=1, dataloader_num_workers=0, export_encoder="student",
        ),  # fmt: skip
    },
    "vit_small_imagenet": {
        "model": dict(preset="vit_small", image_size=224, patch_size=16, drop_path_rate=0.1),
        "data": dict(global_crop_size=224, global_crop_scale=(0.14, 1.0), num_local_crops=0, mask_ratio=0.3),
        "training": dict(
            num_train_epochs=100, per_device_train_batch_size=128, learning_rate=5e-4, warmup_epochs=10,
            momentum_teacher=0.996, bf16=True, dataloader_num_workers=10, logging_steps=50, save_steps=5000,
        ),  # fmt: skip
    },
    "vit_base_imagenet": {
        "model": dict(preset="vit_base", image_size=224, patch_size=16, drop_path_rate=0.1),
        "data": dict(global_crop_size=224, global_crop_scale=(0.14, 1.0), num_local_crops=0, mask_ratio=0.3),
        "training": dict(
            num_train_epochs=100, per_device_train_batch_size=128, learning_rate=5e-4, warmup_epochs=10,
            momentum_teacher=0.996, bf16=True, dataloader_num_workers=10, logging_steps=50, save_steps=5000,
        ),  # fmt: skip
    },
}


def recipe_argv(name: str) -> list[str]:
    """The recipe as command-line flags. Put them *before* the user's flags: argparse keeps the last value given, so
    every explicit flag overrides the recipe and everything still goes through the dataclasses' validation."""
    if name not in RECIPES:
        raise ValueError(f"Unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    argv: list[str] = []
    for section in RECIPES[name].values():
        for field_name, value in section.items():
            argv.append(f"--{field_name}")
            if isinstance(value, (tuple, list)):
                argv.extend(str(v) for v in value)
            else:
                argv.append(str(value))
    return argv


def pop_recipe(argv: list[str], default: str = "demo") -> tuple[str, list[str]]:
    """Take ``--recipe NAME`` (or ``--recipe=NAME``) out of ``argv``; returns (name, remaining argv)."""
    rest, name, i = [], default, 0
    while i < len(argv):
        token = argv[i]
        if token == "--recipe" and i + 1 < len(argv):
            name, i = argv[i + 1], i + 2
            continue
        if token.startswith("--recipe="):
            name = token.split("=", 1)[1]
        else:
            rest.append(token)
        i += 1
    if name not in RECIPES:
        raise ValueError(f"--recipe must be one of {sorted(RECIPES)}, got {name!r}")
    return name, rest
