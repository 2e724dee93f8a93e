"""`kernels.PACE` (nbs/08_kernels.ipynb, "Threads on a busy machine"): the large steps use numba's threads unless a
threaded step just stalled, then one thread for a while. Which kernel runs must not change a bit: every compiled
path that can thread (the fused single-array kernel, its cached plan, the training-loop step over many tensors, the
LazyAdam row loop) is run here both ways, forced, and compared bit for bit with itself and with the NumPy rule; and the
pace's record shows which way ran. No timing is asserted: the clock is the test's own."""
import numpy as np
import pytest

from conftest import need

need("numba", "the paced kernels are numba's")

import adam_lit.kernels as K
import adam_lit.lazyadam as L
from adam_lit import Adam, LazyAdam
from adam_lit.backend import IndexedSlices
from adam_lit.kernels import PACE, PARALLEL_MIN, adam_inplace, adam_inplace_fast, fused_loop


@pytest.fixture
def pace(monkeypatch):
    """PACE with a clock the test moves (`clock[0]`), its record emptied; `stall()` sends the next steps to one thread,
    `free()` lets them thread; restored afterwards."""
    clock = [1000.0]
    monkeypatch.setattr(PACE, "clock", lambda: clock[0])
    monkeypatch.setattr(PACE, "best", {})
    monkeypatch.setattr(PACE, "until", 0.0)
    monkeypatch.setattr(PACE, "enabled", True)
    monkeypatch.setattr(PACE, "stalls", 0)
    monkeypatch.setattr(PACE, "level", 0)
    monkeypatch.setattr(PACE, "probing", False)
    calls, note = [], PACE.note
    monkeypatch.setattr(PACE, "note", lambda key, n, seconds, threads: (calls.append(key), note(key, n, seconds, threads)))
    ran = []                                  # which compiled variant each call ran: (kind, "one" or "threads")
    def spy(d, key, kind, way):
        f = d[key]
        monkeypatch.setitem(d, key, lambda *a: (ran.append((kind, way)), f(*a))[1])
    k, lk = K._numba_kernels(), K.loop_kernels()
    if k is not None:
        for ams in (False, True):
            for par in (False, True): spy(k, (ams, par), "fused", "threads" if par else "one")
        steps = lk[np.float32]                 # (one dict for both dtypes)
        for name in ("update", "step_ids"): spy(steps, name, "loop", "one")
        for name in ("pupdate", "pstep_ids"): spy(steps, name, "loop", "threads")
        for ams in (False, True):
            for decay in (False, True):
                one, par = L._rows_kernel(ams, decay)
                ones = {0: one, 1: par}; spy(ones, 0, "rows", "one"); spy(ones, 1, "rows", "threads")
                monkeypatch.setitem(L._ROWS, (ams, decay), (ones[0], ones[1]))
    class P:
        def stall(self): PACE.level, PACE.until = 30, clock[0] + 1.0       # (fewest threads: one)
        def free(self): PACE.level, PACE.until = 0, 0.0
        def noted(self): return sum(1 for k in calls if k[0] == self.kind)     # threaded steps timed so far
        def ways(self):                                                         # the variants run since the last call
            w = {way for kind, way in ran if kind == self.kind}; ran.clear(); return w
    p = P(); p.clock = clock
    return p


def _threads():
    k = K._numba_kernels()
    if k is None or k["threads"] < 2: pytest.skip("numba has one thread here: nothing to pace")


N = PARALLEL_MIN * 3 + 17            # threaded (above PARALLEL_MIN), and not a multiple of anything


