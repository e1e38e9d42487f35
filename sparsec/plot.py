"""Plots of analysis reports, drawn with matplotlib: the optional extra ``sparsec[plot]``.

Invariant: matplotlib is never a runtime dependency. It is imported here only, inside the
functions that draw, and without it ``--plot`` is one error line naming the pip command
(``require_matplotlib``, called before any long measurement). Figures are drawn on a
``matplotlib.figure.Figure`` (no pyplot, no global state, no display backend); the file format
is the path's suffix (``PLOT_SUFFIXES``).
"""

from __future__ import annotations

from pathlib import Path

from sparsec.errors import InputError

PLOT_SUFFIXES = (".png", ".svg")
INSTALL_HINT = "pip install 'sparsec[plot]' (or: pip install matplotlib)"
ZERO_COLOR, NEAR_COLOR = "#1f77b4", "#aec7e8"


def require_matplotlib() -> None:
    """Raise one ``InputError`` line with the pip command when matplotlib cannot be imported."""
    try:
        import matplotlib.figure  # noqa: F401  # the check itself
    except ImportError:
        raise InputError(
            f"--plot draws with matplotlib, which is not installed: {INSTALL_HINT}"
        ) from None


def check_plot_path(path: str | Path) -> Path:
    """``path`` when its suffix names a format drawn here and its folder exists."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(
            f"--plot {path}: the file must end in {' or '.join(PLOT_SUFFIXES)} (its format)"
        )
    if not path.parent.is_dir():
        raise InputError(f"--plot {path}: folder {path.parent} does not exist")
    return path


def activation_zeros_plot(report, path: str | Path) -> Path:
    """A horizontal bar per measured value of an activation-sparsity report (``ActivationReport``
    or its ``to_json()``), top to bottom in graph order: its near-zero fraction (light) behind
    its exact-zero fraction (dark), the dead channels counted at the bar's end. Written to
    ``path`` (.png or .svg)."""
    path = check_plot_path(path)
    require_matplotlib()
    from matplotlib.figure import Figure

    data = report.to_json() if hasattr(report, "to_json") else report
    rows = data["values"]
    labels = [f"{row['name']} ({row['producer']})" for row in rows]
    positions = list(range(len(rows)))[::-1]
    figure = Figure(figsize=(9, 1.5 + 0.3 * len(rows)), layout="constrained")
    axes = figure.add_subplot()
    near = [row["near_zero_fraction"] for row in rows]
    zeros = [row["zero_fraction"] for row in rows]
    threshold = f"|x| <= {data['threshold']:g}"
    axes.barh(positions, near, color=NEAR_COLOR, label=f"near zero ({threshold})")
    axes.barh(positions, zeros, color=ZERO_COLOR, label="exactly zero")
    for y, row in zip(positions, rows):
        if row["dead_channels"]:
            dead = f" {len(row['dead_channels'])}/{row['channels']} dead"
            axes.text(max(row["near_zero_fraction"], 0.0), y, dead, va="center", fontsize=8)
    axes.set_yticks(positions, labels, fontsize=8)
    axes.set_xlim(0, 1.15)
    axes.set_xlabel(f"fraction of values over {data['samples']} calibration samples")
    axes.set_title(f"Activation zeros per layer: {Path(data['model'] or 'model').name}")
    axes.legend(loc="lower right", fontsize=8)
    figure.savefig(path)
    return path
