"""The steps adam_lit.schedules accepts, and their values against the real Keras 3 schedules (JAX backend).

Keras's own tests call its schedules with float steps (`ExponentialDecay(...)(1.0)`) and negative steps
(`PiecewiseConstantDecay(...)(-999)`), and Keras computes a value for each: it casts the step to the schedule's dtype
and applies its formula as written. adam_lit does the same. This file checks

* which steps are accepted (ints, floats, NumPy scalars, 0-d arrays of NumPy, PyTorch and JAX, of any sign) and which
  are refused (bools, arrays with more than one element, non-finite numbers, non-numbers), with the argument named;
* that an integral float step, and a 0-d array, give exactly the value of the integer step;
* that for steps -999, -1, 0, 1.0, 2.5 (and a few more) every schedule gives Keras's value bit for bit: in float32
  against Keras as it is (one operation at a time for the schedules with `ops.cond`, as in
  tests/test_schedules_keras.py), in float64 against Keras with 64-bit floats whose `cos`/`floor`/`ceil` keep float64.
  `nan` is compared as `nan`.

The Keras checks skip, with the reason, when Keras or JAX is missing (and fail when ADAM_LIT_REQUIRE_ORACLES=1).
"""
import contextlib
import importlib.util
import math
import os

import numpy as np
import pytest

import adam_lit.schedules as ours
from adam_lit.backend import ArgumentTypeError

os.environ.setdefault("KERAS_BACKEND", "jax")


def _need(module):
    if importlib.util.find_spec(module) is None:
        if os.environ.get("ADAM_LIT_REQUIRE_ORACLES") == "1":
            pytest.fail(f"{module} is required (ADAM_LIT_REQUIRE_ORACLES=1) but not installed")
        pytest.skip(f"{module} is not installed")
    return __import__(module)


CASES = [   # (class name, arguments, uses ops.cond in Keras)
    ("ExponentialDecay", dict(initial_learning_rate=0.1, decay_steps=100, decay_rate=0.96)),
    ("ExponentialDecay", dict(initial_learning_rate=0.01, decay_steps=37, decay_rate=0.5, staircase=True)),
    ("ExponentialDecay", dict(initial_learning_rate=0.3, decay_steps=7, decay_rate=1.01)),
    ("PiecewiseConstantDecay", dict(boundaries=[10, 20, 2500], values=[1e-3, 3e-4, 1e-4, 7e-5])),
    ("PiecewiseConstantDecay", dict(boundaries=[-5, 0], values=[0.5, 0.25, 0.125])),
    ("PiecewiseConstantDecay", dict(boundaries=[-0.5, 10.5, 2**24], values=[0.5, 0.25, 0.125, 0.0625])),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=1000)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=1000, end_learning_rate=0.001, power=0.5)),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=300, power=2.0, cycle=True)),
    ("PolynomialDecay", dict(initial_learning_rate=0.05, decay_steps=777, end_learning_rate=0.002, power=1.7,
                             cycle=True)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.1, decay_steps=100, decay_rate=0.5)),
    ("InverseTimeDecay", dict(initial_learning_rate=0.01, decay_steps=33, decay_rate=0.7, staircase=True)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=1000, alpha=0.01)),
    ("CosineDecay", dict(initial_learning_rate=1e-3, decay_steps=2500)),
    ("CosineDecay", dict(initial_learning_rate=0.0, decay_steps=1000, alpha=0.01, warmup_target=0.1,
                         warmup_steps=100)),
    ("CosineDecay", dict(initial_learning_rate=1e-4, decay_steps=2000, warmup_target=1e-3, warmup_steps=333)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=100, t_mul=2.0, m_mul=0.9, alpha=0.01)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.1, first_decay_steps=100, t_mul=1.0, m_mul=0.9, alpha=0.01)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.01, first_decay_steps=70, t_mul=1.5, m_mul=0.8)),
    ("CosineDecayRestarts", dict(initial_learning_rate=0.01, first_decay_steps=50, t_mul=3.0, alpha=0.1)),
]
IDS = [f"{n}({', '.join(f'{k}={v}' for k, v in kw.items())})" for n, kw in CASES]

def uses_cond(name, kw): return name == "CosineDecayRestarts" or (name == "CosineDecay" and kw.get("warmup_target") is not None)

# the issue's steps, then a few more: negative and positive non-integers, around a boundary, far beyond the decay
STEPS = [-999, -1, 0, 1.0, 2.5, -2.5, -0.5, 9.5, 10, 10.0, 10.5, 99.5, 100.0, -3000, 1e4 + 0.5, 2**24 + 1, 2.0**24 + 1]


def same(a, b):
    "Equal as floats, bit for bit, with nan equal to nan."
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return a.shape == b.shape and bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))

# ---------------------------------------------------------------------------------------------------------------
# Which steps are accepted, and what they mean (no Keras needed)

INTEGRAL = [(i, c) for i, c in zip(IDS, CASES) if all(float(b).is_integer() for b in c[1].get("boundaries", []))]

