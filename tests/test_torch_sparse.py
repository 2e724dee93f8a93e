"""PyTorch's sparse gradients (nn.Embedding / nn.EmbeddingBag with sparse=True) in Adam and LazyAdam.

A torch sparse COO gradient with one sparse dimension is taken as the `IndexedSlices` of its own `_indices()[0]` and
`_values()` (uncoalesced: repeated rows add up). The checks: the same bits as that IndexedSlices (the same tensors),
the same numbers as the NumPy IndexedSlices and, for Adam, as the dense gradient; other sparse layouts refused.

Why NumPy is compared to a few ulps and not bit for bit: torch's vectorised CPU `sqrt` (AVX2/AVX-512) is not
correctly rounded (measured with torch 2.13: about 0.7% of float32 and float64 elements differ by one ulp from
`np.sqrt`), so adam_lit on torch tensors and on NumPy arrays can differ by an ulp, sparse gradients or not.
Why Adam is compared to the dense gradient to a few ulps: Keras's sparse Adam (which adam_lit follows) updates the
moments as `m - m*(1-beta_1)` and then scatter-adds the rows, a different operation order from the dense update.
"""
import numpy as np
import pytest

from adam_lit import Adam, IndexedSlices, LazyAdam
from adam_lit.backend import ArgumentTypeError

from conftest import need
torch = need("torch", "its sparse gradients cannot be tested")

CASES = [(cls, kw) for cls in (Adam, LazyAdam)
         for kw in ({}, {"amsgrad": True}, {"weight_decay": 0.01}, {"amsgrad": True, "weight_decay": 0.004})]
IDS = [f"{c.__name__}-{'-'.join(k) or 'plain'}" for c, k in CASES]


