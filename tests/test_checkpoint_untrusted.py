"""Checkpoints are files from elsewhere: each malformed file below gives a `CheckpointError` (a `ValueError`) within
bounded time and memory, and changes nothing; `save` follows the umask, syncs, and cleans up after killed saves;
a checkpoint resumed onto other weights is refused unless the caller says what to do; old files still load.

The malformed files are built here, byte by byte where zipfile would not write them (a small zip writer below)."""
import json, os, signal, stat, struct, threading, time, tracemalloc, warnings, zipfile, zlib
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest

from adam_lit import Adam, AdamW, LazyAdam
from adam_lit import checkpoint
from adam_lit.checkpoint import CheckpointError, load, load_optimizer, read, save

MiB = 2**20
META_MAX_BYTES = getattr(checkpoint, "META_MAX_BYTES", 16 * MiB)   # (the documented cap)
TIME_LIMIT, MEMORY_LIMIT = 5.0, 200 * MiB
DATA = Path(__file__).parent / "data"


# ---------------------------------------------------------------- making files
def npy(a) -> bytes:
    "The .npy bytes of array `a`."
    f = BytesIO(); np.lib.format.write_array(f, np.asarray(a), allow_pickle=False); return f.getvalue()

def npy_header(shape, dtype) -> bytes:
    "Only the .npy header of an array of `shape` and `dtype` (no data)."
    f = BytesIO(); np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                            "fortran_order": False, "shape": tuple(shape)})
    return f.getvalue()

