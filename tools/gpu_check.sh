#!/usr/bin/env bash
# The checks that need a GPU: the notebooks' `#| gpu` cells, the CuPy cases of the backend tests, and the GPU
# benchmark (`adam-lit bench --gpu`). Run from the repository root on a machine with CUDA, CuPy and the package's
# dependencies importable (no network needed); results go to $OUT (default ./gpu_out).
set -uo pipefail
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}   # JAX in parallel notebooks: no 75 % preallocation each
PY=${PYTHON:-python3}
$PY -c "import cupy; print('CuPy', cupy.__version__, cupy.cuda.runtime.getDeviceCount(), 'device(s)')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.memory --format=csv 2>/dev/null | tee "$OUT/nvidia_smi.txt"
status=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  $PY -c "import sys; sys.argv = ['nbdev-test', '--flags', 'gpu', '--n-workers', '${WORKERS:-4}'] + sys.argv[1:]; from nbdev.test import nbdev_test; nbdev_test()" \
      ${NOTEBOOKS:-} 2>&1 | tee "$OUT/nbdev_test_gpu.log" || status=1
  $PY -m pytest -q -p no:cacheprovider tests/test_backends.py 2>&1 | tee "$OUT/pytest_gpu.log" || status=1
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  $PY -m adam_lit bench --gpu --out "$OUT/bench_gpu.png" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_gpu.txt" || status=1
fi
exit $status
