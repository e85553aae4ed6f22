"""The method table: every pretraining method of the library on Fashion-MNIST at one equal budget, several seeds.

Rows: SOP (with SOP-MIM), SOP without SOP-MIM (the demo's setting), then every other registered method (``METHODS``:
MaSSL, CARP, CARL, DINO, iBOT) — each pretrained with its own ``demo`` recipe for the same number of steps — and two
references: the same ViT at random init and the raw pixels. Columns: weighted k-NN top-1 (k = 20) and the linear
probe's top-1 on the embedded 4,000 / 1,000 split, as mean and spread (min-max) over seeds. Writes
``method_table.json``, a Markdown table and a PNG bar chart with the spread.

    python benchmarks/method_table.py --steps 200 --seeds 0 1 2 --out docs/assets/method_table   # about 40 CPU minutes

Some methods only, their rows merged into an existing table (the other rows, the raw pixels and their random-init
runs are kept; the random-init row is recomputed over all runs):

    python benchmarks/method_table.py --methods dino ibot --merge docs/assets/method_table.json \
        --out docs/assets/method_table --work_dir /tmp/method_table

Each run's result is also written to ``--work_dir`` as ``<row>-<seed>.json`` and reused by a later call with the
same work folder, steps and seed (several calls may run side by side, one per method, then one merges).

A method whose bar sits at the random-init bar has learnt nothing; the table is the place to see it.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from sop_hf.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "pretrain_sop.py"
ROWS = {  # label -> (method, extra flags): SOP twice (with and without its patch loss), then every other method
    "SOP (with SOP-MIM)": ("sop", ["--config_overrides", "mim_loss_weight=1.0,use_mask_token=true"]),
    "SOP without SOP-MIM": ("sop", []),
    **{method.title: (name, []) for name, method in METHODS.items() if name != "sop"},
}
REFERENCES = ("random init (same ViT)", "raw pixels")


def probe(features_train, labels_train, features_test, labels_test, seed: int) -> dict[str, float]:
    from sop_hf.evaluation import knn_top1, linear_probe

    knn = knn_top1(features_train, labels_train, features_test, labels_test, ks=(20,))[20]
    linear = linear_probe(features_train, labels_train, features_test, labels_test, lrs=(0.01, 0.1, 1.0),
                          epochs=30, seed=seed).test_top1  # fmt: skip
    return {"knn": knn, "linear": linear}


def encoder_features(encoder, processor, seed: int):
    from sop_hf.data.sources import load_embedded_fashion_mnist
    from sop_hf.evaluation import extract_features

    torch.manual_seed(seed)
    splits = [load_embedded_fashion_mnist(s) for s in ("train", "test")]
    (xa, ya), (xb, yb) = (extract_features(encoder, d, processor, progress=False) for d in splits)
    return xa, ya, xb, yb


def raw_pixels(load=None):
    """[train pixels [N, 784] in [0, 1], train labels, test pixels, test labels] of ``load(split)`` (a Fashion-MNIST
    loader of ``sop_hf.data.sources``; the embedded subset by default)."""
    import numpy as np

    from sop_hf.data.sources import load_embedded_fashion_mnist

    out = []
    for split in ("train", "test"):
        data = (load or load_embedded_fashion_mnist)(split)
        x = torch.tensor(np.stack([np.asarray(im, dtype=np.float32).reshape(-1) / 255 for im in data["image"]]))
        out += [x, torch.tensor(data["label"])]
    return out


def run_row(label: str, seed: int, steps: int, work: Path) -> dict:
    from transformers import AutoImageProcessor, AutoModel

    import sop_hf  # noqa: F401 - registers the SOP classes: the exported encoders load without remote code

    method, extra = ROWS[label]
    out = work / f"{method}{'-mim' if extra else ''}-{seed}"
    cmd = [sys.executable, str(SCRIPT), "--method", method, "--seed", str(seed), "--max_steps", str(steps),
           "--warmup_steps", str(max(1, steps // 10)), "--output_dir", str(out), "--overwrite_output_dir", "true",
           "--save_strategy", "no", "--monitor_steps", "0", "--knn_eval", "false", "--disable_tqdm", "true", *extra]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT, stdin=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    encoder = AutoModel.from_pretrained(out / "encoder").eval()
    processor = AutoImageProcessor.from_pretrained(out / "encoder")
    result = probe(*encoder_features(encoder, processor, seed), seed)
    # the same architecture at random init, seeded like the run
    torch.manual_seed(seed)
    random_encoder = type(encoder)(encoder.config).eval()
    return {**result, "seconds": seconds, "random": probe(*encoder_features(random_encoder, processor, seed), seed)}


def summary(values: list[float]) -> dict:
    return {"mean": sum(values) / len(values), "min": min(values), "max": max(values), "n": len(values)}


def cached_run(label: str, seed: int, steps: int, work: Path) -> dict:
    """``run_row``'s result, read from ``work`` when a run of the same row, seed and steps already wrote it."""
    method, extra = ROWS[label]
    path = work / f"{method}{'-mim' if extra else ''}-{seed}-{steps}.json"
    if path.exists():
        return json.loads(path.read_text())
    result = run_row(label, seed, steps, work)
    path.write_text(json.dumps(result))
    return result


