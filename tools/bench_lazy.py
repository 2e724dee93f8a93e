"""One optimizer step on a large embedding table with few touched rows: dense-equivalent Adam, LazyAdam, and
PyTorch's SparseAdam when installed, measured side by side in one process. Prints times and ratios; asserts nothing.

    python tools/bench_lazy.py [--rows 1000000] [--dim 64] [--touched 1000] [--reps 7]
"""
import argparse, time
import numpy as np
from adam_lit import Adam, IndexedSlices, LazyAdam


def median_step(make_opt, table, grads):
    opt = make_opt()
    times = []
    for g in grads:
        t0 = time.perf_counter(); opt.apply([g], [table]); times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))          # the first step also builds the slots


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000); ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--touched", type=int, default=1000); ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    table = rng.standard_normal((a.rows, a.dim), dtype=np.float32)
    grads = [IndexedSlices(rng.standard_normal((a.touched, a.dim), dtype=np.float32),
                           rng.integers(0, a.rows, a.touched), table.shape) for _ in range(a.reps)]
    print(f"table {a.rows} x {a.dim} float32 ({table.nbytes / 2**20:.0f} MiB), {a.touched} touched rows, median of {a.reps - 1} steps")
    res = {"LazyAdam": median_step(LazyAdam, table, grads),
           "LazyAdam (amsgrad)": median_step(lambda: LazyAdam(amsgrad=True), table, grads),
           "Adam (dense-equivalent)": median_step(Adam, table, grads)}
    try:
        import torch
        w = torch.nn.Parameter(torch.from_numpy(table.copy()))
        opt = torch.optim.SparseAdam([w], lr=1e-3)
        times = []
        for g in grads:
            w.grad = torch.sparse_coo_tensor(torch.from_numpy(g.indices)[None], torch.from_numpy(g.values), table.shape)
            t0 = time.perf_counter(); opt.step(); times.append(time.perf_counter() - t0)
        res["torch.optim.SparseAdam"] = float(np.median(times[1:]))
    except ImportError:
        print("(PyTorch not installed: no SparseAdam column)")
    base = res["LazyAdam"]
    for k, t in res.items():
        print(f"  {k:<26} {t * 1e3:10.3f} ms   {t / base:8.1f} x LazyAdam")
    print(f"dense-equivalent Adam / LazyAdam = {res['Adam (dense-equivalent)'] / base:.0f}")


if __name__ == "__main__":
    main()
