"""The command line: predict's JSON lines and exit codes on good and bad files; every command
reaches its own handler; ``--help`` loads no TensorFlow."""

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import encode, synthetic_xray
from pneumo_model import cli
from pneumo_model.artifacts import DEFAULT_MODEL_PATH
from pneumo_model.cli import build_parser, main
from pneumo_model.schema import PREDICTION_SCHEMA_VERSION

REPO = Path(__file__).resolve().parent.parent
SAMPLES = sorted((REPO / "assets" / "samples").glob("*.jpeg"))


@pytest.fixture
def files(tmp_path, rng):
    good = tmp_path / "good.png"
    good.write_bytes(encode(synthetic_xray(rng, 96)))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"<html>not an image</html>")
    return good, bad


def _run(capsys, argv):
    code = main(argv)
    out = capsys.readouterr()
    return code, [json.loads(line) for line in out.out.splitlines()], out.err


def test_predict_prints_the_schema_and_exits_0_when_all_are_scored(tiny_model, files, capsys):
    good, _ = files
    code, records, _ = _run(capsys, ["predict", str(good), str(good), "--model", str(tiny_model)])
    assert code == 0 and len(records) == 2
    record = records[0]
    assert set(record) == {
        "schema_version", "file", "probability", "label", "grey_zone", "threshold", "operating_point", "model_sha",
        "warnings", "ood", "ood_score", "ood_grade", "age_years", "subtype", "subtype_probability",
    }
    from pneumo_model.artifacts import read_metadata
    from pneumo_model.operating_point import OperatingPoint

    assert record["operating_point"] == OperatingPoint.shipped(read_metadata(tiny_model)).id
    assert record["schema_version"] == PREDICTION_SCHEMA_VERSION and record["file"] == str(good)
    assert 0.0 <= record["probability"] <= 1.0
    assert record["label"] == ("pneumonia" if record["probability"] >= record["threshold"] else "normal")
    assert record["ood"] is None and record["ood_score"] is None and record["warnings"] == []
    assert record["ood_grade"] is None and record["age_years"] is None  # no gate; not a DICOM
    assert record["subtype"] is None and record["subtype_probability"] is None  # no subtype network


def test_predict_prints_and_records_the_pattern_of_a_pneumonia_call_and_null_for_a_normal_one(
    tiny_subtype, tmp_path, capsys, monkeypatch
):
    from helpers import calling_every_film
    from pneumo_model.audit import AuditTrail
    from pneumo_model.prediction import Predictor
    from pneumo_model.subtype import PATTERNS

    monkeypatch.setenv("PNEUMO_SUBTYPE", "1")
    rng = np.random.default_rng(0)
    films = []
    for index in range(4):
        films.append(tmp_path / f"film{index}.png")
        films[-1].write_bytes(encode(synthetic_xray(rng, 80, lesion=index % 2 == 1)))
    db = tmp_path / "audit.sqlite3"
    load = Predictor.from_file
    for label in ("pneumonia", "normal"):  # the model as the command loads it, calling every film one way
        monkeypatch.setattr(Predictor, "from_file", lambda *args, **kwargs: calling_every_film(load(*args, **kwargs), label))
        code, records, _ = _run(capsys, ["predict", *map(str, films), "--model", str(tiny_subtype), "--audit", str(db)])
        assert code == 0 and [record["label"] for record in records] == [label] * len(films)
        assert all(record["schema_version"] == PREDICTION_SCHEMA_VERSION == 4 for record in records)
        for record in records:
            if label == "pneumonia":
                assert record["subtype"] in PATTERNS and 0.0 <= record["subtype_probability"] <= 1.0
            else:
                assert record["subtype"] is None and record["subtype_probability"] is None
        rows = {row["result_id"]: row for row in AuditTrail(db).trail()}
        for record in records:
            row = rows[record["audit_id"]]
            assert row["subtype"] == record["subtype"]
            assert row["subtype_probability"] == pytest.approx(record["subtype_probability"], abs=1e-6) or (
                row["subtype_probability"] is record["subtype_probability"] is None
            )


