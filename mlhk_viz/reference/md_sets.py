"""PBE data sets for MD snapshots: which frames, in which order, and partial sets.

The paper's sizes (2000 training snapshots per pool combination, 200 test) take hours of PBE
per molecule on two cores, so the work spans sessions. Each set is defined once and
deterministically from the committed classical trajectories (``data/md/``):

- ``test``: 200 random frames of the independent 300 K trajectory;
- ``train300``, ``train300+350``, ``train300+400``: 2000 frames chosen by K-means (inverse
  interatomic distances, as for H2/H2O) from the 300 K pool or the union of two pools, then put
  in a seeded random order so that any prefix is itself an evenly spread training set;
- ``trace``: every 5th frame (50 fs) of the 20 ps 300 K trajectory.

Generation writes chunks as for H2/H2O (``reference.generate``); :func:`load_partial` turns the
chunks finished so far into a usable :class:`~mlhk_viz.datasets.Dataset`, so learning curves can
be drawn at the largest M that exists.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np

from ..datasets import Dataset
from ..geometry import kmeans_select
from .generate import load_finished
from .md import load_trajectory
from .pyscf_runner import DEFAULT_METHOD

SETS = ("test", "train300", "train300+350", "train300+400", "trace")
N_TEST, N_TRAIN, TRACE_STRIDE = 200, 2000, 5


def inverse_distances(positions) -> np.ndarray:
    """All inverse interatomic distances ``(n, n_pairs)`` 1/Å."""
    p = np.asarray(positions, float)
    i, j = np.triu_indices(p.shape[1], k=1)
    return 1.0 / np.linalg.norm(p[:, i] - p[:, j], axis=-1)


def symmetric_frames(molecule: str, trajectory: dict) -> np.ndarray:
    """The trajectory's positions with equivalent atoms re-ordered to best match its reference.

    Ethane's methyl groups rotate at 300 K, so by index about half of its snapshots pair each H with
    a reference H 120° away; :func:`~mlhk_viz.geometry.align_symmetric` re-orders those (mean Kabsch
    RMSD 0.28 -> 0.07 Å) and leaves benzene and malonaldehyde untouched. Densities, K-means
    features and training targets then all live in one consistent frame.
    """
    from ase.data import atomic_masses

    from ..geometry import align_symmetric
    from .forcefield import symmetry_permutations

    w = atomic_masses[np.asarray(trajectory["numbers"], int)]
    out, _ = align_symmetric(trajectory["positions"], trajectory["reference"], symmetry_permutations(molecule), w)
    return out


def frames(molecule: str, which: str, md_dir) -> tuple[np.ndarray, np.ndarray, dict]:
    """The geometries of one set in generation order: ``(numbers, positions (n, n_atoms, 3) Å, info)``."""
    md_dir = Path(md_dir)
    if which not in SETS:
        raise ValueError(f"set must be one of {SETS}, got {which!r}")
    rng = np.random.default_rng(zlib.crc32(f"{molecule}/{which}".encode()))
    if which == "test":
        t = load_trajectory(md_dir / f"{molecule}-test-300K.npz")
        idx = np.sort(rng.choice(len(t["positions"]), N_TEST, replace=False))
        return t["numbers"], symmetric_frames(molecule, t)[idx], {"source": "test-300K", "frames": idx.tolist()}
    if which == "trace":
        t = load_trajectory(md_dir / f"{molecule}-trace-300K.npz")
        idx = np.arange(0, len(t["positions"]), TRACE_STRIDE)
        return t["numbers"], symmetric_frames(molecule, t)[idx], {"source": "trace-300K", "frames": idx.tolist(),
                                                   "times_fs": t["times_fs"][idx].tolist()}
    temps = [300] + ([int(which.split("+")[1])] if "+" in which else [])
    trajs = [load_trajectory(md_dir / f"{molecule}-pool-{T}K.npz") for T in temps]
    pos = np.concatenate([symmetric_frames(molecule, t) for t in trajs])
    src = np.concatenate([np.full(len(t["positions"]), T) for t, T in zip(trajs, temps)])
    sel = md_dir / f"{molecule}-{which}-selection.json"
    if sel.is_file():  # K-means with 2000 centres takes minutes: computed once, committed
        pick = np.array(json.loads(sel.read_text())["pool_index"], int)
    else:
        pick = kmeans_select(inverse_distances(pos), min(N_TRAIN, len(pos)), seed=0)
        pick = rng.permutation(pick)  # any prefix is a spread-out subset
        sel.write_text(json.dumps({"molecule": molecule, "set": which, "pools_K": temps,
                                   "pool_index": pick.tolist()}))
    return trajs[0]["numbers"], pos[pick], {"source": f"pools {temps}", "pool_index": pick.tolist(),
                                            "pool_temperature": src[pick].tolist()}


def set_path(molecule: str, which: str, data_dir) -> Path:
    return Path(data_dir) / f"{molecule}-{which}.npz"


def has_pbe_frames(molecule: str, which: str, data_dir) -> bool:
    """Whether any PBE frames of a set exist (its complete file or a finished chunk), without loading them."""
    out = set_path(molecule, which, data_dir)
    return out.is_file() or any(out.parent.glob(f"{out.name}.parts-*/chunk-*.npz"))


def load_partial(molecule: str, which: str, data_dir, md_dir, method: dict = DEFAULT_METHOD) -> Dataset | None:
    """The finished part of a set: its complete file if it exists, else the finished chunks, else None."""
    out = set_path(molecule, which, data_dir)
    if out.is_file():
        return Dataset.load(out)
    numbers, pos, _ = frames(molecule, which, md_dir)
    ds = load_finished(f"{molecule}-{which}", out, numbers, pos, method, meta={"ordered": which == "trace"})
    if ds is not None:
        ds.meta["description"] = f"{molecule} {which}: {len(ds)} of {len(pos)} frames (partial)"
    return ds


def finished_elsewhere(molecule: str, which: str, data_dir, md_dir, method: dict = DEFAULT_METHOD) -> list[Dataset]:
    """The PBE frames the molecule's other training pools hold so far, for reuse by :func:`generate`.

    Every pool combination draws from the same 300 K trajectory, so their K-means selections share
    frames: for the three molecules 700-815 of the 2000 frames of ``train300+350`` and
    ``train300+400`` are also in ``train300``. The test and trace sets come from independent
    trajectories and share none.
    """
    if which not in SETS[1:4]:
        return []
    return [d for s in SETS[1:4] if s != which
            if (d := load_partial(molecule, s, data_dir, md_dir, method)) is not None]


def assemble(molecule: str, data_dir, md_dir, training: str | None = None, m: int | None = None,
             n_test: int | None = None) -> Dataset:
    """One data set of a molecule's PBE frames for the app: a training pool, the test frames, the trace.

    ``training`` is one of ``train300``, ``train300+350``, ``train300+400`` (default: the one with
    the most PBE frames); ``m`` caps its frames and ``n_test`` the test frames (the first ones: the test
    frames are in random order, so a prefix is an unbiased subset, and the app expands fewer densities).
    Rows are the pool, then the test frames, then the trace frames in time order; ``meta["roles"]``
    holds the row indices of each part
    (``pool``, ``test``, ``trajectory``) and ``meta["times_fs"]`` the trace times, so the app uses
    the real test set (never the pool) for its statistics and draws the trace as a trajectory.
    """
    import pyscf

    for name, cap in (("m", m), ("n_test", n_test)):
        if cap is not None and cap < 1:
            raise ValueError(f"assemble {molecule}: {name} must be a positive number of frames, got {cap}")
    parts = {s: load_partial(molecule, s, data_dir, md_dir) for s in ("train300", "train300+350", "train300+400")}
    parts = {s: d for s, d in parts.items() if d is not None}
    if training is None and parts:
        training = max(parts, key=lambda s: int(parts[s].converged.sum()))
    if training not in parts:
        have = ", ".join(f"{s} ({len(d)})" for s, d in parts.items()) or "none"
        raise ValueError(f"assemble {molecule}: no PBE frames for training set {training!r} yet (have: {have})")
    test = load_partial(molecule, "test", data_dir, md_dir)
    if test is None:
        raise ValueError(f"assemble {molecule}: no PBE frames of the test set yet (`mlhk-viz generate pbe {molecule} test`)")
    trace = load_partial(molecule, "trace", data_dir, md_dir)
    pool = parts[training]
    pool_rows = np.arange(len(pool))[:m]
    sets = [(pool, pool_rows), (test, np.arange(len(test))[:n_test])]
    if trace is not None:
        sets.append((trace, np.arange(len(trace))))
    cat = lambda attr: np.concatenate([getattr(d, attr)[r] for d, r in sets])  # noqa: E731
    n_pool, n_test = len(pool_rows), len(sets[1][1])
    roles = {"pool": list(range(n_pool)), "test": list(range(n_pool, n_pool + n_test)),
             "trajectory": list(range(n_pool + n_test, n_pool + n_test + (len(trace) if trace is not None else 0)))}
    times = []
    if trace is not None:
        _, _, info = frames(molecule, "trace", md_dir)
        times = np.asarray(info["times_fs"])[trace.meta["frames"]].tolist()
    meta = {"density_store": "mo", "box_bohr": 20.0, "basis_per_axis": 50, "ordered": False,
            "description": f"{molecule}: {n_pool} training-pool frames ({training}), {n_test} test frames "
                           f"(independent 300 K run), {len(roles['trajectory'])} frames of the 20 ps trace",
            "method": dict(DEFAULT_METHOD, pyscf_version=pyscf.__version__), "roles": roles, "times_fs": times,
            "training": training, "molecule": molecule}
    return Dataset(name=f"{molecule}-md", numbers=np.asarray(pool.numbers), positions=cat("positions"),
                   energies=cat("energies"), converged=cat("converged").astype(bool),
                   truncation_error=cat("truncation_error"), meta=meta, mo_coeff=cat("mo_coeff"), mo_occ=cat("mo_occ"))
