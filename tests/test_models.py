from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.kernel_ridge import KernelRidge

from mlhk_viz.descriptor import GaussianPotential
from mlhk_viz.evaluation import KCAL_PER_HARTREE, evaluate, select_training, split
from mlhk_viz.models import MLHK, MLKS, load_model, save_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def h2_split(h2):
    test, pool = split(h2, 50, seed=0)
    return select_training(h2, pool, 10), test


def _brute_sq_dist(pa, pb, numbers, gamma, spacing, axes):
    pot = GaussianPotential(gamma, spacing)
    va = pot.potential_on_grid(pa, numbers, axes).reshape(len(pa), -1)
    vb = pot.potential_on_grid(pb, numbers, axes).reshape(len(pb), -1)
    return ((va[:, None, :] - vb[None, :, :]) ** 2).sum(-1)


def test_mlhk_fixed_hyperparameters_equal_independent_krr(h2, h2_split):
    """Both stages against sklearn's KernelRidge on brute-force descriptor grids."""
    train, test = h2_split
    U, E = h2.coefficients(), h2.energies
    g, d, s, lam, es, el = 0.2, 0.1, 30.0, 1e-8, 0.05, 1e-9
    m = MLHK(gamma=g, spacing=d, sigma=s, lam=lam, energy_sigma=es, energy_lam=el).fit(
        h2.positions[train], E[train], U[train], numbers=h2.numbers)
    Dtr = _brute_sq_dist(h2.positions[train], h2.positions[train], h2.numbers, g, d, m.axes_)
    Dte = _brute_sq_dist(h2.positions[test], h2.positions[train], h2.numbers, g, d, m.axes_)
    K = lambda D, sig: np.exp(-D / (2 * sig**2))  # noqa: E731
    off = U[train].mean(0)
    kr = KernelRidge(kernel="precomputed", alpha=lam).fit(K(Dtr, s), U[train] - off)
    u_ref = kr.predict(K(Dte, s)) + off
    u = m.predict_coefficients(h2.positions[test])
    np.testing.assert_allclose(u, u_ref, rtol=0, atol=1e-8 * np.abs(u_ref).max())
    # energy functional trained on in-sample predicted densities (Eq. 13)
    F = kr.predict(K(Dtr, s)) + off
    DF = ((F[:, None] - F[None]) ** 2).sum(-1)
    DFt = ((u_ref[:, None] - F[None]) ** 2).sum(-1)
    ke = KernelRidge(kernel="precomputed", alpha=el).fit(K(DF, es), E[train] - E[train].mean())
    e_ref = ke.predict(K(DFt, es)) + E[train].mean()
    np.testing.assert_allclose(m.predict(h2.positions[test]), e_ref, rtol=0, atol=1e-9)


def test_energy_functional_on_leave_one_out_densities_equals_explicit_refits(tmp_path, h2, h2_split):
    """``energy_features="loo"``: the functional's training densities are those of density models refitted
    without each molecule (sklearn), and the model file keeps them."""
    train, test = h2_split
    U, E = h2.coefficients(), h2.energies
    s, lam = 30.0, 1e-6
    m = MLHK(gamma=0.2, spacing=0.1, sigma=s, lam=lam, energy_features="loo").fit(
        h2.positions[train], E[train], U[train], numbers=h2.numbers)
    Dtr = _brute_sq_dist(h2.positions[train], h2.positions[train], h2.numbers, 0.2, 0.1, m.axes_)
    K = np.exp(-Dtr / (2 * s**2))
    off = U[train].mean(0)  # the constant offset of the full fit, as the closed form keeps it
    ref = np.empty_like(m.energy_features_)
    for i in range(len(train)):
        keep = np.arange(len(train)) != i
        kr = KernelRidge(kernel="precomputed", alpha=lam).fit(K[np.ix_(keep, keep)], U[train][keep] - off)
        ref[i] = kr.predict(K[i:i + 1, keep])[0] + off
    np.testing.assert_allclose(m.energy_features_, ref, rtol=0, atol=1e-7 * np.abs(ref).max())
    inner = MLHK(gamma=0.2, spacing=0.1, sigma=s, lam=lam).fit(h2.positions[train], E[train], U[train],
                                                                 numbers=h2.numbers)
    assert np.abs(m.energy_features_ - U[train]).sum() > np.abs(inner.energy_features_ - U[train]).sum()
    back = load_model(save_model(m, tmp_path / "loo.mlhk.npz"))
    assert back.energy_features == "loo"
    np.testing.assert_array_equal(back.predict(h2.positions[test]), m.predict(h2.positions[test]))
    with pytest.raises(ValueError, match=r"energy_features must be one of 'predicted', 'loo', 'dft', got 'oob'"):
        MLHK(energy_features="oob").fit(h2.positions[train], E[train], U[train], numbers=h2.numbers)


