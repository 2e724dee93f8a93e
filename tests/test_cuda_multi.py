"""The multi-tensor CUDA kernel (`adam_lit.cuda.adam_multi_cupy`, nbs/09_cuda.ipynb).

Without a GPU: its source is the single-tensor kernel's text (so the per-element operations and their rounding are
the same by construction); it compiles with NVRTC for every variant and dtype, and its PTX has one instruction per
operation; and its launch, run on the CPU (block by block, on host memory at the table's addresses, the kernel's
`update` text evaluated with NumPy's IEEE operations), gives `kernels.adam_inplace`'s bits tensor by tensor.
With a GPU (CuPy sees one): the real launch against `adam_inplace_cupy`, tensor by tensor, and CUDA torch tensors."""
import ctypes

import numpy as np
import pytest
from conftest import need
from hypothesis import given, settings, strategies as st

from adam_lit import cuda
from adam_lit.cuda import (DTYPES, MULTI_CHUNK, OPTIONS, CUPY_EXTRA_OPTIONS, adam_multi_cupy, kernel_sources,
                           multi_kernel_sources, pointer_table)
from adam_lit.kernels import adam_inplace
from adam_lit.rules import bias_corrected_step_size, moment_constants


# ---- the text -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("key", sorted(multi_kernel_sources()))
def test_multi_kernel_runs_the_single_kernels_text(key):
    variant, dtype = key
    src, single = multi_kernel_sources()[key], kernel_sources()[key]
    decay = cuda._specialize(cuda._DECAY, dtype)
    guarded = f"if (dec_) {{ {decay} }}"
    assert src.operation in src.program()
    if variant.endswith("_wd"):
        assert src.operation.count(guarded) == 1
        assert src.operation.replace(guarded, decay) == single.operation
        assert src.operation.replace(guarded + "\n", "") == kernel_sources()[(variant[:-3], dtype)].operation
    else:
        assert src.operation == single.operation and "dec_" not in src.program()


# ---- NVRTC, no GPU needed -------------------------------------------------------------------------------------------

def _have_nvrtc():
    try:
        import nvidia.cuda_nvrtc  # noqa: F401
        return True
    except ImportError:
        return False


nvrtc = pytest.mark.skipif(not _have_nvrtc(), reason="the nvidia-cuda-nvrtc-cu12 wheel (dev extra) is not installed")


@nvrtc
@pytest.mark.parametrize("key", sorted(multi_kernel_sources()))
def test_multi_kernel_compiles_with_one_instruction_per_operation(key):
    src = multi_kernel_sources()[key]
    for arch in ((), ("-arch=compute_90",)):
        ptx = cuda.compile_to_ptx(src.program(), OPTIONS + CUPY_EXTRA_OPTIONS + arch, name=src.name + ".cu")
        counts = cuda.check_multi_ptx(ptx, src)
        assert counts["copies"] >= 1 and (counts["decay_copies"] >= 1) == key[0].endswith("_wd")
        assert f".entry {src.name}(" in ptx
    assert cuda.compile_to_cubin(src.program(), OPTIONS + CUPY_EXTRA_OPTIONS, "sm_90")


@nvrtc
def test_the_compile_check_fails_on_a_broken_source():
    src = multi_kernel_sources()[("amsgrad_wd", "float64")]
    with pytest.raises(cuda.NVRTCError, match="ys_"):
        cuda.compile_to_ptx(src.program().replace("= xs_[i]", "= ys_[i]"))
    dropped = cuda.MultiKernelSource(**{**src.__dict__, "operation": src.operation.replace(
        "ptx_add_rn_f64(ptx_sqrt_rn_f64(h_), eps)", "ptx_sqrt_rn_f64(h_)")})
    with pytest.raises(AssertionError, match="times"):
        cuda.check_multi_ptx(cuda.compile_to_ptx(dropped.program(), OPTIONS), src)


# ---- the launch, emulated on the CPU --------------------------------------------------------------------------------

def _ptx_max(a, b):
    return np.where((a > b) | np.isnan(a), a, b).astype(np.result_type(a, b))


def _ops(dtype):
    x = "f32" if dtype == "float32" else "f64"
    return {f"ptx_add_rn_{x}": np.add, f"ptx_sub_rn_{x}": np.subtract, f"ptx_mul_rn_{x}": np.multiply,
            f"ptx_div_rn_{x}": np.divide, f"ptx_sqrt_rn_{x}": np.sqrt, f"ptx_max_{x}": _ptx_max}


