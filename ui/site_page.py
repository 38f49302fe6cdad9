"""The Site calibration page's parts: a labelled upload read into files, scored once per content
within the app's decode slots, and the profile's figures, ROC and threshold explorer for the page.

All fitting is ``pneumo_model.site``'s; this module turns uploads into its inputs and its results
into tables and pictures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score, roc_curve

from pneumo_model import site
from pneumo_model.errors import SiteInputError
from pneumo_model.operating_point import OperatingPoint
from pneumo_model.paths import bytes_sha256

if TYPE_CHECKING:
    from pneumo_model.prediction import Predictor

TARGETS = tuple(round(0.90 + 0.01 * step, 2) for step in range(10))  # 0.90 ... 0.99
# The explorer table's rows: the threshold rule 2 gives for each of these targets (and the slider's).
TABLE_TARGETS = (0.80, 0.85, 0.90, 0.95, 0.97, 0.98, 0.99)
# What the page calls its one axis, wherever a threshold or a band is shown.
AXIS = "the profile's recalibrated probability"
FIGURE_NAMES = {
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "grey_zone_share": "Share in the grey zone",
    "accuracy_outside_grey_zone": "Accuracy outside the grey zone",
}
# Okabe-Ito, as the other figures.
BLUE, ORANGE, GREEN, VERMILLION, GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#555555"


# --- the upload -------------------------------------------------------------------------


def files_from_csv(csv_data: bytes, images: Sequence[tuple[str, bytes]]) -> tuple[list[site.LabelledFile], list[str]]:
    """The labelled files of "many images plus a ``file,label`` CSV".

    A CSV ``file`` value names an uploaded image by its file name: an exact match first, else
    its last path part (``NORMAL/0001.png`` finds the upload ``0001.png``; a browser sends no folders).

    Args:
        csv_data: the CSV's bytes (UTF-8, a byte-order mark allowed).
        images: ``(uploaded file name, bytes)`` of each uploaded image.

    Returns:
        The labelled files, and the names of uploaded images the CSV does not name (not used).

    Raises:
        SiteInputError: the CSV is not text, two uploads share a name, or ``site.parse_labels_csv``
            refuses the CSV (a missing file, an unknown label...; every problem listed).
    """
    try:
        text = csv_data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SiteInputError("The labels CSV is not UTF-8 text; save it as CSV (UTF-8) and upload it again.") from None
    by_name: dict[str, bytes] = {}
    twice = []
    for name, data in images:
        if name in by_name:
            twice.append(name)
        by_name[name] = data
    if twice:
        raise SiteInputError(
            "Two uploaded images share a name, so the CSV cannot tell them apart; rename one of each pair: "
            + ", ".join(sorted(set(twice)))
            + "."
        )
    named = set()

    def resolve(value: str):
        for name in (value, PurePosixPath(value).name, PureWindowsPath(value).name):
            if name in by_name:
                named.add(name)
                data = by_name[name]
                return lambda: data
        return None

    files = site.parse_labels_csv(text, resolve)
    return files, sorted(set(by_name) - named)


def content_key(kind: str, parts: Sequence[tuple[str, str]]) -> str:
    """What identifies an upload's content: its kind and ``(role, SHA-256)`` of each file, in any order
    (the role is what the file's name means to the sample: an image's name for the CSV, else a fixed word)."""
    lines = sorted(f"{role}\0{digest}" for role, digest in parts)
    return hashlib.sha256("\n".join([kind, *lines]).encode()).hexdigest()


def upload_digests(files, memo: dict[str, str]) -> list[str]:
    """The SHA-256 of each uploaded file, in order, each hashed once per upload: ``memo`` maps
    Streamlit's ``file_id`` to the digest (trimmed to these files), so a rerun does not hash a large zip again."""
    current = {file.file_id for file in files}
    for stale in set(memo) - current:
        del memo[stale]
    for file in files:
        if file.file_id not in memo:
            memo[file.file_id] = bytes_sha256(file.getvalue())
    return [memo[file.file_id] for file in files]