def test_error_decomposition_equals_independent_krr(h2, h2_split):
    """dE_F = E^ML[n^DFT] - E and dE_D = E^ML[n^ML] - E^ML[n^DFT], with E^ML and n^ML from sklearn's
    KernelRidge on brute-force descriptors: a swap of the two parts, or a wrong density in either, fails."""
    train, test = h2_split
    U, E = h2.coefficients(), h2.energies
    g, d, s, lam, es, el = 0.2, 0.1, 30.0, 1e-8, 0.05, 1e-9
    m = MLHK(gamma=g, spacing=d, sigma=s, lam=lam, energy_sigma=es, energy_lam=el).fit(
        h2.positions[train], E[train], U[train], numbers=h2.numbers)
    dec = m.error_decomposition(h2.positions[test], E[test], U[test])

    K = lambda D, sig: np.exp(-D / (2 * sig**2))  # noqa: E731
    sq = lambda A, B: ((A[:, None] - B[None]) ** 2).sum(-1)  # noqa: E731
    Dtr = _brute_sq_dist(h2.positions[train], h2.positions[train], h2.numbers, g, d, m.axes_)
    Dte = _brute_sq_dist(h2.positions[test], h2.positions[train], h2.numbers, g, d, m.axes_)
    off = U[train].mean(0)
    kr = KernelRidge(kernel="precomputed", alpha=lam).fit(K(Dtr, s), U[train] - off)
    F, u_ml = kr.predict(K(Dtr, s)) + off, kr.predict(K(Dte, s)) + off
    ke = KernelRidge(kernel="precomputed", alpha=el).fit(K(sq(F, F), es), E[train] - E[train].mean())
    functional = lambda u: ke.predict(K(sq(u, F), es)) + E[train].mean()  # noqa: E731
    e_ml, e_at_dft = functional(u_ml), functional(U[test])

    atol = 1e-9  # Hartree
    np.testing.assert_allclose(dec["E_ml"], e_ml, rtol=0, atol=atol)
    np.testing.assert_allclose(dec["E_ml_at_dft_density"], e_at_dft, rtol=0, atol=atol)
    np.testing.assert_allclose(dec["dE"], e_ml - E[test], rtol=0, atol=atol)
    np.testing.assert_allclose(dec["dE_F"], e_at_dft - E[test], rtol=0, atol=atol)
    np.testing.assert_allclose(dec["dE_D"], e_ml - e_at_dft, rtol=0, atol=atol)
    np.testing.assert_allclose(dec["density_l2"], np.linalg.norm(u_ml - U[test], axis=1), rtol=0,
                               atol=1e-8 * np.linalg.norm(U[test], axis=1).max())
    # both parts are really there, and neither is the whole: the check above can tell them apart
    assert np.all(np.abs(dec["dE_D"]) > 10 * atol) and np.all(np.abs(dec["dE_F"]) > 10 * atol)
    assert np.abs(dec["dE_D"] - dec["dE_F"]).max() > 1e-6


