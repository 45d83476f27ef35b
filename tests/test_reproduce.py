import json
from pathlib import Path

import pytest

from mlhk_viz.cli import main
from mlhk_viz.reproduce.paper import TABLE1


@pytest.mark.slow
def test_reproduce_table1_cli_end_to_end(tmp_path, capsys, h2):
    from mlhk_viz.evaluation import evaluate, select_training, split

    assert main(["reproduce", "table1", "--out", str(tmp_path), "--curve-max", "10"]) == 0
    rows = json.loads((tmp_path / "table1.json").read_text())
    keys = {(r["molecule"], r["M"], r["quantity"]) for r in rows}
    # every cell of the paper's table is there, and nothing else
    assert keys == {(mol, m, q) for (mol, m), cells in TABLE1.items() for q in cells}
    by = {(r["molecule"], r["M"], r["quantity"]): r for r in rows}
    # the file's H2 row at M = 10 is the library's protocol (test_models checks its accuracy)
    test, pool = split(h2, 50, seed=0)
    lib = evaluate(h2, select_training(h2, pool, 10, seed=0), test).summary()
    for q in TABLE1[("H2", 10)]:
        assert (by[("H2", 10, q)]["mae"], by[("H2", 10, q)]["max"]) == pytest.approx(lib[q], rel=1e-9)
    assert all(r["max"] >= r["mae"] >= 0 for r in rows)
    md = (tmp_path / "table1.md").read_text()
    assert "| H2O | 20 |" in md and "(0.0091)" in md
    assert "table1.md" in capsys.readouterr().out


