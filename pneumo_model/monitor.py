"""The drift monitor: does this site's stream of films still look like its baseline?

The audit trail's distinct films, in recording order, are cut into windows of ``window`` films
(a last, partial window is reported as such). Each window is compared with a baseline: the
active label-free site profile's own sample (its 101 logit percentiles), or else the trail's
first window. Every new site differs from validation, so validation itself is never the
baseline; it only supplies the reference that reads a prevalence out of unlabelled scores
(``Reference``). Per window:

- ``shift``: the two-sample Kolmogorov-Smirnov distance between the window's raw logits and the
  baseline's, and ``shift_limit``, the distance the rule allows for these two sample sizes;
- ``estimated_prevalence`` with a 95 % bootstrap interval: EM prior adjustment (Saerens,
  Latinne and Decaestecker, Neural Computation 2002) of the reference's calibrated posteriors;
- ``films_shift``: how far the normal-looking films and the pneumonia-looking films each moved
  (``location_shift``: Mann-Whitney rank-test z on either side of the logit where a film is as
  likely sick as well): a change in the share of sick children changes how many films fall on
  each side, not where they lie;
- the share the out-of-distribution gate flagged, tested one-sided against the baseline's.

The alert rule (``MonitorRule``; its constants fixed on validation draws and written in
docs/monitor_rule.md before it was judged): "the films changed" when ``films_shift`` exceeds its
limit or the gate flags significantly more films; else "the share of sick children changed" when
the plain shift exceeds its limit while the films stayed where they were. Numbers only here:
reading the trail is ``trail_films``, the command is ``cli``'s ``monitor``, the page is
``pages/monitoring.py``.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import hypergeom, rankdata

from .errors import PneumoError

RULE_DOCUMENT = "docs/monitor_rule.md"
DEFAULT_WINDOW = 100
MIN_WINDOW = 20
FIRST_WINDOW, SITE_SAMPLE = "first_window", "site_sample"
FILMS, PREVALENCE = "films", "prevalence"
# What an administrator should do about each cause, in the order to try.
ACTIONS = {
    FILMS: (
        "Check the scanner's processing: a software update, a new detector, a changed look-up table, "
        "cropping or compression.",
        "Once the change is known and intended, align again (`site align` on films from after it).",
        "Calibrate with labels (`site fit` on about 200 labelled local films) for the firmer evidence.",
    ),
    PREVALENCE: (
        "Check whether more (or fewer) sick children are being imaged: a season, an outbreak, a new referral path.",
        "A label-free profile assumed the old share: align again on recent films to re-estimate it.",
        "Calibrate with labels (`site fit`) if it lasts.",
    ),
}


class MonitorError(PneumoError):
    """The monitor cannot run: no trail, an unreadable trail, or an unusable baseline."""


@dataclass(frozen=True)
class MonitorRule:
    """The alert rule (docs/monitor_rule.md). Its constants were fixed on validation draws by
    ``lab.monitor_rules`` before the rule was judged; change them only by that procedure.

    Attributes:
        window: films per window.
        shift_constant: alert when the KS distance exceeds ``shift_constant * sqrt((n + m) / (n m))``
            for a window of ``n`` and a baseline of ``m`` films.
        films_constant: the films changed when ``films_moved`` of the window against the baseline
            exceeds this (a z).
        flag_alpha: alert when the one-sided Fisher test of more gate-flagged films than in the
            baseline gives a p-value below this.
        bootstrap: resamples for the prevalence interval.
        seed: seeds the bootstrap, so the same trail always gives the same report.
    """

    window: int = DEFAULT_WINDOW
    shift_constant: float = 1.9
    films_constant: float = 3.4
    flag_alpha: float = 0.005
    bootstrap: int = 200
    seed: int = 0

    def __post_init__(self):
        if int(self.window) != self.window or self.window < MIN_WINDOW:
            raise MonitorError(f"A window holds at least {MIN_WINDOW} films; got {self.window}.")

    def limit(self, n: int, m: int, constant: float | None = None) -> float:
        """The largest KS distance allowed between ``n`` and ``m`` films."""
        return (self.shift_constant if constant is None else constant) * math.sqrt((n + m) / (n * m))


@dataclass(frozen=True)
class Reference:
    """What reads a prevalence out of unlabelled raw logits: the validation calibration
    (``posterior = sigmoid(logit / temperature)``, fitted on validation) and the validation
    prevalence it was fitted at.

    ``from_metadata`` reads both from the model's metadata; a reference side file of validation
    logits may replace it (the one place the monitor depends on the reference).
    """

    temperature: float
    prevalence: float

    @classmethod
    def from_metadata(cls, metadata) -> "Reference":
        """The shipped model's reference (``artifacts.ModelMetadata``: temperature and the
        validation confusion counts)."""
        confusion = metadata.validation["confusion"]
        positives = confusion["tp"] + confusion["fn"]
        total = positives + confusion["tn"] + confusion["fp"]
        return cls(float(metadata.temperature), positives / total)

    def posteriors(self, logits: np.ndarray) -> np.ndarray:
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


def em_prevalence(logits: np.ndarray, reference: Reference, iterations: int = 500, tolerance: float = 1e-7) -> tuple[float, np.ndarray]:
    """Saerens et al.'s EM: the prevalence at which the reference's posteriors, adjusted to it,
    average to it.

    Args:
        logits: (n,) or (draws, n) raw logits.

    Returns:
        (prevalence, adjusted posteriors): a float (or (draws,) array) and an array of the logits' shape.
    """
    p = reference.posteriors(logits)
    prior = reference.prevalence
    estimate = np.full(p.shape[:-1], prior)
    for _ in range(iterations):
        up, down = (estimate / prior)[..., None] * p, ((1 - estimate) / (1 - prior))[..., None] * (1 - p)
        adjusted = up / (up + down)
        new = adjusted.mean(axis=-1)
        done = np.max(np.abs(new - estimate)) < tolerance
        estimate = new
        if done:
            break
    return (float(estimate) if estimate.ndim == 0 else estimate), adjusted


def prevalence_interval(logits: np.ndarray, reference: Reference, resamples: int, seed: int) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles of the EM estimate over bootstrap resamples of the window."""
    logits = np.asarray(logits, dtype=np.float64)
    rng = np.random.default_rng(seed)
    draws = logits[rng.integers(0, logits.size, size=(resamples, logits.size))]  # (resamples, n)
    estimates, _ = em_prevalence(draws, reference)
    low, high = np.percentile(estimates, [2.5, 97.5])
    return float(low), float(high)


