"""The site-calibration protocol on the official test split (``site evaluate``; rule 6 of
``docs/site_calibration_rules.md``).

The official test split plays a new site. For each local-sample size and each seeded draw, whole
merged patient groups (``data.group_ids``: a patient, merged with every patient sharing a
byte-identical file) are drawn at the split's class proportions; a site profile is fitted on the
drawn images by the committed rules (``site.fit_operating_point``, unchanged, numbers only) and
every figure is computed on the other test images only, beside the shipped operating point on the
same images. The same draws are scored a second time with the remainder's pneumonia images
subsampled to ``LOW_PREVALENCE``.

The test split is scored once, through the one pipeline (``evaluation.call_files``), and the run is
logged in ``test_evaluations.jsonl``. Nothing is chosen here: no model, no setting, no rule.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..artifacts import REPO_ROOT
from ..data import model_split
from ..paths import file_sha256
from ..prediction import Predictor
from ..site import DEFAULT_TARGET_SENSITIVITY, RULE, ScoredSample, figures, fit_operating_point, out_of_fold
from .evaluation import DEFAULT_REPORTS_DIR, call_files, json_safe, record_test_use
from .metrics import expected_calibration_error

REPORT_SCHEMA_VERSION = 1
REPORT_NAME = "site_calibration"
FIGURE_PATH = "figures/site_calibration.png"
SIZES = (100, 200, 300)
DRAWS = 200
SEED = 20261201
LOW_PREVALENCE = 0.30
PREVALENCES = ("split", "low")  # the split's own, and LOW_PREVALENCE
POINTS = ("site", "shipped")
FIGURES = ("sensitivity", "specificity", "accuracy", "ece", "grey_zone_share", "accuracy_outside_grey_zone")
STATED = ("sensitivity", "specificity", "grey_zone_share", "accuracy_outside_grey_zone")  # a profile's out-of-fold figures
FIGURE_NAMES = {
    "sensitivity": "sensitivity",
    "specificity": "specificity",
    "accuracy": "accuracy",
    "ece": "ECE (15 bins)",
    "grey_zone_share": "grey-zone share",
    "accuracy_outside_grey_zone": "accuracy outside the grey zone",
}
STATISTIC_NAMES = {"median": "median", "p5": "5th percentile", "p95": "95th percentile"}

# The must-reach list, at the split's prevalence: (local images, figure, statistic, op, target).
# The grey zone's two-sidedness is checked apart (``two_sided_share`` must be 1 at 200).
MUST_REACH = (
    (200, "sensitivity", "median", ">=", 0.965),
    (200, "sensitivity", "p5", ">=", 0.93),
    (200, "specificity", "median", ">=", 0.89),
    (200, "specificity", "p5", ">=", 0.80),
    (200, "grey_zone_share", "median", "<=", 0.15),
    (200, "grey_zone_share", "p95", "<=", 0.30),
    (200, "accuracy_outside_grey_zone", "median", ">=", 0.97),
    (100, "sensitivity", "median", ">=", 0.96),
    (100, "specificity", "median", ">=", 0.85),
)
TWO_SIDED_SIZE = 200

SPREAD_SENTENCE = (
    "The 5th-95th percentiles show how much the figures move from one draw of the local sample to "
    "another within this one data set (one hospital's test split); they are not the spread from one "
    "site to another, which this data set cannot show: a real site may land outside them."
)
DRAWING_RULE = (
    "Whole merged patient groups are taken in a seeded random order; a group is taken when its images "
    "still fit the class counts wanted, and skipped (left in the remainder) when it would overshoot, "
    "until both counts are met exactly; so the counts are exact, and the few skips near the end favour "
    "small groups slightly."
)
GATE_RULE = (
    "Local images the out-of-distribution gate flags are left out of the fit (as `site fit` does) and a "
    "duplicate image is counted once; the remaining images include the gate's flags (as the shipped "
    "evaluation report does), for the site profile and the shipped point alike."
)


@dataclass(frozen=True)
class ScoredSplit:
    """The test split scored once through the pipeline: numbers only, one entry per file.

    Attributes:
        raw: (n,) the model's raw logits.
        labels: (n,) 0 normal, 1 pneumonia.
        groups: (n,) merged patient group of each file.
        digests: (n,) each file's SHA-256.
        ood: (n,) bool, the gate's flags (all False without a gate).
        shipped_probability, shipped_called, shipped_grey_zone: (n,) the shipped operating point's calls.
    """

    raw: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    digests: np.ndarray
    ood: np.ndarray
    shipped_probability: np.ndarray
    shipped_called: np.ndarray
    shipped_grey_zone: np.ndarray

    @property
    def n_pneumonia(self) -> int:
        return int(self.labels.sum())

    @property
    def prevalence(self) -> float:
        return self.n_pneumonia / self.labels.size


def local_counts(size: int, prevalence: float) -> tuple[int, int]:
    """``(normal, pneumonia)`` images of a local sample of ``size`` at ``prevalence`` (pneumonia rounded half up)."""
    pneumonia = int(math.floor(size * prevalence + 0.5))
    return size - pneumonia, pneumonia


def draw_local(labels: np.ndarray, groups: np.ndarray, counts: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A local sample of whole groups with exactly ``counts`` = (normal, pneumonia) images (see ``DRAWING_RULE``).

    Args:
        labels: (n,) 0 / 1.
        groups: (n,) group of each image.
        counts: images wanted per class.
        rng: the draw's generator.

    Returns:
        Sorted indices of the local images; every other index is the remainder.

    Raises:
        ValueError: the split has fewer images of a class than wanted.
    """
    labels = np.asarray(labels).astype(int)
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    n_groups = int(index.max()) + 1
    per_group = np.stack([np.bincount(index, weights=labels == c, minlength=n_groups) for c in (0, 1)], axis=1).astype(int)
    need = np.array(counts, dtype=int)  # (2,)
    if np.any(need > per_group.sum(axis=0)) or np.any(need < 0):
        raise ValueError(f"Cannot draw {tuple(counts)} (normal, pneumonia) images from {tuple(per_group.sum(axis=0))}.")
    taken = np.zeros(n_groups, dtype=bool)
    for group in rng.permutation(n_groups):
        if not need.any():
            break
        if np.all(per_group[group] <= need):
            taken[group] = True
            need -= per_group[group]
    return np.flatnonzero(taken[index])


