"""The ``mlhk-viz`` command: parse, call the library, print."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
REPRODUCIBLE = ("table1", "table2", "fig2", "fig3a", "fig3b")
#: a cube file holds points^3 values as text (13 characters each): 300 points per axis is 0.35 GB
MAX_CUBE_POINTS = 300
#: the paper's protocol; other values are recorded with the results (kept here, not imported, so that
#: ``mlhk-viz --help`` starts without numpy; tests check them against ``mlhk_viz.models``)
DEFAULT_PROTOCOL = {"cv_rule": "min", "energy_features": "predicted"}
ENERGY_FEATURES = ("predicted", "loo", "dft")


def _at_least(low: int, high: int | None = None, why: str = ""):
    """An argparse type: an integer >= ``low`` (a count, a size, an index), and <= ``high`` if given
    (``why`` says what the cap protects), refused with the value it got."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}{why}, got {value}")
        return value
    return parse


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _output_file(path, option: str = "--out") -> Path:
    """``path`` as an output file, refused before any work if it cannot be one (a folder, or in a file)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder, not a file")
    up = next((p for p in path.parents if p.exists()), None)
    if up is not None and not up.is_dir():
        raise ValueError(f"{option} {path}: {up} is a file, not a folder")
    return path


#: what each kind of ``generate`` takes besides the shared options
_GENERATE_TAKES = {"md": {"target", "--temperature", "--kind"}, "pbe": {"target", "set", "--limit"}}


def _options_that_do_not_apply(args) -> list[str]:
    given = {"target": args.target, "set": args.set, "--temperature": args.temperature, "--kind": args.kind,
             "--limit": args.limit}
    takes = _GENERATE_TAKES.get(args.molecule, set())
    return [k for k, v in given.items() if v is not None and k not in takes]


def _cmd_generate(args) -> int:
    from .progress import TqdmProgress
    from .reference import geometries
    from .reference.generate import generate

    extra = _options_that_do_not_apply(args)
    if extra:
        print(f"mlhk-viz generate {args.molecule}: {', '.join(extra)} do(es) not apply here (see mlhk-viz generate -h)",
              file=sys.stderr)
        return 2
    if args.molecule == "md":
        return _cmd_generate_md(args)
    if args.molecule == "pbe":
        return _cmd_generate_pbe(args)
    if args.molecule not in geometries.SETS:
        print(f"mlhk-viz generate: unknown set {args.molecule!r}; choose from {sorted(geometries.SETS)} "
              f"(or md / pbe for the MD molecules)", file=sys.stderr)
        return 2
    numbers, pos = geometries.SETS[args.molecule]()
    out = _output_file(args.out or DATA_DIR / f"{args.molecule}.npz")
    desc = {"h2": "H2 bond-length scan, 150 geometries evenly spaced in [0.5, 1.5] Å (ordered)",
            "h2o": "H2O, 350 geometries: bond lengths 0.97 ± 0.075 Å, angle 104.2 ± 8.59°, uniform random"}
    bar = TqdmProgress()
    generate(args.molecule.upper(), out, numbers, pos, chunk_size=args.chunk_size,
             scheduler=args.scheduler, n_workers=args.workers, ordered=args.molecule == "h2",
             description=desc[args.molecule], progress=bar)
    bar.close()
    return 0


def _cmd_generate_md(args) -> int:
    from .progress import TqdmProgress
    from .reference.md import KINDS, MOLECULES, generate_md

    if args.target not in MOLECULES:
        print(f"mlhk-viz generate md: unknown molecule {args.target!r}; choose from {list(MOLECULES)}", file=sys.stderr)
        return 2
    kind = args.kind or "pool"
    if kind not in KINDS:
        print(f"mlhk-viz generate md: --kind must be one of {list(KINDS)}, got {kind!r}", file=sys.stderr)
        return 2
    bar = TqdmProgress()
    path = generate_md(args.target, args.temperature or 300.0, Path(args.out or DATA_DIR / "md"), kind=kind,
                       progress=bar)
    bar.close()
    print(f"wrote {path}")
    return 0


def _cmd_generate_pbe(args) -> int:
    from .progress import TqdmProgress
    from .reference.generate import generate
    from .reference.md import MOLECULES
    from .reference.md_sets import SETS, finished_elsewhere, frames, set_path

    if args.target not in MOLECULES or args.set not in SETS:
        print(f"mlhk-viz generate pbe: usage MOLECULE SET with MOLECULE in {list(MOLECULES)} and SET in {list(SETS)}",
              file=sys.stderr)
        return 2
    numbers, pos, info = frames(args.target, args.set, DATA_DIR / "md")
    out = _output_file(args.out or set_path(args.target, args.set, DATA_DIR))
    bar = TqdmProgress()
    generate(f"{args.target}-{args.set}", out, numbers, pos, chunk_size=args.chunk_size, scheduler=args.scheduler,
             n_workers=args.workers, ordered=args.set == "trace",
             description=f"PBE for {args.target} MD snapshots, set {args.set} ({info['source']})", progress=bar,
             limit=args.limit, known=finished_elsewhere(args.target, args.set, DATA_DIR, DATA_DIR / "md"))
    bar.close()
    return 0


def _cmd_assemble(args) -> int:
    from .reference.md import MOLECULES
    from .reference.md_sets import assemble

    if args.molecule not in MOLECULES:
        print(f"mlhk-viz assemble: unknown molecule {args.molecule!r}; choose from {list(MOLECULES)}", file=sys.stderr)
        return 2
    out = _output_file(args.out or DATA_DIR / f"{args.molecule}-md.npz")
    ds = assemble(args.molecule, DATA_DIR, DATA_DIR / "md", training=args.training, m=args.m, n_test=args.test)
    ds.save(out)
    r = ds.meta["roles"]
    print(f"wrote {out}: {len(r['pool'])} pool, {len(r['test'])} test, {len(r['trajectory'])} trajectory frames "
          f"({out.stat().st_size / 1e6:.2f} MB)")
    return 0


def _protocol(args) -> dict:
    """The ML-HK protocol options the user set away from the paper's (``DEFAULT_PROTOCOL``)."""
    return {k: getattr(args, k) for k, paper in DEFAULT_PROTOCOL.items() if getattr(args, k) != paper}


