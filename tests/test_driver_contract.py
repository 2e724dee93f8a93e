"""The scipy-style driver's contract with scipy's users: `minimize(fun, x0, args=(), method=..., jac=...)` by position,
`maxiter=1e4`, a `history` that ends at the returned point, `plot_history` from `adam_lit` and on the result, and no
option in the lists that the driver cannot use (`communicator`, `shard_state`).

The checks that need scipy or matplotlib skip with the reason when it is missing (and fail when
ADAM_LIT_REQUIRE_ORACLES=1).
"""
import importlib.util
import inspect
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import adam_lit
from adam_lit import driver
from adam_lit.backend import ArgumentTypeError
from adam_lit.driver import minimize


def _need(module):
    if importlib.util.find_spec(module) is None:
        if os.environ.get("ADAM_LIT_REQUIRE_ORACLES") == "1":
            pytest.fail(f"{module} is required (ADAM_LIT_REQUIRE_ORACLES=1) but not installed")
        pytest.skip(f"{module} is not installed")
    return importlib.import_module(module)


C = np.array([1.0, -2.0, 0.5])

def sphere(x, c=C):
    d = x - c
    return 0.5 * float(d @ d), d


class Counted:
    "`fun` that counts its calls."
    def __init__(self, f=sphere): self.f, self.calls = f, 0
    def __call__(self, x, *a): self.calls += 1; return self.f(x, *a)

# ---------------------------------------------------------------------------------------------------------------
# The signature

def test_signature_follows_scipys_order():
    ours = list(inspect.signature(minimize).parameters.values())
    assert [p.name for p in ours[:5]] == ["fun", "x0", "args", "method", "jac"]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in ours[:5])
    assert all(p.kind is p.KEYWORD_ONLY for p in ours[5:])
    assert {p.name for p in ours[5:]} == {"options", "callback", "tol"}
    if importlib.util.find_spec("scipy") is not None:
        import scipy.optimize as so
        theirs = list(inspect.signature(so.minimize).parameters)
        assert theirs[:5] == ["fun", "x0", "args", "method", "jac"]      # scipy's own order, checked, not assumed


@pytest.mark.parametrize("method", ["adam", "AMSGrad", "lazyadam"])
def test_method_and_jac_by_position_equal_by_keyword(method):
    opts = dict(learning_rate=0.05, maxiter=40, gtol=None)
    by_position = minimize(sphere, np.zeros(3), (C,), method, True, options=opts)
    by_keyword = minimize(sphere, np.zeros(3), args=(C,), method=method, jac=True, options=opts)
    assert by_position.x.tobytes() == by_keyword.x.tobytes() and by_position.method == method.lower()
    separate = minimize(lambda x, c: sphere(x, c)[0], np.zeros(3), (C,), method, lambda x, c: x - c, options=opts)
    assert separate.x.tobytes() == by_keyword.x.tobytes()


def test_method_none_is_the_default():
    a = minimize(sphere, np.zeros(3), (), None, True, options=dict(maxiter=7, gtol=None))
    b = minimize(sphere, np.zeros(3), jac=True, options=dict(maxiter=7, gtol=None))
    assert a.method == "adam" and a.x.tobytes() == b.x.tobytes()


def test_scipys_later_positional_arguments_are_refused():
    "scipy's 6th positional argument is `hess`: given to the driver by position it is a TypeError, not an option."
    f = Counted()
    with pytest.raises(TypeError, match="positional"):
        minimize(f, np.zeros(3), (), "adam", True, None)
    assert f.calls == 0


def test_unknown_method_by_position():
    f = Counted()
    with pytest.raises(ValueError, match="Unknown method 'bfgs'; valid methods are 'adam', 'amsgrad', 'lazyadam'"):
        minimize(f, np.zeros(3), (), "bfgs", True)
    assert f.calls == 0

# ---------------------------------------------------------------------------------------------------------------
# maxiter (and patience): integers, and floats that are integers

@pytest.mark.parametrize("value,steps", [(1e1, 10), (10.0, 10), (np.float64(12.0), 12), (np.float32(3), 3),
                                         (np.int32(5), 5), (0.0, 0), (-0.0, 0), (7, 7)])
def test_integral_maxiter_accepted(value, steps):
    r = minimize(sphere, np.zeros(3), jac=True, options=dict(maxiter=value, gtol=None))
    assert (r.nit, r.status, type(r.nit)) == (steps, 1, int)
    assert f"maxiter={steps})" in r.message                       # reported as the integer it is


