"""Analytic ML-HK forces and the ASE calculator (mlhk_viz.dynamics), on small real H2O models.

Finite-difference accuracy: the ML energy of a model fitted at lambda = 1e-12 carries round-off
noise of ~1e-10 Hartree (dual coefficients of size ~2e4 times ~1e-16), so a central difference
at eps = 1e-4 Å has noise ~1e-6 Hartree/Å on gradients of ~1 Hartree/Å, and its truncation error
is ~5e-7 relative. The tests therefore ask for 2e-5 (relative to the largest component) from
central differences at 1e-4 Å, and 1e-6 from a 5-point stencil at 1e-3 Å (truncation ~eps^4,
noise ~1e-7).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from ase import Atoms, units
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.optimize import BFGS
from scipy.spatial.transform import Rotation

from mlhk_viz.dynamics import MLHKCalculator, MLHKForceField, align_vjp, kabsch, sq_distances_and_gradient
from mlhk_viz.geometry import align
from mlhk_viz.models import MLHK, MLKS, save_model

N_TRAIN = 20


@pytest.fixture(scope="module")
def data(h2o):
    U = h2o.coefficients()
    rng = np.random.default_rng(0)
    train = np.sort(rng.choice(len(h2o), N_TRAIN, replace=False))
    test = np.setdiff1d(np.arange(len(h2o)), train)
    return h2o, U, train, test


@pytest.fixture(scope="module")
def aligned(data):
    ds, U, tr, _ = data
    return MLHK(reference=ds.positions[0]).fit(ds.positions[tr], ds.energies[tr], U[tr], numbers=ds.numbers)


@pytest.fixture(scope="module")
def plain(data):
    ds, U, tr, _ = data
    return MLHK().fit(ds.positions[tr], ds.energies[tr], U[tr], numbers=ds.numbers)


@pytest.fixture(scope="module")
def grouped(data):
    """Per-output sigmas: three sigma groups over interleaved (non-contiguous) coefficients."""
    ds, U, tr, _ = data
    L = U.shape[1]
    sigma = np.array([100.0, 140.0, 200.0])[np.random.default_rng(1).integers(0, 3, L)]
    m = MLHK(sigma=sigma, lam=1e-10, reference=ds.positions[0])
    m.fit(ds.positions[tr], ds.energies[tr], U[tr], numbers=ds.numbers)
    assert len(m.density_model_.group_sigmas_) == 3
    return m


@pytest.fixture(scope="module")
def mlks(data):
    ds, _, tr, _ = data
    return MLKS(reference=ds.positions[0]).fit(ds.positions[tr], ds.energies[tr], numbers=ds.numbers)


MODELS = ["aligned", "plain", "grouped", "mlks"]


@pytest.fixture(scope="module")
def forcefield(request):
    """``forcefield(name, route="subspace")``: one MLHKForceField per model and route (built once)."""
    made = {}

    def get(name, route="subspace"):
        if (name, route) not in made:
            made[name, route] = MLHKForceField(request.getfixturevalue(name), route=route)
        return made[name, route]

    return get


def rigid(x, seed=0, shift=(0.31, -0.22, 0.47)):
    """A random rotation about the origin plus a translation (Å)."""
    rot = Rotation.random(random_state=seed)
    return rot.apply(np.asarray(x).reshape(-1, 3)).reshape(np.shape(x)) + np.asarray(shift)


def inputs(model, ds, test):
    """Geometries to differentiate at: held-out molecules, rattled, and (if aligned) rigidly moved."""
    rng = np.random.default_rng(2)
    xs = [ds.positions[test[0]], ds.positions[test[1]] + rng.normal(0, 0.02, (3, 3))]
    if model.reference_ is not None:
        xs.append(rigid(ds.positions[test[2]], seed=3))
        xs.append(rigid(ds.positions[test[3]] + rng.normal(0, 0.02, (3, 3)), seed=4, shift=(-1.0, 2.0, 0.5)))
    return np.stack(xs)


def fd_central(energy, x, eps):
    A = len(x)
    disp = np.repeat(x[None], 6 * A, axis=0)
    for a in range(A):
        for d in range(3):
            disp[6 * a + 2 * d, a, d] += eps
            disp[6 * a + 2 * d + 1, a, d] -= eps
    e = energy(disp)
    return ((e[0::2] - e[1::2]) / (2 * eps)).reshape(A, 3)


def fd_five_point(energy, x, eps):
    A = len(x)
    steps = (2, 1, -1, -2)
    disp = np.repeat(x[None], 12 * A, axis=0)
    for a in range(A):
        for d in range(3):
            for s, k in enumerate(steps):
                disp[12 * a + 4 * d + s, a, d] += k * eps
    e = energy(disp).reshape(A, 3, 4)
    return (-e[..., 0] + 8 * e[..., 1] - 8 * e[..., 2] + e[..., 3]) / (12 * eps)


def rel(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


# ------------------------------------------------------------------------------------- energies


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("route", ["subspace", "coefficients"])
def test_energy_equals_predict(name, route, request, data, forcefield):
    model = request.getfixturevalue(name)
    ds, _, _, test = data
    x = inputs(model, ds, test)
    ff = forcefield(name, route)
    e_pred = model.predict(x)
    np.testing.assert_allclose(ff.energies(x), e_pred, rtol=0, atol=1e-9)
    E, _ = ff.energy_and_gradient(x)
    np.testing.assert_allclose(E, e_pred, rtol=0, atol=1e-9)


def test_model_is_accurate_enough_to_be_worth_differentiating(aligned, data):
    ds, _, _, test = data
    mae = np.abs(aligned.predict(ds.positions[test]) - ds.energies[test]).mean()
    assert mae < 0.5 / 627.5  # kcal/mol; the data span ~8.5 kcal/mol


def test_descriptor_distances_equal_library(aligned, data, forcefield):
    ds, _, _, test = data
    ff = forcefield("aligned")
    y = align(ds.positions[test[:5]], aligned.reference_, weights=ff.weights)
    D = sq_distances_and_gradient(y, aligned.X_fit_, aligned.numbers_, ff.gamma, ff.axes)
    ref = aligned.potential_.sq_distances(y, aligned.X_fit_, aligned.numbers_, aligned.axes_)
    np.testing.assert_allclose(D, ref, rtol=1e-10, atol=1e-9 * np.abs(ref).max())


def test_descriptor_gradient_matches_fd(aligned, data):
    ds, _, _, test = data
    y = ds.positions[test[:2]] + np.array([0.0, 0.0, 0.1])  # off the data's plane: all three axes move
    w = np.random.default_rng(0).normal(size=(2, N_TRAIN))
    args = (aligned.X_fit_, aligned.numbers_, aligned.gamma, aligned.axes_)
    _, G = sq_distances_and_gradient(y, *args, weights=w)
    for k in range(2):
        def f(p):
            return sq_distances_and_gradient(p, *args) @ w[k]

        assert rel(G[k], fd_five_point(f, y[k], 1e-3)) < 1e-7


def test_kabsch_equals_geometry_align(data):
    ds, _, _, test = data
    from ase.data import atomic_masses

    w = atomic_masses[ds.numbers]
    x = rigid(ds.positions[test[:6]], seed=5)
    y, R, _ = kabsch(x, ds.positions[0], w)
    np.testing.assert_allclose(y, align(x, ds.positions[0], weights=w), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)


# ------------------------------------------------------------------------------------- forces


@pytest.mark.parametrize("name", MODELS)
def test_analytic_gradient_matches_finite_differences(name, request, data, forcefield):
    model = request.getfixturevalue(name)
    ds, _, _, test = data
    ff = forcefield(name)
    xs = inputs(model, ds, test)
    _, G = ff.energy_and_gradient(xs)
    for x, g in zip(xs, G):
        assert rel(g, fd_central(ff.energies, x, 1e-4)) < 2e-5
        assert rel(g, fd_five_point(ff.energies, x, 1e-3)) < 1e-6
        # independent of this module's energy code: differences of the library's own predict
        assert rel(g, fd_central(model.predict, x, 1e-4)) < 2e-5


@pytest.mark.parametrize("name", MODELS)
def test_routes_agree(name, request, data, forcefield):
    ds, _, _, test = data
    xs = inputs(request.getfixturevalue(name), ds, test)
    E1, G1 = forcefield(name, "subspace").energy_and_gradient(xs)
    E2, G2 = forcefield(name, "coefficients").energy_and_gradient(xs)
    np.testing.assert_allclose(E1, E2, rtol=0, atol=1e-9)
    assert rel(G1, G2) < 1e-7


def test_naive_back_rotation_is_not_the_gradient(data, forcefield):
    """R^T df/dy (without the rotation's implicit derivative) misses a term that is not small."""
    ds, _, _, test = data
    ff = forcefield("aligned")
    x = rigid(ds.positions[test[0]], seed=6)
    y, R, ref = ff.model_frame(x[None])
    _, Gy = ff.frame_energy_and_gradient(y)  # df/dy of the model-frame function, no alignment
    tau = np.cross(y[0], Gy[0]).sum(axis=0)
    assert np.abs(tau).max() > 1e-2 * np.abs(Gy).max()  # f itself is not rotation invariant
    exact = align_vjp(y[0], R[0], ref, ff.weights, Gy[0])
    naive = Gy[0] @ R[0]
    naive = naive - np.outer(ff.weights / ff.weights.sum(), naive.sum(0))
    fd = fd_five_point(ff.energies, x, 1e-3)
    assert rel(exact, fd) < 1e-6
    assert rel(naive, fd) > 1e-3


@pytest.mark.parametrize("name", ["aligned", "grouped", "mlks"])
def test_forces_have_no_net_force_or_torque_and_rotate_with_the_molecule(name, data, forcefield):
    ds, _, _, test = data
    ff = forcefield(name)
    x = ds.positions[test[7]]
    xr = rigid(x, seed=8, shift=(2.0, -1.0, 0.3))
    (e1, e2), G = ff.energy_and_gradient(np.stack([x, xr]))
    scale = np.abs(G).max()
    for xx, g in ((x, G[0]), (xr, G[1])):
        assert np.abs(g.sum(axis=0)).max() < 1e-12 * scale
        assert np.abs(np.cross(xx, g).sum(axis=0)).max() < 1e-11 * scale
    assert abs(e1 - e2) < 1e-9
    rot = Rotation.random(random_state=8)
    np.testing.assert_allclose(G[1], rot.apply(G[0]), atol=1e-9 * scale)


# ------------------------------------------------------------------------------------- calculator


def test_calculator_units_and_fd_mode(aligned, data, forcefield, monkeypatch):
    ds, _, _, test = data
    atoms = ds.atoms(int(test[0]))
    atoms.positions = rigid(atoms.positions, seed=9)
    calc = MLHKCalculator(aligned)  # from the model itself
    atoms.calc = calc
    e = atoms.get_potential_energy()
    assert e == pytest.approx(aligned.predict(atoms.positions[None])[0] * units.Hartree, abs=1e-8)
    f = atoms.get_forces()
    _, g = calc.forcefield.energy_and_gradient(atoms.positions[None])
    np.testing.assert_allclose(f, -g[0] * units.Hartree)

    fd = MLHKCalculator(MLHKForceField(aligned), forces="fd")
    calls = []
    orig = fd.forcefield.energies
    monkeypatch.setattr(fd.forcefield, "energies", lambda p: calls.append(len(p)) or orig(p))
    a2 = atoms.copy()
    a2.calc = fd
    f_fd = a2.get_forces()
    assert calls == [6 * len(atoms) + 1]  # 6N displaced geometries and the centre, one batch
    assert a2.get_potential_energy() == pytest.approx(e, abs=1e-8)
    assert rel(f_fd, f) < 1e-4  # eps = 1e-3 Å: truncation error ~eps^2


def test_calculator_from_model_file(aligned, data, forcefield, tmp_path):
    ds, _, _, test = data
    path = save_model(aligned, tmp_path / "h2o-model.npz")
    atoms = ds.atoms(int(test[1]))
    atoms.calc = MLHKCalculator(str(path))
    ref = atoms.copy()
    ref.calc = MLHKCalculator(forcefield("aligned"))
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), atol=1e-9)


