"""Table-1 cells over several random test splits and K-means seeds: how much of a cell is the draw.

    python docs/scripts/seed_spread.py
"""
import numpy as np

from mlhk_viz.datasets import Dataset
from mlhk_viz.evaluation import evaluate, select_training, split

for name, sizes in (("h2o", (5, 10, 15, 20)),):
    ds = Dataset.load(f"data/{name}.npz")
    for m in sizes:
        hk, ks = [], []
        for seed in range(8):
            test, pool = split(ds, 50, seed=seed)
            s = evaluate(ds, select_training(ds, pool, m, seed=seed), test).summary()
            hk.append(s["mlhk_dE"][0])
            ks.append(s["mlks_dE"][0])
        hk, ks = np.array(hk), np.array(ks)
        print(f"{name} M={m}: ML-HK MAE median {np.median(hk):.3g} (range {hk.min():.3g}-{hk.max():.3g}), "
              f"ML-KS median {np.median(ks):.3g} (range {ks.min():.3g}-{ks.max():.3g}); "
              f"ML-HK better in {int((hk < ks).sum())}/8 splits")
