"""Benchmark: closed-form (sigma, lambda) cross-validation vs scikit-learn GridSearchCV.

Run by hand:  python benchmarks/bench_krr_cv.py  [--quick]

Data (default, ``--data h2o``): M = 200 H2O molecules of data/h2o.npz chosen by K-means, their
Gaussian potentials on the grid (gamma 0.2 Å, Delta 0.08 Å; ~129,000 grid values each, the
feature vectors GridSearchCV's rbf kernel needs) and their 125,000 PBE density coefficients.
``--data synthetic``: 200 synthetic "molecules" with 3 internal degrees of freedom mapped to 30-D
descriptors, and 125,000 smooth outputs Y = offset + Phi W + noise, Phi (200, 50).

Grid: 20 sigmas log-spaced around the median descriptor distance x 12 lambdas
1e-12 .. 1e-1. CV: leave-one-out and 5-fold (the same folds on both sides).

Ours: mlhk_viz.krr.cv_grid on all L outputs, shared (Gram trick) and per-output.
Peer: GridSearchCV(KernelRidge(kernel="rbf"), ...) with the same grid and folds, fed the
same centred targets (our CV treats the training mean as a constant offset; KernelRidge
has no intercept). Running the peer on 125,000 outputs would take hours, so it is timed
on subsets of the output columns (and, for LOO, partly on a subset of the grid: every
grid point costs the same), a least-squares line t = a + b * n_outputs is fitted, and the
time for 125,000 outputs is EXTRAPOLATED; the printout marks every extrapolated number. A
second, conservative peer estimate counts only its floating-point work (Cholesky, two
triangular solves and the held-out prediction per refit) at the GEMM rate measured in the
same run.

Timing: both sides run with the same BLAS thread count (default 1). CPU seconds (process
time) are reported next to wall seconds: on a shared machine the wall clock includes time
spent waiting for the cores, CPU seconds do not.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import numpy as np
from scipy.spatial.distance import cdist
from sklearn.kernel_ridge import KernelRidge
from sklearn.model_selection import GridSearchCV
from threadpoolctl import threadpool_info, threadpool_limits

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from mlhk_viz.krr import cv_grid, kfold_indices  # noqa: E402


def make_data(M=200, L=125_000, n_desc=30, n_feat=50, noise=1e-3, seed=0):
    """Return (X (M, n_desc) descriptors, Y (M, L) targets)."""
    rng = np.random.default_rng(seed)
    theta = rng.uniform(0.0, 1.0, size=(M, 3))  # 3 internal dofs, scaled to [0, 1]
    A = rng.normal(0.0, 2.0, size=(3, n_desc))
    B = rng.normal(0.0, 1.0, size=(3, n_desc))
    phase = rng.uniform(0.0, 2 * np.pi, size=n_desc)
    X = np.sin(theta @ A + phase) + 0.5 * np.tanh(theta @ B)
    half = n_feat // 2
    Phi = np.hstack([
        np.exp(-cdist(theta, rng.uniform(0, 1, (half, 3)), "sqeuclidean") / (2 * 0.5**2)),
        np.exp(-cdist(theta, rng.uniform(0, 1, (n_feat - half, 3)), "sqeuclidean") / (2 * 0.15**2)),
    ])
    decay = 1.0 / (1.0 + np.arange(L) / 2000.0)  # coefficient magnitudes decay
    W = rng.standard_normal((n_feat, L))
    W[half:] *= rng.uniform(0.0, 1.0, size=L)  # share of short-range structure varies
    W *= decay
    Y = Phi @ W
    Y += rng.normal(size=L) * decay  # per-output constant offset
    E = rng.standard_normal((M, L))
    E *= noise * decay
    Y += E
    del E
    return X, Y


def load_h2o(M=200):
    """Real data: M H2O molecules by K-means, their Gaussian-potential grids (gamma 0.2, Delta 0.08 Å)
    as feature vectors (what GridSearchCV's rbf kernel needs), and their 125,000 PBE density coefficients."""
    from mlhk_viz.datasets import Dataset
    from mlhk_viz.descriptor import GaussianPotential
    from mlhk_viz.evaluation import select_training

    ds = Dataset.load(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "h2o.npz"))
    idx = select_training(ds, np.arange(len(ds)), M)
    pot = GaussianPotential(0.2, 0.08)
    pos = ds.positions[idx]
    X = pot.potential_on_grid(pos, ds.numbers, pot.axes(pos)).reshape(M, -1)
    return X, ds.coefficients()[idx]


