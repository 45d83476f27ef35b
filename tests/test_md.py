"""MMFF94 as an ASE calculator and the Langevin MD that makes the MD data sets' geometries."""

import json
import zipfile

import numpy as np
import pytest

pytest.importorskip("rdkit")

from ase import units  # noqa: E402
from ase.data import atomic_masses  # noqa: E402

from mlhk_viz.datasets import DatasetError  # noqa: E402
from mlhk_viz.geometry import align  # noqa: E402
from mlhk_viz.reference.forcefield import molecule  # noqa: E402
from mlhk_viz.reference.md import (  # noqa: E402
    FORMAT, MOLECULES, TrajectoryError, generate_md, load_trajectory, md_spec, pools, run_langevin,
    save_trajectory, seed_for,
)

NAMES = ["benzene", "ethane", "malonaldehyde"]


@pytest.fixture(scope="module")
def short_runs():
    """One short Langevin run per molecule: 1 ps equilibration, 500 frames every 10 fs (5 ps)."""
    return {n: run_langevin(n, 300.0, 500, interval_fs=10.0, equilibration_ps=1.0, seed=7) for n in NAMES}


# -- the molecules --------------------------------------------------------------------------
def test_molecules_atom_order_and_minimum():
    heavy_atoms = {"benzene": ["C"] * 6, "ethane": ["C", "C"], "malonaldehyde": ["O", "C", "C", "C", "O"]}
    n_h = {"benzene": 6, "ethane": 6, "malonaldehyde": 4}
    for name in NAMES:
        rdmol, atoms = molecule(name)
        assert atoms.get_chemical_symbols() == heavy_atoms[name] + ["H"] * n_h[name], "heavy atoms first, then H"
        # each H follows its parent's order (Chem.AddHs)
        parents = [rdmol.GetAtomWithIdx(i).GetNeighbors()[0].GetIdx() for i in range(len(heavy_atoms[name]), len(atoms))]
        assert parents == sorted(parents)
        assert np.allclose(rdmol.GetConformer().GetPositions(), atoms.positions)
        com = (atomic_masses[atoms.numbers][:, None] * atoms.positions).sum(0)
        assert np.allclose(com, 0, atol=1e-10)
        assert np.abs(atoms.get_forces()).max() < 1e-3  # eV/Å: an MMFF minimum
        # the same geometry every time (fixed embedding seed)
        assert np.array_equal(molecule(name)[1].positions, atoms.positions)


def test_malonaldehyde_is_the_hydrogen_bonded_z_enol():
    rdmol, atoms = molecule("malonaldehyde")
    d = atoms.get_all_distances()
    # O0-H5 hydroxyl, H5···O4 intramolecular hydrogen bond, O0···O4 about 2.6-2.7 Å
    assert 0.9 < d[0, 5] < 1.05
    assert d[4, 5] < 2.0
    assert 2.5 < d[0, 4] < 2.8
    assert rdmol.GetBondBetweenAtoms(1, 2).GetStereo().name in ("STEREOZ", "STEREOCIS")
    assert atoms.positions[:, 2] == pytest.approx(0, abs=1e-6)  # planar, in the xy-plane


# -- the calculator ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_forces_are_minus_energy_gradient(name):
    """Forces equal minus central differences of the MMFF energy (eps 1e-4 Å).

    Tolerance 1e-5 eV/Å: the central-difference truncation error is eps²/6 |E'''| ~ 1e-8 Å² x a
    few hundred eV/Å³ ~ 1e-6 eV/Å and rounding ~1e-16 E / eps ~ 1e-11; measured up to 6e-7 eV/Å
    against forces of 5-9 eV/Å. Geometries displaced from the minimum so the forces are large.
    """
    _, atoms = molecule(name)
    atoms.positions += np.random.default_rng(0).normal(0.0, 0.05, atoms.positions.shape)
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1.0
    calc, eps = atoms.calc, 1e-4
    fd = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            p = atoms.positions.copy()
            p[i, k] += eps
            ep = calc.energy_at(p)
            p[i, k] -= 2 * eps
            em = calc.energy_at(p)
            fd[i, k] = -(ep - em) / (2 * eps)
    np.testing.assert_allclose(forces, fd, atol=1e-5, rtol=0)
    assert calc.energy_at(atoms.positions) == atoms.get_potential_energy()


def test_units_are_ev():
    from ase.units import kcal, mol
    from rdkit.Chem import AllChem

    rdmol, atoms = molecule("ethane")
    atoms.positions[2] += [0.1, -0.05, 0.02]
    ff = AllChem.MMFFGetMoleculeForceField(rdmol, AllChem.MMFFGetMoleculeProperties(rdmol))
    e_kcal = ff.CalcEnergy(atoms.positions.ravel().tolist())
    assert atoms.get_potential_energy() == pytest.approx(e_kcal * kcal / mol, rel=1e-12)


def test_calculator_rejects_other_atoms():
    _, atoms = molecule("ethane")
    calc = atoms.calc
    _, benz = molecule("benzene")
    benz.calc = calc
    with pytest.raises(ValueError, match="differ"):
        benz.get_potential_energy()


