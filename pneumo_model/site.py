"""Site calibration: an operating point fitted on a hospital's own labelled films.

The shipped threshold was fixed on validation data from one paediatric hospital; the model's
ranking transfers to other populations far better than its threshold does. A site profile keeps
the model and its weights and replaces the operating point (``operating_point.OperatingPoint``):
a recalibration of the probability, a threshold for a target sensitivity and a two-sided grey
zone, all fitted on a labelled local sample by the rules of ``docs/site_calibration_rules.md``
(written down before any run judged them):

1. temperature or Platt scaling, chosen by stratified 5-fold cross-validated log loss;
2. the split-conformal order statistic of the local pneumonia images' calibrated logits, so that
   the expected sensitivity on new images is at least the target;
3. Chow's reject rule at cost ``CHOW_COST`` on the local calibration, each edge at least
   ``MIN_EDGE_LOGIT`` from the threshold on the calibrated logit scale.

Every figure a profile states about itself is computed out of fold (``out_of_fold``), with Wilson
intervals. The numeric part (``fit_operating_point``, ``out_of_fold``, ``figures``) takes logits
and labels only; ``read_labels_csv``, ``read_labelled_folder``, ``read_labelled_zip`` and
``score_sample`` turn files into a ``ScoredSample`` through the one pipeline, and refuse a sample
that cannot give an honest profile (``SiteInputError``, with every problem listed).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import numpy as np

from .calibration import GreyZone, fit_temperature
from .errors import InvalidImageError, SiteInputError, SiteProfileError
from .operating_point import LABEL_FREE, SITE, OperatingPoint, content_id, piecewise_linear
from .paths import write_atomically

SITE_PROFILE_SCHEMA_VERSION = 1
LABELLED = "labelled"  # a profile's ``kind``; label-free ones (``alignment``) are "label-free"
LABELS = ("normal", "pneumonia")
DEFAULT_TARGET_SENSITIVITY = 0.97
FOLDS = 5
MIN_PER_CLASS = 20
WARN_PER_CLASS = 50
CHOW_COST = 0.1
MIN_EDGE_LOGIT = 0.25
PLATT_MARGIN_NATS = 0.001  # Platt must beat temperature's CV log loss by more than this
RULE = "docs/site_calibration_rules.md"
# A labelled zip is read member by member; this bounds what its members may add up to once inflated.
MAX_ZIP_UNCOMPRESSED_BYTES = 4 * 2**30


# --- the numeric part: logits and labels in, an operating point out -------------------------


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, dtype=np.float64), -500, 500)))


def _log_loss(z: np.ndarray, labels: np.ndarray) -> float:
    """Mean binary cross-entropy of ``sigmoid(z)`` against 0 / 1 labels, computed stably."""
    return float(np.mean(np.logaddexp(0.0, -z) * labels + np.logaddexp(0.0, z) * (1 - labels)))


def fold_ids(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold of each image: each class shuffled (seeded) and dealt round the folds.

    Returns:
        (n,) int array in [0, folds).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    ids = np.empty(labels.size, dtype=int)
    start = 0
    for label in (0, 1):
        members = rng.permutation(np.flatnonzero(labels == label))
        # Continue the deal where the other class stopped, so fold sizes differ by at most one.
        ids[members] = (start + np.arange(members.size)) % folds
        start = (start + members.size) % folds
    return ids


@dataclass(frozen=True)
class Calibration:
    """``probability = sigmoid(scale * logit + offset)``.

    Attributes:
        method: ``"temperature"`` (offset 0) or ``"platt"``.
        cv_log_loss: the cross-validated log loss of each candidate (nats per image) that chose it.
    """

    method: str
    scale: float
    offset: float
    cv_log_loss: dict = field(default_factory=dict)

    def logits(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated logits ``scale * raw + offset``."""
        return self.scale * np.asarray(raw, dtype=np.float64) + self.offset


