"""`adam_lit.optax` (nbs/18_optax.ipynb): the Optax transformations against their oracles, bit for bit.

- `adam`, `amsgrad` (Keras numerics): Keras 3's `Adam(...).stateless_apply` under `jax.jit` (JAX backend), 30 steps
  with outputs fed back, the parameters after `optax.apply_updates` and every moment compared by their bytes, float32
  and float64 (JAX 64-bit, Keras floatx float64); with Keras schedules, Optax schedules (Keras's float rate set to the
  same value in its state each step) and `optax.inject_hyperparams`.
- `adamw`: the claim exactly as stated on the page: the same bits as Keras's AdamW at every coordinate where
  `x_new - x` is a float of the dtype (a whole run when parameters stay away from zero), and possibly not elsewhere.
- `numerics="optax"`: `optax.adam`, `optax.amsgrad`, `optax.adamw`.
- `lazy_adam`: adam_lit's `LazyAdam` on NumPy with `IndexedSlices` gradients, bit for bit op by op (called outside
  jax.jit); under jax.jit within an ulp per operation (XLA contracts `m * b1 + g * c1` into a fused multiply-add).
- `optax.chain`, one trace for many steps, pytrees, and the errors of bad arguments.
"""
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest
from conftest import jax_modes, keras_jax, need

jax = need("jax")
optax = need("optax")
jnp = jax.numpy

import adam_lit.optax as alo  # noqa: E402
from adam_lit import schedules as S  # noqa: E402
from adam_lit.backend import ArgumentTypeError, IndexedSlices  # noqa: E402
from adam_lit.lazyadam import LazyAdam  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")

NAMES = ["kernel", "bias", "embeddings"]
SHAPES = [(7, 5), (5,), (11,)]


@pytest.fixture(params=["float32", "float64"])
def mode(request):
    "JAX 64-bit and Keras floatx for the dtype; restored afterwards."
    with jax_modes(request.param == "float64", request.param):
        yield np.dtype(request.param).type


@pytest.fixture
def f32():
    with jax_modes(False, "float32"):
        yield np.float32


def same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def data(dtype, steps, seed=0, gscale=1.0, xscale=1.0, offset=0.0):
    rng = np.random.default_rng(seed)
    x0 = [(rng.normal(size=s) * xscale + offset * np.sign(rng.normal(size=s))).astype(dtype) for s in SHAPES]
    gs = [[(rng.normal(size=s) * gscale * (1 + k % 3)).astype(dtype) for s in SHAPES] for k in range(steps)]
    return x0, gs


class KerasRun:
    "Keras 3's Adam/AdamW under jax.jit on three named variables: `step(grads, lr=None)`; `slot(name, i)`."
    def __init__(self, x0, cls="Adam", **kw):
        keras = keras_jax()
        if isinstance(kw.get("learning_rate"), S.LearningRateSchedule):
            s = kw["learning_rate"]
            kw["learning_rate"] = getattr(keras.optimizers.schedules, type(s).__name__).from_config(s.get_config())
        self.vars = [keras.Variable(x, name=n) for x, n in zip(x0, NAMES)]
        self.opt = getattr(keras.optimizers, cls)(**kw, name="adam")
        self.opt.build(self.vars)
        self.f = jax.jit(self.opt.stateless_apply)
        self.ov, self.tv = [v.value for v in self.opt.variables], [v.value for v in self.vars]
        self.paths = [v.path for v in self.opt.variables]

    def step(self, grads, lr=None):
        if lr is not None: self.ov = [self.ov[0], jnp.asarray(lr, self.ov[1].dtype)] + self.ov[2:]
        self.tv, self.ov = self.f(self.ov, grads, self.tv)

    def slot(self, kind, i):
        return self.ov[self.paths.index(f"adam/{NAMES[i]}_{kind}")]


def alo_step(tx, **extra):
    @jax.jit
    def step(p, st, g):
        u, st = tx.update(g, st, p, **extra)
        return optax.apply_updates(p, u), st
    return step


def compare(k, p, st, when, amsgrad=False):
    for i in range(len(p)):
        assert same_bits(p[i], k.tv[i]), f"{when}: parameter {i} differs from Keras's"
        assert same_bits(st.mu[i], k.slot("momentum", i)), f"{when}: mu {i} differs"
        assert same_bits(st.nu[i], k.slot("velocity", i)), f"{when}: nu {i} differs"
        if amsgrad: assert same_bits(st.nu_max[i], k.slot("velocity_hat", i)), f"{when}: nu_max {i} differs"


def run_vs_keras(dtype, kkw, tx, steps=30, lr_of=None, inner=lambda st: st, cls="Adam", **dkw):
    x0, gs = data(dtype, steps, **dkw)
    k = KerasRun(x0, cls, **kkw)
    p = [jnp.asarray(x) for x in x0]
    st = tx.init(p)
    f = alo_step(tx)
    for n, g in enumerate(gs):
        g = [jnp.asarray(a) for a in g]
        k.step(g, None if lr_of is None else lr_of(n))
        p, st = f(p, st, g)
        compare(k, p, inner(st), f"step {n}", amsgrad=kkw.get("amsgrad", False))
        assert int(inner(st).count) == n + 1
    return p, st


CASES = {
    "default": ({}, {}),
    "amsgrad": (dict(amsgrad=True), dict(amsgrad=True)),
    "hyper": (dict(learning_rate=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-5), dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-5)),
    "exponential": (dict(learning_rate=S.ExponentialDecay(0.01, 4, 0.7)), dict(learning_rate=S.ExponentialDecay(0.01, 4, 0.7))),
    "staircase": (dict(learning_rate=S.ExponentialDecay(0.01, 4, 0.7, staircase=True)),
                  dict(learning_rate=S.ExponentialDecay(0.01, 4, 0.7, staircase=True))),
    "piecewise": (dict(learning_rate=S.PiecewiseConstantDecay([3, 9], [0.01, 0.003, 0.001])),
                  dict(learning_rate=S.PiecewiseConstantDecay([3, 9], [0.01, 0.003, 0.001]))),
    "inverse_time": (dict(learning_rate=S.InverseTimeDecay(0.01, 5, 0.5)), dict(learning_rate=S.InverseTimeDecay(0.01, 5, 0.5))),
    "polynomial": (dict(learning_rate=S.PolynomialDecay(0.01, 12)), dict(learning_rate=S.PolynomialDecay(0.01, 12))),
}


@pytest.mark.parametrize("case", list(CASES))
def test_adam_matches_keras_jit(mode, case):
    kkw, akw = CASES[case]
    run_vs_keras(mode, kkw, alo.adam(**akw))


@pytest.fixture
def x64_f32():
    "JAX 64-bit on, Keras floatx float32, float32 parameters; restored afterwards."
    with jax_modes(True, "float32"):
        yield np.float32


@pytest.mark.parametrize("case", ["default", "exponential", "staircase", "piecewise", "inverse_time", "polynomial"])
def test_adam_matches_keras_jit_x64_float32_params(x64_f32, case):
    "JAX 64-bit on with float32 parameters: Keras's schedules compute in float64 there, and so do adam_lit's."
    kkw, akw = CASES[case]
    run_vs_keras(np.float32, kkw, alo.adam(**akw), steps=40)


def test_cosine_schedules_match_keras_float32(f32):
    "(Not in float64: Keras's float64 `ops.cos` computes in float32; tests/test_jax_jit.py says why.)"
    for s in (S.CosineDecay(0.01, 15, alpha=0.1), S.CosineDecay(0.0, 12, warmup_target=0.01, warmup_steps=4)):
        run_vs_keras(np.float32, dict(learning_rate=s), alo.adam(learning_rate=s))