def low_prevalence_rows(labels: np.ndarray, rows: np.ndarray, prevalence: float, rng: np.random.Generator) -> np.ndarray:
    """``rows`` with its pneumonia images subsampled (seeded, without replacement) to ``prevalence``; every normal kept.

    Returns:
        Sorted indices.
    """
    rows = np.asarray(rows)
    normal = rows[labels[rows] == 0]
    pneumonia = rows[labels[rows] == 1]
    wanted = int(math.floor(normal.size * prevalence / (1.0 - prevalence) + 0.5))
    if wanted > pneumonia.size:
        raise ValueError(f"The remainder has {pneumonia.size} pneumonia images; {wanted} are needed for {prevalence:.0%}.")
    return np.sort(np.concatenate([normal, rng.choice(pneumonia, size=wanted, replace=False)]))


def operating_figures(labels: np.ndarray, probabilities: np.ndarray, called: np.ndarray, in_zone: np.ndarray) -> dict:
    """The six figures of ``FIGURES`` for one operating point's calls (NaN where undefined)."""
    labels = np.asarray(labels).astype(bool)
    called = np.asarray(called).astype(bool)
    in_zone = np.asarray(in_zone).astype(bool)
    right = called == labels
    outside = ~in_zone

    def mean(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    return {
        "sensitivity": mean(called[labels]),
        "specificity": mean(~called[~labels]),
        "accuracy": mean(right),
        "ece": expected_calibration_error(labels, probabilities),
        "grey_zone_share": mean(in_zone),
        "accuracy_outside_grey_zone": mean(right[outside]),
    }


def spread(values) -> dict:
    """``{"median", "p5", "p95"}`` of the draws' values (NaN draws left out; ``undefined`` counts them when any)."""
    values = np.asarray(values, dtype=np.float64)
    defined = values[np.isfinite(values)]
    if defined.size == 0:
        return {"median": None, "p5": None, "p95": None, "undefined": int(values.size)}
    p5, median, p95 = (float(v) for v in np.percentile(defined, [5, 50, 95]))
    result = {"median": median, "p5": p5, "p95": p95}
    if defined.size < values.size:
        result["undefined"] = int(values.size - defined.size)
    return result


def fit_sample(scored: ScoredSplit, local: np.ndarray) -> ScoredSample:
    """The local images as ``site fit`` would use them: the gate's flags excluded, each image once."""
    kept, seen = [], set()
    for row in local:
        # As ``site.score_sample``: a duplicate is merged first (even into a flagged image), then the gate's flags go.
        if scored.digests[row] in seen:
            continue
        seen.add(scored.digests[row])
        if not scored.ood[row]:
            kept.append(row)
    kept = np.array(kept, dtype=int)
    return ScoredSample(
        raw_logits=scored.raw[kept],
        labels=scored.labels[kept],
        digests=tuple(scored.digests[kept]),
        model_sha256="",
        files_in=int(local.size),
    )


def one_draw(scored: ScoredSplit, size: int, draw: int, seed: int, target: float) -> dict:
    """A local sample drawn, a profile fitted on it (rules 1-3, folds seeded from the sample as
    ``site fit`` seeds them), and every figure on the images not drawn."""
    counts = local_counts(size, scored.prevalence)
    local = draw_local(scored.labels, scored.groups, counts, np.random.default_rng([seed, size, draw]))
    remaining = np.setdiff1d(np.arange(scored.labels.size), local)
    sample = fit_sample(scored, local)
    fit = fit_operating_point(sample.raw_logits, sample.labels, target, sample.seed)
    _, oof_called, oof_zone = out_of_fold(sample.raw_logits, sample.labels, target, sample.seed)
    stated = figures(sample.labels, oof_called, oof_zone)
    rows = {
        "split": remaining,
        "low": low_prevalence_rows(scored.labels, remaining, LOW_PREVALENCE, np.random.default_rng([seed, size, draw, 1])),
    }
    result = {"figures": {}, "images": {}}
    for prevalence, chosen in rows.items():
        labels = scored.labels[chosen]
        p, called, in_zone = fit.calls(scored.raw[chosen])
        result["figures"][prevalence] = {
            "site": operating_figures(labels, p, called, in_zone),
            "shipped": operating_figures(
                labels, scored.shipped_probability[chosen], scored.shipped_called[chosen], scored.shipped_grey_zone[chosen]
            ),
        }
        result["images"][prevalence] = (int((labels == 0).sum()), int((labels == 1).sum()))
    measured = result["figures"]["split"]["site"]
    result["covered"] = {
        name: None if stated[name] is None or not np.isfinite(measured[name])
        else bool(stated[name]["low"] <= measured[name] <= stated[name]["high"])
        for name in STATED
    }
    result["stated_half_width"] = {
        name: None if stated[name] is None else (stated[name]["high"] - stated[name]["low"]) / 2 for name in STATED
    }
    result["local"] = {
        "drawn": (int((scored.labels[local] == 0).sum()), int((scored.labels[local] == 1).sum())),
        "used": (sample.n_normal, sample.n_pneumonia),
        "excluded_by_gate": int(scored.ood[local].sum()),
        "local_rows": local,
        "remaining_rows": remaining,
    }
    result["profile"] = {
        "method": fit.calibration.method,
        "threshold": fit.threshold,
        "grey_zone": (fit.grey_zone.low, fit.grey_zone.high),
        "two_sided": bool(fit.grey_zone.low < fit.threshold < fit.grey_zone.high),
    }
    return result


def size_summary(draws: list[dict]) -> dict:
    """One size's draws, summarised: the figures' spread per prevalence and point, the profiles, the coverage."""
    summary = {"prevalence": {}}
    for prevalence in PREVALENCES:
        normal, pneumonia = zip(*(d["images"][prevalence] for d in draws))
        summary["prevalence"][prevalence] = {
            "images": {"normal": spread(normal), "pneumonia": spread(pneumonia)},
            **{
                point: {name: spread([d["figures"][prevalence][point][name] for d in draws]) for name in FIGURES}
                for point in POINTS
            },
        }
    drawn = np.array([d["local"]["drawn"] for d in draws])  # (draws, 2)
    used = np.array([d["local"]["used"] for d in draws])  # (draws, 2)
    summary["local"] = {
        "drawn_normal": {"min": int(drawn[:, 0].min()), "max": int(drawn[:, 0].max())},
        "drawn_pneumonia": {"min": int(drawn[:, 1].min()), "max": int(drawn[:, 1].max())},
        "used_normal": spread(used[:, 0]),
        "used_pneumonia": spread(used[:, 1]),
        "excluded_by_gate": spread([d["local"]["excluded_by_gate"] for d in draws]),
        "excluded_by_gate_max": int(max(d["local"]["excluded_by_gate"] for d in draws)),
    }
    summary["profile"] = {
        "threshold": spread([d["profile"]["threshold"] for d in draws]),
        "grey_zone_low": spread([d["profile"]["grey_zone"][0] for d in draws]),
        "grey_zone_high": spread([d["profile"]["grey_zone"][1] for d in draws]),
        "platt_share": float(np.mean([d["profile"]["method"] == "platt" for d in draws])),
        "two_sided_share": float(np.mean([d["profile"]["two_sided"] for d in draws])),
    }
    summary["stated_coverage"] = {}
    for name in STATED:
        covered = [d["covered"][name] for d in draws if d["covered"][name] is not None]
        summary["stated_coverage"][name] = {
            "covered_share": float(np.mean(covered)) if covered else None,
            "draws": len(covered),
            "median_half_width": spread([np.nan if d["stated_half_width"][name] is None else d["stated_half_width"][name] for d in draws])["median"],
        }
    return summary


def run_draws(scored: ScoredSplit, sizes=SIZES, draws: int = DRAWS, seed: int = SEED, target: float = DEFAULT_TARGET_SENSITIVITY) -> dict:
    """Every draw of every size (numbers only); ``{size: [one_draw(...), ...]}``.

    BLAS is held to one thread: the fits are on a few hundred numbers, where OpenBLAS's threads
    cost many times the arithmetic (measured: 40 ms a fit against 5 ms on the 2-core machine).
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return {size: [one_draw(scored, size, draw, seed, target) for draw in range(draws)] for size in sizes}


def must_reach(results: dict) -> list[dict]:
    """Each must-reach item against the measured site figures: ``{"size", "figure", "statistic", "op", "target", "value", "met"}``."""
    rows = []
    for size, name, statistic, op, target in MUST_REACH:
        key = str(size)
        value = results[key]["prevalence"]["split"]["site"][name][statistic] if key in results else None
        met = value is not None and (value >= target if op == ">=" else value <= target)
        rows.append({"size": size, "figure": name, "statistic": statistic, "op": op, "target": target, "value": value, "met": bool(met)})
    key = str(TWO_SIDED_SIZE)
    share = results[key]["profile"]["two_sided_share"] if key in results else None
    rows.append({
        "size": TWO_SIDED_SIZE, "figure": "two_sided_grey_zone", "statistic": "share of draws", "op": ">=", "target": 1.0,
        "value": share, "met": share is not None and share >= 1.0,
    })
    return rows


def rule_commit(repo: Path = REPO_ROOT, document: str = RULE) -> str | None:
    """The first commit in which the rules' document read as it reads now, or None where git or the
    history is unavailable (or the document differs from every committed version).

    The first with this content, not the last to touch the file: a change undone later (a section
    added by mistake, then taken out) leaves the rules as they were, and so their commit.
    """

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    now = git("hash-object", "--", document)
    commits = git("log", "--format=%H", "--", document)
    if not now or not commits:
        return None
    same = [commit for commit in commits.split() if git("rev-parse", f"{commit}:{document}") == now]
    return same[-1] if same else None  # git log lists the newest first


def score_split(predictor: Predictor, data_dir: Path) -> ScoredSplit:
    """The official test split through the pipeline, once (``call_files``: decoded once, with the gate)."""
    split = model_split(predictor.metadata, Path(data_dir))
    paths = [s.path for s in split.test]
    calls, _ = call_files(predictor, paths)
    return ScoredSplit(
        raw=np.array([call.logit for call in calls], dtype=np.float64),
        labels=np.array([s.label for s in split.test], dtype=int),
        groups=np.array([split.groups[s.path] for s in split.test]),
        digests=np.array([file_sha256(path) for path in paths]),
        ood=np.array([bool(call.ood) for call in calls], dtype=bool),
        shipped_probability=np.array([call.probability for call in calls], dtype=np.float64),
        shipped_called=np.array([call.label == "pneumonia" for call in calls], dtype=bool),
        shipped_grey_zone=np.array([call.grey_zone for call in calls], dtype=bool),
    )


def model_facts(predictor: Predictor) -> dict:
    """What the report says about the model and its shipped operating point."""
    metadata = predictor.metadata
    return {
        "model_sha256": metadata.model_sha256,
        "architecture": metadata.description,
        "shipped_operating_point": {
            "threshold": float(predictor.threshold),
            "temperature": float(metadata.temperature),
            "grey_zone": [float(predictor.grey_zone.low), float(predictor.grey_zone.high)],
        },
    }


def plain_protocol(sizes, target: float, shipped: dict) -> str:
    """The protocol in words a clinician can follow (the report, docs/site_calibration.md and the model card show it)."""
    listed = ", ".join(str(size) for size in sizes[:-1]) + (f" or {sizes[-1]}" if len(sizes) > 1 else str(sizes[0]))
    return (
        "A hospital collects a few hundred of its own chest films whose diagnosis is known, taken as its films "
        "come, and fits a site profile on them: a recalibration of the probability, a threshold aimed at a "
        f"sensitivity of {target:.2f} and a grey zone on both sides of it. Here the official test split played "
        f"that hospital: in each draw, whole patients making up {listed} of its images (in the split's own mix of "
        "normal and pneumonia films) were the local films, a profile was fitted on them, and every figure was "
        "measured on the other test images only, never on the films the profile was fitted on; beside it, the "
        f"shipped operating point (threshold {shipped['threshold']:.3f}, grey zone "
        f"[{shipped['grey_zone'][0]:.3f}, {shipped['grey_zone'][1]:.3f})) on the same images. No model or setting "
        "was chosen by this run."
    )


def build_report(scored: ScoredSplit, draws_by_size: dict, model: dict, sizes, draws: int, seed: int, target: float) -> dict:
    """The report's JSON (without ``created_utc`` and the test-log count); ``model`` as ``model_facts`` gives it."""
    results = {str(size): size_summary(draws_by_size[size]) for size in sizes}
    checks = must_reach(results)
    rule_path = REPO_ROOT / RULE
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "model_sha256": model["model_sha256"],
        "architecture": model["architecture"],
        "rule": {
            "document": RULE,
            "commit": rule_commit(),
            "sha256": file_sha256(rule_path) if rule_path.is_file() else None,
        },
        "config": {
            "sizes": [int(size) for size in sizes],
            "draws": int(draws),
            "seed": int(seed),
            "draw_seed": "numpy.random.default_rng([seed, size, draw]); the low-prevalence subsample [seed, size, draw, 1]",
            "target_sensitivity": float(target),
            "low_prevalence": LOW_PREVALENCE,
            "local_counts": {str(size): dict(zip(("normal", "pneumonia"), local_counts(size, scored.prevalence))) for size in sizes},
            "drawing": DRAWING_RULE,
            "gate": GATE_RULE,
            "fit_seed": "the local sample's fingerprint, as `site fit` seeds its folds (site.ScoredSample.seed)",
            "percentiles": "numpy.percentile, linear interpolation, over the draws",
        },
        "split": {
            "images": int(scored.labels.size),
            "normal": int((scored.labels == 0).sum()),
            "pneumonia": scored.n_pneumonia,
            "groups": int(np.unique(scored.groups).size),
            "prevalence": scored.prevalence,
            "gate_flagged": int(scored.ood.sum()),
        },
        "shipped_operating_point": model["shipped_operating_point"],
        "protocol_plain": plain_protocol(sizes, target, model["shipped_operating_point"]),
        "spread_note": SPREAD_SENTENCE,
        "results": results,
        "must_reach": checks,
        "must_reach_met": all(row["met"] for row in checks),
        "figure": FIGURE_PATH,
    }


