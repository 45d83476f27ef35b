"""Classical Langevin MD with MMFF94 for the MD data sets' geometries (benzene, ethane, malonaldehyde).

The paper's MD sets are snapshots of classical force-field MD at 300, 350 and 400 K, one every
100 fs, later labelled with PBE. Here: MMFF94 (RDKit) under ASE's Langevin integrator
(:class:`ase.md.langevin.Langevin`), started from the MMFF minimum with Maxwell-Boltzmann
velocities, equilibrated, then sampled. Every snapshot is Kabsch-aligned (mass-weighted) onto the
molecule's minimum in its principal frame (centre of mass at the origin), so every set of one
molecule shares one frame. Conventions, units and the file format: ``docs/md.md``.

Run ``python -m mlhk_viz.reference.md [--out data/md] [MOLECULE ...]`` to (re)generate every
set of the conventions (:func:`pools`) and print the cost per step and per snapshot.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..datasets import DatasetError, load_npz, save_npz
from ..geometry import align
from ..progress import Progress, null_progress
from .forcefield import EMBED_SEED, SMILES, molecule

FORMAT = "mlhk-viz-trajectory"
VERSION = 1
MOLECULES = tuple(SMILES)
KINDS = ("pool", "test", "trace")
POOL_TEMPERATURES = (300.0, 350.0, 400.0)

#: per kind: snapshots, fs between snapshots (the conventions of the data sets, docs/md.md)
KIND_SIZES = {
    "pool": (2500, 100.0),  # training pool per temperature: 2,000 can be chosen from any combination
    "test": (200, 100.0),  # independent 300 K trajectory (own seed): the test set
    "trace": (2000, 10.0),  # 20 ps at 300 K, a frame every 10 fs: the energy-trace figure
}

ARRAYS = ("numbers", "positions", "reference", "times_fs", "ff_energies_eV", "kinetic_energies_eV")


class TrajectoryError(DatasetError):
    """A trajectory file is unreadable or inconsistent; the message names the file and the problem."""


@dataclass(frozen=True)
class MDSpec:
    """One trajectory of the conventions: what :func:`run_langevin` is called with."""

    molecule: str
    kind: str
    temperature_K: float
    n_snapshots: int
    interval_fs: float
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.01
    equilibration_ps: float = 10.0
    seed: int = 0

    @property
    def filename(self) -> str:
        return f"{self.molecule}-{self.kind}-{self.temperature_K:g}K.npz"


def seed_for(name: str, kind: str, temperature_K: float) -> int:
    """The fixed seed of a trajectory: CRC-32 of ``"<molecule>/<kind>/<T>K"`` (stable across runs and machines)."""
    return zlib.crc32(f"{name}/{kind}/{float(temperature_K):g}K".encode())


def md_spec(name: str, kind: str = "pool", temperature_K: float = 300.0) -> MDSpec:
    """The conventional trajectory of ``kind`` ("pool", "test", "trace") for a molecule at a temperature."""
    name = name.lower()
    if name not in MOLECULES:
        raise ValueError(f"unknown molecule {name!r}; choose from {list(MOLECULES)}")
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {list(KINDS)}")
    t = float(temperature_K)
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a positive number of kelvin, got {temperature_K!r}")
    n, interval = KIND_SIZES[kind]
    return MDSpec(name, kind, t, n, interval, seed=seed_for(name, kind, t))


def pools(name: str) -> list[MDSpec]:
    """Every trajectory of a molecule's data sets, in generation order.

    Training pools at 300, 350 and 400 K (2,500 snapshots each, every 100 fs), an independent
    300 K test trajectory (200 snapshots, every 100 fs) and a 300 K trace (2,000 frames every
    10 fs = 20 ps). All: 0.5 fs step, friction 0.01 fs⁻¹, 10 ps equilibration, seed
    :func:`seed_for` (so every trajectory has its own).
    """
    return [md_spec(name, "pool", t) for t in POOL_TEMPERATURES] + [
        md_spec(name, "test", 300.0), md_spec(name, "trace", 300.0)]


def _thermalize(atoms, temperature_K: float, rng) -> None:
    """Maxwell-Boltzmann momenta, then zero total linear and angular momentum (temperature kept)."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29: same code, MaxwellBoltzmannDistribution deprecated
        vd.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:  # pragma: no cover - older ASE
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
    vd.Stationary(atoms)
    with np.errstate(divide="ignore", invalid="ignore"):  # linear molecules: no rotation about the axis
        vd.ZeroRotation(atoms)


