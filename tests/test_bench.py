"""The benchmark harness (adam_lit.bench) is measuring what it says: every step gets the next of K distinct gradient
sets, every implementation it times really performs Adam steps (adam_lit's rows with the rule's bits, the peers to
float32 rounding), a failing implementation is reported and the run goes on, and the targets table is read and
judged as written. Correctness only: nothing here asserts a speed."""
import itertools
import math

import numpy as np
import pytest

from adam_lit import bench as B
from adam_lit.backend import IndexedSlices
from adam_lit.rules import adam_step, bias_corrected_step_size, lazy_adam_rows, moment_constants
from conftest import need

STEPS = B.K_SETS + 2              # past one full rotation of the gradient sets
SHAPES = ((1000,), (3, 10), (7,))
PEER = dict(rtol=2e-5, atol=2e-5)  # float32 rounding, and epsilon added before or after the bias correction


def rule(p0s, sets, n, same=False):
    "adam_lit's rule applied `n` times, step t with gradient set (t - 1) % K (or set 0 every time)."
    ps, ms, vs = list(p0s), [np.zeros_like(p) for p in p0s], [np.zeros_like(p) for p in p0s]
    for t in range(1, n + 1):
        for k, g in enumerate(sets[0 if same else (t - 1) % len(sets)]):
            ps[k], ms[k], vs[k] = adam_step(ps[k], g, ms[k], vs[k], learning_rate=B.LR, beta_1=B.B1, beta_2=B.B2,
                                            epsilon=B.EPS, t=t)
    return ps


def start(shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s, np.float32) for s in shapes], B.grad_sets(shapes)


def check_trajectory(name, make, exact):
    p0s, sets = start()
    step = make([p.copy() for p in p0s], sets)
    for n in range(1, STEPS + 1):
        step()
        want = rule(p0s, sets, n, same="same grads" in name)
        got = [np.asarray(p).reshape(w.shape) for p, w in zip(step.params(), want)]
        if exact:
            assert [g.tobytes() for g in got] == [w.tobytes() for w in want], f"{name}: step {n} differs from the rule"
        else:
            for g, w in zip(got, want): np.testing.assert_allclose(g, w, **PEER, err_msg=f"{name}, step {n}")
    # and the rotation mattered: the same steps with set 0 every time end elsewhere (unless the row says so)
    if "same grads" not in name:
        assert not all(np.array_equal(g, w) for g, w in zip(step.params(), rule(p0s, sets, STEPS, same=True)))


# ---- the gradient sets

@pytest.mark.parametrize("case", B.cases(quick=True), ids=lambda c: c.key)
def test_every_case_has_k_distinct_gradient_sets(case):
    sets = B.sparse_sets(*case.shapes[0], case.rows) if case.rows else B.grad_sets(case.shapes)
    assert len(sets) == B.K_SETS
    for a, b in itertools.combinations(sets, 2):
        for x, y in zip(a, b):
            assert x is not y and x.shape == y.shape and not np.array_equal(x, y)
    if not case.rows:
        assert [tuple(g.shape) for g in sets[0]] == [tuple(s) for s in case.shapes]


def test_rotation_hands_out_the_next_set_at_each_call():
    sets = [object() for _ in range(B.K_SETS)]
    nxt = B.rotation(sets)
    assert [nxt() for _ in range(3 * B.K_SETS)] == sets * 3


def test_quick_cases_are_the_full_cases_made_small():
    full, quick = B.cases(), B.cases(quick=True)
    assert [(c.key, c.group) for c in full] == [(c.key, c.group) for c in quick]
    size = lambda c: sum(math.prod(s) for s in c.shapes)
    assert all(size(q) <= size(f) for f, q in zip(full, quick)) and sum(map(size, quick)) < 10**6


# ---- every implementation performs the steps

@pytest.mark.parametrize("name", [n for n, _, libs in B.IMPLS["numpy"] if not libs])
def test_numpy_rows(name):
    check_trajectory(name, B.factories("numpy")[name], exact=name.startswith("adam_lit"))


@pytest.mark.parametrize("name", ["torch foreach", "torch fused"])
def test_torch_peers(name):
    need("torch")
    check_trajectory(name, B.factories("numpy")[name], exact=False)


def test_adam_lit_on_torch_tensors_gives_the_rule_bits():
    need("torch")
    check_trajectory("adam_lit on torch", B.make_adam_lit_torch, exact=True)


def test_optax_peer():
    need("jax"); need("optax")
    check_trajectory("optax jit", B.make_optax, exact=False)


def test_keras_jit_peer():
    need("jax")
    keras = need("keras")
    if keras.backend.backend() != "jax": pytest.skip("Keras's backend is not JAX")
    check_trajectory("Keras jit", B.make_keras_jit, exact=False)


