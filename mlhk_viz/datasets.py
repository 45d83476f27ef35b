"""Data sets: the versioned on-disk format, validation, the coefficient cache, import/export.

The native format (``*.npz``, version 1, read with ``allow_pickle=False``) is documented in
``docs/formats.md``. Densities are kept compactly as float32 occupied molecular orbitals
(``density_store = "mo"``) and turned into the 125,000 Fourier coefficients once, into a cache
outside the repository that is checked against the source file's hash on every load; sets may
instead carry the coefficients themselves (``"coefficients"``) or no densities (``"none"``, for
energy-only models).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.units import Bohr

from .basis import FourierBasis
from .progress import Progress, null_progress

FORMAT = "mlhk-viz-dataset"
VERSION = 1
#: bump when the coefficient computation changes, so every cache is rebuilt
CACHE_VERSION = 1
DENSITY_STORES = ("mo", "coefficients", "none")

#: valence electrons of the GTH-PBE pseudopotentials for the elements this project meets
GTH_VALENCE = {1: 1, 2: 2, 3: 3, 4: 4, 5: 3, 6: 4, 7: 5, 8: 6, 9: 7, 10: 8, 16: 6, 17: 7}


class DatasetError(ValueError):
    """A data-set file or folder is unreadable or inconsistent; the message says where and what."""


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename: readers never see half a file."""
    path = Path(path)
    if path.is_dir():  # else the rename below fails naming the temporary file, not this one
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_npz(path, arrays: dict, meta: dict, compress: bool = True) -> None:
    """Save ``arrays`` plus a JSON ``meta`` record as an ``.npz``, atomically."""
    payload = dict(arrays)
    payload["meta"] = np.array(json.dumps(meta, sort_keys=True))

    def write(tmp):
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **payload)

    _atomic_write(Path(path), write)


#: what a damaged archive raises while it is opened or a member is read (a cut file, a bad CRC, a corrupt
#: deflate stream, a bad .npy header)
_DAMAGE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError)


class NpzMembers:
    """The members of an open ``.npz``, read only when asked.

    Damage met while reading a member is a :class:`DatasetError` that names the file and the member;
    errors of the caller's own code in an :func:`open_npz` block pass through as they are.
    """

    def __init__(self, npz, unreadable: str):
        self._npz, self._unreadable = npz, unreadable
        self.files = [f for f in npz.files if f != "meta"]

    def __contains__(self, name) -> bool:
        return name in self.files

    def __getitem__(self, name) -> np.ndarray:
        if name not in self.files:
            raise KeyError(name)
        try:
            return self._npz[name]
        except _DAMAGE as exc:
            raise DatasetError(f"{self._unreadable}: array {name!r}: {exc}") from None

    def shape(self, name) -> tuple:
        """The shape of member ``name`` from its ``.npy`` header alone (a large array is not read)."""
        if name not in self.files:
            raise KeyError(name)
        fmt = np.lib.format
        try:
            with self._npz.zip.open(f"{name}.npy") as fh:
                version = fmt.read_magic(fh)
                read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                return tuple(read(fh)[0])
        except _DAMAGE as exc:
            raise DatasetError(f"{self._unreadable}: array {name!r}: {exc}") from None


@contextmanager
def open_npz(path, kind: str = FORMAT, what: str = ".npz file"):
    """Open an ``.npz`` written by :func:`save_npz` and check its ``meta`` record: yields ``(members, meta)``.

    ``members`` is an :class:`NpzMembers` (``members[name]``, ``name in members``, ``members.files``,
    ``members.shape(name)``): arrays are read only when asked, so a reader can take the record and the
    small arrays of a large file. A file that is missing, not a zip archive, damaged (also a member
    found damaged when read) or of another ``kind`` is a :class:`DatasetError` that names the file and
    says what is wrong (``what`` names the kind of file in that message).
    """
    path = Path(path)
    if path.is_dir():
        raise DatasetError(f"{path}: is a folder, not a {what}")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    unreadable = f"{path}: not a readable {what} (truncated or corrupt?)"
    if not zipfile.is_zipfile(path):  # np.load would take it for a .npy array or a pickle and say so
        raise DatasetError(f"{unreadable}: it is not a zip archive")
    try:
        z = np.load(path, allow_pickle=False)
    except _DAMAGE as exc:
        raise DatasetError(f"{unreadable}: {exc}") from None
    with z:
        if "meta" not in z.files:
            raise DatasetError(f"{path}: no 'meta' record; not a {kind} file")
        try:
            meta = json.loads(str(z["meta"]))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}: the 'meta' record is not valid JSON: {exc}") from None
        except _DAMAGE as exc:
            raise DatasetError(f"{unreadable}: {exc}") from None
        got = meta.get("format") if isinstance(meta, dict) else None
        if got != kind:
            raise DatasetError(f"{path}: format is {got!r}, expected {kind!r}")
        yield NpzMembers(z, unreadable), meta


