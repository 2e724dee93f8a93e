"""The optimizer's contract with its caller, swept over libraries and options: lists, not bare arrays; variables that
do not share memory; weight-decay patterns only on names the user gave; 0-d arrays as hyperparameters; copies and
pickles that continue bit for bit; Keras 3's `variables` before build; the counter of `stateless_apply`.

Every refused call must leave the variables, the slots and the counter exactly as they were.
"""
import copy
import importlib
import os
import pickle
import time

import numpy as np
import pytest

from adam_lit import Adam, AdamW, LazyAdam
from adam_lit.backend import ArgumentTypeError, IndexedSlices
from adam_lit.kernels import flat_like, flatten
from adam_lit.schedules import ExponentialDecay


def _need(name):
    "An optional library: skipped with a reason when absent, unless ADAM_LIT_REQUIRE_ORACLES=1 (then a failure)."
    from conftest import need
    return need(name)


def _f32(*a): return np.array(a, np.float32)


def _fresh(kind="adam"):
    "A built optimizer with one step taken, and its variables."
    if kind == "flat":
        _, xs = flatten([_f32(1, 2, 3), _f32([0.5], [-1])])
        gs = flat_like(xs)[1]; gs[0][...] = 0.1; gs[1][...] = -0.2
        o = Adam(amsgrad=True, weight_decay=0.01); o.apply(gs, xs); o.apply(gs, xs)
    else:
        xs = [_f32(1, 2, 3), _f32([0.5], [-1])]
        o = Adam(amsgrad=True, weight_decay=0.01); o.apply([_f32(0.1, 0.2, 0.3), _f32([1], [-1])], xs)
    return o, xs


def _snapshot(o, xs):
    return ([np.asarray(x).tobytes() for x in xs] + [np.asarray(w).tobytes() for w in o.get_weights()]
            + [o._iterations, repr(o._learning_rate), o._exclude_pattern, sorted(o._exclude_ids)])


def _refused(o, xs, call, exc, fragment):
    before = _snapshot(o, xs)
    with pytest.raises(exc) as e: call()
    assert fragment in str(e.value), str(e.value)
    assert _snapshot(o, xs) == before, "state changed"


# ---------------------------------------------------------------- a bare array where a list belongs
def _bare_arrays():
    out = [("numpy", lambda: np.zeros((2, 3), np.float32), "a numpy array of shape (2, 3)"),
           ("numpy 0-d", lambda: np.asarray(1.0, np.float32), "a numpy array of shape ()"),
           ("numpy scalar", lambda: np.float32(1.0), "a numpy array of shape ()"),
           ("IndexedSlices", lambda: IndexedSlices(_f32([1, 2]), np.array([0]), (3, 2)), "an IndexedSlices of shape (3, 2)")]
    return out


def _library_arrays():
    "Arrays of the optional libraries (each skipped when absent)."
    return [("torch", lambda: _need("torch").zeros(2, 3), "a torch tensor of shape (2, 3)"),
            ("torch 0-d", lambda: _need("torch").tensor(1.0), "a torch tensor of shape ()"),
            ("jax", lambda: _need("jax.numpy").zeros((2, 3)), "a JAX array of shape (2, 3)"),
            ("array_api_strict", lambda: _need("array_api_strict").zeros((2, 3)), "an array_api_strict array of shape (2, 3)")]


