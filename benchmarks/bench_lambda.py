"""Benchmark: cost of a lambda change at fixed sigma vs one M x M x L matrix multiply.

Run by hand:  python benchmarks/bench_lambda.py  [--threads N] [--repeat R]

KernelRidgeModel.set_lambda recomputes alpha = Q diag(1/(e + lambda)) P from the kept
eigenbasis (Q, e) and projected targets P (M x L): for a scalar lambda that is exactly one
(M x M) @ (M x L) multiply. The floor is measured in the same run as a plain numpy
``Q @ P`` of the same shapes (float64). Times are the best of R interleaved repeats (median shown too), as wall-clock and
as process CPU seconds (the latter is robust to other processes on a shared machine
when BLAS runs one thread).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
from bench_krr_cv import make_data, sq_dists  # noqa: E402

from mlhk_viz.krr import KernelRidgeModel  # noqa: E402


def timeit_interleaved(ops, repeat):
    """{name: {"wall": (best, median), "cpu": (best, median)}}; the operations are
    interleaved so that load drift on a shared machine hits all of them alike."""
    ts = {name: {"wall": [], "cpu": []} for name in ops}
    for _ in range(repeat):
        for name, f in ops.items():
            w0, c0 = time.perf_counter(), time.process_time()
            f()
            ts[name]["cpu"].append(time.process_time() - c0)
            ts[name]["wall"].append(time.perf_counter() - w0)
    return {name: {k: (min(v), float(np.median(v))) for k, v in d.items()} for name, d in ts.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1, help="BLAS threads (default 1)")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--M", type=int, default=200)
    ap.add_argument("--L", type=int, default=125_000)
    args = ap.parse_args(argv)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        run(args)


def run(args):
    M, L = args.M, args.L
    blas = sorted({(d["internal_api"], d["num_threads"]) for d in threadpool_info() if d["user_api"] == "blas"})
    print(f"BLAS threads: {blas}; M={M}, L={L}; load average {tuple(round(x, 2) for x in os.getloadavg())}")
    X, Y = make_data(M=M, L=L)
    D = sq_dists(X)
    sigma = float(np.sqrt(np.median(D[np.triu_indices(M, 1)])))
    t0 = time.perf_counter()
    model = KernelRidgeModel().fit(D, Y, sigma, 1e-6)
    t_fit = time.perf_counter() - t0
    del Y

    g = model._groups[0]
    Q = np.ascontiguousarray(g.eigvecs)
    P = g.P
    rng = np.random.default_rng(0)
    lam_arr = 10.0 ** rng.uniform(-12, -1, size=L)  # per-output lambdas, all distinct

    res = timeit_interleaved({
        "floor: numpy Q @ P": lambda: Q @ P,
        "set_lambda(scalar)": lambda: model.set_lambda(1e-4),
        "set_lambda(per-output array)": lambda: model.set_lambda(lam_arr),
    }, args.repeat)
    print(f"\n(fit from scratch, for reference: {t_fit:.3f} s wall, once)")
    for clock in ("wall", "cpu"):
        floor = res["floor: numpy Q @ P"][clock][0]
        print(f"\n{clock} time   {'operation':32s} {'best s':>9s} {'median s':>9s} {'best/floor':>11s}")
        for name, d in res.items():
            best, med = d[clock]
            print(f"{'':12s}{name:32s} {best:9.4f} {med:9.4f} {best / floor:10.2f}x")
    floor = res["floor: numpy Q @ P"]["wall"][0]
    print(f"\nfloor = one ({M} x {M}) @ ({M} x {L}) float64 multiply = {2 * M * M * L / 1e9:.1f} GFLOP "
          f"-> {2 * M * M * L / floor / 1e9:.1f} GFLOP/s wall"
          + ("" if args.threads == 1 else " (CPU time sums over BLAS threads)"))


if __name__ == "__main__":
    main()