def test_sklearn_conventions(h2, h2_split):
    train, _ = h2_split
    m = MLHK(sigma=10.0, lam=1e-6)
    c = clone(m)
    assert c.get_params() == m.get_params() and c is not m
    assert "sigma=10.0" in repr(m)
    c.set_params(lam=1e-3, gamma=0.25)
    assert c.lam == 1e-3 and c.gamma == 0.25 and m.lam == 1e-6
    ks = MLKS().fit([h2.atoms(i) for i in train], h2.energies[train])
    r2 = ks.score([h2.atoms(i) for i in train], h2.energies[train])
    assert r2 > 0.999  # in-sample R² of a nearly interpolating fit
    with pytest.raises(RuntimeError, match="not fitted"):
        MLKS().predict(h2.positions[:2])


def test_save_load_round_trip(tmp_path, h2, h2_split):
    train, test = h2_split
    U = h2.coefficients()
    for m in (MLHK().fit(h2.positions[train], h2.energies[train], U[train], numbers=h2.numbers),
              MLKS().fit(h2.positions[train], h2.energies[train], numbers=h2.numbers)):
        path = save_model(m, tmp_path / f"{type(m).__name__}.npz")
        back = load_model(path)
        assert type(back) is type(m)
        np.testing.assert_array_equal(back.predict(h2.positions[test]), m.predict(h2.positions[test]))
        if isinstance(m, MLHK):
            np.testing.assert_array_equal(back.predict_coefficients(h2.positions[test[:3]]),
                                          m.predict_coefficients(h2.positions[test[:3]]))
    raw = path.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[:100])
    from mlhk_viz.datasets import DatasetError

    with pytest.raises(DatasetError, match="truncated or corrupt"):
        load_model(tmp_path / "cut.npz")


def test_model_files_record_their_training_data(tmp_path, h2, h2_split, capsys):
    """``provenance`` round-trips; ``read_model_meta`` and ``mlhk-viz info`` read it (and M, the atoms) without
    the large arrays; files saved without it read back as ``{}`` and say so."""
    from mlhk_viz.cli import main
    from mlhk_viz.datasets import DatasetError
    from mlhk_viz.models import read_model_meta

    train, test = h2_split
    m = MLHK(sigma=100.0, lam=1e-10, energy_sigma=1.0, energy_lam=1e-8).fit(
        h2.positions[train], h2.energies[train], h2.coefficients()[train], numbers=h2.numbers)
    prov = {"dataset": "h2.npz", "name": "H2", "m": len(train), "train": [int(i) for i in train]}
    save_model(m, tmp_path / "with.npz", provenance=prov)
    save_model(m, tmp_path / "without.npz")
    assert load_model(tmp_path / "with.npz").provenance_ == prov
    assert load_model(tmp_path / "without.npz").provenance_ == {}
    meta, numbers, n_fit = read_model_meta(tmp_path / "with.npz")
    assert meta["kind"] == "MLHK" and meta["provenance"] == prov
    assert numbers.tolist() == h2.numbers.tolist() and n_fit == len(train)

    assert main(["info", str(tmp_path / "with.npz")]) == 0
    out = capsys.readouterr().out
    assert f"MLHK model (format version 1): M = {len(train)} training molecules of H2 (2 atoms)" in out
    assert "density KRR: sigma 100, lambda 1e-10" in out and "energy KRR: sigma 1, lambda 1e-08" in out
    assert f"trained on: H2 (h2.npz), {len(train)} rows" in out
    assert main(["info", str(tmp_path / "without.npz")]) == 0
    assert "trained on: not recorded in the file" in capsys.readouterr().out

    with pytest.raises(ValueError, match="provenance must be JSON-able"):
        save_model(m, tmp_path / "bad.npz", provenance={"train": np.arange(3)})
    assert not (tmp_path / "bad.npz").exists()
    with pytest.raises(DatasetError, match="expected 'mlhk-viz-model'"):
        read_model_meta(ROOT / "data" / "h2.npz")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "with.npz").read_bytes()[:100])
    with pytest.raises(DatasetError, match="not a readable model file"):
        read_model_meta(tmp_path / "cut.npz")


@pytest.mark.parametrize("kw", [{}, {"per_coefficient": True}, {"energy_features": "loo"}],
                         ids=["shared", "per-coefficient", "loo-functional"])