@pytest.mark.parametrize("name,kw", [c for _, c in INTEGRAL], ids=[i for i, _ in INTEGRAL])
def test_integral_float_and_array_steps_are_the_integer_step(name, kw):
    "(Not for boundaries such as 10.5: Keras casts them to an integer step's type, 10, and compares a float step with"
    " 10.5; see test_piecewise_compares_in_the_steps_type.)"
    s = getattr(ours, name)(**kw)
    for S in (np.float32, np.float64):
        for t in (-999, -1, 0, 1, 2, 37, 100, 1000, 2**31 - 1):
            want = s.evaluate(t, S)
            for step in (float(t), np.float64(t), np.float32(t) if abs(t) < 2**24 else np.float64(t),
                         np.int64(t), np.array(t), np.array(float(t))):
                assert same(s.evaluate(step, S), want), (step, S)
    assert same(s(2.0), s(2)) and same(s(-1.0), s(-1))


def test_step_is_the_schedules_precision_cast_of_the_value():
    "A float step is rounded to the precision, as Keras's `ops.cast(step, dtype)`: 2**24 + 1 is 2**24 in float32."
    s = ours.ExponentialDecay(1.0, 1.0, 0.999999)
    assert s.evaluate(2.0**24 + 1, np.float32) == s.evaluate(2**24, np.float32)
    assert s.evaluate(2.0**24 + 1, np.float64) != s.evaluate(2**24, np.float64)
    assert s.evaluate(0.5, np.float64) == 0.999999 ** 0.5


def test_piecewise_compares_in_the_steps_type():
    "Keras compares an integer step with the boundaries cast to integers, a float step with them in floating point."
    s = ours.PiecewiseConstantDecay([-0.5, 10.5, 2**24], [0.5, 0.25, 0.125, 0.0625])
    assert [s(t) for t in (0, 0.0, 10, 10.0, 11)] == [0.5, 0.25, 0.25, 0.25, 0.125]
    assert s.evaluate(2**24 + 1, np.float32) == 0.0625 and s.evaluate(2.0**24 + 1, np.float32) == 0.125
    assert s.evaluate(2.0**24 + 1, np.float64) == 0.0625


@pytest.mark.parametrize("module", ["torch", "jax"])
def test_framework_0d_steps(module):
    _need(module)
    if module == "torch":
        import torch
        ints, floats = [torch.tensor(150), torch.tensor(-3, dtype=torch.int32)], [torch.tensor(2.5), torch.tensor(-1.0, dtype=torch.float64)]
        bools, vectors = [torch.tensor(True)], [torch.tensor([150]), torch.zeros(2)]
    else:
        import jax.numpy as jnp
        ints, floats = [jnp.array(150), jnp.array(-3, jnp.int32)], [jnp.array(2.5), jnp.array(-1.0, jnp.bfloat16)]
        bools, vectors = [jnp.array(True)], [jnp.array([150]), jnp.zeros(2)]
    s = ours.ExponentialDecay(0.1, 100, 0.96)
    for step in ints + floats:
        v = float(step)
        assert same(s(step), s(v)) and same(s.evaluate(step, np.float32), s.evaluate(v, np.float32)), step
    for step in bools:
        with pytest.raises(ArgumentTypeError, match="`step` must be a number, not a bool"): s(step)
    for step in vectors:
        with pytest.raises(ArgumentTypeError, match=r"`step` must be a scalar \(a number or a 0-d array\)"): s(step)


@pytest.mark.parametrize("step,kind,fragment", [
    (True, ArgumentTypeError, "`step` must be a number, not a bool"),
    (np.bool_(False), ArgumentTypeError, "`step` must be a number, not a bool"),
    (np.array(True), ArgumentTypeError, "`step` must be a number, not a bool"),
    (np.array([3]), ArgumentTypeError, "an array of shape (1,)"),
    (np.zeros((2, 2)), ArgumentTypeError, "an array of shape (2, 2)"),
    ([3], ArgumentTypeError, "`step` must be a real number"),
    ("3", ArgumentTypeError, "`step` must be a real number"),
    (None, ArgumentTypeError, "`step` must be a real number"),
    (3 + 0j, ArgumentTypeError, "`step` must be a real number"),
    (float("nan"), ValueError, "`step` must be finite. Received: step=nan"),
    (float("inf"), ValueError, "`step` must be finite. Received: step=inf"),
    (np.float32("-inf"), ValueError, "`step` must be finite. Received: step=-inf"),
])
@pytest.mark.parametrize("name,kw", CASES[::3], ids=IDS[::3])
def test_refused_steps(name, kw, step, kind, fragment):
    s = getattr(ours, name)(**kw)
    config = s.get_config()
    for call in (lambda: s(step), lambda: s.evaluate(step, np.float32)):
        with pytest.raises(kind) as e: call()
        assert type(e.value) is kind and fragment in str(e.value), str(e.value)
    assert s.get_config() == config


def test_user_schedule_receives_the_checked_step():
    class Halving(ours.LearningRateSchedule):
        def __init__(self): self.seen = []
        def __call__(self, step): self.seen.append(step); return 0.5 ** step
        def get_config(self): return {}
    h = Halving()
    assert h.evaluate(np.array(3), np.float32) == 0.125 and h.evaluate(-1.0) == 2.0
    assert [type(x) for x in h.seen] == [int, float]
    with pytest.raises(ValueError, match="must be finite"): h.evaluate(float("nan"))
    assert len(h.seen) == 2

