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
  A Gram-matrix expansion (``B B^T``) would be as cheap but loses ~5 digits to cancellation with
  the large dual coefficients of small-lambda fits (1e-6 instead of 1e-11 Hartree on the H2O
  test models); the explicit differences keep the round-off of the coefficient route.

Alignment. ``y = R(x) p``, ``p = x - c(x)``, with ``c`` the mass-weighted centroid (weights
``w_a``, total ``W``) and ``R`` the weighted Kabsch rotation onto the centred reference ``r``. ``R`` is defined implicitly by the
optimality condition ``N = sum_a w_a y_a x r_a = 0``. Differentiating it with ``dR = [omega]_x R``
gives ``A omega = sum_a w_a [r_a]_x R dp_a`` with the symmetric 3 x 3
``A = sum_a w_a y_a r_a^T - (sum_a w_a y_a . r_a) I``. The rotation term of ``dE`` is
``tau . omega`` with ``tau = sum_a y_a x G_a`` (``G = df/dy``), which does *not* vanish (the
descriptor of a fixed grid and fixed training set is not rotation invariant, that is why the
model aligns). With ``lambda = A^-1 tau``:

    dE/dx_a = z_a - (w_a / W) sum_b z_b,     z_a = R^T (G_a + w_a lambda x r_a).

``E(x)`` is then exactly invariant under rigid motions of ``x``, so the forces sum to zero and
exert no net torque. The tests check all of it against finite differences, and that dropping
the ``lambda`` term (rotating ``G`` back) is wrong. For a linear molecule ``A`` is singular along
the axis, where ``tau`` vanishes too (the potential is symmetric about it); a pseudo-inverse
handles that.

An :class:`~mlhk_viz.models.MLKS` model (potential -> energy directly) is the special case
``E = sum_i a_i k_i + e0``, ``w_i = a_i k_i (-1 / (2 sigma^2))``, and is supported as well.

Units: the library works in Hartree and Å, ASE in eV and eV/Å (``ase.units.Hartree``).
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_masses, chemical_symbols
from ase.units import Hartree

from .descriptor import self_sq_norms
from .geometry import as_positions, best_orderings
from .models import MLHK, MLKS, load_model

__all__ = [
    "MLHKForceField",
    "MLHKCalculator",
    "Aligner",
    "kabsch",
    "align_vjp",
    "SeparableDescriptor",
    "sq_distances_and_gradient",
    "check_atoms",
]

ROUTES = ("subspace", "coefficients")
FORCE_MODES = ("analytic", "fd")
#: the calculator warns (once) when an atom comes closer than this many gamma to the grid's edge
GRID_MARGIN_GAMMAS = 4.0


# ----------------------------------------------------------------------------- alignment


