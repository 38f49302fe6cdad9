"""Report figures, drawn with matplotlib's object API (no pyplot state, safe in a server)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve


def _save(figure: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def roc_figure(labels: np.ndarray, probabilities: np.ndarray, threshold: float, path: Path) -> Path:
    """ROC curve with the operating point marked."""
    fpr, tpr, _ = roc_curve(labels, probabilities)
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities)
    point_fpr = float((p[~y] >= threshold).mean())
    point_tpr = float((p[y] >= threshold).mean())
    figure = Figure(figsize=(4.2, 4.2))
    axes = figure.subplots()
    axes.plot(fpr, tpr, color="#0072B2", label="model")
    axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=0.8, label="chance")
    axes.scatter([point_fpr], [point_tpr], color="#D55E00", zorder=3, label=f"operating point (t={threshold:.3f})")
    axes.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC curve", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right", fontsize=8)
    return _save(figure, path)


def reliability_figure(bins: Sequence[dict], ece: float, path: Path) -> Path:
    """Reliability diagram: observed pneumonia rate against mean predicted probability per bin."""
    figure = Figure(figsize=(4.2, 4.2))
    axes = figure.subplots()
    filled = [b for b in bins if b["count"]]
    centres = [(b["low"] + b["high"]) / 2 for b in filled]
    widths = [b["high"] - b["low"] for b in filled]
    axes.bar(centres, [b["positive_rate"] for b in filled], width=widths, color="#56B4E9", edgecolor="white", label="observed rate")
    axes.plot([b["mean_probability"] for b in filled], [b["positive_rate"] for b in filled], "o", color="#0072B2", markersize=3)
    axes.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=0.8, label="perfect calibration")
    axes.set(xlabel="predicted probability", ylabel="observed pneumonia rate", title=f"Reliability (ECE {ece:.3f})")
    axes.set(xlim=(0, 1), ylim=(0, 1))
    axes.legend(loc="upper left", fontsize=8)
    return _save(figure, path)


def confusion_figure(confusion: dict, path: Path) -> Path:
    """2 x 2 confusion matrix with counts."""
    matrix = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])
    figure = Figure(figsize=(3.6, 3.2))
    axes = figure.subplots()
    axes.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        colour = "white" if value > matrix.max() / 2 else "black"
        axes.text(col, row, str(value), ha="center", va="center", color=colour, fontsize=13)
    axes.set_xticks([0, 1], ["normal", "pneumonia"])
    axes.set_yticks([0, 1], ["normal", "pneumonia"])
    axes.set(xlabel="model call", ylabel="label", title="Confusion matrix")
    return _save(figure, path)


def gallery_figure(images: Sequence[np.ndarray], captions: Sequence[str], title: str, path: Path, columns: int = 4) -> Path:
    """Grid of grey images with captions (for the worst errors)."""
    rows = max(1, int(np.ceil(len(images) / columns)))
    figure = Figure(figsize=(2.4 * columns, 2.6 * rows))
    figure.suptitle(title)
    for index in range(rows * columns):
        axes = figure.add_subplot(rows, columns, index + 1)
        axes.axis("off")
        if index < len(images):
            axes.imshow(np.squeeze(images[index]), cmap="gray", vmin=0, vmax=1)
            axes.set_title(captions[index], fontsize=7)
    return _save(figure, path)
