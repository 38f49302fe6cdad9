"""The audit trail: append-only, durable across restarts, concurrent writers and a killed writer."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from pneumo_model.artifacts import REPO_ROOT
from pneumo_model.audit import SCHEMA_VERSION, TRAIL_COLUMNS, AuditError, AuditTrail, ResultRecord
from pneumo_model.prediction import Prediction
from pneumo_model.dicom import DicomTags
from pneumo_model.preprocessing import ImageInfo

IMAGE_SHA = "a" * 64
MODEL_SHA = "b" * 64
POINT = "0123456789abcdef"
AUDIT_V2 = Path(__file__).parent / "data" / "audit_v2.sqlite3"  # written by commit e74230e (tests/data/README.md)


def record(trail: AuditTrail, **changes) -> int:
    values = dict(
        image_sha256=IMAGE_SHA,
        model_sha256=MODEL_SHA,
        threshold=0.23,
        probability=0.81,
        label="pneumonia",
        grey_zone=False,
        source="app",
        ood=False,
        ood_score=0.4,
        operating_point=POINT,
    )
    return trail.record_result(**{**values, **changes})


def test_results_and_verdicts_are_read_back_joined(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    first = record(trail, crop_box=(0, 0, 200, 150))
    second = record(trail, probability=0.1, label="normal", grey_zone=True, ood=None, ood_score=None)
    verdict = trail.record_verdict(first, "disagree", note="  looks normal to me ", reviewer="Dr A")
    rows = trail.trail()
    assert [row["result_id"] for row in rows] == [first, second]
    assert rows[0]["verdict_id"] == verdict and rows[0]["verdict"] == "disagree"
    assert rows[0]["note"] == "looks normal to me" and rows[0]["reviewer"] == "Dr A"
    assert rows[0]["crop_box"] == "[0, 0, 200, 150]" and rows[0]["operating_point"] == POINT
    assert rows[1]["verdict"] is None and rows[1]["grey_zone"] == 1 and rows[1]["ood"] is None
    assert rows[1]["probability"] == pytest.approx(0.1) and rows[1]["label"] == "normal"
    assert rows[0]["recorded_utc"].endswith("+00:00")
    assert trail.counts() == {"results": 2, "verdicts": 1, "reveals": 0}


def test_a_reveal_is_kept_and_shown_with_its_result(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    hidden, other = record(trail, ood=True, ood_score=1.7), record(trail)
    trail.record_reveal(hidden)
    trail.record_reveal(hidden)  # asked twice: both kept, the first time shown
    rows = {row["result_id"]: row for row in trail.trail()}
    assert rows[hidden]["revealed_utc"] is not None and rows[other]["revealed_utc"] is None
    assert trail.counts()["reveals"] == 2
    with pytest.raises(AuditError, match="no recorded result 42"):
        trail.record_reveal(42)


def test_several_verdicts_on_one_result_are_all_kept(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    for verdict in ("agree", "unsure", "disagree"):
        trail.record_verdict(result, verdict)
    assert [row["verdict"] for row in trail.trail()] == ["agree", "unsure", "disagree"]


def test_csv_export_has_the_header_and_one_line_per_row(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    trail.record_verdict(result, "agree", note='a "quoted", note\non two lines')
    rows = list(csv.DictReader(io.StringIO(trail.to_csv())))
    assert list(rows[0]) == list(TRAIL_COLUMNS)
    assert len(rows) == 1 and rows[0]["note"] == 'a "quoted", note\non two lines'
    assert rows[0]["image_sha256"] == IMAGE_SHA and rows[0]["operating_point"] == POINT
    assert list(TRAIL_COLUMNS).index("operating_point") == list(TRAIL_COLUMNS).index("threshold") + 1


def test_csv_export_defuses_spreadsheet_formulas(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    trail.record_verdict(result, "unsure", note="=HYPERLINK(\"http://x\")", reviewer="@admin")
    (row,) = csv.DictReader(io.StringIO(trail.to_csv()))
    assert row["note"] == "'=HYPERLINK(\"http://x\")" and row["reviewer"] == "'@admin"
    assert trail.trail()[0]["note"] == "=HYPERLINK(\"http://x\")"  # stored as typed


def test_a_batch_is_recorded_whole_or_not_at_all(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    good = ResultRecord(IMAGE_SHA, MODEL_SHA, 0.2, 0.5, "normal", False, "app", operating_point=POINT)
    ids = trail.record_results([good, good])
    assert ids == [1, 2]
    bad = ResultRecord(IMAGE_SHA, MODEL_SHA, 0.2, 7.0, "normal", False, "app", operating_point=POINT)  # probability out of range
    with pytest.raises(AuditError, match="not acceptable"):
        trail.record_results([good, bad])
    assert trail.counts()["results"] == 2
    assert trail.record_results([]) == []


def test_records_are_append_only(tmp_path):
    path = tmp_path / "audit.sqlite3"
    trail = AuditTrail(path)
    result = record(trail)
    trail.record_verdict(result, "agree")
    trail.record_reveal(result)
    connection = sqlite3.connect(path)
    for statement in (
        "UPDATE reveals SET result_id = 2",
        "DELETE FROM reveals",
        "UPDATE results SET probability = 0.5",
        "DELETE FROM results",
        "UPDATE verdicts SET verdict = 'disagree'",
        "DELETE FROM verdicts",
    ):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            connection.execute(statement)
    connection.close()
    assert trail.trail()[0]["probability"] == pytest.approx(0.81)
    assert trail.counts() == {"results": 1, "verdicts": 1, "reveals": 1}


def test_database_uses_wal_and_survives_a_reopen(tmp_path):
    path = tmp_path / "sub" / "audit.sqlite3"
    ids = [record(AuditTrail(path)) for _ in range(3)]
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    connection.close()
    reopened = AuditTrail(path)
    assert [row["result_id"] for row in reopened.trail()] == ids
    assert reopened.integrity_ok()


@pytest.mark.parametrize(
    "changes, reason",
    [
        ({"source": "web"}, "Unknown result source"),
        ({"label": "maybe"}, "not acceptable"),
        ({"probability": 1.5}, "not acceptable"),
        ({"image_sha256": "abc"}, "not acceptable"),
        ({"crop_box": (1, 2, 3)}, "4 numbers"),
        ({"operating_point": None}, "which operating point made its call"),
        ({"operating_point": "  "}, "which operating point made its call"),
    ],
)
def test_bad_result_values_are_refused_and_nothing_is_written(tmp_path, changes, reason):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    with pytest.raises(AuditError, match=reason):
        record(trail, **changes)
    assert trail.counts()["results"] == 0


def test_bad_verdicts_are_refused(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    with pytest.raises(AuditError, match="agree, disagree, unsure"):
        trail.record_verdict(result, "yes")
    with pytest.raises(AuditError, match="no recorded result 99"):
        trail.record_verdict(99, "agree")
    with pytest.raises(AuditError, match="at most 2000"):
        trail.record_verdict(result, "agree", note="x" * 2001)
    with pytest.raises(AuditError, match="reviewer name"):
        trail.record_verdict(result, "agree", reviewer="x" * 101)
    assert trail.counts()["verdicts"] == 0


def test_unusable_paths_give_a_plain_error(tmp_path):
    with pytest.raises(AuditError, match="is a folder"):
        AuditTrail(tmp_path)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(AuditError, match="cannot be used"):
        AuditTrail(garbage)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(AuditError, match="cannot be created"):
        AuditTrail(blocker / "audit.sqlite3")


_WRITER = textwrap.dedent(
    """
    import sys
    from pneumo_model.audit import AuditTrail
    trail = AuditTrail(sys.argv[1])
    count = int(sys.argv[2])
    index = 0
    while count < 0 or index < count:
        result = trail.record_result(
            image_sha256=f"{index:064x}", model_sha256="b" * 64, threshold=0.2, probability=0.5,
            label="normal", grey_zone=False, source="cli", operating_point="0123456789abcdef",
        )
        print(result, flush=True)
        index += 1
    """
)


def _writer(tmp_path: Path, db: Path, count: int) -> subprocess.Popen:
    script = tmp_path / "writer.py"
    if not script.exists():  # rewriting it while an earlier writer starts would hand that one an empty script
        script.write_text(_WRITER)
    return subprocess.Popen(
        [sys.executable, str(script), str(db), str(count)],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_eight_concurrent_writers_lose_nothing(tmp_path):
    db = tmp_path / "audit.sqlite3"
    AuditTrail(db)
    writers = [_writer(tmp_path, db, 100) for _ in range(8)]
    printed = []
    for writer in writers:
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
        ids = [int(line) for line in out.split()]
        assert len(ids) == 100, err
        printed += ids
    trail = AuditTrail(db)
    stored = [row["result_id"] for row in trail.trail()]
    assert len(printed) == 800 and sorted(stored) == sorted(printed)
    assert trail.integrity_ok()


def test_a_writer_killed_mid_run_loses_no_committed_record(tmp_path):
    db = tmp_path / "audit.sqlite3"
    AuditTrail(db)
    writer = _writer(tmp_path, db, -1)  # writes until killed
    printed = []
    deadline = time.monotonic() + 120
    while len(printed) < 200 and time.monotonic() < deadline:
        printed.append(int(writer.stdout.readline()))
    os.kill(writer.pid, signal.SIGKILL)
    rest, _ = writer.communicate(timeout=60)  # stderr: the kill's leftovers, not checked
    printed += [int(line) for line in rest.split()]
    assert writer.returncode == -signal.SIGKILL and len(printed) >= 200
    trail = AuditTrail(db)
    stored = {row["result_id"] for row in trail.trail()}
    assert set(printed) <= stored
    assert trail.integrity_ok()


def test_a_record_carries_the_operating_point_of_its_prediction(tmp_path):
    prediction = Prediction(
        probability=0.3, label="pneumonia", grey_zone=True, threshold=0.25, model_sha=MODEL_SHA,
        info=ImageInfo(width=64, height=64, bit_depth=8, format="PNG"), operating_point="fedcba9876543210",
        logit=-0.4, ood=False, ood_score=0.2,
    )
    record = ResultRecord.of(prediction, IMAGE_SHA, "cli", crop_box=[0, 10, 50, 60])
    assert record.operating_point == "fedcba9876543210"
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    (result_id,) = trail.record_results([record])
    (row,) = trail.trail()
    assert row["result_id"] == result_id and row["operating_point"] == "fedcba9876543210"
    assert row["threshold"] == pytest.approx(0.25) and row["crop_box"] == "[0, 10, 50, 60]"


def test_a_result_without_an_operating_point_is_refused(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    fields = dict(
        image_sha256=IMAGE_SHA, model_sha256=MODEL_SHA, threshold=0.2, probability=0.5, label="normal",
        grey_zone=False, source="app",
    )
    with pytest.raises(AuditError, match="which operating point made its call"):
        trail.record_result(**fields)  # written the way callers did before the trail kept it
    with pytest.raises(AuditError, match="which operating point made its call"):
        trail.record_results([ResultRecord(**fields, operating_point=POINT), ResultRecord(**fields)])
    assert trail.counts()["results"] == 0  # the batch is refused whole


# --- Databases written by older and newer versions --------------------------------------------


def _tables(path: Path) -> dict[str, list[tuple]]:
    """Every row of every table, read with plain sqlite3 (no AuditTrail)."""
    connection = sqlite3.connect(path)
    try:
        return {
            table: connection.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
            for table in ("results", "verdicts", "reveals", "events")
            if connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
        }
    finally:
        connection.close()


def _pragma(path: Path, name: str):
    connection = sqlite3.connect(path)
    try:
        return connection.execute(f"PRAGMA {name}").fetchone()[0]
    finally:
        connection.close()


def _old_copy(tmp_path: Path) -> Path:
    path = tmp_path / "audit.sqlite3"
    shutil.copy(AUDIT_V2, path)
    return path


def test_the_committed_fixture_is_a_version_2_trail_in_one_file():
    assert not AUDIT_V2.with_name(AUDIT_V2.name + "-wal").exists()
    connection = sqlite3.connect(f"file:{AUDIT_V2}?mode=ro&immutable=1", uri=True)  # reads, never writes
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 2
        columns = [row[1] for row in connection.execute("PRAGMA table_info(results)")]
        assert "operating_point" not in columns
        counts = [connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0] for table in ("results", "verdicts", "reveals")]
        assert counts == [3, 2, 1]
    finally:
        connection.close()


def test_a_version_2_trail_gets_the_operating_point_and_keeps_every_record(tmp_path):
    path = _old_copy(tmp_path)
    before = _tables(path)
    assert [len(rows) for rows in before.values()] == [3, 2, 1]

    trail = AuditTrail(path)
    after = _tables(path)
    # the new columns, last, NULL: operating_point, markers_masked, logit, age_years, subtype, subtype_probability
    assert after["results"] == [row + (None,) * 6 for row in before["results"]]
    assert after["verdicts"] == [row + (None, None) for row in before["verdicts"]]  # reviewer_subject, submission_id
    assert after["reveals"] == before["reveals"]
    assert _pragma(path, "user_version") == SCHEMA_VERSION == 7
    assert trail.integrity_ok()

    rows = trail.trail()
    assert [row["operating_point"] for row in rows] == [None, None, None]
    assert rows[1]["note"] == 'looks "fine", to me' and rows[2]["revealed_utc"] is not None
    assert rows[0]["crop_box"] == "[0, 0, 200, 150]" and rows[1]["ood"] is None
    (old_csv, *_) = csv.DictReader(io.StringIO(trail.to_csv()))
    assert old_csv["operating_point"] == ""

    new = record(trail)
    assert trail.trail()[-1]["result_id"] == new and trail.trail()[-1]["operating_point"] == POINT
    trail.record_verdict(new, "agree")
    assert trail.counts() == {"results": 4, "verdicts": 3, "reveals": 1}
    assert _tables(path)["results"][:3] == after["results"]


def test_a_migrated_trail_stays_append_only(tmp_path):
    path = _old_copy(tmp_path)
    trail = AuditTrail(path)
    record(trail)
    connection = sqlite3.connect(path)
    try:
        for statement in (
            "UPDATE results SET operating_point = 'forged' WHERE operating_point IS NULL",
            "UPDATE results SET probability = 0.5",
            "DELETE FROM results",
            "UPDATE verdicts SET verdict = 'agree'",
            "DELETE FROM verdicts",
            "UPDATE reveals SET result_id = 1",
            "DELETE FROM reveals",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                connection.execute(statement)
    finally:
        connection.close()
    assert [row["operating_point"] for row in trail.trail()] == [None, None, None, POINT]
    assert trail.counts() == {"results": 4, "verdicts": 2, "reveals": 1}


def test_reopening_a_migrated_trail_changes_nothing(tmp_path):
    path = _old_copy(tmp_path)
    AuditTrail(path)
    migrated = path.read_bytes()
    schema = _tables(path), _pragma(path, "schema_version")
    for _ in range(2):
        AuditTrail(path)
    assert path.read_bytes() == migrated
    assert (_tables(path), _pragma(path, "schema_version")) == schema


def test_a_version_1_trail_gets_the_reveals_table_and_the_operating_point(tmp_path):
    path = _old_copy(tmp_path)
    connection = sqlite3.connect(path)  # version 1 had no reveals table: take it away
    connection.execute("DROP TABLE reveals")
    connection.execute("PRAGMA user_version = 1")
    connection.close()
    before = _tables(path)
    assert "reveals" not in before

    trail = AuditTrail(path)
    after = _tables(path)
    assert after["results"] == [row + (None,) * 6 for row in before["results"]]
    assert after["verdicts"] == [row + (None, None) for row in before["verdicts"]]  # reviewer_subject, submission_id
    assert after["reveals"] == []
    assert _pragma(path, "user_version") == SCHEMA_VERSION
    result = record(trail)
    trail.record_reveal(result)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        sqlite3.connect(path).execute("DELETE FROM reveals")


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_a_trail_written_by_a_newer_version_is_refused_and_left_unchanged(tmp_path, journal_mode):
    path = _old_copy(tmp_path)
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA journal_mode = {journal_mode}")
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    written = path.read_bytes()
    with pytest.raises(AuditError, match="written by a newer version.*Nothing was recorded"):
        AuditTrail(path)
    assert path.read_bytes() == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["audit.sqlite3"]


def test_a_trail_upgraded_by_a_newer_version_while_open_is_no_longer_written(tmp_path):
    path = tmp_path / "audit.sqlite3"
    trail = AuditTrail(path)
    record(trail)
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.close()
    with pytest.raises(AuditError, match="newer version.*Nothing was recorded"):
        record(trail)
    assert len(_tables(path)["results"]) == 1


_OPENER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pneumo_model.audit import AuditTrail
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    trail = AuditTrail(sys.argv[1])
    print(trail.record_result(
        image_sha256="d" * 64, model_sha256="b" * 64, threshold=0.2, probability=0.5, label="normal",
        grey_zone=False, source="cli", operating_point="0123456789abcdef",
    ))
    """
)


