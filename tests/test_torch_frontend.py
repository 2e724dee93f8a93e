"""`adam_lit.torch`: Adam, AdamW and LazyAdam as `torch.optim.Optimizer`s (nbs/17_torch.ipynb).

What is claimed, and checked here:
* `numerics="torch"`: the bits of `torch.optim.Adam` / `torch.optim.AdamW` on CPU tensors (their default, the
  single-tensor step), parameters and every state tensor, every step, with AMSGrad, L2 and decoupled weight decay,
  param groups, float32 and float64; and the state_dict of either continues in the other bit for bit.
* default (`numerics="keras"`): the bits of `adam_lit.Adam` / `AdamW` on NumPy copies of the parameters, with
  schedulers writing `lr` and `betas` every step, AMSGrad, both weight decays; the compiled training-loop step is the
  one taken.
* `LazyAdam` on `nn.Embedding(sparse=True)` / `nn.EmbeddingBag(sparse=True)`: the bits of `adam_lit.LazyAdam` on a
  NumPy copy given the same rows as `IndexedSlices` (uncoalesced), untouched rows untouched; `torch.optim.SparseAdam`
  computes the same formula (epsilon before the bias correction), so with the same `eps` it agrees to rounding.
* PyTorch's generic optimizer tests that apply to any optimizer (test/test_optim.py of PyTorch): state_dict round
  trip through `torch.save` / `torch.load(weights_only=True)` continuing bit for bit, older state_dicts, a step count
  saved as a number, deepcopy, param groups and `add_param_group`, `zero_grad(set_to_none)`, closures, parameters
  without gradients, zero gradients, step hooks, tensor `lr`, schedulers going the right direction, `torch.compile`.
* complex parameters, stepped through `torch.view_as_real` as torch.optim steps them: torch.optim.Adam's bits with
  numerics "torch" (state included, complex), adam_lit's Adam on the real view by default; state_dicts both ways.
* bad arguments: a ValueError or TypeError naming the argument, before anything changes.
* `maximize=True`: torch.optim.Adam's bits with numerics "torch", adam_lit's step on `-g` by default.
* `numerics="torch"` counts steps per parameter, as torch.optim.Adam: a parameter without a gradient keeps its count.
* wrappers: `ZeroRedundancyOptimizer(optimizer_class=Adam)` (one process, gloo) steps with torch.optim.Adam's bits.
"""
from __future__ import annotations

import copy
import re
import io

import numpy as np
import pytest
from conftest import need

torch = need("torch", "adam_lit.torch is the PyTorch front end")

import adam_lit
from adam_lit import interop
from adam_lit._fastpath import _Loop
from adam_lit.backend import IndexedSlices
from adam_lit.torch import Adam, AdamW, LazyAdam
from adam_lit.lazyadam import _rows_kernel
HAVE_NUMBA = _rows_kernel(False, False) is not None     # the compiled row loop (numba); without it the NumPy one

DT = {np.float32: torch.float32, np.float64: torch.float64}


def params(seed=0, dtype=torch.float32, shapes=((20, 7), (7,), (3, 4, 5))):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=dtype)) for s in shapes]


def clones(ps): return [torch.nn.Parameter(p.detach().clone()) for p in ps]


def grads(ps, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) * 10.0 ** float(torch.randint(-3, 3, (), generator=g))
            for p in ps]


def set_grads(ps, gs):
    for p, g in zip(ps, gs): p.grad = g.clone()


def same_bits(a, b, what=""):
    "The same dtype, shape and bytes (NaNs and signed zeros included)."
    a, b = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype, a.shape, b.shape)
    if a.dtype == torch.bfloat16: a, b = a.view(torch.int16), b.view(torch.int16)     # (NumPy has no bfloat16)
    if not np.array_equal(a.numpy().reshape(-1).view(np.uint8), b.numpy().reshape(-1).view(np.uint8)):
        pytest.fail(f"{what}: {int((a != b).sum())} of {a.numel()} elements differ")


# ------------------------------------------------------------------------------ numerics="torch" = torch.optim.Adam
TORCH_CASES = {
    "adam": (torch.optim.Adam, Adam, dict(lr=1e-2)),
    "amsgrad": (torch.optim.Adam, Adam, dict(lr=3e-3, betas=(0.8, 0.99), amsgrad=True)),
    "l2": (torch.optim.Adam, Adam, dict(lr=1e-2, weight_decay=0.1)),
    "adam-decoupled": (torch.optim.Adam, Adam, dict(lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True)),
    "adamw": (torch.optim.AdamW, AdamW, dict(lr=1e-2, weight_decay=0.05, amsgrad=True)),
    "eps": (torch.optim.Adam, Adam, dict(lr=1e-3, eps=1e-3, betas=(0.3, 0.95))),
    "maximize": (torch.optim.Adam, Adam, dict(lr=1e-2, maximize=True)),
    "maximize-l2-amsgrad": (torch.optim.Adam, Adam, dict(lr=1e-2, maximize=True, weight_decay=0.1, amsgrad=True)),
    "adamw-maximize": (torch.optim.AdamW, AdamW, dict(lr=1e-2, weight_decay=0.05, maximize=True)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", list(TORCH_CASES))
def test_torch_numerics_are_torch_optim_bits(case, dtype):
    ref_cls, cls, kw = TORCH_CASES[case]
    ps = params(1, dtype); qs = clones(ps)
    groups = lambda xs: [{"params": xs[:2]}, {"params": xs[2:], "lr": kw["lr"] / 3}]    # two groups, two lrs
    ref, mine = ref_cls(groups(ps), **kw), cls(groups(qs), numerics="torch", **kw)
    for t in range(30):
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs)
        ref.step(); mine.step()
        for j, (p, q) in enumerate(zip(ps, qs)):
            same_bits(q, p, f"step {t} param {j}")
            for key, val in ref.state[p].items():
                if key != "step": same_bits(mine.state[q][key], val, f"step {t} param {j} {key}")
            assert float(mine.state[q]["step"]) == float(ref.state[p]["step"]) == t + 1


@pytest.mark.parametrize("gradients", ["every step", "frozen layer and branch"])
@pytest.mark.parametrize("direction", ["torch->lit", "lit->torch"])
def test_torch_numerics_state_dict_continues_in_the_other(direction, gradients):
    """A state_dict of torch.optim.Adam continues in adam_lit.torch.Adam(numerics='torch') bit for bit, and the other way;
    also one whose parameters have different step counts (some steps without a gradient: `pattern_grads`)."""
    ps = params(2); qs = clones(ps)
    kw = dict(lr=5e-3, amsgrad=True, weight_decay=0.01)
    first, second = (torch.optim.Adam, Adam) if direction == "torch->lit" else (Adam, torch.optim.Adam)
    extra = lambda c: dict(numerics="torch") if c is Adam else dict(foreach=False)
    make = grads if gradients == "every step" else pattern_grads
    a = first(ps, **kw, **extra(first))
    for t in range(7):
        set_some(ps, make(ps, t)); a.step()
    sd = copy.deepcopy(a.state_dict())
    assert len({float(st["step"]) for st in sd["state"].values()}) == (1 if gradients == "every step" else 3)
    b = second(qs, **kw, **extra(second))
    with torch.no_grad():
        for p, q in zip(ps, qs): q.copy_(p)
    b.load_state_dict(sd)
    for t in range(7, 15):
        gs = make(ps, t); set_some(ps, gs); set_some(qs, gs)
        a.step(); b.step()
        for j, (p, q) in enumerate(zip(ps, qs)): same_bits(q, p, f"{direction}: step {t} param {j}")


# ------------------------------------------------------------------------------ numerics="keras" = adam_lit on NumPy
def lit_run(make_lit, ps, steps, per_step=None, l2=0.0):
    "adam_lit on NumPy copies of `ps`, the same gradients; `per_step(opt, t)` sets the options a scheduler would."
    xs = [p.detach().numpy().copy() for p in ps]
    opt = make_lit()
    for t in range(steps):
        if per_step: per_step(opt, t)
        gs = grads(ps, t)
        if l2: gs = [torch.add(g, torch.from_numpy(x), alpha=l2) for g, x in zip(gs, xs)]
        opt.apply([g.numpy() for g in gs], xs)
    return xs, opt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", ["adam", "amsgrad", "adamw", "l2", "steplr", "lambdalr", "onecycle"])
def test_keras_numerics_are_adam_lit_bits(case, dtype):
    ps = params(3, dtype)
    steps = 40
    front = {"adam": lambda q: Adam(q, lr=1e-2),
             "amsgrad": lambda q: Adam(q, lr=1e-2, betas=(0.8, 0.99), eps=1e-5, amsgrad=True),
             "adamw": lambda q: AdamW(q, lr=1e-2, weight_decay=0.03),
             "l2": lambda q: Adam(q, lr=1e-2, weight_decay=0.03),
             "steplr": lambda q: Adam(q, lr=1e-2),
             "lambdalr": lambda q: Adam(q, lr=1e-2),
             "onecycle": lambda q: Adam(q, lr=1e-2)}[case]
    lit = {"adam": lambda: adam_lit.Adam(learning_rate=1e-2),
           "amsgrad": lambda: adam_lit.Adam(learning_rate=1e-2, beta_1=0.8, beta_2=0.99, epsilon=1e-5, amsgrad=True),
           "adamw": lambda: adam_lit.AdamW(learning_rate=1e-2, weight_decay=0.03),
           "l2": lambda: adam_lit.Adam(learning_rate=1e-2),
           "steplr": lambda: adam_lit.Adam(learning_rate=1e-2),
           "lambdalr": lambda: adam_lit.Adam(learning_rate=1e-2),
           "onecycle": lambda: adam_lit.Adam(learning_rate=1e-2)}[case]
    qs = clones(ps)
    opt = front(qs)
    sched = (torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.5) if case == "steplr" else
             torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1 / (1 + t)) if case == "lambdalr" else
             torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=steps) if case == "onecycle" else None)
    seen = []                                        # the (lr, beta_1) of each step, as the scheduler wrote them
    for t in range(steps):
        g0 = opt.param_groups[0]
        seen.append((float(g0["lr"]), float(g0["betas"][0])))
        set_grads(qs, grads(ps, t)); opt.step()
        if sched: sched.step()
    def per_step(o, t): o.learning_rate, o.beta_1 = seen[t]
    xs, ref = lit_run(lit, ps, steps, per_step if sched else None, l2=0.03 if case == "l2" else 0.0)
    for j, (q, x) in enumerate(zip(qs, xs)): same_bits(q, torch.from_numpy(x), f"{case} param {j}")
    eng = opt._engines[id(opt.param_groups[0])]
    for j, x in enumerate(xs):
        same_bits(opt.state[qs[j]]["exp_avg"], torch.from_numpy(ref.get_slot(x, "m")), f"m {j}")
        same_bits(opt.state[qs[j]]["exp_avg_sq"], torch.from_numpy(ref.get_slot(x, "v")), f"v {j}")
        assert np.shares_memory(opt.state[qs[j]]["exp_avg"].numpy(), eng.opt.get_slot(eng.xs[j], "m"))
    if case in ("adam", "adamw", "steplr"):                  # the compiled multi-tensor step is the one that ran
        assert isinstance(eng.opt.__dict__.get("_loop"), _Loop)
    if case == "onecycle":
        assert len({b for _, b in seen}) > 10 and len({lr for lr, _ in seen}) > 10


