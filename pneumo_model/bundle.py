"""The model bundle: the ``.keras`` file and every file beside it, named in one place, and the one
way a JSON side file is read.

A model is more than its weights: its metadata (calibration, threshold, grey zone), the
out-of-distribution gate and its grade cut-offs, the heat-map scale, the attention cut-off, the
validation reference that label-free alignment aligns to, and the ONNX graph the run time scores
with and its record. Each lives beside the model as ``<model><suffix>`` and each is made by one
command (``SideFile``). The predictor, the app and the CLI find them through ``side_path`` (or the
``*_path`` functions below), and every JSON side file is read by ``read_side_json``, with the same
checks in the same words: present, readable, of a schema this software reads, and made for this
model (its recorded ``model_sha256``). A side file made for another model is refused, never used:
its numbers are in another model's units.

Light on purpose (no NumPy, no Keras): ``paths`` re-exports the path functions.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelFileError


@dataclass(frozen=True)
class SideFile:
    """One kind of file beside the model.

    Attributes:
        suffix: what replaces ``.keras`` in the model's file name.
        what: the file in words, for messages ("heat-map scale").
        command: the command that makes it, named in every message about it.
    """

    suffix: str
    what: str
    command: str


METADATA = SideFile(".json", "model metadata", "python -m pneumo_model train")
GATE = SideFile(".ood.npz", "out-of-distribution gate", "python -m pneumo_model ood fit")
GRADES = SideFile(".ood_grades.json", "gate's grade cut-offs", "python -m pneumo_model ood grades")
HEATMAP_SCALE = SideFile(".cam.json", "heat-map scale", "python -m pneumo_model heatmap-scale")
ATTENTION = SideFile(".attention.json", "attention cut-off file", "python -m pneumo_model attention")
REFERENCE = SideFile(".reference.json", "validation reference", "python -m pneumo_model site reference")
ONNX = SideFile(".onnx", "ONNX graph", "python -m pneumo_model export-onnx")
ONNX_RECORD = SideFile(".onnx.json", "ONNX graph's record", "python -m pneumo_model export-onnx")
SUBTYPE_MODEL = SideFile(".subtype.keras", "subtype pattern's model", "python -m pneumo_model train-subtype")
SUBTYPE_HEATMAP_SCALE = SideFile(
    ".subtype.cam.json", "pattern map's heat-map scale", "python -m pneumo_model heatmap-scale --subtype"
)
SIDE_FILES = (
    METADATA, GATE, GRADES, HEATMAP_SCALE, ATTENTION, REFERENCE, ONNX, ONNX_RECORD, SUBTYPE_MODEL, SUBTYPE_HEATMAP_SCALE
)


def side_path(model_path: str | Path, side: SideFile) -> Path:
    """Where ``side`` of the model at ``model_path`` lives: ``<model><suffix>`` beside it."""
    return Path(model_path).with_suffix(side.suffix)


def metadata_path(model_path: str | Path) -> Path:
    """The metadata JSON beside a ``.keras`` model."""
    return side_path(model_path, METADATA)


def gate_path(model_path: str | Path) -> Path:
    """The out-of-distribution gate beside a ``.keras`` model (``<model>.ood.npz``)."""
    return side_path(model_path, GATE)


def grades_path(model_path: str | Path) -> Path:
    """The gate's grade cut-offs beside a ``.keras`` model (``<model>.ood_grades.json``, ``ood.OodGrades``)."""
    return side_path(model_path, GRADES)


def heatmap_scale_path(model_path: str | Path) -> Path:
    """The heat-map scale beside a ``.keras`` model (``<model>.cam.json``, ``explain.HeatmapScale``)."""
    return side_path(model_path, HEATMAP_SCALE)


def attention_path(model_path: str | Path) -> Path:
    """The attention cut-off file beside a ``.keras`` model (``<model>.attention.json``, ``thorax.AttentionRule``)."""
    return side_path(model_path, ATTENTION)


def reference_path(model_path: str | Path) -> Path:
    """The validation reference beside a ``.keras`` model (``<model>.reference.json``, ``alignment.Reference``)."""
    return side_path(model_path, REFERENCE)


def onnx_path(model_path: str | Path) -> Path:
    """The ONNX graph the run time serves, beside a ``.keras`` model (``<model>.onnx``, ``onnx_model``)."""
    return side_path(model_path, ONNX)


def onnx_record_path(model_path: str | Path) -> Path:
    """The ONNX graph's record beside a ``.keras`` model (``<model>.onnx.json``: its SHA-256 and the model's)."""
    return side_path(model_path, ONNX_RECORD)


def subtype_model_path(model_path: str | Path) -> Path:
    """The subtype pattern's own model beside a ``.keras`` model (``<model>.subtype.keras``, ``subtype``).

    A second network with its own metadata and side files (``<model>.subtype.json``,
    ``<model>.subtype.onnx``, ...), so the main model's SHA and side files stay as they are.
    """
    return side_path(model_path, SUBTYPE_MODEL)


def subtype_heatmap_scale_path(model_path: str | Path) -> Path:
    """The pattern map's heat-map scale beside a ``.keras`` model (``<model>.subtype.cam.json``: the
    subtype model's own ``explain.HeatmapScale``, recording the subtype model's SHA-256)."""
    return side_path(model_path, SUBTYPE_HEATMAP_SCALE)


def read_side_json(
    path: str | Path,
    side: SideFile,
    *,
    schemas: Collection[int],
    model_sha256: str | None,
    error: type[Exception] = ModelFileError,
) -> dict:
    """A JSON side file's content, after the checks every side file gets.

    Args:
        path: the file (usually ``side_path(model, side)``; a test or a command may give another).
        side: what it is: its words and the command that makes it go into every message.
        schemas: the ``schema_version`` values this software reads.
        model_sha256: the model it must have been made for (its recorded ``model_sha256``); None
            accepts any (a command that only shows the file).
        error: the exception raised (``ModelFileError``; the site side raises ``SiteProfileError``).

    Raises:
        error: the file is missing, is not readable JSON, is of a schema this software does not
            read, or was made for another model. Each message names the file and the command
            that makes it again.
    """
    path = Path(path)
    again = f"Make it again with `{side.command}`."
    if not path.is_file():
        raise error(f"The {side.what} ({path.name}) is missing: it goes beside the model. Make it with `{side.command}`.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as problem:
        raise error(f"The {side.what} ({path.name}) cannot be read ({problem}). {again}") from None
    if not isinstance(data, dict):
        raise error(f"The {side.what} ({path.name}) cannot be read (not a JSON object). {again}")
    if data.get("schema_version") not in schemas:
        raise error(
            f"The {side.what} ({path.name}) is of another version (schema {data.get('schema_version')!r}; this "
            f"software reads {', '.join(map(str, sorted(schemas)))}). {again}"
        )
    if model_sha256 is not None and data.get("model_sha256") != model_sha256:
        raise error(
            f"The {side.what} ({path.name}) was made for model {str(data.get('model_sha256'))[:12]}, not for the "
            f"model in use ({model_sha256[:12]}): its numbers say nothing about this model. {again}"
        )
    return data