def test_predict_with_audit_records_each_scored_file_and_no_file_name(tiny_model, files, capsys, tmp_path):
    from pneumo_model.audit import AuditTrail

    _, bad = files
    good = tmp_path / "Doe_Jane_PID8675309.png"  # names like this are what a PACS export may give
    good.write_bytes(files[0].read_bytes())
    db = tmp_path / "trail" / "audit.sqlite3"
    argv = ["predict", str(good), str(bad), str(good), "--model", str(tiny_model), "--audit", str(db)]
    code, records, _ = _run(capsys, argv)
    assert code == 2
    rows = AuditTrail(db).trail()
    assert [row["result_id"] for row in rows] == [records[0]["audit_id"], records[2]["audit_id"]]
    assert "audit_id" not in records[1]
    digest = hashlib.sha256(good.read_bytes()).hexdigest()
    for row, record in zip(rows, (records[0], records[2])):
        assert row["image_sha256"] == digest and row["source"] == "cli"
        assert row["probability"] == pytest.approx(record["probability"], abs=1e-6)
        assert row["model_sha256"] == record["model_sha"] and row["label"] == record["label"]
    stored = b"".join(path.read_bytes() for path in db.parent.iterdir())
    assert b"Doe_Jane" not in stored and b"PID8675309" not in stored


def test_a_bad_file_is_reported_and_does_not_stop_the_others(tiny_model, files, capsys, tmp_path):
    good, bad = files
    missing = tmp_path / "missing.jpeg"
    code, records, _ = _run(capsys, ["predict", str(bad), str(good), str(missing), "--model", str(tiny_model)])
    assert code == 2
    assert [sorted(r) for r in records][0] == ["error", "file", "schema_version"]
    assert records[0]["schema_version"] == records[1]["schema_version"] == PREDICTION_SCHEMA_VERSION
    assert "not a readable image" in records[0]["error"]
    assert "probability" in records[1]
    assert "does not exist" in records[2]["error"]


def test_a_missing_model_exits_1_with_a_message(files, capsys, tmp_path):
    good, _ = files
    code, records, err = _run(capsys, ["predict", str(good), "--model", str(tmp_path / "none.keras")])
    assert code == 1 and records == []
    assert "is missing" in err


# The shortest command line of each command; a new command must be added here.
MINIMAL_ARGV = {
    "predict": ["predict", "a.png"],
    "batch": ["batch", "archive", "--out", "results"],
    "train": ["train"],
    "train_subtype": ["train-subtype"],
    "evaluate": ["evaluate"],
    "explain": ["explain", "a.png", "--out", "a_gradcam.png"],
    "crop": ["crop", "a.png"],
    "compare": ["compare"],
    "stress": ["stress", "m.keras"],
    "bench": ["bench"],
    "ood": ["ood", "fit"],
    "heatmap_scale": ["heatmap-scale"],
    "export_onnx": ["export-onnx"],
    "card": ["card"],
    # A command with sub-commands has one handler per sub-command, named after both.
    "site_fit": ["site", "fit", "--folder", "d", "--out", "p.json"],
    "site_check": ["site", "check", "p.json", "--labels", "l.csv"],
    "site_evaluate": ["site", "evaluate"],
    "pacs_query": ["pacs", "query"],
    "pacs_score": ["pacs", "score", "--study", "1.2.3"],
    "zone": ["zone"],
    "attention": ["attention"],
    "monitor": ["monitor", "--audit", "a.sqlite3"],
}


def _commands(parser):
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_every_command_parses_to_its_own_handler():
    parser = build_parser()
    assert set(_commands(parser)) == {argv[0] for argv in MINIMAL_ARGV.values()}
    handlers = {name: parser.parse_args(argv).handler for name, argv in MINIMAL_ARGV.items()}
    assert handlers == {name: getattr(cli, f"_{name}") for name in MINIMAL_ARGV}
    assert len(set(handlers.values())) == len(handlers)


@pytest.mark.parametrize("name", sorted(MINIMAL_ARGV))
def test_main_runs_the_parsed_commands_handler_and_no_other(name, monkeypatch):
    ran = []
    for other in MINIMAL_ARGV:  # every handler is a spy: the command must reach its own, once
        monkeypatch.setattr(cli, f"_{other}", lambda args, other=other: ran.append((other, args.command)) or 7)
    assert main(MINIMAL_ARGV[name]) == 7
    assert ran == [(name, MINIMAL_ARGV[name][0])]


def test_a_command_without_a_handler_is_refused_when_the_parser_is_built(monkeypatch):
    def add_forgotten(commands):
        commands.add_parser("forgotten", help="sets no handler")

    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, add_forgotten))
    with pytest.raises(TypeError, match="forgotten set no handler"):
        build_parser()


# The command words of each handler's argv: ["site", "fit"] for site_fit, ["predict"] for predict.
HELP_COMMANDS = [[], *(MINIMAL_ARGV[name][: len(name.split("_")) if name.startswith("site_") else 1] for name in sorted(MINIMAL_ARGV))]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_help_imports_no_tensorflow(command):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pneumo_model", *command, "--help"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 0 and result.stdout.startswith("usage: python -m pneumo_model")
    # -X importtime writes "import time: self | cumulative | name" for every module imported.
    imported = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "pneumo_model.cli" in imported
    assert not {name for name in imported if name.split(".")[0] in ("tensorflow", "keras")}


