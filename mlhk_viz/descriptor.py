"""The ML-HK molecular descriptor: an artificial Gaussian potential on a 3D grid, and the
squared grid distances the kernel needs, computed exactly without building any grid.

Brockherde et al. (2017) describe a molecule by

    v(r) = sum_a Z_a exp(-|r - R_a|^2 / (2 gamma^2))

sampled on a rectangular grid of spacing Delta, and use a Gaussian kernel of the squared
Euclidean distance ``||v_i - v_j||^2`` between grid vectors. Each term of ``v`` is a product
of three 1D Gaussians and the grid is a product of three 1D axes, so

    <v_i, v_j> = sum_{a in i, b in j} Z_a Z_b prod_{d=x,y,z} s_d(R_ia[d], R_jb[d]),
    s_d(p, q)  = sum_{x in axis d} exp(-((x - p)^2 + (x - q)^2) / (2 gamma^2)),

and ``||v_i - v_j||^2 = ||v_i||^2 + ||v_j||^2 - 2 <v_i, v_j>``. The per-axis sums ``s_d`` for
all atom pairs of two blocks of molecules are one matrix product per axis, so the cost is
``3 * (n_a * n_atoms) * (n_b * n_atoms) * n_axis`` instead of ``n_a * n_b * nx * ny * nz``, and
nothing of size ``nx * ny * nz`` is ever allocated.

As ``Delta -> 0``, ``Delta**3 * ||v_i - v_j||^2`` tends to the integral of ``(v_i - v_j)^2``,
whose 1D factors are ``sqrt(pi) gamma exp(-(p - q)^2 / (4 gamma^2))``
(:func:`continuum_sq_distances`). By Poisson summation the grid sum differs from the integral
by terms of order ``exp(-pi^2 gamma^2 / Delta^2)``: at the paper-like defaults
(gamma = 0.2 Å, Delta = 0.08 Å) that is ~1e-27, i.e. the two agree to round-off as long as the
grid covers the molecules with enough padding.

Precision: the expansion above subtracts numbers of size ``||v||^2``, so for two molecules whose
potentials nearly coincide the absolute error is ~1e-16 * ||v||^2 and the *relative* error of a
very small distance can be large. The brute-force Gram-matrix route shares this property.

All lengths are in Å. Atomic numbers serve as the charges ``Z``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

__all__ = [
    "GaussianPotential",
    "continuum_sq_distances",
    "grid_axes",
    "potential_on_grid",
    "self_sq_norms",
    "sq_distances",
]

# Padding in units of gamma: a Gaussian is below exp(-32) ≈ 1e-14 of its peak 8 gamma away,
# and the products that enter inner products are squared, ≈ 1e-28, below double round-off.
_DEFAULT_PADDING_GAMMAS = 8.0

# Working-set target for one block of the pairwise products. Large enough that BLAS runs on
# big matrices, small enough that 1000 x 1000 benzene-sized molecules stay far below 1 GB.
_BLOCK_BYTES = 64 * 2**20


# ----------------------------------------------------------------------------- validation


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"{name} must be a positive real number in Å, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0 (Å), got {value!r}")
    return value


def _check_positions(positions, name: str = "positions") -> np.ndarray:
    try:
        pos = np.asarray(positions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a numeric array of shape (n_molecules, n_atoms, 3) in Å: {exc}") from None
    if pos.ndim != 3 or pos.shape[2] != 3:
        raise ValueError(f"{name} must have shape (n_molecules, n_atoms, 3) in Å, got shape {pos.shape}")
    if pos.shape[0] == 0 or pos.shape[1] == 0:
        raise ValueError(f"{name} must contain at least one molecule with at least one atom, got shape {pos.shape}")
    if not np.all(np.isfinite(pos)):
        bad = np.argwhere(~np.isfinite(pos))[0]
        raise ValueError(f"{name} must be finite, got {pos[tuple(bad)]} at index {tuple(int(i) for i in bad)}")
    return pos


def _check_numbers(numbers, n_atoms: int) -> np.ndarray:
    z = np.asarray(numbers)
    if z.ndim != 1:
        raise ValueError(f"numbers must be a 1D array of atomic numbers, one per atom, got shape {z.shape}")
    if len(z) != n_atoms:
        raise ValueError(
            f"numbers must have one entry per atom: got {len(z)} numbers but positions have {n_atoms} atoms"
        )
    if not (np.issubdtype(z.dtype, np.integer) or np.issubdtype(z.dtype, np.floating)) or z.dtype == bool:
        raise ValueError(f"numbers must be integer atomic numbers, got dtype {z.dtype}")
    if not np.all(np.isfinite(z)) or np.any(z != np.round(z)) or np.any(z < 1):
        raise ValueError(f"numbers must be integer atomic numbers >= 1, got {z.tolist()}")
    return z.astype(np.float64)


def _check_axes(axes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(axes, (tuple, list)) or len(axes) != 3:
        raise ValueError(
            "axes must be a tuple of three 1D arrays (x, y, z grid coordinates in Å), e.g. from grid_axes"
        )
    out = []
    for i, ax in enumerate(axes):
        a = np.asarray(ax, dtype=np.float64)
        if a.ndim != 1 or a.size == 0:
            raise ValueError(f"axes[{i}] ({'xyz'[i]}) must be a non-empty 1D array in Å, got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"axes[{i}] ({'xyz'[i]}) must be finite, got {a[~np.isfinite(a)][0]}")
        out.append(a)
    return tuple(out)


def _check_block(block, default: int) -> int:
    if block is None:
        return default
    if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
        raise ValueError(f"block must be a positive integer number of molecules, got {block!r}")
    return int(block)


def _check_pair(positions_a, positions_b, numbers):
    a = _check_positions(positions_a, "positions_a")
    b = None if positions_b is None else _check_positions(positions_b, "positions_b")
    if b is not None and b.shape[1] != a.shape[1]:
        raise ValueError(
            f"positions_b must describe molecules of the same composition as positions_a: "
            f"{b.shape[1]} atoms vs {a.shape[1]}"
        )
    return a, b, _check_numbers(numbers, a.shape[1])


# ----------------------------------------------------------------------------- grid


def grid_axes(positions, gamma: float, spacing: float, padding: float | None = None):
    """Grid axes covering every atom of every molecule, with points at integer multiples of ``spacing``.

    Parameters
    ----------
    positions : array ``(n_molecules, n_atoms, 3)``, Å.
    gamma : Gaussian width, Å (only used for the default padding).
    spacing : grid spacing Delta, Å.
    padding : margin around the atoms per axis, Å; default ``8 * gamma`` (tails below exp(-32)).

    Returns
    -------
    ``(x, y, z)``: three 1D float arrays in Å, ``axis_d = k * spacing`` for consecutive integers
    ``k`` covering ``[min_d - padding, max_d + padding]`` over all molecules and atoms.

    Anchoring the points to multiples of ``spacing`` (rather than to the data's minimum) means
    that a molecule's descriptor does not depend on which data set it is part of, only on
    whether the grid covers it.
    """
    pos = _check_positions(positions)
    gamma = _check_positive(gamma, "gamma")
    spacing = _check_positive(spacing, "spacing")
    if padding is None:
        padding = _DEFAULT_PADDING_GAMMAS * gamma
    elif isinstance(padding, bool) or not isinstance(padding, Real) or not math.isfinite(padding) or padding < 0:
        raise ValueError(f"padding must be a finite number >= 0 (Å), got {padding!r}")
    lo = pos.reshape(-1, 3).min(axis=0) - padding
    hi = pos.reshape(-1, 3).max(axis=0) + padding
    # integer indices first, then one multiplication: the same k gives bit-identical coordinates
    # in every data set
    return tuple(
        np.arange(math.floor(l / spacing), math.ceil(h / spacing) + 1, dtype=np.float64) * spacing
        for l, h in zip(lo, hi)
    )


def potential_on_grid(positions, numbers, gamma: float, axes) -> np.ndarray:
    """Brute-force potential ``v(r) = sum_a Z_a exp(-|r - R_a|^2 / (2 gamma^2))`` on the full grid.

    Every grid point and every atom is evaluated with the full 3D squared distance (no
    factorisation), so this is an independent reference for :func:`sq_distances`, and the way
    to look at one molecule's descriptor. Memory is the ``n_molecules * nx * ny * nz`` float64
    result plus a reused temporary of about 256 MiB (at least one molecule's atoms x grid).

    Parameters
    ----------
    positions : ``(n_molecules, n_atoms, 3)``, Å.
    numbers : ``(n_atoms,)`` atomic numbers, used as charges Z (same for all molecules).
    gamma : Gaussian width, Å.
    axes : ``(x, y, z)`` 1D grid coordinates in Å, e.g. from :func:`grid_axes`.

    Returns
    -------
    ``(n_molecules, nx, ny, nz)`` float64 (units of Z), indexed ``[molecule, ix, iy, iz]``.
    """
    pos = _check_positions(positions)
    z = _check_numbers(numbers, pos.shape[1])
    gamma = _check_positive(gamma, "gamma")
    x, y, w = _check_axes(axes)
    n, n_atoms, _ = pos.shape
    shape = (len(x), len(y), len(w))
    n_points = math.prod(shape)
    out = np.empty((n, n_points))
    # the (block, atoms, grid) exponent array is the big temporary: bound it and reuse it
    block = min(n, max(1, 4 * _BLOCK_BYTES // (8 * n_atoms * n_points)))
    work = np.empty((block, n_atoms, *shape))
    c = -1.0 / (2.0 * gamma * gamma)
    for i0 in range(0, n, block):
        p = pos[i0 : i0 + block]  # (b, A, 3)
        r2 = work[: len(p)]
        ex = c * (x[None, None, :] - p[:, :, 0, None]) ** 2
        ey = c * (y[None, None, :] - p[:, :, 1, None]) ** 2
        ez = c * (w[None, None, :] - p[:, :, 2, None]) ** 2
        np.add((ex[:, :, :, None] + ey[:, :, None, :])[..., None], ez[:, :, None, None, :], out=r2)
        g = np.exp(r2, out=r2).reshape(len(p), n_atoms, n_points)
        out[i0 : i0 + block] = np.matmul(z, g)  # (A,) @ (b, A, P) -> (b, P): sum_a Z_a g_a
    return out.reshape((n, *shape))


# ----------------------------------------------------------------------------- separable sums


def _axis_factors(pos: np.ndarray, z: np.ndarray, gamma: float, axes) -> list[np.ndarray]:
    """Per-axis 1D Gaussians ``exp(-(x - p)^2 / (2 gamma^2))``, rows ``molecule * n_atoms + atom``.

    The x factor carries the charge, so that a product of the three per-axis inner products
    already includes ``Z_a Z_b``. Shapes ``(n * n_atoms, n_axis_d)``.
    """
    n, n_atoms, _ = pos.shape
    c = 1.0 / (2.0 * gamma * gamma)
    flat = pos.reshape(n * n_atoms, 3)
    factors = [np.exp(-c * (ax[None, :] - flat[:, d, None]) ** 2) for d, ax in enumerate(axes)]
    factors[0] *= np.tile(z, n)[:, None]
    return factors


def self_sq_norms(positions, numbers, gamma: float, axes) -> np.ndarray:
    """Exact squared grid norms ``||v_i||^2 = sum_grid v_i(r)^2`` by the separable sums.

    Parameters as in :func:`sq_distances`. Returns ``(n_molecules,)`` float64 (units of Z²);
    memory ``O(n_molecules * n_atoms * (n_atoms + n_axis))``.
    """
    pos = _check_positions(positions)
    z = _check_numbers(numbers, pos.shape[1])
    gamma = _check_positive(gamma, "gamma")
    axes = _check_axes(axes)
    return _self_sq_norms(_axis_factors(pos, z, gamma, axes), *pos.shape[:2])


def _self_sq_norms(factors, n, n_atoms):
    prod = None
    for f in factors:
        f = f.reshape(n, n_atoms, -1)
        s = np.matmul(f, f.transpose(0, 2, 1))  # (n, A, A) per-axis inner products
        prod = s if prod is None else np.multiply(prod, s, out=prod)
    return prod.sum(axis=(1, 2))


def _finish(gram: np.ndarray, norms_a: np.ndarray, norms_b: np.ndarray, symmetric: bool) -> np.ndarray:
    """``||a||^2 + ||b||^2 - 2 <a, b>`` in place, with round-off below zero clipped."""
    d2 = np.multiply(gram, -2.0, out=gram)
    d2 += norms_a[:, None]
    d2 += norms_b[None, :]
    np.maximum(d2, 0.0, out=d2)
    if symmetric:
        # the diagonal is a difference of two numerically different routes to the same norm
        np.fill_diagonal(d2, 0.0)
    return d2


def _block_rows(n_a: int, n_atoms: int, n_b: int, symmetric: bool) -> int:
    rows = max(1, _BLOCK_BYTES // (2 * 8 * n_atoms * n_atoms * n_b))
    if symmetric:
        # only blocks on and above the diagonal are computed: with k row blocks that is a
        # fraction (k + 1) / 2k of the full matrix, so use at least ~8 blocks
        rows = min(rows, max(1, -(-n_a // 8)))
    return rows


def _pairwise(a: np.ndarray, b: np.ndarray | None, block: int, inner) -> np.ndarray:
    """Fill the ``(n_a, n_b)`` matrix of inner products block by block.

    ``inner(i0, i1, j0)`` returns the block ``[i0:i1, j0:]``. For ``b is None`` (b = a) only the
    blocks on and above the diagonal are computed and then mirrored, which nearly halves the
    work and makes the result exactly symmetric.
    """
    n_a = len(a)
    symmetric = b is None
    n_b = n_a if symmetric else len(b)
    gram = np.empty((n_a, n_b))
    for i0 in range(0, n_a, block):
        i1 = min(i0 + block, n_a)
        j0 = i0 if symmetric else 0
        gram[i0:i1, j0:] = inner(i0, i1, j0)
    if symmetric:
        lower = np.tril_indices(n_a, -1)
        gram[lower] = gram.T[lower]
    return gram


def sq_distances(positions_a, positions_b, numbers, gamma: float, axes, block: int | None = None) -> np.ndarray:
    """Exact squared grid distances ``||v_i - v_j||^2`` by per-axis 1D sums, without a 3D grid.

    Equal (to round-off) to ``((V_a[:, None] - V_b[None]) ** 2).sum((2, 3, 4))`` with
    ``V = potential_on_grid(...)`` on the same ``axes``, including any truncation of the
    Gaussians' tails at the grid edges.

    Parameters
    ----------
    positions_a : ``(n_a, n_atoms, 3)``, Å.
    positions_b : ``(n_b, n_atoms, 3)``, Å, same composition; ``None`` means ``b = a`` (then the
        result is exactly symmetric with exact zeros on the diagonal, and about half the work
        is done).
    numbers : ``(n_atoms,)`` atomic numbers, used as charges Z.
    gamma : Gaussian width, Å.
    axes : ``(x, y, z)`` grid coordinates in Å (any rectilinear grid; normally from :func:`grid_axes`).
    block : molecules of ``a`` per block; default chooses it so one block's working set
        (two ``(block * n_atoms, n_b * n_atoms)`` float64 arrays) is at most about 64 MiB
        (and, for ``b = a``, so that there are at least ~8 blocks).

    Returns
    -------
    ``(n_a, n_b)`` float64, units of Z² (multiply by ``spacing**3`` for the integral's units).
    Small negatives from round-off are clipped to 0. Extra memory is
    ``O(block * n_atoms * n_b * n_atoms + (n_a + n_b) * n_atoms * n_axis)``.
    """
    a, b, z = _check_pair(positions_a, positions_b, numbers)
    gamma = _check_positive(gamma, "gamma")
    axes = _check_axes(axes)
    n_atoms = a.shape[1]
    n_b = len(a) if b is None else len(b)
    block = _check_block(block, _block_rows(len(a), n_atoms, n_b, b is None))

    fa = _axis_factors(a, z, gamma, axes)
    fb = fa if b is None else _axis_factors(b, z, gamma, axes)
    norms_a = _self_sq_norms(fa, *a.shape[:2])
    norms_b = norms_a if b is None else _self_sq_norms(fb, *b.shape[:2])

    def inner(i0, i1, j0):
        rows = slice(i0 * n_atoms, i1 * n_atoms)
        cols = slice(j0 * n_atoms, None)
        prod = fa[0][rows] @ fb[0][cols].T
        tmp = np.empty_like(prod)
        for d in (1, 2):
            np.matmul(fa[d][rows], fb[d][cols].T, out=tmp)
            prod *= tmp
        return prod.reshape(i1 - i0, n_atoms, -1, n_atoms).sum(axis=(1, 3))

    gram = _pairwise(a, b, block, inner)
    return _finish(gram, norms_a, norms_b, b is None)


def continuum_sq_distances(positions_a, positions_b, numbers, gamma: float, block: int | None = None) -> np.ndarray:
    """The ``Delta -> 0`` limit of ``spacing**3 * sq_distances``: ``∫ (v_i - v_j)^2 d^3r``.

    Each 1D grid sum becomes ``∫ exp(-((x-p)^2 + (x-q)^2) / (2 gamma^2)) dx
    = sqrt(pi) gamma exp(-(p - q)^2 / (4 gamma^2))``, so
    ``<v_i, v_j> = pi^(3/2) gamma^3 sum_ab Z_a Z_b exp(-|R_ia - R_jb|^2 / (4 gamma^2))``.
    No grid is involved; the cost is one exponential per atom pair.

    Parameters and blocking as in :func:`sq_distances` (no ``axes``). Returns ``(n_a, n_b)``
    float64 in Z² Å³.
    """
    a, b, z = _check_pair(positions_a, positions_b, numbers)
    gamma = _check_positive(gamma, "gamma")
    n_atoms = a.shape[1]
    n_b = len(a) if b is None else len(b)
    block = _check_block(block, _block_rows(len(a), n_atoms, n_b, b is None))
    c = 1.0 / (4.0 * gamma * gamma)
    scale = math.pi**1.5 * gamma**3
    zz = np.outer(z, z)

    def norms(p):
        diff = p[:, :, None, :] - p[:, None, :, :]  # (n, A, A, 3)
        return scale * np.einsum("ab,nab->n", zz, np.exp(-c * np.einsum("nabk,nabk->nab", diff, diff)))

    norms_a = norms(a)
    norms_b = norms_a if b is None else norms(b)
    other = a if b is None else b

    def inner(i0, i1, j0):
        p = a[i0:i1].reshape(-1, 3)
        q = other[j0:].reshape(-1, 3)
        # per-axis differences rather than |p|^2 + |q|^2 - 2 p.q: no cancellation for close atoms
        r2 = (p[:, None, 0] - q[None, :, 0]) ** 2
        tmp = np.empty_like(r2)
        for d in (1, 2):
            np.subtract(p[:, None, d], q[None, :, d], out=tmp)
            r2 += np.square(tmp, out=tmp)
        e = np.exp(np.multiply(r2, -c, out=r2), out=r2).reshape(i1 - i0, n_atoms, -1, n_atoms)
        e *= z[None, :, None, None]
        e *= z[None, None, None, :]
        return scale * e.sum(axis=(1, 3))

    gram = _pairwise(a, b, block, inner)
    return _finish(gram, norms_a, norms_b, b is None)


# ----------------------------------------------------------------------------- public object


@dataclass(frozen=True)
class GaussianPotential:
    """ML-HK artificial Gaussian potential descriptor.

    Attributes
    ----------
    gamma : Gaussian width, Å (default 0.2).
    spacing : grid spacing Delta, Å (default 0.08).

    Validates its parameters on construction and the arrays passed to its methods; errors are
    ``ValueError`` naming the offending argument.
    """

    gamma: float = 0.2
    spacing: float = 0.08

    def __post_init__(self):
        object.__setattr__(self, "gamma", _check_positive(self.gamma, "gamma"))
        object.__setattr__(self, "spacing", _check_positive(self.spacing, "spacing"))

    def axes(self, positions, padding: float | None = None):
        """Grid axes ``(x, y, z)`` in Å covering ``positions`` ``(n, n_atoms, 3)`` Å; see :func:`grid_axes`."""
        return grid_axes(positions, self.gamma, self.spacing, padding)

    def _axes_for(self, positions_a, positions_b, axes):
        if axes is not None:
            return axes
        a = _check_positions(positions_a, "positions_a")
        if positions_b is None:
            return self.axes(a)
        b = _check_positions(positions_b, "positions_b")
        # grid_axes only needs the extent, so all atoms of both sets can go in as one "molecule"
        both = np.concatenate([a.reshape(1, -1, 3), b.reshape(1, -1, 3)], axis=1)
        return self.axes(both)

    def sq_distances(self, positions_a, positions_b, numbers, axes=None, block: int | None = None) -> np.ndarray:
        """Exact squared grid distances ``(n_a, n_b)`` (Z² units); see :func:`sq_distances`.

        ``positions_a`` ``(n_a, n_atoms, 3)`` Å, ``positions_b`` ``(n_b, n_atoms, 3)`` Å or
        ``None`` for ``b = a``; ``numbers`` ``(n_atoms,)``. ``axes=None`` builds axes covering
        both sets; pass fixed axes to compare distances computed in different calls.
        """
        axes = self._axes_for(positions_a, positions_b, axes)
        return sq_distances(positions_a, positions_b, numbers, self.gamma, axes, block)

    def continuum_sq_distances(self, positions_a, positions_b, numbers, block: int | None = None) -> np.ndarray:
        """``Delta -> 0`` limit of ``spacing**3 * sq_distances``, ``(n_a, n_b)`` in Z² Å³."""
        return continuum_sq_distances(positions_a, positions_b, numbers, self.gamma, block)

    def potential_on_grid(self, positions, numbers, axes=None) -> np.ndarray:
        """Materialised potential ``(n, nx, ny, nz)`` on ``axes`` (default: covering ``positions``)."""
        return potential_on_grid(positions, numbers, self.gamma, self.axes(positions) if axes is None else axes)
