"""Molecule geometry: alignment to a reference frame and K-means training selection.

Positions are in Å, shape ``(n_molecules, n_atoms, 3)``; atoms are in the same order in every
molecule of a data set (the descriptor is permutation invariant, but alignment is by index).
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy.spatial.transform import Rotation
from sklearn.cluster import KMeans


def as_positions(positions, name: str = "positions") -> np.ndarray:
    """Validate and return float positions ``(n, n_atoms, 3)`` (a single ``(n_atoms, 3)`` is promoted)."""
    p = np.asarray(positions, dtype=float)
    given = p.shape
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3 or p.shape[-1] != 3 or p.shape[1] < 1:
        raise ValueError(f"{name}: expected shape (n_molecules, n_atoms, 3) in Å, got {given}")
    if not np.all(np.isfinite(p)):
        bad = np.argwhere(~np.isfinite(p).all(axis=(1, 2)))[:, 0]
        raise ValueError(f"{name}: non-finite coordinates in molecule(s) {bad[:10].tolist()}")
    return p


def centre(positions, weights=None) -> np.ndarray:
    """Translate each molecule so its (weighted) centroid is at the origin."""
    p = as_positions(positions)
    w = np.ones(p.shape[1]) if weights is None else np.asarray(weights, float)
    c = np.einsum("a,mad->md", w, p) / w.sum()
    return p - c[:, None, :]


def align(positions, reference, weights=None) -> np.ndarray:
    """Kabsch-align every molecule onto ``reference`` (atoms matched by index).

    positions : ``(n, n_atoms, 3)`` Å; reference : ``(n_atoms, 3)`` Å; weights : ``(n_atoms,)``
    (e.g. masses) for both the centroid and the rotation fit. Returns ``(n, n_atoms, 3)``: each
    molecule centred at the weighted centroid and rotated (proper rotations only) to best match the
    reference, itself centred. Uses :meth:`scipy.spatial.transform.Rotation.align_vectors`.
    """
    p = centre(positions, weights)
    ref = centre(reference, weights)[0]
    if ref.shape != p.shape[1:]:
        raise ValueError(f"align: reference has shape {ref.shape}, molecules have {p.shape[1:]}")
    w = None if weights is None else np.asarray(weights, float)
    out = np.empty_like(p)
    with warnings.catch_warnings():
        # linear molecules (H2) leave the rotation about their axis undetermined: any is fine
        warnings.simplefilter("ignore", UserWarning)
        for i, mol in enumerate(p):  # one 3x3 SVD per molecule
            rot, _ = Rotation.align_vectors(ref, mol, weights=w)
            out[i] = rot.apply(mol)
    return out


def kabsch_rmsd(positions, reference, weights=None) -> np.ndarray:
    """Weighted RMSD after the best proper rotation, for a batch: ``(...,)`` Å.

    positions : ``(..., n_atoms, 3)`` Å, each already centred; reference : ``(n_atoms, 3)`` Å,
    centred. Batched 3x3 SVDs (the same fit as :func:`align`), to score many candidates at once.
    """
    p = np.asarray(positions, float)
    ref = np.asarray(reference, float)
    w = np.ones(ref.shape[0]) if weights is None else np.asarray(weights, float)
    h = np.einsum("a,...ai,aj->...ij", w, p, ref)
    u, s, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))  # reflections are not allowed
    s[..., -1] *= d
    e0 = np.einsum("a,...ai,...ai->...", w, p, p) + np.einsum("a,ai,ai->", w, ref, ref)
    return np.sqrt(np.maximum(e0 - 2 * s.sum(-1), 0.0) / w.sum())


def align_symmetric(positions, reference, permutations, weights=None, tol: float = 0.01,
                    stable: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Align like :func:`align`, also choosing the best ordering of symmetry-equivalent atoms.

    Methyl rotors and ring flips exchange chemically equivalent atoms during MD, so matching atoms by
    index can pair an H with the wrong reference H and tilt the whole fit. ``permutations`` ``(P,
    n_atoms)`` lists the allowed orderings (the molecular graph's automorphisms, identity first):
    molecule ``k`` reordered by ``perm`` has atom ``perm[j]`` in the role of reference atom ``j``.
    Each molecule gets the ordering of least Kabsch RMSD, but keeps its own (the identity) unless
    another ordering is better by more than ``tol`` Å: a symmetric reference (benzene) matches its
    rotated copies almost equally well, and relabelling on such near-ties would only churn. Only
    re-ordered molecules are re-aligned, so already-aligned data stay bit-identical.

    ``stable``: how near-ties are broken, see :func:`best_orderings`.

    Returns ``(aligned (n, n_atoms, 3) Å, chosen (n,) int index into permutations)``.
    """
    p = as_positions(positions)
    perms = check_permutations(permutations, p.shape[1], weights)
    best = best_orderings(p, reference, perms, weights, tol, stable)
    out = p.copy()
    moved = np.flatnonzero(best != 0)
    if len(moved):
        out[moved] = align(p[moved[:, None], perms[best[moved]]], reference, weights)
    return out, best


