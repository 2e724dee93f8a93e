"""The contract of `interop.to_torch_state_dict` / `from_torch_state_dict` against the real torch.optim.Adam and AdamW.

Imported: exactly what adam_lit reproduces. Refused, with nothing changed: what it would not (a coupled weight
decay, `maximize`, other betas/eps/lr/amsgrad, groups that disagree, unknown keys). Exported: state dicts that
torch.optim.Adam and AdamW load, groups included, and that come back bit for bit.
"""
import copy
import warnings

import numpy as np
import pytest

from adam_lit import Adam, AdamW
from adam_lit.interop import from_torch_state_dict, to_torch_state_dict

from conftest import need
torch = need("torch", "the interop contract needs the real torch.optim")

SHAPES = [(3, 2), (4,), (2,)]


def _params():
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _torch_sd(cls=torch.optim.Adam, groups=None, steps=3, **kw):
    "The state_dict of a real torch optimizer after `steps` steps; `groups(params)` makes param groups."
    ps = _params()
    opt = cls(groups(ps) if groups else ps, **kw)
    rng = np.random.default_rng(1)
    for _ in range(steps):
        for p in ps: p.grad = torch.from_numpy(rng.standard_normal(tuple(p.shape)).astype(np.float32))
        opt.step()
    return opt.state_dict()


def _mine(**kw):
    o = Adam(**{"epsilon": 1e-8, **kw})
    o.build([np.zeros(s, np.float32) for s in SHAPES])
    return o


def _snapshot(o):
    return [np.asarray(v).tobytes() for v in o.variables] + [o.iterations]


