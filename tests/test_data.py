"""Patient ids, duplicate grouping, patient-grouped stratified splits, and a model's own split."""

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from pneumo_model.artifacts import DEFAULT_MODEL_PATH, ModelMetadata, read_metadata
from pneumo_model.data import (
    DEFAULT_DATA_DIR,
    Sample,
    group_ids,
    make_split,
    model_split,
    parse_name,
    resolve_data_dir,
    scan_split,
    split_groups,
)
from pneumo_model.errors import DataError


@pytest.mark.parametrize(
    "name, patient, subtype",
    [
        ("IM-0115-0001.jpeg", "IM-0115", None),
        ("IM-0117-0001-0002.jpeg", "IM-0117", None),
        ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427", None),
        ("person100_bacteria_475.jpeg", "person100", "bacteria"),
        ("person10_virus_35.jpeg", "person10", "virus"),
        ("person1_virus_7_1.jpeg", "person1", "virus"),
    ],
)
def test_patient_and_subtype_come_from_the_file_name(name, patient, subtype):
    assert parse_name(name) == (patient, subtype)


def test_an_unknown_name_is_refused():
    with pytest.raises(DataError, match="Cannot tell the patient"):
        parse_name("scan_0001.jpeg")


def test_data_dir_flag_beats_environment_beats_default(monkeypatch, tmp_path):
    monkeypatch.delenv("PNEUMO_DATA", raising=False)
    assert resolve_data_dir() == DEFAULT_DATA_DIR.resolve()
    monkeypatch.setenv("PNEUMO_DATA", str(tmp_path / "env"))
    assert resolve_data_dir() == (tmp_path / "env").resolve()
    assert resolve_data_dir(tmp_path / "flag") == (tmp_path / "flag").resolve()


def test_scan_puts_test_patients_in_their_own_namespace(synthetic_data):
    train = scan_split(synthetic_data, "train")
    test = scan_split(synthetic_data, "test")
    assert {s.label for s in train} == {0, 1}
    assert all(s.patient.startswith("test:") for s in test)
    assert not {s.patient for s in train} & {s.patient for s in test}
    assert {s.subtype for s in train if s.label == 1} == {"bacteria", "virus"}


def test_a_missing_data_folder_says_what_to_do(tmp_path):
    with pytest.raises(DataError, match="PNEUMO_DATA"):
        scan_split(tmp_path, "train")


def _sample(patient, label=0):
    return Sample(Path(f"/x/{patient}"), "train", label, patient, None)


def test_byte_identical_files_join_their_patients_in_one_group():
    samples = [_sample("A"), _sample("A"), _sample("B"), _sample("C"), _sample("D")]
    hashes = ["h1", "h2", "h2", "h3", "h4"]  # B's file equals A's second file
    groups = group_ids(samples, hashes)
    assert groups[0] == groups[1] == groups[2]
    assert len({groups[0], groups[3], groups[4]}) == 3


def test_split_groups_keeps_groups_whole_stratifies_and_is_seeded():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"g{i}" for i in range(300)], rng.integers(1, 4, 300))
    group_label = {f"g{i}": int(i % 4 != 0) for i in range(300)}  # about 3 : 1 like the data
    labels = np.array([group_label[g] for g in groups])
    parts = split_groups(labels, groups, (0.7, 0.15, 0.15), seed=7)
    assert sorted(np.concatenate(parts)) == list(range(len(labels)))
    group_sets = [set(groups[p]) for p in parts]
    assert not (group_sets[0] & group_sets[1] or group_sets[0] & group_sets[2] or group_sets[1] & group_sets[2])
    for part, fraction in zip(parts, (0.7, 0.15, 0.15)):
        assert abs(len(part) / len(labels) - fraction) < 0.02
        assert abs(labels[part].mean() - labels.mean()) < 0.03
    again = split_groups(labels, groups, (0.7, 0.15, 0.15), seed=7)
    other = split_groups(labels, groups, (0.7, 0.15, 0.15), seed=8)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    assert not np.array_equal(parts[1], other[1])


def test_split_fractions_must_sum_to_one():
    with pytest.raises(DataError, match="sum to 1"):
        split_groups([0, 1], ["a", "b"], (0.5, 0.6), seed=0)


