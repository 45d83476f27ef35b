"""Functions run on the Dask client: ``task(progress, *small_args)`` -> result.

Arguments are small hashable knobs (Dask pickles them); the big arrays are found in the shared
caches. Each task reports its stages through ``progress``, which raises ``engine.Stale`` once a
newer request replaced it, so stale work stops at the next stage boundary.
"""

from __future__ import annotations

import time

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..progress import null_progress
from . import cache, compute, scene


@dataclass
class ViewData:
    """What the 3D view and the slice need, for one molecule and one set of view knobs."""

    source: tuple
    molecule: "compute.Molecule"
    meshes: dict
    view_knobs: tuple
    std_range: tuple
    diff_level: float

    @property
    def key(self):
        return (self.source, self.view_knobs)


def _molecule(progress, source, i):
    if source[0] == "knobs":
        return compute.molecule(source[1], i, progress)
    return loaded_molecule(source[1], source[2], i, progress)


def view(progress, source, i, iso, diff_frac, show, layout, uncertainty):
    """Densities of molecule ``i`` on the fine grid and the iso-surfaces for the view knobs (memoised)."""
    key = ("view", source, i, iso, diff_frac, tuple(show), layout, uncertainty)
    got = cache.GRIDS.get(key)
    if got is not None:
        return got
    mol = _molecule(progress, source, i)
    progress(0, 1, "surfaces")
    if mol.pred is None:  # an ML-KS model file: energies only, so the DFT surface alone
        show, uncertainty = ["DFT"], False
    dmax = float(np.abs(mol.diff).max()) if mol.diff is not None else 0.0
    level = max(diff_frac * dmax, 1e-12)
    std = mol.std if uncertainty else None
    meshes = scene.build_meshes(mol, iso, level, show, layout, std)
    progress(1, 1, "surfaces")
    hi = (float(std.max()) or 1e-12) if std is not None else 1.0
    vd = ViewData(source, mol, meshes, (i, iso, diff_frac, tuple(show), layout, uncertainty), (0.0, hi), level)
    return cache.GRIDS.put(key, vd)


def prefetch(progress, dataset, ms, gamma, spacing):
    compute.prefetch(dataset, ms, gamma, spacing, progress)
    return True


def fit(progress, knobs):
    return compute.fit(knobs, progress)


def curve_point(progress, dataset, m, gamma, spacing, cv_rule="min", energy_features="predicted"):
    return compute.curve_point(dataset, m, gamma, spacing, progress, cv_rule, energy_features)


def save_model(progress, knobs, kind, path):
    from ..models import save_model as lib_save

    model = compute.library_model(knobs, kind, progress)
    progress(0, 1, "writing")
    # ML-HK by reference to the data set (kB instead of 2 x M MB); ML-KS files are small as they are
    out = lib_save(model, path, provenance=compute.provenance(knobs, progress),
                   densities="by-reference" if kind == "ML-HK" else "embedded")
    progress(1, 1, "writing")
    return str(out)


# ------------------------------------------------------------------------------ model files
def _loaded(path, dataset, progress=null_progress):
    """The model in file ``path``; a by-reference file finds its training set beside it or in the folder of
    ``dataset`` (the set on screen), where the app's data sets are."""
    from ..models import load_model

    key = ("loaded", compute.file_key(path))
    return cache.FILE_MODELS.get_or_compute(key, lambda: load_model(path, search=[Path(dataset).parent],
                                                               progress=progress))


def _variance(model, positions):
    """``model.predict_variance``; models from ``load_model`` lack ``density_hyper_``, so fall back to the KRR's own."""
    try:
        return model.predict_variance(positions)
    except AttributeError:
        return model.density_model_.variance(model.descriptor_distances(positions))