def test_cli_reports_bad_input_without_traceback(tmp_path, capsys):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a zip")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "x.npz" in err and "truncated or corrupt" in err and "Traceback" not in err
    assert main(["reproduce", "fig3b", "--out", str(tmp_path / "o"), "--molecules", "water"]) == 2
    err = capsys.readouterr().err
    assert "one of benzene, ethane, malonaldehyde, got 'water'" in err and not (tmp_path / "o").exists()
    # numbers out of range are refused by the parser (exit 2), naming the option, the rule and the value
    for args, said in (
            (["reproduce", "fig3b", "--energy-lam=-1e-4"], "argument --energy-lam: must be a positive finite number, got -1e-4"),
            (["reproduce", "fig3b", "--lam", "nan"], "argument --lam: must be a positive finite number, got nan"),
            (["reproduce", "fig3b", "--seed=-1"], "argument --seed: must be at least 0, got -1"),
            (["reproduce", "table2", "--m=-5"], "argument --m: must be at least 2, got -5"),
            (["reproduce", "fig2", "--m", "two"], "argument --m: 'two' is not a whole number"),
            (["generate", "pbe", "ethane", "test", "--workers", "0"], "argument --workers: must be at least 1, got 0"),
            (["generate", "md", "ethane", "--temperature=-3"], "argument --temperature: must be a positive finite number"),
            (["cube", str(bad), "-1", str(tmp_path / "c.cube")], "argument index: must be at least 0, got -1"),
            (["cube", str(bad), "0", str(tmp_path / "c.cube"), "--points", "100000"],
             "argument --points: must be at most 300 (300^3 values make a 0.35 GB text file), got 100000")):
        with pytest.raises(SystemExit) as exc:
            main(args + (["--out", str(tmp_path / "o")] if args[0] == "reproduce" else []))
        err = capsys.readouterr().err
        assert exc.value.code == 2 and said in err and not (tmp_path / "o").exists(), (args, err)
    # the library refuses the same caps when called directly (the app and scripts do not go through the parser)
    from mlhk_viz.reproduce import figures, table2
    with pytest.raises(ValueError, match="at least 2 frames, got 0"):
        table2.run(tmp_path / "o", tmp_path, tmp_path, m=0)
    with pytest.raises(ValueError, match="at least 2 frames, got -5"):
        figures.training_set("ethane", tmp_path, tmp_path, m=-5)
    assert not (tmp_path / "o").exists()
    # an index past the end of a data set names the set and its size
    h2 = Path(__file__).resolve().parent.parent / "data" / "h2.npz"
    assert main(["cube", str(h2), "150", str(tmp_path / "c.cube")]) == 1
    assert "h2.npz: no molecule 150; the set has 150 (0 to 149)" in capsys.readouterr().err
    assert not (tmp_path / "c.cube").exists()
    # outputs that cannot be written, or would destroy a file, are refused before any work, naming the path
    copy = tmp_path / "h2copy.npz"
    copy.write_bytes(h2.read_bytes())
    (tmp_path / "adir.npz").mkdir()
    for args, said in ((["cube", str(copy), "0", str(copy)], "h2copy.npz: is the data set itself"),
                       (["cube", str(h2), "0", str(copy)], "h2copy.npz: exists and is not a .cube file; not overwritten"),
                       (["cube", str(h2), "0", str(tmp_path / "adir.npz")], "adir.npz: is a folder, not a file"),
                       (["cube", str(h2), "0", str(copy / "c.cube")], "h2copy.npz is a file, not a folder"),
                       (["info", str(tmp_path / "adir.npz")], "adir.npz: is a folder, not a .npz file"),
                       (["reproduce", "table2", "--out", str(copy)], "is a file; reproduce writes its files into a folder"),
                       (["generate", "h2", "--out", str(tmp_path / "adir.npz")], "adir.npz: is a folder, not a file"),
                       (["assemble", "ethane", "--out", str(tmp_path / "adir.npz")], "adir.npz: is a folder, not a file")):
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, (args, err)
    assert copy.read_bytes() == h2.read_bytes()
    assert not list(tmp_path.glob("adir.npz.parts-*"))
    # options of one kind of generate given to another are refused, not ignored
    for args, said in ((["generate", "h2", "--limit", "3"], "mlhk-viz generate h2: --limit do(es) not apply here"),
                       (["generate", "h2o", "ethane"], "mlhk-viz generate h2o: target do(es) not apply here"),
                       (["generate", "pbe", "ethane", "test", "--temperature", "350"], "--temperature do(es) not apply"),
                       (["generate", "md", "ethane", "--limit", "5"], "mlhk-viz generate md: --limit do(es) not apply")):
        assert main(args) == 2, args
        assert said in capsys.readouterr().err, args
    # a run that fails leaves no empty output folder behind (here: no PBE data in the data folder)
    assert main(["reproduce", "fig2", "--out", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "adir.npz")]) == 1
    assert "no such file" in capsys.readouterr().err and not (tmp_path / "empty").exists()
    # a cube too coarse to integrate the density says so; a fine one does not, and reads back
    from mlhk_viz.datasets import read_cube
    assert main(["cube", str(h2), "3", str(tmp_path / "coarse.cube"), "--points", "8"]) == 0
    assert "points per axis are too few to integrate it" in capsys.readouterr().out
    assert main(["cube", str(h2), "3", str(tmp_path / "fine.cube"), "--points", "48"]) == 0
    out = capsys.readouterr().out
    assert "2.000000 electrons" in out and "too few" not in out, out
    data, axes, atoms = read_cube(tmp_path / "fine.cube")
    assert data.shape == (48, 48, 48) and len(atoms) == 2
    # a write the system refuses is one line, not a traceback
    assert main(["cube", str(h2), "0", "/proc/no/c.cube", "--points", "8"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mlhk-viz cube: error: ") and "Traceback" not in err, err
    assert main(["reproduce", "fig3b", "--out", str(tmp_path / "o"), "--extra", str(tmp_path / "gone.npz")]) == 2
    err = capsys.readouterr().err
    assert "--extra" in err and "gone.npz: no such file" in err and not (tmp_path / "o").exists()
    # frames of another molecule: the atoms as plain numbers (not "np.int64(1)")
    assert main(["reproduce", "fig3b", "--out", str(tmp_path / "o"), "--extra", str(h2)]) == 1
    assert "atoms [1, 1] are not malonaldehyde's [8, 6, 6, 6, 8, 1, 1, 1, 1] in" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    there = tmp_path / "there.npz"
    there.write_bytes(b"x")
    assert main(["reproduce", "fig3b", "--out", str(tmp_path / "o"), "--extra", str(there), str(tmp_path / "gone2.npz")]) == 2
    err = capsys.readouterr().err
    assert "gone2.npz: no such file" in err and "there.npz" not in err and not (tmp_path / "o").exists()
    kept = tmp_path / "done" / "fig3b-pbe.npz"  # an earlier run's single points are not overwritten by their own use
    kept.parent.mkdir()
    kept.write_bytes(b"earlier results")
    assert main(["reproduce", "fig3b", "--out", str(kept.parent), "--extra", str(there), str(kept)]) == 1
    assert "give the new run another --out folder" in capsys.readouterr().err and kept.read_bytes() == b"earlier results"
    # a folder holding another run (here: seed 0) is refused at once, naming the difference, and left as it was
    import numpy as np

    from mlhk_viz.datasets import save_npz
    earlier = tmp_path / "earlier" / "fig3b-trajectory.npz"
    earlier.parent.mkdir()
    key = {"molecule": "malonaldehyde", "duration_fs": 1000.0, "every_fs": 5.0, "seed": 0, "forces": "fd",
           "fixed": [], "cv_rule": "min"}
    save_npz(earlier, {"times_fs": np.zeros(1)}, {"format": "mlhk-viz-mlhk-md", "version": 1, "key": key})
    before = earlier.read_bytes()
    assert main(["reproduce", "fig3b", "--out", str(earlier.parent), "--seed", "3"]) == 1
    err = capsys.readouterr().err
    assert "differs in seed" in err and "--overwrite" in err and earlier.read_bytes() == before
    # the energy functional's training densities are part of the protocol (recorded only when not the paper's)
    assert main(["reproduce", "fig3b", "--out", str(earlier.parent), "--energy-features", "loo"]) == 1
    err = capsys.readouterr().err
    assert "differs in energy_features" in err and "fixed" not in err and earlier.read_bytes() == before


def test_cli_stops_quietly_when_its_reader_goes_away():
    """``mlhk-viz info FILE | head -1``: the pipe closes before the output is written; no traceback."""
    import subprocess
    import sys

    h2 = Path(__file__).resolve().parent.parent / "data" / "h2.npz"
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from mlhk_viz.cli import main; sys.exit(main())",
                             "info", str(h2)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the first line: importing numpy and reading the file take far longer
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141 and err == "", err


def test_fit_models_fixed_hyperparameters_are_used_and_the_rest_cross_validated():
    """fig3b's ``params``: a fixed λ is the one fitted; σ is still LOO-chosen from the grid, and the
    model equals an explicit MLHK fit with that (σ, λ) on the same frames."""
    import numpy as np

    from mlhk_viz.models import MLHK
    from mlhk_viz.reproduce import figures

    root = Path(__file__).resolve().parent.parent
    data, md = root / "data", root / "data" / "md"
    free = figures.fit_models("ethane", data, md, m=15, kinds=("mlhk",))["mlhk"]
    fixed = figures.fit_models("ethane", data, md, m=15, kinds=("mlhk",), params={"energy_lam": 1e-3})["mlhk"]
    assert fixed.energy_hyper_.lam == 1e-3 and free.energy_hyper_.lam != 1e-3
    assert fixed.energy_hyper_.cv is not None and fixed.energy_hyper_.sigma in fixed.energy_hyper_.cv.sigmas
    label, ds, idx = figures.training_set("ethane", data, md, 15)
    explicit = MLHK(reference=fixed.reference, permutations=fixed.permutations, sigma=fixed.density_hyper_.sigma,
                    lam=fixed.density_hyper_.lam, energy_sigma=fixed.energy_hyper_.sigma, energy_lam=1e-3).fit(
        ds.positions[idx], ds.energies[idx], ds.coefficients(rows=idx), numbers=ds.numbers)
    x = ds.positions[idx][:3] + 0.01
    np.testing.assert_allclose(fixed.predict(x), explicit.predict(x), rtol=0, atol=1e-9)
    assert np.abs(fixed.predict(x) - free.predict(x)).max() > 1e-9


def test_fit_models_extra_frames_are_appended_to_the_pool():
    """``extra`` (e.g. PBE single points on an ML-HK trajectory): the model equals an explicit fit on the pool's
    first M frames followed by the extra set's converged frames; other atoms or another method are refused."""
    import numpy as np

    from mlhk_viz.datasets import Dataset
    from mlhk_viz.models import MLHK
    from mlhk_viz.reproduce import figures

    root = Path(__file__).resolve().parent.parent
    data, md = root / "data", root / "data" / "md"
    test = Dataset.load(data / "ethane-test.npz")
    extra = test.subset(np.arange(4))
    extra.converged[1] = False  # an unconverged frame is not learned from
    params = {"sigma": 300.0, "lam": 1e-8, "energy_sigma": 1.0, "energy_lam": 1e-6}
    got = figures.fit_models("ethane", data, md, m=10, kinds=("mlhk",), params=params, extra=extra)
    assert (got["M"], got["extra"]) == (10, 3)
    _, ds, idx = figures.training_set("ethane", data, md, 10)
    keep = [0, 2, 3]
    explicit = MLHK(reference=got["mlhk"].reference, permutations=got["mlhk"].permutations, **params).fit(
        np.concatenate([ds.positions[idx], extra.positions[keep]]), np.concatenate([ds.energies[idx], extra.energies[keep]]),
        np.concatenate([ds.coefficients(rows=idx), test.coefficients(rows=keep)]), numbers=ds.numbers)
    x = test.positions[10:14]
    np.testing.assert_allclose(got["mlhk"].predict(x), explicit.predict(x), rtol=0, atol=1e-10)
    without = figures.fit_models("ethane", data, md, m=10, kinds=("mlhk",), params=params)["mlhk"]
    assert np.abs(without.predict(x) - got["mlhk"].predict(x)).max() > 1e-6
    other = Dataset.load(data / "h2o.npz").subset(np.arange(2))
    with pytest.raises(ValueError, match="extra frames 'H2O': atoms"):
        figures.fit_models("ethane", data, md, m=10, kinds=("mlhk",), params=params, extra=other)
    # several sets: appended in order; a bad one among them is named
    more = test.subset(np.arange(4, 6))
    two = figures.fit_models("ethane", data, md, m=10, kinds=("mlhk",), params=params, extra=[extra, more])
    assert two["extra"] == 5
    explicit2 = MLHK(reference=got["mlhk"].reference, permutations=got["mlhk"].permutations, **params).fit(
        np.concatenate([ds.positions[idx], extra.positions[keep], more.positions]),
        np.concatenate([ds.energies[idx], extra.energies[keep], more.energies]),
        np.concatenate([ds.coefficients(rows=idx), test.coefficients(rows=keep + [4, 5])]), numbers=ds.numbers)
    np.testing.assert_allclose(two["mlhk"].predict(x), explicit2.predict(x), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="extra frames 'H2O': atoms"):
        figures.fit_models("ethane", data, md, m=10, kinds=("mlhk",), params=params, extra=[extra, other])
    extra.meta["method"] = dict(extra.meta["method"], functional="B3LYP")
    with pytest.raises(ValueError, match="method .*B3LYP.* differs from the training set's"):
        figures.fit_models("ethane", data, md, m=10, kinds=("mlhk",), params=params, extra=extra)


def test_fig3b_run_keys_match_floats_to_the_last_bits_only():
    """A refit on another numpy/BLAS build reproduces a CV-chosen σ to the last bits: the saved run is still
    reused; real differences, other lists and missing entries are named."""
    from mlhk_viz.reproduce.figures import key_differences

    saved = {"seed": 1, "sigma": 304.4121148458957, "extra_sha256": ["a", "b"], "fixed": ["lam"], "lam": 1e-8}
    assert key_differences(saved, dict(saved, sigma=304.4121148458957 * (1 + 3e-15))) == []
    assert key_differences(saved, dict(saved, sigma=304.5, seed=2)) == ["seed", "sigma"]
    assert key_differences(saved, dict(saved, extra_sha256=["a", "c"])) == ["extra_sha256"]
    assert key_differences(saved, dict(saved, extra_sha256="a")) == ["extra_sha256"]
    new = {k: v for k, v in saved.items() if k != "lam"}
    assert key_differences(saved, new) == ["lam"] and key_differences(saved, new, only={"seed", "fixed"}) == []
    assert key_differences({"seed": 1}, {"seed": 1.0}) == [] and key_differences({"x": "a"}, {"x": 1.0}) == ["x"]
    assert key_differences({"seed": 1}, {"seed": 1}, only={"seed", "extra_sha256"}) == []  # absent from both


def test_power_law_fit_recovers_an_exact_power_law():
    import numpy as np

    from mlhk_viz.reproduce.table2 import power_law
    ms = np.array([10, 20, 50, 100])
    f = power_law(ms, 3.0 * ms ** -0.6, from_m=100)
    assert f["b"] == pytest.approx(0.6) and f["a"] == pytest.approx(3.0)
    assert f["mae_at_2000"] == pytest.approx(3.0 * 2000 ** -0.6) and f["why_not"] is None
    assert power_law([10], [1.0]) is None
    rising = power_law(ms, 0.1 * ms ** 0.2, from_m=100)  # noise on a plateau: no extrapolation
    assert rising["b"] == pytest.approx(-0.2) and rising["mae_at_2000"] is None and rising["why_not"] == "not decreasing"
    # a curve that ends before the power-law range of the measured curves (M = 500) is fitted, not extrapolated
    early = power_law(ms, 3.0 * ms ** -0.6)
    assert early["b"] == pytest.approx(0.6) and early["mae_at_2000"] is None
    assert early["why_not"] == "curve ends at M = 100 < 500"


@pytest.mark.slow
def test_reproduce_table2_on_a_small_subset_end_to_end(tmp_path, capsys):
    """The committed ethane PBE chunks (test and train300 prefixes), M capped at 12."""
    import numpy as np

    from mlhk_viz.evaluation import KCAL_PER_HARTREE
    from mlhk_viz.models import MLHK
    from mlhk_viz.reproduce.table2 import density_l1, load_sets

    root = Path(__file__).resolve().parent.parent
    test, trains = load_sets("ethane", root / "data", root / "data" / "md")
    if test is None or "300" not in trains:
        pytest.fail("the committed ethane PBE chunks (data/ethane-*.parts-*) are missing")
    assert main(["reproduce", "table2", "--out", str(tmp_path), "--molecules", "ethane", "--m", "12"]) == 0
    rows = json.loads((tmp_path / "table2.json").read_text())
    assert {(r["molecule"], r["training"], r["quantity"]) for r in rows} >= {("ethane", "300", "mlhk_dE"),
                                                                             ("ethane", "300", "mlhk_dED")}
    by = {(r["training"], r["quantity"]): r for r in rows}
    r = by[("300", "mlhk_dE")]
    assert r["M"] == 12 and r["n_test"] == int(test.converged.sum())
    # the same model refitted with the hyperparameters CV chose, scored through predict() (a different
    # code path from the error decomposition the table uses) gives the same errors
    tr = trains["300"]
    idx = np.flatnonzero(tr.converged)[:12]
    U = tr.coefficients(rows=idx)
    cv = MLHK().fit(tr.positions[idx], tr.energies[idx], U, numbers=tr.numbers)
    fixed = MLHK(sigma=cv.density_hyper_.sigma, lam=cv.density_hyper_.lam, energy_sigma=cv.energy_hyper_.sigma,
                 energy_lam=cv.energy_hyper_.lam).fit(tr.positions[idx], tr.energies[idx], U, numbers=tr.numbers)
    te = np.flatnonzero(test.converged)
    err = np.abs(fixed.predict(test.positions[te]) - test.energies[te]) * KCAL_PER_HARTREE
    assert r["mae"] == pytest.approx(err.mean(), rel=1e-6) and r["max"] == pytest.approx(err.max(), rel=1e-6)
    # density error against an independent evaluation on another grid (point values of the series)
    dens = json.loads((tmp_path / "density_error.json").read_text())[0]
    ax = np.linspace(-10.0, 10.0, 81)[:-1] + 0.125
    pred = fixed.basis.evaluate(fixed.predict_coefficients(test.positions[te[:3]]), ax, ax, ax)
    dft = fixed.basis.evaluate(test.coefficients(rows=te[:3]), ax, ax, ax)
    l1 = np.abs(pred - dft).sum(axis=(1, 2, 3)) / np.abs(dft).sum(axis=(1, 2, 3))
    curve = json.loads((tmp_path / "table2_curve.json").read_text())[0]
    assert [p["M"] for p in curve["points"]] == [10, 12]
    assert 0 < dens["density_l1_mean"] < 0.2 and dens["truncation_error_mean"] > 0
    np.testing.assert_allclose(l1, density_l1(fixed, test.positions[te[:3]], test.coefficients(rows=te[:3])), rtol=0.05)
    from PIL import Image

    with Image.open(tmp_path / "table2_curve.png") as im:  # one panel (ethane) of the learning-curve figure
        assert im.format == "PNG" and im.size[0] >= 400 and im.size[1] >= 300
    md = (tmp_path / "table2.md").read_text()
    assert "| ethane | 300 K | 12 |" in md and "GPWNO 3.67" in md and "(0.2)" in md
    # each test frame's signed errors: the row's MAE and max, ΔE = ΔE_F + ΔE_D, predict()'s energies
    import csv

    with open(tmp_path / "table2_errors-ethane.csv", newline="") as fh:
        recs = [rec for rec in csv.DictReader(fh) if rec["training"] == "300" and rec["M"] == "12"]
    f300 = {k: np.array([float(rec[k]) for rec in recs]) for k in recs[0] if k != "training"}
    assert len(recs) == r["n_test"]
    assert np.abs(f300["dE_kcal_per_mol"]).mean() == pytest.approx(r["mae"], abs=1e-5)
    assert np.abs(f300["dE_D_kcal_per_mol"]).max() == pytest.approx(by[("300", "mlhk_dED")]["max"], abs=1e-5)
    np.testing.assert_allclose(f300["dE_kcal_per_mol"], f300["dE_F_kcal_per_mol"] + f300["dE_D_kcal_per_mol"],
                               atol=3e-6)
    te_frames = np.asarray(test.meta.get("frames", np.arange(len(test))))[te]
    np.testing.assert_array_equal(f300["test_frame"], te_frames)
    signed = (fixed.predict(test.positions[te]) - test.energies[te]) * KCAL_PER_HARTREE
    np.testing.assert_allclose(f300["dE_kcal_per_mol"], signed, atol=1e-5)


def test_table2_for_one_molecule_updates_its_rows_and_keeps_the_others(tmp_path, capsys, monkeypatch):
    """A run of one molecule into a folder holding the table replaces that molecule's rows only."""
    import numpy as np

    from mlhk_viz.reproduce import table2

    # the density error is checked against an independent grid in the end-to-end test above; here
    # only the bookkeeping matters, and the 96³ grid would dominate the run time
    monkeypatch.setattr(table2, "density_l1", lambda model, pos, U: np.full(len(pos), 0.01))

    root = Path(__file__).resolve().parent.parent
    data, md = root / "data", root / "data" / "md"
    quiet = lambda *a: None  # noqa: E731
    table2.run(tmp_path / "eth", data, md, m=12, molecules=("ethane",), curve=False, log=quiet)
    table2.run(tmp_path / "benz", data, md, m=12, molecules=("benzene",), curve=False, log=quiet)
    both = tmp_path / "both"
    table2.run(both, data, md, m=10, molecules=("ethane",), curve=False, log=quiet)  # an older, smaller ethane
    table2.run(both, data, md, m=12, molecules=("benzene",), curve=False, log=quiet)
    # one pool of a molecule recomputed: its rows and per-frame lines change, the other pools' stay as they were
    at10 = {n: json.loads((both / n).read_text()) for n in ("table2.json", "table2_curve.json", "density_error.json")}
    csv10 = (both / "table2_errors-ethane.csv").read_text().splitlines()
    table2.run(both, data, md, m=12, molecules=("ethane",), curve=False, log=quiet, trainings=("300+350",))
    for name, before in at10.items():
        now = json.loads((both / name).read_text())
        assert [e for e in now if e.get("training") != "300+350" or e["molecule"] != "ethane"] == \
            [e for e in before if e.get("training") != "300+350" or e["molecule"] != "ethane"], name
        m_of = lambda e: e["M"] if "M" in e else e["points"][-1]["M"]  # noqa: E731 (curves hold points)
        assert {m_of(e) for e in now if (e["molecule"], e["training"]) == ("ethane", "300+350")} == {12}, name
        assert len(now) == len(before), name
    csv = (both / "table2_errors-ethane.csv").read_text().splitlines()
    assert csv[0] == csv10[0] and len(csv) == len(csv10)
    assert [ln for ln in csv if not ln.startswith("300+350,")] == [ln for ln in csv10 if not ln.startswith("300+350,")]
    assert [ln.split(",")[0] for ln in csv[1:]] == [ln.split(",")[0] for ln in csv10[1:]], "pools in the table's order"
    assert {ln.split(",")[1] for ln in csv[1:] if ln.startswith("300+350,")} == {"12"}
    with pytest.raises(ValueError, match="trainings must be among 300, 300\\+350, 300\\+400; got 350"):
        table2.run(both, data, md, m=12, molecules=("ethane",), log=quiet, trainings=("350",))
    table2.run(both, data, md, m=12, molecules=("ethane",), curve=False, log=quiet)  # ethane updated, benzene kept
    for name in ("table2.json", "table2_curve.json", "density_error.json"):
        merged = json.loads((both / name).read_text())
        alone = json.loads((tmp_path / "benz" / name).read_text()) + json.loads((tmp_path / "eth" / name).read_text())
        assert merged == alone, name  # benzene first (the paper's order), then ethane at M = 12
    for mol in ("benzene", "ethane"):
        alone = tmp_path / ("benz" if mol == "benzene" else "eth") / f"table2_errors-{mol}.csv"
        assert (both / f"table2_errors-{mol}.csv").read_text() == alone.read_text()
    md_text = (both / "table2.md").read_text()
    assert "| benzene | 300 K | 12 |" in md_text and "| ethane | 300 K | 12 |" in md_text
    # pools without PBE frames are named as missing, the others have their row (which pools exist grows
    # with the data: benzene's 300+350 and 300+400 K pools were begun in session 18)
    from mlhk_viz.reference.md_sets import load_partial
    for t in table2.TRAININGS:
        if load_partial("benzene", table2.TRAININGS[t], data, md) is None:
            assert f"benzene {t} K: no training frames with PBE yet" in md_text, t
        else:
            assert f"| benzene | {t} K | 12 |" in md_text, t
    some = tmp_path / "some"  # a data folder with one ethane pool: the other two are reported missing
    (some / "data").mkdir(parents=True)
    for name in ("ethane-test.npz", "ethane-train300.npz", "md"):
        (some / "data" / name).symlink_to(data / name)
    table2.run(some, some / "data", some / "data" / "md", m=12, molecules=("ethane",), curve=False, log=quiet)
    said = (some / "table2.md").read_text()
    assert "| ethane | 300 K | 12 |" in said and "| ethane | 300+350 K |" not in said
    assert all(f"ethane {t} K: no training frames with PBE yet" in said for t in ("300+350", "300+400"))
    assert all(r["hyperparameters"] == {"cv_rule": "min"} for r in json.loads((both / "table2.json").read_text()))

    # the other protocol would mix two protocols in one table: refused before any work, files untouched
    before = {p.name: p.read_bytes() for p in both.iterdir()}
    with pytest.raises(ValueError, match=r"benzene 300 K rows made with other hyperparameters.*1se"):
        table2.run(both, data, md, m=12, molecules=("ethane",), params={"cv_rule": "1se"}, log=quiet)
    assert {p.name: p.read_bytes() for p in both.iterdir()} == before
    assert main(["reproduce", "table2", "--out", str(both), "--molecules", "ethane", "--cv-rule", "1se"]) == 1
    assert "Recompute benzene too" in capsys.readouterr().err
    assert main(["reproduce", "table2", "--out", str(both), "--molecules", "ethanol"]) == 1
    assert "molecules must be among benzene, ethane, malonaldehyde" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in both.iterdir()} == before
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("table2.json", "table2_curve.json", "density_error.json"):
        (broken / name).write_text((both / name).read_text())
    (broken / "table2_curve.json").write_text('{"not": "a list"}')
    with pytest.raises(ValueError, match=r"broken: cannot read the earlier Table 2 files.*curves are not a list"):
        table2.run(broken, data, md, m=12, molecules=("ethane",), log=quiet)


def test_table2_one_standard_error_rule_reaches_the_models():
    """``params={"cv_rule": "1se"}``: the table's errors are those of MLHK(cv_rule='1se') on the same frames."""
    import numpy as np

    from mlhk_viz.evaluation import KCAL_PER_HARTREE
    from mlhk_viz.models import MLHK
    from mlhk_viz.reproduce.table2 import fit_and_score, load_sets

    root = Path(__file__).resolve().parent.parent
    test, trains = load_sets("ethane", root / "data", root / "data" / "md")
    tr = trains["300"]
    r = fit_and_score(tr, test, 40, params={"cv_rule": "1se"})
    idx = np.flatnonzero(tr.converged)[:40]
    U = tr.coefficients(rows=idx)
    one = MLHK(cv_rule="1se").fit(tr.positions[idx], tr.energies[idx], U, numbers=tr.numbers)
    low = MLHK().fit(tr.positions[idx], tr.energies[idx], U, numbers=tr.numbers)
    te = np.flatnonzero(test.converged)
    err = np.abs(one.predict(test.positions[te]) - test.energies[te]) * KCAL_PER_HARTREE
    np.testing.assert_allclose(np.abs(r["errors"]["mlhk_dE"]), err, rtol=1e-6, atol=1e-9)
    assert r["model"].density_hyper_.lam == one.density_hyper_.lam >= low.density_hyper_.lam


def test_cli_cv_rule_is_passed_on_and_checked(tmp_path, capsys, monkeypatch):
    from mlhk_viz.reproduce import table2

    seen = []
    monkeypatch.setattr(table2, "run", lambda *a, **k: seen.append(k.get("params")))
    assert main(["reproduce", "table2", "--out", str(tmp_path / "a"), "--cv-rule", "1se"]) == 0
    assert main(["reproduce", "table2", "--out", str(tmp_path / "b")]) == 0
    assert main(["reproduce", "table2", "--out", str(tmp_path / "c"), "--energy-features", "loo"]) == 0
    assert main(["reproduce", "table2", "--out", str(tmp_path / "d"), "--energy-features", "predicted",
                 "--cv-rule", "1se"]) == 0
    assert seen == [{"cv_rule": "1se"}, None, {"energy_features": "loo"}, {"cv_rule": "1se"}]
    from mlhk_viz import cli, models

    assert cli.ENERGY_FEATURES == models.ENERGY_FEATURES and cli.DEFAULT_PROTOCOL["energy_features"] == \
        models.MLHK().energy_features and cli.DEFAULT_PROTOCOL["cv_rule"] == models.MLHK().cv_rule
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "table2", "--out", str(tmp_path / "o"), "--energy-features", "oob"])
    assert exc.value.code == 2 and "invalid choice: 'oob'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "table2", "--out", str(tmp_path / "o"), "--cv-rule", "median"])
    assert exc.value.code == 2 and "invalid choice: 'median'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    md = table2.format_markdown([], [], [], params={"cv_rule": "1se", "energy_lam": 1e-4})
    assert "one-standard-error rule" in md and "fixed: energy_lam = 0.0001" in md
    assert "lowest CV error (the paper's protocol)" in table2.format_markdown([], [], [])
    md = table2.format_markdown([], [], [], params={"energy_features": "loo"})
    assert "energy functional trained on the density model's leave-one-out predicted densities (beyond" in md
    assert "fixed:" not in md


