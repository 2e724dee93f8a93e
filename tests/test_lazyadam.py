"""LazyAdam and sparse gradients beyond the notebook: memory per step, backends, and properties."""
import math
import tracemalloc

import numpy as np
import pytest
from conftest import need
from hypothesis import given, settings, strategies as st

from adam_lit import Adam, IndexedSlices, LazyAdam
from adam_lit.rules import bias_corrected_step_size


def _slices(rng, rows, dim, k, dtype=np.float32):
    return IndexedSlices(rng.standard_normal((k, dim)).astype(dtype), rng.integers(0, rows, k), (rows, dim))


def test_lazy_step_allocates_in_proportion_to_touched_rows():
    rng = np.random.default_rng(0)
    table = np.zeros((200_000, 32), np.float32)          # 25.6 MB per array
    opt = LazyAdam(amsgrad=True)
    opt.apply([_slices(rng, *table.shape, 500)], [table])  # builds the slots (allocates the table-sized state once)
    g = _slices(rng, *table.shape, 500)
    tracemalloc.start()
    opt.apply([g], [table])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # 500 rows x 32 x 4 bytes = 64 KB per row block; a handful of blocks plus bookkeeping, far below one table (25.6 MB)
    assert peak < 2_000_000, f"peak {peak} bytes for a 500-row step on a {table.nbytes}-byte table"


def test_dense_equivalent_adam_step_touches_every_row_in_place():
    # the contrast: Adam with the same IndexedSlices moves every row (its moments decay), but in place on a NumPy
    # table: below one table of allocations (it made five tables' worth before the in-place step)
    rng = np.random.default_rng(0)
    table = np.zeros((200_000, 32), np.float32)
    opt = Adam()
    opt.apply([_slices(rng, *table.shape, 500)], [table])
    m_before = opt.get_slot(table, "m").copy()
    tracemalloc.start()
    opt.apply([_slices(rng, *table.shape, 500)], [table])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    changed = np.any(opt.get_slot(table, "m") != m_before, axis=1)
    had = (m_before != 0).any(axis=1)
    assert had.sum() > 400 and changed[had].all()            # every row with a moment decays, not only the touched ones
    assert peak < table.nbytes, f"peak {peak} bytes for a {table.nbytes}-byte table"


def lazy_reference(x0, batches, *, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, weight_decay=None,
                   numerics="keras", row_steps=False, t0=0):
    """LazyAdam from its formulas, one element at a time in Python floats (no adam_lit code, no NumPy arithmetic).

    For each batch `(indices, rows)`, at global step t = t0 + 1, t0 + 2, ...: sum the rows listed more than once; then
    for each listed row r (and only those): x_r -= x_r * wd * lr (decoupled decay, before the step);
    m_r = b1 m_r + (1 - b1) g_r; v_r = b2 v_r + (1 - b2) g_r**2; AMSGrad: vhat_r = max(vhat_r, v_r);
    x_r -= alpha m_r / (sqrt(vhat_r or v_r) + eps), alpha = lr sqrt(1 - b2**k) / (1 - b1**k), k = t, or the row's
    own count of steps with `row_steps`. "legacy" is tf.keras/TF Addons: lr and betas held in float32 variables,
    and vhat ignored on sparse gradients. Returns (x, m, v, vhat, counts) as lists of lists.
    """
    f32 = lambda a: float(np.float32(a))
    if numerics == "legacy": lr, beta_1, beta_2 = f32(lr), f32(beta_1), f32(beta_2)
    x = [list(map(float, r)) for r in np.asarray(x0, np.float64)]
    dim = len(x[0])
    m, v, vh = ([[0.0] * dim for _ in x] for _ in range(3))
    counts = [0] * len(x)
    for t, (indices, rows) in enumerate(batches, start=t0 + 1):
        summed = {}
        for i, row in zip(np.asarray(indices).tolist(), np.asarray(rows, np.float64).tolist()):
            summed[i] = [a + b for a, b in zip(summed.get(i, [0.0] * dim), row)]
        for r, g in summed.items():
            counts[r] += 1
            k = counts[r] if row_steps else t
            alpha = lr * math.sqrt(1 - beta_2 ** k) / (1 - beta_1 ** k)
            for j in range(dim):
                if weight_decay: x[r][j] -= x[r][j] * weight_decay * lr
                m[r][j] = beta_1 * m[r][j] + (1 - beta_1) * g[j]
                v[r][j] = beta_2 * v[r][j] + (1 - beta_2) * g[j] * g[j]
                vh[r][j] = max(vh[r][j], v[r][j])
                denom = math.sqrt(vh[r][j] if amsgrad and numerics != "legacy" else v[r][j]) + epsilon
                x[r][j] -= alpha * m[r][j] / denom
    return x, m, v, vh, counts


