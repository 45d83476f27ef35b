"""Views: functions of an :class:`~mlhk_viz.app.state.AppState` that return Panel/HoloViews objects."""

from __future__ import annotations

import io
import math
import tempfile
from pathlib import Path

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param
from ase.units import Bohr

from ..datasets import write_cube
from ..evaluation import KCAL_PER_HARTREE
from ..reproduce.paper import QUANTITIES, TABLE1
from . import compute, help as H
from .scene import PANE_SIZE, Scene
from .state import CV_RULES, ENERGY_FEATURES, HK, KS, SHOW

hv.extension("bokeh", logo=False)
hv.opts.defaults(hv.opts.Points(framewise=True), hv.opts.Scatter(framewise=True), hv.opts.Curve(framewise=True),
                 hv.opts.Image(framewise=True), hv.opts.Spikes(framewise=True))

KC = KCAL_PER_HARTREE
COL = {"mlhk": "#e07b00", "mlks": "#3674b5", "dED": "#c4372b", "dEF": "#6a9f3b", "dft": "#222222"}
AX = "xyz"


# ------------------------------------------------------------------------------ controls
class _ClampTyped:
    """An editable slider that clamps a typed value to its parameter's current bounds and says so.

    Panel's editable sliders raise inside a watcher on a typed value beyond the bounds (their own fixed
    ones, or the linked parameter's when those changed later, e.g. M with the data set): the box keeps
    showing it while nothing changes and the user is not told. ``on_clamp(typed, used, lo, hi)`` is called
    instead, after the box and the value have been set to the nearest bound. ``limits()`` gives the bounds.
    """

    on_clamp = None
    limits = None

    # re-declared: an override without it is not called again when the bounds change (param drops the watch)
    @param.depends("start", "end", "fixed_start", "fixed_end", watch=True)
    def _update_bounds(self):
        super()._update_bounds()
        # no low/high on the box: Bokeh's NumericInput would keep an out-of-range entry in the browser
        # and never send it, so nothing could be clamped or told
        self._value_edit.param.update(start=None, end=None)

    def _sync_value(self, event):
        v = event.new
        if event.name in ("value", "value_throttled") and v is not None:
            lo, hi = self.limits() if self.limits is not None else (self.fixed_start, self.fixed_end)
            used = v if lo is None else max(lo, v)
            used = used if hi is None else min(hi, used)
            if used != v:
                self._value_edit.value = used  # re-enters here with a value in bounds
                if self.on_clamp is not None:
                    self.on_clamp(v, used, lo, hi)
                return
        super()._sync_value(event)


class ClampedFloatSlider(_ClampTyped, pn.widgets.EditableFloatSlider):
    pass


class ClampedIntSlider(_ClampTyped, pn.widgets.EditableIntSlider):
    pass


def _clamped(cls, parameter, state, **kw):
    """``cls.from_param(parameter)`` clamping typed values to the parameter's bounds, told in ``state.notice``."""
    w = cls.from_param(parameter, **kw)
    w.limits = lambda: parameter.owner.param[parameter.name].bounds

    def follow(event):  # Panel moves start/end with the parameter's bounds, but the hard ones stay as created:
        lo, hi = event.new  # another data set's molecule 178 would then be refused by a slider that ends at 149
        w.param.update(fixed_start=lo, fixed_end=hi)

    parameter.owner.param.watch(follow, parameter.name, what="bounds")
    b = lambda x: "∞" if x is None else f"{x:g}"  # noqa: E731
    w.on_clamp = lambda typed, used, lo, hi: setattr(
        state, "notice", f"{kw['name']}: {typed:g} is outside {b(lo)} … {b(hi)}; using {used:g}")
    return w


def _log_format():
    from bokeh.models import CustomJSTickFormatter

    return CustomJSTickFormatter(code="return Math.pow(10, tick).toExponential(1)")


def _with_help(widget, text):
    """The widget with its help text: as its own tooltip where the widget has one, else an icon beside it."""
    if "description" in widget.param:
        widget.description = text
        return widget
    return pn.Row(widget, pn.widgets.TooltipIcon(value=text, margin=(18, 0, 0, 0)), sizing_mode="stretch_width")


