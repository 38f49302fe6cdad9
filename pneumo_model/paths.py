"""Where things are, and the hashes that name files: no heavy imports (no Keras, no NumPy).

The app, the CLI and the lab side all import their paths from here, so a page that only needs
the repository's root (the model card reading ``reports/``) does not pay for TensorFlow.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from .bundle import gate_path, grades_path, metadata_path, onnx_path, onnx_record_path  # noqa: F401 (re-exported)

REPO_ROOT = Path(__file__).resolve().parent.parent
# The shipped model and its side files. An installed package carries them inside itself
# (pyproject.toml maps the repository's assets/model to pneumo_model/shipped_model), so `pneumo predict`
# works from any folder; a repository checkout has no such folder and reads the owner's assets/model.
# The package's own copy comes first: an installed package's REPO_ROOT is site-packages, where any
# other distribution may have left an assets/ folder.
INSTALLED_MODEL_DIR = Path(__file__).resolve().parent / "shipped_model"
MODEL_DIR = INSTALLED_MODEL_DIR if INSTALLED_MODEL_DIR.is_dir() else REPO_ROOT / "assets" / "model"
DEFAULT_MODEL_PATH = MODEL_DIR / "pneumonet.keras"
DEFAULT_DATA_DIR = REPO_ROOT.parent / "shared" / "data" / "chest_xray_224"
REPORTS_DIR = REPO_ROOT / "reports"


def bytes_sha256(data: bytes) -> str:
    """SHA-256 of bytes, as 64 hex digits (the audit trail's key for an image)."""
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MB chunks (a model or a film of any size)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file in the same folder, then renames it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "w") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
