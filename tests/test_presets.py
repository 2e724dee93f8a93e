"""adam_lit's `numerics="torch"` and `numerics="optax"` against the real `torch.optim.Adam` / `optax.adam`.

Every comparison starts both sides from the same state (the reference's state before the step is fed to adam_lit),
takes one step with a random gradient (magnitudes from 1e-20 to 1e10 in float32, 1e-100 to 1e100 in float64, plus
exact zeros) and compares the new variable and moments. Several (lr, betas, eps), AMSGrad off and on, float32 and
float64, 25 steps each.

* PyTorch runs `_single_tensor_adam` (`foreach=False`): the foreach path is another operation order. PyTorch's CPU
  `sqrt` is not correctly rounded, neither in foreach nor in the single-tensor kernels (about 16 % of float32 inputs
  and 1 % of float64 inputs are 1 ulp off the IEEE square root; `test_torch_sqrt_is_not_ieee` checks it, so the
  premise of the looser NumPy test is itself tested). So:
  - on **torch tensors**, adam_lit's rule uses the same `sqrt` and must give the same bits, every array, every step;
  - on **NumPy**, `m` and `v` must be bit-equal, and `x` within 2 * (eps * |step| + ulp(x)): a 1-ulp-off square
    root moves the step by about one ulp (eps relative) and the final addition rounds once more (measured: at most
    1.4 of that unit); at most 5 % of the values may differ at all.
* Optax runs eagerly (no `jax.jit`: XLA would fuse multiply-adds); float32 without `jax_enable_x64` (Optax then
  computes `1 - b**t` in float32), float64 with it (restored afterwards: other tests toggle it too).
  - on **JAX arrays** adam_lit must give optax's bits;
  - on **NumPy** with XLA's value of `b**t` substituted (monkeypatched), the same bits (XLA's CPU flushes float32
    subnormals to zero: elements where a subnormal product occurs are excluded, and `v` there must be within the
    smallest normal); with NumPy's own `pow`, `m` and `v` bit-equal and `x` within the error that one ulp of `b**t`
    (XLA's `pow` is not correctly rounded) makes through the cancellation in `1 - b**t`, derived per step.
"""
from __future__ import annotations

import contextlib

import numpy as np
import pytest
from conftest import need

from adam_lit import Adam
from adam_lit.rules import adam_step, amsgrad_step

CONFIGS = [  # lr, beta_1, beta_2, eps (beta_1 = 0.3: PyTorch's lerp takes its other branch, weight >= 0.5)
    (1e-3, 0.9, 0.999, 1e-8),
    (0.1, 0.8, 0.99, 1e-6),
    (3e-4, 0.5, 0.9999, 1e-3),
    (1e-2, 0.3, 0.95, 1e-8),
]
CFG_IDS = ["default", "lr0.1", "eps1e-3", "beta0.3"]
STEPS, N = 25, 517
DTYPES = [np.float32, np.float64]


def gradient(rng, D, n=N):
    "Random signs and magnitudes over most of the dtype's range (1e-20..1e10 / 1e-100..1e100), with exact zeros."
    lo, hi = (-20, 10) if D == np.float32 else (-100, 100)
    g = rng.normal(size=n) * 10.0 ** rng.uniform(lo, hi, size=n)
    g[rng.integers(0, n, size=5)] = 0.0
    return g.astype(D)


def ulp_distance32(a, b):
    "Elementwise distance of float32 arrays in units in the last place (adjacent floats are 1 apart)."
    def ordered(z):
        i = np.asarray(z, np.float32).view(np.int32).astype(np.int64)
        return np.where(i < 0, np.iinfo(np.int32).min - i, i)
    return np.abs(ordered(a) - ordered(b))


