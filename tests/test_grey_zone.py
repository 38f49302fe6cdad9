"""The grey-zone rule (docs/grey_zone_rule.md): benign perturbations, the percentile, the band around
the threshold, the ``zone`` command; and that the shipped metadata's band is what the rule gives."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil

import cv2
import numpy as np
import pytest

from helpers import encode, synthetic_xray
from pneumo_model.artifacts import DEFAULT_MODEL_PATH, REPO_ROOT, metadata_path, read_metadata
from pneumo_model.calibration import GreyZone
from pneumo_model.cli import main
from pneumo_model.lab import shifts
from pneumo_model.lab.grey_zone import (
    CHANGE_LOG_NAME,
    RULE_NAME,
    GreyZoneRule,
    ZoneMeasurement,
    band_around,
    half_width,
    image_shifts,
    measure,
)
from pneumo_model.operating_point import logit

RULE = GreyZoneRule()


def _inputs(rng, size=64):
    """A synthetic X-ray, smoothed as a film is, as a model input: (size, size, 1) float32 in [0, 1],
    read-only as the pipeline's."""
    smooth = cv2.GaussianBlur(synthetic_xray(rng, size).astype(np.float32) / 255.0, (0, 0), 2.0)
    image = smooth[..., np.newaxis]
    image.flags.writeable = False
    return image


def _assert_band_around(zone: GreyZone, threshold: float, floor: float = 0.25):
    assert zone.low < threshold < zone.high
    assert logit(threshold) - logit(zone.low) >= floor - 1e-12
    assert logit(zone.high) - logit(threshold) >= floor - 1e-12


# --- the perturbations -------------------------------------------------------------------------


def test_the_rule_has_the_twelve_committed_perturbations():
    names = [name for name, _ in RULE.perturbations()]
    assert names == [
        "brightness+0.04", "brightness-0.04", "contrast_x0.9", "contrast_x1.1", "gamma_0.9", "gamma_1.1",
        "rotation+5deg", "rotation-5deg", "zoom_x0.95", "zoom_x1.05", "resolution_0.75", "jpeg_q75",
    ]
    assert (RULE.percentile, RULE.floor) == (90.0, 0.25)


@pytest.mark.parametrize("name", [name for name, _ in RULE.perturbations()])
def test_each_perturbation_keeps_shape_dtype_and_range_changes_the_image_and_not_its_input(name, rng):
    (perturb,) = [function for candidate, function in RULE.perturbations() if candidate == name]
    image = _inputs(rng)
    before = image.copy()
    out = perturb(image)
    assert out.shape == image.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert np.array_equal(image, before)
    assert not np.shares_memory(out, image)
    assert np.abs(out - image).max() > 1e-3  # it does perturb
    assert np.abs(out - image).mean() < 0.1  # and only mildly


@pytest.mark.parametrize(
    "perturb",
    [
        lambda x: shifts.add_brightness(x, 0.0),
        lambda x: shifts.scale_contrast(x, 1.0),
        lambda x: shifts.apply_gamma(x, 1.0),
        lambda x: shifts.rotate_and_zoom(x, 0.0, 1.0),
    ],
)
def test_neutral_strengths_give_the_input_back_for_a_2d_plane_too(perturb, rng):
    plane = _inputs(rng)[..., 0]
    out = perturb(plane)
    assert out.shape == plane.shape
    np.testing.assert_allclose(out, plane, atol=1e-5)


def test_perturbations_move_the_way_they_say(rng):
    image = _inputs(rng)
    assert shifts.add_brightness(image, 0.04).mean() > image.mean() > shifts.add_brightness(image, -0.04).mean()
    assert shifts.scale_contrast(image, 1.1).std() > image.std() > shifts.scale_contrast(image, 0.9).std()
    assert shifts.apply_gamma(image, 0.9).mean() > image.mean() > shifts.apply_gamma(image, 1.1).mean()
    # Zooming in on a centred bright square makes it larger.
    square = np.zeros((64, 64, 1), np.float32)
    square[24:40, 24:40] = 1.0
    assert shifts.rotate_and_zoom(square, zoom=1.05).sum() > square.sum() > shifts.rotate_and_zoom(square, zoom=0.95).sum()
    assert shifts.jpeg_reencode(square, 75).shape == square.shape


def test_bad_strengths_are_refused(rng):
    image = _inputs(rng)
    with pytest.raises(ValueError):
        shifts.apply_gamma(image, 0.0)
    with pytest.raises(ValueError):
        shifts.rotate_and_zoom(image, zoom=-1.0)


# --- the arithmetic ------------------------------------------------------------------------------


