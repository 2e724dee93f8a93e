"""adam_lit's `stateless_apply` under `jax.jit` against Keras 3's own `stateless_apply` under `jax.jit` (JAX backend).

Both optimizers start from the same variables and get the same gradients; each runs its step through `jax.jit` for
20 calls, feeding its outputs back in, and after every call the variables and every optimizer variable are compared
bit for bit (bytes and dtype). Inside a trace the step count and the learning rate are traced values: adam_lit then
computes the bias correction, the schedules, the accumulation and the EMA with JAX's operations in Keras's order, so
that XLA compiles the same arithmetic. Also here: one trace for many steps, pytrees of variables, and the options
that cannot run under jit refused at trace time with the reason. Skipped where JAX (or, for the oracle, Keras) is
not installed.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest
from conftest import jax_modes, keras_jax, need

jax = need("jax")
jnp = jax.numpy

from adam_lit import schedules as al_schedules  # noqa: E402
from adam_lit.adam import Adam  # noqa: E402
from adam_lit.backend import IndexedSlices  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

NAMES = ["kernel", "bias", "embeddings"]
SHAPES = [(7, 5), (5,), (11,)]


@pytest.fixture
def x64_float32_mode():
    "JAX 64-bit with Keras floatx float32 and float32 variables (a JAX user who turned x64 on); restored afterwards."
    with jax_modes(True, "float32"):
        yield np.float32


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def same_state(aov, kov, when, names=None):
    """The optimizer variables bit for bit; the counter by value (with JAX 64-bit, adam_lit's counter is int64, the
    default integer dtype, and Keras 3.15's stays int32: the step it feeds to the bias correction is the same)."""
    assert int(aov[0]) == int(kov[0]), f"{when}: the counters differ"
    for j, (a, k) in enumerate(zip(aov[1:], kov[1:]), start=1):
        assert same_bits(a, k), f"{when}: optimizer variable {j} ({names[j] if names else ''}) differs"


def data(dtype, steps, seed=0, gscale=1.0):
    rng = np.random.default_rng(seed)
    x0 = [rng.normal(size=s).astype(dtype) for s in SHAPES]
    gs = [[(rng.normal(size=s) * gscale * (1 + k % 3)).astype(dtype) for s in SHAPES] for k in range(steps)]
    return x0, gs


def keras_schedule(s):
    "Keras's schedule of the same class and config as adam_lit's `s`."
    keras = keras_jax()
    return getattr(keras.optimizers.schedules, type(s).__name__).from_config(s.get_config())


def run_both(dtype, kw, steps=20, exclude=None, seed=0, gscale=1.0, none_at=None, wrap=jax.jit):
    """Keras's and adam_lit's jitted `stateless_apply`, `steps` calls each, outputs fed back in; asserts the same bits
    of every variable and optimizer variable after every call; returns adam_lit's final state."""
    keras = keras_jax()
    x0, gs = data(dtype, steps, seed, gscale)
    kkw = dict(kw)
    if isinstance(kw.get("learning_rate"), al_schedules.LearningRateSchedule):
        kkw["learning_rate"] = keras_schedule(kw["learning_rate"])
    kvars = [keras.Variable(x, name=n) for x, n in zip(x0, NAMES)]
    kopt = keras.optimizers.Adam(**kkw, name="adam")      # one name in both (the automatic ones count per process)
    if exclude: kopt.exclude_from_weight_decay(var_names=exclude)
    kopt.build(kvars)
    kstep = wrap(kopt.stateless_apply)
    kov, ktv = [v.value for v in kopt.variables], [v.value for v in kvars]

    avars = [jnp.asarray(x) for x in x0]
    aopt = Adam(**kw, name="adam")
    aopt.build(avars, names=NAMES)
    if exclude: aopt.exclude_from_weight_decay(var_names=exclude)
    astep = wrap(aopt.stateless_apply)
    aov, atv = aopt.variables, avars
    assert aopt.variable_names == [v.path for v in kopt.variables]
    same_state(aov, kov, "initial state")

    for step, g in enumerate(gs):
        g = [None if (none_at is not None and j == none_at and step % 2) else jnp.asarray(x) for j, x in enumerate(g)]
        ktv, kov = kstep(kov, g, ktv)
        atv, aov = astep(aov, g, atv)
        for j, (a, k) in enumerate(zip(atv, ktv)):
            assert same_bits(a, k), f"call {step}: variable {j} differs from Keras's jitted step"
        same_state(aov, kov, f"call {step}", aopt.variable_names)
    return aopt, atv, aov


S = al_schedules
CASES = {
    "default": {},
    "amsgrad": dict(amsgrad=True),
    "weight_decay": dict(weight_decay=0.05),
    "clipnorm": dict(clipnorm=0.5),
    "clipvalue": dict(clipvalue=0.3),
    "global_clipnorm": dict(global_clipnorm=0.7),
    "loss_scale_factor": dict(loss_scale_factor=64.0),
    "ema": dict(use_ema=True, ema_momentum=0.9),
    "ema_overwrite": dict(use_ema=True, ema_overwrite_frequency=3),
    "accumulation": dict(gradient_accumulation_steps=3),
    "exponential_decay": dict(learning_rate=S.ExponentialDecay(0.01, 4, 0.7)),
    "exponential_staircase": dict(learning_rate=S.ExponentialDecay(0.01, 4, 0.7, staircase=True)),
    "piecewise_constant": dict(learning_rate=S.PiecewiseConstantDecay([3, 9], [0.01, 0.003, 0.001])),
    "inverse_time": dict(learning_rate=S.InverseTimeDecay(0.01, 5, 0.5)),
    "polynomial": dict(learning_rate=S.PolynomialDecay(0.01, 12)),
    "cosine": dict(learning_rate=S.CosineDecay(0.01, 15, alpha=0.1)),
    "cosine_warmup": dict(learning_rate=S.CosineDecay(0.0, 12, warmup_target=0.01, warmup_steps=4)),
    "callable_lr": dict(learning_rate=lambda: 0.003),
    "everything": dict(amsgrad=True, weight_decay=0.01, global_clipnorm=1.0, loss_scale_factor=8.0, use_ema=True,
                       ema_overwrite_frequency=4, gradient_accumulation_steps=2,
                       learning_rate=S.ExponentialDecay(0.01, 3, 0.8)),
    "accumulation_schedule_clipnorm": dict(gradient_accumulation_steps=3, clipnorm=0.4,
                                           learning_rate=S.CosineDecay(0.01, 6, warmup_target=0.02, warmup_steps=2)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_jit_float32_matches_keras(float32_mode, case):
    run_both(np.float32, CASES[case])


# Not the cosine schedules in float64: Keras 3's `ops.cos` returns float32 for a float64 tensor (its result type
# promotes with Python's `float` as "float32"; tests/test_keras_oracle.py::test_keras_cos_rounds_float64_to_float32),
# so Keras's float64 CosineDecay is a float32 cosine; adam_lit computes it in the variable's dtype, traced or not.
@pytest.mark.parametrize("case", ["default", "amsgrad", "weight_decay", "global_clipnorm", "ema_overwrite",
                                  "accumulation", "exponential_decay", "exponential_staircase", "piecewise_constant",
                                  "inverse_time", "polynomial", "loss_scale_factor", "clipnorm", "everything"])
def test_jit_float64_matches_keras(float64_mode, case):
    "float64 variables (JAX 64-bit, floatx float64): the learning rate, alpha and every slot in float64."
    _, atv, aov = run_both(np.float64, CASES[case])
    assert all(np.asarray(a).dtype == np.float64 for a in atv + aov[1:])


# Not the cosine schedules, for the reason of test_jit_float64_matches_keras: Keras's float64 cosine is a float32 `cos`.
@pytest.mark.parametrize("case", ["default", "weight_decay", "exponential_decay", "exponential_staircase",
                                  "piecewise_constant", "inverse_time", "polynomial", "everything"])
def test_jit_x64_float32_variables_match_keras(x64_float32_mode, case):
    """JAX 64-bit on, float32 variables: Keras holds a float rate in floatx (float32), but its schedules compute in
    float64 (`ops.convert_to_tensor` of a Python float is float64 under x64) and the rate is cast to float32 after."""
    _, atv, aov = run_both(np.float32, CASES[case], steps=30)
    assert all(np.asarray(a).dtype == np.float32 for a in atv + aov[1:])


@pytest.mark.parametrize("case", ["exponential_decay", "piecewise_constant", "inverse_time", "polynomial"])
def test_eager_x64_float32_variables_match_keras(x64_float32_mode, case):
    "The same, eagerly: Keras's `stateless_apply` outside `jax.jit` also computes its schedules in float64."
    run_both(np.float32, CASES[case], steps=30, wrap=lambda f: f)


def test_jit_weight_decay_exclusions_match_keras(float32_mode):
    aopt, atv, _ = run_both(np.float32, dict(weight_decay=0.1), exclude=["bias"])
    assert [aopt._use_weight_decay(i) for i in range(3)] == [True, False, True]


@pytest.mark.filterwarnings("ignore:Gradients do not exist")
@pytest.mark.parametrize("case", ["default", "accumulation", "ema_overwrite", "everything"])
def test_jit_missing_gradients_match_keras(float32_mode, case):
    """A variable without a gradient on every other call (Keras's JAX backend under jit: no update and no decay for it;
    with accumulation its accumulator keeps its sum through an update)."""
    run_both(np.float32, CASES[case], none_at=1)


def test_jit_small_gradients_match_keras(float32_mode):
    "Gradients of 1e-4 (v near epsilon's scale) and of 1e3, where the order of operations shows most."
    run_both(np.float32, dict(amsgrad=True), gscale=1e-4, seed=1)
    run_both(np.float32, dict(weight_decay=0.01), gscale=1e3, seed=2)


# ------------------------------------------------------------------------------------------ one trace, many steps
def counted(opt):
    "`jax.jit` of `opt.stateless_apply`, with a list that grows by one at each trace."
    traces = []
    def step(ov, g, tv):
        traces.append(1)
        return opt.stateless_apply(ov, g, tv)
    return jax.jit(step), traces


@pytest.mark.parametrize("kw", [{}, dict(learning_rate=S.ExponentialDecay(0.01, 4, 0.7), gradient_accumulation_steps=2,
                                         use_ema=True, ema_overwrite_frequency=2, weight_decay=0.01)])
def test_jit_traces_once(kw):
    x0, gs = data(np.float32, 6)
    opt = Adam(**kw)
    tv = [jnp.asarray(x) for x in x0]
    opt.build(tv)
    f, traces = counted(opt)
    ov = opt.variables
    sizes = []
    for g in gs:
        tv, ov = f(ov, [jnp.asarray(x) for x in g], tv)
        sizes.append(f._cache_size())
    # one trace; two executables at most, both from it: the first call's uncommitted `jnp.asarray` variables, then
    # the committed outputs fed back, and none after that
    assert len(traces) == 1 and sizes[1] <= 2 and set(sizes[1:]) == {sizes[1]}
    assert int(ov[0]) == len(gs) and opt.iterations == 0      # the optimizer object itself is not changed


def test_jit_matches_eager_adam_lit():
    "With no option whose rounding XLA rewrites, the jitted step and adam_lit's eager step agree to the last bit."
    x0, gs = data(np.float32, 10)
    opt = Adam()
    tv = [jnp.asarray(x) for x in x0]
    opt.build(tv)
    f = jax.jit(opt.stateless_apply)
    ov_j = ov_e = opt.variables
    tv_j = tv_e = tv
    for g in gs:
        g = [jnp.asarray(x) for x in g]
        tv_j, ov_j = f(ov_j, g, tv_j)
        tv_e, ov_e = opt.stateless_apply(ov_e, g, tv_e)
    for a, b in zip(tv_j + ov_j, tv_e + ov_e):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=0)   # XLA's pow: an ulp of alpha


def test_closed_over_arrays_and_the_trainer_step():
    """Arrays a jitted function closes over are concrete, its arguments tracers (device unknown while tracing): every mix
    traces. With the state an argument the bits are those of the step with everything passed in; a closed-over state
    is a constant that XLA folds into the step size (an ulp of alpha). Keras's trainer's form, its state donated in the
    order it is returned (the form the bench and the optimizer page recommend), gives the bits step after step."""
    x0, gs = data(np.float32, 3)
    opt = Adam(learning_rate=0.01, weight_decay=0.004)
    tv = [jnp.asarray(x) for x in x0]
    opt.build(tv)
    ov = list(opt.variables)
    g = [jnp.asarray(x) for x in gs[0]]
    want = jax.jit(opt.stateless_apply)(ov, g, tv)
    forms = {"grads only": lambda: jax.jit(lambda g_: opt.stateless_apply(ov, g_, tv))(g),
             "params and grads": lambda: jax.jit(lambda t, g_: opt.stateless_apply(ov, g_, t))(tv, g),
             "state and grads": lambda: jax.jit(lambda o, g_: opt.stateless_apply(o, g_, tv))(ov, g)}
    for name, run in forms.items():
        got = run()
        for a, b in zip(got[0] + got[1], want[0] + want[1]):
            if name == "state and grads": assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), name
            else:   # a closed-over state makes the counter a constant: XLA folds the step size, an ulp of alpha apart
                np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=0, err_msg=name)
    def train_step(state, grads):
        params, opt_vars = state
        return opt.stateless_apply(opt_vars, grads, params)
    step = jax.jit(train_step, donate_argnums=0)
    state = ([jnp.array(x) for x in x0], [jnp.array(v) for v in ov])       # copies: donated, so consumed
    ref_t, ref_o = tv, ov
    for k in range(3):
        g = [jnp.asarray(x) for x in gs[k]]
        state = step(state, g)
        ref_t, ref_o = jax.jit(opt.stateless_apply)(ref_o, g, ref_t)
    for a, b in zip(state[0] + state[1], ref_t + ref_o):
        assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


