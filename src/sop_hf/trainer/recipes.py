"""Named training recipes: consistent defaults for model, data and optimisation, overridable flag by flag.

Every recipe states where its values come from (a comment per recipe); ``tests/test_recipes.py`` pins them.

``demo`` is the offline default of ``examples/pretrain_sop.py``: a tiny ViT (patch 4, width 64, depth 4) on the
embedded 28-px Fashion-MNIST subset, a few minutes on a 2-core CPU. Model, bank and optimiser come from a CPU
calibration (tiny ViT on Fashion-MNIST); the learning rate is 3x the DINO rule because tiny models on tiny images
tolerate and need it. Two values are there because without them this tiny run collapses (docs/training.md):
KoLeo 0.1 on the student [CLS] keeps the head output from collapsing onto a few directions, and a teacher momentum
of 0.95 (instead of 0.99) lets a 500-step teacher keep up with the student.

``vit_{small,base}_imagenet`` are the SOP reference code's defaults (docs/method.md): 2 global crops, no local crops,
64 anchors per task in the code (the paper's 4096 are in the multi-crop recipes). ``vit_{small,base,large}_imagenet_
multicrop`` add what the SOP paper and the iBOT recipe it builds on use: 10 local 96-px crops, iBOT's crop scales and
its mixed mask ratios, 4096 anchors. ``massl_vit_{small,base}_imagenet`` are MaSSL's README recipes and
``carp_resnet50_imagenet`` CARP's repository defaults (with AdamW instead of LARS, which this library does not have).
"""

# SOP reference code defaults shared by the ImageNet recipes (docs/method.md, "Default hyperparameters"): AdamW,
# lr 5e-4 x batch/256, 10 warm-up epochs, weight decay 0.04 -> 0.4, per-parameter clip 3, EMA 0.996 -> 1, teacher
# temperature 0.04, student 0.1, class memory 65536 (4 tasks, 9 supports), patch memory 8192 / 512 anchors, bf16.
_IMAGENET_TRAINING = dict(
    num_train_epochs=100, per_device_train_batch_size=128, learning_rate=5e-4, warmup_epochs=10, weight_decay=0.04,
    weight_decay_end=0.4, momentum_teacher=0.996, teacher_temp=0.04, warmup_teacher_temp=0.04, bf16=True,
    dataloader_num_workers=10, logging_steps=50, save_steps=5000,
)  # fmt: skip
# iBOT's ImageNet ViT recipe (bytedance/ibot README, ViT-S/16 800 epochs): 10 local crops, global crops (0.25, 1),
# local crops (0.05, 0.25), mask ratio 0 or 0.3 +- 0.2 per crop (about half the crops unmasked).
_IBOT_MULTICROP = dict(
    global_crop_size=224, global_crop_scale=(0.25, 1.0), num_local_crops=10, local_crop_size=96,
    local_crop_scale=(0.05, 0.25), mask_ratio=(0.0, 0.3), mask_ratio_var=(0.0, 0.2),
)  # fmt: skip
# SOP paper scale (docs/method.md; from a summary of arXiv 2505.21533, Table 10): 4096 anchors per task, 9 supports.
_SOP_PAPER_BANK = dict(class_memory_size=65536, num_anchors=4096, num_support=9, num_tasks=4)

