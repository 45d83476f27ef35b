"""ML-HK in the span of the training densities ("M-space"): the paper's model without any
(M, 125000) matrix, for sweeps over sigma, lambda and M.

:class:`~mlhk_viz.models.MLHK` stores dual coefficients of shape (M, L) and predicts coefficient
vectors; that is what a model file and ML-HK MD need. For a fixed training set, though, every
number a sweep reports is a function of a few (M, M) and (n, M) matrices:

* the density model's prediction for molecule x is ``offset + b(x) @ Yc`` with the centred
  training coefficients ``Yc`` (M, L) and the M-vector ``b(x) = k(x) (K + lam I)^-1``
  (:func:`density_weights`, from one eigendecomposition of K per sigma, :func:`kernel_eigen`);
* the Fourier basis is orthonormal, so distances between densities are distances between
  coefficient vectors, and with ``G = Yc Yc^T``, ``H = (U_scored - offset) Yc^T`` and
  ``nt = ||U_scored - offset||^2`` (:func:`coefficient_grams`, the only pass over all L
  coefficients) every distance the energy functional needs is a small quadratic form:
  ``||n_ML(x) - n_ML(x')||^2 = (b - b') G (b - b')^T``, ``||n_DFT(t) - n_ML(x')||^2 =
  nt - 2 H b'^T + b' G b'^T`` (:func:`functional_distances`);
* CV of the density model on the Gram factor ``T`` (``T T^T = G``, :func:`gram_factor`) with
  ``center=False`` gives the same leave-one-out errors as CV on the (M, L) coefficients.

So a lambda change costs (M, M) products, a sigma change one (M, M) eigendecomposition, and only
the densities drawn on a grid touch L numbers (:func:`predicted_coefficients`). The app
(:mod:`mlhk_viz.app.compute`) caches these pieces; the tests check them against ``MLHK`` fitted
by :func:`mlhk_viz.evaluation.evaluate` with the same hyperparameters.

Shapes: M training molecules, n molecules predicted, L coefficients. Distances are squared
Euclidean distances (descriptor units for potentials, coefficient units for densities).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from .krr import _gauss, cv_grid
from .models import LAMBDAS, SIGMA_FACTORS
from .progress import null_progress

__all__ = [
    "Choice",
    "Eigen",
    "Grams",
    "choose",
    "coefficient_grams",
    "density_l2",
    "density_weights",
    "functional_distances",
    "gauss",
    "gram_factor",
    "kernel_eigen",
    "median_distance",
    "predicted_coefficients",
    "rows_combination",
    "sq_from_inner",
]

#: columns per block of the pass over the coefficients (a few MB per block at M = 200)
GRAM_BLOCK = 8192


def gauss(D: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian kernel ``exp(-D / (2 sigma^2))`` of squared distances ``D`` (the KRR module's, unchecked)."""
    return _gauss(D, sigma)


def median_distance(D: np.ndarray) -> float:
    """The scale of the CV grids: sqrt of the median off-diagonal squared distance of (M, M) ``D``."""
    off = D[~np.eye(len(D), dtype=bool)]
    med = float(np.sqrt(np.median(off))) if off.size else 1.0
    return med if med > 0 else 1.0


def sq_from_inner(self_a: np.ndarray, self_b: np.ndarray, cross: np.ndarray) -> np.ndarray:
    """Squared distances ``|a|^2 + |b|^2 - 2 <a, b>`` (clipped at 0) from norms and inner products."""
    d = self_a[:, None] + self_b[None, :] - 2.0 * cross
    return np.maximum(d, 0.0, out=d)


def gram_factor(S: np.ndarray) -> np.ndarray:
    """``T`` (M, r) with ``T T^T = S`` for a symmetric positive semi-definite ``S`` (negative modes dropped)."""
    w, V = scipy.linalg.eigh(0.5 * (S + S.T), check_finite=False, driver="evd")
    keep = w > 0
    return V[:, keep] * np.sqrt(w[keep])


@dataclass
class Grams:
    """The training densities as far as M-space needs them (see the module docstring)."""

    offset: np.ndarray  # (L,) mean training coefficients
    G: np.ndarray  # (M, M) Yc Yc^T
    H: np.ndarray  # (n_scored, M) (U_scored - offset) Yc^T
    nt: np.ndarray  # (n_scored,) ||U_scored - offset||^2
    s2: np.ndarray  # (L,) mean square of Yc per coefficient (spread of the training densities)
    T: np.ndarray  # (M, r) with T T^T = G, for CV


