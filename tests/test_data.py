"""Patient ids, duplicate grouping, and patient-grouped stratified splits."""

from pathlib import Path

import numpy as np
import pytest

from pneumo_model.data import (
    DEFAULT_DATA_DIR,
    Sample,
    group_ids,
    parse_name,
    resolve_data_dir,
    scan_split,
    split_groups,
)
from pneumo_model.errors import DataError
from pneumo_model.training import make_split


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
