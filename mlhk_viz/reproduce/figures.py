"""The paper's Fig. 2 and Fig. 3: ML-HK energies along trajectories against PBE.

* ``fig2``: ML-HK (and ML-KS) energies along the 20 ps classical 300 K trajectories of benzene and
  ethane (the ``trace`` MD sets, every 50 fs) against their PBE energies.
* ``fig3a``: along the PBE ab-initio MD trajectory of malonaldehyde with a proton transfer
  (:mod:`mlhk_viz.reference.aimd`).
* ``fig3b``: a 1 ps, 300 K Langevin run (0.5 fs step, friction 0.01 fs⁻¹) driven by ML-HK forces for
  malonaldehyde, with PBE single points on its snapshots (resumable, like every PBE job).

Each writes ``<fig>.csv`` (one row per frame; energies in kcal/mol relative to the mean PBE energy of
the frames that have one, and in Hartree) and ``<fig>.png``; models are trained on the largest
training set with PBE data (``--m`` caps it), hyperparameters by LOO CV as for Table 2.
"""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import numpy as np

from ..datasets import Dataset
from ..evaluation import KCAL_PER_HARTREE
from ..models import MLHK, MLKS
from ..progress import Progress, null_progress
from .table2 import MOLECULES, TRAININGS, check_training_cap

#: which training set a figure uses when several exist with as many frames (the paper's choice first)
PREFERENCE = {"benzene": ("300", "300+350", "300+400"), "ethane": ("300", "300+350", "300+400"),
              "malonaldehyde": ("300+350", "300", "300+400")}
#: ML-HK options that choose how the model is made rather than fix a hyperparameter's value
PROTOCOL_CHOICES = ("cv_rule", "energy_features")


def training_set(molecule: str, data_dir, md_dir, m: int | None = None):
    """``(training label, Dataset, indices)``: the training set with the most PBE frames (first ``m``)."""
    from ..reference.md_sets import load_partial

    check_training_cap(m, molecule)
    # only the training sets: the test set is not needed here
    trains = {t: d for t, s in TRAININGS.items() if (d := load_partial(molecule, s, data_dir, md_dir)) is not None}
    if not trains:
        raise ValueError(f"{molecule}: no training frames with PBE data yet; run `mlhk-viz generate pbe {molecule} "
                         f"{TRAININGS[PREFERENCE[molecule][0]]} --limit 100`")
    label = max(PREFERENCE[molecule], key=lambda t: (int(trains[t].converged.sum()) if t in trains else -1,
                                                     -PREFERENCE[molecule].index(t)))
    ds = trains[label]
    idx = np.flatnonzero(ds.converged)[:m]
    return label, ds, idx


def fit_models(molecule, data_dir, md_dir, m=None, kinds=("mlhk", "mlks"), relabel: bool = True,
               params: dict | None = None, extra=None, progress: Progress = null_progress):
    """ML-HK (and ML-KS) fitted on :func:`training_set`, aligning new geometries onto the MD reference.

    ``relabel``: new geometries are also relabelled like the training frames were (methyl turns, ring
    rotations; malonaldehyde's tautomer swap), :func:`~mlhk_viz.reference.forcefield.equivalent_orderings`.
    ``params``: fixed ML-HK hyperparameters (e.g. ``{"lam": 1e-8, "energy_lam": 1e-4}``); the rest by LOO CV.
    ``extra``: a :class:`~mlhk_viz.datasets.Dataset`, or a sequence of them, of more PBE frames of the same
    molecule (same atom order and method), whose converged frames are appended in order to the first ``m``
    pool frames, e.g. PBE single points on ML-HK trajectories (``fig3b-pbe.npz`` of one or more rounds).
    Beyond the paper's protocol; ``out["extra"]`` counts them.
    """
    from ..reference.forcefield import equivalent_orderings
    from ..reference.md import load_trajectory

    label, ds, idx = training_set(molecule, data_dir, md_dir, m)
    extras = [] if extra is None else [extra] if isinstance(extra, Dataset) else list(extra)
    method = lambda d: {k: v for k, v in d.meta.get("method", {}).items() if k != "pyscf_version"}  # noqa: E731
    for e in extras:
        if not np.array_equal(np.asarray(e.numbers), np.asarray(ds.numbers)):
            raise ValueError(f"extra frames {e.name!r}: atoms {np.asarray(e.numbers).tolist()} are not {molecule}'s "
                             f"{np.asarray(ds.numbers).tolist()} in the training set's order")
        if method(e) != method(ds):
            raise ValueError(f"extra frames {e.name!r}: method {method(e)} differs from the training "
                             f"set's {method(ds)}; their energies are not on one scale")
    keep = [np.flatnonzero(e.converged) for e in extras]
    pos = np.concatenate([ds.positions[idx]] + [e.positions[k] for e, k in zip(extras, keep)])
    energies = np.concatenate([ds.energies[idx]] + [e.energies[k] for e, k in zip(extras, keep)])

    def coefficients():  # only ML-HK needs the densities
        return np.concatenate([ds.coefficients(progress, rows=idx)]
                              + [e.coefficients(progress, rows=k) for e, k in zip(extras, keep)])

    ref = load_trajectory(Path(md_dir) / f"{molecule}-test-300K.npz")["reference"]
    perms = equivalent_orderings(molecule) if relabel else None
    out = {"training": label, "M": int(len(idx)), "extra": int(sum(len(k) for k in keep))}
    if "mlhk" in kinds:
        out["mlhk"] = MLHK(reference=ref, permutations=perms, **(params or {})).fit(
            pos, energies, coefficients(), numbers=ds.numbers, progress=progress)
    if "mlks" in kinds:
        out["mlks"] = MLKS(reference=ref, permutations=perms).fit(pos, energies, numbers=ds.numbers)
    return out