def _cmd_reproduce(args) -> int:
    from .progress import TqdmProgress

    if args.what not in REPRODUCIBLE:
        print(f"mlhk-viz reproduce: unknown target {args.what!r}; choose from {', '.join(REPRODUCIBLE)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: is a file; reproduce writes its files into a folder")
    made = not out.exists()
    bar = TqdmProgress()
    try:
        status = _reproduce(args, out, bar)
    except BaseException:
        if made and out.is_dir() and not any(out.iterdir()):  # a failed run leaves no empty folder behind
            out.rmdir()
        raise
    bar.close()
    return status


def _reproduce(args, out: Path, bar) -> int:
    from .reproduce import figures, table1, table2

    data_dir = Path(args.data_dir)
    md_dir = Path(args.md_dir) if args.md_dir else data_dir / "md"
    if args.what == "table1":
        table1.run(out, data_dir=data_dir, curve_max=args.curve_max, progress=bar, log=print)
    elif args.what == "table2":
        molecules = tuple(args.molecules.split(",")) if args.molecules else table2.MOLECULES
        trainings = tuple(args.trainings.split(",")) if args.trainings else tuple(table2.TRAININGS)
        table2.run(out, data_dir, md_dir, m=args.m, molecules=molecules, params=_protocol(args) or None,
                   progress=bar, log=print, trainings=trainings)
    elif args.what == "fig2":
        chosen = {"molecules": tuple(args.molecules.split(","))} if args.molecules else {}
        figures.fig2(out, data_dir, md_dir, m=args.m, progress=bar, log=print, **chosen)
    elif args.what == "fig3b":
        mol = args.molecules or "malonaldehyde"
        if mol not in table2.MOLECULES:
            print(f"mlhk-viz reproduce fig3b: --molecules takes one of {', '.join(table2.MOLECULES)}, got {mol!r}",
                  file=sys.stderr)
            return 2
        params = {k: v for k, v in (("lam", args.lam), ("energy_lam", args.energy_lam)) if v is not None}
        params.update(_protocol(args))
        for e in args.extra or ():
            if not Path(e).is_file():
                print(f"mlhk-viz reproduce fig3b: --extra {e}: no such file", file=sys.stderr)
                return 2
        figures.fig3b(out, data_dir, md_dir, m=args.m, forces=args.forces, molecule=mol, params=params,
                      seed=args.seed, extra=args.extra, overwrite=args.overwrite, progress=bar, log=print)
    else:
        getattr(figures, args.what)(out, data_dir, md_dir, m=args.m, progress=bar, log=print)
    return 0


def _cmd_info(args) -> int:
    from .datasets import Dataset
    from .reference.generate import unfinished

    partial = [] if Path(args.path).is_file() else unfinished(args.path)
    for u in partial:  # a set still being generated: say how far it got instead of "no such file"
        print(f"{u['name']}: not finished: {u['done']} of {u['n']} geometries computed ({u['chunks']} chunks in "
              f"{u['folder']}); the `mlhk-viz generate` command that started it continues it")
    if partial:
        return 0
    if _model_info(args.path):
        return 0
    ds = Dataset.load(args.path)
    m = ds.meta
    print(f"{ds.name}: {len(ds)} molecules of {ds.n_atoms} atoms ({ds.n_electrons} valence electrons)")
    print(f"  densities: {ds.density_store}; box {m.get('box_bohr')} bohr, {m.get('basis_per_axis')} per axis")
    print(f"  method: {m.get('method')}")
    print(f"  energies: {ds.energies.min():.6f} .. {ds.energies.max():.6f} Hartree; "
          f"converged {int(ds.converged.sum())}/{len(ds)}")
    print(f"  truncation error (rel. L1): mean {float(ds.truncation_error.mean()):.4f}")
    return 0


