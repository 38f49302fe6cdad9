"""The data set: where it is, which patient each file belongs to, and patient-grouped splits.

File names carry the patient: ``IM-0115-0001.jpeg`` and ``NORMAL2-IM-1427-0001.jpeg`` are
normal patients ``IM-0115`` and ``NORMAL2-IM-1427``; ``person100_bacteria_475.jpeg`` is
pneumonia patient ``person100`` (bacterial and viral images of one person are one patient).
Splits are made by group, never by image: a group is a patient, merged with every other
patient that shares a byte-identical file. ``make_split`` builds a protocol's split;
``model_split`` rebuilds the split a trained model was trained on, from its metadata, and refuses
a data folder that differs from the one it was trained on.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from .errors import DataError
from .paths import DEFAULT_DATA_DIR, REPO_ROOT, file_sha256  # noqa: F401 (re-exported)
from .pipeline import load_and_preprocess

if TYPE_CHECKING:  # artifacts imports Keras; data must stay light
    from .artifacts import ModelMetadata

DATA_ENV_VAR = "PNEUMO_DATA"
CLASSES = ("NORMAL", "PNEUMONIA")  # label 0, label 1
OFFICIAL_SPLITS = ("train", "test")
# Share of official train held out for validation; models whose metadata predates the setting
# being recorded were trained with it.
DEFAULT_VAL_FRACTION = 0.15

_NORMAL_PATIENT = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+")
_PNEUMONIA_PATIENT = re.compile(r"^(person\d+)_(bacteria|virus)_\d+")


@dataclass(frozen=True)
class Sample:
    """One image file of the data set.

    Attributes:
        path: absolute path of the file.
        split: official split it comes from ("train" or "test").
        label: 0 for NORMAL, 1 for PNEUMONIA.
        patient: patient id, prefixed with the split for "test" (its own namespace: the same
            number in train and test need not be the same child).
        subtype: "bacteria", "virus" or None for normal images.
    """

    path: Path
    split: str
    label: int
    patient: str
    subtype: str | None


def resolve_data_dir(flag: str | os.PathLike | None = None) -> Path:
    """Returns the data folder: the flag if given, else ``$PNEUMO_DATA``, else the default."""
    chosen = flag or os.environ.get(DATA_ENV_VAR) or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def parse_name(file_name: str) -> tuple[str, str | None]:
    """Returns ``(patient, subtype)`` from an official file name.

    Raises:
        DataError: the name follows neither naming rule.
    """
    match = _PNEUMONIA_PATIENT.match(file_name)
    if match:
        return match.group(1), match.group(2)
    match = _NORMAL_PATIENT.match(file_name)
    if match:
        return match.group(1), None
    raise DataError(
        f"Cannot tell the patient from the file name '{file_name}'. "
        "Expected names like IM-0115-0001.jpeg or person100_bacteria_475.jpeg."
    )


def scan_split(data_dir: Path, split: str) -> list[Sample]:
    """Lists the images of one official split, sorted by path.

    Raises:
        DataError: the folder or a class folder is missing or empty.
    """
    samples = []
    for label, class_name in enumerate(CLASSES):
        folder = Path(data_dir) / split / class_name
        if not folder.is_dir():
            raise DataError(
                f"The data folder '{folder}' does not exist. Point --data or ${DATA_ENV_VAR} at the "
                "chest_xray_224 folder (with train/ and test/ inside)."
            )
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in (".jpeg", ".jpg", ".png"):
                continue
            patient, subtype = parse_name(path.name)
            if label == 1 and subtype is None or label == 0 and subtype is not None:
                raise DataError(f"The file '{path}' is named like the other class; check the data folder.")
            if split != "train":
                patient = f"{split}:{patient}"
            samples.append(Sample(path.resolve(), split, label, patient, subtype))
    if not samples:
        raise DataError(f"No images found under '{Path(data_dir) / split}'.")
    return samples


def group_ids(samples: Sequence[Sample], hashes: Sequence[str] | None = None) -> list[str]:
    """Returns one group id per sample: its patient, merged across byte-identical files.

    Args:
        samples: the images.
        hashes: SHA-256 of each file, in the same order; computed when not given.
    """
    hashes = list(hashes) if hashes is not None else [file_sha256(s.path) for s in samples]
    parent: dict[str, str] = {}

    def find(key: str) -> str:
        parent.setdefault(key, key)
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    def union(a: str, b: str) -> None:
        root_a, root_b = find(a), find(b)
        if root_a != root_b:
            parent[max(root_a, root_b)] = min(root_a, root_b)

    for sample, digest in zip(samples, hashes):
        union("patient:" + sample.patient, "sha:" + digest)
    return [find("patient:" + s.patient).removeprefix("patient:") for s in samples]


def split_groups(
    labels: Sequence[int], groups: Sequence[str], fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Splits images into parts by group, stratified by class, with a fixed seed.

    Groups of each class (a group's class is its majority label) are shuffled and dealt out in
    turn to the part furthest below its target share of that class's images, so every part
    gets close to its fraction of each class and no group is ever in two parts.
    (scikit-learn's StratifiedGroupKFold only makes equal folds, not 70/15/15.)

    Args:
        labels: class of each image (0 or 1).
        groups: group id of each image.
        fractions: target share of each part; must sum to 1.
        seed: seed of the shuffle.

    Returns:
        One sorted array of image indices per part.
    """
    fractions = np.asarray(fractions, dtype=float)
    if np.any(fractions <= 0) or not np.isclose(fractions.sum(), 1.0):
        raise DataError(f"Split fractions must be positive and sum to 1; got {list(fractions)}.")
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    unique_groups, group_index = np.unique(groups, return_inverse=True)
    group_size = np.bincount(group_index)
    group_label = (np.bincount(group_index, weights=labels) / group_size >= 0.5).astype(int)
    rng = np.random.default_rng(seed)
    part_of_group = np.empty(len(unique_groups), dtype=int)
    for label in (0, 1):
        members = np.flatnonzero(group_label == label)
        members = members[rng.permutation(len(members))]
        filled = np.zeros(len(fractions))
        targets = fractions * group_size[members].sum()
        for group in members:
            part = int(np.argmax(targets - filled))
            part_of_group[group] = part
            filled[part] += group_size[group]
    image_part = part_of_group[group_index]
    return [np.flatnonzero(image_part == part) for part in range(len(fractions))]


