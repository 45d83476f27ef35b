import json

import pytest

from mlhk_viz.cli import main
from mlhk_viz.reproduce.paper import TABLE1


@pytest.mark.slow
def test_reproduce_table1_cli_end_to_end(tmp_path, capsys):
    assert main(["reproduce", "table1", "--out", str(tmp_path), "--curve-max", "10"]) == 0
    rows = json.loads((tmp_path / "table1.json").read_text())
    keys = {(r["molecule"], r["M"], r["quantity"]) for r in rows}
    # every cell of the paper's table is there, and nothing else
    assert keys == {(mol, m, q) for (mol, m), cells in TABLE1.items() for q in cells}
    by = {(r["molecule"], r["M"], r["quantity"]): r for r in rows}
    assert by[("H2", 10, "mlhk_dE")]["mae"] < 0.1
    assert by[("H2", 10, "mlhk_dE")]["mae"] < by[("H2", 10, "mlks_dE")]["mae"]
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
