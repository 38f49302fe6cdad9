"""The subtype pattern's map (issue 27): Grad-CAM of the viral logit or of its negative, drawn on
its own fixed scale fitted on validation pneumonia films by ``docs/heatmap_scale.md`` ("The
radiographic pattern's map"), saved as ``<model>.subtype.cam.json`` and checked against the
subtype model's SHA-256."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pneumo_model.bundle import SUBTYPE_HEATMAP_SCALE, subtype_heatmap_scale_path, subtype_model_path
from pneumo_model.cli import main
from pneumo_model.data import model_split
from pneumo_model.errors import ExplanationError, ModelFileError
from pneumo_model.explain import GradCam, HeatmapScale, LimeConfig
from pneumo_model.lab.cam_scale import measure_subtype
from pneumo_model.lab.evaluation import call_files
from pneumo_model.prediction import Predictor
from pneumo_model.subtype import VIRAL, SubtypeModel


@pytest.fixture(scope="module")
def subtype(tiny_subtype) -> SubtypeModel:
    return SubtypeModel.load(tiny_subtype, runtime="onnx")


@pytest.fixture(scope="module")
def fitted(tiny_subtype, synthetic_data) -> HeatmapScale:
    return measure_subtype(tiny_subtype, synthetic_data)


def test_the_negative_map_is_the_flipped_weighted_sum_on_both_paths(tiny_subtype, subtype, rng):
    import cv2

    images = rng.random((3, 32, 32, 1), dtype=np.float32)
    cells = subtype.model.cam(images)  # (3, h, w): the weighted sum before the ReLU
    keras_subtype = SubtypeModel.load(tiny_subtype, runtime="keras")
    layer = subtype.metadata.gradcam_layer
    maps = {}
    for sign in (1, -1):
        maps[sign] = GradCam(subtype.model, layer, sign=sign).raw_heatmaps(images)
        keras_maps = GradCam(keras_subtype.model, layer, sign=sign).raw_heatmaps(images)
        np.testing.assert_allclose(maps[sign], keras_maps, atol=1e-4 * max(1.0, float(keras_maps.max())))
    # relu(x) - relu(-x) = x and the resizing is linear: the two maps split the weighted sum by its sign.
    resized = np.stack([cv2.resize(cell, (32, 32), interpolation=cv2.INTER_LINEAR) for cell in cells])
    np.testing.assert_allclose(maps[1] - maps[-1], resized, rtol=1e-5, atol=1e-7)
    with pytest.raises(ExplanationError, match="sign"):
        GradCam(subtype.model, layer, sign=0)


def test_the_scale_follows_the_rule_on_validation_pneumonia_films_only(tiny_subtype, synthetic_data, subtype, fitted):
    validation = model_split(subtype.metadata, synthetic_data).validation
    films = [sample for sample in validation if sample.label == 1]
    viral = np.array([sample.subtype == VIRAL for sample in films])
    assert viral.any() and (~viral).any()
    _, inputs = call_files(Predictor(subtype.model, subtype.metadata), [sample.path for sample in films])
    maps = {sign: GradCam(subtype.model, subtype.metadata.gradcam_layer, sign=sign).raw_heatmaps(inputs) for sign in (1, -1)}
    own = np.concatenate([maps[1][viral].ravel(), maps[-1][~viral].ravel()])  # each film's own direction
    other = np.concatenate([maps[1][~viral].max(axis=(1, 2)), maps[-1][viral].max(axis=(1, 2))])
    assert fitted.gradcam_scale == pytest.approx(float(np.quantile(own, 0.99)), rel=1e-5)
    assert fitted.gradcam_weak_below == pytest.approx(float(np.quantile(other, 0.95)), rel=1e-5)
    assert fitted.model_sha256 == subtype.metadata.model_sha256
    assert (fitted.facts["n_viral"], fitted.facts["n_bacterial"]) == (int(viral.sum()), int((~viral).sum()))
    # No normal film was used: the films counted are the validation pneumonia films, all of them.
    assert fitted.facts["n_viral"] + fitted.facts["n_bacterial"] == sum(sample.label == 1 for sample in validation)
    # The pattern map has no LIME part, and judges no LIME settings.
    assert fitted.lime_small_below is None and not fitted.judges_lime(LimeConfig())


def test_the_command_writes_it_beside_the_subtype_model_and_a_stale_one_is_refused(tiny_subtype, synthetic_data, fitted, tmp_path, capsys):
    model = tmp_path / tiny_subtype.name  # a copy: the fixture's folder stays as it is
    for path in tiny_subtype.parent.glob(tiny_subtype.stem + ".*"):
        shutil.copy(path, tmp_path / path.name)
    code = main(["heatmap-scale", "--subtype", "--model", str(model), "--data", str(synthetic_data)])
    printed = json.loads(capsys.readouterr().out.splitlines()[-1])
    written = subtype_heatmap_scale_path(model)
    assert code == 0 and written.name == "tiny_pneumonet.subtype.cam.json" and printed["scale"] == str(written)
    assert written.parent == subtype_model_path(model).parent
    sha = SubtypeModel.load(model).metadata.model_sha256
    loaded = HeatmapScale.load(written, sha, SUBTYPE_HEATMAP_SCALE)
    assert loaded == fitted
    assert loaded.gradcam_scale == pytest.approx(printed["gradcam_scale"], rel=1e-6)
    # The main model's scale beside it was not touched, and the main model's SHA is refused for this file.
    with pytest.raises(ModelFileError, match="pattern map's heat-map scale .* was made for model") as refused:
        HeatmapScale.load(written, "0" * 64, SUBTYPE_HEATMAP_SCALE)
    assert "heatmap-scale --subtype" in str(refused.value)