def score(
    predictor: Predictor,
    files: Sequence[site.LabelledFile],
    progress: Callable[[int, int], None],
    decode_slot: Callable[[], contextlib.AbstractContextManager],
) -> site.ScoredSample:
    """``site.score_sample`` one file at a time, each file's decode inside one of the app's decode slots.

    ``score_sample`` reads a batch's files, decodes them, calls the model, then reports progress.
    With batches of one file, the slot taken when a file is read is given back at that report, so
    this session holds one decoded image at a time and decodes within the process-wide bound
    (other sessions keep their turns between two files). The slot is given back whatever happens.

    Raises:
        SiteInputError: the sample is refused (``score_sample``).
        ServerBusyError: no decode slot came free in time.
    """
    slot = contextlib.ExitStack()

    def in_a_slot(file: site.LabelledFile) -> Callable[[], bytes]:
        def read() -> bytes:
            slot.enter_context(decode_slot())
            return file.read()

        return read

    def report(done: int, total: int) -> None:
        slot.close()
        progress(done, total)

    try:
        return site.score_sample(
            predictor, [dataclasses.replace(file, read=in_a_slot(file)) for file in files], report, batch_size=1
        )
    finally:
        slot.close()


# --- the profile's figures -----------------------------------------------------------------


def calibration_of(profile: site.SiteProfile) -> site.Calibration:
    return site.Calibration(profile.calibration["method"], float(profile.calibration["scale"]), float(profile.calibration["offset"]))


def active_figures(sample: site.ScoredSample, point: OperatingPoint) -> dict:
    """The active operating point's figures on the sample (it was not fitted on it), as ``site.figures``."""
    p = point.probabilities(sample.raw_logits)
    return site.figures(sample.labels, p >= point.threshold, point.grey_zone.contains(p))


def stated(value: dict | None) -> str:
    """'0.968 (0.890-0.991; 60/62)', or '-' where undefined."""
    if value is None:
        return "–"
    return f"{value['value']:.3f} ({value['low']:.3f}–{value['high']:.3f}; {value['count']}/{value['n']})"


def figures_table(profile: site.SiteProfile, active: dict, active_name: str) -> pd.DataFrame:
    """One row per figure: the fitted profile's out of fold, and the active point's on the same sample."""
    return pd.DataFrame(
        {
            "": list(FIGURE_NAMES.values()),
            "Fitted profile, out of fold": [stated(profile.figures[key]) for key in FIGURE_NAMES],
            active_name: [stated(active[key]) for key in FIGURE_NAMES],
        }
    )


def probability(p: float) -> str:
    """'0.183'; beyond 0.001 and 0.999 the digits that tell it from 0 or 1 ('0.00002', '1 − 3e-07')."""
    if 0.001 <= p <= 0.999 or p in (0.0, 1.0):
        return f"{p:.3f}"
    return f"{p:.1g}" if p < 0.5 else f"1 − {1 - p:.0e}"


def percent(share: float) -> str:
    """'12 %': a share as a whole percentage, spaced as the page's other figures."""
    return f"{100 * share:.0f} %"


def ordinal(n: int) -> str:
    """'1st', '2nd', '3rd', '11th', '22nd'."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def uncertainty_lines(profile: site.SiteProfile) -> list[str]:
    return [
        site.uncertainty_line(profile.n_pneumonia, "pneumonia", profile.figures["sensitivity"]),
        site.uncertainty_line(profile.n_normal, "normal", profile.figures["specificity"]),
    ]


# --- one axis: the profile's recalibrated probability ------------------------------------------


def on_axis(point: OperatingPoint, profile: site.SiteProfile) -> float:
    """An operating point's threshold (on its own scale) placed on the page's axis: the profile's scale."""
    return site.translate(point.threshold, point, calibration_of(profile))


