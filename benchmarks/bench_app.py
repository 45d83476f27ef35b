"""Benchmark of the app (run by hand): ``python benchmarks/bench_app.py [--dataset h2o.npz] [--m 200]``.

Python side (no browser, :class:`mlhk_viz.app.AppState` driven directly): time from a knob change
to new data for the 3D view ("view") and to the new error statistics ("fit"). Targets: a lambda or
iso-level change to new view data <= 0.1 s; a sigma or M change <= 1 s.

Browser side (headless Chromium, software WebGL): time from a widget change to a new picture of the
3D view (screenshots polled until the pixels change), for iso level, lambda, sigma, M and molecule,
and the first page load with data cached -- each the median of --reps (5) from a settled page, as a ratio to a floor
measured right after it in the same run:
a minimal Panel page that only swaps a precomputed mesh of the same size in the same kind of pane
(target <= 1.5x). And the server's memory per extra browser session.
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


# ------------------------------------------------------------------------------ Python side
def python_side(dataset: Path, m: int, reps: int = 3) -> dict:
    from mlhk_viz.app import AppState, engine

    st = AppState(dataset=dataset, curve=False, m=m)
    assert st.wait(900), "first fit"
    st.param.update(sigma_auto=False, lam_auto=False)
    assert st.wait(900)
    out: dict = {}

    def timed(name, change, jobs=("view", "fit"), pause=0.0):
        views, fits = [], []
        for r in range(reps):
            time.sleep(pause)  # a person's pause between two moves (background prefetch may run)
            t0 = time.perf_counter()
            change(r)
            assert st.wait(900, jobs=("view",)), name
            views.append(time.perf_counter() - t0)
            assert st.wait(900, jobs=jobs), name
            fits.append(time.perf_counter() - t0)
            assert not st.error, st.error
        out[name] = (statistics.median(views), statistics.median(fits))

    lam0, sig0, iso0 = st.log_lam, st.log_sigma, st.iso
    timed("lambda", lambda r: setattr(st, "log_lam", lam0 + 0.25 * (r + 1)))
    timed("iso level", lambda r: setattr(st, "iso", iso0 * (1.15 + 0.1 * r)), jobs=("view",))
    timed("sigma", lambda r: setattr(st, "log_sigma", sig0 + 0.05 * (r + 1)))
    # one slider step at a time, as a person moves it (neighbouring sizes are prefetched when idle)
    timed("M", lambda r: setattr(st, "m", m - (r + 1)), pause=1.6)  # the browser part's gap between moves
    timed("molecule", lambda r: setattr(st, "molecule", int(st.result.test[r + 1])), jobs=("view",))
    st.close()
    engine.shutdown()
    return out


# ------------------------------------------------------------------------------ browser side
FLOOR = '''
"""Floor: the same pane kind (MeshVTK via Scene) swapping precomputed meshes of the app's size."""
import panel as pn
from mlhk_viz.app import compute as C, scene as S
pn.extension("vtk", "vtk")  # as the app: skips Panel's slow caller inspection (mlhk_viz/app/layout.py)
k = C.FitKnobs({dataset!r}, m={m}, hk_sigma={factor!r}, hk_lam={lam!r})
mol = C.molecule(k, {molecule})
dl = 0.3 * float(abs(mol.diff).max())
show = ["predicted", "DFT", "difference"]
meshes = [S.build_meshes(mol, iso, dl, show, "side by side") for iso in {isos!r}]
sc = S.Scene()
sc.update(meshes[0])
iso = pn.widgets.FloatSlider(name="iso", start=0.002, end=0.3, step=0.002, value={iso0!r}, css_classes=["w-iso"])
iso.param.watch(lambda e: sc.update(meshes[int(round((e.new - {iso0!r}) / 0.002)) % len(meshes)]), "value")
pn.Row(pn.Column(iso, width=340), sc.view).servable()
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, script, env=None, name="app"):
        self.port = free_port()
        self.log = Path(tempfile.mkdtemp()) / "server.log"
        with open(self.log, "w") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "panel", "serve", str(script), "--port", str(self.port), "--address", "127.0.0.1",
                 f"--allow-websocket-origin=127.0.0.1:{self.port}"], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
                env=dict(os.environ, **(env or {})))
        self.url = f"http://127.0.0.1:{self.port}/{Path(script).stem}"
        t0 = time.time()
        while time.time() - t0 < 60:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return
            except OSError:
                time.sleep(0.2)

    def rss(self) -> float:
        import psutil

        p = psutil.Process(self.proc.pid)
        return sum(q.memory_info().rss for q in [p] + p.children(recursive=True)) / 2**20

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        text = self.log.read_text()
        return "Traceback" not in text