def test_a_by_reference_file_refits_to_the_same_model(tmp_path, h2, h2_split, kw):
    """``densities="by-reference"`` keeps σ, λ and a fingerprint of the training data, not the 2 × M MB of
    arrays; loading refits from the data set found beside the file (or in ``search``, or given) and
    predicts bit for bit what the saved model did."""
    import shutil

    from mlhk_viz.datasets import Dataset
    from mlhk_viz.models import read_model_meta

    train, test = h2_split
    data, models = tmp_path / "data", tmp_path / "models"
    data.mkdir(), models.mkdir()
    shutil.copy(ROOT / "data" / "h2.npz", data / "h2.npz")
    m = MLHK(**kw).fit(h2.positions[train], h2.energies[train], h2.coefficients()[train], numbers=h2.numbers)
    prov = {"dataset": "h2.npz", "name": "H2", "train": [int(i) for i in train]}
    full = save_model(m, models / "full.npz", prov)
    ref = save_model(m, models / "ref.npz", prov, densities="by-reference")
    assert ref.stat().st_size < full.stat().st_size / 20
    meta, numbers, n_fit = read_model_meta(ref)
    assert (meta["version"], meta["densities"], n_fit) == (2, "by-reference", len(train))
    x = h2.positions[test]
    for back in (load_model(ref, search=[data]), load_model(ref, dataset=data / "h2.npz"),
                 load_model(ref, dataset=Dataset.load(data / "h2.npz"))):
        np.testing.assert_array_equal(back.predict(x), m.predict(x))
        np.testing.assert_array_equal(back.predict_coefficients(x[:3]), m.predict_coefficients(x[:3]))
        np.testing.assert_array_equal(back.energy_features_, m.energy_features_)
        assert back.provenance_ == prov
    shutil.copy(ref, data / "ref.npz")  # beside its data set: found without help
    np.testing.assert_array_equal(load_model(data / "ref.npz").predict(x), m.predict(x))


def test_a_by_reference_file_says_what_is_missing_or_changed(tmp_path, h2, h2_split, capsys):
    import shutil

    from mlhk_viz.cli import main
    from mlhk_viz.datasets import DatasetError

    train, test = h2_split
    U = h2.coefficients()
    m = MLHK(sigma=100.0, lam=1e-10, energy_sigma=1.0, energy_lam=1e-8).fit(
        h2.positions[train], h2.energies[train], U[train], numbers=h2.numbers)
    prov = {"dataset": "h2.npz", "name": "H2", "train": [int(i) for i in train]}
    ref = save_model(m, tmp_path / "ref.npz", prov, densities="by-reference")
    assert main(["info", str(ref)]) == 0
    out = capsys.readouterr().out
    assert "format version 2" in out and "training densities: by reference to h2.npz" in out
    with pytest.raises(TypeError, match="dataset must be a Dataset or a path, got int"):
        load_model(ref, dataset=123)
    # the data set is nowhere it is looked for
    with pytest.raises(DatasetError, match=r"ref.npz: its training densities are in h2.npz, which is not in .*pass dataset="):
        load_model(ref, search=[tmp_path / "elsewhere"])
    # the data set changed: one training energy moved by 1 µHa
    changed = h2.subset(np.arange(len(h2)))
    changed.energies = changed.energies.copy()
    changed.energies[train[4]] += 1e-6
    changed.save(tmp_path / "h2.npz")
    calls = []
    with pytest.raises(DatasetError, match=rf"are not the molecules it was trained on \(rows \[{train[4]}\] differ "
                                           r"in geometry or energy\)"):
        load_model(ref, progress=lambda *a: calls.append(a))
    assert calls == []  # refused before any density of the changed set was expanded
    # a density changed alone (orbitals scaled by 1 %, same geometry and energy)
    changed = h2.subset(np.arange(len(h2)))
    changed.mo_coeff = changed.mo_coeff.copy()
    changed.mo_coeff[train[6]] *= 1.01
    changed.save(tmp_path / "h2.npz")
    with pytest.raises(DatasetError, match=rf"\(rows \[{train[6]}\] differ in density\)"):
        load_model(ref)
    # a shorter set
    h2.subset(np.arange(int(max(train)))).save(tmp_path / "h2.npz")
    with pytest.raises(DatasetError, match=rf"go up to {max(train)}, but the set has {max(train)} molecules"):
        load_model(ref)
    shutil.copy(ROOT / "data" / "h2.npz", tmp_path / "h2.npz")
    np.testing.assert_array_equal(load_model(ref).predict(h2.positions[test]), m.predict(h2.positions[test]))
    # what cannot be saved by reference, refused before anything is written
    ks = MLKS().fit(h2.positions[train], h2.energies[train], numbers=h2.numbers)
    for model, p, said in ((ks, prov, "only an ML-HK model has training densities to refer to"),
                           (m, {"dataset": "h2.npz"}, "needs provenance=.*'train': the 10 row indices"),
                           (m, None, "needs provenance="),
                           (load_model(save_model(m, tmp_path / "full.npz")), prov, "save it embedded")):
        with pytest.raises(ValueError, match=said):
            save_model(model, tmp_path / "no.npz", p, densities="by-reference")
    with pytest.raises(ValueError, match="densities must be one of 'embedded', 'by-reference', got 'zip'"):
        save_model(m, tmp_path / "no.npz", prov, densities="zip")
    assert not (tmp_path / "no.npz").exists()


