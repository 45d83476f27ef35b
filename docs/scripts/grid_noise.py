"""Relative PBE energies of four ethane test frames with the integration grid at level 3 and 5 (kcal/mol)."""
import numpy as np
from pyscf import dft, lib
from mlhk_viz.datasets import Dataset
from mlhk_viz.reference.pyscf_runner import build_mol
lib.num_threads(1)
ds = Dataset.load("data/ethane-md.npz")
idx = ds.meta["roles"]["test"][:4]
out = {}
for lvl in (3, 5):
    E = []
    for i in idx:
        mol = build_mol(ds.numbers, ds.positions[i])
        mf = dft.RKS(mol, xc="pbe"); mf.grids.level = lvl; mf.conv_tol = 1e-10
        E.append(mf.kernel())
    out[lvl] = np.array(E); print(lvl, out[lvl] - ds.energies[idx], flush=True)
d3 = (out[3] - out[3][0]) * 627.5095; d5 = (out[5] - out[5][0]) * 627.5095
print("relative energies kcal/mol level3", d3.round(3), "level5", d5.round(3), "diff", (d3 - d5).round(3))