def test_amsgrad_factory_and_small_gradients(f32):
    run_vs_keras(np.float32, dict(amsgrad=True), alo.amsgrad(), gscale=1e-4, seed=1)
    run_vs_keras(np.float32, {}, alo.adam(), gscale=1e3, seed=2)


def test_optax_schedule_matches_keras_with_the_same_rate(mode):
    """An Optax schedule (a callable of the count): Keras with its float rate set to that value before each step (the
    value computed under jax.jit, as in the step: XLA's fused pow and its op-by-op pow differ at some counts)."""
    sched = optax.exponential_decay(0.01, transition_steps=5, decay_rate=0.5)
    jsched = jax.jit(sched)
    lr_of = lambda n: np.asarray(jsched(jnp.asarray(n, jnp.int32)))
    run_vs_keras(mode, {}, alo.adam(learning_rate=sched), lr_of=lr_of)


def test_inject_hyperparams_learning_rate_changed_between_steps(mode):
    "inject_hyperparams with b1, b2, eps static: Keras's bits with the learning rate changed in the state each step."
    tx = optax.inject_hyperparams(alo.adam, static_args=("b1", "b2", "eps"))(learning_rate=0.01)
    x0, gs = data(mode, 20)
    k = KerasRun(x0, learning_rate=0.01)
    p = [jnp.asarray(x) for x in x0]
    st = tx.init(p)
    f = alo_step(tx)
    for n, g in enumerate(gs):
        g = [jnp.asarray(a) for a in g]
        lr = 0.01 / (1 + n)
        st.hyperparams["learning_rate"] = jnp.asarray(lr, mode)
        k.step(g, lr)
        p, st = f(p, st, g)
        compare(k, p, st.inner_state, f"step {n}")


def test_inject_hyperparams_default_is_keras_with_the_float32_betas(f32):
    """Without static_args, inject_hyperparams holds b1, b2, eps as float32 arrays: the bits of Keras constructed with
    those float32 numbers (and not, in general, with 0.9, 0.999, 1e-7: checked to differ)."""
    tx = optax.inject_hyperparams(alo.adam)(learning_rate=0.003)
    b1, b2, eps = (float(np.float32(z)) for z in (0.9, 0.999, 1e-7))
    run_vs_keras(np.float32, dict(learning_rate=0.003, beta_1=b1, beta_2=b2, epsilon=eps), tx, inner=lambda st: st.inner_state)
    with pytest.raises(AssertionError):
        run_vs_keras(np.float32, dict(learning_rate=0.003), tx, inner=lambda st: st.inner_state)


def test_inject_hyperparams_with_a_static_adam_lit_schedule():
    "An adam_lit schedule named in static_args goes to the factory as it is: the bits of `adam(schedule)` itself."
    sched = S.ExponentialDecay(0.01, 4, 0.7)
    tx = optax.inject_hyperparams(alo.adam, static_args=("learning_rate", "b1", "b2", "eps"))(learning_rate=sched)
    ref = alo.adam(sched)
    x0, gs = data(np.float32, 10)
    p = q = [jnp.asarray(x) for x in x0]
    sp, sq = tx.init(p), ref.init(q)
    fp, fq = alo_step(tx), alo_step(ref)
    for g in gs:
        g = [jnp.asarray(a) for a in g]
        p, sp = fp(p, sp, g)
        q, sq = fq(q, sq, g)
    for a, b in zip(p, q): assert same_bits(a, b)


# ------------------------------------------------------------------------------------------- weight decay
def test_adamw_far_from_zero_is_bit_identical(mode):
    "Parameters of magnitude >= 0.5 (never halved in a step): AdamW's whole run, bit for bit, and `adam(weight_decay=)`."
    run_vs_keras(mode, dict(weight_decay=0.05), alo.adamw(weight_decay=0.05), cls="AdamW", offset=0.5, xscale=0.3)
    run_vs_keras(mode, dict(weight_decay=0.01, amsgrad=True, learning_rate=S.ExponentialDecay(0.01, 4, 0.7)),
                 alo.adam(weight_decay=0.01, amsgrad=True, learning_rate=S.ExponentialDecay(0.01, 4, 0.7)),
                 offset=0.5, xscale=0.3, seed=4)


def test_adamw_default_decay_is_the_numerics_default(f32):
    "`adamw()`'s decay is Keras's AdamW default (0.004) under Keras's numerics; 0 decays nothing."
    run_vs_keras(f32, {}, alo.adamw(), cls="AdamW", offset=0.5, xscale=0.3)
    run_vs_keras(f32, {}, alo.adamw(weight_decay=0), offset=0.5, xscale=0.3)          # Keras's Adam


def test_adamw_exact_where_the_difference_is_a_float(f32):
    """Near zero: from Keras's state at each step, the update of `adamw` gives Keras's new value at every coordinate
    where `x2 - x` is a float32, and somewhere it does not (the claim is not wider than stated)."""
    x0, gs = data(np.float32, 40, seed=7, xscale=0.003)
    k = KerasRun(x0, "AdamW", weight_decay=0.1, learning_rate=0.01)
    tx = alo.adamw(learning_rate=0.01, weight_decay=0.1)
    upd = jax.jit(tx.update)
    exact = inexact = missed = 0
    for n, g in enumerate(gs):
        g = [jnp.asarray(a) for a in g]
        x = list(k.tv)
        st = alo.AdamState(k.ov[0].astype(jnp.int32), [k.slot("momentum", i) for i in range(3)],
                           [k.slot("velocity", i) for i in range(3)], None)
        u, _ = upd(g, st, x)
        mine = optax.apply_updates(x, u)
        k.step(g)
        for a, b, x_ in zip(mine, k.tv, x):
            a, b, x_ = np.asarray(a), np.asarray(b), np.asarray(x_)
            d = b.astype(np.float64) - x_.astype(np.float64)           # exact in float64
            rep = d.astype(np.float32).astype(np.float64) == d
            assert np.array_equal(a[rep].view(np.uint32), b[rep].view(np.uint32)), f"step {n}: a representable step differs"
            exact += int(rep.sum()); inexact += int((~rep).sum()); missed += int((a[~rep] != b[~rep]).sum())
    assert exact > 0 and inexact > 0 and missed > 0, (exact, inexact, missed)


def test_weight_decay_mask(f32):
    "`mask` (a pytree of bools or a callable): Keras's `exclude_from_weight_decay` for the masked-out variables."
    x0, gs = data(np.float32, 15, offset=0.5, xscale=0.3)
    for mask in ([True, False, True], lambda params: [True, False, True]):
        k = KerasRun(x0, "AdamW", weight_decay=0.05)
        k.opt.exclude_from_weight_decay(var_names=["bias"])
        tx = alo.adamw(weight_decay=0.05, mask=mask)
        p = [jnp.asarray(x) for x in x0]
        st, f = tx.init(p), alo_step(tx)
        for n, g in enumerate(gs):
            g = [jnp.asarray(a) for a in g]
            k.step(g)
            p, st = f(p, st, g)
            compare(k, p, st, f"step {n}")


# ------------------------------------------------------------------------------------------- numerics="optax"
@pytest.mark.parametrize("name", ["adam", "amsgrad", "adamw", "adamw_default", "adamw_mask", "schedule"])
def test_optax_numerics_match_optax(mode, name):
    sched = optax.cosine_decay_schedule(0.01, 20)
    mine, theirs = {
        "adam": (alo.adam(0.01, numerics="optax"), optax.adam(0.01)),
        "amsgrad": (alo.amsgrad(0.01, numerics="optax"), optax.amsgrad(0.01)),
        "adamw": (alo.adamw(0.01, weight_decay=0.05, numerics="optax"), optax.adamw(0.01, weight_decay=0.05)),
        "adamw_default": (alo.adamw(0.5, numerics="optax"), optax.adamw(0.5)),     # optax's default decay, 1e-4
        "adamw_mask": (alo.adamw(0.01, weight_decay=0.05, mask=[True, False, True], numerics="optax"),
                       optax.adamw(0.01, weight_decay=0.05, mask=[True, False, True])),
        "schedule": (alo.adam(sched, b1=0.8, eps=1e-6, numerics="optax"), optax.adam(sched, b1=0.8, eps=1e-6)),
    }[name]
    x0, gs = data(mode, 25)
    p = q = [jnp.asarray(x) for x in x0]
    sa, so = mine.init(p), theirs.init(q)
    fa, fo = alo_step(mine), alo_step(theirs)
    for n, g in enumerate(gs):
        g = [jnp.asarray(a) for a in g]
        p, sa = fa(p, sa, g)
        q, so = fo(q, so, g)
        for i in range(3): assert same_bits(p[i], q[i]), f"step {n}: parameter {i} differs from optax's"


