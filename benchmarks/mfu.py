"""Benchmark: model FLOPs utilisation (MFU) of the SOP pretraining step against the device's measured matmul peak.

MFU = (FLOPs of one training step / step time) / peak, where
- the FLOPs of one step are counted by ``torch.utils.flop_counter.FlopCounterMode`` on a real step (teacher forward,
  student forward and backward, SOP/SOP-MIM losses with their neighbour searches; the EMA and the optimizer are not
  counted: they are memory-bound and a few FLOPs per parameter);
- the peak is *measured* here: the best of a few square matmuls (8192^3 on CUDA) in the step's dtype, so MFU is
  relative to what this device actually reaches, not a datasheet number;
- the step runs in bf16 autocast on CUDA (SDPA picks flash attention), with fused AdamW, optionally under
  ``torch.compile`` (``--compile``).

    python benchmarks/mfu.py                        # CUDA: ViT-B/16, 2 x 224 + 10 x 96, batch 64, paper-scale banks
    python benchmarks/mfu.py --compile              # the same step compiled
    python benchmarks/mfu.py --quick                # a tiny ViT on CPU: checks the measurement, not a figure to report
    python benchmarks/mfu.py --repeats 3            # three timing windows of --steps steps: median and range

A repeat is a timing window in the same process (one model, one compilation), not a fresh process: compiling
ViT-B/16 again per repeat would cost more than the measurement. The goal for ViT-B/16 on a recent GPU is >= 45 %. On CPU the figure says little (the peak is a float32 matmul of
this machine) and ``run.py`` reports the CUDA figure as "not measured".
"""

import argparse
import time

import torch
from pretraining_step import make_batch  # benchmarks/ is on sys.path (script dir, or run.py puts it there)
from repeats import fmt_summary, summarize  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode

from sop_hf import SOPConfig, SOPForPreTraining


def matmul_peak_flops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Best FLOP/s of ``size``^3 matmuls in ``dtype`` on ``device`` (2 size^3 FLOPs each)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    a @ b  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync()
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * size**3 / best


def run(quick: bool = False, device: str | None = None, compile_step: bool = False, steps: int | None = None,
        batch: int | None = None, repeats: int = 1, compile_backend: str = "inductor",
        compile_scope: str = "encoders") -> dict:  # fmt: skip
    """One model, ``repeats`` timing windows of ``steps`` steps; MFU of each window's median step.

    ``compile_scope``: "encoders" compiles the student and teacher ``SOPModel`` in place (one graph each, no
    breaks: where the FLOPs are); "model" compiles the whole forward (graph breaks at the seeded anchor generators,
    and about 20 graphs to compile). ``compile_backend="eager"`` traces with dynamo without generating kernels (the
    CPU dry run's check).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_cuda = device.type == "cuda"
    if quick:
        config = SOPConfig(image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                           head_hidden_size=128, head_output_size=32, class_memory_size=1024, num_anchors=64,
                           patch_memory_size=512, num_patch_anchors=32)  # fmt: skip
        batch, num_local, size, steps = batch or 4, 2, 64, steps or 3
    else:
        config = SOPConfig.from_preset("vit_base")  # paper-scale banks: 65536 / 8192, 4096 anchors, E 9, T 4
        batch, num_local, size, steps = batch or 64, 10, 224, steps or 10
    dtype = torch.bfloat16 if on_cuda else None
    model = SOPForPreTraining(config).to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=on_cuda)
    data = make_batch(batch, num_local, device, size=size)
    if num_local and size != 224:
        data["local_pixel_values"] = torch.randn(num_local * batch, 3, size // 2, size // 2, device=device)
    forward = model
    if compile_step and compile_scope == "model":
        forward = torch.compile(model, backend=compile_backend)
    elif compile_step:
        model.sop.compile(backend=compile_backend)
        model.teacher.compile(backend=compile_backend)

    def step():
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = forward(**data).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(0.996)

    counter = FlopCounterMode(display=False)
    with counter:  # counted eagerly (FlopCounterMode does not see inside compiled graphs)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            loss = model(**data).loss
        loss.backward()
    optimizer.zero_grad(set_to_none=True)
    flops = counter.get_total_flops()
    sync = torch.cuda.synchronize if on_cuda else (lambda: None)
    for _ in range(6 if compile_step and not quick else 2):  # warm-up (compilation: guards settle in ~5 steps)
        step()
    sync()
    window_s = []
    for _ in range(repeats):
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
        window_s.append(sorted(times)[len(times) // 2])
    step_s = sorted(window_s)[len(window_s) // 2]
    peak = matmul_peak_flops(device, dtype or torch.float32, 8192 if on_cuda else 1024)
    mfu_windows = summarize([100 * flops / s / peak for s in window_s])
    return {
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu", "model": "tiny" if quick else "vit_base",
        "batch": batch, "num_local": num_local, "compiled": compile_scope if compile_step else False, "dtype": str(dtype or torch.float32),
        "step_s": step_s, "step_tflop": flops / 1e12, "achieved_tflops": flops / step_s / 1e12,
        "peak_tflops": peak / 1e12, "mfu_pct": 100 * flops / step_s / peak, "mfu_pct_summary": mfu_windows,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny ViT (checks the measurement; any device)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--compile", action="store_true", help="torch.compile (see --compile_scope)")
    parser.add_argument(
        "--compile_scope",
        default="encoders",
        choices=["encoders", "model"],
        help="compile the two encoders (default) or the whole pretraining forward",
    )
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 64; 4 with --quick)")
    parser.add_argument("--repeats", type=int, default=1, help="timing windows; > 1 prints median and range")
    args = parser.parse_args()
    r = run(args.quick, args.device, args.compile, args.steps, args.batch, args.repeats,
            compile_scope=args.compile_scope)  # fmt: skip
    print(f"MFU {r['model']} on {r['device']} ({r['dtype']}, batch {r['batch']}, 2 global + {r['num_local']} local, "
          f"compiled={r['compiled']})")  # fmt: skip
    print(f"step {r['step_s']:.3f} s, {1e3 * r['step_tflop']:.2f} GFLOP/step -> {r['achieved_tflops']:.3f} TFLOP/s; "
          f"measured matmul peak {r['peak_tflops']:.3f} TFLOP/s")  # fmt: skip
    if args.repeats == 1:
        print(f"mfu_pct: {r['mfu_pct']:.1f}")
    else:
        print(f"mfu_pct: {fmt_summary(r['mfu_pct_summary'], '{:.1f}')}")


if __name__ == "__main__":
    main()