def _steps(duration_fs: float, timestep_fs: float, what: str) -> int:
    k = duration_fs / timestep_fs
    if abs(k - round(k)) > 1e-9 * max(1.0, k):
        raise ValueError(f"{what} ({duration_fs} fs) must be a whole number of time steps ({timestep_fs} fs)")
    return int(round(k))


def run_langevin(
    name: str,
    temperature_K: float,
    n_snapshots: int,
    interval_fs: float = 100.0,
    timestep_fs: float = 0.5,
    friction: float = 0.01,
    equilibration_ps: float = 10.0,
    seed: int = 0,
    progress: Progress = null_progress,
) -> dict:
    """Langevin MD of ``name`` with MMFF94; return ``n_snapshots`` aligned snapshots.

    temperature_K : thermostat temperature (K); interval_fs : time between snapshots (fs), a
    whole number of ``timestep_fs`` steps; friction : Langevin friction in **1/fs** (passed to
    ASE as ``friction / ase.units.fs``; 0.01 fs⁻¹ = 10 ps⁻¹, a relaxation time of 100 fs);
    equilibration_ps : thermostatted run before the first snapshot is taken; seed : seeds one
    :func:`numpy.random.default_rng` used for the initial velocities and the Langevin noise, so
    a seed gives the same trajectory bit for bit (on one machine and library build).

    Start: the MMFF minimum (:func:`~mlhk_viz.reference.forcefield.molecule`), Maxwell-Boltzmann
    momenta at ``temperature_K`` with total linear and angular momentum removed. The whole
    molecule is free to translate and rotate (``fixcm=False``, no constraint), so all 3N degrees
    of freedom are thermostatted and ``atoms.get_temperature()`` averages to the target.

    Returns a dict: ``numbers`` ``(n_atoms,)``; ``positions`` ``(n, n_atoms, 3)`` Å, each
    snapshot aligned (mass-weighted Kabsch, centre of mass at the origin) onto ``reference``
    ``(n_atoms, 3)`` Å, the minimum in its principal frame; ``times_fs`` ``(n,)`` since the end
    of equilibration (the first snapshot at ``interval_fs``); ``ff_energies_eV`` ``(n,)`` MMFF94
    potential energy (eV; relative to MMFF's zero, not a binding energy); ``kinetic_energies_eV``
    ``(n,)``; ``meta``: the run's parameters and its cost (steps, wall time, ms per step and per
    snapshot).
    """
    from ase import units
    from ase.data import atomic_masses
    from ase.md.langevin import Langevin

    if int(n_snapshots) < 1:
        raise ValueError(f"n_snapshots must be at least 1, got {n_snapshots}")
    if not friction > 0:
        raise ValueError(f"friction must be positive (1/fs), got {friction}")
    if not temperature_K > 0:
        raise ValueError(f"temperature must be positive (K), got {temperature_K}")
    n_snapshots = int(n_snapshots)
    per_snapshot = _steps(interval_fs, timestep_fs, "interval_fs")
    n_eq = _steps(equilibration_ps * 1000.0, timestep_fs, "equilibration")

    rdmol, atoms = molecule(name)
    reference = atoms.positions.copy()
    numbers = atoms.numbers.copy()
    masses = atomic_masses[numbers]
    rng = np.random.default_rng(seed)
    _thermalize(atoms, temperature_K, rng)
    dyn = Langevin(atoms, timestep_fs * units.fs, temperature_K=temperature_K,
                   friction=friction / units.fs, fixcm=False, rng=rng)

    t0 = time.perf_counter()
    chunk = max(1, min(n_eq, 2000))
    done = 0
    progress(0, n_eq, "equilibration")
    while done < n_eq:
        k = min(chunk, n_eq - done)
        dyn.run(k)
        done += k
        progress(done, n_eq, "equilibration")
    t_eq = time.perf_counter() - t0

    pos = np.empty((n_snapshots, len(numbers), 3))
    epot = np.empty(n_snapshots)
    ekin = np.empty(n_snapshots)
    t1 = time.perf_counter()
    progress(0, n_snapshots, "production")
    for i in range(n_snapshots):
        dyn.run(per_snapshot)
        pos[i] = atoms.positions
        epot[i] = atoms.get_potential_energy()
        ekin[i] = atoms.get_kinetic_energy()
        if (i + 1) % max(1, n_snapshots // 100) == 0 or i + 1 == n_snapshots:
            progress(i + 1, n_snapshots, "production")
    t_prod = time.perf_counter() - t1

    if not np.all(np.isfinite(pos)):
        raise RuntimeError(f"{name} at {temperature_K} K: the MD blew up (non-finite positions)")
    aligned = align(pos, reference, weights=masses)
    n_prod = n_snapshots * per_snapshot
    wall = t_eq + t_prod
    meta = {
        "molecule": name.lower(),
        "smiles": SMILES[name.lower()],
        "temperature_K": float(temperature_K),
        "n_snapshots": n_snapshots,
        "interval_fs": float(interval_fs),
        "timestep_fs": float(timestep_fs),
        "friction_per_fs": float(friction),
        "equilibration_ps": float(equilibration_ps),
        "seed": int(seed),
        "embed_seed": EMBED_SEED,
        "force_field": "MMFF94",
        "integrator": "ase.md.langevin.Langevin (fixcm=False)",
        "cost": {
            "steps": n_eq + n_prod,
            "wall_s": round(wall, 3),
            "ms_per_step": round(1e3 * wall / max(1, n_eq + n_prod), 5),
            "ms_per_snapshot": round(1e3 * t_prod / n_snapshots, 4),
        },
    }
    return {
        "numbers": numbers.astype(np.int64),
        "positions": aligned,
        "reference": reference,
        "times_fs": interval_fs * np.arange(1, n_snapshots + 1, dtype=float),
        "ff_energies_eV": epot,
        "kinetic_energies_eV": ekin,
        "meta": meta,
    }


# -- files ------------------------------------------------------------------------------------
def _versions() -> dict:
    import ase

    try:
        import rdkit

        rd = rdkit.__version__
    except ImportError:  # pragma: no cover
        rd = None
    return {"ase": ase.__version__, "rdkit": rd, "numpy": np.__version__}


def validate_trajectory(arrays: dict, meta: dict, where: str = "trajectory") -> None:
    """Check a trajectory's arrays and meta record; raise :class:`TrajectoryError` naming the first problem."""

    def check(cond, msg):
        if not cond:
            raise TrajectoryError(f"{where}: {msg}")

    check(meta.get("format") == FORMAT, f"format is {meta.get('format')!r}, expected {FORMAT!r}")
    v = meta.get("version")
    check(v == VERSION, f"trajectory format version {v!r} is not supported (this mlhk-viz reads version {VERSION})")
    for key in ("molecule", "temperature_K", "interval_fs", "timestep_fs"):
        check(key in meta, f"meta record lacks '{key}'")
    for k in ARRAYS:
        check(k in arrays, f"missing array '{k}'")
    num, pos, ref = arrays["numbers"], arrays["positions"], arrays["reference"]
    check(num.ndim == 1 and len(num) > 0 and np.issubdtype(num.dtype, np.integer),
          f"'numbers' must be a 1D integer array of atomic numbers, got {num.dtype} {num.shape}")
    check(bool(np.all((num >= 1) & (num <= 118))), f"'numbers' holds values outside 1..118: {num.tolist()}")
    na = len(num)
    check(pos.ndim == 3 and pos.shape[1:] == (na, 3) and np.issubdtype(pos.dtype, np.floating),
          f"'positions' must be float (n, {na}, 3) Å for {na} atoms, got {pos.dtype} {pos.shape}")
    n = pos.shape[0]
    check(n >= 1, "'positions' holds no snapshots")
    check(ref.shape == (na, 3) and np.issubdtype(ref.dtype, np.floating),
          f"'reference' must be float ({na}, 3) Å, got {ref.dtype} {ref.shape}")
    for k in ("times_fs", "ff_energies_eV", "kinetic_energies_eV"):
        a = arrays[k]
        check(a.shape == (n,) and np.issubdtype(a.dtype, np.floating),
              f"'{k}' must be a float array of shape ({n},) to match the positions, got {a.dtype} {a.shape}")
    for k in ("positions", "times_fs", "ff_energies_eV", "kinetic_energies_eV"):
        bad = ~np.isfinite(arrays[k]).reshape(n, -1).all(axis=1)
        check(not bad.any(), f"'{k}' has non-finite values (NaN or inf) at snapshot(s) {np.flatnonzero(bad)[:10].tolist()}")
    check(bool(np.all(np.isfinite(ref))), "'reference' has non-finite values (NaN or inf)")
    check(n < 2 or bool(np.all(np.diff(arrays["times_fs"]) > 0)), "'times_fs' is not strictly increasing")


def save_trajectory(path, result: dict, meta: dict | None = None) -> Path:
    """Write ``result`` (from :func:`run_langevin`) atomically as a trajectory file (version 1).

    The meta record is ``result["meta"]`` updated with ``meta``, plus format, version, units and
    library versions. The file is validated before it is written.
    """
    arrays = {k: np.asarray(result[k]) for k in ARRAYS}
    arrays["numbers"] = arrays["numbers"].astype(np.int64)
    for k in ARRAYS[1:]:
        arrays[k] = arrays[k].astype(np.float64)
    m = dict(result.get("meta", {}))
    m.update(meta or {})
    m.update(format=FORMAT, version=VERSION, versions=_versions(), units={
        "positions": "angstrom", "reference": "angstrom", "times_fs": "fs",
        "ff_energies_eV": "eV", "kinetic_energies_eV": "eV"})
    m.setdefault("frame", "mass-weighted Kabsch alignment onto 'reference' (MMFF minimum, principal axes, "
                          "centre of mass at the origin)")
    validate_trajectory(arrays, m, where=str(path))
    save_npz(path, arrays, m)
    return Path(path)


def load_trajectory(path) -> dict:
    """Read and validate a trajectory file: the arrays of :func:`run_langevin` plus ``meta``.

    Raises :class:`TrajectoryError` (a :class:`~mlhk_viz.datasets.DatasetError`) saying what is wrong.
    """
    try:
        arrays, meta = load_npz(path, kind=FORMAT)
    except TrajectoryError:
        raise
    except DatasetError as exc:
        raise TrajectoryError(str(exc)) from None
    validate_trajectory(arrays, meta, where=str(path))
    out = {k: arrays[k] for k in ARRAYS}
    out["meta"] = meta
    return out


def generate_md(name: str, temperature_K: float, out_dir, kind: str = "pool",
                progress: Progress | None = None, n_snapshots: int | None = None) -> Path:
    """Run the conventional trajectory (:func:`md_spec`) and write ``out_dir/<name>-<kind>-<T>K.npz``.

    ``kind`` is "pool", "test" or "trace"; ``progress(done, total, stage)`` is called during the
    "equilibration" and "production" stages. ``n_snapshots`` overrides the convention's count
    (for quick looks; the file's meta records it). An existing file is replaced atomically when
    the new one is complete. Returns the path; the cost is in the file's ``meta["cost"]``.
    """
    spec = md_spec(name, kind, temperature_K)
    n = spec.n_snapshots if n_snapshots is None else int(n_snapshots)
    result = run_langevin(spec.molecule, spec.temperature_K, n, interval_fs=spec.interval_fs,
                          timestep_fs=spec.timestep_fs, friction=spec.friction_per_fs,
                          equilibration_ps=spec.equilibration_ps, seed=spec.seed,
                          progress=progress or null_progress)
    path = Path(out_dir) / spec.filename
    save_trajectory(path, result, {"kind": kind, "spec": asdict(spec) | {"n_snapshots": n}})
    return path


def main(argv=None) -> int:
    """Generate every conventional trajectory of the given molecules and print what each cost."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m mlhk_viz.reference.md", description=main.__doc__)
    ap.add_argument("molecules", nargs="*", help=f"any of {', '.join(MOLECULES)} (default: all)")
    ap.add_argument("--out", default="data/md", help="output folder (default: data/md)")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.molecules) - set(MOLECULES))
    if unknown:
        ap.error(f"unknown molecule(s) {unknown}; choose from {list(MOLECULES)}")
    from ase.units import kB

    print(f"{'file':34s} {'steps':>9s} {'wall s':>8s} {'ms/step':>8s} {'ms/snapshot':>11s} {'<T> K':>7s}")
    for name in args.molecules or MOLECULES:
        for spec in pools(name):
            path = generate_md(name, spec.temperature_K, args.out, kind=spec.kind)
            tr = load_trajectory(path)
            c = tr["meta"]["cost"]
            t_mean = tr["kinetic_energies_eV"].mean() / (1.5 * len(tr["numbers"]) * kB)
            print(f"{path.name:34s} {c['steps']:9d} {c['wall_s']:8.1f} {c['ms_per_step']:8.3f} "
                  f"{c['ms_per_snapshot']:11.2f} {t_mean:7.1f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
