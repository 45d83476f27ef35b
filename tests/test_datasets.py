import json
import zipfile

import numpy as np
import pytest

from mlhk_viz import datasets as dsm
from mlhk_viz.datasets import Dataset, DatasetError, export_published, import_published, read_cube, write_cube


@pytest.fixture(scope="module")
def small(h2):
    return h2.subset(np.arange(0, 150, 30))


def test_shipped_h2_is_complete_and_physical(h2):
    assert len(h2) == 150 and h2.converged.all() and h2.ordered
    assert h2.meta["method"]["functional"] == "PBE" and h2.meta["method"]["pseudopotential"] == "gth-pbe"
    # the minimum of the PBE curve sits near the known 0.75 Å bond length
    r = np.linalg.norm(h2.positions[:, 1] - h2.positions[:, 0], axis=1)
    assert 0.72 < r[np.argmin(h2.energies)] < 0.78
    assert 0.01 < h2.truncation_error.mean() < 0.03


@pytest.mark.parametrize("name", ["h2", "h2o"])
def test_stored_truncation_errors_equal_pyscf_on_the_fine_grid(name, request):
    """The stored ∫|n_125k - n| / ∫n, recomputed with PySCF's own AO evaluation (not the project's
    projection code) of the stored orbitals on the same 96³ box grid."""
    from pyscf.dft import numint

    from mlhk_viz.reference.pyscf_runner import TRUNCATION_GRID, build_mol

    ds = request.getfixturevalue(name)
    ax = ds.basis.grid_axis(TRUNCATION_GRID)
    pts = np.stack([g.ravel() for g in np.meshgrid(ax, ax, ax, indexing="ij")], axis=1)
    for i in (0, len(ds) // 2):
        mol = build_mol(ds.numbers, ds.positions[i], ds.meta["method"])
        rho = numint.eval_rho2(mol, numint.eval_ao(mol, pts), ds.mo_coeff[i].astype(float), ds.mo_occ[i].astype(float))
        fit = ds.basis.to_grid(ds.coefficients(rows=[i])[0], TRUNCATION_GRID).ravel()
        assert np.abs(fit - rho).sum() / np.abs(rho).sum() == pytest.approx(ds.truncation_error[i], rel=1e-5)


def test_coefficients_reproduce_float32_precision(h2):
    u = h2.coefficients()
    fresh = h2.compute_coefficients([0, 75, 149])
    np.testing.assert_allclose(u[[0, 75, 149]], fresh, rtol=0, atol=1e-6 * np.abs(fresh).max())
    np.testing.assert_allclose(h2.basis.electron_count(u), 2.0, atol=1e-5)


def test_stale_or_corrupt_cache_is_rebuilt(tmp_path, small, monkeypatch):
    monkeypatch.setenv("MLHK_VIZ_CACHE", str(tmp_path / "cache"))
    path = small.save(tmp_path / "s.npz")
    first = Dataset.load(path).coefficients()
    (npy,) = (tmp_path / "cache").glob("*.npy")
    arr = np.load(npy)
    arr[0, 0] = 123.0
    np.save(npy, arr)  # corrupt: the array hash no longer matches
    calls = []
    ds = Dataset.load(path)
    orig = ds.compute_coefficients
    monkeypatch.setattr(ds, "compute_coefficients", lambda *a, **k: calls.append(1) or orig(*a, **k))
    again = ds.coefficients()
    assert calls, "a corrupt cache must be rebuilt"
    np.testing.assert_array_equal(again, first)
    # a changed source file gets its own cache (keyed by the source hash)
    small.energies = small.energies + 0.0
    small.meta["description"] = "changed"
    small.save(tmp_path / "s.npz")
    ds2 = Dataset.load(tmp_path / "s.npz")
    ds2.coefficients()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def _in_memory(h2, rows, blocks=None):
    """Rows of the shipped H2 set as an in-memory orbital store (like a partial MD set), nothing cached."""
    r = np.asarray(rows)
    return Dataset(name="h2-part", numbers=h2.numbers, positions=h2.positions[r], energies=h2.energies[r],
                   converged=h2.converged[r], truncation_error=h2.truncation_error[r], meta=dict(h2.meta),
                   mo_coeff=h2.mo_coeff[r], mo_occ=h2.mo_occ[r], blocks=blocks)


def test_block_cache_expands_only_new_blocks_and_requested_rows(tmp_path, h2, monkeypatch):
    """A set that grows by chunks re-expands only its new chunk; ``rows`` touches only the blocks it needs."""
    monkeypatch.setenv("MLHK_VIZ_CACHE", str(tmp_path / "cache"))
    reference = h2.compute_coefficients(np.arange(12))

    def counted(ds):
        done = []
        orig = ds.compute_coefficients
        monkeypatch.setattr(ds, "compute_coefficients", lambda idx, *a, **k: done.extend(np.asarray(idx).tolist())
                            or orig(idx, *a, **k))
        return done

    small = _in_memory(h2, np.arange(8), blocks=[4])
    done = counted(small)
    np.testing.assert_allclose(small.coefficients(rows=[1, 2]), reference[[1, 2]], atol=1e-6 * np.abs(reference).max())
    assert done == [0, 1, 2, 3], "only the first block is expanded for rows in it"
    np.testing.assert_allclose(small.coefficients(rows=[6, 0]), reference[[6, 0]], atol=1e-6 * np.abs(reference).max())
    assert done == [0, 1, 2, 3, 4, 5, 6, 7]

    grown = _in_memory(h2, np.arange(12), blocks=[4, 8])  # the same chunks plus a new one, a new object
    done = counted(grown)
    full = grown.coefficients()
    assert done == [8, 9, 10, 11], "the chunks cached before are read back, not expanded again"
    np.testing.assert_allclose(full, reference, atol=1e-6 * np.abs(reference).max())
    assert full.shape == (12, h2.basis.size)
    with pytest.raises(IndexError, match="rows must be in 0"):
        _in_memory(h2, np.arange(8), blocks=[4]).coefficients(rows=[8])


def test_native_round_trip(tmp_path, small):
    path = small.save(tmp_path / "a.npz")
    back = Dataset.load(path)
    for k in ("numbers", "positions", "energies", "converged", "truncation_error", "mo_coeff", "mo_occ"):
        np.testing.assert_array_equal(getattr(back, k), getattr(small, k))
    assert back.meta["method"] == small.meta["method"]


def test_published_round_trip(tmp_path, small):
    folder = export_published(small, tmp_path / "pub")
    back = import_published(folder, name="H2")
    np.testing.assert_array_equal(back.positions, small.positions)
    np.testing.assert_allclose(back.energies, small.energies, rtol=1e-15)
    u, ub = small.coefficients(), back.coefficients()
    k, kind = small.basis.frequencies()
    nyq = (k == 25) & (kind == 0)
    keep = ~(nyq[:, None, None] | nyq[None, :, None] | nyq[None, None, :]).ravel()
    # the import normalises to the exact electron count; float32 orbitals hold it to ~1e-7
    np.testing.assert_allclose(ub[:, keep], u[:, keep], rtol=0, atol=1e-6 * np.abs(u).max())
    np.testing.assert_allclose(back.basis.electron_count(ub), 2.0, rtol=1e-12)
    # energy-only folders load too
    (folder / "dft_densities.npy").unlink()
    e_only = import_published(folder)
    assert e_only.density_store == "none" and not e_only.has_densities
    with pytest.raises(DatasetError, match="no densities"):
        e_only.coefficients()


def test_cube_round_trip(tmp_path, small):
    b = small.basis
    ax = b.grid_axis(40)
    rho = b.to_grid(small.coefficients()[2], 40)
    write_cube(tmp_path / "d.cube", rho, (ax, ax, ax), small.numbers, small.positions[2])
    data, axes, atoms = read_cube(tmp_path / "d.cube")
    np.testing.assert_allclose(data, rho, rtol=1e-4, atol=1e-10)
    for a, r in zip(axes, (ax, ax, ax)):
        np.testing.assert_allclose(a, r, atol=1e-5)
    np.testing.assert_allclose(atoms.positions, small.positions[2], atol=1e-5)


def _rewrite(src, dst, edit):
    arrays, meta = dsm.load_npz(src)
    edit(arrays, meta)
    dsm.save_npz(dst, arrays, meta)
    return dst


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda a, m: m.update(version=99), "version 99 is not supported"),
        (lambda a, m: a.update(positions=a["positions"][:, :1]), "'positions' must be float"),
        (lambda a, m: a["energies"].__setitem__(3, np.nan), r"'energies' has non-finite values .* molecule\(s\) \[3\]"),
        (lambda a, m: a.pop("mo_coeff"), "missing array 'mo_coeff'"),
        (lambda a, m: a.update(converged=a["converged"].astype(int)), "'converged' must be a bool array"),
        (lambda a, m: m.update(density_store="zip"), "density_store is 'zip'"),
        (lambda a, m: m.update(format="other"), "format is 'other'"),
        (lambda a, m: m.update(blocks=[3, 2]), "meta 'blocks' must be increasing row starts"),
        (lambda a, m: m.update(blocks=[0, 2]), "meta 'blocks' must be increasing row starts"),
        (lambda a, m: m.update(blocks="2"), "meta 'blocks' must be increasing row starts"),
    ],
)
def test_loader_rejects_bad_files(tmp_path, small, edit, message):
    src = small.save(tmp_path / "good.npz")
    bad = _rewrite(src, tmp_path / "bad.npz", edit)
    with pytest.raises(DatasetError, match=message) as exc:
        Dataset.load(bad)
    assert "bad.npz" in str(exc.value)