def build_table(runs: dict[str, list[dict]], pixels: dict) -> dict:
    """Rows in ``ROWS`` order (mean / min / max over seeds), the random-init row over every run, the raw pixels."""
    table = {label: {m: summary([r[m] for r in runs[label]]) for m in ("knn", "linear", "seconds")}
             for label in ROWS if label in runs}  # fmt: skip
    table["random init (same ViT)"] = {m: summary([r["random"][m] for rs in runs.values() for r in rs])
                                       for m in ("knn", "linear")}  # fmt: skip
    table["raw pixels"] = {m: summary([pixels[m]]) for m in ("knn", "linear")}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                        help="Only the rows of these methods (e.g. --methods dino ibot).")  # fmt: skip
    parser.add_argument("--merge", default=None, help="An earlier method_table.json whose other rows are kept.")
    parser.add_argument("--out", default="method_table", help="Path prefix of the .json, .md and .png outputs.")
    parser.add_argument("--work_dir", default=None, help="Where the runs write (default: a temporary folder).")
    args = parser.parse_args()
    import tempfile

    labels = [label for label in args.rows if args.methods is None or ROWS[label][0] in args.methods]
    old = json.loads(Path(args.merge).read_text()) if args.merge else None
    if old is not None and old["steps"] != args.steps:
        raise ValueError(f"--merge {args.merge} holds {old['steps']}-step runs; --steps {args.steps} would mix budgets")
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="sop_hf_method_table_"))
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {k: v for k, v in (old or {}).get("runs", {}).items() if k not in labels}
    for label in labels:
        for seed in args.seeds:
            runs.setdefault(label, []).append(cached_run(label, seed, args.steps, work))
            print(label, seed, {k: v for k, v in runs[label][-1].items() if k != "random"}, flush=True)
    if old is not None:
        pixels = {m: old["table"]["raw pixels"][m]["mean"] for m in ("knn", "linear")}
    else:
        pixels = probe(*raw_pixels(), 0)
    table = build_table(runs, pixels)
    seeds = sorted({*args.seeds, *(old or {}).get("seeds", [])})
    record = {"steps": args.steps, "seeds": seeds, "table": table, "runs": runs}
    Path(f"{args.out}.json").write_text(json.dumps(record, indent=2))
    lines = [f"| method ({args.steps} steps, seeds {', '.join(map(str, seeds))}) | k-NN top-1 (%) | linear probe top-1 (%) |",
             "|---|---|---|"]  # fmt: skip
    names = {
        label: f"{label}, {row['knn']['n']} seed(s)" if label in ROWS and row["knn"]["n"] < len(seeds) else label
        for label, row in table.items()
    }  # a row not run at every seed says so
    for label, row in table.items():
        cells = [f"{100 * row[m]['mean']:.1f} ({100 * row[m]['min']:.1f}-{100 * row[m]['max']:.1f})"
                 if row[m]["n"] > 1 else f"{100 * row[m]['mean']:.1f}" for m in ("knn", "linear")]  # fmt: skip
        lines.append(f"| {names[label]} | {cells[0]} | {cells[1]} |")
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    fig, ax = plt.subplots(figsize=(11, 4.2))
    width = 0.38
    for offset, metric, name in ((-width / 2, "knn", "k-NN top-1 (k=20)"), (width / 2, "linear", "linear probe top-1")):
        means = [100 * table[lb][metric]["mean"] for lb in labels]
        low = [100 * (table[lb][metric]["mean"] - table[lb][metric]["min"]) for lb in labels]
        high = [100 * (table[lb][metric]["max"] - table[lb][metric]["mean"]) for lb in labels]
        ax.bar([i + offset for i in range(len(labels))], means, width, yerr=[low, high], capsize=3, label=name)
    ax.axhline(100 * table["random init (same ViT)"]["knn"]["mean"], color="black", linestyle="--", linewidth=1,
               label="random init, k-NN")  # fmt: skip
    ax.set_xticks(range(len(labels)), [names[lb] for lb in labels], rotation=15, ha="right", fontsize=8)
    ax.set_ylabel("top-1 on the embedded Fashion-MNIST test split (%)")
    ax.set_title(f"Methods at one budget: {args.steps} steps of the demo recipes, seeds {seeds} (bars: min-max)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(f"{args.out}.png", dpi=110)
    print(f"written {args.out}.json, .md, .png")


if __name__ == "__main__":
    main()
