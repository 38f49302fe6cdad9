"""The committed reports the Model card page shows, read as they are from ``reports/``."""

from __future__ import annotations

import json
from pathlib import Path

from pneumo_model.paths import REPORTS_DIR


def read_json(name: str, reports_dir: Path = REPORTS_DIR) -> dict | None:
    """``reports/<name>.json`` as a dict, or None when it has not been generated."""
    path = reports_dir / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def read_markdown(name: str, reports_dir: Path = REPORTS_DIR) -> str | None:
    """``reports/<name>.md`` as text, or None when it has not been generated."""
    path = reports_dir / f"{name}.md"
    return path.read_text() if path.is_file() else None


def figure(relative_path: str, reports_dir: Path = REPORTS_DIR) -> Path | None:
    """A figure named in a report (relative to ``reports/``), or None when the file is missing."""
    path = reports_dir / relative_path
    return path if path.is_file() else None


# The site-calibration report's figures, as the Model card names them (the app side does not import the lab's names).
SITE_FIGURES = (
    ("sensitivity", "sensitivity"),
    ("specificity", "specificity"),
    ("accuracy", "accuracy"),
    ("ece", "ECE (15 bins)"),
    ("grey_zone_share", "grey-zone share"),
    ("accuracy_outside_grey_zone", "accuracy outside the grey zone"),
)


def _spread_text(summary: dict) -> str:
    if summary.get("median") is None:
        return "n/a"
    return f"{summary['median']:.3f} ({summary['p5']:.3f}-{summary['p95']:.3f})"


def site_calibration_rows(report: dict, size: int = 200, prevalence: str = "split") -> list[dict]:
    """Shipped and site-calibrated figures side by side at one local-sample size, from
    ``reports/site_calibration.json``: one row per figure, each "median (5th-95th percentile)" over
    the draws, on the images the profiles were not fitted on. [] when the report has no such size."""
    results = report.get("results", {}).get(str(size))
    if results is None:
        return []
    block = results["prevalence"][prevalence]
    return [
        {"figure": name, "shipped operating point": _spread_text(block["shipped"][key]),
         "site profile": _spread_text(block["site"][key])}
        for key, name in SITE_FIGURES
    ]


def site_calibration_verdict(report: dict) -> str:
    """'Must reach: 6 of 10 items met (missed: ...)', from the report's own checks."""
    rows = report.get("must_reach", [])
    missed = [f"{row['statistic']} {row['figure'].replace('_', ' ')} at {row['size']}" for row in rows if not row["met"]]
    text = f"Must reach: {len(rows) - len(missed)} of {len(rows)} items met"
    return text + (f" (missed: {'; '.join(missed)})." if missed else ".")


def stated_coverage_line(report: dict, size: int = 200) -> str | None:
    """How often a profile's own 95 % intervals held the figure later found on new images, in the
    test-split protocol at ``size`` local images, as one sentence; None when the report lacks it."""
    coverage = report.get("results", {}).get(str(size), {}).get("stated_coverage")
    if not coverage:
        return None
    shares = [entry["covered_share"] for entry in coverage.values()]
    return (
        f"Read the intervals as the least uncertainty there is: when the official test split played a site "
        f"(`reports/site_calibration.md`), a profile's own 95 % intervals from {size} local films held the figure "
        f"later found on the other films in only {min(shares):.0%}-{max(shares):.0%} of draws."
    )
