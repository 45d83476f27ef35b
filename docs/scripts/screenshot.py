"""The docs' screenshot of the app: serve app.py, open it in headless Chromium, pick a data set, save a PNG.

    python docs/scripts/screenshot.py --dataset h2o.npz --m 20 --out docs/screenshot.png
    python docs/scripts/screenshot.py --dataset benzene-md.npz --m 100 --tab Trajectory --full-page --out /tmp/b.png

Uses Debian's Chromium (/usr/bin/chromium) through Playwright, as the browser test does.
"""

from __future__ import annotations

import argparse
import io
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(test, what, timeout=300.0):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if test():
            return
        time.sleep(1.0)
    raise TimeoutError(f"gave up waiting for {what} after {timeout:.0f} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="h2o.npz", help="file name of the data set to show (as in the app's list)")
    ap.add_argument("--m", type=int, default=20, help="training size M")
    ap.add_argument("--out", default=str(ROOT / "docs" / "screenshot.png"))
    ap.add_argument("--size", default="1400x820", help="viewport WIDTHxHEIGHT in pixels")
    ap.add_argument("--tab", default=None, help="open this analysis tab first (Errors, Learning curve, Trajectory, ...)")
    ap.add_argument("--full-page", action="store_true", help="the whole page, not only the viewport")
    args = ap.parse_args()
    width, height = map(int, args.size.split("x"))

    from PIL import Image
    from playwright.sync_api import sync_playwright

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "server.log", "w") as log:
        server = subprocess.Popen([sys.executable, "-m", "panel", "serve", "app.py", "--port", str(port),
                                   "--address", "127.0.0.1", f"--allow-websocket-origin=127.0.0.1:{port}"],
                                  cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", headless=True,
                                             args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": width, "height": height})
                wait_for(lambda: _listening(port), "the server")
                page.goto(f"http://127.0.0.1:{port}/app", timeout=180_000)
                page.locator(".view3d canvas").first.wait_for(timeout=180_000)
                select = page.locator(".w-dataset select").first
                labels = [o.inner_text() for o in select.locator("option").all()]
                # a label names the file, or only the set when the set is named after its file
                stem = Path(args.dataset).stem.lower()
                label = next((t for t in labels if args.dataset in t or t.lower().startswith(stem + " (")), None)
                if label is None:
                    raise SystemExit(f"no data set {args.dataset!r} in the app's list: {labels}")
                select.select_option(label=label)
                box = page.locator(".w-m input").first
                try:
                    wait_for(lambda: _fitted(page)[0] == args.dataset, f"a fit on {args.dataset}")
                except TimeoutError:  # show what the page and the server were doing
                    page.screenshot(path=str(Path(tempfile.gettempdir()) / "screenshot-failed.png"))
                    print((Path(tmp) / "server.log").read_text()[-3000:], file=sys.stderr)
                    raise
                box.fill(str(args.m))
                box.press("Enter")
                wait_for(lambda: _fitted(page) == (args.dataset, str(args.m)),
                         f"the fit at M = {args.m}")
                # vtk.js draws after the data arrive: wait until the 3D view is no longer blank
                wait_for(lambda: _gray(page.locator(".view3d").first.screenshot(), Image).std() > 8, "the 3D view")
                if args.tab:
                    page.locator(".tabs").get_by_text(args.tab, exact=True).first.click()
                time.sleep(3.0)
                page.screenshot(path=args.out, full_page=args.full_page)
                browser.close()
        finally:
            server.terminate()
    print(f"wrote {args.out}")
    return 0


def _listening(port) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
        return True
    except OSError:
        return False


def _fitted(page):
    """(data set, M) of the result on screen; (None, None) while there is none (the element comes and goes)."""
    el = page.locator(".result-knobs")
    if not el.count():
        return None, None
    return tuple(el.first.get_attribute(f"data-{k}", timeout=2000) for k in ("dataset", "m"))


def _gray(png, Image):
    return np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=float)


if __name__ == "__main__":
    raise SystemExit(main())
