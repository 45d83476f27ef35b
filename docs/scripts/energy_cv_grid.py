"""Energy-functional CV on wider sigma/lambda grids for an assembled MD set: python docs/scripts/energy_cv_grid.py ethane 100"""
import numpy as np
from mlhk_viz.app import compute
from mlhk_viz import mspace
from mlhk_viz.krr import KernelRidgeModel, cv_grid
from mlhk_viz.evaluation import KCAL_PER_HARTREE as KC
import sys
ds = f"data/{sys.argv[1]}-md.npz"
k = compute.FitKnobs(ds, m=int(sys.argv[2]))
r = compute.fit(k)
print("app fit: hk", r.summary()["mlhk_dE"], "ks", r.summary()["mlks_dE"], "energy choice", r.energy.factor, r.energy.lam)
entry = compute.load_entry(ds); train = compute.selection(entry, k.m)
dm = compute.density_model(k); gr = compute.grams(entry, train)
fd = mspace.functional_distances(dm.b, dm.B, gr.G, gr.H, gr.nt)
y = entry.ds.energies[train]; t = entry.test
E = entry.ds.energies
med = mspace.median_distance(fd["train"])
for fmax, lmax in [(31.6, 0.1), (1000, 0.1), (1000, 100), (1e4, 1e3)]:
    sig = np.logspace(-1.5, np.log10(fmax), 25) * med
    lams = 10.0 ** np.arange(-14, np.log10(lmax) + 1)
    res = cv_grid(fd["train"], y[:, None], sig, lams, cv="loo", center=True)
    em = KernelRidgeModel().fit(fd["train"], y[:, None], res.best_sigma, res.best_lam)
    p = em.predict(fd["predicted"])[:, 0]
    print(f"grid to factor {fmax:g}, lam {lmax:g}: chosen factor {res.best_sigma/med:.3g} lam {res.best_lam:.1e}  test MAE {np.mean(np.abs(p[t]-E[t]))*KC:.3f}  max {np.max(np.abs(p[t]-E[t]))*KC:.2f}")
print("mean predictor", np.mean(np.abs(E[t] - y.mean())) * KC)
