"""The documentation's examples work as written: the README's Python block runs, every ``mlhk-viz`` line in
README.md and docs/ parses, and the imports the docs show exist."""

import argparse
import re
import shlex

import numpy as np
import pytest

from conftest import DATA, ROOT

README = (ROOT / "README.md").read_text()
DOCS = {p.relative_to(ROOT).as_posix(): p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}


def fenced_blocks(text, lang):
    """The bodies of the fenced code blocks whose info string is ``lang`` ("" for bare fences)."""
    blocks, body, info = [], None, None
    for line in text.splitlines():
        if line.startswith("```"):
            if body is None:
                body, info = [], line[3:].strip()
            else:
                if info == lang:
                    blocks.append("\n".join(body) + "\n")
                body = None
        elif body is not None:
            body.append(line)
    return blocks


def test_readme_library_example_runs_and_its_model_file_reads_back(h2o, tmp_path, monkeypatch):
    from mlhk_viz.models import load_model

    (block,) = fenced_blocks(README, "python")
    (tmp_path / "data").symlink_to(DATA)
    monkeypatch.chdir(tmp_path)
    ns = {}
    exec(compile(block, "README.md", "exec"), ns)

    test, dec, rho, model = ns["test"], ns["dec"], ns["rho"], ns["model"]
    assert len(ns["train"]) == 20 and not set(ns["train"]) & set(test)
    # the comments' claims: shapes, units (Hartree), dE = dE_F + dE_D per molecule
    assert ns["U"].shape == (350, 125_000) and rho.shape == (1, 64, 64, 64)
    np.testing.assert_allclose(dec["dE"], dec["dE_F"] + dec["dE_D"], atol=1e-12)
    np.testing.assert_allclose(dec["dE"], model.predict(ns["ds"].positions[test]) - ns["ds"].energies[test], atol=1e-10)
    # the density on the box grid integrates to water's 8 valence electrons
    dv = (model.basis.box / 64) ** 3
    assert rho.sum() * dv == pytest.approx(8.0, abs=0.05)
    again = load_model(tmp_path / "water.mlhk.npz")
    np.testing.assert_allclose(again.predict(ns["ds"].positions[test]), model.predict(ns["ds"].positions[test]),
                               rtol=0, atol=1e-10)
    # the by-reference file, as the comment says: small, and refitted from data/ to the same predictions
    assert (tmp_path / "water.ref.npz").stat().st_size < (tmp_path / "water.mlhk.npz").stat().st_size / 100
    ref = load_model("water.ref.npz", search=["data"])
    np.testing.assert_array_equal(ref.predict(ns["ds"].positions[test]), model.predict(ns["ds"].positions[test]))


def table_commands(text):
    """The ``mlhk-viz`` code spans in Markdown table rows: the docs' tables of results give the command of each."""
    return [m for line in text.splitlines() if line.startswith("|") for m in re.findall(r"`(mlhk-viz [^`]*)`", line)]


def doc_commands(texts):
    # "[--scheduler ADDRESS]" shows an optional part: parse it as given
    lines = [line.split("#")[0].strip().replace("[", "").replace("]", "")
             for text in texts for b in fenced_blocks(text, "") for line in b.splitlines()]
    lines += [c for text in texts for c in table_commands(text)]
    return [shlex.split(line)[1:] for line in lines if line.startswith("mlhk-viz ")]


@pytest.mark.parametrize("argv", doc_commands(DOCS.values()), ids=" ".join)
def test_every_command_line_in_the_docs_parses(argv):
    from mlhk_viz.cli import build_parser

    from mlhk_viz.cli import REPRODUCIBLE

    figs = [a for a in argv if "|" in a]  # "fig2|fig3a|fig3b": one line for three commands
    for fig in figs[0].split("|") if figs else [None]:
        args = build_parser().parse_args([fig if "|" in a else a for a in argv])
        if args.command == "reproduce":
            assert args.what in REPRODUCIBLE


def test_the_readme_lists_every_subcommand():
    from mlhk_viz.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    shown = {argv[0] for argv in doc_commands([README])}
    assert set(sub.choices) <= shown, set(sub.choices) - shown


@pytest.mark.parametrize("name", [n for n, t in DOCS.items() if fenced_blocks(t, "python")])
def test_the_imports_the_docs_show_exist(name):
    for block in fenced_blocks(DOCS[name], "python"):
        imports = [line for line in block.splitlines() if line.startswith(("from mlhk_viz", "import mlhk_viz"))]
        assert imports, f"{name}: a Python example without an mlhk_viz import"
        exec("\n".join(imports), {})
