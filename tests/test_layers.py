"""The package's two sides, one direction: what the app and ``predict`` run imports nothing of the lab
side (training, evaluation, stress, comparison, bench, model card, gate fitting) and no Streamlit;
and it runs on ONNX Runtime, so it imports neither TensorFlow nor Keras either."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "assets" / "samples" / "person100_bacteria_475.jpeg"


def app_side_modules() -> list[str]:
    """Every module of ``pneumo_model`` outside ``lab/``, found on disk: a module added tomorrow is
    covered the day it is added. ``__main__`` is left out (importing it runs the command line)."""
    package = REPO / "pneumo_model"
    names = []
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package).with_suffix("").parts
        if parts[0] == "lab" or parts[-1] == "__main__":
            continue
        names.append(".".join(("pneumo_model", *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return names


APP_SIDE = app_side_modules()
DATA = REPO.parent / "shared" / "data" / "chest_xray_224"


def imported_after(code: str) -> list[str]:
    """The modules loaded in a fresh interpreter after running ``code``."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def lab_and_streamlit(modules: list[str]) -> list[str]:
    return [name for name in modules if name.startswith(("pneumo_model.lab", "streamlit"))]


def tensorflow_and_keras(modules: list[str]) -> list[str]:
    return [name for name in modules if name.split(".")[0] in ("tensorflow", "keras", "tf_keras")]


def test_importing_the_app_side_loads_no_lab_module_and_no_streamlit():
    # The modules the issue found missing from the hand-written list are found on disk now.
    assert {"pneumo_model", "pneumo_model.thorax", "pneumo_model.site", "pneumo_model.schema",
            "pneumo_model.presentation", "pneumo_model.case_report"} <= set(APP_SIDE)
    assert not any(name.startswith("pneumo_model.lab") for name in APP_SIDE)
    modules = imported_after("\n".join(f"import {name}" for name in APP_SIDE))
    assert set(APP_SIDE) <= set(modules)  # they were really imported
    assert lab_and_streamlit(modules) == []
    assert tensorflow_and_keras(modules) == []


@pytest.mark.shipped_model
def test_scoring_explaining_and_cropping_load_no_lab_module_and_no_streamlit(tmp_path):
    # Run, not only imported: lazy imports inside functions count too.
    code = f"""
from pneumo_model import cli
from pneumo_model.explain import GradCam, LimeConfig, explain_lime
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor
predictor = Predictor.from_file()
image = DecodedImage.decode({str(SAMPLE)!r})
assert predictor.call(image).ood is not None
GradCam(predictor.model, predictor.metadata.gradcam_layer)(image.model_input(predictor.input_size))
explain_lime(image.model_input(predictor.input_size), predictor, LimeConfig(num_samples=50, n_segments=10))
predictor.rescore(image, (0, 0, image.pixels.shape[1], image.pixels.shape[0] * 3 // 4))
assert cli.main(["predict", {str(SAMPLE)!r}]) == 0
assert cli.main(["crop", {str(SAMPLE)!r}]) == 0
assert cli.main(["explain", {str(SAMPLE)!r}, "--method", "gradcam", "--out", {str(tmp_path / "g.png")!r}]) == 0
"""
    modules = imported_after(code)
    assert "pneumo_model.prediction" in modules and "onnxruntime" in modules
    assert lab_and_streamlit(modules) == []
    assert tensorflow_and_keras(modules) == []


