#!/usr/bin/env bash
# Prepare the GPU kit on a machine with PyPI access (docs/performance.md), from the repository root:
#
#     bash benchmarks/prepare_gpu_check.sh
#
# 1. benchmarks/.wheels: the pure-Python wheels the GPU machine lacks (its image has PyTorch, transformers,
#    accelerate, pyarrow, pandas, xxhash, fsspec, huggingface_hub, but not datasets and evaluate), for Python 3.12,
#    at the versions this project is tested with; override with WHEELS="name==version ...".
# 2. benchmarks/.data/fashion-mnist: the four .gz files of Debian's dataset-fashion-mnist (or $FASHION_MNIST_SRC).
# Both folders are gitignored; carry them to the GPU machine (about 31 MiB together).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-"datasets==5.2.0 evaluate==0.4.6 dill==0.4.1 multiprocess==0.70.19"}
rm -rf benchmarks/.wheels && mkdir -p benchmarks/.wheels
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --platform any -d benchmarks/.wheels $WHEELS
src=${FASHION_MNIST_SRC:-/usr/share/datasets/fashion-mnist}
mkdir -p benchmarks/.data/fashion-mnist
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  cp "$src/$name.gz" benchmarks/.data/fashion-mnist/
done
du -sh benchmarks/.wheels benchmarks/.data
ls benchmarks/.wheels
