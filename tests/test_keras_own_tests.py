"""Keras 3's own optimizer tests, run on adam_lit with NumPy arrays and Keras's expected numbers.

Ported from Keras 3.15's `keras/src/optimizers/adam_test.py`, `adamw_test.py` and `optimizer_test.py`
(https://github.com/keras-team/keras/tree/master/keras/src/optimizers): every test there that concerns Adam or AdamW,
or the base optimizer's behaviour that adam_lit shares (clipping, EMA, accumulation, loss scaling, counters, weights,
names, pickling). The translation is mechanical: `backend.Variable(x)` becomes a float32 NumPy array, which the step
updates in place; `ops.*` become NumPy; `assertAllClose` keeps Keras's tolerances (1e-6 unless the test gives its own).
Where a test uses SGD, the same test is run with Adam only where its numbers do not depend on the rule (counters,
accumulators, clipping), or with the numbers derived for Adam in a comment next to them.

Not ported, with the reason: `model.fit` tests and TensorFlow checkpointing (Keras models; adam_lit's Keras front end
has its own tests in tests/test_keras_frontend.py), `test_constraints_are_applied` and the `overwrite_with_gradient`
tests (attributes of Keras variables, which NumPy arrays do not carry), `optimizers.get` (Keras's registry), and the
other optimizers' parameterisations (adagrad, lion, ...). Keras itself is not needed.
"""
import pickle
import warnings

import numpy as np
import pytest

from adam_lit.adam import Adam, AdamW
from adam_lit.schedules import PolynomialDecay


def Variable(x, dtype="float32"):
    "Keras's `backend.Variable`: here a NumPy array of floatx (float32), updated in place by the optimizer."
    return np.array(x, dtype=dtype)


def assert_all_close(a, b, rtol=1e-6, atol=1e-6):
    "Keras's `TestCase.assertAllClose` (its default tolerances)."
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64), rtol=rtol, atol=atol)


# Where an SGD test runs with Adam: Adam's step on a constant gradient is the learning rate times
# m_hat / (sqrt(v_hat) + eps_hat / sqrt(1 - beta_2^t)), 1 up to eps_hat / sqrt(v_t) (about 3e-6 relative in these
# tests), with float32 roundings of values up to 6 (about 5e-7 each): ADAM_SGD_ATOL covers a few such steps.
ADAM_SGD_ATOL = 1e-4


# ------------------------------------------------------------------------------------- keras/src/optimizers/adam_test.py
def test_adam_config():
    optimizer = Adam(learning_rate=0.5, beta_1=0.5, beta_2=0.67, epsilon=1e-5, amsgrad=True)
    reloaded = Adam.from_config(optimizer.get_config())          # run_class_serialization_test: config round trip
    assert reloaded.get_config() == optimizer.get_config()
    assert pickle.loads(pickle.dumps(optimizer)).get_config() == optimizer.get_config()


@pytest.mark.parametrize("cls, expected", [(Adam, [0.5, 1.5, 2.5, 3.5]),                # adam_test.py
                                            (AdamW, [0.4980, 1.4960, 2.494, 3.492])])  # adamw_test.py