def controls(state) -> pn.Column:
    p = state.param
    ds = pn.widgets.Select.from_param(p.dataset, name="Data set", css_classes=["w-dataset"])
    ds.options = {state.dataset_label(v): v for v in state.param.dataset.objects}
    mf = pn.widgets.Select.from_param(p.model_file, name="Model file",
                                      css_classes=["w-model-file"])
    mf.options = {state.model_label(v): v for v in state.param.model_file.objects}

    def relabel(*_):
        ds.options = {state.dataset_label(v): v for v in state.param.dataset.objects}
        mf.options = {state.model_label(v): v for v in state.param.model_file.objects}

    state.param.watch(relabel, ["saved_path"])
    rescan = pn.widgets.Button(label="↻ rescan folders", color="light", width=140, css_classes=["w-rescan"])
    rescan.on_click(lambda e: (state.refresh_lists(), relabel()))
    kind = pn.widgets.RadioButtonGroup.from_param(p.kind, name="Model", css_classes=["w-kind"], color="primary")
    gamma = pn.widgets.FloatSlider.from_param(p.gamma, name="γ (Å)", css_classes=["w-gamma"])
    spacing = pn.widgets.FloatSlider.from_param(p.spacing, name="Δ (Å)",
                                                css_classes=["w-spacing"])
    sig_auto = pn.widgets.Checkbox.from_param(p.sigma_auto, name="σ: auto by CV on the training set",
                                              css_classes=["w-sigma-auto"])
    sig = _clamped(ClampedFloatSlider, p.log_sigma, state, name="log₁₀ σ / median distance", format="0.00", css_classes=["w-sigma"])
    lam_auto = pn.widgets.Checkbox.from_param(p.lam_auto, name="λ: auto by CV on the training set", css_classes=["w-lam-auto"])
    lam = _clamped(ClampedFloatSlider, p.log_lam, state, name="log₁₀ λ", format="0.00",
                                                    css_classes=["w-lam"])
    rule = pn.widgets.RadioButtonGroup.from_param(p.cv_rule, name="CV rule", options=CV_RULES, css_classes=["w-cv-rule"],
                                                  color="light")
    feats = pn.widgets.RadioButtonGroup.from_param(p.energy_features, name="Energy functional trained on",
                                                   options=ENERGY_FEATURES, css_classes=["w-energy-features"], color="light")
    m = _clamped(ClampedIntSlider, p.m, state, name="Training size M", css_classes=["w-m"])
    # fixed heights on the texts that change per update, so that nothing below them jumps (tall enough
    # for the table's wrapped rows: at 92 px the Save button covered its last row)
    chosen = pn.pane.HTML(pn.bind(_chosen_html, state.param.result, state.param.kind), css_classes=["hyper"],
                          sizing_mode="stretch_width", height=124,
                          # a number split over two lines ("1e-" / "14") reads as two numbers
                          stylesheets=[".hyper-table td.sigma, .hyper-table td.lam { white-space: nowrap; }"])

    def disable(*_):
        sig.disabled = state.sigma_auto or bool(state.loaded_path)
        lam.disabled = state.lam_auto or bool(state.loaded_path)

    state.param.watch(disable, ["sigma_auto", "lam_auto", "loaded_path"])
    disable()
    mol = _clamped(ClampedIntSlider, p.molecule, state, name="Molecule (index in the set)", css_classes=["w-molecule"])
    iso = pn.widgets.FloatSlider.from_param(p.iso, name="Iso level (e/bohr³)",
                                            format="0.000", css_classes=["w-iso"])
    dfrac = pn.widgets.FloatSlider.from_param(p.diff_frac, name="Difference lobes (fraction of max |Δn|)", css_classes=["w-diff"])
    show = pn.widgets.CheckButtonGroup.from_param(p.show, name="Show", options=SHOW, css_classes=["w-show"])
    lay = pn.widgets.RadioButtonGroup.from_param(p.layout3d, name="Layout", css_classes=["w-layout"])
    unc = pn.widgets.Checkbox.from_param(p.uncertainty, name="Colour by predictive uncertainty", css_classes=["w-unc"])
    save = pn.widgets.Button(label="Save model", color="success", css_classes=["w-save"])
    save.on_click(lambda e: state.save())
    saved = pn.widgets.FileDownload(callback=lambda: _read(state.saved_path), filename="model.npz",
                                    label="Download saved model", color="light", css_classes=["w-model-download"],
                                    visible=False)

    def on_saved(*_):
        saved.filename = Path(state.saved_path).name
        saved.visible = bool(state.saved_path)

    state.param.watch(on_saved, ["saved_path"])
    K, w = H.KNOBS, _with_help
    return pn.Column(
        "### Data", w(ds, K["dataset"]), w(mf, K["model_file"]), rescan,
        "### Model", w(kind, K["kind"]), w(gamma, K["gamma"]), w(spacing, K["spacing"]), w(sig_auto, K["sigma_auto"]),
        w(sig, K["sigma"]), w(lam_auto, K["lam_auto"]), w(lam, K["lam"]),
        pn.pane.HTML("CV rule for 'auto':", margin=(8, 10, -8, 10)), w(rule, K["cv_rule"]),
        pn.pane.HTML("Energy functional trained on:", margin=(8, 10, -8, 10)), w(feats, K["energy_features"]),
        w(m, K["m"]), chosen, w(save, K["save"]), saved,
        "### View", w(mol, K["molecule"]), w(iso, K["iso"]), w(dfrac, K["diff_frac"]), w(show, K["show"]),
        w(lay, K["layout3d"]), w(unc, K["uncertainty"]),
        width=340, css_classes=["controls"],
    )


def _read(path):
    return io.BytesIO(Path(path).read_bytes()) if path else io.BytesIO(b"")