def test_lr_as_a_tensor_is_read_every_step():
    ps = params(4); qs = clones(ps)
    lr = torch.tensor(0.01)
    opt = Adam(qs, lr=lr)
    rates = [0.01, 0.02, 0.005, 0.0, 0.03]
    for t, r in enumerate(rates):
        lr.fill_(r)
        set_grads(qs, grads(ps, t)); opt.step()
    xs, _ = lit_run(lambda: adam_lit.Adam(learning_rate=0.01), ps, len(rates),
                    lambda o, t: setattr(o, "learning_rate", float(np.float32(rates[t]))))
    for q, x in zip(qs, xs): same_bits(q, torch.from_numpy(x), "tensor lr")


# ------------------------------------------------------------------------------ LazyAdam
def lazy_pair(kind, rows=60, dim=5, seed=0, **kw):
    torch.manual_seed(seed)
    mod = (torch.nn.Embedding(rows, dim, sparse=True) if kind == "embedding" else
           torch.nn.EmbeddingBag(rows, dim, mode="sum", sparse=True))
    table = mod.weight.detach().numpy().copy()
    return mod, table


@pytest.mark.parametrize("kind", ["embedding", "bag"])
@pytest.mark.parametrize("opts", [{}, {"amsgrad": True}, {"weight_decay": 0.02}, {"row_bias_correction": True},
                                  {"amsgrad": True, "weight_decay": 0.02, "row_bias_correction": True}],
                         ids=["plain", "amsgrad", "decay", "rowbias", "all"])
def test_lazy_adam_is_adam_lit_lazy_adam_bits(kind, opts):
    mod, table = lazy_pair(kind)
    mine = LazyAdam(mod.parameters(), lr=0.03, **opts)
    lit = {"amsgrad": "amsgrad", "weight_decay": "weight_decay", "row_bias_correction": "row_bias_correction"}
    ref = adam_lit.LazyAdam(learning_rate=0.03, **{lit[k]: v for k, v in opts.items()})
    before = mod.weight.detach().clone()
    g = torch.Generator().manual_seed(5)
    for t in range(25):
        idx = torch.randint(0, 50, (40,), generator=g)                 # repeats; rows 50.. never touched
        mine.zero_grad()
        out = mod(idx) if kind == "embedding" else mod(idx.view(10, 4))
        (out * torch.randn(out.shape, generator=g)).sum().backward()
        sg = mod.weight.grad
        assert sg.is_sparse and not sg.is_coalesced()
        ref.apply([IndexedSlices(sg._values().numpy().copy(), sg._indices()[0].numpy().copy(), tuple(sg.shape))], [table])
        v0 = mod.weight._version
        mine.step()
        assert mod.weight._version > v0                                # autograd sees the in-place update
    same_bits(mod.weight, torch.from_numpy(table), "table")
    same_bits(mod.weight[50:], before[50:], "untouched rows")
    same_bits(mine.state[mod.weight]["exp_avg"], torch.from_numpy(ref.get_slot(table, "m")), "m")
    if opts.get("row_bias_correction"):
        same_bits(mine.state[mod.weight]["row_step"], torch.from_numpy(ref.get_slot(table, "row_step")), "row_step")


def test_lazy_adam_dense_gradient_is_adam():
    ps = params(6); qs, rs = clones(ps), clones(ps)
    lazy, adamw = LazyAdam(qs, lr=0.01, weight_decay=0.02), AdamW(rs, lr=0.01, weight_decay=0.02)
    for t in range(10):
        gs = grads(ps, t); set_grads(qs, gs); set_grads(rs, gs)
        lazy.step(); adamw.step()
    for q, r in zip(qs, rs): same_bits(q, r, "dense LazyAdam")


def test_lazy_adam_agrees_with_sparse_adam_to_rounding():
    "torch.optim.SparseAdam adds eps before the bias correction, like Keras: the same formula, other roundings."
    mod, _ = lazy_pair("embedding", rows=200, dim=8, seed=1)
    mod2 = copy.deepcopy(mod)
    mine, ref = LazyAdam(mod.parameters(), lr=0.01, eps=1e-8), torch.optim.SparseAdam(mod2.parameters(), lr=0.01, eps=1e-8)
    g = torch.Generator().manual_seed(2)
    for t in range(30):
        idx = torch.randint(0, 200, (64,), generator=g)
        w = torch.randn(64, 8, generator=g)
        for m, o in ((mod, mine), (mod2, ref)):
            o.zero_grad(); (m(idx) * w).sum().backward(); o.step()
    diff = (mod.weight - mod2.weight).abs().max().item()
    moved = (mod2.weight - lazy_pair("embedding", rows=200, dim=8, seed=1)[0].weight).abs().max().item()
    assert moved > 0.05 and diff < 1e-5 * moved * 30, (diff, moved)   # ulps of 30 steps, against moves of 1e-2


def test_lazy_adam_speed_path_is_the_row_kernel(monkeypatch):
    "The sparse step goes through adam_lit's in-place row pass (`LazyAdam._rows_run` with numba, else `_rows_in_place`), nothing dense."
    mod, _ = lazy_pair("embedding", rows=1000)
    opt = LazyAdam(mod.parameters())
    calls = []
    for name in ("_rows_in_place", "_rows_run"):
        orig = getattr(adam_lit.LazyAdam, name)
        monkeypatch.setattr(adam_lit.LazyAdam, name, lambda self, *a, _o=orig, _n=name: calls.append(_n) or _o(self, *a))
    mod(torch.tensor([1, 2, 2])).sum().backward(); opt.step()
    assert calls == ["_rows_run" if HAVE_NUMBA else "_rows_in_place"], calls


# ------------------------------------------------------------------------------ PyTorch's generic optimizer tests
def train(opt_fn, ps, steps, start=0):
    opt = opt_fn(ps)
    for t in range(start, start + steps):
        set_grads(ps, grads(ps, t)); opt.step()
    return opt


@pytest.mark.parametrize("cls", [Adam, AdamW, LazyAdam])
@pytest.mark.parametrize("numerics", ["keras", "torch"])
def test_state_dict_round_trip_continues_bit_for_bit(cls, numerics):
    "test_state_dict_deterministic: save, torch.load(weights_only=True) into a fresh optimizer, continue: the same bits."
    ps = params(7)
    kw = dict(lr=0.01, amsgrad=True, numerics=numerics)
    a = train(lambda x: cls([{"params": x[:1]}, {"params": x[1:], "lr": 0.003}], **kw), ps, 6)
    buf = io.BytesIO(); torch.save(a.state_dict(), buf); buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][0]["step"] is not sd["state"][1]["step"]          # one tensor per parameter, as torch's
    qs = clones(ps)
    b = cls([{"params": qs[:1]}, {"params": qs[1:], "lr": 1.0}], **kw)  # the loaded groups' options win
    b.load_state_dict(sd)
    assert b.param_groups[1]["lr"] == 0.003
    for t in range(6, 14):
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs)
        a.step(); b.step()
    for p, q in zip(ps, qs): same_bits(q, p, "continued")
    for p, q in zip(ps, qs):
        for key in a.state[p]: same_bits(b.state[q][key], a.state[p][key], key)


def test_state_dict_is_read_by_interop():
    "adam_lit.interop reads the state_dict (torch's layout) into adam_lit.Adam, which continues with the same bits."
    ps = params(8)
    a = train(lambda x: AdamW(x, lr=0.01, weight_decay=0.02, amsgrad=True), ps, 5)
    xs = [p.detach().numpy().copy() for p in ps]
    lit = adam_lit.AdamW(learning_rate=0.01, weight_decay=0.02, amsgrad=True); lit.build(xs)
    with pytest.warns(UserWarning, match="epsilon"):          # (interop says where PyTorch's epsilon differs)
        interop.from_torch_state_dict(lit, a.state_dict())
    assert lit.iterations == 5
    for t in range(5, 10):
        gs = grads(ps, t); set_grads(ps, gs); a.step(); lit.apply([g.numpy() for g in gs], xs)
    for p, x in zip(ps, xs): same_bits(p, torch.from_numpy(x), "interop")


def test_older_state_dict_and_step_as_a_number_load():
    "test_can_load_older_state_dict / test_load_nontensor_step: missing group options take the defaults; a float step."
    ps = params(9)
    a = train(lambda x: Adam(x, lr=0.01), ps, 3)
    sd = copy.deepcopy(a.state_dict())
    for g in sd["param_groups"]:
        del g["decoupled_weight_decay"], g["maximize"]
    for st in sd["state"].values(): st["step"] = float(st["step"])
    qs = clones(ps)
    b = Adam(qs, lr=0.01); b.load_state_dict(sd)
    resaved = b.state_dict()            # before any step: the number became a tensor, as torch.optim.Adam's __setstate__
    assert all(torch.is_tensor(st["step"]) and float(st["step"]) == 3.0 for st in resaved["state"].values())
    for t in range(3, 6):
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs); a.step(); b.step()
    for p, q in zip(ps, qs): same_bits(q, p, "older state_dict")
    assert b.param_groups[0]["maximize"] is False


@pytest.mark.parametrize("cls", [Adam, AdamW, LazyAdam])
def test_state_dict_pre_hook_may_store_any_value(cls):
    "test_state_dict_pre_hook: torch lets a pre-hook put any value into `state`; state_dict hands it on."
    o = cls(params(2), lr=0.01)
    o.register_state_dict_pre_hook(lambda opt: opt.state.__setitem__("test", 1))
    assert o.state_dict()["state"]["test"] == 1