# The reference rounds in another order than adam_lit (and in double precision throughout), so float64 runs agree to
# a few ulps (about 1e-15 here), not bit for bit; every bug named below moves some value by 1e-4 or (much) more.
CLOSE = dict(rtol=1e-12, atol=1e-13)


@pytest.mark.filterwarnings("ignore:LazyAdam\\(amsgrad=True, numerics='legacy'\\)")
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), dim=st.integers(1, 4), k=st.integers(0, 20), seed=st.integers(0, 2**31 - 1),
       amsgrad=st.booleans(), numerics=st.sampled_from(["keras", "legacy"]), weight_decay=st.sampled_from([None, 0.1]))
def test_lazy_matches_rowwise_reference(rows, dim, k, seed, amsgrad, numerics, weight_decay):
    """Rows listed in the batch move as the formulas say, one row at a time (repeated rows summed, weight decay on the
    listed rows before their step); the others do not change at all."""
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((rows, dim))
    x = x0.copy()
    opt = LazyAdam(learning_rate=0.01, amsgrad=amsgrad, numerics=numerics, weight_decay=weight_decay)
    opt.build([x])
    batches = []
    for step in range(3):
        before = [x.copy()] + [opt.get_slot(x, n).copy() for n in opt.get_slot_names()]
        g = _slices(rng, rows, dim, k, np.float64)
        batches.append((g.indices, g.values))
        opt.apply([g], [x])
        untouched = np.setdiff1d(np.arange(rows), g.indices)
        after = [x] + [opt.get_slot(x, n) for n in opt.get_slot_names()]
        for b, a in zip(before, after):
            assert np.array_equal(b[untouched], a[untouched])
        xr, mr, vr, vhr, _ = lazy_reference(x0, batches, lr=0.01, amsgrad=amsgrad, weight_decay=weight_decay, numerics=numerics)
        np.testing.assert_allclose(x, xr, **CLOSE)
        np.testing.assert_allclose(opt.get_slot(x, "m"), mr, **CLOSE)
        np.testing.assert_allclose(opt.get_slot(x, "v"), vr, **CLOSE)
        if amsgrad and numerics == "keras": np.testing.assert_allclose(opt.get_slot(x, "vhat"), vhr, **CLOSE)


def _shrinking_batches():
    "A 4 x 2 table: rows 0 and 2 see a large gradient, then ten steps of gradients 100 times smaller (row 2 twice in"
    " the first batch); row 1 comes late; row 3 never."
    big = IndexedSlices(np.array([[1.0, -2.0], [0.5, 0.5], [0.5, 0.5]]), np.array([0, 2, 2]), (4, 2))
    small = [IndexedSlices(np.array([[0.01, -0.01], [-0.02, 0.01]]) * (1 + 0.1 * k), np.array([0, 2]), (4, 2))
             for k in range(10)]
    late = IndexedSlices(np.array([[0.3, 0.1], [0.01, 0.02]]), np.array([1, 0]), (4, 2))
    return [big] + small[:5] + [late] + small[5:]


def test_lazy_amsgrad_trajectory():
    """Lazy AMSGrad divides by sqrt(vhat), the running maximum of each row's v: with shrinking gradients it takes much
    smaller steps than lazy Adam, and exactly the steps of the per-row formulas."""
    E0 = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    batches = _shrinking_batches()
    runs = {}
    for amsgrad in (False, True):
        E, opt = E0.copy(), LazyAdam(learning_rate=0.1, beta_1=0.5, beta_2=0.9, amsgrad=amsgrad)   # v forgets fast
        moves = []
        for k, g in enumerate(batches):
            prev = E.copy()
            opt.apply([g], [E])
            xr, mr, vr, vhr, _ = lazy_reference(E0, [(b.indices, b.values) for b in batches[:k + 1]], lr=0.1,
                                                beta_1=0.5, beta_2=0.9, amsgrad=amsgrad)
            np.testing.assert_allclose(E, xr, **CLOSE)                    # every step, every row, against the formulas
            np.testing.assert_allclose(opt.get_slot(E, "m"), mr, **CLOSE)
            np.testing.assert_allclose(opt.get_slot(E, "v"), vr, **CLOSE)
            if amsgrad: np.testing.assert_allclose(opt.get_slot(E, "vhat"), vhr, **CLOSE)
            moves.append(E - prev)
        runs[amsgrad] = np.array(moves)
        assert np.array_equal(E[3], E0[3])                                # never listed: never moved
    adam, ams = np.abs(runs[False]), np.abs(runs[True])
    assert np.array_equal(adam[0], ams[0])                                # first step: vhat = v
    # after the large gradient, vhat stays at its first value while v forgets: AMSGrad's small steps are far smaller
    # after the large gradient, v forgets it (by beta_2 = 0.9 a step) while vhat keeps it: AMSGrad's steps shrink
    # by about sqrt(v / vhat) against Adam's: by 0.85 or more from the fifth step, by 0.65 or more at the last (row 2
    # is absent from the seventh batch: both move by 0 there)
    assert (ams[4:, [0, 2]] <= 0.85 * adam[4:, [0, 2]]).all() and (ams[-1, [0, 2]] < 0.65 * adam[-1, [0, 2]]).all()


