"""The command line: predict's JSON lines and exit codes on good and bad files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import encode, synthetic_xray
from pneumo_model.artifacts import DEFAULT_MODEL_PATH
from pneumo_model.cli import main

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


def test_predict_prints_schema_v1_and_exits_0_when_all_are_scored(tiny_model, files, capsys):
    good, _ = files
    code, records, _ = _run(capsys, ["predict", str(good), str(good), "--model", str(tiny_model)])
    assert code == 0 and len(records) == 2
    record = records[0]
    assert set(record) == {"schema_version", "file", "probability", "label", "grey_zone", "threshold", "model_sha", "warnings", "ood"}
    assert record["schema_version"] == 1 and record["file"] == str(good)
    assert 0.0 <= record["probability"] <= 1.0
    assert record["label"] == ("pneumonia" if record["probability"] >= record["threshold"] else "normal")
    assert record["ood"] is None and record["warnings"] == []


def test_a_bad_file_is_reported_and_does_not_stop_the_others(tiny_model, files, capsys, tmp_path):
    good, bad = files
    missing = tmp_path / "missing.jpeg"
    code, records, _ = _run(capsys, ["predict", str(bad), str(good), str(missing), "--model", str(tiny_model)])
    assert code == 2
    assert [sorted(r) for r in records][0] == ["error", "file", "schema_version"]
    assert "not a readable image" in records[0]["error"]
    assert "probability" in records[1]
    assert "does not exist" in records[2]["error"]


def test_a_missing_model_exits_1_with_a_message(files, capsys, tmp_path):
    good, _ = files
    code, records, err = _run(capsys, ["predict", str(good), "--model", str(tmp_path / "none.keras")])
    assert code == 1 and records == []
    assert "is missing" in err


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
