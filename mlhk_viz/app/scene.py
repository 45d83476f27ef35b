"""3D meshes for the view: marching cubes with VTK (``pyvista.ImageData.contour``) and a
``pn.pane.VTK`` subclass that serialises cell arrays with numpy instead of a Python loop.

Why this way (docs/app.md has the measurements): scikit-image is not installed and plotly is
not a dependency of the project, while VTK/pyvista and Panel's bundled vtk.js are; the VTK pane
keeps its camera across updates and syncs it back to Python. Panel's serializer converts every
64-bit cell array element by element in Python (about 2 µs per index, 0.1-0.3 s per update for
the meshes here); :class:`MeshVTK` does the same conversion with numpy.
"""

from __future__ import annotations

import os

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import functools  # noqa: E402

import numpy as np  # noqa: E402

ELEMENT_COLOURS = {1: (0.92, 0.92, 0.92), 6: (0.35, 0.35, 0.35), 7: (0.2, 0.3, 0.95), 8: (0.9, 0.1, 0.1)}
ELEMENT_RADII = {1: 0.35, 6: 0.55, 7: 0.55, 8: 0.55}  # bohr, for drawing only
COLOURS = {"pred": "#f4a340", "dft": "#4a90d9", "plus": "#d62728", "minus": "#1f5fbf"}


def image(field: np.ndarray, axes) -> "pyvista.ImageData":  # noqa: F821
    import pyvista as pv

    ax = [np.asarray(a, float) for a in axes]
    img = pv.ImageData(dimensions=field.shape, spacing=tuple(a[1] - a[0] for a in ax), origin=tuple(a[0] for a in ax))
    img.point_data["f"] = np.asarray(field, np.float32).ravel(order="F")
    return img


def contour(field, axes, level, extra: dict | None = None):
    """Iso-surface ``field == level`` as a triangle PolyData (maybe empty), with ``extra`` fields sampled on it."""
    img = image(field, axes)
    for k, v in (extra or {}).items():
        img.point_data[k] = np.asarray(v, np.float32).ravel(order="F")
    lo, hi = float(np.min(field)), float(np.max(field))
    if not lo < level < hi:
        return None
    # flying edges is the fastest but drops other point arrays; the generic filter interpolates them
    mesh = img.contour([float(level)], scalars="f", method="contour" if extra else "flying_edges")
    if mesh.n_points == 0:
        return None
    return mesh


_atoms_cache: dict = {}


def atoms_mesh(numbers, positions_bohr):
    """Spheres and bonds as one PolyData with RGB point colours (memoised)."""
    key = (tuple(int(z) for z in numbers), np.round(np.asarray(positions_bohr, float), 6).tobytes())
    got = _atoms_cache.get(key)
    if got is None:
        if len(_atoms_cache) > 256:
            _atoms_cache.clear()
        got = _atoms_cache[key] = _atoms_mesh(numbers, positions_bohr)
    return got


BOND_MAX = 3.6  # bohr (about 1.9 Å): atoms closer than this are drawn bonded
BOND_RADIUS = 0.12  # bohr


@functools.lru_cache(maxsize=1)
def _templates():
    """Unit sphere and unit cylinder (axis z, z in [-0.5, 0.5]) as (points, triangles), built once."""
    import pyvista as pv

    out = []
    for m in (pv.Sphere(radius=1.0, center=(0, 0, 0), theta_resolution=16, phi_resolution=12),
              pv.Cylinder(center=(0, 0, 0), direction=(0, 0, 1), radius=1.0, height=1.0, resolution=12)):
        t = m.triangulate()
        out.append((np.asarray(t.points, float), t.faces.reshape(-1, 4)[:, 1:].copy()))
    return tuple(out)


def _instances(template, transforms, offsets):
    """Copies of ``template`` placed by ``transforms`` (k, 3, 3) and ``offsets`` (k, 3): points, triangles."""
    pts, tri = template
    k = len(offsets)
    placed = np.einsum("kij,pj->kpi", transforms, pts) + offsets[:, None, :]
    tris = tri[None] + (np.arange(k) * len(pts))[:, None, None]
    return placed.reshape(-1, 3), tris.reshape(-1, 3)


