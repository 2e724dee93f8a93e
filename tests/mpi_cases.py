"""Cases run on several MPI ranks by tests/test_distributed.py (and nbs/16_distributed.ipynb):

    mpirun --allow-run-as-root --oversubscribe -n 2 python tests/mpi_cases.py CASE

Each rank checks its own results; rank 0 prints one JSON line per check with every rank's verdict.
The references are one process applying the averaged gradients: every rank can compute them, because the
gradients of rank r at step k are drawn from a generator seeded with (k, r)."""
import json
import os
import sys
import tempfile
import traceback
import warnings

import numpy as np

from adam_lit import Adam, AdamW, IndexedSlices, LazyAdam, NonFiniteGradientError, checkpoint
from adam_lit.distributed import MPICommunicator

comm = MPICommunicator()
RANK, SIZE = comm.rank, comm.size
results = []

def check(name, ok, detail=""):
    results.append((name, bool(ok), str(detail)))

def same(a, b) -> bool:
    "Bit-identical lists of arrays."
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in zip(a, b))

SHAPES = [(6, 3), (5,), (), (1, 2)]     # a table, a vector, a scalar, a variable with fewer rows than ranks

def grads(rank, step, dtype=np.float32, sparse=False, shapes=SHAPES):
    rng = np.random.default_rng([step, rank])
    gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
    if sparse:     # rank r sends 2 + r rows of the table, repeats allowed
        n = 2 + rank
        gs[0] = IndexedSlices(rng.standard_normal((n,) + shapes[0][1:]).astype(dtype), rng.integers(0, shapes[0][0], n), shapes[0])
    return gs

def averaged(step, dtype=np.float32, sparse=False, shapes=SHAPES):
    "What one process applies: the mean of every rank's gradients (sparse: all rows, values divided by the ranks)."
    per = [grads(r, step, dtype, sparse, shapes) for r in range(SIZE)]
    out = []
    for k in range(len(shapes)):
        gs = [p[k] for p in per]
        if isinstance(gs[0], IndexedSlices):
            out.append(IndexedSlices(np.concatenate([g.values for g in gs]) / SIZE,
                                     np.concatenate([g.indices for g in gs]), shapes[k]))
        else:
            total = gs[0]
            for g in gs[1:]: total = total + g
            out.append(total / SIZE)
    return out

def init(rank, dtype=np.float32, shapes=SHAPES):
    rng = np.random.default_rng([99, rank])
    return [rng.standard_normal(s).astype(dtype) for s in shapes]

def case_exact():
    "Data parallel and ZeRO-1 against one process on the averaged gradients, bit for bit, option by option."
    options = [{}, dict(amsgrad=True), dict(clipnorm=0.5), dict(global_clipnorm=0.3, loss_scale_factor=4.0),
               dict(clipvalue=0.2), dict(weight_decay=0.1), dict(use_ema=True, ema_overwrite_frequency=3),
               dict(gradient_accumulation_steps=2), dict(gradient_accumulation_steps=2, global_clipnorm=0.5, use_ema=True),
               dict(weight_decay=0.05, clipnorm=1.0, use_ema=True, amsgrad=True)]
    for cls in (Adam, LazyAdam):
        for kw in options + ([dict(row_bias_correction=True)] if cls is LazyAdam else []):
            for sparse in (False, True):
                for shard in (False, True):
                    name = f"{cls.__name__}({kw}) sparse={sparse} shard_state={shard}"
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        xs = init(RANK)        # different on every rank: the build broadcasts rank 0's
                        opt = cls(learning_rate=0.01, communicator=comm, shard_state=shard, **kw)
                        ref_xs, ref = init(0), cls(learning_rate=0.01, **kw)
                        for step in range(5):
                            opt.apply(grads(RANK, step, sparse=sparse), xs)
                            ref.apply(averaged(step, sparse=sparse), ref_xs)
                    check(name, same(xs, ref_xs) and opt.iterations == ref.iterations,
                          f"iterations {opt.iterations} vs {ref.iterations}")

def case_dtypes():
    "float64, float16 with float32 moments and master weights, on both modes."
    cases = [(np.float64, {}), (np.float16, dict(moment_dtype="float32", master_weights=True)),
             (np.float16, dict(moment_dtype="float32"))]
    try:
        from ml_dtypes import bfloat16
        cases.append((bfloat16, dict(moment_dtype="float32", master_weights=True)))
    except ImportError:                     # (ml_dtypes comes with JAX; CI, ADAM_LIT_REQUIRE_ORACLES=1, requires it)
        from adam_lit._optional import required
        if required(): raise
    for dtype, kw in cases:
        for shard in (False, True):
            xs, ref_xs = init(RANK, dtype), init(0, dtype)
            opt = Adam(learning_rate=0.01, communicator=comm, shard_state=shard, epsilon=1e-4, **kw)
            ref = Adam(learning_rate=0.01, epsilon=1e-4, **kw)
            for step in range(4):
                opt.apply(grads(RANK, step, dtype), xs)
                ref.apply(averaged(step, dtype), ref_xs)
            check(f"{np.dtype(dtype).name} {kw} shard_state={shard}", same(xs, ref_xs))

