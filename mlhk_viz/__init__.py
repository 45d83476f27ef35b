"""mlhk-viz: the ML-HK map (potential -> density -> energy) with kernel ridge regression.

Units at every public boundary: positions in Å, energies in Hartree unless a name says
``_kcal``; inside the density basis, lengths are in bohr and densities in electrons/bohr³.
"""

__version__ = "0.1.0"
