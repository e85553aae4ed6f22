"""Benchmark: chunked weighted k-NN (DINO protocol) time and peak memory growth.

Fashion-MNIST size (60k train x 10k test, 384-d) and, without --quick, ImageNet size (1.28M x 384 train features,
10k test), synthetic features, k in {10, 20, 100, 200}. Memory stays O(test_chunk x train_chunk).

    python benchmarks/knn_eval.py [--quick] [--repeats 3]
"""

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

from sop_hf.evaluation.knn import knn_top1

sys.path.insert(0, str(Path(__file__).resolve().parent))
from repeats import print_runs  # noqa: E402


def _case(num_train: int, num_test: int, dim: int = 384, num_classes: int = 10, device: str = "cpu"):
    """(seconds, peak memory growth in MiB: host RSS on CPU, CUDA allocator peak on a GPU)."""
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(num_train, dim, generator=g), torch.randn(num_test, dim, generator=g)
    train_y = torch.randint(0, num_classes, (num_train,), generator=g)
    test_y = torch.randint(0, num_classes, (num_test,), generator=g)
    train, test, train_y, test_y = (t.to(device) for t in (train, test, train_y, test_y))
    on_cuda = torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    knn_top1(train, train_y, test, test_y)
    if on_cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    after = torch.cuda.max_memory_allocated() if on_cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return seconds, (after - before) / 2**20


def run(quick: bool = False, device: str | None = None, imagenet: bool = True) -> dict:
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    seconds, peak = _case(60000, 10000 if not quick else 2000, device=device)
    results = {"fmnist_size_seconds": seconds, "fmnist_size_peak_growth_mib": peak}
    if not quick and imagenet:
        seconds, peak = _case(1_281_167, 10000, num_classes=1000, device=device)
        results.update(imagenet_size_seconds=seconds, imagenet_size_peak_growth_mib=peak)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="independent runs; > 1 prints median and range")
    parser.add_argument("--no_imagenet", action="store_true", help="only the Fashion-MNIST size (60k x 10k)")
    args = parser.parse_args()
    print_runs([run(args.quick, imagenet=not args.no_imagenet) for _ in range(args.repeats)], "{:.2f}")


if __name__ == "__main__":
    main()