def test_maxiter_1e4():
    r = minimize(sphere, np.zeros(3), jac=True, options=dict(maxiter=1e4, learning_rate=0.1, gtol=1e-3))
    assert r.success and r.nit < 10_000
    r = minimize(lambda x: (1.0, np.ones_like(x)), np.zeros(2), jac=True, options=dict(maxiter=1e4, gtol=None))
    assert (r.nit, r.status) == (10_000, 1)


BAD_COUNTS = [(1.5, ValueError), (0.5, ValueError), (-1, ValueError), (-1.0, ValueError), (-1e4, ValueError),
              (float("nan"), ValueError), (float("inf"), ValueError), (-float("inf"), ValueError),
              (np.float64("nan"), ValueError), (np.float32(2.5), ValueError),
              (True, ArgumentTypeError), (False, ArgumentTypeError), (np.bool_(True), ArgumentTypeError),
              (None, ArgumentTypeError), ("100", ArgumentTypeError), (1 + 0j, ArgumentTypeError),
              ([10], ArgumentTypeError)]

@pytest.mark.parametrize("value,kind", BAD_COUNTS, ids=repr)
def test_bad_maxiter_refused_before_any_evaluation(value, kind):
    f = Counted()
    with pytest.raises(kind) as e:
        minimize(f, np.zeros(3), jac=True, options=dict(maxiter=value))
    assert type(e.value) is kind
    assert "Option `maxiter` must be an integer >= 0 (an integral float such as 1e4 is accepted)" in str(e.value)
    assert f.calls == 0


@pytest.mark.parametrize("value,kind", [b for b in BAD_COUNTS if b[0] is not None] + [(0, ValueError), (0.0, ValueError)],
                         ids=repr)
def test_bad_patience_refused(value, kind):   # None is patience's default (no early stopping), not a bad value
    f = Counted()
    with pytest.raises(kind, match="Option `patience` must be an integer >= 1"):
        minimize(f, np.zeros(3), jac=True, options=dict(patience=value))
    assert f.calls == 0


def test_integral_patience_accepted():
    flat = lambda x: (3.0, np.ones_like(x))
    for p in (2.0, 4, 1e0):
        r = minimize(flat, np.zeros(2), jac=True, options=dict(patience=p, maxiter=100))
        assert (r.nit, r.status) == (int(p), 3)


def test_maxiter_through_scipy():
    _need("scipy")
    import scipy.optimize as so
    r = so.minimize(sphere, np.zeros(3), args=(C,), jac=True, method=driver.scipy_method("adam"),
                    options=dict(maxiter=1e1, gtol=None))
    assert r.nit == 10 and len(r.history) == 11
    with pytest.raises(ValueError, match="Option `maxiter`"):
        so.minimize(sphere, np.zeros(3), args=(C,), jac=True, method=driver.scipy_method("adam"), options=dict(maxiter=2.5))

# ---------------------------------------------------------------------------------------------------------------
# history: every evaluated iterate, the returned one last

def _run(label):
    "One run per way the loop can end: the result, and (loss, gradient norm) at every evaluated iterate."
    fun, x0, kw = {
        "gtol": (sphere, np.zeros(3), dict(options=dict(learning_rate=0.1, gtol=1e-3))),
        "maxiter": (sphere, np.zeros(3), dict(options=dict(maxiter=25, gtol=None))),
        "maxiter=0": (sphere, np.zeros(3), dict(options=dict(maxiter=0))),
        "ftol": (sphere, np.zeros(3), dict(options=dict(learning_rate=0.01, ftol=1e-3, gtol=None, maxiter=5000))),
        "patience": (lambda x: (3.0, np.ones_like(x)), np.zeros(2), dict(options=dict(patience=4, maxiter=100))),
        "nan": (lambda x: ((float(np.sqrt(x[0])) if x[0] >= 0 else math.nan), np.ones(1)), np.ones(1),
                dict(options=dict(learning_rate=0.1, maxiter=100))),
        "callback": (sphere, np.zeros(3), dict(callback=lambda xk: False, options=dict(maxiter=9, gtol=None))),
        "callback stop": (sphere, np.zeros(3), dict(callback=lambda intermediate_result: intermediate_result.nit == 6,
                                                     options=dict(gtol=None))),
        "float32 amsgrad": (lambda x: (float(x @ x) / 2, x.copy()), np.ones(4, np.float32),
                            dict(method="amsgrad", options=dict(maxiter=100, gtol=None))),
    }[label]
    seen = []
    def rec(x, *a):
        r = fun(x, *a); seen.append((r[0], float(np.linalg.norm(np.asarray(r[1], np.float64)))))
        return r
    return minimize(rec, x0, jac=True, **kw), seen

LABELS = ["gtol", "maxiter", "maxiter=0", "ftol", "patience", "nan", "callback", "callback stop", "float32 amsgrad"]

