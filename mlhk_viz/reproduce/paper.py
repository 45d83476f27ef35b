"""The paper's published numbers (kcal/mol), to print beside ours."""

#: Table 1: (molecule, M) -> {quantity: (MAE, max)}
TABLE1 = {
    ("H2", 5): {"mlks_dE": (1.3, 4.3), "mlhk_dE": (0.70, 2.9), "mlhk_dED": (0.18, 0.54)},
    ("H2", 7): {"mlks_dE": (0.37, 1.4), "mlhk_dE": (0.17, 0.73), "mlhk_dED": (0.054, 0.16)},
    ("H2", 10): {"mlks_dE": (0.080, 0.41), "mlhk_dE": (0.019, 0.11), "mlhk_dED": (0.017, 0.086)},
    ("H2O", 5): {"mlks_dE": (1.4, 5.0), "mlhk_dE": (1.1, 4.9), "mlhk_dED": (0.056, 0.17)},
    ("H2O", 10): {"mlks_dE": (0.27, 0.93), "mlhk_dE": (0.12, 0.39), "mlhk_dED": (0.099, 0.59)},
    ("H2O", 15): {"mlks_dE": (0.12, 0.47), "mlhk_dE": (0.043, 0.25), "mlhk_dED": (0.029, 0.14)},
    ("H2O", 20): {"mlks_dE": (0.015, 0.064), "mlhk_dE": (0.0091, 0.060), "mlhk_dED": (0.011, 0.058)},
}

QUANTITIES = {"mlks_dE": "ML-KS ΔE", "mlhk_dE": "ML-HK ΔE", "mlhk_dED": "ML-HK ΔE_D"}

#: Table 2 (ML-HK, M = 2000): (molecule, training pools) -> {quantity: (MAE, max)}
TABLE2 = {
    ("benzene", "300"): {"mlhk_dE": (0.42, 1.7), "mlhk_dED": (0.32, 1.5)},
    ("benzene", "300+350"): {"mlhk_dE": (0.37, 1.8), "mlhk_dED": (0.28, 1.5)},
    ("benzene", "300+400"): {"mlhk_dE": (0.47, 2.3), "mlhk_dED": (0.30, 1.8)},
    ("ethane", "300"): {"mlhk_dE": (0.20, 1.5), "mlhk_dED": (0.17, 1.3)},
    ("ethane", "300+350"): {"mlhk_dE": (0.23, 1.4), "mlhk_dED": (0.19, 1.1)},
    ("ethane", "300+400"): {"mlhk_dE": (0.14, 1.7), "mlhk_dED": (0.098, 0.62)},
    ("malonaldehyde", "300+350"): {"mlhk_dE": (0.27, 1.2), "mlhk_dED": (0.21, 0.74)},
}

#: density errors (normalised L1, %) published by other models on the paper's MD data
DENSITY_L1_PUBLISHED = {"benzene": {"GPWNO": 2.45, "InfGCN": 5.11}, "ethane": {"GPWNO": 3.67}}
