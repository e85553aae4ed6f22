"""The GPU verification kit: every CUDA check and GPU figure of docs/performance.md in one time-boxed table.

Run through ``bash benchmarks/gpu_check.sh`` (which installs what the machine lacks first); see docs/performance.md
for the prepare step and the paths to carry. Each section runs in its own process under a time cap, so a failure
or a hang costs one row, not the table; the caps add up to at most 8 minutes (``TOTAL_BUDGET_S``).

    python benchmarks/gpu_check.py              # on the GPU machine (after gpu_check.sh's install step)
    python benchmarks/gpu_check.py --dry-run    # tiny sizes on CPU, seconds: the test suite runs this

Sections (the order is the priority: later ones get what time is left):
  1. tests/test_cuda.py (bf16 losses vs fp32, SDPA vs explicit attention, compile graph breaks);
  2. SOP loss fwd+bwd vs the dense vote matrix at paper scale: speed-up and peak-memory ratio;
  3. SOP step overhead over a backbone-only step (ViT-S/16, 2 x 224 + 10 x 96, bf16, batch 64);
  4. feature extraction vs transformers ViTModel (same weights, SDPA), fp32 and bf16;
  5. ViT-B/16 pretraining step MFU in bf16 (FLOPs counted), eager;
  6. a time-boxed tiny-ViT Fashion-MNIST pretraining: k-NN top-1 vs random init;
  7. the data pipeline: batched augmentation img/s on the GPU and the share of a ViT-S/16 multi-crop
     step spent waiting for 16 dataloader workers, device-side vs all-CPU augmentation;
  8. FSDP2: the main job under ``accelerate launch --use_fsdp --fsdp_version 2`` on one GPU (6 steps, a resume from
     the sharded checkpoint of step 4, the export), and the CPU harness benchmarks/fsdp2_parity.py
     (``python benchmarks/gpu_check.py --only fsdp2`` runs it alone);
  9. the MFU of (5) with both encoders under torch.compile (the full forward's compile is a test in 1): what is left
     of the 8 minutes, ``--only mfu_compile`` to run it alone.
"""

import argparse
import datetime
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
TOTAL_BUDGET_S = 465  # 8 minutes less the install step of gpu_check.sh
RESULT_PREFIX = "gpu_check_result: "
# (name, cap in seconds on the GPU machine, cap in the CPU dry run). The last section, the compiled MFU (compilation
# of ViT-B/16 takes a minute or more), gets whatever the others left of TOTAL_BUDGET_S: nothing if every section
# used its whole cap (their caps add up to 595 s), so `--only mfu_compile` (or `--only fsdp2`) runs one alone.
SECTIONS = [
    ("cuda_tests", 75, 60),
    ("sop_loss", 55, 60),
    ("step_overhead", 35, 60),
    ("feature_extraction", 30, 60),
    ("mfu", 40, 60),
    ("fmnist", 150, 90),
    ("data_pipeline", 60, 60),
    ("fsdp2", 150, 90),
    ("mfu_compile", None, 60),
]
GOALS = {
    "sop_loss_speedup_vs_dense": (">=", 5.0),
    "sop_loss_memory_ratio_vs_dense": ("<=", 0.2),
    "sop_step_overhead_pct": ("<=", 5.0),
    "mfu_pct": (">=", 45.0),
    "mfu_compiled_pct": (">=", 45.0),
    "feature_extraction_ratio_vs_vit": (">=", 1.0),
    "feature_extraction_ratio_vs_vit_bf16": (">=", 1.0),
    "device_augmentation_pct_of_step": ("<=", 5.0),
}


def _fmt(summary: dict, spec: str) -> str:
    from repeats import fmt_summary

    return fmt_summary(summary, spec)


def section_cuda_tests(dry: bool, device: str) -> list[tuple]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda", "tests/test_cuda.py"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    summary = next((line for line in reversed(lines) if re.search(r"\d+ (passed|failed|skipped|error)", line)), "")
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    verdict = "ok" if out.returncode == 0 else "FAIL"
    rows = [("CUDA tests (tests/test_cuda.py)", summary.strip("= ") or lines[-1:], "all pass", verdict)]
    rows += [("  " + line[:100], "", "", "FAIL") for line in failed[:8]]
    return rows