def test_alignment_makes_predictions_rotation_invariant(h2, h2_split):
    from scipy.spatial.transform import Rotation

    train, test = h2_split
    ref = h2.positions[train[0]]
    m = MLKS(reference=ref).fit(h2.positions[train], h2.energies[train], numbers=h2.numbers)
    rot = np.stack([Rotation.random(random_state=i).apply(p) + 2.0 for i, p in enumerate(h2.positions[test])])
    # alignment is exact to round-off; the kernel solve amplifies that to ~1e-8 Hartree (1e-5 kcal/mol)
    np.testing.assert_allclose(m.predict(rot), m.predict(h2.positions[test]), rtol=0, atol=1e-7)
    shifted = m.predict(h2.positions[test] + np.array([0.3, 0, 0]) * (np.arange(2)[:, None] - 0.5))
    assert np.abs(shifted - m.predict(h2.positions[test])).max() > 1e-4  # a real change is seen


def test_densities_of_molecules_the_model_would_turn_are_refused(h2, h2_split):
    """A DFT density does not turn with its molecule: with a reference, training (and decomposition) frames
    must already be in its frame. Turned frames are refused, naming them; aligned_positions puts them there."""
    from scipy.spatial.transform import Rotation

    train, test = h2_split
    U = h2.coefficients()
    ref = h2.positions[train[0]]
    turned = h2.positions[train].copy()
    turned[[2, 5]] = Rotation.from_euler("z", 40, degrees=True).apply(turned[2]), turned[5] @ np.diag([1, -1, 1.0])[[1, 0, 2]]
    with pytest.raises(ValueError, match=r"training molecules \[2, 5\] are not in the reference frame.*aligned_positions"):
        MLHK(reference=ref, sigma=1.0, lam=1e-8, energy_sigma=1.0, energy_lam=1e-8).fit(
            turned, h2.energies[train], U[train], numbers=h2.numbers)
    m = MLHK(reference=ref, sigma=1.0, lam=1e-8, energy_sigma=1.0, energy_lam=1e-8).fit(
        h2.positions[train], h2.energies[train], U[train], numbers=h2.numbers)
    np.testing.assert_allclose(m.aligned_positions(turned), h2.positions[train], atol=1e-12)
    # energies alone are rotation invariant; a decomposition against densities of turned molecules is not
    np.testing.assert_allclose(m.predict(turned), m.predict(h2.positions[train]), atol=1e-9)
    with pytest.raises(ValueError, match=r"molecules \[0\] are not in the reference frame"):
        m.error_decomposition(turned[2:3], h2.energies[train][2:3], U[train][2:3])
    dec = m.error_decomposition(m.aligned_positions(turned[2:3]), h2.energies[train][2:3], U[train][2:3])
    same = m.error_decomposition(h2.positions[train][2:3], h2.energies[train][2:3], U[train][2:3])
    for k in ("dE", "dE_D", "density_l2"):
        np.testing.assert_allclose(dec[k], same[k], rtol=0, atol=1e-9)


