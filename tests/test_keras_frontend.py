"""adam_lit.keras: `LazyAdam` as a Keras 3 optimizer.

* JAX backend (this process): dense gradients, so the step is Adam's; bit for bit adam_lit's `LazyAdam` (NumPy) and,
  with `numerics="keras"`, `keras.optimizers.Adam`, eagerly and under `jax.jit` (`stateless_apply`); `model.fit` on an
  embedding model; `get_config` / `from_config`; a `.keras` file round trip; bad arguments.
* TensorFlow backend (a subprocess with KERAS_BACKEND=tensorflow, as tests/test_keras_oracle.py does): `tf.IndexedSlices`
  gradients with repeated rows, bit for bit adam_lit's `LazyAdam` fed the same `IndexedSlices` (NumPy), eagerly and in
  a `tf.function` (XLA: within 2 ulps); TF Addons' numbers of the reference table (float32, 3 steps); dense gradients equal to
  `keras.optimizers.Adam`; `model.fit` updating only the rows the data touches.

* PyTorch backend (a subprocess with KERAS_BACKEND=torch): dense gradients bit for bit adam_lit's; `model.fit`.

Skipped where Keras (or, for the subprocess tests, TensorFlow or PyTorch) is not installed.
"""
import copy
import json
import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest
from conftest import need

keras = need("keras")
if keras.backend.backend() != "jax":
    pytest.skip(f"these tests run Keras on JAX in-process (KERAS_BACKEND={keras.backend.backend()!r}); TensorFlow in a "
                "subprocess", allow_module_level=True)
jax = need("jax")

from adam_lit.backend import IndexedSlices  # noqa: E402
from adam_lit.keras import LazyAdam  # noqa: E402
from adam_lit.lazyadam import LazyAdam as NumpyLazyAdam  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
K = keras.ops.convert_to_numpy

OPTIONS = [dict(), dict(amsgrad=True), dict(weight_decay=0.01), dict(beta_1=0.5, beta_2=0.9, epsilon=1e-3),
           dict(amsgrad=True, weight_decay=0.1, learning_rate=0.05)]


def numpy_lazy(**kw):
    "adam_lit's LazyAdam on NumPy (its amsgrad-with-legacy warning says what TF Addons does; not needed here)."
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NumpyLazyAdam(**kw)


