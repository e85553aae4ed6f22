"""CUDA checks: bf16 autocast numerics of the losses, SDPA vs explicit attention, torch.compile of the training step.

Marked ``cuda`` and skipped without a GPU; ``bash benchmarks/gpu_check.sh`` runs them first on a GPU machine
(docs/performance.md). Tiny configs (2 layers, width 32, 32 px), as every test.

    python -m pytest -q -m cuda tests/test_cuda.py
"""

import copy

import pytest
import torch

from sop_hf import SOPForPreTraining, SOPModel
from sop_hf.losses import (
    build_support_prototypes,
    draw_anchor_indices,
    multi_view_cross_entropy,
    prototype_assignments,
)
from tests.conftest import tiny_config

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# The only frame of sop_hf where the compiled training forward may break its graph: the per-step seeded CPU
# generators that draw anchors identically on every process (docs/performance.md, "torch.compile and host syncs").
ALLOWED_BREAK_FRAMES = {"_generator"}


def _batch(batch_size: int = 2, device: str = "cuda") -> dict:
    generator = torch.Generator().manual_seed(0)
    return {
        "pixel_values": torch.randn(2 * batch_size, 3, 32, 32, generator=generator).to(device),
        "bool_masked_pos": (torch.rand(2 * batch_size, 16, generator=generator) < 0.3).to(device),
        "local_pixel_values": torch.randn(2 * batch_size, 3, 16, 16, generator=generator).to(device),
    }


def _unit(*shape: int) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(*shape, device="cuda"), dim=-1)


def test_loss_functions__under_bf16_autocast__compute_in_float32():
    memory, student, teacher = _unit(256, 16), _unit(4 * 8, 16), _unit(2 * 8, 16)
    kept, dropped = draw_anchor_indices(256, 32, 16, torch.Generator().manual_seed(0), memory.device)
    prototypes = build_support_prototypes(memory, kept, 5, 0.1, exclude_idx=dropped)

    def loss():
        p = prototype_assignments(student, prototypes, 0.1)
        q = prototype_assignments(teacher, prototypes, 0.04)
        return p, multi_view_cross_entropy(p.split(8), q.split(8))

    p32, loss32 = loss()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        p16, loss16 = loss()
    assert p16.dtype == torch.float32 and loss16.dtype == torch.float32
    torch.testing.assert_close(p16, p32, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss16, loss32, rtol=1e-5, atol=1e-6)


def test_loss_functions__bf16_embeddings__stay_close_to_float32():
    memory, student, teacher = _unit(256, 16), _unit(4 * 8, 16), _unit(2 * 8, 16)
    kept, dropped = draw_anchor_indices(256, 32, 16, torch.Generator().manual_seed(0), memory.device)
    prototypes = build_support_prototypes(memory, kept, 5, 0.1, exclude_idx=dropped)
    losses = []
    for dtype in (torch.float32, torch.bfloat16):
        p = prototype_assignments(student.to(dtype), prototypes, 0.1)
        q = prototype_assignments(teacher.to(dtype), prototypes, 0.04)
        losses.append(multi_view_cross_entropy(p.split(8), q.split(8)))
    assert losses[1].dtype == torch.float32
    assert abs(losses[1].item() - losses[0].item()) < 2e-2 * abs(losses[0].item())


def test_pretraining_forward__bf16_autocast__matches_float32_and_gives_finite_gradients():
    model = SOPForPreTraining(tiny_config()).cuda().train()
    twin = copy.deepcopy(model)  # same weights, banks and step count: same anchors
    batch = _batch()
    out32 = model(**batch)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out16 = twin(**batch)
    out16.loss.backward()
    assert out16.loss.dtype == torch.float32 and torch.isfinite(out16.loss)
    for name in ("sop_loss", "mim_loss"):
        a, b = getattr(out32, name).item(), getattr(out16, name).item()
        assert abs(a - b) < 5e-2 * max(1.0, abs(a)), (name, a, b)
    grads = [p.grad for p in twin.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_attention__sdpa_path__matches_explicit_attention(dtype, atol):
    model = SOPModel(tiny_config(use_mask_token=False, mim_loss_weight=0.0)).cuda().to(dtype).eval()
    images = torch.randn(4, 3, 32, 32, device="cuda", dtype=dtype)
    with torch.no_grad():
        sdpa = model(images).last_hidden_state
        explicit = model(images, output_attentions=True).last_hidden_state  # the eager softmax(QK^T)V path
    torch.testing.assert_close(sdpa.float(), explicit.float(), rtol=0, atol=atol)


def test_compile__encoder__has_no_graph_breaks():
    torch._dynamo.reset()
    model = SOPModel(tiny_config()).cuda().eval()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32, device="cuda"))
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]


def test_compile__training_forward__breaks_only_at_the_seeded_anchor_generators():
    torch._dynamo.reset()
    model = SOPForPreTraining(tiny_config()).cuda().train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        explanation = torch._dynamo.explain(model)(**_batch())
    unexpected = []
    for reason in explanation.break_reasons:
        library_frames = [f.name for f in reason.user_stack if "sop_hf" in f.filename]
        if library_frames and not any(frame in library_frames[-1] for frame in ALLOWED_BREAK_FRAMES):
            unexpected.append((library_frames[-1], reason.reason.splitlines()[0]))
    assert not unexpected, unexpected


def test_compile__training_step__runs_and_matches_eager():
    torch._dynamo.reset()
    model = SOPForPreTraining(tiny_config()).cuda().train()
    twin = copy.deepcopy(model)
    compiled = torch.compile(twin)
    batch = _batch()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager_loss = model(**batch).loss
        compiled_loss = compiled(**batch).loss
    compiled_loss.backward()
    assert torch.isfinite(compiled_loss)
    assert abs(compiled_loss.item() - eager_loss.item()) < 5e-2 * max(1.0, abs(eager_loss.item()))
    grads = [p.grad for p in twin.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