@pytest.mark.slow
def test_fig3b_machinery_on_a_short_ethane_run(tmp_path):
    """ML-HK MD, PBE single points on its snapshots, CSV/PNG; a rerun reuses both (small: 10 fs of ethane)."""
    import csv

    import numpy as np

    from mlhk_viz.evaluation import KCAL_PER_HARTREE
    from mlhk_viz.reproduce import figures

    root = Path(__file__).resolve().parent.parent
    kw = dict(m=15, duration_fs=10.0, every_fs=2.5, pbe_every_fs=5.0, forces="analytic", molecule="ethane",
              log=lambda *a: None)
    info = figures.fig3b(tmp_path, root / "data", root / "data" / "md", **kw)
    assert info["status"] == "finished" and info["frames"] == 5 and info["frames_with_pbe"] == 3
    rows = list(csv.DictReader(open(tmp_path / "fig3b.csv")))
    assert [float(r["time_fs"]) for r in rows] == [0.0, 2.5, 5.0, 7.5, 10.0]
    assert [bool(r["E_pbe_hartree"]) for r in rows] == [True, False, True, False, True]
    # the recorded ML-HK energies are the model's own predictions at the recorded positions
    from mlhk_viz.datasets import Dataset, load_npz
    traj, _ = load_npz(tmp_path / "fig3b-trajectory.npz", kind="mlhk-viz-mlhk-md")
    model = figures.fit_models("ethane", root / "data", root / "data" / "md", m=15, kinds=("mlhk",))["mlhk"]
    np.testing.assert_allclose(traj["energies_hartree"], model.predict(traj["positions"]), atol=1e-7)
    pbe = Dataset.load(tmp_path / "fig3b-pbe.npz")
    # the single points are in the model's frame (so they can be training data); the molecules are the same
    np.testing.assert_allclose(pbe.positions, model.aligned_positions(traj["positions"][::2]), rtol=0, atol=1e-12)
    from mlhk_viz.geometry import align
    np.testing.assert_allclose(align(traj["positions"][::2], pbe.positions[0]), align(pbe.positions, pbe.positions[0]),
                               rtol=0, atol=1e-9)
    err = np.abs(traj["energies_hartree"][::2] - pbe.energies) * KCAL_PER_HARTREE
    assert info["stats"]["mlhk"]["mae"] == pytest.approx(err.mean()) and (tmp_path / "fig3b.png").stat().st_size > 5000
    stamp = (tmp_path / "fig3b-pbe.npz").stat().st_mtime_ns
    again = figures.fig3b(tmp_path, root / "data", root / "data" / "md", **kw)
    assert again["stats"] == info["stats"] and (tmp_path / "fig3b-pbe.npz").stat().st_mtime_ns == stamp
    # one round of active learning: the PBE single points of this run train the next run (another seed)
    kw2 = dict(kw, pbe_every_fs=10.0, seed=1, extra=tmp_path / "fig3b-pbe.npz")
    second = figures.fig3b(tmp_path / "round2", root / "data", root / "data" / "md", **kw2)
    assert (second["extra_frames"], second["seed"], second["M"]) == (3, 1, 15) and second["frames_with_pbe"] == 2
    traj2, _ = load_npz(tmp_path / "round2" / "fig3b-trajectory.npz", kind="mlhk-viz-mlhk-md")
    refit = figures.fit_models("ethane", root / "data", root / "data" / "md", m=15, kinds=("mlhk",), extra=pbe)["mlhk"]
    np.testing.assert_allclose(traj2["energies_hartree"], refit.predict(traj2["positions"]), atol=1e-7)
    assert np.abs(refit.predict(traj2["positions"]) - model.predict(traj2["positions"])).max() > 1e-6
    # a second round trains on both rounds' single points, in order
    kw3 = dict(kw2, seed=2, extra=[tmp_path / "fig3b-pbe.npz", tmp_path / "round2" / "fig3b-pbe.npz"])
    third = figures.fig3b(tmp_path / "round3", root / "data", root / "data" / "md", **kw3)
    assert third["extra_frames"] == 5 and len(third["extra_sha256"]) == 2 and isinstance(second["extra_sha256"], str)
    traj3, _ = load_npz(tmp_path / "round3" / "fig3b-trajectory.npz", kind="mlhk-viz-mlhk-md")
    both = [pbe, Dataset.load(tmp_path / "round2" / "fig3b-pbe.npz")]
    refit3 = figures.fit_models("ethane", root / "data", root / "data" / "md", m=15, kinds=("mlhk",), extra=both)["mlhk"]
    np.testing.assert_allclose(traj3["energies_hartree"], refit3.predict(traj3["positions"]), atol=1e-7)
    # another seed into the same folder is refused before anything is fitted or written; --overwrite replaces the run
    traj_stamp = (tmp_path / "fig3b-trajectory.npz").stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"differs in seed\); its trajectory and PBE single points are kept"):
        figures.fig3b(tmp_path, root / "data", root / "data" / "md", **dict(kw, seed=7))
    assert (tmp_path / "fig3b-trajectory.npz").stat().st_mtime_ns == traj_stamp
    assert (tmp_path / "fig3b-pbe.npz").stat().st_mtime_ns == stamp
    replaced = figures.fig3b(tmp_path, root / "data", root / "data" / "md", **dict(kw, duration_fs=5.0, overwrite=True))
    assert replaced["frames"] == 3 and replaced["frames_with_pbe"] == 2 and replaced["duration_fs"] == 5.0
    assert len(Dataset.load(tmp_path / "fig3b-pbe.npz").energies) == 2


