import numpy as np
import pytest
from ase.data import atomic_masses
from scipy.spatial.transform import Rotation

from mlhk_viz.descriptor import GaussianPotential
from mlhk_viz.geometry import align, centre, kmeans_select
from mlhk_viz.reference.geometries import H2O_R0, H2O_THETA0, h2, h2o, water

NUM = np.array([8, 1, 1])
W = atomic_masses[NUM]


def test_alignment_undoes_rotation_and_translation():
    _, pos = h2o(20, seed=3)
    ref = water(H2O_R0, H2O_R0, H2O_THETA0)
    rots = Rotation.random(20, random_state=1)
    moved = np.stack([rots[i].apply(p) for i, p in enumerate(pos)]) + np.random.default_rng(2).normal(size=(20, 1, 3)) * 3
    np.testing.assert_allclose(align(moved, ref, W), pos, atol=1e-10)


def test_aligned_molecules_give_the_same_descriptor():
    numbers, pos = h2o(6, seed=4)
    ref = water(H2O_R0, H2O_R0, H2O_THETA0)
    moved = np.stack([Rotation.random(random_state=i).apply(p) + i for i, p in enumerate(pos)])
    pot = GaussianPotential(0.2, 0.08)
    axes = pot.axes(pos)
    d = pot.sq_distances(align(moved, ref, W), pos, numbers, axes)
    scale = pot.sq_distances(pos, None, numbers, axes).max()
    assert np.abs(np.diag(d)).max() < 1e-9 * scale
    # without alignment the descriptor is not invariant: the test above can fail
    assert np.abs(np.diag(pot.sq_distances(moved, pos, numbers, pot.axes(np.concatenate([pos, moved]))))).max() > 1e-3 * scale


def test_h2_is_an_ordered_scan_along_x():
    numbers, pos = h2()
    r = np.linalg.norm(pos[:, 1] - pos[:, 0], axis=1)
    assert len(r) == 150 and r[0] == pytest.approx(0.5) and r[-1] == pytest.approx(1.5)
    assert np.all(np.diff(r) > 0)
    np.testing.assert_allclose(pos.mean(axis=1), 0, atol=1e-15)


def test_h2o_ranges():
    _, pos = h2o(350)
    r1 = np.linalg.norm(pos[:, 1] - pos[:, 0], axis=1)
    v1, v2 = pos[:, 1] - pos[:, 0], pos[:, 2] - pos[:, 0]
    th = np.degrees(np.arccos(np.einsum("ij,ij->i", v1, v2) / np.linalg.norm(v1, axis=1) / np.linalg.norm(v2, axis=1)))
    assert r1.min() >= 0.97 - 0.075 - 1e-12 and r1.max() <= 0.97 + 0.075 + 1e-12
    assert th.min() >= 104.2 - 8.59 - 1e-9 and th.max() <= 104.2 + 8.59 + 1e-9
    com = np.einsum("a,mad->md", W, pos) / W.sum()
    np.testing.assert_allclose(com, 0, atol=1e-12)


def test_kmeans_selection_deterministic_distinct_and_spread():
    _, pos = h2()
    feats = pos.reshape(len(pos), -1)
    cand = np.arange(0, 150, 2)
    a = kmeans_select(feats, 10, seed=5, candidates=cand)
    b = kmeans_select(feats, 10, seed=5, candidates=cand)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 10 and set(a.tolist()) <= set(cand.tolist())
    # on a 1D scan, K-means spreads the points: gaps are within a factor ~2 of each other
    r = np.linalg.norm(pos[a, 1] - pos[a, 0], axis=1)
    gaps = np.diff(np.sort(r))
    assert gaps.max() < 2.5 * gaps.min()
    with pytest.raises(ValueError, match="between 1 and"):
        kmeans_select(feats, 0)


def _brute_best(mol, ref, perms, w):
    """Independent: scipy's Kabsch for every ordering, the smallest RMSD."""
    from scipy.spatial.transform import Rotation

    best = []
    for q in perms:
        p = mol[q] - np.average(mol[q], axis=0, weights=w)
        r = ref - np.average(ref, axis=0, weights=w)
        rot, _ = Rotation.align_vectors(r, p, weights=w)
        best.append(np.sqrt(np.average(((rot.apply(p) - r) ** 2).sum(1), weights=w)))
    return np.array(best)


def test_kabsch_rmsd_equals_scipy_alignment():
    from mlhk_viz.geometry import kabsch_rmsd
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(6, 3))
    w = rng.uniform(1, 16, 6)
    mols = ref + rng.normal(scale=0.2, size=(5, 6, 3))
    got = kabsch_rmsd(centre(mols, w), centre(ref, w)[0], w)
    want = [_brute_best(m, ref, [np.arange(6)], w)[0] for m in mols]
    np.testing.assert_allclose(got, want, atol=1e-10)


def test_align_symmetric_undoes_a_methyl_rotation():
    pytest.importorskip("rdkit")
    from ase.data import atomic_masses
    from mlhk_viz.geometry import align_symmetric, kabsch_rmsd
    from mlhk_viz.reference.forcefield import molecule, symmetry_permutations

    _, atoms = molecule("ethane")
    ref, w = atoms.positions, atomic_masses[atoms.numbers]
    perms = symmetry_permutations("ethane")
    assert perms.shape == (72, 8) and np.array_equal(perms[0], np.arange(8))
    assert symmetry_permutations("benzene").shape == (12, 12)
    assert symmetry_permutations("malonaldehyde").shape == (1, 9)
    # rotate one methyl group by 120° about the C-C axis: the same molecule, H labels moved on
    axis = (ref[1] - ref[0]) / np.linalg.norm(ref[1] - ref[0])
    rot = Rotation.from_rotvec(axis * 2 * np.pi / 3)
    turned = ref.copy()
    turned[5:8] = rot.apply(ref[5:8] - ref[1]) + ref[1]
    noisy = turned + np.random.default_rng(0).normal(scale=0.01, size=ref.shape)
    tumbled = Rotation.from_rotvec([0.3, -1.0, 0.5]).apply(noisy) + 2.0
    out, chosen = align_symmetric(np.stack([tumbled, ref]), ref, perms, w)
    assert chosen[1] == 0, "a molecule already in place keeps its labels"
    np.testing.assert_array_equal(out[1], ref)
    brute = _brute_best(tumbled, ref, perms, w)
    assert chosen[0] != 0 and np.isclose(brute[chosen[0]], brute.min())
    assert brute.min() < 0.03 < brute[0], "by index the fit is poor, with the right labels it is the noise level"
    r = kabsch_rmsd(centre(out[:1], w), centre(ref, w)[0], w)
    np.testing.assert_allclose(r, brute.min(), atol=1e-9)
    np.testing.assert_allclose(out[0], align(noisy[perms[chosen[0]]], ref, w)[0], atol=1e-9)


def test_align_symmetric_rejects_bad_permutations():
    from mlhk_viz.geometry import align_symmetric
    ref = np.random.default_rng(1).normal(size=(3, 3))
    with pytest.raises(ValueError, match="identity"):
        align_symmetric(ref[None], ref, [[1, 0, 2], [0, 1, 2]])
    with pytest.raises(ValueError, match=r"\(P, 3\)"):
        align_symmetric(ref[None], ref, [[0, 1]])
    with pytest.raises(ValueError, match="different weight"):
        align_symmetric(ref[None], ref, [[0, 1, 2], [1, 0, 2]], weights=[1.0, 16.0, 1.0])