def _arrays(n, dtype, seed):
    r = np.random.default_rng(seed)
    return [r.standard_normal(n).astype(dtype) for _ in range(3)] + [np.abs(r.standard_normal(n)).astype(dtype)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ams", [False, True])
def test_fused_kernel_same_bits_on_one_thread_and_on_threads(pace, dtype, ams):
    _threads(); pace.kind = "fused"
    S = np.dtype(dtype).type
    kw = dict(alpha=S(1e-3), c1=S(0.1), c2=S(0.001), epsilon=S(1e-7), weight_decay=0.01, lr=S(1e-3))
    outs = {}
    for way in ("threads", "one", "numpy"):
        x, g, m, v = _arrays(N, dtype, 1)
        vh = np.abs(v[::-1]).copy() if ams else None
        before = pace.noted()
        if way == "one": pace.stall()
        else: pace.free()
        for _ in range(3):
            (adam_inplace if way == "numpy" else adam_inplace_fast)(x, g, m, v, vh, **kw)
        if way == "threads": assert pace.noted() > before and pace.ways() == {"threads"}
        if way == "one": assert pace.noted() == before and pace.ways() == {"one"}, "a threaded kernel ran while the pace said one thread"
        outs[way] = [a.tobytes() for a in (x, m, v) + ((vh,) if ams else ())]
    assert outs["threads"] == outs["one"] == outs["numpy"]


def test_fused_loop_plan_same_bits_both_ways(pace):
    _threads(); pace.kind = "fused"
    outs = []
    for stalled in (False, True):
        x, g, m, v = _arrays(N, np.float32, 2)
        step, decay = fused_loop(x, g, m, v)
        if stalled: pace.stall()
        else: pace.free()
        before = pace.noted()
        for _ in range(2): decay(np.float32(0.01), np.float32(1e-3)); step(np.float32(1e-3), np.float32(0.1), np.float32(0.001), np.float32(1e-7))
        assert (pace.noted() == before) == stalled and pace.ways() == {"one" if stalled else "threads"}
        outs.append([a.tobytes() for a in (x, m, v)])
    assert outs[0] == outs[1]


@pytest.mark.parametrize("amsgrad", [False, True])
def test_training_loop_step_same_bits_both_ways_and_as_the_pipeline(pace, amsgrad):
    """Many tensors (fresh gradients each step), stalled at steps 2 and 3 and free after: the compiled step's bits are
    the pipeline's at every step, whichever kernel ran; a step whose gradients the compiled check refuses is not timed."""
    _threads(); pace.kind = "loop"
    r = np.random.default_rng(3)
    shapes = [(N,), (300, 170), (7,), (PARALLEL_MIN,)]
    init = [r.standard_normal(s).astype(np.float32) for s in shapes]
    gsets = [[r.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(6)]
    fast, slow = [a.copy() for a in init], [a.copy() for a in init]
    o, ref = Adam(learning_rate=0.01, amsgrad=amsgrad, weight_decay=0.004), Adam(learning_rate=0.01, amsgrad=amsgrad, weight_decay=0.004)
    ref.build(slow); object.__setattr__(ref, "_loop", False)          # (the general pipeline: the compiled step off)
    for t, gs in enumerate(gsets):
        if t in (2, 3): pace.stall()
        else: pace.free()
        before = pace.noted()
        o.apply([g.copy() for g in gs], fast); ref.apply([g.copy() for g in gs], slow)
        assert o.__dict__.get("_loop"), "the compiled training-loop step did not run"
        assert (pace.noted() == before) == (t in (2, 3)), (t, "threaded" if pace.noted() > before else "one thread")
        ways = pace.ways()
        assert ways == {"one" if t in (2, 3) else "threads"} or t == 0, (t, ways)   # (step 0 builds: the pipeline's)
        for j, (a, b) in enumerate(zip(fast, slow)): assert a.tobytes() == b.tobytes(), (t, j)
    assert pace.noted() >= 1


def test_refused_compiled_step_is_not_timed(pace):
    "A step the compiled check refuses (a gradient of another dtype) did no work: timing it would make the best time 0."
    _threads(); pace.kind = "loop"
    xs = [np.ones(N, np.float32)]
    o = Adam(); o.apply([np.ones(N, np.float32)], xs)
    before = pace.noted()
    with pytest.raises(Exception):
        o.apply([np.ones(N, np.float64)], xs)
    assert pace.noted() == before


@pytest.mark.parametrize("amsgrad", [False, True])
def test_lazy_rows_same_bits_both_ways(pace, amsgrad):
    _threads(); pace.kind = "rows"
    r = np.random.default_rng(4)
    rows, D, touched = 5000, 64, 2000                  # touched * D above PARALLEL_MIN: the threaded row loop
    assert touched * D >= PARALLEL_MIN
    init = r.standard_normal((rows, D)).astype(np.float32)
    grads = [IndexedSlices(r.standard_normal((touched, D)).astype(np.float32), r.integers(0, rows, touched), (rows, D))
             for _ in range(4)]
    outs = []
    for stalled in (False, True):
        x = init.copy(); o = LazyAdam(learning_rate=0.01, amsgrad=amsgrad, weight_decay=0.01)
        before = pace.noted()
        for g in grads:
            if stalled: pace.stall()
            else: pace.free()
            o.apply([g], [x])
        assert (pace.noted() == before) == stalled and pace.ways() == {"one" if stalled else "threads"}
        outs.append([x.tobytes()] + [s.tobytes() for s in o.variables[1:]])
    assert outs[0] == outs[1]


def test_on_threads_sets_the_count_for_the_call_only():
    "`on_threads(k, full, f)` runs `f` with numba's thread count k (what a parallel kernel launched then uses), full after."
    import numba
    _threads()
    full = numba.get_num_threads()
    @numba.njit(parallel=True)
    def count(a):
        for i in numba.prange(a.size): a[i] = numba.get_num_threads()
        return a
    got = K.on_threads(1, full, count, np.zeros(8))
    assert set(got.tolist()) == {1.0} and numba.get_num_threads() == full
    with pytest.raises(ZeroDivisionError):
        K.on_threads(1, full, lambda: 1 / 0)
    assert numba.get_num_threads() == full                  # (restored after an error too)


def test_busy_kills_the_spinners_it_started_when_a_later_one_fails(monkeypatch):
    "If starting the k-th busy process fails, the ones already started are killed, and the pace is left as it was."
    import subprocess
    import adam_lit.bench as B
    real, started = subprocess.Popen, []
    def popen(*a, **k):
        if started: raise OSError(11, "no more processes")
        started.append(real(*a, **k)); return started[-1]
    monkeypatch.setattr(B.subprocess, "Popen", popen)
    with pytest.raises(OSError, match="no more processes"):
        B.busy(n=1000, others=2, seconds=0.01, rounds=1)
    assert len(started) == 1 and started[0].poll() is not None, "the first busy process is still running"
    assert PACE.enabled
    for bad in (dict(seconds=0), dict(rounds=0), dict(n=0), dict(others=-1)):
        with pytest.raises(ValueError, match="busy needs"):
            B.busy(**bad)


def test_row_loop_does_not_note_when_the_pace_is_off(pace, monkeypatch):
    "With `PACE.enabled = False` the row loop runs on all threads and leaves the pace alone (as the dense kernels do)."
    _threads(); pace.kind = "rows"
    t = [0.0]
    def ticking():                                          # every read 1 s later: any timed step would look stalled
        t[0] += 1.0; return t[0]
    monkeypatch.setattr(PACE, "clock", ticking)
    PACE.enabled = False
    r = np.random.default_rng(5)
    x = r.standard_normal((5000, 64)).astype(np.float32); o = LazyAdam()
    for _ in range(3):
        o.apply([IndexedSlices(r.standard_normal((2000, 64)).astype(np.float32), r.integers(0, 5000, 2000), x.shape)], [x])
    assert pace.noted() == 0 and PACE.level == 0 and pace.ways() == {"threads"}


def test_pace_level_never_shifts_negative_and_judges_a_count_by_its_own_best(pace):
    """A level driven below 0 (two threads racing in `threads`) still gives all the threads; the first step on a thread
    count is judged by the others scaled, later ones by its own best (a poorly scaling count is no stall for ever)."""
    PACE.level, PACE.until = -1, 0.0
    assert PACE.threads(8) == 8
    PACE.reset()
    n = 1_000_000
    PACE.note("s", n, 1.0, 1)                               # 1 thread: 1 µs per element
    PACE.note("s", n, 0.6, 8)                               # 8 threads, memory-bound: 0.6 µs, 4.8 x the scaled 0.125
    assert PACE.stalls == 1
    for _ in range(3): PACE.note("s", n, 0.6, 8)            # judged by the 8 threads' own best from now on
    assert PACE.stalls == 1 and PACE.level == 0