def test_loader_rejects_truncated_and_missing(tmp_path, small):
    src = small.save(tmp_path / "good.npz")
    raw = src.read_bytes()
    (tmp_path / "cut.npz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="truncated or corrupt"):
        Dataset.load(tmp_path / "cut.npz")
    with pytest.raises(DatasetError, match="no such file"):
        Dataset.load(tmp_path / "nope.npz")
    # a plain .npy array or a text file named .npz: np.load would return an array or talk of pickles
    np.save(tmp_path / "array.npy", np.zeros(3))
    (tmp_path / "array.npy").rename(tmp_path / "array.npz")
    (tmp_path / "notes.npz").write_text("energies in Hartree\n")
    for name in ("array.npz", "notes.npz"):
        with pytest.raises(DatasetError, match=f"{name}: not a readable .npz file .* it is not a zip archive"):
            Dataset.load(tmp_path / name)


def _damage_member(src, member: str, out):
    """Copy ``src`` to ``out`` with three bytes flipped at the start of ``member``'s compressed data."""
    import struct

    raw = bytearray(src.read_bytes())
    info = next(i for i in zipfile.ZipFile(src).infolist() if i.filename == f"{member}.npy")
    assert info.compress_type == zipfile.ZIP_DEFLATED
    head = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[head + 26:head + 30])  # the local header's own lengths
    start = head + 30 + name_len + extra_len
    raw[start:start + 3] = bytes(b ^ 0xFF for b in raw[start:start + 3])
    out.write_bytes(raw)
    return out