def _write(out: Path, name: str, times_fs, series: dict, title: str, meta: dict, log, lower: dict | None = None) -> dict:
    """CSV + PNG of energy traces; ``series`` name -> (n,) Hartree with NaN where not computed.

    ``lower``: optional curves (label -> (n,) values, with ``"_ylabel"``) drawn in a panel below the energies.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pbe = series["pbe"]
    shift = float(np.nanmean(pbe)) if np.any(np.isfinite(pbe)) else float(np.nanmean(series["mlhk"]))
    rel = {k: (v - shift) * KCAL_PER_HARTREE for k, v in series.items()}
    path = out / f"{name}.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_fs"] + [f"E_{k}_kcal_per_mol" for k in series] + [f"E_{k}_hartree" for k in series])
        for i, t in enumerate(times_fs):
            w.writerow([f"{t:g}"] + [("" if not np.isfinite(rel[k][i]) else f"{rel[k][i]:.6f}") for k in series]
                       + [("" if not np.isfinite(series[k][i]) else f"{series[k][i]:.10f}") for k in series])
    stats = {}
    both = np.isfinite(pbe) & np.isfinite(series["mlhk"])
    for k in series:
        if k != "pbe":
            ok = np.isfinite(pbe) & np.isfinite(series[k])
            if ok.any():
                err = np.abs(series[k][ok] - pbe[ok]) * KCAL_PER_HARTREE
                stats[k] = {"mae": float(err.mean()), "max": float(err.max()), "n": int(ok.sum())}
    if lower:
        fig, (ax, ax2) = plt.subplots(2, 1, figsize=(7, 4.6), dpi=110, sharex=True, height_ratios=(2.2, 1))
        for label, v in lower.items():
            if not label.startswith("_"):
                ax2.plot(np.asarray(times_fs) / 1000.0, v, lw=1.0, marker="o", ms=2.5, label=label)
        ax2.set_ylabel(lower.get("_ylabel", ""))
        ax2.set_xlabel("time (ps)")
        ax2.legend(fontsize=8, frameon=False)
    else:
        fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    style = {"pbe": dict(color="tab:blue", label="PBE"), "mlhk": dict(color="tab:red", label="ML-HK"),
             "mlks": dict(color="0.5", lw=0.8, ls="--", label="ML-KS")}
    t_ps = np.asarray(times_fs) / 1000.0
    for k, v in rel.items():
        ok = np.isfinite(v)
        sparse = ok.sum() < 0.5 * len(v)
        kw = dict(dict(lw=1.0, marker=None, ms=3), **style[k])
        if sparse:  # single points (PBE on a few snapshots): markers, no line
            kw.update(marker="o", lw=0)
        ax.plot(t_ps[ok], v[ok], **kw)
    if not lower:
        ax.set_xlabel("time (ps)")
    ax.set_ylabel("E − ⟨E_PBE⟩ (kcal/mol)")
    s = stats.get("mlhk")
    ax.set_title(title + (f"\nML-HK vs PBE: MAE {s['mae']:.2f}, max {s['max']:.2f} kcal/mol ({s['n']} frames)"
                          if s else ""), fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png")
    plt.close(fig)
    info = dict(meta, stats=stats, frames=int(len(times_fs)), frames_with_pbe=int(np.isfinite(pbe).sum()),
                both=int(both.sum()))
    (out / f"{name}.json").write_text(json.dumps(info, indent=1))
    log(f"wrote {path}, {out / f'{name}.png'}: " + ", ".join(f"{k} MAE {v['mae']:.3g} max {v['max']:.3g} kcal/mol"
                                                            for k, v in stats.items()))
    return info


def fig2(out, data_dir, md_dir, m=None, molecules=("benzene", "ethane"), progress: Progress = null_progress,
         log=print) -> dict:
    """Energies along the 20 ps classical trajectories (PBE frames that exist), ML-HK and ML-KS.

    Writes ``fig2-<molecule>.csv|png|json`` per molecule of ``molecules`` (the paper's are benzene and
    ethane) that has PBE frames of its ``trace`` set; a molecule without them is skipped with a message.
    Returns ``{molecule: statistics}`` as written to the JSON.
    """
    from ..reference.md_sets import frames, load_partial

    unknown = [m for m in molecules if m not in MOLECULES]
    if unknown or not molecules:
        raise ValueError(f"fig2: molecules must be among {', '.join(MOLECULES)}; got {', '.join(molecules) or 'none'}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = {}
    for mol in molecules:
        trace = load_partial(mol, "trace", data_dir, md_dir)
        if trace is None:
            log(f"fig2 {mol}: no PBE frames of the trace yet (`mlhk-viz generate pbe {mol} trace`); skipped")
            continue
        models = fit_models(mol, data_dir, md_dir, m, progress=progress)
        _, _, info = frames(mol, "trace", md_dir)
        times = np.asarray(info["times_fs"])[trace.meta["frames"]]
        ok = trace.converged
        series = {"pbe": np.where(ok, trace.energies, np.nan), "mlhk": models["mlhk"].predict(trace.positions),
                  "mlks": models["mlks"].predict(trace.positions)}
        res[mol] = _write(out, f"fig2-{mol}", times, series,
                          f"Fig. 2: {mol}, 300 K classical MD (ML-HK trained on {models['training']} K, M = {models['M']})",
                          {"molecule": mol, "training": models["training"], "M": models["M"]}, log)
    return res


def key_differences(saved: dict, key: dict, only=None) -> list[str]:
    """The entries (of ``only``, default all) where a saved run's ``key`` and a new run's differ.

    Floats count as equal to 1e-9 relative: a σ chosen by CV is a factor times a median distance,
    and a refit with another numpy or BLAS build reproduces it to the last few bits only.
    """
    def same(a, b):
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        if isinstance(a, float) or isinstance(b, float):
            try:
                return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
            except (TypeError, ValueError):
                return False
        return a == b

    names = sorted(set(saved) | set(key)) if only is None else sorted(only)
    return [k for k in names if (k in saved) != (k in key) or (k in saved and not same(saved[k], key[k]))]


def _refuse_other_run(traj_path: Path, diff: list[str]) -> None:
    if diff:
        raise ValueError(f"fig3b: {traj_path.parent} holds a run of another model or protocol (it differs in "
                         f"{', '.join(diff)}); its trajectory and PBE single points are kept. Give another --out "
                         f"folder, or --overwrite to replace them")


def fig3b(out, data_dir, md_dir, m=None, duration_fs: float = 1000.0, every_fs: float = 5.0,
          pbe_every_fs: float = 50.0, forces: str = "fd", seed: int = 0, n_workers: int = 2,
          molecule: str = "malonaldehyde", params: dict | None = None, extra=None, overwrite: bool = False,
          progress: Progress = null_progress, log=print) -> dict:
    """ML-HK-driven Langevin MD of ``molecule`` (the paper: malonaldehyde) and PBE single points on its snapshots.

    ``params``: fixed ML-HK hyperparameters (see :func:`fit_models`). LOO CV picks the ridge λ that
    interpolates best between training frames; MD also goes between and a little beyond them, where a
    smaller λ leaves deeper spurious wells (docs/reproduce-log.md, session 7), so a larger fixed λ can be
    the difference between a run that breaks and one that lasts.

    ``forces="fd"`` is the paper's central finite differences (ε = 0.001 Å); ``"analytic"`` gives
    the same forces to 1e-6 relative at one evaluation per step. The trajectory is saved as
    ``fig3b-trajectory.npz`` and reused when it exists for the same model (so a rerun only finishes
    the PBE single points). A folder holding a run of another model or protocol is refused, before
    anything is fitted where the options already differ, unless ``overwrite`` (then that run's
    trajectory and single points are replaced).

    ``extra``: path of a data set of more PBE frames to train on beside the pool (:func:`fit_models`),
    or a sequence of paths, e.g. the ``fig3b-pbe.npz`` of earlier runs with other seeds: rounds of active
    learning, beyond the paper's protocol.
    """
    from ..datasets import file_sha256, load_npz, save_npz
    from ..dynamics import run_md
    from ..reference.generate import generate
    from ..reference.md import load_trajectory

    out = Path(out)
    extras = [] if extra is None else [Path(extra)] if isinstance(extra, (str, Path)) else [Path(e) for e in extra]
    for e in extras:
        if e.resolve() == (out / "fig3b-pbe.npz").resolve():
            raise ValueError(f"fig3b: the extra frames {e} are where this run writes its own single points; "
                             f"give the new run another --out folder so they are kept")
    traj_path = out / "fig3b-trajectory.npz"
    saved_arrays, saved_meta = load_npz(traj_path, kind="mlhk-viz-mlhk-md") if traj_path.is_file() else (None, None)
    saved = None if saved_meta is None else saved_meta.get("key", {})
    sha = [file_sha256(e) for e in extras]
    feats = (params or {}).get("energy_features", "predicted")
    plan = {"molecule": molecule, "duration_fs": duration_fs, "every_fs": every_fs, "seed": seed, "forces": forces,
            "fixed": sorted(k for k in (params or {}) if k not in PROTOCOL_CHOICES),
            "cv_rule": (params or {}).get("cv_rule", "min"),
            # recorded only when not the paper's, so runs saved before the option existed still match
            **({"energy_features": feats} if feats != "predicted" else {}),
            **({"extra_sha256": sha[0] if len(sha) == 1 else sha} if sha else {})}
    if saved is not None and not overwrite:  # refuse early what the options alone tell apart
        _refuse_other_run(traj_path, key_differences(saved, plan, only=set(plan) | {"extra_sha256", "energy_features"}))
    mol = molecule
    models = fit_models(mol, data_dir, md_dir, m, kinds=("mlhk",), params=params,
                        extra=[Dataset.load(e) for e in extras], progress=progress)
    model = models["mlhk"]
    out.mkdir(parents=True, exist_ok=True)  # after the checks of the extra frames: bad input leaves no folder
    start = load_trajectory(Path(md_dir) / f"{mol}-test-300K.npz")
    numbers = start["numbers"]
    key = {"molecule": mol, "training": models["training"], "M": models["M"], "duration_fs": duration_fs,
           "every_fs": every_fs,
           "seed": seed, "forces": forces, "orderings": 1 if model.permutations_ is None else len(model.permutations_),
           "sigma": float(np.atleast_1d(model.density_model_.sigma_)[0]),
           "lam": float(np.atleast_1d(model.density_model_.lam_)[0]),
           "energy_sigma": float(model.energy_hyper_.sigma), "energy_lam": float(model.energy_hyper_.lam),
           "fixed": plan["fixed"], "cv_rule": plan["cv_rule"],
           **{k: plan[k] for k in ("energy_features",) if k in plan}}
    if extras:  # the trajectory depends on the extra frames' content, not on where the files lie
        key.update(extra_frames=models["extra"], extra_sha256=plan["extra_sha256"])
    traj = None
    if saved is not None:
        diff = key_differences(saved, key)
        if not diff:
            traj = saved_arrays
            log(f"fig3b: reusing {traj_path}")
        elif not overwrite:
            _refuse_other_run(traj_path, diff)
        else:
            log(f"fig3b: replacing the run in {out} (it differs in {', '.join(diff)})")
    if traj is None:
        t0 = time.perf_counter()
        log(f"fig3b: {duration_fs:g} fs of Langevin MD on ML-HK ({forces} forces, M = {models['M']})")
        r = run_md(model, numbers, start["reference"], duration_fs=duration_fs, every_fs=every_fs, seed=seed,
                   forces=forces, on_frame=lambda f: progress(int(f["time_fs"]), int(duration_fs), "ML-HK MD"))
        traj = {k: r[k] for k in ("times_fs", "positions", "energies_hartree", "kinetic_eV", "temperature_K")}
        save_npz(traj_path, traj, {"format": "mlhk-viz-mlhk-md", "version": 1, "key": key, "status": r["status"],
                                   "numbers": numbers.tolist(), "seconds": time.perf_counter() - t0})
        log(f"fig3b: {r['status']} after {r['steps']} steps in {time.perf_counter() - t0:.0f} s")
    _, meta = load_npz(traj_path, kind="mlhk-viz-mlhk-md")
    times = traj["times_fs"]
    pick = np.flatnonzero(np.isclose(np.mod(times + 1e-9, pbe_every_fs), 0, atol=1e-6))
    # in the model's frame, so the PBE densities can train a model too (``extra``); energies do not depend on it
    ds = generate(f"{mol}-mlhk-md", out / "fig3b-pbe.npz", numbers, model.aligned_positions(traj["positions"][pick]),
                  chunk_size=4,
                  n_workers=n_workers, progress=progress, log=log,
                  description="PBE single points on snapshots of the ML-HK-driven MD (Fig. 3b)")
    pbe = np.full(len(times), np.nan)
    pbe[pick] = np.where(ds.converged, ds.energies, np.nan)
    return _write(out, "fig3b", times, {"pbe": pbe, "mlhk": traj["energies_hartree"]},
                  f"Fig. 3b: {mol}, 300 K Langevin MD on ML-HK forces ({meta['status']}, M = {models['M']}"
                  + (f" + {models['extra']} frames)\nthe extra frames: PBE single points on earlier ML-HK runs "
                     f"(active learning)" if extras else ")"),
                  dict(key, status=meta["status"]), log)


def fig3a(out, data_dir, md_dir, m=None, progress: Progress = null_progress, log=print) -> dict:
    """ML-HK along the PBE ab-initio MD of malonaldehyde (``data/malonaldehyde-aimd.npz``).

    The AIMD moves the proton to O4, a tautomer the classical training MD never visits; the models
    relabel each frame into the training tautomer when that matches the reference better
    (:func:`fit_models`, :func:`~mlhk_viz.reference.forcefield.equivalent_orderings`). The JSON also
    reports the errors of the same models with atoms matched by index only, and which frames were relabelled.
    """
    from ase.data import atomic_masses

    from ..geometry import best_orderings

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(data_dir) / "malonaldehyde-aimd.npz"
    if not path.is_file():
        raise ValueError(f"fig3a needs {path}: run `python -m mlhk_viz.reference.aimd` first (PBE AIMD, resumable)")
    ds = Dataset.load(path)
    models = fit_models("malonaldehyde", data_dir, md_dir, m, kinds=("mlhk", "mlks"), progress=progress)
    hk = models["mlhk"]
    chosen = best_orderings(ds.positions, hk.reference_, hk.permutations_, atomic_masses[ds.numbers], stable=True)
    times = np.asarray(ds.meta["times_fs"])
    pbe = np.where(ds.converged, ds.energies, np.nan)
    series = {"pbe": pbe, "mlhk": hk.predict(ds.positions), "mlks": models["mlks"].predict(ds.positions)}
    by_index = {}
    for k in ("mlhk", "mlks"):
        model, perms = models[k], models[k].permutations_
        model.permutations_ = None  # the same fitted model, atoms matched by index only
        try:
            err = np.abs(model.predict(ds.positions) - pbe)[np.isfinite(pbe)] * KCAL_PER_HARTREE
        finally:
            model.permutations_ = perms
        by_index[k] = {"mae": float(err.mean()), "max": float(err.max())}
    relabelled = np.flatnonzero(chosen != 0)
    log(f"fig3a: {len(relabelled)} of {len(ds)} AIMD frames relabelled into the training tautomer; atoms matched "
        f"by index only: ML-HK MAE {by_index['mlhk']['mae']:.3g}, ML-KS {by_index['mlks']['mae']:.3g} kcal/mol")
    return _write(out, "fig3a", times, series,
                  f"Fig. 3a: malonaldehyde PBE AIMD with proton transfer (ML-HK M = {models['M']})",
                  {"training": models["training"], "M": models["M"], "relabelled_frames": relabelled.tolist(),
                   "errors_atoms_by_index": by_index}, log,
                  lower=({"O0–H5": ds.meta["o0_h5"], "H5–O4": ds.meta["h5_o4"], "_ylabel": "distance (Å)"}
                         if "o0_h5" in ds.meta else None))
