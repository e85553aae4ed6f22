"""Peak memory of the chunked k-NN (``sop_hf.evaluation.knn``) against the dense score matrix, side by side.

Each variant runs in its own process on the same random features (default 20,000 train x 2,000 test rows of
dimension 2,048, float32, 10 classes); the figure is the growth of the process's peak resident memory during the
k-NN, above what the inputs already hold. The chunked k-NN keeps at most ``test_chunk x (train_chunk + k)`` scores
and one normalised train chunk at once, so its peak follows the chunks, not the train-set size; the dense variant
holds normalised copies of both inputs and every test x train score.

    python benchmarks/knn_memory.py                      # 20k x 2k features, three variants, 3 repeats
    python benchmarks/knn_memory.py --train 50000        # the chunked peak stays flat as the train set grows

Prints one table row per variant (median and range over repeats) and the ratio to the dense variant.
"""

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repeats import fmt_summary, summarize  # noqa: E402

VARIANTS = {
    "chunked (defaults: test 1024, train 8192)": dict(test_chunk=1024, train_chunk=8192),
    "chunked (test 256, train 2048)": dict(test_chunk=256, train_chunk=2048),
    "dense (one test x train matrix)": None,
}


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child(args) -> None:
    from sop_hf.evaluation.knn import knn_classify

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    train = torch.randn(args.train, args.dim, generator=g)  # no transient copies before the baseline is read
    test = torch.randn(args.test, args.dim, generator=g)
    labels = torch.randint(10, (args.train,), generator=g)
    before = _peak_mib()
    variant = VARIANTS[args.variant]
    if variant is None:
        scores = torch.nn.functional.normalize(test, dim=1) @ torch.nn.functional.normalize(train, dim=1).T  # [M, N]
        top = scores.topk(args.k, dim=1)
        votes = torch.nn.functional.one_hot(labels[top.indices], 10).float() * (top.values / 0.07).exp()[..., None]
        votes.sum(1).argmax(1)
    else:
        knn_classify(train, labels, test, ks=(args.k,), **variant)
    print(json.dumps({"peak_growth_mib": max(0.0, _peak_mib() - before)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        return child(args)
    print(f"k-NN peak memory growth above the inputs: {args.train} train x {args.test} test x {args.dim}-d float32, "
          f"k={args.k}; median (range, n) over {args.repeats} processes each")  # fmt: skip
    print("| variant | peak growth (MiB) | scores + normalised copies held at once (MiB) | ratio to dense |")
    print("|---|---|---|---|")
    rows = {}
    for name in VARIANTS:
        runs = []
        for _ in range(args.repeats):
            cmd = [sys.executable, __file__, "--variant", name, *sum(([f"--{k}", str(getattr(args, k))] for k in
                   ("train", "test", "dim", "k")), [])]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1])["peak_growth_mib"])
        rows[name] = summarize(runs)
    dense = rows["dense (one test x train matrix)"]["median"]
    for name, summary in rows.items():
        variant = VARIANTS[name]
        if variant is None:
            bound = (args.test * args.train + (args.train + args.test) * args.dim) * 4 / 2**20
        else:
            q, c = min(variant["test_chunk"], args.test), min(variant["train_chunk"], args.train)
            bound = (q * (c + args.k) + c * args.dim + args.test * args.dim) * 4 / 2**20
        ratio = summary["median"] / dense if dense else float("nan")
        print(f"| {name} | {fmt_summary(summary, '{:.0f}')} | {bound:.0f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