def test_an_images_shift_is_its_largest_absolute_change_over_the_perturbations_on_the_calibrated_scale():
    plain = np.array([0.0, 1.0, -2.0])
    perturbed = np.array([[0.5, 1.0, -2.0], [-1.0, 1.2, -1.0], [0.1, 0.4, -2.5]])  # (k=3, n=3)
    np.testing.assert_allclose(image_shifts(plain, perturbed, temperature=1.0), [1.0, 0.6, 1.0])
    np.testing.assert_allclose(image_shifts(plain, perturbed, temperature=0.5), [2.0, 1.2, 2.0])


def test_the_half_width_is_the_90th_percentile_of_the_shifts_without_a_predictor():
    # Eleven images whose largest changes are 0, 0.1, ..., 1.0 (spread over rows, with signs): p90 = 0.9.
    n = 11
    largest = np.linspace(0.0, 1.0, n)
    rng = np.random.default_rng(0)
    plain = rng.normal(size=n)
    perturbed = np.tile(plain, (4, 1))
    rows = rng.integers(0, 4, size=n)
    signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    perturbed[rows, np.arange(n)] += signs * largest
    perturbed[(rows + 1) % 4, np.arange(n)] += 0.5 * signs * largest  # smaller changes elsewhere do not count
    measured = ZoneMeasurement.from_logits(plain, perturbed, list("abcd"), temperature=1.0, threshold=0.3)
    assert measured.measured == pytest.approx(0.9, abs=1e-12) and measured.w == pytest.approx(0.9, abs=1e-12)
    assert not measured.facts()["floored"]
    low, high = measured.band.low, measured.band.high
    assert logit(0.3) - logit(low) == pytest.approx(0.9, abs=1e-9)
    assert logit(high) - logit(0.3) == pytest.approx(0.9, abs=1e-9)
    # The temperature divides the logits first: T = 2 halves every change.
    halved = ZoneMeasurement.from_logits(plain, perturbed, list("abcd"), temperature=2.0, threshold=0.3)
    assert halved.measured == pytest.approx(0.45, abs=1e-12)
    assert half_width(np.linspace(0.0, 1.0, n), GreyZoneRule(percentile=50.0)) == (0.5, 0.5)


@pytest.mark.parametrize("threshold", [0.01, 0.2414439374359528, 0.5, 0.97])
@pytest.mark.parametrize("measured", [0.0, 1e-6, 0.1, 0.2499, 0.7])
def test_the_band_holds_the_threshold_strictly_inside_with_edges_at_least_the_floor_away(threshold, measured):
    w, raw = half_width(np.full(10, measured))
    assert raw == pytest.approx(measured) and w == max(measured, 0.25)
    zone = band_around(threshold, w)
    _assert_band_around(zone, threshold)
    assert logit(zone.high) - logit(threshold) == pytest.approx(w, abs=1e-9)
    assert zone.contains(np.array([threshold]))[0]


def test_a_tiny_measured_shift_is_floored_and_said_so():
    measured = ZoneMeasurement.from_logits(np.zeros(5), np.full((2, 5), 1e-4), ["a", "b"], 1.0, 0.24)
    assert measured.w == 0.25 and measured.measured == pytest.approx(1e-4)
    assert measured.facts()["floored"]
    _assert_band_around(measured.band, 0.24)


def test_shares_count_the_validation_images_in_the_band_on_each_side():
    threshold = 0.5  # L = 0, w = 0.25 (floored)
    plain = np.array([-1.0, -0.2, 0.0, 0.1, 0.3, 2.0])  # calibrated logits (T = 1)
    measured = ZoneMeasurement.from_logits(plain, np.tile(plain, (1, 1)), ["none"], 1.0, threshold)
    shares = measured.shares()
    assert shares["in_band"] == pytest.approx(3 / 6)
    assert shares["in_band_below_threshold"] == pytest.approx(1 / 6)
    assert shares["in_band_above_threshold"] == pytest.approx(2 / 6)


def test_impossible_settings_are_refused():
    from pneumo_model.errors import ConfigError

    with pytest.raises(ConfigError):
        GreyZoneRule(floor=0.0)
    with pytest.raises(ConfigError):
        band_around(1.0, 0.3)
    with pytest.raises(ConfigError):
        half_width(np.array([]))


# --- measured through the pipeline, with a predictor made of arithmetic --------------------------


class _MeanBrightness:
    """A stand-in predictor: logit = 10 * (mean of the input - 0.5)."""

    input_size, batch_size = 32, 3

    def logits(self, images):
        images = np.asarray(images, dtype=np.float64)
        assert images.shape[1:] == (32, 32, 1)
        return 10.0 * (images.mean(axis=(1, 2, 3)) - 0.5)


