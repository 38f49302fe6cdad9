"""Shared fixtures: synthetic images and data sets, a tiny trained model, and the data/model markers.

Tests marked ``data`` read ../shared/data; tests marked ``shipped_model`` load the committed model.
They skip when those are missing, except where REQUIRE_DATA=1 (CI), where they fail instead.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_model.artifacts import DEFAULT_MODEL_PATH
from pneumo_model.data import DEFAULT_DATA_DIR

FULLRES_DIR = DEFAULT_DATA_DIR.parent / "chest_xray_fullres_sample"


def pytest_configure(config):
    config.addinivalue_line("markers", "data: needs ../shared/data (set REQUIRE_DATA=1 to fail instead of skip)")
    config.addinivalue_line("markers", "shipped_model: needs the committed model in assets/model")
    config.addinivalue_line("markers", "browser: drives Chromium (set REQUIRE_BROWSER=1 to fail instead of skip)")
    config.addinivalue_line("markers", "pacs: starts Debian's Orthanc (set REQUIRE_PACS=1 to fail instead of skip)")
    config.addinivalue_line("markers", "install: builds the wheel and installs it into a fresh venv (about 15 s)")


def _require(available: bool, what: str) -> None:
    if available:
        return
    if os.environ.get("REQUIRE_DATA") == "1":
        pytest.fail(f"{what} is missing and REQUIRE_DATA=1")
    pytest.skip(f"{what} is missing")


def pytest_runtest_setup(item):
    if item.get_closest_marker("data"):
        _require(DEFAULT_DATA_DIR.is_dir(), f"the data set at {DEFAULT_DATA_DIR}")
    if item.get_closest_marker("shipped_model"):
        _require(DEFAULT_MODEL_PATH.is_file(), f"the shipped model at {DEFAULT_MODEL_PATH}")


def synthetic_xray(rng: np.random.Generator, size: int = 64, lesion: bool = False) -> np.ndarray:
    """A grey uint8 picture: a dark background, two bright 'lungs' frame, and a bright blob if ``lesion``."""
    y, x = np.mgrid[0:size, 0:size] / size
    image = 0.25 + 0.1 * rng.standard_normal((size, size))
    image += 0.3 * (np.abs(x - 0.5) > 0.35)  # bright edges like soft tissue
    if lesion:
        cy, cx = rng.uniform(0.4, 0.7), rng.uniform(0.25, 0.75)
        image += 0.6 * np.exp(-(((y - cy) ** 2) + (x - cx) ** 2) / 0.01)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None, **save_args) -> bytes:
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save_args)
    return buffer.getvalue()


@pytest.fixture(autouse=True)
def audit_db(tmp_path, monkeypatch) -> Path:
    """Every test writes its own audit trail, never the working copy's ``audit/``."""
    path = tmp_path / "audit" / "audit.sqlite3"
    monkeypatch.setenv("PNEUMO_AUDIT_DB", str(path))
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def write_synthetic_dataset(root: Path, n_per_class: int = 24, seed: int = 0) -> Path:
    """Writes train/ and test/ folders named like the real data set; pneumonia images carry a blob."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_per_class), ("test", n_per_class // 2)):
        normal = root / split / "NORMAL"
        pneumonia = root / split / "PNEUMONIA"
        normal.mkdir(parents=True)
        pneumonia.mkdir(parents=True)
        for i in range(count):
            # Every third normal patient has two images; pneumonia patients alternate subtypes.
            patient = i // 2 if i % 3 == 0 else 100 + i
            (normal / f"IM-{patient:04d}-{i:04d}.jpeg").write_bytes(encode(synthetic_xray(rng), "JPEG", "RGB"))
            subtype = "bacteria" if i % 2 else "virus"
            (pneumonia / f"person{i // 2}_{subtype}_{i}.jpeg").write_bytes(
                encode(synthetic_xray(rng, lesion=True), "JPEG", "RGB")
            )
    return root


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("data") / "chest_xray_224")


@pytest.fixture(scope="session")
def tiny_model(synthetic_data, tmp_path_factory) -> Path:
    """A small CNN trained for a few seconds on the synthetic data; returns the .keras path."""
    from pneumo_model.lab.training import TrainConfig, train

    config = TrainConfig(
        architecture="cnn_small", input_size=32, epochs=3, batch_size=8, val_fraction=0.25, patience=3,
        learning_rate=3e-3,
    )
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    train(config, synthetic_data, path, command="pytest", progress=None, verbose=0)
    return path


@pytest.fixture(scope="session")
def tiny_pneumonet(synthetic_data, tmp_path_factory) -> Path:
    """The production architecture at 32 px, trained for 2 epochs: its head (global average pooling,
    dropout, one dense unit) gives the exported graph an exact Grad-CAM map; returns the .keras path."""
    from pneumo_model.lab.training import TrainConfig, train

    config = TrainConfig(architecture="pneumonet", input_size=32, epochs=2, batch_size=8, val_fraction=0.25, patience=2)
    path = tmp_path_factory.mktemp("pneumonet") / "tiny_pneumonet.keras"
    train(config, synthetic_data, path, command="pytest", progress=None, verbose=0)
    return path


def same_report(committed, fresh, where="report"):
    """A committed report and the one the command gives now: equal up to a relative 1e-6 on floats
    (the model runs in float32, and the same films give logits that differ by about 1e-7 from one
    CPU's kernels to another's, so a report written on one machine and recomputed on another
    differs in the 8th digit), with ``created_utc`` and the test-log count left out."""
    if isinstance(committed, dict):
        skip = {"created_utc", "test_evaluations_so_far"}
        assert set(committed) - skip == set(fresh) - skip, where
        for key in set(committed) - skip:
            same_report(committed[key], fresh[key], f"{where}.{key}")
    elif isinstance(committed, list):
        assert len(committed) == len(fresh), where
        for index, (a, b) in enumerate(zip(committed, fresh)):
            same_report(a, b, f"{where}[{index}]")
    elif isinstance(committed, float) and not isinstance(fresh, bool):
        assert fresh == pytest.approx(committed, rel=1e-6, abs=1e-9), where
    else:
        assert committed == fresh, where