def assert_bits(name, got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
    if not np.array_equal(got.view(np.uint8), want.view(np.uint8)):
        i = int(np.nonzero(got != want)[0][0]) if (got != want).any() else -1
        pytest.fail(f"{name}: {int((got != want).sum())} elements differ; first at {i}: {got[i]!r} != {want[i]!r}")


# ---------------------------------------------------------------------------------------------------- PyTorch
def torch_trajectory(torch, D, cfg, amsgrad, seed, weight_decay=0.0, decoupled=False):
    "Yield (t, g, state before, state after) of the real optimizer, one step at a time."
    lr, b1, b2, eps = cfg
    rng = np.random.default_rng(seed)
    p = torch.tensor(rng.normal(size=N).astype(D))
    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    opt = cls([p], lr=lr, betas=(b1, b2), eps=eps, amsgrad=amsgrad, weight_decay=weight_decay, foreach=False)
    zeros = np.zeros(N, D)
    for t in range(1, STEPS + 1):
        g = gradient(rng, D)
        st = opt.state.get(p) or {}
        def snap(key): return st[key].numpy().copy() if key in st else zeros.copy()
        before = (p.detach().numpy().copy(), snap("exp_avg"), snap("exp_avg_sq"), snap("max_exp_avg_sq") if amsgrad else None)
        p.grad = torch.tensor(g)
        opt.step()
        st = opt.state[p]
        after = (p.detach().numpy().copy(), st["exp_avg"].numpy().copy(), st["exp_avg_sq"].numpy().copy(),
                 st["max_exp_avg_sq"].numpy().copy() if amsgrad else None)
        yield t, g, before, after


def lit_step(x, g, m, v, vmax, cfg, t, numerics):
    lr, b1, b2, eps = cfg
    kw = dict(learning_rate=lr, beta_1=b1, beta_2=b2, epsilon=eps, t=t, numerics=numerics)
    if vmax is None: return (*adam_step(x, g, m, v, **kw), None)
    return amsgrad_step(x, g, m, v, vmax, **kw)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("D", DTYPES, ids=["float32", "float64"])
def test_torch_bit_exact_on_torch_tensors(D, amsgrad, cfg):
    torch = need("torch")
    for t, g, before, after in torch_trajectory(torch, D, cfg, amsgrad, seed=1):
        args = [None if a is None else torch.from_numpy(a.copy()) for a in before]
        out = lit_step(args[0], torch.from_numpy(g), args[1], args[2], args[3], cfg, t, "torch")
        for name, got, want in zip(("x", "m", "v", "vmax"), out, after):
            if want is not None: assert_bits(f"step {t} {name}", got.numpy(), want)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("D", DTYPES, ids=["float32", "float64"])
def test_torch_on_numpy(D, amsgrad, cfg):
    torch = need("torch")
    differ = total = 0
    for t, g, before, after in torch_trajectory(torch, D, cfg, amsgrad, seed=2):
        x, m, v, vmax = lit_step(*before[:1], g, *before[1:], cfg, t, "torch")
        assert_bits(f"step {t} m", m, after[1]); assert_bits(f"step {t} v", v, after[2])
        if amsgrad: assert_bits(f"step {t} vmax", vmax, after[3])
        step = np.abs(after[0].astype(np.float64) - before[0])
        unit = float(np.finfo(D).eps) * step + np.spacing(np.abs(after[0])).astype(np.float64)   # ~1 ulp of step and result
        err = np.abs(x.astype(np.float64) - after[0]) / unit
        assert err.max() <= 2, f"step {t}: x off by {err.max():.3g} (ulp of the step + ulp of x) at {int(np.argmax(err))}"
        differ += int((x != after[0]).sum()); total += x.size
    assert differ <= 0.05 * total, f"{differ} of {total} values differ: more than PyTorch's sqrt explains"


def test_torch_sqrt_is_not_ieee():
    "The premise of `test_torch_on_numpy`: PyTorch's CPU sqrt is sometimes 1 ulp off the IEEE square root."
    torch = need("torch")
    a = np.abs(np.random.default_rng(0).normal(size=100_000)).astype(np.float32) * 7
    ts, ns = torch.from_numpy(a).sqrt().numpy(), np.sqrt(a)
    d = ulp_distance32(ts, ns)
    assert d.max() <= 1
    if d.max() == 0: pytest.skip("this PyTorch build's sqrt is correctly rounded: the NumPy test could be exact")


@pytest.mark.parametrize("D", DTYPES, ids=["float32", "float64"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_torch_optimizer_trajectory_and_adamw(D, amsgrad):
    "The `Adam` optimizer class on torch tensors, left to run freely: AdamW's trajectory, bit for bit."
    torch = need("torch")
    cfg, wd = (3e-3, 0.9, 0.99, 1e-8), 0.05
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=N).astype(D)
    ref = torch.tensor(x0.copy())
    ropt = torch.optim.AdamW([ref], lr=cfg[0], betas=cfg[1:3], eps=cfg[3], weight_decay=wd, amsgrad=amsgrad, foreach=False)
    mine = torch.tensor(x0.copy())
    opt = Adam(learning_rate=cfg[0], beta_1=cfg[1], beta_2=cfg[2], epsilon=cfg[3], weight_decay=wd, amsgrad=amsgrad,
               numerics="torch")
    for t in range(1, STEPS + 1):
        g = gradient(rng, D)
        ref.grad = torch.tensor(g); ropt.step()
        opt.apply([torch.tensor(g)], [mine])
        assert_bits(f"step {t} x", mine.numpy(), ref.detach().numpy())
    assert_bits("m", opt.get_slot(mine, "m").numpy(), ropt.state[ref]["exp_avg"].numpy())
    cfg2 = Adam.from_config(opt.get_config()).get_config()
    assert cfg2["numerics"] == "torch" and cfg2["learning_rate"] == cfg[0]


def test_torch_l2_weight_decay_through_the_gradient():
    "torch.optim.Adam's weight_decay is L2: the same as adam_lit fed g + wd * x (torch adds it with one FMA)."
    torch = need("torch")
    from adam_lit.rules import _fma
    D, cfg, wd = np.float64, (1e-2, 0.9, 0.999, 1e-8), 0.1
    for t, g, before, after in torch_trajectory(torch, D, cfg, False, seed=4, weight_decay=wd):
        g_l2 = _fma(torch, wd, torch.from_numpy(before[0]), torch.from_numpy(g))        # grad.add(param, alpha=wd)
        out = lit_step(torch.from_numpy(before[0]), g_l2, torch.from_numpy(before[1]), torch.from_numpy(before[2]),
                       None, cfg, t, "torch")
        for name, got, want in zip(("x", "m", "v"), out, after): assert_bits(f"step {t} {name}", got.numpy(), want)


# ---------------------------------------------------------------------------------------------------- Optax
@contextlib.contextmanager
def jax_x64(enabled):
    import jax
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", enabled)
    try: yield
    finally: jax.config.update("jax_enable_x64", old)


def optax_trajectory(D, cfg, amsgrad, seed):
    import jax.numpy as jnp
    import optax
    lr, b1, b2, eps = cfg
    rng = np.random.default_rng(seed)
    opt = (optax.amsgrad if amsgrad else optax.adam)(lr, b1=b1, b2=b2, eps=eps)
    x = jnp.asarray(rng.normal(size=N).astype(D))
    state = opt.init(x)
    for t in range(1, STEPS + 1):
        g = jnp.asarray(gradient(rng, D))
        s0 = state[0]
        before = (x, s0.mu, s0.nu, s0.nu_max if amsgrad else None)
        u, state = opt.update(g, state, x)
        x = optax.apply_updates(x, u)
        s1 = state[0]
        assert x.dtype == D and s1.mu.dtype == D
        yield t, g, before, (x, s1.mu, s1.nu, s1.nu_max if amsgrad else None)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("D", DTYPES, ids=["float32", "float64"])
def test_optax_bit_exact_on_jax_arrays(D, amsgrad, cfg):
    need("optax")
    with jax_x64(D == np.float64):
        for t, g, before, after in optax_trajectory(D, cfg, amsgrad, seed=5):
            out = lit_step(before[0], g, *before[1:], cfg, t, "optax")
            for name, got, want in zip(("x", "m", "v", "vmax"), out, after):
                if want is not None: assert_bits(f"step {t} {name}", np.asarray(got), np.asarray(want))


def check_optax_on_numpy(D, amsgrad, cfg, exact):
    lr, b1, b2, eps = cfg
    tiny, EPS = float(np.finfo(D).tiny), float(np.finfo(D).eps)
    with jax_x64(D == np.float64):
        for t, g, before, after in optax_trajectory(D, cfg, amsgrad, seed=6):
            b_np = [None if a is None else np.asarray(a) for a in before]
            g_np, v0 = np.asarray(g), b_np[2]
            x, m, v, vmax = lit_step(b_np[0], g_np, *b_np[1:], cfg, t, "optax")
            x_ref, m_ref, v_ref = (np.asarray(a) for a in after[:3])
            assert_bits(f"step {t} m", m, m_ref)
            clean = np.ones(N, bool)
            if D == np.float32:   # XLA's CPU flushes subnormal products (g*g, b2*v) to zero: exact where none occurs
                clean = ((g_np == 0) | (g_np.astype(np.float64) ** 2 * (1 - b2) >= tiny)) & ((v0 == 0) | (v0 * b2 >= tiny))
                assert np.all(np.abs(v.astype(np.float64) - v_ref) <= tiny), f"step {t} v"
            assert clean.mean() > 0.8
            assert_bits(f"step {t} v", v[clean], v_ref[clean])
            if exact:
                assert_bits(f"step {t} x", x[clean], x_ref[clean])
                if amsgrad: assert_bits(f"step {t} vmax", vmax[clean], np.asarray(after[3])[clean])
                continue
            # one ulp of b**t relative to 1 - b**t (the cancellation), for each correction, plus a few roundings
            rel = [float(np.spacing(D(b) ** D(t))) / (1 - b ** t) for b in (b1, b2)]
            x0, xr = b_np[0].astype(np.float64), x_ref.astype(np.float64)
            tol = (rel[0] + rel[1] + 8 * EPS) * 1.5 * np.abs(xr - x0) + 2 * np.spacing(np.maximum(np.abs(x0), np.abs(xr)).astype(D))
            err = np.abs(x.astype(np.float64) - xr)
            assert np.all(err <= tol), f"step {t}: x off by {(err / tol).max():.3g} x the tolerance at {int(np.argmax(err / tol))}"
            if amsgrad:      # nu_max = max(nu_max, nu / bc2): the relative error of the correction (+ a flushed subnormal)
                vr = np.asarray(after[3]).astype(np.float64)
                over = np.abs(vmax.astype(np.float64) - vr) - (2 * rel[1] + 4 * EPS) * vr - 2 * tiny / (1 - b2 ** t)
                assert over.max() <= 0, f"step {t} vmax at {int(np.argmax(over))}"


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("D", DTYPES, ids=["float32", "float64"])
def test_optax_on_numpy_with_xla_pow(D, amsgrad, cfg, monkeypatch):
    "With XLA's `pow` substituted for NumPy's in `1 - b**t`, NumPy must give optax's bits (FTZ cases aside)."
    need("optax")
    import jax.numpy as jnp
    from adam_lit import rules
    def xla_bias_correction(xp, beta, t, like):
        return np.asarray(1.0 - jnp.asarray(beta, dtype=like.dtype) ** jnp.asarray(t, dtype=like.dtype))
    monkeypatch.setattr(rules, "_optax_bias_correction", xla_bias_correction)
    check_optax_on_numpy(D, amsgrad, cfg, exact=True)


@pytest.mark.parametrize("cfg", CONFIGS, ids=CFG_IDS)
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("D", DTYPES, ids=["float32", "float64"])
def test_optax_on_numpy(D, amsgrad, cfg):
    "With NumPy's own `pow`: `m`, `v` exact, `x` within what one ulp of `b**t` explains."
    need("optax")
    check_optax_on_numpy(D, amsgrad, cfg, exact=False)


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("cfg", [(1e-2, 0.9, 0.999, 1e-4), (0.1, 0.3, 0.99, 1e-3)], ids=["default-betas", "lerp-other-branch"])
def test_torch_half_on_numpy(cfg, amsgrad):
    """NumPy float16 under numerics='torch' (`_torch_rule_half`: each of PyTorch's operations in float32, rounded once)
    against torch.optim.Adam on float16 tensors: the moments exactly; the parameters within an ulp (PyTorch's float32
    square root is not always correctly rounded, which rounding to float16 mostly hides)."""
    torch = need("torch")
    lr, b1, b2, eps = cfg
    rng = np.random.default_rng(5)
    x0 = rng.normal(size=N).astype(np.float16)
    p = torch.nn.Parameter(torch.from_numpy(x0.copy()))
    ref = torch.optim.Adam([p], lr=lr, betas=(b1, b2), eps=eps, amsgrad=amsgrad)
    x, m, v = x0.copy(), np.zeros(N, np.float16), np.zeros(N, np.float16)
    vmax = np.zeros(N, np.float16) if amsgrad else None
    differ = 0
    for t in range(1, STEPS + 1):
        g = (rng.normal(size=N) * 10.0 ** rng.uniform(-3, 1, size=N)).astype(np.float16)
        p.grad = torch.from_numpy(g.copy()); ref.step()
        x, m, v, vmax = lit_step(x, g, m, v, vmax, cfg, t, "torch")
        st = ref.state[p]
        assert_bits(f"step {t} m", m, st["exp_avg"].numpy()); assert_bits(f"step {t} v", v, st["exp_avg_sq"].numpy())
        want = p.detach().numpy()
        assert np.all(np.abs(x.astype(np.float64) - want) <= np.spacing(np.abs(want)).astype(np.float64)), f"step {t}"
        differ += int((x != want).sum()); x = want.copy()                 # (continue from PyTorch's parameters)
    assert differ <= 0.02 * N * STEPS, differ