def axis_line(profile: site.SiteProfile, active: OperatingPoint) -> str:
    """The page's statement of its one axis, with the fitted and the active thresholds converted both ways."""
    today = site.translate(profile.threshold, calibration_of(profile), active)
    return (
        f"**One axis.** Every threshold and grey zone from here on (the fitted profile's, the table's, the "
        f"explorer's and the ROC's points) is on {AXIS}: the probability of pneumonia the app would show with this "
        f"profile active. Converted with the profile's recalibration: the fitted threshold {probability(profile.threshold)} "
        f"stands for the same films as a probability of {probability(today)} as the app shows it now, and the active "
        f"threshold {probability(active.threshold)} is {probability(on_axis(active, profile))} on this axis."
    )


# --- the small sample's cost -------------------------------------------------------------------


def _lowest(rank: int) -> str:
    return "lowest" if rank == 1 else f"{ordinal(rank)} lowest"


def _films(n: int) -> str:
    return f"{n} film" + ("" if n == 1 else "s")


def band_cost_lines(cost: site.SmallSampleCost, profile: site.SiteProfile, by_size: list[dict]) -> list[str]:
    """Why the fitted grey zone is as wide as it is on this sample, and what more films would do, in words.

    Args:
        cost: ``site.small_sample_cost`` of the sample at the profile's target.
        profile: the fitted profile (its out-of-fold grey-zone share).
        by_size: ``reports.site_grey_zone_by_size`` of the test-split simulation ([] without the report).
    """
    low, high = (probability(edge) for edge in cost.grey_zone)
    share = profile.figures["grey_zone_share"]
    lines = [
        f"Out of fold, the band [{low}, {high}) held {percent(share['value'])} of your films ({share['count']} of "
        f"{share['n']}; 95 % interval {percent(share['low'])}–{percent(share['high'])}). How the sample's size shows in it:"
    ]
    n = cost.n_pneumonia
    if cost.promised_sensitivity < cost.target:
        rank = (
            f"**The threshold rests on one film.** With {n} pneumonia films no threshold can promise a sensitivity of "
            f"{cost.target:.2f} on new films: even at the lowest of them the rule promises {cost.promised_sensitivity:.3f} "
            f"(1 in {n + 1} new pneumonia films may score below it). The threshold sits as low as your least typical "
            "pneumonia film, however unusual that film is."
        )
    else:
        rank = (
            f"**The threshold rests on {'one film' if cost.rank == 1 else f'your {_lowest(cost.rank)} pneumonia film'}.** With {n} pneumonia films, "
            f"a sensitivity of {cost.target:.2f} on new films is promised only by putting the threshold at the "
            f"{_lowest(cost.rank)} of them (the rule then promises {cost.promised_sensitivity:.3f}, more than the "
            f"{cost.target:.2f} asked, because {n + 1} films do not split at exactly {1 - cost.target:.2f}): the threshold "
            f"sits as low as your {'least typical pneumonia film' if cost.rank == 1 else f'{ordinal(cost.rank)} least typical pneumonia film'}."
        )
    rank += (
        f" From {cost.next_rank_at} pneumonia films it would rest on the {_lowest(cost.rank + 1)}, "
        "closer to what the site's films do than to one unusual film."
    )
    lines.append(rank)
    if cost.widened:
        chow_low, chow_high = (probability(edge) for edge in cost.chow_band)
        moved = []
        if cost.grey_zone[0] < cost.chow_band[0]:
            moved.append(f"its lower edge from {chow_low} down to {low}")
        if cost.grey_zone[1] > cost.chow_band[1]:
            moved.append(f"its upper edge from {chow_high} up to {high}")
        lines.append(
            f"**The band is stretched to hold that threshold.** Rule 3 keeps the threshold at least "
            f"{site.MIN_EDGE_LOGIT} logit inside the band, so it moved {' and '.join(moved)}; "
            f"{_films(cost.widened_images)} of your sample lie in that stretch."
        )
    else:
        chow_low, chow_high = (probability(edge) for edge in cost.chow_band)
        lines.append(f"**The band is Chow's [{chow_low}, {chow_high})**, not stretched: the threshold lies far enough inside it.")
    normal_aim, pneumonia_aim = cost.platt_targets
    platt = (
        f"**The probabilities are kept off 0 and 1.** Rule 1 fits the recalibration towards {normal_aim:.3f} and "
        f"{pneumonia_aim:.3f} rather than 0 and 1 (Platt's correction for {cost.n_normal} normal and {n} pneumonia films), "
        f"so a small sample's probabilities are flatter and more films land between {cost.chow_band[0]:g} and {cost.chow_band[1]:g}"
    )
    largest = max(by_size, key=lambda row: row["size"], default=None)
    if largest is not None:
        far_normal, far_pneumonia = site.platt_extremes(largest["normal"], largest["pneumonia"])
        platt += f"; with {largest['normal']} normal and {largest['pneumonia']} pneumonia films it would aim at {far_normal:.3f} and {far_pneumonia:.3f}"
    lines.append(platt + ".")
    if by_size:
        first, *others = by_size
        spread = f"profiles fitted on {first['size']} films put a median {percent(first['median'])} of the new films in their grey zone " \
            f"(5th–95th percentile over the draws {percent(first['p5'])}–{percent(first['p95'])})"
        spread += "".join(
            f", on {row['size']} films {percent(row['median'])} ({percent(row['p5'])}–{percent(row['p95'])})" for row in others
        )
        lines.append(
            f"**More films narrow it.** When the official test split played a site (`reports/site_calibration.md`), {spread}."
        )
    return lines