def _atoms_mesh(numbers, positions_bohr):
    """Spheres and bonds placed with numpy from two templates (pyvista's sources per atom cost ~10 ms each)."""
    import pyvista as pv

    numbers = np.asarray(numbers, int)
    pos = np.asarray(positions_bohr, float).reshape(-1, 3)
    sphere, cyl = _templates()
    radii = np.array([ELEMENT_RADII.get(int(z), 0.5) for z in numbers])
    p_s, t_s = _instances(sphere, radii[:, None, None] * np.eye(3), pos)
    rgb_s = np.repeat(np.array([ELEMENT_COLOURS.get(int(z), (0.6, 0.2, 0.8)) for z in numbers]) * 255, len(sphere[0]), axis=0)
    a, b = np.triu_indices(len(numbers), 1)
    d = pos[b] - pos[a]
    length = np.linalg.norm(d, axis=1)
    keep = (length < BOND_MAX) & (length > 0)
    a, b, d, length = a[keep], b[keep], d[keep], length[keep]
    # an orthonormal frame per bond with the template's z axis along the bond
    u = d / length[:, None]
    helper = np.where(np.abs(u[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]])
    v = np.cross(u, helper)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    w = np.cross(u, v)
    frames = np.stack([v * BOND_RADIUS, w * BOND_RADIUS, u * length[:, None]], axis=2)  # columns: x, y, z images
    p_c, t_c = _instances(cyl, frames, (pos[a] + pos[b]) / 2)
    points = np.vstack([p_s, p_c])
    tris = np.vstack([t_s, t_c + len(p_s)])
    mesh = pv.PolyData(points, np.hstack([np.full((len(tris), 1), 3), tris]).ravel())
    mesh.point_data["rgb"] = np.vstack([rgb_s, np.full((len(p_c), 3), 170.0)]).astype(np.uint8)
    return mesh


#: the 3D pane's size in pixels (width, height); the camera frames the copies for its aspect ratio
PANE_SIZE = (640, 460)


def camera_for(axes, normal, side, step, n_copies, aspect=PANE_SIZE[0] / PANE_SIZE[1], inset=1.5):
    """(position, focal point, view up): looking along the plane normal, copies side by side on screen.

    The frame holds the content of every copy: the view grid less ``inset`` bohr at each end (the grid
    reaches 4 bohr beyond the atoms, the iso-surfaces about 2.5), widened by the copies' offsets along
    ``side``, for a 30° vertical view angle and the pane's ``aspect`` (width / height), with 8 % to spare.
    """
    lo = np.array([a[0] for a in axes])
    hi = np.array([a[-1] for a in axes])
    n = max(n_copies, 1) if np.any(step) else 1
    content = np.maximum(hi - lo - 2 * inset, 1.0)
    up_axis = [d for d in range(3) if d not in (normal, side)][0]
    wide = content[side] + float(np.max(np.abs(step))) * (n - 1)
    height = 1.08 * max(content[up_axis], wide / aspect)
    hi = hi + step * (n - 1)
    focal = (lo + hi) / 2
    up = np.zeros(3)
    up[up_axis] = 1.0
    e_n = np.eye(3)[normal]
    # look along +s e_n with s chosen so that the side-by-side axis points to the right on screen
    s = 1.0 if np.cross(e_n, up)[side] > 0 else -1.0
    pos = focal - s * e_n * height / (2 * np.tan(np.radians(15)))
    return tuple(map(tuple, (pos, focal, up)))


def shifted(mesh, offset):
    if mesh is None:
        return None
    m = mesh.copy()
    m.points = m.points + np.asarray(offset, np.float32)
    return m


def build_meshes(mol, iso: float, diff_iso: float, show, layout: str, uncertainty=None) -> dict:
    """Named meshes for the 3D view of a :class:`~mlhk_viz.app.compute.Molecule`.

    ``show`` is a subset of {"predicted", "DFT", "difference"}; "side by side" puts DFT and the
    difference next to the prediction (shifted along the molecular plane's shorter axis), so one
    camera serves all three; "overlay" draws them at the same place. The predicted surface is
    coloured by ``uncertainty`` (the predictive standard deviation field) when it is given.
    """
    axes = mol.axes
    ext = np.array([a[-1] - a[0] for a in axes])
    inplane = [d for d in range(3) if d != mol.normal]
    side = max(inplane, key=lambda d: ext[d])
    step = np.zeros(3)
    step[side] = ext[side] * 0.8 if layout == "side by side" else 0.0
    out: dict = {"_camera": camera_for(axes, mol.normal, side, step, len([s for s in show if s in ("predicted", "DFT", "difference")]))}
    slot = 0
    atoms = atoms_mesh(mol.numbers, mol.atoms_bohr)
    if "predicted" in show:
        extra = {"std": uncertainty} if uncertainty is not None else None
        out["pred"] = contour(mol.pred, axes, iso, extra)
        out["atoms0"] = atoms
        slot += 1
    if "DFT" in show:
        off = step * slot
        out["dft"] = shifted(contour(mol.dft, axes, iso), off)
        if slot and layout == "side by side":
            out[f"atoms{slot}"] = shifted(atoms, off)
        elif not slot:
            out["atoms0"] = atoms
        slot += 1 if layout == "side by side" else 0
    if "difference" in show:
        off = step * slot
        out["plus"] = shifted(contour(mol.diff, axes, diff_iso), off)
        out["minus"] = shifted(contour(mol.diff, axes, -diff_iso), off)
        if layout == "side by side" and slot:
            out[f"atoms{slot}"] = shifted(atoms, off)
        elif "atoms0" not in out:
            out["atoms0"] = atoms
    return out


