"""The shipped model on disk: an inference-only ``.keras`` file and its metadata JSON.

The metadata is written by training: it names the architecture, input size, library versions,
the model file's SHA-256, the data fingerprint, and the calibration fixed on validation
(temperature, threshold, grey zone and the grey zone's rule). It changes afterwards only through
a logged command (``zone --write`` rewrites the grey zone, logged in
``reports/metadata_changes.jsonl``), never the weights. Loading refuses a model whose file does
not match its SHA or whose Keras major version differs.
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ModelFileError
from .paths import DEFAULT_MODEL_PATH, REPO_ROOT, file_sha256, metadata_path  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    import keras

METADATA_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ModelMetadata:
    """Everything needed to use a trained model correctly, fixed at training time.

    Attributes:
        architecture: registry name (``models.ARCHITECTURES``).
        input_size: side of the square input, in pixels.
        gradcam_layer: name of the Grad-CAM target layer, a tuple of names (one per member of an
            ensemble, whose maps are combined), or None.
        temperature: logits are divided by this before the sigmoid.
        threshold: calibrated probability at or above which the call is pneumonia.
        grey_zone: ``[low, high)`` band of calibrated probability that needs a careful read.
        protocol: "official" (validation from official train) or "pooled" (70/15/15 re-split).
        keras_version, tensorflow_version: versions that wrote the file.
        model_sha256: SHA-256 of the ``.keras`` file.
        data_fingerprint: SHA-256 over the training data's file list and contents.
        seed: the training seed.
        training_seconds: wall time of training.
        train_config: the training settings, as a dict.
        validation: metrics on the validation split at the operating point.
        created_utc: when training finished.
        command: the command line that produced the model.
        grey_zone_rule: how ``grey_zone`` was made (``lab.grey_zone``, docs/grey_zone_rule.md): the
            rule's name, description and parameters, the measured half-width and percentiles, the
            number of validation images, the date; empty for a model whose band was made by the
            rule used before (the narrowest band meeting validation targets; see the git history).
    """

    architecture: str
    input_size: int
    gradcam_layer: str | tuple[str, ...] | None
    temperature: float
    threshold: float
    grey_zone: tuple[float, float]
    protocol: str
    keras_version: str
    tensorflow_version: str
    model_sha256: str
    data_fingerprint: str
    seed: int
    training_seconds: float
    train_config: dict = field(default_factory=dict)
    validation: dict = field(default_factory=dict)
    created_utc: str = ""
    command: str = ""
    grey_zone_rule: dict = field(default_factory=dict)
    schema_version: int = METADATA_SCHEMA_VERSION

    @property
    def short_sha(self) -> str:
        return self.model_sha256[:12]

    @property
    def members(self) -> int:
        """How many networks the model averages (1: a single network)."""
        return int(self.train_config.get("members", 1))

    @property
    def description(self) -> str:
        """The architecture in words: ``pneumonet`` or ``pneumonet, ensemble of 3``."""
        return self.architecture if self.members == 1 else f"{self.architecture}, ensemble of {self.members}"

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["grey_zone"] = list(self.grey_zone)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelMetadata":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelFileError(f"The model metadata has unknown fields {unknown}; it was written by a newer version.")
        values = dict(data)
        values["grey_zone"] = tuple(values["grey_zone"])
        if isinstance(values.get("gradcam_layer"), list):
            values["gradcam_layer"] = tuple(values["gradcam_layer"])
        return cls(**values)


def _strip_save_time(model_path: Path) -> None:
    """Rewrites a ``.keras`` archive without its save time: Keras stamps ``date_saved`` into
    ``metadata.json`` and the zip entries' times, so two saves of the same weights differ."""
    with zipfile.ZipFile(model_path) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(model_path, "w") as archive:
        for info, content in entries:
            if info.filename == "metadata.json":
                facts = json.loads(content)
                facts.pop("date_saved", None)
                content = json.dumps(facts).encode()
            fixed = zipfile.ZipInfo(info.filename, date_time=(1980, 1, 1, 0, 0, 0))
            fixed.compress_type = info.compress_type
            archive.writestr(fixed, content)


def save_model(model: keras.Model, metadata: ModelMetadata, model_path: Path) -> ModelMetadata:
    """Writes an inference-only copy of ``model`` and its metadata; returns the final metadata.

    The model passed in is not changed: a fresh, never-compiled copy built from its config
    carries the weights, so no optimizer state or compile config is stored (Keras 3's
    ``clone_model`` would copy both). The metadata's ``model_sha256`` is filled in from the written file.
    The archive is written reproducibly (see ``_strip_save_time``), so equal weights give an equal SHA.
    """
    model_path = Path(model_path)
    model_path.parent.mkdir(parents=True, exist_ok=True)
    inference = model.__class__.from_config(model.get_config())
    inference.set_weights(model.get_weights())
    inference.save(model_path)
    _strip_save_time(model_path)
    final = dataclasses.replace(metadata, model_sha256=file_sha256(model_path))
    metadata_path(model_path).write_text(json.dumps(final.to_dict(), indent=2) + "\n")
    return final


def read_metadata(model_path: Path) -> ModelMetadata:
    """Reads the metadata JSON beside a model file.

    Raises:
        ModelFileError: the file is missing or unreadable.
    """
    path = metadata_path(model_path)
    if not path.is_file():
        raise ModelFileError(
            f"The model metadata '{path}' is missing. Reinstall the model files or train a model "
            "with `python -m pneumo_model train`."
        )
    try:
        return ModelMetadata.from_dict(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError) as error:
        raise ModelFileError(f"The model metadata '{path}' is unreadable ({error}).") from None


def check_model_file(model_path: Path = DEFAULT_MODEL_PATH) -> ModelMetadata:
    """The model's metadata, after checking the ``.keras`` file against it (no Keras needed).

    Raises:
        ModelFileError: the file or its metadata is missing, or the SHA-256 differs.
    """
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelFileError(
            f"The model file '{model_path}' is missing. Reinstall the model files or train a model "
            "with `python -m pneumo_model train`."
        )
    metadata = read_metadata(model_path)
    actual = file_sha256(model_path)
    if actual != metadata.model_sha256:
        raise ModelFileError(
            f"The model file '{model_path}' does not match its metadata (SHA-256 {actual[:12]} instead of "
            f"{metadata.model_sha256[:12]}): it was changed or replaced. Restore the shipped model files."
        )
    return metadata


def load_model(model_path: Path = DEFAULT_MODEL_PATH) -> tuple[keras.Model, ModelMetadata]:
    """Loads a model in Keras safe mode after checking it against its metadata.

    Raises:
        ModelFileError: a file is missing, the SHA-256 differs from the metadata, or the model
            was saved by another Keras major version.
    """
    import keras

    model_path = Path(model_path)
    metadata = check_model_file(model_path)
    saved_major = metadata.keras_version.split(".")[0]
    running_major = keras.__version__.split(".")[0]
    if saved_major != running_major:
        raise ModelFileError(
            f"The model was saved with Keras {metadata.keras_version} but Keras {keras.__version__} is "
            "installed. Install the versions in requirements.txt."
        )
    try:
        model = keras.models.load_model(model_path, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad archive; report them all as one.
        raise ModelFileError(f"The model file '{model_path}' cannot be loaded ({error}).") from error
    return model, metadata