def shot(page):
    """Grey pixels of the 3D view: a CDP capture of its box (0.05 s against 0.12-0.15 s for Playwright's
    element screenshot, which also waits for stability; fast polling disturbs the page less)."""
    import base64

    from PIL import Image

    box = page.locator(".view3d").first.bounding_box()
    if box is None or box["width"] < 1:
        raise RuntimeError("3D view not laid out yet")
    cdp = getattr(page, "_mlhk_cdp", None)
    if cdp is None:
        cdp = page._mlhk_cdp = page.context.new_cdp_session(page)
    png = base64.b64decode(cdp.send("Page.captureScreenshot", {"format": "png", "clip": {**box, "scale": 1}})["data"])
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


def until_drawn(page, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            img = shot(page)
            if img.std() > 8:
                return img
        except Exception:  # noqa: BLE001 - not attached yet
            pass
        time.sleep(0.1)
    raise RuntimeError("3D view never drawn")


def until_changed(page, before, timeout=180):
    t0 = time.time()
    while time.time() - t0 < timeout:
        img = shot(page)
        if img.shape == before.shape and np.abs(img - before).mean() > 0.05 and img.std() > 8:
            # let a half-drawn frame finish: wait until two shots agree
            nxt = shot(page)
            while np.abs(nxt - img).mean() > 0.05 and time.time() - t0 < timeout:
                img, nxt = nxt, shot(page)
            return img
        time.sleep(0.02)
    raise RuntimeError("picture did not change")


def load(browser, url):
    ctx = browser.new_context(viewport={"width": 1500, "height": 1000})
    page = ctx.new_page()
    t0 = time.perf_counter()
    page.goto(url, timeout=300_000)
    page.locator(".view3d canvas").first.wait_for(timeout=300_000)
    until_drawn(page)
    return ctx, page, time.perf_counter() - t0


def press_iso(page):
    h = page.locator(".w-iso .noUi-handle").first
    h.focus()
    h.press("ArrowRight")


def set_number(page, css, value):
    box = page.locator(f"{css} input").first
    box.fill(str(value))
    box.press("Enter")


def settle(pids_of, quiet=0.15, window=0.4, timeout=20.0):
    """Wait until the servers and the browser are idle: their CPU over ``window`` s below ``quiet`` of a core.

    Each update is then timed from a settled page, as the floor's are: the app's statistics, prefetch
    and status messages after one update do not land in the next one's time.
    """
    import psutil

    t0 = time.time()
    while time.time() - t0 < timeout:
        procs = []
        for pid in pids_of():
            try:
                p = psutil.Process(pid)
                procs += [p] + p.children(recursive=True)
            except psutil.NoSuchProcess:
                pass
        procs += [q for q in psutil.process_iter(["name"]) if "chrom" in (q.info["name"] or "")]
        def cpu():
            tot = 0.0
            for q in procs:
                try:
                    t = q.cpu_times()
                    tot += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            return tot
        c0 = cpu()
        time.sleep(window)
        if (cpu() - c0) / window < quiet:
            return True
    return False


def update_times(page, action, pids_of, reps=5, name=""):
    """Seconds from ``action(r)`` to a new picture, for ``reps`` updates each started from a settled page.

    An update that shows no new picture within 60 s is reported (with the page's count of drawn scenes)
    and left out, and the next step is taken; more than 3 such misses end the benchmark.
    """
    times, misses, r = [], 0, 0
    until_drawn(page)
    while len(times) < reps:
        settle(pids_of)
        before = shot(page)
        t0 = time.perf_counter()
        action(r)
        r += 1
        try:
            until_changed(page, before, timeout=60)
        except RuntimeError:
            misses += 1
            drawn = page.locator(".scene-drawn input").first.input_value()
            print(f"  {name} step {r}: no new picture within 60 s (scenes drawn: {drawn})", flush=True)
            if misses > 3:
                raise
            continue
        times.append(time.perf_counter() - t0)
    return times


def browser_side(dataset: Path, m: int, reps: int = 5) -> dict:
    """Times in the browser. The floor page is open beside the app's, and app updates alternate with
    floor swaps one by one, so each ratio is of two medians measured at the same moments."""
    from playwright.sync_api import sync_playwright

    from mlhk_viz.app import compute

    entry = compute.load_entry(dataset)
    k = compute.FitKnobs(str(dataset), m=m)
    r = compute.fit(k)
    floor_py = Path(tempfile.mkdtemp()) / "floor.py"
    iso0 = 0.05
    floor_py.write_text(textwrap.dedent(FLOOR.format(
        dataset=str(dataset), m=m, factor=r.hk.factor, lam=r.hk.lam, molecule=int(entry.test[len(entry.test) // 2]),
        isos=[iso0, iso0 * 1.2], iso0=iso0)))
    app = Server(ROOT / "app.py", env={"MLHK_VIZ_DATASET": str(dataset), "MLHK_VIZ_M": str(m)})
    floor = Server(floor_py)
    pids = lambda: [app.proc.pid, floor.proc.pid]  # noqa: E731
    out: dict = {"raw": {}}
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=ARGS)
        try:
            ctx0, page0, cold = load(b, app.url)  # warms the shared caches
            page0.locator(".result-knobs").wait_for(state="attached", timeout=600_000)
            settle(pids)
            ctx0.close()
            c = load(b, floor.url)[0]
            settle(pids)
            c.close()
            loads, floor_loads = [], []
            for _ in range(reps):  # loads alternate with the floor's
                settle(pids)
                c, _, t = load(b, app.url)
                settle(pids)  # let the deferred parts arrive: closing mid-send makes Bokeh log a traceback
                c.close()
                loads.append(t)
                settle(pids)
                c, _, t = load(b, floor.url)
                settle(pids)
                c.close()
                floor_loads.append(t)
            out["raw"]["first load (data cached)"], out["raw"]["floor: first load"] = loads, floor_loads
            out["first load (data cached)"] = statistics.median(loads)
            out["floor: first load"] = statistics.median(floor_loads)
            out["first load (cold)"] = cold
            settle(pids)
            time.sleep(20)  # closed sessions are discarded after Bokeh's 15 s unused-session lifetime
            rss0 = app.rss()
            ctx, page, _ = load(b, app.url)
            page.locator(".result-knobs").wait_for(state="attached", timeout=600_000)
            settle(pids)
            rss_one = app.rss() - rss0  # the measured session
            fctx, fpage, _ = load(b, floor.url)
            page.locator(".w-sigma-auto input").first.uncheck()
            page.locator(".w-lam-auto input").first.uncheck()
            until_drawn(page)
            lam0 = float(page.locator(".w-lam input").first.input_value())
            sig0 = float(page.locator(".w-sigma input").first.input_value())
            updates = {
                "iso level": lambda r: press_iso(page),
                "lambda": lambda r: set_number(page, ".w-lam", round(lam0 + 0.5 * (r + 1), 2)),
                # towards the middle of the slider (CV may have put it near an end)
                "sigma": lambda r: set_number(page, ".w-sigma", round(sig0 + 0.1 * (r + 1) * (1 if sig0 < 0.5 else -1), 2)),
                "M": lambda r: set_number(page, ".w-m", m - 2 * (r + 1)),
                "molecule": lambda r: set_number(page, ".w-molecule", int(entry.test[r + 7])),
            }
            for name, action in updates.items():
                # app and floor in alternation, one update each, so both medians see the same moments
                ts, fs = [], []
                for r in range(reps):
                    page.bring_to_front()
                    ts += update_times(page, lambda _, r=r: action(r), pids, 1, name)
                    fpage.bring_to_front()
                    fs += update_times(fpage, lambda r: press_iso(fpage), pids, 1, f"floor after {name}")
                out["raw"][name], out["raw"][f"floor after {name}"] = ts, fs
                out[name], out[f"floor after {name}"] = statistics.median(ts), statistics.median(fs)
                print(f"{name}: app {[round(t, 2) for t in ts]}, floor {[round(t, 2) for t in fs]}", flush=True)
            allf = [t for k, v in out["raw"].items() if k.startswith("floor after") for t in v]
            out["floor: all swaps"] = statistics.median(allf)
            fctx.close()
            # memory per extra session
            extra = []
            try:
                rss0 = app.rss()
                for _ in range(3):
                    extra.append(load(b, app.url)[0])
                settle(pids)
                time.sleep(5)
                out["MB per extra session"] = (app.rss() - rss0) / 3
                out["MB for the measured session"] = rss_one
            except Exception as exc:  # noqa: BLE001 - report the timing figures even if this part fails
                print(f"memory per session not measured: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
            for c in extra:
                c.close()
            ctx.close()
        finally:
            b.close()
            out["app server clean"] = app.stop()
            out["floor server clean"] = floor.stop()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="h2o.npz", help="file in data/ (default h2o.npz, falls back to h2.npz)")
    ap.add_argument("--m", type=int, default=200, help="training size (<= 200)")
    ap.add_argument("--skip-browser", action="store_true")
    ap.add_argument("--reps", type=int, default=5, help="updates and loads per kind in the browser (default 5)")
    a = ap.parse_args()
    ds = ROOT / "data" / a.dataset
    if not ds.is_file():
        ds = ROOT / "data" / "h2.npz"
    from mlhk_viz.app import compute

    m = min(a.m, compute.MAX_M, len(compute.load_entry(ds).pool))
    print(f"data set {ds.name}, M = {m}; machine load {os.getloadavg()[0]:.1f} (1-min average)\n", flush=True)
    py = python_side(ds, m)
    print("## Python side (knob change -> applied; median of 3)\n")
    print("| change | new view data (s) | new error statistics (s) | target |")
    print("|---|---|---|---|")
    targets = {"lambda": "view <= 0.1", "iso level": "view <= 0.1", "sigma": "<= 1", "M": "<= 1", "molecule": "-"}
    for k, (v, f) in py.items():
        print(f"| {k} | {v:.3f} | {f:.3f} | {targets[k]} |")
    if a.skip_browser:
        return
    br = browser_side(ds, m, reps=a.reps)
    print(f"\n## Headless Chromium (widget change -> new picture of the 3D view; median of {a.reps}, each from a "
          "settled page; app updates and floor swaps alternate)\n")
    print("| update | app (s) | floor (s) | ratio | target |")
    print("|---|---|---|---|---|")
    for k in ("iso level", "lambda", "sigma", "M", "molecule"):
        f = br[f"floor after {k}"]
        print(f"| {k} | {br[k]:.2f} | {f:.2f} | {br[k] / f:.2f} | <= 1.5 |")
    fl = br["floor: first load"]
    print(f"| first page load, data cached | {br['first load (data cached)']:.2f} | {fl:.2f} | "
          f"{br['first load (data cached)'] / fl:.2f} | <= 1.5 |")
    print(f"| first page load, cold server | {br['first load (cold)']:.2f} | - | - | - |")
    print(f"\nmedian of all {5 * a.reps} floor swaps of the run: {br['floor: all swaps']:.2f} s")
    if 'MB per extra session' in br:
        print(f"\nserver memory per extra browser session: {br['MB per extra session']:.0f} MB "
              f"(the session measured above, after its updates: {br['MB for the measured session']:.0f} MB)")
    print(f"server logs free of tracebacks: app {br['app server clean']}, floor {br['floor server clean']}")


if __name__ == "__main__":
    main()