def test_lazy_amsgrad_kernel_source_on_the_cpu():
    """The CUDA kernel's lazy AMSGrad arithmetic (its source, run with NumPy's IEEE operations in place of the PTX
    instructions) gives the per-row formulas' trajectory too: a kernel that divided by sqrt(v) would not."""
    from adam_lit.cuda import kernel_sources
    from adam_lit.rules import moment_constants
    src = kernel_sources()[("lazy_amsgrad", "float64")]
    ops = dict(ptx_add_rn_f64=np.add, ptx_sub_rn_f64=np.subtract, ptx_mul_rn_f64=np.multiply, ptx_div_rn_f64=np.divide,
               ptx_sqrt_rn_f64=np.sqrt, ptx_max_f64=lambda a, b: np.where((a > b) | np.isnan(a), a, b))
    E0 = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    batches = _shrinking_batches()
    x, m, v, vh = E0.copy(), np.zeros_like(E0), np.zeros_like(E0), np.zeros_like(E0)
    c1, c2 = moment_constants(0.5, 0.9)
    for t, g in enumerate(batches, start=1):
        d = g.deduplicate(); r = d.indices
        env = dict(p_=x[r], g_=d.values, m_=m[r], v_=v[r], h_=vh[r], b1=0.5, b2=0.9, c1=c1, c2=c2, eps=1e-7,
                   a_=0.1 * math.sqrt(1 - 0.9**t) / (1 - 0.5**t))
        for line in src.update.split("\n"):                            # each line: `name = nested calls;`
            lhs, rhs = line.rstrip(";").split(" = ", 1)
            env[lhs] = eval(rhs, {"__builtins__": {}}, {**ops, **env})
        x[r], m[r], v[r], vh[r] = env["p_"], env["m_"], env["v_"], env["h_"]
    xr, *_ = lazy_reference(E0, [(b.indices, b.values) for b in batches], lr=0.1, beta_1=0.5, beta_2=0.9, amsgrad=True)
    np.testing.assert_allclose(x, xr, **CLOSE)


def test_lazy_amsgrad_on_cupy_matches_reference():
    "On a GPU the fused CUDA row kernel (the indexed lazy AMSGrad variant) follows the per-row formulas too."
    cupy = pytest.importorskip("cupy")
    try:
        ok = cupy.cuda.is_available()
    except Exception:
        ok = False
    if not ok: pytest.skip("no CUDA GPU (cupy.cuda.is_available() is False)")
    E0 = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    batches = _shrinking_batches()
    E, opt = cupy.asarray(E0), LazyAdam(learning_rate=0.1, beta_1=0.5, beta_2=0.9, amsgrad=True)
    for g in batches:
        opt.apply([IndexedSlices(cupy.asarray(g.values), cupy.asarray(g.indices), g.dense_shape)], [E])
    xr, mr, vr, vhr, _ = lazy_reference(E0, [(b.indices, b.values) for b in batches], lr=0.1, beta_1=0.5, beta_2=0.9,
                                        amsgrad=True)
    np.testing.assert_allclose(cupy.asnumpy(E), xr, **CLOSE)
    np.testing.assert_allclose(cupy.asnumpy(opt.get_slot(E, "vhat")), vhr, **CLOSE)


