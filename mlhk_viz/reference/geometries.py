"""The paper's geometry sets for H2 and H2O, aligned to fixed reference frames (Å)."""

from __future__ import annotations

import numpy as np
from ase.data import atomic_masses

from ..geometry import align

H2_RANGE = (0.5, 1.5)  # Å
H2O_R0, H2O_THETA0 = 0.97, 104.2  # Å, degrees
H2O_DR, H2O_DTHETA = 0.075, 8.59


def h2(n: int = 150, r_range=H2_RANGE):
    """H2 along x, centred at the origin, bond lengths evenly spaced over ``r_range``: an ordered scan.

    returns numbers ``(2,)`` and positions ``(n, 2, 3)`` Å.
    """
    r = np.linspace(*r_range, n)
    pos = np.zeros((n, 2, 3))
    pos[:, 0, 0], pos[:, 1, 0] = -r / 2, r / 2
    return np.array([1, 1]), pos


def water(r1, r2, theta_deg) -> np.ndarray:
    """Water geometries with O at the origin and the H atoms in the xy plane: ``(n, 3, 3)`` Å (O, H, H)."""
    r1, r2, th = np.broadcast_arrays(np.asarray(r1, float), np.asarray(r2, float), np.radians(theta_deg))
    pos = np.zeros(r1.shape + (3, 3))
    pos[..., 1, 0], pos[..., 1, 1] = r1 * np.sin(th / 2), r1 * np.cos(th / 2)
    pos[..., 2, 0], pos[..., 2, 1] = -r2 * np.sin(th / 2), r2 * np.cos(th / 2)
    return pos


def h2o(n: int = 350, seed: int = 0):
    """H2O with both bond lengths uniform in R0 ± 0.075 Å and the angle uniform in θ0 ± 8.59°.

    Each geometry is aligned (mass-weighted Kabsch, centre of mass at the origin) to the
    equilibrium geometry (R0, θ0). returns numbers ``(3,)`` and positions ``(n, 3, 3)`` Å.
    """
    rng = np.random.default_rng(seed)
    r = rng.uniform(H2O_R0 - H2O_DR, H2O_R0 + H2O_DR, size=(n, 2))
    th = rng.uniform(H2O_THETA0 - H2O_DTHETA, H2O_THETA0 + H2O_DTHETA, size=n)
    numbers = np.array([8, 1, 1])
    ref = water(H2O_R0, H2O_R0, H2O_THETA0)
    return numbers, align(water(r[:, 0], r[:, 1], th), ref, weights=atomic_masses[numbers])


SETS = {"h2": h2, "h2o": h2o}