def test_single_step(cls, expected):
    optimizer = cls(learning_rate=0.5)
    grads = np.array([1.0, 6.0, 7.0, 2.0], np.float32)
    vars = Variable([1.0, 2.0, 3.0, 4.0])
    optimizer.apply_gradients(zip([grads], [vars]))
    assert_all_close(vars, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_weight_decay(cls):
    "adam_test.py and adamw_test.py. Keras names the second variable 'exclude'; NumPy arrays get names at `build`."
    grads, var1, var2, var3 = np.zeros((), np.float32), Variable(2.0), Variable(2.0), Variable(2.0)
    optimizer_1 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_1.apply_gradients(zip([grads], [var1]))
    optimizer_2 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_2.exclude_from_weight_decay(var_names=["exclude"])
    optimizer_2.build([var1, var2], names=["var1", "exclude"])
    optimizer_2.apply_gradients(zip([grads, grads], [var1, var2]))
    optimizer_3 = cls(learning_rate=1.0, weight_decay=0.004)
    optimizer_3.exclude_from_weight_decay(var_list=[var3])
    optimizer_3.apply_gradients(zip([grads, grads], [var1, var3]))
    np.testing.assert_almost_equal(float(var1), 1.9760959, decimal=6)
    np.testing.assert_almost_equal(float(var2), 2.0, decimal=6)
    np.testing.assert_almost_equal(float(var3), 2.0, decimal=6)


def test_adam_correctness_with_golden():
    optimizer = Adam(amsgrad=True)
    x = Variable(np.ones([10], dtype="float32"))
    grads = np.arange(0.1, 1.1, 0.1).astype(np.float32)
    first_grads = np.full((10,), 0.01, np.float32)
    golden = np.tile([[0.999], [0.9982], [0.9974], [0.9965], [0.9955]], (1, 10))
    optimizer.apply_gradients(zip([first_grads], [x]))
    for i in range(5):
        assert_all_close(x, golden[i], rtol=5e-4, atol=5e-4)
        optimizer.apply_gradients(zip([grads], [x]))


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_clip_norm_and_value(cls):
    clipped_grad = cls(clipnorm=1)._clip_gradients([np.array([100.0, 100.0])])
    assert_all_close(clipped_grad[0], [2**0.5 / 2, 2**0.5 / 2])
    clipped_grad = cls(clipvalue=1)._clip_gradients([np.array([100.0, 100.0])])
    assert_all_close(clipped_grad[0], [1.0, 1.0])


def test_adam_ema():
    optimizer = Adam(learning_rate=1.0, use_ema=True, ema_momentum=0.9)
    var = Variable([1.0, 2.0])
    grads = np.array([0.1, 0.2], np.float32)
    optimizer.apply_gradients([(grads, var)])                 # first step: the EMA is the first updated value
    v1 = var.copy()
    assert_all_close(optimizer._model_variables_moving_average[0], v1)
    optimizer.apply_gradients([(grads, var)])
    v2 = var.copy()
    expected_ema = 0.9 * v1 + 0.1 * v2
    assert_all_close(optimizer._model_variables_moving_average[0], expected_ema)
    optimizer.finalize_variable_values([var])                 # the variable overwritten by the EMA
    assert_all_close(var, expected_ema)


def test_adam_ema_overwrite_frequency():
    optimizer = Adam(learning_rate=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=2)
    optimizer_no_ema = Adam(learning_rate=1.0)
    var, var_no_ema = Variable([1.0, 2.0]), Variable([1.0, 2.0])
    grads = np.array([0.1, 0.2], np.float32)
    optimizer.apply_gradients([(grads, var)])
    optimizer_no_ema.apply_gradients([(grads, var_no_ema)])
    v1 = var_no_ema.copy()
    assert_all_close(var, v1)                                 # not overwritten yet
    optimizer.apply_gradients([(grads, var)])
    optimizer_no_ema.apply_gradients([(grads, var_no_ema)])
    v2 = var_no_ema.copy()
    expected_ema = 0.9 * v1 + 0.1 * v2
    assert_all_close(var, expected_ema)                       # updated to v2, then overwritten by the EMA
    assert_all_close(optimizer._model_variables_moving_average[0], expected_ema)


# ------------------------------------------------------------------------------------ keras/src/optimizers/adamw_test.py
def test_adamw_config():
    optimizer = AdamW(learning_rate=0.5, weight_decay=0.008, beta_1=0.5, beta_2=0.67, epsilon=1e-5, amsgrad=True)
    assert AdamW.from_config(optimizer.get_config()).get_config() == optimizer.get_config()


def test_adamw_weight_decay_is_none():
    with pytest.raises(ValueError, match="Argument `weight_decay` must be a float. Received: weight_decay=None"):
        AdamW(learning_rate=1.0, weight_decay=None)


def test_adamw_correctness_with_golden():
    optimizer = AdamW(learning_rate=1.0, weight_decay=0.5, epsilon=2)
    x = Variable(np.ones([10], dtype="float32"))
    grads = np.arange(0.1, 1.1, 0.1).astype(np.float32)
    first_grads = np.full((10,), 0.01, np.float32)
    golden = np.array(
        [[0.4998, 0.4998, 0.4998, 0.4998, 0.4998, 0.4998, 0.4998, 0.4998, 0.4998, 0.4998],
         [0.2486, 0.2475, 0.2463, 0.2451, 0.244, 0.2428, 0.2417, 0.2405, 0.2394, 0.2382],
         [0.1223, 0.1198, 0.1174, 0.1149, 0.1124, 0.11, 0.1075, 0.1051, 0.1027, 0.1003],
         [0.0586, 0.0549, 0.0512, 0.0475, 0.0439, 0.0402, 0.0366, 0.033, 0.0294, 0.0258],
         [0.0263, 0.0215, 0.0167, 0.012, 0.0073, 0.0026, -0.0021, -0.0067, -0.0113, -0.0159]])
    optimizer.apply_gradients(zip([first_grads], [x]))
    for i in range(5):
        assert_all_close(x, golden[i], rtol=5e-4, atol=5e-4)
        optimizer.apply_gradients(zip([grads], [x]))


# -------------------------------------------------------------------------------- keras/src/optimizers/optimizer_test.py
def test_iterations_counter():
    v = Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    optimizer = Adam(learning_rate=1.0)
    assert_all_close(optimizer.iterations, 0)
    optimizer.apply_gradients([(grads, v)])
    assert_all_close(optimizer.iterations, 1)
    optimizer.apply_gradients([(grads, v)])
    assert_all_close(optimizer.iterations, 2)


def test_empty_gradients():
    "With Adam for SGD: the first Adam step of learning rate 1 moves each entry by 1 (alpha = 1, m/sqrt(v) = 1)."
    v = Variable([[3.0, 4.0], [5.0, 6.0]])
    with pytest.raises(ValueError, match="No gradients provided for any variable."):
        Adam(learning_rate=1.0).apply_gradients([(None, v)])
    v2 = Variable([[3.0, 4.0], [5.0, 6.0]])
    grads2 = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    optimizer = Adam(learning_rate=1.0)
    with pytest.warns(Warning):
        optimizer.apply_gradients([(None, v), (grads2, v2)])
    assert_all_close(v, [[3.0, 4.0], [5.0, 6.0]])
    assert_all_close(v2, [[2.0, 3.0], [4.0, 5.0]], atol=ADAM_SGD_ATOL)


def test_clip_args():
    assert Adam(learning_rate=1.0, clipnorm=0.1).clipnorm == 0.1
    assert Adam(learning_rate=1.0, clipvalue=0.1).clipvalue == 0.1
    assert Adam(learning_rate=1.0, global_clipnorm=0.1).global_clipnorm == 0.1
    for kw in (dict(clipnorm=0.1, clipvalue=0.1), dict(clipnorm=0.1, global_clipnorm=0.1)):
        with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can"):
            Adam(learning_rate=1.0, **kw)


def test_global_clip_norm():
    grad = np.array([50.0, 100.0], dtype="float32")
    clipped_grad = Adam(global_clipnorm=1)._clip_gradients([grad])
    assert_all_close(clipped_grad[0], grad / np.linalg.norm(grad))


def test_ema_overwrite_every_third_step():
    """optimizer_test.py's test_ema, with Adam for SGD: Adam's first steps of learning rate 1 on a constant gradient of
    ones move each entry by 1 (alpha_t * m_hat / sqrt(v_hat) = 1 for every t, up to epsilon), as SGD's do."""
    v = Variable([[3.0, 4.0], [5.0, 6.0]])
    grads = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    optimizer = Adam(learning_rate=1.0, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3)
    optimizer.apply_gradients([(grads, v)])
    assert_all_close(v, [[2.0, 3.0], [4.0, 5.0]], atol=ADAM_SGD_ATOL)
    assert_all_close(optimizer._model_variables_moving_average[0], [[2.0, 3.0], [4.0, 5.0]], atol=ADAM_SGD_ATOL)
    optimizer.apply_gradients([(grads, v)])
    assert_all_close(v, [[1.0, 2.0], [3.0, 4.0]], atol=ADAM_SGD_ATOL)
    assert_all_close(optimizer._model_variables_moving_average[0], [[1.9, 2.9], [3.9, 4.9]], atol=ADAM_SGD_ATOL)
    optimizer.apply_gradients([(grads, v)])
    assert_all_close(v, [[1.71, 2.71], [3.71, 4.71]], atol=ADAM_SGD_ATOL)         # overwritten with the EMA
    assert_all_close(optimizer._model_variables_moving_average[0], [[1.71, 2.71], [3.71, 4.71]], atol=ADAM_SGD_ATOL)


def test_static_loss_scaling():
    "With Adam for SGD: the gradient unscaled is the step's; Adam's first step of learning rate 1 moves by 1."
    v = Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32) * 1024.0
    optimizer = Adam(learning_rate=1.0, loss_scale_factor=1024.0)
    optimizer.apply_gradients([(grads, v)])
    assert optimizer.scale_loss(1.0) == 1024.0
    assert_all_close(v, [[0.0, 1.0], [2.0, 3.0]], atol=ADAM_SGD_ATOL)