@pytest.mark.parametrize("label", LABELS)
def test_history_ends_at_the_returned_point(label):
    r, seen = _run(label)
    h = r.history
    assert len(h) == r.nit + 1 == r.nfev == r.njev == len(seen), label
    np.testing.assert_array_equal(h["loss"], [s[0] for s in seen])               # every iterate, in order
    np.testing.assert_array_equal(h["grad_norm"], [s[1] for s in seen])
    assert (h["loss"][-1] == r.fun) or (math.isnan(h["loss"][-1]) and math.isnan(r.fun))
    assert h["grad_norm"][-1] == np.linalg.norm(np.asarray(r.jac, np.float64))


def test_history_with_restore_best():
    r = minimize(lambda x: ((float(np.sqrt(x[0])) if x[0] >= 0 else math.nan), np.ones(1)), np.ones(1), jac=True,
                 options=dict(learning_rate=0.1, maxiter=100, restore_best=True))
    assert len(r.history) == r.nit + 1 and math.isnan(r.history["loss"][-1])         # the last iterate evaluated
    assert r.history["loss"][r.best_iter] == r.fun == np.nanmin(r.history["loss"])   # and the returned one

# ---------------------------------------------------------------------------------------------------------------
# plot_history

def test_plot_history_is_exported():
    assert adam_lit.plot_history is driver.plot_history and "plot_history" in adam_lit.__all__
    assert callable(getattr(minimize(sphere, np.zeros(3), jac=True, options=dict(maxiter=2)), "plot_history"))


def test_import_does_not_load_matplotlib_and_the_call_does():
    _need("matplotlib")
    code = ("import sys, numpy as np, adam_lit\n"
            "before = sorted(m for m in ('matplotlib', 'scipy', 'tqdm') if m in sys.modules)\n"
            "r = adam_lit.minimize(lambda x: (0.5 * float(x @ x), x), np.ones(2), jac=True, options=dict(maxiter=3))\n"
            "r.plot_history(); print(before, 'matplotlib' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "MPLBACKEND": "Agg"})
    assert (p.returncode, p.stdout.strip()) == (0, "[] True"), p.stderr


@pytest.mark.parametrize("grad_norm", [False, True])
def test_plot_history_nothing_clipped(grad_norm, tmp_path):
    _need("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    r = minimize(sphere, np.zeros(3), jac=True, options=dict(learning_rate=0.05, maxiter=300, gtol=None))
    for ax in (r.plot_history(grad_norm=grad_norm), adam_lit.plot_history(r, grad_norm=grad_norm)):
        fig = ax.figure
        fig.savefig(tmp_path / "h.png")                        # as saved, without bbox_inches="tight"
        box = fig.get_tightbbox(fig.canvas.get_renderer())
        page = fig.bbox_inches
        assert page.x0 <= box.x0 and page.y0 <= box.y0 and box.x1 <= page.x1 and box.y1 <= page.y1, (box, page)
        assert ax.get_xlabel() == "iteration"
        line = ax.get_lines()[0]
        np.testing.assert_array_equal(line.get_xdata(), np.arange(r.nit + 1))
        np.testing.assert_array_equal(line.get_ydata(), r.history["loss"])
        plt.close(fig)


def test_plot_history_of_scipys_result():
    _need("scipy")
    _need("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scipy.optimize as so
    r = so.minimize(sphere, np.zeros(3), args=(C,), jac=True, method=driver.scipy_method("adam"), options=dict(maxiter=20))
    ax = adam_lit.plot_history(r)
    assert len(ax.get_lines()[0].get_ydata()) == 21
    plt.close(ax.figure)

# ---------------------------------------------------------------------------------------------------------------
# The options the driver offers

@pytest.mark.parametrize("method", driver.METHODS)
def test_no_distributed_options_offered(method):
    names = driver.optimizer_options(method)
    assert "communicator" not in names and "shard_state" not in names
    assert "learning_rate" in names and "master_weights" in names            # the list is still read off the class
    with pytest.raises(ValueError) as e:
        minimize(sphere, np.zeros(3), jac=True, method=method, options={"learnig_rate": 0.1})
    assert "Unknown option(s) 'learnig_rate'" in str(e.value)
    assert "communicator" not in str(e.value) and "shard_state" not in str(e.value)


@pytest.mark.parametrize("key,value", [("communicator", None), ("communicator", object()), ("shard_state", True),
                                       ("shard_state", False)])
def test_distributed_options_refused_with_the_reason(key, value):
    f = Counted()
    with pytest.raises(ValueError, match=f"Option '{key}' is not available in the driver"):
        minimize(f, np.zeros(3), jac=True, options={key: value})
    assert f.calls == 0