@pytest.mark.data
def test_official_split_has_no_group_in_both_train_and_validation():
    split = make_split(DEFAULT_DATA_DIR, "official", 0.15, seed=20261123)
    assert len(split.train) + len(split.validation) == 5216
    assert len(split.test) == 624
    train_groups = {split.groups[s.path] for s in split.train}
    val_groups = {split.groups[s.path] for s in split.validation}
    assert not train_groups & val_groups
    assert {s.split for s in split.train + split.validation} == {"train"}
    val_rate = np.mean([s.label for s in split.validation])
    train_rate = np.mean([s.label for s in split.train])
    assert abs(val_rate - train_rate) < 0.02
    assert abs(len(split.validation) / 5216 - 0.15) < 0.01


@pytest.mark.data
def test_pooled_split_is_70_15_15_by_group_and_mixes_official_test_in():
    split = make_split(DEFAULT_DATA_DIR, "pooled", 0.15, seed=20261123)
    parts = [split.train, split.validation, split.test]
    assert sum(map(len, parts)) == 5216 + 624
    group_sets = [{split.groups[s.path] for s in part} for part in parts]
    assert not (group_sets[0] & group_sets[1] or group_sets[0] & group_sets[2] or group_sets[1] & group_sets[2])
    assert {s.split for s in split.test} == {"train", "test"}
    assert abs(len(split.test) / 5840 - 0.15) < 0.01


# --- A model's own split --------------------------------------------------------------------------

# The split the code before model_split made of conftest's synthetic data set (official protocol,
# val_fraction 0.25, seed 20261123; pooled 70/15/15): model_split must rebuild exactly these.
SYNTHETIC_VALIDATION_BEFORE = [
    "IM-0000-0000.jpeg", "IM-0006-0012.jpeg", "IM-0007-0015.jpeg", "IM-0117-0017.jpeg", "IM-0122-0022.jpeg",
    "IM-0123-0023.jpeg", "person11_bacteria_23.jpeg", "person11_virus_22.jpeg", "person2_bacteria_5.jpeg",
    "person2_virus_4.jpeg", "person9_bacteria_19.jpeg", "person9_virus_18.jpeg",
]
SYNTHETIC_POOLED_TEST_BEFORE = [
    "test/person5_bacteria_11.jpeg", "test/person5_virus_10.jpeg", "train/IM-0003-0006.jpeg",
    "train/IM-0104-0004.jpeg", "train/IM-0108-0008.jpeg", "train/IM-0111-0011.jpeg", "train/IM-0113-0013.jpeg",
    "train/person1_bacteria_3.jpeg", "train/person1_virus_2.jpeg", "train/person4_bacteria_9.jpeg",
    "train/person4_virus_8.jpeg",
]


def _metadata(data_dir: Path, protocol: str = "official", seed: int = 20261123, val_fraction: float | None = None) -> ModelMetadata:
    """Metadata as training writes it, for a model trained on ``data_dir`` with these settings
    (``val_fraction`` None: not recorded, as in models from before it was)."""
    train_config = {"protocol": protocol, "seed": seed}
    if val_fraction is not None:
        train_config["val_fraction"] = val_fraction
    return ModelMetadata(
        architecture="dense", input_size=32, gradcam_layer=None, temperature=1.0, threshold=0.5,
        grey_zone=(0.4, 0.5), protocol=protocol, keras_version="3", tensorflow_version="2",
        model_sha256="ab" * 32, data_fingerprint=make_split(data_dir, protocol, val_fraction or 0.15, seed).fingerprint,
        seed=seed, training_seconds=1.0, train_config=train_config,
    )


def _names(samples) -> list[str]:
    return sorted(s.path.name for s in samples)


def test_model_split_rebuilds_the_split_the_model_was_trained_on(synthetic_data):
    metadata = _metadata(synthetic_data, "official", 20261123, val_fraction=0.25)
    split = model_split(metadata, synthetic_data)
    assert _names(split.validation) == SYNTHETIC_VALIDATION_BEFORE
    again = make_split(synthetic_data, "official", 0.25, 20261123)
    assert split == again  # the same parts, groups and fingerprint as make_split with the recorded settings
    assert _names(split.test) == _names(scan_split(synthetic_data, "test"))


def test_model_split_of_a_pooled_model_is_its_own_70_15_15(synthetic_data):
    metadata = _metadata(synthetic_data, "pooled", 20261123, val_fraction=0.15)
    split = model_split(metadata, synthetic_data)
    assert sorted(f"{s.split}/{s.path.name}" for s in split.test) == SYNTHETIC_POOLED_TEST_BEFORE


