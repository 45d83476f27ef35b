"""Separable vs materialised-grid squared distances for the ML-HK Gaussian-potential descriptor.

Run by hand: ``python benchmarks/bench_descriptor.py [--n 200] [--repeat 3]``.

200 benzene-like molecules (12 atoms; the benzene geometry plus 0.1 Å Gaussian noise per
coordinate, seed 0) at gamma = 0.2 Å, Delta = 0.08 Å. Routes, all on the same grid axes:

* separable   ``sq_distances``: per-axis 1D sums, never builds a grid (exact on the grid).
* brute force ``potential_on_grid`` for every molecule (float64, a full 3D exponential at every
  grid point for every atom), then ``X @ X.T`` (BLAS) and ``|x|^2 + |y|^2 - 2 <x, y>``.
  The stages are timed separately, and the grids are also built a second way, as sums of
  per-axis outer products (what a careful materialised-grid code would do), because the direct
  build dominates the brute force: the Gram stage is the floor for any route through the grid.
* continuum   ``continuum_sq_distances / Delta^3`` (for reference: the Delta -> 0 limit, which
  at gamma / Delta = 2.5 equals the grid sum to ~exp(-pi^2 * 2.5^2) ≈ 1e-27).

Times: wall clock, best of ``--repeat`` for the fast routes, one run for the brute force.
On a shared machine, multithreaded OpenBLAS can slow down many-fold under CPU contention;
compare with ``OPENBLAS_NUM_THREADS=1`` and look at the printed load average.
Peak extra memory: ``tracemalloc`` peak above the starting level during a separate run of each
route (NumPy reports its data buffers to tracemalloc), so timing is not perturbed by tracing.
"""

from __future__ import annotations

import argparse
import math
import os
import time
import tracemalloc

import sys
from pathlib import Path

import numpy as np

# run as a script from a checkout without installing the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlhk_viz.descriptor import (  # noqa: E402
    continuum_sq_distances,
    grid_axes,
    potential_on_grid,
    sq_distances,
)

GAMMA = 0.2  # Å
SPACING = 0.08  # Å
NOISE = 0.1  # Å
SEED = 0


def benzene_like(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """``n`` perturbed benzenes: positions ``(n, 12, 3)`` Å and numbers ``(12,)``."""
    angles = np.arange(6) * np.pi / 3
    ring = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], axis=1)
    geometry = np.concatenate([1.39 * ring, 2.48 * ring])  # C-C 1.39 Å, C-H 1.09 Å
    numbers = np.array([6] * 6 + [1] * 6)
    rng = np.random.default_rng(seed)
    return geometry + NOISE * rng.standard_normal((n, 12, 3)), numbers


def grids_by_outer_products(positions, numbers, axes):
    """The same grids as ``potential_on_grid``, built as sums of per-axis outer products.

    This is how a careful materialised-grid code would build them (one BLAS call per molecule
    instead of an exponential per grid point and atom), so it shows how much of the brute
    force's cost is avoidable without giving up the grid.
    """
    n, n_atoms, _ = positions.shape
    ex, ey, ez = (np.exp(-((ax[None, None, :] - positions[:, :, d, None]) ** 2) / (2 * GAMMA**2))
                  for d, ax in enumerate(axes))
    ex = ex * numbers[None, :, None]
    xy = (ex[:, :, :, None] * ey[:, :, None, :]).reshape(n, n_atoms, -1)  # (n, A, nx*ny)
    return np.matmul(xy.transpose(0, 2, 1), ez).reshape(n, *(len(a) for a in axes))


def direct_grids(positions, numbers, axes):
    return potential_on_grid(positions, numbers, GAMMA, axes)


def gram_sq_distances(grids):
    x = grids.reshape(len(grids), -1)
    gram = x @ x.T  # NumPy hands A @ A.T to BLAS syrk
    norms = np.diag(gram).copy()
    d2 = np.maximum(norms[:, None] + norms[None, :] - 2 * gram, 0.0)
    np.fill_diagonal(d2, 0.0)
    return d2


def timed(fn, repeat):
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def peak_extra_bytes(fn):
    tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak - base