def load_npz(path, kind: str = FORMAT) -> tuple[dict, dict]:
    """Read an ``.npz`` written by :func:`save_npz` without pickle: ``(arrays, meta)``."""
    with open_npz(path, kind) as (z, meta):
        return {k: z[k] for k in z.files}, meta


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where derived coefficient caches live: ``$MLHK_VIZ_CACHE`` or ``~/.cache/mlhk-viz``."""
    return Path(os.environ.get("MLHK_VIZ_CACHE", Path.home() / ".cache" / "mlhk-viz"))


@dataclass
class Dataset:
    """Molecules of one composition with PBE energies and densities.

    numbers : ``(n_atoms,)`` atomic numbers; positions : ``(n, n_atoms, 3)`` Å (aligned to the
    set's reference frame, box centre at the origin); energies : ``(n,)`` Hartree;
    converged : ``(n,)`` SCF convergence flags; truncation_error : ``(n,)`` relative L1 error of
    the 125,000-coefficient density against the density on a fine grid (NaN if unknown).
    """

    name: str
    numbers: np.ndarray
    positions: np.ndarray
    energies: np.ndarray
    converged: np.ndarray
    truncation_error: np.ndarray
    meta: dict = field(default_factory=dict)
    mo_coeff: np.ndarray | None = None
    mo_occ: np.ndarray | None = None
    stored_coefficients: np.ndarray | None = None
    path: Path | None = None
    #: row starts of independently cached blocks (None: one block). A set assembled from generation
    #: chunks sets them at the chunk boundaries, so a grown set expands only its new chunks and a
    #: prefix of it only the chunks it touches; a generated file records them (``meta["blocks"]``),
    #: so the finished set reads back the caches made while it grew.
    blocks: np.ndarray | None = field(default=None, repr=False)
    _coefficients: np.ndarray | None = field(default=None, repr=False)
    _block_arrays: dict = field(default_factory=dict, repr=False)

    # -- basic facts --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.energies)

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def basis(self) -> FourierBasis:
        return FourierBasis(self.meta.get("box_bohr", 20.0), self.meta.get("basis_per_axis", 50))

    @property
    def density_store(self) -> str:
        return self.meta.get("density_store", "none")

    @property
    def has_densities(self) -> bool:
        return self.density_store != "none"

    @property
    def ordered(self) -> bool:
        """True if the molecules form a trajectory (scan or MD) in file order."""
        return bool(self.meta.get("ordered", False))

    @property
    def n_electrons(self) -> int:
        return int(sum(GTH_VALENCE.get(int(z), int(z)) for z in self.numbers))

    def atoms(self, i: int) -> Atoms:
        """Molecule ``i`` as an :class:`ase.Atoms` (Å), with its PBE energy in ``info``."""
        a = Atoms(numbers=self.numbers, positions=self.positions[i])
        a.info["energy_hartree"] = float(self.energies[i])
        return a

    def subset(self, index) -> "Dataset":
        """A new in-memory data set of the molecules at ``index`` (coefficients carried along)."""
        idx = np.asarray(index)
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return Dataset(
            name=self.name, numbers=self.numbers, positions=self.positions[idx], energies=self.energies[idx],
            converged=self.converged[idx], truncation_error=self.truncation_error[idx],
            meta={k: v for k, v in self.meta.items() if k != "blocks"},  # row starts of the parent's rows
            mo_coeff=pick(self.mo_coeff), mo_occ=pick(self.mo_occ), stored_coefficients=pick(self.stored_coefficients),
            _coefficients=pick(self._coefficients),
        )

    # -- densities ----------------------------------------------------------------
    def coefficients(self, progress: Progress = null_progress, rows=None) -> np.ndarray:
        """The Fourier coefficients of the densities: ``(n, 125000)`` float64, or ``(len(rows), 125000)``.

        Stored coefficients are returned as they are; orbital stores are expanded once into a
        cache (see :func:`cache_dir`) keyed by the source file's SHA-256 (in-memory sets: by the
        content of each of their :attr:`blocks`) and checked on reading, so a stale or corrupt cache
        is rebuilt, never used. With ``rows``, only the blocks holding those rows are read or expanded.
        """
        if self._coefficients is not None:
            return self._coefficients if rows is None else self._coefficients[np.asarray(rows)]
        if self.density_store == "none":
            raise DatasetError(f"data set {self.name!r} holds no densities (energy-only)")
        if self.density_store == "coefficients":
            self._coefficients = np.asarray(self.stored_coefficients, dtype=float)
            return self.coefficients(progress, rows)
        starts = self._block_starts()
        if rows is None or len(starts) == 1:
            self._coefficients = np.concatenate(self._cached_blocks(range(len(starts)), starts, progress))
            self._block_arrays.clear()  # held once, in the full array
            return self.coefficients(progress, rows)
        r = np.asarray(rows, dtype=int).reshape(-1)
        if len(r) and (r.min() < 0 or r.max() >= len(self)):
            raise IndexError(f"data set {self.name!r}: rows must be in 0 … {len(self) - 1}")
        which = np.searchsorted(starts, r, side="right") - 1
        need = np.unique(which)
        got = dict(zip(need.tolist(), self._cached_blocks(need, starts, progress)))
        out = np.empty((len(r), self.basis.size))
        for b in need:  # one copy per block, not per row
            sel = which == b
            out[sel] = got[b][r[sel] - starts[b]]
        return out

    def _block_starts(self) -> np.ndarray:
        if self.blocks is None:
            return np.array([0])
        b = np.unique(np.concatenate([[0], np.asarray(self.blocks, int)]))
        if b[-1] >= len(self) or b[0] != 0:
            raise ValueError(f"data set {self.name!r}: blocks must start at 0 and lie inside the {len(self)} rows")
        return b

    def compute_coefficients(self, index=None, progress: Progress = null_progress) -> np.ndarray:
        """Coefficients computed afresh from the stored orbitals: ``(len(index), 125000)``."""
        from .reference.projection import density_coefficients
        from .reference.pyscf_runner import build_mol

        idx = np.arange(len(self)) if index is None else np.asarray(index)
        out = np.empty((len(idx), self.basis.size))
        progress(0, len(idx), "densities")
        for k, i in enumerate(idx):
            mol = build_mol(self.numbers, self.positions[i], self.meta["method"])
            out[k] = density_coefficients(mol, self.mo_coeff[i], self.mo_occ[i], self.basis)
            progress(k + 1, len(idx), "densities")
        return out

    def _content_sha256(self, index=slice(None)) -> str:
        h = hashlib.sha256()
        for a in (self.numbers.astype(np.int64), self.positions[index].astype(float),
                  self.mo_coeff[index].astype(np.float32), self.mo_occ[index].astype(np.float32)):
            h.update(np.ascontiguousarray(a).tobytes())
        h.update(json.dumps(self.meta.get("method", {}), sort_keys=True).encode())
        return h.hexdigest()

    def _cached_blocks(self, which, starts, progress: Progress) -> list[np.ndarray]:
        """Coefficients of the blocks ``which`` (rows ``starts[b]`` up to the next start), cached per block."""
        ends = np.append(starts[1:], len(self))
        todo = [(b, slice(int(starts[b]), int(ends[b]))) for b in which]
        total, done, out = sum(s.stop - s.start for _, s in todo), 0, []
        for b, rows in todo:
            # a file in one block is keyed by its bytes; a block of several by its content, which is
            # the same whether it was read from the chunk it was generated in or from the finished file
            arr = self._block_arrays.get((rows.start, rows.stop))
            if arr is None:
                whole = self.path is not None and len(starts) == 1
                src = file_sha256(self.path) if whole else self._content_sha256(rows)
                arr = self._read_cache(src, rows.stop - rows.start)
            if arr is None:
                sub = lambda d, t, s, o=done: progress(o + d, total, s)  # noqa: E731
                arr = self._write_cache(src, self.compute_coefficients(np.arange(rows.start, rows.stop), sub))
            if len(starts) > 1:
                self._block_arrays[(rows.start, rows.stop)] = arr  # a learning curve asks again for each M
            out.append(arr)
            done += rows.stop - rows.start
            progress(done, total, "densities")
        return out

    def _cache_stem(self, src: str) -> Path:
        return cache_dir() / f"{self.name}-{src[:16]}-v{CACHE_VERSION}"

    def _read_cache(self, src: str, n: int) -> np.ndarray | None:
        stem = self._cache_stem(src)
        npy, side = stem.with_suffix(".npy"), stem.with_suffix(".json")
        if not (npy.is_file() and side.is_file()):
            return None
        try:
            info = json.loads(side.read_text())
            ok = (info.get("source_sha256") == src and info.get("cache_version") == CACHE_VERSION
                  and info.get("array_sha256") == file_sha256(npy))
            if ok:
                arr = np.load(npy, allow_pickle=False)
                if arr.shape == (n, self.basis.size) and np.all(np.isfinite(arr)):
                    return arr.astype(float)
        except (OSError, ValueError, json.JSONDecodeError):
            pass  # unreadable cache: rebuilt by the caller
        return None

    def _write_cache(self, src: str, coeffs: np.ndarray) -> np.ndarray:
        stem = self._cache_stem(src)
        npy, side = stem.with_suffix(".npy"), stem.with_suffix(".json")
        _atomic_write(npy, lambda tmp: np.save(open(tmp, "wb"), coeffs.astype(np.float32)))
        info = {"source": str(self.path) if self.path else f"in memory: {self.name}", "source_sha256": src,
                "cache_version": CACHE_VERSION, "array_sha256": file_sha256(npy), "shape": list(coeffs.shape),
                "dtype": "float32"}
        _atomic_write(side, lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))
        # what later sessions read back is the float32 copy: return exactly that
        return coeffs.astype(np.float32).astype(float)

    # -- files --------------------------------------------------------------------
    def to_arrays(self) -> tuple[dict, dict]:
        arrays = dict(numbers=self.numbers.astype(np.int64), positions=self.positions.astype(float),
                      energies=self.energies.astype(float), converged=self.converged.astype(bool),
                      truncation_error=self.truncation_error.astype(float))
        if self.density_store == "mo":
            arrays["mo_coeff"] = self.mo_coeff.astype(np.float32)
            arrays["mo_occ"] = self.mo_occ.astype(np.float32)
        elif self.density_store == "coefficients":
            arrays["coefficients"] = np.asarray(self.stored_coefficients)
        meta = dict(self.meta, format=FORMAT, version=VERSION, name=self.name)
        return arrays, meta

    def save(self, path) -> Path:
        """Write the native format (atomically: an existing file is replaced only when complete)."""
        arrays, meta = self.to_arrays()
        validate(arrays, meta, where=str(path))
        save_npz(path, arrays, meta)
        self.path = Path(path)
        return self.path

    @classmethod
    def load(cls, path) -> "Dataset":
        """Read and validate a native data-set file; raises :class:`DatasetError` saying what is wrong."""
        arrays, meta = load_npz(path)
        validate(arrays, meta, where=str(path))
        return cls(
            name=meta.get("name", Path(path).stem), numbers=arrays["numbers"], positions=arrays["positions"],
            energies=arrays["energies"], converged=arrays["converged"], truncation_error=arrays["truncation_error"],
            meta=meta, mo_coeff=arrays.get("mo_coeff"), mo_occ=arrays.get("mo_occ"),
            stored_coefficients=arrays.get("coefficients"), path=Path(path),
            blocks=np.asarray(meta["blocks"], int) if meta.get("blocks") else None,
        )


def _check(cond, where, msg):
    if not cond:
        raise DatasetError(f"{where}: {msg}")


def validate(arrays: dict, meta: dict, where: str = "data set") -> None:
    """Check a data set's arrays and metadata; raise :class:`DatasetError` naming the first problem."""
    v = meta.get("version")
    _check(v == VERSION, where, f"format version {v!r} is not supported (this mlhk-viz reads version {VERSION})")
    store = meta.get("density_store")
    _check(store in DENSITY_STORES, where, f"density_store is {store!r}, expected one of {DENSITY_STORES}")
    required = ["numbers", "positions", "energies", "converged", "truncation_error"]
    required += {"mo": ["mo_coeff", "mo_occ"], "coefficients": ["coefficients"], "none": []}[store]
    for k in required:
        _check(k in arrays, where, f"missing array '{k}'")
    num, pos, en = arrays["numbers"], arrays["positions"], arrays["energies"]
    _check(num.ndim == 1 and np.issubdtype(num.dtype, np.integer) and len(num) > 0, where,
           f"'numbers' must be a 1D integer array of atomic numbers, got {num.dtype} {num.shape}")
    _check(np.all((num >= 1) & (num <= 118)), where, f"'numbers' holds values outside 1..118: {num.tolist()}")
    n, na = len(en), len(num)
    _check(en.ndim == 1 and np.issubdtype(en.dtype, np.floating), where,
           f"'energies' must be a 1D float array (Hartree), got {en.dtype} {en.shape}")
    _check(pos.shape == (n, na, 3) and np.issubdtype(pos.dtype, np.floating), where,
           f"'positions' must be float ({n}, {na}, 3) Å to match {n} energies and {na} atoms, got {pos.dtype} {pos.shape}")
    _check(arrays["converged"].shape == (n,) and arrays["converged"].dtype == bool, where,
           f"'converged' must be a bool array of shape ({n},), got {arrays['converged'].dtype} {arrays['converged'].shape}")
    _check(arrays["truncation_error"].shape == (n,), where, f"'truncation_error' must have shape ({n},)")
    for k in ("positions", "energies"):
        bad = ~np.isfinite(arrays[k]).reshape(n, -1).all(axis=1)
        _check(not bad.any(), where, f"'{k}' has non-finite values (NaN or inf) for molecule(s) {np.flatnonzero(bad)[:10].tolist()}")
    if "blocks" in meta:
        b = meta["blocks"]
        ok = isinstance(b, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in b)
        _check(ok and all(0 < x < n for x in b) and b == sorted(set(b)), where,
               f"meta 'blocks' must be increasing row starts between 1 and {n - 1}, got {str(b)[:80]}")
    size = int(meta.get("basis_per_axis", 50)) ** 3
    if store == "mo":
        mo, occ = arrays["mo_coeff"], arrays["mo_occ"]
        _check(mo.ndim == 3 and mo.shape[0] == n, where, f"'mo_coeff' must be (n={n}, nao, nocc), got {mo.shape}")
        _check(occ.shape == (n, mo.shape[2]), where, f"'mo_occ' must be ({n}, {mo.shape[2]}), got {occ.shape}")
        _check("method" in meta and "basis" in meta["method"], where, "an orbital store needs meta.method.basis")
        for k in ("mo_coeff", "mo_occ"):
            bad = ~np.isfinite(arrays[k]).reshape(n, -1).all(axis=1)
            _check(not bad.any(), where, f"'{k}' has non-finite values for molecule(s) {np.flatnonzero(bad)[:10].tolist()}")
    elif store == "coefficients":
        c = arrays["coefficients"]
        _check(c.shape == (n, size) and np.issubdtype(c.dtype, np.floating), where,
               f"'coefficients' must be float ({n}, {size}), got {c.dtype} {c.shape}")
        bad = ~np.isfinite(c).all(axis=1)
        _check(not bad.any(), where, f"'coefficients' has non-finite values for molecule(s) {np.flatnonzero(bad)[:10].tolist()}")


