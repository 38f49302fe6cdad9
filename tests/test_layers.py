"""The package's two sides, one direction: what the app and ``predict`` run imports nothing of the lab
side (training, evaluation, stress, comparison, bench, model card, gate fitting) and no Streamlit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "assets" / "samples" / "person100_bacteria_475.jpeg"
APP_SIDE = [
    "pneumo_model", "pneumo_model.paths", "pneumo_model.errors", "pneumo_model.preprocessing", "pneumo_model.dicom",
    "pneumo_model.pipeline", "pneumo_model.prediction", "pneumo_model.ood", "pneumo_model.explain",
    "pneumo_model.crop", "pneumo_model.display", "pneumo_model.audit", "pneumo_model.csv_export",
    "pneumo_model.calibration", "pneumo_model.data", "pneumo_model.artifacts", "pneumo_model.cli",
    "pneumo_model.batch", "pneumo_model.batch_ray", "pneumo_model.pacs", "pneumo_model.structured_report",
]


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


def test_importing_the_app_side_loads_no_lab_module_and_no_streamlit():
    modules = imported_after("\n".join(f"import {name}" for name in APP_SIDE))
    assert set(APP_SIDE) <= set(modules)  # they were really imported
    assert lab_and_streamlit(modules) == []


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
    assert "pneumo_model.prediction" in modules and "tensorflow" in modules
    assert lab_and_streamlit(modules) == []


def test_the_lab_side_is_all_in_pneumo_model_lab():
    lab = {path.stem for path in (REPO / "pneumo_model" / "lab").glob("*.py")} - {"__init__"}
    top = {path.stem for path in (REPO / "pneumo_model").glob("*.py")}
    assert {"training", "evaluation", "stress", "shifts", "comparison", "bench", "model_card", "augmentation",
            "attention", "draft_check", "batch_bench", "pacs_files", "orthanc", "pacs_bench",
            "models", "ood_corpus", "ood_fit", "metrics", "plots", "grey_zone", "site_evaluation", "cam_scale", "crop_boxes",
            "monitor_rules"} == lab
    assert not lab & top