def ks_distance(window: np.ndarray, baseline: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The largest gap between the window's empirical CDF and the baseline's (weighted, when
    ``weights`` are given, e.g. to another prevalence)."""
    window = np.sort(np.asarray(window, dtype=np.float64))
    order = np.argsort(baseline, kind="stable")
    baseline = np.asarray(baseline, dtype=np.float64)[order]
    weights = np.ones(baseline.size) if weights is None else np.asarray(weights, dtype=np.float64)[order]
    cumulative = np.concatenate([[0.0], np.cumsum(weights) / weights.sum()])
    points = np.concatenate([window, baseline])
    window_cdf = np.searchsorted(window, points, side="right") / window.size
    baseline_cdf = cumulative[np.searchsorted(baseline, points, side="right")]
    return float(np.max(np.abs(window_cdf - baseline_cdf)))


def split_logit(reference: Reference, prevalence: float) -> float:
    """The raw logit at which a film is as likely sick as well, at ``prevalence``: below it a
    film looks normal, above it pneumonia (the reference's posterior adjusted to the prevalence)."""
    prevalence = min(max(prevalence, 1e-6), 1 - 1e-6)
    log_odds = lambda p: math.log(p / (1 - p))  # noqa: E731
    return reference.temperature * (log_odds(reference.prevalence) - log_odds(prevalence))


def location_shift(window: np.ndarray, baseline: np.ndarray, split: float) -> tuple[float, float]:
    """How far the normal-looking films (below ``split``) and the pneumonia-looking ones (at or
    above) moved between the baseline and the window, each as the z of a Mann-Whitney rank test
    (ranks: a few extreme films cannot make a move on their own).

    A change in the share of sick children changes how many films fall on each side, not where
    they lie; a change of the films moves them. A side with fewer than 2 films in either gives 0.

    Returns:
        (z of the normal-looking side, z of the pneumonia-looking side); positive: the window scores higher.
    """
    window, baseline = np.asarray(window, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    z = []
    for side in (lambda x: x < split, lambda x: x >= split):
        a, b = window[side(window)], baseline[side(baseline)]
        if a.size < 2 or b.size < 2:
            z.append(0.0)
            continue
        ranks = rankdata(np.concatenate([a, b]))
        u = ranks[: a.size].sum() - a.size * (a.size + 1) / 2
        spread = math.sqrt(a.size * b.size * (a.size + b.size + 1) / 12)
        z.append(float((u - a.size * b.size / 2) / spread))
    return z[0], z[1]


def films_moved(z_normal: float, z_pneumonia: float) -> float:
    """One number for the films' move: the largest of each side's |z| and their joint |z|
    (both sides moved the same way)."""
    return max(abs(z_normal), abs(z_pneumonia), abs(z_normal + z_pneumonia) / math.sqrt(2))


def more_flagged_p(window_flagged: int, window_n: int, baseline_flagged: int, baseline_n: int) -> float:
    """One-sided Fisher exact p-value that the window's share flagged by the gate exceeds the baseline's."""
    total_flagged = window_flagged + baseline_flagged
    return float(hypergeom.sf(window_flagged - 1, window_n + baseline_n, total_flagged, window_n))


@dataclass(frozen=True)
class Baseline:
    """What every window is compared with.

    Attributes:
        kind: ``SITE_SAMPLE`` (a label-free profile's sample) or ``FIRST_WINDOW``.
        logits: its raw logits, sorted (for a profile's sample: ``n`` values read off its 101 percentiles).
        n_flagged: films the gate flagged (None without a gate).
        prevalence: the EM estimate on it (``em_prevalence``).
        description: one line for the output.
    """

    kind: str
    logits: np.ndarray
    n_flagged: int | None
    prevalence: float
    description: str

    @property
    def n(self) -> int:
        return int(self.logits.size)

    @classmethod
    def of(cls, kind: str, logits, n_flagged: int | None, reference: Reference, description: str) -> "Baseline":
        logits = np.sort(np.asarray(logits, dtype=np.float64))
        prevalence, _ = em_prevalence(logits, reference)
        return cls(kind, logits, n_flagged, prevalence, description)

    @classmethod
    def from_quantiles(cls, quantiles: Sequence[float], n: int, share_flagged: float | None, reference: Reference, description: str) -> "Baseline":
        """A label-free profile's sample from its 0th..100th logit percentiles: ``n`` values at the
        mid-ranks ``(k + 0.5) / n``, read off the percentiles by linear interpolation.

        Raises:
            MonitorError: not 101 increasing finite numbers, or fewer than ``MIN_WINDOW`` films.
        """
        values = np.asarray(quantiles, dtype=np.float64)
        if values.shape != (101,) or not np.all(np.isfinite(values)) or np.any(np.diff(values) < 0):
            raise MonitorError("The site profile's sample must give 101 increasing logit percentiles (0th to 100th).")
        if int(n) < MIN_WINDOW:
            raise MonitorError(f"The site profile's sample has {n} films; a baseline needs at least {MIN_WINDOW}.")
        levels = (np.arange(int(n)) + 0.5) / int(n)
        logits = np.interp(levels, np.linspace(0.0, 1.0, 101), values)
        flagged = None if share_flagged is None else int(round(float(share_flagged) * int(n)))
        return cls.of(SITE_SAMPLE, logits, flagged, reference, description)


def baseline_from_profile(profile: dict, reference: Reference) -> Baseline | None:
    """The baseline a site profile's JSON offers: its ``sample`` (a label-free profile), or None
    (a labelled profile keeps no sample of scores: the trail's first window is the baseline then).

    Raises:
        MonitorError: a ``sample`` that cannot serve.
    """
    sample = profile.get("sample") if isinstance(profile, dict) else None
    if not isinstance(sample, dict):
        return None
    try:
        n = int(sample["n"])
        quantiles = sample["logit_quantiles"]
    except (KeyError, TypeError, ValueError):
        raise MonitorError("The site profile's sample has no film count (n) or no logit_quantiles.") from None
    identity = str(profile.get("id", ""))[:8]
    return Baseline.from_quantiles(
        quantiles,
        n,
        sample.get("share_flagged"),
        reference,
        f"the sample of {n} films of site profile {identity}… (label-free)",
    )


@dataclass(frozen=True)
class Judgement:
    """One window against the baseline (see the module's docstring for each number)."""

    shift: float
    shift_limit: float
    films_shift: float
    films_limit: float
    flag_p: float | None
    estimated_prevalence: float
    alert: bool
    cause: str | None
    reasons: list[str] = field(default_factory=list)


def judge(logits: np.ndarray, n_flagged: int | None, baseline: Baseline, reference: Reference, rule: MonitorRule) -> Judgement:
    """The rule applied to one window of raw logits (``n_flagged`` of them flagged by the gate, None without a gate)."""
    logits = np.asarray(logits, dtype=np.float64)
    n, m = logits.size, baseline.n
    prevalence, _ = em_prevalence(logits, reference)
    shift = ks_distance(logits, baseline.logits)
    z_normal, z_pneumonia = location_shift(logits, baseline.logits, split_logit(reference, baseline.prevalence))
    films = films_moved(z_normal, z_pneumonia)
    shift_limit = rule.limit(n, m)
    flag_p = None
    if n_flagged is not None and baseline.n_flagged is not None:
        flag_p = more_flagged_p(int(n_flagged), n, baseline.n_flagged, m)
    more_flagged = flag_p is not None and flag_p < rule.flag_alpha
    reasons, cause = [], None
    if more_flagged:
        reasons.append(
            f"the out-of-distribution check flagged {n_flagged} of {n} films ({n_flagged / n:.0%}), against "
            f"{baseline.n_flagged / m:.0%} in the baseline (one-sided p = {flag_p:.1g})"
        )
    if films > rule.films_constant:
        moved = [
            f"{words} films' scores went {'up' if z > 0 else 'down'} (z {z:+.1f})"
            for words, z in (("normal-looking", z_normal), ("pneumonia-looking", z_pneumonia))
            if abs(z) > 2
        ]
        reasons.append(
            f"the scores moved where the films lie, not only in their mix ({'; '.join(moved) or 'both sides a little'}; "
            f"films shift {films:.1f}, above the limit {rule.films_constant:.1f})"
        )
    if more_flagged or films > rule.films_constant:
        cause = FILMS
    elif shift > shift_limit:
        cause = PREVALENCE
        reasons.append(
            f"the scores' mix moved (shift {shift:.2f}, above the limit {shift_limit:.2f}) while normal-looking and "
            f"pneumonia-looking films scored as before: the estimated share of sick children went from "
            f"{baseline.prevalence:.0%} to {prevalence:.0%}"
        )
    return Judgement(shift, shift_limit, films, rule.films_constant, flag_p, prevalence, cause is not None, cause, reasons)


# --- windows of the trail's films ------------------------------------------------------------


@dataclass(frozen=True)
class Films:
    """The trail's distinct films for one model, in recording order (parallel arrays).

    Attributes:
        recorded_utc: ISO times.
        logits: raw logits.
        flagged: True / False from the gate, None where there was no gate.
        left_out: records counted but not usable (no logit that can be recovered).
    """

    recorded_utc: list[str]
    logits: np.ndarray
    flagged: list[bool | None]
    left_out: int = 0

    def __len__(self) -> int:
        return len(self.recorded_utc)


def window_bounds(count: int, size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each window of ``size`` films over ``count`` films; the last may be partial."""
    return [(start, min(start + size, count)) for start in range(0, count, size)]


CAUSE_WORDS = {
    FILMS: "The films changed",
    PREVALENCE: "The share of sick children changed",
}


def monitor(films: Films, operating_point, reference: Reference, rule: MonitorRule = MonitorRule(), baseline: Baseline | None = None) -> dict:
    """The monitor's report: each window against the baseline, and the last full window's alert.

    Args:
        films: the trail's distinct films in recording order (``trail_films``).
        operating_point: the ``OperatingPoint`` whose calls the shares count (the active one).
        reference: reads prevalence (``Reference.from_metadata``).
        rule: the alert rule; ``rule.window`` films per window.
        baseline: a site profile's sample (``baseline_from_profile``), or None for the first window.

    Raises:
        MonitorError: without a site sample, fewer films than one full window.
    """
    size = int(rule.window)
    bounds = window_bounds(len(films), size)
    if baseline is None:
        if len(films) < size:
            raise MonitorError(
                f"The trail holds {len(films)} distinct films for this model; the first full window of {size} is the "
                "baseline, so nothing can be compared yet. Wait for more films, or give a smaller --window."
            )
        flags = films.flagged[:size]
        n_flagged = None if any(flag is None for flag in flags) else int(sum(flags))
        baseline = Baseline.of(FIRST_WINDOW, films.logits[:size], n_flagged, reference, f"the trail's first window of {size} films")
    windows = []
    for index, (start, stop) in enumerate(bounds):
        logits = films.logits[start:stop]
        flags = films.flagged[start:stop]
        n_flagged = None if any(flag is None for flag in flags) else int(sum(flags))
        probabilities = operating_point.probabilities(logits)
        row = {
            "index": index,
            "first_utc": films.recorded_utc[start],
            "last_utc": films.recorded_utc[stop - 1],
            "n": stop - start,
            "full": stop - start == size,
            "share_pneumonia": float(np.mean(probabilities >= operating_point.threshold)),
            "share_grey_zone": float(np.mean(operating_point.grey_zone.contains(probabilities))),
            "share_flagged": None if n_flagged is None else n_flagged / (stop - start),
        }
        if baseline.kind == FIRST_WINDOW and index == 0:
            prevalence = baseline.prevalence
            verdict = None
        else:
            verdict = judge(logits, n_flagged, baseline, reference, rule)
            prevalence = verdict.estimated_prevalence
        low, high = prevalence_interval(logits, reference, rule.bootstrap, rule.seed + index)
        row |= {"estimated_prevalence": prevalence, "prevalence_low": low, "prevalence_high": high}
        if verdict is None:
            row |= {"shift": 0.0, "shift_limit": None, "films_shift": 0.0, "flag_p": None, "alert": False,
                    "cause": None, "reasons": ["this window is the baseline"]}
        else:
            reasons = list(verdict.reasons) or ["no change beyond what chance gives"]
            if not row["full"]:
                reasons.append(f"a partial window of {stop - start} films: read it with care, the rule is set for {size}")
            row |= {
                "shift": verdict.shift,
                "shift_limit": verdict.shift_limit,
                "films_shift": verdict.films_shift,
                "flag_p": verdict.flag_p,
                "alert": verdict.alert,
                "cause": verdict.cause,
                "reasons": reasons,
            }
        windows.append(row)
    full = [row for row in windows if row["full"]]
    last = full[-1] if full else None
    return {
        "windows": windows,
        "alert": bool(last["alert"]) if last else False,
        "cause": last["cause"] if last else None,
        "actions": list(ACTIONS[last["cause"]]) if last and last["alert"] else [],
        "baseline": {
            "kind": baseline.kind,
            "n": baseline.n,
            "estimated_prevalence": baseline.prevalence,
            "share_flagged": None if baseline.n_flagged is None else baseline.n_flagged / baseline.n,
            "description": baseline.description,
        },
        "window": size,
        "films": len(films),
        "left_out": films.left_out,
        "rule": RULE_DOCUMENT,
    }


def trail_films(path: str | Path, model_sha256: str, scales: dict | None = None) -> Films:
    """The audit trail's distinct films for one model (``AuditTrail.scored_films``), read without
    ever creating a file.

    Args:
        path: the trail's SQLite file; it must exist.
        scales: ``{operating point id: (scale, offset)}`` whose old records' logits may be recomputed.

    Raises:
        MonitorError: no file at ``path``, or it is not a readable audit trail.
    """
    from .audit import AuditError, AuditTrail

    path = Path(path)
    if not path.is_file():
        raise MonitorError(
            f"There is no audit trail at {path}. Give the file that `batch --audit`, `predict --audit` or the app "
            "writes (the app's is $PNEUMO_AUDIT_DB, else audit/audit.sqlite3); nothing was created."
        )
    try:
        scored = AuditTrail(path).scored_films(model_sha256, scales=scales)
    except (AuditError, sqlite3.Error) as error:
        raise MonitorError(f"The audit trail {path} cannot be read: {error}") from None
    return Films(
        recorded_utc=[film.first_utc for film in scored.films],
        logits=np.array([film.logit for film in scored.films], dtype=np.float64),
        flagged=[film.ood for film in scored.films],
        left_out=scored.left_out,
    )


def summary_lines(report: dict) -> list[str]:
    """The report in words, one line per window, for the command's first lines."""
    lines = [f"baseline: {report['baseline']['description']}; {report['films']} distinct films, windows of {report['window']}"]
    if report["left_out"]:
        lines.append(f"{report['left_out']} old record(s) left out: their raw score cannot be recovered exactly")
    for row in report["windows"]:
        state = "ALERT" if row["alert"] else "ok"
        part = "" if row["full"] else " (partial)"
        lines.append(
            f"window {row['index'] + 1}{part}: {row['first_utc'][:16]} to {row['last_utc'][:16]}, {row['n']} films, "
            f"shift {row['shift']:.2f}, prevalence {row['estimated_prevalence']:.0%} "
            f"[{row['prevalence_low']:.0%}-{row['prevalence_high']:.0%}]: {state}; " + "; ".join(row["reasons"])
        )
    return lines