# ------------------------------------------------------------------------------------------- chain, traces, eager
def test_chain_clip_is_keras_on_optax_clipped_gradients(f32):
    """`chain(clip_by_global_norm(c), adam())` is Keras's Adam fed Optax's clipped gradients, bit for bit. (Keras's own
    `global_clipnorm` clips at the same place, before the moments, but rounds `g * (c * min(1/n, 1/c))` where Optax
    rounds `(g / n) * c`: close, not the same bits.)"""
    tx = optax.chain(optax.clip_by_global_norm(1.0), alo.adam(0.01))
    clip = optax.clip_by_global_norm(1.0)
    x0, gs = data(np.float32, 20, gscale=3.0)
    k, kc = KerasRun(x0, learning_rate=0.01), KerasRun(x0, learning_rate=0.01, global_clipnorm=1.0)
    p = [jnp.asarray(x) for x in x0]
    st, f = tx.init(p), alo_step(tx)
    for n, g in enumerate(gs):
        g = [jnp.asarray(a) for a in g]
        k.step(jax.jit(lambda g: clip.update(g, clip.init(g))[0])(g))
        kc.step(g)
        p, st = f(p, st, g)
        compare(k, p, st[1], f"step {n}")
        for a, b in zip(p, kc.tv): np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_one_trace_for_many_steps():
    "One jax.jit trace serves every step: a schedule and an injected, changing learning rate included."
    for tx in (alo.adam(S.ExponentialDecay(0.01, 4, 0.7), weight_decay=0.01),
               optax.inject_hyperparams(alo.adamw)(learning_rate=0.01)):
        traces = []
        def step(p, st, g):
            traces.append(1)
            u, st = tx.update(g, st, p)
            return optax.apply_updates(p, u), st
        f = jax.jit(step)
        x0, gs = data(np.float32, 8)
        p = [jnp.asarray(x) for x in x0]
        st = tx.init(p)
        for n, g in enumerate(gs):
            if hasattr(st, "hyperparams"): st.hyperparams["learning_rate"] = jnp.asarray(0.01 / (n + 1), jnp.float32)
            p, st = f(p, st, [jnp.asarray(a) for a in g])
        assert len(traces) == 1


def test_pytree_params(f32):
    "A nested dict of parameters: the same bits as the flat list of its leaves (in JAX's order), structure kept."
    rng = np.random.default_rng(3)
    tree = {"dense": {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)},
            "out": [rng.normal(size=(2,)).astype(np.float32)]}
    p = jax.tree.map(jnp.asarray, tree)
    flat = jax.tree.leaves(p)
    tx = alo.adamw(0.1, weight_decay=0.1, mask={"dense": {"w": True, "b": False}, "out": [True]})
    txf = alo.adamw(0.1, weight_decay=0.1, mask=[False, True, True])      # JAX's order: dense/b, dense/w, out/0
    st, sf = tx.init(p), txf.init(flat)
    f, ff = alo_step(tx), alo_step(txf)
    for k in range(5):
        g = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape).astype(np.float32)), p)
        p, st = f(p, st, g)
        flat, sf = ff(flat, sf, jax.tree.leaves(g))
    assert jax.tree.structure(p) == jax.tree.structure(tree) and jax.tree.structure(st.mu) == jax.tree.structure(tree)
    for a, b in zip(jax.tree.leaves(p) + jax.tree.leaves(st.mu), flat + jax.tree.leaves(sf.mu)): assert same_bits(a, b)


# ------------------------------------------------------------------------------------------- lazy_adam
def lazy_case(dtype, steps, seed=0, n=40, d=4, k=12):
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(n, d)).astype(dtype)
    bias = rng.normal(size=(d,)).astype(dtype)
    batches = []
    for _ in range(steps):
        idx = rng.integers(0, n, size=k)
        idx[:3] = idx[3]                                   # repeats
        vals = rng.normal(size=(k, d)).astype(dtype)
        vals[4] = 0                                        # a touched row may have a zero gradient
        gb = rng.normal(size=(d,)).astype(dtype)
        batches.append((idx, vals, gb))
    return table, bias, batches


def ref_slot(ref, i, kind):
    "The slot `kind` of variable `i` of adam_lit's optimizer `ref`, by its Keras name."
    return ref.variables[ref.variable_names.index(f"{ref.name}/{ref._names[i]}_{kind}")]


@pytest.mark.parametrize("kw", [{}, dict(amsgrad=True), dict(weight_decay=0.01), dict(learning_rate=0.01, b1=0.8, eps=1e-5)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_lazy_adam_matches_lazyadam(kw, dtype):
    """Rows given as a padded index array (repeats and padding), `update` called op by op: adam_lit's LazyAdam on NumPy
    with the same rows as an IndexedSlices (its values summed per row in order: the dense gradient built by np.add.at
    in the same order), bit for bit. The same steps under jax.jit: within a few ulps (XLA's fused multiply-adds)."""
    dt = np.dtype(dtype).type
    prev = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", dtype == "float64")
    try:
        table, bias, batches = lazy_case(dt, 20)
        keras_kw = {dict(b1="beta_1", b2="beta_2", eps="epsilon").get(a, a): v for a, v in kw.items()}
        ref = LazyAdam(**keras_kw)
        xs = [table.copy(), bias.copy()]
        ref.build(xs)
        tx = alo.lazy_adam(**kw)
        p = [jnp.asarray(table), jnp.asarray(bias)]
        st = tx.init(p)
        f = lambda p, st, g, r: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, st, p, rows=[r, None]))
        fj = jax.jit(f)
        pj, sj = p, st
        for n, (idx, vals, gb) in enumerate(batches):
            ref.apply([IndexedSlices(vals, idx, table.shape), gb], xs)
            dense = np.zeros_like(table)
            np.add.at(dense, idx, vals)
            rows = np.concatenate([idx, [len(table)] * 3, [-1]]).astype(np.int32)      # padding: ignored
            p, st = f(p, st, [jnp.asarray(dense), jnp.asarray(gb)], jnp.asarray(rows))
            pj, sj = fj(pj, sj, [jnp.asarray(dense), jnp.asarray(gb)], jnp.asarray(rows))
            for a, b in zip(pj, p): np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5 if dt is np.float32 else 1e-13)
            for i in range(2):
                assert same_bits(p[i], xs[i]), f"step {n}: parameter {i} differs from LazyAdam's"
                assert same_bits(st.mu[i], ref_slot(ref, i, "momentum")), f"step {n}: mu {i} differs"
                assert same_bits(st.nu[i], ref_slot(ref, i, "velocity")), f"step {n}: nu {i} differs"
                if kw.get("amsgrad"): assert same_bits(st.nu_max[i], ref_slot(ref, i, "velocity_hat")), f"step {n}: nu_max {i}"
    finally:
        jax.config.update("jax_enable_x64", prev)


