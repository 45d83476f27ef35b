"""Tests for mlhk_viz.krr: closed forms against explicit refits and scikit-learn."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF
from sklearn.kernel_ridge import KernelRidge

from mlhk_viz import krr
from mlhk_viz.krr import (
    CVResult,
    EigenKRR,
    KernelRidgeModel,
    cv_grid,
    gaussian_kernel,
    kfold_indices,
)

M, N_TEST, DIM, L = 36, 9, 4, 6


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(1234)
    X = rng.uniform(-1.0, 1.0, size=(M, DIM))
    Xt = rng.uniform(-1.0, 1.0, size=(N_TEST, DIM))
    W = rng.standard_normal((DIM, L))

    def f(Z):
        return np.sin(Z @ W) + 0.3 * (Z**2).sum(axis=1, keepdims=True) + np.arange(L)

    Y = f(X) + 0.01 * rng.standard_normal((M, L))
    D = cdist(X, X, "sqeuclidean")
    Dt = cdist(Xt, X, "sqeuclidean")
    sigma = float(np.sqrt(np.median(D[np.triu_indices(M, 1)])))
    return dict(X=X, Xt=Xt, Y=Y, D=D, Dt=Dt, sigma=sigma)


def rel_close(a, b, rtol):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    scale = max(np.abs(b).max(), 1e-300)
    err = np.abs(a - b).max() / scale
    assert err <= rtol, f"relative max error {err:.3g} > {rtol:g}"


def refit_heldout(K, Yc, lam, test):
    """Explicit refit without the rows `test`; residuals on `test` (same fixed offset)."""
    train = np.setdiff1d(np.arange(K.shape[0]), test)
    a = np.linalg.solve(K[np.ix_(train, train)] + lam * np.eye(train.size), Yc[train])
    return Yc[test] - K[np.ix_(test, train)] @ a


def refit_residuals(K, Yc, lam, folds):
    R = np.empty_like(Yc)
    for F in folds:
        R[F] = refit_heldout(K, Yc, lam, F)
    return R


LOO = [np.array([i]) for i in range(M)]


# ----------------------------------------------------------------------------- kernel


def test_gaussian_kernel_formula(data):
    K = gaussian_kernel(data["D"], 0.7)
    np.testing.assert_allclose(K, np.exp(-data["D"] / (2 * 0.7**2)), rtol=1e-13)
    assert np.allclose(np.diag(K), 1.0)


# ------------------------------------------------------------------- vs scikit-learn


@pytest.mark.parametrize("lam", [1e-6, 1e-3, 0.1])
def test_uncentred_matches_sklearn_kernel_ridge(data, lam):
    s = data["sigma"]
    ref = KernelRidge(kernel="rbf", gamma=1 / (2 * s**2), alpha=lam).fit(data["X"], data["Y"])
    expected = ref.predict(data["Xt"])
    ek = EigenKRR(gaussian_kernel(data["D"], s), data["Y"], center=False)
    assert np.all(ek.offset == 0)
    rel_close(gaussian_kernel(data["Dt"], s) @ ek.dual_coef(lam), expected, 1e-8)
    rel_close(ek.dual_coef(lam), ref.dual_coef_, 1e-8)
    model = KernelRidgeModel().fit(data["D"], data["Y"], s, lam, center=False)
    rel_close(model.predict(data["Dt"]), expected, 1e-8)


def test_centred_matches_sklearn_on_centred_targets(data):
    s, lam = data["sigma"], 1e-3
    mean = data["Y"].mean(axis=0)
    ref = KernelRidge(kernel="rbf", gamma=1 / (2 * s**2), alpha=lam).fit(data["X"], data["Y"] - mean)
    expected = ref.predict(data["Xt"]) + mean
    model = KernelRidgeModel().fit(data["D"], data["Y"], s, lam, center=True)
    np.testing.assert_allclose(model.offset_, mean, rtol=1e-14)
    rel_close(model.predict(data["Dt"]), expected, 1e-8)
    ek = EigenKRR(gaussian_kernel(data["D"], s), data["Y"])
    rel_close(ek.dual_coef(lam), ref.dual_coef_, 1e-8)


# ------------------------------------------------------------- closed-form CV vs refits


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("lam", [1e-2, 1e-1])
def test_loo_equals_explicit_refits(data, lam, center):
    K = gaussian_kernel(data["D"], data["sigma"])
    ek = EigenKRR(K, data["Y"], center=center)
    Yc = data["Y"] - ek.offset
    rel_close(ek.loo_residuals(lam), refit_residuals(K, Yc, lam, LOO), 1e-10)


def test_loo_per_output_lambda_equals_refits(data):
    K = gaussian_kernel(data["D"], data["sigma"])
    ek = EigenKRR(K, data["Y"])
    Yc = data["Y"] - ek.offset
    lam = np.geomspace(1e-2, 1e-1, L)
    R = ek.loo_residuals(lam)
    for j in range(L):
        rel_close(R[:, j], refit_residuals(K, Yc[:, [j]], lam[j], LOO)[:, 0], 1e-10)


@pytest.mark.parametrize("lam", [1e-2, np.geomspace(1e-3, 1e-1, L)])
def test_model_loo_predictions_equal_explicit_refits(data, lam):
    """Row i of ``loo_predictions`` is the prediction at x_i of a model refitted without point i
    (same sigma, lambda and offset); with two sigma groups each group uses its own kernel."""
    sig = np.where(np.arange(L) < 3, data["sigma"], 1.7 * data["sigma"])
    model = KernelRidgeModel().fit(data["D"], data["Y"], sig, lam)
    got = model.loo_predictions()
    lams = np.broadcast_to(lam, (L,))
    for j in range(L):
        K = gaussian_kernel(data["D"], sig[j])
        off = data["Y"][:, j].mean()
        Yc = data["Y"][:, [j]] - off
        ref = data["Y"][:, j] - refit_residuals(K, Yc, lams[j], LOO)[:, 0]
        rel_close(got[:, j], ref, 1e-9)
    # the in-sample fit is closer to the targets than the held-out predictions at every point
    assert np.all(np.abs(model.predict(data["D"]) - data["Y"]).sum(1) < np.abs(got - data["Y"]).sum(1))


def test_training_targets_are_the_fitted_targets(data):
    """``training_targets`` rebuilds Y from the eigenbases (two sigma groups, per-output lambda); a model
    loaded without its projected targets cannot, and says so."""
    sig = np.where(np.arange(L) < 3, data["sigma"], 1.7 * data["sigma"])
    model = KernelRidgeModel().fit(data["D"], data["Y"], sig, np.geomspace(1e-3, 1e-1, L))
    rel_close(model.training_targets(), data["Y"], 1e-12)
    one = KernelRidgeModel().fit(data["D"], data["Y"][:, 0], data["sigma"], 1e-2)
    assert one.training_targets().shape == (M,)
    rel_close(one.training_targets(), data["Y"][:, 0], 1e-12)
    with pytest.raises(RuntimeError, match="loaded without them"):
        KernelRidgeModel.from_arrays(model.to_arrays()).training_targets()


@pytest.mark.parametrize("k", [2, 5, 7])
def test_kfold_equals_explicit_refits(data, k):
    K = gaussian_kernel(data["D"], data["sigma"])
    ek = EigenKRR(K, data["Y"])
    Yc = data["Y"] - ek.offset
    folds = kfold_indices(M, k, seed=3)
    for lam in [1e-2, 1e-1]:
        rel_close(ek.kfold_residuals(lam, folds), refit_residuals(K, Yc, lam, folds), 1e-10)


@pytest.mark.parametrize("max_groups", [64, 0])  # grouped path and batched-solve path
def test_kfold_per_output_lambda_equals_refits(data, monkeypatch, max_groups):
    monkeypatch.setattr(krr, "_MAX_LAM_GROUPS", max_groups)
    K = gaussian_kernel(data["D"], data["sigma"])
    ek = EigenKRR(K, data["Y"])
    Yc = data["Y"] - ek.offset
    folds = kfold_indices(M, 4, seed=0)
    lam = np.array([1e-2, 1e-1, 1e-2, 3e-2, 1e-1, 5e-2])
    R = ek.kfold_residuals(lam, folds)
    for j in range(L):
        rel_close(R[:, j], refit_residuals(K, Yc[:, [j]], lam[j], folds)[:, 0], 1e-10)


def test_loo_equals_kfold_with_singleton_folds(data):
    ek = EigenKRR(gaussian_kernel(data["D"], data["sigma"]), data["Y"])
    rel_close(ek.kfold_residuals(0.05, LOO), ek.loo_residuals(0.05), 1e-10)


@pytest.mark.parametrize("cv", ["loo", "kfold"])
def test_cv_mse_gram_trick_equals_per_output_sum(data, cv):
    K = gaussian_kernel(data["D"], data["sigma"])
    ek = EigenKRR(K, data["Y"])
    Yc = data["Y"] - ek.offset
    folds = LOO if cv == "loo" else kfold_indices(M, 5, seed=1)
    cvarg = "loo" if cv == "loo" else folds
    lams = [1e-2, 3e-2, 1e-1]
    per = ek.cv_mse(lams, cv=cvarg, per_output=True)
    assert per.shape == (3, L)
    for i, lam in enumerate(lams):
        expected = (refit_residuals(K, Yc, lam, folds) ** 2).mean(axis=0)
        rel_close(per[i], expected, 1e-9)
    shared = ek.cv_mse(lams, cv=cvarg)
    assert shared.shape == (3,)
    rel_close(shared, per.sum(axis=1), 1e-10)


# ------------------------------------------------------------------------------ cv_grid

SIGMAS = [0.5, 0.9, 1.6]
LAMS = [1e-3, 1e-2, 1e-1, 1.0]


def brute_force_errors(data, folds, center=True):
    """(n_sigma, n_lam, L) per-output CV MSE by explicit refits."""
    Y = data["Y"]
    Yc = Y - Y.mean(axis=0) if center else Y
    E = np.empty((len(SIGMAS), len(LAMS), Y.shape[1]))
    for i, s in enumerate(SIGMAS):
        K = gaussian_kernel(data["D"], s)
        for j, lam in enumerate(LAMS):
            E[i, j] = (refit_residuals(K, Yc, lam, folds) ** 2).mean(axis=0)
    return E


@pytest.mark.parametrize("cv", ["loo", "kfold"])
def test_cv_grid_shared_and_per_output_against_brute_force(data, cv):
    folds = LOO if cv == "loo" else kfold_indices(M, 5, seed=2)
    cvarg = "loo" if cv == "loo" else folds
    E = brute_force_errors(data, folds)

    shared = cv_grid(data["D"], data["Y"], SIGMAS, LAMS, cv=cvarg)
    assert isinstance(shared, CVResult) and not shared.per_output
    assert shared.errors.shape == (3, 4)
    rel_close(shared.errors, E.sum(axis=2), 1e-9)
    i, j = np.unravel_index(np.argmin(E.sum(axis=2)), (3, 4))
    assert (shared.best_sigma, shared.best_lam) == (SIGMAS[i], LAMS[j])
    assert (shared.best_sigma_index, shared.best_lam_index) == (i, j)

    per = cv_grid(data["D"], data["Y"], SIGMAS, LAMS, cv=cvarg, per_output=True,
                  keep_output_errors=True)
    assert per.per_output
    rel_close(per.output_errors, E, 1e-9)
    # Gram-trick shared errors == per-output errors summed over outputs.
    rel_close(shared.errors, per.errors, 1e-10)
    rel_close(shared.errors, per.output_errors.sum(axis=2), 1e-10)
    flat = E.reshape(-1, L)
    best = np.argmin(flat, axis=0)
    bi, bj = np.divmod(best, len(LAMS))
    assert per.best_sigma.shape == (L,) and per.best_lam.shape == (L,)
    np.testing.assert_array_equal(per.best_sigma_index, bi)
    np.testing.assert_array_equal(per.best_lam_index, bj)
    np.testing.assert_array_equal(per.best_sigma, np.asarray(SIGMAS)[bi])
    np.testing.assert_array_equal(per.best_lam, np.asarray(LAMS)[bj])
    rel_close(per.best_error, flat[best, np.arange(L)], 1e-9)
    # The choice is really per output here (not all outputs pick the same pair).
    assert len(set(zip(bi.tolist(), bj.tolist()))) > 1


@pytest.mark.parametrize("cv", ["loo", "kfold"])
def test_cv_grid_one_standard_error_rule_against_sklearn_refits(data, cv):
    """The 1-SE choice recomputed from per-sample held-out errors of explicit sklearn refits."""
    folds = LOO if cv == "loo" else kfold_indices(M, 6, seed=3)
    cvarg = "loo" if cv == "loo" else folds
    sigmas, lams = [0.9, 0.3, 1.6, 0.5], [1e-1, 1e-6, 1e-3, 1e-2, 1.0, 1e-4]  # unsorted on purpose
    Y = data["Y"]
    per_sample = np.empty((len(sigmas), len(lams), M))
    for i, s in enumerate(sigmas):
        for j, lam in enumerate(lams):
            R = np.empty_like(Y)
            for F in folds:
                tr = np.setdiff1d(np.arange(M), F)
                off = Y.mean(axis=0)  # cv_grid centres once, on all M (a constant during CV)
                kr = KernelRidge(alpha=lam, kernel="rbf", gamma=1.0 / (2 * s**2)).fit(data["X"][tr], Y[tr] - off)
                R[F] = Y[F] - off - kr.predict(data["X"][F])
            per_sample[i, j] = (R**2).sum(axis=1)
    mean = per_sample.mean(axis=2)
    se = per_sample.std(axis=2, ddof=1) / np.sqrt(M)
    i0, j0 = np.unravel_index(np.argmin(mean), mean.shape)
    ok = mean <= mean[i0, j0] + se[i0, j0]
    lam_1se = max(lams[j] for j in range(len(lams)) if ok[:, j].any())
    j1 = lams.index(lam_1se)
    sig_1se = max(sigmas[i] for i in range(len(sigmas)) if ok[i, j1])

    res = cv_grid(data["D"], Y, sigmas, lams, cv=cvarg, rule="1se")
    rel_close(res.errors, mean, 1e-7)
    rel_close(res.std_errors, se, 1e-6)
    assert res.rule == "1se"
    assert (res.best_sigma, res.best_lam) == (sig_1se, lam_1se)
    assert res.best_error == pytest.approx(mean[sigmas.index(sig_1se), j1], rel=1e-7)
    # the rule can only add ridge, never take it away
    best = cv_grid(data["D"], Y, sigmas, lams, cv=cvarg)
    assert best.rule == "min" and (best.best_sigma, best.best_lam) == (sigmas[i0], lams[j0])
    assert res.best_lam >= best.best_lam and res.best_error <= best.best_error + se[i0, j0] * (1 + 1e-9)
    # and here it does: the noise-free-ish data still leave a flat valley
    assert (res.best_sigma, res.best_lam) != (best.best_sigma, best.best_lam)


def test_cv_grid_rule_errors(data):
    with pytest.raises(ValueError, match="rule must be 'min' or '1se'; got 'best'"):
        cv_grid(data["D"], data["Y"], SIGMAS, LAMS, rule="best")
    with pytest.raises(ValueError, match="needs a shared choice"):
        cv_grid(data["D"], data["Y"], SIGMAS, LAMS, per_output=True, rule="1se")


def test_cv_grid_ties_go_to_first_grid_point(data):
    """A constant output has zero CV error everywhere: the first (sigma, lambda) wins."""
    Y = data["Y"].copy()
    Y[:, 1] = 4.0
    res = cv_grid(data["D"], Y, SIGMAS, LAMS, per_output=True)
    assert res.best_error[1] == 0.0
    assert (res.best_sigma_index[1], res.best_lam_index[1]) == (0, 0)
    assert (res.best_sigma_index != 0).any() or (res.best_lam_index != 0).any()


def test_cv_grid_per_output_small_blocks_match(data, monkeypatch):
    """Column blocking and lambda chunking do not change the result."""
    ref = cv_grid(data["D"], data["Y"], SIGMAS, LAMS, per_output=True, keep_output_errors=True)
    monkeypatch.setattr(krr, "_block_cols", lambda rows: 2)
    monkeypatch.setattr(krr, "_lam_chunks", lambda n, m: (range(s, min(n, s + 3)) for s in range(0, n, 3)))
    res = cv_grid(data["D"], data["Y"], SIGMAS, LAMS, per_output=True, keep_output_errors=True)
    rel_close(res.output_errors, ref.output_errors, 1e-12)
    np.testing.assert_array_equal(res.best_lam_index, ref.best_lam_index)
    np.testing.assert_array_equal(res.best_sigma_index, ref.best_sigma_index)


def test_cv_grid_matches_eigenkrr_cv_mse_and_uncentred(data):
    folds = kfold_indices(M, 3, seed=5)
    res = cv_grid(data["D"], data["Y"], SIGMAS, LAMS, cv=folds, center=False)
    for i, s in enumerate(SIGMAS):
        ek = EigenKRR(gaussian_kernel(data["D"], s), data["Y"], center=False)
        rel_close(res.errors[i], ek.cv_mse(LAMS, cv=folds), 1e-10)
    E = brute_force_errors(data, folds, center=False)
    rel_close(res.errors, E.sum(axis=2), 1e-9)


def test_cv_grid_progress_and_1d_targets(data):
    calls = []
    res = cv_grid(data["D"], data["Y"][:, 2], SIGMAS, LAMS, progress=lambda *a: calls.append(a))
    assert calls == [(0, 3, "loo"), (1, 3, "loo"), (2, 3, "loo"), (3, 3, "loo")]
    full = cv_grid(data["D"], data["Y"], SIGMAS, LAMS, per_output=True, keep_output_errors=True)
    rel_close(res.errors, full.output_errors[:, :, 2], 1e-10)
    calls.clear()
    cv_grid(data["D"], data["Y"], SIGMAS, LAMS, cv=kfold_indices(M, 4, 0), per_output=True,
            progress=lambda *a: calls.append(a))
    assert calls[0] == (0, 3, "4-fold") and calls[-1] == (3, 3, "4-fold") and len(calls) == 4


# ------------------------------------------------------------------- KernelRidgeModel


def test_set_lambda_equals_fresh_fit(data):
    s = data["sigma"]
    model = KernelRidgeModel().fit(data["D"], data["Y"], s, 1e-3)
    for lam in [0.2, np.geomspace(1e-4, 1e-1, L)]:
        model.set_lambda(lam)
        fresh = KernelRidgeModel().fit(data["D"], data["Y"], s, lam)
        rel_close(model.dual_coef_, fresh.dual_coef_, 1e-12)
        rel_close(model.predict(data["Dt"]), fresh.predict(data["Dt"]), 1e-12)
        np.testing.assert_array_equal(model.lam_, np.broadcast_to(lam, (L,)))


def test_per_output_sigma_lambda_equals_separate_fits(data):
    sigma = np.array([0.9, 0.5, 0.9, 1.6, 0.5, 0.9])
    lam = np.array([1e-2, 1e-3, 1e-1, 1e-2, 1e-2, 1e-2])
    model = KernelRidgeModel().fit(data["D"], data["Y"], sigma, lam)
    np.testing.assert_array_equal(model.group_sigmas_, [0.5, 0.9, 1.6])
    np.testing.assert_array_equal(model.group_index_, [1, 0, 1, 2, 0, 1])
    pred = model.predict(data["Dt"])
    assert pred.shape == (N_TEST, L)
    alpha = model.dual_coef_
    for j in range(L):
        single = KernelRidgeModel().fit(data["D"], data["Y"][:, j], sigma[j], lam[j])
        out = single.predict(data["Dt"])
        assert out.shape == (N_TEST,)
        rel_close(pred[:, j], out, 1e-12)
        rel_close(alpha[:, j], single.dual_coef_[:, 0], 1e-12)
    # set_lambda with several groups also equals a fresh fit
    lam2 = lam[::-1].copy()
    model.set_lambda(lam2)
    rel_close(model.predict(data["Dt"]),
              KernelRidgeModel().fit(data["D"], data["Y"], sigma, lam2).predict(data["Dt"]), 1e-12)


def test_fit_with_cv_result(data):
    res = cv_grid(data["D"], data["Y"], SIGMAS, LAMS, per_output=True)
    model = KernelRidgeModel().fit(data["D"], data["Y"], res.best_sigma, res.best_lam)
    np.testing.assert_array_equal(model.sigma_, res.best_sigma)
    np.testing.assert_array_equal(model.lam_, res.best_lam)


@pytest.mark.parametrize("per_output", [False, True])
def test_to_arrays_round_trip(data, tmp_path, per_output):
    sigma = np.array([0.9, 0.5, 0.9, 1.6, 0.5, 0.9]) if per_output else data["sigma"]
    lam = np.geomspace(1e-3, 1e-1, L) if per_output else 1e-2
    model = KernelRidgeModel().fit(data["D"], data["Y"], sigma, lam)
    arrays = model.to_arrays()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in arrays.values())
    path = tmp_path / "model.npz"
    np.savez(path, **arrays)
    with np.load(path, allow_pickle=False) as f:
        loaded = KernelRidgeModel.from_arrays(f)
    np.testing.assert_array_equal(loaded.predict(data["Dt"]), model.predict(data["Dt"]))
    np.testing.assert_array_equal(loaded.sigma_, model.sigma_)
    np.testing.assert_array_equal(loaded.lam_, model.lam_)
    np.testing.assert_array_equal(loaded.offset_, model.offset_)
    s0 = model.group_sigmas_[0]
    lam0 = float(model.lam_[model.group_index_ == 0][0])
    np.testing.assert_array_equal(loaded.variance(data["Dt"], lam=lam0),
                                  model.variance(data["Dt"], lam=lam0))
    with pytest.raises(RuntimeError, match="projected targets"):
        loaded.set_lambda(0.5)
    full = KernelRidgeModel.from_arrays(model.to_arrays(include_projected_targets=True))
    full.set_lambda(0.5)
    model.set_lambda(0.5)
    rel_close(full.predict(data["Dt"]), model.predict(data["Dt"]), 1e-13)
    assert s0 == full.group_sigmas_[0]


def test_round_trip_1d_targets(data):
    model = KernelRidgeModel().fit(data["D"], data["Y"][:, 0], data["sigma"], 1e-2)
    loaded = KernelRidgeModel.from_arrays(model.to_arrays())
    out = loaded.predict(data["Dt"])
    assert out.shape == (N_TEST,)
    np.testing.assert_array_equal(out, model.predict(data["Dt"]))


# ---------------------------------------------------------------------- GP variance


@pytest.mark.parametrize("lam", [1e-4, 1e-2, 0.3])
def test_predictive_variance_matches_sklearn_gpr(data, lam):
    s = data["sigma"]
    gpr = GaussianProcessRegressor(kernel=RBF(length_scale=s, length_scale_bounds="fixed"),
                                   alpha=lam, optimizer=None, normalize_y=False)
    gpr.fit(data["X"], data["Y"][:, 0])
    Xq = np.vstack([data["Xt"], data["X"][:3] + 0.05])
    _, std = gpr.predict(Xq, return_std=True)
    Dq = cdist(Xq, data["X"], "sqeuclidean")
    ek = EigenKRR(gaussian_kernel(data["D"], s), data["Y"])
    var = ek.predictive_variance(gaussian_kernel(Dq, s), np.ones(len(Xq)), lam)
    np.testing.assert_allclose(var, std**2, rtol=1e-8, atol=1e-12)
    model = KernelRidgeModel().fit(data["D"], data["Y"], s, lam)
    np.testing.assert_allclose(model.variance(Dq), std**2, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(model.variance(Dq, sq_self=np.zeros(len(Xq)), sigma=s, lam=lam),
                               std**2, rtol=1e-8, atol=1e-12)


# ------------------------------------------------------------------------ kfold_indices


def test_kfold_indices_partition_and_determinism():
    folds = kfold_indices(23, 5, seed=7)
    assert len(folds) == 5
    assert sorted(len(f) for f in folds) == [4, 4, 5, 5, 5]
    np.testing.assert_array_equal(np.sort(np.concatenate(folds)), np.arange(23))
    again = kfold_indices(23, 5, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again))
    other = kfold_indices(23, 5, seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(folds, other))
    # shuffled: not simply consecutive blocks
    assert not np.array_equal(folds[0], np.arange(len(folds[0])))


# --------------------------------------------------------------------------- bad input


def test_bad_inputs_raise_informative_errors(data):
    D, Y, s = data["D"], data["Y"], data["sigma"]
    K = gaussian_kernel(D, s)
    Ynan = Y.copy()
    Ynan[3, 2] = np.nan
    with pytest.raises(ValueError, match=r"Y contains 1 non-finite"):
        EigenKRR(K, Ynan)
    with pytest.raises(ValueError, match=r"Y must have M=36 rows"):
        EigenKRR(K, Y[:-1])
    with pytest.raises(ValueError, match=r"K must be a non-empty square"):
        EigenKRR(K[:, :-1], Y)
    Kasym = K.copy()
    Kasym[0, 1] += 0.1
    with pytest.raises(ValueError, match=r"K must be symmetric"):
        EigenKRR(Kasym, Y)
    with pytest.raises(ValueError, match=r"not positive semi-definite"):
        EigenKRR(-K, Y)
    with pytest.raises(ValueError, match=r"sigma must be > 0"):
        gaussian_kernel(D, 0.0)
    with pytest.raises(ValueError, match=r"sigma must be finite"):
        gaussian_kernel(D, np.inf)
    with pytest.raises(ValueError, match=r"sq_dist must contain squared distances >= 0"):
        gaussian_kernel(-D - 1, 1.0)
    ek = EigenKRR(K, Y)
    with pytest.raises(ValueError, match=r"lam must be > 0"):
        ek.dual_coef(-1e-3)
    with pytest.raises(ValueError, match=r"lam must be > 0"):
        ek.loo_residuals(0.0)
    with pytest.raises(ValueError, match=r"lam must be a scalar or have shape \(6,\)"):
        ek.dual_coef(np.ones(5))
    with pytest.raises(ValueError, match=r"folds must partition range\(36\)"):
        ek.kfold_residuals(0.1, [np.arange(10), np.arange(9, 36)])
    with pytest.raises(ValueError, match=r"folds must contain at least 2 folds"):
        ek.kfold_residuals(0.1, [np.arange(36)])
    with pytest.raises(ValueError, match=r"cv must be 'loo' or a list"):
        ek.cv_mse([0.1], cv="lpo")
    with pytest.raises(ValueError, match=r"lams must contain values > 0"):
        ek.cv_mse([0.1, -1.0])
    with pytest.raises(ValueError, match=r"K_cross must have shape \(n, 36\)"):
        ek.predictive_variance(np.ones((3, 35)), np.ones(3), 0.1)
    with pytest.raises(ValueError, match=r"sq_dist must be square"):
        cv_grid(D[:, :-1], Y, [1.0], [0.1])
    with pytest.raises(ValueError, match=r"sq_dist must be symmetric"):
        Dasym = D.copy()
        Dasym[0, 1] += 1.0
        cv_grid(Dasym, Y, [1.0], [0.1])
    with pytest.raises(ValueError, match=r"sigmas must contain values > 0"):
        cv_grid(D, Y, [1.0, 0.0], [0.1])
    with pytest.raises(ValueError, match=r"sigmas must be a non-empty"):
        cv_grid(D, Y, [], [0.1])
    with pytest.raises(ValueError, match=r"progress must be callable"):
        cv_grid(D, Y, [1.0], [0.1], progress=3)
    model = KernelRidgeModel()
    with pytest.raises(RuntimeError, match="not fitted"):
        model.predict(data["Dt"])
    with pytest.raises(ValueError, match=r"sigma must be a scalar or have shape \(6,\)"):
        model.fit(D, Y, np.ones(3), 0.1)
    with pytest.raises(ValueError, match=r"lam must be > 0"):
        model.fit(D, Y, s, np.r_[np.ones(5), 0.0])
    with pytest.raises(ValueError, match=r"sq_dist_train contains 1 non-finite"):
        Dnan = D.copy()
        Dnan[2, 2] = np.nan
        model.fit(Dnan, Y, s, 0.1)
    model.fit(D, Y, s, 0.1)
    with pytest.raises(ValueError, match=r"sq_dist_cross must have 36 columns"):
        model.predict(data["Dt"][:, :-1])
    with pytest.raises(ValueError, match=r"sigma=.* is not a sigma of this model"):
        model.variance(data["Dt"], sigma=s * 2)
    with pytest.raises(ValueError, match=r"arrays is missing key"):
        KernelRidgeModel.from_arrays({"dual_coef": np.ones((3, 2))})
    with pytest.raises(ValueError, match=r"k must satisfy 2 <= k <= M=10"):
        kfold_indices(10, 11, 0)
    with pytest.raises(ValueError, match=r"seed must be an integer"):
        kfold_indices(10, 2, 0.5)
    multi = KernelRidgeModel().fit(D, Y, s, np.geomspace(1e-3, 1e-1, L))
    with pytest.raises(ValueError, match=r"lam must be given"):
        multi.variance(data["Dt"])