ENTRY_POINTS = [
    ("apply grads", lambda o, xs, a: o.apply(a, xs), "Argument `grads` must be a list of arrays (one per variable), got "),
    ("apply trainable_variables", lambda o, xs, a: o.apply([_f32(0.1, 0.2, 0.3), _f32([1], [-1])], a),
     "Argument `trainable_variables` must be a list of arrays (one per variable), got "),
    ("apply_gradients", lambda o, xs, a: o.apply_gradients(a), "Argument `grads_and_vars` must be a list of (gradient, variable) pairs, got "),
    ("minimize var_list", lambda o, xs, a: o.minimize(lambda: (0.0, [np.ones(3, np.float32), None]), a), "Argument `var_list` must be a list of arrays (one per variable), got "),
    ("minimize grads", lambda o, xs, a: o.minimize(lambda: (0.0, a), xs), "Argument `grads` must be a list of arrays (one per variable), got "),
    ("build var_list", lambda o, xs, a: o.build(a), "Argument `var_list` must be a list of arrays (one per variable), got "),
    ("exclude var_list", lambda o, xs, a: o.exclude_from_weight_decay(var_list=a), "Argument `var_list` must be a list of arrays (one per variable), got "),
    ("stateless grads", lambda o, xs, a: o.stateless_apply(o.variables, a, xs), "Argument `grads` must be a list of arrays (one per variable), got "),
    ("stateless trainable_variables", lambda o, xs, a: o.stateless_apply(o.variables, [None, _f32([1], [-1])], a),
     "Argument `trainable_variables` must be a list of arrays (one per variable), got "),
    ("stateless optimizer_variables", lambda o, xs, a: o.stateless_apply(a, [None, _f32([1], [-1])], xs),
     "Argument `optimizer_variables` must be a list of arrays (one per variable), got "),
]


@pytest.mark.parametrize("kind", ["adam", "flat"])
@pytest.mark.parametrize("entry", ENTRY_POINTS, ids=[e[0] for e in ENTRY_POINTS])
@pytest.mark.parametrize("array", _bare_arrays() + _library_arrays(), ids=[a[0] for a in _bare_arrays() + _library_arrays()])
def test_bare_array_refused(kind, entry, array):
    _, call, fragment = entry
    _, make, kind_text = array
    a = make()
    o, xs = _fresh(kind)
    _refused(o, xs, lambda: call(o, xs, a), ArgumentTypeError, fragment + kind_text)


@pytest.mark.parametrize("make", [lambda: AdamW(), lambda: LazyAdam(), lambda: Adam()])
def test_bare_array_refused_unbuilt(make):
    o, x = make(), np.zeros((1, 1), np.float32)
    with pytest.raises(ArgumentTypeError, match="Argument `var_list` must be a list of arrays .* got a numpy array of shape \\(1, 1\\)"):
        o.build(x)
    with pytest.raises(ArgumentTypeError, match="Argument `grads` must be a list"):
        o.apply(np.ones((1, 1), np.float32), x)
    assert not o.built and o.iterations == 0
    # the excluded variable of the issue: refused rather than silently not excluded
    x = np.ones((2, 3)); o = AdamW(weight_decay=0.05)
    with pytest.raises(ArgumentTypeError, match="Argument `var_list`"): o.exclude_from_weight_decay(var_list=x)
    o.exclude_from_weight_decay(var_list=[x]); o.apply([np.zeros((2, 3))], [x])
    assert (x == 1).all()


def test_iterables_still_accepted():
    xs1, xs2 = [_f32(1, 2, 3), _f32([0.5], [-1])], [_f32(1, 2, 3), _f32([0.5], [-1])]
    g = [_f32(0.1, 0.2, 0.3), _f32([1], [-1])]
    o1, o2 = Adam(), Adam()
    o1.apply(g, xs1); o2.apply(tuple(g), (v for v in xs2))
    o1.apply_gradients(list(zip(g, xs1))); o2.apply_gradients(zip(g, xs2))
    assert [x.tobytes() for x in xs1] == [x.tobytes() for x in xs2]


# ---------------------------------------------------------------- variables that share memory
def _overlapping_numpy():
    a = np.arange(12.0, dtype=np.float32)
    return [[a[:5], a[4:]], [a, a.reshape(3, 4)], [a.reshape(3, 4)[:, 1], a[5:6]], [a[::-1], a[11:]],
            [np.ones(2, np.float32), a[2:7], a[::3]], [a.reshape(3, 4).T, a[:1]]]