def _fmt(v):
    return "–" if v is None or not np.isfinite(v) else f"{v:.3g}"


def _chosen_html(result, kind):
    if result is None:
        return "<i>training…</i>"
    rows = []
    for label, ch in (("ML-HK density", result.hk), ("ML-HK energy functional", result.energy), ("ML-KS", result.ks)):
        how = []
        if ch.by_cv[0]:
            how.append("σ by CV")
        if ch.by_cv[1]:
            how.append("λ by CV")
        if any(ch.by_cv) and ch.rule == "1se":
            how.append("1-SE rule")
        if label == "ML-HK energy functional" and result.knobs.energy_features != "predicted":  # not Eq. 13
            how.append({"loo": "on LOO densities", "dft": "on DFT densities"}[result.knobs.energy_features])
        rows.append(f"<tr><td>{label}</td><td class='sigma' data-value='{ch.sigma!r}'>{_fmt(ch.sigma)}</td>"
                    f"<td class='lam' data-value='{ch.lam!r}'>{_fmt(ch.lam)}</td>"
                    f"<td>{', '.join(how) or 'set by hand'}</td></tr>")
    return ("<table class='hyper-table' style='font-size:12px'><tr><th></th><th>σ</th><th>λ</th><th></th></tr>"
            + "".join(rows) + "</table>")


# ------------------------------------------------------------------------------ status
def status_bar(state) -> pn.Row:
    bar = pn.indicators.Progress(value=100, max=100, width=160, height=20, bar_color="info", css_classes=["progress"])
    stage = pn.pane.Str("", css_classes=["stage"], width=260, height=24)
    # long notices (a clamp message before the fit summary) wrap onto a second line instead of being cut
    text = pn.pane.Str("", css_classes=["status"], sizing_mode="stretch_width", min_height=24,
                       stylesheets=["pre { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }"])

    def upd(*_):
        bar.value = state.progress if state.busy else 100
        bar.active = state.busy
        stage.object = state.stage if state.busy else "ready"
        text.object = state.error or " — ".join(t for t in (state.notice, state.status) if t)

    state.param.watch(upd, ["progress", "stage", "busy", "status", "notice", "error"])
    upd()
    knobs = pn.pane.HTML(pn.bind(_result_knobs, state.param.result), width=0, height=0, margin=0)
    return pn.Row(bar, stage, text, knobs, sizing_mode="stretch_width", min_height=34)


def _result_knobs(result):
    """The knobs and hyperparameters of the result on screen, as data attributes (for tests and scripts)."""
    if result is None:
        return ""
    k = result.knobs
    return (f"<span class='result-knobs' data-dataset='{Path(k.dataset).name}' data-m='{len(result.train)}' "
            f"data-hk-sigma='{result.hk.sigma!r}' data-hk-lam='{result.hk.lam!r}' data-hk-factor='{result.hk.factor!r}' "
            f"data-ks-sigma='{result.ks.sigma!r}' data-ks-lam='{result.ks.lam!r}'></span>")


# ------------------------------------------------------------------------------ 3D
def view3d(state, height=PANE_SIZE[1], width=PANE_SIZE[0]):
    sc = Scene(height=height, width=width)

    last = [None]

    def upd(*_):
        vd = state.view_data
        if vd is not None and vd.key != last[0]:  # the same picture again: nothing to send
            last[0] = vd.key
            sc.update(vd.meshes, vd.std_range)

    state.param.watch(upd, ["view_data"])
    upd()
    cap = pn.pane.HTML(pn.bind(_mol_caption, state.param.view_data, state.param.result), css_classes=["mol-caption"],
                       sizing_mode="stretch_width", height=60)
    return pn.Column(sc.view, cap, width=width), sc


def _of_set(result, dataset):
    """``result`` if it was fitted on ``dataset``, else None.

    After a switch of data set the new set's first 3D view arrives before its fit (by design: the picture
    first), so for a moment the result on screen is the old set's, indexed by the old set's molecules.
    """
    return result if result is not None and result.knobs.dataset == dataset else None


def _source_dataset(source) -> str:
    """The data set of a view's source: ``("knobs", FitKnobs)`` or ``("file", model path, data set)``."""
    return source[1].dataset if source[0] == "knobs" else source[2]


