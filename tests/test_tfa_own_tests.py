"""TF Addons' own LazyAdam tests, run on adam_lit's `LazyAdam` with NumPy arrays and TF Addons' expected numbers.

Ported from `tensorflow_addons/optimizers/tests/lazy_adam_test.py` (TF Addons 0.23,
https://github.com/tensorflow/addons/blob/master/tensorflow_addons/optimizers/tests/lazy_adam_test.py), whose
LazyAdam adam_lit reproduces with `numerics="legacy"` (and, on these inputs, with the default Keras 3 numerics too: both
are checked). The translation is mechanical: `tf.Variable` becomes a NumPy array the step updates in place,
`tf.IndexedSlices` adam_lit's `IndexedSlices`, `tf.constant` a NumPy array, and the reference is TF Addons' own
`adam_update_numpy` with the tolerances of its `assert_allclose_according_to_type` (1e-6, and 1e-3 for float16).
`get_beta_accumulators` read TF Addons' private `_get_hyper`; here the powers are those of the optimizer's `beta_1`
and `beta_2` at its `iterations`, which is what they test.

Adapted: `minimize` takes `(loss, grads)` from the callable in adam_lit (no automatic differentiation), so the two
tests that minimize a TensorFlow expression are given its gradient, written out. `tf.keras.optimizers.serialize` is
Keras's; the config round trip is tested with `get_config` / `from_config`. The TensorFlow-backend runs of
`adam_lit.keras.LazyAdam` against TF Addons' numbers are in tests/test_keras_frontend.py.
"""
import numpy as np
import pytest

from adam_lit.backend import IndexedSlices
from adam_lit.lazyadam import LazyAdam

DTYPES = [np.float16, np.float32, np.float64]
NUMERICS = ["legacy", "keras"]


def adam_update_numpy(param, g_t, t, m, v, lr=0.001, beta1=0.9, beta2=0.999, epsilon=1e-7):
    "TF Addons' reference (lazy_adam_test.py), unchanged."
    lr_t = lr * np.sqrt(1 - beta2 ** (t + 1)) / (1 - beta1 ** (t + 1))
    m_t = beta1 * m + (1 - beta1) * g_t
    v_t = beta2 * v + (1 - beta2) * g_t * g_t
    param_t = param - lr_t * m_t / (np.sqrt(v_t) + epsilon)
    return param_t, m_t, v_t


def assert_allclose_according_to_type(a, b, rtol=1e-6, atol=1e-6):
    "TF Addons' test_utils.assert_allclose_according_to_type: float16 within 1e-3."
    a, b = np.asarray(a), np.asarray(b)
    if np.float16 in (a.dtype, b.dtype): rtol = atol = 1e-3
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


def beta_powers(opt, dtype):
    "TF Addons' get_beta_accumulators: beta_1 and beta_2 to the power of the next step, in `dtype`."
    t = dtype(opt.iterations + 1)
    return dtype(opt.beta_1) ** t, dtype(opt.beta_2) ** t


def run_three_steps(opt, var0_np, grads0, grads0_np, var1_np, grads1, grads1_np, dtype):
    var0, var1 = var0_np.copy(), var1_np.copy()
    m0 = v0 = m1 = v1 = 0.0
    for t in range(3):
        b1p, b2p = beta_powers(opt, dtype)
        assert_allclose_according_to_type(0.9 ** (t + 1), b1p)
        assert_allclose_according_to_type(0.999 ** (t + 1), b2p)
        opt.apply_gradients(zip([grads0, grads1], [var0, var1]))
        var0_np, m0, v0 = adam_update_numpy(var0_np, grads0_np, t, m0, v0)
        var1_np, m1, v1 = adam_update_numpy(var1_np, grads1_np, t, m1, v1)
        assert_allclose_according_to_type(var0_np, var0)
        assert_allclose_according_to_type(var1_np, var1)


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse(dtype, numerics):
    var0_np = np.array([1.0, 1.0, 2.0], dtype=dtype)
    grads0_np = np.array([0.1, 0.0, 0.1], dtype=dtype)
    var1_np = np.array([3.0, 3.0, 4.0], dtype=dtype)
    grads1_np = np.array([0.01, 0.0, 0.01], dtype=dtype)
    idx = np.array([0, 2], dtype=np.int32)
    grads0 = IndexedSlices(grads0_np[idx], idx, (3,))
    grads1 = IndexedSlices(grads1_np[idx], idx, (3,))
    # (row 1 has a zero gradient and is not in the slices: lazily untouched, and Adam's update of a zero gradient
    # from zero moments is zero too, so the dense reference holds for every row)
    run_three_steps(LazyAdam(numerics=numerics), var0_np, grads0, grads0_np, var1_np, grads1, grads1_np, dtype)


