import numpy as np
import pytest
from ase.data import atomic_masses
from scipy.spatial.transform import Rotation

from mlhk_viz.descriptor import GaussianPotential
from mlhk_viz.geometry import align, kmeans_select
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