def test_adam_lit_jit_row_steps_or_is_reported():
    """`jax.jit(opt.stateless_apply)`: where it traces, its steps are the rule's (to float32 rounding: XLA may fuse
    differently from eager NumPy); where it does not, the run records the error and times the other rows."""
    jax = need("jax")
    p0s, sets = start()
    try:
        step = B.make_adam_lit_jit([p.copy() for p in p0s], sets); step()
    except jax.errors.ConcretizationTypeError:
        res = B.run(quick=True, reps=1, keys=["jax-2.1M"], min_time=1e-4)
        (case,) = res["cases"]
        assert case["errors"]["adam_lit jit"].startswith("ConcretizationTypeError: ")
        assert "optax jit" in case["times"] or "optax jit" in case["skipped"]
        row = dict((r[0], r[2:]) for r in B.targets(res))["JAX, jitted `stateless_apply`, 4 tensors 2.1M"]
        assert row[0].startswith("adam_lit jit failed: ConcretizationTypeError") and row[1] == "quick run"
        pytest.xfail("stateless_apply does not trace under jax.jit yet: the harness reports it")
    check_trajectory("adam_lit jit", B.make_adam_lit_jit, exact=False)


def lazy_rule(table0, sparse, n):
    "LazyAdam by its rule: the touched rows (repeats summed) move by `lazy_adam_rows`, the others stay."
    x, m, v = table0.copy(), np.zeros_like(table0), np.zeros_like(table0)
    S = np.float32
    c1, c2 = moment_constants(B.B1, B.B2, S)
    for t in range(1, n + 1):
        i, vals = sparse[(t - 1) % len(sparse)]
        g = IndexedSlices(vals, i, table0.shape).deduplicate()
        idx = g.indices
        alpha = bias_corrected_step_size(B.LR, B.B1, B.B2, t, S)
        x[idx], m[idx], v[idx], _ = lazy_adam_rows(x[idx], g.values, m[idx], v[idx], None, alpha=alpha, beta_1=float(S(B.B1)),
                                                   beta_2=float(S(B.B2)), epsilon=B.EPS, c1=c1, c2=c2)
    return x


@pytest.fixture
def table():
    rng = np.random.default_rng(3)
    t0 = rng.standard_normal((500, 8), np.float32)
    sparse = B.sparse_sets(500, 8, 40)
    assert any(len(np.unique(i)) < len(i) for i, _ in sparse)     # repeated rows, as an embedding lookup makes them
    return t0, sparse


def test_lazy_row_gives_the_lazy_rule(table):
    t0, sparse = table
    step = B.make_lazy([t0.copy()], sparse)
    for n in range(1, STEPS + 1):
        step()
        want = lazy_rule(t0, sparse, n)
        assert step.params()[0].tobytes() == want.tobytes(), f"LazyAdam: step {n} differs from the rule"
    touched = np.unique(np.concatenate([i for i, _ in sparse]))
    untouched = np.setdiff1d(np.arange(len(t0)), touched)
    assert np.array_equal(step.params()[0][untouched], t0[untouched])


def test_dense_table_row_is_adam_on_the_dense_gradients(table):
    t0, sparse = table
    dense = [[B._dense(t0, i, v)] for i, v in sparse]
    for (i, v), (d,) in zip(sparse, dense):        # each dense gradient is the sparse one, repeats summed
        g = IndexedSlices(v, i, t0.shape).deduplicate()
        want = np.zeros_like(t0); want[g.indices] = g.values
        np.testing.assert_allclose(d, want, rtol=1e-6, atol=0)
    step = B.make_dense_table([t0.copy()], sparse)
    for _ in range(STEPS): step()
    assert step.params()[0].tobytes() == rule([t0], dense, STEPS)[0].tobytes()


def test_torch_sparse_adam_peer(table):
    need("torch")
    t0, sparse = table
    step = B.make_torch_sparse([t0.copy()], sparse)
    for _ in range(STEPS): step()
    np.testing.assert_allclose(step.params()[0], lazy_rule(t0, sparse, STEPS), **PEER)


# ---- the harness keeps going, and reports

def test_a_failing_implementation_is_reported_and_the_others_are_timed(monkeypatch):
    def broken(params, sets):
        def step(): raise RuntimeError("deliberately broken\nsecond line")
        return step
    monkeypatch.setitem(B.IMPLS, "numpy", B.IMPLS["numpy"][:1] + (("broken", broken, ()),) + B.IMPLS["numpy"][3:4])
    res = B.run(quick=True, reps=1, keys=["1e4", "mlp"], min_time=1e-4)
    assert [c["key"] for c in res["cases"]] == ["1e4", "mlp"]
    for c in res["cases"]:
        assert c["errors"] == {"broken": "RuntimeError: deliberately broken"}
        assert sorted(c["times"]) == ["adam_lit", "naive NumPy"] and all(t > 0 for t in c["times"].values())
    text = B.tables(res)
    assert "failed" in text and "- `broken`, 1e4: failed: RuntimeError: deliberately broken" in text