def test_measure_decodes_each_file_through_the_pipeline_and_perturbs_its_model_input(tmp_path, rng):
    paths = []
    for i in range(7):  # not a multiple of the batch size
        path = tmp_path / f"image{i}.png"
        path.write_bytes(encode(synthetic_xray(rng, 96)))
        paths.append(path)
    measured = measure(_MeanBrightness(), paths, temperature=2.0, threshold=0.3)
    assert measured.changes.shape == (12, 7)
    brightness = measured.names.index("brightness+0.04")
    # The mean moves by at most 0.04 (less where pixels clip), so the calibrated logit by at most 10 * 0.04 / 2.
    assert np.all(measured.changes[brightness] <= 0.2 + 1e-6) and measured.changes[brightness].max() > 0.1
    assert measured.w >= 0.25
    _assert_band_around(measured.band, 0.3)
    facts = measured.facts()
    assert facts["name"] == RULE_NAME and facts["n_images"] == 7 and facts["split"] == "validation"


# --- a trained model and the zone command on it (synthetic data) ---------------------------------


def test_training_applies_the_rule_and_zone_write_reproduces_its_band(tiny_model, synthetic_data, tmp_path, capsys):
    trained = read_metadata(tiny_model)
    assert trained.grey_zone_rule["name"] == RULE_NAME
    _assert_band_around(GreyZone(*trained.grey_zone), trained.threshold)

    model = tmp_path / "copy.keras"
    shutil.copy(tiny_model, model)
    facts = json.loads(metadata_path(tiny_model).read_text())
    facts["grey_zone"] = [0.01, trained.threshold]  # a band of the older, one-sided kind
    metadata_path(model).write_text(json.dumps(facts, indent=2) + "\n")
    weights = model.read_bytes()
    reports = tmp_path / "reports"

    code = main(["zone", "--model", str(model), "--data", str(synthetic_data), "--write", "--reports", str(reports)])
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert code == 0 and "grey_zone" in summary["changed"]
    written = read_metadata(model)
    np.testing.assert_allclose(written.grey_zone, trained.grey_zone, rtol=0, atol=1e-9)
    assert written.model_sha256 == trained.model_sha256 and model.read_bytes() == weights
    assert (written.temperature, written.threshold) == (trained.temperature, trained.threshold)
    assert written.grey_zone_rule["w"] == pytest.approx(trained.grey_zone_rule["w"], abs=1e-9)
    log = [json.loads(line) for line in (reports / CHANGE_LOG_NAME).read_text().splitlines()]
    (zone_change,) = [entry for entry in log if entry["field"] == "grey_zone"]
    assert zone_change["old"] == [0.01, trained.threshold] and zone_change["new"] == list(written.grey_zone)
    assert zone_change["model_sha256"] == trained.model_sha256 and zone_change["command"].startswith("python -m pneumo_model zone")


# --- the shipped model on the real data ----------------------------------------------------------


def _file_digests() -> dict:
    folders = (REPO_ROOT / "assets" / "model", REPO_ROOT / "reports")
    return {
        path: hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in folders
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def shipped_zone():
    """``python -m pneumo_model zone`` on the shipped model (no --write): its JSON line, and the
    digests of the model and report files before and after."""
    before = _file_digests()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["zone"])
    return code, json.loads(out.getvalue().splitlines()[-1]), before, _file_digests()


@pytest.mark.data
@pytest.mark.shipped_model
def test_zone_without_write_changes_no_file(shipped_zone):
    code, summary, before, after = shipped_zone
    assert code == 0 and "changed" not in summary
    assert after == before


@pytest.mark.data
@pytest.mark.shipped_model
def test_the_shipped_grey_zone_is_what_the_rule_gives_on_validation(shipped_zone):
    _, summary, _, _ = shipped_zone
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    # 1e-6: the validation logits are recomputed in float32 on this machine's CPU kernels (about
    # 1e-7 from the machine that wrote the metadata); a band that moved would move far more.
    np.testing.assert_allclose(metadata.grey_zone, summary["grey_zone"], rtol=0, atol=1e-6)
    _assert_band_around(GreyZone(*metadata.grey_zone), metadata.threshold)
    assert metadata.grey_zone_rule["name"] == RULE_NAME
    assert metadata.grey_zone_rule["n_images"] == summary["n_images"] == metadata.validation["n"]
    assert metadata.grey_zone_rule["w"] == pytest.approx(summary["w"], abs=1e-6)
