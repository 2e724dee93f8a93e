#!/usr/bin/env bash
# The checks that need a GPU: the notebooks' `#| gpu` cells, the CuPy cases of the backend tests and of the
# multi-tensor kernel's tests, the fresh-gradient many-tensor rows (adam_multi_cupy, on CuPy arrays and on CUDA torch
# tensors, against torch.optim.Adam(fused=True), into $OUT/multi_gpu.txt; SKIP_MULTI=1 skips them), and the GPU
# benchmark (`adam-lit bench --gpu`). Run from the repository root on a machine with CUDA, CuPy and the package's
# dependencies importable (no network needed); results go to $OUT (default ./gpu_out). The multi-tensor checks alone:
# NOTEBOOKS=nbs/09_cuda.ipynb SKIP_BENCH=1 tools/gpu_check.sh (add SKIP_TESTS=1 for the timing rows only).
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
  $PY -m pytest -q -p no:cacheprovider tests/test_backends.py tests/test_cuda_multi.py 2>&1 | tee "$OUT/pytest_gpu.log" || status=1
fi
if [ "${SKIP_MULTI:-0}" != 1 ]; then
  $PY - <<'PYEOF' 2>&1 | tee "$OUT/multi_gpu.txt" || status=1
# The fresh-gradient, many-tensor rows on the GPU: one float32 Adam step over a transformer-like list (78 tensors)
# and over 1000 tensors of 1000, with a new set of gradient arrays every step (4 sets rotated), as a training loop
# hands them over. Wall time per step (host and device: each run ends with a device synchronisation), median of
# REPS runs of STEPS steps; ratio = torch fused time / this row's time.
import os, time
import numpy as np
import cupy as cp
from adam_lit import Adam
from adam_lit.cuda import adam_multi_cupy, adam_inplace_cupy, adam_multi_torch_cuda, pointer_table
from adam_lit.rules import bias_corrected_step_size, moment_constants
try:
    import torch
    have_torch = torch.cuda.is_available()
except ImportError:
    torch, have_torch = None, False
SETS, STEPS, REPS = 4, int(os.environ.get("STEPS", 50)), int(os.environ.get("REPS", 5))
C1, C2 = moment_constants(0.9, 0.999, np.float32)
alpha = lambda t: bias_corrected_step_size(1e-3, 0.9, 0.999, t, np.float32)

def transformer(d=256, ff=1024, layers=6, vocab=512, ctx=256):
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):   # qkv, out projection, 2 layer norms, 2 MLP matrices, their biases
        shapes += [(d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,), (d, ff), (ff,), (ff, d), (d,), (d,), (d,)]
    return shapes + [(d,), (d,), (d, vocab), (vocab,)]

CASES = {"transformer-like, 78 tensors": transformer(), "1000 tensors of 1000": [(1000,)] * 1000}

def wall(step):
    for k in range(3): step(k)
    cp.cuda.Device().synchronize()
    ts = []
    for _ in range(REPS):
        t0 = time.perf_counter()
        for k in range(STEPS): step(k)
        cp.cuda.Device().synchronize()
        ts.append((time.perf_counter() - t0) / STEPS)
    return float(np.median(ts))

def cupy_arrays(shapes, seed=0):
    rng = np.random.default_rng(seed)
    xs = [cp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes]
    gsets = [[cp.asarray(rng.standard_normal(s, dtype=np.float32)) for s in shapes] for _ in range(SETS)]
    return xs, [cp.zeros_like(x) for x in xs], [cp.zeros_like(x) for x in xs], gsets

def cupy_multi(shapes):
    xs, ms, vs, gsets = cupy_arrays(shapes)
    ptrs, sizes, dtype, _ = pointer_table(xs, gsets[0], ms, vs)
    decay, t = np.ones(len(shapes), np.bool_), [0]
    def step(k):
        ptrs[1] = [g.data.ptr for g in gsets[k % SETS]]        # the fresh gradients' addresses
        t[0] += 1
        adam_multi_cupy(ptrs, sizes, decay, dtype=dtype, alpha=alpha(t[0]), c1=C1, c2=C2, epsilon=1e-7)
    step.keep = (xs, ms, vs)          # the table holds raw addresses: the arrays must outlive the steps
    return step

