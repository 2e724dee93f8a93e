"""adam_lit against trajectories recorded from the REAL legacy tf.keras Adam and TF Addons LazyAdam.

`tests/data/legacy_reference.json` was written by `tools/legacy_reference.py` from
`tf_keras.optimizers.legacy.Adam` (tf-keras 2.21, TensorFlow 2.21) and TFA 0.23's `LazyAdam`; the file holds
the constructor arguments, the initial variables, every gradient (dense arrays or IndexedSlices, with
duplicate, absent, explicitly-zero and empty rows) and, after every `apply_gradients` call, the variables and
every slot (`m`, `v`, `vhat`). Nothing here needs TensorFlow: the cases are replayed with adam_lit on NumPy.

* `test_legacy_bit_exact`: `numerics="legacy"` must reproduce every variable and slot bit for bit after every
  step (SPEC 3 and 4).
* `test_keras_numerics_close`: the default `numerics="keras"` on the same cases stays within tolerances derived
  from the only differences SPEC names between the two numerics: the rounding of the constants (SPEC 1.2,
  3.4). Cases that depend on legacy-only behaviour are skipped, with the reason.

Failures name the case, the step, the array and the first mismatching index.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data" / "legacy_reference.json"
DOC = json.loads(DATA.read_text())
CASES = DOC["cases"]
IDS = [c["name"] for c in CASES]


# ---------------------------------------------------------------------------------------------- replay
def adam_lit_api():
    "The adam_lit names these tests use (imported here so that a missing name fails each test, not collection)."
    from adam_lit import Adam, IndexedSlices, LazyAdam, schedules
    return {"Adam": Adam, "LazyAdam": LazyAdam}, IndexedSlices, schedules


def make_optimizer(case, numerics):
    "The adam_lit optimizer for `case`; `numerics=None` leaves the default (Keras)."
    classes, _, schedules = adam_lit_api()
    kwargs = dict(case["kwargs"])
    lr = kwargs.get("learning_rate")
    if isinstance(lr, dict):
        assert lr["class_name"] == "ExponentialDecay", lr
        kwargs["learning_rate"] = schedules.ExponentialDecay(**lr["config"])
    cls = classes[case["optimizer"]]
    return cls(**kwargs) if numerics is None else cls(numerics=numerics, **kwargs)


def make_gradient(entry, dtype):
    "A NumPy array, an adam_lit IndexedSlices, or None, from one gradient entry of the JSON."
    if entry is None: return None
    if "dense" in entry: return np.array(entry["dense"], dtype=dtype)
    _, IndexedSlices, _ = adam_lit_api()
    shape = tuple(entry["dense_shape"])
    indices = np.array(entry["indices"], dtype=np.int64)
    values = np.array(entry["values"], dtype=dtype).reshape((len(indices),) + shape[1:])
    return IndexedSlices(values, indices, np.array(shape, dtype=np.int64))


def replay(case, numerics):
    "Run `case` with adam_lit; yield (step, optimizer, variables, recorded state) after every step."
    dtype = np.dtype(case["dtype"])
    variables = [np.array(v["initial"], dtype=dtype) for v in case["variables"]]   # writeable, 0-d included
    # the `lr` alias is deprecated and a None gradient is reported, as in tf.keras: expected here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opt = make_optimizer(case, numerics)
    for step, (grads, after) in enumerate(zip(case["steps"], case["after"]), start=1):
        grads = [make_gradient(g, dtype) for g in grads]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt.apply_gradients(zip(grads, variables))
        yield step, opt, variables, after


def arrays_after(case, opt, variables, after):
    "(label, adam_lit array, recorded array) for every variable and slot after one step."
    dtype = np.dtype(case["dtype"])
    for k, (var, spec) in enumerate(zip(variables, case["variables"])):
        name = f"variable {k} {spec['name']!r}"
        yield name, var, np.array(after["variables"][k], dtype=dtype)
        for slot, ref in after["slots"][k].items():
            yield f"slot {slot!r} of {name}", np.asarray(opt.get_slot(var, slot)), np.array(ref, dtype=dtype)


def where(case, step, label):
    return f"case {case['name']!r} ({case['optimizer']}, {case['dtype']}, {case['kwargs']}), step {step}, {label}"


def check_iterations(case, step, opt, after):
    assert int(opt.iterations) == after["iterations"], \
        f"{where(case, step, 'iterations')}: adam_lit {int(opt.iterations)}, TF {after['iterations']}"


# ---------------------------------------------------------------------------------------------- bit-exact
UINT = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def assert_bits_equal(got, ref, what):
    "Bit-identical arrays (so -0.0 differs from 0.0); otherwise report the first differing index."
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, TF {ref.shape}"
    assert got.dtype == ref.dtype, f"{what}: dtype {got.dtype}, TF {ref.dtype}"
    u = UINT[ref.dtype]
    bad = got.reshape(-1).view(u) != ref.reshape(-1).view(u)
    if bad.any():
        flat = int(np.argmax(bad))
        idx = tuple(int(i) for i in np.unravel_index(flat, ref.shape))
        g, r = got.reshape(-1)[flat], ref.reshape(-1)[flat]
        ulps = abs(int(g.view(u).astype(np.int64)) - int(r.view(u).astype(np.int64)))
        raise AssertionError(f"{what}: first mismatch at index {idx}: adam_lit {g!r}, TF {r!r} ({ulps} ulp); "
                             f"{int(bad.sum())} of {bad.size} elements differ")


# TensorFlow sums the squares of a clipping norm with Eigen's vectorised reduction (8 float32 lanes on this build,
# combined pairwise, the remainder added separately), NumPy with pairwise summation: the norm, and so the clipped
# gradient, can differ in the last bit (SPEC 1.4 expects this). Cases with `clipnorm` or `global_clipnorm` are
# therefore compared within NORM_ULPS ulps of each array's largest element; every other case must be bit-identical.
# Measured: 2 ulps at most over the 63 cases (sparse_clipnorm, sparse_clipvalue_clipnorm, lazy_mixed_global_clipnorm).
NORM_ULPS = 8


def uses_norm_clipping(case):
    return any(case["kwargs"].get(k) for k in ("clipnorm", "global_clipnorm"))


def assert_close_normwise(got, ref, what, ulps):
    "Within `ulps` ulps of max|ref| (a reduction-order difference feeds every element through the clipped gradient)."
    assert got.shape == ref.shape and got.dtype == ref.dtype, what
    scale = np.spacing(np.max(np.abs(ref)).astype(ref.dtype)) if ref.size else 0
    err = np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64))) if ref.size else 0.0
    assert err <= ulps * scale, f"{what}: max |diff| {err} > {ulps} ulps of max|TF| ({ulps * scale})"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_legacy_bit_exact(case):
    "numerics='legacy' reproduces tf.keras legacy Adam / TFA LazyAdam bit for bit, after every step."
    norm = uses_norm_clipping(case)
    for step, opt, variables, after in replay(case, "legacy"):
        for label, got, ref in arrays_after(case, opt, variables, after):
            if norm: assert_close_normwise(got, ref, where(case, step, label), NORM_ULPS)
            else: assert_bits_equal(got, ref, where(case, step, label))
        check_iterations(case, step, opt, after)


def test_norm_clipping_cases_are_mostly_bit_exact():
    "The tolerance above is needed by few cases: most norm-clipped cases still match bit for bit."
    exact = 0
    norm_cases = [c for c in CASES if uses_norm_clipping(c)]
    for case in norm_cases:
        try:
            for step, opt, variables, after in replay(case, "legacy"):
                for label, got, ref in arrays_after(case, opt, variables, after):
                    assert_bits_equal(got, ref, where(case, step, label))
            exact += 1
        except AssertionError:
            pass
    assert exact >= len(norm_cases) - 3, f"only {exact} of {len(norm_cases)} norm-clipped cases are bit-identical"


# ---------------------------------------------------------------------------------------------- Keras numerics
# Where the default (Keras 3) numerics and legacy differ (SPEC 1.2, 3.4), apart from rounding:
#  * `c1 = 1 - beta_1`: Keras rounds the double 1 - 0.9 (0.100000001), legacy computes 1 - fl32(0.9) in the
#    variable dtype (0.100000024): m differs by 2.4e-7 relative (same in float64, whose legacy betas are
#    float32-rounded).
#  * `c2 = 1 - beta_2`: 0.0010000000475 (Keras) vs 0.000999987 (legacy): v and vhat differ by 1.29e-5 relative;
#    the ratio does not grow with the steps since every term of v carries it.
#  * The step: Keras float32 steps are (sqrt(c2_legacy / c2_keras) ~ 0.9999936) times legacy's for large |g|,
#    i.e. 6.5e-6 relative (float64: both consistent, ~1e-7 relative from the float32-rounded hypers,
#    schedules evaluated in float32 and the float32 `decay`).
#  * clipping norms may be summed in another order: a few ulps in the gradient.
# Bounds after step k, per element (G = the largest |gradient| entry of that variable in steps 1..k, duplicate
# rows summed in absolute value; d_j = x_j - x_{j-1} from the TF run; ulp in the variable dtype):
#    m:        R_M * G + k * ULPS * ulp(G)            (m is a convex combination of past gradients)
#    v, vhat:  R_V * |v| + k * ULPS * ulp(v)          (positive sums: relative error)
#    variable: R_X * sum_j |d_j| + k * ULPS * ulp(max |x_k|)   (the step's error does not feed back)
# Measured with an independent NumPy model of both numerics on every case compared here, the worst error is
# 0.04 (m, float32), 0.09 (m, float64), 0.64 (v and vhat: the 1.29e-5 constant), 0.29 (variables, float32)
# and 0.003 (variables, float64) of these bounds.
R_M = 5e-7     # 2 x the c1 ratio 2.4e-7
R_V = 2e-5     # 1.5 x the c2 ratio 1.29e-5
R_X = 2e-5     # 3 x the step ratio 6.5e-6
ULPS = 4       # per step: one rounding in each of a few operations that may be ordered differently


def keras_skip_reason(case):
    "Why a case cannot be compared with the Keras numerics, or None."
    kw = case["kwargs"]
    if "epsilon" in kw and not kw["epsilon"]:
        return ("legacy-only: legacy turns epsilon=0/None into 1e-7 (SPEC 3.1); Keras keeps 0 (0/0 = NaN on zero "
                "gradients, SPEC 6), so the trajectories are not a rounding apart")
    if kw.get("clipvalue") is not None and (kw.get("clipnorm") is not None or kw.get("global_clipnorm") is not None):
        return "legacy-only: Keras accepts only one of clipnorm, clipvalue, global_clipnorm (SPEC 2.3, 3.4)"
    sparse = any(g is not None and "indices" in g for step in case["steps"] for g in step)
    if case["optimizer"] == "LazyAdam" and kw.get("amsgrad") and sparse:
        return ("legacy-only: TFA's LazyAdam accepts amsgrad=True but its sparse path never reads or writes vhat "
                "(SPEC 4), a TFA quirk rather than a rounding of the constants; the Keras numerics need not copy it")
    if case["optimizer"] == "Adam" and any(g is not None and "indices" in g and len(set(g["indices"])) < len(g["indices"])
                                           for step in case["steps"] for g in step):
        return ("duplicate sparse indices: Keras 3 (TF backend) feeds v the sum of the squared slices instead of the "
                "square of their sum (SPEC 2.11), a different rule, not a rounding of the constants")
    return None


def gradient_bounds(case, k):
    "Per variable: the largest |entry| of the (duplicate-summed, in absolute value) gradients of steps 1..k."
    out = []
    for i, var in enumerate(case["variables"]):
        shape, G = tuple(var["shape"]), 0.0
        for step in case["steps"][:k]:
            g = step[i]
            if g is None: continue
            if "dense" in g:
                G = max(G, float(np.max(np.abs(np.asarray(g["dense"], dtype=np.float64)), initial=0.0)))
            else:
                dense = np.zeros(shape)
                vals = np.abs(np.asarray(g["values"], dtype=np.float64)).reshape((len(g["indices"]),) + shape[1:])
                np.add.at(dense, np.asarray(g["indices"], dtype=np.int64), vals)
                G = max(G, float(np.max(dense, initial=0.0)))
        out.append(G)
    return out


def ulp(a, dtype):
    return np.spacing(np.abs(np.asarray(a, dtype=np.float64)).astype(dtype)).astype(np.float64)


def assert_close(got, ref, tol, what):
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, TF {ref.shape}"
    err = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    bad = ~(err <= tol)            # NaN fails too
    if bad.any():
        flat = int(np.argmax(bad.reshape(-1)))
        idx = tuple(int(i) for i in np.unravel_index(flat, ref.shape))
        raise AssertionError(f"{what}: first element out of tolerance at index {idx}: adam_lit (keras numerics) "
                             f"{got.reshape(-1)[flat]!r}, TF legacy {ref.reshape(-1)[flat]!r}, |diff| "
                             f"{err.reshape(-1)[flat]:.3g} > tol {np.broadcast_to(tol, ref.shape).reshape(-1)[flat]:.3g}; "
                             f"{int(bad.sum())} of {bad.size} elements out")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_keras_numerics_close(case):
    "The default Keras numerics stay within the constants' rounding of the legacy trajectory, step by step."
    reason = keras_skip_reason(case)
    if reason: pytest.skip(reason)
    dtype = np.dtype(case["dtype"])
    prev = [np.array(v["initial"], dtype=np.float64) for v in case["variables"]]
    path = [np.zeros_like(p) for p in prev]                 # sum_j |d_j| per element
    for step, opt, variables, after in replay(case, None):
        G = gradient_bounds(case, step)
        for i, var in enumerate(variables):
            name = f"variable {i} {case['variables'][i]['name']!r}"
            x_ref = np.array(after["variables"][i], dtype=dtype)
            path[i] = path[i] + np.abs(x_ref.astype(np.float64) - prev[i])
            prev[i] = x_ref.astype(np.float64)
            tol = R_X * path[i] + step * ULPS * ulp(np.max(np.abs(x_ref), initial=0.0), dtype)
            assert_close(np.asarray(var), x_ref, tol, where(case, step, name))
            for slot, ref in after["slots"][i].items():
                ref = np.array(ref, dtype=dtype)
                if slot == "m":
                    tol = R_M * G[i] + step * ULPS * ulp(G[i], dtype)
                else:
                    tol = R_V * np.abs(ref.astype(np.float64)) + step * ULPS * ulp(ref, dtype)
                assert_close(np.asarray(opt.get_slot(var, slot)), ref, tol, where(case, step, f"slot {slot!r} of {name}"))
        check_iterations(case, step, opt, after)


# ---------------------------------------------------------------------------------------------- the data itself
def test_reference_data_is_complete():
    "The JSON holds what the tests rely on (guards against a truncated or hand-edited file)."
    assert len(CASES) >= 40 and len(set(IDS)) == len(IDS)
    names = set(IDS)
    for spec in ("spec55_default", "spec55_amsgrad", "spec55_lr_alias", "spec55_lr_decay", "spec55_clipnorm",
                 "spec55_clipvalue_clipnorm", "spec55_global_clipnorm", "spec56_adam_sparse", "spec56_lazy_sparse"):
        assert spec in names, spec
    for c in CASES:
        assert c["optimizer"] in ("Adam", "LazyAdam") and c["dtype"] in ("float32", "float64"), c["name"]
        assert len(c["steps"]) == len(c["after"]) == c["iterations"], c["name"]
        for after in c["after"]:
            assert len(after["variables"]) == len(after["slots"]) == len(c["variables"]), c["name"]


def test_reference_reproduces_spec_tables():
    "SPEC 5.5 and 5.6 numbers (8 significant digits) are in the recorded data."
    C = {c["name"]: c for c in CASES}
    x = lambda name, step, i=0: np.asarray(C[name]["after"][step - 1]["variables"][i], dtype=np.float32).ravel()
    np.testing.assert_array_equal(x("spec55_default", 1), np.float32([0.99900001, 2.0009999, 2.9990001]))
    np.testing.assert_array_equal(x("spec55_default", 1, 1), np.float32([-1.001, 0.50099993]))
    np.testing.assert_array_equal(x("spec55_lr_decay", 3), np.float32([0.78333896, 2.2166638, 2.7833352]))
    np.testing.assert_array_equal(x("spec55_global_clipnorm", 3, 1), np.float32([-1.0029998, 0.50299907]))
    np.testing.assert_array_equal(x("spec56_adam_sparse", 3), np.float32(
        [0.99752706, 1.997512, 2.9986806, 4.0013194, 4.9978123, 6.0021877, 7.000639, 7.999361]))
    np.testing.assert_array_equal(x("spec56_lazy_sparse", 3), np.float32(
        [0.99817145, 1.9981416, 2.9992559, 4.0007443, 4.9990001, 6.0009999, 7.000639, 7.999361]))
