"""Shared fixtures: tiny configs (2 layers, width 32, 32-px images) so every test runs in seconds on CPU."""

import pytest
import torch

from sop_hf import SOPConfig

TINY = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    head_hidden_size=48,
    head_output_size=16,
    class_memory_size=64,
    num_anchors=8,
    num_support=3,
    num_tasks=2,
    patch_memory_size=32,
    num_patch_anchors=6,
)


def tiny_config(**overrides) -> SOPConfig:
    return SOPConfig(**{**TINY, **overrides})


def count_forward_calls(modules) -> list[int]:
    """Hooks each module; the returned list counts how often its forward starts. A module inside a checkpointed block
    starts twice per step: in the forward and when the backward recomputes the block (a pre-hook, because the
    recomputation stops once it has rebuilt the last tensor it needs, which may be before the module returns)."""
    counts = [0] * len(modules)
    for i, module in enumerate(modules):
        module.register_forward_pre_hook(lambda *_, i=i: counts.__setitem__(i, counts[i] + 1))
    return counts


@pytest.fixture
def config() -> SOPConfig:
    return tiny_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# Prefix of scripts run in a fresh interpreter that must not see sop_hf (only saved files / remote code are used).
WITHOUT_SOP_HF = """
import os, sys
sys.path = [p for p in sys.path if p and not os.path.isdir(os.path.join(p, "sop_hf"))]
try:
    import sop_hf
    raise SystemExit("sop_hf is still importable")
except ImportError:
    pass
"""


# A tiny ResNet encoder (basic blocks, two stages) for the lineage methods' ResNet path.
TINY_RESNET = dict(model_type="resnet", embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic")


def lineage_model(method: str, backbone: dict | None = None, **fields):
    """A lineage pretraining model (massl / carp / carl) on the tiny ViT (or ``backbone``), built as the main job
    builds it: ``sop_hf.methods.build_config``."""
    from sop_hf.methods import build_config, get_method

    heads = {k: v for k, v in TINY.items() if k.startswith("head_")}  # the tiny head sizes, as SOP's tests use
    config = build_config(method, {"backbone_config": backbone or {"model_type": "sop", **TINY}, **heads, **fields})
    return get_method(method).model_class(config)


def assert_export_loads(encoder, reference, folder, width: int, size: int = 32) -> None:
    """Save ``encoder`` with an ``SOPImageProcessor`` to ``folder``: ``AutoModel`` loads it with ``reference``'s
    pooled output on the same images, and ``pipeline("image-feature-extraction")`` returns one finite [1, width] vector."""
    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoModel, pipeline

    from sop_hf import SOPImageProcessor

    encoder.save_pretrained(folder)
    SOPImageProcessor(size=size).save_pretrained(folder)
    loaded = AutoModel.from_pretrained(folder).eval()
    images = torch.randn(2, 3, size, size)
    torch.testing.assert_close(loaded(images).pooler_output, reference.eval()(images).pooler_output)
    extractor = pipeline("image-feature-extraction", model=str(folder))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8))
    pooled = np.array(extractor(image, pool=True))
    assert pooled.shape == (1, width) and np.isfinite(pooled).all()
