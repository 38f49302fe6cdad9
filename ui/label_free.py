"""The Site calibration page's "Without labels" part: what it reads, draws and says about a
label-free profile (``pneumo_model.alignment``). Numbers come from the package and from
``reports/site_label_free.json``; nothing is computed here but what a picture or a table needs."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pneumo_model import alignment
from pneumo_model.prediction import Predictor

from .site_page import _picture

DEFAULT_LAST = 250
EXPECTED_SETTINGS = (("250|split", "250 films, the split's prevalence"), ("250|low", "250 films, 30 % prevalence"), ("100|split", "100 films, the split's prevalence"), ("500|split", "500 films, the split's prevalence"))
EXPECTED_POINTS = (("label_free", "Without labels (aligned)"), ("labelled_200", "With 200 labelled films"), ("shipped", "As shipped"))
EXPECTED_FIGURES = (("sensitivity", "Sensitivity"), ("specificity", "Specificity"), ("grey_zone_share", "Share in the grey zone"))


@dataclass(frozen=True)
class Upload:
    """An uploaded film as ``alignment.score_unlabelled`` takes it (``name``, ``read()``)."""

    name: str
    data: bytes

    def read(self) -> bytes:
        return self.data


def score_uploads(
    predictor: Predictor,
    files: Sequence[tuple[str, bytes]],
    progress: Callable[[int, int], None],
    decode_slot: Callable[[], contextlib.AbstractContextManager],
) -> alignment.LocalScores:
    """``alignment.score_unlabelled`` on uploaded ``(name, bytes)``, each decode inside one of the
    app's decode slots (given back after each film, as ``site_page.score`` does)."""
    slot = contextlib.ExitStack()

    class InASlot(Upload):
        def read(self) -> bytes:
            slot.enter_context(decode_slot())
            return self.data

    def report(done: int, total: int) -> None:
        slot.close()
        progress(done, total)

    try:
        return alignment.score_unlabelled(predictor, [InASlot(name, data) for name, data in files], report)
    finally:
        slot.close()


def expected_table(report: dict | None) -> pd.DataFrame | None:
    """What the test-split evaluation measured (``site evaluate --label-free``): median (5th-95th
    percentile) of each figure, per setting and operating point, with the share of draws refused."""
    if report is None:
        return None
    rows = []
    for key, title in EXPECTED_SETTINGS:
        block = report["results"].get(key)
        if block is None:
            continue
        for point, name in EXPECTED_POINTS:
            row = {"unlabelled sample": title, "operating point": name}
            for figure, label in EXPECTED_FIGURES:
                value = block["points"][point][figure]
                row[label] = "n/a" if value["median"] is None else f"{value['median']:.3f} ({value['p5']:.3f}–{value['p95']:.3f})"
            row["draws refused"] = f"{block['refused']} of {block['draws']}" if point == "label_free" else ""
            rows.append(row)
    return pd.DataFrame(rows)


def refusal_text(refused: alignment.AlignmentRefused) -> str:
    return "**Not aligned; nothing to download.**  \n" + "  \n".join(f"- {reason}" for reason in refused.reasons)


def counts_line(scores: alignment.LocalScores) -> str:
    counts = scores.counts()
    parts = [f"{counts['used']} distinct films used of {counts['files_in']}"]
    for key, words in (
        ("unreadable", "unreadable"), ("duplicates_merged", "duplicates counted once"), ("excluded_by_gate", "flagged by the gate"),
        ("excluded_over_age", "over 5 years by the header"), ("left_out_old_records", "old trail records without an exact score"),
    ):
        if counts.get(key):
            parts.append(f"{counts[key]} {words}")
    return "; ".join(parts) + "."


def alignment_picture(reference: alignment.Reference, local: np.ndarray, profile: alignment.LabelFreeProfile) -> np.ndarray:
    """The alignment drawn: the site's score distribution before and after the mapping, against
    validation's reweighted to the estimated prevalence (cumulative shares on the calibrated
    log-odds of the shipped scale), and the validated threshold."""
    scale, offset = float(profile.calibration["scale"]), float(profile.calibration["offset"])
    mapping = alignment.Mapping(tuple(profile.mapping["x"]), tuple(profile.mapping["y"]))
    weights = alignment.reference_weights(reference.labels, profile.estimated_prevalence)
    order = np.argsort(reference.logits)
    ref_x = scale * reference.logits[order] + offset
    ref_y = np.cumsum(weights[order]) / weights.sum()
    local = np.sort(np.asarray(local, dtype=np.float64))
    share = np.arange(1, local.size + 1) / local.size
    threshold = math.log(profile.threshold) - math.log1p(-profile.threshold)
    figure = Figure(figsize=(7.2, 3.4))
    axes = figure.subplots()
    axes.step(ref_x, ref_y, where="post", color="#555555", linewidth=2, label=f"validation, reweighted to {profile.estimated_prevalence:.0%} pneumonia")
    axes.step(scale * local + offset, share, where="post", color="#D55E00", linestyle=":", label="your films, as scored")
    axes.step(scale * mapping(local) + offset, share, where="post", color="#009E73", label="your films, aligned")
    axes.axvline(threshold, color="black", linewidth=1)
    axes.text(threshold, 0.02, " validated threshold", fontsize=8)
    axes.set_xlabel("score (log-odds of the shipped calibration)")
    axes.set_ylabel("share of films at or below")
    axes.set_xlim(-12, 12)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="upper left")
    figure.tight_layout()
    return _picture(figure)