# ---- the targets table

ISSUE_CASES = ["NumPy, 1 tensor of 1e4", "NumPy, small MLP (4 tensors, 4.8k)", "NumPy, 1e6", "NumPy, 1e7",
               "NumPy, 1000 tensors of 1000", "NumPy, transformer-like 78 tensors, 4.7M",
               "torch CPU tensors, 4 tensors 2.1M and 4.8k", "JAX, jitted `stateless_apply`, 4 tensors 2.1M",
               "LazyAdam, 1e6 x 64, 1000 rows", "per-step allocation, dense"]
FRONT_CASES = ["front end `adam_lit.torch.Adam`, 4 tensors 2.1M and 78 tensors",      # the front ends' targets
               "front end `adam_lit.torch.LazyAdam`, 1e6 x 64, 1000 rows",
               "front end `adam_lit.optax.adam` under jit, 4 tensors 2.1M"]


def test_parse_targets_reads_the_table():
    rows = B.parse_targets()
    assert [c for c, _ in rows] == ISSUE_CASES + FRONT_CASES
    assert dict(rows)["NumPy, 1e7"] == "≥ 0.95x torch fused (≥ 80 % of the memory roofline)"
    assert set(B.CHECKS) == set(ISSUE_CASES + FRONT_CASES)
    assert B.parse_targets("| a | b |\n|:--|--:|\n| x | y |\n") == [("x", "y")]


@pytest.mark.parametrize("bad", ["| a | b |\n| x | y |\n", "| a | b |\n|---|---|\n| x | y | z |\n", "| a | b |\n|---|---|\n| x |  |\n"])
def test_parse_targets_refuses_a_malformed_table(bad):
    with pytest.raises(ValueError):
        B.parse_targets(bad)


def test_a_target_without_a_measurement_is_refused():
    with pytest.raises(ValueError, match="no measurement for the target 'NumPy, 1e5'"):
        B.targets({"cases": []}, "| case | target |\n|---|---|\n| NumPy, 1e5 | fast |\n")


def fake(key, times, floor=None, alloc=None, errors=None, bits=None, params=10):
    c = {"key": key, "times": times, "errors": errors or {}, "alloc": alloc or {}, "floor": floor or 0.0, "params": params}
    if bits is not None: c["bits"] = bits
    return c


def test_targets_are_judged_as_written():
    us, ms = 1e-6, 1e-3
    res = {"quick": False, "cases": [
        fake("1e4", {"adam_lit": 9.9 * us, "adam_lit (same grads)": 5 * us}),
        fake("mlp", {"adam_lit": 20.1 * us}),
        fake("1e6", {"adam_lit": 100 * us, "torch fused": 150 * us}),            # exactly 1.5x: met
        fake("1e7", {"adam_lit": 5 * ms, "torch fused": 5 * ms}, floor=3.9 * ms),  # 1.0x, but 78 % of the roofline
        fake("1000x1000", {"adam_lit": 1 * ms, "torch fused": 4 * ms, "torch foreach": 2.9 * ms}),   # torch best: 2.9x
        fake("transformer", {"adam_lit": 3 * ms, "torch fused": 3 * ms}),
        fake("torch-2.1M", {"adam_lit": 1 * ms, "torch fused": 0.95 * ms}),
        fake("torch-4.8k", {"adam_lit": 50 * us, "torch fused": 40 * us}),         # 0.8x: not met
        fake("jax-2.1M", {"Keras jit": 1 * ms, "optax jit": 1 * ms}, errors={"adam_lit jit": "ConcretizationTypeError: x"}),
        fake("lazy", {"LazyAdam": 100 * us, "Adam, dense": 10 * ms}),
        fake("1e6", {}, alloc={"adam_lit": (1 << 20) + 1})]}
    res["cases"][2]["alloc"] = {"adam_lit": 1 << 20}
    met = {c: m for c, _, _, m in B.targets(res) if c not in FRONT_CASES}
    assert met == {"NumPy, 1 tensor of 1e4": "yes", "NumPy, small MLP (4 tensors, 4.8k)": "no", "NumPy, 1e6": "yes",
                   "NumPy, 1e7": "no", "NumPy, 1000 tensors of 1000": "no", "NumPy, transformer-like 78 tensors, 4.7M": "yes",
                   "torch CPU tensors, 4 tensors 2.1M and 4.8k": "no", "JAX, jitted `stateless_apply`, 4 tensors 2.1M": "no",
                   "LazyAdam, 1e6 x 64, 1000 rows": "yes", "per-step allocation, dense": "yes"}
    text = {c: t for c, _, t, _ in B.targets(res)}
    assert text["NumPy, 1000 tensors of 1000"].startswith("2.90x (adam_lit 1 ms, torch foreach 2.9 ms)")
    assert text["NumPy, 1e7"].endswith("78 % of the roofline")
    assert text["JAX, jitted `stateless_apply`, 4 tensors 2.1M"] == "adam_lit jit failed: ConcretizationTypeError: x"
    # the JAX target: the ratio and the bits, both
    res["cases"][8] = fake("jax-2.1M", {"adam_lit jit": 1 * ms, "optax jit": 0.8 * ms}, bits=0)
    assert dict((c, m) for c, _, _, m in B.targets(res))["JAX, jitted `stateless_apply`, 4 tensors 2.1M"] == "yes"
    res["cases"][8]["bits"] = 3
    assert dict((c, m) for c, _, _, m in B.targets(res))["JAX, jitted `stateless_apply`, 4 tensors 2.1M"] == "no"
    del res["cases"][8]["bits"]
    assert dict((c, m) for c, _, _, m in B.targets(res))["JAX, jitted `stateless_apply`, 4 tensors 2.1M"] == "not measured"
    # the front ends: their own rows against the peers
    res["cases"] += [fake("torch-transformer", {"adam_lit.torch": 2 * ms, "torch fused": 1.9 * ms})]
    res["cases"][6]["times"]["adam_lit.torch"] = 1 * ms
    res["cases"][9]["times"].update({"adam_lit.torch LazyAdam": 1 * ms, "torch SparseAdam": 21 * ms})
    res["cases"][8]["times"]["adam_lit.optax jit"] = 1.25 * ms
    met = {c: m for c, _, _, m in B.targets(res)}
    assert [met[c] for c in FRONT_CASES] == ["yes", "yes", "no"]      # 0.95x, 21x, optax 0.8 / 1.25 = 0.64x
    # cases not in the run are not measured; a quick run judges nothing
    assert {m for _, _, _, m in B.targets({"quick": False, "cases": []})} == {"not measured"}
    res["quick"] = True
    assert {m for _, _, _, m in B.targets(res)} == {"quick run", "not measured"}