def test_bad_inputs_say_what_is_wrong(h2, h2_split):
    train, _ = h2_split
    U = h2.coefficients()
    P, E = h2.positions[train], h2.energies[train]
    with pytest.raises(ValueError, match="pass numbers="):
        MLKS().fit(P, E)
    with pytest.raises(ValueError, match="rows for 10 molecules"):
        MLKS().fit(P, E[:5], numbers=h2.numbers)
    bad = E.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        MLKS().fit(P, bad, numbers=h2.numbers)
    with pytest.raises(ValueError, match=r"expected shape \(10, 125000\)"):
        MLHK().fit(P, E, U[train][:, :100], numbers=h2.numbers)
    m = MLKS().fit(P, E, numbers=h2.numbers)
    with pytest.raises(ValueError, match="3 atoms per molecule"):
        m.predict(np.zeros((2, 3, 3)))
    # the shapes and values the caller gave are the ones named
    for kwargs, said in (({"y": 1.0}, r"y \(energies\): expected shape \(10,\), one value per molecule, got a scalar"),
                         ({"y": np.c_[E, E]}, r"y \(energies\): expected shape \(10,\), .* got \(10, 2\)"),
                         ({"X": P.reshape(10, 6)}, r"X: expected shape \(n_molecules, n_atoms, 3\) in Å, got \(10, 6\)"),
                         ({"numbers": [1.7, 1.2]}, r"numbers: atomic numbers must be whole numbers, got \[1.7, 1.2\]"),
                         ({"numbers": ["H", "H"]}, "numbers: atomic numbers must be whole numbers"),
                         ({"numbers": [200, 1]}, r"numbers: atomic numbers lie in 1..118, got \[200\]")):
        args = {"X": P, "y": E, "numbers": h2.numbers, **kwargs}
        with pytest.raises(ValueError, match=said):
            MLKS().fit(args["X"], args["y"], numbers=args["numbers"])
    with pytest.raises(ValueError, match="cv must be 'loo' or a number of folds .*, got 'bogus'"):
        MLKS(cv="bogus").fit(P, E, numbers=h2.numbers)
    hk = MLHK(sigma=100.0, lam=1e-8, energy_sigma=1.0, energy_lam=1e-8).fit(P, E, U[train], numbers=h2.numbers)
    with pytest.raises(ValueError, match=r"coefficients: expected shape \(n, 125000\), got \(2, 10\)"):
        hk.energy_of(np.zeros((2, 10)))


@pytest.mark.slow
def test_small_table1_h2(h2):
    """The paper's H2 protocol at M = 10: ML-HK MAE below 0.1 kcal/mol and better than ML-KS."""
    test, pool = split(h2, 50, seed=0)
    ev = evaluate(h2, select_training(h2, pool, 10), test)
    s = ev.summary()
    assert s["mlhk_dE"][0] < 0.1
    assert s["mlhk_dE"][0] < s["mlks_dE"][0]
    # the per-molecule errors are the library's energies against DFT, in kcal/mol
    np.testing.assert_allclose(ev.errors["mlhk_dE"], (ev.mlhk.predict(h2.positions[test]) - h2.energies[test]) * KCAL_PER_HARTREE)