# ---------------------------------------------------------------------------------------------------------------
# Against Keras

@pytest.fixture(scope="module")
def keras_env():
    keras = _need("keras")
    jax = _need("jax")
    if keras.backend.backend() != "jax":
        pytest.skip(f"these checks drive Keras's JAX backend; KERAS_BACKEND is {keras.backend.backend()!r}")
    import jax.numpy as jnp
    import keras.src.backend.jax.numpy as kjn
    from keras.src.backend.jax.core import convert_to_tensor

    @contextlib.contextmanager
    def mode(x64=False, op_by_op=False):
        "Keras in float32 (as it is), or float64 with `cos`/`floor`/`ceil` kept in float64; op by op or not."
        saved = (kjn.cos, kjn.floor, kjn.ceil, keras.config.floatx(), jax.config.jax_enable_x64)
        if x64:
            jax.config.update("jax_enable_x64", True); keras.config.set_floatx("float64")
            kjn.cos = lambda x: jnp.cos(convert_to_tensor(x))
            kjn.floor = lambda x: jnp.floor(convert_to_tensor(x))
            kjn.ceil = lambda x: jnp.ceil(convert_to_tensor(x))
        try:
            with jax.disable_jit() if op_by_op else contextlib.nullcontext():
                yield
        finally:
            kjn.cos, kjn.floor, kjn.ceil = saved[:3]
            keras.config.set_floatx(saved[3]); jax.config.update("jax_enable_x64", saved[4])

    return keras.optimizers.schedules, mode


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_float32_equals_keras_at_negative_and_float_steps(keras_env, name, kw):
    KS, mode = keras_env
    theirs, mine = getattr(KS, name)(**kw), getattr(ours, name)(**kw)
    with mode(op_by_op=uses_cond(name, kw)):
        expected = [float(theirs(t)) for t in STEPS]
    got = [mine.evaluate(t, np.float32) for t in STEPS]
    assert same(got, expected), [(t, g, e) for t, g, e in zip(STEPS, got, expected) if not same(g, e)]


@pytest.mark.parametrize("name,kw", CASES, ids=IDS)
def test_float64_equals_keras_at_negative_and_float_steps(keras_env, name, kw):
    KS, mode = keras_env
    theirs, mine = getattr(KS, name)(**kw), getattr(ours, name)(**kw)
    with mode(x64=True, op_by_op=True):
        expected = [float(theirs(t)) for t in STEPS]
    got = [mine(t) for t in STEPS]
    assert same(got, expected), [(t, g, e) for t, g, e in zip(STEPS, got, expected) if not same(g, e)]


def test_keras_array_steps(keras_env):
    "Keras accepts 0-d arrays as steps, with the same values as the numbers; so do we."
    KS, mode = keras_env
    import jax.numpy as jnp
    theirs, mine = KS.ExponentialDecay(0.1, 100, 0.96), ours.ExponentialDecay(0.1, 100, 0.96)
    steps = [np.array(-999), np.float32(2.5), np.array(1.0), jnp.array(-1), jnp.array(2.5)]
    with mode():
        expected = [float(theirs(t)) for t in steps]
    assert same([mine.evaluate(t, np.float32) for t in steps], expected)


def test_what_keras_gives_at_the_issues_steps(keras_env):
    """The behaviour the schedules page describes, from Keras itself: a negative step is a step before the start
    (PiecewiseConstantDecay gives values[0], ExponentialDecay a rate above the initial one, InverseTimeDecay with
    rate 0.5 a negative rate at -999, CosineDecayRestarts with t_mul=2 nan), and a float step lies between steps."""
    KS, mode = keras_env
    with mode():
        pc = float(KS.PiecewiseConstantDecay([10, 20], [1e-3, 3e-4, 1e-4])(-999))
        ed = [float(KS.ExponentialDecay(0.1, 100, 0.96)(t)) for t in (-1, 1.0, 2.5, 3)]
        itd = float(KS.InverseTimeDecay(0.1, 100, 0.5)(-999))
    with mode(op_by_op=True):
        sg = float(KS.CosineDecayRestarts(0.1, 100, t_mul=2.0)(-999))
    assert pc == float(np.float32(1e-3)) and ed[0] > 0.1 and ed[1] > ed[2] > ed[3] and itd < 0 and math.isnan(sg)
    assert pc == ours.PiecewiseConstantDecay([10, 20], [1e-3, 3e-4, 1e-4]).evaluate(-999, np.float32)
    assert ed == [ours.ExponentialDecay(0.1, 100, 0.96).evaluate(t, np.float32) for t in (-1, 1.0, 2.5, 3)]
    assert itd == ours.InverseTimeDecay(0.1, 100, 0.5).evaluate(-999, np.float32)
    assert math.isnan(ours.CosineDecayRestarts(0.1, 100, t_mul=2.0)(-999))