def available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="number of molecules (default 200)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats for the fast routes (best is kept)")
    parser.add_argument("--max-grid-gib", type=float, default=None,
                        help="memory allowed for materialised grids (default: a quarter of available memory)")
    args = parser.parse_args()

    positions, numbers = benzene_like(args.n)
    axes = grid_axes(positions, GAMMA, SPACING)
    n_points = math.prod(len(a) for a in axes)
    print(f"{args.n} benzene-like molecules (12 atoms, {NOISE} Å noise, seed {SEED}), "
          f"gamma = {GAMMA} Å, Delta = {SPACING} Å")
    threads = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k in os.environ}
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start, "
          f"BLAS threads: {threads or 'default'}")
    print(f"grid {len(axes[0])} x {len(axes[1])} x {len(axes[2])} = {n_points:,} points "
          f"= {n_points * 8 / 2**20:.1f} MiB float64 per molecule")

    # Brute force materialises all grids (twice: both builds are compared); fall back to fewer
    # molecules if they would take more than the budget, and scale.
    n_brute = args.n
    budget = available_bytes() // 4 if args.max_grid_gib is None else args.max_grid_gib * 2**30
    while n_brute > 2 and 2 * n_brute * n_points * 8 > budget:
        n_brute //= 2
    print(f"brute force on {n_brute} molecules: {n_brute * n_points * 8 / 2**30:.2f} GiB of grids "
          f"(available {available_bytes() / 2**30:.1f} GiB)")

    t_sep, d_sep = timed(lambda: sq_distances(positions, None, numbers, GAMMA, axes), args.repeat)
    t_con, d_con = timed(lambda: continuum_sq_distances(positions, None, numbers, GAMMA), args.repeat)
    d_con = d_con / SPACING**3

    sub = positions[:n_brute]
    t_direct, grids = timed(lambda: direct_grids(sub, numbers, axes), 1)
    t_outer, grids_outer = timed(lambda: grids_by_outer_products(sub, numbers, axes), 1)
    build_diff = np.max(np.abs(grids_outer - grids)) / np.max(np.abs(grids))
    del grids_outer
    t_gram, d_bru = timed(lambda: gram_sq_distances(grids), 1)
    del grids
    scale_note = ""
    if n_brute < args.n:
        # building grows like n, the Gram matrix like n^2
        f = args.n / n_brute
        t_direct, t_outer, t_gram = t_direct * f, t_outer * f, t_gram * f * f
        scale_note = f" (brute force measured on {n_brute}, builds scaled by n, Gram by n^2)"

    m_sep = peak_extra_bytes(lambda: sq_distances(positions, None, numbers, GAMMA, axes))
    m_con = peak_extra_bytes(lambda: continuum_sq_distances(positions, None, numbers, GAMMA))
    m_direct = peak_extra_bytes(lambda: gram_sq_distances(direct_grids(sub, numbers, axes)))
    m_outer = peak_extra_bytes(lambda: gram_sq_distances(grids_by_outer_products(sub, numbers, axes)))

    off = ~np.eye(n_brute, dtype=bool)
    ref = d_bru[off]
    rel_sep = np.max(np.abs(d_sep[:n_brute, :n_brute][off] - ref) / ref)
    rel_con = np.max(np.abs(d_con[:n_brute, :n_brute][off] - ref) / ref)
    print(f"max relative difference vs brute force (off-diagonal, {n_brute}x{n_brute}): "
          f"separable {rel_sep:.2e}, continuum/Delta^3 {rel_con:.2e}")
    print(f"outer-product grids vs potential_on_grid: max difference {build_diff:.1e} of the maximum")
    print(f"distance range: {ref.min():.4g} .. {ref.max():.4g} (Z^2 units)")
    print()
    mib = 2**20
    rows = [
        ("separable (sq_distances)", t_sep, m_sep),
        ("continuum / Delta^3", t_con, m_con),
        ("grid: build, direct exp", t_direct, None),
        ("grid: build, outer products", t_outer, None),
        ("grid: Gram via BLAS", t_gram, None),
        ("grid total, direct build", t_direct + t_gram, m_direct),
        ("grid total, outer products", t_outer + t_gram, m_outer),
    ]
    print(f"{'method':<28} {'seconds':>9} {'peak extra MiB':>15} {'time / separable':>17}")
    for name, t, m in rows:
        mem = "" if m is None else f"{m / mib:.1f}"
        print(f"{name:<28} {t:>9.3f} {mem:>15} {t / t_sep:>17.1f}")
    print(f"\n{args.n}x{args.n} distance matrix{scale_note}.")
    print("seconds: best of", args.repeat, "for separable/continuum, one run for each grid stage.")
    print("peak extra MiB: tracemalloc peak above baseline in a separate untimed run of the whole route"
          + ("" if n_brute == args.n else f" (grid routes: {n_brute} molecules, not scaled)") + ".")
    print(f"speed-up of separable: {(t_direct + t_gram) / t_sep:.0f}x vs the brute-force grid route (direct build), "
          f"{(t_outer + t_gram) / t_sep:.0f}x vs grids built from outer products, "
          f"{t_gram / t_sep:.1f}x vs the Gram stage alone")


if __name__ == "__main__":
    main()
