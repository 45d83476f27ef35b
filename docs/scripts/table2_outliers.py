"""Which Table 2 test frames carry the max error, and how far they lie from the training pool.

``python docs/scripts/table2_outliers.py [malonaldehyde] [--training 300+350] [--top 8]``

Reads the per-frame errors that ``mlhk-viz reproduce table2`` wrote (``docs/results/table2_errors-<molecule>.csv``)
and, for the worst frames by |ΔE|, prints ΔE, ΔE_D, the density error and the RMS distance (Å) from the
frame to its nearest frame in the training pool's first M frames. The MD sets are stored aligned onto
the molecule's reference frame and relabelled (``reference.md_sets``), so the plain RMS distance is the
distance the model sees. The last lines give the correlation of |ΔE| with that distance, and the
distance's median over all test frames. Geometry and the written errors only: no model is fitted.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def nearest_rms(positions, pool) -> np.ndarray:
    """RMS distance (Å) from each of ``positions`` ``(n, N, 3)`` to its nearest frame in ``pool`` ``(m, N, 3)``."""
    from scipy.spatial.distance import cdist

    a, b = np.asarray(positions, float), np.asarray(pool, float)
    return cdist(a.reshape(len(a), -1), b.reshape(len(b), -1)).min(axis=1) / np.sqrt(a.shape[1])


def main():
    from mlhk_viz.reproduce.table2 import load_sets

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("molecule", nargs="?", default="malonaldehyde")
    ap.add_argument("--training", help="pool combination, e.g. 300+350 (default: the first in the CSV)")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--errors", type=Path, help="the per-frame CSV (default docs/results/table2_errors-<molecule>.csv)")
    a = ap.parse_args()
    path = a.errors or ROOT / "docs" / "results" / f"table2_errors-{a.molecule}.csv"
    if not path.is_file():
        raise SystemExit(f"{path}: no such file; `mlhk-viz reproduce table2 --molecules {a.molecule} --out docs/results` writes it")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    training = a.training or rows[0]["training"]
    rows = [r for r in rows if r["training"] == training]
    if not rows:
        raise SystemExit(f"{path}: no rows for training {training!r}")
    m = int(rows[0]["M"])
    test, trains = load_sets(a.molecule, ROOT / "data", ROOT / "data" / "md")
    frames = np.array([int(r["test_frame"]) for r in rows])
    if frames.max() >= len(test.positions):
        raise SystemExit(f"{path}: test frame {frames.max()} is beyond the {len(test.positions)} test frames in data/")
    dist = nearest_rms(test.positions[frames], trains[training].positions[:m])
    col = lambda k: np.array([float(r[k]) for r in rows])  # noqa: E731
    dE, dED, l1 = col("dE_kcal_per_mol"), col("dE_D_kcal_per_mol"), col("density_l1")
    print(f"{a.molecule} {training} K, M = {m}, {len(rows)} test frames ({path.name})\n")
    print("| test frame | ΔE | ΔE_D | density error (%) | nearest pool frame (Å RMS) | share of test frames nearer |")
    print("|---|---|---|---|---|---|")
    for i in np.argsort(-np.abs(dE))[:a.top]:
        print(f"| {frames[i]} | {dE[i]:+.2f} | {dED[i]:+.2f} | {100 * l1[i]:.2f} | {dist[i]:.3f} "
              f"| {100 * np.mean(dist < dist[i]):.0f} % |")
    print(f"\ncorrelation of |ΔE| with the distance: {np.corrcoef(np.abs(dE), dist)[0, 1]:.2f}; "
          f"with the density error: {np.corrcoef(np.abs(dE), l1)[0, 1]:.2f}")
    print(f"distance to the nearest pool frame, median over test frames: {np.median(dist):.3f} Å")


if __name__ == "__main__":
    main()
