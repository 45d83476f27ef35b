"""mlhk-viz app: ``panel serve app.py`` (data folder: $MLHK_VIZ_DATA or ./data)."""

from mlhk_viz.app import build_app

build_app().servable(title="mlhk-viz: the ML-HK map in 3D")