def test_deepcopy_continues_independently():
    "test_deepcopy_copies_all_public_attrs: the copy has the same public attributes and continues on its own."
    ps = params(10)
    model = torch.nn.ParameterList(ps)
    a = train(lambda x: Adam(x, lr=0.01, amsgrad=True), list(model), 4)
    model2, a2 = copy.deepcopy((model, a))
    public = lambda o: {k for k in vars(o) if not k.startswith("_")}
    assert public(a2) == public(a)
    assert a2.defaults == a.defaults and [len(g["params"]) for g in a2.param_groups] == [len(g["params"]) for g in a.param_groups]
    for t in range(4, 8):
        gs = grads(ps, t); set_grads(list(model), gs); set_grads(list(model2), gs); a.step(); a2.step()
    for p, q in zip(model, model2): same_bits(q, p, "deepcopy")
    assert not np.shares_memory(a.state[model[0]]["exp_avg"].numpy(), a2.state[model2[0]]["exp_avg"].numpy())


def test_param_groups_and_add_param_group():
    "Per-group options: a group with lr 0 does not move; a group added later gets the defaults and steps from its own 0."
    ps = params(11)
    opt = Adam([{"params": ps[:1], "lr": 0.0}, {"params": ps[1:2]}], lr=0.01, betas=(0.8, 0.9))
    before = [p.detach().clone() for p in ps]
    set_grads(ps[:2], grads(ps[:2], 0)); opt.step()
    same_bits(ps[0], before[0], "lr 0")
    assert not torch.equal(ps[1], before[1])
    opt.add_param_group({"params": ps[2:], "weight_decay": 0.1})
    assert opt.param_groups[2]["betas"] == (0.8, 0.9) and opt.param_groups[2]["lr"] == 0.01
    set_grads(ps, grads(ps, 1)); opt.step()
    assert float(opt.state[ps[1]]["step"]) == 2 and float(opt.state[ps[2]]["step"]) == 1
    with pytest.raises(ValueError, match="some parameters appear in more than one parameter group"):
        opt.add_param_group({"params": ps[:1]})


def test_zero_grad_set_to_none():
    ps = params(12)
    opt = Adam(ps)
    set_grads(ps, grads(ps, 0)); opt.step()
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in ps)
    opt.zero_grad()
    assert all(p.grad is None for p in ps)


def test_step_with_closure():
    "The closure runs under enable_grad (even when step is called under no_grad) and its loss is returned."
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = Adam([w], lr=0.1)
    def closure():
        opt.zero_grad()
        loss = (w ** 2).sum()
        loss.backward()
        return loss
    with torch.no_grad():
        loss = opt.step(closure)
    assert float(loss.detach()) == 5.0 and w.grad is not None
    for _ in range(100): opt.step(closure)
    assert float((w.detach() ** 2).sum()) < 0.05


def test_params_without_grad_are_skipped():
    "test_step_is_noop_when_params_have_no_grad; a parameter that gets a gradient later starts from zero moments."
    ps = params(13)
    opt = Adam(ps, lr=0.01)
    before = [p.detach().clone() for p in ps]
    opt.step()                                                    # no gradients at all: nothing, not even state
    for p, b in zip(ps, before): same_bits(p, b, "no grads")
    assert len(opt.state) == 0
    ps[0].grad = grads(ps, 0)[0]
    opt.step()
    same_bits(ps[1], before[1], "param 1 without grad"); same_bits(ps[2], before[2], "param 2 without grad")
    assert not torch.equal(ps[0], before[0])
    assert not opt.state[ps[1]]["exp_avg"].any()


def test_zero_grads_are_a_noop():
    "test_step_is_noop_for_zero_grads: from fresh state, zero gradients move nothing (Adam's m = 0)."
    ps = params(14)
    opt = Adam(ps, lr=0.1, amsgrad=True)
    before = [p.detach().clone() for p in ps]
    for _ in range(3):
        for p in ps: p.grad = torch.zeros_like(p)
        opt.step()
    for p, b in zip(ps, before): same_bits(p, b, "zero grads")


def test_step_hooks_run():
    ps = params(15)
    opt = Adam(ps)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))
    set_grads(ps, grads(ps, 0)); opt.step()
    assert calls == ["pre", "post"]


def test_global_step_hooks_and_the_profilers_label():
    # the step skips torch's wrapper only while it has nothing to do: global hooks and a profiler still get theirs
    from torch.optim.optimizer import register_optimizer_step_post_hook, register_optimizer_step_pre_hook
    ps = params(16)
    opt, ref = LazyAdam(ps), LazyAdam([torch.nn.Parameter(p.detach().clone()) for p in ps])
    calls = []
    handles = [register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("pre", o))),
               register_optimizer_step_post_hook(lambda o, a, k: calls.append(("post", o)))]
    try:
        set_grads(ps, grads(ps, 0)); opt.step()
    finally:
        for h in handles: h.remove()
    assert calls == [("pre", opt), ("post", opt)]
    set_grads(ps, grads(ps, 1)); opt.step()
    assert len(calls) == 2                                       # removed: not called again
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        set_grads(ps, grads(ps, 2)); opt.step()
    assert "Optimizer.step#LazyAdam.step" in {e.key for e in prof.key_averages()}
    for k in range(3):                                            # the same steps, no hooks, no profiler: the same bits
        set_grads(ref.param_groups[0]["params"], grads(ps, k)); ref.step()
    for p, q in zip(ps, ref.param_groups[0]["params"]): same_bits(p, q, "hooked and plain steps")


def test_scheduler_goes_right_direction():
    "test_forloop_goes_right_direction with a scheduler: a least-squares problem, loss down by 10x, lr decayed."
    g = torch.Generator().manual_seed(0)
    A, b = torch.randn(30, 5, generator=g), torch.randn(30, generator=g)
    for cls in (Adam, AdamW, LazyAdam):
        w = torch.nn.Parameter(torch.zeros(5))
        opt = cls([w], lr=0.1)
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.99)
        best = float(((A @ torch.linalg.lstsq(A, b[:, None]).solution[:, 0] - b) ** 2).mean())
        first = None
        for _ in range(200):
            opt.zero_grad(); loss = ((A @ w - b) ** 2).mean(); loss.backward(); opt.step(); sched.step()
            first = float(loss.detach()) if first is None else first
        assert float(loss.detach()) - best < (first - best) / 100, (cls, float(loss.detach()), best, first)
        assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 0.99 ** 200)


def test_torch_compile_training_step():
    "A compiled training step (dynamo traces the model, the optimizer step runs eagerly) gives the eager step's bits."
    def run(compiled):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        opt = Adam(model.parameters(), lr=0.01)
        x, y = torch.randn(16, 4), torch.randn(16, 1)
        def step():
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            opt.step()
            return loss.detach()
        f = torch.compile(step, backend="eager") if compiled else step
        return [float(f()) for _ in range(4)], [p.detach().clone() for p in model.parameters()]
    (l1, p1), (l2, p2) = run(False), run(True)
    assert l1 == l2 and l1[-1] < l1[0]
    for a, b in zip(p1, p2): same_bits(a, b, "compiled")


def test_storage_replaced_keeps_state():
    "`p.data = ...` (new storage): the next step works on the new memory, the moments carried over."
    ps = params(16); qs = clones(ps)
    a, b = train(lambda x: Adam(x, lr=0.01), ps, 3), train(lambda x: Adam(x, lr=0.01), qs, 3)
    qs[0].data = qs[0].data.clone()
    for t in range(3, 6):
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs); a.step(); b.step()
    for p, q in zip(ps, qs): same_bits(q, p, "storage replaced")


def test_repr_and_classes():
    opt = LazyAdam([torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.Optimizer) and "LazyAdam" in repr(opt) and "lr: 0.001" in repr(opt)
    assert opt.defaults["eps"] == 1e-7 and Adam([torch.zeros(1, requires_grad=True)], numerics="torch").defaults["eps"] == 1e-8
    assert AdamW([torch.zeros(1, requires_grad=True)]).defaults["weight_decay"] == 0.01


# ------------------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize("kw, err, msg", [
    (dict(lr=-0.1), ValueError, "`lr`"), (dict(lr=float("inf")), ValueError, "`lr`"), (dict(lr="0.1"), TypeError, "`lr`"),
    (dict(betas=(1.0, 0.999)), ValueError, r"`betas\[0\]`"), (dict(betas=(0.9, -0.1)), ValueError, r"`betas\[1\]`"),
    (dict(betas=0.9), ValueError, "`betas`"), (dict(eps=-1.0), ValueError, "`eps`"),
    (dict(weight_decay=-1e-3), ValueError, "`weight_decay`"), (dict(amsgrad="yes"), TypeError, "`amsgrad`"),
    (dict(maximize="yes"), TypeError, "`maximize`"), (dict(numerics="optax"), ValueError, "`numerics`"),
    (dict(lr=torch.tensor([0.1, 0.2])), ValueError, "`lr`"),
])
def test_bad_arguments(kw, err, msg):
    with pytest.raises(err, match=msg):
        Adam([torch.nn.Parameter(torch.zeros(2))], **kw)


def test_lazy_bad_arguments():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(TypeError, match="row_bias_correction"): LazyAdam([p], row_bias_correction=1)
    with pytest.raises(ValueError, match="row_bias_correction"): LazyAdam([p], row_bias_correction=True, numerics="torch")


def snapshot(opt, ps):
    return ([p.detach().clone() for p in ps], {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in ps})


def unchanged(opt, ps, snap):
    for p, b in zip(ps, snap[0]): same_bits(p, b, "param changed by a failed step")
    for p in ps:
        for k, v in snap[1][id(p)].items(): same_bits(opt.state[p][k], v, f"state {k} changed by a failed step")


@pytest.mark.parametrize("spoil, msg", [
    (lambda opt, ps: opt.param_groups[1].__setitem__("betas", (0.9, 1.5)), r"`betas\[1\]`.*param group 1"),
    (lambda opt, ps: opt.param_groups[1].__setitem__("lr", -1.0), r"`lr`.*param group 1"),
    (lambda opt, ps: setattr(ps[2].grad, "data", torch.zeros(2, 2)), "parameter 0 of param group 1 has shape"),
    (lambda opt, ps: setattr(ps[2].grad, "data", torch.zeros(ps[2].shape, dtype=torch.float64)), "dtype"),
])
def test_a_failed_step_changes_nothing(spoil, msg):
    ps = params(17)
    opt = Adam([{"params": ps[:2]}, {"params": ps[2:]}], lr=0.01)
    set_grads(ps, grads(ps, 0)); opt.step()
    set_grads(ps, grads(ps, 1))
    snap = snapshot(opt, ps)
    spoil(opt, ps)
    with pytest.raises((ValueError, TypeError), match=msg):
        opt.step()
    unchanged(opt, ps, snap)


