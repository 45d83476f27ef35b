"""The 3D view's atom meshes against pyvista's own per-atom sources."""

from __future__ import annotations

import numpy as np
import pytest

pv = pytest.importorskip("pyvista")


def _malonaldehyde_like():
    rng = np.random.default_rng(3)
    numbers = np.array([8, 6, 6, 6, 8, 1, 1, 1, 1])
    pos = rng.normal(scale=2.5, size=(len(numbers), 3))
    pos[1] = pos[0] + [2.3, 0.1, 0.0]  # at least one bond in every direction class
    pos[2] = pos[1] + [0.0, 0.0, 2.6]
    pos[3] = pos[2] + [-1.5, 1.9, 0.4]
    return numbers, pos


def test_atom_spheres_equal_pyvista_spheres_and_bonds_join_bonded_atoms():
    from mlhk_viz.app import scene

    numbers, pos = _malonaldehyde_like()
    mesh = scene._atoms_mesh(numbers, pos)
    assert mesh.is_all_triangles
    spheres = [pv.Sphere(radius=scene.ELEMENT_RADII[int(z)], center=p, theta_resolution=16, phi_resolution=12)
               for z, p in zip(numbers, pos)]
    n_s = spheres[0].n_points
    got = np.asarray(mesh.points).reshape(-1, 3)
    for k, s in enumerate(spheres):
        np.testing.assert_allclose(got[k * n_s:(k + 1) * n_s], s.points, atol=1e-5)
        np.testing.assert_array_equal(mesh.point_data["rgb"][k * n_s],
                                      (np.array(scene.ELEMENT_COLOURS[int(numbers[k])]) * 255).astype(np.uint8))

    # bonds: every pair closer than BOND_MAX, as a cylinder of BOND_RADIUS around the axis between the two centres
    pairs = [(a, b) for a in range(len(numbers)) for b in range(a + 1, len(numbers))
             if np.linalg.norm(pos[a] - pos[b]) < scene.BOND_MAX]
    assert len(pairs) >= 3
    cyl = got[len(numbers) * n_s:].reshape(len(pairs), -1, 3)
    for (a, b), pts in zip(pairs, cyl):
        axis = pos[b] - pos[a]
        t = (pts - pos[a]) @ axis / (axis @ axis)
        radial = np.linalg.norm(pts - pos[a] - t[:, None] * axis, axis=1)
        assert t.min() == pytest.approx(0.0, abs=1e-6) and t.max() == pytest.approx(1.0, abs=1e-6)
        np.testing.assert_allclose(radial[radial > 1e-9], scene.BOND_RADIUS, rtol=1e-6)

    # total area: the spheres' plus pyvista's own cylinders' (a roll about the axis does not change it)
    area = sum(s.area for s in spheres) + sum(
        pv.Cylinder(center=(pos[a] + pos[b]) / 2, direction=pos[b] - pos[a], radius=scene.BOND_RADIUS,
                    height=np.linalg.norm(pos[b] - pos[a]), resolution=12).triangulate().area for a, b in pairs)
    assert mesh.area == pytest.approx(area, rel=1e-6)


class _FakeDoc:
    """The parts of a Bokeh document the scene's pacing uses; timeouts run when the test says so."""

    def __init__(self):
        self.timeouts = []

    def add_timeout_callback(self, fn, ms):
        self.timeouts.append((fn, ms))