# --- the threshold explorer ------------------------------------------------------------------


def explorer_rows(sample: site.ScoredSample, profile: site.SiteProfile) -> list[dict]:
    """``site.threshold_explorer`` at every distinct score of the sample, on the profile's calibration."""
    return site.threshold_explorer(sample.raw_logits, sample.labels, calibration_of(profile))


def explorer_table(sample: site.ScoredSample, profile: site.SiteProfile) -> pd.DataFrame:
    """One row per target sensitivity (``TABLE_TARGETS`` and the profile's), by ascending target: the
    threshold rule 2 gives for it on the profile's calibration (the fitted row's is the profile's own),
    what it achieves on this sample, and that row's own grey zone and the share of the sample in it.

    Columns: ``target``, ``rank`` (words: 'lowest of 40'), ``threshold``, ``sensitivity`` (achieved in the
    sample), ``specificity``, ``called_pneumonia``, ``grey_zone`` ('[0.100, 0.900)'), ``grey_zone_share``, ``fitted``.
    """
    rows = site.target_rows(sample.raw_logits, sample.labels, calibration_of(profile), [*TABLE_TARGETS, profile.target_sensitivity])
    table = pd.DataFrame(rows)
    table["fitted"] = np.isclose(table["target"], profile.target_sensitivity, rtol=0, atol=1e-9)
    table["rank"] = [f"{_lowest(row['rank'])} of {row['n_pneumonia']}" for row in rows]
    table["grey_zone"] = [f"[{probability(row['grey_zone_low'])}, {probability(row['grey_zone_high'])})" for row in rows]
    return table[["target", "rank", "threshold", "sensitivity", "specificity", "called_pneumonia", "grey_zone", "grey_zone_share", "fitted"]]