def figures_tautomer():
    from mlhk_viz.reference.forcefield import TAUTOMER_ORDERINGS

    return TAUTOMER_ORDERINGS["malonaldehyde"]


def test_fig3a_end_to_end_equals_an_explicit_refit(tmp_path):
    """fig3a on a stand-in for the AIMD set (six PBE frames with times): CSV, PNG and statistics equal
    a refit of the library models on the same training frames, and a missing AIMD set is a clear error.
    Frames 3-5 are given in the other tautomer's labelling (H5 beside "O4", as after a proton transfer):
    fig3a relabels them and predicts what the refit predicts for the training labelling."""
    import csv

    import numpy as np

    from mlhk_viz.datasets import Dataset
    from mlhk_viz.evaluation import KCAL_PER_HARTREE
    from mlhk_viz.models import MLHK
    from mlhk_viz.reference.md import load_trajectory
    from mlhk_viz.reproduce import figures

    root = Path(__file__).resolve().parent.parent
    data = tmp_path / "data"
    data.mkdir()
    # the training pool as committed: its complete file once finished, its chunk folders while it grows
    pool = sorted((root / "data").glob("malonaldehyde-train300+350.npz*"))
    assert pool, "the committed malonaldehyde 300+350 K PBE frames (data/malonaldehyde-train300+350.npz*) are missing"
    for d in pool:
        (data / d.name).symlink_to(d)
    with pytest.raises(ValueError, match="malonaldehyde-aimd.npz"):
        figures.fig3a(tmp_path / "out", data, root / "data" / "md", m=12, log=lambda *a: None)
    full = Dataset.load(root / "data" / "malonaldehyde-md.npz")
    frames = np.asarray(full.meta["roles"]["test"][:6])
    aimd = full.subset(frames)
    aimd.meta["times_fs"] = [10.0 * i for i in range(6)]
    original = aimd.positions.copy()
    mirror = list(figures_tautomer())
    aimd.positions[3:] = original[3:][:, mirror]  # the same geometries, atoms labelled as the other tautomer
    aimd.save(data / "malonaldehyde-aimd.npz")
    info = figures.fig3a(tmp_path / "out", data, root / "data" / "md", m=12, log=lambda *a: None)
    rows = list(csv.DictReader(open(tmp_path / "out" / "fig3a.csv")))
    assert [float(r["time_fs"]) for r in rows] == aimd.meta["times_fs"]
    np.testing.assert_allclose([float(r["E_pbe_hartree"]) for r in rows], aimd.energies, atol=1e-9)
    label, train, idx = figures.training_set("malonaldehyde", data, root / "data" / "md", 12)
    assert (label, len(idx)) == ("300+350", 12)
    ref = load_trajectory(root / "data" / "md" / "malonaldehyde-test-300K.npz")["reference"]
    hk = MLHK(reference=ref).fit(train.positions[idx], train.energies[idx], train.coefficients(rows=idx),
                                 numbers=train.numbers)
    err = np.abs(hk.predict(original) - aimd.energies) * KCAL_PER_HARTREE
    assert info["stats"]["mlhk"]["mae"] == pytest.approx(err.mean(), rel=1e-9)
    assert info["stats"]["mlhk"]["max"] == pytest.approx(err.max(), rel=1e-9)
    assert info["relabelled_frames"] == [3, 4, 5]
    np.testing.assert_allclose([float(r["E_mlhk_hartree"]) for r in rows], hk.predict(original), atol=1e-9)
    by_index = np.abs(hk.predict(aimd.positions) - aimd.energies) * KCAL_PER_HARTREE
    assert info["errors_atoms_by_index"]["mlhk"]["mae"] == pytest.approx(by_index.mean(), rel=1e-9)
    assert not np.allclose(by_index[3:], err[3:], atol=1e-3)  # matched by index, the relabelled frames differ
    assert (tmp_path / "out" / "fig3a.png").stat().st_size > 5000


