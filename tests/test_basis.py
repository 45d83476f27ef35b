import numpy as np
import pytest

from mlhk_viz.basis import FourierBasis, from_published, to_published
from tests.conftest import gaussian_blob_density

B = FourierBasis()
SMALL = FourierBasis(box=12.0, n=16)


def test_axis_functions_orthonormal_on_fine_grid():
    x = B.grid_axis(400)
    f = B.axis_functions(x) * np.sqrt(B.box / 400)
    np.testing.assert_allclose(f.T @ f, np.eye(B.n), atol=1e-12)


def test_grid_round_trip_band_limited():
    rng = np.random.default_rng(1)
    c = rng.normal(size=SMALL.size)
    rho = SMALL.to_grid(c, (20, 24, 28))
    np.testing.assert_allclose(SMALL.from_grid(rho), c, rtol=0, atol=1e-11)


def test_parseval_and_electron_count():
    rho = gaussian_blob_density(B, [(0.3, -0.2, 0.1), (-1.0, 0.5, 0.0)], [0.9, 1.2], [6.0, 2.0], 96)
    c = B.from_grid(rho)
    assert B.electron_count(c) == pytest.approx(8.0, rel=1e-10)
    rec = B.to_grid(c, 96)
    dv = (B.box / 96) ** 3
    # Parseval: the coefficient norm is the L2 norm of the (truncated) density
    assert np.sum(c**2) == pytest.approx(np.sum(rec**2) * dv, rel=1e-12)
    # and the distance between coefficient vectors is the L2 distance between densities
    rho2 = gaussian_blob_density(B, [(0.1, 0.0, 0.0)], [1.0], [8.0], 96)
    c2 = B.from_grid(rho2)
    assert np.sum((c - c2) ** 2) == pytest.approx(np.sum((rec - B.to_grid(c2, 96)) ** 2) * dv, rel=1e-12)


def test_evaluate_on_arbitrary_axes_matches_box_grid():
    rng = np.random.default_rng(2)
    c = rng.normal(size=SMALL.size)
    full = SMALL.to_grid(c, 24)
    ax = SMALL.grid_axis(24)
    part = SMALL.evaluate(c, ax[3:9], ax[:5], ax[10:12])
    np.testing.assert_allclose(part, full[3:9, :5, 10:12], atol=1e-12)
    # upsampled grids interpolate the same band-limited function exactly
    fine = SMALL.to_grid(c, 48)
    np.testing.assert_allclose(fine[::2, ::2, ::2], full, atol=1e-11)


def test_smooth_density_truncation_small():
    rho = gaussian_blob_density(B, [(0, 0, 0)], [1.0], [2.0], 96)
    moved = gaussian_blob_density(B, [(0.3, 0, 0)], [1.0], [2.0], 96)
    # against the L1 distance of the analytic densities on the same grid
    want = np.abs(moved - rho).sum() / rho.sum()
    assert B.l1_error(B.from_grid(moved), B.from_grid(rho)) == pytest.approx(want, rel=1e-4)
    assert B.l1_error(2 * B.from_grid(rho), B.from_grid(rho)) == pytest.approx(1.0, rel=1e-12)
    rec = B.to_grid(B.from_grid(rho), 96)
    assert np.abs(rec - rho).sum() / rho.sum() < 1e-6


def test_published_packing_round_trip():
    rho = gaussian_blob_density(B, [(0.3, -0.2, 0.1)], [0.8], [6.0], 96)
    c = B.from_grid(rho)
    packed = to_published(c, grid_points=200)
    back = from_published(packed, 6.0)
    # the native cos at n/2 is not representable in the published packing
    k, kind = B.frequencies()
    nyq = (k == B.kmax) & (kind == 0)
    keep = ~(nyq[:, None, None] | nyq[None, :, None] | nyq[None, None, :]).ravel()
    np.testing.assert_allclose(back[keep], c[keep], atol=1e-12 * np.abs(c).max())
    assert np.all(back[~keep] == 0)


def test_published_packing_matches_an_fft_of_the_density():
    """Independent check: the packing described in facts.md, built with numpy's rfft by hand."""
    N = 60
    ax = np.arange(N) * B.box / N  # corner-origin grid, molecule at the box centre
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij")
    cen = np.array([B.box / 2 + 0.3, B.box / 2 - 0.2, B.box / 2 + 0.4])
    rho = 6 * np.exp(-((X - cen[0]) ** 2 + (Y - cen[1]) ** 2 + (Z - cen[2]) ** 2) / (2 * 0.9**2)) / (2 * np.pi * 0.81) ** 1.5
    packed = rho
    for axis in (2, 1, 0):
        f = np.fft.rfft(packed, axis=axis)
        f = np.take(f, np.arange(25), axis=axis)
        packed = np.concatenate([f.real, f.imag], axis=axis)
    native = from_published(packed.reshape(-1), 6.0)
    # the same density sampled on our centred grid
    ref = B.from_grid(gaussian_blob_density(B, [cen - B.box / 2], [0.9], [6.0], 96))
    k, kind = B.frequencies()
    nyq = (k == B.kmax) & (kind == 0)
    keep = ~(nyq[:, None, None] | nyq[None, :, None] | nyq[None, None, :]).ravel()
    np.testing.assert_allclose(native[keep], ref[keep], atol=1e-9 * np.abs(ref).max())
    # and back, with the absolute scale of an FFT on N points (from_published renormalises, so only
    # this direction tests the scale)
    np.testing.assert_allclose(to_published(ref, grid_points=N), packed.reshape(-1), atol=1e-9 * np.abs(packed).max())


def test_bad_basis_arguments():
    with pytest.raises(ValueError, match="even integer"):
        FourierBasis(n=7)
    with pytest.raises(ValueError, match="positive length"):
        FourierBasis(box=-1)
    with pytest.raises(ValueError, match="coarser"):
        B.from_grid(np.zeros((10, 10, 10)))
