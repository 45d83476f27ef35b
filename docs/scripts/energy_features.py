"""What the energy functional is trained on, and where the error goes: ΔE, ΔE_F and ΔE_D per choice.

``python docs/scripts/energy_features.py benzene --m 300,585 [--training 300] [--out FILE.json]``

For each M, fits ML-HK on the first M frames of the training set exactly as ``mlhk-viz reproduce table2`` does
(``table2.fit_and_score``: σ and λ by LOO CV, the paper's in-sample predicted densities for the functional), then
refits the energy functional on the same density model's leave-one-out predicted densities
(``energy_features="loo"``) and on the DFT densities (``"dft"``), each with its own LOO-chosen (σ, λ). Prints, per
choice, the test-set MAE (and max) of ΔE, ΔE_F and ΔE_D in kcal/mol and the functional's (σ, λ).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def compare(molecule: str, training: str, ms, data_dir: Path, md_dir: Path) -> list[dict]:
    from mlhk_viz.evaluation import KCAL_PER_HARTREE
    from mlhk_viz.models import ENERGY_FEATURES, MLHK
    from mlhk_viz.reproduce.table2 import fit_and_score, load_sets

    test, trains = load_sets(molecule, data_dir, md_dir)
    if test is None or training not in trains:
        raise SystemExit(f"{molecule}: no PBE test frames or no {training} training frames in {data_dir}")
    train = trains[training]
    te = np.flatnonzero(test.converged)
    rows = []
    for m in ms:
        t0 = time.perf_counter()
        paper = fit_and_score(train, test, m)["model"]
        tr = np.flatnonzero(train.converged)[:m]
        U, Ut = train.coefficients(rows=tr), test.coefficients(rows=te)
        dh = paper.density_hyper_
        for feats in ENERGY_FEATURES:
            model = paper if feats == paper.energy_features else MLHK(
                sigma=float(np.atleast_1d(dh.sigma)[0]), lam=float(np.atleast_1d(dh.lam)[0]), energy_features=feats,
                reference=paper.reference, permutations=paper.permutations).fit(
                    train.positions[tr], train.energies[tr], U, numbers=train.numbers)
            dec = model.error_decomposition(test.positions[te], test.energies[te], Ut)
            row = {"molecule": molecule, "training": training, "M": int(len(tr)), "n_test": int(len(te)),
                   "energy_features": feats, "energy_sigma": float(model.energy_hyper_.sigma),
                   "energy_lam": float(model.energy_hyper_.lam)}
            for k in ("dE", "dE_F", "dE_D"):
                a = np.abs(dec[k]) * KCAL_PER_HARTREE
                row[f"{k}_mae"], row[f"{k}_max"] = float(a.mean()), float(a.max())
            rows.append(row)
            print(f"M={row['M']:5d} {feats:9s} ΔE {row['dE_mae']:.3f} (max {row['dE_max']:.2f})  "
                  f"ΔE_F {row['dE_F_mae']:.3f}  ΔE_D {row['dE_D_mae']:.3f}  "
                  f"functional σ {row['energy_sigma']:.3g}, λ {row['energy_lam']:.0e}", flush=True)
        print(f"  ({time.perf_counter() - t0:.0f} s, {len(te)} test frames)", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("molecule", choices=("benzene", "ethane", "malonaldehyde"))
    ap.add_argument("--m", required=True, help="comma-separated training sizes")
    ap.add_argument("--training", default="300", help="300, 300+350 or 300+400 (default 300)")
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    ap.add_argument("--out", help="also write the rows as JSON")
    a = ap.parse_args(argv)
    rows = compare(a.molecule, a.training, [int(x) for x in a.m.split(",")], Path(a.data_dir), Path(a.data_dir) / "md")
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
