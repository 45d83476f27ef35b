"""Tests for the separable Gaussian-potential descriptor against an independent brute force.

The reference here evaluates ``v(r) = sum_a Z_a exp(-|r - R_a|^2 / (2 gamma^2))`` at every
point of a ``meshgrid`` and sums ``(v_i - v_j)^2`` directly, so it shares no algebra with the
separable route (no factorisation, no ``|a|^2 + |b|^2 - 2ab`` expansion).
"""

from __future__ import annotations

import dataclasses
import math
import tracemalloc

import numpy as np
import pytest

from mlhk_viz.descriptor import (
    GaussianPotential,
    continuum_sq_distances,
    grid_axes,
    potential_on_grid,
    self_sq_norms,
    sq_distances,
)

WATER = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.469], [0.0, -0.757, -0.469]])
WATER_Z = np.array([8, 1, 1])
H2 = np.array([[0.0, 0.0, -0.37], [0.0, 0.0, 0.37]])
H2_Z = np.array([1, 1])


def perturbed(geometry, n, noise, seed):
    rng = np.random.default_rng(seed)
    return geometry + noise * rng.standard_normal((n, *geometry.shape))


def reference_grids(positions, numbers, gamma, axes):
    gx, gy, gz = np.meshgrid(*axes, indexing="ij")
    points = np.stack([gx, gy, gz], axis=-1)  # (nx, ny, nz, 3)
    out = np.zeros((len(positions), *gx.shape))
    for i, mol in enumerate(positions):
        for z, r in zip(numbers, mol):
            out[i] += z * np.exp(-np.sum((points - r) ** 2, axis=-1) / (2 * gamma**2))
    return out


def reference_sq_distances(va, vb):
    return np.array([[np.sum((x - y) ** 2) for y in vb] for x in va])


MOLECULES = {"water": (WATER, WATER_Z), "H2": (H2, H2_Z)}


# ----------------------------------------------------------------------------- brute force


@pytest.mark.parametrize("name", MOLECULES)
@pytest.mark.parametrize("gamma", [0.2, 0.3])
def test_potential_on_grid_is_the_definition(name, gamma):
    geometry, numbers = MOLECULES[name]
    pos = perturbed(geometry, 3, 0.1, seed=1)
    axes = grid_axes(pos, gamma, 0.15)
    np.testing.assert_allclose(
        potential_on_grid(pos, numbers, gamma, axes), reference_grids(pos, numbers, gamma, axes), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("name", MOLECULES)
@pytest.mark.parametrize("gamma", [0.2, 0.3])
@pytest.mark.parametrize("padding", [None, 0.3])  # 0.3 Å cuts the tails: exactness on the grid, not the integral
def test_separable_equals_brute_force(name, gamma, padding):
    geometry, numbers = MOLECULES[name]
    pos_a = perturbed(geometry, 4, 0.15, seed=2)
    pos_b = perturbed(geometry, 3, 0.15, seed=3)
    axes = grid_axes(np.concatenate([pos_a, pos_b]), gamma, 0.15, padding)
    ref = reference_sq_distances(
        reference_grids(pos_a, numbers, gamma, axes), reference_grids(pos_b, numbers, gamma, axes)
    )
    got = sq_distances(pos_a, pos_b, numbers, gamma, axes)
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, ref, rtol=1e-10, atol=0)


def test_separable_is_exact_on_any_rectilinear_grid():
    # irregular, truncating axes: nothing may rely on uniform spacing or negligible tails
    rng = np.random.default_rng(4)
    axes = tuple(np.sort(rng.uniform(-1.2, 1.2, size=k)) for k in (17, 23, 19))
    pos = perturbed(WATER, 5, 0.2, seed=5)
    ref = reference_sq_distances(*[reference_grids(pos, WATER_Z, 0.25, axes)] * 2)
    np.testing.assert_allclose(sq_distances(pos, None, WATER_Z, 0.25, axes), ref, rtol=1e-10, atol=0)


def test_self_sq_norms_equal_brute_force():
    pos = perturbed(WATER, 4, 0.1, seed=6)
    axes = grid_axes(pos, 0.2, 0.15)
    v = reference_grids(pos, WATER_Z, 0.2, axes)
    np.testing.assert_allclose(self_sq_norms(pos, WATER_Z, 0.2, axes), np.sum(v**2, axis=(1, 2, 3)), rtol=1e-12)