def test_train_flags_left_out_keep_train_configs_defaults_and_choices():
    from pneumo_model.lab.training import IMBALANCE_METHODS, PROTOCOLS, TrainConfig

    assert cli.TRAIN_PROTOCOLS == PROTOCOLS and cli.TRAIN_IMBALANCE_METHODS == IMBALANCE_METHODS
    assert cli.train_config_from_args(build_parser().parse_args(["train"])) == TrainConfig()
    argv = ["train", "--epochs", "3", "--no-augment", "--class-aspect", "1.1", "--target-sensitivity", "0.9", "--time-budget", "5"]
    config = cli.train_config_from_args(build_parser().parse_args(argv))
    assert (config.epochs, config.augment, config.time_budget_s) == (3, False, 5.0)
    assert config.augmentation.class_aspect == 1.1 and config.augmentation.max_aspect == TrainConfig().augmentation.max_aspect
    assert config.operating.target_sensitivity == 0.9 and config.seed == TrainConfig().seed


def test_train_records_its_command_line_and_a_package_error_exits_1(monkeypatch, tmp_path, capsys):
    from pneumo_model.lab import training
    from pneumo_model.errors import ConfigError

    commands = []

    def refuse(config, data_dir, model_path, command):
        commands.append(command)
        raise ConfigError("The budget is too small.")

    monkeypatch.setattr(training, "train", refuse)
    argv = ["train", "--epochs", "1", "--data", str(tmp_path / "my data")]
    assert main(argv) == 1
    assert commands == [f"python -m pneumo_model train --epochs 1 --data '{tmp_path / 'my data'}'"]
    assert capsys.readouterr().err == "error: The budget is too small.\n"


def test_usage_errors_exit_with_argparse_code():
    with pytest.raises(SystemExit) as raised:
        main(["predict"])
    assert raised.value.code == 2  # argparse's own code for a usage error


@pytest.mark.shipped_model
def test_module_entry_point_scores_the_bundled_samples_with_the_shipped_model():
    assert SAMPLES, "assets/samples holds no sample images"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "pneumo_model", "predict", *map(str, SAMPLES)],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(SAMPLES)
    shipped_sha = json.loads(DEFAULT_MODEL_PATH.with_suffix(".json").read_text())["model_sha256"]
    assert all(r["model_sha"] == shipped_sha for r in records)
    # Sample names carry their label: the shipped model should call most of them right.
    right = [(r["label"] == "pneumonia") == ("person" in Path(r["file"]).name) for r in records]
    assert np.mean(right) >= 0.75


def test_explain_writes_overlays_at_the_uploads_own_size(tiny_pneumonet, tmp_path, rng, capsys):
    import shutil

    from PIL import Image

    from pneumo_model.artifacts import read_metadata
    from pneumo_model.explain import HeatmapScale, heatmap_scale_path

    image = tmp_path / "wide.png"
    image.write_bytes(encode(synthetic_xray(rng, 96)[:, :80]))  # 80 wide, 96 tall
    model = tmp_path / "tiny.keras"  # a copy, with a heat-map scale of its own beside it
    for suffix in (".keras", ".json", ".onnx", ".onnx.json"):
        shutil.copy(tiny_pneumonet.with_suffix(suffix), model.with_suffix(suffix))
    HeatmapScale(
        model_sha256=read_metadata(model).model_sha256, gradcam_scale=1.0, gradcam_weak_below=0.0,
        lime_small_below=0.01, lime_num_samples=64, lime_n_segments=12,
    ).save(heatmap_scale_path(model))
    lime_flags = ["--samples", "64", "--segments", "12"]
    for method in ("gradcam", "lime"):
        out, legend = tmp_path / f"{method}.png", tmp_path / f"{method}_legend.png"
        argv = ["explain", str(image), "--method", method, "--out", str(out), "--model", str(model)]
        code, records, _ = _run(capsys, argv + (lime_flags if method == "lime" else []))
        assert code == 0 and records[0]["method"] == method and 0.0 <= records[0]["probability"] <= 1.0
        assert "legend_out" not in records[0] and not legend.exists()  # the colour bar only when asked for
        with Image.open(out) as written:
            # The bare overlay at the upload's own 80 x 96, so it lies exactly over the film in a viewer.
            assert written.mode == "RGB" and written.size == (80, 96)
            overlay = np.asarray(written)
        code, records, _ = _run(capsys, argv + ["--legend-out", str(legend)] + (lime_flags if method == "lime" else []))
        assert code == 0 and records[0]["legend_out"] == str(legend)
        with Image.open(out) as again, Image.open(legend) as bar:
            assert np.array_equal(np.asarray(again), overlay)  # the same overlay, with or without the bar
            assert bar.mode == "RGB" and bar.width == 640 and bar.height < 200  # the bar alone, 640 px wide
    assert records[0]["towards_pneumonia"] or records[0]["away_from_pneumonia"]