def deflated_zeros(n_mib: int, prefix: bytes = b""):
    """A raw deflate stream of `prefix` then `n_mib` MiB of zero bytes (about 1 kB per MiB): a zip bomb's payload;
    with its CRC-32 and uncompressed size."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(bytes(MiB)) + c.flush(zlib.Z_FULL_FLUSH)    # self-contained: it can be repeated
    end = c.flush(zlib.Z_FINISH)
    crc, zero = zlib.crc32(prefix), bytes(MiB)
    for _ in range(n_mib): crc = zlib.crc32(zero, crc)
    return head + block * n_mib + end, crc, len(prefix) + n_mib * MiB

def zip_bytes(members) -> bytes:
    """A zip archive of `members`: dicts with `name`, `data` (the bytes as stored) and optionally `method`, `flags`,
    `size` (declared uncompressed size), `csize` (declared compressed size), `crc`."""
    out, central = BytesIO(), []
    for m in members:
        name, data = m["name"].encode(), m["data"]
        method, flags = m.get("method", 0), m.get("flags", 0)
        crc = m.get("crc", zlib.crc32(data)); size = m.get("size", len(data)); csize = m.get("csize", len(data))
        offset = out.tell()
        out.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 0x21, crc, csize, size, len(name), 0))
        out.write(name); out.write(data)
        central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, method, 0, 0x21, crc, csize, size,
                                   len(name), 0, 0, 0, 0, 0, offset) + name)
    start = out.tell()
    for c in central: out.write(c)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), out.tell() - start, start, 0))
    return out.getvalue()

def good_state(tmp_path):
    "A good checkpoint's path, metadata and arrays (Adam with AMSGrad on two float32 variables, three steps)."
    opt, xs = trained()
    p = save(opt, tmp_path / "good")
    meta, arrays = read(p)
    return p, meta, arrays

def trained(seed=0):
    xs = [np.ones((6, 3), np.float32), np.ones(3, np.float32)]
    opt = Adam(amsgrad=True, weight_decay=0.01)
    for k in range(3): opt.apply([np.full((6, 3), 0.1 * (k + 1) + seed, np.float32), np.full(3, -0.2 * (k + 1), np.float32)], xs)
    return opt, xs

def meta_bytes(meta) -> bytes: return npy(np.frombuffer(json.dumps(meta).encode(), np.uint8))

def checkpoint_file(tmp_path, name, meta, arrays, extra=(), meta_raw=None) -> Path:
    "A stored (uncompressed) zip like `np.savez` writes, from metadata and arrays (bytes or arrays), plus extra members."
    members = [{"name": "meta.npy", "data": meta_raw if meta_raw is not None else meta_bytes(meta)}]
    members += [{"name": f"{k}.npy", "data": v if isinstance(v, bytes) else npy(v)} for k, v in arrays.items()]
    p = tmp_path / f"{name}.npz"
    p.write_bytes(zip_bytes(members + list(extra)))
    return p

def edited(tmp_path, name, change):
    "The good checkpoint with its metadata changed by `change(meta)`."
    _, meta, arrays = good_state(tmp_path)
    meta = json.loads(json.dumps(meta)); change(meta)
    return checkpoint_file(tmp_path, name, meta, arrays)


# ---------------------------------------------------------------- bounds and "nothing changed"
class Deadline(Exception): pass

@contextmanager
def deadline(seconds):
    "Interrupt the block (raising `Deadline`) if it runs longer than `seconds`: a regression fails fast, it does not hang."
    def handler(signum, frame): raise Deadline(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try: yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0); signal.signal(signal.SIGALRM, old)

def snapshot(opt, xs):
    return [x.tobytes() for x in xs] + [s.array.tobytes() for s in opt._slots] + [opt._iterations, opt.skipped_steps, list(opt._names)]

def bounded(call):
    "Run `call` once for time (with a deadline) and once under tracemalloc; returns (exception or None, seconds, peak bytes)."
    err, t0 = None, time.perf_counter()
    try:
        with deadline(TIME_LIMIT * 2): call()
    except Exception as e: err = e
    seconds = time.perf_counter() - t0
    if isinstance(err, Deadline): return err, seconds, None
    tracemalloc.start()
    try:
        try: call()
        except Exception: pass
        peak = tracemalloc.get_traced_memory()[1]
    finally: tracemalloc.stop()
    return err, seconds, peak

def refused(path, fragment, via=("read", "load", "load_optimizer"), restore_variables=True):
    "Each way of reading `path` raises CheckpointError with `fragment`, in bounded time and memory; nothing changes."
    for how in via:
        opt, xs = trained(seed=1)
        before = snapshot(opt, xs)
        call = {"read": lambda: read(path),
                "load": lambda: load(opt, path, restore_variables=restore_variables),
                "load_optimizer": lambda: load_optimizer(path, xs, restore_variables=restore_variables)}[how]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            err, seconds, peak = bounded(call)
        assert isinstance(err, CheckpointError), f"{how}: {type(err).__name__}: {err}"
        assert fragment in str(err), f"{how}: {err}"
        assert seconds < TIME_LIMIT, f"{how}: {seconds:.1f} s"
        assert peak < MEMORY_LIMIT, f"{how}: {peak / MiB:.0f} MiB"
        assert snapshot(opt, xs) == before, f"{how}: the state changed"


# ---------------------------------------------------------------- 1. denial of service from small files
def test_bomb_member_the_metadata_does_not_name_is_never_read(tmp_path):
    _, meta, arrays = good_state(tmp_path)
    payload, crc, size = deflated_zeros(512)
    bomb = {"name": "bomb.npy", "data": payload, "method": 8, "size": size, "crc": crc}
    p = checkpoint_file(tmp_path, "bomb", meta, arrays, extra=[bomb])
    assert p.stat().st_size < 2 * MiB
    err, seconds, peak = bounded(lambda: read(p))
    assert err is None, err
    assert seconds < TIME_LIMIT and peak < MEMORY_LIMIT, (seconds, peak / MiB)

def test_bomb_as_a_named_array(tmp_path):
    _, meta, arrays = good_state(tmp_path)
    n = 512 * MiB // 4
    meta["slots"][0]["shape"] = [n]
    data, crc, size = deflated_zeros(512, prefix=npy_header((n,), np.float32))
    p = checkpoint_file(tmp_path, "named_bomb", meta, {k: v for k, v in arrays.items() if k != "slot_0"},
                        extra=[{"name": "slot_0.npy", "data": data, "method": 8, "size": size, "crc": crc}])
    refused(p, "is compressed (zip method 8)")

def test_npy_header_declaring_terabytes(tmp_path):
    _, meta, arrays = good_state(tmp_path)
    shape = [10**13]                               # 80 TB of float64
    meta["slots"][0].update(shape=shape, dtype="float64")
    arrays["slot_0"] = npy_header(shape, np.float64)
    refused(checkpoint_file(tmp_path, "huge_header", meta, arrays), "its header (10000000000000,) x 8 bytes")

def test_member_declaring_more_than_the_file(tmp_path):
    _, meta, arrays = good_state(tmp_path)
    p = checkpoint_file(tmp_path, "liar", meta, arrays)
    raw = bytearray(p.read_bytes())
    at = raw.index(b"slot_0.npy", raw.index(b"PK\x01\x02")) - 46      # slot_0's central directory entry
    raw[at + 20:at + 28] = struct.pack("<II", 3 * 2**30, 3 * 2**30)   # compressed and uncompressed size: 3 GiB
    p.write_bytes(bytes(raw))
    refused(p, "than the file holds")

def test_metadata_larger_than_the_cap(tmp_path):
    _, meta, arrays = good_state(tmp_path)
    meta["padding"] = "x" * (META_MAX_BYTES + 1)
    refused(checkpoint_file(tmp_path, "big_meta", meta, arrays), f"more than the {META_MAX_BYTES} allowed")

def test_compressed_metadata_bomb(tmp_path):
    _, meta, arrays = good_state(tmp_path)
    data, crc, size = deflated_zeros(256, prefix=npy_header((256 * MiB,), np.uint8))
    members = [{"name": "meta.npy", "data": data, "method": 8, "size": size, "crc": crc}]
    members += [{"name": f"{k}.npy", "data": npy(v)} for k, v in arrays.items()]
    p = tmp_path / "meta_bomb.npz"; p.write_bytes(zip_bytes(members))
    refused(p, "is compressed")

@pytest.mark.parametrize("depth", [3000, 100_000])
def test_deeply_nested_metadata(tmp_path, depth):
    _, meta, arrays = good_state(tmp_path)
    raw = json.dumps(dict(meta, padding="p" * 200_000))[:-1] + ', "deep": ' + "[" * depth + "]" * depth + "}"
    p = checkpoint_file(tmp_path, "deep", None, arrays, meta_raw=npy(np.frombuffer(raw.encode(), np.uint8)))
    refused(p, "metadata")

def test_many_entries_naming_one_array(tmp_path):
    "100 000 slot entries all naming one 16 MiB array: each entry would hash it again (18 minutes before)."
    big = np.zeros(4 * MiB, np.float32)
    digest = __import__("hashlib").sha256(big.tobytes()).hexdigest()
    _, meta, arrays = good_state(tmp_path)
    entry = {"key": "slot_0", "variable": 0, "name": "m", "shape": [4 * MiB], "dtype": "float32", "sha256": digest}
    meta["slots"] = [dict(entry, name=f"s{k}") for k in range(100_000)]
    raw = json.dumps(meta, separators=(",", ":")).encode()
    assert len(raw) < META_MAX_BYTES
    p = checkpoint_file(tmp_path, "entries", None, {"slot_0": big, "variable_0": arrays["variable_0"],
                                                    "variable_1": arrays["variable_1"]}, meta_raw=npy(np.frombuffer(raw, np.uint8)))
    refused(p, "two entries name the same array", via=("read",))


# ---------------------------------------------------------------- 2. every malformed field: a CheckpointError, not a crash
SCHEMA = [
    ("slot without sha256", lambda m: m["slots"][0].pop("sha256"), "slot 0 has sha256=None"),
    ("slot without key", lambda m: m["slots"][0].pop("key"), "slot 0 has key=None"),
    ("slot of variable 99", lambda m: m["slots"][0].update(variable=99), "slot 0 has variable=99"),
    ("slot of variable true", lambda m: m["slots"][0].update(variable=True), "slot 0 has variable=True"),
    ("variable name a list", lambda m: m["variables"][0].update(name=["a"]), "variable 0 has name=['a']"),
    ("class a list", lambda m: m.update({"class": ["Adam"]}), "`class` is ['Adam']"),
    ("config a string", lambda m: m.update(config="adam"), "`config` is 'adam'"),
    ("variables an object", lambda m: m.update(variables={}), "`variables` is {}"),
    ("shape with a float", lambda m: m["slots"][0].update(shape=[6.0, 3]), "slot 0 has shape=[6.0, 3]"),
    ("negative shape", lambda m: m["slots"][0].update(shape=[-6, -3]), "slot 0 has shape=[-6, -3]"),
    ("object dtype", lambda m: m["slots"][0].update(dtype="object"), "slot 0 has dtype='object'"),
    ("checksum not hex", lambda m: m["slots"][0].update(sha256="z" * 64), "slot 0 has sha256="),
    ("key 'meta'", lambda m: m["slots"][0].update(key="meta"), "slot 0 has key='meta'"),
    ("two slots of one name", lambda m: m["slots"][1].update(name=m["slots"][0]["name"], variable=m["slots"][0]["variable"]),
     "a variable has two slots of the same name"),
    ("version a string", lambda m: m.update(version="2"), "invalid format version '2'"),
    ("version true", lambda m: m.update(version=True), "invalid format version True"),
    ("metadata a list", None, "not an adam_lit checkpoint"),
    ("step count 2**63", lambda m: m.update(iterations=2**63), "invalid step count 9223372036854775808"),
    ("step count 10**30", lambda m: m.update(iterations=10**30), "invalid step count"),
    ("step count 1e30", lambda m: m.update(iterations=1e30), "invalid step count 1e+30"),
    ("step count true", lambda m: m.update(iterations=True), "invalid step count True"),
    ("skipped steps a float", lambda m: m.update(skipped_steps=1.5), "`skipped_steps` is 1.5"),
    ("excluded a string", lambda m: m["variables"][0].update(excluded="no"), "variable 0 has excluded='no'"),
    ("exclude pattern a list", lambda m: m.update(exclude_pattern=["bias"]), "`exclude_pattern` is ['bias']"),
]

@pytest.mark.parametrize("desc, change, fragment", SCHEMA, ids=[r[0] for r in SCHEMA])
def test_schema(tmp_path, desc, change, fragment):
    if change is None:
        _, meta, arrays = good_state(tmp_path)
        p = checkpoint_file(tmp_path, "list", None, arrays, meta_raw=meta_bytes([meta]))
    else: p = edited(tmp_path, "edited", change)
    refused(p, fragment)

@pytest.mark.parametrize("raw, fragment", [
    (b'{"format": "adam_lit.checkpoint", "format": "x"}', "a key appears twice"),
    (b'{"format": "adam_lit.checkpoint", "version": NaN}', "NaN is not JSON"),
    (b'\xff\xfe{}', "not valid JSON"),
    (b'{"version": 1' + b'1' * 5000 + b'}', "not valid JSON"),
])
def test_metadata_not_json(tmp_path, raw, fragment):
    _, _, arrays = good_state(tmp_path)
    refused(checkpoint_file(tmp_path, "json", None, arrays, meta_raw=npy(np.frombuffer(raw, np.uint8))), fragment)

@pytest.mark.parametrize("config, fragment", [
    ({"learning_rate": {"class_name": ["ExponentialDecay"], "config": {}}}, "its config cannot make an optimizer of class Adam (TypeError"),
    ({"learning_rate": {"class_name": "ExponentialDecay", "config": "x"}}, "its config cannot make an optimizer of class Adam"),
    ({"beta_1": "0.9"}, "its config cannot make an optimizer of class Adam"),
    ({"no_such_option": 1}, "its config cannot make an optimizer of class Adam"),
])
def test_config_that_cannot_make_the_optimizer(tmp_path, config, fragment):
    refused(edited(tmp_path, "config", lambda m: m.update(config=config)), fragment, via=("load_optimizer",))

def test_encrypted_member(tmp_path):
    _, meta, arrays = good_state(tmp_path)
    members = [{"name": "meta.npy", "data": meta_bytes(meta)}]
    members += [{"name": f"{k}.npy", "data": npy(v), "flags": 1 if k == "slot_0" else 0} for k, v in arrays.items()]
    p = tmp_path / "encrypted.npz"; p.write_bytes(zip_bytes(members))
    refused(p, "is encrypted")

def test_unknown_compression_method(tmp_path):
    _, meta, arrays = good_state(tmp_path)
    members = [{"name": "meta.npy", "data": meta_bytes(meta)}]
    members += [{"name": f"{k}.npy", "data": npy(v), "method": 99 if k == "slot_0" else 0} for k, v in arrays.items()]
    p = tmp_path / "method99.npz"; p.write_bytes(zip_bytes(members))
    refused(p, "is compressed (zip method 99)")

def test_duplicate_member(tmp_path):
    p, meta, arrays = good_state(tmp_path)
    other = tmp_path / "dup.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")               # zipfile warns "Duplicate name"
        with zipfile.ZipFile(other, "w") as z:
            with zipfile.ZipFile(p) as src:
                for n in src.namelist(): z.writestr(n, src.read(n))
            z.writestr("slot_0.npy", npy(arrays["slot_0"] + 1))    # a second copy: which is the checkpoint's?
    refused(other, "two members named 'slot_0.npy'")

def test_fortran_order_and_other_byte_order(tmp_path):
    _, meta, arrays = good_state(tmp_path)
    a = dict(arrays, slot_0=npy(np.asfortranarray(arrays["slot_0"])))
    refused(checkpoint_file(tmp_path, "fortran", meta, a), "in Fortran order")
    a = dict(arrays, slot_0=npy(arrays["slot_0"].astype(arrays["slot_0"].dtype.newbyteorder())))
    refused(checkpoint_file(tmp_path, "swapped", meta, a), "expected dtype float32")

def test_pickled_array_never_unpickled(tmp_path):
    _, meta, arrays = good_state(tmp_path)
    f = BytesIO(); np.lib.format.write_array(f, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    refused(checkpoint_file(tmp_path, "pickled", meta, dict(arrays, slot_0=f.getvalue())), "the array of slot")


# ---------------------------------------------------------------- 3. not a regular file
def test_fifo_refused_before_open(tmp_path):
    if not hasattr(os, "mkfifo"): pytest.skip("no FIFOs on this system")
    fifo = tmp_path / "ckpt.npz"; os.mkfifo(fifo)
    out = {}
    def reader():
        try: read(fifo)
        except Exception as e: out["err"] = e
    t = threading.Thread(target=reader, daemon=True); t.start(); t.join(TIME_LIMIT)
    if t.is_alive():                                  # blocked in open(): give it a writer so that it ends
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK); os.close(fd); t.join(TIME_LIMIT)
        pytest.fail("read() blocked on a FIFO")
    assert isinstance(out.get("err"), CheckpointError) and "not a regular file (a FIFO)" in str(out["err"]), out

@pytest.mark.parametrize("where, kind", [("dir", "a directory"), ("/dev/null", "a character device")])
def test_other_non_regular_files(tmp_path, where, kind):
    p = tmp_path if where == "dir" else Path(where)
    if not p.exists(): pytest.skip(f"{where} does not exist here")
    refused(p, f"not a regular file ({kind})")


# ---------------------------------------------------------------- 4. a failed load writes nothing
def test_read_only_second_variable(tmp_path):
    p, _, _ = good_state(tmp_path)
    opt, xs = trained(seed=1)
    xs[1].flags.writeable = False
    before = snapshot(opt, xs)
    with pytest.raises(CheckpointError, match=r"variable 1 \('variable_1', shape \(3,\)\) is read-only"):
        load(opt, p, restore_variables=True)
    assert snapshot(opt, xs) == before                # variable 0 was not overwritten first

def test_read_only_slot(tmp_path):
    p, _, _ = good_state(tmp_path)
    opt, xs = trained(seed=1)
    opt._slots[-1].array.flags.writeable = False
    before = snapshot(opt, xs)
    with pytest.raises(CheckpointError, match="slot 'vhat' of variable 1 is read-only"):
        load(opt, p, restore_variables=True)
    assert snapshot(opt, xs) == before


# ---------------------------------------------------------------- 5. the step count and skipped steps
def test_step_count_at_the_counter_bound_loads(tmp_path):
    p = edited(tmp_path, "max", lambda m: m.update(iterations=2**63 - 1))
    opt, xs = trained()
    load(opt, p, restore_variables=True)
    assert opt._iterations == 2**63 - 1

def test_skipped_steps_saved_and_restored(tmp_path):
    xs = [np.ones(3)]; o = Adam(gradient_nan_policy="skip")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for g in (np.ones(3), np.full(3, np.nan), np.full(3, np.inf), np.ones(3)): o.apply([g], xs)
    assert (o.iterations, o.skipped_steps) == (2, 2)
    back = load_optimizer(save(o, tmp_path / "s"), [xs[0].copy()])
    assert (back.iterations, back.skipped_steps) == (2, 2)


# ---------------------------------------------------------------- 6. save: mode, fsync, stale temporary files
def test_new_file_follows_the_umask_existing_keeps_its_mode(tmp_path):
    o, xs = trained()
    for mask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(mask)
        try: p = save(o, tmp_path / f"u{mask:o}")
        finally: os.umask(old)
        assert stat.S_IMODE(os.stat(p).st_mode) == mode, (oct(mask), oct(os.stat(p).st_mode))
    os.chmod(p, 0o640)
    save(o, p)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640

def test_fsync_file_then_replace_then_directory(tmp_path, monkeypatch):
    o, xs = trained(); calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    save(o, tmp_path / "f")
    assert calls == ["file", "replace", "dir"]

def test_killed_save_leaves_a_temporary_file_the_next_save_removes(tmp_path, monkeypatch):
    o, xs = trained()
    p = save(o, tmp_path / "ck")
    before = Path(p).read_bytes()
    def killed(*a, **k): raise KeyboardInterrupt      # a save interrupted while writing
    monkeypatch.setattr(np, "savez", killed)
    with pytest.raises(KeyboardInterrupt): save(o, p)
    monkeypatch.undo()
    assert Path(p).read_bytes() == before and sorted(os.listdir(tmp_path)) == ["ck.npz"]     # cleaned up at once
    stale = tmp_path / ".adam_lit-tmp.ck.npz.00112233445566ff.tmp"    # as SIGKILL would leave it
    keep = [tmp_path / ".adam_lit-tmp.ck.npz.other.npz.00112233445566ff.tmp", tmp_path / ".adam_lit-tmp.ck.npz.notours"]
    for q in [stale] + keep: q.write_bytes(b"\0" * 4096)
    save(o, p)
    assert sorted(os.listdir(tmp_path)) == sorted(["ck.npz"] + [q.name for q in keep])

def test_long_target_name(tmp_path):
    o, xs = trained()
    p = save(o, tmp_path / ("n" * 240))
    assert read(p)[0]["iterations"] == 3 and sorted(os.listdir(tmp_path)) == ["n" * 240 + ".npz"]


# ---------------------------------------------------------------- resuming onto other weights
def test_other_weights_refused_unless_said(tmp_path):
    p, _, arrays = good_state(tmp_path)
    fresh = [np.ones((6, 3), np.float32), np.ones(3, np.float32)]      # (the weights before training)
    for call in (lambda: load_optimizer(p, [a.copy() for a in fresh]),
                 lambda: load(trained(seed=1)[0], p)):
        with pytest.raises(CheckpointError) as e: call()
        msg = str(e.value)
        assert "variable 0 ('variable_0', shape (6, 3)) differs" in msg
        assert "`restore_variables=True` loads the saved weights" in msg and "`restore_variables=False` keeps the given weights" in msg
    ys = [a.copy() for a in fresh]
    o = load_optimizer(p, ys, restore_variables=False)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(ys, fresh)) and o.iterations == 3
    o = load_optimizer(p, ys, restore_variables=True)
    assert ys[0].tobytes() == arrays["variable_0"].tobytes()

def test_one_bit_is_a_difference(tmp_path):
    p, _, arrays = good_state(tmp_path)
    ys = [arrays["variable_0"].copy(), arrays["variable_1"].copy()]
    load_optimizer(p, [y.copy() for y in ys])                      # equal: nothing to say
    ys[1].view(np.uint32)[2] ^= 1
    with pytest.raises(CheckpointError, match=r"variable 1 \('variable_1', shape \(3,\)\) differs"):
        load_optimizer(p, ys)

def test_without_stored_values_nothing_to_compare(tmp_path):
    opt, xs = trained()
    p = save(opt, tmp_path / "novalues", include_variables=False)
    o = load_optimizer(p, [np.zeros((6, 3), np.float32), np.zeros(3, np.float32)])
    assert o.iterations == 3

def test_restore_variables_not_a_bool(tmp_path):
    p, _, _ = good_state(tmp_path)
    opt, xs = trained(); before = snapshot(opt, xs)
    with pytest.raises(TypeError, match="`restore_variables` must be True, False or None, got 'yes'"):
        load(opt, p, restore_variables="yes")
    assert snapshot(opt, xs) == before


# ---------------------------------------------------------------- exclusions and names, resumed
@pytest.mark.parametrize("cls, kw", [(Adam, {}), (AdamW, {"amsgrad": True}), (LazyAdam, {"use_ema": True})])
def test_exclusions_and_names_resume_bit_for_bit(tmp_path, cls, kw):
    def run(upto=None):
        xs = [np.linspace(-1, 1, 6).reshape(3, 2), np.linspace(1, 2, 2), np.array(0.5)]
        o = cls(learning_rate=0.05, weight_decay=0.1, **kw); o.build(xs, names=["k", "b", "s"])
        o.exclude_from_weight_decay(var_list=[xs[2]], var_names=["^b$"])
        for t in range(8):
            if t == upto:
                p = save(o, tmp_path / "r")
                xs = [np.zeros_like(x) for x in xs]
                o = load_optimizer(p, xs, restore_variables=True)
            o.apply([np.cos(x + t) for x in xs], xs)
        return xs, o
    (a, oa), (b, ob) = run(), run(upto=3)
    assert [x.tobytes() for x in a] == [x.tobytes() for x in b]
    assert ob._names == ["k", "b", "s"] and [ob._use_weight_decay(i) for i in range(3)] == [True, False, False]

def test_stored_pattern_is_never_run(tmp_path):
    "A pattern from a file (here one that backtracks for ever) is kept for the record; the decision per variable is used."
    o = Adam(weight_decay=0.1); xs = [np.ones(3)]; o.build(xs, names=["a" * 40 + "!"])
    o.apply([np.ones(3)], xs)
    meta, arrays = read(save(o, tmp_path / "p"))
    meta["exclude_pattern"] = "(a+)+$"
    q = checkpoint_file(tmp_path, "redos", meta, arrays)
    with deadline(TIME_LIMIT): back = load_optimizer(q, [np.ones(3)], restore_variables=True)
    with deadline(TIME_LIMIT): back.apply([np.ones(3)], [back._variables[0]])
    assert back._exclude_pattern is None and back._use_weight_decay(0)


# ---------------------------------------------------------------- files of format version 1
def test_version_1_file_still_loads():
    """`tests/data/checkpoint_v1.npz` was written by adam_lit's `save` of format version 1 (before exclusions, names
    and skipped steps were saved): xs = [linspace(-1, 1, 6, float32).reshape(2, 3), [0.5, -0.25, 2.0] float32];
    Adam(learning_rate=0.01, amsgrad=True, weight_decay=0.05, use_ema=True), built with names
    ["dense/kernel", "dense/bias"], four steps of gradients 0.1 (k + 1) and -0.2 (k + 1)."""
    def fresh():
        return [np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), np.array([0.5, -0.25, 2.0], np.float32)]
    xs = fresh(); o = Adam(learning_rate=0.01, amsgrad=True, weight_decay=0.05, use_ema=True)
    o.build(xs, names=["dense/kernel", "dense/bias"])
    grads = lambda k: [np.full((2, 3), 0.1 * (k + 1), np.float32), np.full(3, -0.2 * (k + 1), np.float32)]
    for k in range(4): o.apply(grads(k), xs)
    meta, _ = read(DATA / "checkpoint_v1.npz")
    assert meta["version"] == 1 and "skipped_steps" not in meta
    ys = [np.zeros_like(x) for x in xs]
    back = load_optimizer(DATA / "checkpoint_v1.npz", ys, restore_variables=True)
    assert back._names == ["dense/kernel", "dense/bias"] and back.skipped_steps == 0
    for k in range(4, 7): o.apply(grads(k), xs); back.apply(grads(k), ys)
    assert [x.tobytes() for x in xs] == [y.tobytes() for y in ys]
    assert [s.array.tobytes() for s in o._slots] == [s.array.tobytes() for s in back._slots]


def test_path_not_a_path():
    with open(__file__, "rb") as f:
        with pytest.raises(TypeError, match="a checkpoint is read from a path"): read(f)


def test_the_name_given_to_save_reads_back(tmp_path):
    "`save(opt, 'run')` writes run.npz; `load(opt, 'run')` reads it (as numpy.load does not), a missing name still raises."
    import adam_lit.checkpoint as ck
    from adam_lit import Adam as _Adam
    o, xs = _Adam(), [np.ones(3, np.float32)]
    o.apply([np.full(3, 0.5, np.float32)], xs)
    assert str(ck.save(o, tmp_path / "run")).endswith("run.npz")
    o2 = _Adam(); o2.build(xs); ck.load(o2, str(tmp_path / "run"))
    assert o2.iterations == 1
    with pytest.raises(FileNotFoundError): ck.load(o2, str(tmp_path / "other"))