def _mol_caption(vd, result):
    if vd is None:
        return ""
    m = vd.molecule
    extra = ""
    result = _of_set(result, _source_dataset(vd.source))
    if result is not None and not len(result.train) == 0:
        role = "training" if m.index in set(result.train.tolist()) else ("test" if m.index in set(result.test.tolist()) else "other")
        extra = f" ({role} molecule)"
        if result.x_values is not None and result.x_label != compute.FRAME_LABEL:  # not the index once more
            extra += f", {result.x_label} = {result.x_values[m.index]:.3f}"
    parts = [f"<span class='mol-index'>molecule {m.index}</span>{extra}"]
    if m.pred is None:
        parts += ["<span class='energies-only'>an ML-KS model predicts energies only: the DFT density is shown</span>",
                  f"electrons DFT {m.electrons_dft:.4f}"]
    else:
        parts += [f"electrons ML {m.electrons_pred:.4f} / DFT {m.electrons_dft:.4f}",
                  f"‖n_ML − n_DFT‖₂ = <span class='mol-l2'>{m.l2:.3g}</span>", f"GP variance {m.var:.2g}",
                  f"lobes at ±{vd.diff_level:.2g} e/bohr³"]
    # lines break between the parts, never inside a number ("2.7e-" / "09")
    return "; ".join(f"<span style='white-space: nowrap'>{p}</span>" for p in parts)


# ------------------------------------------------------------------------------ slice
#: every slice field (predicted, DFT, their difference, the GP standard deviation) is a density
DENSITY = hv.Dimension("density", unit="e/bohr³")
SLICE_WIDTH = 410


def slice_view(state):
    def img(view_data, slice_pos, slice_field, dataset):
        if view_data is None:
            # a blank frame on the data set's grid, so the first real one keeps the same axes
            entry = compute.load_header(dataset)
            n = entry.normal
            a, b = [d for d in range(3) if d != n]
            xs, ys = entry.axes[a], entry.axes[b]
            kd = [f"{AX[a]} (bohr)", f"{AX[b]} (bohr)"]
            return (hv.Image(np.zeros((len(ys), len(xs))), bounds=(xs[0], ys[0], xs[-1], ys[-1]), kdims=kd,
                             vdims=[DENSITY]).opts(cmap="viridis", colorbar=True, data_aspect=1)
                    * hv.Points([], kd)).opts(width=SLICE_WIDTH - 20, height=330, toolbar="above")
        m = view_data.molecule
        n = m.normal
        a, b = [d for d in range(3) if d != n]
        ax = m.axes[n]
        k = int(np.argmin(np.abs(ax - slice_pos)))
        if m.pred is None:  # an ML-KS model file: no predicted density, so no difference or uncertainty either
            slice_field = "DFT"
        f = {"predicted": m.pred, "DFT": m.dft, "difference": m.diff, "uncertainty": m.std}[slice_field]
        plane = np.take(f, k, axis=n)  # (len a, len b)
        xs, ys = m.axes[a], m.axes[b]
        bounds = (xs[0], ys[0], xs[-1], ys[-1])
        if slice_field == "difference":
            lim = float(np.abs(plane).max()) or 1e-12
            cmap, clim = "RdBu_r", (-lim, lim)
        else:
            cmap, clim = ("viridis" if slice_field != "uncertainty" else "magma"), (0, float(plane.max()) or 1e-12)
        im = hv.Image(plane.T, bounds=bounds, kdims=[f"{AX[a]} (bohr)", f"{AX[b]} (bohr)"],
                      vdims=[DENSITY]).opts(cmap=cmap, clim=clim, colorbar=True, tools=["hover"],
                                            title=f"{slice_field}, {AX[n]} = {ax[k]:.2f} bohr", framewise=True,
                                            data_aspect=1)
        at = hv.Points((m.atoms_bohr[:, a], m.atoms_bohr[:, b]), kdims=[f"{AX[a]} (bohr)", f"{AX[b]} (bohr)"]).opts(
            color="white", line_color="black", size=8)
        return (im * at).opts(width=SLICE_WIDTH - 20, height=330, toolbar="above", framewise=True)

    # a DynamicMap: each update sends new image data into the same Bokeh figure (no rebuild)
    dm = hv.DynamicMap(pn.bind(img, state.param.view_data, state.param.slice_pos, state.param.slice_field,
                               state.param.dataset))
    pos = pn.widgets.FloatSlider.from_param(state.param.slice_pos, name="Slice position (bohr)", step=0.05, css_classes=["w-slice"])
    field = pn.widgets.RadioButtonGroup.from_param(state.param.slice_field, name="Field", css_classes=["w-slice-field"])
    # Bokeh sizes the canvas of an aspect-locked figure past the figure itself; clipped, so the page
    # does not scroll sideways
    plot = pn.pane.HoloViews(linked_axes=False, object=dm, css_classes=["slice-plot"], styles={"overflow": "hidden"})
    return pn.Column(plot, field, pos, width=SLICE_WIDTH)


# ------------------------------------------------------------------------------ error plots
def _rel(result):
    return float(np.nanmin(result.E_dft))


def _select_from(state, dmap, index_of):
    """Clicking a point of ``dmap`` selects the molecule ``index_of(result, i)``."""
    sel = hv.streams.Selection1D(source=dmap)

    def cb(index):
        if index and state.result is not None:
            mol = int(index_of(state.result, index[0]))
            if mol != state.molecule:
                state.molecule = mol

    sel.add_subscriber(cb)
    return sel