# ------------------------------------------------------------------------------ the pane
def _fast_cached_array(self, pMd5, binary=False, compression=False):
    from panel.pane.vtk import synchronizable_serializer as rws
    from vtk.util import numpy_support

    cache_obj = self.dataArrayCache[pMd5]
    array = cache_obj["array"]
    if array.GetDataType() in (12, 16, 17):
        a = numpy_support.vtk_to_numpy(array)
        a = np.where(a < 0, -1, a).astype(np.int32 if array.GetDataType() == 16 else np.uint32)
        buf = a.tobytes()
    else:
        buf = rws.buffer(array).tobytes()
    if binary:
        return buf if not compression else rws.zipCompression(pMd5, buf)
    return rws.base64Encode(buf if not compression else rws.zipCompression(pMd5, buf))


def mesh_pane_class():
    """``MeshVTK``: ``pn.pane.VTK`` for a render window, with a vectorised array serializer."""
    global _MeshVTK
    if _MeshVTK is not None:
        return _MeshVTK
    from panel.pane.vtk import synchronizable_serializer as rws
    from panel.pane.vtk.vtk import VTKRenderWindowSynchronized

    class FastContext(rws.SynchronizationContext):
        getCachedDataArray = _fast_cached_array

    class MeshVTK(VTKRenderWindowSynchronized):
        """A synchronised VTK pane whose scene serialisation avoids Panel's per-element Python loop."""

        def _serialize_ren_win(self, ren_win, context, binary=False, compression=True, exclude_arrays=None):
            if type(context) is rws.SynchronizationContext:
                context.__class__ = FastContext
            return super()._serialize_ren_win(ren_win, context, binary, compression, exclude_arrays)

    _MeshVTK = MeshVTK
    return MeshVTK


_MeshVTK = None

#: Runs in the browser when a new scene reaches the VTK view: wait until vtk.js has replaced its
#: render window and synchronised the scene, then for two animation frames (so it is on screen),
#: then count it in ``drawn``.
DRAWN_JS = """
const view = Bokeh.index.find_one(source)
if (view == null) { drawn.value = drawn.value + 1; return }
const old = view._vtk_renwin
const t0 = performance.now()
const poll = () => {
  const w = view._vtk_renwin
  if (w != null && w !== old && view._renderable) {
    requestAnimationFrame(() => requestAnimationFrame(() => { drawn.value = drawn.value + 1 }))
  } else if (performance.now() - t0 < 30000) {
    setTimeout(poll, 25)
  }
}
setTimeout(poll, 25)
"""