def _load(o, sd, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return from_torch_state_dict(o, sd, **kw)


def _refused(o, sd, *fragments, **kw):
    before = _snapshot(o)
    with pytest.raises(ValueError) as e: _load(o, sd, **kw)
    for f in fragments: assert f in str(e.value), (f, str(e.value))
    assert _snapshot(o) == before          # nothing changed
    return str(e.value)


def test_plain_adam_state_is_imported_bit_for_bit():
    sd = _torch_sd(lr=0.001)
    o = _load(_mine(), sd)
    assert o.iterations == 3
    for i, st in sd["state"].items():
        for name, key in (("m", "exp_avg"), ("v", "exp_avg_sq")):
            assert o.get_slot(o._variables[i], name).tobytes() == st[key].numpy().tobytes()


def test_coupled_weight_decay_refused_with_the_way_out():
    msg = _refused(_mine(), _torch_sd(weight_decay=0.1), "weight_decay=0.1", "decoupled_weight_decay=False",
                   "adds 0.1 * x to the gradient", "before `apply`")
    assert "param group 0" in msg
    _refused(_mine(weight_decay=0.1), _torch_sd(weight_decay=0.1), "decoupled_weight_decay=False")   # nor into AdamW's


def test_decoupled_weight_decay_adamw_and_adam_flag():
    for sd in (_torch_sd(torch.optim.AdamW, weight_decay=0.02), _torch_sd(weight_decay=0.02, decoupled_weight_decay=True)):
        assert sd["param_groups"][0]["decoupled_weight_decay"] is True
        assert _load(_mine(weight_decay=0.02), sd).iterations == 3
        _refused(_mine(), sd, "weight_decay=0.02", "has no weight decay", "construct it with weight_decay=0.02")
        _refused(_mine(weight_decay=0.01), sd, "weight_decay=0.02", "has weight_decay=0.01")
    _refused(_mine(weight_decay=0.01), _torch_sd(), "weight_decay=0", "exclude it")   # torch without decay, adam_lit with


def test_state_dict_without_the_decoupled_key():
    sd = _torch_sd(torch.optim.AdamW, weight_decay=0.02)
    for g in sd["param_groups"]: del g["decoupled_weight_decay"]
    _refused(_mine(weight_decay=0.02), sd, "without 'decoupled_weight_decay'", "True (AdamW) or False (Adam)")
    sd0 = _torch_sd()
    for g in sd0["param_groups"]: del g["decoupled_weight_decay"]
    assert _load(_mine(), sd0).iterations == 3                  # weight_decay 0: nothing to tell apart


@pytest.mark.parametrize("kw,fragments", [
    (dict(maximize=True), ["maximize=True", "negated gradients"]),
    (dict(betas=(0.8, 0.99)), ["betas=(0.8, 0.99)", "betas=(0.9, 0.999)", "beta_1=0.8, beta_2=0.99"]),
    (dict(eps=1e-6), ["eps=1e-06", "eps=1e-08", "epsilon=1e-06"]),
    (dict(lr=0.01), ["lr=0.01", "lr=0.001", "learning_rate=0.01", "keep_learning_rate=True"]),
    (dict(amsgrad=True), ["amsgrad=True", "amsgrad=False"]),
], ids=["maximize", "betas", "eps", "lr", "amsgrad"])
def test_hyperparameters_adam_lit_would_not_reproduce_are_refused(kw, fragments):
    _refused(_mine(), _torch_sd(**kw), *fragments)


def test_keep_learning_rate_and_a_scheduler():
    ps = _params()
    opt = torch.optim.Adam(ps, lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(2):
        for p in ps: p.grad = torch.ones_like(p)
        opt.step(); sched.step()
    sd = opt.state_dict()
    assert "initial_lr" in sd["param_groups"][0] and sd["param_groups"][0]["lr"] == 0.0025
    _refused(_mine(learning_rate=0.01), sd, "lr=0.0025", "lr=0.01")
    assert _load(_mine(learning_rate=0.01), copy.deepcopy(sd), keep_learning_rate=True).iterations == 2
    assert _load(_mine(learning_rate=0.0025), sd).iterations == 2      # the learning rate of the next step agrees


def test_execution_options_are_accepted():
    for kw in (dict(foreach=True), dict(foreach=False), dict(fused=True)):
        assert _load(_mine(), _torch_sd(**kw)).iterations == 3, kw
    sd = _torch_sd()
    sd["param_groups"][0].update(differentiable=True, capturable=True)   # (stepping needs non-leaf / CUDA parameters: the flags)
    assert _load(_mine(), sd).iterations == 3


def test_groups_that_agree_load_groups_that_differ_are_refused():
    two = lambda ps: [{"params": ps[:2]}, {"params": ps[2:]}]
    assert _load(_mine(), _torch_sd(groups=two)).iterations == 3
    lr2 = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "lr": 0.01}]
    _refused(_mine(), _torch_sd(groups=lr2), "different lr: 0.001, 0.01", "an optimizer of its own")
    b2 = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "betas": (0.5, 0.9)}]
    _refused(_mine(), _torch_sd(groups=b2), "different betas")
    a2 = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "amsgrad": True}]
    _refused(_mine(), _torch_sd(groups=a2), "amsgrad")


def test_unknown_group_key_refused():
    sd = _torch_sd()
    sd["param_groups"][0]["nesterov"] = True
    _refused(_mine(), sd, "nesterov=True", "does not know")


def test_groups_with_weight_decay_0_are_the_excluded_variables():
    groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "weight_decay": 0}]
    sd = _torch_sd(torch.optim.AdamW, groups=groups, weight_decay=0.02)
    o = _mine(weight_decay=0.02)
    _refused(o, sd, "parameter 2", "weight_decay=0", "exclude it")
    o.exclude_from_weight_decay(var_list=[o._variables[2]])
    assert _load(o, sd).iterations == 3
    o2 = _mine(weight_decay=0.02); o2.exclude_from_weight_decay(var_list=[o2._variables[0]])
    _refused(o2, sd, "parameter 0", "excluded from it", "do not exclude it")


def _trained(steps=4, **kw):
    xs = [np.random.default_rng(2).standard_normal(s).astype(np.float32) for s in SHAPES]
    o = Adam(**{"learning_rate": 0.01, "epsilon": 1e-8, **kw})
    rng = np.random.default_rng(3)
    for _ in range(steps): o.apply([rng.standard_normal(s).astype(np.float32) for s in SHAPES], xs)
    return o, xs


