"""The run time on ONNX Runtime: the exported graph belongs to its model, answers as Keras does, and a
missing, altered or foreign graph is refused with the command that makes it (never a fall back to
TensorFlow)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo_model import cli
from pneumo_model.artifacts import DEFAULT_MODEL_PATH, read_metadata
from pneumo_model.errors import ExplanationError, ModelFileError
from pneumo_model.onnx_model import EXPORT_COMMAND, OnnxModel, OnnxRecord, onnx_path, onnx_record_path
from pneumo_model.paths import REPO_ROOT, file_sha256

SAMPLE = REPO_ROOT / "assets" / "samples" / "person100_bacteria_475.jpeg"
LAB_ONLY = {"tensorflow-cpu", "tensorflow", "keras", "tf2onnx", "onnx"}


def pins(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {re.split(r"[\[=]", line)[0].lower(): line for line in lines}


def test_the_serve_requirements_pin_what_requirements_pins_less_tensorflow_and_the_exporter():
    everything, serve = pins(REPO_ROOT / "requirements.txt"), pins(REPO_ROOT / "requirements-serve.txt")
    assert "onnxruntime" in serve and not LAB_ONLY & set(serve)
    assert {name: everything.get(name) for name in serve} == serve  # same versions, nothing unknown
    assert LAB_ONLY - {"tensorflow"} <= set(everything)


@pytest.fixture
def model_copy(tmp_path) -> Path:
    """The shipped model's files in a folder of their own, to spoil one at a time."""
    for path in DEFAULT_MODEL_PATH.parent.glob(DEFAULT_MODEL_PATH.stem + ".*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / DEFAULT_MODEL_PATH.name


def refusal(model_path: Path) -> str:
    from pneumo_model.prediction import Predictor

    with pytest.raises(ModelFileError) as error:
        Predictor.from_file(model_path)
    assert EXPORT_COMMAND in str(error.value)
    return str(error.value)


@pytest.mark.shipped_model
def test_the_shipped_graph_was_exported_from_the_shipped_model_and_is_unaltered():
    record = OnnxRecord.load(onnx_record_path(DEFAULT_MODEL_PATH))
    assert record.model_sha256 == read_metadata(DEFAULT_MODEL_PATH).model_sha256
    assert record.onnx_sha256 == file_sha256(onnx_path(DEFAULT_MODEL_PATH))
    assert record.cam_refusal is None and record.gradcam_layer == "features"
    assert onnx_path(DEFAULT_MODEL_PATH).stat().st_size < 5_000_000


@pytest.mark.shipped_model
def test_a_missing_graph_is_refused_with_the_command_that_makes_it(model_copy):
    onnx_path(model_copy).unlink()
    assert "is missing" in refusal(model_copy)


@pytest.mark.shipped_model
def test_a_missing_record_is_refused_with_the_command_that_makes_it(model_copy):
    onnx_record_path(model_copy).unlink()
    assert "is missing" in refusal(model_copy)


@pytest.mark.shipped_model
def test_an_altered_graph_is_refused(model_copy):
    with open(onnx_path(model_copy), "ab") as handle:
        handle.write(b"\0")
    assert "changed or replaced" in refusal(model_copy)


@pytest.mark.shipped_model
def test_a_graph_exported_from_another_model_is_refused(model_copy):
    record = json.loads(onnx_record_path(model_copy).read_text())
    record["model_sha256"] = "0" * 64
    onnx_record_path(model_copy).write_text(json.dumps(record))
    assert "made for model 000000000000, not for the model in use" in refusal(model_copy)


@pytest.mark.shipped_model
def test_a_graph_stamped_for_another_model_is_refused_even_with_a_matching_record(model_copy):
    import onnx

    proto = onnx.load(str(onnx_path(model_copy)))
    (stamp,) = [entry for entry in proto.metadata_props if entry.key == "model_sha256"]
    stamp.value = "f" * 64
    onnx.save(proto, str(onnx_path(model_copy)))
    record = json.loads(onnx_record_path(model_copy).read_text())
    record["onnx_sha256"] = file_sha256(onnx_path(model_copy))
    onnx_record_path(model_copy).write_text(json.dumps(record))
    assert "says it was exported from model ffffffffffff" in refusal(model_copy)


@pytest.mark.shipped_model
def test_an_unreadable_record_is_refused(model_copy):
    onnx_record_path(model_copy).write_text("{not json")
    assert "cannot be read" in refusal(model_copy)


@pytest.mark.shipped_model
def test_predict_without_the_graph_stops_with_a_plain_message_and_no_fall_back(model_copy, capsys):
    onnx_path(model_copy).unlink()
    assert cli.main(["predict", str(SAMPLE), "--model", str(model_copy)]) == cli.EXIT_ERROR
    captured = capsys.readouterr()
    assert captured.out == ""  # no call was made by another engine
    assert captured.err.startswith("error: ") and EXPORT_COMMAND in captured.err and "Traceback" not in captured.err


@pytest.mark.shipped_model
def test_the_keras_runtime_is_asked_for_by_name_and_an_unknown_one_is_refused():
    from pneumo_model.errors import ConfigError
    from pneumo_model.prediction import Predictor

    with pytest.raises(ConfigError, match="onnx, keras"):
        Predictor.from_file(DEFAULT_MODEL_PATH, runtime="torch")
    assert Predictor.from_file(DEFAULT_MODEL_PATH).runtime == "onnx"


@pytest.mark.shipped_model
def test_the_graph_computes_grad_cam_on_its_exported_layer_only():
    from pneumo_model.explain import GradCam
    from pneumo_model.prediction import Predictor

    predictor = Predictor.from_file(DEFAULT_MODEL_PATH)
    with pytest.raises(ExplanationError, match="exported graph computes Grad-CAM on features"):
        GradCam(predictor.model, "block1_relu2")


@pytest.mark.shipped_model
def test_the_graph_answers_as_keras_on_random_inputs_logits_summaries_and_maps():
    from pneumo_model.explain import GradCam
    from pneumo_model.ood import ActivationSummaries
    from pneumo_model.prediction import Predictor

    onnx = Predictor.from_file(DEFAULT_MODEL_PATH)
    keras_side = Predictor.from_file(DEFAULT_MODEL_PATH, runtime="keras")
    images = np.random.default_rng(7).random((9, 128, 128, 1), dtype=np.float32)
    logits, summaries = onnx.model.logits_and_summaries(images, onnx.gate.layers)
    expected_logits, expected_summaries = ActivationSummaries(keras_side.model, onnx.gate.layers)(images)
    assert np.max(np.abs(logits - expected_logits)) <= 1e-5
    for got, expected in zip(summaries, expected_summaries):
        assert np.allclose(got, expected, rtol=1e-4, atol=1e-5)
    maps = GradCam(onnx.model, "features").raw_heatmaps(images)
    expected_maps = GradCam(keras_side.model, "features").raw_heatmaps(images)
    assert maps.shape == expected_maps.shape == (9, 128, 128) and maps.max() > 0
    assert np.max(np.abs(maps - expected_maps)) <= 1e-5


def test_a_head_that_is_not_pooling_and_one_dense_unit_is_refused_for_grad_cam():
    import keras

    from pneumo_model.lab.onnx_export import cam_channel_weights

    inputs = keras.Input((16, 16, 1))
    features = keras.layers.Conv2D(4, 3, padding="same", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    hidden = keras.layers.Dense(8, activation="relu")(pooled)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    with pytest.raises(ModelFileError, match="not global average pooling, dropout and one dense unit"):
        cam_channel_weights(model, ["features"])
    exact = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Dropout(0.3)(pooled)))
    (weights,) = cam_channel_weights(exact, ["features"])
    assert np.allclose(weights, exact.layers[-1].get_weights()[0].reshape(-1) / (16 * 16))


