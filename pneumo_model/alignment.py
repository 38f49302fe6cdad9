"""Label-free site profiles: the site's score distribution aligned onto validation's.

A new site's films score differently from the validation films the shipped threshold was fixed on
(the ranking transfers far better than the scores do). Without a single label, a few hundred of
the site's own films show how their scores are spread; unsupervised prediction alignment
(Roschewitz et al., Nature Communications 14:6608, 2023) maps that spread onto the reference's
with a monotone, piecewise-linear quantile mapping (which cannot change the ranking) and keeps the
validated threshold. The reference is the shipped model's own validation scores (``Reference``,
``<model>.reference.json`` beside the model, made by ``python -m pneumo_model site reference``).

Alignment assumes the site has the reference's prevalence. Where it may differ, the prevalence is
estimated first, without labels (``estimate_prevalence``: the prior-adjustment likelihood of
Saerens, Latinne and Decaestecker, Neural Computation 2002, with an affine term that absorbs the
acquisition shift, so a shift is not read as more sick children), and the reference is reweighted
to it before the mapping (``quantile_mapping``). The rules and every constant below were fixed on
validation draws (``docs/label_free_rules.md``) before any test-split run.

The numeric part takes logits only; ``score_unlabelled`` turns files into a ``LocalScores``
through the one pipeline; ``align`` refuses a sample that cannot give an honest profile
(``AlignmentRefused``, with every reason) and otherwise returns a ``LabelFreeProfile``, used
exactly like a labelled ``site.SiteProfile`` (``predict --site``, ``batch --site``, ``PNEUMO_SITE``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from .bundle import REFERENCE, read_side_json, reference_path  # noqa: F401 (reference_path re-exported)
from .calibration import GreyZone
from .errors import InvalidImageError, PneumoError, SiteProfileError
from .paths import write_atomically
from .operating_point import LABEL_FREE, OperatingPoint, content_id, piecewise_linear

LABEL_FREE_SCHEMA_VERSION = 1
REFERENCE_SCHEMA_VERSION = 1
RULE = "docs/label_free_rules.md"

# --- the rules (docs/label_free_rules.md), fixed on validation draws --------------------------
MIN_FILMS = 100  # distinct films after exclusions
MAX_SHARE_FLAGGED = 0.15  # of the distinct films, before the gate's flags are excluded
MAX_SHARE_OVER_AGE = 0.10  # of the distinct films with a header age
MAX_AGE_YEARS = 5  # completed years (the trained population: children aged 1-5)
PREVALENCE_BOUNDS = (0.02, 0.98)  # the estimate's search range; an estimate this close to an end is refused
AT_BOUND = 0.01
BOOTSTRAP = 25  # resamples of the local sample for the prevalence interval
MAX_INTERVAL_WIDTH = 0.35  # 5th-95th percentile width of the bootstrap estimates
MAX_THRESHOLD_MOVE = 4.0  # raw logits between the site's and the reference's threshold
SCALE_BOUNDS = (0.5, 2.0)  # the affine term's slope
OFFSET_BOUNDS = (-8.0, 8.0)  # and its offset, in raw logits
KNOT_LEVELS = tuple(float(q) for q in np.linspace(0.02, 0.98, 25))  # the mapping's knots (site quantiles)
GRID_POINTS = 2048
QUANTILE_LEVELS = 101
HELD_SENSITIVITY = 0.95  # site check: a label-free profile held when neither figure is shown below these
HELD_SPECIFICITY = 0.90  # the sample's logit quantiles a profile keeps for the drift monitor


class AlignmentRefused(PneumoError):
    """A local sample that cannot give an honest label-free profile; ``reasons`` lists why."""

    def __init__(self, reasons: Sequence[str], facts: dict | None = None):
        self.reasons = list(reasons)
        self.facts = dict(facts or {})
        super().__init__("The local films cannot be aligned; nothing was written: " + " ".join(self.reasons))


# --- the reference: validation's scores ------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    """The shipped model's validation scores: what its threshold was fixed on.

    Attributes:
        model_sha256: the model that scored them; any other model refuses it.
        logits: (n,) raw logits of the validation films the gate does not flag.
        labels: (n,) 0 normal, 1 pneumonia.
        facts: how it was made (split, counts, command, time).
    """

    model_sha256: str
    logits: np.ndarray
    labels: np.ndarray
    facts: dict = field(default_factory=dict)

    @property
    def prevalence(self) -> float:
        return float(np.mean(self.labels))

    @property
    def sha256(self) -> str:
        """Content hash of the scores and labels (what a profile records it was aligned to)."""
        text = json.dumps({"logits": [float(v) for v in self.logits], "labels": [int(v) for v in self.labels]})
        return hashlib.sha256(text.encode()).hexdigest()

    def to_json(self) -> str:
        return json.dumps(
            {
                "schema_version": REFERENCE_SCHEMA_VERSION,
                "model_sha256": self.model_sha256,
                "logits": [float(v) for v in self.logits],
                "labels": [int(v) for v in self.labels],
                **self.facts,
            },
            indent=1,
        ) + "\n"

    @classmethod
    def load(cls, path: str | Path, model_sha256: str) -> "Reference":
        """Reads the side file and checks it belongs to the model.

        Raises:
            SiteProfileError: missing, unreadable, or made for another model.
        """
        path = Path(path)
        data = read_side_json(
            path, REFERENCE, schemas={REFERENCE_SCHEMA_VERSION}, model_sha256=model_sha256, error=SiteProfileError
        )
        try:
            logits = np.asarray(data["logits"], dtype=np.float64)
            labels = np.asarray(data["labels"], dtype=int)
        except (ValueError, KeyError, TypeError) as error:
            raise SiteProfileError(
                f"The validation reference '{path.name}' is unreadable ({error}). Make it again with `{REFERENCE.command}`."
            ) from None
        if logits.shape != labels.shape or logits.size == 0 or set(np.unique(labels)) != {0, 1}:
            raise SiteProfileError(f"The validation reference '{path.name}' needs logits and labels of both classes.")
        facts = {k: v for k, v in data.items() if k not in ("logits", "labels", "model_sha256", "schema_version")}
        return cls(model_sha256, logits, labels, facts)


# --- the numeric part ------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassDensities:
    """Each reference class's logit density (Gaussian kernels, Silverman's bandwidth) on a grid,
    so that the likelihood of thousands of candidate alignments costs an interpolation each."""

    grid: np.ndarray  # (G,)
    log_density: np.ndarray  # (2, G): normal, pneumonia

    @classmethod
    def of(cls, reference: Reference) -> "ClassDensities":
        logits, labels = reference.logits, reference.labels
        low, high = logits.min() - 15.0, logits.max() + 15.0
        grid = np.linspace(low, high, GRID_POINTS)
        rows = []
        for label in (0, 1):
            values = logits[labels == label]
            spread = min(np.std(values), (np.percentile(values, 75) - np.percentile(values, 25)) / 1.349)
            width = 0.9 * max(spread, 1e-3) * values.size ** (-0.2)  # Silverman's rule of thumb
            density = np.exp(-0.5 * ((grid[:, None] - values[None, :]) / width) ** 2).sum(axis=1)
            density /= values.size * width * math.sqrt(2 * math.pi)
            # A floor (a wide, faint tail) keeps a film far outside the reference from ruling the fit.
            floor = 1e-6 * np.exp(-0.5 * ((grid - values.mean()) / (4 * np.std(values) + 1.0)) ** 2)
            rows.append(np.log(density + floor))
        return cls(grid, np.array(rows))

    def slope(self) -> np.ndarray:
        """(2, G) derivative of each log density along the grid."""
        return np.gradient(self.log_density, self.grid, axis=1)

    def log_likelihood(self, local: np.ndarray, prevalence: float, scale: float, offset: float, slope: np.ndarray | None = None):
        """Mean log-likelihood of the local logits under the reference mixture at ``prevalence``
        after the affine term ``scale * logit + offset`` (with its Jacobian); with ``slope``
        (``self.slope()``) also its gradient in (prevalence, scale, offset)."""
        moved = scale * local + offset
        log0 = np.interp(moved, self.grid, self.log_density[0])
        log1 = np.interp(moved, self.grid, self.log_density[1])
        mixed = np.logaddexp(math.log1p(-prevalence) + log0, math.log(prevalence) + log1)
        value = float(np.mean(mixed) + math.log(scale))
        if slope is None:
            return value
        posterior = np.exp(math.log(prevalence) + log1 - mixed)  # (n,) each film's chance of pneumonia
        d_moved = (1 - posterior) * np.interp(moved, self.grid, slope[0]) + posterior * np.interp(moved, self.grid, slope[1])
        gradient = np.array([
            float(np.mean(posterior / prevalence - (1 - posterior) / (1 - prevalence))),
            float(np.mean(d_moved * local) + 1.0 / scale),
            float(np.mean(d_moved)),
        ])
        return value, gradient


@dataclass(frozen=True)
class PrevalenceFit:
    """The label-free estimate: prevalence, the affine term that made the local scores look like
    the reference's at that prevalence, and the bootstrap interval."""

    prevalence: float
    scale: float
    offset: float
    low: float | None = None
    high: float | None = None