def cupy_single(shapes):
    xs, ms, vs, gsets = cupy_arrays(shapes)
    t = [0]
    def step(k):
        t[0] += 1
        a = alpha(t[0])
        for x, g, m, v in zip(xs, gsets[k % SETS], ms, vs): adam_inplace_cupy(x, g, m, v, alpha=a, c1=C1, c2=C2, epsilon=1e-7)
    return step

def cupy_api(shapes):
    xs, _, _, gsets = cupy_arrays(shapes)
    opt = Adam(learning_rate=1e-3); opt.build(xs)
    return lambda k: opt.apply(gsets[k % SETS], xs)

def torch_tensors(shapes):
    g = torch.Generator(device="cuda").manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(s, device="cuda", generator=g)) for s in shapes]
    gsets = [[torch.randn(s, device="cuda", generator=g) for s in shapes] for _ in range(SETS)]
    return ps, gsets

def torch_opt(**kw):
    def make(shapes):
        ps, gsets = torch_tensors(shapes)
        opt = torch.optim.Adam(ps, lr=1e-3, eps=1e-7, **kw)
        def step(k):
            for p, g in zip(ps, gsets[k % SETS]): p.grad = g
            opt.step()
        return step
    return make

def torch_multi_convenience(shapes):
    ps, gsets = torch_tensors(shapes)
    ms, vs, t = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps], [0]
    def step(k):
        t[0] += 1
        adam_multi_torch_cuda(ps, gsets[k % SETS], ms, vs, alpha=alpha(t[0]), c1=C1, c2=C2, epsilon=1e-7)
    return step

def torch_multi_table(shapes):
    ps, gsets = torch_tensors(shapes)
    ms, vs, t = [torch.zeros_like(p) for p in ps], [torch.zeros_like(p) for p in ps], [0]
    ptrs, sizes, dtype, dev = pointer_table(ps, gsets[0], ms, vs)
    decay = np.ones(len(shapes), np.bool_)
    def step(k):
        ptrs[1] = [g.data_ptr() for g in gsets[k % SETS]]
        t[0] += 1
        adam_multi_cupy(ptrs, sizes, decay, dtype=dtype, alpha=alpha(t[0]), c1=C1, c2=C2, epsilon=1e-7,
                        stream=torch.cuda.current_stream().cuda_stream)
    step.keep = (ps, ms, vs)          # the table holds raw addresses: the tensors must outlive the steps
    return step

ROWS = [("adam_lit adam_multi_cupy, CuPy arrays (one launch)", cupy_multi),
        ("adam_lit adam_inplace_cupy, one launch per tensor", cupy_single),
        ("adam_lit Adam().apply, CuPy arrays", cupy_api)]
if have_torch:
    ROWS += [("adam_lit adam_multi_cupy, torch CUDA tensors (row g refreshed)", torch_multi_table),
             ("adam_lit adam_multi_torch_cuda (table rebuilt every call)", torch_multi_convenience),
             ("torch.optim.Adam(fused=True)", torch_opt(fused=True)),
             ("torch.optim.Adam(foreach=True)", torch_opt(foreach=True))]
else:
    print("torch with CUDA is not available: no torch rows")
props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
print(props["name"].decode() if isinstance(props["name"], bytes) else props["name"], f"| steps {STEPS} x {REPS} runs, medians")
for case, shapes in CASES.items():
    n = sum(int(np.prod(s)) for s in shapes)
    times = {}
    for label, make in ROWS:
        try:
            times[label] = wall(make(shapes))
        except Exception as e:          # a row that fails says why and the others still run
            print(f"{case} | {label}: FAILED {type(e).__name__}: {e}")
        cp.get_default_memory_pool().free_all_blocks()
        if have_torch: torch.cuda.empty_cache()
    ref = times.get("torch.optim.Adam(fused=True)")
    print(f"\n| {case} ({n / 1e6:.2f}M float32) | time per step | GB/s (28 B/param) | ratio (torch fused / row) |")
    print("|---|---|---|---|")
    for label, t in times.items():
        print(f"| {label} | {t * 1e6:,.1f} us | {28 * n / t / 1e9:,.0f} | {ref / t:.2f} |" if ref else
              f"| {label} | {t * 1e6:,.1f} us | {28 * n / t / 1e9:,.0f} | - |")
PYEOF
fi
if [ "${SKIP_BENCH:-0}" != 1 ]; then
  $PY -m adam_lit bench --gpu --out "$OUT/bench_gpu.png" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_gpu.txt" || status=1
fi
exit $status
