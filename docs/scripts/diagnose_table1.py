"""H2 Table-1 diagnostics: how many test molecules lie outside the training span, and errors inside it.

    python docs/scripts/diagnose_table1.py
"""
import numpy as np
from mlhk_viz.datasets import Dataset
from mlhk_viz.evaluation import split, evaluate, select_training
from mlhk_viz.geometry import bond_length
ds = Dataset.load('data/h2.npz')
r = bond_length(ds.positions)
test, pool = split(ds)
for m in (5,7,10):
    tr = select_training(ds, pool, m)
    ev = evaluate(ds, tr, test)
    inside = (r[test] >= r[tr].min()) & (r[test] <= r[tr].max())
    e = np.abs(ev.errors['mlhk_dE']); k = np.abs(ev.errors['mlks_dE'])
    worst = np.argmax(e)
    print(f"H2 M={m}: train r {r[tr].min():.3f}..{r[tr].max():.3f}; {inside.sum()}/50 test inside; worst at r={r[test][worst]:.3f}; "
          f"inside-only HK {e[inside].mean():.3g}/{e[inside].max():.3g} KS {k[inside].mean():.3g}/{k[inside].max():.3g}")