def _fit_once(densities: ClassDensities, local: np.ndarray, starts: Sequence[tuple[float, float, float]], slope: np.ndarray) -> PrevalenceFit:
    def loss(params):
        value, gradient = densities.log_likelihood(local, *params, slope=slope)
        return -value, -gradient

    best = None
    for start in starts:
        result = minimize(
            loss, start, jac=True, method="L-BFGS-B",
            bounds=[PREVALENCE_BOUNDS, SCALE_BOUNDS, OFFSET_BOUNDS],
        )
        if best is None or result.fun < best.fun:
            best = result
    prevalence, scale, offset = (float(v) for v in best.x)
    return PrevalenceFit(prevalence, scale, offset)


def estimate_prevalence(
    reference: Reference, local: np.ndarray, seed: int, bootstrap: int = BOOTSTRAP, densities: ClassDensities | None = None
) -> PrevalenceFit:
    """The local prevalence without labels (rule 2 of ``docs/label_free_rules.md``).

    Maximum likelihood of the local logits under the reference's class densities mixed at the
    unknown prevalence (the likelihood whose EM is Saerens et al.'s prior adjustment), the logits
    first moved by an unknown affine term (slope in ``SCALE_BOUNDS``): a site whose films all score
    higher is a shift of both classes, not more pneumonia, because the two classes' shapes are
    kept. The interval is the 5th-95th percentile of ``bootstrap`` seeded resamples' estimates.

    Args:
        reference: validation's logits and labels.
        local: (n,) raw logits of the site's films.
        seed: seeds the resamples.
    """
    local = np.asarray(local, dtype=np.float64)
    densities = densities or ClassDensities.of(reference)
    slope = densities.slope()
    # Three starts (low, the reference's, high prevalence): the likelihood can have two modes.
    fit = _fit_once(densities, local, [(p, 1.0, 0.0) for p in (0.25, reference.prevalence, 0.85)], slope)
    if bootstrap <= 0:
        return fit
    rng = np.random.default_rng(seed)
    estimates = [
        _fit_once(densities, local[rng.integers(0, local.size, local.size)], [(fit.prevalence, fit.scale, fit.offset)], slope).prevalence
        for _ in range(bootstrap)
    ]
    low, high = (float(v) for v in np.percentile(estimates, [5, 95]))
    return dataclasses.replace(fit, low=low, high=high)