def test_processes_opening_an_old_trail_at_once_migrate_it_once(tmp_path):
    path = _old_copy(tmp_path)
    before = _tables(path)
    script, go = tmp_path / "opener.py", tmp_path / "go"
    script.write_text(_OPENER)
    openers = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(go)],
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(6)
    ]
    time.sleep(1.0)  # let them import and wait at the same line
    go.touch()
    ids = []
    for opener in openers:
        out, err = opener.communicate(timeout=120)
        assert opener.returncode == 0, err
        ids.append(int(out))
    after = _tables(path)
    assert sorted(ids) == [4, 5, 6, 7, 8, 9]
    assert after["results"][:3] == [row + (None,) * 6 for row in before["results"]]
    assert [row[-6:-4] for row in after["results"][3:]] == [("0123456789abcdef", 0)] * 6
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(results)")]
    assert columns.count("operating_point") == 1 and columns.count("markers_masked") == 1
    assert _pragma(path, "user_version") == SCHEMA_VERSION


def test_a_version_3_trail_gets_the_markers_column_and_a_masked_call_says_so(tmp_path):
    path = _old_copy(tmp_path)
    connection = sqlite3.connect(path)  # the version 3 layout: version 2 plus the operating point column
    connection.execute("ALTER TABLE results ADD COLUMN operating_point TEXT")
    connection.execute("PRAGMA user_version = 3")
    connection.commit()
    connection.close()
    before = _tables(path)

    trail = AuditTrail(path)
    after = _tables(path)
    assert after["results"] == [row + (None,) * 5 for row in before["results"]]  # markers_masked, ..., subtype_probability
    assert after["verdicts"] == [row + (None, None) for row in before["verdicts"]]  # reviewer_subject, submission_id
    assert after["reveals"] == before["reveals"]
    assert _pragma(path, "user_version") == SCHEMA_VERSION == 7
    masked = trail.record_result(
        image_sha256="a" * 64, model_sha256="b" * 64, threshold=0.24, probability=0.3, label="pneumonia",
        grey_zone=True, source="app", operating_point="0123456789abcdef", markers_masked=True,
    )
    plain = record(trail)
    rows = {row["result_id"]: row for row in trail.trail()}
    assert rows[masked]["markers_masked"] == 1 and rows[plain]["markers_masked"] == 0
    assert [rows[i]["markers_masked"] for i in (1, 2, 3)] == [None, None, None]
    assert "markers_masked" in trail.to_csv().splitlines()[0]