# ------------------------------------------------------------------------------------------------------ pytrees
def tree_case(lib):
    rng = np.random.default_rng(3)
    mk = (lambda a: jnp.asarray(a)) if lib == "jax" else (lambda a: a)
    params = {"dense": {"w": mk(rng.normal(size=(3, 2)).astype(np.float32)), "b": mk(np.zeros(2, np.float32))},
              "out": [mk(rng.normal(size=(2,)).astype(np.float32))]}
    grads = {"dense": {"w": mk(np.ones((3, 2), np.float32)), "b": mk(np.full(2, 0.5, np.float32))},
             "out": [mk(np.full(2, -1.0, np.float32))]}
    return params, grads


@pytest.mark.parametrize("lib", ["numpy", "jax"])
def test_pytree_build_and_stateless_apply(lib):
    params, grads = tree_case(lib)
    opt = Adam(learning_rate=0.1, weight_decay=0.1)
    opt.build(params)
    assert opt._names == ["dense/b", "dense/w", "out/0"] and opt._names_given == [True, True, True]
    opt.exclude_from_weight_decay(var_names=["dense/b"])
    new, ov = opt.stateless_apply(opt.variables, grads, params)
    assert list(new) == ["dense", "out"] and list(new["dense"]) == ["w", "b"] and isinstance(new["out"], list)
    # the same step on the flat leaves, in JAX's order
    flat = Adam(learning_rate=0.1, weight_decay=0.1)
    leaves = [params["dense"]["b"], params["dense"]["w"], params["out"][0]]
    flat.build(leaves, names=["dense/b", "dense/w", "out/0"])
    flat.exclude_from_weight_decay(var_names=["dense/b"])
    fnew, fov = flat.stateless_apply(flat.variables, [grads["dense"]["b"], grads["dense"]["w"], grads["out"][0]], leaves)
    for a, b in zip([new["dense"]["b"], new["dense"]["w"], new["out"][0]] + ov, fnew + fov):
        assert same_bits(a, b)
    if lib == "jax":
        jax_leaves = jax.tree_util.tree_leaves(params)
        assert all(a is b for a, b in zip(jax_leaves, opt._variables))      # the order of jax.tree_util
        f = jax.jit(opt.stateless_apply)
        jnew, jov = f(opt.variables, grads, params)
        assert jax.tree_util.tree_structure(jnew) == jax.tree_util.tree_structure(params)
        for a, b in zip(jax.tree_util.tree_leaves(jnew) + jov, jax.tree_util.tree_leaves(new) + ov):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6)