def check_permutations(permutations, n_atoms: int, weights=None) -> np.ndarray:
    """Validate atom orderings ``(P, n_atoms)``: integer rows, identity first, equal weights exchanged."""
    perms = np.asarray(permutations)
    if perms.ndim != 2 or perms.shape[1] != n_atoms or not np.issubdtype(perms.dtype, np.integer):
        raise ValueError(f"permutations must be integer orderings of shape (P, {n_atoms}), got {perms.shape} "
                         f"{perms.dtype}")
    if not all(np.array_equal(np.sort(q), np.arange(n_atoms)) for q in perms):
        raise ValueError("permutations: every row must be an ordering of the atom indices 0 … n_atoms-1")
    if not np.array_equal(perms[0], np.arange(n_atoms)):
        raise ValueError("permutations: the first ordering must be the identity")
    w = None if weights is None else np.asarray(weights, float)
    if w is not None and not all(np.allclose(w[q], w) for q in perms):
        raise ValueError("permutations: an ordering exchanges atoms of different weight")
    return perms.astype(int)


def best_orderings(positions, reference, permutations, weights=None, tol: float = 0.01,
                   stable: bool = False) -> np.ndarray:
    """Index ``(n,)`` into ``permutations`` of each molecule's best ordering (see :func:`align_symmetric`).

    ``stable=False`` (the rule the shipped MD sets were made with): the least Kabsch RMSD, unless the
    identity is within ``tol`` Å of it. A symmetric reference (ethane's D3d, benzene's D6h) has several
    orderings tied to within 0.001 Å, and the least of them changes with every thermal jiggle.
    ``stable=True``: the first ordering within ``tol`` of the least. The choice then changes only where
    an ordering crosses the edge of that band, not among near-ties. Models use it: an ordering switching
    at every MD step would make the energy jump at every step. Molecules already ordered by either rule
    keep the identity.
    """
    p = as_positions(positions)
    perms = np.asarray(permutations, int)
    w = None if weights is None else np.asarray(weights, float)
    pc = centre(p, w)
    ref = centre(reference, w)[0]
    rmsd = kabsch_rmsd(pc[:, perms], ref, w)  # (n, P)
    if stable:
        return np.argmax(rmsd <= rmsd.min(axis=1, keepdims=True) + tol, axis=1)
    best = np.argmin(rmsd, axis=1)
    best[rmsd[np.arange(len(p)), best] > rmsd[:, 0] - tol] = 0
    return best


def kmeans_select(features, m: int, seed: int = 0, candidates=None, n_init: int | None = None) -> np.ndarray:
    """Pick ``m`` training points spread evenly over feature space.

    Runs scikit-learn's KMeans with ``m`` clusters on ``features[candidates]`` and returns, for
    each centre, the index (into ``features``) of the nearest real point, distinct across centres
    (a centre whose nearest point is taken gets its next nearest). Deterministic for a seed.

    features : ``(n, d)`` (e.g. flattened aligned positions, Å); candidates : indices allowed;
    n_init : K-means restarts (default 10, or 1 for m > 200, where restarts cost minutes and
    barely move the centres).
    returns : ``(m,)`` int indices into ``features``, sorted.
    """
    x = np.asarray(features, dtype=float).reshape(len(features), -1)
    cand = np.arange(len(x)) if candidates is None else np.asarray(candidates, int)
    if not 1 <= m <= len(cand):
        raise ValueError(f"kmeans_select: m must be between 1 and {len(cand)} (the candidates), got {m}")
    if n_init is None:
        n_init = 10 if m <= 200 else 1
    km = KMeans(n_clusters=m, n_init=n_init, random_state=seed).fit(x[cand])
    d2 = ((km.cluster_centers_[:, None, :] - x[cand][None, :, :]) ** 2).sum(-1)  # (m, n_cand)
    chosen: list[int] = []
    taken = np.zeros(len(cand), bool)
    for row in d2:  # m small greedy steps over centres, not over points
        order = np.argsort(row)
        j = order[~taken[order]][0]
        taken[j] = True
        chosen.append(int(cand[j]))
    return np.sort(np.array(chosen))


def bond_length(positions, i: int = 0, j: int = 1) -> np.ndarray:
    """Distance between atoms i and j of each molecule: ``(n,)`` Å."""
    p = as_positions(positions)
    return np.linalg.norm(p[:, i] - p[:, j], axis=-1)