def test_a_damaged_member_is_a_dataset_error_and_the_app_menu_skips_it(tmp_path, small):
    """A flipped byte inside a compressed array (a bad disk, a cut download) is reported, not a zlib crash."""
    from mlhk_viz.app.compute import scan_datasets

    src = small.save(tmp_path / "good.npz")
    _damage_member(src, "positions", tmp_path / "damaged.npz")
    with pytest.raises(DatasetError, match="damaged.npz: not a readable .npz file .*decompressing"):
        Dataset.load(tmp_path / "damaged.npz")
    assert list(scan_datasets(tmp_path).values()) == [str(src.resolve())]


def test_open_npz_reports_damage_by_member_and_lets_the_callers_own_errors_through(tmp_path, small):
    from mlhk_viz.datasets import open_npz

    src = small.save(tmp_path / "good.npz")
    with open_npz(src) as (z, meta):
        assert meta["name"] == small.name and "meta" not in z.files and "positions" in z
        assert z.shape("positions") == z["positions"].shape == small.positions.shape  # header alone
        with pytest.raises(KeyError):
            z["no-such-array"]
    # an error of the code in the block is not a damaged file
    with pytest.raises(ValueError, match="the caller's own") as raised:
        with open_npz(src) as (z, _):
            raise ValueError("the caller's own")
    assert not isinstance(raised.value, DatasetError)
    bad = _damage_member(src, "energies", tmp_path / "bad.npz")
    with open_npz(bad) as (z, _):
        assert np.array_equal(z["positions"], small.positions)  # the undamaged members still read
        with pytest.raises(DatasetError, match="bad.npz: not a readable .npz file .*array 'energies'"):
            z["energies"]