def _cell(summary: dict) -> str:
    if summary["median"] is None:
        return "n/a"
    return f"{summary['median']:.3f} ({summary['p5']:.3f}-{summary['p95']:.3f})"


def _draws_text(share: float | None, draws: int) -> str:
    """'199 of 200 draws': a count, never a rounded share (99.5 % would print as 100 %)."""
    return "n/a" if share is None else f"{round(share * draws)} of {draws} draws"


def _must_reach_line(row: dict, draws: int) -> str:
    if row["figure"] == "two_sided_grey_zone":
        return (
            f"- {'met' if row['met'] else '**missed**'}: at {row['size']} local images the threshold lies strictly "
            f"inside the grey zone in every draw (in {_draws_text(row['value'], draws)})."
        )
    shown = "n/a" if row["value"] is None else f"{row['value']:.3f}"
    op = "≥" if row["op"] == ">=" else "≤"
    return (
        f"- {'met' if row['met'] else '**missed**'}: at {row['size']} local images, {STATISTIC_NAMES[row['statistic']]} "
        f"{FIGURE_NAMES[row['figure']]} {shown} (must reach {op} {row['target']:.3f})."
    )


def report_markdown(report: dict) -> str:
    """The report as Markdown (copied into docs/site_calibration.md between the site_calibration markers)."""
    sizes = report["config"]["sizes"]
    split = report["split"]
    low_share = report["config"]["low_prevalence"]
    lines = [
        f"Model `{report['model_sha256'][:12]}` ({report['architecture']}); the official test split "
        f"({split['images']} images, {split['normal']} normal / {split['pneumonia']} pneumonia, {split['groups']} "
        f"patient groups) plays a new site; {report['config']['draws']} seeded draws per local-sample size "
        f"(seed {report['config']['seed']}); rules `{report['rule']['document']}`"
        + (f" (commit `{report['rule']['commit'][:12]}`)" if report["rule"]["commit"] else "")
        + ", applied unchanged.",
        "",
        f"**The protocol, in plain words.** {report['protocol_plain']}",
        "",
        f"**{report['spread_note']}**",
        "",
        f"{report['config']['gate']} {report['config']['drawing']}",
        "",
    ]
    for prevalence, title in (
        ("split", f"At the split's prevalence ({split['prevalence']:.1%} pneumonia)"),
        ("low", f"At {low_share:.0%} prevalence (the remainder's pneumonia images subsampled; the profile still fitted at the split's prevalence)"),
    ):
        lines += [
            f"{title}: median (5th-95th percentile) over the draws, on the remaining images.",
            "",
            "| figure | " + " | ".join(f"{size} local: site | {size}: shipped" for size in sizes) + " |",
            "|---|" + "---|---|" * len(sizes),
        ]
        for name in FIGURES:
            cells = []
            for size in sizes:
                block = report["results"][str(size)]["prevalence"][prevalence]
                cells += [_cell(block["site"][name]), _cell(block["shipped"][name])]
            lines.append(f"| {FIGURE_NAMES[name]} | " + " | ".join(cells) + " |")
        images = [report["results"][str(size)]["prevalence"][prevalence]["images"] for size in sizes]
        lines += [
            "",
            "Remaining images per draw: "
            + "; ".join(
                f"{size} local: {counts['normal']['median']:.0f} normal, {counts['pneumonia']['median']:.0f} pneumonia"
                for size, counts in zip(sizes, images)
            )
            + ".",
            "",
        ]
    lines += ["The profiles (median (5th-95th percentile) over the draws):", ""]
    lines += ["| | " + " | ".join(f"{size} local" for size in sizes) + " |", "|---|" + "---|" * len(sizes)]
    profile_rows = (
        ("threshold", lambda r: _cell(r["profile"]["threshold"])),
        ("grey zone, low edge", lambda r: _cell(r["profile"]["grey_zone_low"])),
        ("grey zone, high edge", lambda r: _cell(r["profile"]["grey_zone_high"])),
        ("Platt chosen", lambda r: _draws_text(r["profile"]["platt_share"], report["config"]["draws"])),
        ("threshold strictly inside the grey zone", lambda r: _draws_text(r["profile"]["two_sided_share"], report["config"]["draws"])),
        ("local images used (normal / pneumonia)", lambda r: f"{r['local']['used_normal']['median']:.0f} / {r['local']['used_pneumonia']['median']:.0f}"),
        ("local images the gate flagged (median / max)", lambda r: f"{r['local']['excluded_by_gate']['median']:.0f} / {r['local']['excluded_by_gate_max']}"),
    )
    for title, cell in profile_rows:
        lines.append(f"| {title} | " + " | ".join(cell(report["results"][str(size)]) for size in sizes) + " |")
    lines += [
        "",
        "Honesty check: how often the 95 % interval a profile states about itself (out of fold, Wilson) "
        "holds the figure then found on the remaining images (at the split's prevalence): "
        + "; ".join(
            f"{size} local: "
            + ", ".join(
                f"{FIGURE_NAMES[name]} {coverage['covered_share']:.0%}"
                for name, coverage in report["results"][str(size)]["stated_coverage"].items()
                if coverage["covered_share"] is not None
            )
            for size in sizes
        )
        + ".",
        "",
        "Must reach (site profile, the split's prevalence):",
        "",
        *[_must_reach_line(row, report["config"]["draws"]) for row in report["must_reach"]],
        "",
        "All must-reach items met." if report["must_reach_met"] else
        f"**Must-reach not met**: {sum(not row['met'] for row in report['must_reach'])} of {len(report['must_reach'])} items "
        "missed. The rules are kept as committed; they were not retuned on the test split.",
    ]
    if "test_evaluations_so_far" in report:
        lines.append(f"The test split has been evaluated {report['test_evaluations_so_far']} time(s) in this repository's log.")
    return "\n".join(lines) + "\n"