def sq_dists(X):
    return cdist(X, X, "sqeuclidean")


def grid(D, n_sigma=20, n_lam=12):
    med = float(np.sqrt(np.median(D[np.triu_indices(D.shape[0], 1)])))
    sigmas = med * np.geomspace(0.2, 5.0, n_sigma)
    lams = np.geomspace(1e-12, 1e-1, n_lam)
    return sigmas, lams


class Clock:
    """Wall-clock and process CPU seconds of a block.

    With BLAS limited to one thread both sides run single-threaded, so CPU seconds are
    the work done, unaffected by other processes competing for the cores; wall seconds
    are shown too.
    """

    def __enter__(self):
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w0
        self.cpu = time.process_time() - self.c0
        self.t = np.array([self.wall, self.cpu])


def run_ours(X, Y, sigmas, lams, cv, per_output):
    with Clock() as c:
        res = cv_grid(sq_dists(X), Y, sigmas, lams, cv=cv, per_output=per_output)
    return c.t, res


def run_peer(X, Yc, sigmas, lams, splits):
    """GridSearchCV; returns ([wall, cpu] s, errors (n_sigma, n_lam) summed over outputs, best (i, j))."""
    gammas = 1.0 / (2.0 * sigmas**2)
    gs = GridSearchCV(
        KernelRidge(kernel="rbf"),
        param_grid={"gamma": list(gammas), "alpha": list(lams)},
        cv=splits,
        scoring="neg_mean_squared_error",
        n_jobs=1,
        refit=False,
        error_score="raise",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ill-conditioning warnings at tiny alpha
        with Clock() as c:
            gs.fit(X, Yc)
    res = gs.cv_results_
    errors = np.full((len(sigmas), len(lams)), np.nan)
    for g, a, score in zip(res["param_gamma"], res["param_alpha"], res["mean_test_score"]):
        i = int(np.argmin(np.abs(gammas - g)))
        j = int(np.argmin(np.abs(lams - a)))
        errors[i, j] = -score * Yc.shape[1]  # mean over outputs -> summed over outputs
    i = int(np.argmin(np.abs(gammas - gs.best_params_["gamma"])))
    j = int(np.argmin(np.abs(lams - gs.best_params_["alpha"])))
    return c.t, errors, (i, j)


def affine_fit(ns, ts):
    """Least-squares line t = a + b n (ts: one value per n); a non-positive slope (timing
    noise) is replaced by 0, making the extrapolation a lower bound (no growth with n)."""
    b, a = np.polyfit(np.asarray(ns, float), np.asarray(ts, float), 1)
    if b <= 0:
        print("  WARNING: measured times do not grow with the number of outputs (noise); "
              "extrapolating with slope 0, i.e. a lower bound")
        return float(max(ts)), 0.0
    return float(a), float(b)


def extrapolate(ns, ts, n_target, label, unit="s"):
    """ts: (k, 2) [wall, cpu] per n. Returns [wall, cpu] at n_target; prints the CPU fit."""
    ts = np.asarray(ts)
    out = []
    for col, name in ((1, "CPU"), (0, "wall")):
        a, b = affine_fit(ns, ts[:, col])
        if name == "CPU":
            print(f"  {label}: least-squares line on CPU time t = {a:.4g} + {b:.4g} * n_outputs "
                  f"[{unit}]; measured vs line:")
            for n, t in zip(ns, ts[:, col]):
                print(f"    n={n:6d}: measured {t:9.4g}, line {a + b * n:9.4g} ({(t - a - b * n) / (a + b * n):+.0%})")
        out.append((name, a + b * n_target))
    d = dict(out)
    return np.array([d["wall"], d["CPU"]])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, to check the script runs")
    ap.add_argument("--data", choices=("h2o", "synthetic"), default="h2o",
                    help="h2o: 200 K-means-selected molecules of data/h2o.npz (default); synthetic: smooth random targets")
    ap.add_argument("--threads", type=int, default=1,
                    help="BLAS threads for BOTH sides (default 1, so CPU seconds measure work "
                         "on a shared, loaded machine; multi-threaded OpenBLAS also stalls "
                         "badly on small matrices there)")
    ap.add_argument("--ours-only", action="store_true", help="skip the GridSearchCV peer")
    ap.add_argument("--repeat", type=int, default=2,
                    help="5-fold peer timings on column subsets: best of this many runs")
    args = ap.parse_args(argv)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        run(args)


def fmt_row(m, n, f, t, kind):
    return f"{m:40s} {n:8d} {f:>7s} {t[0]:11.2f} {t[1]:11.2f}  {kind}"


HEADER = f"{'method':40s} {'outputs':>8s} {'folds':>7s} {'wall s':>11s} {'CPU s':>11s}"


def run(args):
    M, L = 200, 125_000
    kf_cols, loo_cols, loo_grid_cols = [500, 1000, 2000], 100, [500, 2000]
    per_col_cols = 2
    if args.quick:
        M, L = 60, 3000
        kf_cols, loo_cols, loo_grid_cols = [50, 100, 200], 20, [50, 200]

    blas = sorted({(d["internal_api"], d["num_threads"]) for d in threadpool_info() if d["user_api"] == "blas"})
    print(f"BLAS threads (both sides): {blas}, cpus={os.cpu_count()}, "
          f"load average at start={tuple(round(x, 2) for x in os.getloadavg())}")
    t0 = time.perf_counter()
    if args.data == "h2o" and not args.quick:
        X, Y = load_h2o(M)
        L = Y.shape[1]
    else:
        X, Y = make_data(M=M, L=L)
    D = sq_dists(X)
    sigmas, lams = grid(D)
    n_grid = len(sigmas) * len(lams)
    folds = kfold_indices(M, 5, seed=0)
    kf_splits = [(np.setdiff1d(np.arange(M), F), F) for F in folds]
    loo_splits = [(np.setdiff1d(np.arange(M), [i]), np.array([i])) for i in range(M)]
    Yc = Y - Y.mean(axis=0)  # the constant offset our CV uses (center=True)
    print(f"data: M={M}, L={L}, descriptors {X.shape[1]}-D, grid {len(sigmas)} sigmas "
          f"[{sigmas[0]:.3g}, {sigmas[-1]:.3g}] x {len(lams)} lambdas [1e-12, 1e-1] "
          f"(built in {time.perf_counter() - t0:.1f} s)\n")

    rows = []  # (method, outputs, folds, [wall, cpu], kind)
    ours = {}
    for cvname, cv in (("LOO", "loo"), ("5-fold", folds)):
        for per in (False, True):
            t, res = run_ours(X, Y, sigmas, lams, cv, per)
            mode = "per-output" if per else "shared"
            ours[(cvname, per)] = t
            rows.append((f"ours cv_grid {mode}", L, cvname, t, "measured"))
            if per:
                pairs = len(set(zip(res.best_sigma_index.tolist(), res.best_lam_index.tolist())))
                print(f"ours {cvname} per-output: {t[0]:.2f} s wall, {t[1]:.2f} s CPU; "
                      f"{pairs} distinct best (sigma, lambda) pairs over the outputs")
            else:
                print(f"ours {cvname} shared: {t[0]:.2f} s wall, {t[1]:.2f} s CPU; best sigma="
                      f"{res.best_sigma:.4g}, lambda={res.best_lam:.1e}")

    # BLAS rate of this run: one (M x M) @ (M x L) multiply, best of 3 (CPU time).
    Qr = np.random.default_rng(1).standard_normal((M, M))
    t_gemm = []
    for _ in range(3):
        with Clock() as c:
            Qr @ Yc
        t_gemm.append(c.cpu)
    rate = 2.0 * M * M * L / min(t_gemm)
    print(f"\nGEMM rate in this run: {rate / 1e9:.1f} GFLOP/s per CPU-second "
          f"((M x M) @ (M x L) in {min(t_gemm):.3f} CPU s); our per-output cost per grid point: "
          f"LOO {ours[('LOO', True)][1] / n_grid:.3f} s, 5-fold {ours[('5-fold', True)][1] / n_grid:.3f} s (CPU)")
    if args.ours_only:
        print("\n" + HEADER)
        for r in rows:
            print(fmt_row(*r))
        return

    # ---- peer, 5-fold: full grid at several column counts (best of `repeat` runs each)
    print(f"\nGridSearchCV 5-fold, full grid ({n_grid} points), best of {args.repeat} (by CPU time):")
    kf_t, check = [], {}
    for n in kf_cols:
        runs = [run_peer(X, Yc[:, :n], sigmas, lams, kf_splits) for _ in range(args.repeat)]
        t = min((r[0] for r in runs), key=lambda x: x[1])
        kf_t.append(t)
        check[("5-fold", n)] = runs[0][1:]
        rows.append(("GridSearchCV shared", n, "5-fold", t, "measured"))
        print(f"  {n:6d} outputs: {t[0]:8.2f} s wall, {t[1]:8.2f} s CPU")
    t_kf = extrapolate(kf_cols, kf_t, L, "5-fold")
    rows.append(("GridSearchCV shared", L, "5-fold", t_kf, "EXTRAPOLATED"))

    # ---- peer, LOO: full grid on a few columns (also for the best-parameter check) and
    # a grid subset (all lambdas at the middle sigma, all M folds) at larger column counts;
    # the line is fitted to seconds per grid point (every grid point costs the same M refits).
    print("\nGridSearchCV LOO:")
    t_full, err, best = run_peer(X, Yc[:, :loo_cols], sigmas, lams, loo_splits)
    check[("LOO", loo_cols)] = (err, best)
    rows.append(("GridSearchCV shared", loo_cols, "LOO", t_full, "measured"))
    print(f"  {loo_cols:6d} outputs, full grid ({n_grid} points): {t_full[0]:8.2f} s wall, {t_full[1]:8.2f} s CPU")
    sub_idx = np.array([len(sigmas) // 2])
    pts = len(sub_idx) * len(lams)
    ns, per_point = [loo_cols], [t_full / n_grid]
    for n in loo_grid_cols:
        t = run_peer(X, Yc[:, :n], sigmas[sub_idx], lams, loo_splits)[0]
        ns.append(n)
        per_point.append(t / pts)
        rows.append((f"GridSearchCV shared ({pts}/{n_grid} grid pts)", n, "LOO", t, "measured"))
        rows.append(("GridSearchCV shared", n, "LOO", t / pts * n_grid, "EXTRAPOLATED (grid)"))
        print(f"  {n:6d} outputs, {pts} grid points: {t[0]:8.2f} s wall, {t[1]:8.2f} s CPU "
              f"-> full grid {t[1] / pts * n_grid:.1f} s CPU (extrapolated over grid points)")
    t_loo = extrapolate(ns, per_point, L, "LOO", unit="s per grid point") * n_grid
    rows.append(("GridSearchCV shared", L, "LOO", t_loo, "EXTRAPOLATED"))

    # Lower bound for the peer from its floating-point work alone (Cholesky + two
    # triangular solves per refit + held-out prediction) at this run's GEMM rate.
    def peer_flops(split_sizes):
        return n_grid * sum(m_tr**3 / 3 + 2.0 * m_tr**2 * L + 2.0 * m_te * m_tr * L
                            for m_tr, m_te in split_sizes)
    lb = {"LOO": peer_flops([(M - 1, 1)] * M) / rate,
          "5-fold": peer_flops([(M - len(F), len(F)) for F in folds]) / rate}
    for cvname in ("LOO", "5-fold"):
        rows.append(("GridSearchCV shared, flop lower bound", L, cvname,
                     np.array([np.nan, lb[cvname]]), "ESTIMATED (flops / GEMM rate)"))

    # ---- peer for per-output selection: one GridSearchCV per output column
    print("\nGridSearchCV once per output column (the per-output equivalent):")
    per_col = {}
    ts = [run_peer(X, Yc[:, [j]], sigmas, lams, kf_splits)[0] for j in range(per_col_cols)]
    per_col["5-fold"] = np.mean(ts, axis=0) * L
    rows.append(("GridSearchCV per column", per_col_cols, "5-fold", np.sum(ts, axis=0), "measured"))
    rows.append(("GridSearchCV per column", L, "5-fold", per_col["5-fold"], "EXTRAPOLATED"))
    print(f"  5-fold: {np.mean(ts, axis=0)[1]:.2f} CPU s per column (mean of {per_col_cols} columns, full grid)")
    t = run_peer(X, Yc[:, [0]], sigmas[sub_idx], lams, loo_splits)[0]
    per_col["LOO"] = t / pts * n_grid * L
    rows.append((f"GS per column ({pts}/{n_grid} grid pts)", 1, "LOO", t, "measured"))
    rows.append(("GridSearchCV per column", L, "LOO", per_col["LOO"], "EXTRAPOLATED"))
    print(f"  LOO: {t[1]:.2f} CPU s for 1 column on {pts} grid points -> {t[1] / pts * n_grid:.1f} s per column (extrapolated)")

    # ---- best-parameter agreement on the peer's subsets
    print("\nBest (sigma, lambda) on the peer's subsets (same centred targets, same folds):")
    for (cvname, n), (err, best) in check.items():
        cv = "loo" if cvname == "LOO" else folds
        res = cv_grid(D, Y[:, :n], sigmas, lams, cv=cv)
        mine = (res.best_sigma_index, res.best_lam_index)
        rel = np.abs(res.errors - err) / np.abs(err)
        ok = lams >= 1e-8
        print(f"  {cvname:6s} {n:5d} outputs: ours (sigma={sigmas[mine[0]]:.4g}, lambda={lams[mine[1]]:.0e}) "
              f"GridSearchCV (sigma={sigmas[best[0]]:.4g}, lambda={lams[best[1]]:.0e}) "
              f"-> {'EQUAL' if mine == best else 'DIFFERENT'}; CV errors: max rel diff "
              f"{rel[:, ok].max():.1e} for lambda >= 1e-8, {rel.max():.1e} over the whole grid")

    # ---- table
    ref = {"LOO": t_loo, "5-fold": t_kf}
    print("\n" + HEADER)
    for r in rows:
        print(fmt_row(*r))
    print(f"\nSpeed-up at L={L} outputs = peer time / our time (ours measured on all L outputs; "
          "peer EXTRAPOLATED from column subsets, or its flop lower bound):")
    print(f"  {'':36s} {'CPU s':>12s} {'wall s':>12s} {'flop bound':>12s}")
    for cvname in ("LOO", "5-fold"):
        for per in (False, True):
            t = ours[(cvname, per)]
            mode = "per-output" if per else "shared"
            r = ref[cvname] / t
            print(f"  {cvname:6s} {mode:10s} vs GridSearchCV     {r[1]:11.1f}x {r[0]:11.1f}x {lb[cvname] / t[1]:11.1f}x"
                  + ("   (peer: one pair for all outputs; ours: one per output)" if per else ""))
            if per:
                r = per_col[cvname] / t
                print(f"  {cvname:6s} {mode:10s} vs GS per column  {r[1]:11.0f}x {r[0]:11.0f}x {'-':>12s}")
    print(f"\nload average at end={tuple(round(x, 2) for x in os.getloadavg())} (shared machine: wall "
          "seconds are noisy; CPU seconds with 1 BLAS thread measure work; all in this one run)")


if __name__ == "__main__":
    main()
