"""Benchmark: feature extraction with ``SOPModel`` vs transformers ``ViTModel`` loaded from our stock export.

Same weights (``sop_hf.export_to_vit``), same inputs, eval mode, no grad; images/s of each and max |delta| of
``last_hidden_state``, measured in one process, alternating the two models to share the machine's noise.

    python benchmarks/feature_extraction.py              # ViT-S/16, batch 256, 224 px
    python benchmarks/feature_extraction.py --quick      # ViT-S/16, batch 32 (seconds on a CPU)
    python benchmarks/feature_extraction.py --repeats 3  # three runs: median and range
    python benchmarks/feature_extraction.py --dtype bfloat16   # on CUDA

Both models use PyTorch's scaled_dot_product_attention (``ViTModel`` is switched to its "sdpa" implementation).
"""

import argparse
import sys
import time
from pathlib import Path

import torch

from sop_hf import SOPConfig, SOPModel, export_to_vit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repeats import fmt_summary, summarize_runs  # noqa: E402


def _time(model, images, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model(pixel_values=images)
        if images.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


@torch.no_grad()
def run(quick: bool = False, device: str | None = None, preset: str = "vit_small", dtype: str = "float32",
        batch: int | None = None) -> dict:  # fmt: skip
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch, repeats = (batch or 32, 3) if quick else (batch or 256, 5)
    torch_dtype = getattr(torch, dtype)
    sop = SOPModel(SOPConfig.from_preset(preset, use_mask_token=False, mim_loss_weight=0.0)).eval()
    vit = export_to_vit(sop)
    vit.set_attn_implementation("sdpa")
    sop, vit = sop.to(device, torch_dtype), vit.to(device, torch_dtype)
    images = torch.randn(batch, 3, 224, 224, device=device, dtype=torch_dtype)
    delta = (sop(images).last_hidden_state.float() - vit(pixel_values=images).last_hidden_state.float()).abs().max()
    sop_times, vit_times = [], []
    for _ in range(2):  # alternate to share drift
        sop_times.append(_time(sop, images, repeats))
        vit_times.append(_time(vit, images, repeats))
    sop_s, vit_s = min(sop_times), min(vit_times)
    return {
        "preset": preset, "batch": batch, "device": device, "dtype": dtype,
        "vit_attn_implementation": vit.config._attn_implementation, "sop_images_per_s": batch / sop_s, "vit_images_per_s": batch / vit_s,
        "feature_extraction_ratio_vs_vit": vit_s / sop_s, "max_abs_delta": float(delta),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default=None)
    parser.add_argument("--preset", default="vit_small")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=None, help="images per forward (256; 32 with --quick)")
    parser.add_argument("--repeats", type=int, default=1, help="independent runs; > 1 prints median and range")
    args = parser.parse_args()
    runs = [run(args.quick, args.device, args.preset, args.dtype, args.batch) for _ in range(args.repeats)]
    r = runs[0]
    if args.repeats > 1:
        stats = summarize_runs(runs, ["sop_images_per_s", "vit_images_per_s", "feature_extraction_ratio_vs_vit"])
        print(f"feature extraction {r['preset']} batch {r['batch']} {r['device']} {r['dtype']}, median (min-max, n) "
              f"of {args.repeats} runs; max |delta| {max(x['max_abs_delta'] for x in runs):.2e}")  # fmt: skip
        print(f"SOPModel img/s: {fmt_summary(stats['sop_images_per_s'], '{:.1f}')}")
        print(f"ViTModel img/s: {fmt_summary(stats['vit_images_per_s'], '{:.1f}')}")
        print(f"feature_extraction_ratio_vs_vit: {fmt_summary(stats['feature_extraction_ratio_vs_vit'], '{:.3f}')}")
        return
    print(f"feature extraction {r['preset']} batch {r['batch']} {r['device']} {r['dtype']}")
    print(f"SOPModel {r['sop_images_per_s']:.1f} img/s | ViTModel {r['vit_images_per_s']:.1f} img/s | "
          f"max |delta| {r['max_abs_delta']:.2e}")  # fmt: skip
    print(f"feature_extraction_ratio_vs_vit: {r['feature_extraction_ratio_vs_vit']:.3f}")


if __name__ == "__main__":
    main()
