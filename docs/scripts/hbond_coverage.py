"""Where malonaldehyde's hydrogen bond sits: the classical training pool, PBE AIMD, and ML-HK-driven MD.

``python docs/scripts/hbond_coverage.py``

Prints, for each set of geometries, percentiles of the O···O distance and of the hydrogen-bond
O···H distance (the hydroxyl proton to the oxygen it is not bonded to), in Å, and the share of
the set whose O···H is shorter than the training pool's 5th percentile. The sets:

* the MMFF94 training pool (``data/malonaldehyde-train300+350.npz``, the frames ML-HK learns from);
* the 200 PBE test frames (the independent MMFF94 300 K run);
* the PBE ab-initio MD run of Fig. 3a (``data/malonaldehyde-aimd.npz``);
* the ML-HK-driven MD run of Fig. 3b (``docs/results/fig3b-trajectory.npz``), if it exists.

It shows how far the ML-HK trajectory goes outside what the classical pool sampled, which is
where its energy is extrapolated (docs/reproduce.md, session 12). Geometry only: no model is fitted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
O_ATOMS = (0, 4)  # malonaldehyde's atom order: O C C C O H H H H (data/md)


def hbond(positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(O···O, O···H)`` distances in Å for ``positions`` ``(n, 9, 3)`` Å.

    The hydroxyl proton is the hydrogen closest to either oxygen; O···H is its distance to the
    other oxygen (so it is the longer of its two O distances).
    """
    p = np.asarray(positions, float)
    d = np.linalg.norm(p[:, :, None] - p[:, None], axis=-1)
    to_o = d[:, list(O_ATOMS), 5:]  # (n, 2, 4): each O to each H
    h = to_o.min(axis=1).argmin(axis=1)  # the hydroxyl H, by index among the hydrogens
    rows = np.arange(len(p))
    return d[:, O_ATOMS[0], O_ATOMS[1]], to_o[rows, :, h].max(axis=1)


def main():
    from mlhk_viz.datasets import Dataset

    sets = {"MMFF94 pool 300+350 K (training)": Dataset.load(ROOT / "data" / "malonaldehyde-train300+350.npz").positions,
            "MMFF94 300 K test frames": Dataset.load(ROOT / "data" / "malonaldehyde-test.npz").positions,
            "PBE AIMD (Fig. 3a)": Dataset.load(ROOT / "data" / "malonaldehyde-aimd.npz").positions}
    traj = ROOT / "docs" / "results" / "fig3b-trajectory.npz"
    if traj.is_file():
        with np.load(traj, allow_pickle=False) as z:
            sets["ML-HK MD (Fig. 3b)"] = z["positions"]
    floor = np.percentile(hbond(next(iter(sets.values())))[1], 5)
    print(f"| geometries | n | O···O 5 / 50 / 95 % (Å) | O···H 5 / 50 / 95 % (Å) | O···H below the pool's 5th percentile ({floor:.2f} Å) |")
    print("|---|---|---|---|---|")
    for name, pos in sets.items():
        oo, oh = hbond(pos)
        q = lambda a: " / ".join(f"{v:.2f}" for v in np.percentile(a, [5, 50, 95]))  # noqa: E731
        print(f"| {name} | {len(pos)} | {q(oo)} | {q(oh)} | {100 * np.mean(oh < floor):.0f} % |")


if __name__ == "__main__":
    main()