@pytest.mark.parametrize("name", NAMES)
def test_nve_conserves_energy(name):
    """Velocity Verlet from 300 K Maxwell-Boltzmann velocities at the minimum.

    Scale: the initial kinetic energy scale 3/2 N kT (300 K). Tolerances:
    - fluctuation max|E(t) - E(0)| < 2e-3 of that scale at 0.2 fs (500 steps = 100 fs). Verlet
      conserves a shadow energy; the true energy oscillates by O((w dt)^2) of the fast C-H/O-H
      stretch energy (w dt ~ 0.11 at 0.2 fs): measured 0.1-1.9e-3 (0.25 fs: up to 2.9e-3).
    - drift (mean of the last 10 % minus the first 10 %) < 1e-3 of the scale: measured <= 1.5e-4.
    - second order: halving the step to 0.1 fs cuts the fluctuation by > 2.5x (theory 4x),
      which fails if forces and energy are inconsistent.
    """
    from ase.md.verlet import VelocityVerlet

    from mlhk_viz.reference.md import _thermalize

    def run(dt_fs, duration_fs=100.0):
        _, atoms = molecule(name)
        _thermalize(atoms, 300.0, np.random.default_rng(1))
        dyn = VelocityVerlet(atoms, dt_fs * units.fs)
        e = []
        dyn.attach(lambda: e.append(atoms.get_total_energy()), interval=1)
        dyn.run(int(round(duration_fs / dt_fs)))
        return np.array(e), 1.5 * len(atoms) * units.kB * 300.0

    e, scale = run(0.2)
    assert len(e) == 501
    fluct = np.abs(e - e[0]).max() / scale
    tenth = len(e) // 10
    drift = abs(e[-tenth:].mean() - e[:tenth].mean()) / scale
    assert fluct < 2e-3, fluct
    assert drift < 1e-3, drift
    e_half, _ = run(0.1)
    assert fluct / (np.abs(e_half - e_half[0]).max() / scale) > 2.5


# -- Langevin ---------------------------------------------------------------------------------
def test_langevin_is_reproducible():
    a = run_langevin("ethane", 300.0, 20, interval_fs=10.0, equilibration_ps=0.1, seed=3)
    b = run_langevin("ethane", 300.0, 20, interval_fs=10.0, equilibration_ps=0.1, seed=3)
    c = run_langevin("ethane", 300.0, 20, interval_fs=10.0, equilibration_ps=0.1, seed=4)
    for k in ("positions", "ff_energies_eV", "kinetic_energies_eV", "times_fs", "reference", "numbers"):
        assert np.array_equal(a[k], b[k]), k
    assert not np.allclose(a["positions"], c["positions"])
    assert np.array_equal(a["times_fs"], 10.0 * np.arange(1, 21))


@pytest.mark.parametrize("name", NAMES)
def test_langevin_temperature_near_target(short_runs, name):
    """Mean kinetic temperature (3N degrees of freedom) of 5 ps at 300 K within 10 %.

    Small molecules have large kinetic-energy fluctuations (relative sd sqrt(2/3N) ~ 0.25) with
    a ~100 fs correlation time (friction 0.01/fs); over 5 seeds the 5 ps means scattered by
    2-10 K (1-3.5 %), so 10 % is a loose bound of >= 3 standard deviations.
    """
    r = short_runs[name]
    t = r["kinetic_energies_eV"].mean() / (1.5 * len(r["numbers"]) * units.kB)
    assert abs(t - 300.0) < 30.0, t


@pytest.mark.parametrize("name", NAMES)
def test_snapshots_are_aligned(short_runs, name):
    r = short_runs[name]
    pos, ref, m = r["positions"], r["reference"], atomic_masses[r["numbers"]]
    assert pos.shape == (500, len(r["numbers"]), 3)
    np.testing.assert_allclose(np.einsum("a,nad->nd", m, pos) / m.sum(), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.einsum("a,ad->d", m, ref) / m.sum(), 0.0, atol=1e-10)
    np.testing.assert_allclose(align(pos, ref, weights=m), pos, atol=1e-9)
    np.testing.assert_allclose(ref, molecule(name)[1].positions, atol=0)
    # aligned snapshots stay close to the reference (no tumbling left): mass-weighted RMSD < 0.5 Å
    rmsd = np.sqrt((m[None, :, None] * (pos - ref) ** 2).sum((1, 2)) / m.sum())
    assert rmsd.max() < 0.5
    # MMFF energies above the minimum; on average the potential share of equipartition, (3N - 6)/2 kT
    # (harmonic limit; 1.00-1.04 of it measured for the three molecules at 300 K)
    e_min = molecule(name)[1].get_potential_energy()
    assert np.all(r["ff_energies_eV"] > e_min)
    share = (3 * len(r["numbers"]) - 6) / 2 * units.kB * 300.0
    assert 0.8 < np.mean(r["ff_energies_eV"] - e_min) / share < 1.25