def parity_plot(state):
    def pts(result, which):
        if result is None:
            return hv.Points([], ["E DFT (kcal/mol)", "E ML (kcal/mol)"])
        t, e0 = result.test, _rel(result)
        E = result.E_hk if which == "mlhk" else result.E_ks
        data = pd.DataFrame({"E DFT (kcal/mol)": (result.E_dft[t] - e0) * KC, "E ML (kcal/mol)": (E[t] - e0) * KC,
                             "molecule": t})
        return hv.Points(data, ["E DFT (kcal/mol)", "E ML (kcal/mol)"], ["molecule"], label=which.replace("ml", "ML-").upper()
                         .replace("ML-HK", "ML-HK").replace("ML-KS", "ML-KS")).opts(
            color=COL[which], size=7, tools=["tap", "hover"], nonselection_alpha=0.5, selection_color="black")

    sel = dict(tools=["tap", "hover"], nonselection_alpha=0.5)
    hk = hv.DynamicMap(pn.bind(pts, state.param.result, "mlhk")).opts(color=COL["mlhk"], size=7, **sel)
    ks = hv.DynamicMap(pn.bind(pts, state.param.result, "mlks")).opts(color=COL["mlks"], size=7, **sel)

    def diag(result):
        if result is None:
            return hv.Curve([], "E DFT (kcal/mol)", "E ML (kcal/mol)")
        e = (result.E_dft[result.test] - _rel(result)) * KC
        return hv.Curve([(e.min(), e.min()), (e.max(), e.max())], "E DFT (kcal/mol)", "E ML (kcal/mol)").opts(
            color="grey", line_dash="dashed")

    d = hv.DynamicMap(pn.bind(diag, state.param.result))
    _select_from(state, hk, lambda r, i: r.test[i])
    _select_from(state, ks, lambda r, i: r.test[i])
    plot = (d * ks * hk).opts(hv.opts.Overlay(title="Parity, test set (click a point)", width=420, height=340,
                                              legend_position="top_left", framewise=True))
    return pn.pane.HoloViews(linked_axes=False, object=plot, css_classes=["parity-plot"])


def decomposition_plot(state):
    def pts(result, which):
        kd = [result.x_label if result is not None else "x", "kcal/mol"]
        if result is None or not np.isfinite(result.E_hk_at_dft).any():
            return hv.Scatter([], kd[0], kd[1])
        err = result.errors
        x = result.x_values[result.test]
        key = {"dED": "mlhk_dED", "dEF": "mlhk_dEF"}[which]
        data = pd.DataFrame({kd[0]: x, kd[1]: err[key], "molecule": result.test})
        lab = {"dED": "ΔE_D (density-driven)", "dEF": "ΔE_F (functional-driven)"}[which]
        return hv.Scatter(data, kd[0], [kd[1], "molecule"], label=lab).opts(
            color=COL[which], size=6, tools=["tap", "hover"], nonselection_alpha=0.5)

    def total(result):
        if result is None or not np.isfinite(result.E_hk_at_dft).any():
            return hv.Spikes([], result.x_label if result is not None else "x", "kcal/mol")
        x = result.x_values[result.test]
        return hv.Spikes((x, result.errors["mlhk_dE"]), result.x_label, "kcal/mol", label="ΔE (ML-HK)").opts(
            color="grey", line_width=2, alpha=0.6)

    sel = dict(tools=["tap", "hover"], nonselection_alpha=0.5, size=6)
    a = hv.DynamicMap(pn.bind(pts, state.param.result, "dED")).opts(color=COL["dED"], **sel)
    b = hv.DynamicMap(pn.bind(pts, state.param.result, "dEF")).opts(color=COL["dEF"], **sel)
    s = hv.DynamicMap(pn.bind(total, state.param.result))
    _select_from(state, a, lambda r, i: r.test[i])
    _select_from(state, b, lambda r, i: r.test[i])
    # the legend sits on the data: see-through, and a click on an entry hides that series
    plot = (s * a * b).opts(hv.opts.Overlay(title="ΔE = ΔE_F + ΔE_D per test molecule", width=420, height=340,
                                            legend_position="top_left", framewise=True, click_policy="hide",
                                            legend_opts={"background_fill_alpha": 0.5}))
    return pn.pane.HoloViews(linked_axes=False, object=plot, css_classes=["decomposition-plot"])


def density_error_plot(state):
    def pts(result):
        kd = result.x_label if result is not None else "x"
        if result is None or not np.isfinite(result.density_l2).any():
            return hv.Scatter([], kd, "‖n_ML − n_DFT‖₂")
        data = pd.DataFrame({kd: result.x_values[result.test], "‖n_ML − n_DFT‖₂": result.density_l2,
                             "molecule": result.test})
        return hv.Scatter(data, kd, ["‖n_ML − n_DFT‖₂", "molecule"])

    # plot options on the DynamicMap, not on its elements: the figure is built from the first element,
    # which is the empty one when the app opens before its first fit, and a log axis cannot be added later
    dm = hv.DynamicMap(pn.bind(pts, state.param.result)).opts(
        color=COL["mlhk"], size=6, tools=["tap", "hover"], nonselection_alpha=0.5, logy=True, framewise=True,
        title="Density error per test molecule (click a point)", width=420, height=300)
    _select_from(state, dm, lambda r, i: r.test[i])
    return pn.pane.HoloViews(linked_axes=False, object=dm, css_classes=["density-error-plot"])