def test_gpu_results_still_tabulate_and_plot(tmp_path):
    "A result shaped as `run_gpu` returns it (no groups, no errors): the tables, the GPU target and the plot still work."
    need("matplotlib")
    times = lambda k: {n: (1 + i) * 1e-4 * k for i, n in enumerate(B.GPU_IMPLS)}
    cases = [{"label": B._label(n), "tensors": 1, "size": n, "params": n, "times": times(1), "alloc": {}, "interleaved": True,
              "floor": 28 * n / 3e12} for n in B.GPU_SIZES]
    cases += [{"label": f"{k} × {n}", "tensors": k, "size": n, "params": k * n, "times": times(2), "alloc": {}, "interleaved": True,
               "floor": 28 * k * n / 3e12, "flat_steps": 1} for k, n in B.GPU_SHAPES]
    bw = {"bytes_per_s": 3e12, "method": "CuPy copy", "all": {"CuPy copy": 3e12}, "n": 1, "samples": 1, "median": 3e12,
          "lowest": 3e12, "peak": 3.35e12}
    res = {"date": "d", "reps": 1, "impls": list(B.GPU_IMPLS), "gpu": True, "cases": cases, "bandwidth": bw, "seconds": 1.0,
           "machine": {"gpu": "G", "cpu": "G", "sms": 1, "memory_gib": 1.0, "cupy": "x", "cores": "1 SMs"}}
    text = B.tables(res)
    assert "### CuPy arrays on the GPU" in text and "Peer time ÷ adam_lit time" in text and "Share of the roofline" in text
    rows = B.gpu_targets(res)        # read on the training loop's row (one tensor) and on the flat buffer (100 tensors)
    assert len(rows) == 2 and all(met in ("yes", "no") for _, _, met in rows), rows
    assert B.plot(res, tmp_path / "gpu.png").stat().st_size > 10_000


# ---- the front ends' rows

def test_torch_front_end_row_gives_the_rule_bits():
    need("torch")
    check_trajectory("adam_lit.torch", B.make_front_torch, exact=True)


def test_optax_front_end_row_steps():
    "Under jit XLA may fuse differently from eager NumPy (the bits are Keras's jitted ones, tests/test_optax_frontend.py)."
    need("jax"); need("optax")
    check_trajectory("adam_lit.optax jit", B.make_front_optax, exact=False)


def test_torch_lazy_front_end_row_gives_the_lazy_rule(table):
    need("torch")
    t0, sparse = table
    step = B.make_front_lazy([t0.copy()], sparse)
    for n in range(1, STEPS + 1):
        step()
        assert step.params()[0].tobytes() == lazy_rule(t0, sparse, n).tobytes(), f"adam_lit.torch LazyAdam: step {n}"