def test_pytree_grads_with_none_and_bad_structure():
    params, grads = tree_case("numpy")
    opt = Adam()
    opt.build(params)
    grads["dense"]["b"] = None
    new, _ = opt.stateless_apply(opt.variables, grads, params)
    assert new["dense"]["b"] is params["dense"]["b"]
    del grads["dense"]["b"]
    with pytest.raises(ValueError, match="must have the structure of `trainable_variables`.*dense/b has no gradient"):
        opt.stateless_apply(opt.variables, grads, params)


def test_flat_lists_unchanged():
    "A flat list (or tuple) of arrays is what it always was: a list comes back, names are generated."
    opt = Adam()
    xs = (np.ones(2, np.float32), np.ones(3, np.float32))
    opt.build(xs)
    assert opt._names == ["variable_0", "variable_1"] and opt._names_given == [False, False]
    new, _ = opt.stateless_apply(opt.variables, (np.ones(2, np.float32), None), xs)
    assert type(new) is list


# ------------------------------------------------------------------------------------- refused at trace time
def built(**kw):
    opt = Adam(**kw)
    tv = [jnp.ones(3, jnp.float32)]
    opt.build(tv)
    return opt, tv


@pytest.mark.parametrize("kw, message", [
    (dict(gradient_nan_policy="raise"), "gradient_nan_policy='raise' cannot raise inside jax.jit"),
    (dict(numerics="torch"), "numerics='torch' does not run under jax.jit"),
    (dict(numerics="legacy"), "numerics='legacy' does not run under jax.jit"),
    (dict(learning_rate=S.CosineDecayRestarts(0.01, 10)), "CosineDecayRestarts does not run under jax.jit"),
    (dict(decay=0.01), "the legacy `decay` does not run under jax.jit"),
])
def test_refused_under_jit(kw, message):
    opt, tv = built(**kw)
    with pytest.raises((NotImplementedError, TypeError), match=message.replace("(", r"\(").replace(")", r"\)")):
        jax.jit(opt.stateless_apply)(opt.variables, [jnp.ones(3, jnp.float32)], tv)


