"""The training-loop step (adam_lit._fastpath._Loop, nbs/03a_fastpath.ipynb): fresh gradient arrays every call, many
tensors in one compiled call. Every case compares it with the general pipeline, step by step, bit for bit, and checks
that the compiled step was really taken (or really not, where the pipeline must run)."""
import copy
import pickle
import tracemalloc
import warnings

import numpy as np
import pytest

import adam_lit._fastpath as fp
from adam_lit import Adam, AdamW, LazyAdam
from adam_lit.backend import IndexedSlices
from adam_lit.schedules import CosineDecay, ExponentialDecay, LearningRateSchedule, PiecewiseConstantDecay
from conftest import need


@pytest.fixture
def counted(monkeypatch):
    "How many steps the compiled call took."
    n = [0]
    call = fp._Loop.__call__
    def counting(self, *a):
        r = call(self, *a)
        n[0] += bool(r)
        return r
    monkeypatch.setattr(fp._Loop, "__call__", counting)
    return n


def _arrays(shapes, dtypes, seed):
    r = np.random.default_rng(seed)
    return [np.asarray(r.standard_normal(s), d) for s, d in zip(shapes, dtypes)]


def _pipeline(make, init, gsets, **kw):
    "The general pipeline's trajectory (the compiled step switched off)."
    o, xs = make(), [a.copy() for a in init]
    o.build(xs)
    for gs in gsets:
        object.__setattr__(o, "_loop", False)
        o.apply(gs, xs)
    return xs, [np.asarray(w) for w in o.variables]


MAKES = {
    "adam": lambda: Adam(),
    "amsgrad+wd": lambda: Adam(amsgrad=True, weight_decay=0.1, learning_rate=0.01),
    "adamw": lambda: AdamW(learning_rate=0.003),
    "schedule": lambda: Adam(learning_rate=ExponentialDecay(0.01, 3, 0.5)),
    "cosine": lambda: Adam(learning_rate=CosineDecay(0.01, 5, alpha=0.1)),
    "piecewise": lambda: Adam(learning_rate=PiecewiseConstantDecay([2, 4], [0.1, 0.01, 0.001])),
    "legacy": lambda: Adam(numerics="legacy", weight_decay=0.01, amsgrad=True, epsilon=0.0),
    "legacy decay": lambda: Adam(numerics="legacy", decay=0.05, lr=0.01),
    "lazy dense": lambda: LazyAdam(learning_rate=0.02, weight_decay=0.01),
    "betas": lambda: Adam(beta_1=0.0, beta_2=0.5, epsilon=1e-3),
}


@pytest.mark.parametrize("name", sorted(MAKES))
@pytest.mark.parametrize("dtype", ["float32", "float64", "mixed"])
def test_loop_gives_the_pipelines_bits(name, dtype, counted):
    shapes = [(7, 3), (), (0,), (70_000,), (2, 1, 5), (1,)]
    dts = [dtype] * len(shapes) if dtype != "mixed" else [("float32", "float64")[i % 2] for i in range(len(shapes))]
    init = _arrays(shapes, dts, 0)
    gsets = [_arrays(shapes, dts, 1 + k) for k in range(6)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)       # the legacy `lr` keyword
        o, xs = MAKES[name](), [a.copy() for a in init]
        for gs in gsets: o.apply(gs, xs)
        ref_x, ref_w = _pipeline(MAKES[name], init, gsets)
    assert counted[0] == len(gsets)
    for k, (a, b) in enumerate(zip(xs + [np.asarray(w) for w in o.variables], ref_x + ref_w)):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True), (name, dtype, k)


def test_many_tensors_and_the_other_entry_points(counted):
    shapes = [(100,)] * 300 + [(3, 3)] * 7
    init = _arrays(shapes, ["float32"] * len(shapes), 0)
    gsets = [_arrays(shapes, ["float32"] * len(shapes), k) for k in range(1, 5)]
    o, xs = Adam(amsgrad=True), [a.copy() for a in init]
    o.build(xs)
    o.apply(gsets[0])                                     # grads only: the variables it was built with
    o.apply_gradients(zip(gsets[1], xs))
    o.minimize(lambda: (0.0, gsets[2]), xs)
    o.apply(gsets[3], xs)
    ref_x, ref_w = _pipeline(lambda: Adam(amsgrad=True), init, gsets)
    assert counted[0] == 4
    assert all(np.array_equal(a, b) for a, b in zip(xs + [np.asarray(w) for w in o.variables], ref_x + ref_w))