def test_lazy_adam_mask_form(f32):
    """Rows as a boolean mask (`touched_rows(grad)`): LazyAdam with the rows of non-zero gradient only; a listed row with
    a zero gradient is the difference from the index form (it moves there, not here)."""
    table, bias, batches = lazy_case(np.float32, 15)
    ref = LazyAdam()
    xs = [table.copy()]
    ref.build(xs)
    tx = alo.lazy_adam()
    p, st = [jnp.asarray(table)], None
    st = tx.init(p)
    f = lambda p, st, g: (lambda u, s: (optax.apply_updates(p, u), s))(*tx.update(g, st, p, rows=[alo.touched_rows(g[0])]))
    for n, (idx, vals, _) in enumerate(batches):
        dense = np.zeros_like(table)
        np.add.at(dense, idx, vals)
        nz = np.flatnonzero(np.any(dense != 0, axis=1))
        ref.apply([IndexedSlices(dense[nz], nz, table.shape)], xs)
        p, st = f(p, st, [jnp.asarray(dense)])
        assert same_bits(p[0], xs[0]), f"step {n}"
    # the difference: a row listed with a zero gradient decays its moments in the index form, not in the mask form
    r = int(np.flatnonzero(np.any(np.asarray(st.mu[0]) != 0, axis=1))[0])      # a row with a moment to decay
    other = (r + 1) % len(table)
    g = jnp.zeros_like(p[0]).at[other].set(1.0)
    ui, si = tx.update([g], st, p, rows=[jnp.asarray([other, r])])
    um, sm = tx.update([g], st, p, rows=[alo.touched_rows(g)])
    assert not same_bits(si.mu[0][r], st.mu[0][r]) and same_bits(sm.mu[0][r], st.mu[0][r])
    assert not same_bits(ui[0][r], jnp.full_like(ui[0][r], -0.0)) and same_bits(um[0][r], jnp.full_like(um[0][r], -0.0))


@pytest.mark.parametrize("kw", [{}, dict(amsgrad=True, weight_decay=0.01)])
@pytest.mark.parametrize("form", ["indices", "mask"])
def test_lazy_adam_mu_dtype(f32, kw, form):
    """`lazy_adam(mu_dtype=...)`: the first moment kept in bfloat16; the touched rows computed in float32 from the stored
    (rounded) moment and rounded when stored: the float32 lazy_adam, whose first moment is rounded to bfloat16 before
    each step, bit for bit; untouched rows keep their stored moment."""
    table, _, batches = lazy_case(np.float32, 8)
    narrow, plain = alo.lazy_adam(0.05, mu_dtype="bfloat16", **kw), alo.lazy_adam(0.05, **kw)
    p = q = [jnp.asarray(table)]
    sn, sp = narrow.init(p), plain.init(q)
    assert sn.mu[0].dtype == np.dtype(jnp.bfloat16) and sn.nu[0].dtype == np.float32
    for n, (idx, vals, _) in enumerate(batches):
        dense = np.zeros_like(table)
        np.add.at(dense, idx, vals)
        g = [jnp.asarray(dense)]
        rows = [jnp.asarray(idx) if form == "indices" else alo.touched_rows(g[0])]
        sp = sp._replace(mu=[sp.mu[0].astype(jnp.bfloat16).astype(jnp.float32)])   # what the narrow state holds
        before = sn.mu[0]
        un, sn = narrow.update(g, sn, p, rows=rows)
        up, sp = plain.update(g, sp, q, rows=rows)
        assert same_bits(un[0], up[0]), f"step {n}: updates"
        assert same_bits(sn.mu[0], sp.mu[0].astype(jnp.bfloat16)) and same_bits(sn.nu[0], sp.nu[0]), f"step {n}: state"
        moved = np.zeros(len(table), bool); moved[idx] = True
        if form == "mask": moved &= np.any(dense != 0, axis=1)
        assert same_bits(np.asarray(sn.mu[0])[~moved], np.asarray(before)[~moved]), f"step {n}: untouched rows' mu"
        p, q = optax.apply_updates(p, un), optax.apply_updates(q, up)
    jn = jax.jit(lambda g, s, x, r: narrow.update(g, s, x, rows=r))(g, sn, p, rows)[1]   # jit: the same dtypes
    assert jax.tree.map(lambda a: a.dtype, jn) == jax.tree.map(lambda a: a.dtype, sn)


def test_lazy_adam_untouched_rows_exact_and_signed_zero():
    "Rows not listed: the update is -0.0, so `x + u` is `x` bit for bit, -0.0 included; their moments unchanged."
    tx = alo.lazy_adam()
    table = jnp.asarray(np.array([[-0.0, 1.0], [2.0, -0.0], [3.0, 4.0]], np.float32))
    st = tx.init([table])
    st = st._replace(mu=[st.mu[0] + 0.5], nu=[st.nu[0] + 0.25])
    u, st2 = jax.jit(lambda g, s, p: tx.update(g, s, p, rows=[jnp.asarray([2])]))([jnp.ones((3, 2), jnp.float32)], st, [table])
    new = optax.apply_updates([table], u)[0]
    assert same_bits(new[:2], table[:2]) and same_bits(st2.mu[0][:2], st.mu[0][:2]) and not same_bits(new[2], table[2])


def test_lazy_adam_in_chain_with_extra_args():
    "Inside optax.chain, `rows` reaches lazy_adam (an extra argument), and other transformations ignore it."
    tx = optax.chain(optax.clip_by_global_norm(10.0), alo.lazy_adam(0.1))
    p = [jnp.ones((4, 2), jnp.float32)]
    st = tx.init(p)
    g = [jnp.ones((4, 2), jnp.float32)]
    u, _ = jax.jit(lambda g, s, p, r: tx.update(g, s, p, rows=r))(g, st, p, [jnp.asarray([1, 4])])
    moved = np.any(np.asarray(u[0]) != 0, axis=1)
    assert moved.tolist() == [False, True, False, False]


# ------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("call, exc, message", [
    (lambda: alo.adam(numerics="torch"), ValueError, "Argument `numerics` must be one of 'keras', 'optax'"),
    (lambda: alo.adam(b1=1.0), ValueError, r"Argument `b1` must be finite and in \[0, 1\)"),
    (lambda: alo.adam(b2=-0.1), ValueError, r"Argument `b2` must be finite and in \[0, 1\)"),
    (lambda: alo.adam(learning_rate="0.1"), TypeError, "Argument `learning_rate` must be a float"),
    (lambda: alo.adam(learning_rate=-1.0), ValueError, "Argument `learning_rate` must be finite and >= 0"),
    (lambda: alo.adam(eps=float("nan")), ValueError, "Argument `eps` must be finite"),
    (lambda: alo.adam(amsgrad="yes"), TypeError, "Argument `amsgrad` must be a bool"),
    (lambda: alo.adam(mask=[True]), ValueError, "Argument `mask` selects the parameters that decay, but `weight_decay` is None"),
    (lambda: alo.adamw(weight_decay=-0.1), ValueError, "Argument `weight_decay` must be finite and >= 0"),
    (lambda: alo.adamw(amsgrad=True, numerics="optax"), ValueError, "numerics='optax' has no AMSGrad with weight decay"),
    (lambda: alo.adam(b1=jnp.ones(2)), ValueError, r"Argument `b1` must be a scalar, got an array of shape \(2,\)"),
])
def test_bad_hyperparameters(call, exc, message):
    with pytest.raises(exc, match=message): call()


