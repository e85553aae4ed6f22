"""Benchmark: chunked weighted k-NN (DINO protocol) time and peak memory growth.

Fashion-MNIST size (60k train x 10k test, 384-d) and, without --quick, ImageNet size (1.28M x 384 train features,
10k test), synthetic features, k in {10, 20, 100, 200}. Memory stays O(test_chunk x train_chunk).

    python benchmarks/knn_eval.py [--quick]
"""

import argparse
import resource
import time

import torch

from sop_hf.evaluation.knn import knn_top1


def _case(num_train: int, num_test: int, dim: int = 384, num_classes: int = 10) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    train, test = torch.randn(num_train, dim, generator=g), torch.randn(num_test, dim, generator=g)
    train_y = torch.randint(0, num_classes, (num_train,), generator=g)
    test_y = torch.randint(0, num_classes, (num_test,), generator=g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    knn_top1(train, train_y, test, test_y)
    seconds = time.perf_counter() - start
    return seconds, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024


def run(quick: bool = False, device: str | None = None) -> dict:
    seconds, peak = _case(60000, 10000 if not quick else 2000)
    results = {"fmnist_size_seconds": seconds, "fmnist_size_peak_growth_mib": peak}
    if not quick:
        seconds, peak = _case(1_281_167, 10000, num_classes=1000)
        results.update(imagenet_size_seconds=seconds, imagenet_size_peak_growth_mib=peak)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    for key, value in run(parser.parse_args().quick).items():
        print(f"{key}: {value:.2f}")


if __name__ == "__main__":
    main()