@pytest.mark.parametrize("k", range(6))
def test_overlap_refused_numpy(k):
    vs = _overlapping_numpy()[k]
    before = [v.copy() for v in vs]
    o = Adam()
    with pytest.raises(ValueError, match="share memory"):
        o.apply([np.ones(v.shape, v.dtype) for v in vs], vs)
    assert not o.built and all((v == b).all() for v, b in zip(vs, before))


def test_overlap_names_both():
    a = np.zeros(6)
    with pytest.raises(ValueError, match="variable 1 \\('w'\\) of shape \\(3,\\) and variable 2 \\('b'\\) of shape \\(2,\\) share memory"):
        Adam().build([np.ones(1), a[:3], a[2:4]], names=["x", "w", "b"])


def test_disjoint_views_accepted():
    a = np.arange(12.0)
    Adam().build([a[::2], a[1::2]])                       # interleaved: no common element
    Adam().build([a.reshape(3, 4)[:, :2], a.reshape(3, 4)[:, 2:]])
    Adam().build([a[:6], a[6:]])
    x, views = flatten([np.ones(4, np.float32), np.ones((3, 2), np.float32), np.ones((), np.float32)])
    o = Adam(); o.build(views)
    assert o._flat is not None                             # the flat path is kept


def test_overlap_check_is_cheap():
    _, views = flatten([np.ones((i % 7) + 1, np.float32) for i in range(1000)])
    t = time.perf_counter(); Adam().build(views); dt = time.perf_counter() - t
    assert dt < 2.0, dt                                    # building 1000 variables (the slots included) stays cheap
    a = np.zeros(2000)                                     # the same count of interleaved (disjoint) strided views
    t = time.perf_counter(); Adam().build([a[i::1000] for i in range(1000)]); assert time.perf_counter() - t < 5.0


def test_overlap_torch():
    torch = _need("torch")
    a = torch.arange(8.0)
    with pytest.raises(ValueError, match="variable 0 of shape \\(5,\\) and variable 1 of shape \\(4,\\) share memory"):
        Adam().build([a[:5], a[4:]])
    with pytest.raises(ValueError, match="share memory"):
        Adam().build([a.view(2, 4), a[3:4]])
    b = torch.arange(8.0, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="share memory"):
        Adam(moment_dtype="float32").build([b[:3], b[2:]])
    Adam().build([a[:4], a[4:]]); Adam().build([a[::2], a[1::2]])


def test_overlap_array_api_strict():
    xps = _need("array_api_strict")
    a = xps.asarray(np.arange(6.0))
    with pytest.raises(ValueError, match="share memory"):
        Adam().build([a[:3], a[1:]])


# ---------------------------------------------------------------- weight-decay patterns and names
def test_var_names_on_generated_names_refused():
    a, b = np.ones(2), np.ones(2)
    o = AdamW(weight_decay=0.5); o.build([a, b])
    for pat in (["bias"], ["b"], ["variable"]):
        _refused(o, [a, b], lambda: o.exclude_from_weight_decay(var_names=pat), ValueError, "have no names")
    o = AdamW(weight_decay=0.5); o.exclude_from_weight_decay(var_names=["b"])
    _refused(o, [a, b], lambda: o.apply([np.ones(2), np.ones(2)], [a, b]), ValueError, "opt.build(variables, names=[...])")
    assert not o.built


def test_var_names_match_given_names_only():
    a, b = np.ones(2), np.ones(2)
    o = AdamW(learning_rate=0.1, weight_decay=0.5); o.build([a, b], names=["dense/kernel", "dense/bias"])
    o.exclude_from_weight_decay(var_names=["bias"])
    ref_a, ref_b = np.ones(2), np.ones(2)
    r = AdamW(learning_rate=0.1, weight_decay=0.5); r.build([ref_a, ref_b]); r.exclude_from_weight_decay(var_list=[ref_b])
    for _ in range(3):
        o.apply([np.full(2, 0.1), np.full(2, 0.1)], [a, b]); r.apply([np.full(2, 0.1), np.full(2, 0.1)], [ref_a, ref_b])
    assert a.tobytes() == ref_a.tobytes() and b.tobytes() == ref_b.tobytes()
    assert o._names_given == [True, True]