class Scene:
    """A pyvista plotter (off screen, tiny server-side window) shown in a :class:`MeshVTK` pane.

    ``update(meshes)`` replaces actors by name in place and synchronises once; the browser keeps
    its camera. Put :attr:`view` on the page (the pane with the counter the browser reports drawn
    scenes to; without it every update after the first waits ``GAP`` seconds).
    """

    def __init__(self, height=PANE_SIZE[1], width=PANE_SIZE[0], css_classes=("view3d",), **pane_kw):
        import pyvista as pv

        self.plotter = pv.Plotter(off_screen=True, notebook=False, window_size=(int(os.environ.get("MLHK_VIZ_WS", "8")),) * 2)
        self.plotter.set_background("white")
        self.plotter.enable_anti_aliasing = False
        self._names: set = set()
        self._first = True
        self._camera = None
        self._pending = None
        self._ready = False
        self._doc = None
        self.updates = 0  # scene updates sent (for tests and the benchmark)
        # vtk.js cannot start from an empty scene (no renderer to attach the camera to): keep a
        # tiny transparent placeholder in it
        import pyvista as pv

        self.plotter.add_mesh(pv.Sphere(radius=1e-3), name="_placeholder", opacity=0.0, reset_camera=False, render=False)
        cls = mesh_pane_class()
        self.pane = cls(self.plotter.ren_win, height=height, width=width, orientation_widget=True,
                        css_classes=list(css_classes), enable_keybindings=False, **pane_kw)
        # The browser counts the scenes it has drawn into this hidden widget (see DRAWN_JS); the
        # server paces its updates and starts follow-up work on that count.
        import panel as pn

        self.drawn = pn.widgets.IntInput(value=0, visible=False, css_classes=["scene-drawn"])
        self.pane.jscallback(args={"drawn": self.drawn}, scene=DRAWN_JS)
        #: what to put on the page: the pane and the (hidden) counter it reports to
        self.view = pn.Column(self.pane, self.drawn, margin=0)
        self._inflight = False
        self._after: list = []
        # watched from the start: the browser's first camera report may come before any update
        self.pane.param.watch(self._on_camera, "camera")
        self.drawn.param.watch(self._on_drawn, "value")

    #: vtk.js rebuilds its render window on each update, and an update that arrives during a
    #: rebuild leaves it blank. So one update is in flight at a time: the next goes out when the
    #: browser reports the last one drawn, or after ``GAP`` seconds if no report comes (a browser
    #: that throttles a hidden tab); updates made meanwhile are coalesced, the latest wins. The
    #: first waits until the browser has drawn the page (its first camera report).
    GAP = 6.0
    READY_TIMEOUT = 20.0

    def _session_doc(self):
        import panel as pn

        doc = pn.state.curdoc
        return doc if doc is not None and doc.session_context is not None else None

    def _on_camera(self, *_):
        if not self._ready:
            self._ready = True
            self._kick()

    def update(self, meshes: dict, uncertainty_range=None) -> None:
        """Show ``meshes`` (name -> PolyData or None); coalesced and paced in a server session."""
        self._pending = (meshes, uncertainty_range)
        self._kick()

    def when_drawn(self, fn) -> None:
        """Run ``fn()`` on the session once the browser has drawn what was sent or is waiting to be
        sent (at once if nothing is), so follow-up work does not compete with the drawing for the CPU."""
        if self._doc is None or not (self._inflight or self._pending is not None):
            fn()
        else:
            self._after.append(fn)

    def _kick(self):
        doc = self._session_doc() or self._doc
        if doc is None or not self.pane._models:  # not shown yet: goes out with the first page
            if self._pending is not None:
                self._apply(*self._pending)
                self._pending = None
            return
        if self._doc is None:
            self._doc = doc
            if not self._ready:
                doc.add_timeout_callback(self._on_camera, int(self.READY_TIMEOUT * 1000))
        if self._pending is not None and self._ready and not self._inflight:
            self._flush()

    def _on_drawn(self, *_):
        self._inflight = False
        self._next()

    def _no_report(self, sent):
        if self._inflight and sent == self.updates:  # no report for the last update: stop waiting for it
            self._inflight = False
            self._next()

    def _next(self):
        """The browser is free: send what is pending, or else run what waited for the picture."""
        from panel.io.state import set_curdoc

        self._kick()
        if not self._inflight and self._pending is None and self._after:
            fns, self._after = self._after, []
            with set_curdoc(self._doc):
                for fn in fns:
                    fn()

    def _flush(self):
        from panel.io.state import set_curdoc

        meshes, rng = self._pending
        self._pending = None
        self._inflight = True
        with set_curdoc(self._doc):
            self._apply(meshes, rng)
        sent = self.updates
        self._doc.add_timeout_callback(lambda: self._no_report(sent), int(self.GAP * 1000))

    def _apply(self, meshes: dict, uncertainty_range=None) -> None:
        pl = self.plotter
        for name in list(self._names):
            if meshes.get(name) is None:
                pl.remove_actor(name, reset_camera=False, render=False)
                self._names.discard(name)
        camera = meshes.get("_camera")
        for name, mesh in meshes.items():
            if mesh is None or name.startswith("_"):
                continue
            kw = dict(name=name, reset_camera=False, render=False, smooth_shading=True)
            if name.startswith("atoms"):
                pl.add_mesh(mesh, scalars="rgb", rgb=True, **kw)
            elif name == "pred" and "std" in mesh.point_data:
                pl.add_mesh(mesh, scalars="std", cmap="viridis", clim=uncertainty_range, opacity=0.75,
                            show_scalar_bar=False, **kw)
            elif name == "dft":
                pl.add_mesh(mesh, color=COLOURS["dft"], opacity=0.45 if "pred" in meshes else 0.75, **kw)
            else:
                pl.add_mesh(mesh, color=COLOURS[name], opacity=0.75, **kw)
            self._names.add(name)
        if self._names and (self._first or (camera is not None and camera != self._camera)):
            # a new layout (or the first picture): frame it; otherwise the browser keeps its camera
            if camera is not None:
                pl.camera_position = list(camera)
                pos, focal, up = camera
                self.pane.camera = {"position": list(pos), "focalPoint": list(focal), "viewUp": list(up), "viewAngle": 30.0}
            else:
                pl.reset_camera()
            self._camera = camera
            self._first = False
        self.pane.synchronize()
        self.updates += 1
