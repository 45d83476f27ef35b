"""Short help per knob and per view, for teaching (shown as tooltips and in the 'About' tab)."""

KNOBS = {
    "dataset": "Molecules of one composition with PBE energies and densities (any valid .npz in the data folder).",
    "model_file": "Open a model saved earlier (by this app or mlhk_viz.models.save_model). Any knob change goes back to training.",
    "kind": "ML-HK learns the density first (potential → density → energy); ML-KS learns the energy straight from the "
            "potential. Both are always trained; this picks which one sigma/lambda set and 'save' writes.",
    "gamma": "Width γ (Å) of the Gaussians in the artificial potential v(r) = Σ Z exp(−|r−R|²/2γ²) that describes a geometry.",
    "spacing": "Grid spacing Δ (Å) on which v is sampled. Kernel distances are computed exactly from per-axis sums.",
    "sigma": "Kernel width σ, as a multiple of the median distance between training descriptors (log scale). Small σ: "
             "each training molecule only informs its near neighbours; large σ: smooth, stiff fits.",
    "sigma_auto": "Pick σ by exact leave-one-out CV on the training set alone (the paper's protocol); the slider then shows the pick.",
    "lam": "Ridge λ (log scale): how much the fit may ignore the training data to stay smooth. A λ change costs one "
           "small matrix product: the eigendecomposition of the kernel is kept per σ.",
    "lam_auto": "Pick λ by leave-one-out CV on the training set; the slider then shows the pick.",
    "cv_rule": "How the 'auto' σ and λ are picked, for every model: the pair with the lowest leave-one-out error (the "
               "paper's), or the one-standard-error rule, the smoothest pair (largest λ, then σ) whose error is within "
               "one standard error of the lowest. On malonaldehyde the rule nearly halves the largest errors; it does "
               "not lower the mean error (docs/reproduce.md).",
    "energy_features": "The densities ML-HK's energy functional learns from. 'predicted': the density model's own "
                       "predictions for the training molecules (the paper's). 'leave-one-out': each training "
                       "molecule's density as predicted by the model fitted without it, so the functional sees errors "
                       "the size it meets on new molecules. 'DFT': the exact densities. The split ΔE = ΔE_F + ΔE_D "
                       "moves with this choice: ΔE_D is the error of feeding the functional a predicted density, which "
                       "a functional trained on predicted densities has partly learned (docs/reproduce.md, session 14).",
    "m": "Number of training molecules, chosen by K-means in geometry space (nearly evenly spread); the test set is fixed.",
    "molecule": "Molecule shown in 3D (index in the data set). Click a point in any error plot to pick it.",
    "iso": "Iso level of the density surfaces, electrons/bohr³.",
    "diff_frac": "The difference n_ML − n_DFT is drawn as lobes at ± this fraction of its largest magnitude "
                 "(red: ML has too much density, blue: too little).",
    "show": "Which surfaces to draw: prediction (orange), DFT (blue), signed difference (red/blue lobes).",
    "layout3d": "Side by side shares one camera; overlay draws prediction and DFT in the same place.",
    "uncertainty": "Colour the predicted surface by the model's predictive standard deviation (see the About tab).",
    "slice": "A plane through the molecule (the one holding the atoms), moved along its normal.",
    "save": "Write the current model as an .npz model file that the app (Model file) and mlhk_viz.models.load_model open "
            "again. An ML-HK file refers to its training densities in the data set (tens of kB, refitted when opened): "
            "keep the set where it is.",
}

ABOUT = """
### What you see
* **3D**: iso-surfaces of the ML-HK density (orange) and the DFT density (blue) of the chosen molecule, and the
  signed difference as ± lobes. Densities are evaluated from their 125,000 Fourier coefficients on a fine grid around
  the molecules, so the surfaces are smooth.
* **Parity**: E^ML against E^DFT for the test molecules, ML-HK and ML-KS (energies relative to the lowest DFT
  energy of the set, kcal/mol).
* **ΔE = ΔE_F + ΔE_D**: the functional-driven error ΔE_F = E^ML[n^DFT] − E^DFT and the density-driven error
  ΔE_D = E^ML[n^ML] − E^ML[n^DFT] of each test molecule.
* **Learning curve**: test MAE against the training size M with every hyperparameter chosen by CV (the paper's
  protocol), the paper's values as crosses.

### Uncertainty
Kernel ridge regression is the mean of a Gaussian process. Its posterior variance at a geometry x,
v(x) = 1 − k(x)ᵀ(K + λI)⁻¹k(x), is one number per molecule: 0 on a training geometry, growing towards 1 far from
all of them. To turn it into a field, it is scaled by the spread of the training densities at each point,
s(r) = sqrt(mean_i (n_i(r) − n̄(r))²) (the prior standard deviation of the density there):
sd(r) = sqrt(v(x)) · s(r). That field is what the slice's "uncertainty" shows and what colours the predicted
surface: large where the training densities differ and the molecule is far from the training geometries.

### Speed
Distances are cached per (data set, γ, Δ, training set), one eigendecomposition of the kernel per σ, and the
coefficient Gram matrices per training set: a λ change is one M×M product, a σ change one M×M
eigendecomposition. Training runs on a Dask client in the background; the page keeps responding.
"""

MD_HELP = (
    "**ML-HK molecular dynamics.** *Run* starts a Langevin run (0.5 fs step, friction 0.01 fs⁻¹, as the paper's "
    "Fig. 3b) from the molecule in 3D, with forces from the current ML-HK model (exact gradient of its energy); "
    "its energy is drawn as it runs. *Stop* ends it. The run stops by itself if a bond stretches beyond 1.6× "
    "its start length and twice the covalent radii: the model has left the geometries it was trained on."
)
