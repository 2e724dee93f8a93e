"""What a distributed step costs, measured side by side in one MPI job:

    mpirun -n 2 python tools/bench_distributed.py [--sizes 100000 1000000 10000000] [--steps 20]

Per size (float32, 4 variables), rank 0 prints the median time of: one local Adam step (no communicator, the
baseline), a data-parallel step (communicator), a ZeRO-1 step (shard_state=True), and the bare collectives they
use (an all-reduce of the gradients; a reduce-scatter plus an all-gather), with their ratios to the local step,
the bytes each rank sends per step, and the optimizer state per rank."""
import argparse
import time

import numpy as np

from adam_lit import Adam
from adam_lit.distributed import MPICommunicator

def median_time(fn, steps):
    comm.barrier(); fn()      # warm up (and build)
    out = []
    for _ in range(steps):
        comm.barrier()
        t = time.perf_counter(); fn(); out.append(time.perf_counter() - t)
    ts = comm.allgather_host(np.asarray([np.median(out)]))     # the slowest rank sets the pace
    return float(ts.max())

def shapes_for(n):
    return [(n // 2 // 100, 100), (n // 4,), (n // 8 // 10, 10), (n - n // 2 // 100 * 100 - n // 4 - n // 8 // 10 * 10,)]

def bench(n, steps):
    p = comm.size
    shapes = shapes_for(n)
    rng = np.random.default_rng(comm.rank)
    grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    def run(**kw):
        xs = [np.zeros(s, np.float32) for s in shapes]
        opt = Adam(learning_rate=1e-3, **kw)
        t = median_time(lambda: opt.apply(grads, xs), steps)
        return t, sum(s.array.nbytes for s in opt._slots)
    local, local_state = run()
    dp, dp_state = run(communicator=comm)
    zero, zero_state = run(communicator=comm, shard_state=True)
    buf = np.ones(n, np.float32)
    t_ar = median_time(lambda: comm.allreduce(buf), steps)
    blk = -(-n // p)
    send, recv, full = np.ones(p * blk, np.float32), np.empty(blk, np.float32), np.empty(p * blk, np.float32)
    t_rs = median_time(lambda: (comm.reduce_scatter(send, recv), comm.allgather(recv, full)), steps)
    sent = 2 * (p - 1) / p * n * 4
    if comm.rank == 0:
        print(f"| {n:>10,} | {local * 1e3:8.3f} | {dp * 1e3:8.3f} ({dp / local:4.1f}x) | {zero * 1e3:8.3f} ({zero / local:4.1f}x) "
              f"| {t_ar * 1e3:8.3f} | {t_rs * 1e3:8.3f} | {sent / 2**20:8.1f} | {dp_state / 2**20:8.2f} | {zero_state / 2**20:8.2f} |",
              flush=True)

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    ap.add_argument("--steps", type=int, default=20)
    args = ap.parse_args()
    comm = MPICommunicator()
    if comm.rank == 0:
        print(f"{comm.size} ranks, float32 Adam, 4 variables; times in ms (median of {args.steps} steps, slowest rank)")
        print("| parameters | local step | data parallel | ZeRO-1 | all-reduce | reduce-scatter + all-gather "
              "| MiB sent per rank | state MiB per rank (DP) | state MiB per rank (ZeRO-1) |")
        print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes: bench(n, args.steps)
