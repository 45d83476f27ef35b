"""Reference generation: real PySCF single points, Dask, atomic chunks, resumption."""

import json

import numpy as np
import pytest
from dask.distributed import LocalCluster

from mlhk_viz.datasets import Dataset
from mlhk_viz.reference import generate as gen
from mlhk_viz.reference.geometries import h2
from mlhk_viz.reference.pyscf_runner import single_point


@pytest.fixture(scope="module")
def cluster():
    # threads in this process, so the test can count and break chunk computations
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as c:
        yield c


@pytest.fixture
def chunk_sizes(tmp_path, monkeypatch):
    """Count the chunk computations and their sizes. Dask serialises tasks, so through a file."""
    real = gen.compute_chunk
    log = tmp_path / "chunk-sizes.txt"

    def counting(numbers, positions, method):
        with open(log, "a") as fh:
            fh.write(f"{len(positions)}\n")
        return real(numbers, positions, method)

    monkeypatch.setattr(gen, "compute_chunk", counting)
    return lambda: [int(x) for x in log.read_text().split()] if log.exists() else []


@pytest.mark.slow
def test_interrupted_generation_resumes_without_redoing(tmp_path, cluster, monkeypatch):
    numbers, pos = h2(4)
    out = tmp_path / "h2small.npz"
    real = gen.compute_chunk
    # Dask serialises tasks, so count calls through a file; one file per run, because the first run's
    # last task can still start in the worker thread after that run has raised
    first_log, log = tmp_path / "calls-interrupted.txt", tmp_path / "calls-resumed.txt"
    count = lambda f: len(f.read_text().split()) if f.exists() else 0  # noqa: E731

    def failing(numbers, positions, method):
        with open(first_log, "a") as fh:
            fh.write("x\n")
        if count(first_log) >= 3:
            raise RuntimeError("simulated interruption")
        return real(numbers, positions, method)

    monkeypatch.setattr(gen, "compute_chunk", failing)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        gen.generate("H2", out, numbers, pos, chunk_size=1, scheduler=cluster.scheduler_address, log=lambda *a: None)
    assert not out.exists()
    parts = gen.parts_dir(out, numbers, pos, gen.DEFAULT_METHOD)
    saved = sorted(parts.glob("chunk-*.npz"))
    assert len(saved) == 2

    def counting(*a):
        with open(log, "a") as fh:
            fh.write("x\n")
        return real(*a)

    monkeypatch.setattr(gen, "compute_chunk", counting)
    ds = gen.generate("H2", out, numbers, pos, chunk_size=1, scheduler=cluster.scheduler_address, log=lambda *a: None)
    assert count(log) == 2, "only the two missing chunks are computed again"
    assert not parts.exists()
    back = Dataset.load(out)
    assert len(back) == 4 and back.converged.all()
    np.testing.assert_array_equal(back.positions, pos)
    # every energy equals a direct single point: nothing was mixed up between chunks
    direct = [single_point(numbers, p)["energy"] for p in pos]
    np.testing.assert_allclose(back.energies, direct, rtol=0, atol=1e-9)
    assert back.meta["method"]["pyscf_version"]


@pytest.mark.slow
def test_limit_computes_a_prefix_and_a_finished_file_is_not_recomputed(tmp_path, cluster, chunk_sizes, capsys):
    numbers, pos = h2(5)
    out = tmp_path / "h2five.npz"
    n_calls = chunk_sizes
    kw = dict(chunk_size=2, scheduler=cluster.scheduler_address, log=lambda *a: None)
    assert gen.generate("H2", out, numbers, pos, limit=3, **kw) is None  # chunks [0,2) and [2,4)
    assert sorted(n_calls()) == [2, 2] and not out.exists()
    from mlhk_viz.datasets import load_npz
    parts = gen.parts_dir(out, numbers, pos, gen.DEFAULT_METHOD)
    bounds = sorted(load_npz(f, kind=gen.CHUNK_FORMAT)[1]["bounds"] for f in parts.glob("chunk-*.npz"))
    assert bounds == [[0, 2], [2, 4]]
    # how far it got, for `mlhk-viz info` on the set's file (not there yet) or on its parts folder
    (u,) = gen.unfinished(out)
    assert (u["name"], u["n"], u["done"], u["chunks"], u["folder"]) == ("H2", 5, 4, 2, parts)
    assert gen.unfinished(parts) == [u]
    from mlhk_viz.cli import main
    assert main(["info", str(out)]) == 0
    assert f"H2: not finished: 4 of 5 geometries computed (2 chunks in {parts})" in capsys.readouterr().out
    with pytest.raises(ValueError, match="limit"):
        gen.generate("H2", out, numbers, pos, limit=0, **kw)
    ds = gen.generate("H2", out, numbers, pos, **kw)
    assert sorted(n_calls()) == [1, 2, 2], "only the last chunk is computed"
    assert len(ds) == 5 and out.exists()
    assert gen.unfinished(out) == []
    again = gen.generate("H2", out, numbers, pos, **kw)
    assert sorted(n_calls()) == [1, 2, 2], "a complete file is returned, not recomputed"
    np.testing.assert_array_equal(again.energies, ds.energies)
    other = pos.copy()
    other[0, 1, 0] += 0.01
    assert gen._complete(out, numbers, other, gen.DEFAULT_METHOD) is None, "other geometries are not taken for it"