def coefficient_grams(U: np.ndarray, train: np.ndarray, scored: np.ndarray, progress=null_progress,
                      block: int = GRAM_BLOCK) -> Grams:
    """One blocked pass over the coefficients ``U`` (n_all, L) of the training rows ``train`` (M,)
    and the scored rows ``scored`` (n_scored,): memory O(M * block) beyond ``U``."""
    M, L = len(train), U.shape[1]
    offset, s2 = np.zeros(L), np.empty(L)
    G, H, nt = np.zeros((M, M)), np.zeros((len(scored), M)), np.zeros(len(scored))
    for k, s in enumerate(range(0, L, block)):
        blk = slice(s, min(L, s + block))
        Y = U[train, blk]
        off = Y.mean(axis=0)
        Y -= off
        Tb = U[scored, blk] - off
        G += Y @ Y.T
        H += Tb @ Y.T
        nt += np.einsum("ij,ij->i", Tb, Tb)
        s2[blk] = np.einsum("ij,ij->j", Y, Y) / M
        offset[blk] = off
        progress(k + 1, math.ceil(L / block), "coefficient Gram")
    G = 0.5 * (G + G.T)
    return Grams(offset, G, H, nt, s2, gram_factor(G))


@dataclass
class Eigen:
    """``K = Q diag(e) Q^T`` for the training kernel, and the kernel ``Kx`` from n molecules to it."""

    sigma: float
    e: np.ndarray  # (M,)
    Q: np.ndarray  # (M, M)
    K: np.ndarray  # (M, M)
    Kx: np.ndarray  # (n, M)


def kernel_eigen(D_tr: np.ndarray, D_all: np.ndarray, sigma: float) -> Eigen:
    """Gaussian kernels of the squared descriptor distances ``D_tr`` (M, M) and ``D_all`` (n, M)."""
    K = gauss(D_tr, sigma)
    e, Q = scipy.linalg.eigh(K, check_finite=False, driver="evd")
    np.maximum(e, 0.0, out=e)
    return Eigen(float(sigma), e, np.ascontiguousarray(Q), K, gauss(D_all, sigma))