@pytest.mark.parametrize("torch_cls", [torch.optim.Adam, torch.optim.AdamW])
def test_export_with_exclusions_loads_as_groups_and_round_trips(torch_cls):
    o, xs = _trained(weight_decay=0.05, amsgrad=True)
    o.exclude_from_weight_decay(var_list=[xs[1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore"); sd = to_torch_state_dict(o)
    groups = sd["param_groups"]
    assert [(g["params"], g["weight_decay"], g["decoupled_weight_decay"]) for g in groups] == \
        [([0], 0.05, True), ([1], 0, True), ([2], 0.05, True)]
    ps = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in xs]
    t = torch_cls([{"params": [ps[0]]}, {"params": [ps[1]], "weight_decay": 0}, {"params": [ps[2]]}],
                  lr=0.01, eps=1e-8, weight_decay=0.05, amsgrad=True)
    t.load_state_dict(sd)
    assert [g["decoupled_weight_decay"] for g in t.param_groups] == [True] * 3     # AdamW's decay, also in torch.optim.Adam
    back = Adam(learning_rate=0.01, epsilon=1e-8, weight_decay=0.05, amsgrad=True)
    back.build([x.copy() for x in xs]); back.exclude_from_weight_decay(var_list=[back._variables[1]])
    _load(back, t.state_dict())
    assert back.iterations == o.iterations == 4
    for a, b in zip(o.variables[1:], back.variables[1:]): assert np.asarray(a).tobytes() == np.asarray(b).tobytes()


def test_export_without_decay_is_one_group_torch_adam_continues_like_numerics_torch():
    # adam_lit (numerics="torch", on torch tensors) and torch.optim.Adam after the export: the same next steps, bit for bit
    xs = [torch.from_numpy(np.random.default_rng(2).standard_normal(s).astype(np.float32)) for s in SHAPES]
    o = Adam(learning_rate=0.01, epsilon=1e-8, numerics="torch")
    rng = np.random.default_rng(3)
    grads = [[torch.from_numpy(rng.standard_normal(s).astype(np.float32)) for s in SHAPES] for _ in range(8)]
    for g in grads[:4]: o.apply(g, xs)
    sd = to_torch_state_dict(o)
    assert len(sd["param_groups"]) == 1
    ps = [torch.nn.Parameter(x.clone()) for x in xs]
    t = torch.optim.Adam(ps, lr=0.01, eps=1e-8, foreach=False); t.load_state_dict(sd)
    for g in grads[4:]:
        o.apply(g, xs)
        for p, gi in zip(ps, g): p.grad = gi.clone()
        t.step()
    for x, p in zip(xs, ps): assert x.numpy().tobytes() == p.detach().numpy().tobytes()


@pytest.mark.parametrize("n", [5, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_coupled_weight_decay_by_hand_is_bit_for_bit(n, dtype):
    # torch.optim.Adam(weight_decay=wd) = adam_lit's Adam(numerics="torch") on g + wd * x, added as torch adds it
    wd, gen = 0.1, torch.Generator().manual_seed(5)
    x0 = torch.randn(n, generator=gen, dtype=dtype)
    p = torch.nn.Parameter(x0.clone()); t = torch.optim.Adam([p], lr=0.01, weight_decay=wd)
    x = x0.clone(); o = Adam(learning_rate=0.01, epsilon=1e-8, numerics="torch")
    for _ in range(10):
        g = torch.randn(n, generator=gen, dtype=dtype)
        p.grad = g.clone(); t.step()
        o.apply([g.add(x, alpha=wd)], [x])
    assert x.numpy().tobytes() == p.detach().numpy().tobytes()
    # and adam_lit's own weight_decay is the other one (decoupled): not the same numbers
    y = x0.clone(); o2 = Adam(learning_rate=0.01, epsilon=1e-8, numerics="torch", weight_decay=wd)
    gen2 = torch.Generator().manual_seed(5); torch.randn(n, generator=gen2, dtype=dtype)
    for _ in range(10): o2.apply([torch.randn(n, generator=gen2, dtype=dtype)], [y])
    assert not torch.equal(y, x)