def section_sop_loss(dry: bool, device: str) -> list[tuple]:
    import sop_loss

    stats = sop_loss.run_repeated(device=device, repeats=1 if dry else 3, iters=1 if dry else 3,
                                  scale="tiny" if dry else "paper")  # fmt: skip
    scale = "tiny (dry run)" if dry else "paper scale, K 65536, 4096 -> 2048 anchors, E 9, T 4"
    return [
        (f"SOP loss fwd+bwd, structured / dense (s), {scale}",
         f"{_fmt(stats['structured_s'], '{:.4f}')} / {_fmt(stats['dense_s'], '{:.4f}')}", "", ""),
        ("SOP loss peak memory structured / dense (MiB)",
         f"{_fmt(stats['structured_peak_mb'], '{:.0f}')} / {_fmt(stats['dense_peak_mb'], '{:.0f}')}", "", ""),
        ("sop_loss_speedup_vs_dense", stats["sop_loss_speedup_vs_dense"], "{:.2f}"),
        ("sop_loss_memory_ratio_vs_dense", stats["sop_loss_memory_ratio_vs_dense"], "{:.3f}"),
        ("SOP loss |structured - dense| (loss value)", _fmt(stats["loss_abs_diff"], "{:.1e}"), "", ""),
    ]  # fmt: skip


def section_step_overhead(dry: bool, device: str) -> list[tuple]:
    import pretraining_step
    from repeats import summarize_runs

    if dry:
        from sop_hf import SOPConfig

        config = SOPConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           head_hidden_size=48, head_output_size=16, class_memory_size=256, num_anchors=16,
                           patch_memory_size=64, num_patch_anchors=8)  # fmt: skip
        runs = [pretraining_step.run(device=device, config=config, batch=2, num_local=2, steps=1)]
    else:
        runs = [pretraining_step.run(device=device, preset="vit_small", steps=10) for _ in range(3)]
    stats = summarize_runs(runs, ["sop_step_s", "backbone_step_s", "sop_step_overhead_pct"])
    r = runs[0]
    what = f"{r['preset']}, batch {r['batch']}, 2 x global + {r['num_local']} x local, {r['device']}"
    return [
        (f"pretraining step SOP / backbone-only (s), {what}",
         f"{_fmt(stats['sop_step_s'], '{:.4f}')} / {_fmt(stats['backbone_step_s'], '{:.4f}')}", "", ""),
        ("sop_step_overhead_pct", stats["sop_step_overhead_pct"], "{:.1f}"),
    ]  # fmt: skip


def section_feature_extraction(dry: bool, device: str) -> list[tuple]:
    import feature_extraction
    from repeats import summarize_runs

    rows = []
    variants = [("float32", "feature_extraction_ratio_vs_vit"), ("bfloat16", "feature_extraction_ratio_vs_vit_bf16")]
    for dtype, key in variants[:1] if dry else variants:  # bf16 on CPU says nothing and is slow
        if dry:
            runs = [feature_extraction.run(quick=True, device=device, preset="vit_tiny", dtype=dtype, batch=2)]
        else:
            runs = [feature_extraction.run(device=device, preset="vit_small", dtype=dtype) for _ in range(3)]
        stats = summarize_runs(runs, ["sop_images_per_s", "vit_images_per_s", "feature_extraction_ratio_vs_vit"])
        r = runs[0]
        rows.append((f"features SOPModel / ViTModel ({r['vit_attn_implementation']}) img/s, {r['preset']}, "
                     f"batch {r['batch']}, {dtype}",
                     f"{_fmt(stats['sop_images_per_s'], '{:.0f}')} / {_fmt(stats['vit_images_per_s'], '{:.0f}')}; "
                     f"max |delta| {max(x['max_abs_delta'] for x in runs):.1e}", "", ""))  # fmt: skip
        rows.append((key, stats["feature_extraction_ratio_vs_vit"], "{:.3f}"))
    return rows


def _mfu(dry: bool, device: str, compile_step: bool) -> list[tuple]:
    import mfu

    r = mfu.run(quick=dry, device=device, compile_step=compile_step, steps=1 if dry else 5, repeats=1 if dry else 3,
                compile_backend="eager" if dry else "inductor")  # fmt: skip
    key = "mfu_compiled_pct" if compile_step else "mfu_pct"
    label = "encoders compiled" if compile_step else "eager"
    return [
        (f"MFU step ({label}) {r['model']}, batch {r['batch']}, {r['dtype']}: step s / counted TFLOP / peak TFLOP/s",
         f"{r['step_s']:.4f} / {r['step_tflop']:.4f} / {r['peak_tflops']:.1f}", "", ""),
        (key, r["mfu_pct_summary"], "{:.1f}"),
    ]  # fmt: skip


