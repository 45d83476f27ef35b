"""Ab-initio MD of malonaldehyde at PBE with a proton transfer (the paper's Fig. 3a), resumable.

``python -m mlhk_viz.reference.aimd [--out data] [--duration-fs 250]`` runs it; rerunning resumes
from the last checkpoint. PySCF is wrapped as an ASE calculator (:class:`PySCFCalculator`) and
ASE's velocity Verlet integrates (NVE, 0.5 fs step).

* Forces: PBE with GTH pseudopotentials and the ``gth-dzvp`` basis (grid level 3), each SCF started
  from the previous step's density matrix. The frames' energies and densities are then recomputed
  with the data sets' method (PBE/gth-tzv2p, :data:`~mlhk_viz.reference.pyscf_runner.DEFAULT_METHOD`)
  so that they compare with the models trained on the MD sets. The smaller basis only shapes the path.
* Start, chosen so that the proton transfers: the MMFF94 minimum (O0-H5···O4), Maxwell-Boltzmann
  velocities at 300 K (seed 0, zero total momentum), plus a kick on the hydroxyl proton H5 along the
  O0 → O4 direction with :data:`KICK_KCAL` of extra kinetic energy, more than PBE's barrier to the
  symmetric transfer geometry (a few kcal/mol), so H5 crosses to O4 in the first tens of fs.
* Frames every 10 fs (26 over 0.25 ps, as the paper's figure). The checkpoint (positions, momenta,
  step, the frames so far) is written atomically every frame.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase.calculators.calculator import Calculator, all_changes
from ase.units import Bohr, Hartree, fs, kcal, mol

from ..datasets import load_npz, save_npz
from .pyscf_runner import DEFAULT_METHOD

AIMD_METHOD = dict(DEFAULT_METHOD, basis="gth-dzvp", conv_tol=1e-8)
KICK_KCAL = 6.0
FORMAT = "mlhk-viz-aimd-checkpoint"


class PySCFCalculator(Calculator):
    """PBE energy (eV) and forces (eV/Å) of an isolated molecule with PySCF, for ASE.

    The SCF of each call starts from the previous call's density matrix (same atoms, nearby
    geometry), which saves a few cycles per MD step. ``results["energy_hartree"]`` keeps Hartree.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, method: dict = AIMD_METHOD, threads: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.method, self.threads, self._dm = dict(method), threads, None

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        from pyscf import dft, lib

        from .pyscf_runner import build_mol

        super().calculate(atoms, properties, system_changes)
        if np.any(self.atoms.pbc):
            raise ValueError("PySCFCalculator: isolated molecules only (no periodic boundary conditions)")
        lib.num_threads(self.threads)
        m = build_mol(self.atoms.numbers, self.atoms.positions, self.method)
        mf = dft.RKS(m, xc=self.method["functional"].lower())
        mf.grids.level = self.method["grid_level"]
        mf.conv_tol = self.method.get("conv_tol", 1e-9)
        e = mf.kernel(dm0=self._dm)
        if not mf.converged:  # one stiffer attempt from scratch
            mf.level_shift, mf.damp, mf.max_cycle = 0.3, 0.3, 200
            e = mf.kernel()
        if not mf.converged:
            raise RuntimeError(f"PySCFCalculator: SCF did not converge at positions {self.atoms.positions.tolist()}")
        self._dm = mf.make_rdm1()
        self.results["energy_hartree"] = float(e)
        self.results["energy"] = self.results["free_energy"] = float(e) * Hartree
        if "forces" in properties:
            g = mf.nuc_grad_method().kernel()  # Hartree/bohr
            self.results["forces"] = -np.asarray(g) * Hartree / Bohr


def start_state(seed: int = 0, kick_kcal: float = KICK_KCAL):
    """``ase.Atoms`` of malonaldehyde at the MMFF minimum with 300 K velocities and the proton kick."""
    from ase.md import velocitydistribution as vd

    from .forcefield import molecule

    _, atoms = molecule("malonaldehyde")
    atoms.calc = None
    rng = np.random.default_rng(seed)
    vd.thermalize_momenta(atoms, 300.0, rng=rng) if hasattr(vd, "thermalize_momenta") else \
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=300.0, rng=rng)  # same code; ASE 3.29 renamed it
    vd.Stationary(atoms)
    p = atoms.get_momenta()
    o0, h5, o4 = 0, 5, 4
    u = atoms.positions[o4] - atoms.positions[o0]
    u /= np.linalg.norm(u)
    m_h = atoms.get_masses()[h5]
    v_kick = np.sqrt(2 * kick_kcal * kcal / mol / m_h)  # ASE units: eV, amu, Å
    p[h5] += m_h * v_kick * u
    atoms.set_momenta(p)
    vd.Stationary(atoms)  # the kick's net momentum is spread back over the molecule
    return atoms


