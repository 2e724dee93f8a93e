"""Large NumPy slots are views placed off their variable's alignment (03_optimizer, "Where a NumPy slot lives"): the
placement changes where the slots live, never the numbers, and the slots behave as the optimizer's own arrays
everywhere else: weights, checkpoints, copies, the flat path, the PyTorch front end's state."""
import copy
import pickle

import numpy as np
import pytest

import adam_lit.optimizer as opt_mod
from adam_lit import checkpoint
from adam_lit.adam import Adam
from adam_lit.kernels import flatten
from adam_lit.lazyadam import LazyAdam

BIG = (700, 400)        # 1.1 MB of float32: placed; (30,) is not


def _vars(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(BIG).astype(np.float32), rng.standard_normal(30).astype(np.float32)]


def _grads(k):
    rng = np.random.default_rng(100 + k)
    return [rng.standard_normal(BIG).astype(np.float32), rng.standard_normal(30).astype(np.float32)]


OPTIONS = [dict(), dict(amsgrad=True, weight_decay=0.01), dict(use_ema=True), dict(gradient_accumulation_steps=2),
           dict(clipnorm=1.0, learning_rate=0.01)]


@pytest.mark.parametrize("kw", OPTIONS)
def test_placed_slots_give_the_bits_of_plain_ones(kw, monkeypatch):
    runs = []
    for placed in (True, False):
        with monkeypatch.context() as mp:
            if not placed: mp.setattr(opt_mod, "_PLACED_MIN", 1 << 62)
            xs, o = _vars(), Adam(**kw)
            o.build(xs)
            big = [s.array for s in o._slots if s.index == 0 and s.array.nbytes >= 1 << 20]
            assert big and all((a.base is not None) == placed for a in big)     # the placement took effect (or not)
            for k in range(5): o.apply(_grads(k), xs)
            runs.append([x.tobytes() for x in xs] + [np.asarray(w).tobytes() for w in o.get_weights()])
    assert runs[0] == runs[1]


def test_placed_slots_are_distinct_from_their_variable_and_one_another():
    xs = _vars()
    o = Adam(amsgrad=True); o.build(xs)
    offs = [(s.array.ctypes.data - xs[0].ctypes.data) % opt_mod._PLACE_PERIOD for s in o._slots if s.index == 0]
    assert len(offs) == 3 and len(set(offs)) == 3 and min(offs) >= 4096      # m, v, vhat: apart, away from x
    for s in o._slots:
        a = s.array
        assert a.flags.c_contiguous and a.flags.aligned and a.flags.writeable and not a.any()
        assert not any(np.shares_memory(a, t.array) for t in o._slots if t is not s)


def test_flat_buffer_slots_are_placed_and_exact(monkeypatch):
    runs = []
    for placed in (True, False):
        with monkeypatch.context() as mp:
            if not placed: mp.setattr(opt_mod, "_PLACED_MIN", 1 << 62)
            base, xs = flatten(_vars())
            o = Adam(); o.build(xs)
            assert o._flat is not None and (o._flat["m"].base is not None) == placed
            for k in range(4): o.apply(_grads(k), xs)
            runs.append(base.tobytes() + o._flat["m"].tobytes() + o._flat["v"].tobytes())
    assert runs[0] == runs[1]


def test_weights_checkpoint_and_copies_of_placed_slots(tmp_path):
    xs, o = _vars(), Adam(amsgrad=True)
    for k in range(3): o.apply(_grads(k), xs)
    path = checkpoint.save(o, tmp_path / "ck")
    twin_xs = [x.copy() for x in xs]
    twin = Adam(amsgrad=True); twin.build(twin_xs)
    checkpoint.load(twin, path)
    dup = copy.deepcopy((o, xs))
    pick = pickle.loads(pickle.dumps((o, xs)))
    w = Adam(amsgrad=True); w_xs = [x.copy() for x in xs]; w.build(w_xs); w.set_weights(o.get_weights())
    for k in range(3, 6):
        g = _grads(k)
        o.apply(g, xs); twin.apply(g, twin_xs); dup[0].apply(g, dup[1]); pick[0].apply(g, pick[1]); w.apply(g, w_xs)
    ref = [x.tobytes() for x in xs] + [np.asarray(a).tobytes() for a in o.get_weights()]
    for other, oxs in ((twin, twin_xs), dup, pick, (w, w_xs)):
        assert [x.tobytes() for x in oxs] + [np.asarray(a).tobytes() for a in other.get_weights()] == ref


def test_lazyadam_rows_on_placed_slots(monkeypatch):
    from adam_lit.backend import IndexedSlices
    runs = []
    for placed in (True, False):
        with monkeypatch.context() as mp:
            if not placed: mp.setattr(opt_mod, "_PLACED_MIN", 1 << 62)
            table = np.random.default_rng(3).standard_normal((5000, 64)).astype(np.float32)
            o = LazyAdam(amsgrad=True, weight_decay=0.01)
            for k in range(4):
                rng = np.random.default_rng(k)
                o.apply([IndexedSlices(rng.standard_normal((600, 64)).astype(np.float32), rng.integers(0, 5000, 600),
                                       table.shape)], [table])
            runs.append(table.tobytes() + b"".join(np.asarray(a).tobytes() for a in o.get_weights()))
    assert runs[0] == runs[1]


def test_torch_front_end_state_views_placed_slots():
    torch = pytest.importorskip("torch")
    from adam_lit.torch import Adam as TorchAdam
    p = torch.nn.Parameter(torch.from_numpy(_vars()[0]))
    opt = TorchAdam([p], lr=1e-3)
    for k in range(2):
        p.grad = torch.from_numpy(_grads(k)[0]); opt.step()
    st = opt.state[p]
    eng = next(iter(opt._engines.values()))
    m = eng.opt._slot_of[(0, "m")].array
    assert m.base is not None and st["exp_avg"].data_ptr() == m.ctypes.data          # the state is the placed slot
    sd = copy.deepcopy(opt.state_dict())
    q = torch.nn.Parameter(p.detach().clone())
    other = TorchAdam([q], lr=1e-3); other.load_state_dict(sd)
    g = torch.from_numpy(_grads(5)[0])
    p.grad, q.grad = g, g.clone()
    opt.step(); other.step()
    assert torch.equal(p, q) and torch.equal(opt.state[p]["exp_avg_sq"], other.state[q]["exp_avg_sq"])
