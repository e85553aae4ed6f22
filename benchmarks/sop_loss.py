"""Benchmark: the SOP [CLS] loss forward + backward, structured vote identity vs the dense vote matrix.

Both variants run the same math on the same inputs and anchors (T tasks: neighbour search, assignments of student
and teacher rows, DINO-paired cross-entropy); they differ only in how the votes are aggregated: the library's
``prototype_assignments`` (O(N P' E)) against ``softmax(a) @ Y`` with the dense (P'E) x P' matrix Y (O(N P'^2 E)).
Each variant runs in its own subprocess so that peak memory (CUDA: max allocated; CPU: peak RSS growth) is its own.

Paper scale (default): K = 65536, P = 4096 anchors keeping 2048, E = 9, T = 4, N = 12 x 128 student rows, d = 256.

    python benchmarks/sop_loss.py                # paper scale, one run
    python benchmarks/sop_loss.py --repeats 3    # three independent runs: median and range of every figure
    python benchmarks/sop_loss.py --quick        # K = 16384, P = 1024 -> 512, N = 4 x 128 (seconds on a CPU)

A run is one fresh process per variant; within it the time is the median of ``--iters`` timed forward+backward
calls after a first call that measures the peak memory. docs/performance.md quotes ``--repeats 3`` (or more).
"""

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.nn.functional import normalize

from sop_hf.losses import (
    build_support_prototypes,
    draw_anchor_indices,
    multi_view_cross_entropy,
    prototype_assignments,
)
from sop_hf.losses.sop import resolve_search_dtype

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repeats import fmt_summary, summarize_runs  # noqa: E402

PAPER = dict(
    memory_size=65536, num_anchors=4096, num_kept=2048, num_support=9, num_tasks=4, views=12, batch=128, dim=256
)
QUICK = dict(memory_size=16384, num_anchors=1024, num_kept=512, num_support=9, num_tasks=4, views=4, batch=128, dim=256)
TINY = dict(memory_size=2048, num_anchors=256, num_kept=128, num_support=9, num_tasks=2, views=4, batch=16, dim=64)
SCALES = {"paper": PAPER, "quick": QUICK, "tiny": TINY}  # tiny: the CPU dry run of benchmarks/gpu_check.sh


def dense_assignments(z, prototypes, temperature):
    """The formula with the dense vote matrix: softmax over all supports, then @ Y."""
    supports = prototypes.supports.reshape(-1, prototypes.supports.shape[-1])
    return (z @ supports.T / temperature).softmax(-1) @ prototypes.dense_votes()


def sop_loss(student, teacher, memory, scale, variant, seed=0, search_dtype=None):
    assign = prototype_assignments if variant == "structured" else dense_assignments
    generator = torch.Generator().manual_seed(seed)
    batch = scale["batch"]
    losses = []
    for _ in range(scale["num_tasks"]):
        kept, dropped = draw_anchor_indices(memory.shape[0], scale["num_anchors"], scale["num_kept"], generator,
                                            memory.device)  # fmt: skip
        protos = build_support_prototypes(memory, kept, scale["num_support"], 0.1, exclude_idx=dropped,
                                          search_dtype=search_dtype)  # fmt: skip
        p = assign(student, protos, 0.1)
        with torch.no_grad():
            q = assign(teacher, protos, 0.04)
        losses.append(multi_view_cross_entropy(p.split(batch), q.split(batch)))
    return torch.stack(losses).mean()


def make_inputs(scale, device):
    g = torch.Generator().manual_seed(0)
    memory = normalize(torch.randn(scale["memory_size"], scale["dim"], generator=g), dim=1).to(device)
    student = normalize(torch.randn(scale["views"] * scale["batch"], scale["dim"], generator=g), dim=1).to(device)
    teacher = normalize(torch.randn(2 * scale["batch"], scale["dim"], generator=g), dim=1).to(device)
    return memory, student.requires_grad_(), teacher


