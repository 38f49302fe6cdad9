"""The model bundle: one place names the files beside the model, and every JSON side file is read
with the same checks (present, readable, a schema this software reads, made for this model), in
the same words, naming the command that makes it."""

from __future__ import annotations

import json
import shutil

import pytest

from pneumo_model import bundle
from pneumo_model.alignment import Reference
from pneumo_model.artifacts import DEFAULT_MODEL_PATH, read_metadata
from pneumo_model.bundle import SIDE_FILES, read_side_json, side_path
from pneumo_model.errors import ModelFileError, SiteProfileError
from pneumo_model.explain import HeatmapScale
from pneumo_model.onnx_model import OnnxRecord
from pneumo_model.ood import OodGate
from pneumo_model.thorax import AttentionRule

# Each JSON side file made for one model, with its loader: (side, load(path, model_sha256), error).
LOADERS = [
    (bundle.HEATMAP_SCALE, lambda path, sha: HeatmapScale.load(path, sha), ModelFileError),
    (bundle.ATTENTION, lambda path, sha: AttentionRule.load(path, sha), ModelFileError),
    (bundle.REFERENCE, lambda path, sha: Reference.load(path, sha), SiteProfileError),
    (bundle.ONNX_RECORD, lambda path, sha: OnnxRecord.load(path, sha), ModelFileError),
]
IDS = [side.what for side, _, _ in LOADERS]


def test_every_side_file_has_its_own_name_beside_the_model_and_a_command_that_makes_it(tmp_path):
    model = tmp_path / "m.keras"
    paths = [side_path(model, side) for side in SIDE_FILES]
    assert len(set(paths)) == len(SIDE_FILES) and all(path.parent == tmp_path for path in paths)
    assert all(path.name.startswith("m.") and path.name != model.name for path in paths)
    assert all(side.command.startswith("python -m pneumo_model ") for side in SIDE_FILES)
    # The names every module uses come from here.
    from pneumo_model import alignment, explain, ood, paths as paths_module, thorax

    assert explain.heatmap_scale_path(model) == side_path(model, bundle.HEATMAP_SCALE)
    assert thorax.attention_path(model) == side_path(model, bundle.ATTENTION)
    assert alignment.reference_path(model) == side_path(model, bundle.REFERENCE)
    assert ood.gate_path(model) == side_path(model, bundle.GATE)
    assert paths_module.onnx_record_path(model) == model.with_name("m.onnx.json")
    assert paths_module.metadata_path(model) == model.with_name("m.json")


@pytest.mark.shipped_model
def test_the_shipped_model_has_every_side_file_and_each_loads_for_it():
    missing = [side.what for side in SIDE_FILES if not side_path(DEFAULT_MODEL_PATH, side).is_file()]
    assert missing == []
    sha = read_metadata(DEFAULT_MODEL_PATH).model_sha256
    for side, load, _ in LOADERS:
        assert load(side_path(DEFAULT_MODEL_PATH, side), sha).model_sha256 == sha, side.what
    assert OodGate.load(side_path(DEFAULT_MODEL_PATH, bundle.GATE)).grades is not None


@pytest.mark.shipped_model
@pytest.mark.parametrize(("side", "load", "error"), LOADERS, ids=IDS)
def test_each_side_file_is_refused_in_the_same_words_naming_the_command(side, load, error, tmp_path):
    sha = read_metadata(DEFAULT_MODEL_PATH).model_sha256
    path = tmp_path / f"m{side.suffix}"
    command = f"`{side.command}`"

    with pytest.raises(error, match=rf"The {side.what} \(m{side.suffix}\) is missing") as refused:
        load(path, sha)
    assert command in str(refused.value)

    shutil.copy(side_path(DEFAULT_MODEL_PATH, side), path)
    with pytest.raises(error, match=rf"made for model {sha[:12]}, not for the model in use \(cdcdcdcdcdcd\)") as refused:
        load(path, "cd" * 32)
    assert command in str(refused.value)

    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "schema_version": 99}))
    with pytest.raises(error, match=r"is of another version \(schema 99") as refused:
        load(path, sha)
    assert command in str(refused.value)

    path.write_text("{not json")
    with pytest.raises(error, match="cannot be read") as refused:
        load(path, sha)
    assert command in str(refused.value)


def test_a_side_file_that_is_not_a_json_object_is_unreadable_and_any_model_may_be_accepted(tmp_path):
    path = tmp_path / "m.cam.json"
    path.write_text("[1, 2]")
    with pytest.raises(ModelFileError, match="not a JSON object"):
        read_side_json(path, bundle.HEATMAP_SCALE, schemas={1}, model_sha256=None)
    path.write_text(json.dumps({"schema_version": 1, "model_sha256": "ab" * 32}))
    assert read_side_json(path, bundle.HEATMAP_SCALE, schemas={1}, model_sha256=None)["model_sha256"] == "ab" * 32