def test_predictive_variance_vanishes_at_training_points(h2, h2_split):
    train, test = h2_split
    U = h2.coefficients()
    for pc in (False, True):
        m = MLHK(per_coefficient=pc).fit(h2.positions[train], h2.energies[train], U[train], numbers=h2.numbers)
        v_train = m.predict_variance(h2.positions[train])
        v_test = m.predict_variance(h2.positions[test])
        lam_used = float(np.median(np.atleast_1d(m.density_hyper_.lam)))
        # at a training point the latent variance is at most the noise variance lambda
        assert np.all(v_train <= lam_used * 1.001 + 1e-9) and np.all(v_test >= 0)
        assert v_test.max() > 10 * v_train.max()
        # independent GP formula k** - k*^T (K + lam I)^-1 k* at the model's sigma, lambda
        if not pc:
            s, lam = m.density_hyper_.sigma, m.density_hyper_.lam
            K = np.exp(-m.descriptor_distances(h2.positions[train]) / (2 * s * s))
            ks = np.exp(-m.descriptor_distances(h2.positions[test]) / (2 * s * s))
            ref = 1 - np.einsum("ij,ij->i", ks, np.linalg.solve(K + lam * np.eye(len(K)), ks.T).T)
            np.testing.assert_allclose(v_test, np.maximum(ref, 0), atol=1e-8)


def test_cv_rule_1se_picks_the_krr_rule_and_equals_explicit_refit(h2, h2_split):
    """cv_rule='1se' uses krr.cv_grid's rule on the same distances, and the model is the fixed-(σ, λ) refit."""
    from mlhk_viz.krr import cv_grid
    from mlhk_viz.models import SIGMA_FACTORS, LAMBDAS, sq_feature_distances

    train, test = h2_split
    U, E, X = h2.coefficients(), h2.energies, h2.positions
    m = MLHK(cv_rule="1se").fit(X[train], E[train], U[train], numbers=h2.numbers)
    D = m.potential_.sq_distances(m.X_fit_, None, m.numbers_, m.axes_)
    med = np.sqrt(np.median(D[np.triu_indices(len(D), 1)]))
    ref = cv_grid(D, U[train], np.asarray(SIGMA_FACTORS) * med, LAMBDAS, rule="1se")
    assert (m.density_hyper_.sigma, m.density_hyper_.lam) == pytest.approx((ref.best_sigma, ref.best_lam))
    assert m.density_hyper_.cv.rule == "1se"
    lo = MLHK().fit(X[train], E[train], U[train], numbers=h2.numbers)
    assert m.density_hyper_.lam >= lo.density_hyper_.lam  # same distances: the rule only adds ridge
    eref = cv_grid(sq_feature_distances(m.energy_features_), E[train][:, None],
                   np.asarray(SIGMA_FACTORS) * np.sqrt(np.median(sq_feature_distances(m.energy_features_)[
                       np.triu_indices(len(train), 1)])), LAMBDAS, rule="1se")
    assert (m.energy_hyper_.sigma, m.energy_hyper_.lam) == pytest.approx((eref.best_sigma, eref.best_lam))
    fixed = MLHK(sigma=m.density_hyper_.sigma, lam=m.density_hyper_.lam, energy_sigma=m.energy_hyper_.sigma,
                 energy_lam=m.energy_hyper_.lam).fit(X[train], E[train], U[train], numbers=h2.numbers)
    np.testing.assert_array_equal(m.predict(X[test]), fixed.predict(X[test]))
    ks = MLKS(cv_rule="1se").fit(X[train], E[train], numbers=h2.numbers)
    assert ks.hyper_.cv.rule == "1se" and ks.get_params()["cv_rule"] == "1se"


def test_cv_rule_bad_values_and_round_trip(tmp_path, h2, h2_split):
    train, test = h2_split
    U, E, X = h2.coefficients(), h2.energies, h2.positions
    with pytest.raises(ValueError, match="cv_rule must be 'min'.*got 'median'"):
        MLKS(cv_rule="median").fit(X[train], E[train], numbers=h2.numbers)
    with pytest.raises(ValueError, match="needs per_coefficient=False"):
        MLHK(cv_rule="1se", per_coefficient=True).fit(X[train], E[train], U[train], numbers=h2.numbers)
    m = MLKS(cv_rule="1se").fit(X[train], E[train], numbers=h2.numbers)
    back = load_model(save_model(m, tmp_path / "ks.npz"))
    assert back.cv_rule == "1se"
    np.testing.assert_array_equal(back.predict(X[test]), m.predict(X[test]))