def _emulate(update: str, dtype: str, dec: bool, **env):
    "Run the kernel's update text with NumPy: each line `name = nested calls;`, the guarded line where `dec`."
    ops = _ops(dtype)
    for line in update.split("\n"):
        if line.startswith("if (dec_) { "):
            if not dec: continue
            line = line[len("if (dec_) { "):-len(" }")]
        lhs, rhs = line.rstrip(";").split(" = ", 1)
        env[lhs] = eval(rhs, {"__builtins__": {}}, {**ops, **env})
    return env


def _fake_launch(visits):
    def launch(variant, dtype, table, sizes_key, scalars, stream):
        src, chunks = multi_kernel_sources()[(variant, dtype)], cuda._chunk_table(sizes_key, cuda.MULTI_CHUNK)
        sizes, ams = np.frombuffer(sizes_key, np.int64), "amsgrad" in variant
        assert all(type(s) is np.dtype(dtype).type for s in scalars)
        names = dict(zip(("alpha", "c1", "c2", "eps", "wd", "lr"), scalars))
        ctype = np.ctypeslib.as_ctypes_type(np.dtype(dtype))
        for t, start, end in chunks.T:
            assert 0 < end - start <= cuda.MULTI_CHUNK and end <= sizes[t]
            visits[t][start:end] += 1
            x, g, m, v, vh = (np.ctypeslib.as_array((ctype * int(sizes[t])).from_address(int(table[r, t])))
                              if r < 4 + ams else None for r in range(5))
            s = slice(int(start), int(end))
            env = _emulate(src.update, dtype, bool(table[5, t]), p_=x[s], g_=g[s], m_=m[s], v_=v[s],
                           h_=vh[s] if ams else None, **names)
            x[s], m[s], v[s] = env["p_"], env["m_"], env["v_"]
            if ams: vh[s] = env["h_"]
    return launch


def _rand(rng, n, dtype, scale=1.0, pos=False):
    a = rng.standard_normal(n) * scale * 10.0 ** rng.integers(-30, 31, size=n)
    a = np.where(rng.random(n) < 0.1, 0.0, a)
    return np.asarray(np.abs(a) if pos else a, dtype)


def _same(a, b):
    "Equal bits (NaNs equal whatever their payload)."
    na, nb = np.isnan(a), np.isnan(b)
    return a.dtype == b.dtype and bool(np.array_equal(na, nb)) and np.where(na, 0, a).tobytes() == np.where(nb, 0, b).tobytes()


def _host_table(rows):
    return np.array([[a.ctypes.data for a in row] for row in rows], np.int64)