def _fit_temperature(raw: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return 1.0 / fit_temperature(raw, labels), 0.0


def _fit_platt(raw: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """Maximum-likelihood ``(a, b)`` of ``sigmoid(a * raw + b)``, started from the temperature fit."""
    start = np.array(_fit_temperature(raw, labels))

    def loss_and_gradient(params):
        a, b = params
        z = a * raw + b
        residual = _sigmoid(z) - labels  # d loss / d z
        return _log_loss(z, labels), np.array([np.mean(residual * raw), np.mean(residual)])

    from scipy.optimize import minimize  # here: SciPy's optimisers cost the app's start a tenth of a second or more

    result = minimize(loss_and_gradient, start, jac=True, method="L-BFGS-B")
    a, b = (float(value) for value in result.x)
    return a, b


_FITTERS = {"temperature": _fit_temperature, "platt": _fit_platt}


def platt_targets(labels: np.ndarray) -> np.ndarray:
    """Platt's (1999) targets: ``(n+ + 1) / (n+ + 2)`` for pneumonia and ``1 / (n- + 2)`` for normal.

    Fitting on 0 / 1 labels has no finite optimum when the sample's classes do not overlap (the
    scale grows without bound, every probability rounds to 0 or 1, and the threshold with it);
    these targets, the prior of Platt's own method, keep the fit finite and change little otherwise.
    """
    labels = np.asarray(labels).astype(bool)
    positives, negatives = int(labels.sum()), int((~labels).sum())
    return np.where(labels, (positives + 1) / (positives + 2), 1 / (negatives + 2))


def fit_calibration(raw: np.ndarray, labels: np.ndarray, seed: int = 0, folds: int = FOLDS) -> Calibration:
    """Temperature or Platt scaling of raw logits, chosen by stratified ``folds``-fold CV log loss
    (rule 1 of ``docs/site_calibration_rules.md``), then refitted on all the images. Both are fitted
    on Platt's targets (``platt_targets``); the CV log loss is scored on the labels themselves."""
    raw = np.asarray(raw, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    ids = fold_ids(labels, folds, seed)
    losses = {}
    for method, fit in _FITTERS.items():
        total = 0.0
        for fold in range(folds):
            held = ids == fold
            scale, offset = fit(raw[~held], platt_targets(labels[~held]))
            total += _log_loss(scale * raw[held] + offset, labels[held]) * held.sum()
        losses[method] = total / raw.size
    method = "platt" if losses["platt"] < losses["temperature"] - PLATT_MARGIN_NATS else "temperature"
    scale, offset = _FITTERS[method](raw, platt_targets(labels))
    return Calibration(method, scale, offset, {name: round(float(value), 6) for name, value in losses.items()})


def conformal_rank(n_positive: int, target: float) -> int:
    """``k = floor((n + 1) * (1 - target))``, at least 1: the threshold is the k-th lowest positive."""
    return max(1, int(math.floor((n_positive + 1) * (1.0 - target) + 1e-9)))


def grey_zone_around(threshold_logit: float, cost: float = CHOW_COST, min_edge: float = MIN_EDGE_LOGIT) -> GreyZone:
    """Chow's reject band ``[min(c, t), max(1 - c, t))`` widened so that each edge lies at least
    ``min_edge`` from the threshold on the calibrated logit scale (rule 3)."""
    threshold = float(_sigmoid(threshold_logit))
    low = min(cost, threshold, float(_sigmoid(threshold_logit - min_edge)))
    high = max(1.0 - cost, threshold, float(_sigmoid(threshold_logit + min_edge)))
    return GreyZone(low, high)


def conformal_threshold(raw: np.ndarray, labels: np.ndarray, calibration: Calibration, target: float) -> tuple[float, GreyZone, int]:
    """Rules 2 and 3 on a given calibration: the threshold for ``target``, its grey zone and its rank ``k``.

    The calibration does not depend on the target, so for one sample every target's threshold
    comes from here: a fitted profile's and each row of the page's table alike (they agree exactly).

    Returns:
        (threshold probability, grey zone, k); the threshold is the k-th lowest pneumonia image's own
        probability, computed as every call computes it, so that image is called pneumonia and the
        k - 1 below it normal.
    """
    raw = np.asarray(raw, dtype=np.float64)
    positives = np.sort(raw[np.asarray(labels).astype(int) == 1])
    k = conformal_rank(positives.size, target)
    at_rank = calibration.logits(positives[min(k, positives.size) - 1 : min(k, positives.size)])  # (1,)
    return float(_sigmoid(at_rank)[0]), grey_zone_around(float(at_rank[0])), k


@dataclass(frozen=True)
class SiteFit:
    """The fitted parts of a site operating point (numbers only)."""

    calibration: Calibration
    threshold: float
    grey_zone: GreyZone
    conformal_rank: int

    def probabilities(self, raw: np.ndarray) -> np.ndarray:
        return _sigmoid(self.calibration.logits(raw))

    def calls(self, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(probabilities, called pneumonia, in the grey zone) for raw logits, as the predictor makes them."""
        p = self.probabilities(raw)
        return p, p >= self.threshold, self.grey_zone.contains(p)


def fit_operating_point(raw: np.ndarray, labels: np.ndarray, target: float = DEFAULT_TARGET_SENSITIVITY, seed: int = 0) -> SiteFit:
    """Rules 1-3: recalibration, the conformal threshold, the two-sided grey zone.

    Args:
        raw: (n,) raw model logits of the local images.
        labels: (n,) 0 normal, 1 pneumonia; both classes present.
        target: the sensitivity the threshold aims at, in (0, 1).
        seed: seeds the calibration's folds.
    """
    raw = np.asarray(raw, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if not 0.0 < target < 1.0:
        raise SiteInputError(f"The target sensitivity must lie strictly between 0 and 1; got {target}.")
    if labels.min(initial=1) == labels.max(initial=0):
        raise SiteInputError("The local sample needs images of both classes.")
    calibration = fit_calibration(raw, labels, seed)
    threshold, zone, k = conformal_threshold(raw, labels, calibration, target)
    if not zone.low < threshold < zone.high:  # only if the probabilities saturate in float64
        raise SiteInputError(
            f"The local sample's calibrated scores saturate (threshold {threshold!r}), so no grey zone can hold the "
            "threshold strictly inside. Check the labels; a sample whose classes barely overlap needs more images."
        )
    return SiteFit(calibration, threshold, zone, k)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The 95 % Wilson score interval of a proportion; None when ``n`` is 0."""
    if n == 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _proportion(successes: int, n: int) -> dict | None:
    interval = wilson_interval(successes, n)
    if interval is None:
        return None
    return {"value": successes / n, "low": interval[0], "high": interval[1], "count": int(successes), "n": int(n)}


def figures(labels: np.ndarray, called: np.ndarray, in_zone: np.ndarray) -> dict:
    """Sensitivity, specificity, share in the grey zone and accuracy outside it, each
    ``{"value", "low", "high", "count", "n"}`` (95 % Wilson interval), or None where undefined."""
    labels = np.asarray(labels).astype(bool)
    called = np.asarray(called).astype(bool)
    in_zone = np.asarray(in_zone).astype(bool)
    outside = ~in_zone
    return {
        "sensitivity": _proportion(int((called & labels).sum()), int(labels.sum())),
        "specificity": _proportion(int((~called & ~labels).sum()), int((~labels).sum())),
        "grey_zone_share": _proportion(int(in_zone.sum()), int(labels.size)),
        "accuracy_outside_grey_zone": _proportion(int((called == labels)[outside].sum()), int(outside.sum())),
    }


def out_of_fold(raw: np.ndarray, labels: np.ndarray, target: float, seed: int, folds: int = FOLDS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each image called by an operating point fitted (rules 1-3) on the other folds.

    Returns:
        (probabilities, called pneumonia, in the grey zone), each (n,), every entry out of fold.
    """
    raw = np.asarray(raw, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    ids = fold_ids(labels, folds, seed + 1)  # not the calibration's own folds
    p = np.empty(raw.size)
    called = np.empty(raw.size, dtype=bool)
    in_zone = np.empty(raw.size, dtype=bool)
    for fold in range(folds):
        held = ids == fold
        fit = fit_operating_point(raw[~held], labels[~held], target, seed)
        p[held], called[held], in_zone[held] = fit.calls(raw[held])
    return p, called, in_zone


def threshold_explorer(raw: np.ndarray, labels: np.ndarray, calibration: Calibration, thresholds: np.ndarray | None = None) -> list[dict]:
    """What every threshold would do on a sample, as WHO's CAD calibration toolkit shows it.

    For each threshold (calibrated probability; by default every distinct score of the sample,
    plus 0 and 1), in the sample itself (not out of fold: it shows the trade-off, not the
    figures to expect): sensitivity, specificity, share called pneumonia (the readers' workload of
    positive calls) and share in the grey zone that rule 3 would put around that threshold.

    Returns:
        rows ``{"threshold", "sensitivity", "specificity", "called_pneumonia", "grey_zone_share"}``, thresholds ascending.
    """
    z = calibration.logits(raw)
    p = _sigmoid(z)
    labels = np.asarray(labels).astype(bool)
    if thresholds is None:
        thresholds = np.unique(np.concatenate([[0.0, 1.0], p]))
    rows = []
    for threshold in np.asarray(thresholds, dtype=np.float64):
        called = p >= threshold
        edge = float(np.log(threshold) - np.log1p(-threshold)) if 0.0 < threshold < 1.0 else (-np.inf if threshold <= 0 else np.inf)
        zone = grey_zone_around(edge) if np.isfinite(edge) else GreyZone(float(threshold), float(threshold))
        rows.append({
            "threshold": float(threshold),
            "sensitivity": float(called[labels].mean()) if labels.any() else None,
            "specificity": float((~called[~labels]).mean()) if (~labels).any() else None,
            "called_pneumonia": float(called.mean()),
            "grey_zone_share": float(zone.contains(p).mean()),
        })
    return rows


def target_rows(raw: np.ndarray, labels: np.ndarray, calibration: Calibration, targets: Sequence[float]) -> list[dict]:
    """The threshold explorer by target: for each target sensitivity, the threshold rules 2 and 3
    give on ``calibration`` (``conformal_threshold``: for a profile's own target, its threshold and
    grey zone exactly), and what that threshold and that row's own grey zone do on the sample itself.

    In sample, not out of fold: the rows show the trade-off between targets, and each achieved
    sensitivity is at least the target by construction whenever ``k`` is the formula's (enough
    pneumonia images), which is why the out-of-fold figures are the ones to expect.

    Returns:
        One row per target, ascending: ``{"target", "rank", "n_pneumonia", "threshold",
        "grey_zone_low", "grey_zone_high", "sensitivity", "specificity", "called_pneumonia",
        "grey_zone_share"}``; the shares are of the sample's images, each under that row's threshold and band.
    """
    raw = np.asarray(raw, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    p = _sigmoid(calibration.logits(raw))  # (n,)
    rows = []
    for target in sorted(set(float(t) for t in targets)):
        threshold, zone, k = conformal_threshold(raw, labels, calibration, target)
        called = p >= threshold
        rows.append({
            "target": target,
            "rank": k,
            "n_pneumonia": int(labels.sum()),
            "threshold": threshold,
            "grey_zone_low": zone.low,
            "grey_zone_high": zone.high,
            "sensitivity": float(called[labels].mean()),
            "specificity": float((~called[~labels]).mean()),
            "called_pneumonia": float(called.mean()),
            "grey_zone_share": float(zone.contains(p).mean()),
        })
    return rows


def translate(probability: float, source, destination) -> float:
    """A probability on one operating point's scale, read on another's.

    Both scales are ``sigmoid(scale * raw logit + offset)`` of the same raw logit (an
    ``OperatingPoint``, a ``Calibration``: anything with ``scale`` and ``offset``; a label-free
    point's ``mapping`` is applied to the raw logit first), so a threshold
    of the shipped point and one of a site profile can be placed on one axis: the raw logit the
    probability stands for, mapped through the other scale. 0 and 1 stay where they are.
    """
    p = float(probability)
    if p <= 0.0 or p >= 1.0:
        return p
    raw = (float(np.log(p) - np.log1p(-p)) - float(source.offset)) / float(source.scale)
    # A label-free point reads the raw logit through its monotone map first (``alignment``).
    if getattr(source, "mapping", None) is not None:
        raw = float(piecewise_linear(source.mapping[1], source.mapping[0], np.array([raw]))[0])
    if getattr(destination, "mapping", None) is not None:
        raw = float(piecewise_linear(*destination.mapping, np.array([raw]))[0])
    return float(_sigmoid(float(destination.scale) * raw + float(destination.offset)))


def pneumonia_images_for_rank(rank: int, target: float) -> int:
    """The fewest pneumonia images with which rule 2 puts the threshold at the ``rank``-th lowest
    of them (``conformal_rank`` reaches ``rank``): 66 for the 2nd lowest at 0.97, 99 for the 3rd."""
    n = max(0, int(math.ceil(rank / (1.0 - target))) - 2)
    while conformal_rank(n, target) < rank:
        n += 1
    return n


@dataclass(frozen=True)
class SmallSampleCost:
    """Why a profile's grey zone is wide on a small sample, in numbers (the page says it in words).

    Attributes:
        n_normal, n_pneumonia: the images the profile was fitted on.
        target: the target sensitivity.
        rank: rule 2's ``k``: the threshold is the k-th lowest pneumonia image's probability.
        promised_sensitivity: ``1 - k / (n + 1)``, what the rule guarantees on new images in
            expectation; above the target when the rank is rounded down (a small ``n``).
        next_rank_at: pneumonia images from which the threshold would rest on the next rank.
        chow_band: Chow's band ``(c, 1 - c)`` before rule 3 widens it around the threshold.
        grey_zone: the fitted band.
        widened_images: images of the sample in the band only because it was widened to keep the
            threshold inside (between the widened edge and Chow's).
        platt_targets: ``(1 / (n- + 2), (n+ + 1) / (n+ + 2))``: where rule 1 aims the probabilities of
            this sample's clearest normal and pneumonia images instead of 0 and 1 (Platt's correction,
            wider the smaller the sample).
    """

    n_normal: int
    n_pneumonia: int
    target: float
    rank: int
    promised_sensitivity: float
    next_rank_at: int
    chow_band: tuple[float, float]
    grey_zone: tuple[float, float]
    widened_images: int
    platt_targets: tuple[float, float]

    @property
    def widened(self) -> bool:
        return self.grey_zone[0] < self.chow_band[0] or self.grey_zone[1] > self.chow_band[1]


def platt_extremes(n_normal: int, n_pneumonia: int) -> tuple[float, float]:
    """``platt_targets`` of a sample of that many normal and pneumonia images: (normal's, pneumonia's)."""
    return 1.0 / (n_normal + 2), (n_pneumonia + 1) / (n_pneumonia + 2)


def small_sample_cost(raw: np.ndarray, labels: np.ndarray, calibration: Calibration, target: float) -> SmallSampleCost:
    """The numbers behind a profile's grey zone on its own sample (see ``SmallSampleCost``)."""
    raw = np.asarray(raw, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    threshold, zone, k = conformal_threshold(raw, labels, calibration, target)
    n_pneumonia, n_normal = int((labels == 1).sum()), int((labels == 0).sum())
    p = _sigmoid(calibration.logits(raw))
    chow = (CHOW_COST, 1.0 - CHOW_COST)
    widened = int(((p >= zone.low) & (p < chow[0])).sum() + ((p >= chow[1]) & (p < zone.high)).sum())
    return SmallSampleCost(
        n_normal=n_normal,
        n_pneumonia=n_pneumonia,
        target=float(target),
        rank=k,
        promised_sensitivity=1.0 - k / (n_pneumonia + 1),
        next_rank_at=pneumonia_images_for_rank(k + 1, target),
        chow_band=chow,
        grey_zone=(zone.low, zone.high),
        widened_images=widened,
        platt_targets=platt_extremes(n_normal, n_pneumonia),
    )


def uncertainty_line(n: int, what: str, interval: dict | None) -> str:
    """'62 local pneumonia images: sensitivity known to about ±0.05'."""
    if interval is None:
        return f"no local {what.split()[0]} images"
    half = (interval["high"] - interval["low"]) / 2
    return f"{n} local {what} images: {'sensitivity' if 'pneumonia' in what else 'specificity'} known to about ±{half:.2f}"


# --- the profile -------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteProfile:
    """A site's operating point for one model, saved as a small JSON file.

    Attributes:
        id: content hash of every other field but ``created_utc`` (``operating_point.content_id``).
        model_sha256: the model it was fitted for; any other model refuses it.
        sample_sha256: SHA-256 over the sorted ``<image SHA-256>:<label>`` lines of the images used
            (never names or pixels).
        counts: images per class used, and those excluded or merged, with reasons counted.
        prevalence: share of pneumonia images in the sample used.
        target_sensitivity: what the threshold aims at.
        rule: the rules' document and their constants.
        calibration: method, scale, offset and the cross-validated losses that chose the method.
        threshold, grey_zone: the operating point, in calibrated probability.
        figures: out-of-fold sensitivity, specificity, grey-zone share and accuracy outside it.
        created_utc: when it was fitted.
        kind: ``"labelled"`` (a profile written before kinds existed reads as one; its id, made
            without the field, stays valid because a labelled kind is left out of the hash).
    """

    id: str
    model_sha256: str
    sample_sha256: str
    counts: dict
    prevalence: float
    target_sensitivity: float
    rule: dict
    calibration: dict
    threshold: float
    grey_zone: tuple[float, float]
    figures: dict
    created_utc: str
    schema_version: int = SITE_PROFILE_SCHEMA_VERSION
    kind: str = LABELLED

    @property
    def n_normal(self) -> int:
        return int(self.counts["normal"])

    @property
    def n_pneumonia(self) -> int:
        return int(self.counts["pneumonia"])

    @property
    def description(self) -> str:
        """'site profile 3f2a9c01… fitted on 200 local images on 2026-12-02'."""
        return (
            f"site profile {self.id[:8]}… fitted on {self.n_normal + self.n_pneumonia} local images "
            f"on {self.created_utc[:10]}"
        )

    def operating_point(self) -> OperatingPoint:
        return OperatingPoint(
            id=self.id,
            kind=SITE,
            model_sha256=self.model_sha256,
            scale=float(self.calibration["scale"]),
            offset=float(self.calibration["offset"]),
            threshold=float(self.threshold),
            grey_zone=GreyZone(*self.grey_zone),
            description=self.description,
        )

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["grey_zone"] = list(self.grey_zone)
        return data

    @staticmethod
    def content_id(data: dict) -> str:
        left_out = ("id", "created_utc") + (("kind",) if data.get("kind", LABELLED) == LABELLED else ())
        return content_id({key: value for key, value in data.items() if key not in left_out})

    @classmethod
    def from_dict(cls, data: dict, source: str = "the site profile"):
        """A labelled ``SiteProfile``, or a ``alignment.LabelFreeProfile`` when ``kind`` says so.

        Raises SiteProfileError: not a profile, an unknown kind, a newer schema, or changed since it was fitted.
        """
        if not isinstance(data, dict) or "model_sha256" not in data or "id" not in data:
            raise SiteProfileError(f"{source} is not a site profile (no id or model_sha256).")
        kind = data.get("kind", LABELLED)
        if kind == LABEL_FREE:
            from .alignment import LabelFreeProfile

            return LabelFreeProfile.from_dict(data, source)
        if kind != LABELLED:
            raise SiteProfileError(f"{source} is of an unknown kind {kind!r}; this version reads labelled and label-free profiles.")
        data = {**data, "kind": LABELLED}
        if data.get("schema_version") != SITE_PROFILE_SCHEMA_VERSION:
            raise SiteProfileError(
                f"{source} has schema version {data.get('schema_version')}; this version reads "
                f"{SITE_PROFILE_SCHEMA_VERSION}. Fit it again with `python -m pneumo_model site fit`."
            )
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) != known:
            raise SiteProfileError(f"{source} has fields {sorted(set(data) ^ known)} that a site profile does not.")
        if cls.content_id(data) != data["id"]:
            raise SiteProfileError(
                f"{source} does not match its id {str(data['id'])[:8]}: it was changed after it was fitted. "
                "Fit it again with `python -m pneumo_model site fit`; never edit a profile by hand."
            )
        values = dict(data)
        values["grey_zone"] = tuple(float(edge) for edge in values["grey_zone"])
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path):
        """Reads a profile JSON (``PNEUMO_SITE`` or ``--site``) of either kind (see ``from_dict``).

        Raises:
            SiteProfileError: missing, unreadable or altered.
        """
        path = Path(path)
        if not path.is_file():
            raise SiteProfileError(f"The site profile '{path}' does not exist. Check the PNEUMO_SITE setting or --site.")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as error:
            raise SiteProfileError(f"The site profile '{path}' is unreadable ({error}).") from None
        return cls.from_dict(data, f"The site profile '{path}'")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save(self, path: str | Path) -> None:
        """Writes the profile atomically (a half-written profile is never left at ``path``)."""
        write_atomically(Path(path), self.to_json())


# --- the sample: files with labels, scored through the pipeline -----------------------------


@dataclass(frozen=True)
class LabelledFile:
    """One image of a labelled sample.

    Attributes:
        name: how messages name it (the CSV's ``file`` value, or the path inside the zip or folder).
        label: ``"normal"`` or ``"pneumonia"``.
        read: returns the file's bytes (raises InvalidImageError when it cannot).
        row: the CSV row number, when it came from a CSV.
    """

    name: str
    label: str
    read: Callable[[], bytes]
    row: int | None = None

    @property
    def where(self) -> str:
        return f"row {self.row} ({self.name})" if self.row is not None else self.name


def _label(value: str) -> str | None:
    value = value.strip().lower()
    return value if value in LABELS else None


def _path_reader(path: Path) -> Callable[[], bytes]:
    from .preprocessing import read_image_bytes

    return lambda: read_image_bytes(path)


def parse_labels_csv(text: str, resolve: Callable[[str], Callable[[], bytes] | None]) -> list[LabelledFile]:
    """Rows of a ``file,label`` CSV.

    Args:
        text: the CSV (a header row with ``file`` and ``label``; other columns are ignored).
        resolve: gives the reader of a ``file`` value, or None when there is no such file.

    Raises:
        SiteInputError: no such columns, an unknown label, a missing file, or no rows (all listed).
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    columns = [name.strip().lower() for name in (reader.fieldnames or [])]
    if "file" not in columns or "label" not in columns:
        raise SiteInputError(
            f"The labels CSV needs the columns file,label (found: {', '.join(columns) or 'none'})."
        )
    reader.fieldnames = columns
    files, problems = [], []
    for row, record in enumerate(reader, start=2):
        name, value = (record.get("file") or "").strip(), record.get("label") or ""
        if not name and not value.strip():
            continue  # a blank line
        label = _label(value)
        if not name:
            problems.append(f"row {row}: no file name")
            continue
        if label is None:
            problems.append(f"row {row} ({name}): unknown label '{value.strip()}' (use normal or pneumonia)")
            continue
        read = resolve(name)
        if read is None:
            problems.append(f"row {row} ({name}): no such file")
            continue
        files.append(LabelledFile(name, label, read, row))
    if problems:
        raise SiteInputError(_listed("The labels CSV cannot be used", problems))
    if not files:
        raise SiteInputError("The labels CSV lists no images.")
    return files


def read_labels_csv(path: str | Path) -> list[LabelledFile]:
    """A ``file,label`` CSV; ``file`` relative to the CSV's folder (or absolute).

    Raises:
        SiteInputError: see ``parse_labels_csv``; also a missing or unreadable CSV.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise SiteInputError(f"The labels CSV '{path}' cannot be read ({getattr(error, 'strerror', None) or error}).") from None

    def resolve(name: str):
        file = path.parent / name
        return _path_reader(file) if file.is_file() else None

    return parse_labels_csv(text, resolve)


def _class_of_folder(parts: Sequence[str]) -> str | None:
    """``normal`` / ``pneumonia`` from the nearest folder named NORMAL or PNEUMONIA (any case)."""
    for part in reversed(parts):
        label = _label(part)
        if label is not None:
            return label
    return None


def read_labelled_folder(folder: str | Path) -> list[LabelledFile]:
    """Every file under ``folder/NORMAL/`` and ``folder/PNEUMONIA/`` (recursively; hidden files skipped).

    Raises:
        SiteInputError: not a folder, or neither subfolder holds a file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise SiteInputError(f"'{folder}' is not a folder with NORMAL/ and PNEUMONIA/ inside.")
    files = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        label = _class_of_folder(relative.parts[:-1])
        if label is not None:
            files.append(LabelledFile(relative.as_posix(), label, _path_reader(path)))
    if not files:
        raise SiteInputError(f"'{folder}' has no files in NORMAL/ or PNEUMONIA/ subfolders.")
    return files


def read_labelled_zip(data: bytes, max_member_bytes: int | None = None) -> list[LabelledFile]:
    """The images of a zip with ``NORMAL/`` and ``PNEUMONIA/`` folders (at any depth), or with a
    ``labels.csv`` naming its members. Members are read one at a time, when scored.

    Raises:
        SiteInputError: not a zip, no labelled member, or members that would inflate beyond
            ``MAX_ZIP_UNCOMPRESSED_BYTES`` in all.
    """
    from .preprocessing import ImageLimits

    limit = ImageLimits().max_bytes if max_member_bytes is None else max_member_bytes
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = [info for info in archive.infolist() if not info.is_dir()]
    except (zipfile.BadZipFile, OSError, ValueError):
        raise SiteInputError("The file is not a readable zip archive.") from None
    members = [
        info for info in members
        if not any(part.startswith((".", "__MACOSX")) for part in PurePosixPath(info.filename).parts)
    ]
    if sum(info.file_size for info in members) > MAX_ZIP_UNCOMPRESSED_BYTES:
        raise SiteInputError(f"The zip inflates to more than {MAX_ZIP_UNCOMPRESSED_BYTES / 2**30:.0f} GB; split it into smaller ones.")

    def reader(info: zipfile.ZipInfo) -> Callable[[], bytes]:
        def read() -> bytes:
            if info.file_size > limit:
                raise InvalidImageError(
                    f"The file is {info.file_size / 2**20:.1f} MB, larger than the {limit / 2**20:.0f} MB limit."
                )
            try:
                return archive.read(info)
            except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as error:
                raise InvalidImageError(f"It cannot be read from the zip ({error}).") from None

        return read

    by_name = {info.filename: info for info in members}
    csv_members = [info for info in members if PurePosixPath(info.filename).name.lower() == "labels.csv"]
    if csv_members:
        base = PurePosixPath(csv_members[0].filename).parent
        text = archive.read(csv_members[0]).decode("utf-8-sig", errors="replace")

        def resolve(name: str):
            info = by_name.get(str(base / name)) or by_name.get(name)
            return None if info is None else reader(info)

        return parse_labels_csv(text, resolve)
    files = []
    for info in members:
        path = PurePosixPath(info.filename)
        label = _class_of_folder(path.parts[:-1])
        if label is not None:
            files.append(LabelledFile(info.filename, label, reader(info)))
    if not files:
        raise SiteInputError("The zip has no files in NORMAL/ or PNEUMONIA/ folders, and no labels.csv.")
    return files


def _listed(title: str, problems: Sequence[str], most: int = 20) -> str:
    shown = [f"- {problem}" for problem in problems[:most]]
    if len(problems) > most:
        shown.append(f"- and {len(problems) - most} more")
    return f"{title} ({len(problems)} problem{'s' if len(problems) != 1 else ''}):\n" + "\n".join(shown)


@dataclass(frozen=True)
class ScoredSample:
    """A labelled local sample scored through the pipeline, ready to fit or check a profile.

    Attributes:
        raw_logits: (n,) the model's raw logits of the images used.
        labels: (n,) 0 normal, 1 pneumonia.
        digests: (n,) the images' SHA-256 (each image once).
        model_sha256: the model that scored them.
        files_in: how many files were given.
        excluded: ``(name, reason)`` of each file left out (the gate flagged it).
        merged: ``(name, first name)`` of each duplicate counted once.
        warnings: plain sentences (few images of a class, many excluded).
    """

    raw_logits: np.ndarray
    labels: np.ndarray
    digests: tuple[str, ...]
    model_sha256: str
    files_in: int
    excluded: tuple[tuple[str, str], ...] = ()
    merged: tuple[tuple[str, str], ...] = ()
    warnings: tuple[str, ...] = ()

    @property
    def n_normal(self) -> int:
        return int((self.labels == 0).sum())

    @property
    def n_pneumonia(self) -> int:
        return int((self.labels == 1).sum())

    @property
    def fingerprint(self) -> str:
        """SHA-256 over the sorted ``<image SHA-256>:<label>`` lines."""
        lines = sorted(f"{digest}:{LABELS[label]}" for digest, label in zip(self.digests, self.labels))
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()

    @property
    def seed(self) -> int:
        """The folds' seed, from the fingerprint: the same sample gives the same profile."""
        return int(self.fingerprint[:8], 16)


def score_sample(
    predictor, files: Sequence[LabelledFile], progress: Callable[[int, int], None] | None = None, batch_size: int = 1
) -> ScoredSample:
    """Decodes and scores every file once, through the pipeline and the gate.

    Args:
        predictor: a ``prediction.Predictor`` (its operating point does not matter: raw logits are kept).
        files: the labelled files.
        progress: called with (files done, files in all) after each batch.
        batch_size: images per forward pass. One by default, as the app calls an image: a batched
            pass differs in the last float32 digits (about 1e-6), which would change the profile's
            content hash, so ``site fit`` and the Site calibration page give the same id only when
            both score one at a time. Decoding dominates the time either way.

    Raises:
        SiteInputError: unreadable files, a duplicate image under two labels, one class only,
            or fewer than ``MIN_PER_CLASS`` images of a class once the gate's flags are excluded
            (every problem listed).
    """
    from .pipeline import DecodedImage

    problems, excluded, merged = [], [], []
    seen: dict[str, tuple[LabelledFile, int]] = {}
    raw, labels, digests = [], [], []
    for start in range(0, len(files), batch_size):
        batch, decoded = [], []
        for file in files[start : start + batch_size]:
            try:
                decoded.append(DecodedImage.decode(file.read()))
                batch.append(file)
            except InvalidImageError as error:
                problems.append(f"{file.where}: {error}")
        calls = predictor.calls(decoded) if decoded else []
        for file, image, call in zip(batch, decoded, calls):
            label = LABELS.index(file.label)
            if image.digest in seen:
                first, first_label = seen[image.digest]
                if first_label != label:
                    problems.append(f"{file.where} is labelled {file.label} but the same image is {first.where}, labelled {first.label}")
                else:
                    merged.append((file.name, first.name))
                continue
            seen[image.digest] = (file, label)
            if call.ood:
                excluded.append((file.name, "the out-of-distribution gate flags it: it does not look like the chest X-rays the model knows"))
                continue
            raw.append(call.logit)
            labels.append(label)
            digests.append(image.digest)
        if progress is not None:
            progress(min(start + batch_size, len(files)), len(files))
        del decoded
    if problems:
        raise SiteInputError(_listed("The local sample cannot be used; nothing was written", problems))
    labels_array = np.array(labels, dtype=int)
    counts = {name: int((labels_array == index).sum()) for index, name in enumerate(LABELS)}
    excluded_note = f" after excluding {len(excluded)} image(s) the out-of-distribution gate flags" if excluded else ""
    if min(counts.values()) == 0:
        present = [name for name, count in counts.items() if count]
        raise SiteInputError(
            f"The local sample has only {' and '.join(present) or 'no'} images{excluded_note}; a profile needs both classes."
        )
    small = [name for name, count in counts.items() if count < MIN_PER_CLASS]
    if small:
        raise SiteInputError(
            f"The local sample has {counts['normal']} normal and {counts['pneumonia']} pneumonia images{excluded_note}; "
            f"at least {MIN_PER_CLASS} of each class are needed (fewer give intervals too wide to act on)."
        )
    warnings = []
    for name, count in counts.items():
        if count < WARN_PER_CLASS:
            half = (lambda i: (i[1] - i[0]) / 2)(wilson_interval(round(0.95 * count), count))
            warnings.append(
                f"Only {count} {name} images: its {'sensitivity' if name == 'pneumonia' else 'specificity'} is known "
                f"to about ±{half:.2f}; {WARN_PER_CLASS} or more would narrow that."
            )
    if excluded:
        share = len(excluded) / (len(excluded) + labels_array.size)
        warnings.append(
            f"{len(excluded)} of {len(excluded) + labels_array.size} distinct images ({share:.0%}) were excluded because "
            "the out-of-distribution gate flags them; the tool hides its call on such images at this site too."
        )
    return ScoredSample(
        raw_logits=np.array(raw, dtype=np.float64),
        labels=labels_array,
        digests=tuple(digests),
        model_sha256=predictor.metadata.model_sha256,
        files_in=len(files),
        excluded=tuple(excluded),
        merged=tuple(merged),
        warnings=tuple(warnings),
    )


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def fit_profile(sample: ScoredSample, target: float = DEFAULT_TARGET_SENSITIVITY, created_utc: str | None = None) -> SiteProfile:
    """The site profile of a scored sample: rules 1-3 on all of it, figures out of fold (rule 4)."""
    fit = fit_operating_point(sample.raw_logits, sample.labels, target, sample.seed)
    _, called, in_zone = out_of_fold(sample.raw_logits, sample.labels, target, sample.seed)
    data = {
        "model_sha256": sample.model_sha256,
        "sample_sha256": sample.fingerprint,
        "counts": {
            "normal": sample.n_normal,
            "pneumonia": sample.n_pneumonia,
            "files_in": sample.files_in,
            "excluded_by_gate": len(sample.excluded),
            "duplicates_merged": len(sample.merged),
        },
        "prevalence": sample.n_pneumonia / sample.labels.size,
        "target_sensitivity": float(target),
        "rule": {
            "document": RULE,
            "calibration": f"temperature or platt by stratified {FOLDS}-fold CV log loss (platt if lower by > {PLATT_MARGIN_NATS})",
            "threshold": "split-conformal: k-th lowest pneumonia image, k = max(1, floor((n + 1) * (1 - target)))",
            "grey_zone": f"Chow's reject rule, cost {CHOW_COST}, each edge >= {MIN_EDGE_LOGIT} logit from the threshold",
            "figures": f"out of fold, {FOLDS} stratified folds, 95 % Wilson intervals",
            "conformal_rank": fit.conformal_rank,
        },
        "calibration": {
            "method": fit.calibration.method,
            "scale": fit.calibration.scale,
            "offset": fit.calibration.offset,
            "cv_log_loss": fit.calibration.cv_log_loss,
        },
        "threshold": fit.threshold,
        "grey_zone": [fit.grey_zone.low, fit.grey_zone.high],
        "figures": figures(sample.labels, called, in_zone),
        "schema_version": SITE_PROFILE_SCHEMA_VERSION,
    }
    data["id"] = SiteProfile.content_id(data)
    data["created_utc"] = created_utc or _utc_now()
    return SiteProfile.from_dict(data)


def check_profile(profile: SiteProfile, sample: ScoredSample) -> dict:
    """The profile's figures on a fresh labelled sample (``site check``): no fitting at all.

    Raises:
        SiteProfileError: the sample was scored by another model than the profile's.
    """
    if sample.model_sha256 != profile.model_sha256:
        raise SiteProfileError(
            f"The site profile {profile.id[:8]} was fitted for model {profile.model_sha256[:12]}, "
            f"not for the model in use ({sample.model_sha256[:12]})."
        )
    point = profile.operating_point()
    p = point.probabilities(sample.raw_logits)
    return figures(sample.labels, p >= point.threshold, point.grey_zone.contains(p))


def summary(profile_id: str, threshold: float, grey_zone, n_normal: int, n_pneumonia: int, stated: dict) -> dict:
    """The one-line JSON that ``site fit`` and ``site check`` end with."""
    return {
        "id": profile_id,
        "threshold": threshold,
        "grey_zone": list(grey_zone),
        "n_normal": n_normal,
        "n_pneumonia": n_pneumonia,
        **{name: None if value is None else {k: value[k] for k in ("value", "low", "high")} for name, value in stated.items()},
    }