def test_paper_defaults_small_molecule_equals_brute_force():
    # gamma = 0.2 Å, Delta = 0.08 Å as in the benchmark, on a molecule small enough to grid
    pos = perturbed(H2, 3, 0.1, seed=7)
    axes = grid_axes(pos, 0.2, 0.08)
    v = potential_on_grid(pos, H2_Z, 0.2, axes)
    ref = reference_sq_distances(v, v)
    np.testing.assert_allclose(sq_distances(pos, None, H2_Z, 0.2, axes), ref, rtol=1e-10, atol=0)


# ----------------------------------------------------------------------------- symmetry, blocking


def test_symmetric_case_zero_diagonal_and_symmetric():
    pos = perturbed(WATER, 7, 0.1, seed=8)
    axes = grid_axes(pos, 0.2, 0.15)
    d = sq_distances(pos, None, WATER_Z, 0.2, axes, block=3)
    assert np.array_equal(np.diag(d), np.zeros(7))
    assert np.array_equal(d, d.T)
    off = ~np.eye(7, dtype=bool)
    assert np.all(d[off] > 0)
    # same numbers as the general (non-symmetric) route
    full = sq_distances(pos, pos.copy(), WATER_Z, 0.2, axes)
    np.testing.assert_allclose(d[off], full[off], rtol=1e-10)


@pytest.mark.parametrize("block", [1, 2, 5, 100])
def test_block_size_does_not_change_result(block):
    pos_a = perturbed(WATER, 6, 0.1, seed=9)
    pos_b = perturbed(WATER, 4, 0.1, seed=10)
    axes = grid_axes(np.concatenate([pos_a, pos_b]), 0.2, 0.15)
    ref = sq_distances(pos_a, pos_b, WATER_Z, 0.2, axes, block=6)
    np.testing.assert_allclose(sq_distances(pos_a, pos_b, WATER_Z, 0.2, axes, block=block), ref, rtol=1e-13)
    ref_sym = sq_distances(pos_a, None, WATER_Z, 0.2, axes, block=6)
    np.testing.assert_allclose(sq_distances(pos_a, None, WATER_Z, 0.2, axes, block=block), ref_sym, rtol=1e-13, atol=0)
    c = continuum_sq_distances(pos_a, pos_b, WATER_Z, 0.2, block=6)
    np.testing.assert_allclose(continuum_sq_distances(pos_a, pos_b, WATER_Z, 0.2, block=block), c, rtol=1e-13)