def test_bad_update_arguments():
    p = {"w": jnp.ones((3, 2), jnp.float32), "b": jnp.zeros(2, jnp.float32)}
    g = jax.tree.map(jnp.ones_like, p)
    tx = alo.adamw()
    st = tx.init(p)
    with pytest.raises(ValueError, match=r"weight decay needs the parameters: call `update\(updates, state, params\)`"):
        tx.update(g, st)
    with pytest.raises(ValueError, match="Argument `params` must have the structure of the updates"):
        tx.update(g, st, {"w": p["w"]})
    with pytest.raises(ValueError, match=r"update 1 \(\['w'\]\) has shape \(3, 2\) and dtype float32, but its params has shape \(2, 3\)"):
        tx.update(g, st, {"w": jnp.ones((2, 3), jnp.float32), "b": p["b"]})
    with pytest.raises(TypeError, match=r"update 1 \(\['w'\]\) must be a floating-point array, got ArrayImpl int32"):
        tx.update({"w": jnp.ones((3, 2), jnp.int32), "b": g["b"]}, st, p)
    with pytest.raises(TypeError, match="Argument `state` must be the AdamState"):
        tx.update(g, optax.adam(0.1).init(p), p)
    lz = alo.lazy_adam()
    sl = lz.init(p)
    with pytest.raises(ValueError, match=r"rows of update 1 \(\['w'\]\) \(shape \(3, 2\)\) must be a 1-d integer array of row indices or a boolean mask"):
        lz.update(g, sl, p, rows={"w": jnp.ones((2, 2), jnp.int32), "b": None})
    with pytest.raises(ValueError, match=r"rows of update 1 \(\['w'\]\) \(shape \(3, 2\)\) must be"):
        lz.update(g, sl, p, rows={"w": jnp.ones(5, bool), "b": None})
    with pytest.raises(ValueError, match=r"Argument `rows` has nothing for update 0 \(\['b'\]\): it must have the structure of the updates"):
        lz.update(g, sl, p, rows={"w": jnp.asarray([0])})


def test_traced_betas_refused_where_a_number_is_needed():
    "lazy_adam needs b1, b2, eps as numbers: traced (inject_hyperparams under jit) they are refused, saying what to do."
    p = [jnp.ones(3, jnp.float32)]
    for tx in (optax.inject_hyperparams(alo.lazy_adam)(learning_rate=0.1),):
        st = tx.init(p)
        with pytest.raises(NotImplementedError, match=r"pass static_args=\('b1', 'b2', 'eps'\) to inject_hyperparams"):
            jax.jit(tx.update)(p, st, p)
    tx = optax.inject_hyperparams(alo.lazy_adam, static_args=("b1", "b2", "eps"))(learning_rate=0.1)
    st = tx.init(p)
    u, _ = jax.jit(tx.update)(p, st, p)
    assert np.all(np.isfinite(np.asarray(u[0])))


# ------------------------------------------------------------------- Optax's conventions: complex, mu_dtype, extra args
def run_real_and_complex(make, steps, jit, seed=0):
    "The same real gradients on a real parameter and on its complex twin (imaginary parts 0); both final parameters."
    rng = np.random.default_rng(seed)
    xr = jnp.asarray(rng.standard_normal(200).astype(np.float32))
    xc = xr.astype(jnp.complex64)
    tx = make()
    sr, sc = tx.init(xr), tx.init(xc)
    f = jax.jit(tx.update) if jit else tx.update
    for _ in range(steps):
        g = jnp.asarray(rng.standard_normal(200).astype(np.float32) * 10 ** rng.uniform(-3, 2))
        ur, sr = f(g, sr, xr)
        uc, sc = f(g.astype(jnp.complex64), sc, xc)
        xr, xc = optax.apply_updates(xr, ur), optax.apply_updates(xc, uc)
    return xr, xc, sc


COMPLEX_MAKERS = [lambda: alo.adam(0.01), lambda: alo.adamw(0.01, weight_decay=0.1), lambda: alo.amsgrad(0.01),
                  lambda: alo.amsgrad(0.01, weight_decay=0.05)]


@pytest.mark.parametrize("k", range(len(COMPLEX_MAKERS)))
def test_complex_with_zero_imaginary_part_moves_as_the_real_parameter(k):
    "Eagerly bit for bit; under jax.jit XLA fuses the complex graph differently: within a few ulps after 20 steps."
    xr, xc, sc = run_real_and_complex(COMPLEX_MAKERS[k], 20, jit=False)
    assert same_bits(xr, xc.real) and not np.any(np.asarray(xc.imag))
    assert sc.mu.dtype == jnp.complex64 and sc.nu.dtype == jnp.complex64 and not np.any(np.asarray(sc.nu.imag))
    xr, xc, _ = run_real_and_complex(COMPLEX_MAKERS[k], 20, jit=True)
    np.testing.assert_allclose(np.asarray(xc.real), np.asarray(xr), rtol=1e-6, atol=0)   # (an ulp of float32 is 6e-8)
    assert not np.any(np.asarray(xc.imag))


def test_complex_against_the_formula_in_float64():
    """Complex64 parameters and gradients: Keras's Adam with v the moment of |g|^2, derived in NumPy complex128 (the same
    operations, without roundings to float32): within float32's precision after 10 steps."""
    rng = np.random.default_rng(5)
    n, lr, b1, b2, eps, wd = 64, 0.01, 0.9, 0.999, 1e-7, 0.02
    x0 = (rng.standard_normal(n) + 1j * rng.standard_normal(n)).astype(np.complex64)
    gs = [((rng.standard_normal(n) + 1j * rng.standard_normal(n)) * 10 ** rng.uniform(-2, 1)).astype(np.complex64)
          for _ in range(10)]
    tx = alo.adamw(lr, b1, b2, eps, weight_decay=wd)
    x, st = jnp.asarray(x0), tx.init(jnp.asarray(x0))
    xr, m, v = x0.astype(np.complex128), np.zeros(n, np.complex128), np.zeros(n)
    for t, g in enumerate(gs, 1):
        u, st = tx.update(jnp.asarray(g), st, x)
        x = optax.apply_updates(x, u)
        g = g.astype(np.complex128)
        m = m + (g - m) * (1 - b1)
        v = v + (np.abs(g) ** 2 - v) * (1 - b2)
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        xr = (xr - (xr * wd) * lr) - (m * alpha) / (np.sqrt(v) + eps)
    np.testing.assert_allclose(np.asarray(x), xr, rtol=2e-5, atol=2e-6)   # float32 roundings over 10 steps


def test_lazy_adam_refuses_complex_tables():
    p = [jnp.ones((4, 2), jnp.complex64)]
    tx = alo.lazy_adam()
    with pytest.raises(TypeError, match=r"update 0 \(\[0\]\) must be a real floating-point array \(lazy rows\), got ArrayImpl complex64"):
        tx.update(p, tx.init(p), p, rows=[jnp.asarray([1])])


@pytest.mark.parametrize("numerics", ["keras", "optax"])
def test_mu_dtype(numerics):
    """Optax's `mu_dtype`: the first moment kept in that dtype (computed in the gradient's, rounded when stored). None or
    the parameters' own dtype: the same bits as without it."""
    x = jnp.asarray(np.linspace(-1, 1, 7), jnp.float32)
    g = jnp.asarray(np.linspace(0.3, -2, 7), jnp.float32)
    plain, wide, narrow = (alo.adam(0.1, numerics=numerics, mu_dtype=d) for d in (None, jnp.float32, "bfloat16"))
    u0, s0 = plain.update(g, plain.init(x), x)
    u1, s1 = wide.update(g, wide.init(x), x)
    assert same_bits(u0, u1) and same_bits(jax.tree.leaves(s0)[1], jax.tree.leaves(s1)[1])
    sn = narrow.init(x)
    assert np.dtype(jnp.bfloat16) in {a.dtype for a in jax.tree.leaves(sn)}
    un, sn = jax.jit(narrow.update)(g, sn, x)
    assert same_bits(un, u0)                        # the first step uses m before it is rounded for storage
    if numerics == "keras":
        assert sn.mu.dtype == np.dtype(jnp.bfloat16) and same_bits(sn.mu, s0.mu.astype(jnp.bfloat16))
        un2, _ = jax.jit(narrow.update)(g, sn, x)   # the next step reads the rounded m
        np.testing.assert_allclose(np.asarray(un2), np.asarray(plain.update(g, s0, x)[0]), rtol=1e-2)
    with pytest.raises(ValueError, match="Argument `mu_dtype` must be None or a floating-point dtype, got 'int32'"):
        alo.adam(mu_dtype="int32")



