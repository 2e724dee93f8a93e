"""Row-sparse gradients on NumPy tables, in place: LazyAdam's fused pass over the touched rows (numba, and the NumPy
loop without it) and dense-equivalent Adam's in-place step give the bits of the general path and of the rules;
a bad index changes nothing; the dense-equivalent step allocates far less than a table."""
import itertools
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import adam_lit.adam as adam_mod
import adam_lit.lazyadam as lazy_mod
from adam_lit import Adam, IndexedSlices, LazyAdam
from adam_lit.adam import _summed_rows
from adam_lit.backend import host_float
from adam_lit.lazyadam import lazy_adam_rows_inplace
from adam_lit.rules import lazy_adam_rows, sparse_adam_step

HAVE_NUMBA = lazy_mod._rows_kernel(False, False) is not None


def _batches(rng, shape, dtype, idx_dtype, steps=4, k=40):
    "Unsorted indices with repeats (one row listed many times), rows with -0.0, +0.0 and mixed magnitudes."
    out = []
    for s in range(steps):
        idx = rng.integers(0, shape[0], k)
        idx[: k // 4] = idx[k // 4: k // 2]           # repeats
        idx[-5:] = idx[0]                              # one row many times
        vals = (rng.standard_normal((k,) + shape[1:]) * 10.0 ** rng.integers(-3, 4, (k,) + shape[1:])).astype(dtype)
        vals.reshape(k, -1)[3, :] = -0.0
        vals.reshape(k, -1)[4, :] = 0.0
        out.append(IndexedSlices(vals, idx.astype(idx_dtype), shape))
    return out


def _state(opt, table):
    return [table.copy()] + [np.array(w, copy=True) for w in opt.get_weights()]


def _run(make, shape, dtype, batches, monkeypatch, *, fast, numba=True, dense_every=None):
    "Run the batches with the in-place path on (fast) or off (the general path of RowUpdates and rules)."
    rng = np.random.default_rng(1)
    table = rng.standard_normal(shape).astype(dtype)
    opt = make()
    with monkeypatch.context() as mp:
        if not fast:
            mp.setattr(lazy_mod, "_numpy_rows_ok", lambda x, g: False)
            mp.setattr(adam_mod, "_numpy_rows_ok", lambda x, g: False)
        if not numba:                                  # as without numba: no compiled grouping, no compiled loop
            mp.setattr(lazy_mod, "_rows_kernel", lambda ams, decay: None)
            mp.setattr(lazy_mod, "_group_kernel", lambda: None)
        calls = {"n": 0}
        inner = lazy_mod.lazy_adam_rows_inplace
        def spy(*a, **k):
            calls["n"] += 1; return inner(*a, **k)
        mp.setattr(lazy_mod, "lazy_adam_rows_inplace", spy)
        run = lazy_mod.LazyAdam._rows_run                 # (the training-loop step's planned call of the same loop)
        def spy_run(*a, **k):
            calls["n"] += 1; return run(*a, **k)
        mp.setattr(lazy_mod.LazyAdam, "_rows_run", spy_run)
        for s, g in enumerate(batches):
            if dense_every and s % dense_every == dense_every - 1: g = g.to_dense()
            opt.apply([g], [table])
    assert fast or calls["n"] == 0
    return _state(opt, table), calls["n"]


LAZY_CASES = list(itertools.product(
    [np.float32, np.float64], [np.int32, np.int64],
    [dict(), dict(amsgrad=True), dict(weight_decay=0.05), dict(row_bias_correction=True),
     dict(amsgrad=True, weight_decay=0.01, row_bias_correction=True), dict(numerics="legacy"),
     dict(numerics="legacy", weight_decay=0.02, row_bias_correction=True), dict(clipnorm=0.5, learning_rate=0.01)]))


@pytest.mark.parametrize("dtype,idx_dtype,kw", LAZY_CASES)
@pytest.mark.parametrize("numba", [True, False])
def test_lazy_in_place_matches_general_path(dtype, idx_dtype, kw, numba, monkeypatch):
    if numba and not HAVE_NUMBA: pytest.skip("numba is not installed: the compiled loop is not used")
    shape = (57, 6)
    batches = _batches(np.random.default_rng(0), shape, dtype, idx_dtype)
    make = lambda: LazyAdam(**{"learning_rate": 0.05, **kw})
    with np.errstate(all="ignore"):
        ref, _ = _run(make, shape, dtype, batches, monkeypatch, fast=False)
        got, calls = _run(make, shape, dtype, batches, monkeypatch, fast=True, numba=numba)
    assert calls == len(batches)                       # every step took the in-place path
    for r, g in zip(ref, got):
        assert r.dtype == g.dtype and r.tobytes() == g.tobytes()


@pytest.mark.parametrize("shape", [(31,), (23, 2, 3), (40, 1)])
@pytest.mark.parametrize("numba", [True, False])
def test_lazy_in_place_other_ranks(shape, numba, monkeypatch):
    if numba and not HAVE_NUMBA: pytest.skip("numba is not installed")
    batches = _batches(np.random.default_rng(2), shape, np.float32, np.int64)
    make = lambda: LazyAdam(learning_rate=0.05, amsgrad=True, weight_decay=0.01, row_bias_correction=True)
    ref, _ = _run(make, shape, np.float32, batches, monkeypatch, fast=False)
    got, calls = _run(make, shape, np.float32, batches, monkeypatch, fast=True, numba=numba)
    assert calls == len(batches)
    assert all(r.tobytes() == g.tobytes() for r, g in zip(ref, got))


def test_lazy_dense_gradient_with_row_counters(monkeypatch):
    # with row_bias_correction a dense gradient touches every row: the in-place path too, with the same bits
    shape = (20, 3)
    batches = _batches(np.random.default_rng(3), shape, np.float32, np.int64, steps=6)
    make = lambda: LazyAdam(learning_rate=0.05, row_bias_correction=True, weight_decay=0.01)
    ref, _ = _run(make, shape, np.float32, batches, monkeypatch, fast=False, dense_every=2)
    got, calls = _run(make, shape, np.float32, batches, monkeypatch, fast=True, dense_every=2)
    assert calls == len(batches)
    assert all(r.tobytes() == g.tobytes() for r, g in zip(ref, got))


@pytest.mark.parametrize("ams,wd,per_row", [(False, None, False), (True, 0.1, True), (True, None, False), (False, 0.1, True)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size,threads", [("small", 2), ("large", 1), ("large", 2), ("large", 3), ("odd", 2), ("wide", 2)])
def test_rows_inplace_numba_and_numpy_agree_with_the_rule(ams, wd, per_row, dtype, size, threads, monkeypatch):
    # large, odd, wide: n * D >= PARALLEL_MIN, so the compiled loop splits the rows between `threads` runs (1: one
    # thread); odd: rows of 37 elements, which start anywhere in a cache line; wide: rows longer than the 256 bytes the
    # loop fetches ahead
    monkeypatch.setattr(lazy_mod, "_threads", lambda: threads)
    rng = np.random.default_rng(4)
    R, D, n = {"small": (30, 5, 50), "large": (700, 64, 1500), "odd": (900, 37, 1000), "wide": (200, 300, 120)}[size]
    assert (n * D >= lazy_mod.PARALLEL_MIN) == (size != "small")
    x0 = rng.standard_normal((R, D)).astype(dtype); m0 = rng.standard_normal((R, D)).astype(dtype)
    v0 = rng.random((R, D)).astype(dtype); h0 = rng.random((R, D)).astype(dtype)
    idx = rng.integers(0, R, n); g = rng.standard_normal((n, D)).astype(dtype)
    d = IndexedSlices(g, idx, (R, D)).deduplicate()
    alpha = rng.random(d.indices.size).astype(dtype) * dtype(0.01) if per_row else 0.0123
    kw = dict(beta_1=0.9, beta_2=0.999, c1=0.1, c2=0.001, epsilon=1e-7)
    xr = x0[d.indices]
    if wd is not None: xr = xr - (xr * wd) * 0.5
    ref = lazy_adam_rows(xr, d.values, m0[d.indices], v0[d.indices], h0[d.indices] if ams else None,
                         alpha=alpha if not per_row else alpha.reshape(-1, 1), **kw)
    for use in ([None, False] if HAVE_NUMBA else [False]):
        x, m, v, h = x0.copy(), m0.copy(), v0.copy(), h0.copy()
        lazy_adam_rows_inplace(x, g, m, v, h if ams else None, indices=idx, alpha=alpha, weight_decay=wd, lr=0.5,
                               use_numba=use, **kw)
        for full, base, rows in ((x, x0, ref[0]), (m, m0, ref[1]), (v, v0, ref[2]), (h, h0, ref[3])):
            if rows is None: assert full.tobytes() == base.tobytes(); continue
            assert full[d.indices].tobytes() == rows.tobytes()
            untouched = np.setdiff1d(np.arange(R), d.indices)
            assert full[untouched].tobytes() == base[untouched].tobytes()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(64,), (64, 3)])
def test_summed_rows_are_deduplicates_bits(dtype, shape):
    rng = np.random.default_rng(5)
    for n, hi in ((200, 7), (200, 64), (1, 64), (0, 64)):
        idx = rng.integers(0, hi, n)
        vals = (rng.standard_normal((n,) + shape[1:]) * 10.0 ** rng.integers(-8, 9, (n,) + shape[1:])).astype(dtype)
        if n > 3: vals[:3] = -0.0; vals[3] = np.inf
        d = IndexedSlices(vals, idx, shape).deduplicate()
        u, rows = _summed_rows(vals, idx, shape[0])
        assert u.tolist() == d.indices.tolist()
        assert rows.tobytes() == d.values.tobytes()


@pytest.mark.parametrize("case", ["random", "strided", "one_row", "huge", "empty", "int32"])
def test_grouping_lists_each_rows_occurrences_together_in_order(case):
    rng = np.random.default_rng(8)
    n_rows = 1 << 40 if case == "huge" else 1 << 20
    idx = {"random": rng.integers(0, 50, 300), "strided": np.arange(0, 1 << 20, 1 << 10).repeat(3)[::-1].copy(),
           "one_row": np.full(257, 7), "huge": rng.integers(0, 1 << 40, 100).repeat(2),
           "empty": np.zeros(0, np.int64), "int32": rng.integers(0, 9, 64).astype(np.int32)}[case]
    order, ends = lazy_mod._grouped(idx, n_rows)
    assert sorted(order.tolist()) == list(range(idx.size))
    srt = idx[order]
    starts = [0][:srt.size] + [k for k in range(1, srt.size) if srt[k] != srt[k - 1]]
    assert len(starts) == np.unique(idx).size                  # each row's occurrences are together
    for a, b in zip(starts, starts[1:] + [srt.size]):
        assert np.all(np.diff(order[a:b]) > 0)                 # and in order of appearance
    assert ends.tolist() == starts[1:] + [srt.size][:srt.size]  # where each row's group ends
    assert lazy_mod._ends(idx, order).tolist() == ends.tolist()


def test_bad_index_changes_nothing():
    for make in (lambda: LazyAdam(row_bias_correction=True, amsgrad=True, weight_decay=0.01),
                 lambda: Adam(amsgrad=True, weight_decay=0.01)):
        table = np.arange(40, dtype=np.float32).reshape(10, 4) / 7
        opt = make()
        opt.apply([IndexedSlices(np.ones((2, 4), np.float32), np.array([1, 3]), table.shape)], [table])
        before, it = _state(opt, table), opt.iterations
        for bad in (-1, 10):
            g = IndexedSlices(np.ones((3, 4), np.float32), np.array([2, 5, 2]), table.shape)
            g.indices[1] = bad                                 # made bad after IndexedSlices checked it
            with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
                opt.apply([g], [table])
            after = _state(opt, table)
            assert opt.iterations == it and all(a.tobytes() == b.tobytes() for a, b in zip(before, after))


ADAM_CASES = list(itertools.product([np.float32, np.float64], [np.int32, np.int64],
                                    [dict(), dict(amsgrad=True), dict(weight_decay=0.03), dict(numerics="legacy"),
                                     dict(numerics="legacy", amsgrad=True, weight_decay=0.01)]))


@pytest.mark.parametrize("dtype,idx_dtype,kw", ADAM_CASES)
def test_sparse_adam_in_place_matches_the_rule(dtype, idx_dtype, kw, monkeypatch):
    shape = (45, 3)
    batches = _batches(np.random.default_rng(6), shape, dtype, idx_dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(dtype)
    slots = {k: np.zeros(shape, dtype) for k in ("m", "v", "vhat")}
    o = Adam(learning_rate=0.05, **kw)
    S, ams, wd = host_float(np, dtype), kw.get("amsgrad", False), kw.get("weight_decay")
    for t, g in enumerate(batches, start=1):            # the rule on copies, the pipeline's decay first
        lr = o._lr_at(S, t - 1, o._learning_rate)
        if wd: x = x - (x * float(S(wd))) * lr
        x, slots["m"], slots["v"], vh = sparse_adam_step(x, g, slots["m"], slots["v"], slots["vhat"] if ams else None,
                                                         learning_rate=lr, t=t, numerics=o.numerics)
        if ams: slots["vhat"] = vh
    calls = {"n": 0}
    inner = Adam._sparse_in_place
    def spy(self, *a):
        calls["n"] += 1; return inner(self, *a)
    monkeypatch.setattr(Adam, "_sparse_in_place", spy)
    got, _ = _run(lambda: Adam(learning_rate=0.05, **kw), shape, dtype, batches, monkeypatch, fast=True)
    assert calls["n"] == len(batches)
    assert got[0].tobytes() == x.tobytes()
    ms = [a for a in got[1:] if a.shape == shape]          # get_weights: the counter, the rate, m, v (and vhat)
    assert len(ms) == (3 if ams else 2)
    assert ms[0].tobytes() == slots["m"].tobytes() and ms[1].tobytes() == slots["v"].tobytes()
    if ams: assert ms[2].tobytes() == slots["vhat"].tobytes()


def test_sparse_adam_in_place_matches_general_path(monkeypatch):
    shape = (33, 2, 2)
    batches = _batches(np.random.default_rng(7), shape, np.float32, np.int64)
    make = lambda: Adam(learning_rate=0.05, amsgrad=True, weight_decay=0.02, clipvalue=0.5)
    ref, _ = _run(make, shape, np.float32, batches, monkeypatch, fast=False)
    got, _ = _run(make, shape, np.float32, batches, monkeypatch, fast=True)
    assert all(r.tobytes() == g.tobytes() for r, g in zip(ref, got))


@pytest.mark.parametrize("amsgrad", [False, True])
def test_sparse_adam_step_allocates_less_than_a_table(amsgrad):
    rng = np.random.default_rng(0)
    table = np.zeros((100_000, 32), np.float32)          # 12.8 MB per array
    opt = Adam(amsgrad=amsgrad, weight_decay=0.01)
    g = lambda: IndexedSlices(rng.standard_normal((500, 32)).astype(np.float32), rng.integers(0, 100_000, 500), table.shape)
    opt.apply([g()], [table])                            # builds the slots
    g1 = g()
    tracemalloc.start()
    opt.apply([g1], [table])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # at most one table-sized buffer (here: two cache-sized blocks and the summed rows, about 1 MB)
    assert peak <= table.nbytes, f"peak {peak} bytes for a {table.nbytes}-byte table"


@pytest.mark.skipif(not HAVE_NUMBA, reason="numba is not installed: the row update runs as NumPy operations")
def test_row_kernels_load_from_numba_disk_cache_in_a_new_process(tmp_path):
    # the row loop calls an intrinsic (`_loopk.prefetch`) that it reaches as a global: were it in the closure, numba's
    # cache (keyed by the closure's pickle) would miss in every new process and compile again, for seconds
    code = ("import numpy as np\n"
            "from adam_lit.lazyadam import _rows_kernel, _group_kernel, lazy_adam_rows_inplace\n"
            "for ams in (False, True):\n"
            "    x, m, v, h = (np.ones((64, 600), np.float32) for _ in range(4))\n"
            "    for n in (3, 64):\n"          # 3 x 600 rows: one thread; 64 x 600 >= PARALLEL_MIN: the threaded variant
            "        lazy_adam_rows_inplace(x, np.ones((n, 600), np.float32), m, v, h if ams else None, indices=np.arange(n),\n"
            "                               alpha=0.1, beta_1=0.9, beta_2=0.999, c1=0.1, c2=0.001, epsilon=1e-7)\n"
            "ks = [k for ams in (False, True) for k in _rows_kernel(ams, False)] + [_group_kernel()]\n"
            "print(sum(sum(k.stats.cache_hits.values()) for k in ks), sum(sum(k.stats.cache_misses.values()) for k in ks))\n")
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    run = lambda: subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert run() == ["0", "5"]              # a fresh cache: each of the 5 functions compiled once
    assert run() == ["5", "0"]              # the next process: all 5 read from the disk cache