def test_fig2_end_to_end_equals_an_explicit_refit(tmp_path, capsys):
    """fig2 on ethane's committed trace frames at M = 12: the CSV holds the trace's times and PBE energies,
    and ML-HK / ML-KS energies and statistics equal a refit of the library models on the same training
    frames. A molecule without trace frames is skipped with a message, a bad name is an error before
    anything is written, and the CLI passes --molecules on."""
    import csv

    import numpy as np

    from mlhk_viz.evaluation import KCAL_PER_HARTREE
    from mlhk_viz.models import MLHK, MLKS
    from mlhk_viz.reference.forcefield import equivalent_orderings
    from mlhk_viz.reference.md import load_trajectory
    from mlhk_viz.reference.md_sets import frames, load_partial
    from mlhk_viz.reproduce import figures

    root = Path(__file__).resolve().parent.parent
    md = root / "data" / "md"
    data = tmp_path / "data"
    data.mkdir()
    # the sets as committed: chunked ones and the finished 300+400 K file, whose per-chunk cache blocks keep
    # M = 12 from expanding all of its 2000 frames
    for d in sorted((root / "data").glob("ethane-t*.npz*")):
        (data / d.name).symlink_to(d)
    assert list(data.glob("ethane-trace.npz*")), "the committed ethane trace frames (data/ethane-trace.npz*) are missing"
    with pytest.raises(ValueError, match="fig2: molecules must be among benzene, ethane, malonaldehyde; got water"):
        figures.fig2(tmp_path / "bad", data, md, m=12, molecules=("water",), log=lambda *a: None)
    assert not (tmp_path / "bad").exists()

    said = []
    res = figures.fig2(tmp_path / "out", data, md, m=12, molecules=("benzene", "ethane"), log=said.append)
    assert list(res) == ["ethane"]
    assert any("fig2 benzene: no PBE frames of the trace yet" in s for s in said)
    trace = load_partial("ethane", "trace", data, md)
    _, _, info = frames("ethane", "trace", md)
    rows = list(csv.DictReader(open(tmp_path / "out" / "fig2-ethane.csv")))
    assert len(rows) == len(trace) >= 10
    np.testing.assert_allclose([float(r["time_fs"]) for r in rows], np.asarray(info["times_fs"])[trace.meta["frames"]])
    np.testing.assert_allclose([float(r["E_pbe_hartree"]) for r in rows], trace.energies, atol=1e-9)

    label, train, idx = figures.training_set("ethane", data, md, 12)
    # every ethane pool is complete (2000 frames), so the tie goes to the paper's choice, 300 K: a user's default
    assert label == "300" and len(train) == 2000 and train.name == "ethane-train300"
    assert len(idx) == 12 and res["ethane"]["M"] == 12 and res["ethane"]["training"] == label
    ref = load_trajectory(md / "ethane-test-300K.npz")["reference"]
    perms = equivalent_orderings("ethane")
    hk = MLHK(reference=ref, permutations=perms).fit(train.positions[idx], train.energies[idx],
                                                     train.coefficients(rows=idx), numbers=train.numbers)
    ks = MLKS(reference=ref, permutations=perms).fit(train.positions[idx], train.energies[idx], numbers=train.numbers)
    ok = trace.converged
    for name, model in (("mlhk", hk), ("mlks", ks)):
        pred = model.predict(trace.positions)
        np.testing.assert_allclose([float(r[f"E_{name}_hartree"]) for r in rows], pred, atol=1e-9)
        err = np.abs(pred[ok] - trace.energies[ok]) * KCAL_PER_HARTREE
        assert res["ethane"]["stats"][name]["mae"] == pytest.approx(err.mean(), rel=1e-9)
        assert res["ethane"]["stats"][name]["max"] == pytest.approx(err.max(), rel=1e-9)
    assert json.loads((tmp_path / "out" / "fig2-ethane.json").read_text()) == res["ethane"]
    assert (tmp_path / "out" / "fig2-ethane.png").stat().st_size > 5000

    base = ["reproduce", "fig2", "--data-dir", str(data), "--md-dir", str(md), "--m", "12"]
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "cli"), "--molecules", "benzene"]) == 0
    assert "fig2 benzene: no PBE frames" in capsys.readouterr().out
    assert not list((tmp_path / "cli").glob("fig2-ethane*"))  # only the molecules asked for
    assert main(base + ["--out", str(tmp_path / "cli2"), "--molecules", "ethane,water"]) == 1
    assert "got ethane, water" in capsys.readouterr().err and not (tmp_path / "cli2").exists()