def measure(variant: str, scale_name: str, device: str, iters: int, search: str = "auto") -> dict:
    """Run in a fresh process: time per forward+backward (median) and peak memory growth."""
    scale = SCALES[scale_name]
    search_dtype = resolve_search_dtype(search, torch.device(device))
    torch.manual_seed(0)
    memory, student, teacher = make_inputs(scale, device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    # First call: peak memory growth of one forward+backward (CPU: peak RSS is a high-water mark, so measure it
    # on the first call, before anything else of that size ran in this process).
    sync()
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    loss = sop_loss(student, teacher, memory, scale, variant, search_dtype=search_dtype)
    loss.backward()
    sync()
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    grad = student.grad.detach().clone()
    student.grad = None
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        sop_loss(student, teacher, memory, scale, variant, search_dtype=search_dtype).backward()
        sync()
        times.append(time.perf_counter() - start)
        student.grad = None
    times.sort()
    return {"variant": variant, "seconds": times[len(times) // 2], "peak_bytes": max(peak, 1),
            "loss": float(loss), "grad": grad.cpu().tolist() if scale_name != "paper" else None}  # fmt: skip


def run(quick: bool = False, device: str | None = None, iters: int = 3, search: str = "auto",
        scale: str | None = None) -> dict:  # fmt: skip
    """One run: both variants, each in its own subprocess; returns the table row and the ratios.

    ``scale`` (paper, quick, tiny) overrides ``quick``.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    scale = scale or ("quick" if quick else "paper")
    results = {}
    for variant in ("structured", "dense"):
        cmd = [sys.executable, __file__, "--_child", variant, "--device", device, "--iters", str(iters),
               "--search_dtype", search, "--scale", scale]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
    s, d = results["structured"], results["dense"]
    summary = {
        "scale": scale,
        "search_dtype": search,
        "device": device,
        "structured_s": s["seconds"],
        "dense_s": d["seconds"],
        "structured_peak_mb": s["peak_bytes"] / 2**20,
        "dense_peak_mb": d["peak_bytes"] / 2**20,
        "loss_abs_diff": abs(s["loss"] - d["loss"]),
        "sop_loss_speedup_vs_dense": d["seconds"] / s["seconds"],
        "sop_loss_memory_ratio_vs_dense": s["peak_bytes"] / d["peak_bytes"],
    }
    if s["grad"] is not None:
        summary["grad_max_abs_diff"] = float((torch.tensor(s["grad"]) - torch.tensor(d["grad"])).abs().max())
    return summary


SUMMARY_KEYS = ["structured_s", "dense_s", "structured_peak_mb", "dense_peak_mb", "sop_loss_speedup_vs_dense",
                "sop_loss_memory_ratio_vs_dense", "loss_abs_diff"]  # fmt: skip


def run_repeated(quick: bool = False, device: str | None = None, repeats: int = 3, iters: int = 3,
                 search: str = "auto", log=None, scale: str | None = None) -> dict:  # fmt: skip
    """``repeats`` independent runs; returns {key: {median, min, max, n}} for SUMMARY_KEYS plus the raw runs."""
    runs = []
    for index in range(repeats):
        runs.append(run(quick, device, iters, search, scale))
        if log is not None:
            r = runs[-1]
            log(f"run {index + 1}/{repeats}: structured {r['structured_s']:.3f} s, dense {r['dense_s']:.3f} s, "
                f"speed-up {r['sop_loss_speedup_vs_dense']:.2f}, memory ratio "
                f"{r['sop_loss_memory_ratio_vs_dense']:.3f}")  # fmt: skip
    summary = summarize_runs(runs, SUMMARY_KEYS)
    summary["runs"] = runs
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced scale (seconds on a CPU)")
    parser.add_argument(
        "--scale", default=None, choices=sorted(SCALES), help="paper, quick or tiny (overrides --quick)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="independent runs (fresh processes); > 1 prints median and range of every figure",
    )
    parser.add_argument("--iters", type=int, default=3, help="timed forward+backward calls per run (median)")
    parser.add_argument(
        "--search_dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="neighbour-search precision used by both variants (auto: bf16 on CUDA, fp32 on CPU)",
    )
    parser.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._child:
        scale = args.scale or ("quick" if args.quick else "paper")
        print(json.dumps(measure(args._child, scale, args.device, args.iters, args.search_dtype)))
        return
    if args.repeats > 1:
        stats = run_repeated(args.quick, args.device, args.repeats, args.iters, args.search_dtype, log=print,
                             scale=args.scale)  # fmt: skip
        device = stats["runs"][0]["device"]
        print(f"SOP loss fwd+bwd ({stats['runs'][0]['scale']} scale, {device}, search {args.search_dtype}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads): median (min-max, n) of "
              f"{args.repeats} runs")  # fmt: skip
        for key, spec in (("structured_s", "{:.3f}"), ("dense_s", "{:.3f}"), ("structured_peak_mb", "{:.0f}"),
                          ("dense_peak_mb", "{:.0f}"), ("loss_abs_diff", "{:.1e}")):  # fmt: skip
            print(f"{key}: {fmt_summary(stats[key], spec)}")
        print(f"sop_loss_speedup_vs_dense: {fmt_summary(stats['sop_loss_speedup_vs_dense'], '{:.2f}')}")
        print(f"sop_loss_memory_ratio_vs_dense: {fmt_summary(stats['sop_loss_memory_ratio_vs_dense'], '{:.3f}')}")
        return
    summary = run(args.quick, args.device, args.iters, args.search_dtype, args.scale)
    print(f"SOP loss fwd+bwd ({summary['scale']} scale, {summary['device']}, search {summary['search_dtype']}, "
          f"torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads)")  # fmt: skip
    print(f"{'variant':<12}{'time (s)':>12}{'peak (MiB)':>14}")
    print(f"{'structured':<12}{summary['structured_s']:>12.3f}{summary['structured_peak_mb']:>14.1f}")
    print(f"{'dense':<12}{summary['dense_s']:>12.3f}{summary['dense_peak_mb']:>14.1f}")
    print(f"loss |structured - dense|: {summary['loss_abs_diff']:.2e}")
    print(f"sop_loss_speedup_vs_dense: {summary['sop_loss_speedup_vs_dense']:.2f}")
    print(f"sop_loss_memory_ratio_vs_dense: {summary['sop_loss_memory_ratio_vs_dense']:.3f}")


if __name__ == "__main__":
    main()