# -- the published folder format --------------------------------------------------------
def import_published(folder, name: str | None = None, energy_unit: str = "Hartree") -> Dataset:
    """Read a folder in the format of the paper's published data.

    ``structures.npy`` ``(n, n_atoms, 3)`` Å, ``atom_types.npy`` (``(n_atoms,)`` or ``(n, n_atoms)``,
    symbols or numbers), ``dft_energies.npy`` ``(n,)`` in ``energy_unit`` ("Hartree", "eV" or
    "kcal/mol"), optional ``dft_densities.npy`` ``(n, 125000)`` in the published packing
    (:func:`mlhk_viz.basis.from_published`). Without densities the set is energy-only.
    """
    from ase.data import atomic_numbers
    from ase.units import Hartree, kcal, mol

    from .basis import from_published

    folder = Path(folder)
    where = str(folder)

    def npy(fname, required=True):
        p = folder / fname
        if not p.is_file():
            _check(not required, where, f"missing {fname}")
            return None
        try:
            return np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise DatasetError(f"{p}: unreadable .npy (truncated, or saved with pickle?): {exc}") from None

    pos = np.asarray(npy("structures.npy"), float)
    types = npy("atom_types.npy")
    en = np.asarray(npy("dft_energies.npy"), float).reshape(-1)
    if types.ndim == 2:
        _check((types == types[0]).all(), where, "atom_types.npy: molecules differ in composition; one composition per set")
        types = types[0]
    numbers = np.array([atomic_numbers[str(t)] if not str(t).lstrip("-").isdigit() else int(t) for t in types])
    units = {"Hartree": 1.0, "eV": 1.0 / Hartree, "kcal/mol": kcal / mol / Hartree}
    _check(energy_unit in units, where, f"energy_unit must be one of {list(units)}, got {energy_unit!r}")
    en = en * units[energy_unit]
    dens = npy("dft_densities.npy", required=False)
    meta = {"density_store": "none", "box_bohr": 20.0, "basis_per_axis": 50, "ordered": False,
            "method": {"source": "published folder", "path": str(folder)}}
    ds = Dataset(name=name or folder.name, numbers=numbers, positions=pos, energies=en,
                 converged=np.ones(len(en), bool), truncation_error=np.full(len(en), np.nan), meta=meta)
    if dens is not None:
        _check(dens.shape == (len(en), 125000), where, f"dft_densities.npy must be ({len(en)}, 125000), got {dens.shape}")
        ds.meta["density_store"] = "coefficients"
        ds.stored_coefficients = from_published(dens, ds.n_electrons)
    arrays, meta = ds.to_arrays()
    validate(arrays, meta, where=where)
    return ds


