"""Report figures, drawn with matplotlib's object API (no pyplot state, safe in a server)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
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


# A bin with fewer films than this is drawn pale: one film more or less moves its observed rate by
# more than 0.1, so a bar far from the diagonal there says little about calibration.
SPARSE_BIN_FILMS = 10


def reliability_figure(bins: Sequence[dict], ece: float, path: Path) -> Path:
    """Reliability diagram: observed pneumonia rate against predicted probability per bin, with each
    bin's 95 % Wilson interval and, in a strip below, how many films it holds (written under each bar).

    A bin of a few films can sit far from the diagonal by chance alone; the counts and the intervals
    let a reader tell that from miscalibration. Bins with fewer than ``SPARSE_BIN_FILMS`` films are pale.

    Args:
        bins: ``metrics.calibration_bins`` (``low``, ``high``, ``count``, ``mean_probability``, ``positive_rate``).
        ece: the expected calibration error over the same bins.
        path: where the PNG goes.
    """
    from ..site import wilson_interval

    figure = Figure(figsize=(4.2, 5.0))
    rates, counts = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [4, 1.15], "hspace": 0.08})
    filled = [b for b in bins if b["count"]]
    total = sum(b["count"] for b in bins)
    centres = np.array([(b["low"] + b["high"]) / 2 for b in filled])  # (bins,)
    widths = np.array([b["high"] - b["low"] for b in filled])
    observed = np.array([b["positive_rate"] for b in filled])
    sparse = np.array([b["count"] < SPARSE_BIN_FILMS for b in filled])
    intervals = np.array([wilson_interval(round(b["positive_rate"] * b["count"]), b["count"]) for b in filled])  # (bins, 2)
    colours = np.where(sparse, "#CBE6F5", "#56B4E9")
    rates.bar(centres, observed, width=widths, color=colours, edgecolor="white")
    rates.errorbar(
        [b["mean_probability"] for b in filled], observed,
        yerr=np.clip([observed - intervals[:, 0], intervals[:, 1] - observed], 0, None),  # (2, bins); float round-off at 0 and 1
        fmt="o", color="#0072B2", markersize=3, elinewidth=0.9, capsize=2, label="95 % interval",
    )
    rates.plot([0, 1], [0, 1], color="0.4", linestyle="--", linewidth=0.8, label="perfect calibration")
    rates.set(ylabel="observed pneumonia rate", title=f"Reliability (ECE {ece:.3f}), {total} films", xlim=(0, 1), ylim=(0, 1.02))
    handles, _ = rates.get_legend_handles_labels()
    handles = [
        Patch(color="#56B4E9", label="observed rate"),
        Patch(color="#CBE6F5", label=f"observed rate, bin of < {SPARSE_BIN_FILMS} films"),
        *handles,
    ]
    rates.legend(handles=handles, loc="upper left", fontsize=7)
    counts.bar(centres, [b["count"] for b in filled], width=widths, color=colours, edgecolor="white")
    counts.set_yscale("log")
    counts.set_ylim(0.7, max(b["count"] for b in filled) * 12)
    counts.set_yticks([])
    counts.minorticks_off()
    for centre, b in zip(centres, filled):
        counts.text(centre, b["count"] * 1.3, str(b["count"]), ha="center", va="bottom", fontsize=6.5)
    counts.set(xlabel="predicted probability", ylabel="films")
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
