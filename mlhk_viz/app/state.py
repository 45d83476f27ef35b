"""The app's state: knobs and results as ``param`` parameters, and background work.

A knob change submits work to the shared Dask client (:mod:`mlhk_viz.app.engine`): "fit" (both
models and every number the error plots show), "view" (the chosen molecule's densities and
iso-surfaces), "curve" (learning curve, one training size at a time, low priority) and one
"save-N" per click of Save. A newer request of the same kind replaces the older one (cancelled if
not started, stopped at its next stage if running; saves excepted: each writes its own file), and a
result is applied only if it matches the knobs at that moment. No browser is needed:
``AppState(...).wait()`` blocks until the work is applied, which is how the tests and the benchmark
drive it.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import param

from . import compute, engine, tasks

HK, KS = "ML-HK", "ML-KS"
SHOW = ["predicted", "DFT", "difference"]
FIT_KNOBS = ["dataset", "m", "gamma", "spacing", "sigma_auto", "log_sigma", "lam_auto", "log_lam", "cv_rule",
             "energy_features"]
#: the CV rules, as shown -> as the library names them (krr.cv_grid)
CV_RULES = {"lowest error": "min", "one standard error": "1se"}
#: what the energy functional trains on, as shown -> as the library names it (MLHK(energy_features=...))
ENERGY_FEATURES = {"predicted": "predicted", "leave-one-out": "loo", "DFT": "dft"}
VIEW_KNOBS = ["molecule", "iso", "diff_frac", "show", "layout3d", "uncertainty"]


def _r(x, nd=4):
    return float(round(float(x), nd))


#: jobs that run alongside the page without marking it busy (their own views show their state)
BACKGROUND = frozenset({"curve", "md"})
#: seconds of a busy spell before progress is shown, and between two progress messages
PROGRESS_DELAY = 0.25



def _reserve(folder: Path, stem: str) -> Path:
    """A new file ``folder/stem.npz`` (or ``stem-2.npz``, ...), created empty so that no other save takes it.

    Two sessions saving the same data set, kind and M in the same second got the same name, and the later
    file replaced the earlier one.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for n in itertools.count(1):
        p = folder / (f"{stem}.npz" if n == 1 else f"{stem}-{n}.npz")
        try:
            os.close(os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return p
        except FileExistsError:
            continue

class AppState(param.Parameterized):
    """Knobs (what a person sets) and results (what the views draw) of one session."""

    # -- knobs -----------------------------------------------------------------------------
    dataset = param.Selector(default=None, objects=[], doc="Data set: a .npz file of the data folder")
    model_file = param.Selector(default="", objects=[""], doc="A saved model to open ('' = train from the knobs)")
    kind = param.Selector(default=HK, objects=[HK, KS], doc="Which model the sigma/lambda knobs set and 'save' writes")
    gamma = param.Number(default=0.2, bounds=(0.05, 0.5), step=0.01, doc="Gaussian potential width gamma, Å")
    spacing = param.Number(default=0.08, bounds=(0.04, 0.2), step=0.01, doc="Potential grid spacing Delta, Å")
    sigma_auto = param.Boolean(default=True, doc="Choose sigma by leave-one-out CV on the training set")
    log_sigma = param.Number(default=0.0, bounds=(-1.5, 1.5), step=0.05, doc="log10(sigma / median training distance)")
    lam_auto = param.Boolean(default=True, doc="Choose lambda by leave-one-out CV on the training set")
    log_lam = param.Number(default=-8.0, bounds=(-14.0, -1.0), step=0.25, doc="log10(lambda)")
    cv_rule = param.Selector(default="min", objects=list(CV_RULES.values()),
                             doc="How CV picks (sigma, lambda) for every model: 'min' the lowest LOO error (the "
                                 "paper's), '1se' the smoothest pair within one standard error of it")
    energy_features = param.Selector(
        default="predicted", objects=list(ENERGY_FEATURES.values()),
        doc="The densities ML-HK's energy functional is trained on: 'predicted' the density model's own predictions "
            "for the training molecules (the paper's), 'loo' its leave-one-out predictions, 'dft' the DFT densities")
    m = param.Integer(default=10, bounds=(2, compute.MAX_M), doc="Training size M (K-means in geometry space)")
    molecule = param.Integer(default=0, bounds=(0, None), doc="Molecule shown in 3D (index in the data set)")
    iso = param.Number(default=0.05, bounds=(0.002, 0.3), step=0.002, doc="Iso level of the densities, e/bohr³")
    diff_frac = param.Number(default=0.3, bounds=(0.02, 0.95), step=0.01, doc="Difference lobes at ± this fraction of max |Δn|")
    show = param.ListSelector(default=list(SHOW), objects=list(SHOW))
    layout3d = param.Selector(default="side by side", objects=["side by side", "overlay"])
    uncertainty = param.Boolean(default=False, doc="Colour the predicted surface by the predictive standard deviation")
    slice_pos = param.Number(default=0.0, doc="Slice position along the plane normal, bohr")
    slice_field = param.Selector(default="predicted", objects=["predicted", "DFT", "difference", "uncertainty"])

    md_duration_fs = param.Integer(default=200, bounds=(10, 5000), doc="Length of an ML-HK MD run, fs")
    md_temperature_K = param.Integer(default=300, bounds=(1, 2000), doc="Temperature of an ML-HK MD run, K")

    # -- results ---------------------------------------------------------------------------
    result = param.Parameter(default=None, doc="compute.FitResult of the current knobs")
    view_data = param.Parameter(default=None, doc="tasks.ViewData of the current molecule and view knobs")
    curve = param.List(default=[], doc="learning-curve points (dicts), growing as they arrive")
    status = param.String(default="")
    notice = param.String(default="", doc="a note on the user's last input (e.g. a clamped value); kept until "
                                          "the next knob change, shown before the status")
    stage = param.String(default="")
    progress = param.Integer(default=0, bounds=(0, 100))
    md_frames = param.List(default=[], doc="(time fs, E_ML Hartree) of the current or last ML-HK MD run")
    md_status = param.String(default="", doc="state of the ML-HK MD run")
    md_runs = param.Integer(default=0, doc="ML-HK MD runs started in this session (the page numbers them)")
    busy = param.Boolean(default=False)
    error = param.String(default="")
    saved_path = param.String(default="")
    loaded_path = param.String(default="")

    def __init__(self, data_dir=None, model_dir=None, dispatch=None, dataset=None, curve=True, after_picture=None,
                 **params):
        self.data_dir = Path(data_dir) if data_dir else compute.default_data_dir()
        self.model_dir = Path(model_dir) if model_dir else compute.default_model_dir()
        self.session = uuid.uuid4().hex[:12]
        self._lock = threading.RLock()
        self._dispatch = dispatch or self._direct
        #: ``after_picture(fn)``: run ``fn`` once the browser has drawn the new picture (the page sets
        #: the 3D scene's ``when_drawn``); None: at once. The statistics wait for it: with software
        #: WebGL the browser needs 1-2 s of CPU for a new vtk.js scene, and the fit's CV on the same
        #: two cores slowed that picture by up to 0.6 s (docs/app.md, benchmark).
        self.after_picture = after_picture
        self._quiet = False
        self._busy_since = self._last_progress = 0.0
        self._m_step = 0  # the M slider's last step, signed (the prefetch repeats it first)
        self._pending: set = set()
        self._want_curve = curve
        self._hyper = {k: dict(sigma_auto=True, log_sigma=0.0, lam_auto=True, log_lam=-8.0) for k in (HK, KS)}
        self.jobs = {n: engine.Job(self.session, n, self._dispatch) for n in ("fit", "view", "curve", "prefetch", "md")}
        self._saves = 0
        self.timings: dict = {}
        super().__init__(**params)
        self.param.watch(self._m_moved, "m")
        self.refresh_lists()
        objs = self.param.dataset.objects
        if dataset is not None:
            dataset = str(Path(dataset).resolve())
            if dataset not in objs:
                self.param.dataset.objects = list(objs) + [dataset]
                self._labels[dataset] = Path(dataset).name
        elif objs:
            dataset = next((p for p in objs if Path(p).name == "h2.npz"), objs[0])
        engine.listen(self.session, self._on_progress)
        if dataset is not None:
            with self._quietly():
                self.dataset = dataset
            self._dataset_changed(start=False)
            if not self._from_cache():
                self.request_fit()

    def _from_cache(self) -> bool:
        """A new session on knobs another session computed: take the results straight from the caches."""
        from . import cache

        src, vk = self.source(), self.view_knobs()
        k = src[1]
        res = next((v for key, v in cache.MODELS.items_like(("fit", k))), None)
        vd = cache.GRIDS.get(("view", src, *vk))
        if res is None or vd is None:
            return False
        self.result, self.view_data = res, vd
        self._show_cv_choice()
        self.status = "from the shared cache"
        return True

    # -- plumbing ----------------------------------------------------------------------------
    def _direct(self, fn):
        with self._lock:
            fn()

    class _Quiet:
        def __init__(self, st):
            self.st = st

        def __enter__(self):
            self.prev, self.st._quiet = self.st._quiet, True

        def __exit__(self, *a):
            self.st._quiet = self.prev

    def _quietly(self):
        return AppState._Quiet(self)

    def close(self) -> None:
        """Forget this session: its running tasks go stale and stop."""
        engine.forget(self.session)  # running and queued tasks see they are stale and stop
        engine.listen(self.session, None)
        engine.sink(self.session, "md", None)

    def wait(self, timeout: float = 300.0, jobs=("fit", "view")) -> bool:
        """Block until the named jobs have been applied (or failed); True if they were ("save": every save)."""
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            with self._lock:
                if not any(p in jobs or p.split("-")[0] in jobs for p in self._pending):
                    return True
            time.sleep(0.005)
        return False

    def _start(self, name):
        with self._lock:
            if not (self._pending - BACKGROUND):
                self._busy_since = time.perf_counter()
            self._pending.add(name)
            self.busy = bool(self._pending - BACKGROUND)

    def _finish(self, name):
        with self._lock:
            self._pending.discard(name)
            self.busy = bool(self._pending - BACKGROUND)
            if not self.busy:
                self.stage, self.progress = "", 100

    def _on_progress(self, job, done, total, stage):
        if job in BACKGROUND:
            return
        # Progress is for work a person waits on: nothing for the first PROGRESS_DELAY s of a busy
        # spell, then at most one message per PROGRESS_DELAY (each is a page update in every browser).
        now = time.perf_counter()
        if now - self._busy_since < PROGRESS_DELAY or now - self._last_progress < PROGRESS_DELAY:
            return
        self._last_progress = now
        pct = int(100 * done / max(total, 1))
        def upd():
            if job in self._pending:
                self.param.update(stage=f"{job}: {stage} ({done}/{total})", progress=min(pct, 100))
        self._dispatch(upd)

    def _on_error(self, name):
        def handler(exc):
            self._finish(name)
            self.error = f"{name}: {type(exc).__name__}: {exc}"
            self.status = self.error
        return handler

    # -- lists ---------------------------------------------------------------------------------
    def refresh_lists(self) -> None:
        """Rescan the data folder and the model folder."""
        sets = compute.scan_datasets(self.data_dir)
        self._labels = {v: k for k, v in sets.items()}
        objs = list(sets.values())
        if self.dataset is not None and self.dataset not in objs:
            objs.append(self.dataset)
            self._labels.setdefault(self.dataset, Path(self.dataset).name)
        self.param.dataset.objects = objs
        models = compute.scan_models(self.model_dir, self.data_dir)
        self._model_labels = {"": "(none: train with the knobs)", **{v: k for k, v in models.items()}}
        mobjs = [""] + list(models.values())
        if self.model_file and self.model_file not in mobjs:
            mobjs.append(self.model_file)
        self.param.model_file.objects = mobjs

    def dataset_label(self, path) -> str:
        return self._labels.get(path, Path(path).name if path else "")

    def model_label(self, path) -> str:
        return self._model_labels.get(path, Path(path).name if path else "")

    # -- knobs -> requests -----------------------------------------------------------------------
    def hyper(self, kind) -> dict:
        if kind == self.kind:
            return dict(sigma_auto=self.sigma_auto, log_sigma=self.log_sigma, lam_auto=self.lam_auto, log_lam=self.log_lam)
        return dict(self._hyper[kind])

    def fit_knobs(self) -> compute.FitKnobs:
        hk, ks = self.hyper(HK), self.hyper(KS)
        s = lambda h: None if h["sigma_auto"] else 10 ** _r(h["log_sigma"])  # noqa: E731
        lm = lambda h: None if h["lam_auto"] else 10 ** _r(h["log_lam"])  # noqa: E731
        return compute.FitKnobs(self.dataset, int(self.m), _r(self.gamma), _r(self.spacing), s(hk), lm(hk), s(ks), lm(ks),
                                cv_rule=self.cv_rule, energy_features=self.energy_features)

    def source(self) -> tuple:
        if self.loaded_path:
            return ("file", self.loaded_path, self.dataset)
        return ("knobs", self.fit_knobs())

    def view_knobs(self) -> tuple:
        return (int(self.molecule), _r(self.iso, 5), _r(self.diff_frac, 3), tuple(s for s in SHOW if s in self.show),
                self.layout3d, bool(self.uncertainty))

    @param.depends("kind", watch=True)
    def _kind_changed(self):
        other = KS if self.kind == HK else HK
        # the knobs on screen belonged to the other kind until now
        self._hyper[other] = dict(sigma_auto=self._shown["sigma_auto"], log_sigma=self._shown["log_sigma"],
                                  lam_auto=self._shown["lam_auto"], log_lam=self._shown["log_lam"])
        with self._quietly():
            self.param.update(**self._hyper[self.kind])
        self._remember_shown()
        self._show_cv_choice()

    def _remember_shown(self):
        self._shown = dict(sigma_auto=self.sigma_auto, log_sigma=self.log_sigma, lam_auto=self.lam_auto, log_lam=self.log_lam)

    def _m_moved(self, event):
        self._m_step = int(event.new - event.old) or self._m_step

    @param.depends(*FIT_KNOBS[1:], watch=True)
    def _fit_knobs_changed(self):
        self._remember_shown()
        if self._quiet:
            return
        if self.loaded_path:
            with self._quietly():
                self.model_file = ""
            self.loaded_path = ""
        self.request_fit()

    @param.depends("dataset", watch=True)
    def _dataset_watch(self):
        if not self._quiet:
            self.notice = ""
            self._dataset_changed(start=True)
            self._fit_knobs_changed()

    def _dataset_changed(self, start=True):
        entry = compute.load_header(self.dataset)  # no densities: this runs on the page's event loop
        n, pool = len(entry.ds), len(entry.pool)
        with self._quietly():
            self.param.molecule.bounds = (0, n - 1)
            self.param.m.bounds = (2, min(compute.MAX_M, pool))
            if self.m > pool:
                if start:  # the user's M does not fit the new set: say so rather than change it silently
                    self.notice = (f"Training size M: {self.m} is more than the {pool} training molecules of "
                                   f"{entry.name}; using {pool}")
                self.m = pool
            self.molecule = int(entry.test[len(entry.test) // 2])
            ax = entry.axes[entry.normal]
            self.param.slice_pos.bounds = (float(ax[0]), float(ax[-1]))
            mid = float(np.mean(entry.ds.positions[..., entry.normal]) / 0.529177210903)
            self.slice_pos = float(ax[np.argmin(np.abs(ax - mid))])
        self._remember_shown()
        self.curve = []
        if self._want_curve:
            self.request_curve()

    @param.depends("gamma", "spacing", "cv_rule", "energy_features", watch=True)
    def _curve_inputs_changed(self):  # the learning curve starts again for the new inputs
        if not self._quiet and self._want_curve:
            self.curve = []
            self.request_curve()

    @param.depends(*[k for k in FIT_KNOBS if k != "dataset"], *VIEW_KNOBS, watch=True)  # a new set: _dataset_watch
    def _clear_notice(self):
        if not self._quiet:  # the user's changes, not the sliders following CV or a data set
            self.notice = ""

    @param.depends(*VIEW_KNOBS, watch=True)
    def _view_knobs_changed(self):
        if not self._quiet:
            self.request_view()

    @param.depends("model_file", watch=True)
    def _model_file_changed(self):
        if self._quiet:
            return
        if self.model_file:
            self._open_a_set_of_its_atoms(self.model_file)
        self.loaded_path = self.model_file or ""
        self.request_fit()

    def _open_a_set_of_its_atoms(self, path) -> None:
        """If the model was fitted on other atoms than the current set's, switch to the set it was fitted on
        (if the file records it and the menu has it), else to the first set in the menu with its
        atoms, and say so. A model of the current set's atoms stays on the current set: applying a model to
        other molecules of the same kind is a use, not a mistake."""
        from ..models import read_model_meta

        try:
            meta, numbers, _ = read_model_meta(path)
        except compute.DatasetError:
            return  # the fit job says what is wrong with the file
        current = compute.load_header(self.dataset)
        if np.array_equal(numbers, current.ds.numbers):
            return
        origin = (meta.get("provenance") or {}).get("dataset")
        menu = sorted(self.param.dataset.objects, key=lambda c: Path(c).name != origin)  # its own set first
        for cand in menu:
            try:
                if not np.array_equal(numbers, compute.load_header(cand).ds.numbers):
                    continue
            except (compute.DatasetError, OSError, ValueError):
                continue
            with self._quietly():
                self.dataset = cand
            self._dataset_changed(start=True)
            why = (f"was fitted on {origin}" if Path(cand).name == origin else
                   f"was fitted on other atoms than {current.name}'s")
            self.notice = f"{Path(path).name} {why}: opened {compute.load_header(cand).name} ({Path(cand).name})"
            return

    # -- requests ----------------------------------------------------------------------------------
    def request_fit(self) -> None:
        """(Re)train for the current knobs in the background: the 3D view's data first, then the rest.

        The view job and the fit job share the density model through the cache; the fit (energy
        functional CV, ML-KS, error statistics) starts when the view's data is in, so the picture
        does not compete with it for the two cores.
        """
        self.error = ""
        self.jobs["prefetch"].cancel()  # speculative work yields to what was asked for
        src = self.source()
        self._start("fit")
        t0 = time.perf_counter()

        def go():
            if src != self.source():
                return
            if src[0] == "knobs":
                self.jobs["fit"].submit(tasks.fit, src[1], on_done=lambda r: self._apply_fit(src, r, t0),
                                        on_error=self._on_error("fit"), priority=10)
            else:
                self.jobs["fit"].submit(tasks.loaded_fit, src[1], src[2], on_done=lambda r: self._apply_fit(src, r, t0),
                                        on_error=self._on_error("fit"), priority=10)

        self.jobs["fit"].cancel()
        self.request_view(then=go)

    def request_view(self, then=None) -> None:
        """Compute the 3D view's data in the background; ``then()`` once it is applied (and, if the
        picture changed, drawn: :attr:`after_picture`)."""
        self.jobs["prefetch"].cancel()
        src, vk = self.source(), self.view_knobs()
        self._start("view")
        t0 = time.perf_counter()

        def done(v):
            old = self.view_data
            self._apply_view(src, vk, v, t0)
            if then is None:
                return
            new_picture = self.view_data is v and (old is None or old.key != v.key)
            if new_picture and self.after_picture is not None:
                self.stage = "statistics: after the picture is drawn"
                self.after_picture(then)
            else:
                then()

        def failed(exc):
            self._on_error("view")(exc)
            if then is not None:
                then()

        self.jobs["view"].submit(tasks.view, src, *vk, on_done=done, on_error=failed, priority=20)

    def want_curve(self) -> None:
        """Start computing the learning curve (once; it then follows the data set and the descriptor).

        The app calls this when its Learning-curve tab is first opened: the curve is minutes of CV on
        two cores, and computing it for every session from the start slowed every update on the page.
        """
        if not self._want_curve:
            self._want_curve = True
            self.request_curve()

    def request_curve(self) -> None:
        ds, g, s = self.dataset, _r(self.gamma), _r(self.spacing)
        entry = compute.load_header(ds)
        sizes = compute.curve_sizes(entry)
        self.curve_sizes = sizes
        self._curve_next(ds, g, s, (self.cv_rule, self.energy_features), sizes, 0)

    def _curve_next(self, ds, g, s, how, sizes, k):
        """Point ``k`` of the curve for data set ``ds``, descriptor (``g``, ``s``) and ``how`` = (CV rule,
        energy features); a point that arrives after any of them changed is dropped."""
        if k >= len(sizes):
            self._finish("curve")
            return
        self._start("curve")

        def done(point):
            if (self.dataset, _r(self.gamma), _r(self.spacing), (self.cv_rule, self.energy_features)) != (ds, g, s, how):
                return
            self.curve = self.curve + [point]
            self._curve_next(ds, g, s, how, sizes, k + 1)

        self.jobs["curve"].submit(tasks.curve_point, ds, sizes[k], g, s, *how, on_done=done,
                                  on_error=self._on_error("curve"), priority=-10)

    def _prefetch(self, k) -> None:
        """Warm the caches for the next likely sizes in the background (an M step then skips K-means and the
        Gram pass): the last step again first (the slider tends to move on the same way by the same amount),
        then the neighbours M ± 1 and the step back."""
        lo, hi = self.param.m.bounds
        d = self._m_step or 1
        u = int(np.sign(d))
        cand = (k.m + d, k.m + 2 * d, k.m + u, k.m - u, k.m - d)
        ms = [m for i, m in enumerate(cand) if lo <= m <= hi and m not in cand[:i]]
        self.jobs["prefetch"].submit(tasks.prefetch, k.dataset, tuple(ms), k.gamma, k.spacing,
                                     on_done=lambda _: None, priority=-20)

    def save(self, path=None) -> None:
        """Write the current model (of ``kind``) as a model file, in the background."""
        if self.result is None:
            self.status = "nothing to save yet"
            return
        k = self.fit_knobs()
        if path is None:
            name = compute.load_header(k.dataset).name
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = _reserve(self.model_dir, f"{name}-{self.kind.replace('-', '')}-M{k.m}-{stamp}")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        # every click writes its own file: a save is never cancelled by the next one (unlike a refit)
        self._saves += 1
        job = f"save-{self._saves}"
        self.jobs[job] = engine.Job(self.session, job, self._dispatch)
        self._start(job)

        def done(out):
            self.jobs.pop(job, None)
            self._apply_save(out, job)

        def failed(exc):
            self.jobs.pop(job, None)
            if Path(path).is_file() and Path(path).stat().st_size == 0:  # the reserved name, never written
                Path(path).unlink()
            self._on_error(job)(exc)

        self.jobs[job].submit(tasks.save_model, k, self.kind, str(path), on_done=done, on_error=failed)

    md_duration_fs = param.Integer(default=200, bounds=(10, 5000), doc="Length of an ML-HK MD run, fs")
    md_temperature_K = param.Integer(default=300, bounds=(1, 2000), doc="Temperature of an ML-HK MD run, K")

    def start_md(self) -> None:
        """Langevin MD on the current ML-HK model from the molecule in 3D, in the background (live trace)."""
        if self.result is None:
            self.md_status = "no model yet: wait for the training to finish"
            return
        self.stop_md()
        k = self.fit_knobs()
        entry = compute.load_header(k.dataset)
        start = entry.ds.positions[self.molecule]
        dur, temp = float(self.md_duration_fs), float(self.md_temperature_K)
        self.param.update(md_frames=[], md_runs=self.md_runs + 1, md_status="starting (fitting the library model)")
        self._start("md")
        buf: list = []

        last = [0.0]

        def frame(f):  # in the worker thread: collect, and hand the page a copy at most every 0.4 s
            buf.append((float(f["time_fs"]), float(f["energy_hartree"])))
            now = time.perf_counter()
            if now - last[0] < 0.4:  # redrawing per frame would flood the page's event loop (Stop waits)
                return
            last[0] = now
            frames = list(buf)
            def push():
                if "md" in self._pending:  # a late frame never overwrites the final state
                    self.param.update(md_frames=frames, md_status=f"running, {frames[-1][0]:.0f} of {dur:.0f} fs")
            self._dispatch(push)

        def done(res):
            self._finish("md")
            self.md_frames = list(buf)
            self.md_status = {"finished": "finished", "blew_up": "stopped: a bond broke (left the training domain)",
                              "stopped": "stopped"}[res]

        def failed(exc):
            self._finish("md")
            self.md_frames = list(buf)
            self.md_status = f"failed: {type(exc).__name__}: {exc}"

        engine.sink(self.session, "md", frame)
        self.jobs["md"].submit(tasks.run_md, k, self.loaded_path or None, start, dur, temp, on_done=done,
                               on_error=failed, priority=0)

    def stop_md(self) -> None:
        """End a running ML-HK MD run (its trace so far stays on the page)."""
        if self.jobs["md"].busy:
            self.jobs["md"].cancel()
            self._finish("md")
            self.md_frames = list(self.md_frames)
            self.md_status = "stopped"

    # -- results -------------------------------------------------------------------------------------
    def _apply_fit(self, src, res, t0):
        if src != self.source():
            return  # made stale by a newer change
        self.timings["fit"] = time.perf_counter() - t0
        self.result = res
        self._finish("fit")
        if src[0] == "knobs":
            self._prefetch(res.knobs)
        self._show_cv_choice()
        if src[0] == "file":
            with self._quietly():
                self.param.update(gamma=res.knobs.gamma, spacing=res.knobs.spacing, cv_rule=res.knobs.cv_rule,
                                  energy_features=res.knobs.energy_features)
            self.status = f"model file {Path(src[1]).name}: {self.model_label(src[1])}"
        else:
            s = res.summary()
            self.status = (f"{res.name}, M = {len(res.train)}: ML-HK ΔE MAE {s['mlhk_dE'][0]:.3g}, "
                           f"ML-KS ΔE MAE {s['mlks_dE'][0]:.3g} kcal/mol")

    def _show_cv_choice(self):
        """With 'auto', move the slider to the value CV picked (without retraining)."""
        res = self.result
        if res is None or self.loaded_path:
            return
        ch = res.hk if self.kind == HK else res.ks
        with self._quietly():
            if self.sigma_auto and np.isfinite(ch.factor) and ch.factor > 0:
                self.log_sigma = float(np.clip(math.log10(ch.factor), *self.param.log_sigma.bounds))
            if self.lam_auto and ch.lam > 0:
                self.log_lam = float(np.clip(math.log10(ch.lam), *self.param.log_lam.bounds))
        self._remember_shown()

    def _apply_view(self, src, vk, vd, t0):
        if src != self.source() or vk != self.view_knobs():
            return
        self.timings["view"] = time.perf_counter() - t0
        self.view_data = vd
        self._finish("view")

    def _apply_save(self, path, job):
        self._finish(job)
        self.refresh_lists()
        p = str(Path(path).resolve())
        if p not in self.param.model_file.objects:
            self.param.model_file.objects = list(self.param.model_file.objects) + [p]
            self._model_labels[p] = Path(p).name
        self.saved_path = path
        self.status = f"saved {path}"

    # -- convenience for views and tests ----------------------------------------------------------------
    def choice(self, kind=None):
        """The hyperparameters in use for ``kind`` (a compute.Choice), or None before the first fit."""
        res = self.result
        if res is None:
            return None
        return res.hk if (kind or self.kind) == HK else res.ks