def test_sparse_gradient_with_l2_is_refused():
    mod, _ = lazy_pair("embedding")
    opt = Adam(mod.parameters(), weight_decay=0.1)
    mod(torch.tensor([1, 2])).sum().backward()
    before = mod.weight.detach().clone()
    with pytest.raises(ValueError, match="sparse gradient"):
        opt.step()
    same_bits(mod.weight, before, "sparse L2")


def test_loaded_different_step_counts_are_refused():
    ps = params(18)
    a = train(lambda x: Adam(x), ps, 2)
    sd = copy.deepcopy(a.state_dict())
    sd["state"][1]["step"] = torch.tensor(7.0)
    b = Adam(clones(ps)); b.load_state_dict(sd)
    qs = b.param_groups[0]["params"]
    set_grads(qs, grads(qs, 0))
    with pytest.raises(ValueError, match=r"different step counts \[2.0, 7.0\].*numerics='torch'"):
        b.step()


# ------------------------------------------------------------------------------ CUDA (not run without a GPU)
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA path of adam_lit.torch is untested here")
def test_cuda_parameters_train():
    "CUDA parameters: adam_lit's pipeline on the tensors themselves; the state on the device, close to the NumPy bits."
    ps = params(19)
    qs = [torch.nn.Parameter(p.detach().cuda()) for p in ps]
    opt = Adam(qs, lr=0.01, amsgrad=True)
    for t in range(10):
        set_grads(qs, [g.cuda() for g in grads(ps, t)]); opt.step()
    xs, _ = lit_run(lambda: adam_lit.Adam(learning_rate=0.01, amsgrad=True), ps, 10)
    for q, x in zip(qs, xs):
        assert opt.state[q]["exp_avg"].device == q.device
        np.testing.assert_allclose(q.detach().cpu().numpy(), x, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------ narrow dtypes, pickling, one count
def test_bfloat16_needs_moment_dtype():
    "adam_lit's rule: beta_2 = 0.999 rounds to 1 in bfloat16, so the step is refused (naming moment_dtype) until asked."
    p = torch.nn.Parameter(torch.randn(6, dtype=torch.bfloat16))
    opt = Adam([p], lr=0.01)
    p.grad = torch.ones(6, dtype=torch.bfloat16)
    before = p.detach().clone()
    with pytest.raises(ValueError, match="moment_dtype"):
        opt.step()
    same_bits(p, before, "refused bfloat16 step")
    opt = Adam([p], lr=0.01, moment_dtype="float32")
    for _ in range(3): opt.step()
    assert p.dtype == torch.bfloat16 and opt.state[p]["exp_avg"].dtype == torch.float32
    assert (p.float() < before.float()).all()
    with pytest.raises(ValueError, match="moment_dtype"):
        Adam([p], moment_dtype="bfloat16")


def test_pickle_round_trip():
    import pickle
    ps = params(20)
    a = train(lambda x: LazyAdam(x, lr=0.01, row_bias_correction=True), ps, 3)
    model2, b = pickle.loads(pickle.dumps((ps, a)))
    assert isinstance(b, LazyAdam) and b._engine_kwargs == {"row_bias_correction": True}
    for t in range(3, 6):
        gs = grads(ps, t); set_grads(ps, gs); set_grads(model2, gs); a.step(); b.step()
    for p, q in zip(ps, model2): same_bits(q, p, "pickled")


def test_one_step_count_per_group():
    "A parameter without a gradient at a step keeps its value, but the group's count advances: adam_lit.Adam's semantics."
    ps = params(21); qs = clones(ps)
    opt = Adam(qs, lr=0.01)
    xs = [p.detach().numpy().copy() for p in ps]
    ref = adam_lit.Adam(learning_rate=0.01); ref.build(xs)
    for t in range(6):
        gs = grads(ps, t)
        have = [j for j in range(3) if not (t % 2 and j == 1)]           # parameter 1 has no gradient at odd steps
        for j, q in enumerate(qs): q.grad = gs[j].clone() if j in have else None
        opt.step()
        ref.apply([gs[j].numpy() for j in have], [xs[j] for j in have])
    for q, x in zip(qs, xs): same_bits(q, torch.from_numpy(x), "one count")
    assert float(opt.state[qs[1]]["step"]) == 6.0


def pattern_grads(ps, t):
    "Gradients as a model with a frozen-then-unfrozen layer and a branch used every third step gives them (None: no gradient)."
    gs = grads(ps, t)
    have = {0: True, 1: t % 3 == 0, 2: t >= 5}
    return [g if have[j] else None for j, g in enumerate(gs)]


def set_some(ps, gs):
    for p, g in zip(ps, gs): p.grad = None if g is None else g.clone()


@pytest.mark.parametrize("case", list(TORCH_CASES) + ["lazy-dense", "lazy-dense-maximize"])
def test_torch_numerics_count_per_parameter(case):
    """numerics "torch": one count per parameter, as torch.optim.Adam keeps: a parameter without a gradient at a step
    keeps its count, and its later steps use it. Parameters with different counts stepped at once (one call per count)
    give torch.optim's bits, parameters and every state tensor, `step` included (LazyAdam too: dense gradients are Adam's)."""
    lazy = {"lazy-dense": dict(lr=1e-2, amsgrad=True), "lazy-dense-maximize": dict(lr=1e-2, maximize=True)}
    ref_cls, cls, kw = (torch.optim.Adam, LazyAdam, lazy[case]) if case in lazy else TORCH_CASES[case]
    ps = params(31); qs = clones(ps)
    ref, mine = ref_cls(ps, foreach=False, **kw), cls(qs, numerics="torch", **kw)
    for t in range(12):
        gs = pattern_grads(ps, t); set_some(ps, gs); set_some(qs, gs)
        ref.step(); mine.step()
        for j, (p, q) in enumerate(zip(ps, qs)):
            same_bits(q, p, f"step {t} param {j}")
            for key, val in ref.state.get(p, {}).items(): same_bits(mine.state[q][key], val, f"step {t} param {j} {key}")
    assert [float(mine.state[q]["step"]) for q in qs] == [12.0, 4.0, 7.0]      # three counts, stepped together at the end


def test_torch_numerics_deleted_state_restarts_moments_and_count():
    "numerics 'torch': `del opt.state[p]` restarts p's moments and its count, as torch.optim.Adam's does."
    ps = params(33); qs = clones(ps)
    ref, mine = torch.optim.Adam(ps, lr=0.01, foreach=False), Adam(qs, lr=0.01, numerics="torch")
    for t in range(6):
        if t == 3: del ref.state[ps[0]]; del mine.state[qs[0]]
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs); ref.step(); mine.step()
        for j, (p, q) in enumerate(zip(ps, qs)): same_bits(q, p, f"step {t} param {j}")
    assert float(mine.state[qs[0]]["step"]) == 3.0 and float(mine.state[qs[1]]["step"]) == 6.0


@pytest.mark.parametrize("layout", ["one group, two counts", "two groups"])
def test_a_bad_sparse_row_is_refused_before_any_write(layout):
    """A sparse gradient with a row index out of range is refused before anything is written: with numerics 'torch'
    and parameters of different counts (one call per count), and when it is another group's (engines that step tensors)."""
    P = torch.nn.Parameter
    a, b = P(torch.randn(6, 2)), P(torch.randn(6, 2))
    groups = [a, b] if layout == "one group, two counts" else [{"params": [a]}, {"params": [b]}]
    o = LazyAdam(groups, lr=0.1, numerics="torch")
    sp = lambda rows: torch.sparse_coo_tensor(torch.tensor([rows]), torch.ones(len(rows), 2), (6, 2))
    a.grad, b.grad = sp([1]), None
    o.step()                                               # a's count is 1, b's 0
    a.grad, b.grad = sp([2]), sp([7])                       # row 7 of a table of 6
    before = [a.detach().clone(), b.detach().clone(), copy.deepcopy(o.state_dict())]
    with pytest.raises(ValueError, match=r"param group \d: IndexedSlices indices must lie in \[0, 6\), got values from 7 to 7"):
        o.step()
    same_bits(a, before[0], "a"); same_bits(b, before[1], "b")
    after = o.state_dict()
    for k, st in before[2]["state"].items():
        for key, val in st.items(): same_bits(after["state"][k][key], val, f"state {k} {key}")
    a.grad, b.grad = sp([2]), sp([3])                       # the step goes on as if the refused one had not been tried
    o.step()
    assert [float(o.state[p]["step"]) for p in (a, b)] == [2.0, 1.0]


def test_maximize_keras_numerics_is_the_step_on_negated_gradients():
    """`maximize=True` under the Keras numerics: adam_lit's step on `-g` bit for bit, dense gradients through the
    compiled step and LazyAdam's sparse rows; the user's `p.grad` is left as it was."""
    ps = params(41); qs = clones(ps)
    xs = [p.detach().numpy().copy() for p in ps]
    opt, ref = Adam(qs, lr=0.01, amsgrad=True, maximize=True), adam_lit.Adam(learning_rate=0.01, amsgrad=True)
    for t in range(6):
        gs = grads(ps, t); set_grads(qs, gs)
        opt.step(); ref.apply([(-g).numpy() for g in gs], xs)
        for j, q in enumerate(qs): same_bits(q.grad, gs[j], f"step {t}: p.grad of param {j} untouched")
    for j, (q, x) in enumerate(zip(qs, xs)): same_bits(q, torch.from_numpy(x), f"param {j}")
    emb = torch.nn.Parameter(torch.linspace(-1, 1, 40).reshape(10, 4))
    table = emb.detach().numpy().copy()
    lazy, lit = LazyAdam([emb], lr=0.05, maximize=True), adam_lit.LazyAdam(learning_rate=0.05)
    for t in range(5):
        rows, vals = torch.tensor([t % 10, 3, t % 10]), torch.full((3, 4), 0.1 * (t + 1)) * torch.tensor([1.0, -2.0, 3.0])[:, None]
        emb.grad = torch.sparse_coo_tensor(rows[None], vals, (10, 4))
        lazy.step(); lit.apply([IndexedSlices((-vals).numpy(), rows.numpy(), (10, 4))], [table])
    same_bits(emb, torch.from_numpy(table), "LazyAdam rows")


