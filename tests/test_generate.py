"""Reference generation: real PySCF single points, Dask, atomic chunks, resumption."""

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


@pytest.mark.slow
def test_interrupted_generation_resumes_without_redoing(tmp_path, cluster, monkeypatch):
    numbers, pos = h2(4)
    out = tmp_path / "h2small.npz"
    real = gen.compute_chunk
    log = tmp_path / "calls.txt"  # Dask serialises tasks, so count calls through a file
    calls = lambda: len(log.read_text().split()) if log.exists() else 0  # noqa: E731

    def failing(numbers, positions, method):
        with open(log, "a") as fh:
            fh.write("x\n")
        if calls() == 3:
            raise RuntimeError("simulated interruption")
        return real(numbers, positions, method)

    monkeypatch.setattr(gen, "compute_chunk", failing)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        gen.generate("H2", out, numbers, pos, chunk_size=1, scheduler=cluster.scheduler_address, log=lambda *a: None)
    assert not out.exists()
    parts = gen.parts_dir(out, numbers, pos, gen.DEFAULT_METHOD)
    saved = sorted(parts.glob("chunk-*.npz"))
    assert len(saved) == 2

    log.unlink()

    def counting(*a):
        with open(log, "a") as fh:
            fh.write("x\n")
        return real(*a)

    monkeypatch.setattr(gen, "compute_chunk", counting)
    ds = gen.generate("H2", out, numbers, pos, chunk_size=1, scheduler=cluster.scheduler_address, log=lambda *a: None)
    assert calls() == 2, "only the two missing chunks are computed again"
    assert not parts.exists()
    back = Dataset.load(out)
    assert len(back) == 4 and back.converged.all()
    np.testing.assert_array_equal(back.positions, pos)
    # every energy equals a direct single point: nothing was mixed up between chunks
    direct = [single_point(numbers, p)["energy"] for p in pos]
    np.testing.assert_allclose(back.energies, direct, rtol=0, atol=1e-9)
    assert back.meta["method"]["pyscf_version"]