def paper_key(result):
    name = (result.name or "").upper()
    return name if name in ("H2", "H2O") else None


def summary_frame(result) -> pd.DataFrame:
    s = result.summary()
    key = paper_key(result)
    paper = TABLE1.get((key, len(result.train)), {}) if key else {}
    rows = []
    for q, label in list(QUANTITIES.items()) + [("mlhk_dEF", "ML-HK ΔE_F")]:
        mae, mx = s.get(q, (float("nan"),) * 2)
        p = paper.get(q, (float("nan"),) * 2)
        rows.append({"quantity": label, "MAE": mae, "max": mx, "paper MAE": p[0], "paper max": p[1]})
    return pd.DataFrame(rows)


def per_molecule_frame(result) -> pd.DataFrame:
    t = result.test
    e = result.errors
    return pd.DataFrame({"molecule": t, result.x_label: result.x_values[t], "E_DFT (Ha)": result.E_dft[t],
                         "E_MLHK (Ha)": result.E_hk[t], "E_MLKS (Ha)": result.E_ks[t], "dE_MLHK (kcal/mol)": e["mlhk_dE"],
                         "dE_D (kcal/mol)": e["mlhk_dED"], "dE_F (kcal/mol)": e["mlhk_dEF"],
                         "dE_MLKS (kcal/mol)": e["mlks_dE"], "density L2": result.density_l2, "GP variance": result.var[t]})


def summary_table(state):
    def html(result):
        if result is None:
            return "<i>training…</i>"
        df = summary_frame(result)
        key = paper_key(result)
        note = (f"Paper's Table 1 for {key}, M = {len(result.train)} beside ours." if key and
                (key, len(result.train)) in TABLE1 else
                "The paper lists H2 at M = 5, 7, 10 and H2O at M = 5, 10, 15, 20." if key else "")
        body = "".join(
            f"<tr class='q-{q}'><td>{r.quantity}</td><td class='mae' data-value='{r['MAE']!r}'>{_fmt(r['MAE'])}</td>"
            f"<td class='max' data-value='{r['max']!r}'>{_fmt(r['max'])}</td>"
            f"<td>{_fmt(r['paper MAE'])}</td><td>{_fmt(r['paper max'])}</td></tr>"
            for q, (_, r) in zip(list(QUANTITIES) + ["mlhk_dEF"], df.iterrows()))
        return (f"<b>Test errors, kcal/mol ({len(result.test)} test molecules, M = {len(result.train)})</b>"
                "<table class='summary-table' style='font-size:13px'><tr><th>quantity</th><th>MAE</th><th>max</th>"
                f"<th>paper MAE</th><th>paper max</th></tr>{body}</table><small>{note}</small>")

    return pn.pane.HTML(pn.bind(html, state.param.result), css_classes=["summary"], width=430)


def learning_curve(state):
    def plot(curve, result):
        kd, vd = "M", "MAE (kcal/mol)"
        layers = []
        for q, lab in QUANTITIES.items():
            pts = [(c["M"], c[q]) for c in curve if c.get(q, 0) > 0]
            col = {"mlhk_dE": COL["mlhk"], "mlks_dE": COL["mlks"], "mlhk_dED": COL["dED"]}[q]
            layers.append(hv.Curve(pts, kd, vd, label=lab).opts(color=col, line_width=2))
            layers.append(hv.Scatter(pts, kd, vd, label=lab).opts(color=col, size=6))
        key = paper_key(result) if result is not None else None
        if key:
            for q, lab in QUANTITIES.items():
                pts = [(m, v[q][0]) for (mol, m), v in TABLE1.items() if mol == key]
                col = {"mlhk_dE": COL["mlhk"], "mlks_dE": COL["mlks"], "mlhk_dED": COL["dED"]}[q]
                layers.append(hv.Scatter(pts, kd, vd, label=f"paper {lab}").opts(color=col, marker="x", size=11))
        n = len(curve)
        tot = len(getattr(state, "curve_sizes", []) or [])
        title = f"Learning curve, all hyperparameters by CV ({n}/{tot} sizes done)"
        return hv.Overlay(layers).opts(logx=True, logy=True, width=560, height=360, title=title,
                                       legend_position="bottom_left", show_grid=True)

    def status(curve):
        tot = len(getattr(state, "curve_sizes", []) or [])
        return (f"<span class='curve-status' data-done='{len(curve)}' data-total='{tot}'>{len(curve)} of {tot} training "
                "sizes done (computed in the background from when this tab was first opened)</span>")

    return pn.Column(pn.pane.HoloViews(linked_axes=False, object=pn.bind(plot, state.param.curve, state.param.result),
                                       css_classes=["learning-curve"]),
                     pn.pane.HTML(pn.bind(status, state.param.curve), height=24, sizing_mode="stretch_width"))