def test_maximize_switched_by_the_user_as_torch_optim_reads_it():
    "A group's `maximize` is read at every step (numerics 'torch': torch.optim.Adam's bits when it is switched mid-run)."
    ps = params(42); qs = clones(ps)
    ref, mine = torch.optim.Adam(ps, lr=0.01, weight_decay=0.1, foreach=False), Adam(qs, lr=0.01, weight_decay=0.1, numerics="torch")
    for t in range(8):
        if t == 3:
            for o in (ref, mine): o.param_groups[0]["maximize"] = True
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs); ref.step(); mine.step()
        for j, (p, q) in enumerate(zip(ps, qs)): same_bits(q, p, f"step {t} param {j}")


# -------------------------------------------------------------------------------------------------- complex parameters
COMPLEX_OPTS = [dict(), dict(amsgrad=True), dict(weight_decay=0.1), dict(weight_decay=0.05, decoupled_weight_decay=True),
                dict(amsgrad=True, weight_decay=0.1, decoupled_weight_decay=True)]


@pytest.mark.parametrize("opts", COMPLEX_OPTS)
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_parameters_as_torch_optim(opts, dtype):
    """Complex parameters as torch.optim steps them (its `view_as_real`: real and imaginary parts as two real numbers):
    numerics "torch" gives torch.optim.Adam's bits, state included (complex, as torch keeps it); the default gives
    adam_lit's Adam on the real view, bit for bit."""
    g = torch.Generator().manual_seed(3)
    p0 = torch.randn(6, 4, generator=g, dtype=dtype)
    mine, ref = torch.nn.Parameter(p0.clone()), torch.nn.Parameter(p0.clone())
    a = Adam([mine], lr=0.01, numerics="torch", **opts)
    b = torch.optim.Adam([ref], lr=0.01, **opts)
    k, kx = torch.nn.Parameter(p0.clone()), torch.view_as_real(p0.clone()).numpy().copy()
    c = Adam([k], lr=0.01, **opts)
    wd = opts.get("weight_decay") if opts.get("decoupled_weight_decay") else None
    lit = adam_lit.Adam(learning_rate=0.01, amsgrad=opts.get("amsgrad", False), weight_decay=wd)
    for s in range(5):
        gr = torch.randn(6, 4, generator=g, dtype=dtype) * 10.0 ** (s - 2)
        mine.grad, ref.grad, k.grad = gr.clone(), gr.clone(), gr.clone()
        if opts.get("weight_decay") and not opts.get("decoupled_weight_decay"):     # L2: added to the gradient, as torch
            gr = torch.add(gr, k.detach(), alpha=opts["weight_decay"])
        a.step(); b.step(); c.step()
        lit.apply([torch.view_as_real(gr).numpy().copy()], [kx])
    same_bits(mine, ref, "param")
    for key in b.state[ref]:
        same_bits(a.state[mine][key], b.state[ref][key], key)
    assert a.state[mine]["exp_avg"].dtype == dtype
    assert torch.view_as_real(k.detach()).numpy().tobytes() == kx.tobytes()


def test_complex_state_dict_goes_to_torch_optim_and_back():
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.complex64))
    a = Adam([p], lr=0.1, numerics="torch", amsgrad=True)
    for s in range(3):
        p.grad = torch.randn(5, dtype=torch.complex64); a.step()
    q = torch.nn.Parameter(p.detach().clone())
    b = torch.optim.Adam([q], lr=0.1, amsgrad=True)
    b.load_state_dict(copy.deepcopy(a.state_dict()))     # (a state_dict holds the optimizer's tensors, as torch's does)
    r = torch.nn.Parameter(p.detach().clone())
    c = Adam([r], lr=0.1, numerics="torch", amsgrad=True)
    c.load_state_dict(copy.deepcopy(b.state_dict()))
    gr = torch.randn(5, dtype=torch.complex64)
    for o, x in ((a, p), (b, q), (c, r)):
        x.grad = gr.clone(); o.step()
    same_bits(p, q); same_bits(r, q)


def test_complex_sparse_gradient_refused():
    e = torch.nn.Parameter(torch.zeros(4, 2, dtype=torch.complex64))
    o = LazyAdam([e])
    e.grad = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.ones(1, 2, dtype=torch.complex64), (4, 2))
    with pytest.raises(ValueError, match="sparse complex gradient: adam_lit takes sparse gradients of real tables only"):
        o.step()
    assert not torch.any(e.detach())


def test_torch_optim_switches_accepted_as_a_drop_in():
    "Code written for torch.optim.Adam passes foreach / fused: accepted (adam_lit's kernels run); capture refused."
    ps, ref = params(4), None
    ref = clones(ps)
    a = Adam(ps, lr=0.01, foreach=True, fused=False)
    b = Adam(ref, lr=0.01)
    for s in range(3):
        gs = grads(ps, s); set_grads(ps, gs); set_grads(ref, gs); a.step(); b.step()
    for p, q in zip(ps, ref): same_bits(p, q)
    AdamW(params(5), fused=True)
    for kw, err, word in ((dict(capturable=True), ValueError, "CUDA graph"), (dict(differentiable=True), ValueError, "not differentiable"),
                          (dict(fused="yes"), TypeError, "Argument `fused` must be None or a bool")):
        with pytest.raises(err, match=word): Adam(params(6), **kw)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", ["adam", "adamw", "l2", "steplr"])
def test_torch_numerics_with_a_tensor_lr_are_torch_optim_bits(case, dtype):
    "A float32 tensor `lr`: torch computes the step size (and AdamW's `1 - lr * wd`) in float32; numerics='torch' too."
    ref_cls, cls, kw = TORCH_CASES["adamw" if case == "adamw" else "l2" if case == "l2" else "adam"]
    kw = dict(kw, lr=torch.tensor(kw["lr"] * 1.37))
    ps = params(3, dtype); qs = clones(ps)
    ref, mine = ref_cls(ps, **kw), cls(qs, numerics="torch", **dict(kw, lr=kw["lr"].clone()))
    scheds = [torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.7) for o in (ref, mine)] if case == "steplr" else []
    for t in range(20):
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs)
        ref.step(); mine.step()
        for s in scheds: s.step()
        for j, (p, q) in enumerate(zip(ps, qs)): same_bits(q, p, f"{case} step {t} param {j}")
    lr_f = float(ref.param_groups[0]["lr"])     # the same group switched to a float lr: the double rule again
    for o in (ref, mine): o.param_groups[0]["lr"] = lr_f
    for t in range(20, 25):
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs)
        ref.step(); mine.step()
        for j, (p, q) in enumerate(zip(ps, qs)): same_bits(q, p, f"{case} float lr, step {t} param {j}")


@pytest.mark.parametrize("fused", [None, True])
def test_step_tensor_dtype_follows_torch_default_dtype(fused):
    "torch.optim.Adam's `step` is float64 under torch.set_default_dtype(torch.float64) (float32 with fused): the same here."
    old = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        ps = params(2); qs = clones(ps)
        a, b = Adam(ps, fused=fused), torch.optim.Adam(qs, fused=fused)
        set_grads(ps, grads(ps, 0)); set_grads(qs, grads(ps, 0)); a.step(); b.step()
        for p, q in zip(ps, qs): assert a.state[p]["step"].dtype == b.state[q]["step"].dtype
        assert b.state[qs[0]]["step"].dtype == (torch.float32 if fused else torch.float64)
        c = Adam(clones(ps), fused=fused); c.load_state_dict(a.state_dict())
        set_grads(c.param_groups[0]["params"], grads(ps, 1)); c.step()
        assert c.state[c.param_groups[0]["params"][0]]["step"].dtype == b.state[qs[0]]["step"].dtype
    finally:
        torch.set_default_dtype(old)


def test_tensor_betas_as_torch_takes_them():
    """torch.optim.Adam takes betas as two floats or two tensors: mixed pairs refused in its words; two tensors read as
    floats under Keras's numerics (the same bits as the floats), refused under numerics='torch', whose bits torch
    computes in the tensors' dtype (before: accepted, and 4e-9 away from torch.optim.Adam's)."""
    mixed = (0.9, torch.tensor(0.99))
    with pytest.raises(ValueError, match="betas must be either both floats or both Tensors: argument `betas` is \\(float, Tensor\\)"):
        Adam(params(2), betas=mixed)
    with pytest.raises(ValueError, match="Tensor betas are not supported with numerics='torch'"):
        Adam(params(2), betas=(torch.tensor(0.9), torch.tensor(0.99)), numerics="torch")
    o = Adam(params(2), numerics="torch")
    with pytest.raises(ValueError, match="both floats or both Tensors.*\\(param group 1\\)"):
        o.add_param_group({"params": params(3), "betas": mixed})
    assert len(o.param_groups) == 1
    ps = params(4); before = clones(ps)
    o = Adam(ps, numerics="torch"); set_grads(ps, grads(ps, 0))
    o.param_groups[0]["betas"] = (torch.tensor(0.9), torch.tensor(0.99))     # (as a user or scheduler may set them)
    with pytest.raises(ValueError, match="Tensor betas are not supported.*\\(param group 0\\)"):
        o.step()
    for p, q in zip(ps, before): same_bits(p, q, "a refused step writes nothing")
    ps = params(5); qs = clones(ps)
    a = Adam(ps, lr=0.01, betas=(torch.tensor(0.8), torch.tensor(0.95)))
    b = Adam(qs, lr=0.01, betas=(float(torch.tensor(0.8)), float(torch.tensor(0.95))))
    for t in range(4):
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs); a.step(); b.step()
    for p, q in zip(ps, qs): same_bits(p, q, "tensor betas are their values")


@pytest.mark.parametrize("cls", [LazyAdam, Adam])
def test_an_empty_sparse_gradient_then_backward(cls):
    "zero_grad(set_to_none=False) leaves an empty sparse gradient: the step must not fix its storage's size."
    e = torch.nn.Embedding(5, 2, sparse=True); o = cls([e.weight])
    e(torch.tensor([1])).sum().backward(); o.step()
    o.zero_grad(set_to_none=False)
    before = e.weight.detach().clone(); o.step()
    assert o.state[e.weight]["step"] == 2
    if cls is LazyAdam: same_bits(e.weight, before, "an empty gradient moves no row")
    e(torch.tensor([2, 2])).sum().backward(); e(torch.tensor([4])).sum().backward()      # (grows the gradient)
    o.step()
    assert int((e.weight.detach() != before).any(dim=1).sum()) == (2 if cls is LazyAdam else 3)   # rows 2, 4 (and 1: its m)