def np_apply(opt, grads, xs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt.apply(grads, xs)


def dense_case(seed, shapes=((5, 3), (4,), ())):
    rng = np.random.default_rng(seed)
    inits = [np.asarray(rng.standard_normal(s), np.float32) for s in shapes]
    calls = [[np.asarray(rng.standard_normal(s) * 10 ** rng.uniform(-4, 2), np.float32) for s in shapes]
             for _ in range(6)]
    return inits, calls


# ---------------------------------------------------------------------------------------------- JAX: dense gradients
@pytest.mark.parametrize("numerics", ["keras", "legacy"])
@pytest.mark.parametrize("k", range(len(OPTIONS)))
def test_jax_dense_equals_adam_lit(numerics, k):
    "Eager `apply` on JAX, float32: every variable and slot equal to adam_lit's LazyAdam (NumPy) after every call."
    opts = dict(learning_rate=0.01) | OPTIONS[k]
    inits, calls = dense_case(k)
    kv = [keras.Variable(x) for x in inits]
    kopt, aopt, av = LazyAdam(numerics=numerics, **opts), numpy_lazy(numerics=numerics, **opts), [x.copy() for x in inits]
    for grads in calls:
        kopt.apply(grads, kv)
        np_apply(aopt, [g.copy() for g in grads], av)
        for i, (a, b) in enumerate(zip(kv, av)):
            assert np.array_equal(K(a), b), f"variable {i}, {numerics}, {opts}"
        assert np.array_equal(K(kopt._momentums[0]), aopt.get_slot(av[0], "m"))
        assert np.array_equal(K(kopt._velocities[0]), aopt.get_slot(av[0], "v"))


@pytest.mark.parametrize("k", range(len(OPTIONS)))
def test_jax_dense_equals_keras_adam(k):
    "`numerics='keras'` on a dense gradient is `keras.optimizers.Adam`: variables and every optimizer variable."
    opts = dict(learning_rate=0.01) | OPTIONS[k]
    inits, calls = dense_case(10 + k)
    kv = [keras.Variable(x, name=f"w{i}") for i, x in enumerate(inits)]
    rv = [keras.Variable(x, name=f"w{i}") for i, x in enumerate(inits)]
    kopt, ref = LazyAdam(**opts), keras.optimizers.Adam(**opts)
    for grads in calls:
        kopt.apply(grads, kv); ref.apply(grads, rv)
    assert all(np.array_equal(K(a), K(b)) for a, b in zip(kv, rv))
    assert [v.path.split("/", 1)[1] for v in kopt.variables] == [v.path.split("/", 1)[1] for v in ref.variables]
    assert all(np.array_equal(K(a), K(b)) for a, b in zip(kopt.variables, ref.variables))


def test_jax_jit_stateless_apply_equals_keras_adam():
    "Under `jax.jit` (`stateless_apply`, what `model.fit` runs): the same bits as Keras's Adam under `jax.jit`."
    inits, calls = dense_case(3)
    out = []
    for opt in (LazyAdam(learning_rate=0.02, weight_decay=0.01), keras.optimizers.Adam(learning_rate=0.02, weight_decay=0.01)):
        kv = [keras.Variable(x) for x in inits]
        opt.build(kv)
        step = jax.jit(opt.stateless_apply)
        ov, tv = [v.value for v in opt.variables], [v.value for v in kv]
        for grads in calls:
            tv, ov = step(ov, [jax.numpy.asarray(g) for g in grads], tv)
        out.append([np.asarray(x) for x in tv + ov])
    assert all(np.array_equal(a, b) for a, b in zip(*out))
    # (Compiled, XLA may round differently from the eager operations, e.g. `x / c` as `x * (1 / c)`: here the first
    # variable is an ulp away from the eager NumPy result. So jit is compared with jit, as tests/test_jax_jit.py does.)


def embedding_data(n_rows=300, seed=0):
    rng = np.random.default_rng(seed)
    score = rng.standard_normal(n_rows).astype(np.float32)
    X = rng.integers(0, n_rows // 2, (512, 6)).astype(np.int32)      # rows >= n_rows // 2 never read
    return X, score[X].mean(axis=1)


def embedding_model(n_rows, seed=1):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(n_rows, 8),
                             keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])


def test_jax_fit_embedding_model():
    "`model.compile(optimizer=LazyAdam())` + `fit` on JAX: the loss falls, and the run is Keras Adam's, bit for bit."
    X, y = embedding_data()
    losses = []
    for opt in (LazyAdam(learning_rate=0.01), keras.optimizers.Adam(learning_rate=0.01)):
        model = embedding_model(300)
        model.compile(optimizer=opt, loss="mse")
        losses.append(model.fit(X, y, batch_size=64, epochs=4, verbose=0).history["loss"])
    assert losses[0][-1] < losses[0][0] / 2, losses
    assert losses[0] == losses[1]


# ---------------------------------------------------------------------------------------------- config and saving
def test_get_config_from_config_round_trip():
    opt = LazyAdam(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.01, 10, 0.5), beta_1=0.8, beta_2=0.99,
                   epsilon=1e-5, amsgrad=True, numerics="legacy", weight_decay=0.004, clipnorm=1.0, name="lazy")
    config = opt.get_config()
    assert {k: config[k] for k in ("beta_1", "beta_2", "epsilon", "amsgrad", "numerics", "weight_decay", "clipnorm", "name")} \
        == dict(beta_1=0.8, beta_2=0.99, epsilon=1e-5, amsgrad=True, numerics="legacy", weight_decay=0.004, clipnorm=1.0,
                name="lazy")
    again = LazyAdam.from_config(copy.deepcopy(config))       # (Keras's from_config deserialises in place)
    assert type(again) is LazyAdam and again.get_config() == config
    # through Keras's registry: "adam_lit>LazyAdam"
    ser = keras.optimizers.serialize(opt)
    assert ser["registered_name"] == "adam_lit>LazyAdam"
    back = keras.optimizers.deserialize(json.loads(json.dumps(ser)))
    assert type(back) is LazyAdam and back.get_config() == config


