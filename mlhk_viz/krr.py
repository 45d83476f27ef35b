"""Multi-output Gaussian-kernel ridge regression for the ML-HK map.

ML-HK (Brockherde et al. 2017, Eq. 12) fits one kernel ridge regression per Fourier
coefficient ``l`` of the density,

    beta^(l) = (K_sigma(l) + lambda(l) I)^-1 u^(l),

with a Gaussian kernel ``K = exp(-D / (2 sigma^2))`` of squared descriptor distances ``D``.
All outputs that share ``sigma`` share the kernel matrix, so everything here is built on
one symmetric eigendecomposition ``K = Q diag(e) Q^T`` per sigma:

* dual coefficients for any ridge ``lambda`` (one per output if wanted):
  ``alpha = Q diag(1 / (e + lambda)) Q^T Yc`` -- changing lambda costs one
  ``M x M x L`` matrix multiply, never a refactorisation;
* exact leave-one-out residuals ``r_i = alpha_i / G_ii`` with ``G = (K + lambda I)^-1``,
  ``G_ii = sum_k Q_ik^2 / (e_k + lambda)``;
* exact K-fold held-out residuals ``r_F = (G_FF)^-1 alpha_F``.

Both residual maps are linear in the targets, ``R = C Yc`` with an ``M x M`` matrix
``C(sigma, lambda)``. For hyperparameters shared by all outputs the total squared CV error
is ``||C Yc||_F^2 = ||C T||_F^2`` where ``T`` (``M x r``) factors the target Gram matrix,
``T T^T = Yc Yc^T``; the Gram matrix costs ``M^2 L`` once and every ``(sigma, lambda)``
then costs ``O(M^3)`` whatever the number of outputs ``L``. For per-output selection each
``(sigma, lambda)`` costs one ``M x M x L`` multiply (done in column blocks).

Shapes: ``M`` training points, ``L`` outputs, ``n`` test points.

Centring and CV. Targets are centred by a constant offset per output (the training mean
when ``center=True``, else 0); the model fits ``Y - offset`` and adds the offset back in
predictions. Cross-validation treats that offset as a *constant*: it is not re-estimated
on each training fold. The closed-form LOO/K-fold residuals are therefore exactly those of
explicit refits on ``Y - offset`` with the same offset (an intercept re-fitted per fold
would differ at order ``1/M``).

Numerics: eigenvalues of ``K`` below zero at round-off level (a Gaussian kernel of
squared Euclidean distances is positive semi-definite) are set to 0; clearly negative
eigenvalues raise ``ValueError``. ``eigh`` fixes each eigenvalue only to about
``eps * e_max``, so results carry a relative error of order ``eps * e_max / (e_min + lambda)``:
agreement with explicit refits is ~1e-10 for moderate conditioning, but near
``cond(K + lambda I) ~ 1e14`` (e.g. wide sigma with lambda = 1e-12) the closed-form CV
residuals are only good to ~1e-2 relative (Cholesky refits do somewhat better there).
Such grid points are far from the CV optimum in practice; in the benchmark the selected
(sigma, lambda) equals scikit-learn's.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import scipy.linalg

__all__ = [
    "gaussian_kernel",
    "EigenKRR",
    "kfold_indices",
    "CVResult",
    "cv_grid",
    "KernelRidgeModel",
]

# Working-set budget (float64 elements) for a column block of an (rows, b) temporary.
_BLOCK_ELEMS = 1 << 21
# Per-output lambda arrays with at most this many distinct values are handled by
# grouping outputs that share a lambda (pure matrix multiplies); beyond it, by
# vectorised elementwise/batched formulas.
_MAX_LAM_GROUPS = 64
_FORMAT_VERSION = 1


# --------------------------------------------------------------------------- validation


def _float_array(x, name: str) -> np.ndarray:
    if np.iscomplexobj(x):
        raise ValueError(f"{name} must be real-valued; got a complex array")
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array; got {type(x).__name__}") from exc
    return a


def _require_finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        bad = int(np.count_nonzero(~np.isfinite(a)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")


def _check_sq_dist(D, name: str, *, square: bool = False, n_cols: int | None = None) -> np.ndarray:
    D = _float_array(D, name)
    if D.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array of squared distances; got shape {D.shape}")
    if D.shape[0] == 0 or D.shape[1] == 0:
        raise ValueError(f"{name} must not be empty; got shape {D.shape}")
    if square and D.shape[0] != D.shape[1]:
        raise ValueError(f"{name} must be square (M, M); got shape {D.shape}")
    if n_cols is not None and D.shape[1] != n_cols:
        raise ValueError(
            f"{name} must have {n_cols} columns (one per training point); got shape {D.shape}"
        )
    _require_finite(D, name)
    scale = max(1.0, float(np.abs(D).max()))
    if D.min() < -1e-9 * scale:
        raise ValueError(
            f"{name} must contain squared distances >= 0; smallest value is {D.min():.3g}"
        )
    if square:
        asym = float(np.abs(D - D.T).max())
        if asym > 1e-8 * scale:
            raise ValueError(f"{name} must be symmetric; max |D - D.T| = {asym:.3g}")
        D = 0.5 * (D + D.T)
    return D


def _check_targets(Y, M: int, name: str = "Y") -> tuple[np.ndarray, bool]:
    """Return (Y as (M, L) float64, squeeze) where squeeze records a 1-D input."""
    Y = _float_array(Y, name)
    if Y.ndim not in (1, 2):
        raise ValueError(f"{name} must have shape (M,) or (M, L); got shape {Y.shape}")
    if Y.shape[0] != M:
        raise ValueError(
            f"{name} must have M={M} rows (one per training point); got shape {Y.shape}"
        )
    squeeze = Y.ndim == 1
    if squeeze:
        Y = Y[:, None]
    if Y.shape[1] == 0:
        raise ValueError(f"{name} must have at least one output column; got shape {Y.shape}")
    _require_finite(Y, name)
    return Y, squeeze


def _check_positive(x, name: str, n: int | None = None):
    """A positive finite scalar (returned as float) or an (n,) array of them."""
    a = _float_array(x, name)
    if a.ndim == 0:
        v = float(a)
        if not np.isfinite(v):
            raise ValueError(f"{name} must be finite; got {v}")
        if v <= 0:
            raise ValueError(f"{name} must be > 0; got {v}")
        return v
    if n is None:
        raise ValueError(f"{name} must be a scalar; got an array of shape {a.shape}")
    if a.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},) (one per output); got shape {a.shape}")
    _require_finite(a, name)
    if (a <= 0).any():
        raise ValueError(f"{name} must be > 0; smallest value is {a.min():.3g}")
    return np.ascontiguousarray(a)


def _check_grid(x, name: str) -> np.ndarray:
    a = np.atleast_1d(_float_array(x, name))
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D sequence; got shape {a.shape}")
    _require_finite(a, name)
    if (a <= 0).any():
        raise ValueError(f"{name} must contain values > 0; smallest value is {a.min():.3g}")
    return a.copy()


def _check_folds(folds, M: int, name: str = "folds") -> list[np.ndarray]:
    if isinstance(folds, (str, bytes)) or not isinstance(folds, Sequence) and not hasattr(folds, "__iter__"):
        raise ValueError(f"{name} must be 'loo' or a list of index arrays; got {folds!r}")
    out = []
    for j, f in enumerate(folds):
        a = np.asarray(f)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"{name}[{j}] must be a non-empty 1-D index array; got shape {a.shape}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name}[{j}] must contain integer indices; got dtype {a.dtype}")
        out.append(a.astype(np.intp))
    if len(out) < 2:
        raise ValueError(f"{name} must contain at least 2 folds; got {len(out)}")
    allidx = np.concatenate(out)
    if allidx.size != M or not np.array_equal(np.sort(allidx), np.arange(M)):
        raise ValueError(
            f"{name} must partition range({M}): every training index exactly once "
            f"(got {allidx.size} indices, {np.unique(allidx).size} distinct)"
        )
    return out


def _check_cv(cv, M: int, name: str = "cv"):
    if isinstance(cv, str):
        if cv.lower() != "loo":
            raise ValueError(f"{name} must be 'loo' or a list of fold index arrays; got {cv!r}")
        if M < 2:
            raise ValueError(f"{name}='loo' needs at least 2 training points; got M={M}")
        return "loo"
    return _check_folds(cv, M, name)


def _cv_label(cv) -> str:
    return "loo" if isinstance(cv, str) else f"{len(cv)}-fold"


# ------------------------------------------------------------------------ linear algebra


def gaussian_kernel(sq_dist, sigma) -> np.ndarray:
    """Gaussian kernel of squared distances.

    Parameters
    ----------
    sq_dist : array_like, any shape (typically (M, M) or (n, M))
        Squared distances ``||x - x'||^2`` (>= 0, finite).
    sigma : float > 0
        Kernel width.

    Returns
    -------
    ndarray, same shape as ``sq_dist``: ``exp(-sq_dist / (2 sigma^2))``.
    """
    sigma = _check_positive(sigma, "sigma")
    D = _float_array(sq_dist, "sq_dist")
    _require_finite(D, "sq_dist")
    if D.size and D.min() < -1e-9 * max(1.0, float(np.abs(D).max())):
        raise ValueError(f"sq_dist must contain squared distances >= 0; smallest value is {D.min():.3g}")
    return _gauss(D, sigma)


def _gauss(D: np.ndarray, sigma: float) -> np.ndarray:
    return np.exp(D * (-0.5 / (sigma * sigma)))


def _eigh_psd(K: np.ndarray, name: str = "K") -> tuple[np.ndarray, np.ndarray]:
    e, Q = scipy.linalg.eigh(K, check_finite=False, driver="evd")
    scale = max(float(np.abs(e).max()), np.finfo(float).tiny)
    if e[0] < -1e-8 * scale:
        raise ValueError(
            f"{name} is not positive semi-definite: smallest eigenvalue {e[0]:.3g} "
            f"(largest {e[-1]:.3g}); a Gaussian kernel of squared Euclidean distances is PSD"
        )
    np.maximum(e, 0.0, out=e)
    return e, np.ascontiguousarray(Q)


def _block_cols(rows: int) -> int:
    return int(min(8192, max(256, _BLOCK_ELEMS // max(rows, 1))))


def _col_blocks(n: int, b: int):
    for s in range(0, n, b):
        yield slice(s, min(n, s + b))


def _centred_block(Y: np.ndarray, offset: np.ndarray, idx) -> np.ndarray:
    """(M, b) contiguous float64 block ``Y[:, idx] - offset[idx]``."""
    return Y[:, idx] - offset[idx]


def _project(Q: np.ndarray, Y: np.ndarray, offset: np.ndarray, cols=None) -> np.ndarray:
    """P = Q^T (Y[:, cols] - offset[cols]), shape (M, len(cols)), in column blocks."""
    M = Q.shape[0]
    n = Y.shape[1] if cols is None else len(cols)
    P = np.empty((M, n))
    QT = Q.T
    for blk in _col_blocks(n, _block_cols(M)):
        idx = blk if cols is None else cols[blk]
        np.matmul(QT, _centred_block(Y, offset, idx), out=P[:, blk])
    return P


def _dual(e, Q, P, lam, out=None) -> np.ndarray:
    """alpha = Q diag(1/(e+lam)) P for scalar lam or per-column lam (L,)."""
    if np.ndim(lam) == 0:
        QD = Q * (1.0 / (e + lam))
        return np.matmul(QD, P, out=out)
    if out is None:
        out = np.empty_like(P)
    for blk in _col_blocks(P.shape[1], _block_cols(P.shape[0])):
        scaled = P[:, blk] / (e[:, None] + lam[None, blk])
        np.matmul(Q, scaled, out=out[:, blk])
    return out


def _loo_map(e, Q, lam: float) -> np.ndarray:
    """C (M, M) in eigen coordinates: LOO residuals R = C @ P (P = Q^T Yc)."""
    QD = Q * (1.0 / (e + lam))
    g = np.einsum("ik,ik->i", Q, QD)  # G_ii = sum_k Q_ik^2 / (e_k + lam)
    return QD / g[:, None]


def _kfold_map(e, Q, lam: float, folds) -> np.ndarray:
    """C (M, M) in eigen coordinates: K-fold held-out residuals R = C @ P.

    Rows F of C are (G_FF)^-1 (Q D)_F, since alpha_F = (Q D)_F P and r_F = (G_FF)^-1 alpha_F.
    """
    QD = Q * (1.0 / (e + lam))
    C = np.empty_like(Q)
    for F in folds:
        G_FF = QD[F] @ Q[F].T
        G_FF = 0.5 * (G_FF + G_FF.T)
        C[F] = np.linalg.solve(G_FF, QD[F])
    return C


def _residual_map(e, Q, lam: float, cv) -> np.ndarray:
    return _loo_map(e, Q, lam) if isinstance(cv, str) else _kfold_map(e, Q, lam, cv)


def _gram_factor(S: np.ndarray) -> np.ndarray:
    """T (M, r) with T T^T = S for a symmetric PSD Gram matrix S (M, M)."""
    w, V = scipy.linalg.eigh(0.5 * (S + S.T), check_finite=False, driver="evd")
    keep = w > 0
    return V[:, keep] * np.sqrt(w[keep])


def _stacked_colsumsq(C_stack: np.ndarray, n: int, X: np.ndarray) -> np.ndarray:
    """For C_stack = [C_0; ...; C_{n-1}] ((n*M, M)) return (n, b) column sums of (C_j X)^2."""
    R = C_stack @ X
    np.multiply(R, R, out=R)
    return R.reshape(n, -1, X.shape[1]).sum(axis=1)


def _lam_chunks(n_lam: int, M: int):
    per = max(1, 2400 // max(M, 1))
    for s in range(0, n_lam, per):
        yield range(s, min(n_lam, s + per))


def _variance(e, Q, K_cross, k_self, lam: float) -> np.ndarray:
    V = K_cross @ Q
    np.multiply(V, V, out=V)
    var = k_self - V @ (1.0 / (e + lam))
    return np.maximum(var, 0.0, out=var)


def _unique_groups(values: np.ndarray):
    """[(value, column indices)] for the distinct entries of a 1-D array (sorted values)."""
    uniq, inv = np.unique(values, return_inverse=True)
    order = np.argsort(inv, kind="stable")
    bounds = np.searchsorted(inv[order], np.arange(len(uniq) + 1))
    return [(float(uniq[j]), order[bounds[j] : bounds[j + 1]]) for j in range(len(uniq))]


# ------------------------------------------------------------------------------ EigenKRR


class EigenKRR:
    """Kernel ridge regression at one fixed kernel from one eigendecomposition.

    Parameters
    ----------
    K : array_like (M, M)
        Symmetric positive semi-definite training kernel matrix (e.g. ``gaussian_kernel``).
    Y : array_like (M, L) or (M,)
        Training targets, one column per output.
    center : bool
        Subtract the per-output training mean (stored as ``offset``); otherwise offset 0.
        CV treats the offset as a constant (see the module docstring).

    Attributes
    ----------
    eigvals : ndarray (M,)
        Eigenvalues ``e`` of K (ascending; round-off negatives set to 0).
    eigvecs : ndarray (M, M)
        Orthonormal eigenvectors ``Q`` (columns).
    offset : ndarray (L,)
        Constant subtracted from each output.
    projected_targets : ndarray (M, L)
        ``P = Q^T (Y - offset)`` (also available as ``P``).
    n_train, n_outputs : int
        ``M`` and ``L``.

    With 1-D ``Y`` the per-sample results (``dual_coef``, residuals) are 1-D (M,).
    """

    def __init__(self, K, Y, center: bool = True):
        K = _float_array(K, "K")
        if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
            raise ValueError(f"K must be a non-empty square (M, M) matrix; got shape {K.shape}")
        _require_finite(K, "K")
        scale = max(1.0, float(np.abs(K).max()))
        asym = float(np.abs(K - K.T).max())
        if asym > 1e-10 * scale:
            raise ValueError(f"K must be symmetric; max |K - K.T| = {asym:.3g}")
        Y, squeeze = _check_targets(Y, K.shape[0])
        e, Q = _eigh_psd(K)
        offset = Y.mean(axis=0) if center else np.zeros(Y.shape[1])
        self._init_parts(e, Q, _project(Q, Y, offset), offset, squeeze)

    @classmethod
    def _from_parts(cls, eigvals, eigvecs, P, offset, squeeze=False) -> "EigenKRR":
        obj = cls.__new__(cls)
        obj._init_parts(eigvals, eigvecs, P, offset, squeeze)
        return obj

    def _init_parts(self, e, Q, P, offset, squeeze):
        self.eigvals = e
        self.eigvecs = Q
        self.projected_targets = P
        self.offset = offset
        self._squeeze = bool(squeeze)
        self._T = None  # cached Gram factor of P

    @property
    def P(self) -> np.ndarray:
        """Alias of ``projected_targets`` (M, L)."""
        return self.projected_targets

    @property
    def n_train(self) -> int:
        return self.eigvecs.shape[0]

    @property
    def n_outputs(self) -> int:
        return self.projected_targets.shape[1]

    def _out(self, A: np.ndarray) -> np.ndarray:
        return A[:, 0] if self._squeeze else A

    def _lam(self, lam, name="lam"):
        return _check_positive(lam, name, self.n_outputs)

    # -- fitting ------------------------------------------------------------------------

    def dual_coef(self, lam) -> np.ndarray:
        """Dual coefficients ``alpha = (K + lam I)^-1 (Y - offset)``.

        lam : float > 0 or ndarray (L,) (one per output).
        Returns (M, L) ((M,) for 1-D Y). Costs one M x M x L multiply; no refactorisation.
        """
        lam = self._lam(lam)
        return self._out(_dual(self.eigvals, self.eigvecs, self.projected_targets, lam))

    def loo_residuals(self, lam) -> np.ndarray:
        """Exact leave-one-out residuals ``y_i - offset - f_{-i}(x_i) = alpha_i / G_ii``.

        lam : float > 0 or ndarray (L,). Returns (M, L) ((M,) for 1-D Y).
        """
        lam = self._lam(lam)
        e, Q, P = self.eigvals, self.eigvecs, self.projected_targets
        if np.ndim(lam) == 0:
            return self._out(_loo_map(e, Q, lam) @ P)
        out = np.empty_like(P)
        Q2 = Q * Q
        for blk in _col_blocks(P.shape[1], _block_cols(P.shape[0])):
            d = 1.0 / (e[:, None] + lam[None, blk])
            alpha = Q @ (P[:, blk] * d)
            np.divide(alpha, Q2 @ d, out=out[:, blk])
        return self._out(out)

    def kfold_residuals(self, lam, folds) -> np.ndarray:
        """Exact K-fold held-out residuals ``r_F = (G_FF)^-1 alpha_F``.

        lam : float > 0 or ndarray (L,).
        folds : list of 1-D integer index arrays partitioning ``range(M)`` (>= 2 folds).
        Returns (M, L) ((M,) for 1-D Y); row i is the residual of sample i when its fold
        was held out: ``y_i - offset - f_{-F}(x_i)``.
        """
        lam = self._lam(lam)
        folds = _check_folds(folds, self.n_train)
        e, Q, P = self.eigvals, self.eigvecs, self.projected_targets
        if np.ndim(lam) == 0:
            return self._out(_kfold_map(e, Q, lam, folds) @ P)
        groups = _unique_groups(lam)
        out = np.empty_like(P)
        if len(groups) <= _MAX_LAM_GROUPS:
            for value, cols in groups:
                out[:, cols] = _kfold_map(e, Q, value, folds) @ P[:, cols]
            return self._out(out)
        # Many distinct lambdas: batched (G_FF)^-1 alpha_F over output blocks.
        for F in folds:
            QF = Q[F]
            b = max(1, _BLOCK_ELEMS // (len(F) * self.n_train))
            for blk in _col_blocks(P.shape[1], b):
                d = 1.0 / (e[:, None] + lam[None, blk])  # (M, b)
                alpha_F = QF @ (P[:, blk] * d)  # (f, b)
                G = (QF[None, :, :] * d.T[:, None, :]) @ QF.T  # (b, f, f)
                r = np.linalg.solve(G, alpha_F.T[:, :, None])[:, :, 0]  # (b, f)
                out[F, blk] = r.T
        return self._out(out)

    # -- cross-validation ---------------------------------------------------------------

    def _gram_T(self) -> np.ndarray:
        if self._T is None:
            P = self.projected_targets
            self._T = _gram_factor(P @ P.T)
        return self._T

    def cv_mse(self, lams, cv="loo", per_output: bool = False) -> np.ndarray:
        """Cross-validated mean squared error for a grid of shared lambdas.

        lams : float or 1-D array (n_lam,) of lambdas > 0.
        cv : ``"loo"`` or a list of fold index arrays partitioning ``range(M)``.
        per_output : bool

        Returns
        -------
        per_output=True : ndarray (n_lam, L)
            Per output, the held-out squared residual averaged over the M samples.
        per_output=False : ndarray (n_lam,)
            The per-output errors summed over outputs (= the CV mean over samples of the
            squared L2 density error, the Fourier basis being orthonormal). Computed with
            the Gram trick: O(M^3) per lambda after one M^2 L Gram matrix.
        """
        lams = _check_grid(lams, "lams")
        cv = _check_cv(cv, self.n_train)
        e, Q, P = self.eigvals, self.eigvecs, self.projected_targets
        M = self.n_train
        if not per_output:
            T = self._gram_T()
            return np.array(
                [np.square(_residual_map(e, Q, lam, cv) @ T).sum() / M for lam in lams]
            )
        out = np.empty((len(lams), P.shape[1]))
        for chunk in _lam_chunks(len(lams), M):
            C = np.vstack([_residual_map(e, Q, lams[j], cv) for j in chunk])
            for blk in _col_blocks(P.shape[1], _block_cols(C.shape[0])):
                out[chunk.start : chunk.stop, blk] = _stacked_colsumsq(C, len(chunk), P[:, blk]) / M
        return out

    def predictive_variance(self, K_cross, k_self_diag, lam) -> np.ndarray:
        """GP posterior variance of the noise-free latent function at test points.

        ``var(x) = k(x, x) - k_*^T (K + lam I)^-1 k_*`` -- the same for every output (the
        GP reading of KRR: prior covariance K, noise variance lam; no output scale is
        fitted). Round-off negatives are set to 0.

        K_cross : (n, M) kernel between test and training points.
        k_self_diag : (n,) kernel of each test point with itself (1 for a Gaussian kernel).
        lam : float > 0.
        Returns (n,).
        """
        M = self.n_train
        Kc = _float_array(K_cross, "K_cross")
        if Kc.ndim != 2 or Kc.shape[1] != M:
            raise ValueError(f"K_cross must have shape (n, {M}); got shape {Kc.shape}")
        _require_finite(Kc, "K_cross")
        ks = _float_array(k_self_diag, "k_self_diag")
        if ks.shape != (Kc.shape[0],):
            raise ValueError(f"k_self_diag must have shape ({Kc.shape[0]},); got shape {ks.shape}")
        _require_finite(ks, "k_self_diag")
        lam = _check_positive(lam, "lam")
        return _variance(self.eigvals, self.eigvecs, Kc, ks, lam)


# ----------------------------------------------------------------------------- CV grid


def kfold_indices(M: int, k: int, seed: int = 0) -> list[np.ndarray]:
    """Shuffled K-fold split of ``range(M)``.

    Returns a list of ``k`` sorted int arrays (sizes differ by at most 1) that partition
    ``range(M)``; deterministic for a given ``seed``.
    """
    for name, v in (("M", M), ("k", k), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise ValueError(f"{name} must be an integer; got {v!r}")
    if M < 2:
        raise ValueError(f"M must be >= 2; got {M}")
    if not 2 <= k <= M:
        raise ValueError(f"k must satisfy 2 <= k <= M={M}; got {k}")
    perm = np.random.default_rng(seed).permutation(M)
    return [np.sort(f) for f in np.array_split(perm, k)]


@dataclass
class CVResult:
    """Result of :func:`cv_grid`.

    Attributes
    ----------
    sigmas : ndarray (n_sigma,)
    lams : ndarray (n_lam,)
    errors : ndarray (n_sigma, n_lam)
        CV mean squared error summed over outputs (per output: squared held-out residual
        averaged over samples). Always 2-D; per-output errors are reduced on the fly.
    per_output : bool
    cv : str
        ``"loo"`` or ``"<k>-fold"``.
    best_sigma, best_lam : float (shared) or ndarray (L,) (per output)
    best_sigma_index, best_lam_index : int (shared) or int ndarray (L,)
    best_error : float (shared, = errors at the best pair) or ndarray (L,) (per output)
    output_errors : ndarray (n_sigma, n_lam, L) or None
        Only when ``cv_grid(..., keep_output_errors=True)`` with ``per_output=True``.
    std_errors : ndarray (n_sigma, n_lam) or None
        Shared choice only: standard error of ``errors``, i.e. the sample standard deviation of
        the per-sample held-out squared errors (summed over outputs) over sqrt(M).
    rule : str
        ``"min"`` or ``"1se"``, how the best pair was chosen (see :func:`cv_grid`).

    Ties are broken towards the first (sigma, lambda) in row-major grid order.
    """

    sigmas: np.ndarray
    lams: np.ndarray
    errors: np.ndarray
    per_output: bool
    cv: str
    best_sigma: float | np.ndarray
    best_lam: float | np.ndarray
    best_sigma_index: int | np.ndarray
    best_lam_index: int | np.ndarray
    best_error: float | np.ndarray
    output_errors: np.ndarray | None = None
    std_errors: np.ndarray | None = None
    rule: str = "min"


def cv_grid(
    sq_dist,
    Y,
    sigmas,
    lams,
    cv="loo",
    per_output: bool = False,
    center: bool = True,
    progress: Callable[[int, int, str], None] | None = None,
    keep_output_errors: bool = False,
    rule: str = "min",
) -> CVResult:
    """Grid search of (sigma, lambda) by exact closed-form cross-validation.

    Parameters
    ----------
    sq_dist : (M, M) squared distances between training descriptors.
    Y : (M, L) or (M,) targets.
    sigmas : (n_sigma,) kernel widths > 0.  lams : (n_lam,) ridges > 0.
    cv : ``"loo"`` or a list of fold index arrays partitioning ``range(M)``
        (see :func:`kfold_indices`).
    per_output : choose (sigma, lambda) separately for every output (cost: one
        M x M x L multiply per grid point, in column blocks) instead of one pair shared
        by all outputs (Gram trick: M^2 L once, then O(M^3) per grid point).
    center : subtract the per-output training mean (a constant during CV).
    progress : optional ``progress(done, total, stage)`` called after each sigma with
        ``total = n_sigma`` and ``stage`` = ``"loo"`` or ``"<k>-fold"``.
    keep_output_errors : with ``per_output``, also keep the (n_sigma, n_lam, L) errors
        (memory n_sigma * n_lam * L * 8 bytes; off by default).
    rule : ``"min"`` takes the pair with the lowest CV error. ``"1se"`` (shared choice only) is
        the one-standard-error rule (Hastie, Tibshirani & Friedman, ESL 7.10): among the pairs
        whose CV error is within one standard error of the minimum (standard error of the
        per-sample held-out squared errors at the minimum), the largest lambda, then the
        largest sigma, i.e. the smoothest model the data cannot tell apart from the best.
        With hundreds of near-duplicate training points LOO's minimum can sit at a vanishing
        lambda that interpolates; ``"1se"`` keeps more ridge where the CV error is flat (on the
        MD sets it lowers the worst test errors, not the mean: docs/reproduce.md).

    Returns
    -------
    CVResult
    """
    D = _check_sq_dist(sq_dist, "sq_dist", square=True)
    M = D.shape[0]
    Y, _ = _check_targets(Y, M)
    sigmas = _check_grid(sigmas, "sigmas")
    lams = _check_grid(lams, "lams")
    cv = _check_cv(cv, M)
    if rule not in ("min", "1se"):
        raise ValueError(f"rule must be 'min' or '1se'; got {rule!r}")
    if rule == "1se" and per_output:
        raise ValueError("rule='1se' needs a shared choice (per_output=False): the per-output errors are "
                         "reduced on the fly, without the per-sample errors a standard error needs")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None; got {type(progress).__name__}")
    label = _cv_label(cv)
    L = Y.shape[1]
    n_s, n_l = len(sigmas), len(lams)
    offset = Y.mean(axis=0) if center else np.zeros(L)
    errors = np.zeros((n_s, n_l))
    if progress is not None:
        progress(0, n_s, label)  # a bar's clock starts here, not after the first (slowest-to-report) sigma

    if not per_output:
        S = np.zeros((M, M))
        for blk in _col_blocks(L, _block_cols(M)):
            Yb = _centred_block(Y, offset, blk)
            S += Yb @ Yb.T
        T = _gram_factor(S)
        std_err = np.zeros((n_s, n_l))
        for i, s in enumerate(sigmas):
            e, Q = _eigh_psd(_gauss(D, s), name=f"kernel matrix at sigma={s:.6g}")
            TQ = Q.T @ T
            for j, lam in enumerate(lams):
                # row r of (residual map) @ TQ holds sample r's held-out residuals, rotated
                per_sample = np.square(_residual_map(e, Q, lam, cv) @ TQ).sum(axis=1)
                errors[i, j] = per_sample.mean()
                std_err[i, j] = per_sample.std(ddof=1) / np.sqrt(M) if M > 1 else 0.0
            if progress is not None:
                progress(i + 1, n_s, label)
        i, j = np.unravel_index(int(np.argmin(errors)), errors.shape)
        if rule == "1se":
            within = errors <= errors[i, j] + std_err[i, j]
            cols = np.flatnonzero(within.any(axis=0))
            j = int(cols[np.argmax(lams[cols])])
            rows = np.flatnonzero(within[:, j])
            i = int(rows[np.argmax(sigmas[rows])])
        return CVResult(
            sigmas=sigmas, lams=lams, errors=errors, per_output=False, cv=label,
            best_sigma=float(sigmas[i]), best_lam=float(lams[j]),
            best_sigma_index=int(i), best_lam_index=int(j), best_error=float(errors[i, j]),
            std_errors=std_err, rule=rule,
        )

    best_err = np.full(L, np.inf)
    best_flat = np.zeros(L, dtype=np.int64)
    out3 = np.empty((n_s, n_l, L)) if keep_output_errors else None
    for i, s in enumerate(sigmas):
        e, Q = _eigh_psd(_gauss(D, s), name=f"kernel matrix at sigma={s:.6g}")
        for chunk in _lam_chunks(n_l, M):
            # Residual maps in original coordinates: R = (C Q^T) Yc.
            C = np.vstack([_residual_map(e, Q, lams[j], cv) @ Q.T for j in chunk])
            for blk in _col_blocks(L, _block_cols(C.shape[0])):
                E = _stacked_colsumsq(C, len(chunk), _centred_block(Y, offset, blk))
                E /= M
                errors[i, chunk.start : chunk.stop] += E.sum(axis=1)
                if out3 is not None:
                    out3[i, chunk.start : chunk.stop, blk] = E
                jmin = E.argmin(axis=0)
                emin = E[jmin, np.arange(E.shape[1])]
                be = best_err[blk]
                bf = best_flat[blk]
                upd = emin < be
                be[upd] = emin[upd]
                bf[upd] = i * n_l + chunk.start + jmin[upd]
        if progress is not None:
            progress(i + 1, n_s, label)
    si, li = np.divmod(best_flat, n_l)
    return CVResult(
        sigmas=sigmas, lams=lams, errors=errors, per_output=True, cv=label,
        best_sigma=sigmas[si], best_lam=lams[li],
        best_sigma_index=si, best_lam_index=li, best_error=best_err,
        output_errors=out3,
    )


# ------------------------------------------------------------------- KernelRidgeModel


@dataclass
class _Group:
    sigma: float
    sel: slice | np.ndarray  # output columns of this group
    eigvals: np.ndarray  # (M,)
    eigvecs: np.ndarray  # (M, M)
    alpha: np.ndarray  # (M, L_g)
    P: np.ndarray | None  # (M, L_g) projected targets, None if not kept


def _as_selector(cols: np.ndarray, L: int):
    if cols.size and cols[-1] - cols[0] + 1 == cols.size and np.all(np.diff(cols) == 1):
        return slice(int(cols[0]), int(cols[-1]) + 1)
    return cols


class KernelRidgeModel:
    """Fitted multi-output Gaussian-kernel ridge regression (ML-HK Eq. 12).

    Each output may have its own sigma and lambda. Outputs are grouped by distinct sigma;
    each group keeps one eigendecomposition of its kernel matrix plus the projected
    targets, so :meth:`set_lambda` never refactorises.

    Attributes (after :meth:`fit` / :meth:`from_arrays`)
    ----------
    sigma_, lam_, offset_ : ndarray (L,)
    dual_coef_ : ndarray (M, L), in output order (assembled when there are several
        sigma groups)
    group_sigmas_ : ndarray (G,) distinct sigmas (ascending)
    group_index_ : int ndarray (L,), the group of each output
    n_train_, n_outputs_ : int
    """

    def __init__(self):
        self._groups: list[_Group] | None = None

    # -- fitting -------------------------------------------------------------------------

    def fit(self, sq_dist_train, Y, sigma, lam, center: bool = True) -> "KernelRidgeModel":
        """Fit.

        sq_dist_train : (M, M) squared distances between training descriptors.
        Y : (M, L) or (M,) targets.
        sigma, lam : float > 0 or ndarray (L,) per output.
        center : subtract the per-output training mean (added back by :meth:`predict`).
        Returns self.
        """
        D = _check_sq_dist(sq_dist_train, "sq_dist_train", square=True)
        M = D.shape[0]
        Y, squeeze = _check_targets(Y, M)
        L = Y.shape[1]
        sigma = _check_positive(sigma, "sigma", L)
        lam = _check_positive(lam, "lam", L)
        offset = Y.mean(axis=0) if center else np.zeros(L)
        if np.ndim(sigma) == 0:
            sig_groups = [(sigma, np.arange(L))]
        else:
            sig_groups = _unique_groups(sigma)
        groups = []
        for s, cols in sig_groups:
            e, Q = _eigh_psd(_gauss(D, s), name=f"kernel matrix at sigma={s:.6g}")
            sel = _as_selector(cols, L)
            full = isinstance(sel, slice) and sel == slice(0, L)
            P = _project(Q, Y, offset, None if full else cols)
            groups.append(_Group(s, sel, e, Q, np.empty_like(P), P))
        self._groups = groups
        self.n_train_, self.n_outputs_ = M, L
        self._squeeze = squeeze
        self.offset_ = offset
        self.sigma_ = np.full(L, sigma) if np.ndim(sigma) == 0 else sigma.copy()
        self.lam_ = np.empty(L)
        self._set_lambda(lam)
        return self

    def _check_fitted(self):
        if self._groups is None:
            raise RuntimeError("KernelRidgeModel is not fitted; call fit() or from_arrays() first")

    def set_lambda(self, lam) -> "KernelRidgeModel":
        """Recompute the dual coefficients for new ridge(s) from the kept eigenbases.

        lam : float > 0 or ndarray (L,). Costs one M x M x L multiply (no refactorisation).
        Needs the projected targets: available after :meth:`fit`, or after
        :meth:`from_arrays` of ``to_arrays(include_projected_targets=True)``.
        Returns self.
        """
        self._check_fitted()
        lam = _check_positive(lam, "lam", self.n_outputs_)
        if any(g.P is None for g in self._groups):
            raise RuntimeError(
                "set_lambda needs the projected targets; this model was loaded without them "
                "(use to_arrays(include_projected_targets=True))"
            )
        self._set_lambda(lam)
        return self

    def _set_lambda(self, lam):
        for g in self._groups:
            lam_g = lam if np.ndim(lam) == 0 else lam[g.sel]
            if np.ndim(lam_g) == 1 and np.all(lam_g == lam_g[0]):
                lam_g = float(lam_g[0])
            _dual(g.eigvals, g.eigvecs, g.P, lam_g, out=g.alpha)
        self.lam_[:] = lam

    # -- prediction ----------------------------------------------------------------------

    def predict(self, sq_dist_cross) -> np.ndarray:
        """Predictions at test points.

        sq_dist_cross : (n, M) squared distances from test to training descriptors.
        Returns (n, L) ((n,) when fitted with 1-D Y).
        """
        self._check_fitted()
        Dc = _check_sq_dist(sq_dist_cross, "sq_dist_cross", n_cols=self.n_train_)
        if len(self._groups) == 1:
            g = self._groups[0]
            out = _gauss(Dc, g.sigma) @ g.alpha
        else:
            out = np.empty((Dc.shape[0], self.n_outputs_))
            for g in self._groups:
                out[:, g.sel] = _gauss(Dc, g.sigma) @ g.alpha
        out += self.offset_
        return out[:, 0] if self._squeeze else out

    def loo_predictions(self) -> np.ndarray:
        """Exact leave-one-out predictions at the training points: row ``i`` is what the model
        fitted without training point ``i`` predicts for it (same sigma, lambda and offset).

        Returns (M, L) ((M,) when fitted with 1-D Y). Costs one M x M x L multiply per sigma
        group; needs the projected targets (see :meth:`set_lambda`).
        """
        self._check_fitted()
        if any(g.P is None for g in self._groups):
            raise RuntimeError("loo_predictions needs the projected targets; this model was loaded without them")
        out = np.empty((self.n_train_, self.n_outputs_))
        for g in self._groups:
            lam = self.lam_[g.sel]
            lam = float(lam[0]) if np.all(lam == lam[0]) else lam
            r = EigenKRR._from_parts(g.eigvals, g.eigvecs, g.P, self.offset_[g.sel]).loo_residuals(lam)
            # the training targets are Q P + offset (Q is a full orthonormal basis)
            out[:, g.sel] = g.eigvecs @ g.P - r + self.offset_[g.sel]
        return out[:, 0] if self._squeeze else out

    def training_targets(self) -> np.ndarray:
        """The targets the model was fitted on, rebuilt as ``Q P + offset`` (exact to rounding).

        Returns (M, L) ((M,) when fitted with 1-D Y). Needs the projected targets (see
        :meth:`set_lambda`); with them, a model file can identify its training data without holding it.
        """
        self._check_fitted()
        if any(g.P is None for g in self._groups):
            raise RuntimeError("training_targets needs the projected targets; this model was loaded without them")
        out = np.empty((self.n_train_, self.n_outputs_))
        for g in self._groups:
            out[:, g.sel] = g.eigvecs @ g.P + self.offset_[g.sel]
        return out[:, 0] if self._squeeze else out

    def variance(self, sq_dist_cross, sq_self=None, sigma=None, lam=None) -> np.ndarray:
        """GP posterior variance of the noise-free latent function, per test point.

        sq_dist_cross : (n, M) squared distances to the training descriptors.
        sq_self : (n,) squared distance of each test descriptor to itself (default 0,
            i.e. k(x, x) = 1).
        sigma : which sigma group (default: the first, smallest sigma).
        lam : ridge (= GP noise variance); default: the lambda of that group's outputs
            if they all share one, else required.
        Returns (n,): ``k(x,x) - k_*^T (K + lam I)^-1 k_*``; see
        :meth:`EigenKRR.predictive_variance`.
        """
        self._check_fitted()
        Dc = _check_sq_dist(sq_dist_cross, "sq_dist_cross", n_cols=self.n_train_)
        if sigma is None:
            g = self._groups[0]
        else:
            sigma = _check_positive(sigma, "sigma")
            hits = [g for g in self._groups if np.isclose(g.sigma, sigma, rtol=1e-12, atol=0)]
            if not hits:
                raise ValueError(
                    f"sigma={sigma!r} is not a sigma of this model; available: "
                    f"{self.group_sigmas_.tolist()}"
                )
            g = hits[0]
        if lam is None:
            lam_g = np.atleast_1d(self.lam_[g.sel])
            if not np.all(lam_g == lam_g[0]):
                raise ValueError(
                    f"lam must be given: outputs with sigma={g.sigma:.6g} use "
                    f"{np.unique(lam_g).size} different lambdas"
                )
            lam = float(lam_g[0])
        else:
            lam = _check_positive(lam, "lam")
        if sq_self is None:
            ks = np.ones(Dc.shape[0])
        else:
            ss = _float_array(sq_self, "sq_self")
            if ss.shape != (Dc.shape[0],):
                raise ValueError(f"sq_self must have shape ({Dc.shape[0]},); got shape {ss.shape}")
            _require_finite(ss, "sq_self")
            if (ss < 0).any():
                raise ValueError("sq_self must contain squared distances >= 0")
            ks = _gauss(ss, g.sigma)
        return _variance(g.eigvals, g.eigvecs, _gauss(Dc, g.sigma), ks, lam)

    # -- attributes ------------------------------------------------------------------------

    @property
    def dual_coef_(self) -> np.ndarray:
        self._check_fitted()
        if len(self._groups) == 1:
            return self._groups[0].alpha
        out = np.empty((self.n_train_, self.n_outputs_))
        for g in self._groups:
            out[:, g.sel] = g.alpha
        return out

    @property
    def group_sigmas_(self) -> np.ndarray:
        self._check_fitted()
        return np.array([g.sigma for g in self._groups])

    @property
    def group_index_(self) -> np.ndarray:
        self._check_fitted()
        idx = np.empty(self.n_outputs_, dtype=np.int64)
        for j, g in enumerate(self._groups):
            idx[g.sel] = j
        return idx

    # -- persistence -----------------------------------------------------------------------

    def to_arrays(self, include_projected_targets: bool = False) -> dict[str, np.ndarray]:
        """Plain numpy arrays (no pickle; ``np.savez``-able) sufficient to predict.

        Keys: ``format_version`` (), ``dual_coef`` (M, L), ``offset`` (L,), ``sigma`` (L,),
        ``lam`` (L,), ``group_index`` (L,) int, ``group_sigmas`` (G,), ``eigvals`` (G, M),
        ``eigvecs`` (G, M, M) (for :meth:`variance`), ``squeeze`` () bool, and with
        ``include_projected_targets`` also ``projected_targets`` (M, L) (in output order,
        each column in its group's eigenbasis; enables :meth:`set_lambda` after loading).
        """
        self._check_fitted()
        d = {
            "format_version": np.array(_FORMAT_VERSION, dtype=np.int64),
            "dual_coef": np.array(self.dual_coef_, copy=True),
            "offset": self.offset_.copy(),
            "sigma": self.sigma_.copy(),
            "lam": self.lam_.copy(),
            "group_index": self.group_index_,
            "group_sigmas": self.group_sigmas_,
            "eigvals": np.stack([g.eigvals for g in self._groups]),
            "eigvecs": np.stack([g.eigvecs for g in self._groups]),
            "squeeze": np.array(self._squeeze),
        }
        if include_projected_targets:
            if any(g.P is None for g in self._groups):
                raise RuntimeError("this model has no projected targets to export")
            P = np.empty((self.n_train_, self.n_outputs_))
            for g in self._groups:
                P[:, g.sel] = g.P
            d["projected_targets"] = P
        return d

    @classmethod
    def from_arrays(cls, arrays) -> "KernelRidgeModel":
        """Rebuild a model from :meth:`to_arrays` output (a dict or ``np.load`` result)."""
        required = ["format_version", "dual_coef", "offset", "sigma", "lam", "group_index",
                    "group_sigmas", "eigvals", "eigvecs"]
        missing = [k for k in required if k not in arrays]
        if missing:
            raise ValueError(f"arrays is missing key(s) {missing}")
        version = int(np.asarray(arrays["format_version"]))
        if version != _FORMAT_VERSION:
            raise ValueError(f"arrays has format_version {version}; expected {_FORMAT_VERSION}")
        alpha = _float_array(arrays["dual_coef"], "arrays['dual_coef']")
        if alpha.ndim != 2:
            raise ValueError(f"arrays['dual_coef'] must be (M, L); got shape {alpha.shape}")
        M, L = alpha.shape
        _require_finite(alpha, "arrays['dual_coef']")
        offset = _float_array(arrays["offset"], "arrays['offset']")
        if offset.shape != (L,):
            raise ValueError(f"arrays['offset'] must have shape ({L},); got {offset.shape}")
        _require_finite(offset, "arrays['offset']")
        sigma = _check_positive(arrays["sigma"], "arrays['sigma']", L)
        lam = _check_positive(arrays["lam"], "arrays['lam']", L)
        gsig = _check_grid(arrays["group_sigmas"], "arrays['group_sigmas']")
        G = gsig.size
        gidx = np.asarray(arrays["group_index"])
        if gidx.shape != (L,) or not np.issubdtype(gidx.dtype, np.integer):
            raise ValueError(f"arrays['group_index'] must be an integer array of shape ({L},)")
        if gidx.min() < 0 or gidx.max() >= G:
            raise ValueError(f"arrays['group_index'] must lie in [0, {G})")
        if not np.array_equal(gsig[gidx], np.atleast_1d(sigma)):
            raise ValueError("arrays['sigma'] does not match arrays['group_sigmas'][group_index]")
        ev = _float_array(arrays["eigvals"], "arrays['eigvals']")
        Qs = _float_array(arrays["eigvecs"], "arrays['eigvecs']")
        if ev.shape != (G, M) or Qs.shape != (G, M, M):
            raise ValueError(
                f"arrays['eigvals'] / ['eigvecs'] must have shapes ({G}, {M}) / ({G}, {M}, {M}); "
                f"got {ev.shape} / {Qs.shape}"
            )
        P_all = None
        if "projected_targets" in arrays:
            P_all = _float_array(arrays["projected_targets"], "arrays['projected_targets']")
            if P_all.shape != (M, L):
                raise ValueError(f"arrays['projected_targets'] must have shape ({M}, {L})")
        groups = []
        for j in range(G):
            cols = np.flatnonzero(gidx == j)
            if cols.size == 0:
                raise ValueError(f"arrays['group_index'] has no output in group {j}")
            sel = _as_selector(cols, L)
            groups.append(_Group(
                float(gsig[j]), sel, ev[j].copy(), np.ascontiguousarray(Qs[j]),
                np.ascontiguousarray(alpha[:, sel]),
                None if P_all is None else np.ascontiguousarray(P_all[:, sel]),
            ))
        obj = cls()
        obj._groups = groups
        obj.n_train_, obj.n_outputs_ = M, L
        obj._squeeze = bool(np.asarray(arrays.get("squeeze", False)))
        obj.offset_ = offset.copy()
        obj.sigma_ = np.atleast_1d(np.asarray(sigma, dtype=float)).copy()
        obj.lam_ = np.atleast_1d(np.asarray(lam, dtype=float)).copy()
        return obj