def test_row_bias_correction_counts_each_row():
    """With `row_bias_correction`, `row_step` counts the steps in which each row was listed (a repeated row once, an
    absent row not at all), and a row's second move uses the step size of its own step 2."""
    E0 = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]])
    E, opt = E0.copy(), LazyAdam(learning_rate=0.1, row_bias_correction=True)
    opt.build([E]); opt.iterations = 100                      # late in training: the global step would be 101, 102, ...
    batches = [IndexedSlices(np.array([[0.1, 0.2], [0.3, -0.4], [0.05, 0.1]]), np.array([0, 2, 2]), (4, 2)),
               IndexedSlices(np.array([[0.5, -0.5]]), np.array([1]), (4, 2)),
               IndexedSlices(np.array([[0.2, 0.2], [-0.1, 0.3]]), np.array([0, 3]), (4, 2)),
               IndexedSlices(np.array([[0.2, -0.1]]), np.array([0]), (4, 2)),
               IndexedSlices(np.array([[1.0, 1.0]]), np.array([3]), (4, 2))]
    expected_counts = [[1, 0, 1, 0], [1, 1, 1, 0], [2, 1, 1, 1], [3, 1, 1, 1], [3, 1, 1, 2]]
    for k, (g, want) in enumerate(zip(batches, expected_counts)):
        prev, m_prev, v_prev = E.copy(), opt.get_slot(E, "m").copy(), opt.get_slot(E, "v").copy()
        opt.apply([g], [E])
        assert opt.get_slot(E, "row_step").tolist() == want, k
        xr, mr, vr, _, counts = lazy_reference(E0, [(b.indices, b.values) for b in batches[:k + 1]], lr=0.1, row_steps=True,
                                               t0=100)
        assert counts == want
        np.testing.assert_allclose(E, xr, **CLOSE)
    # row 3's second move (step 5, at global step 105) against Keras's step size at t = 2
    m, v = opt.get_slot(E, "m")[3], opt.get_slot(E, "v")[3]
    alpha_2 = bias_corrected_step_size(0.1, 0.9, 0.999, 2)
    np.testing.assert_allclose(E[3] - prev[3], -alpha_2 * m / (np.sqrt(v) + 1e-7), **CLOSE)
    assert not np.allclose(E[3] - prev[3], -bias_corrected_step_size(0.1, 0.9, 0.999, 1) * m / (np.sqrt(v) + 1e-7), rtol=1e-3)
    assert not np.allclose(E[3] - prev[3], -bias_corrected_step_size(0.1, 0.9, 0.999, 105) * m / (np.sqrt(v) + 1e-7), rtol=1e-3)


def test_lazy_on_jax_stateless_matches_numpy():
    jnp = need("jax.numpy")
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal((6, 3)).astype(np.float32)
    grads = [_slices(rng, 6, 3, 4) for _ in range(4)]
    xn = x0.copy(); on = LazyAdam(amsgrad=True)
    for g in grads: on.apply([g], [xn])
    oj = LazyAdam(amsgrad=True); xj = [jnp.asarray(x0)]; oj.build(xj); state = oj.variables
    for g in grads:
        gj = IndexedSlices(jnp.asarray(g.values), jnp.asarray(g.indices), g.dense_shape)
        xj, state = oj.stateless_apply(state, [gj], xj)
    assert np.asarray(xj[0]).tobytes() == xn.tobytes()


def _in_place_matches_numpy(make_opt, asarray, to_numpy, seed, rows, dim, k, steps):
    "Run `make_opt()` on NumPy and on another library's arrays (converted by `asarray`) and compare the bits."
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal((rows, dim)).astype(np.float32)
    grads = [_slices(rng, rows, dim, k) for _ in range(steps)]
    xn, on = x0.copy(), make_opt()
    for g in grads: on.apply([g], [xn])
    xo, oo = asarray(x0.copy()), make_opt()
    for g in grads: oo.apply([IndexedSlices(asarray(g.values), asarray(g.indices), g.dense_shape)], [xo])
    assert to_numpy(xo).tobytes() == xn.tobytes()


def test_lazy_on_torch_matches_numpy():
    torch = need("torch")
    _in_place_matches_numpy(lambda: LazyAdam(row_bias_correction=True, weight_decay=0.01), torch.from_numpy,
                            lambda t: t.numpy(), seed=4, rows=6, dim=3, k=4, steps=4)


def test_sparse_adam_on_array_api_strict_matches_numpy():
    xps = need("array_api_strict")
    _in_place_matches_numpy(lambda: Adam(amsgrad=True, clipnorm=0.5), xps.asarray,
                            lambda a: np.asarray(a._array), seed=5, rows=5, dim=2, k=3, steps=3)


def test_bad_indices_change_nothing():
    x = np.ones((4, 2), np.float32); opt = LazyAdam(); opt.apply([IndexedSlices(np.ones((1, 2), np.float32), np.array([1]), (4, 2))], [x])
    snap = [x.copy()] + [w.copy() for w in opt.get_weights()]
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        opt.apply([IndexedSlices(np.ones((1, 2), np.float32), np.array([7]), (4, 2))], [x])
    with pytest.raises(TypeError, match="indices must be integers"):
        opt.apply([IndexedSlices(np.ones((1, 2), np.float32), np.array([1.0]), (4, 2))], [x])
    assert all(np.array_equal(a, b) for a, b in zip([x] + opt.get_weights(), snap))