def test_model_split_reads_val_fraction_from_train_config_and_defaults_for_old_models(synthetic_data):
    recorded = model_split(_metadata(synthetic_data, val_fraction=0.25), synthetic_data)
    old = model_split(_metadata(synthetic_data), synthetic_data)  # no val_fraction recorded: 0.15, as then
    assert old == make_split(synthetic_data, "official", 0.15, 20261123)
    assert len(old.validation) < len(recorded.validation)


def test_model_split_of_the_trained_tiny_model_matches_its_fingerprint(tiny_model, synthetic_data):
    metadata = read_metadata(tiny_model)
    split = model_split(metadata, synthetic_data)
    assert split.fingerprint == metadata.data_fingerprint
    assert _names(split.validation) == SYNTHETIC_VALIDATION_BEFORE  # trained with val_fraction 0.25


def test_model_split_refuses_data_that_differ_from_the_training_data(synthetic_data, tmp_path):
    metadata = _metadata(synthetic_data, val_fraction=0.25)
    changed = shutil.copytree(synthetic_data, tmp_path / "chest_xray_224")
    first = sorted((changed / "train" / "NORMAL").iterdir())[0]
    first.write_bytes(first.read_bytes() + b"\0")  # one byte more in one training file
    with pytest.raises(DataError, match="differs from the data model abababababab was trained on") as refused:
        model_split(metadata, changed)
    assert "--data" in str(refused.value) and metadata.data_fingerprint[:12] in str(refused.value)
    removed = shutil.copytree(synthetic_data, tmp_path / "fewer")
    sorted((removed / "train" / "PNEUMONIA").iterdir())[0].unlink()
    with pytest.raises(DataError, match="fingerprint"):
        model_split(metadata, removed)
    with pytest.raises(DataError, match="does not exist"):
        model_split(metadata, tmp_path / "nowhere")


def test_the_fingerprint_does_not_depend_on_how_the_folder_is_reached(synthetic_data, tmp_path, monkeypatch):
    # The same bytes, reached through a symlinked parent (as ``../shared`` often is on a server),
    # a symlink to the folder itself, and a relative path from another working directory.
    direct = make_split(synthetic_data, "official", 0.25, 20261123).fingerprint
    (tmp_path / "mounted").symlink_to(synthetic_data.parent, target_is_directory=True)
    (tmp_path / "link").symlink_to(synthetic_data, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    for reached in (tmp_path / "mounted" / synthetic_data.name, tmp_path / "link", Path("link")):
        assert make_split(reached, "official", 0.25, 20261123).fingerprint == direct, reached
    # ... and it still names the bytes: one file changed, another fingerprint.
    changed = shutil.copytree(synthetic_data, tmp_path / "changed")
    first = sorted((changed / "train" / "NORMAL").iterdir())[0]
    first.write_bytes(first.read_bytes() + b"\0")
    assert make_split(changed, "official", 0.25, 20261123).fingerprint != direct


@pytest.mark.data
@pytest.mark.shipped_model
def test_the_shipped_model_rebuilds_its_split_through_a_symlinked_data_folder(tmp_path):
    # The fingerprint the shipped model records stays valid on the unchanged data folder, reached
    # directly or through a link to ../shared (a fresh clone on a server that mounts its data).
    metadata = read_metadata(DEFAULT_MODEL_PATH)
    (tmp_path / "shared").symlink_to(DEFAULT_DATA_DIR.parent.parent, target_is_directory=True)
    linked = tmp_path / "shared" / DEFAULT_DATA_DIR.parent.name / DEFAULT_DATA_DIR.name
    assert linked.resolve() == DEFAULT_DATA_DIR.resolve() and linked != DEFAULT_DATA_DIR
    through_link = model_split(metadata, linked)
    assert through_link.fingerprint == metadata.data_fingerprint
    assert through_link == model_split(metadata, DEFAULT_DATA_DIR)


def test_model_split_refuses_metadata_that_disagrees_with_itself(synthetic_data):
    metadata = _metadata(synthetic_data, val_fraction=0.25)
    with pytest.raises(DataError, match="two seeds"):
        model_split(dataclasses.replace(metadata, seed=1), synthetic_data)
    with pytest.raises(DataError, match="two protocols"):
        model_split(dataclasses.replace(metadata, protocol="pooled"), synthetic_data)