def trajectory_plot(state):
    """Energies along the set's trajectory (the H2 scan, an MD trace), a frame cursor linked to the
    3D view, the ΔE_F / ΔE_D split of the frame under the cursor, and ML-HK MD started from here."""
    E_LABEL = "E (kcal/mol, rel.)"

    def curves(result):
        if result is None or not result.ordered:
            return hv.Overlay([hv.Curve([], "x", E_LABEL, label="no trajectory in this data set")])
        tr, x, e0 = result.traj, result.traj_x, _rel(result)
        kd = result.traj_label
        c = [hv.Curve((x, (result.E_dft[tr] - e0) * KC), kd, E_LABEL, label="DFT (PBE)").opts(color=COL["dft"], line_width=3)]
        if np.isfinite(result.E_hk[tr]).any():
            c.append(hv.Curve((x, (result.E_hk[tr] - e0) * KC), kd, E_LABEL, label="ML-HK").opts(
                color=COL["mlhk"], line_dash="dashed", line_width=2))
        if np.isfinite(result.E_ks[tr]).any():
            c.append(hv.Curve((x, (result.E_ks[tr] - e0) * KC), kd, E_LABEL, label="ML-KS").opts(
                color=COL["mlks"], line_dash="dotted", line_width=2))
        on = np.isin(tr, result.train)
        if on.any():
            c.append(hv.Scatter((x[on], (result.E_dft[tr[on]] - e0) * KC), kd, E_LABEL, label="training").opts(
                color="black", size=7, marker="triangle"))
        return hv.Overlay(c)

    def cursor(result, molecule, dataset):
        result = _of_set(result, dataset)
        if result is None or not result.ordered or molecule not in set(result.traj.tolist()):
            return hv.VLine(0, kdims=["x", E_LABEL]).opts(alpha=0)
        x = float(result.traj_x[np.flatnonzero(result.traj == molecule)[0]])
        return hv.VLine(x, kdims=[result.traj_label, E_LABEL]).opts(color="red", line_width=2)

    def frames(result):
        # every frame as a (nearly invisible) point: clicking the curve selects the frame under the mouse,
        # through the same Selection1D route as the other plots
        if result is None or not result.ordered:
            return hv.Scatter([], "x", E_LABEL)
        tr = result.traj
        return hv.Scatter((result.traj_x, (result.E_dft[tr] - _rel(result)) * KC), result.traj_label, E_LABEL).opts(
            size=9, alpha=0.05, color=COL["dft"], tools=["tap", "hover"], nonselection_alpha=0.05,
            selection_alpha=0.05)

    base = hv.DynamicMap(pn.bind(curves, state.param.result))
    cur = hv.DynamicMap(pn.bind(cursor, state.param.result, state.param.molecule, state.param.dataset))
    pick = hv.DynamicMap(pn.bind(frames, state.param.result)).opts(tools=["tap", "hover"])
    _select_from(state, pick, lambda r, i: r.traj[i])
    plot = (base * pick * cur).opts(hv.opts.Overlay(width=720, height=340, title="Energy along the trajectory (click a "
                                                                                "frame to move the cursor)",
                                                    legend_position="right", framewise=True))  # outside: no frame hidden

    def split(result, molecule, dataset):
        result = _of_set(result, dataset)
        if result is None or not result.ordered:
            return ""
        hit = np.flatnonzero(result.traj == molecule)
        if not len(hit):
            return "<i>the molecule in 3D is not a frame of the trajectory</i>"
        k, i = int(hit[0]), molecule
        dE = (result.E_hk[i] - result.E_dft[i]) * KC
        dED = (result.E_hk[i] - result.E_hk_at_dft_traj[k]) * KC
        dEF = (result.E_hk_at_dft_traj[k] - result.E_dft[i]) * KC
        ks = (result.E_ks[i] - result.E_dft[i]) * KC
        return (f"<span class='traj-split'><b>frame {k}</b> ({result.traj_label} = {result.traj_x[k]:.4g}): "
                f"ML-HK ΔE = <span class='traj-dE'>{dE:.3f}</span> = ΔE_F {dEF:.3f} + ΔE_D {dED:.3f} kcal/mol; "
                f"ML-KS ΔE = {ks:.3f} kcal/mol</span>")

    readout = pn.pane.HTML(split(state.result, state.molecule, state.dataset), width=620)  # updated in place, not replaced
    state.param.watch(lambda *e: setattr(readout, "object", split(state.result, state.molecule, state.dataset)),
                      ["result", "molecule", "dataset"])
    frame = pn.widgets.IntSlider.from_param(state.param.molecule, name="Molecule / frame", css_classes=["w-frame"],
                                            width=620)
    return pn.Column(pn.pane.HoloViews(linked_axes=False, object=plot, css_classes=["trajectory-plot"]),
                     readout,
                     frame, md_panel(state))


