"""Record reference trajectories from the REAL legacy tf.keras Adam (OptimizerV2) and TF Addons LazyAdam.

Writes `tests/data/legacy_reference.json`, which `tests/test_legacy_reference.py` replays with adam_lit
(plain NumPy, no TensorFlow needed there). This script is not part of the package or its tests: it runs only
in a TensorFlow environment, for example

    cd /path/to/adam_lit
    TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=3 /tmp/tfvenv/bin/python tools/legacy_reference.py [out.json]

Versions it was written for (SPEC section 0): tensorflow-cpu 2.21.0 and tf-keras 2.21.0
(`tf_keras.optimizers.legacy.Adam`), and the unmodified `tensorflow_addons/optimizers/lazy_adam.py` of
tensorflow-addons 0.23.0. TFA 0.23's package cannot be imported on TF 2.21 (its `utils/types.py` imports
`keras.src.engine`), so that single file is executed with importlib, with stand-ins for the two things it
imports besides TensorFlow: `tensorflow_addons.utils.types.FloatTensorLike` (the same Union as in TFA) and,
when typeguard is not installed, `typeguard.typechecked` as an identity decorator. Its base class is then
`tf.keras.optimizers.legacy.Adam`, i.e. tf_keras's legacy Adam: exactly the class TFA 0.23 selects (checked
below). Set `TFA_LAZY_ADAM` to point at another copy of the file.

JSON format: see `FORMAT` below (also written into the file).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path
from typing import Union

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "legacy_reference.json"
LAZY_ADAM_FILE = Path(os.environ.get("TFA_LAZY_ADAM", "/tmp/tfa_src/tensorflow_addons/optimizers/lazy_adam.py"))

FORMAT = """\
Top level: {"format", "generator", "versions", "notes", "cases"}.
Each case:
  name         unique identifier
  description  what the case exercises
  optimizer    "Adam" (tf_keras.optimizers.legacy.Adam) or "LazyAdam" (tensorflow_addons 0.23 LazyAdam)
  kwargs       constructor keyword arguments as passed to TF (learning_rate, lr, beta_1, beta_2, epsilon,
               amsgrad, decay, clipnorm, clipvalue, global_clipnorm); a schedule is written as
               {"class_name": "ExponentialDecay", "config": {initial_learning_rate, decay_steps, decay_rate,
               staircase}} (tf_keras.optimizers.schedules.ExponentialDecay(**config), Keras signature)
  dtype        "float32" or "float64": dtype of every variable, gradient and slot
  variables    [{"name", "shape", "initial"}]: initial values as nested lists (a bare number for shape [])
  steps        one entry per apply_gradients call: a list with one gradient per variable, in variable
               order, each {"dense": nested list} or {"indices": [int], "values": nested list,
               "dense_shape": [int]} (a tf.IndexedSlices; indices may repeat, be unsorted or be empty), or
               null (no gradient for that variable in that call)
  after        one entry per step, recorded right after that apply_gradients call:
               {"iterations": int, "variables": [nested list per variable],
                "slots": [{"m": ..., "v": ...[, "vhat": ...]} per variable]}
               (slots read with opt.get_slot(var, name))
  config       opt.get_config() after the last step (NumPy scalars converted to float; a schedule as
               tf_keras serialises it)
  iterations   int(opt.iterations) after the last step
