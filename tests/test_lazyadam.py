"""LazyAdam and sparse gradients beyond the notebook: memory per step, backends, and properties."""
import tracemalloc

import numpy as np
import pytest
from conftest import need
from hypothesis import given, settings, strategies as st

from adam_lit import Adam, IndexedSlices, LazyAdam


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


def test_dense_equivalent_adam_step_is_dense_sized():
    # the contrast: Adam with the same IndexedSlices must touch (and allocate for) the whole table
    rng = np.random.default_rng(0)
    table = np.zeros((200_000, 32), np.float32)
    opt = Adam()
    opt.apply([_slices(rng, *table.shape, 500)], [table])
    tracemalloc.start()
    opt.apply([_slices(rng, *table.shape, 500)], [table])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak > table.nbytes


@pytest.mark.filterwarnings("ignore:LazyAdam\\(amsgrad=True, numerics='legacy'\\)")
@settings(max_examples=40, deadline=None)
@given(rows=st.integers(1, 12), dim=st.integers(1, 4), k=st.integers(0, 20), seed=st.integers(0, 2**31 - 1),
       amsgrad=st.booleans(), numerics=st.sampled_from(["keras", "legacy"]))
def test_lazy_matches_rowwise_reference(rows, dim, k, seed, amsgrad, numerics):
    """Rows listed in the batch move exactly as a row-at-a-time model says; the others do not change at all."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, dim)).astype(np.float32)
    opt = LazyAdam(learning_rate=0.01, amsgrad=amsgrad, numerics=numerics)
    opt.build([x])
    for step in range(3):
        before = [x.copy()] + [opt.get_slot(x, n).copy() for n in opt.get_slot_names()]
        if k == 0:
            continue
        g = _slices(rng, rows, dim, k)
        opt.apply([g], [x])
        touched = np.unique(g.indices)
        untouched = np.setdiff1d(np.arange(rows), touched)
        after = [x] + [opt.get_slot(x, n) for n in opt.get_slot_names()]
        for b, a in zip(before, after):
            assert np.array_equal(b[untouched], a[untouched])
        dense = g.to_dense()
        # row-wise model: Adam on just the touched rows, as a dense problem, with the same global step
        ref = LazyAdam(learning_rate=0.01, amsgrad=amsgrad, numerics=numerics)
        xr = before[0][touched].copy()
        ref.build([xr]); ref.iterations = step
        for name, arr in zip(opt.get_slot_names(), before[1:]):
            ref.get_slot(xr, name)[...] = arr[touched]
        ref.apply([IndexedSlices(dense[touched], np.arange(len(touched)), xr.shape)], [xr])
        assert np.array_equal(xr, x[touched])


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
