"""The density basis: a real, orthonormal Fourier basis in a cubic box.

The box is ``[-L/2, L/2)^3`` in bohr, centred on the molecule (the paper's L = 20 bohr).
Each axis carries the 50 functions of a real 50-point DFT, orthonormal on ``[-L/2, L/2)``::

    index 0        : 1/sqrt(L)
    index k, 1..25 : sqrt(2/L) cos(2 pi k x / L)
    index 25 + k   : sqrt(2/L) sin(2 pi k x / L),   k = 1..24

and the 3D basis is their tensor product, ``Phi_abc(r) = phi_a(x) phi_b(y) phi_c(z)``, with
125,000 functions for 50 per axis. Because the basis is orthonormal, the Euclidean distance
between coefficient vectors *is* the L2 distance between densities (the paper's Eq. 11), and
the electron count is exact from one coefficient: ``N_e = u_000 * L**1.5``.

Coefficients are stored flat, C order over ``(a, b, c)``: shape ``(..., n**3)``.
Densities are in electrons/bohr³.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: the paper's box edge (bohr) and basis functions per axis
BOX_BOHR = 20.0
N_PER_AXIS = 50


@dataclass(frozen=True)
class FourierBasis:
    """Real orthonormal Fourier basis in the cube ``[-L/2, L/2)^3`` (bohr).

    Parameters
    ----------
    box : float
        Box edge L in bohr.
    n : int
        Basis functions per axis (even); ``n**3`` coefficients in all.
    """

    box: float = BOX_BOHR
    n: int = N_PER_AXIS

    def __post_init__(self):
        if not (np.isfinite(self.box) and self.box > 0):
            raise ValueError(f"FourierBasis: box must be a positive length in bohr, got {self.box!r}")
        if int(self.n) != self.n or self.n < 2 or self.n % 2:
            raise ValueError(f"FourierBasis: n must be an even integer >= 2, got {self.n!r}")

    @property
    def size(self) -> int:
        """Number of coefficients, ``n**3``."""
        return self.n**3

    @property
    def kmax(self) -> int:
        """Highest frequency kept (cosine at n/2, sine at n/2 - 1)."""
        return self.n // 2

    def frequencies(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-axis integer frequency k and kind (0 cos, 1 sin) of each function: ``(n,)`` each."""
        h = self.kmax
        k = np.concatenate([np.arange(h + 1), np.arange(1, h)])
        kind = np.concatenate([np.zeros(h + 1, int), np.ones(h - 1, int)])
        return k, kind

    def axis_functions(self, x) -> np.ndarray:
        """The 1D functions at points ``x`` (bohr, any shape ``(m,)``): ``(m, n)``."""
        x = np.asarray(x, dtype=float)
        k, kind = self.frequencies()
        phase = 2.0 * np.pi * np.outer(x, k) / self.box
        f = np.where(kind == 0, np.cos(phase), np.sin(phase)) * np.sqrt(2.0 / self.box)
        f[:, 0] = 1.0 / np.sqrt(self.box)
        return f

    def grid_axis(self, points: int) -> np.ndarray:
        """The periodic box grid ``x_j = -L/2 + j L / points`` (bohr): ``(points,)``."""
        return -self.box / 2 + np.arange(points) * (self.box / points)

    # -- coefficients -> densities -------------------------------------------------
    def evaluate(self, coefficients, x, y, z) -> np.ndarray:
        """Density on the rectangular grid spanned by 1D axes ``x, y, z`` (bohr).

        coefficients : ``(n**3,)`` or ``(m, n**3)``
        returns : ``(len(x), len(y), len(z))`` or ``(m, len(x), len(y), len(z))``, e/bohr³.
        Separable: three matrix products, no 3D loop.
        """
        c = np.asarray(coefficients, dtype=float)
        single = c.ndim == 1
        c = c.reshape(-1, self.n, self.n, self.n)
        fx, fy, fz = (self.axis_functions(a) for a in (x, y, z))
        out = np.einsum("mabc,zc->mabz", c, fz, optimize=True)
        out = np.einsum("mabz,yb->mayz", out, fy, optimize=True)
        out = np.einsum("mayz,xa->mxyz", out, fx, optimize=True)
        return out[0] if single else out

    def to_grid(self, coefficients, shape=(96, 96, 96)) -> np.ndarray:
        """Density on the periodic box grid of ``shape`` points (see :meth:`grid_axis`)."""
        shape = tuple(int(s) for s in np.broadcast_to(shape, (3,)))
        return self.evaluate(coefficients, *(self.grid_axis(s) for s in shape))

    # -- densities -> coefficients -------------------------------------------------
    def from_grid(self, density) -> np.ndarray:
        """Coefficients of a density sampled on the periodic box grid.

        density : ``(nx, ny, nz)`` or ``(m, nx, ny, nz)`` on :meth:`grid_axis` points, each
        axis with at least ``n`` points. The periodic trapezoid rule is the exact projection
        for any density band-limited below ``points - n/2`` per axis.
        returns : ``(n**3,)`` or ``(m, n**3)``.
        """
        d = np.asarray(density, dtype=float)
        single = d.ndim == 3
        d = d.reshape((-1,) + d.shape[-3:])
        if min(d.shape[1:]) < self.n:
            raise ValueError(f"from_grid: the grid {d.shape[1:]} is coarser than the basis ({self.n} per axis)")
        w = [self.axis_functions(self.grid_axis(s)) * (self.box / s) for s in d.shape[1:]]
        c = np.einsum("mxyz,zc->mxyc", d, w[2], optimize=True)
        c = np.einsum("mxyc,yb->mxbc", c, w[1], optimize=True)
        c = np.einsum("mxbc,xa->mabc", c, w[0], optimize=True)
        c = c.reshape(len(d), -1)
        return c[0] if single else c

    # -- integrals -----------------------------------------------------------------
    def electron_count(self, coefficients) -> np.ndarray | float:
        """Exact integral of the density over the box: ``u_000 * L**1.5`` (electrons)."""
        c = np.asarray(coefficients, dtype=float)
        return c[..., 0] * self.box**1.5

    def l1_error(self, a, b, shape=(96, 96, 96)) -> np.ndarray | float:
        """Relative L1 distance ``∫|n_a - n_b| / ∫n_b`` on a box grid of ``shape``."""
        ga, gb = self.to_grid(a, shape), self.to_grid(b, shape)
        ax = tuple(range(-3, 0))
        return np.abs(ga - gb).sum(axis=ax) / np.abs(gb).sum(axis=ax)