def density_weights(eig: Eigen, lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """KRR weights of the density model: ``(b, B, var)``.

    ``b`` (n, M) = ``Kx (K + lam I)^-1`` (prediction ``offset + b @ Yc``), ``B`` (M, M) the same for
    the training molecules (``K (K + lam I)^-1``, symmetrised), ``var`` (n,) the GP posterior variance
    ``1 - k(x) (K + lam I)^-1 k(x)^T`` in prior units.
    """
    inv = 1.0 / (eig.e + lam)
    B = (eig.Q * (eig.e * inv)) @ eig.Q.T
    KxQ = eig.Kx @ eig.Q
    var = np.maximum(1.0 - (KxQ * KxQ) @ inv, 0.0)
    # k(x) Q diag(1/(e + lam)) Q^T in this order: the components of k(x) along the small-eigenvalue
    # directions are small too, so nothing of size 1/lam is ever formed
    b = (KxQ * inv) @ eig.Q.T
    return b, 0.5 * (B + B.T), var


def functional_training_weights(B: np.ndarray, features: str = "predicted") -> np.ndarray:
    """(M, M) weights ``W``: the energy functional's training densities are ``offset + W @ Yc``.

    ``B`` is the density model's :func:`density_weights` for its training molecules. ``features``, as
    ``MLHK(energy_features=...)``: ``"predicted"``, the in-sample predictions (``W = B``, the paper's
    Eq. 13); ``"loo"``, the exact leave-one-out predictions with the same offset (row ``i`` is
    ``e_i - (e_i - B_i) / (1 - B_ii)``: a linear smoother's residual without its own point, as
    ``KernelRidgeModel.loo_predictions``); ``"dft"``, the DFT densities (``W = I``).
    """
    B = np.asarray(B, float)
    if features == "predicted":
        return B
    eye = np.eye(len(B))
    if features == "dft":
        return eye
    if features == "loo":
        return eye - (eye - B) / (1.0 - np.diag(B))[:, None]
    raise ValueError(f"features must be 'predicted', 'loo' or 'dft', got {features!r}")


def functional_distances(b: np.ndarray, B: np.ndarray, G: np.ndarray, H: np.ndarray | None = None,
                         nt: np.ndarray | None = None) -> dict:
    """Squared density distances for the energy functional (Eq. 13), all from (M, M) algebra.

    ``B`` (M, M): the weights of the functional's training densities (:func:`functional_training_weights`;
    the paper's are the density model's own predictions). Returns ``train`` (M, M) between those
    training densities, ``predicted`` (n, M) from each predicted density ``b`` to them, and, if ``H`` and
    ``nt`` are given, ``dft`` (n_scored, M) from the DFT densities of the scored molecules to them.
    """
    BG = B @ G
    Gff = BG @ B.T
    dff = np.diag(Gff).copy()
    DF = sq_from_inner(dff, dff, Gff)
    out = {"train": 0.5 * (DF + DF.T)}
    bG = b @ G
    out["self"] = np.einsum("ij,ij->i", bG, b)  # (n,) ||b Yc||^2
    out["predicted"] = sq_from_inner(out["self"], dff, bG @ B.T)
    if H is not None:
        out["dft"] = sq_from_inner(nt, dff, H @ B.T)
    return out


def density_l2(b_scored: np.ndarray, self_scored: np.ndarray, H: np.ndarray, nt: np.ndarray) -> np.ndarray:
    """``||n_ML - n_DFT||_2`` (n_scored,) in coefficient units (= the L2 norm on the box, orthonormal basis)."""
    return np.sqrt(np.maximum(self_scored - 2 * np.einsum("ij,ij->i", b_scored, H) + nt, 0.0))


def predicted_coefficients(U: np.ndarray, train: np.ndarray, offset: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``offset + w @ (U[train] - offset)``: (L,) coefficients for one weight vector ``w`` (M,)."""
    return rows_combination(U, train, w) + (1.0 - float(np.sum(w))) * offset


def rows_combination(U: np.ndarray, rows: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``w @ U[rows]`` without copying the rows: one matrix-vector product over all of ``U`` with
    ``w`` scattered into a full-length vector (``U[rows]`` would copy M x L numbers on every call)."""
    full = np.zeros(len(U))
    np.add.at(full, np.asarray(rows), np.asarray(w, float))
    return full @ U


@dataclass
class Choice:
    """Hyperparameters in use: ``sigma`` absolute (distance units), ``factor`` = sigma / median distance."""

    sigma: float
    lam: float
    factor: float
    by_cv: tuple  # (sigma by CV?, lambda by CV?)
    cv_errors: np.ndarray | None = None  # (n_sigma, n_lam) LOO errors when CV ran
    cv_sigmas: np.ndarray | None = None
    cv_lams: np.ndarray | None = None
    rule: str = "min"  # how CV chose: the lowest error, or the one-standard-error rule (krr.cv_grid)


def choose(D: np.ndarray, Y: np.ndarray, med: float, factor=None, lam=None, progress=null_progress,
           stage: str = "CV", center: bool = True, rule: str = "min") -> Choice:
    """Sigma and lambda: as given, or by leave-one-out CV on the library's grids
    (:data:`~mlhk_viz.models.SIGMA_FACTORS` times ``med``, :data:`~mlhk_viz.models.LAMBDAS`), choosing
    by ``rule`` (see :func:`~mlhk_viz.krr.cv_grid`)."""
    if factor is not None and lam is not None:
        return Choice(float(factor) * med, float(lam), float(factor), (False, False))
    sigmas = np.array([float(factor) * med]) if factor is not None else np.asarray(SIGMA_FACTORS) * med
    lams = np.array([float(lam)]) if lam is not None else np.asarray(LAMBDAS, float)
    res = cv_grid(D, Y, sigmas, lams, cv="loo", center=center, rule=rule,
                  progress=lambda d, t, s: progress(d, t, stage))
    return Choice(float(res.best_sigma), float(res.best_lam), float(res.best_sigma) / med,
                  (factor is None, lam is None), res.errors, res.sigmas, res.lams, rule)