def test_memory_stays_blocked_for_1000_benzene_sized_molecules():
    # unblocked, the three per-axis (n * 12) x (n * 12) matrices alone would be 3.2 GiB
    ring = np.stack([np.cos(np.arange(6) * np.pi / 3), np.sin(np.arange(6) * np.pi / 3), np.zeros(6)], axis=1)
    pos = perturbed(np.concatenate([1.39 * ring, 2.48 * ring]), 1000, 0.1, seed=21)
    numbers = np.array([6] * 6 + [1] * 6)
    axes = grid_axes(pos, 0.3, 0.3)  # coarse, to keep the test quick; memory does not depend on it much
    tracemalloc.start()
    try:
        d = sq_distances(pos, None, numbers, 0.3, axes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert d.shape == (1000, 1000) and np.array_equal(d, d.T)


def test_identical_molecules_have_zero_distance():
    pos = perturbed(WATER, 2, 0.1, seed=11)
    pos = np.concatenate([pos, pos[:1]])
    axes = grid_axes(pos, 0.2, 0.15)
    d = sq_distances(pos, None, WATER_Z, 0.2, axes)
    norm = self_sq_norms(pos[:1], WATER_Z, 0.2, axes)[0]
    assert d[0, 2] <= 1e-12 * norm  # only round-off of ||v||^2 survives (negatives are clipped to 0)


# ----------------------------------------------------------------------------- grid


def test_grid_axes_are_integer_multiples_and_cover_the_padding():
    pos = perturbed(WATER, 5, 0.1, seed=12) + np.array([3.3, -1.7, 0.45])
    gamma, spacing = 0.2, 0.08
    axes = grid_axes(pos, gamma, spacing)
    flat = pos.reshape(-1, 3)
    for d, ax in enumerate(axes):
        k = ax / spacing
        np.testing.assert_allclose(k, np.round(k), atol=1e-9)
        np.testing.assert_allclose(np.diff(ax), spacing, rtol=1e-9)
        assert ax[0] <= flat[:, d].min() - 8 * gamma + 1e-12
        assert ax[-1] >= flat[:, d].max() + 8 * gamma - 1e-12
        assert ax[0] > flat[:, d].min() - 8 * gamma - spacing  # not wider than one extra point
        assert ax[-1] < flat[:, d].max() + 8 * gamma + spacing


def test_descriptor_does_not_depend_on_the_rest_of_the_data_set():
    pos = perturbed(WATER, 6, 0.1, seed=13)
    far = pos + np.array([2.0, 0.0, 0.0])  # widens the grid of the big set
    small = grid_axes(pos[:3], 0.2, 0.15)
    big = grid_axes(np.concatenate([pos, far]), 0.2, 0.15)
    for s, b in zip(small, big):
        i = int(np.argmin(np.abs(b - s[0])))
        assert np.array_equal(b[i : i + len(s)], s)  # same points, bit for bit
    np.testing.assert_allclose(
        sq_distances(pos[:3], None, WATER_Z, 0.2, small), sq_distances(pos[:3], None, WATER_Z, 0.2, big), rtol=1e-10
    )


def test_translation_by_whole_grid_steps_changes_nothing():
    spacing, gamma = 0.15, 0.2
    pos_a = perturbed(WATER, 4, 0.15, seed=14)
    pos_b = perturbed(WATER, 3, 0.15, seed=15)
    axes = grid_axes(np.concatenate([pos_a, pos_b]), gamma, spacing)
    d = sq_distances(pos_a, pos_b, WATER_Z, gamma, axes)
    steps = np.array([3, -5, 7])
    shift = steps * spacing
    shifted_axes = tuple((np.round(ax / spacing) + m) * spacing for ax, m in zip(axes, steps))
    d_shifted = sq_distances(pos_a + shift, pos_b + shift, WATER_Z, gamma, shifted_axes)
    np.testing.assert_allclose(d_shifted, d, rtol=1e-10)
    # the test is sensitive: at this coarse grid (Delta/gamma = 0.75) half a step is visible
    half = tuple(ax + spacing / 2 for ax in axes)
    d_half = sq_distances(pos_a + spacing / 2, pos_b, WATER_Z, gamma, half)
    assert np.max(np.abs(d_half - d) / d) > 1e-9


# ----------------------------------------------------------------------------- continuum limit


def test_continuum_matches_its_closed_form():
    # brute force of the closed form, atom pair by atom pair
    pos = perturbed(WATER, 3, 0.1, seed=16)
    gamma = 0.3

    def inner(p, q):
        return sum(
            za * zb * math.pi**1.5 * gamma**3 * math.exp(-np.sum((ra - rb) ** 2) / (4 * gamma**2))
            for za, ra in zip(WATER_Z, p)
            for zb, rb in zip(WATER_Z, q)
        )

    ref = np.array([[inner(p, p) + inner(q, q) - 2 * inner(p, q) for q in pos] for p in pos])
    np.fill_diagonal(ref, 0.0)
    np.testing.assert_allclose(continuum_sq_distances(pos, None, WATER_Z, gamma), ref, rtol=1e-12, atol=0)


def test_grid_form_converges_super_exponentially_to_the_continuum():
    pos = perturbed(WATER, 5, 0.15, seed=17)
    gamma = 0.3
    cont = continuum_sq_distances(pos, None, WATER_Z, gamma)
    off = ~np.eye(5, dtype=bool)
    ratios = [1.5, 1.25, 1.0, 0.75, 0.5]  # spacing / gamma
    errors = []
    for r in ratios:
        spacing = r * gamma
        grid = spacing**3 * sq_distances(pos, None, WATER_Z, gamma, grid_axes(pos, gamma, spacing))
        errors.append(np.max(np.abs(grid[off] - cont[off]) / cont[off]))
    errors = np.array(errors)
    assert np.all(np.diff(errors[:4]) < 0), errors
    # Poisson summation: the grid sum of a Gaussian of width gamma/sqrt(2) deviates from the
    # integral by ~2 exp(-pi^2 gamma^2 / spacing^2); the distance amplifies that by norms/distance
    norms = self_sq_norms(pos, WATER_Z, gamma, grid_axes(pos, gamma, gamma)) * gamma**3
    amplification = norms.max() / cont[off].min()
    bound = 20 * amplification * np.exp(-np.pi**2 / np.array(ratios) ** 2)
    assert np.all(errors[:4] < bound[:4]), (errors, bound)
    # faster than any geometric rate in 1/spacing: each step gains more digits than the last
    gains = -np.diff(np.log(errors[:4]))
    assert np.all(np.diff(gains) > 0), gains
    assert errors[3] < 1e-6
    assert errors[4] < 1e-10  # at spacing = gamma / 2 only round-off is left


# ----------------------------------------------------------------------------- public object, validation


def test_gaussian_potential_delegates():
    gp = GaussianPotential(gamma=0.25, spacing=0.15)
    pos_a = perturbed(WATER, 3, 0.1, seed=18)
    pos_b = perturbed(WATER, 2, 0.1, seed=19)
    axes = gp.axes(np.concatenate([pos_a, pos_b]))
    for a, b in zip(axes, grid_axes(np.concatenate([pos_a, pos_b]), 0.25, 0.15)):
        assert np.array_equal(a, b)
    expected = sq_distances(pos_a, pos_b, WATER_Z, 0.25, axes)
    np.testing.assert_array_equal(gp.sq_distances(pos_a, pos_b, WATER_Z, axes), expected)
    # default axes cover both sets
    np.testing.assert_allclose(gp.sq_distances(pos_a, pos_b, WATER_Z), expected, rtol=1e-10)
    expected = continuum_sq_distances(pos_a, None, WATER_Z, 0.25)
    np.testing.assert_array_equal(gp.continuum_sq_distances(pos_a, None, WATER_Z), expected)
    assert gp.potential_on_grid(pos_a[:1], WATER_Z).shape[0] == 1
    assert GaussianPotential() == GaussianPotential(0.2, 0.08)
    with pytest.raises(dataclasses.FrozenInstanceError):
        gp.gamma = 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"gamma": 0.0}, r"gamma must be finite and > 0"),
        ({"gamma": -0.2}, r"gamma must be finite and > 0"),
        ({"gamma": float("nan")}, r"gamma must be finite and > 0"),
        ({"gamma": "0.2"}, r"gamma must be a positive real number"),
        ({"gamma": True}, r"gamma must be a positive real number"),
        ({"spacing": 0}, r"spacing must be finite and > 0"),
        ({"spacing": float("inf")}, r"spacing must be finite and > 0"),
    ],
)
def test_invalid_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianPotential(**kwargs)


