#!/usr/bin/env bash
# Set up a virtual environment in .venv and run every test: the notebooks (nbdev-test) and tests/ (pytest).
# Works on a fresh machine with Python >= 3.10 and nothing else; the real Keras 3 (on JAX) and Optax are installed as
# oracles; tests of what is not installed (PyTorch, MPI, CuPy) say they are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev,oracle-keras,oracle-optax]"
# mpi4py (adam_lit.distributed's tests) where an MPI library is installed; elsewhere those tests say they are skipped
if command -v mpicc >/dev/null && command -v mpirun >/dev/null; then .venv/bin/python -m pip install -q -e ".[mpi]"; fi
export KERAS_BACKEND=jax
# what is missing here: the tests and notebook cells that need it say they are skipped (or, with
# ADAM_LIT_REQUIRE_ORACLES=1, as CI sets after installing everything, fail)
.venv/bin/python -c 'from adam_lit._optional import missing
print("== optional libraries not installed here:", ", ".join(missing("torch", "jax", "keras", "optax", "ml_dtypes", "mpi4py", "tensorflow", "cupy")) or "none")'
echo "== nbdev-test (notebooks)"
# the PyTorch front end's page (nbs/17_torch.ipynb) subclasses torch.optim.Optimizer: its cells carry the test flag
# `torch`, run where PyTorch is installed (and required where ADAM_LIT_REQUIRE_ORACLES=1)
FLAGS=()
if .venv/bin/python -c 'import torch' 2>/dev/null; then FLAGS=(--flags torch)
elif .venv/bin/python -c 'from adam_lit._optional import required; raise SystemExit(0 if required() else 1)'; then
  echo "ADAM_LIT_REQUIRE_ORACLES=1, but torch is not installed: the PyTorch front end's page cannot run" >&2; exit 1
else echo "== nbs/17_torch.ipynb skipped: torch not installed"; fi
.venv/bin/nbdev-test --n-workers 2 --timing "${FLAGS[@]}"
echo "== pytest (tests/)"
.venv/bin/python -m pytest -q -rs tests