def _picture(figure: Figure) -> np.ndarray:
    """The figure drawn by Agg: (h, w, 3) uint8 RGB."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


# Probabilities are drawn on a logit axis, whose ends are 0 and 1; scores beyond these are drawn at them.
_EDGE = 1e-3


def explorer_picture(rows: list[dict], profile: site.SiteProfile, active: OperatingPoint | None = None) -> np.ndarray:
    """Sensitivity, specificity, share called pneumonia and share in the grey zone against the
    threshold on the page's one axis (the profile's recalibrated probability, drawn on a logit
    scale), the fitted threshold and its grey zone marked, and the ``active`` point's threshold
    converted onto that axis."""
    thresholds = np.clip([row["threshold"] for row in rows], _EDGE, 1 - _EDGE)
    figure = Figure(figsize=(5.6, 4.5), dpi=100, layout="constrained")
    axes = figure.subplots()
    low, high = profile.grey_zone
    axes.axvspan(max(low, _EDGE), min(high, 1 - _EDGE), color="0.88", label=f"fitted grey zone [{probability(low)}, {probability(high)})")
    for key, label, colour, style in (
        ("sensitivity", "sensitivity", BLUE, "-"),
        ("specificity", "specificity", ORANGE, "-"),
        ("called_pneumonia", "share called pneumonia", GREEN, "--"),
        ("grey_zone_share", "share in its grey zone", GREY, ":"),
    ):
        axes.plot(thresholds, [row[key] for row in rows], style, color=colour, label=label, drawstyle="steps-post", linewidth=1.6)
    axes.axvline(np.clip(profile.threshold, _EDGE, 1 - _EDGE), color=VERMILLION, linewidth=1.6, label=f"fitted threshold {probability(profile.threshold)}")
    if active is not None:
        axes.axvline(
            np.clip(on_axis(active, profile), _EDGE, 1 - _EDGE), color=GREY, linewidth=1.2, linestyle="--",
            label=f"active now ({probability(on_axis(active, profile))} here)",
        )
    axes.axhline(
        profile.target_sensitivity, color=BLUE, linewidth=0.8, linestyle=(0, (2, 3)),
        label=f"target sensitivity {profile.target_sensitivity:.2f}",
    )
    axes.set_xscale("logit")
    axes.set_xlim(_EDGE, 1 - _EDGE)
    axes.set_xticks([0.001, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999], ["0.001", "0.01", "0.1", "0.5", "0.9", "0.99", "0.999"])
    axes.minorticks_off()
    axes.set_ylim(-0.02, 1.02)
    axes.set(xlabel=f"threshold, on {AXIS}", ylabel="share of the sample's images")
    axes.set_title("What each threshold would do on this sample", fontsize=10)
    figure.legend(loc="outside lower center", ncols=3, fontsize=7.5, frameon=False)
    axes.grid(alpha=0.3)
    return _picture(figure)


def roc_picture(sample: site.ScoredSample, profile: site.SiteProfile, active: OperatingPoint, active_name: str) -> np.ndarray:
    """The sample's ROC (the model's ranking, the same under any recalibration) with the fitted
    and the active operating points marked where they fall on the sample."""
    labels = sample.labels.astype(bool)
    fpr, tpr, _ = roc_curve(labels, sample.raw_logits)
    auc = roc_auc_score(labels, sample.raw_logits)
    figure = Figure(figsize=(4.4, 4.5), dpi=100, layout="constrained")
    axes = figure.subplots()
    axes.plot(fpr, tpr, color=BLUE, linewidth=1.6, label=f"model on this sample (AUC {auc:.3f})")
    axes.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=0.8, label="chance")
    points = (
        (profile.operating_point(), VERMILLION, "o", f"fitted profile (threshold {probability(profile.threshold)})"),
        (active, GREY, "s", f"{active_name} (threshold {probability(on_axis(active, profile))} on this axis)"),
    )
    for point, colour, marker, label in points:
        called = point.probabilities(sample.raw_logits) >= point.threshold
        axes.scatter([called[~labels].mean()], [called[labels].mean()], color=colour, marker=marker, s=42, zorder=3, label=label)
    axes.set(xlabel="1 − specificity", ylabel="sensitivity", xlim=(0, 1), ylim=(0, 1.01))
    axes.set_title("ROC of the local sample", fontsize=10)
    axes.legend(loc="lower right", fontsize=7.5, framealpha=0.9)
    axes.grid(alpha=0.3)
    return _picture(figure)