def test_crop_with_a_given_box_prints_before_after_and_delta(tiny_model, files, tmp_path, capsys):
    good, bad = files
    out = tmp_path / "crop.png"
    argv = ["crop", str(good), "--box", "0,0,96,72", "--out", str(out), "--model", str(tiny_model)]
    code, records, _ = _run(capsys, argv)
    record = records[0]
    assert code == 0 and record["box"] == [0, 0, 96, 72] and record["box_source"] == "given"
    assert record["delta"] == pytest.approx(record["probability_after"] - record["probability_before"])
    assert out.is_file()
    code, records, _ = _run(capsys, ["crop", str(bad), "--model", str(tiny_model)])
    assert code == 2 and "not a readable image" in records[0]["error"]


@pytest.mark.parametrize("box, reason", [("0,0,96", "four whole numbers"), ("0,0,500,72", "")])
def test_crop_rejects_an_unusable_box_with_a_plain_message(tiny_model, files, capsys, box, reason):
    good, _ = files
    code = main(["crop", str(good), "--box", box, "--model", str(tiny_model)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and reason in err and "Traceback" not in err


@pytest.mark.shipped_model
def test_crop_on_a_photo_reports_the_gate_before_and_after_as_predict_does(tmp_path, capsys):
    from skimage import data as photos

    photo = tmp_path / "astronaut.png"
    photo.write_bytes(encode(photos.astronaut()))  # (512, 512, 3): a colour photo, not an X-ray
    code, records, _ = _run(capsys, ["crop", str(photo), "--box", "0,0,512,384"])
    record = records[0]
    assert code == 0 and record["box"] == [0, 0, 512, 384]
    assert record["ood_before"] is True and record["ood_after"] is True  # the crop is a photo too
    assert record["ood_score_before"] > 1 and record["ood_score_after"] > 1
    assert any("colour" in warning for warning in record["warnings"])
    code, predicted, _ = _run(capsys, ["predict", str(photo)])
    assert predicted[0]["ood"] is True and predicted[0]["ood_score"] == record["ood_score_before"]
    assert predicted[0]["probability"] == pytest.approx(record["probability_before"], abs=1e-6)


def test_crop_without_a_diaphragm_suggests_no_crop_and_says_why(tiny_model, tmp_path, capsys):
    flat = tmp_path / "flat.png"
    flat.write_bytes(encode(np.full((96, 96), 128, np.uint8)))
    code, records, _ = _run(capsys, ["crop", str(flat), "--model", str(tiny_model)])
    record = records[0]
    assert code == 0 and record["box"] is None and record["probability_after"] is None and record["reason"]


def _film_with_a_letter(tmp_path) -> Path:
    """A PNG with a burned-in near-white R on a smooth background (what ``find_markers`` is for)."""
    import cv2

    y = np.mgrid[0:128, 0:128][0]
    pixels = (90 + 60 * y / 128).astype(np.uint8)
    cv2.putText(pixels, "R", (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.7, 255, 2)
    path = tmp_path / "lettered.png"
    path.write_bytes(encode(pixels))
    return path


def test_crop_mask_markers_reports_the_markers_alone_or_with_a_box(tiny_model, tmp_path, capsys):
    film = _film_with_a_letter(tmp_path)
    out = tmp_path / "outlined.png"
    code, records, _ = _run(capsys, ["crop", str(film), "--mask-markers", "--no-crop", "--out", str(out), "--model", str(tiny_model)])
    record = records[0]
    assert code == 0 and record["box"] is None and record["box_source"] == "none" and out.is_file()
    assert record["markers"]["count"] == 1 == record["marker_count"] and record["markers_masked"] is True
    assert 0 < record["markers"]["area_fraction"] == record["marker_area_fraction"] < 0.05
    x0, y0, x1, y1 = record["markers"]["boxes"][0]
    assert x0 < 30 and y0 < 30 and x1 > 10 and y1 > 10  # where the R was drawn
    assert record["delta"] == pytest.approx(record["probability_after"] - record["probability_before"])
    assert isinstance(record["call_changed"], bool) and isinstance(record["threshold_crossed"], bool)
    code, records, _ = _run(capsys, ["crop", str(film), "--mask-markers", "--box", "0,0,128,96", "--model", str(tiny_model)])
    assert code == 0 and records[0]["box"] == [0, 0, 128, 96] and records[0]["marker_count"] == 1
    code, records, _ = _run(capsys, ["crop", str(film), "--box", "0,0,128,96", "--model", str(tiny_model)])
    assert records[0]["markers_masked"] is False and "markers" not in records[0]


@pytest.mark.parametrize(
    "argv, words", [(["--no-crop"], "nothing to rescore"), (["--no-crop", "--mask-markers", "--box", "0,0,96,72"], "contradict")]
)
def test_crop_refuses_flags_that_leave_nothing_to_do_or_contradict(tiny_model, files, capsys, argv, words):
    good, _ = files
    code = main(["crop", str(good), *argv, "--model", str(tiny_model)])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: ") and words in err


def test_evaluate_markers_reports_four_columns_on_the_same_images(tiny_model, synthetic_data, tmp_path, capsys):
    from pneumo_model.lab.evaluation import MARKER_COLUMNS

    argv = ["evaluate", "--crop", "markers", "--split", "validation", "--data", str(synthetic_data),
            "--model", str(tiny_model), "--reports", str(tmp_path), "--fullres", str(tmp_path / "none")]
    code = main(argv)
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])
    report = json.loads((tmp_path / "marker_evaluation_validation.json").read_text())
    assert code == 0 and report["split"] == "validation" and report["images"] > 0
    assert set(report["metrics"]) == set(MARKER_COLUMNS) == set(summary) - {"markers_found_fraction", "calls_changed_by_masking"}
    for column in MARKER_COLUMNS:
        assert sum(report["metrics"][column]["confusion"].values()) == report["images"]
    if report["markers"]["found_images"] == 0:  # nothing to paint out: masking must change no figure
        assert report["metrics"]["markers_masked"] == report["metrics"]["whole"]
        assert report["changes"]["masking"]["threshold_crossed"] == 0 == report["changes"]["masking"]["call_changed"]
    assert report["changes"]["masking"]["call_changed"] <= report["changes"]["masking"]["threshold_crossed"]
    assert report["fullres_detection"] is None and report["command"].endswith("--crop markers --split validation")
    assert "Answer: masking the markers" in (tmp_path / "marker_evaluation_validation.md").read_text()
    assert not (tmp_path / "test_evaluations.jsonl").exists()  # validation is not a test use


def test_evaluate_with_auto_crop_reports_both_columns_on_the_same_images(tiny_model, synthetic_data, tmp_path, capsys):
    argv = ["evaluate", "--crop", "auto", "--split", "validation", "--data", str(synthetic_data),
            "--model", str(tiny_model), "--reports", str(tmp_path)]
    code = main(argv)
    capsys.readouterr()
    report = json.loads((tmp_path / "crop_evaluation_validation.json").read_text())
    assert code == 0 and report["split"] == "validation" and report["images"] > 0
    without, with_crop = report["metrics"]["without_crop"], report["metrics"]["with_auto_crop"]
    assert sum(without["confusion"].values()) == sum(with_crop["confusion"].values()) == report["images"]
    if report["crop_found_fraction"] == 0:  # nothing cropped: both columns must be the same figures
        assert without == with_crop and report["calls_changed"] == 0
    assert "Answer: the automatic crop" in (tmp_path / "crop_evaluation_validation.md").read_text()
    assert not (tmp_path / "test_evaluations.jsonl").exists()  # validation is not a test use


def test_bench_times_every_step_and_compares_lime_with_the_naive_way(tiny_model, synthetic_data, tmp_path, capsys):
    argv = ["bench", "--data", str(synthetic_data), "--model", str(tiny_model), "--reports", str(tmp_path),
            "--lime-images", "2", "--naive-images", "1", "--samples", "40", "--only", "speed"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    report = json.loads((tmp_path / "bench.json").read_text())
    for step in ("decode_preprocess_fullres", "predict_one", "gradcam", "diaphragm", "lime", "lime_naive"):
        assert report["results"][step]["median_s"] > 0 and report["results"][step]["p95_s"] >= report["results"][step]["median_s"]
    assert report["results"]["lime"]["n"] == 2 and report["results"]["lime_naive"]["n"] == 1
    assert set(report["targets"]) == {"predict_one_s", "gradcam_s", "lime_s", "diaphragm_s", "batch_images_per_s", "lime_speedup_vs_naive"}
    assert "faster on the same images" in printed and "images/s" in printed