def test_what_the_loop_does_not_take_runs_the_pipeline(counted):
    shapes = [(4, 5), (5,)]
    init = _arrays(shapes, ["float32"] * 2, 0)
    g = _arrays(shapes, ["float32"] * 2, 1)

    cases = {
        "fortran order": [np.asfortranarray(g[0]), g[1]],
        "strided view": [g[0], np.repeat(g[1], 2)[::2]],
        "a subclass": [g[0].view(np.matrix), g[1]],
        "0-d list": [g[0].tolist(), g[1]],
        "view of the other variable": None,
    }
    for name, gs in cases.items():
        o, xs = Adam(), [a.copy() for a in init]
        r, ys = Adam(), [a.copy() for a in init]
        o.apply(g, xs); r.apply(g, ys)
        if gs is None: gs = [g[0], xs[0][0]]           # variable 1's gradient is a row of variable 0
        if gs is not None and name == "view of the other variable": gs_ref = [g[0], ys[0][0]]
        else: gs_ref = gs
        before = counted[0]
        try:
            o.apply(gs, xs); ok = True
        except (TypeError, ValueError) as e:
            ok = e
        try:
            object.__setattr__(r, "_loop", False)
            r.apply(gs_ref, ys); ok_ref = True
        except (TypeError, ValueError) as e:
            ok_ref = e
        assert counted[0] == before, name                  # the compiled step did not take it
        assert (ok is True) == (ok_ref is True), (name, ok, ok_ref)
        if ok is not True: assert str(ok) == str(ok_ref)
        assert all(np.array_equal(a, b) for a, b in zip(xs, ys)), name


def test_indexed_slices_and_options_run_the_pipeline(counted):
    out = []
    for loop in (True, False):       # two tables: the compiled step, with the pipeline's bits
        xs = [np.ones((10, 3), np.float32), np.ones((6, 3), np.float32)]
        o = LazyAdam(); o.build(xs)
        for k in range(3):
            if not loop: object.__setattr__(o, "_loop", False)
            o.apply([IndexedSlices(np.full((2, 3), k + 1.0, np.float32), np.array([1, 4]), (10, 3)),
                     IndexedSlices(np.full((1, 3), -k - 1.0, np.float32), np.array([5]), (6, 3))], xs)
        out.append(xs + [np.asarray(w) for w in o.variables])
        assert counted[0] == (3 if loop else 0)
        counted[0] = 0
        assert np.array_equal(xs[0][0], np.ones(3, np.float32))   # an untouched row stays
    assert all(np.array_equal(a, b) for a, b in zip(*out))
    x = [np.ones((10, 3), np.float32)]
    o = Adam()                                                 # Adam's dense-equivalent rows: the pipeline
    for k in range(3): o.apply([IndexedSlices(np.ones((2, 3), np.float32), np.array([1, 4]), (10, 3))], x)
    assert counted[0] == 0
    for opts in ({"clipnorm": 1.0}, {"global_clipnorm": 1.0}, {"clipvalue": 0.1}, {"use_ema": True},
                 {"gradient_accumulation_steps": 2}, {"loss_scale_factor": 8.0}, {"gradient_nan_policy": "skip"},
                 {"numerics": "torch"}, {"learning_rate": lambda: 0.01}, {"beta_1": lambda: 0.9}):
        o, xs = Adam(**opts), [np.ones(4, np.float32)]
        for k in range(3): o.apply([np.full(4, 0.5, np.float32)], xs)
        assert o._loop is False, opts
    assert counted[0] == 0


def test_reconfiguration_and_copies(counted):
    init = _arrays([(50,), (3, 4)], ["float64"] * 2, 0)
    gsets = [_arrays([(50,), (3, 4)], ["float64"] * 2, k) for k in range(1, 9)]
    o, xs = Adam(weight_decay=0.1), [a.copy() for a in init]
    r, ys = Adam(weight_decay=0.1), [a.copy() for a in init]
    r.build(ys)
    for k, gs in enumerate(gsets):
        if k == 2:
            o.exclude_from_weight_decay(var_list=[xs[1]]); r.exclude_from_weight_decay(var_list=[ys[1]])
        if k == 4:
            o.learning_rate = 0.05; r.learning_rate = 0.05
        if k == 6:
            o = pickle.loads(pickle.dumps(o)); xs = o._variables     # a copy continues bit-identically, on its own arrays
        o.apply(gs, xs)
        object.__setattr__(r, "_loop", False); r.apply(gs, ys)
    assert all(np.array_equal(a, b) for a, b in zip(xs + [np.asarray(w) for w in o.variables],
                                                    ys + [np.asarray(w) for w in r.variables]))
    assert counted[0] == len(gsets)