def _model_info(path) -> bool:
    """Describe a model file (kind, M, atoms, hyperparameters, training data) if ``path`` is one."""
    import numpy as np
    from ase.formula import Formula
    from ase.symbols import Symbols

    from .datasets import DatasetError, open_npz
    from .models import MODEL_FORMAT, read_model_meta

    try:
        meta, numbers, m = read_model_meta(path)
    except DatasetError:
        return False  # not a model file: the data-set reader says what it is
    p = meta.get("params", {})
    formula = Formula(str(Symbols(numbers))).format("hill")
    print(f"{meta.get('kind')} model (format version {meta.get('version')}): M = {m} training molecules of "
          f"{formula} ({len(numbers)} atoms)")
    print(f"  descriptor: gamma {p.get('gamma')} Å, spacing {p.get('spacing')} Å")

    def span(v):
        v = np.atleast_1d(v)
        return f"{v[0]:.3g}" if np.all(v == v[0]) else f"{v.min():.3g} .. {v.max():.3g} (per coefficient)"

    with open_npz(path, MODEL_FORMAT, what="model file") as (z, _):
        stages = {s: (z[f"{s}/sigma"], z[f"{s}/lam"]) for s in ("density", "energy") if f"{s}/sigma" in z}
    for stage, (sigma, lam) in stages.items():
        print(f"  {stage} KRR: sigma {span(sigma)}, lambda {span(lam)}")
    prov = meta.get("provenance") or {}
    if meta.get("densities") == "by-reference":
        print(f"  training densities: by reference to {prov.get('dataset', '?')} (refitted from it on load)")
    if prov:
        rows = prov.get("train", [])
        print(f"  trained on: {prov.get('name', '?')} ({prov.get('dataset', '?')}), {len(rows)} rows")
    else:
        print("  trained on: not recorded in the file")
    return True


