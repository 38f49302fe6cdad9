"""The out-of-distribution gate: fitting, saving, wiring into the Predictor, and the shipped gate."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from helpers import encode, synthetic_xray
from pneumo_model.artifacts import DEFAULT_MODEL_PATH, REPO_ROOT, load_model, read_metadata
from pneumo_model.crop import apply_crop, find_diaphragm
from pneumo_model.errors import ModelFileError
from pneumo_model.lab.ood_fit import fit_gate
from pneumo_model.lab.onnx_export import export_onnx
from pneumo_model.ood import ActivationSummaries, OodConfig, OodGate, gate_path
from pneumo_model.prediction import Predictor
from pneumo_model.preprocessing import load_image, preprocess

TINY_CONFIG = OodConfig(layers=("conv1", "conv2"), thumbnail=8)
SAMPLES = sorted((REPO_ROOT / "assets" / "samples").glob("*.jpeg"))


def synthetic_inputs(seed: int, count: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    images = [cv2.resize(synthetic_xray(rng, 64, lesion=bool(i % 2)), (size, size), interpolation=cv2.INTER_AREA) for i in range(count)]
    return np.stack(images)[..., np.newaxis]  # (count, size, size, 1) uint8


@pytest.fixture(scope="module")
def tiny_gate(tiny_model, tmp_path_factory):
    """The tiny model copied to a fresh folder with a gate fitted beside it."""
    folder = tmp_path_factory.mktemp("gated")
    model_path = folder / "tiny.keras"
    shutil.copy(tiny_model, model_path)
    shutil.copy(tiny_model.with_suffix(".json"), folder / "tiny.json")
    model, metadata = load_model(model_path)
    gate = fit_gate(model, metadata.model_sha256, synthetic_inputs(1, 200), synthetic_inputs(2, 200), TINY_CONFIG)
    gate.save(gate_path(model_path))
    export_onnx(model_path)  # the graph the run time scores with, summarising the gate's layers
    return model_path, gate


def test_threshold_lets_the_set_share_of_validation_images_pass(tiny_gate):
    model_path, gate = tiny_gate
    assert gate.facts["validation_pass_rate"] >= 0.99
    assert gate.facts["validation_cropped_pass_rate"] >= 0.98
    assert gate.detectors == ("activations:conv1", "activations:conv2", "layout", "sharpness", "colour")
    predictor = Predictor.from_file(model_path)
    validation = synthetic_inputs(2, 200)
    scores = [predictor.predict_input(image.astype(np.float32) / 255, _grey_info()).ood_score for image in validation]
    assert np.mean(np.array(scores) <= 1.0) >= 0.99


def _grey_info(colour_spread: float = 0.0):
    from pneumo_model.preprocessing import ImageInfo

    return ImageInfo(width=32, height=32, bit_depth=8, format="PNG", colour_spread=colour_spread)


def test_noise_and_colour_are_flagged_and_fresh_xrays_pass(tiny_gate):
    model_path, _ = tiny_gate
    predictor = Predictor.from_file(model_path)
    noise = np.random.default_rng(5).random((32, 32, 1), dtype=np.float32)
    assert predictor.predict_input(noise, _grey_info()).ood is True
    fresh = synthetic_inputs(9, 1)[0].astype(np.float32) / 255
    assert predictor.predict_input(fresh, _grey_info()).ood is False
    tinted = predictor.predict_input(fresh, _grey_info(colour_spread=40.0))
    assert tinted.ood is True and tinted.ood_score > 1.0


def test_saved_gate_loads_with_the_same_scores_and_without_pickle(tiny_gate):
    model_path, gate = tiny_gate
    loaded = OodGate.load(gate_path(model_path))
    with np.load(gate_path(model_path), allow_pickle=False) as data:
        assert all(data[name].dtype != object for name in data.files)
    model, _ = load_model(model_path)
    images = synthetic_inputs(3, 20)
    summaries = ActivationSummaries(model, gate.layers)(images)[1]
    colour = np.zeros(len(images))
    np.testing.assert_allclose(loaded.scores(images, summaries, colour), gate.scores(images, summaries, colour), rtol=1e-5)
    assert loaded.threshold == gate.threshold and loaded.model_sha256 == gate.model_sha256


def test_predict_record_carries_ood_flag_and_score(tiny_gate, tmp_path):
    model_path, _ = tiny_gate
    path = tmp_path / "x.png"
    path.write_bytes(encode(synthetic_xray(np.random.default_rng(4), 64)))
    record = Predictor.from_file(model_path).predict_source(path).to_record(str(path))
    assert isinstance(record["ood"], bool) and record["ood_score"] > 0
    assert record["ood"] == (record["ood_score"] > 1.0)


def test_a_gate_of_another_model_or_a_damaged_gate_is_refused(tiny_gate, tmp_path):
    model_path, gate = tiny_gate
    model, metadata = load_model(model_path)
    other = OodGate(**{**gate.__dict__, "model_sha256": "f" * 64})
    with pytest.raises(ModelFileError, match="fitted for model ffffffffffff"):
        Predictor(model, metadata, gate=other)
    damaged = tmp_path / "damaged.ood.npz"
    damaged.write_bytes(gate_path(model_path).read_bytes()[:500])
    with pytest.raises(ModelFileError, match="cannot be read"):
        OodGate.load(damaged)
    with pytest.raises(ModelFileError, match="no layer nope"):
        ActivationSummaries(model, ("conv1", "nope"))


def test_fitting_and_scoring_change_neither_the_model_nor_the_images(tiny_gate):
    model_path, gate = tiny_gate
    model, metadata = load_model(model_path)
    weights = [w.copy() for w in model.get_weights()]
    train, validation = synthetic_inputs(1, 40), synthetic_inputs(2, 40)
    before = (train.copy(), validation.copy())
    fit_gate(model, metadata.model_sha256, train, validation, TINY_CONFIG)
    Predictor(model, metadata, gate=gate).predict_inputs(validation.astype(np.float32) / 255, [_grey_info()] * 40)
    assert all(np.array_equal(a, b) for a, b in zip(weights, model.get_weights()))
    assert np.array_equal(train, before[0]) and np.array_equal(validation, before[1])


def test_a_nan_score_counts_as_out_of_distribution(tiny_gate):
    model_path, gate = tiny_gate
    model, metadata = load_model(model_path)
    broken = OodGate(**{**gate.__dict__, "scales": np.full_like(gate.scales, np.nan)})
    prediction = Predictor(model, metadata, gate=broken).predict_input(synthetic_inputs(9, 1)[0].astype(np.float32) / 255, _grey_info())
    assert np.isnan(prediction.ood_score) and prediction.ood is True


def test_training_over_a_model_removes_its_stale_gate(tiny_gate, synthetic_data, tmp_path):
    from pneumo_model.lab.training import TrainConfig, train

    model_path = tmp_path / "m.keras"
    gate_path(model_path).write_bytes(gate_path(tiny_gate[0]).read_bytes())
    config = TrainConfig(architecture="cnn_small", input_size=32, epochs=1, batch_size=8, val_fraction=0.25, patience=1)
    train(config, synthetic_data, model_path, command="pytest", progress=None, verbose=0)
    assert not gate_path(model_path).exists()
    Predictor.from_file(model_path)  # loads: no gate of another model in the way


def test_fit_for_model_fits_on_the_models_own_split_and_refuses_other_data(tiny_model, synthetic_data, tmp_path):
    from pneumo_model.data import model_split
    from pneumo_model.errors import DataError
    from pneumo_model.lab.ood_fit import fit_for_model

    model_path = tmp_path / "tiny.keras"
    shutil.copy(tiny_model, model_path)
    shutil.copy(tiny_model.with_suffix(".json"), tmp_path / "tiny.json")
    gate = fit_for_model(model_path, synthetic_data, TINY_CONFIG)
    split = model_split(read_metadata(model_path), synthetic_data)
    assert gate.facts["train_images"] == len(split.train) and gate.facts["validation_images"] == len(split.validation)
    assert Predictor.from_file(model_path).gate.threshold == pytest.approx(gate.threshold)
    changed = shutil.copytree(synthetic_data, tmp_path / "changed")
    sorted((changed / "train" / "NORMAL").iterdir())[0].unlink()
    with pytest.raises(DataError, match="differs from the data model"):
        fit_for_model(model_path, changed, TINY_CONFIG)


def test_odd_sized_layers_and_empty_batches_are_refused_plainly(tiny_gate):
    model, _ = load_model(tiny_gate[0])
    summaries = ActivationSummaries(model, ("conv1",))
    with pytest.raises(ValueError, match="no images"):
        summaries(np.empty((0, 32, 32, 1), np.float32))
    import keras

    odd = keras.Sequential([keras.Input((31, 31, 1)), keras.layers.Conv2D(2, 3, name="c"), keras.layers.Flatten(), keras.layers.Dense(1)])
    with pytest.raises(ModelFileError, match="odd height or width"):
        ActivationSummaries(odd, ("c",))


def test_the_corpus_has_every_category_with_at_least_ten_files():
    from pneumo_model.lab.ood_corpus import CATEGORIES, build_corpus

    xrays = [load_image(path)[0] for path in SAMPLES]
    corpus = build_corpus([*xrays, np.ascontiguousarray(xrays[0][:, ::-1])][:10])
    assert tuple(corpus) == CATEGORIES
    for name, files in corpus.items():
        assert len(files) >= 10, name
        assert len({data for _, data in files}) == len(files), f"{name} has duplicate files"


def test_a_model_without_a_gate_scores_with_ood_unknown(tiny_model, tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(encode(synthetic_xray(np.random.default_rng(4), 64)))
    prediction = Predictor.from_file(tiny_model).predict_source(path)
    assert prediction.ood is None and prediction.ood_score is None


# --- The shipped gate -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    return Predictor.from_file(DEFAULT_MODEL_PATH)


def _png(pixels: np.ndarray) -> bytes:
    return encode(np.ascontiguousarray(pixels))


@pytest.mark.shipped_model
def test_shipped_gate_belongs_to_the_shipped_model(shipped):
    assert shipped.gate is not None
    assert shipped.gate.model_sha256 == read_metadata(DEFAULT_MODEL_PATH).model_sha256
    assert shipped.gate.facts["validation_pass_rate"] >= 0.99


@pytest.mark.shipped_model
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda path: path.name)
def test_demo_images_pass_whole_and_diaphragm_cropped(shipped, sample):
    pixels, info = load_image(sample)
    assert shipped.predict_source(sample).ood is False
    found = find_diaphragm(pixels)
    assert found.found
    cropped = preprocess(apply_crop(pixels, found.box), shipped.input_size)
    assert shipped.predict_input(cropped, info).ood is False


@pytest.mark.shipped_model
@pytest.mark.parametrize(
    "change",
    [
        lambda pixels: 255 - pixels,
        lambda pixels: cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE),
        lambda pixels: cv2.resize(pixels[40:110, 60:130], (400, 400), interpolation=cv2.INTER_CUBIC),
        lambda pixels: np.random.default_rng(0).integers(0, 256, pixels.shape, dtype=np.uint8),
    ],
    ids=["inverted", "rotated", "tight_crop", "noise"],
)
def test_changed_demo_images_are_flagged(shipped, change):
    for sample in SAMPLES[:3]:
        pixels, _ = load_image(sample)
        prediction = shipped.predict_source(_png(change(pixels)))
        assert prediction.ood is True, f"{sample.name}: ood_score {prediction.ood_score:.2f}"


@pytest.mark.shipped_model
def test_a_colour_photo_of_a_demo_image_is_flagged(shipped):
    pixels, _ = load_image(SAMPLES[0])
    tinted = np.stack([pixels * 0.7, pixels * 0.85, pixels], axis=-1).astype(np.uint8)  # bluish cast
    prediction = shipped.predict_source(encode(tinted, "JPEG"))
    assert prediction.info.colour_spread > 6 and prediction.ood is True


@pytest.mark.data
@pytest.mark.shipped_model
def test_committed_ood_report_matches_the_shipped_gate_and_meets_the_targets(shipped):
    from pneumo_model.data import DEFAULT_DATA_DIR, scan_split

    report = json.loads((REPO_ROOT / "reports" / "ood.json").read_text())
    assert report["model_sha256"] == shipped.metadata.model_sha256
    assert report["gate"]["threshold"] == pytest.approx(shipped.gate.threshold, rel=1e-9)
    assert report["test_split"]["pass_rate"] >= 0.98
    assert report["test_split"]["diaphragm_cropped_pass_rate"] >= 0.98
    for name, category in report["categories"].items():
        assert category["images"] >= 10, name
        assert category["detection_rate"] >= 0.95, name
    samples = scan_split(DEFAULT_DATA_DIR, "test")
    flagged = sorted(s.path.name for s in samples if shipped.predict_source(s.path).ood)
    assert flagged == sorted(f["file"] for f in report["test_split"]["flagged_files"])
    assert 1 - len(flagged) / len(samples) == pytest.approx(report["test_split"]["pass_rate"])


def test_results_doc_ood_table_is_the_generated_one():
    readme = (REPO_ROOT / "docs" / "results.md").read_text()
    block = readme.split("<!-- ood:start -->\n", 1)[1].split("<!-- ood:end -->", 1)[0]
    assert block == (REPO_ROOT / "reports" / "ood.md").read_text()