def section_mfu(dry: bool, device: str) -> list[tuple]:
    return _mfu(dry, device, compile_step=False)


def section_mfu_compile(dry: bool, device: str) -> list[tuple]:
    return _mfu(dry, device, compile_step=True)


def section_fmnist(dry: bool, device: str, data_dir: str | None = None) -> list[tuple]:
    import fmnist_pretrain

    output_dir = tempfile.mkdtemp(prefix="gpu_check_fmnist_")
    argv = ["--output_dir", output_dir, "--report_to", "none", "--disable_tqdm", "true", "--save_strategy", "no",
            "--monitor_steps", "0", "--seed", "0"]  # fmt: skip
    if data_dir:
        argv += ["--data_dir", data_dir]
    if dry:
        argv += [
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--max_eval_samples",
            "64",
            "--config_overrides",
            "class_memory_size=64,num_anchors=16",
            "--logging_steps",
            "1",
            "--use_cpu",
            "true",
        ]
    else:
        workers = str(max(0, min(8, (os.cpu_count() or 2) - 4)))
        argv += ["--time_budget_s", "90", "--max_steps", "1200", "--per_device_train_batch_size", "256",
                 "--preset", "vit_tiny", "--config_overrides", "intermediate_size=768,class_memory_size=8192,num_anchors=1024",
                 "--base_learning_rate", "1e-3", "--warmup_steps", "100", "--dataloader_num_workers", workers, "--bf16", "true",
                 "--max_eval_samples", "5000", "--logging_steps", "50"]  # fmt: skip
    summary = fmnist_pretrain.main(argv)
    trained, random_init = summary.get("knn_top1_trained"), summary.get("knn_top1_random_init")
    steps = summary.get("global_step")
    scope = "tiny (dry run)" if dry else "ViT-T (patch 4, 28 px), batch 256, <= 90 s, 5k/5k k-NN"
    return [
        (
            f"Fashion-MNIST k-NN top-1 (k=20) random init -> SOP, {scope}, {steps} steps",
            f"{100 * random_init:.1f} % -> {100 * trained:.1f} %",
            "better than random",
            "ok" if trained > random_init else "MISS",
        ),  # fmt: skip
        ("Fashion-MNIST run wall time incl. k-NN (s)", f"{summary['wall_s']:.0f}", "", ""),
    ]


