"""Resumable, Dask-parallel generation of reference data sets.

Work is cut into chunks of geometries. Each finished chunk is written atomically into a parts
folder beside the output (``<out>.parts-<hash>/chunk-00012.npz``) the moment it arrives, so an
interrupted run loses at most the chunks in flight; a rerun reuses every valid chunk and
computes only the rest. The folder's name carries a hash of the geometries (rounded to
:data:`GEOMETRY_TOL` Å) and the method, and the folder keeps the geometries it was made for
(``geometries.npz``), so parts made with other settings are never mixed in while the same set
computed on another machine (whose BLAS aligns the frames to a different last bit) is still
found. When all chunks exist they are assembled into one data-set file and the parts folder is
removed.

A geometry that another finished set of the same molecule already holds (``known=``; the MD
training pools share up to 40 % of their frames, see :mod:`.md_sets`) is copied from it rather
than computed again; the chunk marks those rows in ``reused``.

By default a :class:`dask.distributed.LocalCluster` of single-threaded worker processes runs the
chunks (PySCF's own threads scale poorly; two single-threaded workers on two cores give 1.65x
the throughput of one two-threaded one, see shared facts); ``scheduler=ADDRESS`` uses an
existing cluster instead.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from ..datasets import Dataset, DatasetError, load_npz, save_npz
from ..progress import Progress, null_progress
from .pyscf_runner import DEFAULT_METHOD, single_point

CHUNK_FORMAT = "mlhk-viz-chunk"
GEOMETRIES_FORMAT = "mlhk-viz-chunk-geometries"
# Two geometries within this many Å are the same set member. Aligned MD frames differ by ~1e-15 Å
# between numpy/BLAS builds; anything physical is many orders larger.
GEOMETRY_DECIMALS = 6
GEOMETRY_TOL = 10.0 ** -GEOMETRY_DECIMALS


def chunk_file(parts: Path, i: int) -> Path:
    """Where chunk ``i`` of a parts folder lives (``chunk-00012.npz``)."""
    return Path(parts) / f"chunk-{i:05d}.npz"


def chunk_files(parts: Path) -> dict[int, Path]:
    """``{chunk index: file}`` of the chunks in a parts folder, in index order."""
    found = {}
    for f in Path(parts).glob("chunk-*.npz"):
        try:
            found[int(f.stem.split("-", 1)[1])] = f
        except ValueError:  # not one of ours (chunk-old.npz): leave it
            continue
    return dict(sorted(found.items()))


def compute_chunk(numbers, positions, method: dict) -> dict:
    """Single points for a chunk of geometries ``(k, n_atoms, 3)`` Å: stacked arrays."""
    rows = [single_point(numbers, p, method) for p in positions]
    return {
        "energies": np.array([r["energy"] for r in rows]),
        "converged": np.array([r["converged"] for r in rows]),
        "attempts": np.array([r["attempts"] for r in rows]),
        "truncation_error": np.array([r["truncation_error"] for r in rows]),
        "seconds": np.array([r["seconds"] for r in rows]),
        "mo_coeff": np.stack([r["mo_coeff"] for r in rows]),
        "mo_occ": np.stack([r["mo_occ"] for r in rows]),
    }


def _geometry_key(positions) -> bytes:
    return (np.round(np.asarray(positions, np.float64), GEOMETRY_DECIMALS) + 0.0).tobytes()


class KnownResults:
    """Finished single points of other sets, looked up by geometry.

    ``datasets``: :class:`~mlhk_viz.datasets.Dataset` objects; those computed with another
    method or for other atoms are ignored, so a hit is always the result this run would compute.
    """

    def __init__(self, numbers, method: dict, datasets=()):
        numbers = np.asarray(numbers, int)
        self._index: dict[bytes, tuple] = {}
        for ds in datasets:
            if ds is None or not np.array_equal(np.asarray(ds.numbers, int), numbers):
                continue
            if any(ds.meta.get("method", {}).get(k) != v for k, v in method.items()):
                continue
            for row, p in enumerate(ds.positions):
                self._index.setdefault(_geometry_key(p), (ds, row))

    def __len__(self) -> int:
        return len(self._index)

    def find(self, position) -> tuple | None:
        """``(dataset, row)`` holding this geometry ``(n_atoms, 3)`` Å (within GEOMETRY_TOL), or None."""
        hit = self._index.get(_geometry_key(position))
        if hit is None or np.max(np.abs(hit[0].positions[hit[1]] - position)) > GEOMETRY_TOL:
            return None
        return hit


def _chunk_from(rows: list, computed: dict | None) -> dict:
    """Chunk arrays from per-row sources: ``(dataset, row)`` copies and, in order, the computed rows."""
    out = {k: [] for k in ("energies", "converged", "attempts", "truncation_error", "seconds", "mo_coeff",
                           "mo_occ", "reused")}
    j = 0
    for hit in rows:
        if hit is None:
            for k in out:
                out[k].append(computed[k][j] if k != "reused" else False)
            j += 1
        else:
            ds, r = hit
            for k, v in (("energies", ds.energies[r]), ("converged", ds.converged[r]), ("attempts", 0),
                         ("truncation_error", ds.truncation_error[r]), ("seconds", 0.0),
                         ("mo_coeff", ds.mo_coeff[r]), ("mo_occ", ds.mo_occ[r]), ("reused", True)):
                out[k].append(v)
    return {k: np.stack(v) if k in ("mo_coeff", "mo_occ") else np.array(v) for k, v in out.items()}


def _digest(numbers, positions, method) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(numbers, np.int64).tobytes())
    # rounded, and -0.0 folded into 0.0, so last-bit differences between builds give the same name
    h.update(np.ascontiguousarray(np.round(np.asarray(positions, np.float64), GEOMETRY_DECIMALS) + 0.0).tobytes())
    h.update(json.dumps(method, sort_keys=True).encode())
    return h.hexdigest()


def _same_geometries(numbers, positions, other_numbers, other_positions) -> bool:
    return (np.array_equal(np.asarray(numbers, int), np.asarray(other_numbers, int))
            and np.shape(positions) == np.shape(other_positions)
            and bool(np.all(np.abs(np.asarray(positions, float) - other_positions) <= GEOMETRY_TOL)))


def _folder_matches(folder: Path, numbers, positions, method) -> bool:
    """Whether an existing parts folder was made for these geometries with this method."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        arrays, _ = load_npz(folder / "geometries.npz", kind=GEOMETRIES_FORMAT)
    except (OSError, ValueError, DatasetError):
        return False
    return (manifest.get("method") == method
            and _same_geometries(numbers, positions, arrays.get("numbers"), arrays.get("positions")))