class Aligner:
    """Weighted Kabsch alignment onto a fixed reference, and its exact pull-back (see the module docstring).

    reference ``(A, 3)`` Å, weights ``(A,)`` (masses). Equal to :func:`mlhk_viz.geometry.align`
    (proper rotations, weighted centroid at the origin, reference centred the same way).
    """

    def __init__(self, reference, weights, rcond: float = 1e-10):
        self.w = np.asarray(weights, float)
        self.wn = self.w / self.w.sum()
        ref = np.asarray(reference, float)
        self.ref = ref - self.wn @ ref  # centred reference r
        self.ref_w = (self.ref * self.w[:, None]).T  # (3, A): H = ref_w @ p = sum_a w_a r_a p_a^T
        self.rcond = rcond

    def __call__(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """``(y, R)``: aligned positions ``(n, A, 3)`` and rotations ``(n, 3, 3)``, ``y = (x - c) @ R.T``."""
        p = np.asarray(positions, float)
        pc = p - np.matmul(self.wn, p)[:, None, :]
        H = np.matmul(self.ref_w, pc)  # (n, 3, 3)
        U, _, Vt = np.linalg.svd(H)
        R = np.matmul(U, Vt)
        flip = np.linalg.det(R) < 0
        if flip.any():  # reflection: flip the least significant direction (H may be rank 2, planar molecules)
            U[flip, :, 2] *= -1.0
            R[flip] = np.matmul(U[flip], Vt[flip])
        return np.matmul(pc, R.transpose(0, 2, 1)), R

    def pullback(self, y, R, G) -> np.ndarray:
        """``dE/dx`` ``(A, 3)`` from ``G = df/dy`` ``(A, 3)`` at one aligned molecule ``y`` with rotation ``R``."""
        r, w = self.ref, self.w
        C = y.T @ G  # tau = sum_a y_a x G_a = vee(C - C^T)
        tau = np.array([C[1, 2] - C[2, 1], C[2, 0] - C[0, 2], C[0, 1] - C[1, 0]])
        Mt = (y.T * w) @ r
        A = Mt + Mt.T
        A *= 0.5  # symmetric at the optimum; remove round-off
        A[np.diag_indices(3)] -= np.trace(Mt)
        lam = _sym_pinv_solve(A, tau, self.rcond)
        L = np.array([[0.0, -lam[2], lam[1]], [lam[2], 0.0, -lam[0]], [-lam[1], lam[0], 0.0]])  # L v = lam x v
        z = (G + w[:, None] * (r @ L.T)) @ R
        return z - np.outer(self.wn, z.sum(axis=0))


def _sym_pinv_solve(A, b, rcond):
    """``A^+ b`` for a symmetric 3 x 3 ``A``: the adjugate when well conditioned, else an eigen pseudo-inverse."""
    a, bb, c, d, e, f = A[0, 0], A[1, 1], A[2, 2], A[0, 1], A[0, 2], A[1, 2]
    adj = np.array([[bb * c - f * f, e * f - d * c, d * f - e * bb],
                    [e * f - d * c, a * c - e * e, d * e - a * f],
                    [d * f - e * bb, d * e - a * f, a * bb - d * d]])
    det = a * adj[0, 0] + d * adj[0, 1] + e * adj[0, 2]
    scale = np.abs(A).max()
    if abs(det) > 1e-6 * scale**3:  # condition number below ~1e6: the closed form is accurate
        return adj @ b / det
    ev, V = np.linalg.eigh(A)
    keep = np.abs(ev) > rcond * np.abs(ev).max()
    return V[:, keep] @ ((V[:, keep].T @ b) / ev[keep])


def kabsch(positions, reference, weights) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Batched weighted Kabsch alignment, equal to :func:`mlhk_viz.geometry.align`.

    positions ``(n, A, 3)`` Å, reference ``(A, 3)`` Å, weights ``(A,)``. Returns
    ``(aligned (n, A, 3), R (n, 3, 3), reference centred (A, 3))`` with
    ``aligned[k] = (positions[k] - centroid_k) @ R[k].T`` (proper rotations).
    """
    al = Aligner(reference, weights)
    y, R = al(positions)
    return y, R, al.ref


def align_vjp(aligned, R, ref_centred, weights, grad_aligned, rcond: float = 1e-10) -> np.ndarray:
    """Pull a gradient back through the Kabsch alignment: ``J_align(x)^T grad`` for one molecule.

    aligned ``(A, 3)`` = ``y``, R ``(3, 3)``, ref_centred ``(A, 3)`` (centred reference),
    weights ``(A,)``, grad_aligned ``(A, 3)`` = ``df/dy``. Returns ``dE/dx`` ``(A, 3)`` (see the
    module docstring). ``A`` is inverted as a pseudo-inverse (eigenvalues below ``rcond`` times the
    largest dropped): for a linear molecule the rotation about the axis is undetermined and
    ``tau`` has no component along it.
    """
    al = Aligner(ref_centred, weights, rcond)
    return al.pullback(np.asarray(aligned, float), np.asarray(R, float), np.asarray(grad_aligned, float))


# ----------------------------------------------------------------------------- descriptor


class SeparableDescriptor:
    """The descriptor's squared distances to a fixed training set, and their gradient.

    Built once per model: the per-axis 1D Gaussians of the training atoms on the model's grid
    axes, stacked as one ``(3, M * A, n_max)`` array (axes shorter than ``n_max`` padded with
    zeros, and query factors padded with points so far away that their Gaussians are exactly 0),
    so that a batch needs one exponential and one batched matrix product per stage, whatever the
    axis. The x factors carry the charges (``Z_b`` on training rows, ``Z_a`` on query rows), so
    every product of one x, one y and one z factor already includes ``Z_a Z_b``.

    train_positions ``(M, A, 3)`` Å (in the model frame), numbers ``(A,)``, gamma Å, axes
    ``(x, y, z)`` 1D grid coordinates Å.
    """

    def __init__(self, train_positions, numbers, gamma: float, axes):
        X = np.asarray(train_positions, float)
        self.M, self.A = X.shape[:2]
        self.z = np.asarray(numbers, float)
        self.gamma = float(gamma)
        self.c = 0.5 / (self.gamma * self.gamma)
        n_max = max(len(a) for a in axes)
        far = 1e3 * (1.0 + max(float(np.abs(a).max()) for a in axes))
        self.axes_pad = np.full((3, n_max), far)
        for d, a in enumerate(axes):
            self.axes_pad[d, : len(a)] = a
        self.train_T = self._factors(X).transpose(0, 2, 1).copy()  # (3, n_max, M*A)
        self.train_norms = self_sq_norms(X, numbers, gamma, axes)

    def _factors(self, y) -> np.ndarray:
        """``(3, n * A, n_max)``: ``exp(-(t - y_ad)^2 / (2 gamma^2))``, x rows times ``Z_a``."""
        n = len(y)
        flat = y.reshape(n * self.A, 3).T  # (3, nA)
        Q = np.exp(-self.c * np.square(self.axes_pad[:, None, :] - flat[:, :, None]))
        Q[0].reshape(n, self.A, -1)[...] *= self.z[None, :, None]
        return Q

    def evaluate(self, y):
        """A :class:`_DescriptorPass` for positions ``y`` ``(n, A, 3)`` in the model frame."""
        return _DescriptorPass(self, np.asarray(y, float))


class _DescriptorPass:
    """Squared distances ``D`` ``(n, M)`` of one batch, keeping what :meth:`gradient` reuses."""

    def __init__(self, desc: SeparableDescriptor, y: np.ndarray):
        self.desc, self.y = desc, y
        n, A, M = len(y), desc.A, desc.M
        self.Q = Q = desc._factors(y)  # (3, nA, n_max)
        self.S = S = np.matmul(Q, desc.train_T)  # (3, nA, MA): per-axis sums S_d(a, (i, b))
        inner = (S[0] * S[1] * S[2]).reshape(n, A, M, A).sum(axis=3).sum(axis=1)  # (n, M) = <v, v_i>
        self.Qm = Qm = Q.reshape(3, n, A, -1)
        self.Ss = Ss = np.matmul(Qm, Qm.transpose(0, 1, 3, 2))  # (3, n, A, A): self sums
        norm_v = (Ss[0] * Ss[1] * Ss[2]).reshape(n, -1).sum(axis=1)
        D = norm_v[:, None] + desc.train_norms[None, :] - 2.0 * inner
        self.D = np.maximum(D, 0.0, out=D)

    def gradient(self, weights) -> np.ndarray:
        """``sum_i weights[k, i] dD_ki / dy_k`` ``(n, A, 3)`` (Z²/Å) for ``weights`` ``(n, M)``.

        ``d phi_a(t) / d y_ad = phi_a(t) (t - y_ad) / gamma^2``;
        ``d<v, v_i>/dy_ad = sum_b S'_d(a, (i, b)) prod_{d' != d} S_d'`` and
        ``d||v||^2/dy_ad = 2 sum_a' S'_d(a, a') prod_{d' != d} S_d'(a, a')`` (charges included).
        """
        desc, y = self.desc, self.y
        n, A, M = len(y), desc.A, desc.M
        wt = np.asarray(weights, float).reshape(n, M, 1)
        flat = y.reshape(n * A, 3).T
        dq = self.Q * ((desc.axes_pad[:, None, :] - flat[:, :, None]) * (2.0 * desc.c))  # (3, nA, n_max)
        S, Ss = self.S, self.Ss
        S_other = np.stack([S[1] * S[2], S[0] * S[2], S[0] * S[1]])  # product of the two other axes
        Ss_other = np.stack([Ss[1] * Ss[2], Ss[0] * Ss[2], Ss[0] * Ss[1]])
        Sp = np.matmul(dq, desc.train_T)  # (3, nA, MA)
        t_cross = np.matmul((Sp * S_other).reshape(3, n, A, M, A).sum(axis=4), wt[None])[..., 0]  # (3, n, A)
        Spself = np.matmul(dq.reshape(3, n, A, -1), self.Qm.transpose(0, 1, 3, 2))  # (3, n, A, A)
        t_self = (Spself * Ss_other).sum(axis=3)  # (3, n, A)
        g = 2.0 * (wt.sum(axis=1)[None] * t_self - t_cross)  # wt.sum: (n, 1)
        return g.transpose(1, 2, 0)


def sq_distances_and_gradient(positions, train_positions, numbers, gamma, axes, weights=None):
    """Squared grid distances to the training molecules and, optionally, their weighted gradient.

    positions ``(n, A, 3)`` Å and train_positions ``(M, A, 3)`` Å (both in the model frame);
    numbers ``(A,)`` charges; gamma Å; axes ``(x, y, z)`` grid coordinates Å.

    Returns ``D`` ``(n, M)`` (clipped at 0, equal to :func:`mlhk_viz.descriptor.sq_distances`
    on the same axes), and if ``weights`` ``(n, M)`` is given also
    ``sum_i weights[k, i] dD_ki / dy_k`` ``(n, A, 3)`` in Z²/Å: the contraction the chain rule
    needs, so no ``(n, M, A, 3)`` array is formed. Cost ``O(n A^2 M n_axis)``.
    For repeated calls build a :class:`SeparableDescriptor` once.
    """
    p = SeparableDescriptor(train_positions, numbers, gamma, axes).evaluate(positions)
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
        self.last_frame = None  # model-frame positions of the last evaluation
        self.last_orderings = None  # (n, A) atom orderings of the last evaluation (models with permutations)
        self.kind = type(model).__name__
        self.numbers = np.asarray(model.numbers_, int)
        self.n_atoms = len(self.numbers)
        self.gamma = float(model.potential_.gamma)
        self.axes = tuple(np.asarray(a, float) for a in model.axes_)
        X = np.asarray(model.X_fit_, float)
        self.n_train = len(X)
        self.descriptor = SeparableDescriptor(X, self.numbers, self.gamma, self.axes)
        self.reference = None if model.reference_ is None else np.asarray(model.reference_, float)
        self.weights = atomic_masses[self.numbers]
        self.aligner = None if self.reference is None else Aligner(self.reference, self.weights)
        perms = getattr(model, "permutations_", None)
        self.permutations = None if perms is None else np.asarray(perms, int)
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
        """``(y, R, ref_centred)``: positions in the model frame (aligned if the model has a reference).

        With the model's ``permutations``, each molecule is first relabelled to its best ordering
        (as in fit and predict); :attr:`last_orderings` keeps the chosen rows for the gradient.
        """
        p = self._positions(positions)
        self.last_orderings = None
        if self.aligner is None:
            return p, None, None
        if self.permutations is not None:
            best = best_orderings(p, self.reference, self.permutations, self.weights, stable=True)
            self.last_orderings = self.permutations[best]  # (n, A): atom perm[j] plays reference atom j
            p = np.take_along_axis(p, self.last_orderings[:, :, None], axis=1)
        y, R = self.aligner(p)
        return y, R, self.aligner.ref

    def grid_margin(self, positions) -> np.ndarray:
        """Distance (Å) of the atom nearest to the edge of the model's grid, in the model frame: ``(n,)``.

        Negative outside the grid. Training atoms are at least 8 gamma inside; below a few gamma
        the descriptor's Gaussians are visibly cut off (far outside the training geometries).
        """
        return self._frame_margin(self.model_frame(positions)[0])

    def _frame_margin(self, y) -> np.ndarray:
        lo = np.array([a[0] for a in self.axes])
        hi = np.array([a[-1] for a in self.axes])
        return np.minimum(y - lo, hi - y).min(axis=(1, 2))

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
        self.last_frame = y
        D = self.descriptor.evaluate(y).D
        return self._energy_terms(self._kernels(D))[0]

    def frame_energy_and_gradient(self, y) -> tuple[np.ndarray, np.ndarray]:
        """``f`` and ``df/dy`` for positions ``y`` ``(n, A, 3)`` already in the model frame (no alignment)."""
        y = self._positions(y)
        self.last_frame = y
        dp = self.descriptor.evaluate(y)
        E, w = self._energy_terms(self._kernels(dp.D))
        return E, dp.gradient(w)

    def energy_and_gradient(self, positions) -> tuple[np.ndarray, np.ndarray]:
        """Energies ``(n,)`` Hartree and analytic gradients ``dE/dx`` ``(n, A, 3)`` Hartree/Å."""
        y, R, ref = self.model_frame(positions)
        E, G = self.frame_energy_and_gradient(y)
        if R is None:
            return E, G
        grad = np.stack([self.aligner.pullback(y[k], R[k], G[k]) for k in range(len(y))])
        if self.last_orderings is not None:  # back to the caller's labels: x[perm[j]] was relabelled atom j
            out = np.empty_like(grad)
            np.put_along_axis(out, self.last_orderings[:, :, None], grad, axis=1)
            grad = out
        return E, grad

    def fd_gradient(self, positions, eps: float = 1e-3, energy=None) -> tuple[float, np.ndarray]:
        """Central finite differences for one molecule ``(A, 3)``: ``(E, dE/dx (A, 3))``.

        The 6N displaced geometries and the undisplaced one go through one batched energy
        evaluation: :meth:`energies`, or ``energy`` (a callable taking ``(n, A, 3)`` Å and returning
        ``(n,)`` Hartree, e.g. ``model.predict``). ``eps`` in Å.
        """
        p = self._positions(positions)
        if len(p) != 1:
            raise ValueError(f"fd_gradient takes one molecule (n_atoms, 3), got {len(p)}")
        p, A = p[0], self.n_atoms
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
    model : fitted :class:`MLHK` (or :class:`MLKS`), a model file path, or an
        :class:`MLHKForceField` (to share one force field, and its precomputation, between calculators).
    forces : ``"analytic"`` (default; exact chain rule, see :mod:`mlhk_viz.dynamics`) or ``"fd"``
        (central finite differences of the ML energy, the paper's way: 6N energies, one batch).
    fd_eps : displacement for ``forces="fd"``, Å (default 0.001, as in the paper).
    route : ``"subspace"`` or ``"coefficients"``, see :class:`MLHKForceField` (ignored when
        ``model`` is a force field already).

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
        self._warned = False
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
        elif self.forces_mode == "analytic":
            e, g = ff.energy_and_gradient(pos[None])
            self._store(float(e[0]), g[0])
        else:
            e, g = ff.fd_gradient(pos, self.fd_eps)
            self._store(e, g)
        if not self._warned:  # the model-frame positions of this very evaluation
            margin = float(ff._frame_margin(ff.last_frame).min())
            if margin < GRID_MARGIN_GAMMAS * ff.gamma:
                self._warned = True
                warnings.warn(f"an atom is {margin:.2f} Å from the edge of the model's grid (gamma = {ff.gamma} Å): "
                              "its Gaussian is cut off there, so the ML energy is extrapolating far outside the "
                              "training geometries (warned once per calculator)", RuntimeWarning, stacklevel=2)

    def _store(self, e_hartree: float, grad_hartree_per_a):
        self.results["energy_hartree"] = e_hartree
        self.results["energy"] = self.results["free_energy"] = e_hartree * Hartree
        if grad_hartree_per_a is not None:
            self.results["forces"] = -np.asarray(grad_hartree_per_a) * Hartree


# ----------------------------------------------------------------------------- MD on the ML-HK energy


def run_md(model, numbers, positions, duration_fs: float = 1000.0, timestep_fs: float = 0.5,
           temperature_K: float = 300.0, friction: float = 0.01, every_fs: float = 5.0, seed: int = 0,
           forces: str = "analytic", on_frame=None, should_stop=None, max_bond_stretch: float = 1.6) -> dict:
    """Langevin MD driven by an ML-HK model (the paper's Fig. 3b protocol by default).

    numbers ``(n_atoms,)``; positions ``(n_atoms, 3)`` Å, the start. Momenta are drawn from
    Maxwell-Boltzmann at ``temperature_K`` (seeded), then ``ase.md.langevin.Langevin`` with
    ``timestep_fs`` and ``friction`` in fs⁻¹ (0.01 fs⁻¹ as in the paper). Every ``every_fs`` a frame
    is recorded and passed to ``on_frame(frame_dict)`` (for a live trace); ``should_stop()`` is polled
    at each frame and ends the run early. The run also stops, flagged ``"blew_up"``, if any bonded
    pair (closer than 1.25x their covalent radii sum at the start) stretches beyond
    ``max_bond_stretch`` times its start length and twice its covalent radii sum, or the energy is
    not finite.

    Returns ``{"times_fs", "positions" (n, n_atoms, 3) Å, "energies_hartree", "kinetic_eV",
    "temperature_K", "status": "finished" | "stopped" | "blew_up", "steps"}``.
    """
    from ase import Atoms
    from ase.data import covalent_radii
    from ase.md.langevin import Langevin
    from ase.units import fs

    from .reference.md import _thermalize

    numbers = np.asarray(numbers, int)
    pos0 = np.asarray(positions, float)
    if pos0.shape != (len(numbers), 3) or not np.all(np.isfinite(pos0)):
        raise ValueError(f"run_md: positions must be finite ({len(numbers)}, 3) Å, got shape {pos0.shape}")
    for name, v in (("duration_fs", duration_fs), ("timestep_fs", timestep_fs), ("every_fs", every_fs),
                    ("temperature_K", temperature_K), ("friction", friction)):
        if not (np.isfinite(v) and v >= 0) or (name in ("duration_fs", "timestep_fs", "every_fs") and v == 0):
            raise ValueError(f"run_md: {name} must be a positive number, got {v!r}")
    stride = max(1, int(round(every_fs / timestep_fs)))
    n_steps = int(round(duration_fs / timestep_fs))
    atoms = Atoms(numbers=numbers, positions=pos0)
    atoms.calc = model if isinstance(model, MLHKCalculator) else MLHKCalculator(model, forces=forces)
    rng = np.random.default_rng(seed)
    _thermalize(atoms, temperature_K, rng)
    dyn = Langevin(atoms, timestep_fs * fs, temperature_K=temperature_K, friction=friction / fs, rng=rng,
                   fixcm=False)
    d0 = np.linalg.norm(pos0[:, None] - pos0[None], axis=-1)
    rc = covalent_radii[numbers]
    i, j = np.nonzero(np.triu(d0 < 1.25 * (rc[:, None] + rc[None]), 1))
    limit = np.maximum(max_bond_stretch * d0[i, j], 2.0 * (rc[i] + rc[j]))  # a compressed start must not trip it
    out = {"times_fs": [], "positions": [], "energies_hartree": [], "kinetic_eV": [], "temperature_K": []}
    status = "finished"

    def record(step):
        e = atoms.calc.results.get("energy_hartree")
        if e is None:
            atoms.get_potential_energy()
            e = atoms.calc.results["energy_hartree"]
        frame = {"time_fs": step * timestep_fs, "positions": atoms.get_positions().copy(), "energy_hartree": float(e),
                 "kinetic_eV": float(atoms.get_kinetic_energy()), "temperature_K": float(atoms.get_temperature())}
        for k, key in (("times_fs", "time_fs"), ("positions", "positions"), ("energies_hartree", "energy_hartree"),
                       ("kinetic_eV", "kinetic_eV"), ("temperature_K", "temperature_K")):
            out[k].append(frame[key])
        if on_frame is not None:
            on_frame(frame)
        p = frame["positions"]
        stretched = np.linalg.norm(p[i] - p[j], axis=-1) > limit
        return bool(np.any(stretched)) or not np.isfinite(frame["energy_hartree"])

    step = 0
    blew = record(0)
    while step < n_steps and not blew:
        dyn.run(min(stride, n_steps - step))
        step += min(stride, n_steps - step)
        blew = record(step)
        if should_stop is not None and should_stop():
            status = "stopped"
            break
    if blew:
        status = "blew_up"
    res = {k: np.asarray(v) for k, v in out.items()}
    res.update(status=status, steps=step)
    return res