def test_failed_save_keeps_the_old_file(tmp_path, small):
    path = small.save(tmp_path / "keep.npz")
    before = path.read_bytes()
    broken = small.subset(np.arange(len(small)))
    broken.energies = broken.energies.copy()
    broken.energies[0] = np.nan
    with pytest.raises(DatasetError):
        broken.save(path)
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".keep.npz.*"))


def test_partial_md_set_is_cached_per_chunk(tmp_path, monkeypatch):
    """``load_partial`` puts a block boundary at each finished chunk, also across a gap between chunks."""
    import shutil

    from mlhk_viz.reference.md_sets import load_partial

    (parts,) = (dsm.Path(__file__).resolve().parent.parent / "data").glob("ethane-trace.npz.parts-*")
    chunks = sorted(parts.glob("chunk-*.npz"))
    if len(chunks) < 4:
        pytest.fail(f"{parts}: the committed ethane trace chunks are missing")
    mine = tmp_path / "data" / parts.name
    mine.mkdir(parents=True)
    for c in (chunks[0], chunks[3]):  # rows of chunk 0, then chunk 3: frames 1-2 chunks apart
        shutil.copy(c, mine / c.name)
    md = dsm.Path(__file__).resolve().parent.parent / "data" / "md"
    ds = load_partial("ethane", "trace", tmp_path / "data", md)
    size = len(ds) // 2
    assert len(ds) == 2 * size and ds.blocks.tolist() == [size]
    assert ds.meta["frames"] == list(range(size)) + list(range(3 * size, 4 * size))
    monkeypatch.setenv("MLHK_VIZ_CACHE", str(tmp_path / "cache"))
    done = []
    orig = ds.compute_coefficients
    monkeypatch.setattr(ds, "compute_coefficients", lambda idx, *a, **k: done.extend(np.asarray(idx).tolist())
                        or orig(idx, *a, **k))
    u = ds.coefficients(rows=[size + 1])
    assert done == list(range(size, 2 * size))
    np.testing.assert_allclose(ds.basis.electron_count(u), 14.0, rtol=1e-3)  # ethane: 2 x 4 + 6 x 1 valence


@pytest.mark.parametrize("name", ["ethane-train300", "ethane-train300+350", "ethane-train300+400",
                                  "malonaldehyde-train300+350", "benzene-test", "benzene-train300",
                                  "benzene-train300+350"])
def test_finished_md_sets_expand_only_the_chunks_a_prefix_needs(name, tmp_path, monkeypatch):
    """A finished generated set keeps its generation chunks as cache blocks: M = 7 expands 2 chunks, not 2000 frames."""
    path = dsm.Path(__file__).resolve().parent.parent / "data" / f"{name}.npz"
    ds = Dataset.load(path)
    assert ds.blocks is not None, f"{path}: one cache block, so any prefix expands every density"
    starts = np.concatenate([[0], ds.blocks])
    assert np.all(np.diff(starts) <= 10), f"{path}: blocks of more than 10 rows"
    monkeypatch.setenv("MLHK_VIZ_CACHE", str(tmp_path / "cache"))
    done = []
    orig = ds.compute_coefficients
    monkeypatch.setattr(ds, "compute_coefficients", lambda idx, *a, **k: done.extend(np.asarray(idx).tolist())
                        or orig(idx, *a, **k))
    u = ds.coefficients(rows=np.arange(7))
    assert done == list(range(starts[np.searchsorted(starts, 6, side="right")]))
    np.testing.assert_allclose(ds.basis.electron_count(u), ds.n_electrons, rtol=1e-3)
    # the same rows read back from the per-chunk cache by a fresh object, with nothing expanded again
    again = Dataset.load(path)
    monkeypatch.setattr(again, "compute_coefficients", lambda *a, **k: pytest.fail("cache not used"))
    np.testing.assert_array_equal(again.coefficients(rows=np.arange(7)), u)


