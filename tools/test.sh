#!/usr/bin/env bash
# Set up a virtual environment in .venv and run every test: the notebooks (nbdev-test) and tests/ (pytest).
# Works on a fresh machine with Python >= 3.10; the real Keras 3 (on JAX) and Optax are installed as oracles.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,oracle-keras,oracle-optax]"
# mpi4py (adam_lit.distributed's tests) where an MPI library is installed; elsewhere those tests say they are skipped
if command -v mpicc >/dev/null && command -v mpirun >/dev/null; then .venv/bin/python -m pip install -q -e ".[mpi]"; fi
export KERAS_BACKEND=jax
echo "== nbdev-test (notebooks)"
.venv/bin/nbdev-test --n-workers 2 --timing
echo "== pytest (tests/)"
.venv/bin/python -m pytest -q tests
