"""How long ML-HK-driven MD stays intact against the training size (Fig. 3b's protocol).

``python docs/scripts/md_stability.py [malonaldehyde] [--m 60 100 140 200] [--seeds 5] [--first-seed 0] [--by-index] [--lam L] [--energy-lam L] [--cv-rule 1se] [--extra FILE ...]``

For each M (the first M PBE frames of the training set that ``mlhk-viz reproduce fig3b`` uses),
fits ML-HK once and runs the paper's 1 ps, 300 K Langevin MD (0.5 fs, friction 0.01, analytic
forces) from the 300 K test trajectory's start for several velocity seeds. Prints the time each
run lasted before a bond broke (``dynamics.run_md``'s blow-up test), in fs, and how many lasted
the full picosecond, and the fitted model's energy error on the 300 K test set (|E^ML - E^PBE|, the
stability/accuracy trade-off that fixing λ makes). ``--extra FILE ...`` also trains on the PBE frames of
the files (e.g. ``docs/results/fig3b-pbe.npz``, single points on an ML-HK run: active learning, beyond the
paper); use ``--first-seed`` to skip the seed that made them. Library calls only: ``reproduce.figures.fit_models``,
``dynamics.run_md`` and ``reference.md_sets.load_partial``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def main():
    from mlhk_viz.datasets import Dataset
    from mlhk_viz.dynamics import run_md
    from mlhk_viz.evaluation import KCAL_PER_HARTREE
    from mlhk_viz.reference.md_sets import load_partial
    from mlhk_viz.reference.md import load_trajectory
    from mlhk_viz.reproduce.figures import fit_models

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("molecule", nargs="?", default="malonaldehyde")
    ap.add_argument("--m", type=int, nargs="+", default=[60, 100, 140, 200])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--extra", nargs="+", metavar="FILE", help="data sets of more PBE frames to train on beside the pool")
    ap.add_argument("--duration", type=float, default=1000.0, help="fs")
    ap.add_argument("--lam", type=float, help="fix the density model's ridge λ (default: LOO CV)")
    ap.add_argument("--energy-lam", type=float, help="fix the energy functional's ridge λ (default: LOO CV)")
    ap.add_argument("--cv-rule", default="min", choices=("min", "1se"),
                    help="how LOO CV picks what is not fixed: lowest error (default) or one-standard-error rule")
    ap.add_argument("--by-index", action="store_true",
                    help="align atoms by index only (no relabelling with the molecule's equivalent orderings)")
    a = ap.parse_args()
    data, md = ROOT / "data", ROOT / "data" / "md"
    start = load_trajectory(md / f"{a.molecule}-test-300K.npz")
    test = load_partial(a.molecule, "test", data, md)
    te = np.flatnonzero(test.converged)
    seeds = range(a.first_seed, a.first_seed + a.seeds)
    extra = [Dataset.load(e) for e in a.extra or ()]
    print(f"| M | training | test ΔE MAE / max (kcal/mol, {len(te)} frames) | lasted (fs), seeds {seeds[0]}..{seeds[-1]} "
          f"| intact for {a.duration:g} fs | fit (s) | MD (s per run) |")
    print("|---|---|---|---|---|---|---|")
    for m in a.m:
        t0 = time.perf_counter()
        models = fit_models(a.molecule, data, md, m, kinds=("mlhk",), relabel=not a.by_index,
                            params={k: v for k, v in (("lam", a.lam), ("energy_lam", a.energy_lam), ("cv_rule", a.cv_rule))
                                    if v is not None}, extra=extra)
        fit_s = time.perf_counter() - t0
        err = np.abs(models["mlhk"].predict(test.positions[te]) - test.energies[te]) * KCAL_PER_HARTREE
        lasted, md_s = [], []
        for seed in seeds:
            t0 = time.perf_counter()
            r = run_md(models["mlhk"], start["numbers"], start["reference"], duration_fs=a.duration, seed=seed,
                       forces="analytic")
            md_s.append(time.perf_counter() - t0)
            lasted.append(float(r["times_fs"][-1]))
        ok = sum(t >= a.duration for t in lasted)
        size = f"{models['M']} + {models['extra']}" if extra else f"{models['M']}"
        print(f"| {size} | {models['training']} | {err.mean():.3f} / {err.max():.2f} | {', '.join(f'{t:g}' for t in lasted)} | {ok}/{a.seeds} "
              f"| {fit_s:.0f} | {np.mean(md_s):.1f} |", flush=True)


if __name__ == "__main__":
    main()
