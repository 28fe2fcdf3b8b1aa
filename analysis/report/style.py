"""Colours, axis labels and number formats shared by every report figure.

Colours are colour-blind safe: a model-size scale uses Viridis (perceptually uniform,
readable in grey and by deuteranopes), categorical series use the Okabe–Ito palette.
"""

from __future__ import annotations

import math

import numpy as np
from plotly.colors import sample_colorscale

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
SIZE_SCALE = "Viridis"
TEMPLATE = "plotly_white"
BAND_OPACITY = 0.18


# Laws drawn in the same figure get different colours; yellow (poor on white) is never used.
LAW_COLOURS = {"chinchilla": "#0072B2", "power_N": "#E69F00", "power_D": "#009E73", "power_C": "#D55E00",
               "kaplan_N": "#CC79A7", "kaplan_D": "#56B4E9", "kaplan_C": "#000000",
               "isoflop": "#D55E00", "envelope": "#009E73"}


def law_colour(law: str) -> str:
    return LAW_COLOURS.get(law, "#555555")


def scale_colours(values, scale: str = SIZE_SCALE) -> list[str]:
    """One colour per value on a log scale (Viridis, low = dark purple, high = yellow)."""
    logs = np.log10(np.asarray(values, dtype=float))
    lo, hi = float(np.nanmin(logs)), float(np.nanmax(logs))
    frac = np.zeros_like(logs) if hi == lo else (logs - lo) / (hi - lo)
    # Stop short of Viridis' pale yellow end, which is hard to see on white.
    return sample_colorscale(scale, list(np.clip(frac, 0, 1) * 0.92))


def rgba(colour: str, alpha: float) -> str:
    """'#RRGGBB' or 'rgb(r, g, b)' with an alpha channel, for filled bands."""
    if colour.startswith("#"):
        r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
    else:
        r, g, b = (int(float(v)) for v in colour[colour.index("(") + 1:colour.index(")")].split(",")[:3])
    return f"rgba({r}, {g}, {b}, {alpha})"


def sci(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    return f"{x:.{digits}g}"


def axis_label(var: str, data_unit: str = "data units") -> str:
    return {"N": "N, parameters (the scaling N)",
            "D": f"D, {data_unit} trained",
            "C": "C, training FLOPs"}[var]


def loss_label(loss_unit: str) -> str:
    return f"held-out loss ({loss_unit})"
