#!/usr/bin/env bash
# The GPU verification kit, run on the GPU machine from the repository root (docs/performance.md):
#
#     bash benchmarks/gpu_check.sh             # install what is missing, then the checks: one table, <= 8 minutes
#     bash benchmarks/gpu_check.sh --dry-run   # tiny sizes on CPU, in the current environment (tests run this)
#
# The machine has PyTorch, transformers and accelerate but no network: the project is installed with
# `pip install --no-deps`, and the pure-Python wheels it lacks come from benchmarks/.wheels, which
# `bash benchmarks/prepare_gpu_check.sh` fills on a machine with PyPI access (with the Fashion-MNIST files in
# benchmarks/.data/fashion-mnist). Everything is installed into a scratch folder ($SOP_GPU_CHECK_SITE, default
# /tmp/sop_gpu_check_site) put first on PYTHONPATH; the machine's own packages are left alone.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
if [ "${1:-}" = "--dry-run" ]; then
  exec "$PY" benchmarks/gpu_check.py "$@"
fi
SITE=${SOP_GPU_CHECK_SITE:-/tmp/sop_gpu_check_site}
mkdir -p "$SITE"
pip_install() { "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"; }
start=$(date +%s)
shopt -s nullglob
wheels=(benchmarks/.wheels/*.whl)
missing=$("$PY" - <<'PYEOF'
import importlib.util
print(" ".join(m for m in ("datasets", "evaluate", "dill", "multiprocess") if importlib.util.find_spec(m) is None))
PYEOF
)
if [ -n "$missing" ]; then
  if [ ${#wheels[@]} -eq 0 ]; then
    echo "[gpu_check] missing $missing and no wheels in benchmarks/.wheels: run benchmarks/prepare_gpu_check.sh" >&2
  else
    for wheel in "${wheels[@]}"; do  # one by one: a wheel for another Python costs only itself
      pip_install "$wheel" 2>&1 | grep -v '^WARNING: Location' >&2 || true
    done
  fi
fi
# The project itself, without dependencies (setuptools is on the machine; no build isolation: no network).
if pip_install --no-build-isolation . 2>&1 | grep -v '^WARNING: Location' >&2; [ "${PIPESTATUS[0]}" -eq 0 ]; then
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "[gpu_check] pip install of the project failed; using src/ on PYTHONPATH" >&2
  export PYTHONPATH="$SITE:$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "[gpu_check] install: $(( $(date +%s) - start )) s; sop_hf from $("$PY" -c 'import sop_hf, os; print(os.path.dirname(sop_hf.__file__))')" >&2
data_dir=${SOP_FASHION_MNIST_DIR:-benchmarks/.data/fashion-mnist}
if [ -f "$data_dir/train-images-idx3-ubyte.gz" ]; then
  export SOP_FASHION_MNIST_DIR="$PWD/$data_dir"
  [ "${data_dir:0:1}" = "/" ] && export SOP_FASHION_MNIST_DIR="$data_dir"
fi
exec "$PY" benchmarks/gpu_check.py "$@"