def export_published(ds: Dataset, folder, grid_points: int = 200, progress: Progress = null_progress) -> Path:
    """Write ``ds`` as a published-format folder (energies in Hartree, lengths in Å; see README.txt there)."""
    from ase.data import chemical_symbols

    from .basis import to_published

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "structures.npy", ds.positions)
    np.save(folder / "atom_types.npy", np.array([chemical_symbols[z] for z in ds.numbers]))
    np.save(folder / "dft_energies.npy", ds.energies)
    if ds.has_densities:
        np.save(folder / "dft_densities.npy", to_published(ds.coefficients(progress), grid_points, ds.basis))
    (folder / "README.txt").write_text(
        f"Exported by mlhk-viz from data set {ds.name!r}.\nstructures.npy: Å, box centre at the origin; "
        f"dft_energies.npy: Hartree; dft_densities.npy: published packing, FFT normalisation of a "
        f"{grid_points}^3 grid.\n")
    return folder


# -- cube files ----------------------------------------------------------------------------
def write_cube(path, density, axes_bohr, numbers, positions, comment: str = "mlhk-viz density") -> Path:
    """Write a density on a rectangular grid as a Gaussian cube file.

    density : ``(nx, ny, nz)`` e/bohr³ on the uniform 1D axes ``axes_bohr`` (bohr, box frame);
    numbers, positions : the molecule (Å, same frame). Uses :mod:`ase.io.cube`.
    """
    from ase.io.cube import write_cube as ase_write_cube

    density = np.asarray(density, float)
    ax = [np.asarray(a, float) for a in axes_bohr]
    _check(density.shape == tuple(len(a) for a in ax), str(path), f"density shape {density.shape} does not match the axes")
    step = np.array([a[1] - a[0] for a in ax]) * Bohr  # Å
    origin = np.array([a[0] for a in ax]) * Bohr
    atoms = Atoms(numbers=numbers, positions=np.asarray(positions, float),
                  cell=np.diag(step * np.array(density.shape)))
    path = Path(path)

    def write(tmp):
        with open(tmp, "w") as fh:
            ase_write_cube(fh, atoms, data=density, origin=origin, comment=comment)

    _atomic_write(path, write)
    return path


def read_cube(path) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray], Atoms]:
    """Read a cube file: ``(density e/bohr³, axes in bohr, atoms in Å)``."""
    from ase.io.cube import read_cube as ase_read_cube

    with open(path) as fh:
        d = ase_read_cube(fh)
    data, origin, atoms = d["data"], np.asarray(d["origin"]), d["atoms"]
    step = np.diag(np.asarray(d["spacing"]))
    axes = tuple((origin[i] + step[i] * np.arange(data.shape[i])) / Bohr for i in range(3))
    return data, axes, atoms