def test_mu_dtype_wider_than_the_parameters():
    """A wider `mu_dtype` (float32 first moment of bfloat16 parameters) keeps the moment's accumulation in it: the stored
    moment is Keras's recurrence `m + (g - m) * (1 - beta_1)` in float32 (1 - beta_1 rounded from double, as Keras), bit
    for bit, not a bfloat16 moment widened; the step reads it rounded to bfloat16, so it stays within bfloat16's
    rounding of the step without `mu_dtype` (whose moment is bfloat16 throughout). `lazy_adam` refuses it for a table's
    rows (its row rule keeps the table's dtype)."""
    bf = jnp.bfloat16
    x = jnp.asarray(np.linspace(-1, 1, 5), bf)
    tx, plain = alo.adam(0.01, b2=0.99, mu_dtype=jnp.float32), alo.adam(0.01, b2=0.99)
    s, sp = tx.init(x), plain.init(x)
    assert sp.mu.dtype == bf
    m32, rng = np.zeros(5, np.float32), np.random.default_rng(0)
    for t in range(6):
        g = jnp.asarray(rng.normal(size=5) * 1e-2 + 0.3, bf)
        (u, s), (up, sp) = tx.update(g, s, x), plain.update(g, sp, x)
        m32 = m32 + (np.asarray(g, np.float32) - m32) * np.float32(1 - 0.9)
        assert s.mu.dtype == np.float32 and same_bits(s.mu, m32), f"step {t}"
        assert u.dtype == bf
        # (the two moments differ by bfloat16's rounding, 2**-8 relative, and so do the steps)
        np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(up, np.float32), rtol=2 ** -6)
    lazy = alo.lazy_adam(b2=0.99, mu_dtype=jnp.float32)
    with pytest.raises(ValueError, match="has rows and dtype bfloat16, narrower than mu_dtype float32"):
        lazy.update([g[None]], lazy.init([x[None]]), [x[None]], rows=[jnp.asarray([0])])

def test_update_accepts_extra_arguments():
    "As Optax's optimizers do (GradientTransformationExtraArgs): extra keyword arguments of a chain are ignored."
    p = {"w": jnp.ones((2, 3), jnp.float32)}
    for tx in (alo.adam(), alo.adamw(), alo.amsgrad()):
        assert isinstance(tx, optax.GradientTransformationExtraArgs)
        st = tx.init(p)
        u1, _ = tx.update(p, st, p, unexpected_extra_args_your_optimizer_doesnt_expect=1)
        u0, _ = tx.update(p, st, p)
        assert same_bits(u1["w"], u0["w"])
        chained = optax.chain(optax.clip(1.0), tx)
        chained.update(p, chained.init(p), p, value=jnp.asarray(0.0))


def test_hyperparameters_lost_in_the_dtype_are_refused():
    "As adam_lit's Adam: a b2 that rounds to 1 in bfloat16 would make every step 0; refused, saying what to use."
    p = jnp.array([1.0, 2.0], jnp.bfloat16)
    tx = alo.adam(0.1)
    with pytest.raises(ValueError, match=r"Argument `b2`=0.999 rounds to 1 in bfloat16, the dtype of update 0: .* b2 <= 0.99609375"):
        jax.jit(tx.update)(p, tx.init(p), p)
    with pytest.raises(ValueError, match=r"Argument `eps`=1e-30 rounds to 0 in float16"):
        q = jnp.ones(2, jnp.float16)
        alo.adam(eps=1e-30).update(q, alo.adam().init(q), q)
    ok = alo.adam(0.1, b2=0.99)
    u, _ = jax.jit(ok.update)(p, ok.init(p), p)
    assert u.dtype == jnp.bfloat16 and np.all(np.asarray(u, np.float32) < 0)


def test_eps_root_and_nesterov():
    "Optax's `eps_root` (under the square root; 0 keeps Keras's bits) and `nesterov` (numerics 'optax' only)."
    x = jnp.asarray(np.linspace(-1, 1, 9), jnp.float32)
    gs = [jnp.asarray(np.linspace(0.3, -2, 9) * (k + 1), jnp.float32) for k in range(3)]
    def run(tx):
        st, p = tx.init(x), x
        for g in gs:
            u, st = tx.update(g, st, p)
            p = optax.apply_updates(p, u)
        return p
    assert same_bits(run(alo.adam(0.1, eps_root=0.0)), run(alo.adam(0.1)))
    # eps_root 1e-4, against the rule written out in float32 (Keras's operations, sqrt(v + eps_root))
    f = np.float32
    xr, m, v = np.asarray(x), np.zeros(9, f), np.zeros(9, f)
    for t, g in enumerate(gs, 1):
        g = np.asarray(g)
        m = m + (g - m) * f(1 - 0.9); v = v + (g * g - v) * f(1 - 0.999)
        alpha = f(0.1) * np.sqrt(f(1) - f(0.999) ** f(t)) / (f(1) - f(0.9) ** f(t))
        xr = xr - (m * alpha) / (np.sqrt(v + f(1e-4)) + f(1e-7))
    np.testing.assert_allclose(np.asarray(run(alo.adam(0.1, eps_root=1e-4))), xr, rtol=2e-6, atol=0)  # pow: an ulp of alpha
    for kw in (dict(eps_root=1e-6), dict(nesterov=True)):
        assert same_bits(run(alo.adam(0.1, numerics="optax", **kw)), run(optax.adam(0.1, **kw)))
    with pytest.raises(ValueError, match="Argument `nesterov=True`: Keras's Adam has no Nesterov momentum"):
        alo.adam(nesterov=True)
    with pytest.raises(ValueError, match=r"Argument `eps_root` must be finite and >= 0"):
        alo.adam(eps_root=-1.0)


def test_inject_hyperparams_in_a_narrow_dtype_says_what_to_do():
    "inject_hyperparams holds b2=0.999 in bfloat16 (1.0): refused, naming the cause and the fix, which then works."
    p = jnp.array([1.0, 2.0], jnp.bfloat16)
    with pytest.raises(ValueError, match=r"got 1.0 \(a bfloat16 array: .* pass hyperparam_dtype=jnp.float32 to inject_hyperparams\)"):
        optax.inject_hyperparams(alo.adam)(learning_rate=0.1).init(p)
    tx = optax.inject_hyperparams(alo.adam, hyperparam_dtype=jnp.float32)(learning_rate=0.1, b2=0.99)
    u, _ = jax.jit(tx.update)(p, tx.init(p), p)
    assert u.dtype == jnp.bfloat16 and np.all(np.asarray(u, np.float32) < 0)


# ------------------------------------------------------------------------------------------- prefixes, as Optax's
def _table_and_mlp():
    p = {"embed": {"table": jnp.linspace(-1, 1, 12, dtype=jnp.float32).reshape(6, 2)},
         "mlp": {"w": jnp.full((2, 2), 0.5, jnp.float32), "b": jnp.full(2, -0.25, jnp.float32)}}
    g = jax.tree.map(lambda a: jnp.cos(a * 3.0) + 0.1, p)
    return p, g


