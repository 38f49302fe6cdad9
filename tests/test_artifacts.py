"""Saving and loading the model with its metadata, and refusing altered files."""

import dataclasses
import datetime
import io
import json
import zipfile
from types import SimpleNamespace

import h5py

import keras
import numpy as np
import pytest

from pneumo_model.artifacts import ModelMetadata, load_model, metadata_path, read_metadata, save_model
from pneumo_model.errors import ModelFileError
from pneumo_model.lab.models import get_architecture


def _metadata():
    return ModelMetadata(
        architecture="cnn_small", input_size=32, gradcam_layer="conv2", temperature=1.3, threshold=0.4,
        grey_zone=(0.3, 0.6), protocol="official", keras_version=keras.__version__, tensorflow_version="x",
        model_sha256="", data_fingerprint="f" * 64, seed=1, training_seconds=1.0,
    )


def _stored_groups(path):
    with zipfile.ZipFile(path) as archive:
        weights = io.BytesIO(archive.read("model.weights.h5"))
    with h5py.File(weights, "r") as handle:
        return {key for key in handle.keys() if len(handle[key]) or key != "vars"}


@pytest.fixture
def saved(tmp_path):
    model = get_architecture("cnn_small").build(32)
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.zeros((4, 32, 32, 1)), np.zeros((4, 1)), verbose=0)  # builds optimizer state
    path = tmp_path / "m.keras"
    metadata = save_model(model, _metadata(), path)
    return model, metadata, path


def test_round_trip_keeps_weights_and_metadata(saved):
    model, metadata, path = saved
    loaded, loaded_metadata = load_model(path)
    assert loaded_metadata == metadata
    assert len(metadata.model_sha256) == 64
    x = np.random.default_rng(0).random((2, 32, 32, 1), dtype=np.float32)
    np.testing.assert_allclose(loaded(x).numpy(), model(x).numpy(), atol=1e-5)
    assert _stored_groups(path) == {"layers"}  # inference-only: no optimizer variables
    assert model.optimizer is not None and model.optimizer.iterations.numpy() == 1  # caller's model untouched


def test_an_altered_model_file_is_refused(saved):
    _, _, path = saved
    path.write_bytes(path.read_bytes() + b"tampered")
    with pytest.raises(ModelFileError, match="does not match its metadata"):
        load_model(path)


def test_another_keras_major_version_is_refused(saved):
    _, metadata, path = saved
    changed = dataclasses.replace(metadata, keras_version="2.15.0")
    metadata_path(path).write_text(json.dumps(changed.to_dict()))
    with pytest.raises(ModelFileError, match="Keras 2.15.0"):
        load_model(path)


def test_missing_files_say_what_to_do(saved, tmp_path):
    with pytest.raises(ModelFileError, match="is missing"):
        load_model(tmp_path / "nothing.keras")
    _, _, path = saved
    metadata_path(path).unlink()
    with pytest.raises(ModelFileError, match="metadata .* is missing"):
        read_metadata(path)


def test_unknown_metadata_fields_are_refused(saved):
    _, metadata, path = saved
    metadata_path(path).write_text(json.dumps({**metadata.to_dict(), "surprise": 1}))
    with pytest.raises(ModelFileError, match="unknown fields"):
        read_metadata(path)


def _freeze_save_clocks(monkeypatch, moment: datetime.datetime) -> None:
    """Every clock a Keras save reads shows ``moment``: its ``date_saved`` stamp, and the zip entry
    times (``zipfile`` stamps an entry copied from a file, the weights, with ``time.localtime`` of
    its mtime, and one written from bytes with ``time.time()``)."""
    from keras.src.saving import saving_lib

    monkeypatch.setattr(saving_lib, "datetime", SimpleNamespace(datetime=SimpleNamespace(now=lambda: moment)))
    monkeypatch.setattr(
        zipfile, "time", SimpleNamespace(time=lambda: moment.timestamp(), localtime=lambda *_: moment.timetuple())
    )


def test_saving_the_same_weights_twice_gives_the_same_file(saved, tmp_path, monkeypatch):
    model, metadata, path = saved
    # The second save happens, as far as the clocks can tell, decades after the first.
    moment = datetime.datetime(2001, 2, 3, 4, 5, 6)
    _freeze_save_clocks(monkeypatch, moment)
    plain = tmp_path / "plain.keras"
    model.save(plain)  # Keras alone keeps the frozen times: the freeze reaches what it stamps
    with zipfile.ZipFile(plain) as archive:
        assert json.loads(archive.read("metadata.json"))["date_saved"] == "2001-02-03@04:05:06"
        assert archive.getinfo("model.weights.h5").date_time == (2001, 2, 3, 4, 5, 6)
    again = save_model(model, _metadata(), tmp_path / "again.keras")
    assert again.model_sha256 == metadata.model_sha256
    with zipfile.ZipFile(path) as archive:
        assert "date_saved" not in json.loads(archive.read("metadata.json"))
    reloaded, _ = load_model(path)
    np.testing.assert_array_equal(reloaded.get_weights()[0], model.get_weights()[0])