def test_training_writes_the_graph_beside_the_model_and_it_scores_as_keras(tiny_model):
    from pneumo_model.explain import GradCam
    from pneumo_model.prediction import Predictor

    assert onnx_path(tiny_model).is_file() and onnx_record_path(tiny_model).is_file()
    onnx = Predictor.from_file(tiny_model)
    assert isinstance(onnx.model, OnnxModel)
    images = np.random.default_rng(3).random((5, 32, 32, 1), dtype=np.float32)
    assert np.max(np.abs(onnx.logits(images) - Predictor.from_file(tiny_model, runtime="keras").logits(images))) <= 1e-5
    # cnn_small ends in flatten and dense layers: no exact class activation map, said plainly.
    with pytest.raises(ExplanationError, match="no Grad-CAM map"):
        GradCam(onnx.model, onnx.metadata.gradcam_layer)


@pytest.mark.data
@pytest.mark.shipped_model
def test_both_engines_agree_on_every_validation_and_test_film():
    from pneumo_model.data import DEFAULT_DATA_DIR, model_split
    from pneumo_model.lab.onnx_export import parity

    split = model_split(read_metadata(DEFAULT_MODEL_PATH), DEFAULT_DATA_DIR)
    paths = [sample.path for sample in split.validation + split.test]
    result = parity(DEFAULT_MODEL_PATH, paths)
    assert result["films"] == len(paths) > 1000
    assert result["max_abs_logit_difference"] <= 1e-5
    assert result["max_abs_probability_difference"] <= 1e-5
    assert result["max_rel_gate_score_difference"] <= 1e-4  # stated tolerance: docs/onnx.md
    assert result["max_abs_cam_difference"] <= 1e-5  # in logit units, as the heat-map scale
    assert (result["changed_calls"], result["changed_grey_zone_flags"], result["changed_gate_flags"],
            result["changed_gate_grades"]) == (0, 0, 0, 0)