@pytest.mark.parametrize("labels", ["prefix", "per leaf"])
@pytest.mark.parametrize("form", ["params tree", "prefix", "masked nodes"])
def test_lazy_rows_under_multi_transform_in_every_form(f32, labels, form):
    """`multi_transform` with labels as a prefix of the params or one per leaf; `rows` as the params' tree (None on the
    other leaves), as a prefix (None for the other subtree), or with MaskedNodes: the bits of each transformation alone."""
    p, g = _table_and_mlp()
    lab = {"embed": "lazy", "mlp": "adam"} if labels == "prefix" else {"embed": {"table": "lazy"}, "mlp": {"w": "adam", "b": "adam"}}
    ids = jnp.array([1, 4, 4])
    rows = {"params tree": {"embed": {"table": ids}, "mlp": {"w": None, "b": None}},
            "prefix": {"embed": {"table": ids}, "mlp": None},
            "masked nodes": {"embed": {"table": ids}, "mlp": optax.MaskedNode()}}[form]
    tx = optax.multi_transform({"lazy": alo.lazy_adam(0.1), "adam": alo.adam(0.1)}, lab)
    u, _ = jax.jit(tx.update)(g, tx.init(p), p, rows=rows)
    lz, ad = alo.lazy_adam(0.1), alo.adam(0.1)
    ul, _ = lz.update(g["embed"], lz.init(p["embed"]), p["embed"], rows={"table": ids})
    ua, _ = ad.update(g["mlp"], ad.init(p["mlp"]), p["mlp"])
    assert same_bits(u["embed"]["table"], ul["table"]) and same_bits(u["mlp"]["w"], ua["w"]) and same_bits(u["mlp"]["b"], ua["b"])
    assert np.count_nonzero(np.asarray(u["embed"]["table"])[:, 0]) == 2          # rows 1 and 4 only


def test_lazy_rows_prefix_none_is_dense_and_masked_prefix(f32):
    "`rows` None for a subtree of lazy_adam's own leaves steps them densely; `optax.masked` with a prefix mask."
    p, g = _table_and_mlp()
    tx = alo.lazy_adam(0.1)
    u, _ = tx.update(g, tx.init(p), p, rows={"embed": {"table": jnp.array([0])}, "mlp": None})
    ud, _ = tx.update(g, tx.init(p), p, rows={"embed": {"table": jnp.array([0])}, "mlp": {"w": None, "b": None}})
    assert all(same_bits(a, b) for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(ud)))
    m = optax.masked(alo.lazy_adam(0.1), {"embed": True, "mlp": False})
    um, _ = m.update(g, m.init(p), p, rows={"embed": {"table": jnp.array([0])}, "mlp": None})
    assert same_bits(um["embed"]["table"], u["embed"]["table"]) and same_bits(um["mlp"]["w"], g["mlp"]["w"])


def test_bad_rows_trees_are_named(f32):
    p, g = _table_and_mlp()
    tx = alo.lazy_adam(0.1); st = tx.init(p)
    with pytest.raises(ValueError, match=r"`rows` has an array at \['mlp'\], which holds a subtree"):
        tx.update(g, st, p, rows={"embed": {"table": jnp.array([0])}, "mlp": jnp.array([0])})
    with pytest.raises(ValueError, match=r"`rows` has an entry at \['extra'\] where the updates have none"):
        tx.update(g, st, p, rows={"embed": {"table": None}, "mlp": None, "extra": None})
    with pytest.raises(ValueError, match=r"`rows` has nothing for update 0 \(\['embed'\]\['table'\]\)"):
        tx.update(g, st, p, rows={"mlp": None})


def test_adamw_prefix_mask_is_optax_mask(f32):
    "A prefix mask decays whole subtrees, as Optax's; the same bits as the full mask, and as optax.adamw's choice."
    p = {"dense": {"kernel": jnp.full((3, 2), 2.0, jnp.float32), "bias": jnp.full(2, 2.0, jnp.float32)},
         "ln": {"scale": jnp.full(2, 2.0, jnp.float32)}}
    g = jax.tree.map(jnp.zeros_like, p)
    full = {"dense": {"kernel": True, "bias": True}, "ln": {"scale": False}}
    a, b = alo.adamw(0.1, weight_decay=0.5, mask={"dense": True, "ln": False}), alo.adamw(0.1, weight_decay=0.5, mask=full)
    ua, _ = a.update(g, a.init(p), p)
    ub, _ = b.update(g, b.init(p), p)
    assert all(same_bits(x, y) for x, y in zip(jax.tree.leaves(ua), jax.tree.leaves(ub)))
    o = optax.adamw(0.1, weight_decay=0.5, mask={"dense": True, "ln": False})
    uo, _ = o.update(g, o.init(p), p)
    assert jax.tree.map(lambda x: bool(jnp.any(x != 0)), ua) == jax.tree.map(lambda x: bool(jnp.any(x != 0)), uo)


def test_a_mask_of_one_value_is_refused_with_the_inject_hyperparams_hint(f32):
    p = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    g = jax.tree.map(jnp.zeros_like, p)
    m = lambda params: jax.tree.map(lambda x: x.ndim > 1, params)
    t = optax.inject_hyperparams(alo.adamw)(learning_rate=0.1, weight_decay=0.5, mask=m)
    with pytest.raises(ValueError, match=r"`mask` is one value \(False\).*static_args=\('mask',\)"):
        t.update(g, t.init(p), p)
    t = optax.inject_hyperparams(alo.adamw, static_args=("mask",))(learning_rate=0.1, weight_decay=0.5, mask=m)
    u, _ = t.update(g, t.init(p), p)
    assert float(jnp.abs(u["w"]).min()) > 0 and float(jnp.abs(u["b"]).max()) == 0
    one = alo.adamw(0.1, weight_decay=0.5, mask=True)                 # one parameter: one value is its whole mask
    assert float(jnp.abs(one.update(jnp.zeros(2), one.init(jnp.ones(2)), jnp.ones(2))[0]).min()) > 0


def test_updates_of_another_tree_blame_the_updates(f32):
    tx = alo.adam(0.1); pp = {"w": jnp.ones(2), "b": jnp.ones(2)}
    with pytest.raises(ValueError, match=r"The updates and `state.mu` have different structures.*must have the structure of those params"):
        tx.update({"w": jnp.ones(2)}, tx.init(pp), pp)


def test_positional_arguments_are_optax_order():
    "adam, adamw, amsgrad take positional arguments in optax.adam's, optax.adamw's, optax.amsgrad's order (a drop-in)."
    import inspect
    positional = lambda f: [n for n, q in inspect.signature(f).parameters.items() if q.kind is q.POSITIONAL_OR_KEYWORD]
    for mine, theirs in ((alo.adam, optax.adam), (alo.adamw, optax.adamw), (alo.amsgrad, optax.amsgrad)):
        assert positional(mine) == positional(theirs)[:len(positional(mine))] and len(positional(mine)) >= 6, mine.__name__
    p = [jnp.full(3, 2.0, jnp.float32)]
    a, b = alo.adamw(0.1, 0.9, 0.999, 1e-7, 0.0), alo.adamw(0.1)          # the 5th is eps_root, as in optax.adamw
    assert same_bits(a.update([jnp.zeros(3)], a.init(p), p)[0][0], b.update([jnp.zeros(3)], b.init(p), p)[0][0])


def test_gradients_of_another_float_dtype_are_cast_to_the_parameters(f32):
    "Mixed precision: float16 (or bfloat16) gradients of float32 parameters are cast to float32 first, as Keras casts them."
    p = {"w": jnp.linspace(-1, 1, 6, dtype=jnp.float32)}
    for dt in (jnp.float16, jnp.bfloat16):
        g = {"w": jnp.linspace(0.5, -0.25, 6).astype(dt)}
        for tx in (alo.adam(0.01), alo.adamw(0.01), alo.amsgrad(0.01)):
            u, s = jax.jit(tx.update)(g, tx.init(p), p)
            v, t = jax.jit(tx.update)({"w": g["w"].astype(jnp.float32)}, tx.init(p), p)
            assert u["w"].dtype == jnp.float32 and same_bits(u["w"], v["w"]) and same_bits(s.nu["w"], t.nu["w"])