def _fsdp2_launch(output_dir: str) -> subprocess.CompletedProcess:
    """The main job (demo recipe, embedded data) under accelerate's FSDP2 on one process: 6 steps, a save every 2."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--use_fsdp", "--fsdp_version", "2", "--num_processes",
           "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "examples/pretrain_sop.py",
           "--output_dir", output_dir, "--max_steps", "6", "--save_steps", "2", "--save_total_limit", "5",
           "--logging_steps", "1",
           "--monitor_steps", "0", "--knn_eval", "false", "--report_to", "none", "--disable_tqdm", "true",
           "--seed", "0"]  # fmt: skip
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)


def section_fsdp2(dry: bool, device: str) -> list[tuple]:
    """FSDP2: the CPU harness (real fully_shard over gloo vs DDP, resume, export) everywhere; on the GPU, the main
    job under accelerate's FSDP2 run straight, then resumed from a copy of its sharded checkpoint-4, and the export
    loaded with AutoModel."""
    import shutil

    import fsdp2_parity

    r = fsdp2_parity.run_parity(steps=2 if dry else 8, resume_at=1 if dry else 4, world=2, reshard=not dry)
    ok = r["max_abs_loss_diff_vs_ddp"] <= 1e-3 and r["resume_max_abs_diff"] <= 1e-6 and r["export_loads_with_automodel"]
    figures = (
        f"{r['max_abs_loss_diff_vs_ddp']:.1e} / {r['resume_max_abs_diff']:.1e} / {r['export_loads_with_automodel']}"
    )
    rows = [(f"FSDP2 CPU harness ({r['steps']} steps, 2 gloo processes): max abs loss diff vs DDP / resume diff / "
             "export loads", figures,
             "<= 1e-3 / <= 1e-6 / True", "ok" if ok else "MISS")]  # fmt: skip
    root = tempfile.mkdtemp(prefix="gpu_check_fsdp2_")
    straight, resumed = os.path.join(root, "straight"), os.path.join(root, "resumed")
    if dry:  # accelerate enables FSDP only on accelerators (the CPU refusal is a test of tests/test_fsdp2.py)
        return rows + [("FSDP2 main job (accelerate launch --use_fsdp --fsdp_version 2)", "GPU only", "", "-")]
    out = _fsdp2_launch(straight)
    if out.returncode != 0:
        return rows + [("FSDP2 main job, 6 steps", f"rc {out.returncode}: {out.stderr.strip()[-160:]}", "", "FAIL")]
    os.makedirs(resumed)
    shutil.copytree(os.path.join(straight, "checkpoint-4"), os.path.join(resumed, "checkpoint-4"))
    out = _fsdp2_launch(resumed)
    if out.returncode != 0:
        return rows + [("FSDP2 resume from checkpoint-4", f"rc {out.returncode}: {out.stderr.strip()[-160:]}", "",
                        "FAIL")]  # fmt: skip
    from safetensors.torch import load_file
    from transformers import AutoModel

    import sop_hf  # noqa: F401 - registers SOPModel with AutoModel

    sharded = os.path.isdir(os.path.join(straight, "checkpoint-4", "sharded_state"))
    a, b = (load_file(os.path.join(d, "encoder", "model.safetensors")) for d in (straight, resumed))
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    losses = []  # steps 5 and 6 of each run
    for folder in (straight, resumed):
        with open(os.path.join(folder, "checkpoint-6", "trainer_state.json")) as handle:
            history = json.load(handle)["log_history"]
        losses.append([row["loss"] for row in history if "loss" in row and row.get("step", 0) > 4])
    encoder = AutoModel.from_pretrained(os.path.join(resumed, "encoder"))
    rows += [
        ("FSDP2 main job, 1 GPU: sharded checkpoint (DCP) written", "yes" if sharded else "no", "yes",
         "ok" if sharded else "FAIL"),
        ("FSDP2 resume from checkpoint-4 vs straight: losses of steps 5-6; max abs encoder diff",
         f"{losses[1]} vs {losses[0]}; {diff:.1e}", "<= 1e-4", "ok" if diff <= 1e-4 else "MISS"),
        ("FSDP2 export: AutoModel.from_pretrained(encoder)", type(encoder).__name__, "SOPModel",
         "ok" if type(encoder).__name__ == "SOPModel" else "FAIL"),
    ]  # fmt: skip
    return rows


def section_data_pipeline(dry: bool, device: str) -> list[tuple]:
    """Device-side augmentation throughput, its share of a step, and the step's wait for data."""
    import data_pipeline
    from repeats import summarize

    r = data_pipeline.gpu_feed(device, dry=dry)
    scope = "tiny (dry run)" if dry else "ViT-S/16, 2 x 224 + 10 x 96, batch 64, bf16, 500 x 375 JPEGs"
    return [
        ("batched augmentation on the device (img/s; ms per 256 img)",
         f"{r['batched_augmentation_img_per_s']:.0f}; {r['device_side_ms_per_256_img']:.1f}", "", ""),
        (f"step waiting for data, {r['workers']} workers, device-side / CPU augmentation, {scope}",
         f"{100 * r['data_wait_fraction_device_path']:.1f} % / {100 * r['data_wait_fraction_cpu_path']:.1f} % "
         f"(step {r['step_s_device_path']:.3f} / {r['step_s_cpu_path']:.3f} s)", "", ""),
        ("device_augmentation_pct_of_step", summarize([r["device_augmentation_pct_of_step"]]), "{:.1f}"),
    ]  # fmt: skip


def run_sections(names: list[str], dry: bool, device: str, data_dir: str | None) -> None:
    """In a child process: run the sections, one result line each (a failing section reports its error)."""
    sys.path.insert(0, str(BENCHMARKS))
    for name in names:
        function = globals()[f"section_{name}"]
        try:
            rows = function(dry, device, data_dir) if name == "fmnist" else function(dry, device)
        except Exception as error:  # noqa: BLE001 - one row per failed section, the table goes on
            rows = [(name, f"error: {type(error).__name__}: {str(error)[:160]}", "", "ERROR")]
            import traceback

            traceback.print_exc()
        print(RESULT_PREFIX + json.dumps({"name": name, "rows": rows}), flush=True)