def md_panel(state):
    """Start and stop a short Langevin run on the current ML-HK model; its energy is drawn live."""
    run = pn.widgets.Button(label="Run ML-HK MD", color="primary", css_classes=["w-md-run"], width=140)
    stop = pn.widgets.Button(label="Stop", color="warning", css_classes=["w-md-stop"], width=80)
    dur = pn.widgets.IntInput.from_param(state.param.md_duration_fs, name="length (fs)", width=110,
                                         css_classes=["w-md-length"])
    temp = pn.widgets.IntInput.from_param(state.param.md_temperature_K, name="T (K)", width=90,
                                          css_classes=["w-md-temperature"])
    run.on_click(lambda e: state.start_md())
    stop.on_click(lambda e: state.stop_md())

    kd, vd = "time (fs)", "E_ML-HK (kcal/mol, rel. to start)"

    def as_array(frames):
        if not frames:
            return np.zeros((0, 2))
        a = np.array(frames, float)
        return np.column_stack([a[:, 0], (a[:, 1] - a[0, 1]) * KC])

    # the trace is streamed into one plot (a Pipe updates its data source in place) rather than
    # re-rendered per update: that keeps the page responsive while frames arrive
    pipe = hv.streams.Pipe(data=as_array(state.md_frames))
    dmap = hv.DynamicMap(lambda data: hv.Curve(data, kd, vd), streams=[pipe]).opts(
        width=620, height=220, color=COL["mlhk"], framewise=True, title="ML-HK MD energy")
    state.param.watch(lambda e: pipe.send(as_array(e.new)), "md_frames")

    def status(s, frames, runs):
        n = len(frames)
        tail = f" ({n} frames, {frames[-1][0]:.0f} fs)" if n else ""
        return (f"<span class='md-status' data-run='{runs}'>ML-HK MD{f' run {runs}' if runs else ''}: "
                f"{s or 'not run yet'}{tail}</span>")

    def show(*_):  # one pane, its text updated in place
        label.object = status(state.md_status, state.md_frames, state.md_runs)

    label = pn.pane.HTML(height=24, sizing_mode="stretch_width")
    show()
    state.param.watch(show, ["md_status", "md_frames", "md_runs"])
    plot = pn.Column(label, pn.pane.HoloViews(dmap, linked_axes=False, css_classes=["md-trace"]))
    return pn.Column(pn.pane.Markdown(H.MD_HELP, width=620), pn.Row(run, stop, dur, temp), plot)


# ------------------------------------------------------------------------------ export
def _cube(state, which):
    vd = state.view_data
    if vd is None:
        return io.BytesIO(b"")
    m = vd.molecule
    field = {"pred": m.pred, "dft": m.dft, "diff": m.diff}[which]
    if field is None:  # no density from an ML-KS model file (its buttons are disabled)
        return io.BytesIO(b"")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.cube"
        write_cube(p, field.astype(float), m.axes, m.numbers, m.atoms_bohr * Bohr,
                   comment=f"mlhk-viz {which} density, molecule {m.index}")
        return io.BytesIO(p.read_bytes())


def _csv(frame_fn, state):
    if state.result is None:
        return io.StringIO("")
    return io.StringIO(frame_fn(state.result).to_csv(index=False))


def export_panel(state):
    items = []
    for which, label in (("pred", "ML-HK density"), ("dft", "DFT density"), ("diff", "difference (ML − DFT)")):
        items.append(pn.widgets.FileDownload(callback=lambda w=which: _cube(state, w), filename=f"{which}.cube",
                                             label=f"{label} (.cube)", css_classes=[f"w-cube-{which}"], width=260))

    def name(*_):
        vd = state.view_data
        if vd is not None:
            for w, it in zip(("pred", "dft", "diff"), items):
                it.filename = f"molecule{vd.molecule.index}-{w}.cube"
                it.disabled = w != "dft" and vd.molecule.pred is None  # an ML-KS model file has no density

    state.param.watch(name, ["view_data"])
    name()
    csv = [
        pn.widgets.FileDownload(callback=lambda: _csv(summary_frame, state), filename="summary.csv",
                                label="Summary table (.csv)", css_classes=["w-csv-summary"], width=260),
        pn.widgets.FileDownload(callback=lambda: _csv(per_molecule_frame, state), filename="test_errors.csv",
                                label="Per-molecule errors (.csv)", css_classes=["w-csv-molecules"], width=260),
        pn.widgets.FileDownload(callback=lambda: io.StringIO(pd.DataFrame(state.curve).to_csv(index=False)),
                                filename="learning_curve.csv", label="Learning curve (.csv)", css_classes=["w-csv-curve"],
                                width=260),
    ]
    return pn.Column("**Densities of the molecule shown** (fine grid around the molecules, e/bohr³, Gaussian cube)",
                     *items, "**Tables**", *csv)
