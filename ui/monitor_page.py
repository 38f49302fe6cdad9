"""The Monitoring page's parts: the monitor's report on the app's audit trail, drawn over time and
said in words.

All the statistics are ``pneumo_model.monitor``'s; this module reads the trail through it (never
creating a file), picks the baseline the active site profile offers, and turns the report into a
picture, a table and plain sentences.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pneumo_model import monitor
from pneumo_model.operating_point import OperatingPoint

if TYPE_CHECKING:
    from pneumo_model.prediction import Predictor

# Okabe-Ito, as the other figures.
BLUE, ORANGE, GREEN, VERMILLION, GREY = "#0072B2", "#E69F00", "#009E73", "#D55E00", "#555555"


def report(model: "Predictor", trail_path: Path, window: int, profile_path: str | None) -> dict:
    """The monitor's report on the trail at ``trail_path`` for ``model`` and its active operating
    point, with the active site profile's sample as the baseline when it has one.

    Raises:
        MonitorError: no trail, an unreadable one, too few films, or an unusable profile sample.
    """
    reference = monitor.Reference.from_metadata(model.metadata)
    shipped, active = OperatingPoint.shipped(model.metadata), model.operating_point
    scales = {point.id: (point.scale, point.offset) for point in (shipped, active)}
    films = monitor.trail_films(trail_path, model.metadata.model_sha256, scales)
    baseline = None
    if profile_path is not None:
        try:
            data = json.loads(Path(profile_path).read_text())
        except (OSError, ValueError) as error:
            raise monitor.MonitorError(f"The active site profile cannot be read ({error}).") from None
        baseline = monitor.baseline_from_profile(data, reference)
    return monitor.monitor(films, active, reference, monitor.MonitorRule(window=window), baseline)


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _picture(figure: Figure) -> np.ndarray:
    """The figure drawn by Agg: (h, w, 3) uint8 RGB."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def _points(axes, times: list, values: np.ndarray, alert: np.ndarray, full: np.ndarray, colour: str) -> None:
    """Each window's point: vermillion when it alerts, hollow when it is partial."""
    times = np.array(times, dtype=object)
    for mask, face in ((full, None), (~full, "none")):
        for chosen, tint, size in ((mask & ~alert, colour, 26), (mask & alert, VERMILLION, 44)):
            if chosen.any():
                axes.scatter(times[chosen], values[chosen], color=tint, facecolors=face, s=size, zorder=3)


