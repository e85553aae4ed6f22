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


def load_example(name: str = "pretrain_sop"):
    """The example script as a module, so tests can call its ``main(argv)`` in-process (no interpreter start-up)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