def verdict(key: str, summary: dict) -> str:
    op, goal = GOALS[key]
    value = summary["median"]
    met = value >= goal if op == ">=" else value <= goal
    return "ok" if met else "MISS"


def to_table_rows(rows: list) -> list[tuple[str, str, str, str]]:
    """Rows are (label, text, goal, verdict) or (goal key, summary, format) for a figure with a goal."""
    table = []
    for row in rows:
        if len(row) == 3:
            key, summary, spec = row
            op, goal = GOALS[key]
            table.append((key, _fmt(summary, spec), f"{op} {goal:g}", verdict(key, summary)))
        else:
            table.append(tuple(str(x) for x in row))
    return table


def header(device: str) -> list[str]:
    import torch
    import transformers

    name = torch.cuda.get_device_name() if device == "cuda" else f"{platform.machine()} CPU"
    return [
        f"# sop_hf GPU check, {datetime.datetime.now():%Y-%m-%d %H:%M}, {name}, torch {torch.__version__} "
        f"(CUDA {torch.version.cuda}), transformers {transformers.__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs",
        "# figures: median (min-max, n=runs); goals from docs/performance.md",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (seconds): checks the kit runs")
    parser.add_argument(
        "--data_dir",
        default=os.environ.get("SOP_FASHION_MNIST_DIR"),
        help="folder of the Fashion-MNIST .gz files (default: $SOP_FASHION_MNIST_DIR, else Debian's)",
    )
    parser.add_argument("--only", nargs="*", default=None, help="run only these sections")
    parser.add_argument("--_section", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import torch

    device = "cpu" if args.dry_run or not torch.cuda.is_available() else "cuda"
    if args._section:
        run_sections(args._section.split(","), args.dry_run, device, args.data_dir)
        return 0
    if device == "cpu" and not args.dry_run:
        print("no CUDA device: run with --dry-run on CPU, or on the GPU machine", file=sys.stderr)
        return 2
    deadline = time.monotonic() + TOTAL_BUDGET_S
    names = [name for name, _, _ in SECTIONS if not args.only or name in args.only]
    caps = {name: (cpu_cap if args.dry_run else gpu_cap) for name, gpu_cap, cpu_cap in SECTIONS}
    # On the GPU each section gets its own process and cap; the dry run puts all of them in one process (start-up
    # time dominates there), which exercises the same child/parse path.
    groups = [names] if args.dry_run else [[name] for name in names]
    table = []
    for group in groups:
        left = max(0.0, deadline - time.monotonic())
        cap = min(sum(caps[n] for n in group), left) if args.dry_run else min(caps[group[0]] or left, left)
        if cap < 5:
            table.extend((name, "skipped: the 8-minute budget is spent", "", "-") for name in group)
            continue
        cmd = [sys.executable, __file__, "--_section", ",".join(group)] + (["--dry-run"] if args.dry_run else [])
        cmd += ["--data_dir", args.data_dir] if args.data_dir else []
        start = time.monotonic()
        print(f"[gpu_check] {', '.join(group)} (cap {cap:.0f} s) ...", file=sys.stderr, flush=True)
        # A session of its own, so that a timeout also ends its children (pytest, loss variants, data workers).
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)  # fmt: skip
        try:
            stdout, stderr = proc.communicate(timeout=cap)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, stderr = proc.communicate()
            returncode = None
        results = {}
        for line in stdout.splitlines():
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
                results[result["name"]] = result["rows"]
        for name in group:
            if name in results:
                table.extend(to_table_rows(results[name]))
            elif returncode is None:
                table.append((name, f"timed out (cap {cap:.0f} s)", "", "TIMEOUT"))
            else:
                error = (stderr.strip().splitlines() or ["no output"])[-1]
                table.append((name, f"error: {error[:160]}", "", "ERROR"))
        if returncode != 0:
            print(stderr[-3000:], file=sys.stderr)
        print(f"[gpu_check] done in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    widths = [max(len(row[i]) for row in table + [("check", "result", "goal", "verdict")]) for i in range(4)]
    print("\n".join(header(device)))
    print("| " + " | ".join(h.ljust(w) for h, w in zip(("check", "result", "goal", "verdict"), widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table:
        print("| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |")
    return 1 if any(row[3] in ("ERROR", "FAIL") for row in table) else 0


if __name__ == "__main__":
    sys.exit(main())
