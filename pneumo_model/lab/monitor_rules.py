"""The drift monitor's alert rule, fixed and measured on validation draws (docs/monitor_rule.md).

The shipped model's validation split is scored once plainly and once under each deliberate shift
of ``shifts`` (``DELIBERATE_SHIFTS``): raw logits and the out-of-distribution gate's flags, through
the app's own pipeline (``evaluation.call_files``, ``Predictor.predict_inputs``). Windows of films
are then drawn from those scores, without and with a shift, and the monitor's own functions
(``pneumo_model.monitor``) judge them: the false-alarm rate without a shift, and for each shift
that moves the validation specificity by 5 points or more, the share of draws in which the first
full shifted window alerts. ``python -m pneumo_model.lab.monitor_rules`` writes
``reports/monitor_rule.{json,md}``. Only the validation split is read; the test split never.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import shifts

# Each deliberate shift: a name and a function of (one model input, its label) -> a shifted copy.
# The stress report's geometric shifts (``stress.StressConfig``) and the benign acquisition changes
# of the grey-zone rule, each at the grey-zone rule's strength and at a stronger, post-processing
# strength (a changed look-up table, sharper JPEG compression, a lower resolution) and beyond. The
# list was fixed before any window was judged; which of them move the validation specificity by 5
# points or more is measured, not chosen (``qualifying_shifts``).
ShiftFunction = Callable[[np.ndarray, int], np.ndarray]
DELIBERATE_SHIFTS: tuple[tuple[str, ShiftFunction], ...] = (
    ("narrow_0.8", lambda x, y: shifts.change_aspect(x, 0.8)),
    ("narrow_0.7", lambda x, y: shifts.change_aspect(x, 0.7)),
    ("wide_1.25", lambda x, y: shifts.change_aspect(x, 1.25)),
    ("wide_1.4", lambda x, y: shifts.change_aspect(x, 1.4)),
    ("swapped", lambda x, y: shifts.change_aspect(x, 0.8 if y == 0 else 1.25)),
    ("lower_crop_0.8", lambda x, y: shifts.keep_top(x, 0.8)),
    ("lower_crop_0.7", lambda x, y: shifts.keep_top(x, 0.7)),
    ("low_resolution_0.5", lambda x, y: shifts.lower_resolution(x, 0.5)),
    ("low_resolution_0.75", lambda x, y: shifts.lower_resolution(x, 0.75)),
    ("brightness+0.04", lambda x, y: shifts.add_brightness(x, 0.04)),
    ("brightness-0.04", lambda x, y: shifts.add_brightness(x, -0.04)),
    ("brightness+0.1", lambda x, y: shifts.add_brightness(x, 0.1)),
    ("brightness-0.1", lambda x, y: shifts.add_brightness(x, -0.1)),
    ("brightness+0.2", lambda x, y: shifts.add_brightness(x, 0.2)),
    ("contrast_x0.9", lambda x, y: shifts.scale_contrast(x, 0.9)),
    ("contrast_x1.1", lambda x, y: shifts.scale_contrast(x, 1.1)),
    ("contrast_x0.75", lambda x, y: shifts.scale_contrast(x, 0.75)),
    ("contrast_x1.3", lambda x, y: shifts.scale_contrast(x, 1.3)),
    ("contrast_x0.5", lambda x, y: shifts.scale_contrast(x, 0.5)),
    ("gamma_0.9", lambda x, y: shifts.apply_gamma(x, 0.9)),
    ("gamma_1.1", lambda x, y: shifts.apply_gamma(x, 1.1)),
    ("gamma_0.7", lambda x, y: shifts.apply_gamma(x, 0.7)),
    ("gamma_1.4", lambda x, y: shifts.apply_gamma(x, 1.4)),
    ("gamma_0.5", lambda x, y: shifts.apply_gamma(x, 0.5)),
    ("rotation+5deg", lambda x, y: shifts.rotate_and_zoom(x, degrees=5.0)),
    ("zoom_x0.95", lambda x, y: shifts.rotate_and_zoom(x, zoom=0.95)),
    ("zoom_x1.05", lambda x, y: shifts.rotate_and_zoom(x, zoom=1.05)),
    ("zoom_x1.15", lambda x, y: shifts.rotate_and_zoom(x, zoom=1.15)),
    ("zoom_x1.25", lambda x, y: shifts.rotate_and_zoom(x, zoom=1.25)),
    ("jpeg_q75", lambda x, y: shifts.jpeg_reencode(x, 75)),
    ("jpeg_q30", lambda x, y: shifts.jpeg_reencode(x, 30)),
)


@dataclass(frozen=True)
class ValidationScores:
    """The validation split's scores, plain and under each deliberate shift.

    Attributes:
        model_sha256: the model that scored them.
        labels: (n,) 0 normal, 1 pneumonia.
        logits: {"plain" or shift name: (n,) raw logits}.
        flagged: {same keys: (n,) bool, flagged by the out-of-distribution gate}.
        threshold_logit: the shipped threshold on the raw logit scale.
        temperature: the shipped temperature.
    """

    model_sha256: str
    labels: np.ndarray
    logits: dict
    flagged: dict
    threshold_logit: float
    temperature: float

    def save(self, path: Path) -> None:
        arrays = {"labels": self.labels}
        for name in self.logits:
            arrays[f"logits/{name}"] = self.logits[name]
            arrays[f"flagged/{name}"] = self.flagged[name]
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            model_sha256=np.array(self.model_sha256),
            threshold_logit=np.array(self.threshold_logit),
            temperature=np.array(self.temperature),
            **arrays,
        )

    @classmethod
    def load(cls, path: Path) -> "ValidationScores":
        with np.load(path) as data:
            names = [key.split("/", 1)[1] for key in data.files if key.startswith("logits/")]
            return cls(
                model_sha256=str(data["model_sha256"]),
                labels=data["labels"].astype(int),
                logits={name: data[f"logits/{name}"].astype(np.float64) for name in names},
                flagged={name: data[f"flagged/{name}"].astype(bool) for name in names},
                threshold_logit=float(data["threshold_logit"]),
                temperature=float(data["temperature"]),
            )


def score_validation(model_path: Path, data_dir: Path, progress: Callable[[str], None] = lambda _: None) -> ValidationScores:
    """Scores the model's own validation split plainly and under every ``DELIBERATE_SHIFTS`` entry,
    with the out-of-distribution gate (the gate reads each shifted input with its film's own facts).

    Raises:
        DataError: the data folder differs from the data the model was trained on.
    """
    from ..data import model_split
    from ..operating_point import logit
    from ..prediction import Predictor
    from .evaluation import call_files

    predictor = Predictor.from_file(Path(model_path), runtime="keras")  # the lab scores on TensorFlow
    validation = model_split(predictor.metadata, Path(data_dir)).validation
    labels = np.array([sample.label for sample in validation], dtype=int)
    calls, inputs = call_files(predictor, [sample.path for sample in validation])  # inputs: (n, size, size, 1)
    infos = [call.info for call in calls]
    logits = {"plain": np.array([call.logit for call in calls])}
    flagged = {"plain": np.array([bool(call.ood) for call in calls])}
    progress(f"plain: {len(calls)} validation films")
    for name, function in DELIBERATE_SHIFTS:
        shifted = np.stack([function(image, int(label)) for image, label in zip(inputs, labels)])  # (n, size, size, 1)
        predictions = predictor.predict_inputs(shifted, infos)
        logits[name] = np.array([p.logit for p in predictions])
        flagged[name] = np.array([bool(p.ood) for p in predictions])
        progress(f"{name}: scored")
    metadata = predictor.metadata
    return ValidationScores(
        model_sha256=metadata.model_sha256,
        labels=labels,
        logits=logits,
        flagged=flagged,
        threshold_logit=logit(metadata.threshold) * float(metadata.temperature),
        temperature=float(metadata.temperature),
    )


# --- windows drawn from the validation scores ------------------------------------------------

FIRST = "first_window"
MIN_SPECIFICITY_CHANGE = 0.05


@dataclass(frozen=True)
class Simulation:
    """Which windows are drawn.

    Attributes:
        windows: window sizes (films).
        baselines: ``FIRST`` (the trail's first window, of the window's size) or a label-free
            profile's sample size (the monitor then sees only its 101 percentiles).
        null_draws: draws per (window, baseline) without a shift.
        shift_draws: draws per (window, baseline, shift).
        prevalences: prevalences of the unshifted windows of the prevalence-change draws.
        seed: seeds every draw.
    """

    windows: tuple[int, ...] = (50, 100, 200)
    baselines: tuple = (FIRST, 250, 500)
    null_draws: int = 5000
    shift_draws: int = 1000
    prevalences: tuple[float, ...] = (0.5, 0.9)
    seed: int = 0


def qualifying_shifts(scores: ValidationScores, minimum: float = MIN_SPECIFICITY_CHANGE) -> dict[str, float]:
    """Each deliberate shift whose validation specificity at the shipped threshold differs from
    the plain one by ``minimum`` or more: {name: change in specificity}."""
    normal = scores.labels == 0
    plain = float(np.mean(scores.logits["plain"][normal] < scores.threshold_logit))
    changes = {
        name: float(np.mean(values[normal] < scores.threshold_logit)) - plain
        for name, values in scores.logits.items()
        if name != "plain"
    }
    return {name: change for name, change in changes.items() if abs(change) >= minimum - 1e-12}


def _baseline(monitor, logits: np.ndarray, flagged: np.ndarray, kind, reference):
    """The baseline the monitor would build: a first window, or a profile's sample as its 101 percentiles."""
    if kind == FIRST:
        return monitor.Baseline.of(monitor.FIRST_WINDOW, logits, int(flagged.sum()), reference, "first window")
    quantiles = np.percentile(logits, np.linspace(0.0, 100.0, 101))
    return monitor.Baseline.from_quantiles(quantiles, logits.size, float(flagged.mean()), reference, "site sample")


def _split(rng: np.random.Generator, n_pool: int, n_baseline: int) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(n_pool)
    return order[:n_baseline], order[n_baseline:]


def draw_statistics(
    scores: ValidationScores,
    reference,
    window: int,
    baseline_kind,
    draws: int,
    seed: int,
    shift: str = "plain",
    prevalence: float | None = None,
) -> dict[str, np.ndarray]:
    """The monitor's statistics on ``draws`` seeded (baseline, window) pairs, disjoint films each.

    The baseline is drawn from the plain validation films; the window from the others, under
    ``shift``, at the pool's own mix (a random draw) or, with ``prevalence``, with exactly that share
    of pneumonia films.

    Returns:
        {"shift": (draws,) KS distances divided by sqrt((n + m) / (n m)), so that they compare with
        the rule's constant; "films": (draws,) ``films_moved``; "flag_p": (draws,) one-sided p-values; "prevalence":
        (draws,) the window's EM estimate; "true_prevalence": (draws,);
        "judged_alert": (draws,) ``monitor.judge``'s alert at the committed rule}.
    """
    from .. import monitor

    rng = np.random.default_rng(seed)
    n_baseline = window if baseline_kind == FIRST else int(baseline_kind)
    plain, plain_flags = scores.logits["plain"], scores.flagged["plain"]
    shifted, shifted_flags = scores.logits[shift], scores.flagged[shift]
    out = {key: np.empty(draws) for key in ("shift", "films", "flag_p", "prevalence", "true_prevalence")}
    out["judged_alert"] = np.zeros(draws, dtype=bool)  # the monitor's own verdict at the committed rule
    rule = monitor.MonitorRule(window=window)
    for draw in range(draws):
        base, rest = _split(rng, plain.size, n_baseline)
        if prevalence is None:
            chosen = rest[:window]
        else:
            sick = rest[scores.labels[rest] == 1]
            well = rest[scores.labels[rest] == 0]
            k = int(round(prevalence * window))
            chosen = np.concatenate([sick[:k], well[: window - k]])
        baseline = _baseline(monitor, plain[base], plain_flags[base], baseline_kind, reference)
        verdict = monitor.judge(shifted[chosen], int(shifted_flags[chosen].sum()), baseline, reference, rule)
        scale = math.sqrt((window + baseline.n) / (window * baseline.n))
        out["shift"][draw] = verdict.shift / scale
        out["films"][draw] = verdict.films_shift
        out["flag_p"][draw] = verdict.flag_p
        out["prevalence"][draw] = verdict.estimated_prevalence
        out["true_prevalence"][draw] = scores.labels[chosen].mean()
        out["judged_alert"][draw] = verdict.alert
    return out


def alerts(statistics: dict[str, np.ndarray], rule) -> tuple[np.ndarray, np.ndarray]:
    """(alert, films) per draw, by the rule (``monitor.judge``): films when their move or the gate says so."""
    films = (statistics["films"] > rule.films_constant) | (statistics["flag_p"] < rule.flag_alpha)
    return films | (statistics["shift"] > rule.shift_constant), films


# --- fixing the rule, then judging it ------------------------------------------------------------

FLAG_ALPHA = 0.005  # fixed before any draw: a one-sided Fisher test at 0.5 %
NULL_QUANTILE = 0.9975  # each constant: the highest over the configurations of this quantile of its null draws
CALIBRATION_SEED, MEASUREMENT_SEED = 1, 2
REPORT_NAME = "monitor_rule"


def _configurations(simulation: Simulation) -> list[tuple[int, object]]:
    return [(window, baseline) for window in simulation.windows for baseline in simulation.baselines]


def _round_up(value: float, step: float = 0.05) -> float:
    return round(math.ceil(value / step - 1e-9) * step, 2)


def calibrate(scores: ValidationScores, reference, simulation: Simulation = Simulation(seed=CALIBRATION_SEED)) -> dict:
    """The rule's constants from draws without a shift (docs/monitor_rule.md, "How the constants were fixed").

    Returns:
        {"shift_constant", "films_constant", "flag_alpha", "quantiles": per configuration}.
    """
    per = {}
    for index, (window, baseline) in enumerate(_configurations(simulation)):
        stats = draw_statistics(scores, reference, window, baseline, simulation.null_draws, simulation.seed * 1000 + index)
        per[f"window {window}, baseline {baseline}"] = {
            "shift": float(np.quantile(stats["shift"], NULL_QUANTILE)),
            "films": float(np.quantile(stats["films"], NULL_QUANTILE)),
        }
    return {
        "shift_constant": _round_up(max(row["shift"] for row in per.values())),
        "films_constant": _round_up(max(row["films"] for row in per.values())),
        "flag_alpha": FLAG_ALPHA,
        "null_quantile": NULL_QUANTILE,
        "draws_per_configuration": simulation.null_draws,
        "quantiles": per,
    }


def _rate(hits: int, n: int) -> dict:
    from ..site import wilson_interval

    low, high = wilson_interval(hits, n)
    return {"hits": int(hits), "n": int(n), "rate": hits / n, "low": low, "high": high}


def measure(scores: ValidationScores, reference, rule, simulation: Simulation = Simulation(seed=MEASUREMENT_SEED, null_draws=10000)) -> dict:
    """The committed rule judged on fresh validation draws: false alarms without a shift, detection
    in the first full window of each qualifying shift, and which cause each alert names."""
    from .. import monitor

    qualifying = qualifying_shifts(scores)
    configurations = _configurations(simulation)
    false_alarms, detection, prevalence_rows = {}, {}, {}
    for index, (window, baseline) in enumerate(configurations):
        key = f"window {window}, baseline {baseline}"
        seed = simulation.seed * 1000 + index
        alert, _ = alerts(draw_statistics(scores, reference, window, baseline, simulation.null_draws, seed), rule)
        false_alarms[key] = _rate(int(alert.sum()), alert.size)
        detection[key] = {}
        for number, name in enumerate(qualifying):
            stats = draw_statistics(scores, reference, window, baseline, simulation.shift_draws, seed * 100 + number + 1, shift=name)
            alert, films = alerts(stats, rule)
            detection[key][name] = _rate(int(alert.sum()), alert.size) | {"named_films": int((alert & films).sum())}
        if window == monitor.DEFAULT_WINDOW:
            prevalence_rows[key] = {}
            for number, share in enumerate(simulation.prevalences):
                stats = draw_statistics(scores, reference, window, baseline, simulation.shift_draws, seed * 100 + 50 + number, prevalence=share)
                alert, films = alerts(stats, rule)
                prevalence_rows[key][f"{share:g}"] = _rate(int(alert.sum()), alert.size) | {
                    "named_films": int((alert & films).sum()),
                    "named_prevalence": int((alert & ~films).sum()),
                    "median_estimate": float(np.median(stats["prevalence"])),
                }
    detected = {
        key: {name: row["rate"] >= 0.9 for name, row in rows.items()} for key, rows in detection.items()
    }
    return {
        "false_alarms": false_alarms,
        "qualifying_shifts": qualifying,
        "detection": detection,
        "shifts_detected_90": {key: f"{sum(rows.values())}/{len(rows)}" for key, rows in detected.items()},
        "prevalence_change": prevalence_rows,
        "meets": {
            key: {
                "false_alarms_at_most_1_in_100": false_alarms[key]["rate"] <= 0.01,
                "each_qualifying_shift_detected_90": all(detected[key].values()),
                "share_of_shifts_detected_90": sum(detected[key].values()) / max(1, len(detected[key])),
            }
            for key in detection
        },
        "draws": {"null": simulation.null_draws, "per_shift": simulation.shift_draws, "seed": simulation.seed},
    }


def report_markdown(report: dict) -> str:
    """The report as a page: the rule, false alarms, detection, the cause named."""
    rule = report["rule"]
    lines = [
        "# The drift monitor's alert rule on validation draws",
        "",
        f"Model `{report['model_sha256'][:12]}`; validation split only ({report['validation_films']} films); "
        f"rule in `docs/monitor_rule.md`. Written by `python -m pneumo_model.lab.monitor_rules` (numbers computed, "
        "not typed).",
        "",
        f"Constants (fixed on calibration draws, seed {CALIBRATION_SEED}): shift constant {rule['shift_constant']}, "
        f"films constant {rule['films_constant']}, flag alpha {rule['flag_alpha']}.",
        "",
        "## Deliberate shifts: change of validation specificity at the shipped threshold",
        "",
        "| shift | Δ specificity | share flagged | qualifies (≥ 5 points) |",
        "|---|---|---|---|",
    ]
    for name, row in report["shifts"].items():
        lines.append(f"| {name} | {row['specificity_change']:+.3f} | {row['share_flagged']:.3f} | {'yes' if row['qualifies'] else ''} |")
    measured = report["measured"]
    lines += ["", f"## False alarms without a shift ({measured['draws']['null']} draws each, seed {measured['draws']['seed']})", "",
              "| configuration | alerts | rate | 95 % interval |", "|---|---|---|---|"]
    for key, row in measured["false_alarms"].items():
        lines.append(f"| {key} | {row['hits']}/{row['n']} | {row['rate']:.4f} | {row['low']:.4f}-{row['high']:.4f} |")
    names = list(measured["qualifying_shifts"])
    lines += ["", f"## Detection in the first full window ({measured['draws']['per_shift']} draws per shift)", "",
              "| configuration | " + " | ".join(names) + " | shifts at ≥ 90 % |", "|---|" + "---|" * (len(names) + 1)]
    for key, rows in measured["detection"].items():
        cells = [f"{rows[name]['rate']:.3f}" for name in names]
        lines.append(f"| {key} | " + " | ".join(cells) + f" | {measured['shifts_detected_90'][key]} |")
    lines += ["", "Share of the detected shifts the monitor named a change of the films:", "",
              "| configuration | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, rows in measured["detection"].items():
        cells = [f"{rows[name]['named_films'] / max(1, rows[name]['hits']):.3f}" for name in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += ["", "## A change of prevalence alone (plain films, window of 100)", "",
              "| configuration | window prevalence | alerts | named prevalence | named films | median estimate |", "|---|---|---|---|---|---|"]
    for key, rows in measured["prevalence_change"].items():
        for share, row in rows.items():
            lines.append(f"| {key} | {share} | {row['rate']:.3f} | {row['named_prevalence']} | {row['named_films']} | {row['median_estimate']:.3f} |")
    lines += ["", "## The requirement", "",
              "| configuration | false alarms ≤ 1 in 100 | every qualifying shift detected in ≥ 90 % | share of shifts detected in ≥ 90 % |", "|---|---|---|---|"]
    for key, row in measured["meets"].items():
        lines.append(f"| {key} | {'yes' if row['false_alarms_at_most_1_in_100'] else 'NO'} | "
                     f"{'yes' if row['each_qualifying_shift_detected_90'] else 'NO'} | {row['share_of_shifts_detected_90']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m pneumo_model.lab.monitor_rules [--calibrate] [--scores NPZ] [--reports DIR]``.

    ``--calibrate`` writes ``reports/monitor_rule_calibration.json``: the constants the calibration
    draws give (then written into ``MonitorRule`` and docs/monitor_rule.md and committed); without it
    the committed rule is judged on fresh draws and ``reports/monitor_rule.{json,md}`` written.
    """
    import argparse
    import json

    from ..artifacts import DEFAULT_MODEL_PATH, read_metadata
    from ..data import resolve_data_dir
    from ..monitor import MonitorRule, Reference
    from .evaluation import DEFAULT_REPORTS_DIR

    parser = argparse.ArgumentParser(prog="python -m pneumo_model.lab.monitor_rules")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--data", default=None)
    parser.add_argument("--scores", type=Path, default=None, help="cache of the validation scores (.npz); made when missing")
    parser.add_argument("--reports", type=Path, default=DEFAULT_REPORTS_DIR)
    parser.add_argument("--calibrate", action="store_true")
    args = parser.parse_args(argv)
    metadata = read_metadata(args.model)
    scores = None
    if args.scores is not None and args.scores.is_file():
        scores = ValidationScores.load(args.scores)
        if scores.model_sha256 != metadata.model_sha256:
            scores = None
    if scores is None:
        scores = score_validation(args.model, resolve_data_dir(args.data), print)
        if args.scores is not None:
            scores.save(args.scores)
    reference = Reference.from_metadata(metadata)
    if args.calibrate:
        calibration = {"model_sha256": metadata.model_sha256, "validation_films": int(scores.labels.size)} | calibrate(scores, reference)
        args.reports.mkdir(parents=True, exist_ok=True)
        (args.reports / f"{REPORT_NAME}_calibration.json").write_text(json.dumps(calibration, indent=2) + "\n")
        print(json.dumps(calibration, indent=2))
        return 0
    rule = MonitorRule()
    normal = scores.labels == 0
    plain = float(np.mean(scores.logits["plain"][normal] < scores.threshold_logit))
    qualifying = qualifying_shifts(scores)
    report = {
        "model_sha256": metadata.model_sha256,
        "validation_films": int(scores.labels.size),
        "rule": {"shift_constant": rule.shift_constant, "films_constant": rule.films_constant, "flag_alpha": rule.flag_alpha,
                 "document": "docs/monitor_rule.md"},
        "shifts": {
            name: {
                "specificity_change": float(np.mean(values[normal] < scores.threshold_logit)) - plain,
                "share_flagged": float(scores.flagged[name].mean()),
                "qualifies": name in qualifying,
            }
            for name, values in scores.logits.items()
        },
        "measured": measure(scores, reference, rule),
    }
    args.reports.mkdir(parents=True, exist_ok=True)
    (args.reports / f"{REPORT_NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.reports / f"{REPORT_NAME}.md").write_text(report_markdown(report))
    print(report_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
