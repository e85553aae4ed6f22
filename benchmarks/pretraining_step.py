"""Benchmark: SOPForPreTraining step throughput and the SOP overhead over a backbone-only step.

Both steps run the same crops through the same student and teacher (teacher forward without grad, student forward
and backward, projection head on every token used); the baseline replaces the SOP / SOP-MIM losses, the bank reads
and the enqueues by a trivial loss (negative mean cosine of student and teacher [CLS] embeddings, global views).
overhead % = (t_sop - t_backbone) / t_backbone x 100.

    python benchmarks/pretraining_step.py                # ViT-S/16, 2 x 224 + 10 x 96, paper-scale banks, batch 64
    python benchmarks/pretraining_step.py --quick        # ViT-S/16, 2 x 224 + 2 x 96, batch 4, paper-scale banks
    python benchmarks/pretraining_step.py --repeats 3    # three runs (fresh model each): median and range

On CUDA the step runs in bf16 autocast with fused AdamW; on CPU in float32.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from sop_hf import SOPConfig, SOPForPreTraining

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repeats import fmt_summary, summarize_runs  # noqa: E402


def make_batch(batch: int, num_local: int, device, dtype=torch.float32, patch: int = 16, size: int = 224,
               local_size: int = 96):  # fmt: skip
    grid = (size // patch) ** 2
    return {
        "pixel_values": torch.randn(2 * batch, 3, size, size, device=device, dtype=dtype),
        "bool_masked_pos": torch.rand(2 * batch, grid, device=device) < 0.3,
        "local_pixel_values": torch.randn(num_local * batch, 3, local_size, local_size, device=device, dtype=dtype)
        if num_local else None,
    }  # fmt: skip


def backbone_only_loss(model: SOPForPreTraining, pixel_values, bool_masked_pos, local_pixel_values):
    """Same forwards as the SOP step (tokens through the heads), trivial loss, no bank traffic."""
    with torch.no_grad():
        t_emb = model.teacher_head(model.teacher(pixel_values).last_hidden_state)  # [2B, 1+L, d]
    s_emb = model.head(model.sop(pixel_values, bool_masked_pos=bool_masked_pos).last_hidden_state)
    loss = -(s_emb * t_emb).sum(-1).mean()
    if local_pixel_values is not None:
        s_local = model.head(model.sop(local_pixel_values).pooler_output)
        loss = loss - s_local.mean()
    return loss


def _step(model, optimizer, batch, variant, autocast_dtype):
    device_type = batch["pixel_values"].device.type
    with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        loss = model(**batch).loss if variant == "sop" else backbone_only_loss(model, **batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_teacher(0.996)


def run(quick: bool = False, device: str | None = None, preset: str = "vit_small", steps: int | None = None,
        config: SOPConfig | None = None, batch: int | None = None, num_local: int | None = None) -> dict:  # fmt: skip
    """One run. ``config`` (with ``batch`` and ``num_local``) replaces the preset: the tiny CPU dry run uses it."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batch, num_local = batch or (4 if quick else 64), num_local if num_local is not None else (2 if quick else 10)
    steps = steps or (3 if quick else 10)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    preset = "custom" if config is not None else preset
    config = config or SOPConfig.from_preset(preset)  # paper-scale banks: 65536 / 8192, 4096 anchors, E 9, T 4
    size = config.image_size
    model = SOPForPreTraining(config).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4,
                                  fused=device.type == "cuda")  # fmt: skip
    local_size = max(config.patch_size, size * 96 // 224 // config.patch_size * config.patch_size)  # 224 -> 96
    data = make_batch(batch, num_local, device, patch=config.patch_size, size=size, local_size=local_size)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timings = {"sop": [], "backbone": []}
    for variant in ("sop", "backbone"):  # warm-up both
        _step(model, optimizer, data, variant, autocast_dtype)
    sync()
    for _ in range(steps):  # interleave the variants to share the machine's drift
        for variant in ("sop", "backbone"):
            start = time.perf_counter()
            _step(model, optimizer, data, variant, autocast_dtype)
            sync()
            timings[variant].append(time.perf_counter() - start)
    t_sop = sorted(timings["sop"])[len(timings["sop"]) // 2]
    t_base = sorted(timings["backbone"])[len(timings["backbone"]) // 2]
    return {
        "preset": preset, "device": str(device), "batch": batch, "num_local": num_local,
        "sop_images_per_s": batch / t_sop, "backbone_images_per_s": batch / t_base,
        "sop_step_s": t_sop, "backbone_step_s": t_base, "sop_step_overhead_pct": 100 * (t_sop - t_base) / t_base,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--preset", default="vit_small")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="independent runs; > 1 prints median and range")
    args = parser.parse_args()
    runs = [run(args.quick, args.device, args.preset, args.steps) for _ in range(args.repeats)]
    r = runs[0]
    if args.repeats > 1:
        stats = summarize_runs(runs, ["sop_step_s", "backbone_step_s", "sop_step_overhead_pct"])
        print(f"pretraining step {r['preset']} {r['device']} batch {r['batch']} (2 x 224 + {r['num_local']} x 96), "
              f"median (min-max, n) of {args.repeats} runs")  # fmt: skip
        print(f"SOP step (s): {fmt_summary(stats['sop_step_s'], '{:.3f}')}")
        print(f"backbone-only step (s): {fmt_summary(stats['backbone_step_s'], '{:.3f}')}")
        print(f"sop_step_overhead_pct: {fmt_summary(stats['sop_step_overhead_pct'], '{:.1f}')}")
        return
    print(f"pretraining step {r['preset']} {r['device']} batch {r['batch']} (2 x 224 + {r['num_local']} x 96)")
    print(f"SOP step {r['sop_step_s']:.3f} s ({r['sop_images_per_s']:.1f} img/s) | backbone-only "
          f"{r['backbone_step_s']:.3f} s ({r['backbone_images_per_s']:.1f} img/s)")  # fmt: skip
    print(f"sop_step_overhead_pct: {r['sop_step_overhead_pct']:.1f}")


if __name__ == "__main__":
    main()