def site_calibration_figure(report: dict, path: Path) -> Path:
    """The figures against the local-sample size: site and shipped medians with 5-95 % bands
    (the split's prevalence), and the medians at the low prevalence dotted."""
    from matplotlib.figure import Figure

    sizes = report["config"]["sizes"]
    figure = Figure(figsize=(11, 6.4))
    axes_grid = figure.subplots(2, 3, sharex=True)
    colours = {"site": "#0072B2", "shipped": "#D55E00"}
    for axes, name in zip(axes_grid.ravel(), FIGURES):
        for point in POINTS:
            for prevalence in PREVALENCES:
                stats = [report["results"][str(size)]["prevalence"][prevalence][point][name] for size in sizes]
                median = [np.nan if s["median"] is None else s["median"] for s in stats]
                share = "split" if prevalence == "split" else f"{report['config']['low_prevalence']:.0%}"
                label = f"{point}, {share} prevalence"
                if prevalence == "split":
                    low = [np.nan if s["p5"] is None else s["p5"] for s in stats]
                    high = [np.nan if s["p95"] is None else s["p95"] for s in stats]
                    axes.fill_between(sizes, low, high, color=colours[point], alpha=0.18, linewidth=0)
                    axes.plot(sizes, median, "o-", color=colours[point], label=label)
                else:
                    axes.plot(sizes, median, ":", color=colours[point], marker=".", label=label)
        targets = [(size, target) for size, figure_name, _, _, target in MUST_REACH if figure_name == name and size in sizes]
        if targets:
            axes.scatter(*zip(*targets), marker="_", s=260, color="0.25", zorder=4, label="must reach (site)")
        axes.set_title(FIGURE_NAMES[name], fontsize=10)
        axes.set_xticks(sizes)
        axes.grid(alpha=0.3)
    for axes in axes_grid[-1]:
        axes.set_xlabel("local images")
    axes_grid[0, 0].legend(fontsize=7, loc="lower right")
    figure.suptitle(
        "Site profile vs shipped operating point on the remaining test images (median, band: 5th-95th percentile over draws)\n"
        "The band is draw-to-draw spread within one data set, not site-to-site spread",
        fontsize=10,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110, bbox_inches="tight")
    return path