def test_var_names_keras_variable_names():
    "Variables with their own `.name` (as Keras's) are matched by substring, as Keras 3 does."
    class Named(np.ndarray): pass
    w, bias = np.ones(2).view(Named), np.ones(2).view(Named)
    w.name, bias.name = "dense/kernel", "dense/bias"
    o = AdamW(weight_decay=0.5); o.exclude_from_weight_decay(var_names=["bias"]); o.build([w, bias])
    assert [o._use_weight_decay(i) for i in range(2)] == [True, False]


# ---------------------------------------------------------------- 0-d arrays as hyperparameters
def _zero_d(lib, value, dtype):
    if lib == "numpy": return np.asarray(value, dtype)
    if lib == "torch": torch = _need("torch"); return torch.tensor(value, dtype=getattr(torch, dtype))
    if lib == "jax": jnp = _need("jax.numpy"); return jnp.asarray(value, dtype)
    xps = _need("array_api_strict"); return xps.asarray(value, dtype=getattr(xps, dtype))


@pytest.mark.parametrize("lib", ["numpy", "torch", "jax", "array_api_strict"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_zero_d_hyperparameters(lib, dtype):
    vals = dict(learning_rate=0.003, beta_1=0.8, beta_2=0.99, epsilon=1e-6)
    if lib == "jax" and dtype == "float64" and not _need("jax").config.jax_enable_x64: pytest.skip("JAX without x64 has no float64")
    arrays = {k: _zero_d(lib, v, dtype) for k, v in vals.items()}
    floats = {k: float(getattr(np, dtype)(v)) for k, v in vals.items()}   # the array's value, as a double
    o, r = Adam(**arrays), Adam(**floats)
    assert o.get_config() == {**r.get_config(), "name": o.name}
    x1, x2 = np.ones(4, np.float32), np.ones(4, np.float32)
    for k in range(3):
        g = np.linspace(-1, 1, 4).astype(np.float32) * (k + 1)
        o.apply([g], [x1]); r.apply([g], [x2])
    assert x1.tobytes() == x2.tobytes()
    for name, a in arrays.items():            # set later: checked and read the same way
        setattr(o, name, a); assert getattr(o, name if name != "learning_rate" else "learning_rate") == floats[name]


@pytest.mark.parametrize("name", ["learning_rate", "beta_1", "beta_2", "epsilon"])
def test_zero_d_hyperparameters_refused(name):
    for bad, fragment in [(np.asarray([0.5]), "should be a float or a 0-d array, got a numpy array of shape (1,)"),
                          (np.asarray(True), "should be a real number, got a 0-d array of dtype bool"),
                          (np.asarray(0.5 + 0j), "dtype complex128"), (np.asarray(np.nan), "must be finite")]:
        with pytest.raises((TypeError, ValueError), match=None) as e: Adam(**{name: bad})
        assert f"`{name}`" in str(e.value) and fragment in str(e.value), str(e.value)
        o, xs = _fresh()
        _refused(o, xs, lambda: setattr(o, name, bad), (TypeError, ValueError), fragment)
        assert getattr(o, name) == Adam().get_config()[name] or name == "learning_rate"


def test_zero_d_torch_learning_rate_is_read_once():
    torch = _need("torch")
    lr = torch.tensor(0.01)
    o = Adam(learning_rate=lr); lr.fill_(0.5)
    assert o.learning_rate == float(np.float32(0.01)) and type(o._learning_rate) is float


# ---------------------------------------------------------------- copies and pickles
CONFIGS = [dict(), dict(amsgrad=True, weight_decay=0.01), dict(use_ema=True, ema_overwrite_frequency=2),
           dict(gradient_accumulation_steps=2, clipnorm=0.5), dict(learning_rate=ExponentialDecay(0.01, 2, 0.5)),
           dict(weight_decay=0.1, gradient_nan_policy="skip", numerics="torch")]


def _grads(xs, k):
    return [np.cos(np.arange(x.size, dtype=x.dtype).reshape(x.shape) + k).astype(x.dtype) for x in xs]


@pytest.mark.parametrize("cfg", range(len(CONFIGS)))
@pytest.mark.parametrize("layout", ["arrays", "flat"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_copy_and_pickle_continue_bit_for_bit(cfg, layout, dtype):
    shapes = [(3,), (2, 2), ()]
    init = [np.linspace(-1, 1, int(np.prod(s))).reshape(s).astype(dtype) for s in shapes]
    xs = flatten(init, dtype)[1] if layout == "flat" else [a.copy() for a in init]
    o = Adam(**CONFIGS[cfg]); o.build(xs, names=["w", "b", "s"])
    o.exclude_from_weight_decay(var_names=["b"])
    for k in range(3): o.apply(_grads(xs, k), xs)
    copies = [copy.deepcopy((o, xs)), pickle.loads(pickle.dumps((o, xs)))]
    for k in range(3, 7):
        for opt, vs in [(o, xs)] + copies: opt.apply(_grads(vs, k), vs)
    for opt, vs in copies:
        assert [v.tobytes() for v in vs] == [v.tobytes() for v in xs]
        assert [w.tobytes() for w in opt.get_weights()] == [w.tobytes() for w in o.get_weights()]
        assert (opt.iterations, opt.get_config()) == (o.iterations, o.get_config())


def test_copy_lazyadam_and_torch():
    x = np.arange(10.0, dtype=np.float32).reshape(5, 2)
    o = LazyAdam(amsgrad=True); g = IndexedSlices(_f32([1, 2], [3, 4]), np.array([1, 3]), (5, 2))
    o.apply([g], [x])
    o2, (x2,) = copy.deepcopy((o, [x]))
    o.apply([g], [x]); o2.apply([g], [x2])
    assert x.tobytes() == x2.tobytes()
    torch = _need("torch")
    t = torch.arange(6.0).reshape(2, 3); o = Adam(weight_decay=0.01); o.apply([torch.ones(2, 3)], [t])
    for o3, (t3,) in (copy.deepcopy((o, [t])), pickle.loads(pickle.dumps((o, [t])))):
        o.apply([torch.ones(2, 3)], [t]) if o3 is None else None
        o3.apply([torch.full((2, 3), 0.5)], [t3])
    ref = t.clone(); o.apply([torch.full((2, 3), 0.5)], [t])
    assert torch.equal(t, t3) and not torch.equal(t, ref)


def test_copy_jax_stateless():
    jnp = _need("jax.numpy")
    xs = [jnp.ones(3)]; o = Adam(); o.build(xs)
    state = o.variables
    xs, state = o.stateless_apply(state, [jnp.full(3, 0.5)], xs)
    o2, state2, xs2 = pickle.loads(pickle.dumps((o, state, xs)))
    a = o.stateless_apply(state, [jnp.full(3, 0.25)], xs)
    b = o2.stateless_apply(state2, [jnp.full(3, 0.25)], xs2)
    assert all(np.asarray(p).tobytes() == np.asarray(q).tobytes() for p, q in zip(a[0] + a[1], b[0] + b[1]))


def test_copy_refusals():
    o, xs = _fresh()
    with pytest.raises(TypeError, match="use copy.deepcopy"): copy.copy(o)
    o = Adam(learning_rate=lambda: 0.01); o.build([np.ones(2)])
    copy.deepcopy(o)                                           # a lambda deep-copies (by reference) ...
    with pytest.raises(Exception): pickle.dumps(o)             # ... and Python cannot pickle it


# ---------------------------------------------------------------- variables before build (Keras 3)
def test_variables_before_build():
    o = Adam(learning_rate=0.001, name="a0")
    assert o.variable_names == ["a0/iteration", "a0/learning_rate"]
    it, lr = o.variables
    assert (it.dtype, int(it), lr.dtype, float(lr)) == (np.int64, 0, np.float32, float(np.float32(0.001)))
    x = np.ones(3, np.float32); o.build([x])
    after = o.variables[:2]
    assert [(type(v), v.dtype, v.shape) for v in after] == [(type(v), v.dtype, v.shape) for v in (it, lr)]
    assert Adam(learning_rate=ExponentialDecay(0.1, 3, 0.5), name="s0").variable_names == ["s0/iteration"]


def test_variables_before_build_as_keras():
    keras = _need("keras")
    k = keras.optimizers.Adam(learning_rate=0.001)
    mine = Adam(learning_rate=0.001)
    assert len(k.variables) == len(mine.variables) == 2
    assert [v.name for v in k.variables] == [n.split("/")[-1] for n in mine.variable_names]
    assert str(np.asarray(k.variables[1]).dtype) == str(mine.variables[1].dtype) == "float32"   # (the counter's: the backend's int)
    assert [float(np.asarray(v)) for v in k.variables] == [float(v) for v in mine.variables]


# ---------------------------------------------------------------- the counter of stateless_apply
@pytest.mark.parametrize("counter", [0, 5, np.int64(5), np.asarray(5), np.asarray(5, np.int32), 5.0])
def test_stateless_counter_forms(counter):
    x = np.ones(3, np.float32); o = Adam(); o.build([x])
    ref_state = o.variables; ref_state[0] = np.asarray(int(counter), np.int64)
    state = list(o.variables); state[0] = counter
    nx, ns = o.stateless_apply(state, [np.ones(3, np.float32)], [x])
    rx, rs = o.stateless_apply(ref_state, [np.ones(3, np.float32)], [x])
    assert nx[0].tobytes() == rx[0].tobytes() and int(ns[0]) == int(counter) + 1
    assert np.asarray(ns[0]).dtype.kind == "i"


@pytest.mark.parametrize("counter,exc,fragment", [(-1, ValueError, "non-negative integer"), (1.5, ValueError, "non-negative integer"),
                                                  ("3", TypeError, "must be an integer"), (True, TypeError, "got the bool True")])
def test_stateless_counter_refused(counter, exc, fragment):
    x = np.ones(3, np.float32); o = Adam(); o.build([x])
    state = list(o.variables); state[0] = counter
    with pytest.raises(exc, match=None) as e: o.stateless_apply(state, [np.ones(3, np.float32)], [x])
    assert fragment in str(e.value)


def test_stateless_counter_jax_int():
    jnp = _need("jax.numpy")
    xs = [jnp.ones(3)]; o = Adam(); o.build(xs)
    state = o.variables; state[0] = 7
    _, ns = o.stateless_apply(state, [jnp.ones(3)], xs)
    assert int(ns[0]) == 8


# ---------------------------------------------------------------- options set as attributes; ordinary slips
def _built(**kw):
    o, xs = Adam(**kw), [np.ones(3, np.float32)]
    o.apply([np.full(3, 0.5, np.float32)], xs)
    return o, xs


@pytest.mark.parametrize("name,value,fragment", [
    ("clipnorm", -1.0, "clipnorm"), ("clipvalue", 0.0, "clipvalue"), ("global_clipnorm", float("nan"), "global_clipnorm"),
    ("loss_scale_factor", 0.0, "loss_scale_factor"), ("weight_decay", -1.0, "weight_decay"),
    ("gradient_nan_policy", "bogus", "gradient_nan_policy"), ("ema_momentum", 1.5, "ema_momentum"),
    ("decay", -0.1, "decay")])
def test_options_set_as_attributes_are_checked(name, value, fragment):
    o, xs = _built()
    before = getattr(o, name)
    with pytest.raises((ValueError, TypeError), match=fragment): setattr(o, name, value)
    assert getattr(o, name) == before or (before != before)
    o.apply([np.full(3, 0.5, np.float32)], xs)                # still steps


def test_a_second_clip_set_as_an_attribute_is_refused_as_in_the_constructor():
    o, _ = _built(clipnorm=1.0)
    with pytest.raises(ValueError, match="clipnorm"): o.global_clipnorm = 1.0
    assert o.global_clipnorm is None
    o.clipnorm = 0.5; assert o.clipnorm == 0.5


@pytest.mark.parametrize("name,value", [("amsgrad", True), ("use_ema", True), ("gradient_accumulation_steps", 3)])
def test_slot_layout_options_cannot_change_once_built(name, value):
    o, xs = _built()
    _refused(o, xs, lambda: setattr(o, name, value), ValueError, f"`{name}` cannot change once")
    p = Adam(); setattr(p, name, value)                        # before the first step: fine
    ys = [np.ones(3, np.float32)]; p.apply([np.full(3, 0.5, np.float32)], ys)


def test_set_weights_with_an_extra_entry_says_which_layout():
    o, xs = _built()
    w = o.get_weights()
    _refused(o, xs, lambda: o.set_weights(w + [w[-1]]), ValueError, "entry 1 is the learning rate")


def test_a_schedule_returning_a_non_number_is_named():
    from adam_lit.schedules import LearningRateSchedule
    class Bad(LearningRateSchedule):
        def __call__(self, step): return "x"
        def get_config(self): return {}
    o, xs = Adam(learning_rate=Bad()), [np.ones(3, np.float32)]
    with pytest.raises(ArgumentTypeError, match="the schedule Bad returned 'x' at step 0, not a number"):
        o.apply([np.full(3, 0.5, np.float32)], xs)
    assert np.array_equal(xs[0], np.ones(3, np.float32)) and o.iterations == 0


def test_minimize_with_the_pair_reversed_and_apply_with_a_dict():
    o, xs = _built()
    _refused(o, xs, lambda: o.minimize(lambda: ([np.ones(3, np.float32)], 1.0), xs), ArgumentTypeError,
             "the loss value first")
    _refused(o, xs, lambda: o.apply([np.ones(3, np.float32)], {"w": xs[0]}), ArgumentTypeError, "got a dict")


@pytest.mark.parametrize("which", ["variable", "gradient", "IndexedSlices values"])
@pytest.mark.parametrize("kind", ["unbuilt", "built"])
def test_numpy_masked_arrays_refused(which, kind):
    """A NumPy masked array as a variable (its masked elements' moments moved, their values not) or as a gradient (their
    moments set to 0) is refused by name, unbuilt or built, before anything changes."""
    o, xs = _fresh() if kind == "built" else (Adam(), [_f32(1, 2, 3), _f32([0.5], [-1])])
    grads = [_f32(0.1, 0.2, 0.3), _f32([1], [-1])]
    if which == "variable": xs[0] = np.ma.masked_array(_f32(1, 2, 3), mask=[0, 1, 0])
    elif which == "gradient": grads[0] = np.ma.masked_array(_f32(0.1, 0.2, 0.3), mask=[0, 1, 0])
    else: grads[1] = IndexedSlices(np.ma.masked_array(_f32([1]), mask=[[1]]), np.array([0]), (2, 1))
    _refused(o, xs, lambda: o.apply(grads, xs), ArgumentTypeError,
             "has values that are a NumPy masked array of shape (1, 1)" if which == "IndexedSlices values" else "is a NumPy masked array of shape (3,)")
    assert o.built == (kind == "built")