def test_refused_steps_name_torch_terms_and_leave_no_state():
    P = torch.nn.Parameter
    e = P(torch.zeros(1, 3).expand(4, 3)); o = Adam([e], lr=0.1); e.grad = torch.ones(4, 3)
    with pytest.raises(ValueError, match=r"parameter 0 of param group 0 .*share memory"): o.step()
    assert len(o.state) == 0 and torch.equal(e.detach(), torch.zeros(4, 3))
    emb = torch.nn.Embedding(5, 2, sparse=True); o = Adam([emb.weight], weight_decay=0.1)
    emb(torch.tensor([1])).sum().backward()
    with pytest.raises(ValueError, match="sparse gradient"): o.step()
    assert len(o.state) == 0
    a, b, c = P(torch.randn(3)), P(torch.randn(3)), P(torch.randn(3).bfloat16())
    o = Adam([{"params": [a]}, {"params": [b, c]}])
    for p in (a, b, c): p.grad = torch.ones_like(p)
    snap = [p.detach().clone() for p in (a, b, c)]
    with pytest.raises(ValueError, match=r"param group 1: Argument `betas\[1\]`=0.999 rounds to 1 in bfloat16, the dtype parameter 1 "):
        o.step()
    assert all(torch.equal(p.detach(), s) for p, s in zip((a, b, c), snap)) and len(o.state) == 0
    o.param_groups[1]["params"].pop()                  # the bfloat16 parameter taken out: the same optimizer steps
    o.step(); assert len(o.state) == 2 and not torch.equal(a.detach(), snap[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize("case", ["adam", "amsgrad", "l2", "adam-decoupled", "adamw", "eps", "tensor-lr"])
def test_torch_numerics_on_half_tensors_are_torch_optim_bits(case, dtype):
    "float16/bfloat16: each of torch's CPU operations computes in float32 and rounds once; numerics='torch' does the same."
    ref_cls, cls, kw = TORCH_CASES["adam" if case == "tensor-lr" else case]
    kw = dict(kw, eps=max(kw.get("eps", 1e-8), 1e-6))        # (float16: torch's 1e-8 rounds to 0, refused by adam_lit)
    if case == "tensor-lr": kw["lr"] = torch.tensor(3e-3)
    torch.manual_seed(3)
    ps = [torch.nn.Parameter(torch.randn(s).to(dtype)) for s in ((40, 7), (7,), (300,))]; qs = clones(ps)
    ref = ref_cls(ps, **kw)
    mine = cls(qs, numerics="torch", **{k: (v.clone() if torch.is_tensor(v) else v) for k, v in kw.items()})
    for t in range(30):
        gs = [torch.randn(p.shape).to(dtype) for p in ps]; set_grads(ps, gs); set_grads(qs, gs)
        ref.step(); mine.step()
        for j, (p, q) in enumerate(zip(ps, qs)):
            same_bits(q, p, f"{case} step {t} param {j}")
            for key, val in ref.state[p].items():
                if key != "step": same_bits(mine.state[q][key], val, f"{case} step {t} param {j} {key}")


def test_torch_numerics_step_is_written_in_place(monkeypatch):
    "numerics='torch' on CPU tensors: PyTorch's own in-place operations (`Adam._torch_in_place`), every parameter."
    calls = []
    orig = adam_lit.Adam._torch_in_place
    monkeypatch.setattr(adam_lit.Adam, "_torch_in_place", lambda self, *a: calls.append(1) or orig(self, *a))
    ps = params(2)
    opt = AdamW(ps, numerics="torch")
    set_grads(ps, grads(ps, 0)); opt.step()
    assert len(calls) == len(ps)


def test_meta_parameters_are_named():
    "A model built on the meta device (no data yet): an error that says so, and no state."
    with torch.device("meta"):
        lin = torch.nn.Linear(3, 2)
    o = Adam(lin.parameters())
    for p in lin.parameters(): p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="parameter 0 of param group 0 is on the meta device"):
        o.step()
    assert o.state_dict()["state"] == {}


@pytest.mark.parametrize("cls", [LazyAdam, Adam])
def test_gradients_sparse_in_every_dimension_step_the_rows_they_touch(cls):
    """`dense.to_sparse()` (sparse in both dimensions, as torch's own SparseAdam tests make them, repeats included):
    the rows its entries touch, each dense, summed where entries repeat: the bits of the row-sparse gradient."""
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(6, 3)), torch.nn.Parameter(torch.zeros(6, 3))
    with torch.no_grad(): b.copy_(a)
    start = a.detach().clone()
    oa, ob = cls([a], lr=0.1), cls([b], lr=0.1)
    for step in range(3):
        dense = torch.zeros(6, 3)
        dense[1, 0], dense[4, 2], dense[4, 1] = 0.5 * (step + 1), -2.0, 0.25
        a.grad = torch.sparse_coo_tensor(torch.tensor([[1, 4, 4, 4], [0, 2, 1, 2]]),            # (4, 2) twice: -1 + -1
                                         torch.tensor([0.5 * (step + 1), -1.0, 0.25, -1.0]), (6, 3))
        b.grad = torch.sparse_coo_tensor(torch.tensor([[1, 4]]), dense[[1, 4]], (6, 3))
        oa.step(); ob.step()
        assert torch.equal(a.detach(), b.detach()), step
    untouched = [0, 2, 3, 5]                     # (no entry: their moments stay 0, so they stay put, Adam too)
    assert torch.equal(a.detach()[untouched], start[untouched]) and not torch.equal(a.detach()[[1, 4]], start[[1, 4]])


@pytest.mark.parametrize("kw, words", [
    (dict(lr=-1.0), "Invalid learning rate: -1.0"), (dict(eps=-1e-8), "Invalid epsilon value: -1e-08"),
    (dict(betas=(1.0, 0.999)), "Invalid beta parameter at index 0: 1.0"),
    (dict(betas=(0.9, -0.5)), "Invalid beta parameter at index 1: -0.5"),
    (dict(weight_decay=-1), "Invalid weight_decay value: -1"), (dict(lr=torch.tensor([0.1, 0.2])), "Tensor lr must be 1-element")])
def test_bad_arguments_say_what_torch_optim_says(kw, words):
    "torch.optim.Adam's own words (code and tests that match them keep working), then adam_lit's: the argument and its range."
    with pytest.raises(ValueError, match=re.escape(words)) as e:
        Adam(params(2), **kw)
    assert "argument `" in str(e.value)
    with pytest.raises(ValueError, match=re.escape(words)):
        torch.optim.Adam(params(2), **kw)


RESETS = {   # the ways PyTorch users reset an optimizer's state, and what torch.optim.Adam then does
    "state replaced": lambda o, ps: setattr(o, "state", __import__("collections").defaultdict(dict)),
    "state cleared": lambda o, ps: o.state.clear(),
    "step set to 0": lambda o, ps: [o.state[p].__setitem__("step", torch.tensor(0.0)) for p in ps],
    "step zeroed in place": lambda o, ps: [o.state[p]["step"].zero_() for p in ps],
    "moments assigned": lambda o, ps: [o.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                                       for p in ps],
    "moments zeroed in place": lambda o, ps: [(o.state[p]["exp_avg"].zero_(), o.state[p]["exp_avg_sq"].zero_()) for p in ps],
}


@pytest.mark.parametrize("how", list(RESETS))
def test_state_reset_as_torch_users_do_it_takes_effect(how):
    """`opt.state = defaultdict(dict)`, `opt.state.clear()`, a new `step`, new moments: the next step starts from the
    state as the user left it, as torch.optim.Adam's does (the engine kept its own moments and count before), and
    `state_dict()` then holds the state really used."""
    ps = params(5); qs = clones(ps)
    ref, mine = torch.optim.Adam(ps, lr=0.01, foreach=False), Adam(qs, lr=0.01, numerics="torch")
    for t in range(8):
        if t == 4: RESETS[how](ref, ps); RESETS[how](mine, qs)
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs); ref.step(); mine.step()
        for j, (p, q) in enumerate(zip(ps, qs)):
            same_bits(q, p, f"{how}: step {t} param {j}")
            for key in ("exp_avg", "exp_avg_sq", "step"):
                same_bits(mine.state_dict()["state"][j][key], ref.state_dict()["state"][j][key], f"{how}: step {t} {key}")


def test_state_of_one_parameter_deleted_restarts_its_moments():
    "`del opt.state[p]`: p's moments start again from zero; its step count stays the group's (one count per group)."
    ps = params(6); o = Adam(ps, lr=0.01)
    for t in range(3): set_grads(ps, grads(ps, t)); o.step()
    del o.state[ps[0]]
    set_grads(ps, grads(ps, 3)); o.step()
    g = grads(ps, 3)[0].numpy()
    np.testing.assert_array_equal(o.state[ps[0]]["exp_avg"].numpy(), np.float32(0.1) * g)     # m = 0 + (g - 0) * (1 - 0.9)
    assert float(o.state[ps[0]]["step"]) == float(o.state[ps[1]]["step"]) == 4.0


def test_option_refused_later_leaves_every_group_unstepped():
    "A beta changed after the first step (a scheduler) and refused for group 1's bfloat16: group 0 is not stepped either."
    P = torch.nn.Parameter
    a, c = P(torch.randn(3)), P(torch.randn(3).bfloat16())
    o = Adam([{"params": [a]}, {"params": [c], "betas": (0.9, 0.99)}])
    for p in (a, c): p.grad = torch.ones_like(p)
    o.step()
    o.param_groups[1]["betas"] = (0.9, 0.999)
    snap, step = a.detach().clone(), float(o.state[a]["step"])
    with pytest.raises(ValueError, match=r"param group 1: Argument `betas\[1\]`=0.999 rounds to 1 in bfloat16"): o.step()
    assert torch.equal(a.detach(), snap) and float(o.state[a]["step"]) == step