@pytest.mark.slow
def test_finished_set_reads_the_density_caches_made_while_it_grew(tmp_path, cluster, monkeypatch):
    numbers, pos = h2(5)
    out = tmp_path / "h2grow.npz"
    kw = dict(chunk_size=2, scheduler=cluster.scheduler_address, log=lambda *a: None)
    monkeypatch.setenv("MLHK_VIZ_CACHE", str(tmp_path / "cache"))
    assert gen.generate("H2", out, numbers, pos, limit=3, **kw) is None
    part = gen.load_finished("H2", out, numbers, pos)
    assert len(part) == 4 and part.meta["frames"] == [0, 1, 2, 3] and part.blocks.tolist() == [2]
    np.testing.assert_array_equal(part.positions, pos[:4])
    expanded = []

    def counting(ds):
        orig = ds.compute_coefficients
        monkeypatch.setattr(ds, "compute_coefficients", lambda idx, *a, **k: expanded.extend(np.asarray(idx).tolist())
                            or orig(idx, *a, **k))
        return ds

    u_part = counting(part).coefficients()
    assert expanded == [0, 1, 2, 3]
    gen.generate("H2", out, numbers, pos, **kw)
    assert gen.load_finished("H2", out, numbers, pos) is None, "the parts folder is gone once the file is written"
    full = Dataset.load(out)
    assert full.meta["blocks"] == [2, 4] and full.blocks.tolist() == [2, 4]
    expanded.clear()
    u_full = counting(full).coefficients()
    assert expanded == [4], "only the chunk that was never expanded is computed"
    np.testing.assert_array_equal(u_full[:4], u_part)
    # and what was read back is what a fresh expansion gives (float32 cache precision)
    fresh = full.compute_coefficients(np.arange(5))
    np.testing.assert_allclose(u_full, fresh, rtol=0, atol=1e-6 * np.abs(fresh).max())
    # a subset is another set of rows: it must not carry the parent's row starts into a file
    assert "blocks" not in full.subset([0, 3]).meta


def test_parts_folder_is_found_for_geometries_that_differ_in_the_last_bit(tmp_path):
    # the same MD frames aligned on another numpy/BLAS build differ by ~1e-15 Å; their finished
    # chunks must still be found, and geometries that differ physically must not be
    numbers, pos = h2(6)
    out = tmp_path / "h2six.npz"
    method = gen.DEFAULT_METHOD

    def make_folder(positions):
        folder = gen.parts_dir(out, numbers, positions, method)
        folder.mkdir()
        gen._write_geometries(folder, numbers, positions)
        (folder / "manifest.json").write_text(json.dumps({"name": "H2", "n": 6, "method": method}))
        return folder

    parts = make_folder(pos)
    jitter = pos + np.random.default_rng(0).uniform(-3e-15, 3e-15, pos.shape)
    assert not np.array_equal(jitter, pos)
    assert gen.parts_dir(out, numbers, jitter, method) == parts
    # a coordinate on the hash's rounding boundary: another name, found through the stored geometries
    edge = pos.copy()
    edge[0, 1, 0] = 0.2600005 + 1e-13
    edge_parts = make_folder(edge)
    across = edge.copy()
    across[0, 1, 0] = 0.2600005 - 1e-13  # rounds to 0.26 rather than 0.260001
    assert gen._digest(numbers, across, method) != gen._digest(numbers, edge, method)
    assert gen.parts_dir(out, numbers, across, method) == edge_parts
    moved = pos.copy()
    moved[0, 1, 0] += 1e-4
    assert gen.parts_dir(out, numbers, moved, method) not in (parts, edge_parts)
    other_method = dict(method, xc="LDA")
    assert gen.parts_dir(out, numbers, pos, other_method) != parts
    # a finished file is recognised across the same last-bit difference
    assert gen._same_geometries(numbers, pos, numbers, jitter)
    assert not gen._same_geometries(numbers, pos, numbers, moved)


@pytest.mark.slow
def test_geometries_finished_in_another_set_are_copied_not_computed(tmp_path, cluster, chunk_sizes):
    # the MD training pools share frames; a set that contains another's finished geometries must take
    # their results as they are and compute only the rest
    numbers, pos = h2(6)
    kw = dict(scheduler=cluster.scheduler_address, log=lambda *a: None)
    first = gen.generate("H2", tmp_path / "a.npz", numbers, pos[:4], chunk_size=2, **kw)
    computed_before = len(chunk_sizes())
    sizes = lambda: sorted(chunk_sizes()[computed_before:])  # noqa: E731
    # chunks: [pos1, pos3] both known, [pos4, pos0] one known, [pos5 + 1e-3 Å] not the same geometry
    nudged = pos[5].copy()
    nudged[1, 0] += 1e-3
    second_pos = np.stack([pos[1], pos[3], pos[4], pos[0], nudged])
    lda = Dataset(name="lda", numbers=first.numbers, positions=pos[4:5], energies=np.array([0.0]),
                  converged=np.array([True]), truncation_error=np.array([0.0]),
                  meta=dict(first.meta, method=dict(first.meta["method"], functional="LDA")),
                  mo_coeff=first.mo_coeff[:1], mo_occ=first.mo_occ[:1])
    second = gen.generate("H2b", tmp_path / "b.npz", numbers, second_pos, chunk_size=2, known=[first, lda], **kw)
    assert sizes() == [1, 1], "only pos[4] (known only with another method) and the nudged geometry are computed"
    np.testing.assert_array_equal(second.energies[[0, 1, 3]], first.energies[[1, 3, 0]])
    direct = [single_point(numbers, p)["energy"] for p in second_pos[[2, 4]]]
    np.testing.assert_allclose(second.energies[[2, 4]], direct, rtol=0, atol=1e-9)
    np.testing.assert_allclose(second.coefficients()[[0, 1, 3]], first.coefficients()[[1, 3, 0]], rtol=0, atol=1e-12)
    assert second.meta["reused_geometries"] == 3 and second.meta["seconds_per_geometry"] > 0