@pytest.mark.shipped_model
def test_every_run_time_command_runs_on_a_real_film_without_tensorflow_or_keras(tmp_path):
    # Each command is run, not only imported, in a fresh interpreter; then sys.modules is read.
    folder = tmp_path / "films"
    folder.mkdir()
    for index, sample in enumerate(sorted(SAMPLE.parent.glob("*.jpeg"))[:3]):
        (folder / f"film{index}{sample.suffix}").write_bytes(sample.read_bytes())
    code = f"""
import io, json, contextlib
import numpy as np
from pneumo_model import cli
from pneumo_model.batch_ray import _Scorer
from pneumo_model.explain import HeatmapScale, heatmap_scale_path
from pneumo_model.pacs import Instance
from pneumo_model.pacs_workflow import heatmap_picture, score_instances
from pneumo_model.paths import DEFAULT_MODEL_PATH
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor
from pneumo_model.preprocessing import ImageLimits
out = io.StringIO()
with contextlib.redirect_stdout(out):
    assert cli.main(["predict", {str(SAMPLE)!r}]) == 0
    assert cli.main(["crop", {str(SAMPLE)!r}, "--mask-markers"]) == 0
    assert cli.main(["explain", {str(SAMPLE)!r}, "--method", "gradcam", "--out", {str(tmp_path / "g.png")!r}]) == 0
    assert cli.main(["explain", {str(SAMPLE)!r}, "--method", "lime", "--samples", "60", "--out", {str(tmp_path / "l.png")!r}]) == 0
    assert cli.main(["batch", {str(folder)!r}, "--out", {str(tmp_path / "local")!r}]) == 0
predicted = json.loads(out.getvalue().splitlines()[0])
assert predicted["label"] in ("normal", "pneumonia") and predicted["ood"] is not None
# The subtype pattern's network (on by default) runs in the same process, on its own graph.
assert (predicted["subtype"] is not None) == (predicted["label"] == "pneumonia" and not predicted["ood"])
assert Predictor.from_file().subtype is not None
# What a Ray actor runs for the `batch --engine ray` command, in this process.
import pyarrow as pa
files = sorted({str(folder)!r} and __import__("pathlib").Path({str(folder)!r}).iterdir())
scorer = _Scorer(str(DEFAULT_MODEL_PATH), None, 1, ImageLimits())
table = scorer(pa.table({{"path": [str(f) for f in files], "bytes": [f.read_bytes() for f in files]}}))
assert table.num_rows == len(files) and all(row["probability"] is not None for row in table.to_pylist())
# PACS scoring: the one pipeline behind a client that hands back the film's bytes.
class Client:
    class settings:
        workers = 1
    def retrieve(self, instance, max_bytes):
        return {str(SAMPLE)!r} and open({str(SAMPLE)!r}, "rb").read()
instance = Instance("1.2", "1.2.3", "1.2.3.4", "1.2.840.10008.5.1.4.1.1.1", "CR", "PA", 1, True)
predictor = Predictor.from_file()
(result,) = score_instances(Client(), predictor, [instance], keep_images=True)
assert result.prediction is not None
scale = HeatmapScale.load(heatmap_scale_path(DEFAULT_MODEL_PATH), predictor.metadata.model_sha256)
assert heatmap_picture(predictor, result.image, scale) is not None
"""
    modules = imported_after(code)
    assert {"onnxruntime", "pneumo_model.batch", "pneumo_model.pacs", "pneumo_model.explain", "lime", "pneumo_model.subtype"} <= set(modules)
    assert tensorflow_and_keras(modules) == []
    assert lab_and_streamlit(modules) == []


@pytest.mark.data
@pytest.mark.shipped_model
def test_site_fit_and_check_run_without_tensorflow_or_keras(tmp_path):
    sample = tmp_path / "sample"
    for label in ("NORMAL", "PNEUMONIA"):
        (sample / label).mkdir(parents=True)
        for film in sorted((DATA / "train" / label).glob("*.jpeg"))[:30]:
            (sample / label / film.name).symlink_to(film)
    profile = tmp_path / "site.json"
    code = f"""
import contextlib, io
from pneumo_model import cli
with contextlib.redirect_stdout(io.StringIO()):
    status = cli.main(["site", "fit", "--folder", {str(sample)!r}, "--out", {str(profile)!r}])
    assert status in (0, 2), status
    if status == 0:
        assert cli.main(["site", "check", {str(profile)!r}, "--folder", {str(sample)!r}]) in (0, 2)
"""
    modules = imported_after(code)
    assert "pneumo_model.site" in modules and "onnxruntime" in modules
    assert tensorflow_and_keras(modules) == []


def test_the_lab_side_is_all_in_pneumo_model_lab():
    lab = {path.stem for path in (REPO / "pneumo_model" / "lab").glob("*.py")} - {"__init__"}
    top = {path.stem for path in (REPO / "pneumo_model").glob("*.py")}
    assert {"training", "evaluation", "stress", "shifts", "comparison", "bench", "model_card", "augmentation",
            "attention", "draft_check", "batch_bench", "pacs_files", "orthanc", "pacs_bench",
            "models", "ood_corpus", "ood_fit", "metrics", "plots", "grey_zone", "site_evaluation", "cam_scale", "crop_boxes",
            "onnx_export", "onnx_bench", "label_free", "monitor_rules", "subtype_training", "subtype_evaluation"} == lab
    assert not lab & top