@pytest.mark.parametrize("case", ["row_bias_correction", "moment_dtype"])
def test_resume_keeps_saved_state_dtypes(case):
    """torch's `load_state_dict` casts floating state to the parameter's dtype: `row_step` (int64) and float32 moments of
    bfloat16 parameters keep the dtype they were saved in, and the resumed run is the uninterrupted one bit for bit."""
    dt = torch.bfloat16 if case == "moment_dtype" else torch.float32
    make = ((lambda ps: LazyAdam(ps, lr=0.01, row_bias_correction=True)) if case == "row_bias_correction"
            else (lambda ps: Adam(ps, lr=0.01, moment_dtype="float32")))
    emb = lambda: torch.nn.Parameter(torch.linspace(-1, 1, 40, dtype=torch.float32).reshape(10, 4).to(dt))
    def grad(t, p):
        rows = torch.tensor([t % 10, (3 * t + 1) % 10])
        if case == "row_bias_correction":
            return torch.sparse_coo_tensor(rows[None], torch.full((2, 4), 0.1 * (t + 1)), tuple(p.shape))
        return torch.cos(torch.arange(40.0).reshape(10, 4) * (t + 1)).to(dt)
    p, q = emb(), emb()
    run, o = make([p]), make([q])
    for t in range(6):
        p.grad = grad(t, p); run.step()
        if t == 2:
            buf = io.BytesIO(); torch.save(o.state_dict(), buf); buf.seek(0)
            o = make([q]); o.load_state_dict(torch.load(buf, weights_only=True))
        q.grad = grad(t, q); o.step()
    key = "row_step" if case == "row_bias_correction" else "exp_avg"
    assert o.state[q][key].dtype == run.state[p][key].dtype
    assert torch.equal(p.detach(), q.detach())


def test_lazyadam_decay_stays_decoupled_with_an_adams_groups():
    "LazyAdam given an Adam's state_dict (whose groups say decoupled_weight_decay=False): its decay stays decoupled."
    emb = torch.nn.Embedding(10, 4, sparse=True)
    src = Adam(emb.parameters(), weight_decay=0.01); dst = LazyAdam(emb.parameters(), weight_decay=0.01)
    dst.load_state_dict(src.state_dict())
    assert dst.param_groups[0]["decoupled_weight_decay"] is True
    emb(torch.tensor([1, 2])).sum().backward(); dst.step()          # (L2 would refuse the sparse gradient)


def test_group_mistakes_are_named():
    "A parameter listed twice in a group; `numerics` in a group; `eps=None` in add_param_group is the default."
    P = torch.nn.Parameter
    a, b = P(torch.randn(3)), P(torch.randn(2))
    o = Adam([a, b, a]); a.grad, b.grad = torch.ones(3), torch.ones(2)
    with pytest.raises(ValueError, match=r"parameter 2 of param group 0 is parameter 0 again"): o.step()
    assert len(o.state) == 0
    with pytest.raises(ValueError, match="`numerics` is an option of the optimizer"): Adam([{"params": [a], "numerics": "torch"}])
    o = Adam([a], numerics="torch"); o.add_param_group({"params": [b], "eps": None})
    assert o.param_groups[1]["eps"] == 1e-8


def test_core_errors_speak_of_parameters():
    "adam_lit's own checks, in torch's words: overlapping parameters, an integer parameter (no 'variable', no kernels.flatten)."
    base = torch.zeros(10)
    a, b = torch.nn.Parameter(base[:6]), torch.nn.Parameter(base[4:])
    a.grad, b.grad = torch.ones(6), torch.ones(6)
    with pytest.raises(ValueError, match=r"parameter 0 of shape \(6,\) and parameter 1 of shape \(6,\) share memory") as e:
        Adam([a, b]).step()
    assert "variable" not in str(e.value) and "kernels.flatten" not in str(e.value)
    w = torch.zeros(3, dtype=torch.int64); w.grad = torch.ones(3, dtype=torch.int64)
    with pytest.raises(TypeError, match="parameter 0 has shape .*only floating-point parameters can be optimized"):
        Adam([w]).step()


def test_repr_names_the_numerics():
    "repr: torch's (each group's options) and the numerics, which belong to the optimizer."
    r = repr(Adam([torch.nn.Parameter(torch.ones(2))], numerics="torch"))
    assert r.startswith("Adam (\nnumerics: torch\nParameter Group 0") and "Parameter Group 0" in r and "lr: 0.001" in r


ZERO_SCRIPT = r'''
import sys, torch, torch.distributed as dist
from torch.distributed.optim import ZeroRedundancyOptimizer
import adam_lit.torch as at
dist.init_process_group("gloo", init_method="file://" + sys.argv[1], rank=0, world_size=1)
torch.manual_seed(0)
mine, ref = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
ref.load_state_dict(mine.state_dict())
zero = ZeroRedundancyOptimizer(mine.parameters(), optimizer_class=at.Adam, lr=0.01, amsgrad=True, numerics="torch")
opt = torch.optim.Adam(ref.parameters(), lr=0.01, amsgrad=True, foreach=False)
for t in range(5):
    x = torch.randn(8, 4)
    for model, o in ((mine, zero), (ref, opt)):
        o.zero_grad(); model(x).pow(2).sum().backward(); o.step()
assert all(torch.equal(p, q) for p, q in zip(mine.parameters(), ref.parameters()))
zero.consolidate_state_dict(0)
sd = zero.state_dict()
assert [float(st["step"]) for st in sd["state"].values()] == [5.0, 5.0]
lazy = ZeroRedundancyOptimizer(torch.nn.Embedding(10, 2, sparse=True).parameters(), optimizer_class=at.LazyAdam,
                               lr=0.1, row_bias_correction=True)
try: at.Adam([{"params": [torch.nn.Parameter(torch.ones(2))], "numerics": "torch"}])
except ValueError as e: assert "asks for numerics='torch' in an optimizer with numerics='keras'" in str(e), e
else: raise AssertionError("a group's other numerics was accepted")
dist.destroy_process_group()
print("ok")
'''


def test_zero_redundancy_optimizer_wraps_it(tmp_path):
    """`torch.distributed.optim.ZeroRedundancyOptimizer(params, optimizer_class=Adam, **options)` passes the options on
    in every param group, `numerics` included: a group's `numerics` equal to the optimizer's is accepted, and the
    wrapped step is torch.optim.Adam's bits (one process, gloo; run in a subprocess so that no process group is left)."""
    import subprocess, sys
    if not torch.distributed.is_available(): pytest.skip("this PyTorch build has no torch.distributed")
    script = tmp_path / "zero.py"; script.write_text(ZERO_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "store")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]


def test_tensor_subclass_parameters_are_named():
    "A parameter of a tensor subclass (DTensor, float8, ...): refused by name, before anything is written."
    class Tagged(torch.Tensor): pass
    p = torch.nn.Parameter(torch.ones(3).as_subclass(Tagged))
    o = Adam([p], lr=0.1); p.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"parameter 0 of param group 0 \(shape \(3,\)\) is a .*Tagged, a tensor subclass"):
        o.step()
    assert torch.equal(p.detach().as_subclass(torch.Tensor), torch.ones(3)) and len(o.state) == 0


@pytest.mark.parametrize("numerics", ["torch", "keras"])
def test_adamw_given_an_adams_state_dict_stays_decoupled(numerics):
    """torch.optim.AdamW's `__setstate__` makes a loaded group's decay decoupled (test_adamw_serialization of PyTorch's
    test_optim.py): an Adam's state_dict (coupled, L2) loaded into AdamW steps with decoupled decay, torch's bits with
    numerics 'torch'; a deepcopy too."""
    torch.manual_seed(0)
    w0, g = torch.randn(4, 3), torch.randn(4, 3)
    def run(A, AW, **kw):
        p = torch.nn.Parameter(w0.clone())
        sd = A([p], weight_decay=0.1, **kw).state_dict()
        assert sd["param_groups"][0]["decoupled_weight_decay"] is False
        o = AW([p], weight_decay=0.1, **kw); o.load_state_dict(sd)
        assert o.param_groups[0]["decoupled_weight_decay"] is True
        p.grad = g.clone(); o.step()
        return p.detach()
    mine = run(Adam, AdamW, numerics=numerics)
    if numerics == "torch": same_bits(mine, run(torch.optim.Adam, torch.optim.AdamW, foreach=False), "AdamW after Adam's state")
    else:
        x = w0.numpy().copy(); adam_lit.AdamW(learning_rate=1e-3, weight_decay=0.1).apply([g.numpy()], [x])
        same_bits(mine, torch.from_numpy(x), "AdamW after Adam's state (Keras numerics)")
    o = AdamW([torch.nn.Parameter(w0.clone())]); o.param_groups[0]["decoupled_weight_decay"] = False
    assert copy.deepcopy(o).param_groups[0]["decoupled_weight_decay"] is True