@pytest.mark.parametrize("make, lazy", [(lambda wd: alo.adamw(0.05, weight_decay=wd), False),
                                        (lambda wd: alo.adam(0.05, weight_decay=wd), False),
                                        (lambda wd: alo.lazy_adam(0.05, weight_decay=wd), True)])
def test_weight_decay_schedule_is_called_with_the_count(f32, make, lazy):
    """A weight-decay schedule (Optax's convention, as `optax.adamw` accepts one): step k decays by schedule(k), the
    bits of a constant decay of that value at that step (the state does not depend on the decay's form)."""
    sched = lambda count: 0.05 * (count + 1.0)
    p = [jnp.linspace(-2, 2, 8, dtype=jnp.float32).reshape(4, 2)]
    tx = make(sched)
    s = r = tx.init(p)
    q = p
    for k in range(4):
        g = [jnp.cos(p[0] * (k + 1))]
        kw = {"rows": [jnp.array([0, 2])]} if lazy else {}
        u, s = jax.jit(tx.update)(g, s, p, **kw)
        ref = make(float(np.float32(sched(k))))
        v, r = jax.jit(ref.update)(g, r, q, **kw)
        assert same_bits(u[0], v[0]), k
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)
    # numerics="optax": the bits of optax.adamw given the same schedule (it calls it with the count, as we do)
    mine, theirs = alo.adamw(0.05, weight_decay=sched, numerics="optax"), optax.adamw(0.05, weight_decay=sched)
    p = q = [jnp.linspace(-2, 2, 8, dtype=jnp.float32).reshape(4, 2)]
    s, r = mine.init(p), theirs.init(q)
    for k in range(4):
        g = [jnp.cos(p[0] * (k + 1))]
        (u, s), (v, r) = jax.jit(mine.update)(g, s, p), jax.jit(theirs.update)(g, r, q)
        assert same_bits(u[0], v[0]), k
        p, q = optax.apply_updates(p, u), optax.apply_updates(q, v)


@pytest.mark.parametrize("make", [lambda: alo.adam(0.01), lambda: alo.amsgrad(0.01), lambda: alo.adamw(0.01),
                                  lambda: alo.lazy_adam(0.01)])
def test_count_at_its_largest_value_stays_there(f32, make):
    """The int32 count (JAX without x64) at its largest value: the step is that of the count before it and the count
    stays, as Optax's `safe_increment` keeps it (it wrapped to -2**31 before, and beta**t made every update NaN)."""
    if jax.config.jax_enable_x64: pytest.skip("the count is int64 in JAX's 64-bit mode")
    tx, p = make(), {"w": jnp.linspace(-1, 1, 4, dtype=jnp.float32)}
    s = tx.init(p)
    s = s._replace(mu=jax.tree.map(lambda a: a + 0.05, s.mu), nu=jax.tree.map(lambda a: a + 0.01, s.nu))
    g = {"w": jnp.asarray([0.1, -0.2, 0.3, 0.0], jnp.float32)}
    (u1, s1), (u0, s0) = (jax.jit(tx.update)(g, s._replace(count=jnp.asarray(c, jnp.int32)), p) for c in (2**31 - 1, 2**31 - 2))
    assert np.isfinite(np.asarray(u1["w"])).all()
    assert int(s1.count) == int(s0.count) == 2**31 - 1 and same_bits(u1["w"], u0["w"])


def test_lazy_adam_without_rows_warns(f32):
    "lazy_adam's update with no `rows` (a typo such as `row=` lands in the chain's extra arguments): a warning naming what it got."
    tx, p = alo.lazy_adam(0.1), [jnp.ones((3, 2))]
    with pytest.warns(UserWarning, match=r"no `rows`: every leaf is stepped densely.*\(it got 'row'\)"):
        tx.update([jnp.ones((3, 2))], tx.init(p), p, row=[jnp.array([0])])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tx.update([jnp.ones((3, 2))], tx.init(p), p, rows=[jnp.array([0])])


@pytest.mark.parametrize("make", [lambda: alo.adam(0.1), lambda: alo.adamw(0.1), lambda: alo.amsgrad(0.1)],
                         ids=["adam", "adamw", "amsgrad"])
@pytest.mark.parametrize("case", ["python floats", "python float params", "numpy float64"])
def test_eager_update_takes_the_leaves_jit_takes(f32, make, case):
    """Leaves given as Python floats or NumPy arrays (float64, with JAX's 64-bit mode off): an eager `update` gives
    what the jitted one gives (JAX arrays, float32), as optax.adam's does. Before, eagerly: a type error, an
    AttributeError ('float' has no 'shape'), or a dtype mismatch (float32 updates, float64 params)."""
    p, g = {"python floats": ({"a": 1.0, "b": -2.0}, {"a": 0.5, "b": 0.25}),
            "python float params": ({"a": 1.0, "b": -2.0}, {"a": jnp.asarray(0.5), "b": jnp.asarray(0.25)}),
            "numpy float64": ({"a": np.array([1.0, 2.0]), "b": np.array(3.0)}, {"a": np.array([0.1, -0.1]), "b": np.array(0.2)})}[case]
    tx = make()
    eager, state = tx.update(g, tx.init(p), p)
    jitted, jstate = jax.jit(tx.update)(g, tx.init(p), p)
    for a, b in zip(jax.tree.leaves((eager, state)), jax.tree.leaves((jitted, jstate))):
        assert a.dtype == b.dtype and same_bits(a, b)
    assert all(u.dtype == jnp.float32 for u in jax.tree.leaves(eager))
    with pytest.raises(ArgumentTypeError, match="floating-point array, got"):
        tx.update({"a": 1, "b": 2}, tx.init({"a": 1, "b": 2}), {"a": 1, "b": 2})    # int leaves: refused, by name


def test_amsgrad_takes_optax_bias_correction_switches(f32):
    "optax.amsgrad's `bias_correction_mu/nu` (by position too): False gives optax's bits with numerics='optax', refused with Keras's."
    p = {"w": jnp.linspace(-1.0, 1.0, 7)}
    for kw in (dict(bias_correction_mu=False), dict(bias_correction_nu=False), dict(bias_correction_mu=False, bias_correction_nu=False)):
        mine, ref = alo.amsgrad(0.1, numerics="optax", **kw), optax.amsgrad(0.1, **kw)
        s1, s2, x1, x2 = mine.init(p), ref.init(p), p, p
        for t in range(4):
            g = jax.tree.map(lambda z: jnp.sin(z * (t + 1)), x1)
            u1, s1 = jax.jit(mine.update)(g, s1, x1); u2, s2 = jax.jit(ref.update)(g, s2, x2)
            x1, x2 = optax.apply_updates(x1, u1), optax.apply_updates(x2, u2)
            assert same_bits(x1["w"], x2["w"])
        with pytest.raises(ValueError, match=f"Argument `{next(iter(kw))}=False`: Keras's AMSGrad corrects the bias"):
            alo.amsgrad(0.1, **kw)
    positional = alo.amsgrad(0.1, 0.9, 0.999, 1e-8, 0.0, None, False, True, numerics="optax")
    u, _ = positional.update(p, positional.init(p), p)
    v, _ = optax.amsgrad(0.1, 0.9, 0.999, 1e-8, 0.0, None, False, True).update(p, optax.amsgrad(0.1).init(p), p)
    assert same_bits(u["w"], v["w"])
    with pytest.raises(ArgumentTypeError, match="`bias_correction_nu` must be a bool"):
        alo.amsgrad(0.1, bias_correction_nu="no")
    assert same_bits(alo.amsgrad(0.1, bias_correction_mu=True).update(p, alo.amsgrad(0.1).init(p), p)[0]["w"],
                     alo.amsgrad(0.1).update(p, alo.amsgrad(0.1).init(p), p)[0]["w"])