def _cmd_cube(args) -> int:
    import numpy as np

    from .datasets import Dataset, write_cube

    out = _output_file(args.out, "OUT")
    if out.exists() and out.resolve() == Path(args.dataset).resolve():
        raise ValueError(f"OUT {out}: is the data set itself; give another file name")
    if out.exists() and out.suffix.lower() not in (".cube", ".cub"):
        raise ValueError(f"OUT {out}: exists and is not a .cube file; not overwritten")
    ds = Dataset.load(args.dataset)
    if args.index >= len(ds):
        raise ValueError(f"{args.dataset}: no molecule {args.index}; the set has {len(ds)} (0 to {len(ds) - 1})")
    c = ds.coefficients(rows=[args.index])[0]
    b = ds.basis
    ax = b.grid_axis(args.points)
    rho = b.to_grid(c, args.points)
    write_cube(args.out, rho, (ax, ax, ax), ds.numbers, ds.positions[args.index])
    on_grid, exact = float(np.sum(rho) * (b.box / args.points) ** 3), float(b.electron_count(c))
    print(f"wrote {args.out}: DFT density of molecule {args.index}, {args.points}^3 grid, {on_grid:.6f} electrons")
    if abs(on_grid - exact) > 1e-3 * exact:  # below about 40 points the grid no longer samples the density
        print(f"note: the density holds {exact:.6f} electrons; {args.points} points per axis are too few to integrate "
              f"it (use --points 40 or more)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mlhk-viz", description="ML-HK densities and energies: data, models, figures")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="compute PBE reference data (resumable, Dask-parallel)")
    g.add_argument("molecule", help="h2, h2o, md (classical MD snapshots) or pbe (PBE for an MD set)")
    g.add_argument("target", nargs="?", help="with md/pbe: benzene, ethane or malonaldehyde")
    g.add_argument("set", nargs="?", help="with pbe: test, train300, train300+350, train300+400 or trace")
    g.add_argument("--temperature", type=_positive_float, help="with md: temperature in K (default 300)")
    g.add_argument("--kind", help="with md: pool, test or trace (default pool)")
    g.add_argument("--out", help="output file (default data/<molecule>.npz)")
    g.add_argument("--scheduler", help="address of an existing Dask scheduler (default: a local cluster)")
    g.add_argument("--workers", type=_at_least(1), default=2, help="local single-threaded workers (default 2)")
    g.add_argument("--chunk-size", type=_at_least(1), default=10, help="geometries per resumable chunk")
    g.add_argument("--limit", type=_at_least(1), help="with pbe: compute only the first LIMIT geometries of the set "
                   "(any prefix of a training set is itself spread out; rerun to extend)")
    g.set_defaults(func=_cmd_generate)

    r = sub.add_parser("reproduce", help="reproduce a table or figure of the paper")
    r.add_argument("what", help=", ".join(REPRODUCIBLE))
    r.add_argument("--out", required=True, help="output folder")
    r.add_argument("--data-dir", default=str(DATA_DIR), help="folder with the data sets (h2.npz, h2o.npz, MD sets)")
    r.add_argument("--md-dir", help="folder with the classical trajectories (default DATA_DIR/md)")
    r.add_argument("--curve-max", type=_at_least(2), default=100, help="table1: largest M of the learning curve")
    r.add_argument("--m", type=_at_least(2), help="table2/figures: cap on the training size (default: all PBE frames that exist)")
    r.add_argument("--molecules", help="table2: comma-separated subset of benzene,ethane,malonaldehyde; "
                                       "fig2: the same (default benzene,ethane, the paper's); "
                                       "fig3b: the one molecule to run (default malonaldehyde, the paper's)")
    r.add_argument("--trainings", help="table2: comma-separated subset of 300,300+350,300+400 (the pools to "
                                       "recompute; rows of the others already in --out are kept)")
    r.add_argument("--forces", default="fd", choices=("fd", "analytic"),
                   help="fig3b: central finite differences of the ML energy (the paper's, default) or the exact gradient")
    r.add_argument("--seed", type=_at_least(0), default=0, help="fig3b: the Langevin run's random seed (default 0)")
    r.add_argument("--extra", nargs="+", metavar="FILE",
                   help="fig3b: data sets of more PBE frames of the molecule to train on beside the pool, "
                        "e.g. earlier runs' fig3b-pbe.npz (active learning, beyond the paper's protocol)")
    r.add_argument("--overwrite", action="store_true",
                   help="fig3b: replace a run of another model or protocol in --out (its trajectory and PBE single points)")
    r.add_argument("--lam", type=_positive_float, help="fig3b: fix the density model's ridge λ (default: LOO CV)")
    r.add_argument("--energy-lam", type=_positive_float,
                   help="fig3b: fix the energy functional's ridge λ (default: LOO CV); σ stays chosen by CV")
    r.add_argument("--cv-rule", default="min", choices=("min", "1se"),
                   help="table2/fig3b: ML-HK hyperparameters with the lowest LOO error (the paper's, default) or by "
                        "the one-standard-error rule (the smoothest within one standard error of it)")
    r.add_argument("--energy-features", default="predicted", choices=ENERGY_FEATURES,
                   help="table2/fig3b: train the energy functional on the density model's in-sample predictions (the "
                        "paper's, default), on its exact leave-one-out predictions (beyond the paper), or on the DFT densities")
    r.set_defaults(func=_cmd_reproduce)

    a = sub.add_parser("assemble", help="one data set of an MD molecule's PBE frames (pool, test, trace) for the app")
    a.add_argument("molecule", help="benzene, ethane or malonaldehyde")
    a.add_argument("--training", help="train300, train300+350 or train300+400 (default: the one with most frames)")
    a.add_argument("--m", type=_at_least(1), help="cap on the training-pool frames")
    a.add_argument("--test", type=_at_least(1), help="cap on the test frames (the first ones; default all)")
    a.add_argument("--out", help="output file (default data/<molecule>-md.npz)")
    a.set_defaults(func=_cmd_assemble)

    i = sub.add_parser("info", help="describe a data-set or model file")
    i.add_argument("path")
    i.set_defaults(func=_cmd_info)

    c = sub.add_parser("cube", help="write a DFT density of a data set as a Gaussian cube file")
    c.add_argument("dataset")
    c.add_argument("index", type=_at_least(0))
    c.add_argument("out")
    c.add_argument("--points", type=_at_least(2, MAX_CUBE_POINTS, f" ({MAX_CUBE_POINTS}^3 values make a 0.35 GB text file)"),
                   default=80, help=f"grid points per axis (2 to {MAX_CUBE_POINTS})")
    c.set_defaults(func=_cmd_cube)
    return p


def main(argv=None) -> int:
    from .datasets import DatasetError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DatasetError, ValueError) as exc:
        print(f"mlhk-viz {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`mlhk-viz info f | head -1`): stop quietly, as cat does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail
        return 141
    except OSError as exc:  # a file or folder the system refused (permissions, a full disk, a folder in the way)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"mlhk-viz {args.command}: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