@pytest.mark.shipped_model
def test_a_gate_reading_a_layer_the_graph_does_not_summarise_is_refused_when_loading(model_copy):
    import dataclasses

    from pneumo_model.ood import OodGate, gate_path
    from pneumo_model.prediction import Predictor

    gate = OodGate.load(gate_path(model_copy))
    other = dataclasses.replace(gate, layers=(*gate.layers[:-1], "block2_relu1"), grades=None)
    with pytest.raises(ModelFileError, match=r"no summary of layer\(s\) block2_relu1.*export-onnx"):
        Predictor(Predictor.from_file(model_copy).model, read_metadata(model_copy), gate=other)


def test_the_class_activation_map_of_an_ensemble_is_its_grad_cam():
    import cv2
    import keras

    from pneumo_model.explain import GradCam
    from pneumo_model.lab.models import average_logits, build_pneumonet
    from pneumo_model.lab.onnx_export import cam_channel_weights

    keras.utils.set_random_seed(5)
    ensemble = average_logits([build_pneumonet(32, widths=(8, 8, 8)), build_pneumonet(32, widths=(8, 8, 8))])
    names = ("features", "m1_features")
    images = np.random.default_rng(5).random((3, 32, 32, 1), dtype=np.float32)
    features = keras.Model(ensemble.inputs, [ensemble.get_layer(name).output for name in names])(images, training=False)
    cells = sum(np.einsum("bhwc,c->bhw", np.asarray(f), w) for f, w in zip(features, cam_channel_weights(ensemble, names)))
    maps = np.stack([cv2.resize(np.maximum(cell, 0).astype(np.float32), (32, 32), interpolation=cv2.INTER_LINEAR) for cell in cells])
    expected = GradCam(ensemble, names).raw_heatmaps(images)
    assert expected.max() > 0
    np.testing.assert_allclose(maps, expected, atol=1e-6 * max(1.0, float(expected.max())))