def test_legacy_epsilon_zero_becomes_1e_7():
    "tf.keras 2.x (and TF Addons): `epsilon or 1e-7`; Keras 3 keeps 0."
    assert LazyAdam(epsilon=0.0, numerics="legacy").epsilon == 1e-7
    assert LazyAdam(epsilon=0.0).epsilon == 0.0


def test_saved_model_reloads_with_optimizer_state(tmp_path):
    "A compiled, trained model saved as .keras reloads with a LazyAdam, its config and every optimizer variable."
    X, y = embedding_data()
    model = embedding_model(300)
    model.compile(optimizer=LazyAdam(learning_rate=0.01, amsgrad=True, numerics="legacy"), loss="mse")
    model.fit(X, y, batch_size=64, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    assert type(again.optimizer) is LazyAdam
    assert again.optimizer.get_config() == model.optimizer.get_config()
    assert int(again.optimizer.iterations) == int(model.optimizer.iterations) == 8
    assert len(again.optimizer.variables) == len(model.optimizer.variables)
    assert all(np.array_equal(K(a), K(b)) for a, b in zip(again.optimizer.variables, model.optimizer.variables))
    # training goes on from the restored state exactly as it would have without the round trip
    h1 = model.fit(X, y, batch_size=64, epochs=1, verbose=0, shuffle=False).history["loss"]
    h2 = again.fit(X, y, batch_size=64, epochs=1, verbose=0, shuffle=False).history["loss"]
    assert h1 == h2


@pytest.mark.parametrize("kw, err, word", [
    (dict(numerics="torch"), ValueError, "numerics"),
    (dict(numerics=None), ValueError, "numerics"),
    (dict(beta_1=1.0), ValueError, "beta_1"),
    (dict(beta_2=-0.1), ValueError, "beta_2"),
    (dict(beta_1="0.9"), TypeError, "beta_1"),
    (dict(beta_2=True), TypeError, "beta_2"),
    (dict(epsilon=-1e-7), ValueError, "epsilon"),
    (dict(epsilon=float("nan")), ValueError, "epsilon"),
    (dict(amsgrad=1), TypeError, "amsgrad"),
    (dict(row_bias_correction=True), ValueError, "row_bias_correction"),
    (dict(learning_rate=-1e-3), ValueError, "learning_rate` must be finite and >= 0, got -0.001"),   # (Keras takes them)
    (dict(learning_rate=float("nan")), ValueError, "learning_rate` must be finite"),
    (dict(learning_rate=np.float32("inf")), ValueError, "learning_rate` must be finite"),
    (dict(learning_rate=True), TypeError, "learning_rate"),
])
def test_bad_arguments(kw, err, word):
    with pytest.raises(err, match=word):
        LazyAdam(**kw)


def test_rates_keras_reads_are_taken():
    "0, a schedule and a callable are learning rates as Keras takes them."
    sched = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    for lr in (0.0, 0.5, sched, lambda: 0.01):
        o = LazyAdam(learning_rate=lr)
        if not callable(lr): assert float(keras.ops.convert_to_numpy(o.learning_rate)) == float(lr)


# ---------------------------------------------------------------------------------------------- the TensorFlow backend
_TF_SCRIPT = r"""
import json, sys
import numpy as np
import keras, tensorflow as tf
assert keras.backend.backend() == "tensorflow", keras.backend.backend()
from adam_lit.keras import LazyAdam
cases, data, out = json.load(open(sys.argv[1])), dict(np.load(sys.argv[2])), {}
for k, case in enumerate(cases):
    for mode in ("eager", "graph", "xla"):
        x = keras.Variable(data[f"{k}/init"], name="embeddings")
        opt = LazyAdam(**case["opts"])
        opt.build([x])
        apply = opt.apply if mode == "eager" else tf.function(lambda gs, xs: opt.apply(gs, [x]), jit_compile=mode == "xla")
        for c in range(case["calls"]):
            idx, vals = data[f"{k}/idx/{c}"], data[f"{k}/vals/{c}"]
            g = tf.IndexedSlices(tf.constant(vals), tf.constant(idx), tf.constant(x.shape, tf.int64))
            apply([g], [x])
        out[f"{k}/{mode}/var"] = keras.ops.convert_to_numpy(x)
        for j, v in enumerate(opt.variables[2:]):          # (iteration and learning_rate first)
            out[f"{k}/{mode}/slot/{j}"] = keras.ops.convert_to_numpy(v)
np.savez(sys.argv[3], **out)
"""


def _run_tensorflow(script, *args):
    "Runs `script` with Keras on TensorFlow (CPU) in a subprocess; its stdout. Skips without TensorFlow."
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec("tensorflow") is None:
        need("tensorflow", "pip install -e .[oracle-tf]")       # fails under ADAM_LIT_REQUIRE_ORACLES=1
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run.stdout


TF_OPTIONS = [dict(numerics="legacy"), dict(numerics="keras"), dict(numerics="legacy", amsgrad=True),
              dict(numerics="keras", amsgrad=True), dict(numerics="keras", weight_decay=0.01),
              dict(numerics="legacy", beta_1=0.5, beta_2=0.9, epsilon=1e-3, learning_rate=0.05),
              dict(numerics="keras", learning_rate=0.1, weight_decay=0.1, amsgrad=True)]


def tf_case(k, opts):
    rng = np.random.default_rng(100 + k)
    rows, cols = int(rng.integers(4, 30)), int(rng.integers(1, 5))
    data = {f"{k}/init": np.asarray(rng.standard_normal((rows, cols)), np.float32)}
    calls = 5
    for c in range(calls):
        n = int(rng.integers(1, 2 * rows))                       # repeats likely
        data[f"{k}/idx/{c}"] = rng.integers(0, rows, n).astype(rng.choice([np.int32, np.int64]))
        data[f"{k}/vals/{c}"] = np.asarray(rng.standard_normal((n, cols)) * 10 ** rng.uniform(-4, 2), np.float32)
    return dict(opts=dict(learning_rate=0.01) | opts, calls=calls), data


def test_tensorflow_indexed_slices_equal_adam_lit(tmp_path):
    """Keras on TensorFlow, `tf.IndexedSlices` with repeated rows, float32: variable and every slot equal to adam_lit's
    LazyAdam fed the same `IndexedSlices` on NumPy, bit for bit, eagerly and in a `tf.function` (without weight decay;
    `model.fit` runs one), and within 2 ulps under XLA. With `numerics="legacy"` that is TF Addons' LazyAdam (adam_lit's
    legacy numerics are pinned to its recorded numbers, and so is the next test)."""
    cases, data = [], {}
    for k, opts in enumerate(TF_OPTIONS):
        case, d = tf_case(k, opts)
        cases.append(case); data.update(d)
    np.savez(tmp_path / "data.npz", **data)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    _run_tensorflow(_TF_SCRIPT, tmp_path / "cases.json", tmp_path / "data.npz", tmp_path / "out.npz")
    out = np.load(tmp_path / "out.npz")
    for k, case in enumerate(cases):
        x = data[f"{k}/init"].copy()
        aopt = numpy_lazy(**case["opts"])
        aopt.build([x], names=["embeddings"])
        touched = np.zeros(len(x), bool)
        for c in range(case["calls"]):
            idx = data[f"{k}/idx/{c}"]; touched[idx] = True
            np_apply(aopt, [IndexedSlices(data[f"{k}/vals/{c}"].copy(), idx.copy(), x.shape)], [x])
        slots = ["m", "v"] + (["vhat"] if case["opts"].get("amsgrad") else [])
        # eagerly, and in a graph unless with weight decay: Grappler's arithmetic optimizer may regroup the chain
        # `(x * weight_decay) * lr` of a graph (as it does Keras's own weight decay), an ulp away from the eager result
        exact = ("eager",) if case["opts"].get("weight_decay") else ("eager", "graph")
        for mode in exact:
            where = f"{case['opts']} ({mode})"
            assert np.array_equal(out[f"{k}/{mode}/var"], x), where
            for j, s in enumerate(slots):
                assert np.array_equal(out[f"{k}/{mode}/slot/{j}"], aopt.get_slot(x, s)), f"{s}: {where}"
        # XLA (`jit_compile=True`) compiles its own arithmetic (fusions, `x / c` as `x * (1 / c)`), so it is a few
        # roundings away from the eager result after 5 steps (measured: up to 2 ulps, more on an element near 0 after
        # weight decay); a bound, not a bit claim. The graph with weight decay likewise.
        for mode in ("graph", "xla"):
            np.testing.assert_allclose(out[f"{k}/{mode}/var"], x, rtol=1e-6, atol=1e-7, err_msg=f"{case['opts']} ({mode})")
        # lazy: rows never touched are their initial values
        assert np.array_equal(out[f"{k}/eager/var"][~touched], data[f"{k}/init"][~touched])


_TF_TABLE = r"""
import numpy as np, keras, tensorflow as tf
from adam_lit.keras import LazyAdam
E = keras.Variable(np.array([[1, 2], [3, 4], [5, 6], [7, 8]], np.float32))
opt = LazyAdam(learning_rate=1e-3, numerics="legacy")
steps = [([0, 2, 2], [[0.1, 0.2], [0.3, -0.4], [0.05, 0.1]]), ([1], [[0.5, -0.5]]), ([0, 3], [[0.2, 0.2], [-0.1, 0.3]])]
for idx, vals in steps:
    opt.apply([tf.IndexedSlices(tf.constant(vals, tf.float32), tf.constant(idx), tf.constant([4, 2], tf.int64))], [E])
    print(" ".join(f"{v:.8g}" for v in keras.ops.convert_to_numpy(E).ravel()))
print(" ".join(f"{v:.8g}" for v in keras.ops.convert_to_numpy(opt._momentums[0]).ravel()))
before = [keras.ops.convert_to_numpy(v).copy() for v in [E] + opt.variables]
try:
    opt.apply([tf.IndexedSlices(tf.constant([[1.0, 1.0], [1.0, 1.0]]), tf.constant([1, 4]), tf.constant([4, 2], tf.int64))], [E])
    print("no error")
except tf.errors.InvalidArgumentError as e:
    print("unchanged after a bad row index:", all(np.array_equal(a, keras.ops.convert_to_numpy(b)) for a, b in zip(before, [E] + opt.variables)))
"""


def test_tensorflow_reproduces_tf_addons_table():
    """TF Addons' LazyAdam (0.23, on tf.keras 2.21), float32, lr=1e-3: the embedding after each of 3 sparse steps (a
    repeated row in step 1) and `m` after step 3, as recorded from it (8 significant digits). Then a bad row index."""
    lines = _run_tensorflow(_TF_TABLE).strip().splitlines()[-5:]
    # a row index out of range: TensorFlow's error, raised before anything (table, moments, step count) is written
    assert lines.pop() == "unchanged after a bad row index: True"
    assert lines[0].split() == "0.99900001 1.9990001 3 4 4.9990001 6.0009999 7 8".split()
    assert lines[1].split() == "0.99900001 1.9990001 2.9992559 4.0007443 4.9990001 6.0009999 7 8".split()
    assert lines[2].split() == "0.99817145 1.9981416 2.9992559 4.0007443 4.9990001 6.0009999 7.000639 7.999361".split()
    assert lines[3].split() == ("0.029000007 0.03800001 0.050000012 -0.050000012 0.035000011 -0.030000009 "
                                "-0.010000003 0.030000009").split()


_TF_DENSE_AND_FIT = r"""
import sys, numpy as np, keras, tensorflow as tf
from adam_lit.keras import LazyAdam
d = dict(np.load(sys.argv[1])); out = {}
for name, opt in [("lazy", LazyAdam(learning_rate=0.01, weight_decay=0.01)),
                  ("adam", keras.optimizers.Adam(learning_rate=0.01, weight_decay=0.01))]:
    xs = [keras.Variable(d["init0"]), keras.Variable(d["init1"])]
    for c in range(4): opt.apply([tf.constant(d[f"g0/{c}"]), tf.constant(d[f"g1/{c}"])], xs)
    for i, x in enumerate(xs): out[f"{name}/{i}"] = keras.ops.convert_to_numpy(x)
def run(cls, dtype, **kw):      # float64 and float16 too: every variable and optimizer variable
    xs = [keras.Variable(d["init0"].astype(dtype), dtype=dtype), keras.Variable(d["init1"].astype(dtype), dtype=dtype)]
    opt = cls(**kw)
    for c in range(4): opt.apply([tf.constant(d[f"g0/{c}"].astype(dtype)), tf.constant(d[f"g1/{c}"].astype(dtype))], xs)
    return [keras.ops.convert_to_numpy(v) for v in xs + list(opt.variables)]
for dtype in ("float64", "float16"):
    for kw in (dict(learning_rate=0.01), dict(learning_rate=0.01, amsgrad=True, weight_decay=0.1)):
        for j, (a, b) in enumerate(zip(run(LazyAdam, dtype, **kw), run(keras.optimizers.Adam, dtype, **kw))):
            assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), (dtype, kw, j)
keras.utils.set_random_seed(1)
model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(300, 8),
                          keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
seen = []
import adam_lit.keras as ak
rows = ak._tf_rows
ak._tf_rows = lambda *a: (seen.append(1), rows(*a))[1]
model.compile(optimizer=LazyAdam(learning_rate=0.01), loss="mse")
E0 = keras.ops.convert_to_numpy(model.layers[0].embeddings)
out["loss"] = np.array(model.fit(d["X"], d["y"], batch_size=64, epochs=4, verbose=0).history["loss"])
out["E0"], out["E"] = E0, keras.ops.convert_to_numpy(model.layers[0].embeddings)
out["row_steps_traced"] = np.array(len(seen))
np.savez(sys.argv[2], **out)
"""


def test_tensorflow_dense_gradients_and_fit(tmp_path):
    """On TensorFlow: dense gradients get `keras.optimizers.Adam`'s step (with weight decay; float32, float64 and float16,
    AMSGrad too), bit for bit; `model.fit` on
    an embedding model sends `tf.IndexedSlices` to the row update, the loss falls and rows the data never reads keep
    their initial values (Keras's Adam moves none of them either while their moments are zero; what differs is rows
    read earlier and not in the current batch)."""
    inits, calls = dense_case(7, shapes=((5, 3), (4,)))
    X, y = embedding_data()
    d = {"init0": inits[0], "init1": inits[1], "X": X, "y": y}
    d.update({f"g{i}/{c}": g for c, gs in enumerate(calls[:4]) for i, g in enumerate(gs)})
    np.savez(tmp_path / "d.npz", **d)
    _run_tensorflow(_TF_DENSE_AND_FIT, tmp_path / "d.npz", tmp_path / "out.npz")
    out = np.load(tmp_path / "out.npz")
    for i in range(2):
        assert np.array_equal(out[f"lazy/{i}"], out[f"adam/{i}"]), i
    aopt, av = numpy_lazy(learning_rate=0.01, weight_decay=0.01), [x.copy() for x in inits]
    for gs in calls[:4]: np_apply(aopt, [g.copy() for g in gs], av)
    assert all(np.array_equal(out[f"lazy/{i}"], av[i]) for i in range(2))
    loss = out["loss"]
    assert loss[-1] < loss[0] / 2, loss
    assert int(out["row_steps_traced"]) >= 1
    assert np.array_equal(out["E"][150:], out["E0"][150:])      # never read: untouched
    assert not np.array_equal(out["E"][:150], out["E0"][:150])


_TORCH_SCRIPT = r"""
import sys, warnings, numpy as np, keras, torch
assert keras.backend.backend() == "torch", keras.backend.backend()
from adam_lit.keras import LazyAdam
d = dict(np.load(sys.argv[1])); out = {}
OPTIONS = [dict(), dict(amsgrad=True), dict(weight_decay=0.01), dict(beta_1=0.5, beta_2=0.9, epsilon=1e-3),
           dict(amsgrad=True, weight_decay=0.1, learning_rate=0.05),
           dict(learning_rate=keras.optimizers.schedules.ExponentialDecay(0.01, 2, 0.7), clipnorm=0.5, use_ema=True)]
def run(cls, dtype, grads=None, **kw):
    xs = [keras.Variable(d["init0"], dtype=dtype), keras.Variable(d["init1"], dtype=dtype)]
    t = lambda a: torch.as_tensor(a).to(getattr(torch, grads or dtype))
    opt = cls(**kw)
    for c in range(4): opt.apply([t(d[f"g0/{c}"]), t(d[f"g1/{c}"])], xs)
    return [keras.ops.convert_to_numpy(keras.ops.cast(v, "float32") if dtype == "bfloat16" else v) for v in xs + list(opt.variables)]
a, b = run(LazyAdam, "float32", "float16"), run(keras.optimizers.Adam, "float32", "float16")   # float16 gradients
for j, (x, y) in enumerate(zip(a, b)): assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), ("float16 grads", j)
for dtype in ("float32", "float64", "float16", "bfloat16"):
    for k, kw in enumerate(OPTIONS):
        a, b = run(LazyAdam, dtype, **kw), run(keras.optimizers.Adam, dtype, **kw)
        for j, (x, y) in enumerate(zip(a, b)): assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), (dtype, k, j)
for i, x in enumerate(run(LazyAdam, "float64", learning_rate=0.01, weight_decay=0.01, amsgrad=True, numerics="legacy")[:2]):
    out[f"legacy64/{i}"] = x
def fit(optimizer):
    keras.utils.set_random_seed(1)
    model = keras.Sequential([keras.Input((6,), dtype="int32"), keras.layers.Embedding(300, 8),
                              keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(1)])
    model.compile(optimizer=optimizer, loss="mse")
    return np.array(model.fit(d["X"], d["y"], batch_size=64, epochs=4, verbose=0).history["loss"])
out["loss"], out["adam_loss"] = fit(LazyAdam(learning_rate=0.01)), fit(keras.optimizers.Adam(learning_rate=0.01))
np.savez(sys.argv[2], **out)
"""


def test_torch_backend(tmp_path):
    """Keras on PyTorch (a subprocess with KERAS_BACKEND=torch): dense gradients give `keras.optimizers.Adam`'s bits
    (Keras's own PyTorch arithmetic, torch_adam.Adam, its `_foreach_` operations) for six option sets, in float32,
    float64, float16 and bfloat16, and float16 gradients of float32 variables, every variable and
    optimizer variable; with numerics "legacy", adam_lit's LazyAdam on NumPy in float64 (no constant rounded through
    float32); `model.fit` of the embedding model: Adam's losses, lowered."""
    import importlib.util
    import subprocess
    import sys
    if importlib.util.find_spec("torch") is None: need("torch", "Keras's PyTorch backend")
    inits, calls = dense_case(8, shapes=((5, 3), (4,)))
    X, y = embedding_data()
    d = {"init0": inits[0], "init1": inits[1], "X": X, "y": y}
    d.update({f"g{i}/{c}": g for c, gs in enumerate(calls[:4]) for i, g in enumerate(gs)})
    np.savez(tmp_path / "d.npz", **d)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, KERAS_BACKEND="torch", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", _TORCH_SCRIPT, str(tmp_path / "d.npz"), str(tmp_path / "out.npz")],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    aopt = numpy_lazy(learning_rate=0.01, weight_decay=0.01, amsgrad=True, numerics="legacy")
    av = [x.astype(np.float64) for x in inits]
    for gs in calls[:4]: np_apply(aopt, [g.astype(np.float64) for g in gs], av)
    assert all(out[f"legacy64/{i}"].tobytes() == av[i].tobytes() for i in range(2))
    assert out["loss"].tobytes() == out["adam_loss"].tobytes() and out["loss"][-1] < out["loss"][0], out["loss"]


def test_default_names_are_unique_as_keras_optimizers():
    "name=None, as Keras's optimizers: `lazy_adam`, `lazy_adam_1`, ...; two optimizers' variables have distinct paths."
    a, b = LazyAdam(), LazyAdam()
    assert a.name != b.name and a.name.startswith("lazy_adam") and b.name.startswith("lazy_adam")
    a.build([keras.Variable(np.zeros(2, np.float32))]); b.build([keras.Variable(np.zeros(2, np.float32))])
    assert not {v.path for v in a.variables} & {v.path for v in b.variables}
    assert LazyAdam(name="LazyAdam").name == "LazyAdam"
