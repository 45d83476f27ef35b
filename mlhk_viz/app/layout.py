"""The page: controls on the left, 3D and slice on top, error analyses in tabs."""

from __future__ import annotations

import panel as pn

from . import help as H
from . import views
from .state import AppState

CSS = """
.hyper-table td, .summary-table td {padding: 1px 6px; text-align: right}
.hyper-table th, .summary-table th {padding: 1px 6px}
"""


def _on_doc(doc, fn):
    """``fn`` wrapped to run with Panel's curdoc set to the session's document."""
    from panel.io.state import set_curdoc

    def run():
        with set_curdoc(doc):
            fn()
    return run


def doc_dispatch(doc):
    """Run ``fn`` on the session's Bokeh document (thread-safe), with Panel's curdoc set."""
    def dispatch(fn):
        try:
            doc.add_next_tick_callback(_on_doc(doc, fn))
        except Exception:  # noqa: BLE001 - the session is gone
            pass

    return dispatch


def build_app(data_dir=None, model_dir=None, dataset=None, curve="on demand", m=None, defer=True):
    """The whole app for one session (a Panel ``Row``); call ``.servable()`` on it.

    Defaults from the environment: ``MLHK_VIZ_DATA`` (data folder), ``MLHK_VIZ_MODELS`` (model
    folder), ``MLHK_VIZ_DATASET`` (file name or path of the set opened first), ``MLHK_VIZ_M``.
    ``defer``: in a served session, send the slice and the analysis tabs after the page has loaded.
    ``curve``: True computes the learning curve from the start, "on demand" when its tab is first
    opened, False never.
    """
    import os

    # "vtk" twice on purpose: a call whose only argument is "vtk" takes Panel's pyvista short-cut,
    # which reads the source of every caller frame (inspect.getouterframes with context): 0.3-0.9 s of
    # every session's page load. Twice is the same registration without that.
    pn.extension("vtk", "vtk", raw_css=[CSS], notifications=False)
    if dataset is None and os.environ.get("MLHK_VIZ_DATASET"):
        from pathlib import Path

        from .compute import default_data_dir

        p = Path(os.environ["MLHK_VIZ_DATASET"])
        dataset = p if p.is_absolute() else Path(data_dir or default_data_dir()) / p
    if m is None and os.environ.get("MLHK_VIZ_M"):
        m = int(os.environ["MLHK_VIZ_M"])
    doc = pn.state.curdoc
    served = doc is not None and doc.session_context is not None
    dispatch = doc_dispatch(doc) if served else None
    state = AppState(data_dir=data_dir, model_dir=model_dir, dispatch=dispatch, dataset=dataset, curve=curve is True,
                     **({"m": m} if m else {}))
    if served:
        pn.state.on_session_destroyed(lambda ctx: state.close())
    three, scene = views.view3d(state)
    if served:
        state.after_picture = scene.when_drawn
    # The 3D view goes out in the first document; the slice and the tabs (a second of HoloViews
    # plots to build on the server and to lay out in the browser) follow once the page has loaded,
    # so the density is on screen before the analyses. The placeholders keep the final geometry.
    side = pn.Column(width=views.SLICE_WIDTH, min_height=420, css_classes=["slice-slot"])
    analyses = pn.Column(sizing_mode="stretch_width", css_classes=["analyses-slot"])

    def rest():
        side.objects = [views.slice_view(state)]
        pages = [
            ("Errors", pn.Column(pn.Row(views.parity_plot(state), views.decomposition_plot(state)),
                                 pn.Row(views.summary_table(state), views.density_error_plot(state)))),
            ("Learning curve", views.learning_curve(state)),
            ("Trajectory", views.trajectory_plot(state)),
            ("Export", views.export_panel(state)),
            ("About", pn.pane.Markdown(H.ABOUT, width=800)),
        ]
        tabs = pn.Tabs(*pages, dynamic=True, css_classes=["tabs"])
        if curve == "on demand":
            i_curve = [name for name, _ in pages].index("Learning curve")
            tabs.param.watch(lambda e: state.want_curve() if e.new == i_curve else None, "active")
        analyses.objects = [tabs]

    if served and defer:
        pn.state.onload(rest)
    else:
        rest()
    # on a screen too narrow for both (a 1280 px projector), the slice goes below the 3D view
    # rather than past the window's edge
    top = pn.FlexBox(three, side, flex_wrap="wrap", sizing_mode="stretch_width")
    main = pn.Column(views.status_bar(state), top, analyses, sizing_mode="stretch_width")
    app = pn.Row(views.controls(state), main, sizing_mode="stretch_width")
    app.state, app.scene = state, scene
    return app
