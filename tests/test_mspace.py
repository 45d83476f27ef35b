"""M-space ML-HK (mlhk_viz.mspace) against explicit computations on the full coefficient vectors."""

import numpy as np
import pytest
from sklearn.kernel_ridge import KernelRidge

from mlhk_viz import mspace


@pytest.fixture
def problem():
    rng = np.random.default_rng(3)
    n, L, M = 30, 1000, 12
    X = rng.normal(size=(n, 4))
    U = np.tanh(X @ rng.normal(size=(4, L))) + 0.01 * rng.normal(size=(n, L))  # densities that depend on X
    D = ((X[:, None] - X[None]) ** 2).sum(-1)
    train = np.arange(0, 2 * M, 2)
    scored = np.setdiff1d(np.arange(n), train)
    return U, D, train, scored


def test_coefficient_grams_equal_the_explicit_products(problem):
    U, _, train, scored = problem
    g = mspace.coefficient_grams(U, train, scored, block=137)  # blocks that do not divide L
    off = U[train].mean(0)
    Yc, Tc = U[train] - off, U[scored] - off
    np.testing.assert_allclose(g.offset, off, atol=1e-14)
    np.testing.assert_allclose(g.G, Yc @ Yc.T, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(g.H, Tc @ Yc.T, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(g.nt, (Tc**2).sum(1), rtol=1e-12)
    np.testing.assert_allclose(g.s2, (Yc**2).mean(0), rtol=1e-12)
    np.testing.assert_allclose(g.T @ g.T.T, g.G, atol=1e-9)


def test_density_weights_predict_as_sklearn_kernel_ridge(problem):
    U, D, train, scored = problem
    sigma, lam = 1.7, 1e-3
    eig = mspace.kernel_eigen(D[np.ix_(train, train)], D[:, train], sigma)
    b, B, var = mspace.density_weights(eig, lam)
    g = mspace.coefficient_grams(U, train, scored)
    pred = np.stack([mspace.predicted_coefficients(U, train, g.offset, b[i]) for i in scored])
    kr = KernelRidge(alpha=lam, kernel="precomputed").fit(mspace.gauss(D[np.ix_(train, train)], sigma), U[train] - g.offset)
    ref = kr.predict(mspace.gauss(D[np.ix_(scored, train)], sigma)) + g.offset
    np.testing.assert_allclose(pred, ref, rtol=1e-9, atol=1e-9)
    K = mspace.gauss(D[np.ix_(train, train)], sigma)
    np.testing.assert_allclose(B, K @ np.linalg.inv(K + lam * np.eye(len(train))), atol=1e-9)
    kx = mspace.gauss(D[:, train], sigma)
    var_ref = 1.0 - np.einsum("ij,ij->i", kx @ np.linalg.inv(K + lam * np.eye(len(train))), kx)
    np.testing.assert_allclose(var, np.maximum(var_ref, 0), atol=1e-9)
    assert np.all(var[train] < var[scored].max())


def test_rows_combination_equals_indexing(problem):
    U, _, train, _ = problem
    w = np.linspace(-1, 2, len(train))
    np.testing.assert_allclose(mspace.rows_combination(U, train, w), w @ U[train], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mspace.rows_combination(U, [3, 3], [0.5, 0.25]), 0.75 * U[3], rtol=1e-12)


def test_functional_distances_and_l2_equal_explicit_distances(problem):
    U, D, train, scored = problem
    eig = mspace.kernel_eigen(D[np.ix_(train, train)], D[:, train], 1.3)
    b, B, _ = mspace.density_weights(eig, 1e-4)
    g = mspace.coefficient_grams(U, train, scored)
    fd = mspace.functional_distances(b, B, g.G, g.H, g.nt)
    off = g.offset
    n_tr = B @ (U[train] - off) + off  # the model's own training densities
    n_all = b @ (U[train] - off) + off
    sq = lambda A, C: ((A[:, None] - C[None]) ** 2).sum(-1)  # noqa: E731
    scale = sq(n_tr, n_tr).max()
    np.testing.assert_allclose(fd["train"], sq(n_tr, n_tr), atol=1e-9 * scale)
    np.testing.assert_allclose(fd["predicted"], sq(n_all, n_tr), atol=1e-9 * scale)
    np.testing.assert_allclose(fd["dft"], sq(U[scored], n_tr), atol=1e-9 * scale)
    l2 = mspace.density_l2(b[scored], fd["self"][scored], g.H, g.nt)
    np.testing.assert_allclose(l2, np.linalg.norm(n_all[scored] - U[scored], axis=1), rtol=1e-7)


def test_functional_training_weights_give_the_loo_and_dft_densities(problem):
    """The energy functional's training densities for each ``energy_features``: the leave-one-out ones equal
    explicit refits without each molecule (sklearn, the same offset), the DFT ones the training rows."""
    U, D, train, scored = problem
    sigma, lam = 1.3, 1e-3
    eig = mspace.kernel_eigen(D[np.ix_(train, train)], D[:, train], sigma)
    b, B, _ = mspace.density_weights(eig, lam)
    g = mspace.coefficient_grams(U, train, scored)
    Yc = U[train] - g.offset
    K = mspace.gauss(D[np.ix_(train, train)], sigma)
    loo = np.empty_like(Yc)
    for i in range(len(train)):  # brute force: M refits, each without molecule i
        keep = np.arange(len(train)) != i
        loo[i] = KernelRidge(alpha=lam, kernel="precomputed").fit(K[np.ix_(keep, keep)], Yc[keep]).predict(K[i:i + 1, keep])[0]
    W = mspace.functional_training_weights(B, "loo")
    np.testing.assert_allclose(W @ Yc, loo, rtol=1e-8, atol=1e-8 * np.abs(loo).max())
    np.testing.assert_array_equal(mspace.functional_training_weights(B, "dft"), np.eye(len(train)))
    assert mspace.functional_training_weights(B, "predicted") is B
    # and the distances the functional sees are the explicit ones between those densities
    fd = mspace.functional_distances(b, W, g.G, g.H, g.nt)
    n_all = b @ Yc + g.offset
    sq = lambda A, C: ((A[:, None] - C[None]) ** 2).sum(-1)  # noqa: E731
    scale = sq(loo, loo).max()
    np.testing.assert_allclose(fd["train"], sq(loo, loo), atol=1e-8 * scale)
    np.testing.assert_allclose(fd["predicted"], sq(n_all, loo + g.offset), atol=1e-8 * scale)
    np.testing.assert_allclose(fd["dft"], sq(U[scored], loo + g.offset), atol=1e-8 * scale)
    with pytest.raises(ValueError, match="features must be 'predicted', 'loo' or 'dft', got 'exact'"):
        mspace.functional_training_weights(B, "exact")


def test_choose_keeps_given_values_and_cv_picks_from_the_grid(problem):
    U, D, train, _ = problem
    Dtr = D[np.ix_(train, train)]
    med = mspace.median_distance(Dtr)
    c = mspace.choose(Dtr, U[train][:, :5], med, factor=2.0, lam=1e-5)
    assert (c.sigma, c.lam, c.factor, c.by_cv) == (2.0 * med, 1e-5, 2.0, (False, False))
    c = mspace.choose(Dtr, U[train][:, :5], med)
    assert c.by_cv == (True, True) and c.cv_errors.shape == (len(c.cv_sigmas), len(c.cv_lams))
    i, j = np.unravel_index(np.argmin(c.cv_errors), c.cv_errors.shape)
    assert c.sigma == pytest.approx(c.cv_sigmas[i]) and c.lam == pytest.approx(c.cv_lams[j])
