"""``batch``: one row per file in a Parquet data set, resumable, nothing lost, the same probabilities
as ``predict`` on either engine (real files, real Parquet, a real SIGKILL, a real local Ray)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from helpers import encode, synthetic_xray
from pneumo_model import cli
from pneumo_model.audit import AuditTrail
from pneumo_model.batch import (
    RESULT_COLUMNS,
    BatchError,
    BatchSettings,
    LocalEngine,
    ResultsFolder,
    error_row,
    open_source,
    result_schema,
    run_batch,
)
from pneumo_model.pipeline import DecodedImage
from pneumo_model.prediction import Predictor

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "assets" / "samples"
SCORE_COLUMNS = ["probability", "label", "grey_zone", "ood", "ood_score"]


@pytest.fixture(scope="module")
def predictor(tiny_model):
    return Predictor.from_file(tiny_model)


def write_archive(folder: Path, n: int = 6, seed: int = 0, size: int = 96) -> list[Path]:
    """``n`` distinct images in two nested folders (PNG and JPEG), a damaged file, an empty one and
    a hidden file (not an item)."""
    rng = np.random.default_rng(seed)
    (folder / "a" / "b").mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(n):
        lesion = index % 2 == 1
        fmt = "PNG" if index % 3 else "JPEG"
        path = folder / ("a" if index % 2 else "a/b") / f"film{index}.{fmt.lower()}"
        path.write_bytes(encode(synthetic_xray(rng, size, lesion), fmt))
        paths.append(path)
    (folder / "damaged.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "a" / "empty.jpeg").write_bytes(b"")
    (folder / ".DS_Store").write_bytes(b"finder")
    return paths


def read_results(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out).sort_values("file").reset_index(drop=True)


def test_a_folder_gives_one_row_per_file_with_exactly_the_columns_and_predicts_probabilities(predictor, tmp_path):
    images = write_archive(tmp_path / "archive")
    items = open_source(tmp_path / "archive")
    assert len(items) == len(images) + 2  # the damaged and the empty file are items; the hidden file is not
    summary = run_batch(items, LocalEngine(predictor, BatchSettings(part_rows=3)), tmp_path / "results", BatchSettings(part_rows=3), progress=False)
    table = read_results(tmp_path / "results")
    assert list(table.columns) == list(RESULT_COLUMNS)
    assert len(table) == len(items) and table["file"].is_unique
    assert (summary.scored, summary.errors, summary.skipped, summary.rows_in_results) == (len(images), 2, 0, len(items))
    errors = table[table["error"].notna()]
    assert sorted(Path(name).name for name in errors["file"]) == ["damaged.png", "empty.jpeg"]
    assert errors[SCORE_COLUMNS].isna().all().all()
    assert errors["model_sha"].eq(predictor.metadata.model_sha256).all()
    assert "empty (0 bytes)" in errors.set_index(errors["file"].map(lambda f: Path(f).name)).loc["empty.jpeg", "error"]
    assert summary.reasons and sum(summary.reasons.values()) == 2
    # Every probability is predict's: the same bytes, DecodedImage and Predictor.call one at a time.
    scored = table[table["error"].isna()].set_index("file")
    for path in images:
        data = path.read_bytes()
        call = predictor.call(DecodedImage.decode(data))
        row = scored.loc[str(path.resolve())]
        assert row["probability"] == pytest.approx(call.probability, abs=1e-6)
        assert (row["label"], bool(row["grey_zone"]), row["operating_point"]) == (call.label, call.grey_zone, call.operating_point)
        assert row["sha256"] == DecodedImage.decode(data).digest
    # Written in parts of at most 3 rows, each a whole Parquet file; nothing else is left behind.
    parts = sorted(path.name for path in (tmp_path / "results").iterdir())
    assert parts == ["_lock"] + [f"part-{index:06d}.parquet" for index in range(1, 4)]
    assert all(pq.read_metadata(tmp_path / "results" / name).num_rows <= 3 for name in parts[1:])


def test_a_list_of_paths_resolves_relative_ones_and_a_missing_file_is_a_row(predictor, tmp_path):
    images = write_archive(tmp_path / "archive", n=3)
    listing = tmp_path / "archive" / "list.txt"
    listing.write_text(f"# films to score\n{images[0].relative_to(listing.parent)}\n\n{images[1]}\n{images[1]}\nnot/there.png\n")
    items = open_source(listing)
    assert [item.name for item in items] == [str(images[0].resolve()), str(images[1].resolve()), str((listing.parent / "not/there.png").resolve())]
    run_batch(items, LocalEngine(predictor), tmp_path / "results", progress=False)
    table = read_results(tmp_path / "results")
    assert len(table) == 3
    missing = table[table["file"].str.endswith("there.png")].iloc[0]
    assert pd.isna(missing["sha256"]) and "does not exist" in missing["error"] and "there.png" not in missing["error"]


def test_a_rerun_skips_every_file_held_and_rescores_a_changed_or_new_one(predictor, tmp_path, rng):
    images = write_archive(tmp_path / "archive")
    out = tmp_path / "results"
    first = run_batch(open_source(tmp_path / "archive"), LocalEngine(predictor), out, progress=False)
    again = run_batch(open_source(tmp_path / "archive"), LocalEngine(predictor), out, progress=False)
    assert (again.skipped, again.scored, again.errors, again.errors_held) == (first.files, 0, 0, 2)
    before = read_results(out)
    # One film replaced by other bytes under the same name, one new film: both scored, the old row replaced.
    images[0].write_bytes(encode(synthetic_xray(rng, 96, lesion=True), "PNG"))
    new = tmp_path / "archive" / "a" / "new.png"
    new.write_bytes(encode(synthetic_xray(rng, 96), "PNG"))
    third = run_batch(open_source(tmp_path / "archive"), LocalEngine(predictor), out, progress=False)
    assert (third.scored, third.skipped) == (2, first.files - 1)
    after = read_results(out)
    assert len(after) == first.files + 1 and after["file"].is_unique
    changed = after.set_index("file").loc[str(images[0].resolve())]
    assert changed["sha256"] == DecodedImage.decode(images[0]).digest != before.set_index("file").loc[str(images[0].resolve()), "sha256"]
    unchanged = before[before["file"] != str(images[0].resolve())].set_index("file")
    assert after.set_index("file").loc[unchanged.index, "sha256"].equals(unchanged["sha256"])


def test_what_a_killed_run_left_is_finished_or_scored_again(predictor, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    schema = result_schema()
    point, model = predictor.operating_point.id, predictor.metadata.model_sha256
    rows = [error_row("/x/recorded.png", "a" * 64, "no", model, point)]
    # A part written whole and recorded in the audit trail, killed before its rename: kept.
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / ".part-000001.parquet.tmp")
    (out / "_audited.jsonl").write_text(json.dumps({"part": "part-000001.parquet", "ids": []}) + "\n{\"part\": \"part-0000")
    # A part killed before its audit record (or cut short): removed, its files scored again.
    (out / ".part-000002.parquet.tmp").write_bytes(b"PAR1 cut short")
    with ResultsFolder(out, model, point) as folder:
        assert set(folder.held) == {"/x/recorded.png"}
    assert sorted(path.name for path in out.iterdir()) == ["_audited.jsonl", "_lock", "part-000001.parquet"]


def test_results_of_another_model_or_operating_point_are_refused_and_left_as_they_are(predictor, tmp_path):
    out = tmp_path / "results"
    out.mkdir()
    other = error_row("/x/a.png", "b" * 64, "no", "f" * 64, predictor.operating_point.id)
    pq.write_table(pa.Table.from_pylist([other], schema=result_schema()), out / "part-000001.parquet")
    write_archive(tmp_path / "archive", n=2)
    with pytest.raises(BatchError, match=r"model ffffffffffff .*give a new --out folder to start fresh"):
        run_batch(open_source(tmp_path / "archive"), LocalEngine(predictor), out, progress=False)
    site = error_row("/x/a.png", "b" * 64, "no", predictor.metadata.model_sha256, "0123456789abcdef")
    pq.write_table(pa.Table.from_pylist([site], schema=result_schema()), out / "part-000001.parquet")
    with pytest.raises(BatchError, match="operating point 0123456789ab"):
        run_batch(open_source(tmp_path / "archive"), LocalEngine(predictor), out, progress=False)
    assert len(pd.read_parquet(out)) == 1


# --- the subtype pattern's columns ------------------------------------------------------------

# RESULTS as the command wrote it before the subtype columns (results schema 1: no metadata).
SCHEMA_1 = pa.schema([
    ("file", pa.string()), ("sha256", pa.string()), ("probability", pa.float64()), ("label", pa.string()),
    ("grey_zone", pa.bool_()), ("ood", pa.bool_()), ("ood_score", pa.float64()), ("ood_grade", pa.string()),
    ("operating_point", pa.string()), ("model_sha", pa.string()), ("warnings", pa.list_(pa.string())),
    ("error", pa.string()),
])


def test_a_pneumonia_call_has_its_pattern_and_a_normal_call_or_a_bad_file_none(tiny_subtype, tmp_path):
    from helpers import calling_every_film
    from pneumo_model.subtype import PATTERNS

    images = write_archive(tmp_path / "archive", n=6)
    with_pattern = Predictor.from_file(tiny_subtype, subtype=True)
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    tables = {}
    for label in ("pneumonia", "normal"):  # the same films, called each way by the same model
        predictor = calling_every_film(with_pattern, label)
        out = tmp_path / f"results_{label}"
        summary = run_batch(open_source(tmp_path / "archive"), LocalEngine(predictor), out, trail=trail, progress=False)
        tables[label] = table = read_results(out)
        assert list(table.columns) == list(RESULT_COLUMNS) and table["error"].notna().sum() == 2
        scored, errors = table[table["error"].isna()], table[table["error"].notna()]
        assert (scored["label"] == label).all() and errors[["subtype", "subtype_probability"]].isna().all().all()
        for path in images:  # predict's pattern, film by film
            call = predictor.call(DecodedImage.decode(path))
            row = scored.set_index("file").loc[str(path.resolve())]
            if label == "pneumonia":
                assert row["subtype"] == call.subtype and row["subtype"] in PATTERNS
                assert row["subtype_probability"] == pytest.approx(call.subtype_probability, abs=1e-6)
            else:
                assert call.subtype is None and pd.isna(row["subtype"]) and pd.isna(row["subtype_probability"])
        assert summary.subtypes == scored["subtype"].value_counts().to_dict()
        assert any(line.startswith("radiographic pattern") for line in summary.lines()) is (label == "pneumonia")
        metadata = pq.read_schema(next(out.glob("part-*.parquet"))).metadata
        assert metadata[b"pneumo.results_schema"] == b"2"
        assert metadata[b"pneumo.subtype_model"] == with_pattern.subtype.metadata.model_sha256.encode()
    # batch --audit records what RESULTS holds, pattern and all
    written = pd.concat([table[table["error"].isna()] for table in tables.values()])
    recorded = sorted((row["image_sha256"], row["label"], row["subtype"] or "", row["subtype_probability"] or -1.0)
                      for row in trail.trail())
    assert recorded == sorted(
        (sha, label, "" if pd.isna(pattern) else pattern, -1.0 if pd.isna(p) else p)
        for sha, label, pattern, p in zip(written["sha256"], written["label"], written["subtype"], written["subtype_probability"])
    )


def test_results_written_before_the_pattern_columns_are_refused_and_left_as_they_are(predictor, tiny_model, tmp_path, capsys):
    write_archive(tmp_path / "archive", n=2)
    out = tmp_path / "results"
    out.mkdir()
    old = {column: None for column in SCHEMA_1.names} | {
        "file": "/x/a.png", "sha256": "b" * 64, "probability": 0.7, "label": "pneumonia", "grey_zone": False,
        "operating_point": predictor.operating_point.id, "model_sha": predictor.metadata.model_sha256, "warnings": [],
    }
    pq.write_table(pa.Table.from_pylist([old], schema=SCHEMA_1), out / "part-000001.parquet")
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    with pytest.raises(BatchError, match=r"results schema 1; this one writes 2.*give a new --out folder"):
        run_batch(open_source(tmp_path / "archive"), LocalEngine(predictor), out, progress=False)
    argv = ["batch", str(tmp_path / "archive"), "--out", str(out), "--model", str(tiny_model), "--no-progress"]
    assert cli.main(argv) == cli.EXIT_ERROR
    error = capsys.readouterr().err
    assert error.startswith("error: RESULTS was written by another version") and "give a new --out folder" in error
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.name != "_lock"} == {
        name: data for name, data in before.items()
    }
    assert list(pd.read_parquet(out).columns) == SCHEMA_1.names  # never mixed: the old table as it was


def test_results_with_the_pattern_off_are_not_continued_with_it_on_nor_the_other_way(tiny_subtype, tmp_path):
    write_archive(tmp_path / "archive", n=2)
    off, on = (Predictor.from_file(tiny_subtype, subtype=flag) for flag in (False, True))
    run_batch(open_source(tmp_path / "archive"), LocalEngine(off), tmp_path / "off", progress=False)
    run_batch(open_source(tmp_path / "archive"), LocalEngine(on), tmp_path / "on", progress=False)
    with pytest.raises(BatchError, match=r"subtype pattern off; this run has the subtype pattern of network .*give a new --out folder"):
        run_batch(open_source(tmp_path / "archive"), LocalEngine(on), tmp_path / "off", progress=False)
    with pytest.raises(BatchError, match=r"subtype pattern of network .*; this run has the subtype pattern off"):
        run_batch(open_source(tmp_path / "archive"), LocalEngine(off), tmp_path / "on", progress=False)
    assert len(pd.read_parquet(tmp_path / "off")) == len(pd.read_parquet(tmp_path / "on")) == 4


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_command_exits_like_predict_and_refuses_bad_inputs_in_plain_words(tiny_model, tmp_path, capsys):
    write_archive(tmp_path / "archive", n=3)
    out = tmp_path / "results"
    model = ["--model", str(tiny_model), "--no-progress"]
    assert cli.main(["batch", str(tmp_path / "archive"), "--out", str(out), *model]) == cli.EXIT_REJECTED
    printed = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(printed[-1])
    assert (summary["files"], summary["scored"], summary["errors"]) == (5, 3, 2)
    assert "3 scored, 2 could not be used" in printed[0]
    assert str(tmp_path) not in "\n".join(printed)  # counts, never a path
    good = tmp_path / "good"
    good.mkdir()
    (good / "one.png").write_bytes(encode(synthetic_xray(np.random.default_rng(5), 96), "PNG"))
    assert cli.main(["batch", str(good), "--out", str(tmp_path / "good_results"), *model]) == cli.EXIT_OK
    capsys.readouterr()

    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    cases = [
        (["batch", str(tmp_path / "nowhere"), "--out", str(out)], "SOURCE does not exist"),
        (["batch", str(tmp_path / "empty"), "--out", str(out)], "holds no file"),
        (["batch", str(good), "--out", str(tmp_path / "a_file")], "RESULTS exists and is a file"),
        (["batch", str(good), "--out", str(tmp_path / "a_file" / "results")], "RESULTS cannot be written"),
        (["batch", str(good), "--out", str(tmp_path / "archive")], "not batch results"),
        (["batch", str(good), "--out", str(out), "--engine", "ray", "--ray-address", f"127.0.0.1:{_free_port()}"], "does not answer"),
    ]
    for argv, words in cases:
        assert cli.main([*argv, *model]) == cli.EXIT_ERROR, argv
        error = capsys.readouterr().err
        assert error.startswith("error: ") and words in error and "Traceback" not in error, (argv, error)
    assert len(pd.read_parquet(out)) == 5  # refused runs changed nothing


def test_a_run_killed_with_sigkill_and_restarted_loses_nothing_and_scores_nothing_twice(tiny_model, tmp_path):
    rng = np.random.default_rng(7)
    archive = tmp_path / "archive"
    archive.mkdir()
    base = [synthetic_xray(rng, 640, lesion=index % 2 == 1) for index in range(8)]
    files = 160
    for index in range(files):
        pixels = base[index % len(base)].copy()
        pixels[0, index] ^= 1  # distinct bytes, the same kind of film
        (archive / f"film{index:03d}.png").write_bytes(encode(pixels, "PNG", compress_level=1))
    out, db = tmp_path / "results", tmp_path / "audit.sqlite3"
    argv = [sys.executable, "-m", "pneumo_model", "batch", str(archive), "--out", str(out), "--model", str(tiny_model),
            "--audit", str(db), "--part-rows", "4", "--decoders", "1", "--no-progress"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    run = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(path.name.startswith("part-") for path in out.iterdir())):
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read().decode()[-2000:]
        time.sleep(0.005)
    time.sleep(0.2)
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert run.returncode == -signal.SIGKILL
    kept = len(pd.read_parquet(out)) if any(path.name.startswith("part-") for path in out.iterdir()) else 0
    assert 0 < kept < files  # killed in the middle, not after the end

    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["skipped"] >= kept and summary["skipped"] + summary["scored"] == files
    table = pd.read_parquet(out)
    assert len(table) == files and table["file"].is_unique and table["error"].isna().all()
    # Scored once each: the audit trail holds one result per film, none twice.
    recorded = [row["image_sha256"] for row in AuditTrail(db).trail()]
    assert len(recorded) == files and sorted(recorded) == sorted(table["sha256"])


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_the_ray_engine_gives_the_local_rows(local_ray, tiny_model, predictor, tmp_path):
    from pneumo_model.batch_ray import RayEngine, RaySettings

    write_archive(tmp_path / "archive", n=40, size=80)
    items = open_source(tmp_path / "archive")
    run_batch(items, LocalEngine(predictor), tmp_path / "local", progress=False)
    summary = run_batch(items, RayEngine(tiny_model, settings=RaySettings(batch_size=8)), tmp_path / "ray", progress=False)
    assert (summary.scored, summary.errors) == (40, 2)
    local, on_ray = read_results(tmp_path / "local"), read_results(tmp_path / "ray")
    assert list(on_ray.columns) == list(RESULT_COLUMNS) and len(on_ray) == len(items)
    assert on_ray["file"].tolist() == local["file"].tolist()
    np.testing.assert_allclose(on_ray["probability"].to_numpy(float), local["probability"].to_numpy(float), atol=1e-6, equal_nan=True)
    for column in ("sha256", "label", "grey_zone", "error", "operating_point", "model_sha"):
        assert on_ray[column].equals(local[column]), column
    assert local_ray.is_initialized()  # a cluster the caller started is left running


@pytest.mark.parametrize("setting", ["1", "0"])
def test_the_ray_engine_loads_the_pattern_as_the_driver_does_and_gives_the_local_rows(
    local_ray, tiny_subtype, tmp_path, monkeypatch, setting
):
    from pneumo_model.batch_ray import RayEngine, RaySettings

    # Set in the driver only: the Ray workers were started without PNEUMO_SUBTYPE (so with its
    # default), and must follow the driver whichever way it is set.
    monkeypatch.setenv("PNEUMO_SUBTYPE", setting)
    write_archive(tmp_path / "archive", n=24, size=80)
    items = open_source(tmp_path / "archive")
    run_batch(items, LocalEngine(Predictor.from_file(tiny_subtype)), tmp_path / "local", progress=False)
    engine = RayEngine(tiny_subtype, settings=RaySettings(batch_size=8))
    assert (engine.subtype_sha is not None) == (setting == "1")
    run_batch(items, engine, tmp_path / "ray", progress=False)
    local, on_ray = read_results(tmp_path / "local"), read_results(tmp_path / "ray")
    assert on_ray["file"].tolist() == local["file"].tolist() and on_ray["label"].equals(local["label"])
    assert on_ray["subtype"].equals(local["subtype"])
    np.testing.assert_allclose(
        on_ray["subtype_probability"].to_numpy(float), local["subtype_probability"].to_numpy(float), atol=1e-6, equal_nan=True
    )
    if setting == "1":  # no gate here: every pneumonia call has its pattern
        assert local["subtype"].notna().any() and (local["subtype"].notna() == (local["label"] == "pneumonia")).all()
    else:
        assert local["subtype"].isna().all()