def case_modes():
    "ZeRO-1 equals data parallel; apply_gradients and experimental_aggregate_gradients=False; state per rank."
    shapes = [(4000, 25), (300,), (7, 11)]
    for cls in (Adam, LazyAdam):
        runs = {}
        for shard in (False, True):
            xs = init(RANK, shapes=shapes)
            opt = cls(learning_rate=0.003, amsgrad=True, communicator=comm, shard_state=shard)
            for step in range(3): opt.apply_gradients(zip(grads(RANK, step, shapes=shapes), xs))
            runs[shard] = (xs, sum(s.array.nbytes for s in opt._slots), opt)
        check(f"{cls.__name__}: ZeRO-1 == data parallel, bit for bit", same(runs[True][0], runs[False][0]))
        dp, zero = runs[False][1], runs[True][1]
        total = comm.allreduce_host(np.asarray([zero], np.int64))[0]
        check(f"{cls.__name__}: state per rank {zero} B with ZeRO-1, {dp} B without (ratio {zero / dp:.3f})",
              total == dp and zero <= dp // SIZE + 64 * len(shapes) * 3, f"sum over ranks {total}")
    xs, ref_xs = init(RANK), init(0)
    opt, ref = Adam(learning_rate=0.01, communicator=comm), Adam(learning_rate=0.01)
    for step in range(3):
        g = averaged(step)              # the caller averaged them: every rank passes the same gradients
        opt.apply_gradients(zip(g, xs), experimental_aggregate_gradients=False)
        ref.apply(g, ref_xs)
    check("experimental_aggregate_gradients=False applies the gradients as given", same(xs, ref_xs))
    xs = init(RANK)
    opt = Adam(learning_rate=0.01, amsgrad=True, communicator=comm)
    opt.build(xs)
    if RANK == 0:                       # a state only rank 0 has (read from somewhere): broadcast_state shares it
        w = opt.get_weights()
        opt.set_weights([np.int64(7)] + [np.full_like(a, 0.25 + k) for k, a in enumerate(w[1:])])
    from adam_lit.distributed import broadcast_state
    broadcast_state(opt)
    states = comm.comm.allgather([a.tobytes() for a in opt.get_weights()])
    check("broadcast_state gives every rank rank 0's slots and step count",
          all(s_ == states[0] for s_ in states) and opt.iterations == 7)
    zero = Adam(communicator=comm, shard_state=True); zero.build(init(RANK))
    expect_error("broadcast_state with shard_state=True", lambda: broadcast_state(zero), ValueError, "each rank holds its own shard")

def snapshot(opt, xs):
    return [x.copy() for x in xs] + [s.array.copy() for s in opt._slots] + [np.asarray(opt.iterations)]

def expect_error(name, fn, cls, *parts):
    try: fn()
    except cls as e:
        msg = str(e)
        missing = [p for p in parts if p not in msg]
        check(name, not missing, f"{type(e).__name__}: {msg}" + (f" (missing {missing})" if missing else ""))
        return msg
    except Exception as e:
        check(name, False, f"raised {type(e).__name__}: {e}")
        return None
    check(name, False, "no error")

def case_errors():
    "Bad input on one rank: every rank raises the same clear error, nothing changes, the next step runs."
    for shard in (False, True):
        xs = init(RANK)
        opt = Adam(learning_rate=0.01, communicator=comm, shard_state=shard, gradient_nan_policy="raise")
        opt.apply(grads(RANK, 0), xs)
        before = snapshot(opt, xs)
        bad = grads(RANK, 1)
        if RANK == SIZE - 1: bad[0] = np.ones((6, 4), np.float32)
        msgs = comm.comm.allgather(expect_error(f"wrong shape on rank {SIZE - 1}, shard_state={shard}",
                                                lambda: opt.apply(bad, xs), ValueError,
                                                f"on rank {SIZE - 1} of {SIZE}", "gradient 0 has shape (6, 4)", "(6, 3)"))
        check(f"the same message on every rank, shard_state={shard}", len(set(msgs)) == 1, msgs[0])
        check(f"nothing changed after the wrong shape, shard_state={shard}", same(snapshot(opt, xs), before))
        kinds = grads(RANK, 1)
        if RANK == 0: kinds[1] = None
        expect_error(f"a gradient None on rank 0 only, shard_state={shard}", lambda: opt.apply(kinds, xs), ValueError,
                     "the ranks disagree", "gradient 1: None", "gradient 1: dense float32")
        check(f"nothing changed after the disagreement, shard_state={shard}", same(snapshot(opt, xs), before))
        nan = grads(RANK, 1)
        if RANK == SIZE - 1: nan[0][5, 2] = np.nan      # the last row: owned by the last rank under ZeRO-1
        expect_error(f"NaN on one rank, policy 'raise', shard_state={shard}", lambda: opt.apply(nan, xs),
                     NonFiniteGradientError, "variable 0", "shape (6, 3)", "1 non-finite value")
        check(f"nothing changed after the NaN, shard_state={shard}", same(snapshot(opt, xs), before))
        opt.apply(grads(RANK, 1), xs)                   # the ranks are still in step
        ref_xs, ref = init(0), Adam(learning_rate=0.01)
        for step in range(2): ref.apply(averaged(step), ref_xs)
        check(f"the next step after the errors, shard_state={shard}", same(xs, ref_xs))
        skip = Adam(learning_rate=0.01, communicator=comm, shard_state=shard, gradient_nan_policy="skip")
        ys = init(RANK)
        skip.apply(grads(RANK, 0), ys)
        before = snapshot(skip, ys)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            skip.apply(nan, ys)
        check(f"NaN on one rank, policy 'skip': every rank skips, shard_state={shard}",
              same(snapshot(skip, ys), before) and skip.skipped_steps == 1)
    shapes = [(6, 3), (5,)] if RANK == 0 else [(6, 3), (4,)]
    expect_error("variables of other shapes on one rank at build", lambda: Adam(communicator=comm).build(init(RANK, shapes=shapes)),
                 ValueError, "the ranks disagree", "variable 1")
    other = Adam(communicator=comm, beta_1=0.9 if RANK == 0 else 0.8)
    expect_error("another beta_1 on one rank", lambda: other.build(init(RANK)), ValueError, "the ranks disagree", "beta_1")
    rates = Adam(learning_rate=lambda: 0.01 * (1 + RANK), communicator=comm)
    expect_error("a learning-rate callable that differs between ranks", lambda: rates.apply(grads(RANK, 0), init(RANK)), ValueError,
                 "the ranks disagree", "learning_rate (a callable) = 0.01", "learning_rate (a callable) = 0.02")
    calls = []
    for shard in (False, True):
        calls.clear()
        counted = Adam(learning_rate=lambda: calls.append(1) or 0.01, beta_1=lambda: 0.9, communicator=comm, shard_state=shard)
        zs, ref_zs, ref = init(RANK), init(0), Adam(learning_rate=0.01)
        for step in range(3): counted.apply(grads(RANK, step), zs); ref.apply(averaged(step), ref_zs)
        check(f"callable hyperparameters: evaluated once per step, every rank the same bits, shard_state={shard}",
              len(calls) == 3 and same(zs, ref_zs), f"{len(calls)} calls")
    ys = init(RANK); before = [y.copy() for y in ys]
    expect_error("an epsilon lost in float16 at build", lambda: Adam(communicator=comm, epsilon=1e-30).build([y.astype(np.float16) for y in ys]),
                 ValueError, "rounds to 0 in float16")
    f16 = [y.astype(np.float16) for y in ys]; f16_before = [y.copy() for y in f16]
    expect_error("a beta_2 lost in float16 at the first step", lambda: Adam(communicator=comm, beta_2=0.9999999).apply(grads(RANK, 0, np.float16), f16),
                 ValueError, "rounds to 1 in float16")
    check("nothing broadcast when the build fails", same(f16, f16_before))
    o = Adam(communicator=comm)
    o.build(init(RANK))
    expect_error("stateless_apply with a communicator", lambda: o.stateless_apply(o.variables, grads(RANK, 0), init(RANK)),
                 NotImplementedError, "communicator")

def case_checkpoint():
    "A sharded run's checkpoint loads into one process and back; a resumed run is bit-identical."
    with tempfile.TemporaryDirectory() as d:
        d = comm.comm.bcast(d, root=0)
        for cls, kw in [(Adam, dict(amsgrad=True, use_ema=True)), (LazyAdam, dict(row_bias_correction=True)),
                        (AdamW, dict(gradient_accumulation_steps=2))]:
            for shard in (False, True):
                tag = f"{cls.__name__}({kw}) shard_state={shard}"
                xs = init(RANK)
                opt = cls(learning_rate=0.01, communicator=comm, shard_state=shard, **kw)
                for step in range(3): opt.apply(grads(RANK, step, sparse=True), xs)
                path = checkpoint.save(opt, os.path.join(d, f"{cls.__name__}_{shard}"))
                ref_xs, ref = init(0), cls(learning_rate=0.01, **kw)
                for step in range(3): ref.apply(averaged(step, sparse=True), ref_xs)
                single = checkpoint.load_optimizer(path, [x.copy() for x in xs], restore_variables=True)
                check(f"{tag}: the checkpoint is one process's state", same(single.get_weights(), ref.get_weights()))
                ys = [x.copy() for x in xs]
                back = cls(learning_rate=0.01, communicator=comm, shard_state=shard, **kw)
                back.build(ys)
                checkpoint.load(back, path)
                for step in range(3, 6):
                    opt.apply(grads(RANK, step, sparse=True), xs)
                    back.apply(grads(RANK, step, sparse=True), ys)
                    ref.apply(averaged(step, sparse=True), ref_xs)
                check(f"{tag}: resumed == uninterrupted == one process", same(xs, ys) and same(xs, ref_xs))
                if shard and cls is Adam:      # a slot added by the user: this rank's rows, saved whole, loaded back
                    extra = opt.add_slot(xs[0], "extra")
                    extra[...] = RANK + 1
                    p2 = checkpoint.save(opt, os.path.join(d, "extra"))
                    whole = checkpoint.read(p2)[1]
                    keys = [k for k in whole if k.startswith("slot_")]
                    got = whole[max(keys, key=lambda k: int(k.split("_")[1]))]
                    lo = [6 * q // SIZE for q in range(SIZE + 1)]
                    want = np.concatenate([np.full((lo[q + 1] - lo[q], 3), q + 1, np.float32) for q in range(SIZE)])
                    check(f"{tag}: a slot added with add_slot is saved whole", got.tobytes() == want.tobytes())
                    again = cls(learning_rate=0.01, communicator=comm, shard_state=shard, **kw)
                    zs = [x.copy() for x in xs]; again.build(zs); again.add_slot(zs[0], "extra")
                    checkpoint.load(again, p2)
                    check(f"{tag}: ... and loaded back into this rank's rows", (again.get_slot(zs[0], "extra") == RANK + 1).all())
                if shard and kw.get("use_ema"):
                    fin = [x.copy() for x in xs]; opt.finalize_variable_values(fin)
                    rfin = [x.copy() for x in ref_xs]; ref.finalize_variable_values(rfin)
                    check(f"{tag}: finalize_variable_values gathers the averages", same(fin, rfin))
                comm.barrier()

NAMES = ["table", "bias", "scale", "row"]

def _excluding(opt, xs, how):
    "Exclude variables 1 and 2 (the bias and the scalar) from weight decay: by identity, or by the names given at build."
    if how == "var_list": opt.exclude_from_weight_decay(var_list=[xs[1], xs[2]])
    else: opt.exclude_from_weight_decay(var_names=["^bias$", "^scale$"])
    opt.build(xs, NAMES if how == "var_names" else None)
    return opt

def _nan_at(step, gs):
    "Step 1's gradients hold a NaN (rank 0's, hence the average's): policy 'skip' skips it, on every rank and in one process."
    if step == 1 and RANK == 0: gs[0][0, 0] = np.nan
    return gs

def _avg_nan(step):
    gs = averaged(step)
    if step == 1: gs[0][0, 0] = np.nan
    return gs

def _state_of(opt) -> tuple:
    "What a load must restore besides the arrays: which variables decay, the names, which names were given, skipped steps."
    return ([opt._use_weight_decay(i) for i in range(len(opt._variables))], list(opt._names), list(opt._names_given),
            opt.skipped_steps)

def case_exclusions():
    """Weight-decay exclusions (by variable, by given name), data parallel and ZeRO-1: saved after 3 steps (one of them
    skipped), loaded into a fresh distributed optimizer and into one process; resumed == uninterrupted, bit for bit,
    with the exclusions, the names and the skipped steps restored."""
    kw = dict(learning_rate=0.01, weight_decay=0.2, gradient_nan_policy="skip")
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")       # (the skipped step's warning)
        d = comm.comm.bcast(d, root=0)
        for how in ("var_list", "var_names"):
            for shard in (False, True):
                tag = f"exclude by {how}, shard_state={shard}"
                xs, ref_xs = init(RANK), init(0)
                opt = _excluding(AdamW(communicator=comm, shard_state=shard, **kw), xs, how)
                ref = _excluding(AdamW(**kw), ref_xs, how)
                for step in range(3):
                    opt.apply(_nan_at(step, grads(RANK, step)), xs)
                    ref.apply(_avg_nan(step), ref_xs)
                want = _state_of(ref)
                check(f"{tag}: the run itself: one process's bits, [decays], names, given, skipped = {want}",
                      same(xs, ref_xs) and _state_of(opt) == want and want[0] == [True, False, False, True] and want[3] == 1,
                      _state_of(opt))
                path = checkpoint.save(opt, os.path.join(d, f"{how}_{shard}"))
                single_xs = [x.copy() for x in xs]
                single = checkpoint.load_optimizer(path, single_xs, restore_variables=True)
                check(f"{tag}: loaded into one process: the state, exclusions, names, skipped steps",
                      same(single.get_weights(), ref.get_weights()) and _state_of(single) == want, _state_of(single))
                ys = init(RANK)                              # other weights: the saved ones are restored
                back = AdamW(communicator=comm, shard_state=shard, **kw)
                back.build(ys)
                checkpoint.load(back, path, restore_variables=True)
                check(f"{tag}: loaded into a fresh distributed optimizer: exclusions, names, skipped steps",
                      same(ys, xs) and back.iterations == opt.iterations and _state_of(back) == want,
                      (back.iterations, opt.iterations, _state_of(back)))
                for step in range(3, 6):
                    opt.apply(grads(RANK, step), xs)
                    back.apply(grads(RANK, step), ys)
                    ref.apply(averaged(step), ref_xs)
                    single.apply(averaged(step), single_xs)
                check(f"{tag}: resumed (distributed, one process) == uninterrupted == one process",
                      same(ys, xs) and same(single_xs, xs) and same(xs, ref_xs))
                own_xs = init(RANK)                          # an optimizer with its own exclusions keeps them, and says so
                own = AdamW(communicator=comm, shard_state=shard, **kw)
                own.exclude_from_weight_decay(var_list=[own_xs[0]])
                own.build(own_xs)
                with warnings.catch_warnings(record=True) as seen:
                    warnings.simplefilter("always")
                    checkpoint.load(own, path, restore_variables=True)
                said = [str(w.message) for w in seen if "exclude_from_weight_decay" in str(w.message)]
                check(f"{tag}: loaded into an optimizer with its own exclusions: kept, with a warning",
                      len(said) == 1 and [own._use_weight_decay(i) for i in range(4)] == [False, True, True, True], said)
                comm.barrier()

def case_load_refuses():
    """`checkpoint.load` with `restore_variables` not said onto weights other than the saved ones: refused on every rank,
    nothing changed (variables, slots, step count, names, skipped steps); onto the saved weights it loads."""
    from adam_lit.distributed import _load
    kw = dict(learning_rate=0.01, weight_decay=0.2, gradient_nan_policy="skip")
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = comm.comm.bcast(d, root=0)
        for shard in (False, True):
            tag = f"shard_state={shard}"
            xs = init(RANK)
            opt = _excluding(AdamW(communicator=comm, shard_state=shard, **kw), xs, "var_names")
            for step in range(3): opt.apply(_nan_at(step, grads(RANK, step)), xs)
            path = checkpoint.save(opt, os.path.join(d, f"refuse_{shard}"))
            zs = init(RANK)
            fresh = AdamW(communicator=comm, shard_state=shard, **kw)
            fresh.build(zs)                                 # rank 0's initial weights, not the saved ones
            before, state = snapshot(fresh, zs), _state_of(fresh)
            for label, call in (("checkpoint.load(optimizer, path)", lambda: checkpoint.load(fresh, path)),
                                ("its default", lambda: _load(fresh, path))):
                msg = expect_error(f"{label} onto other weights, {tag}", call, checkpoint.CheckpointError,
                                   f"failed on rank 0 of {SIZE}", "variable 0", "differs from the value saved",
                                   "restore_variables=True")
                msgs = comm.comm.allgather(msg)
                check(f"... the same message on every rank, {tag}", len(set(msgs)) == 1 and msgs[0] is not None, msgs)
                check(f"... nothing changed, {tag}", same(snapshot(fresh, zs), before) and _state_of(fresh) == state,
                      _state_of(fresh))
            for z, x in zip(zs, xs): z[...] = x              # the saved weights: nothing to say
            checkpoint.load(fresh, path)
            check(f"restore_variables not said onto the saved weights loads, {tag}",
                  same(fresh.get_weights(), opt.get_weights()) and _state_of(fresh) == _state_of(opt), _state_of(fresh))
            comm.barrier()

def case_build_refusals():
    """The local build's refusals (overlapping variables; a `var_names` exclusion when no name was given) come before
    rank 0's values are broadcast: every rank raises the same error and no variable changes, on any rank."""
    last = SIZE - 1
    for shard in (False, True):
        tag = f"shard_state={shard}"
        for who in ("every rank", f"rank {last} only"):
            base = init(RANK, shapes=[(10, 2)])[0]
            lap = who == "every rank" or RANK == last
            xs = [base[0:6], base[4:10] if lap else base[4:10].copy()]     # the same shapes on every rank
            mine = [base.copy()] + [x.copy() for x in xs]
            expect_error(f"overlapping variables on {who} at build, {tag}",
                         lambda: AdamW(communicator=comm, shard_state=shard).build(xs), ValueError,
                         f"failed on rank {0 if who == 'every rank' else last} of {SIZE}", "variable 0 of shape (6, 2) "
                         "and variable 1 of shape (6, 2) share memory")
            check(f"... no variable changed on any rank (nothing broadcast), overlap on {who}, {tag}",
                  same([base] + xs, mine))
        ys = init(RANK); mine = [y.copy() for y in ys]
        o = AdamW(communicator=comm, shard_state=shard, weight_decay=0.1)
        o.exclude_from_weight_decay(var_names=["bias"])
        expect_error(f"a var_names exclusion with no name given at build, {tag}", lambda: o.build(ys), ValueError,
                     f"failed on rank 0 of {SIZE}", "have no names")
        check(f"... no variable changed on any rank, {tag}", same(ys, mine))
        o.build(ys, NAMES)                                  # named: it builds, every rank on rank 0's values
        check(f"... then with names it builds, on rank 0's values, {tag}", o.built and same(ys, init(0)))

class Counting:
    "A communicator that counts the collectives on arrays it is asked for (the metadata ones: `*_host`) and passes them on."
    def __init__(self, inner):
        self.inner, self.rank, self.size, self.calls = inner, inner.rank, inner.size, {}
    def __getattr__(self, name):
        fn = getattr(self.inner, name)
        def counted(*a, **k):
            self.calls[name] = self.calls.get(name, 0) + 1
            return fn(*a, **k)
        return counted

def case_counts():
    "One collective per dtype per step, not one per tensor (and none of the gradients' kind for metadata)."
    shapes = [(6, 3), (5,), (4, 2), (7,)]
    for shard, expect in [(False, {"allreduce": 2}), (True, {"reduce_scatter": 2, "allgather": 2})]:
        c = Counting(comm)
        xs = [x.astype(np.float64) if k % 2 else x for k, x in enumerate(init(RANK, shapes=shapes))]   # two dtypes
        opt = Adam(learning_rate=0.01, communicator=c, shard_state=shard)
        opt.build(xs)
        c.calls.clear()
        for step in range(3):
            gs = [g.astype(x.dtype) for g, x in zip(grads(RANK, step, shapes=shapes), xs)]
            opt.apply(gs, xs)
        got = {k: v for k, v in c.calls.items() if not k.endswith("_host")}
        want = {k: 3 * v for k, v in expect.items()}
        check(f"shard_state={shard}: collectives for 3 steps of 4 tensors in 2 dtypes: {got}", got == want, f"expected {want}")

def case_sparse_counts():
    "Several sparse gradients travel together: one all-gather of indices and one of rows per dtype, whatever their number."
    shapes = [(6, 3), (9, 2), (4,), (5, 2)]
    for shard in (False, True):
        c = Counting(comm)
        xs = [x.astype(np.float64) if k == 3 else x for k, x in enumerate(init(RANK, shapes=shapes))]
        opt = LazyAdam(learning_rate=0.01, communicator=c, shard_state=shard)
        ref_xs = [x.astype(np.float64) if k == 3 else x for k, x in enumerate(init(0, shapes=shapes))]
        ref = LazyAdam(learning_rate=0.01)
        opt.build(xs)
        c.calls.clear()
        def sparse_grads(rank, step):
            rng = np.random.default_rng([step, rank, 7])
            out = []
            for k, s in enumerate(shapes):
                dt = np.float64 if k == 3 else np.float32
                if k == 2: out.append(rng.standard_normal(s).astype(dt)); continue
                n = int(rng.integers(0, 5))          # possibly no rows at all on a rank
                out.append(IndexedSlices(rng.standard_normal((n,) + s[1:]).astype(dt), rng.integers(0, s[0], n), s))
            return out
        for step in range(3):
            opt.apply(sparse_grads(RANK, step), xs)
            per = [sparse_grads(q, step) for q in range(SIZE)]
            avg = []
            for k in range(len(shapes)):
                gs = [pp[k] for pp in per]
                if isinstance(gs[0], IndexedSlices):
                    avg.append(IndexedSlices(np.concatenate([g.values for g in gs]) / SIZE, np.concatenate([g.indices for g in gs]), shapes[k]))
                else:
                    tot = gs[0]
                    for g in gs[1:]: tot = tot + g
                    avg.append(tot / SIZE)
            ref.apply(avg, ref_xs)
        got = {k: v for k, v in c.calls.items() if not k.endswith("_host")}
        want = {"allreduce": 3, "allgather": 9} if not shard else {"reduce_scatter": 3, "allgather": 15}
        check(f"shard_state={shard}: 3 sparse tensors in 2 dtypes and 1 dense, 3 steps: {got}", got == want and same(xs, ref_xs),
              f"expected {want}")

def case_robust():
    "What one rank alone can get wrong, and what a rank alone can hit in the middle of a step: refused everywhere, no hang."
    from adam_lit.distributed import DistributedError, broadcast_state
    from adam_lit.schedules import LearningRateSchedule
    for shard in (False, True):
        tag = f"shard_state={shard}"
        xs = init(RANK)
        opt = Adam(learning_rate=0.01, communicator=comm, shard_state=shard)
        opt.apply(grads(RANK, 0), xs)
        before = snapshot(opt, xs)
        g = grads(RANK, 1)
        order = list(range(len(xs)))[::-1] if RANK == 1 else list(range(len(xs)))
        expect_error(f"gradients listed in another order on one rank, {tag}",
                     lambda: opt.apply([g[k] for k in order], [xs[k] for k in order]), ValueError,
                     "the ranks disagree", "for variable 0", f"for variable {len(xs) - 1}")
        if RANK == 0: opt.iterations = 5
        expect_error(f"iterations set on one rank, {tag}", lambda: opt.apply(grads(RANK, 1), xs), ValueError,
                     "the ranks disagree", "iterations=5", "iterations=1")
        opt.iterations = 1
        if RANK == 1: opt.learning_rate = 0.05
        expect_error(f"learning rate set on one rank, {tag}", lambda: opt.apply(grads(RANK, 1), xs), ValueError,
                     "the ranks disagree", "learning_rate = 0.01", "learning_rate = 0.05")
        opt.learning_rate = 0.01
        check(f"nothing changed by the refused steps, {tag}", same(snapshot(opt, xs), before))
        if SIZE > 1:         # weight-decay exclusions on one rank only (the others would decay what it does not)
            wd = AdamW(learning_rate=0.01, weight_decay=0.1, communicator=comm, shard_state=shard)
            ws = init(RANK); wd.build(ws)
            if RANK == SIZE - 1: wd.exclude_from_weight_decay(var_list=[ws[0]])
            wbefore = snapshot(wd, ws)
            expect_error(f"weight-decay exclusions on one rank only, {tag}", lambda: wd.apply(grads(RANK, 0), ws), ValueError,
                         "the ranks disagree", "weight decay excluded for variables")
            check(f"nothing changed by the refused step (exclusions), {tag}", same(snapshot(wd, ws), wbefore))
        def loud():
            if RANK == 1: raise ValueError("é" * 5000 + '"quotes"\n')
            return 0.01
        expect_error(f"a 10 kB error message on one rank, {tag}",
                     lambda: Adam(learning_rate=loud, communicator=comm, shard_state=shard).apply(grads(RANK, 0), init(RANK)),
                     ValueError, "failed on rank 1 of", "[... cut]")
        class OneRank(LearningRateSchedule):      # fine when checked (float64), fails inside the step on one rank only
            def evaluate(self, step, dtype=np.float64):
                if RANK == SIZE - 1 and dtype is not np.float64: raise RuntimeError("out of something on this rank only")
                return 0.01
            def get_config(self): return {}
        mid = Adam(learning_rate=OneRank(), communicator=comm, shard_state=shard)
        ys = init(RANK)
        expect_error(f"a failure in the middle of a step on one rank, {tag}", lambda: mid.apply(grads(RANK, 0), ys),
                     DistributedError if SIZE > 1 else RuntimeError, "out of something on this rank only", "the replicas may now differ")
    ema = Adam(learning_rate=0.01, use_ema=True, communicator=comm, shard_state=True)
    ys = init(RANK); ema.apply(grads(RANK, 0), ys)
    targets = [y.copy() for y in ys] if RANK == 0 else [y.copy() for y in ys[:-1]]
    expect_error("finalize_variable_values with a short list on one rank (ZeRO-1)", lambda: ema.finalize_variable_values(targets),
                 ValueError, "finalize_variable_values", "does not match")
    nan = Adam(communicator=comm, shard_state=True, gradient_nan_policy="raise")
    ys = init(RANK); nan.build(ys)
    gs = grads(RANK, 0); gs[2] = np.float32(np.nan) * np.ones((), np.float32)
    expect_error("NaN in a 0-d gradient (every rank holds it): counted once (ZeRO-1)", lambda: nan.apply(gs, ys),
                 NonFiniteGradientError, "has 1 non-finite value (NaN or Inf) out of 1")
    small = MPICommunicator(); small.max_bytes = 40        # every byte-counted collective in pieces of 40 bytes
    for shard in (False, True):
        zs, ref_zs, ref = init(RANK), init(0), Adam(learning_rate=0.01)
        o = Adam(learning_rate=0.01, communicator=small, shard_state=shard)
        for step in range(3):
            o.apply(grads(RANK, step, sparse=True), zs); ref.apply(averaged(step, sparse=True), ref_zs)
        check(f"collectives in pieces (max_bytes=40), shard_state={shard}", same(zs, ref_zs))
    b = Adam(learning_rate=0.01, communicator=comm); b.build(init(RANK))
    if RANK == 0: b.learning_rate = 0.02
    broadcast_state(b)
    check("broadcast_state carries a float learning rate", b.learning_rate == 0.02)

def case_nan_agree():
    "experimental_aggregate_gradients=False (each rank its own gradients) and a NaN on one rank: every rank skips, or raises."
    for shapes in (SHAPES, [(6, 3)]):         # several variables, and one (where one process takes its fused flat path)
        for shard in (False, True):
            tag = f"{len(shapes)} variable(s), shard_state={shard}"
            own = dict(experimental_aggregate_gradients=False)
            def run(opt, xs, step, nan=False):
                g = averaged(step, shapes=shapes)       # the caller averaged them: the same on every rank ...
                if nan and RANK == SIZE - 1: g[0][-1, -1] = np.nan     # ... but for a NaN on the last rank
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    opt.apply_gradients(zip(g, xs), **own)
            xs, ref_xs = init(RANK, shapes=shapes), init(0, shapes=shapes)
            opt = Adam(learning_rate=0.01, communicator=comm, shard_state=shard, gradient_nan_policy="skip")
            ref = Adam(learning_rate=0.01)
            run(opt, xs, 0); ref.apply(averaged(0, shapes=shapes), ref_xs)
            before = snapshot(opt, xs)
            run(opt, xs, 1, nan=True)
            check(f"NaN on rank {SIZE - 1} only, policy 'skip', not aggregated, {tag}: every rank skipped",
                  same(snapshot(opt, xs), before) and opt.skipped_steps == 1 and opt.iterations == 1,
                  f"skipped {opt.skipped_steps}, iterations {opt.iterations}")
            try:
                for step in (2, 3): run(opt, xs, step); ref.apply(averaged(step, shapes=shapes), ref_xs)
                check(f"... then the ranks step on together, {tag}: one process's bits, the same step count",
                      same(xs, ref_xs) and opt.iterations == ref.iterations == 3, f"iterations {opt.iterations}")
            except Exception as e: check(f"... then the ranks step on together, {tag}", False, f"{type(e).__name__}: {e}")
            state = [*xs, np.asarray([opt.iterations, opt.skipped_steps])] + ([] if shard else [s.array for s in opt._slots])
            digests = comm.comm.allgather(b"".join(a.tobytes() for a in state))      # (ZeRO-1: each rank its own slots)
            check(f"... and every rank holds the same variables{'' if shard else ', slots'} and counts, {tag}",
                  all(d == digests[0] for d in digests))
            acc = Adam(learning_rate=0.01, communicator=comm, shard_state=shard, gradient_nan_policy="skip",
                       gradient_accumulation_steps=2)
            ys = init(RANK, shapes=shapes)
            big = [np.full(s, 3e38 if RANK == SIZE - 1 else 1.0, np.float32) for s in shapes]   # finite, but the sum is not
            acc.apply_gradients(zip(big, ys), **own)
            before = snapshot(acc, ys)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                acc.apply_gradients(zip(big, ys), **own)
            check(f"an accumulator that overflows on rank {SIZE - 1} only, policy 'skip', {tag}: every rank skipped",
                  same(snapshot(acc, ys), before) and acc.skipped_steps == 1, f"skipped {acc.skipped_steps}")
            xs = init(RANK, shapes=shapes)
            loud = Adam(learning_rate=0.01, communicator=comm, shard_state=shard, gradient_nan_policy="raise")
            run(loud, xs, 0)
            before = snapshot(loud, xs)
            msg = expect_error(f"NaN on rank {SIZE - 1} only, policy 'raise', not aggregated, {tag}: every rank raises",
                               lambda: run(loud, xs, 1, nan=True), NonFiniteGradientError, "variable 0", "1 non-finite value")
            msgs = comm.comm.allgather(msg)
            check(f"... the same message on every rank, {tag}", len(set(msgs)) == 1 and msgs[0] is not None, msgs)
            check(f"... nothing changed, {tag}", same(snapshot(loud, xs), before))
            try:
                run(loud, xs, 1)
                check(f"... and the next step runs on every rank, {tag}", loud.iterations == 2)
            except Exception as e: check(f"... and the next step runs on every rank, {tag}", False, f"{type(e).__name__}: {e}")

def case_load_digest():
    "checkpoint.load of a different file on each rank (the same step count): refused on every rank, nothing changed."
    with tempfile.TemporaryDirectory() as d:
        d = comm.comm.bcast(d, root=0)
        for shard in (False, True):
            tag = f"shard_state={shard}"
            local, ys = Adam(learning_rate=0.01), init(RANK)
            local.apply(grads(RANK, 0), ys)                       # one step on this rank's own data
            mine = checkpoint.save(local, os.path.join(d, f"rank{RANK}_{shard}"))
            xs = init(RANK)
            opt = Adam(learning_rate=0.01, communicator=comm, shard_state=shard)
            opt.apply(grads(RANK, 0), xs)
            opt.apply(grads(RANK, 1), xs)
            before = snapshot(opt, xs)
            msg = expect_error(f"a different file on each rank, each at step 1, {tag}",
                               lambda: checkpoint.load(opt, mine, restore_variables=True), ValueError,
                               "the ranks disagree", "a checkpoint at step 1 with contents", "every rank must load the same checkpoint")
            msgs = comm.comm.allgather(msg)
            check(f"... the same message on every rank, {tag}", len(set(msgs)) == 1 and msgs[0] is not None, msgs)
            check(f"... nothing changed, {tag}", same(snapshot(opt, xs), before))
            ref, zs = Adam(learning_rate=0.01), init(0)
            ref.apply(grads(0, 0), zs)
            copy = checkpoint.save(ref, os.path.join(d, f"copy{RANK}_{shard}"))     # identical contents, one file per rank
            try:
                checkpoint.load(opt, copy, restore_variables=True)
                check(f"identical copies under other names load, {tag}", same(xs, zs) and opt.iterations == 1)
            except Exception as e: check(f"identical copies under other names load, {tag}", False, f"{type(e).__name__}: {e}")
            comm.barrier()

def case_timed():
    "A communicator with a timeout (its agreement on non-blocking collectives, polled): the same bits as one process."
    timed = MPICommunicator(timeout=60)
    pieces = MPICommunicator(timeout=60); pieces.max_bytes = 40
    for c, label in ((timed, "timeout=60"), (pieces, "timeout=60, max_bytes=40")):
        for dtype, kw in ((np.float32, dict(amsgrad=True, clipnorm=0.5)), (np.float16, dict(moment_dtype="float32", epsilon=1e-4))):
            for sparse in (False, True):
                for shard in (False, True):
                    xs, ref_xs = init(RANK, dtype), init(0, dtype)
                    opt = Adam(learning_rate=0.01, communicator=c, shard_state=shard, **kw)
                    ref = Adam(learning_rate=0.01, **kw)
                    for step in range(3):
                        opt.apply(grads(RANK, step, dtype, sparse=sparse), xs)
                        ref.apply(averaged(step, dtype, sparse=sparse), ref_xs)
                    check(f"{label}: {np.dtype(dtype).name} {kw} sparse={sparse} shard_state={shard}", same(xs, ref_xs))
    b = Adam(learning_rate=0.01, communicator=timed); b.build(init(RANK))
    from adam_lit.distributed import broadcast_state
    broadcast_state(b)
    timed.barrier()
    check("timeout=60: broadcast_state and barrier", b.iterations == 0)

def say(name, ok, detail=""):
    "For the cases that end the job: each rank prints its own verdicts at once (there is no gathering at the end)."
    import time
    row = {"rank": RANK, "check": name, "ok": bool(ok), "detail": str(detail), "time": time.time()}
    sys.stdout.write(json.dumps(row) + "\n")     # in one write
    sys.stdout.flush()

def fault_user_raise():
    "Rank 1 raises in user code between two steps; rank 0 goes on into the next step. The job must end, at once."
    xs = init(RANK)
    opt = Adam(learning_rate=0.01, communicator=comm)
    opt.apply(grads(RANK, 0), xs)
    say("the first step", True)
    if RANK == 1:
        say("rank 1 raises", True)
        raise RuntimeError("a failure in user code on rank 1")
    opt.apply(grads(RANK, 1), xs)
    say("rank 0 should not get past the second step", False)

TIMEOUT = 3.0

def fault_stopped(how="stop", reraise=True):
    """Rank 1 stops (SIGSTOP) or leaves the job before a step: with a timeout, rank 0 raises DistributedError in bounded
    time. Uncaught, the error ends the job; caught (`reraise=False`), leaving the interpreter does."""
    import signal
    import time
    from adam_lit.distributed import DistributedError
    timed = MPICommunicator(timeout=TIMEOUT)
    xs = init(RANK)
    opt = Adam(learning_rate=0.01, communicator=timed)
    opt.apply(grads(RANK, 0), xs)
    if RANK == 1: time.sleep(1.0)                 # slower than rank 0, within the timeout: waited for
    opt.apply(grads(RANK, 1), xs)
    say(f"a rank 1 s late, timeout={TIMEOUT:g} s: the step runs", opt.iterations == 2)
    before = snapshot(opt, xs)
    if RANK == 1:
        if how == "stop": os.kill(os.getpid(), signal.SIGSTOP)    # as `kill -STOP`: it never comes back
        return                                                    # "exit": its script ends, the others go on
    t = time.monotonic()
    try:
        opt.apply(grads(RANK, 2), xs)
        say("rank 0: DistributedError after the timeout", False, "no error")
    except DistributedError as e:
        dt = time.monotonic() - t
        say("rank 0: DistributedError after the timeout", TIMEOUT <= dt < TIMEOUT + 5 and f"timeout={TIMEOUT:g} s" in str(e),
            f"after {dt:.2f} s: {e}")
        say("rank 0: nothing changed", same(snapshot(opt, xs), before))
        try:
            timed.allreduce_host(np.zeros(1, np.int64))
            say("rank 0: the communicator refuses any further collective", False, "no error")
        except DistributedError as e2:
            say("rank 0: the communicator refuses any further collective", "unusable" in str(e2), e2)
        if reraise: raise         # uncaught: ends the job, the stopped rank included
        say("rank 0 caught the error and leaves", True)

FAULTS = {"user_raise": fault_user_raise, "stopped": fault_stopped, "exited": lambda: fault_stopped("exit"),
          "caught": lambda: fault_stopped("stop", reraise=False)}

CASES = {"robust": case_robust, "counts": case_counts, "sparse_counts": case_sparse_counts, "exact": case_exact, "dtypes": case_dtypes, "modes": case_modes, "errors": case_errors, "checkpoint": case_checkpoint,
         "nan_agree": case_nan_agree, "load_digest": case_load_digest, "timed": case_timed, "exclusions": case_exclusions,
         "load_refuses": case_load_refuses, "build_refusals": case_build_refusals}

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in FAULTS:      # a case that ends the job (uncaught errors included): run bare
        FAULTS[sys.argv[1]]()
        sys.exit(0)
    names = sys.argv[1:] or list(CASES)
    for n in names:
        try: CASES[n]()
        except Exception:
            check(f"case {n} ran to the end", False, traceback.format_exc())
    everyone = comm.comm.gather(results, root=0)
    if RANK == 0:
        for k, (name, ok, detail) in enumerate(everyone[0]):
            row = {"check": name, "ok": [rr[k][1] if k < len(rr) else None for rr in everyone], "detail": detail}
            print(json.dumps(row), flush=True)
        for r, rr in enumerate(everyone):
            if len(rr) != len(everyone[0]):
                print(json.dumps({"check": f"rank {r} made {len(rr)} checks, rank 0 {len(everyone[0])}", "ok": [False]}))