def unfinished(path) -> list[dict]:
    """What generation of ``path`` (a set's ``.npz``, or one of its ``.parts-*`` folders) has finished so far.

    One dict per parts folder: ``folder``, ``name``, ``n`` (geometries in the set), ``done`` (geometries
    in finished chunks), ``chunks``. Empty if there is no parts folder (a finished set or nothing).
    """
    path = Path(path)
    if path.is_dir() and ".npz.parts-" in path.name:
        folders = [path]
    else:
        folders = sorted(f for f in path.parent.glob(f"{path.name}.parts-*") if f.is_dir())
    out = []
    for folder in folders:
        try:
            info = json.loads((folder / "manifest.json").read_text())
            n, size = int(info["n"]), int(info["chunk_size"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        chunks = list(chunk_files(folder))
        done = sum(min((i + 1) * size, n) - i * size for i in chunks)
        out.append({"folder": folder, "name": info.get("name", folder.name), "n": n, "done": done, "chunks": len(chunks)})
    return out


def parts_dir(out, numbers, positions, method) -> Path:
    """The parts folder of ``out`` for these geometries ``(n, n_atoms, 3)`` Å and method.

    Normally ``<out>.parts-<hash>``. If a coordinate sits on a rounding boundary of the hash, the
    same set made elsewhere can carry another hash: a sibling folder whose stored geometries agree
    within :data:`GEOMETRY_TOL` Å and whose method is the same is then the one returned.
    """
    out = Path(out)
    named = out.parent / f"{out.name}.parts-{_digest(numbers, positions, method)[:12]}"
    if named.is_dir():
        return named
    for folder in sorted(out.parent.glob(f"{out.name}.parts-*")):
        if folder.is_dir() and _folder_matches(folder, numbers, positions, method):
            return folder
    return named


def _write_geometries(parts: Path, numbers, positions) -> None:
    """Record in the folder the geometries its chunks belong to (once; never overwritten)."""
    path = parts / "geometries.npz"
    if not path.is_file():
        save_npz(path, {"numbers": np.asarray(numbers, np.int64), "positions": np.asarray(positions, np.float64)},
                 {"format": GEOMETRIES_FORMAT, "units": {"positions": "angstrom"}})


def _read_chunk(path: Path, n_expected: int) -> dict | None:
    """A finished chunk, or None if it is missing or unusable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        arrays, _ = load_npz(path, kind=CHUNK_FORMAT)
    except DatasetError:
        return None
    ok = all(k in arrays for k in ("energies", "converged", "mo_coeff", "mo_occ", "truncation_error"))
    if not ok or len(arrays["energies"]) != n_expected or not np.all(np.isfinite(arrays["energies"])):
        return None
    return arrays


def _complete(out, numbers, positions, method) -> Dataset | None:
    """The finished output file if it holds exactly these geometries with this method, else None."""
    out = Path(out)
    if not out.is_file():
        return None
    try:
        ds = Dataset.load(out)
    except DatasetError:
        return None
    same_method = all(ds.meta.get("method", {}).get(k) == v for k, v in method.items())
    if same_method and _same_geometries(numbers, positions, ds.numbers, ds.positions):
        return ds
    return None


def load_finished(name: str, out, numbers, positions, method: dict = DEFAULT_METHOD, meta: dict | None = None
                  ) -> Dataset | None:
    """The chunks of ``out`` finished so far as a :class:`~mlhk_viz.datasets.Dataset`, or None if there are none.

    Rows are the finished geometries in set order; ``meta["frames"]`` holds their indices in
    ``positions`` ``(n, n_atoms, 3)`` Å. Each chunk is a cache block (:attr:`Dataset.blocks`), so
    the densities of a growing set are expanded once per chunk, and the complete file, whose
    blocks are the same chunks, reads them back instead of expanding everything again.
    """
    import pyscf

    parts = parts_dir(out, numbers, positions, method)
    rows, index = [], []
    for f in chunk_files(parts).values():
        try:
            arrays, info = load_npz(f, kind=CHUNK_FORMAT)
        except DatasetError:
            continue
        s, e = info["bounds"]
        rows.append(arrays)
        index.append(np.arange(s, e))
    if not rows:
        return None
    order = np.argsort([i[0] for i in index])
    rows, index = [rows[k] for k in order], [index[k] for k in order]
    idx = np.concatenate(index)
    cat = lambda k: np.concatenate([r[k] for r in rows])  # noqa: E731
    meta = dict(meta or {}, method=dict(method, pyscf_version=pyscf.__version__), frames=idx.tolist())
    meta.setdefault("density_store", "mo")
    meta.setdefault("box_bohr", 20.0)
    meta.setdefault("basis_per_axis", 50)
    return Dataset(name=name, numbers=np.asarray(numbers), positions=np.asarray(positions, float)[idx],
                   energies=cat("energies"), converged=cat("converged").astype(bool),
                   truncation_error=cat("truncation_error"), meta=meta, mo_coeff=cat("mo_coeff"),
                   mo_occ=cat("mo_occ"), blocks=np.cumsum([len(i) for i in index])[:-1])


def generate(
    name: str,
    out,
    numbers,
    positions,
    method: dict = DEFAULT_METHOD,
    chunk_size: int = 10,
    scheduler: str | None = None,
    n_workers: int = 2,
    ordered: bool = False,
    description: str = "",
    progress: Progress = null_progress,
    log=print,
    limit: int | None = None,
    known=(),
) -> Dataset | None:
    """Compute PBE energies and densities for ``positions`` ``(n, n_atoms, 3)`` Å and write ``out``.

    Resumable (see the module doc). Returns the assembled :class:`~mlhk_viz.datasets.Dataset`.
    Geometries whose SCF does not converge after the retries are kept with ``converged=False``
    and listed in the log; models skip them by default.

    ``limit``: compute only the chunks that start below this many geometries (a prefix of the set;
    the chunks and the parts folder are the same as for the whole set, so a later run with a larger
    limit, or none, continues where this one stopped). Returns None while the set is incomplete;
    :func:`mlhk_viz.reference.md_sets.load_partial` reads the finished prefix.

    ``known``: finished data sets (e.g. the other training pools of the same molecule); a
    geometry found in one of them with the same method is copied instead of computed.
    """
    numbers = np.asarray(numbers, int)
    positions = np.asarray(positions, float)
    n = len(positions)
    done_before = _complete(out, numbers, positions, method)
    if done_before is not None:
        log(f"{name}: {out} is already complete ({n} geometries); nothing to compute")
        progress(n, n, f"PBE {name}")
        return done_before
    parts = parts_dir(out, numbers, positions, method)
    parts.mkdir(parents=True, exist_ok=True)
    _write_geometries(parts, numbers, positions)
    (parts / "manifest.json").write_text(json.dumps(
        {"name": name, "n": n, "chunk_size": chunk_size, "method": method}, indent=1))
    bounds = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    done = {i: c for i, (s, e) in enumerate(bounds) if (c := _read_chunk(chunk_file(parts, i), e - s)) is not None}
    if limit is not None and limit < 1:
        raise ValueError(f"generate: limit must be a positive number of geometries, got {limit}")
    todo = [i for i in range(len(bounds)) if i not in done and (limit is None or bounds[i][0] < limit)]
    log(f"{name}: {n} geometries in {len(bounds)} chunks; {len(done)} already done, {len(todo)} to compute"
        + (f" (up to geometry {limit})" if limit is not None else ""))
    progress(sum(bounds[i][1] - bounds[i][0] for i in done), n, f"PBE {name}")

    lookup = KnownResults(numbers, method, known)
    hits = {i: [lookup.find(p) for p in positions[slice(*bounds[i])]] for i in todo} if len(lookup) else {}
    n_reused = sum(h is not None for rows in hits.values() for h in rows)
    if n_reused:
        log(f"{name}: {n_reused} of the {sum(bounds[i][1] - bounds[i][0] for i in todo)} geometries to do "
            f"are in finished sets already and are copied, not computed")

    def finish(i, computed=None):
        arrays = _chunk_from(hits[i], computed) if i in hits else computed
        save_npz(chunk_file(parts, i), arrays, {"format": CHUNK_FORMAT, "chunk": i, "bounds": bounds[i]})
        done[i] = arrays
        progress(sum(bounds[j][1] - bounds[j][0] for j in done), n, f"PBE {name}")

    for i in [i for i in todo if i in hits and all(h is not None for h in hits[i])]:
        finish(i)  # nothing to compute
    todo = [i for i in todo if i not in done]
    if todo:
        from dask.distributed import Client, LocalCluster, as_completed

        cluster = None if scheduler else LocalCluster(n_workers=n_workers, threads_per_worker=1,
                                                      processes=True, dashboard_address=":0")
        try:
            with Client(scheduler or cluster) as client:
                missing = {i: [s + k for k, h in enumerate(hits.get(i, [None] * (e - s))) if h is None]
                           for i in todo for s, e in [bounds[i]]}
                futures = {client.submit(compute_chunk, numbers, positions[missing[i]], method, pure=False): i
                           for i in todo}
                for fut in as_completed(futures):
                    finish(futures[fut], fut.result())
        finally:
            if cluster is not None:
                cluster.close()

    if len(done) < len(bounds):
        log(f"{name}: {sum(bounds[i][1] - bounds[i][0] for i in done)} of {n} geometries done; "
            f"rerun without --limit to finish ({parts})")
        return None
    cat = lambda k: np.concatenate([done[i][k] for i in range(len(bounds))])  # noqa: E731
    converged = cat("converged").astype(bool)
    computed = ~np.concatenate([done[i].get("reused", np.zeros(bounds[i][1] - bounds[i][0], bool))
                                for i in range(len(bounds))]).astype(bool)
    bad = np.flatnonzero(~converged)
    if len(bad):
        log(f"{name}: WARNING: SCF did not converge for {len(bad)} geometries after retries: {bad.tolist()}")
    import pyscf

    meta = {
        "density_store": "mo", "box_bohr": 20.0, "basis_per_axis": 50, "ordered": ordered,
        "description": description,
        "method": dict(method, pyscf_version=pyscf.__version__),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds_per_geometry": float(np.mean(cat("seconds")[computed])) if computed.any() else 0.0,
        "reused_geometries": int((~computed).sum()),
        # the chunks' row starts: the file's density cache is kept per chunk, as it was while the
        # set grew (load_finished), so finishing a set does not expand every density again
        "blocks": [s for s, _ in bounds[1:]],
    }
    ds = Dataset(name=name, numbers=numbers, positions=positions, energies=cat("energies"), converged=converged,
                 truncation_error=cat("truncation_error"), meta=meta, mo_coeff=cat("mo_coeff"), mo_occ=cat("mo_occ"))
    ds.save(out)
    shutil.rmtree(parts, ignore_errors=True)
    log(f"{name}: wrote {out} ({Path(out).stat().st_size / 1e6:.2f} MB); "
        f"mean {meta['seconds_per_geometry']:.2f} s per geometry per worker")
    return ds
