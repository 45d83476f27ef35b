"""The numbers behind the app: the paper's protocol, computed in M-space (:mod:`mlhk_viz.mspace`)
and cached.

Everything here is a plain function of small hashable knobs, memoised in the shared caches of
:mod:`mlhk_viz.app.cache`, so Dask tasks can be submitted with nothing but keys and every browser
session reuses what another one computed. The results equal the library's (``MLHK``/``MLKS``
fitted by :func:`mlhk_viz.evaluation.evaluate` with the same knobs) to round-off; the tests
check that.

What the maths allows to cache, and why a knob change is cheap:

* descriptor distances per (data set, gamma, Delta, training set): ``D_tr`` (M, M) and
  ``D_all`` (n, M) from every molecule of the set to the training set;
* one Gram pass over the coefficients per (data set, training set): the mean ``offset``,
  ``G = Yc Yc^T`` (M, M), ``H = (U_test - offset) Yc^T`` and the per-coefficient spread --
  the only work that touches all 125,000 coefficients of all training molecules;
* one eigendecomposition ``K = Q diag(e) Q^T`` per sigma.

With those, ML-HK needs no (M, 125000) matrix at all: the prediction for molecule x is
``offset + b(x) Yc`` with ``b(x) = k(x) (K + lam I)^-1`` (an M-vector), distances between
predicted densities are ``(b1 - b2) G (b1 - b2)^T`` (the basis is orthonormal), and the energy
functional, its CV, the error decomposition and the density errors all follow from ``G`` and
``H``. A lambda change is one (M, M) product, a sigma change one (M, M) eigendecomposition;
only the densities shown in the 3D view touch 125,000 numbers (``b(x) Yc``, one vector).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from ase.units import Bohr

from .. import evaluation, mspace
from ..datasets import Dataset, DatasetError
from ..descriptor import GaussianPotential
from ..krr import KernelRidgeModel
from ..mspace import Choice, median_distance
from ..progress import null_progress
from . import cache

#: training sizes offered by the M slider and the learning curve
MAX_M = 200
CURVE_SIZES = (5, 7, 10, 15, 20, 30, 50, 70, 100, 150, 200)
#: prefetch of neighbouring M starts after this many 0.1 s steps without a newer request
PREFETCH_IDLE_STEPS = 5
#: target number of voxels of the fine view grid, margin around the atoms (bohr)
VIEW_VOXELS = 72**3
VIEW_MARGIN = 4.0


def default_data_dir() -> Path:
    env = os.environ.get("MLHK_VIZ_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "data"


def default_model_dir() -> Path:
    env = os.environ.get("MLHK_VIZ_MODELS")
    if env:
        return Path(env)
    from ..datasets import cache_dir

    return cache_dir() / "models"


# ------------------------------------------------------------------------------ data sets
def file_key(path) -> tuple:
    p = Path(path).resolve()
    st = p.stat()
    return (str(p), st.st_mtime_ns, st.st_size)


_scan_cache: dict = {}


def fits_the_app(ds: Dataset) -> bool:
    """Whether the set's float64 densities fit the app's data-set cache (the 2,000-frame pools do not)."""
    return len(ds) * ds.basis.size * 8 <= cache.DATASETS.budget


def scan_datasets(folder) -> dict[str, str]:
    """``{label: path}`` of every valid data set with densities in ``folder`` (``*.npz``) that the app can hold.

    Sets whose densities would not fit the app's data-set cache (``cache.DATASETS``, 1.6 GB: about 1,600
    molecules) are left out: the app trains on at most :data:`MAX_M` of them anyway, and a set the cache
    cannot keep would be read back from disk for every request. Such sets (the 2,000-frame training pools)
    are the library's and ``mlhk-viz reproduce``'s; ``mlhk-viz assemble`` makes app-sized MD sets from them.
    """
    out = {}
    for p in sorted(Path(folder).glob("*.npz")):
        try:
            k = file_key(p)
        except OSError:
            continue
        ok = _scan_cache.get(k)
        if ok is None:
            try:
                ds = Dataset.load(p)
                ok = (ds.name, len(ds), ds.has_densities and fits_the_app(ds))
            except (DatasetError, OSError, ValueError, KeyError):
                ok = False
            _scan_cache[k] = ok
        if ok and ok[2]:
            # the file name only where the set's name does not give it: the sidebar is 300 px wide
            label = f"{ok[0]} ({ok[1]} molecules)"
            if ok[0].lower() != p.stem.lower() or label in out:
                label = f"{ok[0]} ({ok[1]} molecules, {p.name})"
            out[label] = str(p.resolve())
    return out


def scan_models(*folders) -> dict[str, str]:
    """``{label: path}`` of model files (``mlhk-viz-model`` npz) in ``folders``.

    Reads each file's meta record and header only: an ML-HK file is about 2 × M MB, and the menu is
    rebuilt for every page.
    """
    from ..models import read_model_meta

    out = {}
    for folder in folders:
        for p in sorted(Path(folder).glob("*.npz")) if Path(folder).is_dir() else []:
            try:
                meta, _, m = read_model_meta(p)
            except (DatasetError, OSError, ValueError):
                continue
            out[f"{p.name} ({meta.get('kind')}, M = {m})"] = str(p.resolve())
    return out


#: the per-molecule x axis of a set without a physical one (a scan's bond length): the molecule's index
FRAME_LABEL = "frame"


@dataclass
class DataHeader:
    """What the app derives from a data set without its densities: quick to load, safe on the event loop."""

    key: tuple
    ds: Dataset
    test: np.ndarray
    pool: np.ndarray
    axes: tuple  # fine view grid, bohr (box frame)
    normal: int  # axis (0, 1, 2) normal to the molecular plane
    x_label: str  # what the per-molecule x axis is
    x_values: np.ndarray  # (n,) e.g. bond length (Å) or frame index
    traj: np.ndarray  # indices of the frames of an ordered trajectory, in order (empty if none)
    traj_x: np.ndarray  # (n_traj,) their position along it (bond length, time)
    traj_label: str
    scored: np.ndarray  # test frames and trajectory frames: where E^ML[n^DFT] and density errors are computed

    def cache_nbytes(self) -> int:
        orbitals = self.ds.mo_coeff.nbytes if self.ds.mo_coeff is not None else 0
        return int(orbitals + self.ds.positions.nbytes + 4096)

    @property
    def name(self) -> str:
        return self.ds.name


@dataclass
class DataEntry(DataHeader):
    """A loaded data set with its DFT densities: ``U`` ``(n, 125000)`` Fourier coefficients."""

    U: np.ndarray = None

    def cache_nbytes(self) -> int:
        return int(self.U.nbytes + super().cache_nbytes())


def n_test_for(n: int) -> int:
    return 50 if n >= 100 else max(2, n // 4)


def view_axes(positions_A, basis, voxels=VIEW_VOXELS, margin=VIEW_MARGIN):
    """Fine 1D axes (bohr) around every atom of the set, clipped to the basis box."""
    p = np.asarray(positions_A).reshape(-1, 3) / Bohr
    half = basis.box / 2
    lo = np.maximum(p.min(0) - margin, -half)
    hi = np.minimum(p.max(0) + margin, half)
    h = max(float(np.prod(hi - lo) / voxels) ** (1 / 3), 0.05)
    return tuple(np.arange(l, u + 0.5 * h, h) for l, u in zip(lo, hi))


def load_header(path) -> DataHeader:
    """The data set at ``path`` and its split, trace and view grid, without expanding any density.

    This is what the event loop may call (a new page, a new data set in the menu): an uncached MD set
    takes minutes to expand its densities, and that happens in a background job (:func:`load_entry`).
    """
    key = file_key(path)

    def build():
        ds = Dataset.load(path)
        if not ds.has_densities:
            raise DatasetError(f"{path}: no densities; the app needs them for ML-HK")
        if not fits_the_app(ds):
            raise DatasetError(f"{path}: {len(ds)} molecules need {len(ds) * ds.basis.size * 8 / 1e9:.1f} GB of densities, "
                               f"more than the app's data-set cache holds ({cache.DATASETS.budget / 1e9:.1f} GB); "
                               "`mlhk-viz assemble` makes an app-sized MD set")
        ok = ds.converged
        roles = ds.meta.get("roles")
        xl, xv = FRAME_LABEL, np.arange(len(ds), dtype=float)
        if roles:  # an assembled MD set: its own test frames, pool and trace (reference.md_sets.assemble)
            test = np.array([i for i in roles["test"] if ok[i]], int)
            pool = np.array([i for i in roles["pool"] if ok[i]], int)
            keep = np.array([ok[i] for i in roles["trajectory"]], bool)
            traj = np.asarray(roles["trajectory"], int)[keep]
            traj_x = np.asarray(ds.meta.get("times_fs", np.arange(len(keep))), float)[keep]
            tl = "time (fs)"
        else:
            test, pool = evaluation.split(ds, n_test_for(int(ok.sum())))
            if ds.n_atoms == 2:
                from ..geometry import bond_length

                xl, xv = "bond length R (Å)", bond_length(ds.positions)
            traj = np.flatnonzero(ok) if ds.ordered else np.array([], int)
            traj_x, tl = xv[traj], xl
        spread = np.ptp(ds.positions.reshape(-1, 3), axis=0)
        normal = int(np.argmin(spread))
        return DataHeader(key, ds, test, pool, view_axes(ds.positions, ds.basis), normal, xl, xv, traj, traj_x, tl,
                          np.union1d(test, traj))

    return cache.DATASETS.get_or_compute(("header", *key), build)


def load_entry(path, progress=null_progress) -> DataEntry:
    """:func:`load_header` plus the DFT densities (expanded from stored orbitals on first use: a background job's work).

    The expansion is shared by every session and cached on disk per block, so a request that goes
    stale meanwhile does not stop it: the request after it would only have to start it again.
    """
    from .engine import Stale

    key = file_key(path)

    def report(done, total, stage):
        try:
            progress(done, total, "densities")
        except Stale:
            pass

    def build():
        head = load_header(path)
        ds = replace(head.ds, _block_arrays={})  # the same arrays; the densities it caches stay out of the header
        U = ds.coefficients(report)
        fields = {f: getattr(head, f) for f in DataHeader.__dataclass_fields__}
        return DataEntry(**dict(fields, ds=ds), U=U)

    return cache.DATASETS.get_or_compute(key, build)


def selection(entry: DataEntry, m: int, seed: int = 0) -> np.ndarray:
    m = int(min(m, len(entry.pool)))
    return cache.SELECTIONS.get_or_compute(
        (entry.key, m, seed), lambda: evaluation.select_training(entry.ds, entry.pool, m, seed))


# ------------------------------------------------------------------------------ distances
@dataclass
class Distances:
    key: tuple
    axes: tuple  # descriptor grid axes, Å (from the training set, as MLHK.fit builds them)
    D_tr: np.ndarray  # (M, M)
    D_all: np.ndarray  # (n, M)
    median: float


def distances(entry: DataEntry, train: np.ndarray, gamma: float, spacing: float) -> Distances:
    key = ("dist", entry.key, float(gamma), float(spacing), train.tobytes())

    def build():
        pot = GaussianPotential(float(gamma), float(spacing))
        pos_tr = entry.ds.positions[train]
        axes = pot.axes(pos_tr)
        D_tr = pot.sq_distances(pos_tr, None, entry.ds.numbers, axes)
        D_all = pot.sq_distances(entry.ds.positions, pos_tr, entry.ds.numbers, axes)
        return Distances(key, axes, D_tr, D_all, median_distance(D_tr))

    return cache.DISTANCES.get_or_compute(key, build)


# ------------------------------------------------------------------------------ coefficient Grams
@dataclass
class Grams(mspace.Grams):
    key: tuple = ()


def grams(entry: DataEntry, train: np.ndarray, progress=null_progress) -> Grams:
    """:func:`mlhk_viz.mspace.coefficient_grams` of the training set against the entry's scored frames, cached."""
    key = ("gram", entry.key, train.tobytes())

    def build():
        g = mspace.coefficient_grams(entry.U, train, entry.scored, progress)
        return Grams(g.offset, g.G, g.H, g.nt, g.s2, g.T, key)

    return cache.GRAMS.get_or_compute(key, build)


# ------------------------------------------------------------------------------ kernels
def eigen(dist: Distances, sigma: float) -> mspace.Eigen:
    key = ("eig", dist.key, float(sigma))
    return cache.EIGEN.get_or_compute(key, lambda: mspace.kernel_eigen(dist.D_tr, dist.D_all, sigma))


@dataclass(frozen=True)
class FitKnobs:
    """Everything a fit depends on. Sigmas are factors of the median training distance; None = CV."""

    dataset: str
    m: int = 10
    gamma: float = 0.2
    spacing: float = 0.08
    hk_sigma: float | None = None
    hk_lam: float | None = None
    ks_sigma: float | None = None
    ks_lam: float | None = None
    seed: int = 0
    cv_rule: str = "min"  # "min" (lowest LOO error, the paper's) or "1se" (krr.cv_grid), for every CV
    energy_features: str = "predicted"  # what the energy functional trains on, as MLHK(energy_features=...)


def _choose(D, Y, med, factor, lam, progress, stage, center=True, rule="min") -> Choice:
    return mspace.choose(D, Y, med, factor, lam, progress, stage, center, rule)


def density_choice(k: FitKnobs, progress=null_progress) -> Choice:
    entry = load_entry(k.dataset, progress)
    train = selection(entry, k.m, k.seed)
    dist = distances(entry, train, k.gamma, k.spacing)
    key = ("hk-choice", dist.key, train.tobytes(), k.hk_sigma, k.hk_lam, k.cv_rule)
    if k.hk_sigma is not None and k.hk_lam is not None:  # set by hand: no CV, no pass over the coefficients
        return cache.MODELS.get_or_compute(key, lambda: _choose(dist.D_tr, None, dist.median, k.hk_sigma, k.hk_lam,
                                                                progress, "density CV"))
    # CV on the Gram factor T (T T^T = Yc Yc^T) with center=False: the same LOO errors as CV on
    # the (M, 125000) coefficients, at O(M^3) per grid point
    return cache.MODELS.get_or_compute(key, lambda: _choose(
        dist.D_tr, grams(entry, train, progress).T, dist.median, k.hk_sigma, k.hk_lam, progress, "density CV",
        center=False, rule=k.cv_rule))


@dataclass
class DensityModel:
    """The ML-HK density model in M-space: prediction for molecule i is ``offset + b[i] @ Yc``."""

    choice: Choice
    train: np.ndarray
    b: np.ndarray  # (n, M) weights of the centred training coefficients, every molecule of the set
    B: np.ndarray  # (M, M) the same for the training molecules themselves, K (K + lam I)^-1
    var: np.ndarray  # (n,) GP posterior variance (prior units)


def density_model(k: FitKnobs, progress=null_progress) -> DensityModel:
    choice = density_choice(k, progress)
    entry = load_entry(k.dataset, progress)
    train = selection(entry, k.m, k.seed)
    dist = distances(entry, train, k.gamma, k.spacing)
    key = ("hk-model", dist.key, choice.sigma, choice.lam)

    def build():
        progress(0, 1, "kernel")
        eg = eigen(dist, choice.sigma)
        progress(1, 1, "kernel")
        progress(0, 1, "solve")
        b, B, var = mspace.density_weights(eg, choice.lam)
        progress(1, 1, "solve")
        return DensityModel(choice, train, b, B, var)

    dm = cache.MODELS.get_or_compute(key, build)
    # the weights depend only on (sigma, lambda); how they were chosen (by hand, CV, which rule) is this request's
    return dm if dm.choice is choice else replace(dm, choice=choice)


def predicted_coefficients(k: FitKnobs, i: int) -> np.ndarray:
    """ML-HK coefficients of molecule ``i``: ``(125000,)`` = offset + b Yc, touching M rows of U."""
    entry = load_entry(k.dataset)
    dm = density_model(k)
    return mspace.predicted_coefficients(entry.U, dm.train, offset(entry, dm.train), dm.b[i])


def offset(entry: DataEntry, train: np.ndarray) -> np.ndarray:
    """Mean training coefficients (125000,): from the Grams if they are cached, else one (M, L) mean, so a
    picture for a new M does not wait for the whole Gram pass."""
    gr = cache.GRAMS.get(("gram", entry.key, train.tobytes()))
    if gr is not None:
        return gr.offset
    return cache.GRAMS.get_or_compute(("offset", entry.key, train.tobytes()), lambda: mspace.rows_combination(entry.U, train, np.full(len(train), 1.0 / len(train))))


# ------------------------------------------------------------------------------ energies
@dataclass
class FitResult:
    """Both models on the current knobs: what the plots show. Energies in Hartree, errors kcal/mol."""

    knobs: FitKnobs
    name: str
    train: np.ndarray
    test: np.ndarray
    hk: Choice
    energy: Choice
    ks: Choice
    E_dft: np.ndarray  # (n,)
    E_hk: np.ndarray  # (n,) E^ML[n^ML] for every molecule of the set
    E_ks: np.ndarray  # (n,)
    E_hk_at_dft: np.ndarray  # (n_test,) E^ML[n^DFT]
    density_l2: np.ndarray  # (n_test,) ||n^ML - n^DFT||_2
    var: np.ndarray  # (n,) GP variance of the density model
    x_label: str = ""
    x_values: np.ndarray | None = None
    traj: np.ndarray = field(default_factory=lambda: np.array([], int))  # ordered trajectory frames
    traj_x: np.ndarray = field(default_factory=lambda: np.array([]))
    traj_label: str = ""
    E_hk_at_dft_traj: np.ndarray = field(default_factory=lambda: np.array([]))  # (n_traj,) E^ML[n^DFT]
    seconds: dict = field(default_factory=dict)

    @property
    def ordered(self) -> bool:
        """Whether the set holds a trajectory to draw energies along."""
        return len(self.traj) > 0

    @property
    def errors(self) -> dict:
        t, kc = self.test, evaluation.KCAL_PER_HARTREE
        return {
            "mlks_dE": (self.E_ks[t] - self.E_dft[t]) * kc,
            "mlhk_dE": (self.E_hk[t] - self.E_dft[t]) * kc,
            "mlhk_dED": (self.E_hk[t] - self.E_hk_at_dft) * kc,
            "mlhk_dEF": (self.E_hk_at_dft - self.E_dft[t]) * kc,
        }

    def summary(self) -> dict:
        return {k: (float(np.mean(np.abs(v))), float(np.max(np.abs(v)))) for k, v in self.errors.items()}


def fit(k: FitKnobs, progress=null_progress) -> FitResult:
    """Both models for the knobs, all through the caches. Same numbers as ``evaluation.evaluate``."""
    t0 = time.perf_counter()
    entry = load_entry(k.dataset, progress)
    progress(0, 1, "selection")
    train = selection(entry, k.m, k.seed)
    progress(1, 1, "selection")
    progress(0, 1, "descriptor")
    dist = distances(entry, train, k.gamma, k.spacing)
    progress(1, 1, "descriptor")
    t1 = time.perf_counter()
    dm = density_model(k, progress)
    t2 = time.perf_counter()
    key = ("fit", k, dm.choice.sigma, dm.choice.lam)
    res = cache.MODELS.get(key)
    if res is not None:
        return res
    progress(0, 1, "predict")
    gr = grams(entry, train)
    E = entry.ds.energies
    y = E[train]
    # ML-HK energy functional on the model's own training densities (Eq. 13; or their leave-one-out
    # predictions, or the DFT densities), all via G
    W = mspace.functional_training_weights(dm.B, k.energy_features)
    fd = mspace.functional_distances(dm.b, W, gr.G, gr.H, gr.nt)
    DF = fd["train"]
    energy = _choose(DF, y[:, None], median_distance(DF), None, None, progress, "energy CV", rule=k.cv_rule)
    em = KernelRidgeModel().fit(DF, y[:, None], energy.sigma, energy.lam)
    E_hk = em.predict(fd["predicted"])[:, 0]
    E_at = em.predict(fd["dft"])[:, 0]  # E^ML[n^DFT] on the scored frames
    l2_all = mspace.density_l2(dm.b[entry.scored], fd["self"][entry.scored], gr.H, gr.nt)
    ti, tj = np.searchsorted(entry.scored, entry.test), np.searchsorted(entry.scored, entry.traj)
    E_hk_dft, l2 = E_at[ti], l2_all[ti]
    # ML-KS, straight from the potential
    ks, E_ks = ml_ks(k, progress)
    progress(1, 1, "predict")
    t3 = time.perf_counter()
    res = FitResult(k, entry.name, train, entry.test, dm.choice, energy, ks, E.copy(), E_hk, E_ks, E_hk_dft, l2,
                    dm.var, entry.x_label, entry.x_values, entry.traj, entry.traj_x, entry.traj_label, E_at[tj],
                    {"descriptor": t1 - t0, "density model": t2 - t1, "energies": t3 - t2})
    return cache.MODELS.put(key, res)


def ml_ks(k: FitKnobs, progress=null_progress):
    """ML-KS for the knobs: (Choice, energies (n,) Hartree of every molecule). Cached per (distances, sigma, lambda)."""
    entry = load_entry(k.dataset, progress)
    train = selection(entry, k.m, k.seed)
    dist = distances(entry, train, k.gamma, k.spacing)
    y = entry.ds.energies[train]
    ks = cache.MODELS.get_or_compute(("ks-choice", dist.key, k.ks_sigma, k.ks_lam, k.cv_rule), lambda: _choose(
        dist.D_tr, y, dist.median, k.ks_sigma, k.ks_lam, progress, "energy CV (ML-KS)", rule=k.cv_rule))

    def build():
        km = KernelRidgeModel().fit(dist.D_tr, y[:, None], ks.sigma, ks.lam)
        return km.predict(dist.D_all)[:, 0]

    return ks, cache.MODELS.get_or_compute(("ks-model", dist.key, ks.sigma, ks.lam), build)


# ------------------------------------------------------------------------------ view grids
_axis_cache: dict = {}


def _axis_functions(basis, ax):
    key = (basis.box, basis.n, len(ax), float(ax[0]), float(ax[-1]))
    f = _axis_cache.get(key)
    if f is None:
        if len(_axis_cache) > 64:
            _axis_cache.clear()
        f = _axis_cache[key] = np.ascontiguousarray(basis.axis_functions(ax))
    return f


def evaluate(basis, coeffs, axes, square=False):
    """``basis.evaluate(coeffs, *axes)`` for one coefficient vector, as three BLAS products.

    Same numbers as the library's einsum route (tests check 1e-12) in about a tenth of the
    time, which matters for the 0.1 s budget of a lambda change. ``square=True`` uses squared
    axis functions (for the variance field).
    """
    fx, fy, fz = (_axis_functions(basis, a) for a in axes)
    if square:
        fx, fy, fz = fx * fx, fy * fy, fz * fz
    n = basis.n
    c = np.asarray(coeffs, float).reshape(n * n, n)
    t = (c @ fz.T).reshape(n, n, -1)  # (a, b, z)
    t = np.matmul(fy, t)  # (a, y, z)
    out = fx @ t.reshape(n, -1)  # (x, y*z)
    return out.reshape(len(axes[0]), len(axes[1]), len(axes[2]))


def _separable(coeffs, axes, basis, square=False):
    return evaluate(basis, coeffs, axes, square)


def dft_grid(entry: DataEntry, i: int) -> np.ndarray:
    return cache.GRIDS.get_or_compute(
        ("dft", entry.key, int(i)), lambda: evaluate(entry.ds.basis, entry.U[int(i)], entry.axes).astype(np.float32))


def spread_grid(entry: DataEntry, train: np.ndarray) -> np.ndarray:
    """Pointwise standard deviation of the training densities on the view grid, e/bohr³ (float32).

    sqrt(mean_i (n_i(r) - mean(r))^2) over the training molecules: evaluated on every second
    point of the view grid (the spread is smooth) and interpolated linearly to the full grid;
    about 1 ms per training molecule. Cached per (data set, training set).
    """
    from scipy.ndimage import map_coordinates

    def build():
        axes_c = tuple(a[::2] for a in entry.axes)
        basis = entry.ds.basis
        gr = grams(entry, train)
        acc = np.zeros(tuple(len(a) for a in axes_c))
        for i in train:
            d = evaluate(basis, entry.U[int(i)] - gr.offset, axes_c)
            acc += d * d
        std_c = np.sqrt(acc / len(train))
        idx = np.meshgrid(*(np.arange(len(a)) / 2.0 for a in entry.axes), indexing="ij")
        return map_coordinates(std_c, idx, order=1, mode="nearest").astype(np.float32)

    return cache.GRIDS.get_or_compute(("spread", entry.key, np.asarray(train).tobytes()), build)


@dataclass
class Molecule:
    """One molecule's densities on the fine view grid (e/bohr³, float32) and its atoms (bohr).

    ``pred`` and ``diff`` are None for a model without densities (an ML-KS model file); its ``var``,
    ``electrons_pred`` and ``l2`` are then NaN.
    """

    index: int
    axes: tuple
    numbers: np.ndarray
    atoms_bohr: np.ndarray
    pred: np.ndarray | None
    dft: np.ndarray
    diff: np.ndarray | None
    var: float
    electrons_pred: float
    electrons_dft: float
    l2: float
    normal: int
    dataset: str = ""
    spread_of: np.ndarray | None = None  # molecules whose density spread scales the uncertainty

    @property
    def std(self) -> np.ndarray:
        """Predictive standard deviation field sqrt(v(x)) * spread(r) (computed on first use, cached)."""
        entry = load_entry(self.dataset)
        return (np.sqrt(max(self.var, 0.0)) * spread_grid(entry, self.spread_of)).astype(np.float32)


def molecule(k: FitKnobs, i: int, progress=null_progress) -> Molecule:
    entry = load_entry(k.dataset, progress)
    key = ("mol", k, int(i))
    got = cache.GRIDS.get(key)
    if got is not None:
        return got
    dm = density_model(k, progress)
    progress(0, 1, "predict")
    c = predicted_coefficients(k, i)
    pred = evaluate(entry.ds.basis, c, entry.axes).astype(np.float32)
    dft = dft_grid(entry, i)
    b = entry.ds.basis
    out = Molecule(int(i), entry.axes, entry.ds.numbers, entry.ds.positions[i] / Bohr, pred, dft, pred - dft,
                   float(dm.var[i]), float(b.electron_count(c)), float(b.electron_count(entry.U[i])),
                   float(np.linalg.norm(c - entry.U[i])), entry.normal, k.dataset, dm.train)
    progress(1, 1, "predict")
    return cache.GRIDS.put(key, out)


def prefetch(dataset: str, ms, gamma: float, spacing: float, progress=null_progress) -> None:
    """Selections, distances and coefficient Grams for nearby training sizes, so an M step is quick."""
    import time

    entry = load_entry(dataset, progress)
    for _ in range(PREFETCH_IDLE_STEPS):  # start only after a short pause without any request
        time.sleep(0.1)
        progress(0, len(ms), "prefetch")
    # two passes: first what a picture needs (selection, distances) for every size, then the
    # coefficient Grams (for CV and the statistics), the pass over all 125,000 coefficients
    for k, m in enumerate(ms):
        progress(k, 2 * len(ms), "prefetch")  # stops here if a newer request replaced this one
        distances(entry, selection(entry, int(m)), gamma, spacing)
    for k, m in enumerate(ms):
        progress(len(ms) + k, 2 * len(ms), "prefetch")
        grams(entry, selection(entry, int(m)))


# ------------------------------------------------------------------------------ learning curve
def curve_point(dataset: str, m: int, gamma: float, spacing: float, progress=null_progress,
                cv_rule: str = "min", energy_features: str = "predicted") -> dict:
    """MAE (kcal/mol) of ML-HK, ML-KS and dE_D at training size m, all hyperparameters by CV (``cv_rule``)."""
    key = ("curve", file_key(dataset), int(m), float(gamma), float(spacing), cv_rule, energy_features)

    def build():
        r = fit(FitKnobs(dataset, int(m), gamma, spacing, cv_rule=cv_rule, energy_features=energy_features), progress)
        s = r.summary()
        return {"M": int(m), "mlhk_dE": s["mlhk_dE"][0], "mlks_dE": s["mlks_dE"][0], "mlhk_dED": s["mlhk_dED"][0]}

    return cache.CURVES.get_or_compute(key, build)


def curve_sizes(entry: DataHeader) -> list[int]:
    return [m for m in CURVE_SIZES if m <= min(MAX_M, len(entry.pool))]


# ------------------------------------------------------------------------------ library models
def md_alignment(ds):
    """``(reference, orderings)`` an MD set's frames were ordered and aligned with, or None.

    For the assembled MD sets (``meta["molecule"]``): the force-field minimum of the molecule's test
    trajectory and :func:`~mlhk_viz.reference.forcefield.equivalent_orderings`, so an MD run relabels
    a turned methyl the way the training frames were. None for other sets, or without RDKit (the
    orderings come from its graph matching), or without the trajectory file.
    """
    from ..reference.forcefield import equivalent_orderings
    from ..reference.md import load_trajectory

    mol = ds.meta.get("molecule")
    if mol is None or ds.path is None:
        return None
    path = Path(ds.path).parent / "md" / f"{mol}-test-300K.npz"
    try:
        return load_trajectory(path)["reference"], equivalent_orderings(mol)
    except (ImportError, OSError, ValueError):
        return None


def provenance(k: FitKnobs, progress=null_progress) -> dict:
    """What a saved model file records of its training data: the set's file name and name, and the rows."""
    r = fit(k, progress)
    return {"dataset": Path(k.dataset).name, "name": load_header(k.dataset).name, "m": int(k.m),
            "train": [int(i) for i in r.train]}


def library_model(k: FitKnobs, kind: str, progress=null_progress, align: bool = False):
    """A real ``MLHK``/``MLKS`` fitted by the library with the hyperparameters the app uses.

    Sigmas and lambdas are passed explicitly (the values CV picked, if auto), so the model file
    reproduces exactly what the app shows. ``align=True`` (for MD, where the molecule tumbles) makes
    the model Kabsch-align every geometry onto a reference first, so its energy is invariant to
    rotations: for MD sets the one their frames were aligned to, with the same relabelling of
    equivalent atoms (:func:`md_alignment`), else the first training molecule. The data sets' frames
    are already aligned, so the numbers barely move.
    """
    from ..models import MLHK, MLKS

    r = fit(k, progress)
    entry = load_entry(k.dataset, progress)
    pos, E = entry.ds.positions[r.train], entry.ds.energies[r.train]
    progress(0, 1, "library fit")
    ref, perms = (md_alignment(entry.ds) or (pos[0], None)) if align else (None, None)
    if kind == "ML-KS":
        model = MLKS(k.gamma, k.spacing, sigma=r.ks.sigma, lam=r.ks.lam, reference=ref,
                     permutations=perms, cv_rule=k.cv_rule).fit(pos, E, numbers=entry.ds.numbers)
    else:
        model = MLHK(k.gamma, k.spacing, sigma=r.hk.sigma, lam=r.hk.lam, energy_sigma=r.energy.sigma,
                     energy_lam=r.energy.lam, reference=ref, permutations=perms, cv_rule=k.cv_rule,
                     energy_features=k.energy_features).fit(pos, E, entry.U[r.train], numbers=entry.ds.numbers)
    progress(1, 1, "library fit")
    return model
