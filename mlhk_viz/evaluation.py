"""The paper's protocol as functions: test split, K-means training selection, fit both models, score.

One place for it: the CLI's ``reproduce``, the app and the tests all call these.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from ase.units import Hartree, kcal, mol

from .datasets import Dataset
from .geometry import kmeans_select
from .models import MLHK, MLKS
from .progress import Progress, null_progress

#: Hartree -> kcal/mol
KCAL_PER_HARTREE = Hartree / (kcal / mol)


def split(ds: Dataset, n_test: int = 50, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n_test`` random converged molecules as the test set, the other converged ones as the pool."""
    ok = np.flatnonzero(ds.converged)
    if n_test >= len(ok):
        raise ValueError(f"n_test={n_test} leaves no training pool: {len(ok)} converged molecules in {ds.name}")
    rng = np.random.default_rng(seed)
    test = np.sort(rng.choice(ok, size=n_test, replace=False))
    return test, np.setdiff1d(ok, test)


def geometry_features(ds: Dataset) -> np.ndarray:
    """Points in geometry space for K-means: all inverse interatomic distances, ``(n, n_pairs)`` 1/Å.

    Inverse distances (as in a Coulomb matrix) are invariant to rotation and translation and
    stretch the steep short-bond region, where energies change fastest: on H2 they give
    K-means centres that reach further into the repulsive wall than Cartesian coordinates do
    (H2, M = 10: ML-HK max error 0.08 instead of 0.93 kcal/mol; docs/reproduce.md).
    """
    i, j = np.triu_indices(ds.n_atoms, k=1)
    return 1.0 / np.linalg.norm(ds.positions[:, i] - ds.positions[:, j], axis=-1)


def select_training(ds: Dataset, pool, m: int, seed: int = 0) -> np.ndarray:
    """``m`` training molecules from ``pool`` by K-means in geometry space (nearest real geometry per centre)."""
    return kmeans_select(geometry_features(ds), m, seed=seed, candidates=pool)


@dataclass
class Evaluation:
    """Both models fitted on ``train`` and scored on ``test``; errors in kcal/mol, per molecule."""

    train: np.ndarray
    test: np.ndarray
    mlhk: MLHK | None
    mlks: MLKS | None
    errors: dict = field(default_factory=dict)  # name -> (n_test,) kcal/mol
    energies: dict = field(default_factory=dict)  # name -> (n_test,) Hartree
    density_l2: np.ndarray | None = None  # (n_test,) ||n^ML - n^DFT||_2, e/bohr^1.5

    def summary(self) -> dict:
        """``{quantity: (MAE, max)}`` in kcal/mol for mlks_dE, mlhk_dE, mlhk_dED, mlhk_dEF."""
        return {k: (float(np.mean(np.abs(v))), float(np.max(np.abs(v)))) for k, v in self.errors.items()}


def evaluate(ds: Dataset, train, test, mlhk_params: dict | None = None, mlks_params: dict | None = None,
             kinds=("mlhk", "mlks"), progress: Progress = null_progress) -> Evaluation:
    """Fit ML-HK and/or ML-KS on ``train`` (hyperparameters by CV on it alone) and score on ``test``."""
    train, test = np.asarray(train), np.asarray(test)
    ev = Evaluation(train, test, None, None)
    E = ds.energies
    ev.energies["dft"] = E[test]
    if "mlks" in kinds:
        ev.mlks = MLKS(**(mlks_params or {})).fit(ds.positions[train], E[train], numbers=ds.numbers, progress=progress)
        e = ev.mlks.predict(ds.positions[test])
        ev.energies["mlks"] = e
        ev.errors["mlks_dE"] = (e - E[test]) * KCAL_PER_HARTREE
    if "mlhk" in kinds:
        U = ds.coefficients(progress)
        ev.mlhk = MLHK(**(mlhk_params or {})).fit(ds.positions[train], E[train], U[train], numbers=ds.numbers,
                                                 progress=progress)
        dec = ev.mlhk.error_decomposition(ds.positions[test], E[test], U[test])
        ev.energies["mlhk"] = dec["E_ml"]
        ev.energies["mlhk_at_dft_density"] = dec["E_ml_at_dft_density"]
        ev.errors["mlhk_dE"] = dec["dE"] * KCAL_PER_HARTREE
        ev.errors["mlhk_dED"] = dec["dE_D"] * KCAL_PER_HARTREE
        ev.errors["mlhk_dEF"] = dec["dE_F"] * KCAL_PER_HARTREE
        ev.density_l2 = dec["density_l2"]
    return ev