def data_fingerprint(samples: Sequence[Sample], hashes: Sequence[str]) -> str:
    """SHA-256 over the sorted (relative path, file SHA-256) pairs: names the exact data used.

    The relative path is the sample's place in the data set's layout (``train/NORMAL/name``), not
    a path computed against the folder as it was reached: the same bytes give the same fingerprint
    whether the folder is reached directly, through a symlink (``../shared`` a link, as servers
    often mount data) or from another working directory.
    """
    digest = hashlib.sha256()
    relative = [f"{sample.split}/{CLASSES[sample.label]}/{sample.path.name}" for sample in samples]
    for name, file_hash in sorted(zip(relative, hashes)):
        digest.update(f"{name}\t{file_hash}\n".encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class DataSplit:
    """Samples of one protocol, divided into parts, with their group ids.

    Attributes:
        train, validation, test: the parts' samples.
        groups: group id of every sample of the data folder, by path.
        fingerprint: ``data_fingerprint`` of the images the parts were drawn from (official
            train for "official", everything for "pooled"), as a model's metadata records it.
    """

    train: list[Sample]
    validation: list[Sample]
    test: list[Sample]
    groups: dict[Path, str]
    fingerprint: str


def make_split(data_dir: Path, protocol: str, val_fraction: float, seed: int) -> DataSplit:
    """Builds the protocol's split from the data folder, deterministically.

    "official": validation is ``val_fraction`` of official train by patient group; test is the
    official test split. "pooled": train and test images pooled and re-split 70/15/15 by group.
    To rebuild the split of a trained model, use ``model_split``, which also checks the data.
    """
    train_samples = scan_split(data_dir, "train")
    test_samples = scan_split(data_dir, "test")
    everything = train_samples + test_samples
    hashes = [file_sha256(s.path) for s in everything]
    groups = group_ids(everything, hashes)
    group_of = {s.path: g for s, g in zip(everything, groups)}
    if protocol == "official":
        pool = train_samples
        fractions = (1.0 - val_fraction, val_fraction)
    else:
        pool = everything
        fractions = (0.70, 0.15, 0.15)
    parts = split_groups([s.label for s in pool], [group_of[s.path] for s in pool], fractions, seed)
    chosen = [[pool[i] for i in part] for part in parts]
    test = test_samples if protocol == "official" else chosen[2]
    hash_of = {s.path: h for s, h in zip(everything, hashes)}
    fingerprint = data_fingerprint(pool, [hash_of[s.path] for s in pool])
    return DataSplit(chosen[0], chosen[1], test, group_of, fingerprint)


def split_settings(metadata: "ModelMetadata") -> tuple[str, float, int]:
    """``(protocol, val_fraction, seed)`` of the split a model was trained on, from its metadata.

    The protocol and seed are recorded twice (top level and in ``train_config``); they must agree.
    ``val_fraction`` is in ``train_config`` only (``DEFAULT_VAL_FRACTION`` when absent: models
    from before it was recorded used it).

    Raises:
        DataError: the two records disagree.
    """
    config = metadata.train_config or {}
    for key, recorded in (("protocol", metadata.protocol), ("seed", metadata.seed)):
        if key in config and config[key] != recorded:
            raise DataError(
                f"The model's metadata records two {key}s ({recorded!r} and {config[key]!r} in train_config); "
                "its split cannot be rebuilt. The metadata file was edited or damaged: use the one written by training."
            )
    return metadata.protocol, float(config.get("val_fraction", DEFAULT_VAL_FRACTION)), int(metadata.seed)


def model_split(metadata: "ModelMetadata", data_dir: Path) -> DataSplit:
    """The split a model was trained on, rebuilt from its metadata, on the data it was trained on.

    Every caller that needs a model's train, validation or test part (evaluation, the stress
    report, the gate, the comparisons) goes through this function.

    Args:
        metadata: the model's metadata (protocol, seed, ``train_config["val_fraction"]``, data fingerprint).
        data_dir: the chest_xray_224 folder.

    Raises:
        DataError: the data folder is missing or differs from the data the model was trained on
            (its fingerprint is not the one the metadata records), or the metadata disagrees with itself.
    """
    split = make_split(Path(data_dir), *split_settings(metadata))
    if split.fingerprint != metadata.data_fingerprint:
        raise DataError(
            f"The data folder '{data_dir}' differs from the data model {metadata.model_sha256[:12]} was trained on "
            f"(data fingerprint {split.fingerprint[:12]}, the model records {metadata.data_fingerprint[:12]}), so its "
            "validation and test parts cannot be rebuilt faithfully. Point --data or "
            f"${DATA_ENV_VAR} at the folder the model was trained on, unchanged."
        )
    return split


def load_model_inputs(
    samples: Sequence[Sample],
    size: int,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """For training only: decodes and preprocesses every image once, rounded to uint8 to save memory.

    Training (and fitting the out-of-distribution gate, which is part of training a model) holds
    a whole split in memory, so it keeps 1 byte a pixel. Rounding moves a probability by up to
    about 0.01, so nothing that reports or shows a probability uses these: evaluation, the stress
    report, the bench, the CLI and the app score float32 inputs through ``DecodedImage`` and
    ``Predictor.calls`` (``evaluation.call_files``).

    Returns:
        uint8 array (n, size, size, 1): ``round(preprocess(load_image(path)) * 255)``.
    """
    images = np.empty((len(samples), size, size, 1), dtype=np.uint8)
    for index, sample in enumerate(samples):
        model_input, _ = load_and_preprocess(sample.path, size)
        images[index] = np.round(model_input * 255.0).astype(np.uint8)
        if progress is not None:
            progress(index + 1, len(samples))
    return images