def _batches(module, seed, steps=6, rows=10):
    "Gradients of `module` (Embedding or EmbeddingBag, sparse=True) on batches full of repeated rows."
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids = torch.from_numpy(rng.integers(0, rows // 2, 16))          # 16 lookups of 5 rows: duplicates for sure
        module.weight.grad = None
        if isinstance(module, torch.nn.EmbeddingBag):
            out = module(ids, torch.tensor([0, 5, 11]))
        else:
            out = module(ids)
        (out * torch.from_numpy(rng.standard_normal(tuple(out.shape)).astype(np.float32))).sum().backward()
        g = module.weight.grad
        assert g.layout == torch.sparse_coo and not g.is_coalesced()
        assert len(set(g._indices()[0].tolist())) < g._indices().shape[1]     # repeated rows in the gradient
        yield g


def _modules(dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.nn.Embedding(10, 3, sparse=True).to(dtype), torch.nn.EmbeddingBag(10, 4, mode="sum", sparse=True).to(dtype)]


@pytest.mark.parametrize("cls,kw", CASES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_torch_sparse_is_its_indexed_slices(cls, kw, dtype):
    for module in _modules(dtype):
        w0 = module.weight.detach().clone()
        same = torch.nn.Parameter(w0.clone()); mine = w0.numpy().copy()
        o_sparse, o_slices, o_numpy = cls(0.05, **kw), cls(0.05, **kw), cls(0.05, **kw)
        for g in _batches(module, 1):
            o_sparse.apply([g], [module.weight])
            o_slices.apply([IndexedSlices(g._values().clone(), g._indices()[0].clone(), tuple(g.shape))], [same])
            o_numpy.apply([IndexedSlices(g._values().numpy().copy(), g._indices()[0].numpy().copy(), tuple(g.shape))], [mine])
        got = module.weight.detach().numpy()
        assert got.tobytes() == same.detach().numpy().tobytes(), (type(module).__name__, kw)
        for a, b in zip(o_sparse.variables, o_slices.variables):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
        assert not np.array_equal(got, w0.numpy())
        np.testing.assert_allclose(got, mine, rtol=0, atol=8 * np.finfo(mine.dtype).eps)   # a few ulps (see the module doc)


@pytest.mark.parametrize("kw", [{}, {"amsgrad": True}, {"weight_decay": 0.01}], ids=["plain", "amsgrad", "weight_decay"])
def test_adam_on_torch_sparse_is_dense_equivalent(kw):
    for module in _modules():
        dense = torch.nn.Parameter(module.weight.detach().clone())
        o_sparse, o_dense = Adam(0.05, **kw), Adam(0.05, **kw)
        for g in _batches(module, 2):
            o_sparse.apply([g], [module.weight])
            o_dense.apply([g.to_dense()], [dense])          # torch sums the repeated rows
        np.testing.assert_allclose(module.weight.detach().numpy(), dense.detach().numpy(), rtol=0, atol=4e-7)


def test_lazy_adam_leaves_untouched_rows_and_adam_moves_them():
    emb = torch.nn.Embedding(10, 3, sparse=True)
    w0 = emb.weight.detach().clone()
    opt = LazyAdam(0.05)
    emb(torch.tensor([1, 1, 4])).sum().backward()
    opt.apply([emb.weight.grad], [emb.weight])
    moved = (emb.weight.detach() != w0).any(dim=1).nonzero().flatten().tolist()
    assert moved == [1, 4]


def test_apply_gradients_stateless_apply_and_minimize_take_torch_sparse():
    emb = torch.nn.Embedding(6, 2, sparse=True)
    emb(torch.tensor([0, 3, 3])).sum().backward()
    g = emb.weight.grad
    ref = LazyAdam(0.1); x_ref = torch.nn.Parameter(emb.weight.detach().clone())
    ref.apply([IndexedSlices(g._values(), g._indices()[0], tuple(g.shape))], [x_ref])
    a = LazyAdam(0.1); x = torch.nn.Parameter(emb.weight.detach().clone())
    a.apply_gradients([(g, x)])
    assert torch.equal(x, x_ref)
    b = LazyAdam(0.1); y = emb.weight.detach().clone(); b.build([y])
    new_x, _ = b.stateless_apply(b.variables, [g], [y])
    assert torch.equal(new_x[0], x_ref.detach())
    c = LazyAdam(0.1); z = torch.nn.Parameter(emb.weight.detach().clone())
    c.minimize(lambda: (0.0, [g]), [z])
    assert torch.equal(z, x_ref)


@pytest.mark.parametrize("make,fragment", [
    (lambda d: d.to_sparse_csr(), "layout torch.sparse_csr"),
    (lambda d: d.to_sparse_csc(), "layout torch.sparse_csc"),
], ids=["csr", "csc"])
@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
@pytest.mark.parametrize("cls", [Adam, LazyAdam])
def test_other_sparse_layouts_refused_nothing_changed(make, fragment, cls):
    xs = [torch.zeros(3), torch.zeros(4, 2)]
    opt = cls(0.1)
    opt.apply([torch.ones(3), torch.ones(4, 2)], xs)
    before = [t.clone() for t in xs] + [torch.as_tensor(np.asarray(v)).clone() for v in opt.variables]
    with pytest.raises(ArgumentTypeError, match="gradient 1 is a torch sparse tensor of " + fragment.replace(".", r"\.")) as e:
        opt.apply([torch.ones(3), make(torch.ones(4, 2))], xs)
    assert "to_dense()" in str(e.value)
    after = [t for t in xs] + [torch.as_tensor(np.asarray(v)) for v in opt.variables]
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    assert opt.iterations == 1


@pytest.mark.parametrize("cls", [Adam, LazyAdam])
def test_coo_sparse_in_two_dimensions_is_the_rows_it_touches(cls):
    "`dense.to_sparse()` (entries, repeats summed): the bits of the row-sparse gradient of the rows the entries touch."
    xa, xb = torch.linspace(-1, 1, 15).reshape(5, 3), torch.linspace(-1, 1, 15).reshape(5, 3)
    oa, ob = cls(0.1), cls(0.1)
    for step in range(3):
        ent = torch.sparse_coo_tensor(torch.tensor([[3, 0, 3, 3], [1, 2, 1, 0]]), torch.tensor([1.0, -2.0, 0.5 * step, 4.0]), (5, 3))
        rows = torch.sparse_coo_tensor(torch.tensor([[0, 3]]), ent.to_dense()[[0, 3]], (5, 3))
        oa.apply([ent], [xa]); ob.apply([rows], [xb])
        assert torch.equal(xa, xb), step
    assert torch.equal(xa[[1, 2, 4]], torch.linspace(-1, 1, 15).reshape(5, 3)[[1, 2, 4]])


def test_torch_sparse_of_wrong_shape_is_refused():
    emb = torch.nn.Embedding(6, 2, sparse=True)
    emb(torch.tensor([0])).sum().backward()
    with pytest.raises(ValueError, match=r"gradient 0 has shape \(6, 2\) but its variable has shape \(5, 2\)"):
        LazyAdam().apply([emb.weight.grad], [torch.zeros(5, 2)])