def test_scene_sends_one_update_at_a_time_and_runs_follow_ups_after_the_browser_drew():
    """One update in flight: the next goes out when the browser reports the last drawn (the latest
    pending wins); follow-up work waits for the last picture; no report within GAP frees the pipe."""
    from mlhk_viz.app import scene

    sc = scene.Scene()
    sent = []
    sc._apply = lambda meshes, rng=None: (sent.append(meshes["k"]), setattr(sc, "updates", sc.updates + 1))
    doc = _FakeDoc()
    sc._doc, sc.pane._models = doc, {"root": None}  # as if shown in a session
    sc._ready = True
    ran = []

    sc.update({"k": 1})
    assert sent == [1] and sc._inflight
    sc.update({"k": 2})
    sc.update({"k": 3})  # coalesced with 2: only the latest goes out
    sc.when_drawn(lambda: ran.append("stats"))
    assert sent == [1] and ran == []
    sc.drawn.value += 1  # the browser drew 1
    assert sent == [1, 3] and ran == []  # the follow-up waits for 3, the picture it belongs to
    sc.drawn.value += 1  # ... and 3
    assert ran == ["stats"] and not sc._inflight
    sc.when_drawn(lambda: ran.append("now"))  # nothing in flight: at once
    assert ran == ["stats", "now"]

    # a browser that never reports (a hidden tab): the fallback timeout of the last update frees the pipe
    sc.update({"k": 4})
    sc.update({"k": 5})
    sc.when_drawn(lambda: ran.append("late"))
    fallback = [fn for fn, ms in doc.timeouts if ms == int(sc.GAP * 1000)]
    assert len(fallback) == 3 and sent == [1, 3, 4]
    fallback[-2]()  # an earlier update's timeout: not the one in flight, no effect
    assert sent == [1, 3, 4]
    fallback[-1]()
    assert sent == [1, 3, 4, 5] and ran == ["stats", "now"]
    doc.timeouts[-1][0]()
    assert ran == ["stats", "now", "late"] and not sc._inflight


def _ndc(camera, points, aspect):
    """Normalised screen coordinates of ``points`` for a vtk perspective camera with a 30° view angle."""
    pos, focal, up = (np.asarray(v, float) for v in camera)
    f = (focal - pos) / np.linalg.norm(focal - pos)
    r = np.cross(f, up)
    r /= np.linalg.norm(r)
    u = np.cross(r, f)
    v = np.asarray(points) - pos
    z = v @ f
    t = np.tan(np.radians(15))
    return (v @ r) / (z * t * aspect), (v @ u) / (z * t)


@pytest.mark.parametrize("molecule", ["malonaldehyde", "benzene", "ethane"])
@pytest.mark.parametrize("n_copies", [1, 2, 3])
def test_side_by_side_camera_keeps_every_copy_on_screen(molecule, n_copies):
    """The density clouds (atoms + 2 bohr) of every side-by-side copy of an MD set's frames project inside
    the 640 x 460 pane, the copies left to right (the screenshot of malonaldehyde had the outer copies cut)."""
    from pathlib import Path

    from mlhk_viz.app import compute, scene
    from mlhk_viz.basis import FourierBasis
    from mlhk_viz.reference.md import load_trajectory

    md = Path(__file__).resolve().parent.parent / "data" / "md"
    t = load_trajectory(md / f"{molecule}-test-300K.npz")
    frames = t["positions"][:50]  # the frames of a set: Å, aligned, centred
    axes = compute.view_axes(frames, FourierBasis())
    ext = np.array([a[-1] - a[0] for a in axes])
    normal = int(np.argmin(np.ptp(frames.reshape(-1, 3), axis=0)))  # as the app picks it
    side = max((d for d in range(3) if d != normal), key=lambda d: ext[d])
    step = np.zeros(3)
    step[side] = ext[side] * 0.8
    cam = scene.camera_for(axes, normal, side, step, n_copies)
    aspect = scene.PANE_SIZE[0] / scene.PANE_SIZE[1]
    corners = 2.0 * np.array(np.meshgrid(*[[-1, 1]] * 3)).reshape(3, -1).T
    cloud = (frames.reshape(-1, 3)[:, None, :] / 0.529177210903 + corners[None]).reshape(-1, 3)
    centres = []
    for k in range(n_copies):
        x, y = _ndc(cam, cloud + step * k, aspect)
        assert np.abs(x).max() < 1.0 and np.abs(y).max() < 1.0, (k, np.abs(x).max(), np.abs(y).max())
        centres.append(x.mean())
    assert np.all(np.diff(centres) > 0)
    x, y = _ndc(cam, cloud, aspect)  # and no smaller than it need be: one copy spans a good part of the pane
    assert max(np.ptp(x), np.ptp(y)) > 1.4 / n_copies
