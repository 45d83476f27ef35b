"""The separable Gaussian-density projection against two independent routes."""

import numpy as np
import pytest
from pyscf.gto.ft_ao import ft_aopair

from mlhk_viz.basis import FourierBasis
from mlhk_viz.reference.projection import density_coefficients, density_on_grid
from mlhk_viz.reference.pyscf_runner import DEFAULT_METHOD, build_mol

B = FourierBasis()


@pytest.fixture(scope="module")
def water_orbitals():
    # a fixed, non-converged but valid density: any occupied orbitals define a density
    mol = build_mol([8, 1, 1], [[0, 0, 0.05], [0.76, 0.59, 0], [-0.74, 0.6, 0.02]], DEFAULT_METHOD)
    rng = np.random.default_rng(0)
    c = np.linalg.qr(rng.normal(size=(mol.nao, 4)))[0]
    return mol, c, np.full(4, 2.0)


def test_matches_analytic_fourier_transform(water_orbitals):
    mol, C, occ = water_orbitals
    u = density_coefficients(mol, C, occ, B).reshape(B.n, B.n, B.n)
    dm = (C * occ) @ C.T
    L = B.box
    ks = [1, 3, 7, 24]  # all below kmax (25), so every one has a sine partner
    G = np.array([[2 * np.pi * k / L, 0, 0] for k in ks] + [[2 * np.pi * 2 / L, 2 * np.pi * 5 / L, 0],
                                                              [2 * np.pi * 2 / L, -2 * np.pi * 5 / L, 0]])
    F = np.einsum("gij,ij->g", ft_aopair(mol, G, aosym="s1"), dm)  # ∫ rho exp(-i G r)
    n0, nk = 1 / np.sqrt(L), np.sqrt(2 / L)
    for i, k in enumerate(ks):
        assert u[k, 0, 0] == pytest.approx(nk * n0 * n0 * F[i].real, abs=1e-10)
        assert u[B.kmax + k, 0, 0] == pytest.approx(-nk * n0 * n0 * F[i].imag, abs=1e-10)
    # cos(2x)cos(5y) = (cos(2x+5y) + cos(2x-5y)) / 2
    assert u[2, 5, 0] == pytest.approx(nk * nk * n0 * 0.5 * (F[4].real + F[5].real), abs=1e-10)
    # random orbitals are not S-orthonormal: the exact charge is tr(D S)
    assert B.electron_count(u.ravel()) == pytest.approx(np.sum(dm * mol.intor("int1e_ovlp")), rel=1e-10)


def test_matches_fine_grid_projection(water_orbitals):
    mol, C, occ = water_orbitals
    u = density_coefficients(mol, C, occ, B)
    ax = B.grid_axis(128)
    ug = B.from_grid(density_on_grid(mol, C, occ, (ax, ax, ax)))
    assert np.linalg.norm(u - ug) / np.linalg.norm(u) < 1e-5
