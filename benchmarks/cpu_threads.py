"""Training speed of a one-process CPU run under ``accelerate launch``: one thread (accelerate's default, as before
``--cpu_threads``) against the trainer's default (the usable cores), and plain ``python`` as the reference.

Each run is the demo recipe for ``--steps`` steps without the monitor, the final k-NN or checkpoints; the figure is
the Trainer's ``train_runtime`` (seconds) and steps per second. Variants alternate within each repeat, so a busy
machine slows all of them alike.

    python benchmarks/cpu_threads.py                  # 60 steps, 3 repeats (about 6 minutes on 2 cores)
    python benchmarks/cpu_threads.py --steps 10 --repeats 1

Prints one table row per variant (median and range over repeats) and ``cpu_threads_speedup_vs_one_thread``.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repeats import fmt_summary, summarize  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "pretrain_sop.py"
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--num_machines", "1",
          "--mixed_precision", "no", "--dynamo_backend", "no"]  # fmt: skip
VARIANTS = {
    "accelerate launch, --cpu_threads 1 (accelerate's default)": (LAUNCH, ["--cpu_threads", "1"]),
    "accelerate launch, trainer default (usable cores)": (LAUNCH, []),
    "python (torch's default threads)": ([sys.executable], []),
}


def run_once(launcher: list[str], extra: list[str], steps: int, output_dir: Path) -> float:
    cmd = [*launcher, str(SCRIPT), "--max_steps", str(steps), "--monitor_steps", "0", "--knn_eval", "false",
           "--save_strategy", "no", "--disable_tqdm", "true", "--output_dir", str(output_dir), *extra]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # each launcher chooses, as for a user
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return float(json.loads((output_dir / "results.json").read_text())["train_runtime"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for i, (name, (launcher, extra)) in enumerate(VARIANTS.items()):
                seconds[name].append(run_once(launcher, extra, args.steps, Path(tmp) / f"{repeat}-{i}"))
    print(f"\n{args.steps} demo steps on {os.cpu_count()} CPUs, train_runtime median (range, n)\n")
    print("| variant | seconds | steps/s |")
    print("|---|---|---|")
    for name, values in seconds.items():
        rates = [args.steps / v for v in values]
        print(f"| {name} | {fmt_summary(summarize(values), '{:.1f}')} | {fmt_summary(summarize(rates), '{:.2f}')} |")
    one, default = (summarize(seconds[name])["median"] for name in list(VARIANTS)[:2])
    print(f"\ncpu_threads_speedup_vs_one_thread: {one / default:.2f}")


if __name__ == "__main__":
    main()