def test_counter_must_be_an_integer_array_under_jit():
    opt, tv = built()
    ov = opt.variables
    with pytest.raises(TypeError, match=r"optimizer_variables\[0\] \(the iteration counter\) must be an integer array, got shape \(\) and dtype float32"):
        jax.jit(opt.stateless_apply)([jnp.float32(0)] + ov[1:], [jnp.ones(3, jnp.float32)], tv)


def test_indexed_slices_refused_under_jit():
    opt, tv = built()
    g = IndexedSlices(jnp.ones((1,), jnp.float32), jnp.asarray([1]), (3,))      # (built outside: it checks its indices)
    with pytest.raises(NotImplementedError, match="gradient 0 is an IndexedSlices"):
        jax.jit(lambda ov, tv: opt.stateless_apply(ov, [g], tv))(opt.variables, tv)


def test_skip_policy_under_jit():
    "'skip' under jit: a non-finite gradient leaves every value (the counter included) as it was; else the normal step."
    opt, tv = built(gradient_nan_policy="skip")
    ref, _ = built()
    f = jax.jit(opt.stateless_apply)
    ov = opt.variables
    bad = [jnp.asarray([1.0, jnp.nan, 0.0], jnp.float32)]
    ntv, nov = f(ov, bad, tv)
    for a, b in zip(ntv + nov, tv + ov): assert same_bits(a, b)
    good = [jnp.asarray([1.0, -2.0, 0.5], jnp.float32)]
    ntv, nov = f(ov, good, tv)
    rtv, rov = jax.jit(ref.stateless_apply)(ref.variables, good, tv)
    for a, b in zip(ntv + nov, rtv + rov): assert same_bits(a, b)
    assert int(nov[0]) == 1 and opt.skipped_steps == 0
