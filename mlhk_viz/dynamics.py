"""Molecular dynamics with a fitted ML-HK model: analytic forces and an ASE calculator.

A fitted :class:`~mlhk_viz.models.MLHK` predicts, for a molecule with (aligned) positions ``y``,

    u(y) = sum_g k_g(y) B_g + o                     (density coefficients, L = 125,000)
    k_g(y)_i = exp(-D_i(y) / (2 sigma_g^2))          (one kernel per sigma group g of outputs)
    E(y) = sum_j a_j exp(-||u(y) - F_j||^2 / (2 s^2)) + e0

with ``D_i`` the squared grid distance between the Gaussian potentials of ``y`` and of training
molecule ``i`` (:mod:`mlhk_viz.descriptor`), ``B_g`` the dual coefficients of the outputs of
group ``g``, ``F_j`` the energy model's training features and ``a_j`` its dual coefficients.
With a ``reference`` the model evaluates ``E(x) = f(align(x))``.

Gradient (chain rule), everything in Hartree and Å:

* ``dE/du = gvec = sum_j a_j K_j (F_j - u) / s^2`` (one L-vector);
* ``c_{g,i} = B_g[i] . gvec[group g]`` (M dot products per group);
* ``w_i = sum_g c_{g,i} k_{g,i} (-1 / (2 sigma_g^2))`` and ``dE/dy = sum_i w_i dD_i/dy``;
* ``D_i = ||v||^2 + ||v_i||^2 - 2 <v, v_i>`` with ``<v, v_i> = sum_ab Z_a Z_b prod_d S_d(a, b)``,
  ``S_d(a, b) = sum_t phi_a(t) psi_b(t)`` per-axis sums of 1D Gaussians; the derivative of a 1D
  Gaussian ``phi_a(t) = exp(-(t - y_ad)^2 / (2 gamma^2))`` is ``phi_a(t) (t - y_ad) / gamma^2``, so
  ``d<v, v_i>/dy_ad = Z_a sum_b Z_b S'_d(a, b) prod_{d' != d} S_d'(a, b)`` (:func:`sq_distances_and_gradient`).

Two equivalent routes evaluate the density/energy part (``route=``):

* ``"coefficients"``: literally the above, one 125,000-vector ``u`` and ``gvec`` per molecule;
* ``"subspace"`` (default): the same numbers in an orthonormal basis ``W_g`` of the span of
  ``B_g`` (at most M vectors; thin QR ``B_g^T = W_g T_g``, once). ``u - o`` lies in that span, so
  ``||u - F_j||^2`` splits into an r-dimensional explicit difference plus a constant computed
  once, and ``B_g[i] . gvec = T_g[:, i] . W_g^T gvec``: an energy or a gradient never touches
  125,000 numbers. The precomputation costs ``O(M^2 L)`` once (well under a second at M = 20).
  A Gram-matrix expansion (``B B^T``) would be as cheap but loses ~6 digits to cancellation with
  the large dual coefficients of small-lambda fits; the explicit differences keep the
  round-off of the coefficient route.

Alignment. ``y = R(x) (x - c(x))`` with ``c`` the mass-weighted centroid and ``R`` the
weighted Kabsch rotation onto the centred reference ``r``. ``R`` is defined implicitly by the
optimality condition ``N = sum_a w_a y_a x r_a = 0``. Differentiating it with ``dR = [omega]_x R``
gives ``A omega = sum_a w_a [r_a]_x R dp_a`` with the symmetric 3 x 3
``A = sum_a w_a y_a r_a^T - (sum_a w_a y_a . r_a) I``. The rotation term of ``dE`` is
``tau . omega`` with ``tau = sum_a y_a x G_a`` (``G = df/dy``), which does *not* vanish (the
descriptor of a fixed grid and fixed training set is not rotation invariant, that is why the
model aligns). With ``lambda = A^-1 tau``:

    dE/dx_a = z_a - (w_a / W) sum_b z_b,     z_a = R^T (G_a + w_a lambda x r_a).

``E(x)`` is then exactly invariant under rigid motions of ``x``, so the forces sum to zero and
exert no net torque. The tests check all of it against central finite differences. For a linear
molecule ``A`` is singular along the axis, where ``tau`` vanishes too; a least-squares solve
handles that.

Units: the library works in Hartree and Å, ASE in eV and eV/Å (``ase.units.Hartree``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_masses, chemical_symbols
from ase.units import Hartree

from .descriptor import self_sq_norms
from .geometry import as_positions
from .models import MLHK, MLKS, load_model

__all__ = [
    "MLHKForceField",
    "MLHKCalculator",
    "kabsch",
    "align_vjp",
    "sq_distances_and_gradient",
    "check_atoms",
]

ROUTES = ("subspace", "coefficients")
FORCE_MODES = ("analytic", "fd")


# ----------------------------------------------------------------------------- alignment


def _cross(a, b) -> np.ndarray:
    """``np.cross`` along the last axis (broadcasting), without its axis-juggling overhead."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    a0, a1, a2 = a[..., 0], a[..., 1], a[..., 2]
    b0, b1, b2 = b[..., 0], b[..., 1], b[..., 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=-1)