def test_set_weights():
    x = Variable([[1.0, 2.0], [3.0, 4.0]])
    optimizer_1 = Adam()
    grads = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    optimizer_1.apply_gradients(zip([grads], [x]))
    optimizer_2 = Adam()
    with pytest.raises(ValueError, match="You are calling*"):
        optimizer_2.set_weights(optimizer_1.variables)
    optimizer_2.build([x])
    optimizer_2.set_weights(optimizer_1.variables)
    for a, b in zip(optimizer_1.variables, optimizer_2.variables):
        assert_all_close(a, b)


def test_gradient_accumulation():
    "With Adam for SGD: the update at the third call moves by 1 (Adam's first step, learning rate 1)."
    v = Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    optimizer = Adam(learning_rate=1.0, gradient_accumulation_steps=3)
    assert optimizer.gradient_accumulation_steps == 3
    expect = [([[1.0, 2.0], [3.0, 4.0]], 1.0, 1, 0), ([[1.0, 2.0], [3.0, 4.0]], 2.0, 2, 0),
              ([[0.0, 1.0], [2.0, 3.0]], 0.0, 3, 1), ([[0.0, 1.0], [2.0, 3.0]], 1.0, 4, 1)]
    for values, acc, calls, updates in expect:
        optimizer.apply_gradients([(grads, v)])
        assert_all_close(v, values, atol=ADAM_SGD_ATOL)
        assert_all_close(optimizer._accumulated_gradients[0], np.full((2, 2), acc))
        assert_all_close(optimizer._iterations, calls)
        assert_all_close(optimizer.iterations, updates)


