"""The ML-HK and ML-KS estimators, the error decomposition, and model files.

Both follow scikit-learn's conventions (``fit``/``predict``/``score``, ``get_params``/
``set_params``, ``sklearn.base.clone``). Inputs ``X`` are molecules of one composition: an array
of positions ``(n, n_atoms, 3)`` in Å (with ``numbers=`` at fit time) or a list of
:class:`ase.Atoms`. Energies are in Hartree; density coefficients ``(n, 125000)`` are in the
orthonormal Fourier basis of :mod:`mlhk_viz.basis`.

ML-HK (the paper's Eqs. 9, 12, 13): potential -> KRR per coefficient -> predicted density ->
KRR energy functional on the predicted coefficients. ML-KS (Eq. 15): potential -> energy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import atomic_masses
from sklearn.base import BaseEstimator, RegressorMixin

from .basis import FourierBasis
from .descriptor import GaussianPotential
from .geometry import align, align_symmetric, as_positions, best_orderings, check_permutations
from .krr import KernelRidgeModel, cv_grid, kfold_indices
from .progress import Progress, null_progress

#: default CV grids: sigma as multiples of the median training distance, lambda absolute
SIGMA_FACTORS = tuple(np.logspace(-1.5, 1.5, 21).round(6))
LAMBDAS = tuple(10.0 ** np.arange(-14, 0))
#: what the energy functional is trained on (``MLHK(energy_features=...)``)
ENERGY_FEATURES = ("predicted", "loo", "dft")

MODEL_FORMAT = "mlhk-viz-model"
#: a model file that holds everything the model needs (any model)
MODEL_VERSION = 1
#: an ML-HK model file that refers to its training densities in a data set and is refitted on load
REFERENCE_VERSION = 2
#: how ``save_model`` keeps an ML-HK model's training densities
DENSITY_STORAGE = ("embedded", "by-reference")


def molecules(X, numbers=None) -> tuple[np.ndarray, np.ndarray]:
    """Normalise ``X`` (positions array or list of ase.Atoms) to ``(positions (n, n_atoms, 3) Å, numbers)``."""
    if isinstance(X, (list, tuple)) and X and hasattr(X[0], "get_positions"):
        nums = np.asarray(X[0].numbers)
        for i, a in enumerate(X):
            if not np.array_equal(a.numbers, nums):
                raise ValueError(f"X[{i}] has atoms {a.get_chemical_formula()}, X[0] has "
                                 f"{X[0].get_chemical_formula()}: one composition (same atom order) per model")
        pos = np.stack([a.get_positions() for a in X])
        if numbers is not None and not np.array_equal(np.asarray(numbers), nums):
            raise ValueError("numbers= disagrees with the atoms in X")
        return as_positions(pos, "X"), nums
    pos = as_positions(X, "X")
    if numbers is None:
        raise ValueError("X is a positions array: pass numbers= (atomic numbers, shape (n_atoms,))")
    raw = np.asarray(numbers).reshape(-1)
    whole = raw.dtype.kind in "iu" or (raw.dtype.kind == "f" and np.all(np.isfinite(raw)) and np.all(raw == np.round(raw)))
    if not whole:
        raise ValueError(f"numbers: atomic numbers must be whole numbers, got {raw[:6].tolist()}")
    nums = raw.astype(int)
    if nums.size and (nums.min() < 1 or nums.max() > 118):
        raise ValueError(f"numbers: atomic numbers lie in 1..118, got {nums[(nums < 1) | (nums > 118)][:6].tolist()}")
    if len(nums) != pos.shape[1]:
        raise ValueError(f"numbers has {len(nums)} atoms, X has {pos.shape[1]} per molecule")
    return pos, nums


def _targets(y, n: int, name: str, width: int | None = None) -> np.ndarray:
    a = np.asarray(y, dtype=float)
    want = f"({n},)" if width is None else f"({n}, {width})"
    if a.ndim != (1 if width is None else 2):
        raise ValueError(f"{name}: expected shape {want}, one {'value' if width is None else 'row'} per molecule, "
                         f"got {'a scalar' if a.ndim == 0 else a.shape}")
    if a.shape[0] != n:
        raise ValueError(f"{name}: {a.shape[0]} rows for {n} molecules")
    if width is not None and (a.ndim != 2 or a.shape[1] != width):
        raise ValueError(f"{name}: expected shape ({n}, {width}), got {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: non-finite values (NaN or inf)")
    return a


def sq_feature_distances(A, B=None) -> np.ndarray:
    """Squared Euclidean distances between rows, by Gram matrices (BLAS): ``(len(A), len(B))``."""
    A = np.asarray(A, float)
    B = A if B is None else np.asarray(B, float)
    d = np.einsum("ij,ij->i", A, A)[:, None] + np.einsum("ij,ij->i", B, B)[None, :] - 2.0 * A @ B.T
    np.maximum(d, 0.0, out=d)
    return d


def _median_distance(D: np.ndarray) -> float:
    off = D[~np.eye(len(D), dtype=bool)] if D.shape[0] == D.shape[1] else D.ravel()
    med = float(np.sqrt(np.median(off))) if off.size else 1.0
    return med if med > 0 else 1.0


@dataclass
class HyperChoice:
    """Hyperparameters in use and, when chosen by CV, the CV table they came from."""

    sigma: float | np.ndarray
    lam: float | np.ndarray
    cv: object | None = None  # krr.CVResult


def _choose(D, Y, sigma, lam, sigma_factors, lams, cv, per_output, progress, stage, rule="min") -> HyperChoice:
    """Use given (sigma, lam) or pick them by CV on the training set only (``rule``: see ``krr.cv_grid``)."""
    if sigma is not None and lam is not None:
        return HyperChoice(sigma, lam)
    if not (cv == "loo" or (isinstance(cv, (int, np.integer)) and not isinstance(cv, bool))):
        raise ValueError(f"cv must be 'loo' or a number of folds (int >= 2), got {cv!r}")
    med = _median_distance(D)
    sigmas = np.array([sigma], float) if sigma is not None else np.asarray(sigma_factors, float) * med
    lam_grid = np.array([lam], float) if lam is not None else np.asarray(lams, float)
    folds = "loo" if cv == "loo" else kfold_indices(len(D), int(cv), seed=0)
    res = cv_grid(D, Y, sigmas, lam_grid, cv=folds, per_output=per_output, rule=rule,
                  progress=lambda d, t, s: progress(d, t, stage))
    return HyperChoice(res.best_sigma, res.best_lam, res)


def _check_rule(rule) -> str:
    if rule not in ("min", "1se"):
        raise ValueError(f"cv_rule must be 'min' (lowest CV error) or '1se' (one-standard-error rule), got {rule!r}")
    return rule


#: largest shift (Å) alignment may make to a molecule whose DFT density is given with it. Sets stored in a
#: canonical frame (H2O: centred, in the xy plane) move by up to 0.004 Å when aligned onto their first
#: molecule, 2 % of the 0.21 Å the 50-per-axis basis resolves in the 20-bohr box; a trajectory's raw
#: frames (a tumbling molecule) move by Å.
FRAME_TOLERANCE = 0.01


def _check_density_frame(given: np.ndarray, aligned: np.ndarray, what: str) -> None:
    """Refuse densities whose molecules the model would still turn: the density would not turn with them."""
    off = np.abs(aligned - given).max(axis=(1, 2))
    bad = np.flatnonzero(off > FRAME_TOLERANCE)
    if len(bad):
        raise ValueError(
            f"{what} {bad[:10].tolist()} are not in the reference frame (alignment moves atoms by up to "
            f"{off.max():.3g} Å), so their DFT densities would not match the aligned descriptor: compute the "
            f"densities at model.aligned_positions(X) (or geometry.align_symmetric onto the reference), as the MD sets are")


class _Base(BaseEstimator, RegressorMixin):
    """Shared descriptor handling: alignment, grid, distances."""

    def _prepare_fit(self, X, numbers, densities: bool = False):
        pos, nums = molecules(X, numbers)
        if len(pos) < 2:
            raise ValueError(f"need at least 2 training molecules, got {len(pos)}")
        self.numbers_ = nums
        self.reference_ = None if self.reference is None else as_positions(self.reference, "reference")[0]
        self.permutations_ = None
        if self.permutations is not None:
            if self.reference_ is None:
                raise ValueError("permutations relabel molecules to match the reference: give a reference too")
            self.permutations_ = check_permutations(self.permutations, len(nums), atomic_masses[nums])
            if densities:
                # a relabelled frame is turned onto the reference, and its DFT density would not turn with it
                chosen = best_orderings(pos, self.reference_, self.permutations_, atomic_masses[nums], stable=True)
                if (chosen != 0).any():
                    raise ValueError(
                        f"training molecules {np.flatnonzero(chosen)[:10].tolist()} are not in the ordering that "
                        f"matches the reference best, so their densities would not follow the relabelling: order "
                        f"them before computing their densities (geometry.align_symmetric), as the MD sets are")
        aligned = self._align(pos)
        if densities:
            _check_density_frame(pos, aligned, "training molecules")
        pos = aligned
        self.potential_ = GaussianPotential(self.gamma, self.spacing)
        self.axes_ = self.potential_.axes(pos)
        self.X_fit_ = pos
        return pos

    def _align(self, pos):
        if self.reference_ is None:
            return pos
        w = atomic_masses[self.numbers_]
        if getattr(self, "permutations_", None) is not None:
            # the same relabelling the training frames had: a methyl turned by 120° is the same molecule
            pos, _ = align_symmetric(pos, self.reference_, self.permutations_, w, stable=True)
        return align(pos, self.reference_, weights=w)

    def aligned_positions(self, X) -> np.ndarray:
        """``X`` as the model sees it: relabelled and Kabsch-aligned onto the reference, ``(n, n_atoms, 3)`` Å.

        DFT densities meant for training or for comparing with the model's must be computed at
        these positions: a density does not turn with its molecule once it is computed.
        """
        return self._check_X(X)

    def _check_X(self, X):
        return self._align(self._positions(X))

    def _positions(self, X):
        if not hasattr(self, "X_fit_"):
            raise RuntimeError(f"this {type(self).__name__} is not fitted yet: call fit first")
        is_atoms = isinstance(X, (list, tuple)) and X and hasattr(X[0], "numbers")
        if not is_atoms:
            n_atoms = as_positions(X, "X").shape[1]
            if n_atoms != len(self.numbers_):
                raise ValueError(f"X has {n_atoms} atoms per molecule, the model was fitted on {len(self.numbers_)}")
        pos, nums = molecules(X, None if is_atoms else self.numbers_)
        if not np.array_equal(nums, self.numbers_):
            raise ValueError(f"X holds atoms {nums.tolist()}, the model was fitted on {self.numbers_.tolist()}")
        return pos

    def descriptor_distances(self, X) -> np.ndarray:
        """Squared descriptor distances from ``X`` to the training molecules: ``(n, M)``."""
        pos = self._check_X(X)
        return self.potential_.sq_distances(pos, self.X_fit_, self.numbers_, self.axes_)


class MLKS(_Base):
    """ML-KS: kernel ridge regression straight from the Gaussian potential to the energy (Eq. 15).

    Parameters
    ----------
    gamma, spacing : float
        Width and grid spacing of the artificial Gaussian potential, Å.
    sigma, lam : float or None
        Kernel width (in descriptor-distance units) and ridge; None picks each by CV on the
        training set over ``sigma_factors`` x (median training distance) and ``lams``.
    cv : "loo" or int
        Leave-one-out (closed form) or k-fold CV.
    cv_rule : "min" or "1se"
        Take the (sigma, lam) with the lowest CV error (the paper), or the smoothest one within
        one standard error of it (:func:`mlhk_viz.krr.cv_grid`): more ridge where the CV error
        is flat.
    reference : (n_atoms, 3) array or None
        Geometry to Kabsch-align every input onto (Å); None uses inputs as given.
    permutations : (P, n_atoms) int array or None
        Orderings of equivalent atoms, identity first (e.g.
        :func:`mlhk_viz.reference.forcefield.equivalent_orderings`): every input, in fit and predict,
        is relabelled to the ordering that best matches ``reference``
        (:func:`mlhk_viz.geometry.align_symmetric`). Needs a reference.
    """

    def __init__(self, gamma=0.2, spacing=0.08, sigma=None, lam=None, cv="loo", sigma_factors=SIGMA_FACTORS,
                 lams=LAMBDAS, reference=None, permutations=None, cv_rule="min"):
        self.gamma, self.spacing, self.sigma, self.lam, self.cv = gamma, spacing, sigma, lam, cv
        self.sigma_factors, self.lams, self.reference = sigma_factors, lams, reference
        self.permutations, self.cv_rule = permutations, cv_rule

    def fit(self, X, y, numbers=None, progress: Progress = null_progress):
        """Fit on molecules ``X`` and energies ``y`` ``(n,)`` Hartree."""
        pos = self._prepare_fit(X, numbers, densities=False)
        y = _targets(y, len(pos), "y (energies)")
        progress(0, 1, "descriptor")
        D = self.potential_.sq_distances(pos, None, self.numbers_, self.axes_)
        progress(1, 1, "descriptor")
        self.hyper_ = _choose(D, y[:, None], self.sigma, self.lam, self.sigma_factors, self.lams, self.cv,
                              False, progress, "energy CV", _check_rule(self.cv_rule))
        self.model_ = KernelRidgeModel().fit(D, y[:, None], self.hyper_.sigma, self.hyper_.lam)
        return self

    def predict(self, X) -> np.ndarray:
        """Energies ``(n,)`` Hartree."""
        D = self.descriptor_distances(X)
        return self.model_.predict(D)[:, 0]


class MLHK(_Base):
    """ML-HK: potential -> density coefficients (one KRR each, Eq. 12) -> energy functional (Eq. 13).

    Parameters
    ----------
    gamma, spacing : float
        Gaussian potential width and grid spacing, Å (the paper: 0.2 and 0.08).
    sigma, lam : float or None
        Density-model kernel width and ridge, shared by all coefficients; None: by CV.
    per_coefficient : bool
        Choose (sigma, lam) by CV separately for every coefficient, as in the paper's Eq. 12
        (only when ``sigma``/``lam`` are None).
    energy_sigma, energy_lam : float or None
        Energy functional's kernel width (in density-L2 units) and ridge; None: by CV.
    energy_features : "predicted", "loo" or "dft"
        Train the functional on the model's own in-sample densities (Eq. 13), on its exact
        leave-one-out densities (each training molecule's density as predicted by the density
        model fitted without it: errors like those the functional meets out of sample; beyond
        the paper), or on the DFT ones.
    cv, cv_rule, sigma_factors, lams, reference, permutations : as in :class:`MLKS` (``cv_rule``
        applies to the density model and the energy functional alike; ``"1se"`` needs
        ``per_coefficient=False``).
    basis : FourierBasis
        The density basis (for densities on grids and electron counts).
    """

    def __init__(self, gamma=0.2, spacing=0.08, sigma=None, lam=None, per_coefficient=False, energy_sigma=None,
                 energy_lam=None, energy_features="predicted", cv="loo", sigma_factors=SIGMA_FACTORS, lams=LAMBDAS,
                 reference=None, basis=FourierBasis(), permutations=None, cv_rule="min"):
        self.gamma, self.spacing, self.sigma, self.lam = gamma, spacing, sigma, lam
        self.per_coefficient, self.energy_sigma, self.energy_lam = per_coefficient, energy_sigma, energy_lam
        self.energy_features, self.cv, self.sigma_factors, self.lams = energy_features, cv, sigma_factors, lams
        self.reference, self.basis, self.permutations = reference, basis, permutations
        self.cv_rule = cv_rule

    def fit(self, X, y, coefficients, numbers=None, progress: Progress = null_progress):
        """Fit on molecules ``X``, energies ``y`` ``(n,)`` Hartree and DFT coefficients ``(n, basis.size)``."""
        if self.energy_features not in ENERGY_FEATURES:
            raise ValueError(f"energy_features must be one of {', '.join(map(repr, ENERGY_FEATURES))}, "
                             f"got {self.energy_features!r}")
        if _check_rule(self.cv_rule) == "1se" and self.per_coefficient and (self.sigma is None or self.lam is None):
            raise ValueError("cv_rule='1se' chooses one (sigma, lam) for all coefficients: it needs per_coefficient=False")
        pos = self._prepare_fit(X, numbers, densities=True)
        y = _targets(y, len(pos), "y (energies)")
        U = _targets(coefficients, len(pos), "coefficients", self.basis.size)
        progress(0, 1, "descriptor")
        D = self.potential_.sq_distances(pos, None, self.numbers_, self.axes_)
        progress(1, 1, "descriptor")
        density = _choose(D, U, self.sigma, self.lam, self.sigma_factors, self.lams, self.cv,
                          self.per_coefficient, progress, "density CV", self.cv_rule)
        return self._solve(D, U, y, density, None, progress)

    def _solve(self, D, U, y, density: HyperChoice, energy: HyperChoice | None, progress=null_progress):
        """Both KRR stages on training distances ``D`` with the density model's ``(sigma, lam)`` given; the
        functional's are given too (a refit) or chosen by CV. Fit and refit share this one path, so a model
        refitted from its data set (a by-reference file) predicts what the original did."""
        self.density_hyper_ = density
        progress(0, 1, "density solve")
        self.density_model_ = KernelRidgeModel().fit(D, U, density.sigma, density.lam)
        progress(1, 1, "density solve")
        F = {"predicted": lambda: self.density_model_.predict(D), "loo": self.density_model_.loo_predictions,
             "dft": lambda: U}[self.energy_features]()
        self.energy_features_ = F
        DF = sq_feature_distances(F)
        self.energy_hyper_ = energy or _choose(DF, y[:, None], self.energy_sigma, self.energy_lam, self.sigma_factors,
                                               self.lams, self.cv, False, progress, "energy CV", self.cv_rule)
        self.energy_model_ = KernelRidgeModel().fit(DF, y[:, None], self.energy_hyper_.sigma, self.energy_hyper_.lam)
        return self

    # -- prediction ---------------------------------------------------------------
    def predict_coefficients(self, X) -> np.ndarray:
        """Predicted density coefficients ``(n, basis.size)``."""
        D = self.descriptor_distances(X)
        return self.density_model_.predict(D)

    def energy_of(self, coefficients) -> np.ndarray:
        """The learned functional E^ML[n] for densities given by ``coefficients`` ``(n, size)``: ``(n,)`` Hartree."""
        U = np.atleast_2d(np.asarray(coefficients, float))
        if U.ndim != 2 or U.shape[1] != self.energy_features_.shape[1]:
            raise ValueError(f"coefficients: expected shape (n, {self.energy_features_.shape[1]}), got {U.shape}")
        return self.energy_model_.predict(sq_feature_distances(U, self.energy_features_))[:, 0]

    def predict(self, X) -> np.ndarray:
        """E^ML[n^ML[v]]: energies ``(n,)`` Hartree."""
        return self.energy_of(self.predict_coefficients(X))

    def predict_density(self, X, axes_bohr=None, points: int = 64) -> np.ndarray:
        """Predicted densities on a grid: ``(n, nx, ny, nz)`` e/bohr³ (box grid of ``points`` by default)."""
        c = self.predict_coefficients(X)
        if axes_bohr is None:
            return self.basis.to_grid(c, points)
        return self.basis.evaluate(c, *axes_bohr)

    def predict_variance(self, X) -> np.ndarray:
        """GP posterior variance of the density model at ``X`` (shared by all coefficients): ``(n,)``.

        In units of the prior variance: 0 at training points, towards 1 far from them.
        """
        D = self.descriptor_distances(X)
        sig, lam = np.atleast_1d(self.density_model_.sigma_), np.atleast_1d(self.density_model_.lam_)
        if sig.size == 1 and lam.size == 1:
            return self.density_model_.variance(D)
        # per-coefficient hyperparameters: the variance of the typical coefficient (median sigma, lambda)
        return self.density_model_.variance(D, sigma=float(np.median(sig)), lam=float(np.median(lam)))

    def error_decomposition(self, X, energies, coefficients) -> dict:
        """Per-molecule errors in Hartree: ``dE = dE_F + dE_D`` (the paper's Eq. 14, ML estimate).

        ``dE = E^ML[n^ML] - E^DFT``, ``dE_D = E^ML[n^ML] - E^ML[n^DFT]`` (density-driven),
        ``dE_F = E^ML[n^DFT] - E^DFT`` (functional-driven). Also ``density_l2`` = ||n^ML - n^DFT||
        (the coefficient distance) and the energies themselves.
        """
        raw = self._positions(X)
        pos = self._align(raw)
        _check_density_frame(raw, pos, "molecules")
        E = _targets(energies, len(pos), "energies")
        U = _targets(coefficients, len(pos), "coefficients", self.basis.size)
        Uml = self.density_model_.predict(self.potential_.sq_distances(pos, self.X_fit_, self.numbers_, self.axes_))
        e_ml = self.energy_of(Uml)
        e_ml_dft = self.energy_of(U)
        return {
            "E_dft": E, "E_ml": e_ml, "E_ml_at_dft_density": e_ml_dft,
            "dE": e_ml - E, "dE_D": e_ml - e_ml_dft, "dE_F": e_ml_dft - E,
            "density_l2": np.sqrt(np.sum((Uml - U) ** 2, axis=1)),
        }


# -- model files -----------------------------------------------------------------------------
def _jsonable(v):
    if isinstance(v, (np.ndarray, tuple)):
        return np.asarray(v).tolist()
    if isinstance(v, FourierBasis):
        return {"box": v.box, "n": v.n}
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


def save_model(model, path, provenance: dict | None = None, densities: str = "embedded") -> Path:
    """Save a fitted :class:`MLHK` or :class:`MLKS` (``.npz``, no pickle; see docs/formats.md).

    ``provenance`` (optional, JSON-able) says where the training molecules came from, e.g.
    ``{"dataset": "h2o.npz", "name": "H2O", "train": [...]}``; :func:`load_model` puts it back in
    ``model.provenance_`` and :func:`read_model_meta` reads it without loading the arrays.

    ``densities`` (ML-HK only): ``"embedded"`` keeps the dual coefficients and the functional's
    training densities (about 2 × M MB); ``"by-reference"`` keeps only the fitted σ and λ and refers
    to the training densities in the data set named by ``provenance`` (``"dataset"``: its file name,
    ``"train"``: the M row indices), with the training energies and density norms to check it by.
    Such a file is tens of kB at M = 200 (about 0.5 MB at M = 2000); :func:`load_model` refits from
    the data set, which must still hold those molecules.
    """
    from .datasets import save_npz

    if not hasattr(model, "X_fit_"):
        raise ValueError("save_model: the model is not fitted")
    if densities not in DENSITY_STORAGE:
        raise ValueError(f"save_model: densities must be one of {', '.join(map(repr, DENSITY_STORAGE))}, got {densities!r}")
    kind = type(model).__name__
    by_reference = densities == "by-reference"
    if provenance is not None:
        try:
            json.dumps(provenance)
        except TypeError as exc:
            raise ValueError(f"save_model: provenance must be JSON-able (plain str/int/float/list/dict): {exc}") from None
    arrays = {"X_fit": model.X_fit_, "numbers": model.numbers_, "axes_x": model.axes_[0], "axes_y": model.axes_[1],
              "axes_z": model.axes_[2]}
    if model.reference_ is not None:
        arrays["reference"] = model.reference_
    if getattr(model, "permutations_", None) is not None:
        arrays["permutations"] = np.asarray(model.permutations_, np.int64)
    if by_reference:
        arrays.update(_reference_arrays(model, kind, provenance))
    else:
        parts = {"energy": model.model_} if kind == "MLKS" else {"density": model.density_model_,
                                                                  "energy": model.energy_model_}
        for prefix, km in parts.items():
            for k, v in km.to_arrays().items():
                arrays[f"{prefix}/{k}"] = v
        if kind == "MLHK":
            arrays["energy_features"] = model.energy_features_
    params = {k: _jsonable(v) for k, v in model.get_params().items() if k not in ("reference", "permutations")}
    meta = {"format": MODEL_FORMAT, "version": REFERENCE_VERSION if by_reference else MODEL_VERSION, "kind": kind,
            "params": params, "densities": densities}
    if provenance is not None:
        meta["provenance"] = provenance
    # an embedded file is mostly dense float64 that would not shrink; a by-reference one is mostly
    # per-coefficient σ and λ, a few distinct values each
    save_npz(path, arrays, meta, compress=by_reference)
    return Path(path)


def _reference_arrays(model, kind: str, provenance) -> dict:
    """What a by-reference file keeps of a fitted ML-HK: σ, λ and a fingerprint of the training data."""
    if kind != "MLHK":
        raise ValueError("save_model: only an ML-HK model has training densities to refer to "
                         "(an ML-KS file is small): use densities='embedded'")
    prov = provenance or {}
    rows = prov.get("train")
    if not isinstance(prov.get("dataset"), str) or not isinstance(rows, list) or len(rows) != len(model.X_fit_):
        raise ValueError(f"save_model(densities='by-reference') needs provenance={{'dataset': the data set's file "
                         f"name, 'train': the {len(model.X_fit_)} row indices of the training molecules in it}}")
    try:
        U = model.density_model_.training_targets()
        y = model.energy_model_.training_targets()[:, 0]
    except RuntimeError:
        raise ValueError("save_model: this model was loaded from an embedded file, which does not keep what a "
                         "by-reference file checks its data set by; save it embedded") from None
    out = {"train_energies": y, "train_density_norms": np.linalg.norm(U, axis=1)}
    for prefix, km in (("density", model.density_model_), ("energy", model.energy_model_)):
        out[f"{prefix}/sigma"], out[f"{prefix}/lam"] = km.sigma_, km.lam_
    return out


def load_model(path, dataset=None, search=(), progress: Progress = null_progress):
    """Load a model saved by :func:`save_model`; raises ``DatasetError`` saying what is wrong.

    A by-reference ML-HK file is refitted from its training densities (with its saved σ and λ, no CV):
    from ``dataset`` (a :class:`~mlhk_viz.datasets.Dataset` or a path) if given, else from the data set
    its provenance names, looked for beside the model file, then in the folders ``search``.
    """
    from .datasets import DatasetError, load_npz

    arrays, meta = load_npz(path, kind=MODEL_FORMAT)
    version = meta.get("version")
    if version not in (MODEL_VERSION, REFERENCE_VERSION):
        raise DatasetError(f"{path}: model format version {version!r} is not supported "
                           f"(this mlhk-viz reads versions {MODEL_VERSION} and {REFERENCE_VERSION})")
    kind = meta.get("kind")
    if kind not in ("MLHK", "MLKS") or (version == REFERENCE_VERSION and kind != "MLHK"):
        raise DatasetError(f"{path}: unknown model kind {kind!r} for format version {version}")
    params = dict(meta["params"])
    for k in ("sigma_factors", "lams"):
        params[k] = tuple(params[k])
    if "basis" in params:
        params["basis"] = FourierBasis(**params["basis"])
    params.pop("permutations", None)
    model = (MLHK if kind == "MLHK" else MLKS)(reference=arrays.get("reference"), permutations=arrays.get("permutations"),
                                             **params)
    try:
        model.X_fit_, model.numbers_ = arrays["X_fit"], arrays["numbers"]
        model.axes_ = (arrays["axes_x"], arrays["axes_y"], arrays["axes_z"])
        model.reference_ = arrays.get("reference")
        perms = arrays.get("permutations")
        model.permutations_ = None if perms is None else check_permutations(perms, len(model.numbers_))
        model.potential_ = GaussianPotential(model.gamma, model.spacing)
        model.provenance_ = dict(meta.get("provenance") or {})
        if version == REFERENCE_VERSION:
            return _refit_from_reference(model, path, arrays, dataset, search, progress)

        def sub(prefix):
            return KernelRidgeModel.from_arrays({k.split("/", 1)[1]: v for k, v in arrays.items()
                                                 if k.startswith(prefix + "/")})

        if kind == "MLKS":
            model.model_ = sub("energy")
        else:
            model.density_model_, model.energy_model_ = sub("density"), sub("energy")
            model.energy_features_ = arrays["energy_features"]
    except KeyError as exc:
        raise DatasetError(f"{path}: model file is missing array {exc}") from None
    return model


def _training_set(path, name, dataset, search):
    from .datasets import Dataset, DatasetError

    if isinstance(dataset, Dataset):
        return dataset
    if dataset is not None:
        if not isinstance(dataset, (str, os.PathLike)):
            raise TypeError(f"load_model: dataset must be a Dataset or a path, got {type(dataset).__name__}")
        return Dataset.load(dataset)
    if not isinstance(name, str) or not name:
        raise DatasetError(f"{path}: refers to its training densities but does not name their data set; pass dataset=")
    folders = [Path(path).resolve().parent, *(Path(f) for f in search)]
    for folder in folders:
        if (folder / Path(name).name).is_file():
            return Dataset.load(folder / Path(name).name)
    raise DatasetError(f"{path}: its training densities are in {name}, which is not in {', '.join(map(str, folders))}; "
                       f"put the data set there or pass dataset=")


def _refit_from_reference(model, path, arrays, dataset, search, progress):
    """Refit a by-reference ML-HK file's model from the rows of its data set, after checking they are the
    molecules it was trained on (geometry, energy and density norm)."""
    from .datasets import DatasetError

    prov = model.provenance_
    ds = _training_set(path, prov.get("dataset"), dataset, search)
    where = f"{path}: its training rows in {ds.path or ds.name}"
    rows = np.asarray(prov.get("train", []))
    M = len(model.X_fit_)
    if rows.shape != (M,) or not np.issubdtype(rows.dtype, np.integer):
        raise DatasetError(f"{path}: provenance 'train' must list the {M} training rows, got shape {rows.shape}")
    if rows.min() < 0 or rows.max() >= len(ds):
        raise DatasetError(f"{where} go up to {rows.max()}, but the set has {len(ds)} molecules")
    if not np.array_equal(ds.numbers, model.numbers_):
        raise DatasetError(f"{where}: the set holds atoms {ds.numbers.tolist()}, the model {np.asarray(model.numbers_).tolist()}")

    def refuse(differ, what):
        if differ.any():
            raise DatasetError(f"{where} are not the molecules it was trained on (rows {rows[differ][:5].tolist()} "
                               f"differ in {what}): the data set changed since the model was saved")

    # geometry and energy first: a changed set is refused before its densities are expanded
    E = ds.energies[rows]
    refuse((np.abs(model._align(ds.positions[rows]) - model.X_fit_).max(axis=(1, 2)) > 1e-6)
           | (np.abs(E - arrays["train_energies"]) > 1e-8), "geometry or energy")
    progress(0, 1, "training densities")
    U = ds.coefficients(progress, rows=rows)
    norms = arrays["train_density_norms"]
    refuse(np.abs(np.linalg.norm(U, axis=1) - norms) > 1e-6 * norms, "density")
    D = model.potential_.sq_distances(model.X_fit_, None, model.numbers_, model.axes_)

    def hyper(prefix):
        return HyperChoice(*(v[0] if np.all(v == v[0]) else v for v in (arrays[f"{prefix}/sigma"], arrays[f"{prefix}/lam"])))

    return model._solve(D, U, E, hyper("density"), hyper("energy"), progress)


def read_model_meta(path) -> tuple[dict, np.ndarray, int]:
    """``(meta, numbers, M)`` of a model file without reading its large arrays (for menus and ``info``).

    ``meta`` holds ``kind``, ``params`` and, for files that recorded it, ``provenance``; raises
    ``DatasetError`` saying what is wrong with the file.
    """
    from .datasets import DatasetError, open_npz

    with open_npz(path, MODEL_FORMAT, what="model file") as (z, meta):
        if "numbers" not in z:
            raise DatasetError(f"{path}: no 'numbers' array; not a complete model file")
        numbers = np.asarray(z["numbers"])
        n_fit = z.shape("X_fit")[0] if "X_fit" in z else -1
    return meta, numbers, int(n_fit)


def model_summary(model) -> str:
    """One line with the hyperparameters in use (for logs and the app)."""
    if isinstance(model, MLKS):
        h = model.hyper_ if hasattr(model, "hyper_") else None
        return json.dumps({"kind": "MLKS", "sigma": _jsonable(getattr(h, "sigma", None)), "lam": _jsonable(getattr(h, "lam", None))})
    d, e = getattr(model, "density_hyper_", None), getattr(model, "energy_hyper_", None)
    f = lambda v: v if np.ndim(v) == 0 else f"per-coefficient ({np.min(v):.3g}..{np.max(v):.3g})"  # noqa: E731
    return json.dumps({"kind": "MLHK", "sigma": _jsonable(f(d.sigma)) if d else None, "lam": _jsonable(f(d.lam)) if d else None,
                       "energy_sigma": _jsonable(e.sigma) if e else None, "energy_lam": _jsonable(e.lam) if e else None})
