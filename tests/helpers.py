"""What tests share besides fixtures: synthetic X-rays and their encodings, the data set they make,
the full-resolution sample's folder, and the comparison of a committed report with a fresh one.
Tests import these from here (``from helpers import encode``); fixtures stay in ``conftest.py``.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumo_model.data import DEFAULT_DATA_DIR

FULLRES_DIR = DEFAULT_DATA_DIR.parent / "chest_xray_fullres_sample"


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


def calling_every_film(predictor, label: str):
    """``predictor`` (a ``Predictor``) at an operating point that calls every film ``label``
    ("pneumonia" or "normal"), so that a test gets both calls from a tiny model whatever it learned."""
    from dataclasses import replace

    from pneumo_model.calibration import GreyZone

    threshold = 0.0 if label == "pneumonia" else 1.5
    point = replace(predictor.operating_point, id=f"every-{label}", kind="site", threshold=threshold,
                    grey_zone=GreyZone(threshold, threshold))
    return predictor.with_operating_point(point)