@pytest.mark.parametrize("dtype", [np.int32, np.int64])
def test_sparse_device_placement(dtype):
    "The index dtypes an embedding lookup gives; `minimize` on the gradient of sum(var[indices]) (rows of ones)."
    var = np.array([[1.0], [2.0]], np.float32)
    indices = np.array([0, 1], dtype=dtype)
    def g_sum():
        loss = float(var[indices].sum())
        return loss, [IndexedSlices(np.ones((2, 1), np.float32), indices, var.shape)]
    LazyAdam(3.0).minimize(g_sum, var_list=[var])
    # (TF Addons only checks that the step runs.) Adam's first step moves by the learning rate, up to eps_hat / sqrt(v_1)
    # (3e-6 relative) and float32's 1 - beta_2 (0.999 is 0.99900001 in float32: 1.3e-5 relative in v's correction)
    np.testing.assert_allclose(var, [[1.0 - 3.0], [2.0 - 3.0]], atol=1e-4)


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_repeated_indices(dtype, numerics):
    repeated_index_update_var = np.array([[1], [2]], dtype=dtype)
    aggregated_update_var = np.array([[1], [2]], dtype=dtype)
    grad_repeated_index = IndexedSlices(np.array([0.1, 0.1], dtype=dtype).reshape(2, 1), np.array([1, 1]), (2, 1))
    grad_aggregated = IndexedSlices(np.array([0.2], dtype=dtype).reshape(1, 1), np.array([1]), (2, 1))
    repeated_update_opt, aggregated_update_opt = LazyAdam(numerics=numerics), LazyAdam(numerics=numerics)
    for _ in range(3):
        repeated_update_opt.apply_gradients([(grad_repeated_index, repeated_index_update_var)])
        aggregated_update_opt.apply_gradients([(grad_aggregated, aggregated_update_var)])
        np.testing.assert_allclose(aggregated_update_var, repeated_index_update_var)


def _dense_case(dtype):
    var0_np, grads0_np = np.array([1.0, 2.0], dtype=dtype), np.array([0.1, 0.1], dtype=dtype)
    var1_np, grads1_np = np.array([3.0, 4.0], dtype=dtype), np.array([0.01, 0.01], dtype=dtype)
    return var0_np, grads0_np.copy(), grads0_np, var1_np, grads1_np.copy(), grads1_np


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("use_callable_params", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_basic(use_callable_params, dtype, numerics):
    def learning_rate():
        return 0.001
    if not use_callable_params:
        learning_rate = learning_rate()
    run_three_steps(LazyAdam(learning_rate=learning_rate, numerics=numerics), *_dense_case(dtype), dtype)


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tensor_learning_rate(dtype, numerics):
    "TF Addons passes `tf.constant(0.001)`: here a 0-d NumPy array."
    run_three_steps(LazyAdam(np.asarray(0.001), numerics=numerics), *_dense_case(dtype), dtype)


@pytest.mark.parametrize("numerics", NUMERICS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_sharing(dtype, numerics):
    run_three_steps(LazyAdam(numerics=numerics), *_dense_case(dtype), dtype)


def test_slots_unique_eager():
    "minimize(v1 + v2): the gradient of each is 1, written out. Then the counter and two slots per variable."
    v1, v2 = np.array(1.0, np.float32), np.array(1.0, np.float32)
    opt = LazyAdam(1.0, numerics="legacy")
    opt.minimize(lambda: (float(v1 + v2), [np.ones((), np.float32), np.ones((), np.float32)]), var_list=[v1, v2])
    # TF Addons (tf.keras's OptimizerV2): iterations and two unique slots for v1 and v2 are 5 variables. adam_lit
    # lists Keras 3's order, which also holds the learning rate: 6, the counter first.
    assert len(opt.variables) == 6 and int(opt.variables[0]) == opt.iterations == 1
    slots = [opt.get_slot(v, s) for v in (v1, v2) for s in ("m", "v")]
    assert len({id(s) for s in slots}) == 4


def test_serialization():
    optimizer = LazyAdam()
    new_optimizer = LazyAdam.from_config(optimizer.get_config())
    assert new_optimizer.get_config() == optimizer.get_config()