def test_read_only_variable_and_bad_schedule_refused_with_nothing_written(counted):
    o, xs = Adam(), [np.ones(3, np.float32), np.ones(2, np.float32)]
    o.apply([np.ones(3, np.float32), np.ones(2, np.float32)], xs)
    snap = [a.copy() for a in xs] + [np.asarray(w).copy() for w in o.variables]
    xs[1].flags.writeable = False
    with pytest.raises(ValueError, match="variable 1"):
        o.apply([np.ones(3, np.float32), np.ones(2, np.float32)], xs)
    assert all(np.array_equal(a, b) for a, b in zip(xs + [np.asarray(w) for w in o.variables], snap))

    class Bad(LearningRateSchedule):
        def __call__(self, step): return float("nan") if int(step) >= 2 else 0.01
    o = Adam(learning_rate=Bad()); ys = [np.ones(3, np.float32)]
    o.apply([np.ones(3, np.float32)], ys); o.apply([np.ones(3, np.float32)], ys)
    snap = [ys[0].copy()] + [np.asarray(w).copy() for w in o.variables]
    with pytest.raises(ValueError):
        o.apply([np.ones(3, np.float32)], ys)
    assert all(np.array_equal(a, b) for a, b in zip([ys[0]] + [np.asarray(w) for w in o.variables], snap))


def test_dense_step_allocates_little():
    n = 1_000_000
    xs = [np.zeros(n, np.float32), np.zeros(1000, np.float32)]
    gsets = [[np.full(n, 0.1 * k, np.float32), np.full(1000, 0.2, np.float32)] for k in range(1, 4)]
    o = Adam()
    o.apply(gsets[0], xs); o.apply(gsets[1], xs)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        o.apply(gsets[2], xs)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= 1 << 20, peak          # the target: at most 1 MiB per dense step (here: the ids array)


def test_torch_cpu_tensors_take_numpys_bits(counted):
    torch = need("torch", "torch tensors through the compiled step")
    shapes = [(64, 64), (64,), (10, 64), (), (0, 3)]
    for name in ("adam", "amsgrad+wd", "schedule", "legacy"):
        init = _arrays(shapes, ["float32"] * len(shapes), 0)
        gsets = [_arrays(shapes, ["float32"] * len(shapes), k) for k in range(1, 6)]
        ps = [torch.nn.Parameter(torch.from_numpy(a.copy())) for a in init]
        o = MAKES[name]()
        counted[0] = 0
        for gs in gsets:
            for p, g in zip(ps, gs): p.grad = torch.from_numpy(g.copy())
            o.apply([p.grad for p in ps], ps)
        assert counted[0] == len(gsets), name           # the first step too: built, then the compiled call
        xs, ws = _pipeline(MAKES[name], init, gsets)    # NumPy arrays through the pipeline: the rule's bits
        assert all(np.array_equal(p.detach().numpy(), x) for p, x in zip(ps, xs)), name
        assert all(np.array_equal(np.asarray(w), v) for w, v in zip(o.variables, ws)), name


def test_torch_autograd_sees_the_update():
    torch = need("torch", "autograd's version counter")
    p = torch.nn.Parameter(torch.ones(3))
    o = Adam()
    loss = (p * p).sum()             # saves p for backward
    o.apply([torch.ones(3)], [p])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()              # as after torch.optim.Adam's step: p changed since it was saved


def test_torch_gradients_it_does_not_take(counted):
    torch = need("torch", "torch gradients the compiled step refuses")
    ps = [torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(3))]
    o = Adam(); o.apply([torch.ones(4, 3), torch.ones(3)], ps)
    before = counted[0]
    o.apply([torch.ones(3, 4).t(), torch.ones(3)], ps)                  # not contiguous: the pipeline's step
    o.apply([torch.ones(4, 3, dtype=torch.float64).float(), ps[1].detach()], ps)   # a view of a variable
    assert counted[0] == before
    ps[0].data = torch.zeros(4, 3)                                      # storage replaced: decided again
    o.apply([torch.ones(4, 3), torch.ones(3)], ps)                      # (the pipeline's step)
    assert bool(torch.all(ps[0] != 0))
    o.apply([torch.ones(4, 3), torch.ones(3)], ps)                      # the new table's
    assert counted[0] == before + 1