def weighted_quantiles(values: np.ndarray, weights: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Quantiles of a weighted sample (each value's mass centred on its place in the weighted CDF)."""
    order = np.argsort(values)
    values, weights = np.asarray(values, dtype=np.float64)[order], np.asarray(weights, dtype=np.float64)[order]
    cumulative = (np.cumsum(weights) - 0.5 * weights) / weights.sum()
    return np.interp(levels, cumulative, values)


def reference_weights(labels: np.ndarray, prevalence: float) -> np.ndarray:
    """Weights that give the reference ``prevalence`` pneumonia (each class's films equal within it)."""
    labels = np.asarray(labels).astype(int)
    n1, n0 = int(labels.sum()), int((labels == 0).sum())
    return np.where(labels == 1, prevalence / n1, (1.0 - prevalence) / n0)


@dataclass(frozen=True)
class Mapping:
    """A monotone piecewise-linear map from a site's raw logit to the reference's.

    Between knots linear; beyond the end knots, slope 1 (a film beyond the sample's range keeps
    its distance from the last knot), so the map is increasing everywhere and the ranking is kept.
    """

    x: tuple[float, ...]
    y: tuple[float, ...]

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        return piecewise_linear(self.x, self.y, logits)

    def inverse(self, logits: np.ndarray) -> np.ndarray:
        return piecewise_linear(self.y, self.x, logits)

    def to_dict(self) -> dict:
        return {"x": list(self.x), "y": list(self.y)}


def quantile_mapping(reference: Reference, local: np.ndarray, prevalence: float, levels: Sequence[float] = KNOT_LEVELS) -> Mapping:
    """Rule 3: the site's quantiles at ``levels`` onto the reference's, reweighted to ``prevalence``.

    Knots whose site quantiles coincide (tied scores) are merged; the reference's quantiles are
    made strictly increasing by a tiny step so the map can be inverted.
    """
    levels = np.asarray(levels, dtype=np.float64)
    x = np.quantile(np.asarray(local, dtype=np.float64), levels)
    y = weighted_quantiles(reference.logits, reference_weights(reference.labels, prevalence), levels)
    keep = np.concatenate([[True], np.diff(x) > 1e-9])
    x, y = x[keep], y[keep]
    y = np.maximum.accumulate(y + np.arange(y.size) * 1e-9)
    return Mapping(tuple(float(v) for v in x), tuple(float(v) for v in y))


# --- the local sample -------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalScores:
    """Unlabelled local films scored through the pipeline, each image once.

    Attributes:
        logits: (n,) raw logits of the films used (distinct, not flagged, not over age).
        digests: the used films' SHA-256, in the same order.
        model_sha256: the model that scored them.
        files_in: films given.
        unreadable: ``(name, reason)`` of each file that could not be read as an image.
        duplicates: films merged into an earlier one with the same bytes.
        flagged: distinct films the gate flagged (excluded).
        over_age: distinct films whose header gives an age over ``MAX_AGE_YEARS`` completed years (excluded).
        with_age: distinct films whose header gives an age at all.
        left_out: audit-trail records whose logit cannot be recomputed exactly (not counted as films).
    """

    logits: np.ndarray
    digests: tuple[str, ...]
    model_sha256: str
    files_in: int
    unreadable: tuple[tuple[str, str], ...] = ()
    duplicates: int = 0
    flagged: int = 0
    over_age: int = 0
    with_age: int = 0
    left_out: int = 0

    @property
    def distinct(self) -> int:
        return int(self.logits.size) + self.flagged + self.over_age

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the sorted image SHA-256s of the films used (never names or pixels)."""
        return hashlib.sha256("\n".join(sorted(self.digests)).encode()).hexdigest()

    @property
    def seed(self) -> int:
        return int(self.fingerprint[:8], 16)

    def counts(self) -> dict:
        return {
            "files_in": self.files_in,
            "unreadable": len(self.unreadable),
            "duplicates_merged": self.duplicates,
            "distinct": self.distinct,
            "excluded_by_gate": self.flagged,
            "excluded_over_age": self.over_age,
            "with_header_age": self.with_age,
            "left_out_old_records": self.left_out,
            "used": int(self.logits.size),
        }


def over_age(age_years: float | None, max_age_years: int = MAX_AGE_YEARS) -> bool:
    """More than ``max_age_years`` completed years (as the population note reads a header's age)."""
    return age_years is not None and math.floor(age_years) > max_age_years


def score_unlabelled(
    predictor, items: Sequence, progress: Callable[[int, int], None] | None = None
) -> LocalScores:
    """Decodes and scores every file once, through the pipeline and the gate (one image a pass,
    as the app calls a film, so the same bytes give the same logit everywhere).

    Args:
        predictor: a ``prediction.Predictor`` (raw logits are kept; its operating point does not matter).
        items: objects with ``name`` and ``read()`` (``batch.SourceItem``).
        progress: called with (files done, files in all).
    """
    from .pipeline import DecodedImage

    unreadable, seen = [], set()
    logits, digests = [], []
    duplicates = flagged = old = with_age = 0
    for done, item in enumerate(items, start=1):
        try:
            image = DecodedImage.decode(item.read())
        except InvalidImageError as error:
            unreadable.append((item.name, str(error)))
            image = None
        if image is not None:
            if image.digest in seen:
                duplicates += 1
            else:
                seen.add(image.digest)
                age = image.info.age_years
                with_age += age is not None
                if over_age(age):
                    old += 1
                else:
                    (call,) = predictor.calls([image])
                    if call.ood:
                        flagged += 1
                    else:
                        logits.append(call.logit)
                        digests.append(image.digest)
            del image
        if progress is not None:
            progress(done, len(items))
    return LocalScores(
        np.array(logits, dtype=np.float64), tuple(digests), predictor.metadata.model_sha256, len(items),
        tuple(unreadable), duplicates, flagged, old, with_age,
    )


def scores_from_audit(
    path: str | Path, model_sha256: str, scales: dict | None = None, *, last: int | None = None,
    since: str | None = None, until: str | None = None,
) -> LocalScores:
    """The films an audit trail holds for the model (``AuditTrail.scored_films``: each image once,
    uncropped, unmasked), as ``score_unlabelled`` would have scored them.

    Raises:
        AuditError: the trail does not exist (it is never created by reading) or cannot be read.
    """
    from .audit import AuditError, AuditTrail

    path = Path(path)
    if not path.is_file():
        raise AuditError(f"There is no audit trail at '{path}'. Give the trail the app or `batch --audit` writes to.")
    read = AuditTrail(path).scored_films(model_sha256, scales=scales, last=last, since=since, until=until)
    logits, digests = [], []
    flagged = old = with_age = 0
    for film in read.films:
        with_age += film.age_years is not None
        if over_age(film.age_years):
            old += 1
        elif film.ood:
            flagged += 1
        else:
            logits.append(film.logit)
            digests.append(film.image_sha256)
    return LocalScores(
        np.array(logits, dtype=np.float64), tuple(digests), model_sha256, len(read.films),
        flagged=flagged, over_age=old, with_age=with_age, left_out=read.left_out,
    )


def held(stated: dict) -> dict:
    """Whether a label-free profile held on labelled films (``site check``; rule 5): neither its
    sensitivity nor its specificity is shown to fall below what the evaluation promises, i.e. each
    95 % Wilson interval reaches ``HELD_SENSITIVITY`` / ``HELD_SPECIFICITY``.

    Returns:
        ``{"held": bool, "reasons": [sentences]}``.
    """
    reasons, ok = [], True
    for name, floor in (("sensitivity", HELD_SENSITIVITY), ("specificity", HELD_SPECIFICITY)):
        value = stated.get(name)
        if value is None:
            ok = False
            reasons.append(f"No labelled {'pneumonia' if name == 'sensitivity' else 'normal'} films: its {name} cannot be checked.")
        elif value["high"] < floor:
            ok = False
            reasons.append(
                f"Its {name} {value['value']:.3f} (95 % interval {value['low']:.3f}-{value['high']:.3f}) is below {floor:.2f}: "
                "fit a labelled profile with `site fit`."
            )
        else:
            reasons.append(f"Its {name} {value['value']:.3f} ({value['low']:.3f}-{value['high']:.3f}) is consistent with {floor:.2f} or more.")
    return {"held": ok, "reasons": reasons}


# --- the profile -------------------------------------------------------------------------------


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class LabelFreeProfile:
    """A site's label-free operating point for one model, saved as a small JSON file.

    Used exactly like a labelled ``site.SiteProfile`` (``SiteProfile.load`` reads both kinds). The
    probability it gives is the shipped calibration read through the alignment:
    ``sigmoid(calibration.scale * mapping(logit) + calibration.offset)``; ``threshold`` and
    ``grey_zone`` are the shipped ones, on that scale.

    Attributes:
        id: content hash of every other field but ``created_utc``.
        kind: ``"label-free"``.
        model_sha256: the model; any other refuses it.
        reference_sha256: the validation reference it was aligned to (``Reference.sha256``).
        sample: what the drift monitor takes as its baseline: ``n``, ``fingerprint`` (SHA-256 of
            the sorted image SHA-256s), ``logit_quantiles`` (the 0th-100th percentiles of the raw
            logits), ``share_flagged``, ``estimated_prevalence``.
        counts: films given, unreadable, merged, excluded (gate, age), used.
        estimated_prevalence, prevalence_interval: the label-free estimate and its bootstrap 5-95 %.
        mapping: the knots ``x`` (site raw logit) and ``y`` (reference raw logit), and the affine
            term of the prevalence fit.
        calibration: the shipped ``scale`` and ``offset``, applied after the mapping.
        threshold, grey_zone: the shipped ones, in the aligned probability.
        threshold_move: site raw logit of the threshold minus the reference's.
        rule: the rules' document and constants.
    """

    id: str
    kind: str
    model_sha256: str
    reference_sha256: str
    sample: dict
    counts: dict
    estimated_prevalence: float
    prevalence_interval: tuple[float, float]
    mapping: dict
    calibration: dict
    threshold: float
    grey_zone: tuple[float, float]
    threshold_move: float
    rule: dict
    created_utc: str
    schema_version: int = LABEL_FREE_SCHEMA_VERSION

    @property
    def n(self) -> int:
        return int(self.sample["n"])

    @property
    def description(self) -> str:
        return (
            f"label-free site profile {self.id[:8]}… aligned on {self.n} unlabelled local films on "
            f"{self.created_utc[:10]} (provisional until `site check` on labelled films)"
        )

    def operating_point(self) -> OperatingPoint:
        return OperatingPoint(
            id=self.id,
            kind=LABEL_FREE,
            model_sha256=self.model_sha256,
            scale=float(self.calibration["scale"]),
            offset=float(self.calibration["offset"]),
            threshold=float(self.threshold),
            grey_zone=GreyZone(*self.grey_zone),
            description=self.description,
            mapping=(tuple(self.mapping["x"]), tuple(self.mapping["y"])),
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["grey_zone"] = list(self.grey_zone)
        data["prevalence_interval"] = list(self.prevalence_interval)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    @staticmethod
    def content_id(data: dict) -> str:
        return content_id({key: value for key, value in data.items() if key not in ("id", "created_utc")})

    @classmethod
    def from_dict(cls, data: dict, source: str = "the site profile") -> "LabelFreeProfile":
        """Raises SiteProfileError: a newer schema, unknown fields, or changed since it was made."""
        if data.get("schema_version") != LABEL_FREE_SCHEMA_VERSION:
            raise SiteProfileError(
                f"{source} has schema version {data.get('schema_version')}; this version reads label-free profiles of "
                f"{LABEL_FREE_SCHEMA_VERSION}. Align again with `python -m pneumo_model site align`."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) != known:
            raise SiteProfileError(f"{source} has fields {sorted(set(data) ^ known)} that a label-free profile does not.")
        if cls.content_id(data) != data["id"]:
            raise SiteProfileError(
                f"{source} does not match its id {str(data['id'])[:8]}: it was changed after it was made. "
                "Align again with `python -m pneumo_model site align`; never edit a profile by hand."
            )
        values = dict(data)
        values["grey_zone"] = tuple(float(edge) for edge in values["grey_zone"])
        values["prevalence_interval"] = tuple(float(edge) for edge in values["prevalence_interval"])
        return cls(**values)

    def save(self, path: str | Path) -> None:
        write_atomically(Path(path), self.to_json())


def logit_quantiles(logits: np.ndarray) -> list[float]:
    """The 0th, 1st, ..., 100th percentiles of the raw logits (numpy's linear interpolation)."""
    return [float(v) for v in np.percentile(np.asarray(logits, dtype=np.float64), np.arange(QUANTILE_LEVELS))]


def rule_facts() -> dict:
    return {
        "document": RULE,
        "prevalence": (
            "maximum likelihood of the local logits under validation's class densities (Gaussian kernels) mixed at "
            f"the prevalence, after an affine term (slope {SCALE_BOUNDS[0]}-{SCALE_BOUNDS[1]}); interval: 5th-95th "
            f"percentile of {BOOTSTRAP} bootstrap resamples"
        ),
        "mapping": f"quantile mapping, {len(KNOT_LEVELS)} knots at the site's {KNOT_LEVELS[0]:.0%}-{KNOT_LEVELS[-1]:.0%} quantiles, onto validation reweighted to the estimated prevalence; slope 1 beyond",
        "threshold": "the shipped threshold and grey zone, in the aligned probability",
        "refusals": {
            "min_films": MIN_FILMS,
            "max_share_flagged": MAX_SHARE_FLAGGED,
            "max_share_over_age": MAX_SHARE_OVER_AGE,
            "max_age_years": MAX_AGE_YEARS,
            "prevalence_bounds": list(PREVALENCE_BOUNDS),
            "at_bound": AT_BOUND,
            "max_interval_width": MAX_INTERVAL_WIDTH,
            "max_threshold_move": MAX_THRESHOLD_MOVE,
        },
    }


@dataclass(frozen=True)
class Alignment:
    """What ``fit_alignment`` found (numbers only): the prevalence fit, the mapping and the threshold's move."""

    prevalence: PrevalenceFit
    mapping: Mapping
    threshold_move: float


def fit_alignment(reference: Reference, local: np.ndarray, threshold_logit: float, seed: int, bootstrap: int = BOOTSTRAP, densities=None) -> Alignment:
    """Rules 2 and 3 on raw logits: the prevalence (with its interval), then the mapping at it.

    Args:
        threshold_logit: the shipped threshold as a raw reference logit (where ``threshold_move`` is measured).
    """
    local = np.asarray(local, dtype=np.float64)
    prevalence = estimate_prevalence(reference, local, seed, bootstrap, densities)
    mapping = quantile_mapping(reference, local, prevalence.prevalence)
    move = float(mapping.inverse(np.array([threshold_logit]))[0] - threshold_logit)
    return Alignment(prevalence, mapping, move)


def refusal_reasons(scores: LocalScores | None, alignment: Alignment | None, n: int | None = None) -> list[str]:
    """Rule 4: every reason the sample or its alignment cannot be used (empty: usable)."""
    reasons = []
    if scores is not None:
        distinct = scores.distinct
        if distinct and scores.flagged / distinct > MAX_SHARE_FLAGGED:
            reasons.append(
                f"The out-of-distribution gate flags {scores.flagged} of {distinct} distinct films "
                f"({scores.flagged / distinct:.0%}, more than {MAX_SHARE_FLAGGED:.0%}): these films are not like the ones "
                "the model knows; check the scanner's processing before aligning."
            )
        if scores.with_age and scores.over_age / scores.with_age > MAX_SHARE_OVER_AGE:
            reasons.append(
                f"{scores.over_age} of {scores.with_age} films with an age in the header are of children over "
                f"{MAX_AGE_YEARS} years ({scores.over_age / scores.with_age:.0%}, more than {MAX_SHARE_OVER_AGE:.0%}); the model "
                "was trained on children aged 1-5, so this site's population is outside it."
            )
        n = int(scores.logits.size)
    if n is not None and n < MIN_FILMS:
        reasons.append(
            f"Only {n} distinct films remain after exclusions; at least {MIN_FILMS} are needed. Add more of the "
            "site's films (the last few days' are enough)."
        )
    if alignment is not None:
        fit = alignment.prevalence
        low_end, high_end = PREVALENCE_BOUNDS
        if fit.prevalence <= low_end + AT_BOUND or fit.prevalence >= high_end - AT_BOUND:
            reasons.append(
                f"The estimated prevalence {fit.prevalence:.2f} lies at the end of what can be estimated "
                f"({low_end:.2f}-{high_end:.2f}); the films may be almost all of one kind, or unlike validation's."
            )
        if fit.low is not None and fit.high - fit.low > MAX_INTERVAL_WIDTH:
            reasons.append(
                f"The prevalence estimate is unstable: resampling the films moves it from {fit.low:.2f} to {fit.high:.2f} "
                f"(wider than {MAX_INTERVAL_WIDTH:.2f}); more films are needed."
            )
        if abs(alignment.threshold_move) > MAX_THRESHOLD_MOVE:
            reasons.append(
                f"The alignment would move the threshold by {alignment.threshold_move:+.2f} on the log-odds scale "
                f"(at most {MAX_THRESHOLD_MOVE:.1f} allowed): these films score too unlike validation's to be aligned; "
                "fit a labelled profile instead (`site fit`)."
            )
    return reasons


def align(predictor_metadata, reference: Reference, scores: LocalScores, created_utc: str | None = None) -> LabelFreeProfile:
    """The label-free profile of a scored local sample (rules 1-4).

    Args:
        predictor_metadata: the model's ``artifacts.ModelMetadata`` (its temperature, threshold and grey zone).
        reference: the model's validation reference.
        scores: the local films, scored.

    Raises:
        AlignmentRefused: any reason of rule 4 (all listed); ``facts`` holds the counts and, where
            it was reached, the estimate.
        SiteProfileError: the reference or the films were scored by another model.
    """
    if reference.model_sha256 != predictor_metadata.model_sha256 or scores.model_sha256 != predictor_metadata.model_sha256:
        raise SiteProfileError("The local films, the validation reference and the model must be the same model's.")
    point = OperatingPoint.shipped(predictor_metadata)
    facts = {"n": int(scores.logits.size), "counts": scores.counts()}
    reasons = refusal_reasons(scores, None)
    if reasons:
        raise AlignmentRefused(reasons, facts)
    threshold_logit = (math.log(point.threshold) - math.log1p(-point.threshold) - point.offset) / point.scale
    alignment = fit_alignment(reference, scores.logits, threshold_logit, scores.seed)
    fit = alignment.prevalence
    facts.update({"estimated_prevalence": fit.prevalence, "prevalence_interval": [fit.low, fit.high], "threshold_move": alignment.threshold_move})
    reasons = refusal_reasons(None, alignment)
    if reasons:
        raise AlignmentRefused(reasons, facts)
    data = {
        "kind": LABEL_FREE,
        "model_sha256": predictor_metadata.model_sha256,
        "reference_sha256": reference.sha256,
        "sample": {
            "n": int(scores.logits.size),
            "fingerprint": scores.fingerprint,
            "logit_quantiles": logit_quantiles(scores.logits),
            "share_flagged": scores.flagged / scores.distinct if scores.distinct else 0.0,
            "estimated_prevalence": fit.prevalence,
        },
        "counts": scores.counts(),
        "estimated_prevalence": fit.prevalence,
        "prevalence_interval": [fit.low, fit.high],
        "mapping": {**alignment.mapping.to_dict(), "affine": {"scale": fit.scale, "offset": fit.offset}},
        "calibration": {"scale": point.scale, "offset": point.offset, "method": "shipped temperature, after the mapping"},
        "threshold": point.threshold,
        "grey_zone": [point.grey_zone.low, point.grey_zone.high],
        "threshold_move": alignment.threshold_move,
        "rule": rule_facts(),
        "schema_version": LABEL_FREE_SCHEMA_VERSION,
    }
    data["id"] = LabelFreeProfile.content_id(data)
    data["created_utc"] = created_utc or _utc_now()
    return LabelFreeProfile.from_dict(data)
