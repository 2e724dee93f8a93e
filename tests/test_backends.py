"""The backend matrix: the same optimizer on NumPy, array-api-strict, PyTorch (CPU), JAX and CuPy.

NumPy, array-api-strict, JAX (on the CPU) and CuPy give NumPy's bits: every operation of the rules is an IEEE
operation, correctly rounded there. PyTorch's CPU `sqrt` is not correctly rounded (it is within one ulp of the
IEEE square root, off by one ulp for some inputs: `tests/test_presets.py::test_torch_sqrt_is_not_ieee`), so on
PyTorch the moments are bit-identical and the variables within what one ulp per square root explains, a bound
derived below and checked on 1000-element arrays over 20 seeds. Where a gradient norm is reduced (clipnorm,
global_clipnorm) the summation order may differ between libraries, so those options are compared within a few
ulps instead.
"""
import numpy as np
import pytest
from conftest import need
from adam_lit._optional import required

import adam_lit
from adam_lit import Adam

OPTIONS = [
    dict(),
    dict(amsgrad=True, learning_rate=0.01),
    dict(weight_decay=0.01, use_ema=True, ema_overwrite_frequency=2),
    dict(gradient_accumulation_steps=2, loss_scale_factor=4.0, clipvalue=0.3),
    dict(learning_rate=adam_lit.schedules.ExponentialDecay(0.01, 2, 0.5), amsgrad=True),
]
NORM_OPTIONS = [dict(clipnorm=0.2), dict(global_clipnorm=0.3, amsgrad=True)]


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(5,), (3, 4), ()]
    xs = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
    grads = [[np.asarray(rng.standard_normal(s) * 10.0 ** rng.integers(-3, 2), dtype=dtype) for s in shapes] for _ in range(6)]
    return xs, grads


def _numpy_run(opts, dtype):
    xs, grads = _problem(dtype)
    opt = Adam(**opts)
    for gs in grads: opt.apply(gs, xs)
    return xs, opt


class Backend:
    def __init__(self, name, asarray, tonumpy, inplace=True):
        self.name, self.asarray, self.tonumpy, self.inplace = name, asarray, tonumpy, inplace

    def run(self, opts, dtype):
        xs, grads = _problem(dtype)
        opt = Adam(**opts)
        if self.inplace:
            vs = [self.asarray(x) for x in xs]
            for gs in grads: opt.apply([self.asarray(g) for g in gs], vs)
            return [self.tonumpy(v) for v in vs], opt
        vs = [self.asarray(x) for x in xs]
        opt.build(vs)
        state = opt.variables
        for gs in grads: vs, state = opt.stateless_apply(state, [self.asarray(g) for g in gs], vs)
        return [self.tonumpy(v) for v in vs], opt


def _backends(with_torch=True):
    out = [pytest.param(Backend("numpy", np.asarray, np.asarray), id="numpy")]
    import array_api_strict as xps
    out.append(pytest.param(Backend("array_api_strict", xps.asarray, lambda a: np.asarray(a._array)), id="array_api_strict"))
    if with_torch:
        try:
            import torch
            out.append(pytest.param(Backend("torch", torch.from_numpy, lambda t: t.detach().numpy()), id="torch"))
        except ImportError:
            if required(): raise ModuleNotFoundError("ADAM_LIT_REQUIRE_ORACLES=1, but PyTorch is not installed") from None
            out.append(pytest.param(None, id="torch", marks=pytest.mark.skip(reason="PyTorch not installed")))
    try:
        import jax
        # on the CPU: XLA's GPU backend computes some float32 operations of the rules to another rounding (seen on an
        # H100: one ulp apart with AMSGrad), so the bit-for-bit claim for JAX is the CPU's
        cpu = jax.devices("cpu")[0]
        out.append(pytest.param(Backend("jax", lambda a: jax.device_put(a, cpu), np.asarray, inplace=False), id="jax"))
    except ImportError:
        if required(): raise ModuleNotFoundError("ADAM_LIT_REQUIRE_ORACLES=1, but JAX is not installed") from None
        out.append(pytest.param(None, id="jax", marks=pytest.mark.skip(reason="JAX not installed")))
    try:
        import cupy
        ok = cupy.cuda.is_available()
    except Exception:
        ok = False
    if ok:
        out.append(pytest.param(Backend("cupy", cupy.asarray, cupy.asnumpy), id="cupy"))
    else:
        out.append(pytest.param(None, id="cupy", marks=pytest.mark.skip(reason="no CUDA GPU (cupy.cuda.is_available() is False)")))
    return out


def _dtypes(backend):
    # JAX runs float64 only with jax_enable_x64, a global switch other tests toggle: float32 is enough here
    return ["float32"] if backend.name == "jax" else ["float32", "float64"]