SIZES = st.lists(st.sampled_from([0, 1, 2, 7, 1000, MULTI_CHUNK - 1, MULTI_CHUNK, MULTI_CHUNK + 1, 2 * MULTI_CHUNK + 3]),
                 min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(sizes=SIZES, dtype=st.sampled_from(DTYPES), amsgrad=st.booleans(), wd=st.sampled_from([None, 0.004, 0.3]),
       seed=st.integers(0, 2**31 - 1), t=st.integers(1, 3000), lr=st.sampled_from([1e-3, 0.7]))
def test_emulated_launch_gives_adam_inplace_bits_tensor_by_tensor(sizes, dtype, amsgrad, wd, seed, t, lr):
    rng, S = np.random.default_rng(seed), np.dtype(dtype).type
    rows = [[_rand(rng, k, dtype, *a) for k in sizes] for a in ((), (), (1e-3,), (1e-6, True), (1e-6, True))]
    decay = rng.random(len(sizes)) < 0.6
    c1, c2 = moment_constants(0.9, 0.999, S)
    kw = dict(alpha=bias_corrected_step_size(lr, 0.9, 0.999, t, S), c1=c1, c2=c2, epsilon=1e-7)
    want = [[a.copy() for a in row] for row in rows]
    with np.errstate(all="ignore"):
        for j in range(len(sizes)):
            adam_inplace(want[0][j], want[1][j], want[2][j], want[3][j], want[4][j] if amsgrad else None, **kw,
                         weight_decay=wd if decay[j] else None, lr=lr)
        visits = [np.zeros(k, np.int64) for k in sizes]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(cuda, "_launch_multi", _fake_launch(visits))
            adam_multi_cupy(_host_table(rows), np.array(sizes, np.int64), decay.astype(np.uint8), dtype=dtype, **kw,
                            weight_decay=wd, lr=lr, amsgrad=amsgrad)
    assert all((v == 1).all() for v in visits)                 # every element of every tensor, once
    for r in (0, 2, 3) + ((4,) if amsgrad else ()):
        for j in range(len(sizes)): assert _same(rows[r][j], want[r][j]), (r, j, sizes[j], decay[j])


def test_emulated_launch_is_checked_to_see_the_decay_flags():
    "A launch that ignored the per-tensor flags would differ from adam_inplace on the excluded tensor."
    rng = np.random.default_rng(1)
    rows = [[_rand(rng, 50, "float32", *a) + 1.0 for _ in range(2)] for a in ((), (), (1e-3,), (1e-6, True), (1e-6, True))]
    kw = dict(alpha=1e-3, c1=0.1, c2=1e-3, epsilon=1e-7, weight_decay=0.3, lr=0.7)
    outs = []
    for decay in ([True, False], [True, True]):
        rs = [[a.copy() for a in row] for row in rows]
        with pytest.MonkeyPatch.context() as mp, np.errstate(all="ignore"):
            mp.setattr(cuda, "_launch_multi", _fake_launch([np.zeros(50, np.int64)] * 2))
            adam_multi_cupy(_host_table(rs), np.array([50, 50]), np.array(decay), dtype="float32", **kw)
        outs.append(rs[0][1])
    assert outs[0].tobytes() != outs[1].tobytes()


def test_chunk_table():
    sizes = np.array([0, 1, MULTI_CHUNK, MULTI_CHUNK + 1, 0, 5 * MULTI_CHUNK - 2], np.int64)
    t = cuda._chunk_table(sizes.tobytes(), MULTI_CHUNK)
    assert t.dtype == np.int64 and t.shape == (3, 1 + 1 + 2 + 5) and not t.flags.writeable
    for j, k in enumerate(sizes):
        mine = t[:, t[0] == j]
        assert mine[1].tolist() == list(range(0, int(k), MULTI_CHUNK))
        assert mine[2].tolist() == [min(s + MULTI_CHUNK, int(k)) for s in mine[1]]
    assert cuda._chunk_table(sizes.tobytes(), MULTI_CHUNK) is t          # cached per sizes
    assert cuda._chunk_table(np.zeros(3, np.int64).tobytes(), MULTI_CHUNK).shape == (3, 0)


# ---- bad arguments: a clear error, nothing written ------------------------------------------------------------------

def test_bad_arguments_raise_before_anything_is_written(monkeypatch):
    launched = []
    monkeypatch.setattr(cuda, "_launch_multi", lambda *a: launched.append(a))
    x = [np.ones(10, np.float32), np.ones(3, np.float32)]
    ptrs = _host_table([x] * 5)
    good = dict(ptrs=ptrs, sizes=np.array([10, 3]), decay=np.array([True, False]), dtype="float32", alpha=1e-3,
                c1=0.1, c2=1e-3, epsilon=1e-7, weight_decay=0.1, lr=0.5, amsgrad=True)
    misaligned, null = ptrs.copy(), ptrs.copy()
    misaligned[1, 1] += 1
    null[4, 0] = 0
    cases = [(dict(ptrs=ptrs[:4]), ValueError, r"shape \(5, n\)"), (dict(ptrs=ptrs.astype(float)), ValueError, "integer"),
             (dict(sizes=np.array([10])), ValueError, "`sizes`"), (dict(sizes=np.array([10, -3])), ValueError, "non-negative"),
             (dict(decay=np.array([1.0, 0.0])), ValueError, "`decay`"), (dict(decay=np.array([True])), ValueError, "`decay`"),
             (dict(ptrs=misaligned), ValueError, "row g, tensor 1 .size 3."), (dict(ptrs=null), ValueError, "row vhat, tensor 0"),
             (dict(dtype="float16"), TypeError, "float32 or float64"), (dict(dtype=np.int32), TypeError, "float32 or float64"),
             (dict(lr=None), ValueError, "needs the `lr`"), (dict(stream="default"), TypeError, "`stream`"),
             (dict(stream=-1), TypeError, "`stream`"), (dict(stream=False), TypeError, "`stream`")]
    for change, exc, msg in cases:
        with pytest.raises(exc, match=msg): adam_multi_cupy(**{**good, **change})
    assert not launched
    adam_multi_cupy(**{**good, "ptrs": null, "amsgrad": False})          # row 4 is not read without AMSGrad
    adam_multi_cupy(**{**good, "weight_decay": None, "lr": None, "stream": 0})
    assert len(launched) == 2 and launched[0][0] == "adam_wd" and launched[1][0] == "amsgrad" and launched[1][5] == 0


def test_pointer_table_refuses_host_arrays():
    a = np.zeros(3, np.float32)
    with pytest.raises(TypeError, match=r"`xs\[0\]` must be a CuPy array or a CUDA torch tensor"):
        pointer_table([a], [a], [a], [a])


# ---- on a GPU -------------------------------------------------------------------------------------------------------

def _cupy():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed (the gpu extra)")
    try:
        ok = cupy.cuda.is_available()
    except Exception:
        ok = False
    if not ok: pytest.skip("no CUDA GPU (cupy.cuda.is_available() is False)")
    return cupy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("wd", [None, 0.3])
@pytest.mark.parametrize("stream", ["current", "handle", "cupy"])
def test_multi_kernel_on_the_gpu_gives_adam_inplace_cupys_bits(dtype, amsgrad, wd, stream):
    cp = _cupy()
    rng, S = np.random.default_rng(7), np.dtype(dtype).type
    sizes = (2 * MULTI_CHUNK + 123, 0, 1000)                # one not a multiple of the chunk, one empty
    host = [[_rand(rng, k, dtype, *a) for k in sizes] for a in ((), (), (1e-3,), (1e-6, True), (1e-6, True))]
    decay = np.array([True, True, False])
    kw = dict(alpha=bias_corrected_step_size(1e-3, 0.9, 0.999, 5, S), c1=0.1, c2=1e-3, epsilon=1e-7)
    single = [[cp.asarray(a) for a in row] for row in host]
    for j in range(len(sizes)):
        cuda.adam_inplace_cupy(*(row[j] for row in single[:4]), single[4][j] if amsgrad else None, **kw,
                               weight_decay=wd if decay[j] else None, lr=0.7)
    multi = [[cp.asarray(a) for a in row] for row in host]
    ptrs, n, dt, _ = pointer_table(*multi[:4], multi[4] if amsgrad else None)
    s = cp.cuda.Stream(non_blocking=True)
    cp.cuda.Device().synchronize()
    args = dict(dtype=dt, **kw, weight_decay=wd, lr=0.7, amsgrad=amsgrad)
    if stream == "current":
        with s: adam_multi_cupy(ptrs, n, decay, **args)
    else:
        adam_multi_cupy(ptrs, n, decay, **args, stream=s.ptr if stream == "handle" else s)
    s.synchronize()
    for r in (0, 2, 3) + ((4,) if amsgrad else ()):
        for j in range(len(sizes)):
            assert cp.asnumpy(multi[r][j]).tobytes() == cp.asnumpy(single[r][j]).tobytes(), (r, j)


def test_multi_kernel_on_cuda_torch_tensors():
    cp = _cupy()
    torch = need("torch")
    if not torch.cuda.is_available(): pytest.skip("torch was built without CUDA or sees no GPU")
    rng = np.random.default_rng(8)
    sizes = (5000, 0, 4097)
    host = [[_rand(rng, k, "float32", *a) for k in sizes] for a in ((), (), (1e-3,), (1e-6, True))]
    kw = dict(alpha=1e-3, c1=0.1, c2=1e-3, epsilon=1e-7)
    want = [[cp.asarray(a) for a in row] for row in host]
    for j in range(len(sizes)): cuda.adam_inplace_cupy(*(row[j] for row in want), **kw, weight_decay=0.01, lr=0.1)
    ts = [[torch.tensor(a, device="cuda") for a in row] for row in host]
    params = [torch.nn.Parameter(t) for t in ts[0]]
    cuda.adam_multi_torch_cuda(params, ts[1], ts[2], ts[3], **kw, weight_decay=0.01, lr=0.1)
    torch.cuda.synchronize()
    for got, exp in zip([params, ts[2], ts[3]], [want[0], want[2], want[3]]):
        for a, b in zip(got, exp): assert a.detach().cpu().numpy().tobytes() == cp.asnumpy(b).tobytes()
    assert all(p.grad_fn is None for p in params)