def run(out_dir, duration_fs: float = 250.0, timestep_fs: float = 0.5, frame_fs: float = 10.0, seed: int = 0,
        method: dict = AIMD_METHOD, log=print, max_seconds: float | None = None) -> Path:
    """Run (or resume) the AIMD; returns the checkpoint path ``out_dir/malonaldehyde-aimd.trajectory.npz``.

    The checkpoint holds every frame (``times_fs``, ``positions`` Å, ``energies_hartree`` at the AIMD
    method, ``o0_h5``/``h5_o4`` distances Å) and the state to resume from. ``max_seconds`` stops
    cleanly after that much wall time (the next run continues).
    """
    from ase import Atoms
    from ase.md.verlet import VelocityVerlet

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ck = out_dir / "malonaldehyde-aimd.trajectory.npz"
    settings = {"duration_fs": duration_fs, "timestep_fs": timestep_fs, "frame_fs": frame_fs, "seed": seed,
                "method": method, "kick_kcal": KICK_KCAL, "start": "MMFF94 minimum + 300 K + H5 kick towards O4"}
    stride = int(round(frame_fs / timestep_fs))
    n_steps = int(round(duration_fs / timestep_fs))
    if ck.is_file():
        arrays, meta = load_npz(ck, kind=FORMAT)
        if meta["settings"] != settings:
            raise ValueError(f"{ck} was made with other settings ({meta['settings']}); move it away to start afresh")
        atoms = Atoms(numbers=arrays["numbers"], positions=arrays["state_positions"], momenta=arrays["state_momenta"])
        step = int(meta["step"])
        frames = {k: list(arrays[k]) for k in ("times_fs", "positions", "energies_hartree")}
        log(f"aimd: resuming at step {step} of {n_steps} ({len(frames['times_fs'])} frames)")
    else:
        atoms = start_state(seed)
        step = 0
        frames = {"times_fs": [], "positions": [], "energies_hartree": []}
    atoms.calc = PySCFCalculator(method)
    dyn = VelocityVerlet(atoms, timestep_fs * fs)
    t0 = time.perf_counter()

    def save():
        pos = np.array(frames["positions"]).reshape(-1, len(atoms), 3)
        d = lambda i, j: np.linalg.norm(pos[:, i] - pos[:, j], axis=-1)  # noqa: E731
        save_npz(ck, {"numbers": atoms.numbers.astype(np.int64), "times_fs": np.array(frames["times_fs"], float),
                      "positions": pos, "energies_hartree": np.array(frames["energies_hartree"], float),
                      "o0_h5": d(0, 5), "h5_o4": d(5, 4), "state_positions": atoms.get_positions(),
                      "state_momenta": atoms.get_momenta()},
                 {"format": FORMAT, "version": 1, "settings": settings, "step": step, "n_steps": n_steps,
                  "units": {"positions": "angstrom", "times_fs": "fs", "energies_hartree": "hartree"}})

    if step == 0 and not frames["times_fs"]:
        atoms.get_forces()
        frames["times_fs"].append(0.0)
        frames["positions"].append(atoms.get_positions())
        frames["energies_hartree"].append(atoms.calc.results["energy_hartree"])
        save()
    while step < n_steps:
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            log(f"aimd: stopping after {time.perf_counter() - t0:.0f} s at step {step}; rerun to continue")
            break
        dyn.run(stride)
        step += stride
        frames["times_fs"].append(step * timestep_fs)
        frames["positions"].append(atoms.get_positions())
        frames["energies_hartree"].append(atoms.calc.results["energy_hartree"])
        save()
        p = atoms.positions
        log(f"aimd: {step * timestep_fs:.0f} fs, O0-H5 {np.linalg.norm(p[0] - p[5]):.2f} Å, "
            f"H5-O4 {np.linalg.norm(p[5] - p[4]):.2f} Å, {time.perf_counter() - t0:.0f} s")
    return ck


def frames_dataset(out_dir, data_dir, n_workers: int = 2, log=print):
    """PBE/tzv2p single points (energies, densities) of the AIMD frames: ``data_dir/malonaldehyde-aimd.npz``."""
    from .generate import generate

    arrays, meta = load_npz(Path(out_dir) / "malonaldehyde-aimd.trajectory.npz", kind=FORMAT)
    if meta["step"] < meta["n_steps"]:
        raise ValueError(f"aimd: the trajectory is at step {meta['step']} of {meta['n_steps']}; finish it first")
    ds = generate("malonaldehyde-aimd", Path(data_dir) / "malonaldehyde-aimd.npz", arrays["numbers"],
                  arrays["positions"], chunk_size=2, n_workers=n_workers, ordered=True, log=log,
                  description="PBE single points on the frames of a PBE/dzvp AIMD of malonaldehyde with a proton transfer")
    if "times_fs" not in ds.meta:
        ds.meta.update(times_fs=arrays["times_fs"].tolist(), o0_h5=arrays["o0_h5"].tolist(),
                       h5_o4=arrays["h5_o4"].tolist(), aimd=meta["settings"])
        ds.save(Path(data_dir) / "malonaldehyde-aimd.npz")
    return ds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mlhk_viz.reference.aimd", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "data"))
    ap.add_argument("--duration-fs", type=float, default=250.0)
    ap.add_argument("--max-seconds", type=float)
    ap.add_argument("--frames-only", action="store_true", help="only the tzv2p single points of a finished run")
    a = ap.parse_args(argv)
    if not a.frames_only:
        run(a.out, duration_fs=a.duration_fs, max_seconds=a.max_seconds)
    arrays, meta = load_npz(Path(a.out) / "malonaldehyde-aimd.trajectory.npz", kind=FORMAT)
    if meta["step"] >= meta["n_steps"]:
        frames_dataset(a.out, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