def test_calculator_rejects_wrong_atoms(aligned, data, forcefield):
    ds, _, _, _ = data
    calc = MLHKCalculator(forcefield("aligned"))
    swapped = Atoms("H2O", positions=ds.positions[0][[1, 2, 0]])
    swapped.calc = calc
    with pytest.raises(ValueError, match="different order"):
        swapped.get_potential_energy()
    other = Atoms("NH3", positions=np.zeros((4, 3)) + np.arange(4)[:, None])
    other.calc = calc
    with pytest.raises(ValueError, match="composition"):
        other.get_forces()
    periodic = ds.atoms(0)
    periodic.pbc, periodic.cell = True, [10, 10, 10]
    periodic.calc = calc
    with pytest.raises(ValueError, match="periodic"):
        periodic.get_potential_energy()
    with pytest.raises(ValueError, match="forces must be"):
        MLHKCalculator(aligned, forces="numeric")
    with pytest.raises(ValueError, match="not fitted"):
        MLHKCalculator(MLHK())


def test_calculator_warns_far_outside_the_grid(plain, data, forcefield):
    ds, _, _, _ = data
    calc = MLHKCalculator(forcefield("plain"))  # no reference: positions are used as given
    atoms = ds.atoms(0)
    atoms.calc = calc
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atoms.get_potential_energy()
    atoms.positions += [0.0, 0.0, 1.5]  # the H2O data are planar: the grid is 1.6 Å thick in z
    with pytest.warns(RuntimeWarning, match="edge of the model's grid"):
        e = atoms.get_potential_energy()
    assert e == pytest.approx(plain.predict(atoms.positions[None])[0] * units.Hartree, abs=1e-8)