def evaluate_site_calibration(
    model_path: Path,
    data_dir: Path,
    reports_dir: Path = DEFAULT_REPORTS_DIR,
    sizes=SIZES,
    draws: int = DRAWS,
    seed: int = SEED,
) -> dict:
    """Runs the protocol (module docstring) and writes ``site_calibration.{json,md}`` and its figure.

    The same inputs give the same report but for ``created_utc`` and the test-log count.

    Args:
        model_path: the ``.keras`` file (its gate beside it).
        data_dir: the chest_xray_224 folder.
        reports_dir: where the report, the figure and the test-use log go.
        sizes: local-sample sizes.
        draws: seeded draws per size.
        seed: the draws' seed.

    Returns:
        The report as written to ``reports_dir / "site_calibration.json"``.

    Raises:
        DataError: the data folder differs from the data the model was trained on (``model_split``).
    """
    sizes = tuple(int(size) for size in sizes)
    target = DEFAULT_TARGET_SENSITIVITY
    predictor = Predictor.from_file(Path(model_path), runtime="keras")
    scored = score_split(predictor, Path(data_dir))
    reports_dir = Path(reports_dir)
    count = record_test_use(reports_dir, predictor.metadata.model_sha256, "test")
    draws_by_size = run_draws(scored, sizes, draws, seed, target)
    report = build_report(scored, draws_by_size, model_facts(predictor), sizes, draws, seed, target)
    report["created_utc"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    report["test_evaluations_so_far"] = count
    report = json_safe(report)
    (reports_dir / f"{REPORT_NAME}.json").write_text(json.dumps(report, indent=2) + "\n")
    (reports_dir / f"{REPORT_NAME}.md").write_text(report_markdown(report))
    site_calibration_figure(report, reports_dir / FIGURE_PATH)
    return report