def loaded_fit(progress, path, dataset):
    """A :class:`~mlhk_viz.app.compute.FitResult` for a model file on the current data set (library calls)."""
    from ..models import MLHK

    key = ("loaded-fit", compute.file_key(path), compute.file_key(dataset))
    got = cache.MODELS.get(key)
    if got is not None:
        return got
    progress(0, 2, "load model")
    model = _loaded(path, dataset, progress)
    entry = compute.load_entry(dataset, progress)
    ds = entry.ds
    if not np.array_equal(np.asarray(model.numbers_), ds.numbers):
        raise ValueError(f"{Path(path).name} was fitted on atoms {np.asarray(model.numbers_).tolist()}, "
                         f"the data set {ds.name} has {np.asarray(ds.numbers).tolist()}")
    progress(1, 2, "predict")
    n = len(ds)
    nan = np.full(n, np.nan)
    t = entry.test
    p = model.get_params()
    if isinstance(model, MLHK):
        E_hk = model.predict(ds.positions)
        dec = model.error_decomposition(ds.positions[t], ds.energies[t], entry.U[t])
        var = _variance(model, ds.positions)
        hk = compute.Choice(float(np.ravel(model.density_model_.sigma_)[0]), float(np.ravel(model.density_model_.lam_)[0]),
                            float("nan"), (False, False))
        en = compute.Choice(float(model.energy_model_.sigma_[0]), float(model.energy_model_.lam_[0]), float("nan"), (False, False))
        ks = compute.Choice(float("nan"), float("nan"), float("nan"), (False, False))
        E_ks, E_at, l2 = nan, dec["E_ml_at_dft_density"], dec["density_l2"]
        tr = entry.traj
        E_at_traj = model.energy_of(entry.U[tr]) if len(tr) else np.array([])
    else:
        E_ks = model.predict(ds.positions)
        E_hk, var = nan, nan
        E_at, l2 = np.full(len(t), np.nan), np.full(len(t), np.nan)
        E_at_traj = np.full(len(entry.traj), np.nan)
        ks = compute.Choice(float(model.model_.sigma_[0]), float(model.model_.lam_[0]), float("nan"), (False, False))
        hk = en = compute.Choice(float("nan"), float("nan"), float("nan"), (False, False))
    knobs = compute.FitKnobs(dataset, len(model.X_fit_), float(p["gamma"]), float(p["spacing"]),
                             cv_rule=p.get("cv_rule", "min"), energy_features=p.get("energy_features", "predicted"))
    res = compute.FitResult(knobs, ds.name, np.array([], int), t, hk, en, ks, ds.energies.copy(), E_hk, E_ks, E_at, l2,
                            var, entry.x_label, entry.x_values, entry.traj, entry.traj_x, entry.traj_label, E_at_traj)
    progress(2, 2, "predict")
    return cache.MODELS.put(key, res)


def loaded_molecule(path, dataset, i, progress):
    from ase.units import Bohr

    from ..models import MLHK

    key = ("loaded-mol", compute.file_key(path), compute.file_key(dataset), int(i))
    got = cache.GRIDS.get(key)
    if got is not None:
        return got
    model = _loaded(path, dataset, progress)
    entry = compute.load_entry(dataset, progress)
    if not isinstance(model, MLHK):  # ML-KS predicts energies only: the molecule's DFT density, no prediction
        dft = compute.dft_grid(entry, i)
        b = entry.ds.basis
        mol = compute.Molecule(int(i), entry.axes, entry.ds.numbers, entry.ds.positions[i] / Bohr, None, dft, None,
                               float("nan"), float("nan"), float(b.electron_count(entry.U[i])), float("nan"),
                               entry.normal, dataset, entry.pool)
        return cache.GRIDS.put(key, mol)
    pos = entry.ds.positions[i:i + 1]
    c = model.predict_coefficients(pos)[0]
    b = entry.ds.basis
    pred = b.evaluate(c, *entry.axes).astype(np.float32)
    dft = compute.dft_grid(entry, i)
    var = float(_variance(model, pos)[0])
    # the model's own training densities are not in the file: scale by the spread of the data set's pool
    mol = compute.Molecule(int(i), entry.axes, entry.ds.numbers, entry.ds.positions[i] / Bohr, pred, dft, pred - dft,
                           var, float(b.electron_count(c)), float(b.electron_count(entry.U[i])),
                           float(np.linalg.norm(c - entry.U[i])), entry.normal, dataset, entry.pool)
    return cache.GRIDS.put(key, mol)


# ------------------------------------------------------------------------------ ML-HK MD
def run_md(progress, knobs, model_path, start, duration_fs, temperature_K):
    """Langevin MD (:func:`mlhk_viz.dynamics.run_md`) on the library ML-HK model of the knobs (or a file).

    Every frame is emitted to the session (``progress.emit``), which raises when the session
    cancels the job: that is how Stop ends a run. Returns the run's status.
    """
    from ..dynamics import run_md as lib_run_md
    from ..models import MLHK

    if model_path:
        model = _loaded(model_path, knobs.dataset, progress)
        if not isinstance(model, MLHK):
            raise ValueError(f"{Path(model_path).name} is an ML-KS model: MD needs ML-HK (density and energy)")
    else:
        model = cache.MODELS.get_or_compute(("library-mlhk-aligned", knobs),
                                            lambda: compute.library_model(knobs, "ML-HK", progress, align=True))
    entry = compute.load_entry(knobs.dataset, progress)

    def frame(f):
        progress.emit(f)
        time.sleep(0.005)  # hand the GIL to the page's event loop now and then (Stop, other widgets)

    res = lib_run_md(model, entry.ds.numbers, start, duration_fs=duration_fs, temperature_K=temperature_K,
                     every_fs=2.5, on_frame=frame)
    return res["status"]
