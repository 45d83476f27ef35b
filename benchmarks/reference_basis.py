"""Measure the effect of the GTH basis on PBE energies and densities (run by hand).

    python benchmarks/reference_basis.py

For 8 H2O and 6 H2 geometries of the shipped sets: total energies with gth-dzvp, gth-tzv2p and
gth-qzv3p, the spread of the energy differences after removing the mean shift (what an ML model
of one data set sees), and the L2 distance between densities in the Fourier basis.
"""

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlhk_viz.evaluation import KCAL_PER_HARTREE  # noqa: E402
from mlhk_viz.reference import geometries  # noqa: E402
from mlhk_viz.reference.projection import density_coefficients  # noqa: E402
from mlhk_viz.reference.pyscf_runner import DEFAULT_METHOD, _scf, build_mol  # noqa: E402

BASES = ("gth-dzvp", "gth-tzv2p", "gth-qzv3p")


def run(name, numbers, pos):
    E, U, T = {}, {}, {}
    for b in BASES:
        method = dict(DEFAULT_METHOD, basis=b)
        e, u, t = [], [], []
        for p in pos:
            t0 = time.perf_counter()
            mol = build_mol(numbers, p, method)
            mf = _scf(mol, method, 0)
            occ = mf.mo_occ > 0
            e.append(mf.e_tot)
            u.append(density_coefficients(mol, mf.mo_coeff[:, occ], mf.mo_occ[occ]))
            t.append(time.perf_counter() - t0)
        E[b], U[b], T[b] = np.array(e), np.array(u), np.mean(t)
    ref = "gth-qzv3p"
    print(f"\n{name}: {len(pos)} geometries, against {ref}")
    print(f"{'basis':>10} | {'mean shift':>12} | {'spread of dE':>12} | {'max |dE-mean|':>13} | {'rel. density L2':>15} | s/point")
    for b in BASES:
        d = (E[b] - E[ref]) * KCAL_PER_HARTREE
        rel = np.linalg.norm(U[b] - U[ref], axis=1) / np.linalg.norm(U[ref], axis=1)
        print(f"{b:>10} | {d.mean():10.3f}   | {d.std():10.4f}   | {np.abs(d - d.mean()).max():11.4f}   | "
              f"{rel.mean():15.2e} | {T[b]:.2f}")
    print("(kcal/mol; the spread is what changes relative energies, the shift cancels in a data set)")


if __name__ == "__main__":
    from pyscf import lib

    lib.num_threads(1)
    n, p = geometries.h2o(350)
    run("H2O", n, p[::44])
    n, p = geometries.h2()
    run("H2", n, p[::30])