All numbers are exact: inputs were rounded to `dtype` before being given to TF, and every float is the
Python float of a float32/float64 value, so np.asarray(x, dtype) recovers the bits exactly.
"""


# ---------------------------------------------------------------------------------------------- LazyAdam
def load_lazy_adam(path: Path = LAZY_ADAM_FILE):
    "Execute TFA 0.23's unmodified lazy_adam.py on top of tf_keras's legacy Adam; return the LazyAdam class."
    source = path.read_bytes()
    FloatTensorLike = Union[tf.Tensor, float, np.float16, np.float32, np.float64]   # as in TFA's utils/types.py
    stand_ins = {}
    for name in ("tensorflow_addons", "tensorflow_addons.utils", "tensorflow_addons.optimizers"):
        mod = types.ModuleType(name)
        mod.__path__ = []
        stand_ins[name] = mod
    tmod = types.ModuleType("tensorflow_addons.utils.types")
    tmod.FloatTensorLike = FloatTensorLike
    stand_ins["tensorflow_addons.utils.types"] = tmod
    try:
        import typeguard  # noqa: F401
        typeguard_note = f"typeguard {getattr(typeguard, '__version__', '?')}"
    except ImportError:
        tg = types.ModuleType("typeguard")
        tg.typechecked = lambda f: f
        stand_ins["typeguard"] = tg
        typeguard_note = "typeguard stand-in (identity decorator)"
    for name, mod in stand_ins.items():
        sys.modules.setdefault(name, mod)
    spec = importlib.util.spec_from_file_location("tensorflow_addons.optimizers.lazy_adam", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    base = module.adam_optimizer_class
    assert base is tf_keras.optimizers.legacy.Adam, f"LazyAdam's base is {base}, not tf_keras's legacy Adam"
    assert issubclass(module.LazyAdam, tf_keras.optimizers.legacy.Adam)
    return module.LazyAdam, {"lazy_adam.py": str(path), "lazy_adam.py sha256": hashlib.sha256(source).hexdigest(),
                             "typeguard": typeguard_note}


# ---------------------------------------------------------------------------------------------- case builders
def D(values):
    "A dense gradient."
    return ("dense", np.asarray(values, dtype=np.float64))


def S(indices, values, dense_shape):
    "An IndexedSlices gradient."
    values = np.asarray(values, dtype=np.float64).reshape((len(indices),) + tuple(dense_shape[1:]))
    return ("sparse", list(map(int, indices)), values, list(map(int, dense_shape)))


class Case:
    def __init__(self, name, optimizer, kwargs, dtype, variables, steps, description):
        self.name, self.optimizer, self.kwargs, self.dtype = name, optimizer, dict(kwargs), dtype
        self.variables = [(n, np.asarray(v, dtype=np.float64)) for n, v in variables]
        self.steps, self.description = steps, description


def schedule(initial_learning_rate, decay_steps, decay_rate, staircase=False):
    return {"class_name": "ExponentialDecay",
            "config": dict(initial_learning_rate=initial_learning_rate, decay_steps=decay_steps,
                           decay_rate=decay_rate, staircase=staircase)}


SPEC55_VARS = [("a", [1.0, 2.0, 3.0]), ("b", [[-1.0], [0.5]])]
SPEC55_GRADS = [D([0.1, -0.2, 0.3]), D([[0.5], [-0.05]])]
SPEC56_E = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0], [7.0, 8.0]]
SPEC56_SPARSE = [[S([0, 2, 2], [[0.1, 0.2], [0.3, -0.4], [0.05, 0.1]], [4, 2])],
                 [S([1], [[0.5, -0.5]], [4, 2])],
                 [S([0, 3], [[0.2, 0.2], [-0.1, 0.3]], [4, 2])]]


def densify(g, dtype=np.float32):
    "The dense equivalent of a sparse step entry: duplicates summed in `dtype`, in order of appearance (as TF does)."
    _, idx, vals, shape = g
    out = np.zeros(shape, dtype=dtype)
    for i, row in zip(idx, np.asarray(vals, dtype=dtype)):
        out[i] += row
    return D(out)


def spec_cases():
    "SPEC 5.5 (legacy Adam, dense, float32) and 5.6 (sparse: legacy Adam vs LazyAdam), exactly as specified."
    out = []
    s55 = [("default", {}), ("amsgrad", {"amsgrad": True}), ("lr_alias", {"lr": 0.1}),
           ("lr_decay", {"lr": 0.1, "decay": 0.5}), ("clipnorm", {"clipnorm": 0.1}),
           ("clipvalue_clipnorm", {"clipvalue": 0.15, "clipnorm": 0.1}), ("global_clipnorm", {"global_clipnorm": 0.1})]
    for tag, kw in s55:
        out.append(Case(f"spec55_{tag}", "Adam", kw, "float32", SPEC55_VARS, [SPEC55_GRADS] * 3,
                        f"SPEC 5.5 row '{tag}': a=[1,2,3], b=[[-1],[0.5]], constant gradients, 3 calls"))
    dense56 = [[densify(s[0])] for s in SPEC56_SPARSE]
    e = [("E", SPEC56_E)]
    out += [Case("spec56_adam_sparse", "Adam", {}, "float32", e, SPEC56_SPARSE,
                 "SPEC 5.6: legacy Adam, IndexedSlices (row 2 duplicated at step 1, absent rows)"),
            Case("spec56_adam_dense", "Adam", {}, "float32", e, dense56,
                 "SPEC 5.6: legacy Adam, the same gradients densified (SPEC: bit-identical to the sparse run)"),
            Case("spec56_lazy_sparse", "LazyAdam", {}, "float32", e, SPEC56_SPARSE,
                 "SPEC 5.6: LazyAdam, IndexedSlices"),
            Case("spec56_lazy_dense", "LazyAdam", {}, "float32", e, dense56,
                 "SPEC 5.6: LazyAdam with the densified gradients (SPEC: = legacy dense exactly)"),
            Case("spec56_lazy_sparse_amsgrad", "LazyAdam", {"amsgrad": True}, "float32", e, SPEC56_SPARSE,
                 "SPEC 4/5.6: LazyAdam amsgrad=True, sparse path ignores vhat (same x as without amsgrad)")]
    return out


# Sparse patterns for a 6x3 embedding table: duplicates, unsorted, absent rows, explicit zero rows, an empty
# step. `zero` lists positions (in the indices list) whose value row is set to exactly 0.
EMB_PATTERN = [
    ([0, 2, 2, 5], []),          # row 2 duplicated; rows 1, 3, 4 absent
    ([4, 1], []),
    ([3, 0, 3, 3], [2]),         # row 3 three times, one of them an explicit zero row
    ([5, 2], [0]),               # row 5 listed with an explicit zero value row
    ([1, 4, 1], []),
    ([], []),                    # an empty IndexedSlices: no rows at all
    ([2, 0, 5, 2], []),
]

# The same without duplicate indices (Keras 3 treats duplicates differently, SPEC 2.11, so the Keras-numerics
# comparison in the tests skips Adam cases that have them).
UNIQUE_PATTERN = [([5, 0, 2], []), ([4, 1], [1]), ([3], []), ([], []), ([2, 5, 0], [2]), ([1, 3, 4], [])]


def rnd_dense(rng, shape, scale=1.0):
    return D(rng.normal(size=shape) * scale)


def rnd_sparse(rng, indices, zero_positions, shape, scale=1.0):
    vals = rng.normal(size=(len(indices),) + tuple(shape[1:])) * scale
    for p in zero_positions:
        vals[p] = 0.0
    return S(indices, vals, shape)


def emb_steps(rng, n, scale=1.0, shape=(6, 3), pattern=EMB_PATTERN):
    return [rnd_sparse(rng, *pattern[k % len(pattern)], shape, scale) for k in range(n)]


DENSE_SHAPES = [("vec", (5,)), ("mat", (2, 3)), ("scalar", ())]


def dense_vars(rng, shapes=DENSE_SHAPES):
    return [(n, rng.normal(size=s)) for n, s in shapes]


def dense_steps(rng, n, shapes=DENSE_SHAPES, scale=1.0):
    return [[rnd_dense(rng, s, scale) for _, s in shapes] for _ in range(n)]


def random_cases():
    out = []
    add = lambda *a: out.append(Case(*a))
    seed = iter(range(1000, 2000))
    R = lambda: np.random.default_rng(next(seed))

    # ---- dense legacy Adam, float32: vector (5,), matrix (2,3), 0-d scalar
    for name, kw, n, scale, desc in [
        ("dense_default", {}, 6, 1.0, "defaults"),
        ("dense_lr_alias", {"learning_rate": 0.5, "lr": 0.01}, 4, 1.0, "`lr` alias given with learning_rate: lr wins"),
        ("dense_decay", {"learning_rate": 0.01, "decay": 0.1}, 6, 1.0, "time-inverse decay lr/(1+decay*it)"),
        ("dense_epsilon0", {"epsilon": 0.0, "learning_rate": 0.01}, 4, 1.0,
         "epsilon=0 becomes 1e-7 in legacy (zero gradient entries at step 1 give no NaN)"),
        ("dense_epsilon_large", {"epsilon": 1.0, "learning_rate": 0.1}, 4, 1.0, "epsilon=1.0"),
        ("dense_betas", {"learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.99}, 6, 1.0, "non-default betas"),
        ("dense_clipnorm", {"clipnorm": 0.5, "learning_rate": 0.01}, 5, 1.0, "clipnorm per tensor (some clip, some not)"),
        ("dense_clipvalue", {"clipvalue": 0.3, "learning_rate": 0.01}, 5, 1.0, "clipvalue"),
        ("dense_global_clipnorm", {"global_clipnorm": 1.0, "learning_rate": 0.01}, 5, 1.0, "global_clipnorm"),
        ("dense_global_clipnorm_inactive", {"global_clipnorm": 100.0, "learning_rate": 0.01}, 3, 1.0,
         "global_clipnorm larger than the norm (scale c*(1/c) is still multiplied in)"),
        ("dense_clipvalue_clipnorm", {"clipvalue": 0.4, "clipnorm": 0.6, "learning_rate": 0.01}, 5, 1.0,
         "clipvalue then clipnorm (legacy only)"),
        ("dense_clipvalue_global_clipnorm", {"clipvalue": 0.4, "global_clipnorm": 0.8, "learning_rate": 0.01}, 5, 1.0,
         "clipvalue then global_clipnorm (legacy only)"),
        ("dense_schedule", {"learning_rate": schedule(0.01, 3, 0.5)}, 6, 1.0, "ExponentialDecay schedule"),
        ("dense_schedule_staircase_amsgrad", {"learning_rate": schedule(0.02, 2, 0.7, True), "amsgrad": True}, 6, 1.0,
         "staircase ExponentialDecay with amsgrad"),
        ("dense_schedule_decay", {"learning_rate": schedule(0.01, 2, 0.9), "decay": 0.25}, 5, 1.0,
         "schedule and decay together: schedule(it)/(1+decay*it)"),
        ("dense_large_grads", {}, 3, 1000.0, "large gradients: first step exactly lr in legacy float32"),
    ]:
        rng = R()
        steps = dense_steps(rng, n, scale=scale)
        if name == "dense_epsilon0":   # zero entries at step 1 and an all-zero step
            steps[0][0] = D(np.where(np.arange(5) % 2 == 0, 0.0, steps[0][0][1]))
            steps[0][2] = D(0.0)
            steps[2] = [D(np.zeros(s)) for _, s in DENSE_SHAPES]
        add(name, "Adam", kw, "float32", dense_vars(rng), steps, desc)

    rng = R()   # amsgrad with shrinking, sign-changing gradients so that vhat > v matters
    base = [rng.normal(size=s) for _, s in DENSE_SHAPES]
    steps = [[D(b * (0.3 ** k) * (-1) ** k) for b in base] for k in range(8)]
    add("dense_amsgrad_shrinking", "Adam", {"amsgrad": True, "learning_rate": 0.01}, "float32", dense_vars(rng), steps,
        "amsgrad with gradients shrinking by 0.3 per step (vhat > v from step 2)")

    rng = R()   # zero gradients after non-zero ones: keeps moving
    steps = dense_steps(rng, 2) + [[D(np.zeros(s)) for _, s in DENSE_SHAPES]] * 3
    add("dense_zero_after", "Adam", {}, "float32", dense_vars(rng), steps, "all-zero gradients after two steps")

    rng = R()   # a variable without a gradient in some calls (None), iterations still advance
    steps = dense_steps(rng, 5)
    steps[1][1] = None
    steps[3][0] = None
    steps[3][2] = None
    add("dense_none_grads", "Adam", {"learning_rate": 0.01}, "float32", dense_vars(rng), steps,
        "some variables get no gradient (None) in some calls; slots of all exist from step 1")

    # ---- sparse legacy Adam, float32: embedding (6,3) [+ dense vector]
    for name, kw, n, scale, desc in [
        ("sparse_default", {}, 7, 1.0, "duplicates, absent rows, explicit zero rows, empty slices"),
        ("sparse_amsgrad", {"amsgrad": True, "learning_rate": 0.01}, 7, 1.0, "sparse amsgrad, unique indices"),
        ("sparse_clipnorm", {"clipnorm": 0.8, "learning_rate": 0.01}, 6, 1.0,
         "clipnorm acts on the raw slices before duplicates are summed"),
        ("sparse_clipvalue", {"clipvalue": 0.5, "learning_rate": 0.01}, 6, 1.0,
         "clipvalue on raw slices: a summed duplicate row may exceed clipvalue"),
        ("sparse_clipvalue_clipnorm", {"clipvalue": 0.5, "clipnorm": 0.7, "learning_rate": 0.01}, 5, 1.0,
         "clipvalue then clipnorm on raw slices (legacy only)"),
        ("sparse_decay_schedule", {"learning_rate": schedule(0.05, 2, 0.6), "decay": 0.3}, 6, 1.0,
         "schedule and decay with sparse gradients, unique indices"),
        ("sparse_lr_alias_epsilon0", {"lr": 0.02, "epsilon": 0.0}, 6, 1.0, "lr alias, epsilon=0 -> 1e-7"),
    ]:
        rng = R()
        pattern = UNIQUE_PATTERN if "unique" in desc else EMB_PATTERN
        add(name, "Adam", kw, "float32", [("E", rng.normal(size=(6, 3)))],
            [[g] for g in emb_steps(rng, n, scale, pattern=pattern)], desc)

    rng = R()   # sparse embedding + dense vector together, global_clipnorm over both
    steps = [[g, rnd_dense(rng, (5,))] for g in emb_steps(rng, 6, pattern=UNIQUE_PATTERN)]
    add("sparse_mixed_global_clipnorm", "Adam", {"global_clipnorm": 1.5, "learning_rate": 0.01}, "float32",
        [("E", rng.normal(size=(6, 3))), ("vec", rng.normal(size=5))], steps,
        "global norm over sparse slices (unique indices) and a dense vector")

    rng = R()   # IndexedSlices on a 1-D variable
    pattern = [([0, 3, 3], []), ([6], []), ([1, 6, 2, 1], [1]), ([4], [0]), ([3, 0], [])]
    add("sparse_vector", "Adam", {"learning_rate": 0.01}, "float32", [("vec", rng.normal(size=7))],
        [[g] for g in emb_steps(rng, 5, shape=(7,), pattern=pattern)], "IndexedSlices on a vector (7,)")

    rng = R()   # same variable: sparse and dense gradients in alternate calls
    steps = [[g if k % 2 == 0 else rnd_dense(rng, (6, 3))] for k, g in enumerate(emb_steps(rng, 6))]
    add("sparse_dense_alternating", "Adam", {"learning_rate": 0.01}, "float32", [("E", rng.normal(size=(6, 3)))],
        steps, "one variable gets IndexedSlices and dense gradients in alternate calls")

    # ---- LazyAdam, float32
    for name, kw, n, scale, desc in [
        ("lazy_sparse_default", {}, 7, 1.0, "duplicates, absent rows (frozen), explicit zero rows (decayed), empty"),
        ("lazy_sparse_amsgrad", {"amsgrad": True, "learning_rate": 0.01}, 6, 1.0,
         "amsgrad accepted; the sparse path never touches vhat"),
        ("lazy_sparse_clipnorm", {"clipnorm": 0.8, "learning_rate": 0.01}, 6, 1.0, "clipnorm on raw slices"),
        ("lazy_sparse_clipvalue", {"clipvalue": 0.5, "learning_rate": 0.01}, 6, 1.0, "clipvalue on raw slices"),
        ("lazy_sparse_clipvalue_global_clipnorm", {"clipvalue": 0.5, "global_clipnorm": 0.9, "learning_rate": 0.01}, 5,
         1.0, "clipvalue then global_clipnorm (legacy only)"),
        ("lazy_sparse_decay", {"learning_rate": 0.02, "decay": 0.2}, 6, 1.0, "time-inverse decay"),
        ("lazy_sparse_schedule", {"learning_rate": schedule(0.02, 3, 0.5, True)}, 6, 1.0, "staircase schedule"),
        ("lazy_sparse_lr_alias_epsilon0", {"lr": 0.03, "epsilon": 0.0, "beta_1": 0.8, "beta_2": 0.95}, 6, 1.0,
         "lr alias, epsilon=0 -> 1e-7, non-default betas"),
        ("lazy_sparse_epsilon_none", {"epsilon": None, "learning_rate": 0.01}, 4, 1.0, "epsilon=None -> 1e-7"),
        ("lazy_sparse_large_grads", {"learning_rate": 0.001}, 6, 1000.0,
         "large gradients: rows first seen at step t move by ~lr*sqrt(1-b2^t)/(1-b1^t)*(1-b1)/sqrt(1-b2)"),
    ]:
        rng = R()
        add(name, "LazyAdam", kw, "float32", [("E", rng.normal(size=(6, 3)))],
            [[g] for g in emb_steps(rng, n, scale)], desc)

    rng = R()
    add("lazy_dense_amsgrad", "LazyAdam", {"amsgrad": True, "learning_rate": 0.01}, "float32", dense_vars(rng),
        [[D(b * (0.3 ** k) * (-1) ** k) for b in [rng.normal(size=s) for _, s in DENSE_SHAPES]] for k in range(6)],
        "LazyAdam, dense gradients: the parent's AMSGrad kernel")
    rng = R()
    add("lazy_dense_default", "LazyAdam", {}, "float32", dense_vars(rng), dense_steps(rng, 4),
        "LazyAdam, dense gradients (vector, matrix, 0-d): the parent's fused kernel")

    rng = R()   # mixed: sparse embedding + dense vector + dense scalar in the same calls
    steps = [[g, rnd_dense(rng, (5,)), rnd_dense(rng, ())] for g in emb_steps(rng, 6)]
    add("lazy_mixed_global_clipnorm", "LazyAdam", {"global_clipnorm": 1.2, "learning_rate": 0.01}, "float32",
        [("E", rng.normal(size=(6, 3))), ("vec", rng.normal(size=5)), ("scalar", rng.normal())], steps,
        "sparse and dense variables together, global_clipnorm")

    rng = R()
    steps = [[g if k % 2 == 0 else rnd_dense(rng, (6, 3))] for k, g in enumerate(emb_steps(rng, 6))]
    add("lazy_sparse_dense_alternating", "LazyAdam", {"learning_rate": 0.01}, "float32", [("E", rng.normal(size=(6, 3)))],
        steps, "LazyAdam: a dense call decays every row, a sparse call only the listed rows")

    rng = R()
    pattern = [([0, 3, 3], []), ([6], []), ([1, 6, 2, 1], [1]), ([4], [0]), ([3, 0], [])]
    add("lazy_sparse_vector", "LazyAdam", {"learning_rate": 0.01}, "float32", [("vec", rng.normal(size=7))],
        [[g] for g in emb_steps(rng, 5, shape=(7,), pattern=pattern)], "LazyAdam, IndexedSlices on a vector (7,)")

    # ---- float64 (hyperparameters pass through float32 variables in legacy)
    rng = R()
    add("f64_dense_default", "Adam", {}, "float64", dense_vars(rng), dense_steps(rng, 5),
        "float64: betas and lr float32-rounded, epsilon exact")
    rng = R()
    add("f64_dense_amsgrad_decay", "Adam", {"amsgrad": True, "learning_rate": 0.01, "decay": 0.1, "beta_1": 0.85},
        "float64", dense_vars(rng), [[D(b * (0.4 ** k) * (-1) ** k) for b in [rng.normal(size=s) for _, s in DENSE_SHAPES]]
                                     for k in range(6)], "float64 amsgrad + decay (decay float32-rounded)")
    rng = R()
    add("f64_dense_schedule_clipnorm", "Adam", {"learning_rate": schedule(0.01, 2, 0.5), "clipnorm": 0.7}, "float64",
        dense_vars(rng), dense_steps(rng, 5), "float64: the schedule is evaluated in float32, then cast")
    rng = R()
    add("f64_dense_global_clipnorm_clipvalue", "Adam", {"global_clipnorm": 0.9, "clipvalue": 0.5, "learning_rate": 0.01},
        "float64", dense_vars(rng), dense_steps(rng, 4), "float64 clipvalue + global_clipnorm")
    rng = R()
    add("f64_sparse_adam", "Adam", {"learning_rate": 0.01}, "float64", [("E", rng.normal(size=(6, 3)))],
        [[g] for g in emb_steps(rng, 7)], "float64 sparse legacy Adam")
    rng = R()
    add("f64_lazy_sparse", "LazyAdam", {"learning_rate": 0.01, "beta_2": 0.98}, "float64",
        [("E", rng.normal(size=(6, 3)))], [[g] for g in emb_steps(rng, 7)], "float64 LazyAdam sparse")
    rng = R()
    add("f64_lazy_dense", "LazyAdam", {"learning_rate": 0.01}, "float64", dense_vars(rng), dense_steps(rng, 4),
        "float64 LazyAdam dense")
    return out


# ---------------------------------------------------------------------------------------------- running TF
def to_list(a):
    "Exact float64 nested list (or a bare float for 0-d) of a float32/float64 array."
    return np.asarray(a).astype(np.float64).tolist()


def jsonable(obj):
    if isinstance(obj, dict): return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)): return [jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)): return bool(obj)
    if isinstance(obj, (np.integer,)): return int(obj)
    if isinstance(obj, (np.floating, float)): return float(obj)
    if isinstance(obj, tf.Tensor): return jsonable(obj.numpy())
    if isinstance(obj, np.ndarray): return jsonable(obj.tolist())
    return obj


def make_optimizer(case, LazyAdam):
    kw = dict(case.kwargs)
    lr = kw.get("learning_rate")
    if isinstance(lr, dict):
        assert lr["class_name"] == "ExponentialDecay"
        kw["learning_rate"] = tf_keras.optimizers.schedules.ExponentialDecay(**lr["config"])
    cls = {"Adam": tf_keras.optimizers.legacy.Adam, "LazyAdam": LazyAdam}[case.optimizer]
    return cls(**kw)


def run_case(case, LazyAdam):
    dt = np.dtype(case.dtype)
    opt = make_optimizer(case, LazyAdam)
    init = [np.asarray(v, dtype=dt) for _, v in case.variables]
    tvars = [tf.Variable(v, dtype=dt, name=n) for (n, _), v in zip(case.variables, init)]
    slot_names = ["m", "v"] + (["vhat"] if opt.amsgrad else [])
    steps_json, after = [], []
    for step in case.steps:
        grads, sj = [], []
        for g, (vn, v0) in zip(step, case.variables):
            if g is None:
                grads.append(None); sj.append(None)
            elif g[0] == "dense":
                arr = np.asarray(g[1], dtype=dt)
                assert arr.shape == v0.shape, (case.name, vn)
                grads.append(tf.constant(arr)); sj.append({"dense": to_list(arr)})
            else:
                _, idx, vals, shape = g
                arr = np.asarray(vals, dtype=dt)
                assert list(shape) == list(v0.shape), (case.name, vn)
                grads.append(tf.IndexedSlices(tf.constant(arr), tf.constant(np.asarray(idx, dtype=np.int64)),
                                              tf.constant(np.asarray(shape, dtype=np.int64))))
                sj.append({"indices": list(idx), "values": to_list(arr), "dense_shape": list(shape)})
        pairs = [(g, v) for g, v in zip(grads, tvars) if g is not None]
        opt.apply_gradients(pairs)
        steps_json.append(sj)
        after.append({"iterations": int(opt.iterations.numpy()),
                      "variables": [to_list(v.numpy()) for v in tvars],
                      "slots": [{s: to_list(opt.get_slot(v, s).numpy()) for s in slot_names} for v in tvars]})
    return {"name": case.name, "description": case.description, "optimizer": case.optimizer,
            "kwargs": jsonable(case.kwargs), "dtype": case.dtype,
            "variables": [{"name": n, "shape": list(v.shape), "initial": to_list(v)}
                          for (n, _), v in zip(case.variables, init)],
            "steps": steps_json, "after": after,
            "config": jsonable(opt.get_config()), "iterations": int(opt.iterations.numpy())}


def main(argv):
    out = Path(argv[1]) if len(argv) > 1 else OUT
    tf.config.set_visible_devices([], "GPU")
    LazyAdam, lazy_info = load_lazy_adam()
    cases = spec_cases() + random_cases()
    names = [c.name for c in cases]
    assert len(set(names)) == len(names), "duplicate case names"
    for c in cases:
        if any(g is None for g in c.steps[0]):
            raise ValueError(f"{c.name}: every variable needs a gradient at step 1 (slots are read after each step)")
    records = [run_case(c, LazyAdam) for c in cases]
    doc = {"format": FORMAT, "generator": "tools/legacy_reference.py",
           "versions": {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "numpy": np.__version__,
                        "python": sys.version.split()[0], "tensorflow_addons": "0.23.0 (lazy_adam.py only)", **lazy_info},
           "notes": ["Adam = tf_keras.optimizers.legacy.Adam; LazyAdam = TFA 0.23 lazy_adam.py on top of it.",
                     "Gradients are passed to opt.apply_gradients in variable order, None gradients left out.",
                     "Run eagerly on CPU.",
                     "clipnorm / global_clipnorm: TF sums the squares with Eigen's vectorised reduction (8 float32 or "
                     "4 float64 lanes on this AVX build): for n < 8 packets, lane j sums elements j, j+P, j+2P, ... of "
                     "the first P*floor(n/P) (P = lanes); the last n % P elements are summed left to right into s; "
                     "the result is s + tree(lanes), tree halving the lanes ((l0+l4)+(l2+l6))+((l1+l5)+(l3+l7)) for "
                     "P=8, (l0+l2)+(l1+l3) for P=4. tf.clip_by_global_norm sums per-tensor l2_loss (sum(x*x*0.5)) "
                     "in variable order, times 2, sqrt. For IndexedSlices the raw slice values are clipped, before "
                     "duplicate indices are summed.",
                     "Legacy sparse Adam (m*b1 then scatter-add g*c1; alpha=lr*(sqrt(1-p2)/(1-p1))) is "
                     "dense-equivalent in exact arithmetic but not bitwise: m, v and x may differ by ulps from the "
                     "fused dense kernel given the densified gradient."],
           "cases": records}
    out.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=None, separators=(",", ":"), allow_nan=False)
    out.write_text(text + "\n")
    print(f"wrote {len(records)} cases to {out} ({len(text) / 1e6:.2f} MB)")


if __name__ == "__main__":
    main(sys.argv)
