"""MMFF94 (through RDKit) as an ASE calculator, and the MD molecules' starting geometries.

The paper ran its classical MD with GAFF, which needs openff-toolkit (not installable here);
MMFF94 is the closest general organic force field at hand (see ``docs/md.md``). RDKit gives
energies in kcal/mol and gradients in kcal/mol/Å; the calculator returns ASE units (eV, eV/Å).

Atom order (fixed, relied on by every MD file): the heavy atoms in SMILES order, then the
hydrogens as :func:`rdkit.Chem.AddHs` appends them (grouped by their parent heavy atom, in
heavy-atom order). For the three molecules:

- benzene ``c1ccccc1``: C0-C5 around the ring, H6-H11 (H6+k on C k);
- ethane ``CC``: C0, C1, H2-H4 on C0, H5-H7 on C1;
- malonaldehyde ``O/C=C\\C=O`` (Z enol, intramolecular O-H···O bond): O0 (hydroxyl),
  C1, C2, C3, O4 (carbonyl), H5 (hydroxyl H, bonded to O0, H-bonded to O4), H6 on C1,
  H7 on C2, H8 on C3.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.units import kcal, mol

#: kcal/mol -> eV
KCAL_MOL = kcal / mol

#: the molecules of the paper's MD sets, as SMILES (heavy-atom order = atom order, see module doc)
SMILES = {
    "benzene": "c1ccccc1",
    "ethane": "CC",
    # Z about C1=C2 ("/ ... \\"): O0 and C3 on the same side, so O0-H5 can reach O4
    "malonaldehyde": "O/C=C\\C=O",
}

#: seed of the RDKit conformer embedding (ETKDG); the lowest-energy MMFF minimum is kept
EMBED_SEED = 20170101
N_CONFORMERS = 10


def _require_rdkit():
    try:
        from rdkit import Chem  # noqa: F401
    except ImportError as exc:  # pragma: no cover - rdkit is the `md` extra
        raise ImportError("MD with MMFF94 needs RDKit: pip install 'mlhk-viz[md]'") from exc


class MMFF94Calculator(Calculator):
    """RDKit's MMFF94 force field as an ASE calculator (energy in eV, forces in eV/Å).

    ``rdmol`` is an RDKit molecule with explicit hydrogens (:func:`rdkit.Chem.AddHs`); the
    :class:`ase.Atoms` it is attached to must hold the same atoms in the same order. The force
    field is built once (atom types, charges, all interaction terms; no cut-off) and then only
    evaluated at new positions. ``variant`` is "MMFF94" or "MMFF94s".
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, rdmol, variant: str = "MMFF94", **kwargs):
        _require_rdkit()
        from rdkit import Chem
        from rdkit.Chem import AllChem

        super().__init__(**kwargs)
        if any(a.GetNumImplicitHs() for a in rdmol.GetAtoms()):
            raise ValueError("MMFF94Calculator: the molecule needs explicit hydrogens (use Chem.AddHs)")
        self.rdmol = Chem.Mol(rdmol)
        if self.rdmol.GetNumConformers() == 0:
            raise ValueError("MMFF94Calculator: the molecule has no conformer (embed it first)")
        self.numbers = np.array([a.GetAtomicNum() for a in self.rdmol.GetAtoms()])
        props = AllChem.MMFFGetMoleculeProperties(self.rdmol, mmffVariant=variant)
        if props is None:
            raise ValueError("MMFF94Calculator: MMFF94 has no parameters for this molecule")
        self._ff = AllChem.MMFFGetMoleculeForceField(self.rdmol, props, nonBondedThresh=1000.0,
                                                      ignoreInterfragInteractions=False)
        if self._ff is None:
            raise ValueError("MMFF94Calculator: could not set up the force field")
        self.variant = variant

    def check_state(self, atoms, tol=1e-15):
        """What changed since the last calculation, by exact comparison.

        Same answer as ASE's :func:`~ase.calculators.calculator.compare_atoms` at its default
        ``tol=1e-15`` (positions in Å) for what MMFF depends on (positions, numbers; cell and pbc
        for good measure), without its ``allclose`` calls over every per-atom array, which cost
        several times the force field itself per MD step. Initial charges and magnetic moments
        are not compared: MMFF assigns its own charges.
        """
        old = self.atoms
        if old is None or len(old) != len(atoms):
            return list(all_changes)
        changes = []
        if not np.array_equal(old.positions, atoms.positions):
            changes.append("positions")
        if not np.array_equal(old.numbers, atoms.numbers):
            changes.append("numbers")
        if not np.array_equal(old.cell.array, atoms.cell.array):
            changes.append("cell")
        if not np.array_equal(old.pbc, atoms.pbc):
            changes.append("pbc")
        return changes

    def calculate(self, atoms=None, properties=("energy", "forces"), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        nums = self.atoms.numbers
        if len(nums) != len(self.numbers) or np.any(nums != self.numbers):
            raise ValueError("MMFF94Calculator: the atoms differ from the force field's molecule "
                             f"(expected {self.numbers.tolist()}, got {nums.tolist()})")
        pos = self.atoms.positions.ravel().tolist()
        e = self._ff.CalcEnergy(pos)
        g = np.asarray(self._ff.CalcGrad(pos)).reshape(-1, 3)
        self.results["energy"] = e * KCAL_MOL
        self.results["free_energy"] = e * KCAL_MOL
        self.results["forces"] = -g * KCAL_MOL

    def energy_at(self, positions) -> float:
        """MMFF energy (eV) at ``positions`` ``(n_atoms, 3)`` Å, bypassing ASE's cache (for tests)."""
        return self._ff.CalcEnergy(np.asarray(positions, float).ravel().tolist()) * KCAL_MOL


def principal_frame(positions, masses) -> np.ndarray:
    """Positions with the centre of mass at the origin and the principal axes of inertia along x, y, z.

    Axes in order of increasing moment (a planar molecule lies in the xy-plane, its normal on z).
    Signs are fixed by a deterministic rule (the mass-weighted third moment along each axis
    positive when it is not ~0, else the first atom with a clear coordinate positive) and the
    frame is right-handed.
    """
    p = np.asarray(positions, float)
    m = np.asarray(masses, float)
    p = p - (m[:, None] * p).sum(0) / m.sum()
    inertia = np.einsum("a,ab,ac->bc", m, p, p)  # second moment tensor; same axes as inertia
    w, v = np.linalg.eigh(inertia)  # ascending second moment = descending moment of inertia
    v = v[:, ::-1]  # ascending moment of inertia: the largest spread first
    q = p @ v
    for k in range(3):
        skew = (m * q[:, k] ** 3).sum()
        if abs(skew) > 1e-6:
            s = np.sign(skew)
        else:
            big = np.flatnonzero(np.abs(q[:, k]) > 1e-4)
            s = np.sign(q[big[0], k]) if len(big) else 1.0
        v[:, k] *= s
    if np.linalg.det(v) < 0:
        v[:, 2] *= -1
    out = p @ v
    out[np.abs(out) < 1e-12] = 0.0
    return out


def molecule(name: str, variant: str = "MMFF94"):
    """One of "benzene", "ethane", "malonaldehyde" at its MMFF94 minimum: ``(rdkit Mol, ase.Atoms)``.

    Built from :data:`SMILES` with explicit hydrogens, embedded (ETKDG, seed :data:`EMBED_SEED`,
    :data:`N_CONFORMERS` conformers), MMFF-optimised, the lowest-energy conformer kept, and put in
    its principal frame (:func:`principal_frame`; centre of mass at the origin). The Mol's
    conformer and the Atoms hold the same coordinates (Å); the Atoms carry a
    :class:`MMFF94Calculator`. Atom order: see the module docstring.
    """
    _require_rdkit()
    from ase.data import atomic_masses
    from rdkit import Chem
    from rdkit.Chem import AllChem
    from rdkit.Geometry import Point3D

    key = name.lower()
    if key not in SMILES:
        raise ValueError(f"molecule: unknown molecule {name!r}; choose from {sorted(SMILES)}")
    rdmol = Chem.AddHs(Chem.MolFromSmiles(SMILES[key]))
    params = AllChem.ETKDGv3()
    params.randomSeed = EMBED_SEED
    cids = list(AllChem.EmbedMultipleConfs(rdmol, numConfs=N_CONFORMERS, params=params))
    if not cids:
        raise RuntimeError(f"molecule: RDKit could not embed {name}")
    res = AllChem.MMFFOptimizeMoleculeConfs(rdmol, maxIters=10000, mmffVariant=variant)
    energies = [e if conv == 0 else np.inf for conv, e in res]
    best = cids[int(np.argmin(energies))]
    # polish the minimum further than RDKit's default convergence
    props = AllChem.MMFFGetMoleculeProperties(rdmol, mmffVariant=variant)
    ff = AllChem.MMFFGetMoleculeForceField(rdmol, props, confId=best, nonBondedThresh=1000.0)
    ff.Minimize(maxIts=10000, forceTol=1e-8, energyTol=1e-12)
    numbers = np.array([a.GetAtomicNum() for a in rdmol.GetAtoms()])
    pos = principal_frame(rdmol.GetConformer(best).GetPositions(), atomic_masses[numbers])
    out = Chem.Mol(rdmol, confId=best)  # a copy holding only the chosen conformer
    conf = out.GetConformer()
    for i, (x, y, z) in enumerate(pos):
        conf.SetAtomPosition(i, Point3D(float(x), float(y), float(z)))
    out.SetProp("_Name", key)
    atoms = Atoms(numbers=numbers, positions=pos)
    atoms.calc = MMFF94Calculator(out, variant=variant)
    return out, atoms


def symmetry_permutations(name: str) -> np.ndarray:
    """The atom orderings that leave the molecular graph unchanged: ``(P, n_atoms)``, identity first.

    RDKit's substructure self-match with explicit hydrogens enumerates the graph automorphisms
    (benzene 12, ethane 72, malonaldehyde 1). Row ``perm`` maps reference atom ``j`` to atom
    ``perm[j]``; :func:`mlhk_viz.geometry.align_symmetric` uses them to undo methyl rotations.
    """
    _require_rdkit()
    from rdkit import Chem

    key = name.lower()
    if key not in SMILES:
        raise ValueError(f"symmetry_permutations: unknown molecule {name!r}; choose from {sorted(SMILES)}")
    mol = Chem.AddHs(Chem.MolFromSmiles(SMILES[key]))
    matches = mol.GetSubstructMatches(mol, uniquify=False, useChirality=False, maxMatches=100000)
    perms = np.unique(np.array(matches, int), axis=0)
    ident = np.arange(mol.GetNumAtoms())
    return np.vstack([ident, perms[~(perms == ident).all(1)]])


#: orderings that exchange the two tautomers of a molecule with an intramolecular proton transfer:
#: malonaldehyde's O0 <-> O4, C1 <-> C3, H6 <-> H8 (H5 shuttles between the oxygens, C2-H7 is the axis)
TAUTOMER_ORDERINGS = {"malonaldehyde": (4, 3, 2, 1, 0, 5, 8, 7, 6)}


def equivalent_orderings(name: str) -> np.ndarray:
    """:func:`symmetry_permutations` plus the orderings that map one tautomer onto the other: ``(P, n_atoms)``.

    The classical force field keeps malonaldehyde's proton on O0, so every training frame is one
    tautomer; PBE dynamics moves it to O4, and that geometry matched by index sits far from all
    training frames although it is the same molecule. With these orderings
    :func:`mlhk_viz.geometry.align_symmetric` relabels such a frame into the training tautomer
    (energy and density are unchanged by relabelling identical atoms).
    """
    base = symmetry_permutations(name)
    extra = TAUTOMER_ORDERINGS.get(name.lower())
    if extra is None:
        return base
    return np.vstack([base, base[:, list(extra)]])