# ------------------------------------------------------------------------------------- dynamics


def internal(p):
    r1, r2 = np.linalg.norm(p[1] - p[0]), np.linalg.norm(p[2] - p[0])
    return r1, r2, np.degrees(np.arccos((p[1] - p[0]) @ (p[2] - p[0]) / (r1 * r2)))


def data_minimum(ds):
    """The PBE minimum the data set implies: a full cubic in (r1, r2, angle) fitted to all energies."""
    from scipy.optimize import minimize

    X = np.array([internal(p) for p in ds.positions])
    x0, scale = X.mean(0), X.std(0)

    def design(Z):
        Z = np.atleast_2d(Z)
        cols = [np.ones(len(Z))]
        idx = range(3)
        cols += [Z[:, i] for i in idx]
        cols += [Z[:, i] * Z[:, j] for i in idx for j in idx if j >= i]
        cols += [Z[:, i] * Z[:, j] * Z[:, k] for i in idx for j in idx for k in idx if k >= j >= i]
        return np.stack(cols, 1)

    c, *_ = np.linalg.lstsq(design((X - x0) / scale), ds.energies, rcond=None)
    res = minimize(lambda z: float((design(z) @ c)[0]), np.zeros(3))
    return res.x * scale + x0


def test_bfgs_finds_the_data_sets_minimum(data, forcefield):
    ds, _, _, test = data
    atoms = ds.atoms(int(test[10]))
    atoms.rattle(0.05, seed=1)
    atoms.positions = rigid(atoms.positions, seed=10)
    atoms.calc = MLHKCalculator(forcefield("aligned"))
    energies = []
    opt = BFGS(atoms, logfile=None)
    opt.attach(lambda: energies.append(atoms.get_potential_energy()))
    assert opt.run(fmax=1e-3, steps=100)
    assert np.abs(atoms.get_forces()).max() < 1e-3
    assert np.diff(energies).max() < 1e-5  # eV: monotone up to line-search noise
    assert energies[-1] < energies[0]
    r1, r2, ang = internal(atoms.positions)
    m1, m2, mang = data_minimum(ds)
    assert abs(r1 - m1) < 5e-3 and abs(r2 - m2) < 5e-3 and abs(ang - mang) < 0.5
    assert energies[-1] / units.Hartree <= ds.energies.min() + 1e-4