RECIPES: dict[str, dict[str, dict]] = {
    # CPU calibration on Fashion-MNIST (model, bank, lr) plus KoLeo 0.1 and momentum 0.95 against the head-output
    # collapse of short runs (docs/training.md, "Why the demo recipe is what it is"). --method massl/carp/carl get
    # sizes of the same scale as SOP's (1024-row memory, 256 anchors): a 1024-row MaSSL memory in blocks of 256,
    # 1024 CARP prototypes in blocks of 256, 1024 CARL prototypes. Their paper sizes (65536 rows or prototypes)
    # would not even fill, or be visited, in 500 steps of 128 images.
    "demo": {
        "model": dict(
            image_size=28, patch_size=4, hidden_size=64, num_hidden_layers=4, num_attention_heads=2,
            intermediate_size=256, drop_path_rate=0.0, head_hidden_size=512, head_output_size=128,
            class_memory_size=1024, num_anchors=256, num_support=5, num_tasks=2, mim_loss_weight=0.0,
            use_mask_token=False, patch_memory_size=1024, num_patch_anchors=128, koleo_loss_weight=0.1,
            memory_size=1024, block_size=256, num_prototypes=1024,
        ),  # fmt: skip
        "data": dict(
            dataset_name="embedded", global_crop_size=28, global_crop_scale=(0.3, 1.0), num_local_crops=0,
            local_crop_size=16, eval_resize_ratio=1.0, knn_eval=True, solarize_prob=0.0, monitor_steps=100,
        ),  # fmt: skip
        "training": dict(
            max_steps=500, per_device_train_batch_size=128, learning_rate=3e-3, warmup_steps=50,
            momentum_teacher=0.95, weight_decay=0.04, weight_decay_end=0.04, logging_steps=10, save_steps=250,
            save_total_limit=1, dataloader_num_workers=0, export_encoder="student",
        ),  # fmt: skip
    },
    # SOP reference code (sthalles/sop main script defaults; docs/method.md): no local crops, mask ratio 0.3.
    "vit_small_imagenet": {
        "model": dict(preset="vit_small", image_size=224, patch_size=16, drop_path_rate=0.1),
        "data": dict(global_crop_size=224, global_crop_scale=(0.14, 1.0), num_local_crops=0, mask_ratio=(0.3,)),
        "training": dict(_IMAGENET_TRAINING),
    },
    "vit_base_imagenet": {
        "model": dict(preset="vit_base", image_size=224, patch_size=16, drop_path_rate=0.1),
        "data": dict(global_crop_size=224, global_crop_scale=(0.14, 1.0), num_local_crops=0, mask_ratio=(0.3,)),
        "training": dict(_IMAGENET_TRAINING),
    },
    # SOP paper scale + iBOT multi-crop: ViT-S/16 (iBOT: 64 images per GPU x 16 GPUs, teacher temperature 0.04 as in
    # SOP's code; the SOP repository publishes no per-architecture epochs, so 100 as its code).
    "vit_small_imagenet_multicrop": {
        "model": dict(preset="vit_small", image_size=224, patch_size=16, drop_path_rate=0.1, **_SOP_PAPER_BANK),
        "data": dict(_IBOT_MULTICROP),
        "training": {**_IMAGENET_TRAINING, "per_device_train_batch_size": 64},
    },
    # ViT-B/16: as ViT-S (iBOT trains ViT-B with the same crops and masks).
    "vit_base_imagenet_multicrop": {
        "model": dict(preset="vit_base", image_size=224, patch_size=16, drop_path_rate=0.1, **_SOP_PAPER_BANK),
        "data": dict(_IBOT_MULTICROP),
        "training": {**_IMAGENET_TRAINING, "per_device_train_batch_size": 64},
    },
    # ViT-L/16: stochastic depth 0.3 (library choice inside the 0.2-0.4 range large ViTs use; the SOP repository
    # gives none), smaller per-GPU batch to fit 10 local crops.
    "vit_large_imagenet_multicrop": {
        "model": dict(preset="vit_large", image_size=224, patch_size=16, drop_path_rate=0.3, **_SOP_PAPER_BANK),
        "data": dict(_IBOT_MULTICROP),
        "training": {**_IMAGENET_TRAINING, "per_device_train_batch_size": 32},
    },
    # MaSSL README recipe, ViT-S/16 (docs/methods/massl.md): memory 131072 in blocks of 16384, crops 2 x 224 (0.32, 1)
    # + 10 x 96 (0.05, 0.32), AdamW lr 5e-4, no warm-up, wd 0.04 -> 0.4, clip 3, EMA 0.992, 800 epochs; teacher
    # temperature 0.04 -> 0.07 over 30 epochs (its code default).
    "massl_vit_small_imagenet": {
        "model": dict(method="massl", preset="vit_small", image_size=224, patch_size=16, drop_path_rate=0.1,
                      memory_size=131072, block_size=16384),  # fmt: skip
        "data": dict(global_crop_size=224, global_crop_scale=(0.32, 1.0), num_local_crops=10, local_crop_size=96,
                     local_crop_scale=(0.05, 0.32)),  # fmt: skip
        "training": {**_IMAGENET_TRAINING, "num_train_epochs": 800, "warmup_epochs": 0, "momentum_teacher": 0.992,
                     "warmup_teacher_temp": 0.04, "teacher_temp": 0.07, "warmup_teacher_temp_epochs": 30},  # fmt: skip
    },
    # MaSSL README recipe, ViT-B/16: 400 epochs, lr 7.5e-4, 10 warm-up epochs, EMA 0.996, teacher temperature
    # warm-up over 50 epochs; memory and crops as ViT-S.
    "massl_vit_base_imagenet": {
        "model": dict(method="massl", preset="vit_base", image_size=224, patch_size=16, drop_path_rate=0.1,
                      memory_size=131072, block_size=16384),  # fmt: skip
        "data": dict(global_crop_size=224, global_crop_scale=(0.32, 1.0), num_local_crops=10, local_crop_size=96,
                     local_crop_scale=(0.05, 0.32)),  # fmt: skip
        "training": {**_IMAGENET_TRAINING, "num_train_epochs": 400, "learning_rate": 7.5e-4, "warmup_epochs": 10,
                     "momentum_teacher": 0.996, "warmup_teacher_temp": 0.04, "teacher_temp": 0.07,
                     "warmup_teacher_temp_epochs": 50},  # fmt: skip
    },
    # CARP repository defaults (docs/methods/carp.md): ResNet-50, head 2048-2048-2048-256 with BatchNorm, 65536
    # prototypes in blocks of 512, 32 images per GPU, 100 epochs, EMA 0.99 -> 1, crops 2 x 224 (0.2, 1) + 6 x 96
    # (0.05, 0.2). Its optimizer is LARS (lr 0.45 x batch/256 -> 0.0048, weight decay 1e-6, no warm-up); this library
    # has no LARS, so the recipe uses AdamW at the SOP/DINO rate with CARP's tiny weight decay (a substitution).
    "carp_resnet50_imagenet": {
        "model": dict(method="carp", encoder_type="resnet", image_size=224, head_hidden_size=2048,
                      head_output_size=256, num_prototypes=65536, block_size=512, uniformity_weight=1.0),  # fmt: skip
        "data": dict(global_crop_size=224, global_crop_scale=(0.2, 1.0), num_local_crops=6, local_crop_size=96,
                     local_crop_scale=(0.05, 0.2), solarize_prob=0.2),  # fmt: skip
        "training": {**_IMAGENET_TRAINING, "per_device_train_batch_size": 32, "momentum_teacher": 0.99,
                     "warmup_epochs": 0, "weight_decay": 1e-6, "weight_decay_end": 1e-6},  # fmt: skip
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