def test_a_signed_in_verdict_keeps_the_subject_and_a_local_one_none(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    trail.record_verdict(result, "agree", reviewer="Dr Reader", reviewer_subject="  sub-0001 ")
    trail.record_verdict(result, "unsure", reviewer="typed name")
    rows = trail.trail()
    assert [(row["reviewer"], row["reviewer_subject"]) for row in rows] == [("Dr Reader", "sub-0001"), ("typed name", None)]
    assert trail.to_csv().splitlines()[0].endswith(",reviewer,reviewer_subject")
    with pytest.raises(AuditError, match="subject id is empty"):
        trail.record_verdict(result, "agree", reviewer_subject="   ")
    assert trail.counts()["verdicts"] == 2


def test_events_are_kept_with_their_detail_and_are_append_only(tmp_path):
    path = tmp_path / "audit.sqlite3"
    trail = AuditTrail(path)
    result = record(trail)
    sent = trail.record_event("sr_sent", result_id=result, sr_uid="1.2.826.0.1.3680043.8.498.1", operating_point=POINT)
    opened = trail.record_event("trail_opened", subject="admin-7")
    events = trail.events()
    assert [event["id"] for event in events] == [sent, opened]
    assert events[0]["kind"] == "sr_sent" and events[0]["result_id"] == result and events[0]["subject"] is None
    assert events[0]["detail"] == {"operating_point": POINT, "sr_uid": "1.2.826.0.1.3680043.8.498.1"}
    assert [event["id"] for event in trail.events("trail_opened")] == [opened]
    assert trail.events("trail_exported") == []
    with pytest.raises(AuditError, match="Unknown audit event 'deleted'"):
        trail.record_event("deleted")
    with pytest.raises(AuditError, match="no recorded result 99"):
        trail.record_event("sr_sent", result_id=99, sr_uid="1.2")
    with pytest.raises(AuditError, match="cannot be kept as JSON"):
        trail.record_event("sr_sent", result_id=result, sr_uid=float("nan"))
    with pytest.raises(AuditError, match="at most 2000"):
        trail.record_event("trail_exported", note="x" * 3000)
    connection = sqlite3.connect(path)
    try:
        for statement in ("UPDATE events SET subject = 'forged'", "DELETE FROM events"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                connection.execute(statement)
    finally:
        connection.close()
    assert len(trail.events()) == 2


def test_a_version_4_trail_gets_the_events_table_and_the_subject_column(tmp_path):
    path = _old_copy(tmp_path)
    AuditTrail(path)  # now version 7: take the version 5 to 7 parts away again to make a version 4 file
    connection = sqlite3.connect(path)
    connection.execute("DROP TABLE events")
    for index in ("verdicts_submission", "results_image"):
        connection.execute(f"DROP INDEX {index}")
    for table, column in (("verdicts", "reviewer_subject"), ("verdicts", "submission_id"), ("results", "logit"),
                          ("results", "age_years"), ("results", "subtype"), ("results", "subtype_probability")):
        connection.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
    connection.execute("PRAGMA user_version = 4")
    connection.commit()
    connection.close()
    before = _tables(path)
    assert "events" not in before

    trail = AuditTrail(path)
    after = _tables(path)
    assert after["results"] == [row + (None,) * 4 for row in before["results"]] and after["reveals"] == before["reveals"]
    assert after["verdicts"] == [row + (None, None) for row in before["verdicts"]]
    assert after["events"] == [] and _pragma(path, "user_version") == SCHEMA_VERSION == 7
    trail.record_event("trail_exported", subject="admin-7", rows=3)
    assert trail.events()[0]["detail"] == {"rows": 3}


# ----------------------------------------------------------------------------- schema 6
AUDIT_V5 = Path(__file__).parent / "data" / "audit_v5.sqlite3"  # written by commit d844464 (tests/data/README.md)


def test_a_trail_written_by_version_5_code_keeps_every_record_and_gains_the_new_columns(tmp_path):
    path = tmp_path / "audit.sqlite3"
    shutil.copy(AUDIT_V5, path)
    before = _tables(path)
    assert [len(before[table]) for table in ("results", "verdicts", "reveals", "events")] == [5, 3, 1, 1]

    trail = AuditTrail(path)
    after = _tables(path)
    assert after["results"] == [row + (None,) * 4 for row in before["results"]]  # logit, age_years, subtype(_probability)
    assert after["verdicts"] == [row + (None,) for row in before["verdicts"]]  # submission_id
    assert after["reveals"] == before["reveals"] and after["events"] == before["events"]
    assert _pragma(path, "user_version") == SCHEMA_VERSION == 7
    assert trail.integrity_ok()
    # the two verdicts of a double click before submission ids stay two rows: nothing is rewritten
    assert [row["verdict_id"] for row in trail.trail() if row["result_id"] == 1] == [1, 2]
    connection = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        connection.execute("UPDATE verdicts SET submission_id = 'abcdefgh' WHERE id = 1")
    connection.close()
    # old verdicts have no submission id, and NULLs never collide: new verdicts with ids still go in
    first = trail.record_verdict_once("f" * 32, 1, "unsure")
    assert first.new and first.verdict_id == 4


def test_the_same_submission_sent_twice_is_one_row(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    first = trail.record_verdict_once("a" * 32, result, "agree", note="consolidation", reviewer="Dr A")
    again = trail.record_verdict_once("a" * 32, result, "agree", note="consolidation", reviewer="Dr A")
    assert first.new and not again.new
    assert (again.verdict_id, again.result_id, again.verdict, again.recorded_utc, again.image_sha256) == (
        first.verdict_id, first.result_id, first.verdict, first.recorded_utc, IMAGE_SHA,
    )
    assert trail.counts()["verdicts"] == 1
    assert trail.verdict_of_submission("a" * 32) == again
    assert trail.verdict_of_submission("b" * 32) is None
    other = trail.record_verdict_once("b" * 32, result, "disagree")
    assert other.new and other.verdict_id == first.verdict_id + 1 and trail.counts()["verdicts"] == 2
    # the database itself refuses a second row with the id, whoever writes it
    connection = sqlite3.connect(tmp_path / "audit.sqlite3")
    with pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        connection.execute(
            "INSERT INTO verdicts (recorded_utc, result_id, verdict, submission_id) VALUES ('x', ?, 'agree', ?)",
            (result, "a" * 32),
        )
    connection.close()


@pytest.mark.parametrize("submission", ["", "short", "x" * 65])
def test_a_submission_id_of_the_wrong_length_is_refused_and_nothing_is_written(tmp_path, submission):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    result = record(trail)
    with pytest.raises(AuditError, match="8 to 64 characters"):
        trail.record_verdict_once(submission, result, "agree")
    with pytest.raises(AuditError, match="no recorded result 999"):
        trail.record_verdict_once("c" * 32, 999, "agree")
    assert trail.counts()["verdicts"] == 0


_RESENDER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pneumo_model.audit import AuditTrail
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    written = AuditTrail(sys.argv[1]).record_verdict_once("e" * 32, 1, "agree", note="resent")
    print(written.verdict_id, int(written.new))
    """
)


def test_processes_sending_one_submission_at_once_write_one_row(tmp_path):
    path = tmp_path / "audit.sqlite3"
    record(AuditTrail(path))
    script, go = tmp_path / "resender.py", tmp_path / "go"
    script.write_text(_RESENDER)
    senders = [
        subprocess.Popen(
            [sys.executable, str(script), str(path), str(go)],
            cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for _ in range(5)
    ]
    time.sleep(1.0)
    go.touch()
    answers = []
    for sender in senders:
        out, err = sender.communicate(timeout=120)
        assert sender.returncode == 0, err
        answers.append(tuple(int(value) for value in out.split()))
    assert sorted(answers) == [(1, 0)] * 4 + [(1, 1)]  # one wrote it, four were told it was written
    assert AuditTrail(path).counts()["verdicts"] == 1


def test_a_result_keeps_the_raw_logit_and_the_age(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    info = ImageInfo(width=800, height=600, bit_depth=16, format="DICOM", dicom=DicomTags("DX", "CHEST", "PA", "MONOCHROME2", None, age_years=3.4567))
    prediction = Prediction(
        probability=0.8, label="pneumonia", grey_zone=False, threshold=0.6, model_sha=MODEL_SHA, info=info,
        operating_point=POINT, logit=2.75,
    )
    result = trail.record_results([ResultRecord.of(prediction, IMAGE_SHA, "cli")])[0]
    row = sqlite3.connect(tmp_path / "audit.sqlite3").execute(
        "SELECT logit, age_years FROM results WHERE id = ?", (result,)
    ).fetchone()
    assert row == (2.75, 3.46)
    with pytest.raises(AuditError, match="not acceptable"):
        record(trail, age_years=-1.0)


def test_scored_films_reads_each_film_once_and_recomputes_old_logits_only_where_exact(tmp_path):
    path = tmp_path / "audit.sqlite3"
    shutil.copy(AUDIT_V5, path)
    trail = AuditTrail(path)
    scale, offset = 1 / 1.7, 0.0  # what the fixture's "0123456789abcdef" stands for here
    new = record(trail, image_sha256="4" * 64, model_sha256="b" * 64, logit=-1.25, age_years=2.0)
    record(trail, image_sha256="4" * 64, model_sha256="b" * 64, logit=9.0)  # the same film again: not counted
    record(trail, image_sha256="5" * 64, model_sha256="b" * 64, logit=0.5, crop_box=(0, 0, 10, 10))  # a crop only

    read = trail.scored_films("b" * 64, scales={"0123456789abcdef": (scale, offset)})
    assert [film.image_sha256[0] for film in read.films] == ["1", "4"]  # film 1 once, at its first record
    one, four = read.films
    assert one.logit == pytest.approx((np.log(0.81) - np.log1p(-0.81)) / scale, rel=1e-12)
    assert (one.ood, one.ood_score, one.age_years) == (False, 0.42, None)
    assert (four.logit, four.age_years) == (-1.25, 2.0)
    assert read.left_out == 1  # film 2: its operating point's scale is not given, so its logit is unknown
    assert trail.scored_films("b" * 64).left_out == 2
    assert [film.image_sha256[0] for film in trail.scored_films("c" * 64, scales={"0123456789abcdef": (1.0, 0.0)}).films] == ["3"]
    assert [film.image_sha256[0] for film in trail.scored_films("b" * 64, scales={"0123456789abcdef": (scale, 0.0)}, last=1).films] == ["4"]
    assert trail.scored_films("b" * 64, last=0).films == ()
    connection = sqlite3.connect(path)  # three films of another model, on days the test chooses
    for sha, day in (("6", "2026-01-14"), ("7", "2026-01-15"), ("8", "2026-01-16")):
        connection.execute(
            "INSERT INTO results (recorded_utc, source, image_sha256, model_sha256, threshold, probability, label, "
            "grey_zone, operating_point, logit) VALUES (?, 'cli', ?, ?, 0.6, 0.5, 'normal', 0, 'p', 0.0)",
            (f"{day}T23:59:59.999999+00:00", sha * 64, "d" * 64),
        )
    connection.commit()
    connection.close()
    days = {
        ("2026-01-15", None): ["7", "8"], (None, "2026-01-15"): ["6", "7"], ("2026-01-15", "2026-01-15"): ["7"],
        ("2026-01-17", None): [], (None, "2026-01-13"): [], (None, None): ["6", "7", "8"],
    }
    for (since, until), films in days.items():
        assert [film.image_sha256[0] for film in trail.scored_films("d" * 64, since=since, until=until).films] == films
    with pytest.raises(AuditError, match="YYYY-MM-DD"):
        trail.scored_films("b" * 64, since="7 Dec")
    assert new > 5


# ----------------------------------------------------------------------------- schema 7
AUDIT_V6 = Path(__file__).parent / "data" / "audit_v6.sqlite3"  # written by commit 675ae6b (tests/data/README.md)


def test_the_committed_fixture_is_a_version_6_trail_in_one_file():
    assert not AUDIT_V6.with_name(AUDIT_V6.name + "-wal").exists()
    connection = sqlite3.connect(f"file:{AUDIT_V6}?mode=ro&immutable=1", uri=True)  # reads, never writes
    try:
        assert connection.execute("PRAGMA user_version").fetchone()[0] == 6
        columns = [row[1] for row in connection.execute("PRAGMA table_info(results)")]
        assert columns[-2:] == ["logit", "age_years"] and "subtype" not in columns
    finally:
        connection.close()


def test_a_trail_written_by_version_6_code_keeps_every_record_and_gains_the_pattern_columns(tmp_path):
    path = tmp_path / "audit.sqlite3"
    shutil.copy(AUDIT_V6, path)
    before = _tables(path)
    assert [len(before[table]) for table in ("results", "verdicts", "reveals", "events")] == [5, 2, 1, 2]

    trail = AuditTrail(path)
    after = _tables(path)
    assert after["results"] == [row + (None, None) for row in before["results"]]  # subtype, subtype_probability
    assert after["verdicts"] == before["verdicts"]
    assert after["reveals"] == before["reveals"] and after["events"] == before["events"]
    assert _pragma(path, "user_version") == SCHEMA_VERSION == 7
    assert trail.integrity_ok()
    rows = trail.trail()
    assert [row["result_id"] for row in rows] == [1, 1, 2, 3, 4, 5]  # result 1 with its two verdicts
    assert all(row["subtype"] is None and row["subtype_probability"] is None for row in rows)
    assert rows[1]["note"] == 'looks "viral", to me' and rows[4]["revealed_utc"] is not None
    (old_csv, *_) = csv.DictReader(io.StringIO(trail.to_csv()))
    assert old_csv["subtype"] == "" and old_csv["subtype_probability"] == "" and old_csv["probability"] == "0.93"
    # what the old trail held still works: its submission id is still unique, its records still append-only
    assert not trail.record_verdict_once("s" * 32, 1, "agree").new
    connection = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        connection.execute("UPDATE results SET subtype = 'viral-like' WHERE id = 1")
    connection.close()
    new = record(trail, subtype="viral-like", subtype_probability=0.8125)
    assert new == 6 and trail.trail()[-1]["subtype"] == "viral-like" and trail.trail()[-1]["subtype_probability"] == 0.8125
    assert AuditTrail(path).counts() == {"results": 6, "verdicts": 2, "reveals": 1}  # reopened: nothing changes


def _called(label: str, subtype: str | None, subtype_probability: float | None, ood: bool = False) -> Prediction:
    info = ImageInfo(width=224, height=224, bit_depth=8, format="PNG")
    return Prediction(
        probability=0.9 if label == "pneumonia" else 0.05, label=label, grey_zone=False, threshold=0.24,
        model_sha=MODEL_SHA, info=info, operating_point=POINT, logit=1.5, ood=ood, ood_score=0.4,
        subtype=subtype, subtype_probability=subtype_probability, subtype_logit=None if subtype is None else 0.3,
    )


def test_a_result_keeps_the_subtype_pattern_of_a_pneumonia_call_and_null_for_a_normal_one(tmp_path):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    ids = trail.record_results([
        ResultRecord.of(_called("pneumonia", "viral-like", 0.7734), IMAGE_SHA, "app"),
        ResultRecord.of(_called("pneumonia", "undetermined", 0.41), IMAGE_SHA, "cli"),
        ResultRecord.of(_called("normal", None, None), IMAGE_SHA, "cli"),
    ])
    rows = {row["result_id"]: row for row in trail.trail()}
    assert [(rows[i]["subtype"], rows[i]["subtype_probability"]) for i in ids] == [
        ("viral-like", 0.7734), ("undetermined", 0.41), (None, None)
    ]
    header = trail.to_csv().splitlines()[0].split(",")
    assert header.index("subtype") == header.index("markers_masked") + 1
    assert header.index("subtype_probability") == header.index("subtype") + 1


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"subtype": "bacterial", "subtype_probability": 0.2}, "one of bacterial-like, viral-like, undetermined"),
        ({"subtype": "viral-like"}, "with its probability"),
        ({"subtype_probability": 0.5}, "with its probability"),
    ],
)
def test_a_subtype_pattern_that_is_unknown_or_half_given_is_refused(tmp_path, changes, words):
    trail = AuditTrail(tmp_path / "audit.sqlite3")
    with pytest.raises(AuditError, match=words):
        record(trail, **changes)
    with pytest.raises(AuditError, match="not acceptable"):  # the database's own check, whoever writes
        record(trail, subtype="viral-like", subtype_probability=1.5)
    assert trail.counts()["results"] == 0