def test_callable_learning_rate():
    "With Adam for SGD: Adam's first step moves by the learning rate."
    v = Variable([[1.0, 2.0], [3.0, 4.0]])
    grads = np.array([[1.0, 1.0], [1.0, 1.0]], np.float32)
    optimizer = Adam(learning_rate=lambda: 0.1)
    assert_all_close(optimizer.iterations, 0)
    optimizer.apply_gradients([(grads, v)])
    assert_all_close(v, [[0.9, 1.9], [2.9, 3.9]], atol=ADAM_SGD_ATOL)
    assert_all_close(optimizer.iterations, 1)


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_gradient_accumulation_with_weight_decay(cls):
    rng = np.random.default_rng(0)
    optimizer1 = cls(weight_decay=0.05)
    optimizer3 = cls(weight_decay=0.05, gradient_accumulation_steps=3)
    variable1, variable3 = Variable([[0.9], [0.5]]), Variable([[0.9], [0.5]])
    for epoch in range(8):
        grads3 = rng.random([3, 2, 1]).astype("float32")
        optimizer1.apply_gradients([(grads3.mean(axis=0), variable1)])
        for batch in range(3):
            optimizer3.apply_gradients([(grads3[batch], variable3)])
    assert_all_close(variable1, variable3)


def test_setting_lr_to_callable_untracks_lr_var():
    adam = Adam(learning_rate=0.001)
    assert len(adam.variables) == 2
    adam.learning_rate = PolynomialDecay(adam.learning_rate, 4)
    assert len(adam.variables) == 1


@pytest.mark.parametrize("cls", [Adam, AdamW])
def test_pickleable_optimizers(cls):
    optimizer = cls()
    assert pickle.loads(pickle.dumps(optimizer)).get_config() == optimizer.get_config()


def test_optimizer_auto_naming():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first, second = Adam(), Adam()
        w1, w2 = AdamW(), AdamW()
    # Keras numbers the names of one process's optimizers: "adam", "adam_1", ... (counting from where earlier tests left)
    assert first.name.startswith("adam") and second.name.startswith("adam") and first.name != second.name
    assert w1.name.startswith("adam_w") and w2.name.startswith("adam_w") and w1.name != w2.name
    assert Adam(name="my_adam").name == "my_adam"
    assert Adam.from_config(second.get_config()).name == second.name
    assert Adam.from_config(Adam(name="my_adam").get_config()).name == "my_adam"
