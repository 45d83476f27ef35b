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


def doc_dispatch(doc):
    """Run ``fn`` on the session's Bokeh document (thread-safe), with Panel's curdoc set."""
    from panel.io.state import set_curdoc

    def dispatch(fn):
        def run():
            with set_curdoc(doc):
                fn()
        try:
            doc.add_next_tick_callback(run)
        except Exception:  # noqa: BLE001 - the session is gone
            pass

    return dispatch


def build_app(data_dir=None, model_dir=None, dataset=None, curve=True, m=None):
    """The whole app for one session (a Panel ``Row``); call ``.servable()`` on it.

    Defaults from the environment: ``MLHK_VIZ_DATA`` (data folder), ``MLHK_VIZ_MODELS`` (model
    folder), ``MLHK_VIZ_DATASET`` (file name or path of the set opened first), ``MLHK_VIZ_M``.
    """
    import os

    pn.extension("vtk", raw_css=[CSS], notifications=False)
    if dataset is None and os.environ.get("MLHK_VIZ_DATASET"):
        from pathlib import Path

        from .compute import default_data_dir

        p = Path(os.environ["MLHK_VIZ_DATASET"])
        dataset = p if p.is_absolute() else Path(data_dir or default_data_dir()) / p
    if m is None and os.environ.get("MLHK_VIZ_M"):
        m = int(os.environ["MLHK_VIZ_M"])
    doc = pn.state.curdoc
    dispatch = doc_dispatch(doc) if doc is not None and doc.session_context is not None else None
    state = AppState(data_dir=data_dir, model_dir=model_dir, dispatch=dispatch, dataset=dataset, curve=curve,
                     **({"m": m} if m else {}))
    if doc is not None and doc.session_context is not None:
        pn.state.on_session_destroyed(lambda ctx: state.close())
    three, scene = views.view3d(state)
    top = pn.Row(three, views.slice_view(state), sizing_mode="stretch_width")
    tabs = pn.Tabs(
        ("Errors", pn.Column(pn.Row(views.parity_plot(state), views.decomposition_plot(state)),
                             pn.Row(views.summary_table(state), views.density_error_plot(state)))),
        ("Learning curve", views.learning_curve(state)),
        ("Trajectory", views.trajectory_plot(state)),
        ("Export", views.export_panel(state)),
        ("About", pn.pane.Markdown(H.ABOUT, width=800)),
        dynamic=True, css_classes=["tabs"],
    )
    main = pn.Column(views.status_bar(state), top, tabs, sizing_mode="stretch_width")
    app = pn.Row(views.controls(state), main, sizing_mode="stretch_width")
    app.state, app.scene = state, scene
    return app