GOOD = perturbed(WATER, 2, 0.1, seed=20)


@pytest.mark.parametrize(
    ("pos_a", "pos_b", "numbers", "match"),
    [
        (GOOD[0], None, WATER_Z, r"positions_a must have shape \(n_molecules, n_atoms, 3\).*got shape \(3, 3\)"),
        (GOOD[..., :2], None, WATER_Z, r"positions_a must have shape .*got shape \(2, 3, 2\)"),
        (np.where(np.arange(3)[None, :, None] == 1, np.nan, GOOD), None, WATER_Z, r"positions_a must be finite.*nan"),
        (GOOD, GOOD[:, :2], WATER_Z, r"positions_b .* same composition.*2 atoms vs 3"),
        (GOOD, np.full_like(GOOD, np.inf), WATER_Z, r"positions_b must be finite"),
        (GOOD, None, [8, 1], r"numbers must have one entry per atom: got 2 numbers but positions have 3 atoms"),
        (GOOD, None, [8.0, 1.5, 1.0], r"numbers must be integer atomic numbers >= 1"),
        (GOOD, None, [8, 0, 1], r"numbers must be integer atomic numbers >= 1"),
        (GOOD, None, [[8, 1, 1]], r"numbers must be a 1D array"),
        ([["a"]], None, WATER_Z, r"positions_a must be a numeric array"),
    ],
)
def test_invalid_arrays(pos_a, pos_b, numbers, match):
    gp = GaussianPotential(0.2, 0.15)
    axes = grid_axes(GOOD, 0.2, 0.15)
    with pytest.raises(ValueError, match=match):
        gp.sq_distances(pos_a, pos_b, numbers, axes)


def test_invalid_axes_block_padding():
    axes = grid_axes(GOOD, 0.2, 0.15)
    with pytest.raises(ValueError, match=r"axes must be a tuple of three 1D arrays"):
        sq_distances(GOOD, None, WATER_Z, 0.2, axes[:2])
    with pytest.raises(ValueError, match=r"axes\[2\] \(z\) must be a non-empty 1D array"):
        sq_distances(GOOD, None, WATER_Z, 0.2, (axes[0], axes[1], np.array([])))
    with pytest.raises(ValueError, match=r"axes\[1\] \(y\) must be finite, got nan"):
        sq_distances(GOOD, None, WATER_Z, 0.2, (axes[0], np.append(axes[1], np.nan), axes[2]))
    with pytest.raises(ValueError, match=r"block must be a positive integer"):
        sq_distances(GOOD, None, WATER_Z, 0.2, axes, block=0)
    with pytest.raises(ValueError, match=r"padding must be a finite number >= 0"):
        grid_axes(GOOD, 0.2, 0.15, padding=-1.0)
    with pytest.raises(ValueError, match=r"gamma must be finite and > 0"):
        continuum_sq_distances(GOOD, None, WATER_Z, -1.0)
    with pytest.raises(ValueError, match=r"numbers must have one entry per atom"):
        potential_on_grid(GOOD, [1, 1], 0.2, axes)
