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