def kabsch(positions, reference, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched weighted Kabsch alignment, equal to :func:`mlhk_viz.geometry.align`.

    positions ``(n, A, 3)`` Å, reference ``(A, 3)`` Å, weights ``(A,)``. Returns
    ``(aligned (n, A, 3), R (n, 3, 3), reference centred (A, 3))`` with
    ``aligned[k] = (positions[k] - centroid_k) @ R[k].T`` (proper rotations).
    """
    p = np.asarray(positions, float)
    w = np.asarray(weights, float)
    wn = w / w.sum()
    ref = np.asarray(reference, float)
    ref = ref - wn @ ref
    pc = p - np.matmul(wn, p)[:, None, :]
    H = np.matmul((ref * w[:, None]).T, pc)  # (n, 3, 3): sum_a w_a r_a p_a^T
    U, _, Vt = np.linalg.svd(H)
    d = np.linalg.det(U) * np.linalg.det(Vt)  # +-1
    U[:, :, 2] *= np.where(d < 0, -1.0, 1.0)[:, None]
    R = np.matmul(U, Vt)
    return np.matmul(pc, R.transpose(0, 2, 1)), R, ref


def align_vjp(aligned, R, ref_centred, weights, grad_aligned, rcond: float = 1e-10) -> np.ndarray:
    """Pull a gradient back through the Kabsch alignment: ``J_align(x)^T grad`` for one molecule.

    aligned ``(A, 3)`` = ``y``, R ``(3, 3)``, ref_centred ``(A, 3)``, weights ``(A,)``,
    grad_aligned ``(A, 3)`` = ``df/dy``. Returns ``dE/dx`` ``(A, 3)`` (see the module docstring).
    ``A`` is inverted on its eigenvalues above ``rcond`` times the largest (a pseudo-inverse:
    for a linear molecule the rotation about the axis is undetermined and ``tau`` has no
    component along it).
    """
    y, G, r = aligned, np.asarray(grad_aligned, float), ref_centred
    w = np.asarray(weights, float)
    tau = _cross(y, G).sum(axis=0)
    Mt = (y * w[:, None]).T @ r
    A = Mt - np.trace(Mt) * np.eye(3)
    ev, V = np.linalg.eigh(0.5 * (A + A.T))  # symmetric at the optimum; remove round-off
    keep = np.abs(ev) > rcond * np.abs(ev).max()
    lam = V[:, keep] @ ((V[:, keep].T @ tau) / ev[keep])
    z = (G + w[:, None] * _cross(lam, r)) @ R
    return z - np.outer(w / w.sum(), z.sum(axis=0))


# ----------------------------------------------------------------------------- descriptor


def _factors(pos_flat: np.ndarray, gamma: float, axes) -> list[np.ndarray]:
    """Per-axis 1D Gaussians ``(rows, n_axis_d)`` (no charges)."""
    c = 0.5 / (gamma * gamma)
    return [np.exp(-c * (ax[None, :] - pos_flat[:, d, None]) ** 2) for d, ax in enumerate(axes)]


def _charged(train_factors, numbers, n_train):
    """Training factors with the charges ``Z_b`` on the x axis."""
    return (train_factors[0] * np.tile(numbers, n_train)[:, None], train_factors[1], train_factors[2])


class _DescriptorPass:
    """Squared grid distances of a batch to the training set, keeping what the gradient reuses.

    The x-axis factors carry the charges (``Z_a`` on query rows, ``Z_b`` on training rows), so
    every product of one x factor with a y and a z factor already includes ``Z_a Z_b``.
    """

    def __init__(self, y, charged_train_factors, train_norms, numbers, gamma, axes):
        self.y = y = np.asarray(y, float)
        n, A, _ = y.shape
        z = np.asarray(numbers, float)
        M = len(train_norms)
        self.M, self.gamma, self.axes = M, gamma, axes
        self.tf = tf = charged_train_factors  # (T_x * Z_b, T_y, T_z), rows (M * A)
        Q = _factors(y.reshape(n * A, 3), gamma, axes)
        Q[0] = Q[0] * np.tile(z, n)[:, None]
        self.Q = Q  # per axis (n*A, n_axis); x carries Z_a
        self.S = S = [(q @ t.T).reshape(n, A, M, A) for q, t in zip(Q, tf)]  # x carries Z_a Z_b
        inner = (S[0] * S[1] * S[2]).sum(axis=3).sum(axis=1)  # (n, M) = <v, v_i>
        self.Qm = Qm = [q.reshape(n, A, -1) for q in Q]
        self.Ss = Ss = [np.matmul(q, q.transpose(0, 2, 1)) for q in Qm]  # (n, A, A); x carries Z Z
        norm_v = (Ss[0] * Ss[1] * Ss[2]).sum(axis=2).sum(axis=1)
        D = norm_v[:, None] + np.asarray(train_norms)[None, :] - 2.0 * inner
        self.D = np.maximum(D, 0.0, out=D)

    def gradient(self, weights) -> np.ndarray:
        """``sum_i weights[k, i] dD_ki / dy_k`` ``(n, A, 3)`` (Z²/Å) for ``weights`` ``(n, M)``."""
        y, S, Ss, Q, Qm, M = self.y, self.S, self.Ss, self.Q, self.Qm, self.M
        n, A, _ = y.shape
        wt = np.asarray(weights, float).reshape(n, M, 1)
        inv_g2 = 1.0 / (self.gamma * self.gamma)
        wsum = wt.sum(axis=1)  # (n, 1)
        grad = np.empty((n, A, 3))
        flat = y.reshape(n * A, 3)
        for d, ax in enumerate(self.axes):
            o1, o2 = [e for e in range(3) if e != d]
            # d phi_a(t) / d y_ad = phi_a(t) (t - y_ad) / gamma^2 (times Z_a on x)
            dq = Q[d] * ((ax[None, :] - flat[:, d, None]) * inv_g2)
            # d<v, v_i>/dy_ad = sum_b S'_d(a, (i, b)) S_o1 S_o2 (charges included), contracted with w_i
            Sp = (dq @ self.tf[d].T).reshape(n, A, M, A)
            t_cross = np.matmul((Sp * S[o1] * S[o2]).sum(axis=3), wt)[:, :, 0]  # (n, A)
            # d||v||^2/dy_ad = 2 sum_a' S'_d(a, a') S_o1(a, a') S_o2(a, a')
            Spself = np.matmul(dq.reshape(n, A, -1), Qm[d].transpose(0, 2, 1))
            t_self = 2.0 * (Spself * Ss[o1] * Ss[o2]).sum(axis=2)
            grad[:, :, d] = wsum * t_self - 2.0 * t_cross
        return grad


def sq_distances_and_gradient(positions, train_factors, train_norms, numbers, gamma, axes, weights=None):
    """Squared grid distances to the training molecules and, optionally, their weighted gradient.

    positions ``(n, A, 3)`` Å (already in the model frame); ``train_factors``: per axis
    ``(M * A, n_axis_d)`` 1D Gaussians ``exp(-(t - X)^2 / (2 gamma^2))`` of the training atoms
    (no charges); ``train_norms`` ``(M,)`` = ``||v_i||^2``; ``numbers`` ``(A,)`` charges.

    Returns ``D`` ``(n, M)`` (clipped at 0, equal to :func:`mlhk_viz.descriptor.sq_distances`
    on the same axes), and if ``weights`` ``(n, M)`` is given also
    ``sum_i weights[k, i] dD_ki / dy_k`` ``(n, A, 3)`` in Z²/Å: the contraction the chain rule
    needs, so no ``(n, M, A, 3)`` array is formed. Cost ``O(n A^2 M n_axis)``.
    """
    z = np.asarray(numbers, float)
    tf = _charged(train_factors, z, len(train_norms))
    p = _DescriptorPass(positions, tf, train_norms, numbers, gamma, axes)
    return p.D if weights is None else (p.D, p.gradient(weights))


# ----------------------------------------------------------------------------- force field


@dataclass
class _Group:
    sigma: float
    cols: slice | np.ndarray
    beta: np.ndarray  # (M, L_g)
    proj: np.ndarray | None = None  # (M, r) T^T with beta^T = W T (thin QR)
    shift: np.ndarray | None = None  # (M_E, r) W^T (offset - F_j) on this group's columns


def check_atoms(numbers, model_numbers) -> None:
    """Raise ``ValueError`` unless ``numbers`` are the model's atoms in the model's order."""
    got = np.asarray(numbers, int).reshape(-1)
    want = np.asarray(model_numbers, int).reshape(-1)
    if np.array_equal(got, want):
        return
    sym = lambda zs: " ".join(chemical_symbols[int(v)] for v in zs)  # noqa: E731
    if len(got) == len(want) and np.array_equal(np.sort(got), np.sort(want)):
        raise ValueError(f"the atoms are in a different order than the model's: got [{sym(got)}], the model "
                         f"was fitted on [{sym(want)}] (alignment and the descriptor match atoms by index: "
                         "reorder the atoms)")
    raise ValueError(f"the atoms [{sym(got)}] ({len(got)} atoms) are not the model's composition "
                     f"[{sym(want)}] ({len(want)} atoms)")


class MLHKForceField:
    """Energies and exact gradients of a fitted :class:`MLHK` (or :class:`MLKS`) model.

    Parameters
    ----------
    model : fitted ``MLHK``/``MLKS``, or a path to a model file (:func:`mlhk_viz.models.load_model`).
    route : ``"subspace"`` (default, M-space, see the module docstring) or ``"coefficients"``
        (through the 125,000-vector of predicted coefficients). Both give the same numbers to
        round-off; ``"coefficients"`` is the literal chain rule and serves as a cross-check.

    All inputs are positions in Å (in the user's frame: alignment is applied here when the model
    has a reference); energies in Hartree, gradients in Hartree/Å.
    """

    def __init__(self, model, route: str = "subspace"):
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model)
        if not isinstance(model, (MLHK, MLKS)):
            raise TypeError(f"model must be a fitted MLHK or MLKS (or a model file path), got {type(model).__name__}")
        if not hasattr(model, "X_fit_"):
            raise ValueError(f"this {type(model).__name__} is not fitted yet: call fit first")
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        self.model, self.route = model, route
        self.kind = type(model).__name__
        self.numbers = np.asarray(model.numbers_, int)
        self.n_atoms = len(self.numbers)
        self.gamma = float(model.potential_.gamma)
        self.axes = tuple(np.asarray(a, float) for a in model.axes_)
        X = np.asarray(model.X_fit_, float)
        self.n_train = len(X)
        self.train_factors = _factors(X.reshape(-1, 3), self.gamma, self.axes)
        self._charged_factors = _charged(self.train_factors, self.numbers.astype(float), len(X))
        self.train_norms = self_sq_norms(X, self.numbers, self.gamma, self.axes)
        self.reference = None if model.reference_ is None else np.asarray(model.reference_, float)
        self.weights = atomic_masses[self.numbers]
        if self.kind == "MLKS":
            km = model.model_
            self.groups = self._groups_of(km)
            self.offset = np.asarray(km.offset_, float)
            return
        dm, em = model.density_model_, model.energy_model_
        self.groups = self._groups_of(dm)
        self.offset = np.asarray(dm.offset_, float)  # (L,)
        self.features = np.asarray(model.energy_features_, float)  # (M_E, L)
        self.e_alpha = np.asarray(em.dual_coef_, float)[:, 0]
        self.e_sigma = float(np.asarray(em.sigma_).reshape(-1)[0])
        self.e_offset = float(np.asarray(em.offset_).reshape(-1)[0])
        if route == "subspace":
            self._precompute_subspace()

    @staticmethod
    def _groups_of(km) -> list[_Group]:
        sig = np.asarray(km.group_sigmas_, float)
        beta = np.asarray(km.dual_coef_, float)
        if len(sig) == 1:
            return [_Group(float(sig[0]), slice(None), beta)]
        idx = km.group_index_
        out = []
        for j, s in enumerate(sig):
            cols = np.flatnonzero(idx == j)
            out.append(_Group(float(s), cols, np.ascontiguousarray(beta[:, cols])))
        return out

    def _precompute_subspace(self):
        """Orthonormal bases of each group's coefficient span, and the features in them.

        ``B_g^T = W_g T_g`` (thin QR, ``W_g`` ``(L_g, r)`` orthonormal) so ``u_g - o_g = (k_g T_g^T) W_g^T``:
        the predicted coefficients live in ``o + span(W)``. Then
        ``||u - F_j||^2 = sum_g ||c_g + W_g^T (o_g - F_jg)||^2 + rest_j`` with ``c_g = k_g T_g^T``
        and ``rest_j`` the part of ``o - F_j`` outside the spans (computed once, as an explicit
        difference). Differences are formed explicitly, never as Gram expansions, because the dual
        coefficients of a small-lambda fit are large and ``||u||^2``-type expansions would cancel.
        """
        F, o = self.features, self.offset
        rest = np.zeros(len(F))
        for g in self.groups:
            delta = o[g.cols][None, :] - F[:, g.cols]  # (M_E, L_g)
            # Householder QR of a private Fortran-ordered copy (never overwrite the model's arrays)
            W, T = scipy.linalg.qr(np.array(g.beta.T, order="F"), mode="economic", overwrite_a=True,
                                   check_finite=False)  # (L_g, r), (r, M)
            g.proj = np.ascontiguousarray(T.T)  # (M, r): c_g = k_g @ proj
            g.shift = delta @ W  # (M_E, r): W^T (o_g - F_jg)
            resid = delta - g.shift @ W.T
            rest += np.einsum("jl,jl->j", resid, resid)
        self.rest = rest

    # -- frames -------------------------------------------------------------------
    def _positions(self, positions) -> np.ndarray:
        p = as_positions(positions, "positions")
        if p.shape[1] != self.n_atoms:
            raise ValueError(f"positions have {p.shape[1]} atoms per molecule, the model was fitted on {self.n_atoms}")
        return p

    def model_frame(self, positions):
        """``(y, R, ref_centred)``: positions in the model frame (aligned if the model has a reference)."""
        p = self._positions(positions)
        if self.reference is None:
            return p, None, None
        return kabsch(p, self.reference, self.weights)

    # -- core -----------------------------------------------------------------------
    def _kernels(self, D):
        return [np.exp(D * (-0.5 / (g.sigma * g.sigma))) for g in self.groups]

    def _energy_terms(self, ks):
        """Energies ``(n,)`` and ``w`` ``(n, M)`` = dE/dD_i for kernels ``ks`` (per group, (n, M))."""
        if self.kind == "MLKS":
            E = self.offset[0] + sum(k @ g.beta[:, 0] for k, g in zip(ks, self.groups))
            w = sum(k * g.beta[:, 0][None, :] * (-0.5 / g.sigma**2) for k, g in zip(ks, self.groups))
            return E, w
        s2 = self.e_sigma**2
        n = ks[0].shape[0]
        if self.route == "subspace":
            DF = np.tile(self.rest, (n, 1))  # (n, M_E)
            diffs = []
            for k, g in zip(ks, self.groups):
                c = k @ g.proj  # (n, r)
                dlt = c[:, None, :] + g.shift[None, :, :]  # (n, M_E, r) = W^T (u - F_j)
                DF += (dlt * dlt).sum(axis=2)
                diffs.append(dlt)
            KE = np.exp(DF * (-0.5 / s2))
            E = KE @ self.e_alpha + self.e_offset
            sv = KE * self.e_alpha[None, :] / s2  # (n, M_E)
            # B_g[i] . dE/du = proj_i . W^T gvec, W^T gvec = -sum_j sv_j W^T (u - F_j)
            cs = [-np.matmul(sv[:, None, :], dlt)[:, 0, :] @ g.proj.T for g, dlt in zip(self.groups, diffs)]
        else:
            u = np.tile(self.offset, (n, 1))
            for k, g in zip(ks, self.groups):
                if isinstance(g.cols, slice):
                    u += k @ g.beta
                else:
                    u[:, g.cols] += k @ g.beta
            F = self.features
            DF = (np.einsum("nl,nl->n", u, u)[:, None] + np.einsum("jl,jl->j", F, F)[None, :] - 2.0 * u @ F.T)
            np.maximum(DF, 0.0, out=DF)
            KE = np.exp(DF * (-0.5 / s2))
            E = KE @ self.e_alpha + self.e_offset
            sv = KE * self.e_alpha[None, :] / s2
            gvec = sv @ F - sv.sum(axis=1)[:, None] * u  # dE/du (n, L)
            cs = [gvec[:, g.cols] @ g.beta.T for g in self.groups]
        w = sum(c * k * (-0.5 / g.sigma**2) for c, k, g in zip(cs, ks, self.groups))
        return E, w

    def energies(self, positions) -> np.ndarray:
        """ML energies ``(n,)`` Hartree of a batch ``(n, A, 3)`` Å (equal to ``model.predict``)."""
        y, _, _ = self.model_frame(positions)
        D = _DescriptorPass(y, self._charged_factors, self.train_norms, self.numbers, self.gamma, self.axes).D
        return self._energy_terms(self._kernels(D))[0]

    def frame_energy_and_gradient(self, y) -> tuple[np.ndarray, np.ndarray]:
        """``f`` and ``df/dy`` for positions ``y`` ``(n, A, 3)`` already in the model frame (no alignment)."""
        y = self._positions(y)
        dp = _DescriptorPass(y, self._charged_factors, self.train_norms, self.numbers, self.gamma, self.axes)
        E, w = self._energy_terms(self._kernels(dp.D))
        return E, dp.gradient(w)

    def energy_and_gradient(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """Energies ``(n,)`` Hartree and analytic gradients ``dE/dx`` ``(n, A, 3)`` Hartree/Å."""
        y, R, ref = self.model_frame(positions)
        E, G = self.frame_energy_and_gradient(y)
        if R is None:
            return E, G
        grad = np.stack([align_vjp(y[k], R[k], ref, self.weights, G[k]) for k in range(len(y))])
        return E, grad

    def fd_gradient(self, positions, eps: float = 1e-3, energy=None) -> tuple[float, np.ndarray]:
        """Central finite differences for one molecule ``(A, 3)``: ``(E, dE/dx (A, 3))``.

        The 6N displaced geometries and the undisplaced one go through one batched energy
        evaluation: :meth:`energies`, or ``energy`` (a callable taking ``(n, A, 3)`` Å and returning
        ``(n,)`` Hartree, e.g. ``model.predict``). ``eps`` in Å.
        """
        p = self._positions(positions)[0]
        A = self.n_atoms
        disp = np.zeros((2 * 3 * A + 1, A, 3))
        disp[:] = p
        for a in range(A):
            for d in range(3):
                disp[2 * (3 * a + d), a, d] += eps
                disp[2 * (3 * a + d) + 1, a, d] -= eps
        e = self.energies(disp) if energy is None else np.asarray(energy(disp), float)
        grad = ((e[0:-1:2] - e[1:-1:2]) / (2.0 * eps)).reshape(A, 3)
        return float(e[-1]), grad


# ----------------------------------------------------------------------------- ASE calculator


class MLHKCalculator(Calculator):
    """ASE calculator for a fitted ML-HK model: energy (eV) and forces (eV/Å).

    Parameters
    ----------
    model : fitted :class:`MLHK` (or :class:`MLKS`) or a model file path.
    forces : ``"analytic"`` (default; exact chain rule, see :mod:`mlhk_viz.dynamics`) or ``"fd"``
        (central finite differences of the ML energy, the paper's way: 6N energies, one batch).
    fd_eps : displacement for ``forces="fd"``, Å (default 0.001, as in the paper).
    route : ``"subspace"`` or ``"coefficients"``, see :class:`MLHKForceField`.

    The atoms must be the model's atoms in the model's order (``ValueError`` otherwise);
    periodic boundary conditions are not supported. ``results['energy_hartree']`` keeps the
    energy in Hartree as well.
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    name = "mlhk"

    def __init__(self, model, forces: str = "analytic", fd_eps: float = 1e-3, route: str = "subspace", **kwargs):
        if forces not in FORCE_MODES:
            raise ValueError(f"forces must be one of {FORCE_MODES}, got {forces!r}")
        if not (np.isfinite(fd_eps) and fd_eps > 0):
            raise ValueError(f"fd_eps must be a positive length in Å, got {fd_eps!r}")
        self.forcefield = model if isinstance(model, MLHKForceField) else MLHKForceField(model, route=route)
        self.forces_mode, self.fd_eps = forces, float(fd_eps)
        super().__init__(**kwargs)

    @property
    def model(self):
        return self.forcefield.model

    def check_atoms(self, atoms) -> None:
        check_atoms(atoms.numbers, self.forcefield.numbers)
        if np.any(atoms.pbc):
            raise ValueError("MLHKCalculator describes isolated molecules: "
                             "periodic boundary conditions are not supported")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.check_atoms(self.atoms)
        pos = self.atoms.get_positions()
        ff = self.forcefield
        if "forces" not in properties:
            e = float(ff.energies(pos[None])[0])
            self._store(e, None)
            return
        if self.forces_mode == "analytic":
            e, g = ff.energy_and_gradient(pos[None])
            self._store(float(e[0]), g[0])
        else:
            e, g = ff.fd_gradient(pos, self.fd_eps)
            self._store(e, g)

    def _store(self, e_hartree: float, grad_hartree_per_a):
        self.results["energy_hartree"] = e_hartree
        self.results["energy"] = self.results["free_energy"] = e_hartree * Hartree
        if grad_hartree_per_a is not None:
            self.results["forces"] = -np.asarray(grad_hartree_per_a) * Hartree