@pytest.mark.parametrize("backend", _backends(with_torch=False))   # PyTorch: test_torch_within_one_ulp_per_sqrt
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_same_bits_as_numpy(backend, opts):
    for dtype in _dtypes(backend):
        ref, _ = _numpy_run(opts, dtype)
        got, _ = backend.run(opts, dtype)
        for k, (r, g) in enumerate(zip(ref, got)):
            assert g.dtype == r.dtype
            assert g.tobytes() == r.tobytes(), f"{backend.name} {dtype} variable {k}: max |diff| {np.max(np.abs(g - r))}"


def _big_problem(dtype, seed, n=1000, steps=6):
    "One 1000-element variable and its gradients (sizes 1e-3 to 10), as `_problem` makes them."
    rng = np.random.default_rng(seed)
    x = np.asarray(rng.standard_normal(n), dtype=dtype)
    return x, [np.asarray(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 2), dtype=dtype) for _ in range(steps)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "default")
def test_torch_within_one_ulp_per_sqrt(opts, dtype):
    """On PyTorch (CPU) the moments are NumPy's bits and each variable is within the bound that one ulp of error per
    square root gives. The bound, per element, summed over the steps: a square root off by one ulp (relative error
    <= eps, the dtype's machine epsilon) moves `sqrt(v) + epsilon` by at most eps relative plus one rounding, so
    the update `u = (m * alpha) / (sqrt(v) + epsilon)` by at most 3 eps |u|; `x - u` then rounds once on each side (one
    ulp of x), and weight decay `x - (x * wd) * lr` once more. So |x_torch - x_numpy| <= sum over steps of
    3 eps |u_k| + 2 ulp(x_k), with |u_k| <= |x_k - x_{k-1}| + wd lr |x_{k-1}| measured on the NumPy run. (With
    `use_ema` the EMA slot depends on x too: it gets the same bound, and the overwrite copies it into x.)"""
    torch = need("torch")
    D = np.dtype(dtype).type
    eps, wd = float(np.finfo(D).eps), opts.get("weight_decay", 0.0)
    differ = total = 0
    for seed in range(20):
        x0, grads = _big_problem(D, seed)
        xn, on = x0.copy(), Adam(**opts)
        xt, ot = torch.from_numpy(x0.copy()), Adam(**opts)
        bound = np.zeros(x0.shape)
        for g in grads:
            prev = xn.astype(np.float64)
            lr = opts.get("learning_rate", 0.001) if wd else 0.0      # (the options with weight decay: a float)
            on.apply([g], [xn]); ot.apply([torch.from_numpy(g.copy())], [xt])
            u = np.abs(xn - prev) + wd * lr * np.abs(prev)
            bound += 3 * eps * u + 2 * np.spacing(np.abs(xn)).astype(np.float64)
            for name in on.get_slot_names():
                a, b = np.asarray(on.get_slot(xn, name)), ot.get_slot(xt, name).numpy()
                if name in ("m", "v", "vhat", "gradient_accumulator"):
                    assert a.tobytes() == b.tobytes(), (seed, name)
                else:
                    assert np.all(np.abs(a.astype(np.float64) - b) <= bound), (seed, name)
            err = np.abs(xt.numpy().astype(np.float64) - xn)
            assert np.all(err <= bound), f"seed {seed}: {int(np.sum(err > bound))} elements off by more than the bound"
        differ += int(np.sum(xt.numpy() != xn)); total += xn.size
    print(f"{differ} of {total} elements differ from NumPy's")


@pytest.mark.parametrize("backend", _backends())
@pytest.mark.parametrize("opts", NORM_OPTIONS, ids=lambda o: ",".join(o))
def test_norm_clipping_within_ulps(backend, opts):
    for dtype in _dtypes(backend):
        ref, _ = _numpy_run(opts, dtype)
        got, _ = backend.run(opts, dtype)
        for r, g in zip(ref, got):
            # a reduction in another order moves the norm by an ulp or two; six steps compound it a little
            np.testing.assert_array_max_ulp(g, r, maxulp=16)


def test_jax_rejects_in_place():
    jnp = need("jax.numpy")
    x = jnp.ones(3)
    with pytest.raises(ValueError, match="immutable: use stateless_apply"):
        Adam().apply([jnp.ones(3)], [x])


def test_torch_parameters_with_autograd():
    torch = need("torch")
    w = torch.nn.Parameter(torch.tensor([10.0]))
    opt = Adam(learning_rate=0.1)

    def loss():
        w.grad = None
        val = (w ** 2 / 2).sum()
        val.backward()
        return val.item(), [w.grad]

    assert opt.minimize(loss, [w]) == 50.0
    assert w.item() == 9.90000057220459
    assert w.requires_grad


def test_mixed_libraries_rejected_and_nothing_changes():
    torch = need("torch")
    x = np.ones(3, np.float32)
    opt = Adam()
    opt.apply([np.ones(3, np.float32)], [x])
    before = x.copy(), [np.copy(w) for w in opt.get_weights()]
    with pytest.raises(TypeError, match="mix array libraries"):
        opt.apply([torch.ones(3)], [x])
    assert np.array_equal(x, before[0])
    assert all(np.array_equal(a, b) for a, b in zip(opt.get_weights(), before[1]))