def test_assemble_caps_pool_and_test_and_keeps_the_trace(tmp_path, capsys):
    """``assemble`` (the app's MD set) takes the first ``m`` pool and ``n_test`` test frames and the whole
    trace, row for row from the committed sets; bad caps are refused before anything is written."""
    from mlhk_viz.cli import main
    from mlhk_viz.reference.md_sets import assemble, frames, load_partial

    root = dsm.Path(__file__).resolve().parent.parent
    data, md = root / "data", root / "data" / "md"
    ds = assemble("ethane", data, md, training="train300", m=10, n_test=5)
    roles = ds.meta["roles"]
    pool, test, trace = (load_partial("ethane", s, data, md) for s in ("train300", "test", "trace"))
    assert roles["pool"] == list(range(10)) and roles["test"] == list(range(10, 15))
    assert roles["trajectory"] == list(range(15, 15 + len(trace)))
    for rows, src, n in ((roles["pool"], pool, 10), (roles["test"], test, 5), (roles["trajectory"], trace, len(trace))):
        np.testing.assert_array_equal(ds.positions[rows], src.positions[:n])
        np.testing.assert_array_equal(ds.energies[rows], src.energies[:n])
        np.testing.assert_array_equal(ds.mo_coeff[rows], src.mo_coeff[:n])
    _, _, info = frames("ethane", "trace", md)
    assert ds.meta["times_fs"] == np.asarray(info["times_fs"])[trace.meta["frames"]].tolist()
    assert "10 training-pool frames (train300), 5 test frames" in ds.meta["description"]

    out = tmp_path / "e.npz"
    assert main(["assemble", "ethane", "--training", "train300", "--m", "10", "--test", "5", "--out", str(out)]) == 0
    assert "10 pool, 5 test" in capsys.readouterr().out
    back = dsm.Dataset.load(out)
    assert back.meta["roles"] == roles
    np.testing.assert_array_equal(back.positions, ds.positions)
    for flag in ("--test", "--m"):
        with pytest.raises(SystemExit) as exc:
            main(["assemble", "ethane", flag, "0", "--out", str(tmp_path / "bad.npz")])
        assert exc.value.code == 2 and f"argument {flag}: must be at least 1, got 0" in capsys.readouterr().err
        assert not (tmp_path / "bad.npz").exists()
    for cap in ("m", "n_test"):  # the library's own check, for callers that do not go through the parser
        with pytest.raises(ValueError, match=f"{cap} must be a positive number of frames, got 0"):
            assemble("ethane", data, md, **{cap: 0})


def test_frames_shared_between_training_pools_carry_the_same_pbe_results():
    """The committed pools of a molecule share frames (K-means over overlapping MD pools); wherever two sets
    hold the same geometry, energy, truncation error and density agree. Ethane's first 700 train300 frames were
    computed before the generator copied shared frames (sessions 5-6), so their pairs with the 300+400 K set
    (sessions 6-9) are two independent PBE runs of one geometry: the check that the generator is reproducible."""
    from mlhk_viz.reference import md_sets
    from mlhk_viz.reference.generate import KnownResults
    from mlhk_viz.reference.pyscf_runner import DEFAULT_METHOD

    root = dsm.Path(__file__).resolve().parent.parent
    data, md = root / "data", root / "data" / "md"
    a, b = (md_sets.load_partial("ethane", s, data, md) for s in ("train300", "train300+400"))
    lookup = KnownResults(b.numbers, DEFAULT_METHOD, [b])
    pairs = np.array([(r, hit[1]) for r, p in enumerate(a.positions) if (hit := lookup.find(p)) is not None])
    assert len(pairs) >= 200, "ethane train300 and train300+400 share ~700 frames once both are complete"
    ra, rb = pairs.T
    np.testing.assert_allclose(a.energies[ra], b.energies[rb], rtol=0, atol=1e-8)  # Hartree; SCF to 1e-10
    np.testing.assert_allclose(a.truncation_error[ra], b.truncation_error[rb], rtol=1e-4)
    first = np.asarray(a.meta.get("frames", np.arange(len(a))))[ra] < 700
    assert first.sum() >= 50
    pick = pairs[first][:3]
    ua, ub = a.compute_coefficients(pick[:, 0]), b.compute_coefficients(pick[:, 1])
    np.testing.assert_allclose(ua, ub, rtol=0, atol=1e-5 * np.abs(ua).max())
    # and a geometry the other set does not hold is not found
    moved = a.positions[ra[0]].copy()
    moved[0, 0] += 1e-3
    assert lookup.find(moved) is None