def _published_axis_factors(basis: FourierBasis):
    """Per-axis map from the published packing to the native basis (see :func:`from_published`).

    Published per axis: ``[Re F_0 .. Re F_{h-1}, Im F_0 .. Im F_{h-1}]`` with ``h = n/2`` and
    ``F_k = sum_j f(x_j) exp(-2 pi i k j / N)`` on a corner-origin grid ``x_j = j L / N``.
    With the molecule at the box centre, shifting to our centred box multiplies mode k by
    ``(-1)^k``; ``Im F_k = -sum f sin``. Returns ``(src, dst, factor)`` index arrays so that
    ``native[dst] = factor * published[src]`` up to the grid normalisation ``L/N``.
    """
    h = basis.kmax
    k = np.arange(h)
    sign = (-1.0) ** k
    norm_cos = np.where(k == 0, 1.0 / np.sqrt(basis.box), np.sqrt(2.0 / basis.box))
    # cosines: published index k (real part) -> native index k
    src = [k]
    dst = [k]
    fac = [sign * norm_cos]
    # sines: published index h + k (imag part), k = 1..h-1 -> native index h + k
    ks = np.arange(1, h)
    src.append(h + ks)
    dst.append(h + ks)
    fac.append(-((-1.0) ** ks) * np.sqrt(2.0 / basis.box))
    return np.concatenate(src), np.concatenate(dst), np.concatenate(fac)


def _axis_matrix_published_to_native(basis: FourierBasis) -> np.ndarray:
    src, dst, fac = _published_axis_factors(basis)
    m = np.zeros((basis.n, basis.n))
    m[dst, src] = fac
    return m


def from_published(packed, n_electrons, basis: FourierBasis = FourierBasis()) -> np.ndarray:
    """Native coefficients from the paper's published ``dft_densities.npy`` packing.

    packed : ``(m, n**3)`` published coefficients (per axis, in the order last, middle, first:
        real FFT, keep ``n/2`` lowest frequencies, real parts then imaginary parts).
    n_electrons : ``(m,)`` or scalar, valence electrons of each molecule; fixes the grid
        normalisation (the published files do not state their grid size), so the returned
        densities integrate to exactly ``n_electrons``.
    returns : ``(m, n**3)``. The native cosine at frequency n/2 is not in the published packing
        and is set to 0; the published ``Im F_0`` (always 0) is dropped.

    Assumes the molecule sits at the centre of a corner-origin box, as in the paper's data.
    """
    p = np.asarray(packed, dtype=float)
    single = p.ndim == 1
    p = p.reshape(-1, basis.n, basis.n, basis.n)
    a = _axis_matrix_published_to_native(basis)
    c = np.einsum("ia,jb,kc,mabc->mijk", a, a, a, p, optimize=True).reshape(len(p), -1)
    scale = np.broadcast_to(np.asarray(n_electrons, float), (len(c),)) / basis.electron_count(c)
    c *= scale[:, None]
    return c[0] if single else c


def to_published(coefficients, grid_points: int = 200, basis: FourierBasis = FourierBasis()) -> np.ndarray:
    """The published packing of native coefficients, as an FFT on ``grid_points`` per axis would give.

    Inverse of :func:`from_published` except for the native cosine at frequency n/2, which the
    published packing cannot hold. ``(m, n**3)`` or ``(n**3,)`` in, same shape out.
    """
    c = np.asarray(coefficients, dtype=float)
    single = c.ndim == 1
    c = c.reshape(-1, basis.n, basis.n, basis.n)
    a = _axis_matrix_published_to_native(basis)
    # a is diagonal-like (a permutation times factors) on the kept modes: its pseudo-inverse
    # maps native back to published, leaving Im F_0 and the n/2 cosine at zero.
    b = np.linalg.pinv(a) * (grid_points / basis.box)
    p = np.einsum("ia,jb,kc,mabc->mijk", b, b, b, c, optimize=True).reshape(len(c), -1)
    return p[0] if single else p
