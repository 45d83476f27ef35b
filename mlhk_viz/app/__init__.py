"""The mlhk-viz web app (Panel): param state, background training on Dask, views.

``panel serve app.py`` at the repository's top level runs :func:`build_app`.
"""

from . import scene as _scene  # noqa: F401  (sets VTK's EGL window before vtk is imported)
from .layout import build_app
from .state import AppState

__all__ = ["build_app", "AppState"]
