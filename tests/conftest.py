import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Tests build their own coefficient caches unless the caller points MLHK_VIZ_CACHE elsewhere."""
    if "MLHK_VIZ_CACHE" not in os.environ:
        os.environ["MLHK_VIZ_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield


@pytest.fixture(scope="session")
def h2():
    from mlhk_viz.datasets import Dataset

    return Dataset.load(DATA / "h2.npz")


@pytest.fixture(scope="session")
def h2o():
    from mlhk_viz.datasets import Dataset

    path = DATA / "h2o.npz"
    if not path.is_file():
        pytest.fail("data/h2o.npz is missing: run `mlhk-viz generate h2o`")
    return Dataset.load(path)


def gaussian_blob_density(basis, centres, widths, charges, points):
    """An analytic sum of normalised 3D Gaussians on the box grid (e/bohr³), for basis tests."""
    ax = basis.grid_axis(points)
    X, Y, Z = np.meshgrid(ax, ax, ax, indexing="ij")
    rho = np.zeros_like(X)
    for c, w, q in zip(centres, widths, charges):
        r2 = (X - c[0]) ** 2 + (Y - c[1]) ** 2 + (Z - c[2]) ** 2
        rho += q * np.exp(-r2 / (2 * w * w)) / (2 * np.pi * w * w) ** 1.5
    return rho