def test_malonaldehyde_keeps_its_hydrogen_bond(short_runs):
    pos = short_runs["malonaldehyde"]["positions"]
    d = np.linalg.norm(pos[:, 5] - pos[:, 4], axis=-1)
    assert np.median(d) < 2.1


# -- conventions and files -----------------------------------------------------------------------
def test_pools_conventions():
    for name in MOLECULES:
        specs = pools(name)
        assert [(s.kind, s.temperature_K) for s in specs] == [
            ("pool", 300.0), ("pool", 350.0), ("pool", 400.0), ("test", 300.0), ("trace", 300.0)]
        assert all(s.n_snapshots * s.interval_fs >= 20000.0 for s in specs)
        assert specs[0].n_snapshots == 2500 and specs[0].interval_fs == 100.0
        assert specs[3].n_snapshots == 200 and specs[4].n_snapshots == 2000 and specs[4].interval_fs == 10.0
        assert len({s.seed for s in specs}) == 5  # every trajectory has its own seed
        assert specs[3].filename == f"{name}-test-300K.npz"
    assert seed_for("benzene", "pool", 300) == seed_for("benzene", "pool", 300.0)
    with pytest.raises(ValueError, match="unknown molecule"):
        md_spec("water")
    with pytest.raises(ValueError, match="unknown kind"):
        md_spec("ethane", "train")


def test_save_load_round_trip(short_runs, tmp_path):
    r = short_runs["malonaldehyde"]
    path = save_trajectory(tmp_path / "m.npz", r, {"note": "round trip"})
    back = load_trajectory(path)
    for k in ("numbers", "positions", "reference", "times_fs", "ff_energies_eV", "kinetic_energies_eV"):
        assert np.array_equal(back[k], r[k]), k
        assert back[k].dtype == (np.int64 if k == "numbers" else np.float64)
    m = back["meta"]
    assert m["format"] == FORMAT and m["version"] == 1 and m["note"] == "round trip"
    assert m["molecule"] == "malonaldehyde" and m["seed"] == 7 and m["units"]["positions"] == "angstrom"
    with zipfile.ZipFile(path) as z:  # plain arrays, no pickled objects
        assert sorted(z.namelist()) == sorted(f"{k}.npy" for k in list(back)[:-1] + ["meta"])


def _rewrite(src, dst, arrays_change=None, meta_change=None):
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    arrays.update(arrays_change or {})
    meta.update(meta_change or {})
    np.savez(dst, meta=np.array(json.dumps(meta)), **arrays)
    return dst


def test_load_rejects_bad_files(short_runs, tmp_path):
    good = save_trajectory(tmp_path / "good.npz", short_runs["ethane"])
    with pytest.raises(TrajectoryError, match="version 2 is not supported"):
        load_trajectory(_rewrite(good, tmp_path / "v2.npz", meta_change={"version": 2}))
    pos = load_trajectory(good)["positions"].copy()
    pos[3, 1, 2] = np.nan
    with pytest.raises(TrajectoryError, match=r"'positions' has non-finite values .* snapshot\(s\) \[3\]"):
        load_trajectory(_rewrite(good, tmp_path / "nan.npz", {"positions": pos}))
    with pytest.raises(TrajectoryError, match="'times_fs' must be a float array of shape"):
        load_trajectory(_rewrite(good, tmp_path / "t.npz", {"times_fs": np.arange(3.0)}))
    with pytest.raises(TrajectoryError, match="missing array 'reference'"):
        bad = _rewrite(good, tmp_path / "noref.npz")
        with np.load(bad) as z:
            arrays = {k: z[k] for k in z.files if k != "reference"}
        np.savez(bad, **arrays)
        load_trajectory(bad)
    with pytest.raises(TrajectoryError, match="expected 'mlhk-viz-trajectory'"):
        load_trajectory(_rewrite(good, tmp_path / "ds.npz", meta_change={"format": "mlhk-viz-dataset"}))
    (tmp_path / "trunc.npz").write_bytes(good.read_bytes()[:200])
    with pytest.raises(DatasetError, match="not a readable"):
        load_trajectory(tmp_path / "trunc.npz")
    with pytest.raises(TrajectoryError, match="positions"):
        save_trajectory(tmp_path / "never.npz", dict(short_runs["ethane"], positions=pos))
    assert not (tmp_path / "never.npz").exists()


@pytest.mark.slow
def test_generate_md_writes_the_conventional_file(tmp_path):
    seen = []
    path = generate_md("ethane", 350, tmp_path, kind="pool", n_snapshots=3,
                       progress=lambda d, t, s: seen.append(s))
    assert path == tmp_path / "ethane-pool-350K.npz"
    tr = load_trajectory(path)
    assert tr["positions"].shape == (3, 8, 3)
    assert tr["meta"]["kind"] == "pool" and tr["meta"]["temperature_K"] == 350.0
    assert tr["meta"]["seed"] == seed_for("ethane", "pool", 350.0)
    assert {"equilibration", "production"} <= set(seen)
    assert tr["meta"]["cost"]["steps"] == 20000 + 3 * 200