def test_a_new_float_rate_every_step(counted):
    "A framework's scheduler sets the rate before every step: read into the plan, the pipeline's bits, no rebuild."
    init = _arrays([(30,), (4, 4)], ["float32", "float64"], 0)
    gsets = [_arrays([(30,), (4, 4)], ["float32", "float64"], k) for k in range(1, 7)]
    rates = [0.1, 0.05, 0.05, 1e-3, 0.0, 0.3]
    o, xs = Adam(weight_decay=0.01), [a.copy() for a in init]
    r, ys = Adam(weight_decay=0.01), [a.copy() for a in init]
    r.build(ys)
    plans = set()
    for lr, gs in zip(rates, gsets):
        o.learning_rate = lr
        o.apply(gs, xs)
        plans.add(id(o._loop))
        r.learning_rate = lr
        object.__setattr__(r, "_loop", False)
        r.apply(gs, ys)
    assert counted[0] == len(gsets) and len(plans) == 1
    assert all(np.array_equal(a, b) for a, b in zip(xs + [np.asarray(w) for w in o.variables],
                                                    ys + [np.asarray(w) for w in r.variables]))
    o.learning_rate = lambda: 0.01          # a callable: the plan is dropped and the pipeline runs
    o.apply(gsets[0], xs)
    assert o._loop is False or o._loop is None


LAZY = {
    "default": lambda: LazyAdam(),
    "amsgrad": lambda: LazyAdam(amsgrad=True, learning_rate=0.01),
    "decay": lambda: LazyAdam(weight_decay=0.05, learning_rate=0.02),
    "legacy": lambda: LazyAdam(numerics="legacy", beta_1=0.5, epsilon=1e-3),
    "schedule": lambda: LazyAdam(learning_rate=ExponentialDecay(0.05, 2, 0.5), amsgrad=True, weight_decay=0.01),
    "legacy decay": lambda: LazyAdam(numerics="legacy", decay=0.1, lr=0.01),
}


@pytest.mark.parametrize("name", sorted(LAZY))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_one_tables_rows_take_the_loop_with_the_pipelines_bits(name, dtype, counted):
    "LazyAdam on one table, a row-sparse gradient each call (repeated rows, int32 and int64 indices): the pipeline's bits."
    rng = np.random.default_rng(7)
    x0 = np.asarray(rng.standard_normal((40, 3)), dtype)
    calls = [IndexedSlices(np.asarray(rng.standard_normal((n, 3)) * 10.0 ** rng.uniform(-3, 1), dtype),
                           rng.integers(0, 40, n).astype(rng.choice([np.int32, np.int64])), (40, 3))
             for n in (1, 25, 60, 7, 12)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want, want_w = _pipeline(LAZY[name], [x0], [[g] for g in calls])
        o, x = LAZY[name](), x0.copy()
    for g in calls: o.apply([g], [x])
    assert counted[0] == len(calls) and x.tobytes() == want[0].tobytes()
    assert all(np.asarray(a).tobytes() == b.tobytes() for a, b in zip(o.variables, want_w))


def test_rows_the_loop_refuses(counted):
    "A bad row index: the pipeline's error, nothing written. Rows sharing the table's memory, a row-bias option: the pipeline."
    x = np.ones((8, 2), np.float32)
    o = LazyAdam()
    o.apply([IndexedSlices(np.ones((1, 2), np.float32), np.array([3]), (8, 2))], [x])
    before = [x.copy()] + [np.asarray(w).copy() for w in o.variables]
    with pytest.raises(ValueError, match=r"IndexedSlices indices must lie in \[0, 8\)"):
        o.apply([IndexedSlices(np.ones((2, 2), np.float32), np.array([1, 8]), (8, 2))], [x])
    assert all(a.tobytes() == np.asarray(b).tobytes() for a, b in zip(before, [x] + list(o.variables)))
    n = counted[0]
    o.apply([IndexedSlices(x[2:4], np.array([5, 6]), (8, 2))], [x])        # values are rows of the table itself
    assert counted[0] == n and o.iterations == 2
    r = LazyAdam(row_bias_correction=True)
    r.apply([IndexedSlices(np.ones((1, 2), np.float32), np.array([3]), (8, 2))], [np.ones((8, 2), np.float32)])
    assert counted[0] == n