FSDP_SCRIPT = r"""
import os, sys, copy, numpy as np, torch, torch.distributed as dist, torch.multiprocessing as mp

def run(rank, store, ckpt):
    dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
    from torch.distributed.fsdp import fully_shard
    import adam_lit, adam_lit.torch as at
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1))   # rank 1's shards of
    full = [p.detach().numpy().copy() for p in net.parameters()]                               # the head are empty
    nets = {name: copy.deepcopy(net) for name in ("torch", "lit torch", "lit keras")}
    for m in nets.values(): fully_shard(m)
    opts = {"torch": torch.optim.Adam(nets["torch"].parameters(), lr=0.01, amsgrad=True, foreach=False),
            "lit torch": at.Adam(nets["lit torch"].parameters(), lr=0.01, amsgrad=True, numerics="torch"),
            "lit keras": at.Adam(nets["lit keras"].parameters(), lr=0.01, amsgrad=True)}
    ref = adam_lit.Adam(learning_rate=0.01, amsgrad=True)      # Keras numerics on the whole NumPy arrays
    for t in range(4):
        x = torch.randn(6, 5, generator=torch.Generator().manual_seed(t))
        for name, m in nets.items():
            opts[name].zero_grad(); m(x).pow(2).mean().backward(); opts[name].step()
        ref.apply([p.grad.full_tensor().numpy() for p in nets["lit keras"].parameters()], full)
        for j, (p, q) in enumerate(zip(nets["lit torch"].parameters(), nets["torch"].parameters())):
            assert type(p).__name__ == "DTensor" and torch.equal(p.full_tensor(), q.full_tensor()), (rank, t, j)
            for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"):
                a, b = opts["lit torch"].state[p][key], opts["torch"].state[q][key]
                assert type(a).__name__ == "DTensor" and a.placements == b.placements and torch.equal(a.full_tensor(), b.full_tensor()), (rank, t, j, key)
        for j, p in enumerate(nets["lit keras"].parameters()):
            assert np.array_equal(p.detach().full_tensor().numpy(), full[j]), (rank, t, j)
    # the state_dict continues in torch.optim.Adam, bit for bit
    sd = copy.deepcopy(opts["lit torch"].state_dict())      # (a state_dict shares the live tensors, as torch.optim's)
    other = torch.optim.Adam(nets["torch"].parameters(), lr=0.01, amsgrad=True, foreach=False)
    other.load_state_dict(sd)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(9))
    for m, o in ((nets["lit torch"], opts["lit torch"]), (nets["torch"], other)):
        o.zero_grad(); m(x).pow(2).mean().backward(); o.step()
    for p, q in zip(nets["lit torch"].parameters(), nets["torch"].parameters()): assert torch.equal(p.full_tensor(), q.full_tensor())
    # and torch.optim.Adam's state_dict (DTensor moments) continues in adam_lit.torch
    back = at.Adam(nets["lit torch"].parameters(), lr=0.01, amsgrad=True, numerics="torch")
    back.load_state_dict(copy.deepcopy(other.state_dict()))
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(10))
    for m, o in ((nets["lit torch"], back), (nets["torch"], other)):
        o.zero_grad(); m(x).pow(2).mean().backward(); o.step()
    for p, q in zip(nets["lit torch"].parameters(), nets["torch"].parameters()): assert torch.equal(p.full_tensor(), q.full_tensor())
    # distributed checkpointing: saved with torch.distributed.checkpoint, restored into a new optimizer, the run goes on
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    saved = nets["lit keras"]
    dcp.save({"optim": get_optimizer_state_dict(saved, opts["lit keras"])}, checkpoint_id=ckpt)
    fresh = copy.deepcopy(net); fully_shard(fresh)
    with torch.no_grad():
        for p, q in zip(fresh.parameters(), saved.parameters()): p.to_local().copy_(q.to_local())
    restored = at.Adam(fresh.parameters(), lr=0.01, amsgrad=True)
    sd = get_optimizer_state_dict(fresh, restored)              # (DCP's own zero step makes the state to load into)
    dcp.load({"optim": sd}, checkpoint_id=ckpt)
    set_optimizer_state_dict(fresh, restored, sd)
    x = torch.randn(6, 5, generator=torch.Generator().manual_seed(11))
    for m, o in ((saved, opts["lit keras"]), (fresh, restored)):
        o.zero_grad(); m(x).pow(2).mean().backward(); o.step()
    for p, q in zip(fresh.parameters(), saved.parameters()): assert torch.equal(p.full_tensor(), q.full_tensor())
    # a replicated parameter given a Partial gradient (tensor parallelism): summed over the processes, as torch's
    from torch.distributed.tensor import DTensor, Partial, Replicate, distribute_tensor
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (2,))
    w = torch.linspace(-1, 1, 6).reshape(2, 3)
    ps = [torch.nn.Parameter(distribute_tensor(w.clone(), mesh, [Replicate()])) for _ in range(2)]
    tp = [at.Adam([ps[0]], lr=0.1, numerics="torch"), torch.optim.Adam([ps[1]], lr=0.1, foreach=False)]
    for t in range(3):
        local = torch.full((2, 3), float(rank + 1) * (t + 1))
        for p, o in zip(ps, tp):
            p.grad = DTensor.from_local(local.clone(), mesh, [Partial()]); o.step()
        assert torch.equal(ps[0].full_tensor(), ps[1].full_tensor()), (rank, t)
    dist.barrier(); dist.destroy_process_group()
    if rank == 0: print("ok")

if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], sys.argv[2]), nprocs=2)
"""


def test_fsdp2_dtensor_parameters_step_their_shards(tmp_path):
    """FSDP2 (`fully_shard`): DTensor parameters, each process stepping its local shard (two processes, gloo, a shard of
    rank 1 empty). numerics 'torch': torch.optim.Adam's bits, the state DTensors laid out as the parameters, the
    state_dict continuing in torch.optim.Adam and back; Keras numerics: adam_lit.Adam on the whole arrays, bit for bit,
    and a torch.distributed.checkpoint save and load into a new optimizer continuing the run. A
    replicated parameter's Partial gradient (tensor parallelism) is summed over the processes, as torch.optim.Adam's."""
    import subprocess, sys
    if not torch.distributed.is_available(): pytest.skip("this PyTorch build has no torch.distributed")
    script = tmp_path / "fsdp.py"; script.write_text(FSDP_SCRIPT)
    r = subprocess.run([sys.executable, str(script), str(tmp_path / "store"), str(tmp_path / "ckpt")], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stdout[-2000:] + r.stderr[-4000:]


@pytest.mark.parametrize("numerics", ["torch", "keras"])
def test_step_reset_through_data_takes_effect(numerics):
    """`state[p]["step"].data.zero_()` bypasses the version counter: the step's value is compared too, so the reset takes
    effect as in torch.optim.Adam (numerics 'torch': its bits; both: the saved count is the one used)."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4)); q = torch.nn.Parameter(p.detach().clone())
    ref, mine = torch.optim.Adam([p], lr=0.1, foreach=False), Adam([q], lr=0.1, numerics=numerics)
    for t in range(6):
        g = torch.randn(4); p.grad, q.grad = g.clone(), g.clone()
        if t == 3: ref.state[p]["step"].data.zero_(); mine.state[q]["step"].data.zero_()
        ref.step(); mine.step()
        assert float(mine.state[q]["step"]) == float(ref.state[p]["step"])
        if numerics == "torch": same_bits(q, p, f"step {t}")
    if numerics == "keras": assert mine._engines[id(mine.param_groups[0])].opt.iterations == 3


@pytest.mark.parametrize("numerics", ["torch", "keras"])
def test_counts_past_2_to_the_24_keep_the_engine(numerics):
    """Past 2**24 steps a float32 `step` tensor no longer grows (`step + 1` rounds back): numerics 'torch' keeps torch's
    count there, bits and `step` as torch.optim.Adam's, parameters of different counts stepped together, and the engine
    is kept from step to step (before: the count, kept in an int, left the tensor's value, and every other step rebuilt
    the engine, copying all the state). The Keras numerics keep Keras's integer count, its tensor rounded as torch rounds."""
    per_param = numerics == "torch"
    ps = params(41); qs = clones(ps)
    ref, mine = torch.optim.Adam(ps, lr=0.01, foreach=False), Adam(qs, lr=0.01, numerics=numerics)
    gs = grads(ps, 0); set_grads(ps, gs); set_grads(qs, gs); ref.step(); mine.step()
    sd = ref.state_dict()
    for k, st in sd["state"].items(): st["step"] = torch.tensor(float(2**24 - 3 - (k if per_param else 0)))
    ref.load_state_dict(sd); mine.load_state_dict(copy.deepcopy(sd))
    eng = None
    for t in range(1, 8):
        gs = grads(ps, t); set_grads(ps, gs); set_grads(qs, gs); ref.step(); mine.step()
        if eng is None: eng = mine._engines[id(mine.param_groups[0])]       # made from the loaded state at step 1
        assert mine._engines[id(mine.param_groups[0])] is eng, f"step {t}: the engine was made again"
        steps = [float(mine.state[q]["step"]) for q in qs]
        if per_param:
            assert steps == [float(ref.state[p]["step"]) for p in ps], (t, steps)
            for j, (p, q) in enumerate(zip(ps, qs)): same_bits(q, p, f"step {t} param {j}")
        else:
            assert steps == [float(np.float32(2**24 - 3 + t))] * len(qs), (t, steps)
    if per_param: assert eng.counts == [2**24] * len(qs)
    else: assert eng.opt.iterations == 2**24 + 4


@pytest.mark.parametrize("other", ["SGD", "SGD momentum", "Adagrad", "RMSprop", "Adam state without exp_avg_sq"])
@pytest.mark.parametrize("cls", [Adam, AdamW, LazyAdam])
def test_another_optimizers_state_dict_is_refused(cls, other):
    """A state_dict of another optimizer is refused by name, before anything changes (torch.optim.Adam fails on one with
    a KeyError; before, adam_lit loaded it, dropped its state and kept its options: SGD's lr). A user's load pre-hook
    that turns it into an Adam's runs first."""
    ps = params(51); qs = clones(ps)
    make = {"SGD": lambda x: torch.optim.SGD(x, lr=0.5), "SGD momentum": lambda x: torch.optim.SGD(x, lr=0.5, momentum=0.9),
            "Adagrad": torch.optim.Adagrad, "RMSprop": torch.optim.RMSprop,
            "Adam state without exp_avg_sq": lambda x: torch.optim.Adam(x, lr=0.5)}[other]
    foreign = make(ps); set_grads(ps, grads(ps, 0)); foreign.step()
    sd = foreign.state_dict()
    if other.startswith("Adam"):
        for st in sd["state"].values(): del st["exp_avg_sq"]
    mine, ref = cls(qs, lr=0.01), cls(clones(qs), lr=0.01)
    gs = grads(ps, 1); set_grads(qs, gs); set_grads(ref.param_groups[0]["params"], gs); mine.step(); ref.step()
    before = copy.deepcopy(mine.state_dict())
    what = "has no 'betas'" if other != "Adam state without exp_avg_sq" else "without exp_avg_sq: it is not an Adam's state"
    with pytest.raises(ValueError, match=re.escape(what)):
        mine.load_state_dict(sd)
    after = mine.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for k, st in before["state"].items():
        assert sorted(after["state"][k]) == sorted(st)
        for key, val in st.items(): same_bits(after["state"][k][key], val, f"state {k} {key}")
    gs = grads(ps, 2); set_grads(qs, gs); set_grads(ref.param_groups[0]["params"], gs); mine.step(); ref.step()
    for q, r in zip(qs, ref.param_groups[0]["params"]): same_bits(q, r, "the step after the refused load")
    if other == "Adam state without exp_avg_sq":            # a user's pre-hook that completes the state runs first
        def complete(opt, sd):
            for st in sd["state"].values(): st["exp_avg_sq"] = torch.zeros_like(st["exp_avg"])
        mine.register_load_state_dict_pre_hook(complete)
        mine.load_state_dict(sd)
        assert mine.param_groups[0]["lr"] == 0.5


def test_a_loaded_groups_numerics_is_the_optimizers():
    "A state_dict whose group names `numerics` (ZeroRedundancyOptimizer passes it on) cannot contradict the optimizer's."
    p = torch.nn.Parameter(torch.ones(3))
    a = Adam([{"params": [p], "numerics": "keras"}]); p.grad = torch.ones(3); a.step()
    b = Adam([p], numerics="torch"); b.load_state_dict(a.state_dict()); b.step()
    assert b.param_groups[0]["numerics"] == b.state_dict()["param_groups"][0]["numerics"] == "torch"
