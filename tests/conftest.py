"""Shared fixtures: synthetic data sets, a tiny trained model, and the data/model markers. The
helpers tests import (synthetic images, ``same_report``) are in ``helpers.py``: a test imports from
there, never from this file (pytest loads it as a plugin, not as a module to import).

Tests marked ``data`` read ../shared/data; tests marked ``shipped_model`` load the committed model.
They skip when those are missing, except where REQUIRE_DATA=1 (CI), where they fail instead.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pneumo_model.artifacts import DEFAULT_MODEL_PATH
from pneumo_model.data import DEFAULT_DATA_DIR

from helpers import write_synthetic_dataset


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


@pytest.fixture(autouse=True)
def audit_db(tmp_path, monkeypatch) -> Path:
    """Every test writes its own audit trail, never the working copy's ``audit/``."""
    path = tmp_path / "audit" / "audit.sqlite3"
    monkeypatch.setenv("PNEUMO_AUDIT_DB", str(path))
    return path


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


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


@pytest.fixture(scope="session")
def tiny_subtype(tiny_pneumonet, synthetic_data, tmp_path_factory) -> Path:
    """A copy of ``tiny_pneumonet`` with a subtype pattern network trained beside it in seconds
    (``<model>.subtype.keras`` and its ONNX graph); returns the main model's .keras path."""
    import shutil

    from pneumo_model.bundle import subtype_model_path
    from pneumo_model.lab.subtype_training import train_subtype
    from pneumo_model.lab.training import TrainConfig

    folder = tmp_path_factory.mktemp("with_subtype")
    for side in tiny_pneumonet.parent.glob(tiny_pneumonet.stem + ".*"):
        shutil.copy(side, folder / side.name)
    model_path = folder / tiny_pneumonet.name
    config = TrainConfig(
        architecture="pneumonet", input_size=32, epochs=2, batch_size=4, val_fraction=0.25, patience=2,
        imbalance="class_weight",
    )
    train_subtype(config, synthetic_data, subtype_model_path(model_path), command="pytest", verbose=0)
    return model_path