def windows_picture(result: dict) -> np.ndarray:
    """Four panels against time (each window at its last film): the films' move and the mix's shift,
    each against the limit that raises its alert; the estimated prevalence with its interval beside
    the share called pneumonia; the share the out-of-distribution check flagged. Alerting windows
    are vermillion, a partial window hollow, the baseline window grey."""
    rows = result["windows"]
    times = [_time(row["last_utc"]) for row in rows]
    alert = np.array([row["alert"] for row in rows])
    full = np.array([row["full"] for row in rows])
    judged = np.array([row["shift_limit"] is not None for row in rows])
    rule = monitor.MonitorRule()
    figure = Figure(figsize=(9.0, 7.6), dpi=100, layout="constrained")
    films_axes, mix_axes, prevalence_axes, flag_axes = figure.subplots(4, 1, sharex=True)

    films = np.array([row["films_shift"] for row in rows])
    films_axes.axhline(rule.films_constant, color=VERMILLION, linestyle="--", linewidth=1.0,
                       label=f"limit {rule.films_constant:g}: above it, the films changed")
    films_axes.plot(times, np.where(judged, films, np.nan), color=BLUE, linewidth=1.2)
    _points(films_axes, times, np.where(judged, films, np.nan), alert, full, BLUE)
    films_axes.set_ylim(0, max(rule.films_constant * 1.4, np.nanmax(np.where(judged, films, 0.0)) * 1.15))
    films_axes.set_ylabel("films' move\n(rank-test z)")
    films_axes.set_title("Did the films change? Normal-looking and pneumonia-looking films against the baseline's", fontsize=9, loc="left")

    shift = np.array([row["shift"] for row in rows])
    limit = np.array([np.nan if row["shift_limit"] is None else row["shift_limit"] for row in rows])
    mix_axes.plot(times, limit, color=GREY, linestyle="--", linewidth=1.0, label="limit: above it, the mix changed")
    mix_axes.plot(times, np.where(judged, shift, np.nan), color=BLUE, linewidth=1.2)
    _points(mix_axes, times, np.where(judged, shift, np.nan), alert, full, BLUE)
    mix_axes.set_ylim(0, max(0.3, np.nanmax(np.concatenate([shift, np.nan_to_num(limit)])) * 1.15))
    mix_axes.set_ylabel("scores' shift\n(KS distance)")
    mix_axes.set_title("Did the mix of scores change? (more or fewer sick children move it too)", fontsize=9, loc="left")

    low = [row["prevalence_low"] for row in rows]
    high = [row["prevalence_high"] for row in rows]
    prevalence_axes.fill_between(times, low, high, color=ORANGE, alpha=0.25, linewidth=0, label="95 % interval")
    prevalence_axes.plot(times, [row["estimated_prevalence"] for row in rows], color=ORANGE, marker="o", markersize=4,
                         linewidth=1.4, label="estimated share of sick children")
    prevalence_axes.plot(times, [row["share_pneumonia"] for row in rows], color=GREEN, linestyle="--", marker="s",
                         markersize=3, linewidth=1.0, label="share called pneumonia")
    prevalence_axes.axhline(result["baseline"]["estimated_prevalence"], color=GREY, linewidth=0.8, linestyle=":",
                            label="baseline's estimate")
    prevalence_axes.set_ylim(0, 1)
    prevalence_axes.set_ylabel("share of films")

    flagged = np.array([np.nan if row["share_flagged"] is None else row["share_flagged"] for row in rows], dtype=float)
    flag_axes.bar(times, np.nan_to_num(flagged), width=_bar_width(times), color=[VERMILLION if a else GREY for a in alert], alpha=0.8)
    baseline_flagged = result["baseline"]["share_flagged"]
    if baseline_flagged is not None:
        flag_axes.axhline(baseline_flagged, color=GREY, linewidth=0.8, linestyle=":", label="baseline's share")
    flag_axes.set_ylim(0, max(0.1, float(np.nanmax(np.nan_to_num(flagged))) * 1.25))
    flag_axes.set_ylabel("share flagged\n(not like training)")
    flag_axes.set_xlabel("time of each window's last film (UTC); vermillion: alert")
    for axes in (films_axes, mix_axes, prevalence_axes, flag_axes):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(loc="lower left" if axes is prevalence_axes else "upper left", fontsize=7.5, frameon=False, ncols=2)
    figure.autofmt_xdate()
    return _picture(figure)


def _bar_width(times: list[dt.datetime]) -> float:
    """A bar width in days: 60 % of the smallest gap between windows (a day when there is one window)."""
    if len(times) < 2:
        return 0.5
    gaps = np.diff([time.timestamp() for time in times]) / 86400.0
    return float(max(np.min(gaps[gaps > 0], initial=1.0) * 0.6, 1e-4))


def windows_table(result: dict) -> pd.DataFrame:
    """One row per window, newest first, in the page's words."""
    rows = []
    for row in reversed(result["windows"]):
        rows.append({
            "window": str(row["index"] + 1) + ("" if row["full"] else " (partial)"),
            "from": row["first_utc"][:16].replace("T", " "),
            "to": row["last_utc"][:16].replace("T", " "),
            "films": row["n"],
            "called pneumonia": row["share_pneumonia"],
            "grey zone": row["share_grey_zone"],
            "flagged": row["share_flagged"],
            "sick children (estimate)": f"{row['estimated_prevalence']:.0%} ({row['prevalence_low']:.0%}–{row['prevalence_high']:.0%})",
            "shift": row["shift"],
            "alert": "ALERT" if row["alert"] else "",
            "why": "; ".join(row["reasons"]),
        })
    return pd.DataFrame(rows)


def alert_words(result: dict) -> tuple[str, list[str], list[str]]:
    """The last full window's state in one sentence, its reasons and what to do (both empty without an alert)."""
    full = [row for row in result["windows"] if row["full"]]
    if not full:
        return f"No full window of {result['window']} films yet ({result['films']} films so far): nothing judged.", [], []
    last = full[-1]
    when = f"window {last['index'] + 1} ({last['first_utc'][:10]} to {last['last_utc'][:10]}, {last['n']} films)"
    if not last["alert"]:
        return f"No change beyond what chance gives in the last full {when}.", [], []
    cause = monitor.CAUSE_WORDS[result["cause"]]
    return f"**{cause}** in the last full {when}.", list(last["reasons"]), list(result["actions"])