def test_langevin_md_is_stable(data, forcefield):
    ds, _, _, _ = data
    atoms = ds.atoms(int(np.argmin(ds.energies)))
    atoms.set_constraint(FixCom())
    atoms.calc = MLHKCalculator(forcefield("aligned"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # ASE >= 3.28 prefers thermalize_momenta
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    # fixcm=False with FixCom: ASE's fixcm=True heats a 3-atom molecule far above the target
    dyn = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, fixcm=False,
                   rng=np.random.default_rng(1))
    geo, temps = [], []
    dyn.attach(lambda: (geo.append(internal(atoms.positions)), temps.append(atoms.get_temperature())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        dyn.run(400)
    geo = np.array(geo)
    assert np.all(np.isfinite(geo))
    assert geo[:, :2].min() > 0.85 and geo[:, :2].max() < 1.10  # Å
    assert geo[:, 2].min() > 85 and geo[:, 2].max() < 125  # degrees
    assert np.mean(temps) < 1000


# ------------------------------------------------------------------ models that relabel equivalent atoms


@pytest.fixture(scope="module")
def ethane_relabelling():
    """ML-HK on 20 committed ethane PBE frames, relabelling methyl hydrogens (72 orderings) to the reference."""
    from pathlib import Path

    from mlhk_viz.geometry import centre, kabsch_rmsd
    from mlhk_viz.reference.forcefield import symmetry_permutations
    from mlhk_viz.reference.md import load_trajectory
    from mlhk_viz.reference.md_sets import load_partial

    root = Path(__file__).resolve().parent.parent / "data"
    train = load_partial("ethane", "train300", root, root / "md")
    test = load_partial("ethane", "test", root, root / "md")
    idx = np.flatnonzero(train.converged)[:20]
    ref = load_trajectory(root / "md" / "ethane-test-300K.npz")["reference"]
    perms = symmetry_permutations("ethane")
    model = MLHK(reference=ref, permutations=perms).fit(train.positions[idx], train.energies[idx],
                                                       train.coefficients(rows=idx), numbers=train.numbers)
    # frames whose ordering stays put under the finite differences' displacements (2e-3 Å): no ordering
    # within 0.005 Å of the edge of the band that decides it (geometry.best_orderings, stable=True)
    w = atomic_masses_of(train.numbers)
    r = kabsch_rmsd(centre(test.positions[:40], w)[:, perms], centre(ref, w)[0], w)
    edge = r.min(axis=1, keepdims=True) + 0.01
    clear = np.flatnonzero(np.abs(r - edge).min(axis=1) > 0.005)[:4]
    assert len(clear) == 4
    unaware = MLHK(reference=ref).fit(train.positions[idx], train.energies[idx], train.coefficients(rows=idx),
                                      numbers=train.numbers)
    return model, test.positions[clear], perms, unaware


def test_relabelling_model_gives_one_energy_to_relabelled_copies_and_exact_forces(ethane_relabelling, tmp_path):
    from mlhk_viz.geometry import align_symmetric, best_orderings
    from mlhk_viz.models import load_model

    model, x, perms, unaware_model = ethane_relabelling
    assert len(perms) == 72 and model.permutations_.shape == (72, 8)
    ff = MLHKForceField(model)
    # the same geometries with atoms listed in other orderings (methyls turned by 120°, ends swapped), moved
    rows = [5, 17, 40, 71]
    y = np.stack([rigid(x[k][perms[r]], seed=k) for k, r in enumerate(rows)])
    w = atomic_masses_of(model.numbers_)
    assert (best_orderings(y, model.reference_, perms, w, stable=True) != 0).all(), "each copy needs relabelling"
    # the model relabels (stable rule) and then is the model fitted without orderings: the training frames
    # were ordered when the set was made, so both fits saw the same frames
    ordered, chosen = align_symmetric(y, model.reference_, perms, w, stable=True)
    assert (chosen != 0).all()
    np.testing.assert_allclose(model.predict(y), unaware_model.predict(ordered), rtol=0, atol=1e-10)
    np.testing.assert_allclose(model.X_fit_, unaware_model.X_fit_, rtol=0, atol=1e-12)
    # by index, a relabelled copy is another point of descriptor space: the unaware model's energy moves
    assert np.abs(unaware_model.predict(y) - model.predict(y)).max() > 1e-4
    E, G = ff.energy_and_gradient(y)
    np.testing.assert_allclose(E, model.predict(y), rtol=0, atol=1e-9)
    for yk, g in zip(y, G):
        assert rel(g, fd_central(model.predict, yk, 1e-4)) < 2e-5
        assert rel(g, fd_five_point(ff.energies, yk, 1e-3)) < 1e-6
    # the file keeps the orderings
    from mlhk_viz.models import save_model as save

    back = load_model(save(model, tmp_path / "ethane.npz"))
    np.testing.assert_array_equal(back.permutations_, model.permutations_)
    np.testing.assert_allclose(back.predict(y), model.predict(y), rtol=0, atol=1e-12)


def atomic_masses_of(numbers):
    from ase.data import atomic_masses

    return atomic_masses[np.asarray(numbers, int)]


def test_permutations_are_validated(data):
    ds, U, tr, _ = data
    fit = lambda **kw: MLHK(**kw).fit(ds.positions[tr], ds.energies[tr], U[tr], numbers=ds.numbers)  # noqa: E731
    with pytest.raises(ValueError, match="give a reference too"):
        fit(permutations=[[0, 1, 2], [0, 2, 1]])
    with pytest.raises(ValueError, match="first ordering must be the identity"):
        fit(reference=ds.positions[0], permutations=[[0, 2, 1], [0, 1, 2]])
    with pytest.raises(ValueError, match="different weight"):
        fit(reference=ds.positions[0], permutations=[[0, 1, 2], [1, 0, 2]])
    with pytest.raises(ValueError, match="ordering of the atom indices"):
        fit(reference=ds.positions[0], permutations=[[0, 1, 2], [0, 1, 1]])
    # a reference whose hydrogens are listed the other way round (one O-H stretched to tell them apart):
    # ML-HK refuses to relabel a training frame, whose density would not follow; ML-KS has none to follow
    ref = ds.positions[tr[0]].copy()
    ref[1] += 0.3 * (ref[1] - ref[0]) / np.linalg.norm(ref[1] - ref[0])
    swapped = ref[[0, 2, 1]]
    with pytest.raises(ValueError, match=r"training molecules \[0"):
        fit(reference=swapped, permutations=[[0, 1, 2], [0, 2, 1]])
    ks = MLKS(reference=swapped, permutations=[[0, 1, 2], [0, 2, 1]]).fit(ds.positions[tr], ds.energies[tr],
                                                                         numbers=ds.numbers)
    # a molecule and its copy with the hydrogens swapped get one energy wherever one ordering wins clearly
    # (the stable rule keeps a near-tie's own ordering: geometry.best_orderings)
    from mlhk_viz.geometry import centre, kabsch_rmsd

    w = atomic_masses_of(ds.numbers)
    r = kabsch_rmsd(centre(ds.positions, w)[:, [[0, 1, 2], [0, 2, 1]]], centre(swapped, w)[0], w)
    clear = np.flatnonzero(np.abs(r[:, 0] - r[:, 1]) > 0.02)[:5]
    assert len(clear) == 5
    np.testing.assert_allclose(ks.predict(ds.positions[clear][:, [0, 2, 1]]), ks.predict(ds.positions[clear]),
                               rtol=0, atol=1e-9)
