"""Run every benchmark and print one table plus the headline ratios.

    python benchmarks/run.py --quick      # a few minutes on 2 CPU cores
    python benchmarks/run.py              # full scale (paper-scale loss, ViT-S/16 steps at batch 64, batch-256 extraction)

The machine, library versions and date head the output, so a pasted table says where it was measured.
"""

import argparse
import datetime
import os
import platform
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import feature_extraction  # noqa: E402
import mfu  # noqa: E402
import pretraining_step  # noqa: E402
import sop_loss  # noqa: E402

OPTIONAL = ("data_pipeline", "knn_eval")  # benchmarks added as their parts land


def machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda})"
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="reduced sizes (minutes on a CPU)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args()
    print(f"# sop_hf benchmarks ({'quick' if args.quick else 'full'}) {datetime.date.today()} on {machine()}")
    print(f"# torch {torch.__version__}, transformers {transformers.__version__}, python {platform.python_version()}")
    rows = []
    loss = sop_loss.run(quick=args.quick, device=args.device)
    rows.append(("SOP loss fwd+bwd, structured (s)", f"{loss['structured_s']:.3f}"))
    rows.append(("SOP loss fwd+bwd, dense (s)", f"{loss['dense_s']:.3f}"))
    rows.append(("SOP loss peak memory structured / dense (MiB)",
                 f"{loss['structured_peak_mb']:.0f} / {loss['dense_peak_mb']:.0f}"))  # fmt: skip
    step = pretraining_step.run(quick=args.quick, device=args.device)
    rows.append((f"pretraining step SOP, batch {step['batch']} (img/s)", f"{step['sop_images_per_s']:.2f}"))
    rows.append((f"pretraining step backbone-only, batch {step['batch']} (img/s)",
                 f"{step['backbone_images_per_s']:.2f}"))  # fmt: skip
    extraction = feature_extraction.run(quick=args.quick, device=args.device)
    rows.append((f"features SOPModel, batch {extraction['batch']} (img/s)", f"{extraction['sop_images_per_s']:.1f}"))
    rows.append((f"features ViTModel, batch {extraction['batch']} (img/s)", f"{extraction['vit_images_per_s']:.1f}"))
    rows.append(("features max |delta| SOPModel vs ViTModel", f"{extraction['max_abs_delta']:.1e}"))
    if torch.cuda.is_available() and args.device in (None, "cuda"):
        utilisation = mfu.run(quick=args.quick)
        rows.append((f"MFU {utilisation['model']} bf16 step, batch {utilisation['batch']} (%)",
                     f"{utilisation['mfu_pct']:.1f}"))  # fmt: skip
    else:
        rows.append(("MFU ViT-B/16 bf16 step (%)", "not measured (needs CUDA)"))
    for name in OPTIONAL:
        try:
            module = __import__(name)
        except ImportError:
            continue
        for key, value in module.run(quick=args.quick, device=args.device).items():
            rows.append((f"{name}: {key}", f"{value:.4g}" if isinstance(value, float) else str(value)))
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | value |")
    print(f"|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    print(f"sop_loss_speedup_vs_dense: {loss['sop_loss_speedup_vs_dense']:.2f}")
    print(f"sop_loss_memory_ratio_vs_dense: {loss['sop_loss_memory_ratio_vs_dense']:.3f}")
    print(f"sop_step_overhead_pct: {step['sop_step_overhead_pct']:.1f}")
    print(f"feature_extraction_ratio_vs_vit: {extraction['feature_extraction_ratio_vs_vit']:.3f}")


if __name__ == "__main__":
    main()
